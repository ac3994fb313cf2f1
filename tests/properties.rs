//! Property tests of the agent's round trips: what it writes, it reads back
//! the same, for any value (proptest), and its DER signature encoding agrees
//! with an independent implementation.
//!
//! - ECDSA `r`, `s` to DER: the same bytes as the `p256` crate's encoder;
//! - PKCS#11 URIs: `Display` then `parse` gives the URI back;
//! - the key helper's frames: a request and its body come out of the pipe
//!   as they went in;
//! - the journal and identity.json: saved and loaded, equal.

use std::collections::BTreeMap;

use proptest::prelude::*;
use prov_agent::keystore::helper::wire::{read_message, write_message, Request, RequestFrame};
use prov_agent::keystore::SignatureScheme;
use prov_agent::provision::identity::Identity;
use prov_agent::provision::journal::{
    IssuedCertificate, Journal, KeySlots, Operation, OwnershipToken, Registration, State,
};
use zeroize::Zeroizing;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Any P-256 signature: our DER is p256's DER, whatever leading zeros
    /// and top bits `r` and `s` have.
    #[test]
    fn ecdsa_der_matches_an_independent_encoder(
        r in prop::array::uniform32(any::<u8>()),
        s in prop::array::uniform32(any::<u8>()),
        zeros_r in 0usize..32,
        zeros_s in 0usize..32,
    ) {
        let mut r = r;
        let mut s = s;
        // Values with leading zero bytes (shorter integers) are common in
        // TPM answers.
        r[..zeros_r].fill(0);
        s[..zeros_s].fill(0);
        let Ok(sig) = p256::ecdsa::Signature::from_scalars(r, s) else {
            // Zero or not below the group order: not a signature.
            return Ok(());
        };
        let ours = prov_agent::keystore::ecdsa::rs_to_der(&r, &s);
        prop_assert_eq!(&ours, &sig.to_der().as_bytes().to_vec());
        let mut raw = r.to_vec();
        raw.extend_from_slice(&s);
        prop_assert_eq!(prov_agent::keystore::ecdsa::raw_to_der(&raw), Some(ours));
        // Shorter `r` and `s`, as a TPM gives them: the same DER.
        let short = |v: &[u8]| v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..].to_vec();
        prop_assert_eq!(
            prov_agent::keystore::ecdsa::rs_to_der(&short(&r), &short(&s)),
            sig.to_der().as_bytes().to_vec()
        );
    }

    /// Any request with any body crosses the helper's pipe unchanged.
    #[test]
    fn helper_frames_round_trip(
        label in "\\PC{0,64}",
        scheme in prop::sample::select(vec![
            SignatureScheme::EcdsaSha256,
            SignatureScheme::EcdsaSha384,
            SignatureScheme::RsaPkcs1Sha256,
            SignatureScheme::RsaPssSha512,
        ]),
        body in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let request = Request::Sign { label, scheme };
        let sent = serde_json::to_value(&request).unwrap();
        let mut pipe = Vec::new();
        write_message(&mut pipe, &RequestFrame::V1(request), &body).unwrap();
        let mut reader = pipe.as_slice();
        let (frame, got_body) =
            read_message::<RequestFrame>(&mut reader).unwrap().expect("a message");
        let RequestFrame::V1(got) = frame else {
            return Err(TestCaseError::fail("not a version-1 frame"));
        };
        prop_assert_eq!(serde_json::to_value(&got).unwrap(), sent);
        prop_assert_eq!(&got_body[..], &body[..]);
        prop_assert!(reader.is_empty(), "bytes left over");
    }
}

#[cfg(feature = "pkcs11")]
mod uri {
    use super::*;
    use prov_agent::keystore::pkcs11::{ObjectType, Pkcs11Uri};

    fn text() -> impl Strategy<Value = Option<String>> {
        // Every character, including the URI's own ;?&=% and spaces.
        prop::option::of("\\PC{0,20}")
    }

    prop_compose! {
        fn uri()(
            token in text(),
            manufacturer in text(),
            model in text(),
            serial in text(),
            object in text(),
            id in prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
            object_type in prop::option::of(prop::sample::select(vec![
                ObjectType::Private, ObjectType::Public, ObjectType::Cert,
                ObjectType::SecretKey, ObjectType::Data,
            ])),
            module_path in prop::option::of("/[a-z0-9/._-]{1,30}"),
            pin_source in prop::option::of("(file:|env:)[A-Za-z0-9/._-]{1,20}"),
        ) -> Pkcs11Uri {
            Pkcs11Uri {
                token, manufacturer, model, serial, object, id, object_type,
                module_path, pin_source,
            }
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn pkcs11_uris_round_trip(uri in uri()) {
            let text = uri.to_string();
            let parsed = Pkcs11Uri::parse(&text)
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed, uri, "{}", text);
        }
    }
}

/// A real certificate: identity.json must hold one that parses.
fn certificate_pem() -> &'static str {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["device".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    })
}

fn name() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

prop_compose! {
    fn issued()(id in "[0-9a-f]{64}", pem in "\\PC{0,200}") -> IssuedCertificate {
        IssuedCertificate { id, pem }
    }
}

prop_compose! {
    fn registration()(
        certificate in issued(),
        thing_name in name(),
        device_configuration in prop::collection::btree_map(name(), name(), 0..4),
    ) -> Registration {
        Registration { certificate, thing_name, device_configuration }
    }
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        any::<bool>().prop_map(|recertify_pending_key| State::Started {
            recertify_pending_key
        }),
        (
            issued(),
            "\\PC{0,100}",
            any::<u64>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(certificate, token, token_expires_at, register_sent, recertified)| {
                    State::CertIssued {
                        certificate,
                        token: OwnershipToken::new(Zeroizing::new(token)),
                        token_expires_at,
                        register_sent,
                        recertified,
                    }
                }
            ),
        registration().prop_map(State::Registered),
        registration().prop_map(State::Verified),
        Just(State::Committed),
    ]
}

prop_compose! {
    fn journal()(
        rotate in any::<bool>(),
        pending in name(),
        retired in prop::option::of(name()),
        previous_certificate_id in prop::option::of("[0-9a-f]{64}"),
        abandoned_certificate_ids in prop::collection::vec("[0-9a-f]{64}", 0..3),
        state in state(),
    ) -> Journal {
        let operation = if rotate { Operation::Rotate } else { Operation::Enroll };
        let mut j = Journal::new(operation, KeySlots { pending, retired });
        j.previous_certificate_id = previous_certificate_id;
        j.abandoned_certificate_ids = abandoned_certificate_ids;
        j.state = state;
        j
    }
}

proptest! {
    // Each case writes durably (fsync): fewer cases.
    #![proptest_config(config(64))]

    #[test]
    fn journals_round_trip(journal in journal()) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = journal;
        journal.save(dir.path()).unwrap();
        let loaded = Journal::load(dir.path()).unwrap().expect("a journal");
        prop_assert_eq!(loaded, journal);
    }

    #[test]
    fn identities_round_trip(
        thing_name in name(),
        certificate_id in "[0-9a-f]{64}",
        key_label in name(),
        key_reference in name(),
        not_after in any::<u64>(),
        committed_at in any::<u64>(),
        device_configuration in prop::collection::btree_map(name(), name(), 0..4),
        previous_certificate_id in prop::option::of("[0-9a-f]{64}"),
    ) {
        let identity = Identity {
            thing_name,
            certificate_id,
            certificate_pem: certificate_pem().to_string(),
            key_label,
            key_reference,
            not_after,
            device_configuration: device_configuration.into_iter().collect::<BTreeMap<_, _>>(),
            committed_at,
            previous_certificate_id,
        };
        let dir = tempfile::tempdir().unwrap();
        identity.save(dir.path()).unwrap();
        prop_assert_eq!(Identity::load(dir.path()).unwrap(), Some(identity));
    }
}
