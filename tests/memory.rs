//! No copy of a secret left in the agent's memory (issue #13), looked for
//! the way an attacker with a core image would: after a keys-mode
//! enrollment (the service sends the device's private key, which goes into
//! the hardware) the agent writes all its writable memory to a file at exit
//! (`PROV_AGENT_MEMDUMP`, test builds only, src/memdump.rs), and the test
//! searches it for the key in every form it travelled in (PEM, JSON-escaped
//! PEM, DER), for the ownership token and for the PKCS#11 PIN.
//!
//! The same for the daemon after a keys-mode rotation on command, stopped
//! with SIGTERM.
//!
//! The dump's own check: a string the agent keeps is in it (so the dump
//! sees the heap) and one it freed is not (freed memory is wiped).

mod common;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

/// Where `needle` occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Base64url without padding of `bytes` (a multiple of 3 long).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_eq!(bytes.len() % 3, 0);
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
        }
    }
    out
}

/// DER openings of an RSA-2048 private key (what CreateKeysAndCertificate
/// sends): PKCS#1 RSAPrivateKey (version 0, a 257-byte modulus) and PKCS#8
/// (version 0, rsaEncryption).
const RSA_PKCS1_DER: &[u8] = &[0x02, 0x01, 0x00, 0x02, 0x82, 0x01, 0x01, 0x00];
const PKCS8_RSA_DER: &[u8] = &[
    0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    0x05, 0x00, 0x04, 0x82,
];

async fn keys_mode_enroll_leaves_no_key_in_memory(backend: Backend, pin: Option<&str>) {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, backend, "MODE = keys\n");
    device.import_claim().await;
    let dump = device.dir.path().join("memory.dump");
    let mark = hex::encode(rand::random::<[u8; 8]>());
    let out = device
        .run_env(
            &["enroll"],
            &[
                ("PROV_AGENT_MEMDUMP", dump.to_str().unwrap()),
                ("PROV_AGENT_MEMDUMP_MARK", &mark),
            ],
        )
        .await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let memory = std::fs::read(&dump).unwrap();
    assert!(memory.len() > 100_000, "the dump is {} bytes", memory.len());
    assert!(
        find(&memory, format!("KEPT-{mark}").as_bytes()).is_some(),
        "the dump does not see the heap"
    );
    assert!(
        find(&memory, format!("FREED-{mark}").as_bytes()).is_none(),
        "freed memory is not wiped"
    );
    for (what, needle) in [
        ("a PEM private key", b"PRIVATE KEY".as_slice()),
        ("an RSA private key (PKCS#1 DER)", RSA_PKCS1_DER),
        ("an RSA private key (PKCS#8 DER)", PKCS8_RSA_DER),
    ] {
        if let Some(at) = find(&memory, needle) {
            let context = &memory[at.saturating_sub(64)..(at + 96).min(memory.len())];
            panic!(
                "{what} is in the agent's memory at offset {at}: {:?}",
                String::from_utf8_lossy(context)
            );
        }
    }
    // The ownership token (the emulator's: base64url of "<certificate
    // id>.<expiry>", then its MAC): its first 84 characters encode the
    // certificate id's first 63 bytes, whatever follows.
    let certificate_id = device.identity().unwrap().certificate_id;
    let token_start = base64url(&certificate_id.as_bytes()[..63]);
    assert!(
        find(&memory, token_start.as_bytes()).is_none(),
        "the ownership token is in the agent's memory after the commit"
    );
    if let Some(pin) = pin {
        assert!(
            find(&memory, pin.as_bytes()).is_none(),
            "the PIN is in the agent's memory"
        );
    }
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn softhsm_keys_mode_enroll_leaves_no_key_or_pin_in_memory() {
    keys_mode_enroll_leaves_no_key_in_memory(
        Backend::pkcs11("memory"),
        Some(common::softhsm::USER_PIN),
    )
    .await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_keys_mode_enroll_leaves_no_key_in_memory() {
    keys_mode_enroll_leaves_no_key_in_memory(Backend::tpm(), None).await;
}

/// The daemon, after a keys-mode rotation on command (the service's key
/// crossed its MQTT session, its parser and the pipe to the key helper),
/// stopped with SIGTERM: no private key, no ownership token and no PIN in
/// its memory.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_after_a_keys_mode_rotation_holds_no_key_or_pin() {
    use common::daemon::{send_rotation_command, wait_rotated, Daemon};
    use std::time::Duration;

    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("memory-daemon"), "MODE = keys\n").await;
    let before = device.identity().unwrap();
    let dump = device.dir.path().join("daemon.dump");
    let mark = hex::encode(rand::random::<[u8; 8]>());
    let daemon = Daemon::start_env(
        &device,
        &[
            ("PROV_AGENT_MEMDUMP", dump.to_str().unwrap()),
            ("PROV_AGENT_MEMDUMP_MARK", &mark),
        ],
    );
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;
    daemon.stop().await;

    let memory = std::fs::read(&dump).unwrap();
    assert!(
        find(&memory, format!("KEPT-{mark}").as_bytes()).is_some(),
        "the dump does not see the heap"
    );
    // The token's first 84 characters, as in the enroll test above.
    let token_start = base64url(&new.as_bytes()[..63]);
    for (what, needle) in [
        ("a PEM private key", b"PRIVATE KEY".as_slice()),
        ("an RSA private key (PKCS#1 DER)", RSA_PKCS1_DER),
        ("an RSA private key (PKCS#8 DER)", PKCS8_RSA_DER),
        ("the PIN", common::softhsm::USER_PIN.as_bytes()),
        ("the ownership token", token_start.as_bytes()),
    ] {
        if let Some(at) = find(&memory, needle) {
            let context = &memory[at.saturating_sub(64)..(at + 96).min(memory.len())];
            panic!(
                "{what} is in the daemon's memory at offset {at}: {:?}",
                String::from_utf8_lossy(context)
            );
        }
    }
}
