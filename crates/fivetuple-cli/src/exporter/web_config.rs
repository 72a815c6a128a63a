//! `--web.config.file`: TLS and basic auth in the format of Prometheus'
//! exporter-toolkit, so one file serves node_exporter and fivetuple alike.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt            # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: ca.crt           # required by the verifying types
//!   min_version: TLS12               # optional: TLS12 (default) or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...           # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! As in the toolkit, unknown keys are errors, a client CA without a client
//! auth type is an error, and the file is read once at start (restart to
//! reload). The toolkit's `RequestClientCert` and `RequireAnyClientCert`
//! accept a certificate without checking it against any CA; fivetuple
//! refuses them, since such a certificate proves nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a bad web config file is: the field at fault and why.
#[derive(Debug)]
pub struct ConfigError {
    file: PathBuf,
    field: String,
    reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "--web.config.file {}: {}",
                self.file.display(),
                self.reason
            )
        } else {
            write!(
                f,
                "--web.config.file {}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
}

/// The toolkit's `client_auth_type` values (Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default): no certificate is asked for.
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but one that is
    /// sent must chain to `client_ca_file`.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: mutual TLS; a certificate chaining to
    /// `client_ca_file` is required.
    RequireAndVerify,
}

fn parse_client_auth(s: &str) -> Result<ClientAuth, String> {
    match s {
        "" | "NoClientCert" => Ok(ClientAuth::None),
        "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyIfGiven),
        "RequireAndVerifyClientCert" => Ok(ClientAuth::RequireAndVerify),
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => Err(format!(
            "{s:?} accepts a client certificate without verifying it against a CA, which fivetuple refuses; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"
        )),
        _ => Err(format!(
            "{s:?} is not a client auth type (expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        )),
    }
}

fn parse_version(s: &str) -> Result<&'static rustls::SupportedProtocolVersion, String> {
    match s {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(format!(
            "{s} is not supported (rustls speaks TLS12 and TLS13 only)"
        )),
        _ => Err(format!(
            "{s:?} is not a TLS version (expected TLS12 or TLS13)"
        )),
    }
}

/// The resolved web configuration.
pub struct WebConfig {
    /// TLS, when `tls_server_config` is given.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic auth, when `basic_auth_users` has at least one user.
    pub auth: Option<BasicAuth>,
    /// The client auth type in force (for the startup line).
    pub client_auth: ClientAuth,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.as_ref().map(|a| a.users.len()))
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks `file`: its YAML, every path it names, each
    /// certificate, key and bcrypt hash. Errors name the field at fault.
    pub fn load(file: &Path) -> Result<WebConfig, ConfigError> {
        let err = |field: &str, reason: String| ConfigError {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| err("", format!("cannot read it: {e}")))?;
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig {
                tls_server_config: None,
                basic_auth_users: None,
            }
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| err("", e.to_string()))?
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let (tls, client_auth) = match raw.tls_server_config {
            None => (None, ClientAuth::None),
            Some(t) => {
                let (cfg, ca) = tls_config(&t, dir, &err)?;
                (Some(Arc::new(cfg)), ca)
            }
        };
        let auth = match raw.basic_auth_users {
            Some(users) if !users.is_empty() => Some(BasicAuth::new(users, &err)?),
            _ => None,
        };
        Ok(WebConfig {
            tls,
            auth,
            client_auth,
        })
    }
}

fn tls_config(
    t: &RawTls,
    dir: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(rustls::ServerConfig, ClientAuth), ConfigError> {
    let path = |p: &Path| dir.join(p);
    let cert_file = t
        .cert_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| err("tls_server_config.cert_file", "is missing".into()))?;
    let key_file = t
        .key_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| err("tls_server_config.key_file", "is missing".into()))?;
    let cert_path = path(cert_file);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            err(
                "tls_server_config.cert_file",
                format!("cannot read certificates from {}: {e}", cert_path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            "tls_server_config.cert_file",
            format!("{} holds no PEM certificate", cert_path.display()),
        ));
    }
    let key_path = path(key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        err(
            "tls_server_config.key_file",
            format!(
                "cannot read a PEM private key from {}: {e}",
                key_path.display()
            ),
        )
    })?;
    let client_auth = parse_client_auth(t.client_auth_type.as_deref().unwrap_or(""))
        .map_err(|r| err("tls_server_config.client_auth_type", r))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match (client_auth, &t.client_ca_file) {
        (ClientAuth::None, Some(_)) => {
            return Err(err(
                "tls_server_config.client_ca_file",
                "is set but client_auth_type is NoClientCert; set client_auth_type: RequireAndVerifyClientCert".into(),
            ))
        }
        (ClientAuth::None, None) => rustls::server::WebPkiClientVerifier::no_client_auth(),
        (_, None) => {
            return Err(err(
                "tls_server_config.client_ca_file",
                format!("is required by client_auth_type {client_auth:?}"),
            ))
        }
        (mode, Some(ca)) => {
            let ca_path = path(ca);
            let field = "tls_server_config.client_ca_file";
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca_path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err(field, format!("cannot read {}: {e}", ca_path.display())))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| err(field, format!("{}: {e}", ca_path.display())))?;
            }
            if roots.is_empty() {
                return Err(err(
                    field,
                    format!("{} holds no PEM certificate", ca_path.display()),
                ));
            }
            let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            );
            let b = if mode == ClientAuth::VerifyIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| err(field, e.to_string()))?
        }
    };
    let min = match &t.min_version {
        Some(v) => parse_version(v).map_err(|r| err("tls_server_config.min_version", r))?,
        None => &rustls::version::TLS12,
    };
    let max = match &t.max_version {
        Some(v) => parse_version(v).map_err(|r| err("tls_server_config.max_version", r))?,
        None => &rustls::version::TLS13,
    };
    let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| {
            u16::from(v.version) >= u16::from(min.version)
                && u16::from(v.version) <= u16::from(max.version)
        })
        .collect();
    if versions.is_empty() {
        return Err(err(
            "tls_server_config.max_version",
            "is below min_version".into(),
        ));
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| err("tls_server_config", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(
                "tls_server_config.key_file",
                format!("does not match cert_file or is unusable: {e}"),
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((cfg, client_auth))
}

/// Checks `Authorization: Basic` against bcrypt hashes.
///
/// bcrypt is slow on purpose (cost 10 is tens of milliseconds), so a
/// scraper that presents the same right password on every scrape would pay
/// it each time. As the toolkit does, a success is remembered: by a SHA-256
/// of a per-process random key, the user and the password, never the
/// password itself. Failures are not remembered.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// A valid hash to check unknown users against, so the answer takes as
    /// long for a wrong user as for a wrong password.
    decoy: String,
    key: [u8; 32],
    good: Mutex<HashSet<[u8; 32]>>,
}

/// Remembered successes before the cache is emptied (bounds memory).
const CACHE: usize = 256;

/// Credentials from an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl BasicAuth {
    fn new(
        users: BTreeMap<String, String>,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<BasicAuth, ConfigError> {
        let mut cost = 10;
        for (user, hash) in &users {
            if user.contains(':') {
                return Err(err(
                    &format!("basic_auth_users.{user}"),
                    "a user name cannot contain ':' (Basic auth splits on it)".into(),
                ));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
                err(
                    &format!("basic_auth_users.{user}"),
                    format!("is not a bcrypt hash ({e}); make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"),
                )
            })?;
            cost = parts.get_cost();
        }
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| err("basic_auth_users", "no randomness for the cache key".into()))?;
        let decoy = bcrypt::hash("fivetuple decoy", cost)
            .map_err(|e| err("basic_auth_users", e.to_string()))?;
        Ok(BasicAuth {
            users: users.into_iter().collect(),
            decoy,
            key,
            good: Mutex::new(HashSet::new()),
        })
    }

    /// Parses an `Authorization` header value: `Basic base64(user:password)`.
    pub fn credentials(header: Option<&str>) -> Option<Credentials> {
        use base64::Engine;
        let v = header?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (user, password) = s.split_once(':')?;
        Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    fn fingerprint(&self, c: &Credentials) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.key);
        ctx.update(c.user.as_bytes());
        ctx.update(&[0]);
        ctx.update(c.password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Whether `c` is already known good (no bcrypt needed).
    pub fn cached(&self, c: &Credentials) -> bool {
        let fp = self.fingerprint(c);
        self.good
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&fp)
    }

    /// Checks `c` with bcrypt (slow: call it off the async runtime).
    pub fn verify(&self, c: &Credentials) -> bool {
        let (hash, known) = match self.users.get(&c.user) {
            Some(h) => (h.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let ok = bcrypt::verify(&c.password, hash).unwrap_or(false) && known;
        if ok {
            let fp = self.fingerprint(c);
            let mut good = self.good.lock().unwrap_or_else(|p| p.into_inner());
            if good.len() >= CACHE {
                good.clear();
            }
            good.insert(fp);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("ft-webcfg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn load(d: &Dir, yaml: &str) -> Result<WebConfig, String> {
        let f = d.0.join("web.yml");
        std::fs::write(&f, yaml).unwrap();
        WebConfig::load(&f).map_err(|e| e.to_string())
    }

    fn write_cert(d: &Dir) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.0.join("s.crt"), c.cert.pem()).unwrap();
        std::fs::write(d.0.join("s.key"), c.signing_key.serialize_pem()).unwrap();
    }

    #[test]
    fn bad_files_name_the_field() {
        let d = dir("bad");
        write_cert(&d);
        for (yaml, wanted) in [
            ("tls_server_config:\n  key_file: s.key\n", "tls_server_config.cert_file: is missing"),
            ("tls_server_config:\n  cert_file: s.crt\n", "tls_server_config.key_file: is missing"),
            ("tls_server_config:\n  cert_file: nope.crt\n  key_file: s.key\n", "tls_server_config.cert_file: cannot read"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.crt\n", "tls_server_config.key_file"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth_type: Maybe\n", "client_auth_type: \"Maybe\" is not a client auth type"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth_type: RequireAnyClientCert\n", "without verifying"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file: is required"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_ca_file: s.crt\n", "client_ca_file: is set but client_auth_type is NoClientCert"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  min_version: TLS10\n", "min_version: TLS10 is not supported"),
            ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  cipher_suites: []\n", "unknown field `cipher_suites`"),
            ("basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice: is not a bcrypt hash"),
            ("rate_limit: {}\n", "unknown field `rate_limit`"),
            ("tls_server_config: [\n", "--web.config.file"),
        ] {
            let e = load(&d, yaml).err().unwrap_or_else(|| panic!("accepted {yaml:?}"));
            assert!(e.contains(wanted), "{yaml:?}: {e}");
            assert!(e.contains(&d.0.display().to_string()), "{e}");
        }
    }

    #[test]
    fn good_files_load_with_paths_relative_to_the_file() {
        let d = dir("good");
        write_cert(&d);
        let c = load(&d, "").unwrap();
        assert!(c.tls.is_none() && c.auth.is_none());
        let c = load(&d, "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: s.crt\n").unwrap();
        assert!(c.tls.is_some());
        assert_eq!(c.client_auth, ClientAuth::RequireAndVerify);
        let hash = bcrypt::hash("pw", 4).unwrap();
        let c = load(&d, &format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        let auth = c.auth.unwrap();
        let right = Credentials {
            user: "alice".into(),
            password: "pw".into(),
        };
        assert!(!auth.cached(&right));
        assert!(auth.verify(&right));
        assert!(auth.cached(&right), "a success is remembered");
        let wrong = Credentials {
            user: "alice".into(),
            password: "pW".into(),
        };
        assert!(!auth.verify(&wrong) && !auth.cached(&wrong));
        let nobody = Credentials {
            user: "bob".into(),
            password: "pw".into(),
        };
        assert!(!auth.verify(&nobody));
    }

    #[test]
    fn basic_credentials_are_parsed_from_the_header() {
        // "alice:p:w" in base64: the password may hold ':'.
        assert_eq!(
            BasicAuth::credentials(Some("Basic YWxpY2U6cDp3")),
            Some(Credentials {
                user: "alice".into(),
                password: "p:w".into()
            })
        );
        assert_eq!(BasicAuth::credentials(Some("Bearer YWxpY2U6cDp3")), None);
        assert_eq!(BasicAuth::credentials(Some("Basic !!!")), None);
        assert_eq!(BasicAuth::credentials(None), None);
    }
}
