//! What the agent refuses on a PKCS#11 token, end to end (the real
//! `prov-agent` on a SoftHSM token):
//!
//! - a key the token generated that does not read back CKA_ALWAYS_SENSITIVE
//!   and CKA_NEVER_EXTRACTABLE (SoftHSM always sets both for a key made
//!   sensitive and unextractable, so a `fault::tampers` point makes the
//!   read-back see the weaker value): refused, naming the key and the
//!   attribute, and destroyed again.
#![cfg(feature = "pkcs11")]

mod common;

use common::backend::Backend;
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;

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
