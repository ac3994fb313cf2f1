//! A TPM the agent shares with other programs, through tpm2-abrmd: while
//! another program draws random numbers in a loop and a third holds a key
//! of its own loaded, enrollment, rotation and the daemon's rotation (its
//! TLS handshakes signed by the TPM) succeed, and the other program's key
//! is still loaded and signs afterwards: the agent flushed nothing of
//! theirs.
#![cfg(feature = "tpm")]

mod common;

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::abrmd::Abrmd;
use common::backend::Backend;
use common::daemon::{send_rotation_command, wait_rotated, Daemon};
use common::device::{text, Device};
use common::emulator::TestCloud;

/// `tpm2_getrandom` over and over, until killed.
fn busy_loop(tpm: &Abrmd) -> Child {
    tpm.command("bash")
        .args([
            "-c",
            "while :; do tpm2_getrandom --hex 32 >/dev/null || exit 1; done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn another_programs_use_of_the_tpm_neither_fails_the_agent_nor_loses_its_objects() {
    let cloud = TestCloud::start().await;
    let backend = Backend::tpm_shared();
    let Backend::TpmShared(tpm) = &backend else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    // The other program's key: made with tpm2-openssl, then loaded by an
    // `openssl dgst` that waits for its input with the key in the TPM.
    let key = dir.path().join("other.tss2.pem");
    let out = tpm
        .command("openssl")
        .args(["genpkey", "-provider", "tpm2", "-provider", "default"])
        .args(["-algorithm", "EC", "-pkeyopt", "group:P-256", "-out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = dir.path().join("other.pub.pem");
    let out = tpm
        .command("openssl")
        .args(["pkey", "-provider", "tpm2", "-provider", "default", "-in"])
        .arg(&key)
        .args(["-pubout", "-out"])
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl pkey");
    let signature = dir.path().join("sig");
    let mut signer = tpm
        .command("openssl")
        .args([
            "dgst",
            "-sha256",
            "-provider",
            "tpm2",
            "-provider",
            "default",
        ])
        .args(["-propquery", "?provider=tpm2", "-sign"])
        .arg(&key)
        .arg("-out")
        .arg(&signature)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut busy = busy_loop(tpm);

    let device = Device::new(&cloud, backend, "MODE = csr\n");
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let out = device.run(&["rotate"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let thing = device.identity().unwrap().thing_name;

    // The daemon: its connection's handshake and a commanded rotation.
    let daemon = Daemon::start(&device);
    daemon
        .wait_log("connected", 1, Duration::from_secs(30))
        .await;
    let before = device.identity().unwrap().certificate_id;
    send_rotation_command(&cloud, &thing).await;
    wait_rotated(&device, &before, Duration::from_secs(60)).await;
    daemon.stop().await;

    assert!(
        busy.try_wait().unwrap().is_none(),
        "the other program's TPM loop failed"
    );
    let _ = busy.kill();
    let _ = busy.wait();
    // The other program's key is still loaded: it signs now.
    signer
        .stdin
        .take()
        .unwrap()
        .write_all(b"signed after the agent's work")
        .unwrap();
    let out = signer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the other program's key no longer signs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = dir.path().join("message");
    std::fs::write(&message, b"signed after the agent's work").unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&signature)
        .arg(&message)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the other program's signature does not verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
