//! Compiles every `src/bpf/*.bpf.c` into `$OUT_DIR/NAME.bpf.o` with clang
//! (`-target bpf -O2 -g`, so the object carries the BTF the loader needs).
//! Nothing compiled is committed. A program that includes `"vmlinux.h"` (for
//! CO-RE access to kernel structs) gets one generated into `$OUT_DIR` by
//! `bpftool btf dump file /sys/kernel/btf/vmlinux format c`; programs that
//! only touch UAPI context structs (the sock_addr hook) use `<linux/bpf.h>`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let src = Path::new("src/bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => other.to_string().leak(),
        Err(_) => "x86",
    };
    // Debian keeps <asm/types.h> under the multiarch directory, which clang's
    // bpf target does not search by itself.
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let mut sources: Vec<PathBuf> = fs::read_dir(src)
        .expect("src/bpf exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    let mut vmlinux_done = false;
    for source in &sources {
        let text = fs::read_to_string(source).expect("readable BPF source");
        if text.contains("#include \"vmlinux.h\"") && !vmlinux_done {
            generate_vmlinux_h(&out);
            vmlinux_done = true;
        }
        let name = source.file_name().unwrap().to_string_lossy();
        let object = out.join(name.replace(".bpf.c", ".bpf.o"));
        // The observer uses an atomic fetch-and-add (-mcpu=v3; Linux 5.12+,
        // and its task storage needs 5.11 anyway); the policy programs keep
        // the default instruction set, for older kernels.
        let cpu = if name.starts_with("observe") {
            "-mcpu=v3"
        } else {
            "-mcpu=generic"
        };
        let status = Command::new(&clang)
            .args(["-target", "bpf", cpu, "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(&out)
            .arg("-I")
            .arg(src)
            .arg("-idirafter")
            .arg(&multiarch)
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {clang:?} to compile {}: {e}; install clang and libbpf-dev (./scripts/setup)",
                    source.display()
                )
            });
        assert!(
            status.success(),
            "{clang} failed to compile {} ({status}); see the messages above",
            source.display()
        );
    }
}

fn generate_vmlinux_h(out: &Path) {
    let bpftool = env::var("BPFTOOL").unwrap_or_else(|_| "bpftool".into());
    let btf = "/sys/kernel/btf/vmlinux";
    println!("cargo:rerun-if-changed={btf}");
    let output = Command::new(&bpftool)
        .args(["btf", "dump", "file", btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {bpftool:?} to generate vmlinux.h: {e}; install bpftool (./scripts/setup)")
        });
    assert!(
        output.status.success(),
        "{bpftool} btf dump file {btf} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::write(out.join("vmlinux.h"), output.stdout).expect("write vmlinux.h into OUT_DIR");
}
