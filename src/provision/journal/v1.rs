//! Format version 1 of the journal, read only: one flat object whose fields
//! were filled as the phases went by. A crash in the middle of an upgrade
//! leaves such a journal; it is converted to version 2 and the operation
//! finishes. A phase whose data is missing is refused as damaged, naming
//! the field, instead of being guessed (an empty thing name committed).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    IssuedCertificate, Journal, KeySlots, Operation, OwnershipToken, Phase, Registration, State,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JournalV1 {
    operation: Operation,
    phase: Phase,
    updated_at: u64,
    #[serde(default)]
    certificate_id: Option<String>,
    #[serde(default)]
    certificate_pem: Option<String>,
    #[serde(default)]
    ownership_token: Option<OwnershipToken>,
    #[serde(default)]
    token_expires_at: Option<u64>,
    #[serde(default)]
    thing_name: Option<String>,
    #[serde(default)]
    device_configuration: Option<BTreeMap<String, String>>,
    #[serde(default)]
    register_sent: bool,
    #[serde(default)]
    recertify_pending_key: bool,
    #[serde(default)]
    abandoned_certificate_ids: Vec<String>,
    #[serde(default)]
    pending_key_label: Option<String>,
    #[serde(default)]
    retired_key_label: Option<String>,
    #[serde(default)]
    previous_certificate_id: Option<String>,
}

impl TryFrom<JournalV1> for Journal {
    type Error = String;

    fn try_from(v1: JournalV1) -> Result<Self, String> {
        let phase = v1.phase;
        let missing = |field: &str| format!("a version-1 journal at phase {phase:?} lacks {field}");
        let certificate = || -> Result<IssuedCertificate, String> {
            Ok(IssuedCertificate {
                id: v1
                    .certificate_id
                    .clone()
                    .ok_or_else(|| missing("certificateId"))?,
                pem: v1
                    .certificate_pem
                    .clone()
                    .ok_or_else(|| missing("certificatePem"))?,
            })
        };
        let registration = || -> Result<Registration, String> {
            Ok(Registration {
                certificate: certificate()?,
                thing_name: v1.thing_name.clone().ok_or_else(|| missing("thingName"))?,
                device_configuration: v1
                    .device_configuration
                    .clone()
                    .ok_or_else(|| missing("deviceConfiguration"))?,
            })
        };
        let state = match phase {
            Phase::Started => State::Started {
                recertify_pending_key: v1.recertify_pending_key,
            },
            Phase::CertIssued => State::CertIssued {
                certificate: certificate()?,
                token: v1
                    .ownership_token
                    .clone()
                    .ok_or_else(|| missing("ownershipToken"))?,
                token_expires_at: v1
                    .token_expires_at
                    .ok_or_else(|| missing("tokenExpiresAt"))?,
                register_sent: v1.register_sent,
                recertified: false,
            },
            Phase::Registered => State::Registered(registration()?),
            Phase::Verified => State::Verified(registration()?),
            Phase::Committed => State::Committed,
        };
        Ok(Journal {
            version: super::VERSION,
            operation: v1.operation,
            updated_at: v1.updated_at,
            keys: KeySlots {
                pending: v1
                    .pending_key_label
                    .ok_or_else(|| missing("pendingKeyLabel"))?,
                retired: v1.retired_key_label,
            },
            previous_certificate_id: v1.previous_certificate_id,
            abandoned_certificate_ids: v1.abandoned_certificate_ids,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Journal, Operation, Phase, State};

    /// Journals written by the version-1 code (captured at each phase of an
    /// enrollment and a rotation, the token replaced).
    const FIXTURES: &[(&str, &str)] = &[
        (
            "enroll-cert-issued",
            include_str!("../../../tests/fixtures/journal-v1/enroll-cert-issued.json"),
        ),
        (
            "enroll-register-sent",
            include_str!("../../../tests/fixtures/journal-v1/enroll-register-sent.json"),
        ),
        (
            "enroll-registered",
            include_str!("../../../tests/fixtures/journal-v1/enroll-registered.json"),
        ),
        (
            "enroll-verified",
            include_str!("../../../tests/fixtures/journal-v1/enroll-verified.json"),
        ),
        (
            "enroll-committed",
            include_str!("../../../tests/fixtures/journal-v1/enroll-committed.json"),
        ),
        (
            "rotate-cert-issued",
            include_str!("../../../tests/fixtures/journal-v1/rotate-cert-issued.json"),
        ),
        (
            "rotate-registered",
            include_str!("../../../tests/fixtures/journal-v1/rotate-registered.json"),
        ),
        (
            "rotate-verified",
            include_str!("../../../tests/fixtures/journal-v1/rotate-verified.json"),
        ),
        (
            "rotate-committed",
            include_str!("../../../tests/fixtures/journal-v1/rotate-committed.json"),
        ),
    ];

    fn load(text: &str) -> Result<Option<Journal>, super::super::JournalError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Journal::path(dir.path()), text).unwrap();
        Journal::load(dir.path())
    }

    #[test]
    fn every_version_1_phase_converts_with_its_data() {
        for (name, text) in FIXTURES {
            let v1: serde_json::Value = serde_json::from_str(text).unwrap();
            let j = load(text).unwrap().unwrap();
            let phase = serde_json::to_value(j.phase()).unwrap();
            assert_eq!(phase, v1["phase"], "{name}");
            assert_eq!(j.keys.pending, v1["pendingKeyLabel"], "{name}");
            assert_eq!(
                serde_json::to_value(&j.abandoned_certificate_ids).unwrap(),
                v1.get("abandonedCertificateIds")
                    .cloned()
                    .unwrap_or(serde_json::json!([])),
                "{name}"
            );
            if let Some(c) = j.state.certificate() {
                assert_eq!(c.id, v1["certificateId"], "{name}");
                assert_eq!(c.pem, v1["certificatePem"], "{name}");
            }
            match &j.state {
                State::CertIssued {
                    token,
                    token_expires_at,
                    register_sent,
                    ..
                } => {
                    assert_eq!(token.expose(), v1["ownershipToken"], "{name}");
                    assert_eq!(*token_expires_at, v1["tokenExpiresAt"], "{name}");
                    assert_eq!(*register_sent, v1["registerSent"] == true, "{name}");
                }
                State::Registered(r) | State::Verified(r) => {
                    assert_eq!(r.thing_name, v1["thingName"], "{name}");
                    assert_eq!(
                        serde_json::to_value(&r.device_configuration).unwrap(),
                        v1["deviceConfiguration"],
                        "{name}"
                    );
                }
                _ => {}
            }
            if name.starts_with("rotate") {
                assert_eq!(j.operation, Operation::Rotate);
                assert_eq!(j.keys.retired.as_deref(), Some("device"), "{name}");
                assert!(j.previous_certificate_id.is_some(), "{name}");
            }
        }
    }

    /// STARTED is on disk only after a start-over (a refused or expired
    /// registration): the version-1 code left the abandoned certificate's
    /// id, its stale certificate fields and whether to keep the pending
    /// key; the certificate fields are dropped, the rest kept.
    #[test]
    fn a_version_1_start_over_converts() {
        let (_, text) = FIXTURES
            .iter()
            .find(|(n, _)| *n == "rotate-cert-issued")
            .unwrap();
        for recertify in [false, true] {
            let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
            let abandoned = v["certificateId"].clone();
            let o = v.as_object_mut().unwrap();
            o.insert("phase".into(), "STARTED".into());
            o.insert(
                "abandonedCertificateIds".into(),
                serde_json::json!([abandoned]),
            );
            o.insert("recertifyPendingKey".into(), recertify.into());
            let j = load(&v.to_string()).unwrap().unwrap();
            assert_eq!(j.phase(), Phase::Started);
            assert!(
                matches!(j.state, State::Started { recertify_pending_key } if recertify_pending_key == recertify),
                "{recertify}"
            );
            assert_eq!(
                j.abandoned_certificate_ids,
                vec![abandoned.as_str().unwrap().to_string()]
            );
            assert_eq!(j.keys.pending, v["pendingKeyLabel"]);
            assert_eq!(j.keys.retired.as_deref(), Some("device"));
            assert!(j.state.certificate().is_none());
        }
    }

    #[test]
    fn a_version_1_phase_without_its_data_is_damaged() {
        let (_, text) = FIXTURES
            .iter()
            .find(|(n, _)| *n == "enroll-registered")
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v.as_object_mut().unwrap().remove("thingName");
        let e = load(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("Registered"), "{e}");
        assert!(e.contains("thingName"), "{e}");
        let j = load(text).unwrap().unwrap();
        assert_eq!(j.phase(), Phase::Registered);
    }
}
