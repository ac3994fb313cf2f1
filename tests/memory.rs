//! No copy of a secret left in the agent's memory (issue #13), looked for
//! the way an attacker with a core image would: after a keys-mode
//! enrollment (the service sends the device's private key, which goes into
//! the hardware) the agent writes all its writable memory to a file at exit
//! (`PROV_AGENT_MEMDUMP`, test builds only, src/memdump.rs), and the test
//! searches it for the key in every form it travelled in (PEM, JSON-escaped
//! PEM, DER), for the ownership token and for the PKCS#11 PIN. The key is
//! the one the emulator sent (it records it for the test): besides the PEM
//! markers and DER openings, the test looks for pieces of its base64 body,
//! of its DER, and of each of its secret numbers (d, p, q, dP, dQ, qInv)
//! big-endian, as they cross C_CreateObject and TPM2B_SENSITIVE, and
//! byte-reversed, as a big-number library on a little-endian machine keeps
//! them.
//!
//! The same for the daemon after a keys-mode rotation on command, stopped
//! with SIGTERM, on both hardware backends, and for every key helper it
//! started (each writes its own dump when the daemon ends it).
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

/// The pieces of `pem` (a private key the emulator sent) the test looks
/// for, each named: 48 characters from the middle of a base64 line, 32
/// bytes from the middle of the DER, and 24 bytes from the middle of each
/// secret number, big-endian and byte-reversed.
fn key_pieces(pem: &str) -> Vec<(String, Vec<u8>)> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PrivateKeyParts;

    let mut pieces = Vec::new();
    let line = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .nth(3)
        .expect("a 2048-bit key's PEM has more than four base64 lines");
    assert!(line.len() >= 64, "{}", line.len());
    pieces.push((
        "its PEM's base64".to_string(),
        line.as_bytes()[8..56].to_vec(),
    ));
    let der = pem::parse(pem).unwrap().into_contents();
    let mid = der.len() / 2;
    pieces.push(("its DER".to_string(), der[mid..mid + 32].to_vec()));
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .expect("the emulator sends an RSA key");
    let primes = key.primes();
    let numbers = [
        ("d", key.d().to_bytes_be()),
        ("p", primes[0].to_bytes_be()),
        ("q", primes[1].to_bytes_be()),
        ("dP", key.dp().unwrap().to_bytes_be()),
        ("dQ", key.dq().unwrap().to_bytes_be()),
        ("qInv", key.qinv().unwrap().to_bytes_be().1),
    ];
    for (name, be) in numbers {
        assert!(be.len() >= 100, "{name} is {} bytes", be.len());
        let mid = be.len() / 2;
        let window = be[mid - 12..mid + 12].to_vec();
        let mut reversed = window.clone();
        reversed.reverse();
        pieces.push((format!("its {name} (big-endian)"), window));
        pieces.push((format!("its {name} (byte-reversed)"), reversed));
    }
    pieces
}

/// Panics naming the first of `pieces` of `key` found in `memory`.
fn assert_no_piece(memory: &[u8], pieces: &[(String, Vec<u8>)], whose: &str) {
    for (what, needle) in pieces {
        if let Some(at) = find(memory, needle) {
            panic!("a piece of the service-sent key, {what}, is in {whose} memory at offset {at}");
        }
    }
}

/// The emulator, recording the keys it sends.
async fn recording_cloud() -> TestCloud {
    TestCloud::start_with(|c| c.record_issued_keys = true).await
}

/// The pieces of every key the emulator sent after its first `before`
/// (one, unless a request was retried: then each answer's key crossed the
/// agent).
fn the_sent_keys(cloud: &TestCloud, before: usize) -> Vec<(String, Vec<u8>)> {
    let keys = cloud.handle.issued_keys();
    assert!(keys.len() > before, "the emulator sent no key");
    keys[before..]
        .iter()
        .flat_map(|pem| key_pieces(pem))
        .collect()
}

async fn keys_mode_enroll_leaves_no_key_in_memory(backend: Backend, pin: Option<&str>) {
    let cloud = recording_cloud().await;
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
    let pieces = the_sent_keys(&cloud, 0);
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
    assert_no_piece(&memory, &pieces, "the agent's");
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
/// its memory, nor in the memory of any key helper it started.
async fn the_daemon_after_a_keys_mode_rotation_holds_no_secret(
    backend: Backend,
    pin: Option<&str>,
    pin_variable: Option<&str>,
) {
    use common::daemon::{send_rotation_command, wait_rotated, Daemon};
    use std::time::Duration;

    let cloud = recording_cloud().await;
    let device = Device::enrolled(&cloud, backend, "MODE = keys\n").await;
    let sent_before = cloud.handle.issued_keys().len();
    let before = device.identity().unwrap();
    let dump = device.dir.path().join("daemon.dump");
    let mark = hex::encode(rand::random::<[u8; 8]>());
    let mut env = vec![
        ("PROV_AGENT_MEMDUMP", dump.to_str().unwrap().to_string()),
        ("PROV_AGENT_MEMDUMP_MARK", mark.clone()),
    ];
    if let (Some(name), Some(pin)) = (pin_variable, pin) {
        // PIN_SOURCE = env:NAME: the daemon takes the PIN at start.
        device.pin_from_variable(name);
        env.push((name, pin.to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start_env(&device, &env);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;
    daemon.stop().await;
    let pieces = the_sent_keys(&cloud, sent_before);

    // The token's first 84 characters, as in the enroll test above.
    let token_start = base64url(&new.as_bytes()[..63]);
    let mut needles = vec![
        ("a PEM private key", b"PRIVATE KEY".to_vec()),
        ("an RSA private key (PKCS#1 DER)", RSA_PKCS1_DER.to_vec()),
        ("an RSA private key (PKCS#8 DER)", PKCS8_RSA_DER.to_vec()),
        ("the ownership token", token_start.into_bytes()),
    ];
    if let Some(pin) = pin {
        needles.push(("the PIN", pin.as_bytes().to_vec()));
    }
    let check = |memory: &[u8], whose: &str| {
        assert!(
            find(memory, format!("KEPT-{mark}").as_bytes()).is_some(),
            "the dump of {whose} memory does not see the heap"
        );
        for (what, needle) in &needles {
            if let Some(at) = find(memory, needle) {
                let context = &memory[at.saturating_sub(64)..(at + 96).min(memory.len())];
                panic!(
                    "{what} is in {whose} memory at offset {at}: {:?}",
                    String::from_utf8_lossy(context)
                );
            }
        }
        assert_no_piece(memory, &pieces, whose);
    };
    check(&std::fs::read(&dump).unwrap(), "the daemon's");
    // Every helper the daemon started and ended wrote its own dump: one
    // for the first handshake at least, one for the rotation (which
    // imported the key) and one for the handshake after it.
    let helpers: Vec<_> = std::fs::read_dir(device.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("daemon.dump.helper-"))
        })
        .collect();
    assert!(
        helpers.len() >= 2,
        "{} key helper dumps: {helpers:?}",
        helpers.len()
    );
    for path in helpers {
        check(
            &std::fs::read(&path).unwrap(),
            &format!("a key helper's ({path:?})"),
        );
    }
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_after_a_keys_mode_rotation_holds_no_key_or_pin() {
    the_daemon_after_a_keys_mode_rotation_holds_no_secret(
        Backend::pkcs11("memory-daemon"),
        Some(common::softhsm::USER_PIN),
        None,
    )
    .await;
}

/// The same with `PIN_SOURCE = env:NAME`, the one source the daemon must
/// keep for the helpers it starts later: it keeps it sealed in a memfd,
/// outside its memory, and each helper gets it over the pipe for its one
/// login.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_with_a_pin_from_its_environment_holds_no_key_or_pin() {
    the_daemon_after_a_keys_mode_rotation_holds_no_secret(
        Backend::pkcs11("memory-daemon-env"),
        Some(common::softhsm::USER_PIN),
        Some("GATEWAY_TOKEN_PIN"),
    )
    .await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_on_a_tpm_after_a_keys_mode_rotation_holds_no_key() {
    the_daemon_after_a_keys_mode_rotation_holds_no_secret(Backend::tpm(), None, None).await;
}

/// The test's own check: each piece is found in the form it names (the
/// PEM text, the DER, each number in either byte order), so a copy of the
/// key in any of those forms fails the tests above.
#[test]
fn every_piece_is_found_in_a_copy_of_the_key() {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PrivateKeyParts;

    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let mut copies: Vec<Vec<u8>> = vec![
        pem.as_bytes().to_vec(),
        key.to_pkcs8_der().unwrap().as_bytes().to_vec(),
    ];
    let primes = key.primes();
    for number in [
        key.d().to_bytes_be(),
        primes[0].to_bytes_be(),
        primes[1].to_bytes_be(),
        key.dp().unwrap().to_bytes_be(),
        key.dq().unwrap().to_bytes_be(),
        key.qinv().unwrap().to_bytes_be().1,
    ] {
        let mut reversed = number.clone();
        reversed.reverse();
        copies.push(number);
        copies.push(reversed);
    }
    let pieces = key_pieces(&pem);
    assert_eq!(pieces.len(), copies.len());
    for ((what, needle), copy) in pieces.iter().zip(&copies) {
        assert!(
            find(copy, needle).is_some(),
            "{what} is not found in its copy"
        );
    }
}
