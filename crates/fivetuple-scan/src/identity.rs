//! Container and Kubernetes pod identity from a process's cgroup path.
//!
//! Every container runtime puts a container's processes in a cgroup whose
//! path names the container id, and the kubelet puts every pod's
//! containers under a cgroup that names the pod UID and QoS class. This
//! module reads those names out of `/proc/PID/cgroup` text; it does no
//! I/O. Pod and namespace *names* are not here on purpose: they are joined
//! in Prometheus through kube-state-metrics' `kube_pod_info{uid}`.
//!
//! Path shapes understood (any prefix before them is allowed, e.g. a
//! cgroup namespace root or a nested kubelet):
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`,
//!   `/kubepods/pod<uid>/<id>` (Guaranteed), `/kubepods/besteffort/pod<uid>/crio-<id>`,
//!   `/docker/<id>`, `/libpod_parent/libpod-<id>`;
//! - systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
//!   `docker-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`.
//!
//! Runtime helper processes (`crio-conmon-<id>.scope`,
//! `libpod-conmon-<id>.scope`) are not the container and yield no id.

use std::fmt;

use serde::Serialize;

/// The container runtime, as the cgroup path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Runtime {
    /// Docker (`docker-<id>.scope`, `/docker/<id>`).
    #[serde(rename = "docker")]
    Docker,
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
    #[serde(rename = "containerd")]
    Containerd,
    /// CRI-O (`crio-<id>.scope`, `crio-<id>`).
    #[serde(rename = "cri-o")]
    CriO,
    /// Podman (`libpod-<id>.scope`, `/libpod_parent/libpod-<id>`).
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    /// The label value: `docker`, `containerd`, `cri-o` or `podman`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A pod's Kubernetes QoS class, spelled as the API (and kube-state-metrics'
/// `kube_pod_status_qos_class{qos_class}`) spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum QosClass {
    /// Requests equal limits; the kubelet puts these pods directly under `kubepods`.
    Guaranteed,
    /// Under `kubepods/burstable`.
    Burstable,
    /// Under `kubepods/besteffort`.
    BestEffort,
}

impl QosClass {
    /// `Guaranteed`, `Burstable` or `BestEffort`.
    pub fn name(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a cgroup path says about the process: all `None` for a process
/// that is in no container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    /// The container id: 64 lowercase hex digits.
    pub container_id: Option<String>,
    /// The runtime, when the path names it (the cgroupfs Kubernetes shape does not).
    pub runtime: Option<Runtime>,
    /// The Kubernetes pod UID, with dashes (`kube_pod_info{uid}` spelling);
    /// static pods have a 32-hex-digit UID without dashes.
    pub pod_uid: Option<String>,
    /// The pod's QoS class, when the pod UID is known.
    pub qos_class: Option<QosClass>,
}

impl Identity {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// Parses the text of `/proc/PID/cgroup` (`ID:CONTROLLERS:PATH` lines, `0::PATH`
/// for cgroup v2). The v2 line is tried first, then the v1 lines in file
/// order; the first path that names a container or a pod wins. Lines that
/// do not have the `ID:CONTROLLERS:PATH` shape are ignored, since a kernel
/// may add fields, and an empty identity is the answer for a host process.
pub fn parse_proc_cgroup(text: &str) -> Identity {
    let mut paths: Vec<(bool, &str)> = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        paths.push((v2, path));
    }
    // v2 first (a stable sort keeps file order within each kind).
    paths.sort_by_key(|(v2, _)| !v2);
    paths
        .into_iter()
        .map(|(_, p)| parse_cgroup_path(p))
        .find(|i| !i.is_empty())
        .unwrap_or_default()
}

/// Parses one cgroup path (`/kubepods/burstable/pod<uid>/<id>`, ...).
pub fn parse_cgroup_path(path: &str) -> Identity {
    let mut id = Identity::default();
    let mut in_kubepods = false;
    let mut qos = QosClass::Guaranteed;
    let mut parent: Option<&str> = None;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let bare = segment
            .strip_suffix(".slice")
            .or_else(|| segment.strip_suffix(".scope"))
            .unwrap_or(segment);
        // The Kubernetes parts: a `kubepods` segment (cgroupfs) or a systemd
        // slice whose dash-separated name contains `kubepods` (possibly
        // after a prefix such as `kubelet-`).
        let dashed: Vec<&str> = bare.split('-').collect();
        if let Some(k) = dashed.iter().position(|p| *p == "kubepods") {
            in_kubepods = true;
            for part in &dashed[k + 1..] {
                if let Some(q) = qos_of(part) {
                    qos = q;
                } else if let Some(uid) = part.strip_prefix("pod").and_then(pod_uid) {
                    id.pod_uid = Some(uid);
                    id.qos_class = Some(qos);
                }
            }
            parent = Some(bare);
            continue;
        }
        if in_kubepods {
            if let Some(q) = qos_of(bare) {
                qos = q;
                parent = Some(bare);
                continue;
            }
            if let Some(uid) = bare.strip_prefix("pod").and_then(pod_uid) {
                id.pod_uid = Some(uid);
                id.qos_class = Some(qos);
                parent = Some(bare);
                continue;
            }
        }
        if let Some((runtime, cid)) = container_of(bare, parent) {
            id.container_id = Some(cid);
            id.runtime = runtime;
        }
        parent = Some(bare);
    }
    id
}

fn qos_of(s: &str) -> Option<QosClass> {
    match s {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// A pod UID as the cgroup name spells it: 8-4-4-4-12 hex digits with
/// dashes (cgroupfs) or underscores (systemd, where a dash would mean
/// nesting), or 32 hex digits (static pods, whose UID is a config hash).
fn pod_uid(s: &str) -> Option<String> {
    let dashed = s.replace('_', "-");
    let groups: Vec<&str> = dashed.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let all_hex = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    if all_hex && (lens == [8, 4, 4, 4, 12] || lens == [32]) {
        Some(dashed.to_ascii_lowercase())
    } else {
        None
    }
}

fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A container segment: `<prefix>-<id>` with a runtime prefix, or a bare
/// 64-hex id whose runtime is told by the parent segment (`docker`,
/// `libpod_parent`) if at all.
fn container_of(bare: &str, parent: Option<&str>) -> Option<(Option<Runtime>, String)> {
    const PREFIXES: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        ("docker-", Runtime::Docker),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(rest) = bare.strip_prefix(prefix) {
            // `crio-conmon-<id>` and `libpod-conmon-<id>` fail here: not 64 hex.
            return container_id(rest).map(|c| (Some(runtime), c));
        }
    }
    let cid = container_id(bare)?;
    let runtime = match parent {
        Some("docker") => Some(Runtime::Docker),
        Some("libpod_parent") => Some(Runtime::Podman),
        _ => None,
    };
    Some((runtime, cid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const UID: &str = "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b";
    const UID_: &str = "1b2c3d4e_5f60_4718_8a9b_0c1d2e3f4a5b";

    fn id(
        cid: Option<&str>,
        rt: Option<Runtime>,
        uid: Option<&str>,
        q: Option<QosClass>,
    ) -> Identity {
        Identity {
            container_id: cid.map(str::to_string),
            runtime: rt,
            pod_uid: uid.map(str::to_string),
            qos_class: q,
        }
    }

    #[test]
    fn kubernetes_cgroupfs_shapes() {
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            id(Some(CID), None, Some(UID), Some(QosClass::Burstable))
        );
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}")),
            id(
                Some(CID),
                Some(Runtime::CriO),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
        // Guaranteed pods sit directly under kubepods.
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/pod{UID}/{CID}")),
            id(Some(CID), None, Some(UID), Some(QosClass::Guaranteed))
        );
        // The pod cgroup itself (no container yet).
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}")),
            id(None, None, Some(UID), Some(QosClass::Burstable))
        );
    }

    #[test]
    fn kubernetes_systemd_shapes() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            id(
                Some(CID),
                Some(Runtime::Containerd),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope");
        assert_eq!(
            parse_cgroup_path(&p),
            id(
                Some(CID),
                Some(Runtime::CriO),
                Some(UID),
                Some(QosClass::Guaranteed)
            )
        );
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            id(
                Some(CID),
                Some(Runtime::Docker),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
        // kind / nested kubelet: a prefix before `kubepods`, and an outer test-owned directory.
        let p = format!(
            "/fivetuple-test/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            id(
                Some(CID),
                Some(Runtime::Containerd),
                Some(UID),
                Some(QosClass::BestEffort)
            )
        );
    }

    #[test]
    fn plain_container_shapes() {
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/docker-{CID}.scope")),
            id(Some(CID), Some(Runtime::Docker), None, None)
        );
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{CID}")),
            id(Some(CID), Some(Runtime::Docker), None, None)
        );
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/libpod-{CID}.scope")),
            id(Some(CID), Some(Runtime::Podman), None, None)
        );
        assert_eq!(
            parse_cgroup_path(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container"
            )),
            id(Some(CID), Some(Runtime::Podman), None, None)
        );
        assert_eq!(
            parse_cgroup_path(&format!("/libpod_parent/libpod-{CID}")),
            id(Some(CID), Some(Runtime::Podman), None, None)
        );
        // Upper-case hex is normalized.
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{}", CID.to_uppercase()))
                .container_id
                .as_deref(),
            Some(CID)
        );
    }

    #[test]
    fn not_containers() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/init.scope",
            // conmon runs beside the container, outside it.
            &format!("/machine.slice/libpod-conmon-{CID}.scope"),
            &format!("/system.slice/crio-conmon-{CID}.scope"),
            // 63 hex digits and a non-hex digit.
            &format!("/docker/{}", &CID[1..]),
            &format!("/docker/{}g", &CID[1..]),
            // A pod-looking segment outside kubepods is not a pod.
            &format!("/somewhere/pod{UID}"),
            // A pod segment with a malformed UID.
            "/kubepods/burstable/pod1234",
        ] {
            assert_eq!(parse_cgroup_path(p), Identity::default(), "{p}");
        }
    }

    #[test]
    fn static_pod_uid() {
        let p = "/kubepods/burstable/pod0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_cgroup_path(p).pod_uid.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn proc_cgroup_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(
            parse_proc_cgroup(&text),
            id(
                Some(CID),
                Some(Runtime::Containerd),
                Some(UID),
                Some(QosClass::Burstable)
            )
        );
    }

    #[test]
    fn proc_cgroup_v1_and_hybrid() {
        // Pure v1, as a cgroupfs-driver node on an older distribution shows it.
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{CID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{CID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
        );
        assert_eq!(
            parse_proc_cgroup(&v1),
            id(Some(CID), None, Some(UID), Some(QosClass::Burstable))
        );
        // Hybrid with the container only on the v1 lines: the v2 line is
        // tried first, finds nothing, then v1 answers.
        let hybrid = format!(
            "9:name=systemd:/system.slice/docker-{CID}.scope\n\
             4:memory:/system.slice/docker-{CID}.scope\n\
             0::/\n"
        );
        assert_eq!(
            parse_proc_cgroup(&hybrid),
            id(Some(CID), Some(Runtime::Docker), None, None)
        );
        // Hybrid where v2 and v1 disagree: v2 wins.
        let other = CID.replace('0', "a");
        let both = format!("4:memory:/docker/{other}\n0::/system.slice/docker-{CID}.scope\n");
        assert_eq!(parse_proc_cgroup(&both).container_id.as_deref(), Some(CID));
    }

    #[test]
    fn proc_cgroup_host_and_garbage() {
        // This machine's own shape: a v1 memory path that is no container.
        let host =
            "9:name=systemd:/\n4:memory:/process_api/940556185b501fc52f4704ecea9be5f0\n0::/\n";
        assert_eq!(parse_proc_cgroup(host), Identity::default());
        assert_eq!(parse_proc_cgroup(""), Identity::default());
        assert_eq!(parse_proc_cgroup("garbage\n\n::\n"), Identity::default());
        // A path containing ':' stays whole (splitn 3).
        assert_eq!(
            parse_proc_cgroup(&format!("0::/odd:dir/docker-{CID}.scope\n"))
                .container_id
                .as_deref(),
            Some(CID)
        );
    }
}
