//! What the agent refuses on a PKCS#11 token, end to end (the real
//! `prov-agent` on a SoftHSM token):
//!
//! - a key the token generated that does not read back CKA_ALWAYS_SENSITIVE
//!   and CKA_NEVER_EXTRACTABLE (SoftHSM always sets both for a key made
//!   sensitive and unextractable, so a `fault::tampers` point makes the
//!   read-back see the weaker value): refused, naming the key and the
//!   attribute, and destroyed again;
//! - logging in when the token says one more wrong PIN locks it
//!   (CKF_USER_PIN_FINAL_TRY) or the PIN is locked (CKF_USER_PIN_LOCKED).
//!   SoftHSM never sets these by itself (it has no retry counter, only
//!   CKF_USER_PIN_COUNT_LOW after a wrong PIN), but keeps the token's flags
//!   in its token file, `token.object`, and reports what is there: the test
//!   sets them there, so that the agent reads them through C_GetTokenInfo
//!   as from a real token. That a wrong C_Login sets COUNT_LOW in that file
//!   is how the test sees that the agent did not call C_Login.
#![cfg(feature = "pkcs11")]

mod common;

use std::path::PathBuf;

use common::backend::Backend;
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;

const CKF_USER_PIN_COUNT_LOW: u64 = 0x0001_0000;
const CKF_USER_PIN_FINAL_TRY: u64 = 0x0002_0000;
const CKF_USER_PIN_LOCKED: u64 = 0x0004_0000;

/// Needs `fault::tampers`.
#[cfg(feature = "fault-injection")]
mod weak_keys {
    use super::*;
    use cryptoki::object::{Attribute, AttributeType};

    /// Every object on the device's token, as (class, label), sorted.
    fn token_objects(device: &Device) -> Vec<(String, String)> {
        let Backend::Pkcs11(hsm) = &device.backend else {
            unreachable!()
        };
        let _exclusive = common::token_store_exclusive();
        let session = hsm.user_session();
        let mut out: Vec<(String, String)> = session
            .find_objects(&[])
            .unwrap()
            .into_iter()
            .map(|h| {
                let attrs = session
                    .get_attributes(h, &[AttributeType::Class, AttributeType::Label])
                    .unwrap();
                let (mut class, mut label) = (String::new(), String::new());
                for a in attrs {
                    match a {
                        Attribute::Class(c) => class = c.to_string(),
                        Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                        _ => {}
                    }
                }
                (class, label)
            })
            .collect();
        out.sort();
        out
    }

    /// A generated key that reads back as once readable or exportable is
    /// refused: the run fails (exit 5, a key store error) naming the key and
    /// the attribute, the token holds what it held before (the key pair was
    /// destroyed again), nothing is committed; the next enroll, with a token
    /// that tells the truth, completes.
    async fn a_weak_generated_key_is_refused(tampering: &str, attribute: &str) {
        let cloud = TestCloud::start().await;
        let device = Device::new(&cloud, Backend::pkcs11("weak-key"), "");
        device.import_claim().await;
        let before = token_objects(&device);
        assert!(!before.is_empty(), "the claim key is on the token");

        let out = device
            .run_env(&["enroll"], &[("PROV_AGENT_FAULT", tampering)])
            .await;
        let stderr = failed_with(&out, 5);
        assert!(
            stderr.contains(&format!("tampering: {tampering}")),
            "{}",
            text(&out)
        );
        // The enrollment's new key (DEVICE_KEY), by its label.
        let key = device.load_config().keystore.device_key.to_string();
        assert!(
            stderr.contains(&format!("private key {key:?}")),
            "the refusal does not name the key {key}: {}",
            text(&out)
        );
        assert!(
            stderr.contains(&format!("not {attribute}")),
            "the refusal does not name {attribute}: {}",
            text(&out)
        );
        assert!(stderr.contains("destroyed"), "{}", text(&out));
        assert!(!stderr.contains("panicked"), "{}", text(&out));
        assert_eq!(
            token_objects(&device),
            before,
            "the refused key stayed on the token: {}",
            text(&out)
        );
        assert!(device.identity().is_none(), "{}", text(&out));
        assert!(
            cloud.handle.registry().things().unwrap().is_empty(),
            "a thing was registered: {}",
            text(&out)
        );

        let again = device.run(&["enroll"]).await;
        assert!(again.status.success(), "{}", text(&again));
        device.round_trip(&cloud).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_generated_key_not_always_sensitive_is_refused_and_destroyed() {
        a_weak_generated_key_is_refused(
            "pkcs11-generated-not-always-sensitive",
            "CKA_ALWAYS_SENSITIVE",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_generated_key_not_never_extractable_is_refused_and_destroyed() {
        a_weak_generated_key_is_refused(
            "pkcs11-generated-not-never-extractable",
            "CKA_NEVER_EXTRACTABLE",
        )
        .await;
    }
}

/// The `token.object` file of the device's SoftHSM token.
fn token_file(device: &Device) -> PathBuf {
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    let dirs: Vec<_> = std::fs::read_dir(hsm.store_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one token in the store: {dirs:?}");
    dirs[0].join("token.object")
}

/// Where SoftHSM's file keeps the token's flags: the attribute
/// CKA_OS_TOKENFLAGS (0x8000534b, SoftHSM's vendor attribute) stored as an
/// unsigned long (kind 2), both big-endian 64-bit, then the value.
fn flags_offset(file: &[u8]) -> usize {
    let tag: Vec<u8> = [0x8000_534b_u64, 2]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let at: Vec<usize> = file
        .windows(tag.len())
        .enumerate()
        .filter(|(_, w)| *w == tag.as_slice())
        .map(|(i, _)| i + tag.len())
        .collect();
    assert_eq!(at.len(), 1, "CKA_OS_TOKENFLAGS once in token.object");
    at[0]
}

/// The token's flags as SoftHSM keeps them.
fn token_flags(device: &Device) -> u64 {
    let file = std::fs::read(token_file(device)).unwrap();
    let at = flags_offset(&file);
    u64::from_be_bytes(file[at..at + 8].try_into().unwrap())
}

/// Sets the token's flags in SoftHSM's file (no process has the token
/// open meanwhile).
fn set_token_flags(device: &Device, flags: u64) {
    let _exclusive = common::token_store_exclusive();
    let path = token_file(device);
    let mut file = std::fs::read(&path).unwrap();
    let at = flags_offset(&file);
    file[at..at + 8].copy_from_slice(&flags.to_be_bytes());
    std::fs::write(&path, file).unwrap();
}

/// Makes the device's PIN file hold `pin`.
fn set_pin(device: &Device, pin: &str) {
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    std::fs::write(&hsm.pin_file, format!("{pin}\n")).unwrap();
}

/// CKF_USER_PIN_FINAL_TRY: the agent does not log in, even with a wrong
/// PIN in its PIN source (the case that would lock the token): exit 2, a
/// message that says why and what to do, and C_Login was not called (a
/// wrong C_Login sets COUNT_LOW in the token's file, shown first as the
/// control; with FINAL_TRY the flags stay as they were).
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_does_not_log_in_on_the_final_pin_try() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::pkcs11("final-try"), "");
    device.import_claim().await;
    let clean = token_flags(&device);
    assert_eq!(
        clean & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED),
        0,
        "{clean:#x}"
    );

    // The control: a wrong PIN reaches C_Login, which marks the token.
    set_pin(&device, "not-the-pin");
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("CKR_PIN_INCORRECT"), "{}", text(&out));
    assert_ne!(
        token_flags(&device) & CKF_USER_PIN_COUNT_LOW,
        0,
        "a wrong C_Login did not set COUNT_LOW in the token's file"
    );

    // The token now says one more wrong PIN locks it (and nothing else).
    let final_try = clean | CKF_USER_PIN_FINAL_TRY;
    set_token_flags(&device, final_try);
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(
        stderr.contains("did not try to log in")
            && stderr.contains("one more wrong PIN locks it")
            && stderr.contains("PIN_SOURCE"),
        "{}",
        text(&out)
    );
    assert!(!stderr.contains("CKR_PIN_INCORRECT"), "{}", text(&out));
    assert!(
        !stderr.contains("not-the-pin"),
        "the PIN leaked: {}",
        text(&out)
    );
    assert_eq!(
        token_flags(&device),
        final_try,
        "the token's flags changed: the agent called C_Login: {}",
        text(&out)
    );
    assert!(device.identity().is_none());

    // The right PIN does not make it try either: only a login by hand
    // clears the token's state.
    set_pin(&device, common::softhsm::USER_PIN);
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("did not try to log in"), "{}", text(&out));
    assert_eq!(token_flags(&device), final_try);

    set_token_flags(&device, clean);
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "{}", text(&out));
}

/// CKF_USER_PIN_LOCKED: the agent says the PIN is locked and that the
/// security officer must unlock it, exit 2, and does not log in (the
/// message is the agent's own; the flags stay as they were). SoftHSM 2.6
/// does not look at the flag in C_Login: without the agent's check, this
/// enroll logs in and succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_does_not_log_in_to_a_locked_pin() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::pkcs11("pin-locked"), "");
    device.import_claim().await;
    let clean = token_flags(&device);
    let locked = clean | CKF_USER_PIN_LOCKED;
    set_token_flags(&device, locked);

    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    assert!(
        stderr.contains(&format!(
            "the user PIN of token {:?} is locked",
            hsm.token_label
        )) && stderr.contains("security officer must unlock it"),
        "{}",
        text(&out)
    );
    assert!(
        !stderr.contains("CKR_PIN_LOCKED") && !stderr.contains("C_Login"),
        "the agent called C_Login: {}",
        text(&out)
    );
    assert_eq!(token_flags(&device), locked);
    assert!(device.identity().is_none());

    // Unlocked again (what softhsm2-util --init-pin leaves): it enrolls.
    set_token_flags(&device, clean);
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "{}", text(&out));
    device.round_trip(&cloud).await.unwrap();
}
