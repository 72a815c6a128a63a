//! `fivetuple completions` and `fivetuple man`, by running the binary: the
//! bash script passes `bash -n` and names the subcommands, the man page is
//! roff with the subcommands listed, and an unknown shell is a clear error.

use std::process::Command;

fn fivetuple(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args(args)
        .output()
        .expect("run fivetuple")
}

#[test]
fn bash_completion_is_valid_bash() {
    let out = fivetuple(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8(out.stdout).unwrap();
    for sub in ["doctor", "repro", "exporter", "top", "completions", "man"] {
        assert!(script.contains(sub), "no {sub} in the bash completion");
    }
    let path =
        std::env::temp_dir().join(format!("fivetuple-completion-{}.bash", std::process::id()));
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    let _ = std::fs::remove_file(&path);
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn zsh_and_fish_completions_are_generated() {
    for (shell, marker) in [
        ("zsh", "#compdef fivetuple"),
        ("fish", "complete -c fivetuple"),
    ] {
        let out = fivetuple(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("doctor"), "{shell}: no doctor");
    }
}

#[test]
fn unknown_shell_is_a_clear_error() {
    let out = fivetuple(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_page_is_roff_with_the_subcommands() {
    let out = fivetuple(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH fivetuple"),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(
        page.contains(".SH NAME") && page.contains(".SH SUBCOMMANDS"),
        "{page}"
    );
    for sub in ["doctor", "repro", "exporter", "top"] {
        assert!(page.contains(sub), "no {sub} in the man page");
    }
}
