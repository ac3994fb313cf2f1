//! The PKCS#11 token's storage turns read-only (a full or failing flash, a
//! remount) under a rotation: the rotation fails with an error that names
//! the token operation, the device keeps its working identity, and once
//! the storage is writable again the next rotation completes.
//!
//! SoftHSM's token directory is bind-mounted read-only in a mount
//! namespace of the agent's own (`unshare --mount`, root).
#![cfg(feature = "pkcs11")]

mod common;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_token_fails_the_rotation_and_keeps_the_identity() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("read-only"), "").await;
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    let store = hsm.store_dir();
    let before = device.identity().unwrap();

    let script = r#"
        set -e
        agent=$1 config=$2 store=$3
        mount --bind "$store" "$store"
        mount -o remount,bind,ro "$store"
        # Every token file read-only, as on a read-only file system.
        exec "$agent" --config "$config" rotate
    "#;
    let mut env = device.backend.env();
    env.push(("PROV_AGENT_LOG".into(), "warn".into()));
    let out = common::in_mount_namespace(
        script,
        &[
            std::ffi::OsStr::new(env!("CARGO_BIN_EXE_prov-agent")),
            device.config.as_os_str(),
            store.as_os_str(),
        ],
        env,
    );
    assert!(
        !out.status.success(),
        "rotated on a read-only token: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", text(&out));
    assert!(
        stderr.contains("C_") || stderr.contains("CKR_"),
        "the error does not name the token operation: {}",
        text(&out)
    );
    assert!(
        stderr.contains("storage is writable"),
        "the error does not point at the storage: {}",
        text(&out)
    );
    assert_eq!(device.identity().unwrap(), before, "{}", text(&out));
    device.round_trip(&cloud).await.unwrap();

    // Writable again: the next rotation completes.
    let again = device.run(&["rotate"]).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_ne!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
    assert!(!device.state_dir().join("journal.json").exists());
    device.round_trip(&cloud).await.unwrap();
}
