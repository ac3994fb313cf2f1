//! An upgrade in the middle of an operation: the older build crashed and
//! left a version-1 journal; the new build reads it and finishes, at every
//! phase of an enrollment and of a rotation.
//!
//! The version-1 journal is made from the one this build wrote at the same
//! point, in the layout of `tests/fixtures/journal-v1/` (captured from the
//! version-1 code): every field written here is one those files have.
#![cfg(feature = "fault-injection")]

mod common;

use std::collections::BTreeSet;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;
use serde_json::{json, Value};

/// The fields the version-1 code wrote, from the captured journals.
fn v1_fields() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal-v1");
    let mut fields = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let v: Value =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        fields.extend(v.as_object().unwrap().keys().cloned());
    }
    fields
}

/// The version-1 form of a version-2 journal.
fn to_v1(v2: &Value) -> Value {
    let state = &v2["state"];
    let mut v1 = json!({
        "version": 1,
        "operation": v2["operation"],
        "phase": state["phase"],
        "updatedAt": v2["updatedAt"],
        "pendingKeyLabel": v2["keys"]["pending"],
        "registerSent": state.get("registerSent").cloned().unwrap_or(json!(state["phase"] != "STARTED" && state["phase"] != "CERT_ISSUED")),
    });
    let o = v1.as_object_mut().unwrap();
    let mut copy = |from: &Value, key: &str, to: &str| {
        if let Some(x) = from.get(key).filter(|x| !x.is_null()) {
            o.insert(to.into(), x.clone());
        }
    };
    copy(&v2["keys"], "retired", "retiredKeyLabel");
    copy(v2, "previousCertificateId", "previousCertificateId");
    copy(v2, "abandonedCertificateIds", "abandonedCertificateIds");
    copy(&state["certificate"], "id", "certificateId");
    copy(&state["certificate"], "pem", "certificatePem");
    copy(state, "token", "ownershipToken");
    copy(state, "tokenExpiresAt", "tokenExpiresAt");
    copy(state, "thingName", "thingName");
    copy(state, "deviceConfiguration", "deviceConfiguration");
    copy(state, "recertifyPendingKey", "recertifyPendingKey");
    v1
}

/// Crashes `args` at `point`, rewrites the journal as version 1, runs
/// `args` again and checks that it finished with one working identity.
async fn finishes_from_v1(cloud: &TestCloud, device: &Device, args: &[&str], point: &str) {
    let crashed = device.run_env(args, &[("PROV_AGENT_FAULT", point)]).await;
    assert!(!crashed.status.success(), "{point}: {}", text(&crashed));
    let path = device.state_dir().join("journal.json");
    let v2: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v2["version"], 2, "{point}");
    let v1 = to_v1(&v2);
    let known = v1_fields();
    for key in v1.as_object().unwrap().keys() {
        assert!(
            known.contains(key) || key == "recertifyPendingKey",
            "{point}: {key} is not a version-1 field"
        );
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&v1).unwrap()).unwrap();

    let done = device.run(args).await;
    assert!(done.status.success(), "{point}: {}", text(&done));
    assert!(!path.exists(), "{point}: the journal is left");
    let identity = device.identity().unwrap();
    assert_eq!(
        cloud.active_certificates(&identity.thing_name, 1).await,
        vec![identity.certificate_id.clone()],
        "{point}"
    );
    device.round_trip(cloud).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrollment_left_by_version_1_finishes() {
    let cloud = TestCloud::start().await;
    for point in [
        "cert-issued",
        "register-sent",
        "registered",
        "verified",
        "committed",
    ] {
        let device = Device::new(&cloud, Backend::File, "");
        device.import_claim().await;
        finishes_from_v1(&cloud, &device, &["enroll"], point).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_left_by_version_1_finishes() {
    let cloud = TestCloud::start().await;
    for point in ["cert-issued", "registered", "verified", "committed"] {
        let device = Device::enrolled(&cloud, Backend::File, "").await;
        let before = device.identity().unwrap();
        finishes_from_v1(&cloud, &device, &["rotate"], point).await;
        assert_ne!(
            device.identity().unwrap().certificate_id,
            before.certificate_id,
            "{point}"
        );
    }
}
