//! The state directory's disk fills up in the middle of a rotation: at
//! every amount of space left (0, 1, 2, ... pages of a small tmpfs), the
//! rotation either succeeds or fails with an error that says the disk is
//! full and names the file, the device keeps a working identity, and once
//! there is space again the next `rotate` completes. Among the failures
//! there must be the new key's file (the file store's PEM, the TPM key
//! file) and the journal, and after each of those the state directory is
//! exactly what it was. The page steps never make the identity's write the
//! one that fails (the journal's need as much room), so a second test fills
//! the disk exactly there.
//!
//! The tmpfs is mounted over the state directory in a mount namespace of
//! the agent's own (`unshare --mount`, root), filled to leave the space
//! wanted, and its content copied back out after the run, so that the test
//! sees what the agent left.

mod common;

use std::path::Path;
use std::process::Output;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

/// Runs the shell `body` with the state directory on a 256 KiB tmpfs of
/// its own (its content copied in first), then puts what was left there in
/// the state directory. `body` sees `$agent`, `$config`, `$state` and `$1`
/// (`arg`), may fill the disk into `$state/.fill` (removed afterwards), and
/// sets `rc`, the exit status.
fn on_a_small_tmpfs(device: &Device, body: &str, arg: &str) -> Output {
    let state = device.state_dir();
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        set -e
        agent=$1 config=$2 state=$3 saved=$4 out=$5
        shift 5
        cp -a "$state/." "$saved/"
        mount -t tmpfs -o size=256k,mode=0700 prov-agent-test "$state"
        cp -a "$saved/." "$state/"
        set +e
        {body}
        rm -f "$state/.fill"
        cp -a "$state/." "$out/"
        exit $rc
    "#
    );
    let saved = work.path().join("saved");
    let out = work.path().join("out");
    std::fs::create_dir(&saved).unwrap();
    std::fs::create_dir(&out).unwrap();
    let output = common::in_mount_namespace(
        &script,
        &[
            std::ffi::OsStr::new(env!("CARGO_BIN_EXE_prov-agent")),
            device.config.as_os_str(),
            state.as_os_str(),
            saved.as_os_str(),
            out.as_os_str(),
            arg.as_ref(),
        ],
        device.backend.env(),
    );
    // What the agent left becomes the state directory.
    replace_dir(&state, &out);
    output
}

/// Runs `prov-agent rotate` with `free_pages` pages left on the tmpfs.
fn rotate_on_a_full_disk(device: &Device, free_pages: u32) -> Output {
    let body = r#"
        # Fill the disk, then give back the pages wanted.
        dd if=/dev/zero of="$state/.fill" bs=4096 2>/dev/null || true
        truncate -s "-$(($1 * 4096))" "$state/.fill"
        PROV_AGENT_LOG=warn "$agent" --config "$config" rotate
        rc=$?
    "#;
    on_a_small_tmpfs(device, body, &free_pages.to_string())
}

fn replace_dir(dir: &Path, with: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", with.display()))
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The file a failed run's error (its last line, `prov-agent: ...`) says
/// could not be written for lack of space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FullAt {
    /// `STATE_DIR/journal.json`.
    Journal,
    /// The new key's file in the key store's directory (`keys/<label>.pem`
    /// for the file store, the TPM key file `tpm/<label>.tpmkey`).
    KeyFile,
    /// Anything else (after the commit: the export directory).
    Other,
}

/// Which write the disk-full error of `stderr` names.
fn full_at(stderr: &str, state: &Path, key_dir: &Path) -> FullAt {
    let error = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("prov-agent: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("No space left on device"),
        "the error does not say the disk is full: {error}"
    );
    let journal = state.join("journal.json");
    if error.contains(&format!("cannot write journal {}:", journal.display())) {
        return FullAt::Journal;
    }
    let key_file = format!("key file {}/", key_dir.display());
    if error.contains(&key_file) {
        return FullAt::KeyFile;
    }
    FullAt::Other
}

async fn rotation_on_a_filling_disk(backend: Backend) {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, backend, "").await;
    let state = device.state_dir();
    let key_dir = state.join(match device.backend.name() {
        "tpm" => "tpm",
        _ => "keys",
    });
    let (mut failed, mut succeeded) = (Vec::new(), 0);
    for free_pages in 0..12 {
        let before = device.identity().expect("an identity");
        let files_before = device.state_files();
        let out = rotate_on_a_full_disk(&device, free_pages);
        let after = device.identity().expect("the device kept an identity");
        if out.status.success() {
            succeeded += 1;
            assert_ne!(
                after.certificate_id,
                before.certificate_id,
                "{}",
                text(&out)
            );
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{}", text(&out));
            let at = full_at(&stderr, &state, &key_dir);
            failed.push(at);
            if at == FullAt::Other {
                // The identity before the rotation, or (if the failure came
                // after the commit) the new one: either way a working one.
            } else {
                // Before the commit: rolled back, the state exactly as it
                // was (the old identity, its key, no journal, no new key
                // file, nothing half written).
                assert_eq!(after, before, "{free_pages} pages free: {}", text(&out));
                assert_eq!(
                    device.state_files(),
                    files_before,
                    "{free_pages} pages free, {at:?} full: the state changed: {}",
                    text(&out)
                );
            }
        }
        device
            .round_trip(&cloud)
            .await
            .unwrap_or_else(|e| panic!("{free_pages} pages free: identity does not work: {e}"));
        // With space again, the next rotation completes: it finishes an
        // interrupted one from its journal (a failure after the commit,
        // such as publishing the export directory, leaves the new identity
        // and the last steps to do), or rotates.
        let committed = after.certificate_id != before.certificate_id;
        let again = device.run(&["rotate"]).await;
        assert!(
            again.status.success(),
            "{free_pages} pages free, then: {}",
            text(&again)
        );
        if !committed {
            assert_ne!(
                device.identity().unwrap().certificate_id,
                before.certificate_id,
                "{free_pages} pages free: {}\nthen: {}",
                text(&out),
                text(&again)
            );
        }
        assert!(
            !state.join("journal.json").exists(),
            "{free_pages} pages free: a journal is left after the next run: {}",
            text(&again)
        );
        device.round_trip(&cloud).await.unwrap();
    }
    // The sweep reached both writes before the commit (and the identity's
    // own is the_identity_commit_on_a_full_disk's).
    for at in [FullAt::Journal, FullAt::KeyFile] {
        assert!(
            failed.contains(&at),
            "no amount of space made the {at:?} write fail: {failed:?}"
        );
    }
    assert!(succeeded > 0, "the rotation never had enough space");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_rotation_on_a_filling_disk() {
    rotation_on_a_filling_disk(Backend::File).await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_rotation_on_a_filling_disk() {
    rotation_on_a_filling_disk(Backend::tpm()).await;
}

/// The disk is full exactly when the new identity is written (the rotation
/// stops itself there, SIGSTOP at a fault point, the test fills the tmpfs
/// and lets it go on): the run fails saying the disk is full and naming the
/// file, identity.json is the old one and works, the journal keeps the
/// verified new certificate, and the next run commits it.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn the_identity_commit_on_a_full_disk() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    let state = device.state_dir();
    let body = r#"
        PROV_AGENT_FAULT=before-identity-write PROV_AGENT_LOG=warn \
            "$agent" --config "$config" rotate &
        pid=$!
        # Until it has stopped itself before writing the identity.
        while [ "$(awk '/^State:/ { print $2 }' /proc/$pid/status 2>/dev/null)" != T ]; do
            kill -0 $pid 2>/dev/null || break
            sleep 0.05
        done
        dd if=/dev/zero of="$state/.fill" bs=4096 2>/dev/null
        kill -CONT $pid
        wait $pid
        rc=$?
    "#;
    let output = on_a_small_tmpfs(&device, body, "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        stderr.contains("stopping at before-identity-write"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("identity.json") && stderr.contains("No space left on device"),
        "the error does not say which file and why: {}",
        text(&output)
    );
    assert_eq!(device.identity().unwrap(), before);
    device.round_trip(&cloud).await.unwrap();
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("journal.json")).unwrap()).unwrap();
    assert_eq!(journal["state"]["phase"], "VERIFIED", "{journal}");

    let again = device.run(&["rotate"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_ne!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
    assert!(!state.join("journal.json").exists());
    device.round_trip(&cloud).await.unwrap();
}
