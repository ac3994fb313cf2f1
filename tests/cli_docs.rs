//! The man pages and shell completions generated from the CLI definition
//! (`prov-agent manpages DIR`, `prov-agent completions SHELL`), read by
//! the real tools: groff renders every page without a warning and with
//! each subcommand's options, bash parses the completion script; and
//! `--version` names the backends built in.

mod common;

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_prov-agent");

#[test]
fn every_man_page_renders_with_groff_and_documents_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENT)
        .arg("manpages")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for expected in [
        "prov-agent.1",
        "prov-agent-enroll.1",
        "prov-agent-rotate.1",
        "prov-agent-run.1",
        "prov-agent-status.1",
        "prov-agent-check.1",
        "prov-agent-claim.1",
        "prov-agent-claim-import.1",
        "prov-agent-claim-generate.1",
        "prov-agent-keys-list.1",
        "prov-agent-completions.1",
    ] {
        assert!(
            pages.iter().any(|p| p == expected),
            "{expected} not in {pages:?}"
        );
    }
    // The internal commands have no page.
    assert!(!pages
        .iter()
        .any(|p| p.contains("key-helper") || p.contains("manpages")));
    for page in &pages {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.path().join(page))
            .output()
            .unwrap();
        assert!(out.status.success(), "{page}");
        assert!(
            out.stderr.is_empty(),
            "groff warns about {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let render = |page: &str| {
        let out = Command::new("groff")
            // Plain text: no overstrike bold or underline.
            .args(["-man", "-Tascii", "-P-c", "-P-b", "-P-u"])
            .arg(dir.path().join(page))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let rotate = render("prov-agent-rotate.1");
    assert!(rotate.contains("if-due"), "{rotate}");
    let check = render("prov-agent-check.1");
    assert!(check.contains("offline"), "{check}");
    let main = render("prov-agent.1");
    for sub in ["enroll", "rotate", "status", "check", "claim", "keys"] {
        assert!(main.contains(sub), "{sub} not in prov-agent(1)");
    }
}

#[test]
fn the_bash_completion_parses_and_completes_the_subcommands() {
    let out = Command::new(AGENT)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prov-agent.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Completing `prov-agent ro` offers rotate, as bash would.
    let complete = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(prov-agent ro); COMP_CWORD=1; COMP_LINE='prov-agent ro'; \
             COMP_POINT=${{#COMP_LINE}}; \
             f=$(complete -p prov-agent); f=${{f#*-F }}; f=${{f%% *}}; \
             \"$f\" prov-agent ro prov-agent; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    let offered = String::from_utf8_lossy(&complete.stdout);
    assert!(
        offered.lines().any(|l| l == "rotate"),
        "offered {offered:?}: {}",
        String::from_utf8_lossy(&complete.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = Command::new(AGENT)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("enroll"),
            "{shell}"
        );
    }
}

#[test]
fn version_names_the_backends_built_in() {
    let out = Command::new(AGENT).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("prov-agent {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for (built, name) in [
        (cfg!(feature = "tpm"), "tpm"),
        (cfg!(feature = "pkcs11"), "pkcs11"),
        (true, "file"),
    ] {
        assert_eq!(text.contains(name), built, "{name}: {text}");
    }
}
