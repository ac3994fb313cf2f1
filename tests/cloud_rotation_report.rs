//! `cloud/rotation_report.py`, the rotation-report rule as a Lambda, run
//! with the real boto3 against the emulator's control-plane API: a genuine
//! report retires the thing's older certificates; nothing else retires
//! anything.

mod common;

use common::emulator::{python_bin, TestCloud};
use iotcore_emulator::{CertStatus, ThingRecord};
use serde_json::{json, Value};

/// What the Lambda did with `event` (its handler, run as a program).
fn invoke(cloud: &TestCloud, event: &Value) -> Value {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/cloud/rotation_report.py");
    let mut child = std::process::Command::new(format!("{}/python", python_bin()))
        .arg(script)
        .env("AWS_ENDPOINT_URL_IOT", cloud.handle.api_url())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn report(thing: &str, sender: &str, new: &str, old: &[&str]) -> Value {
    json!({
        "thingName": thing, "topicThing": thing, "principal": sender,
        "newCertificateId": new, "oldCertificateIds": old, "reason": "rotation", "time": 0,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_genuine_report_retires_certificates() {
    let cloud = TestCloud::start().await;
    let registry = cloud.handle.registry();
    let cert = |thing: &str| {
        let c = cloud.handle.create_credential(thing, &["device"]).unwrap();
        registry.attach_thing(thing, &c.certificate_id).unwrap();
        c.certificate_id
    };
    for name in ["gw_T", "gw_U"] {
        registry
            .put_thing(&ThingRecord {
                thing_name: name.into(),
                ..Default::default()
            })
            .unwrap();
    }
    let old = cert("gw_T");
    let shared = cert("gw_T");
    registry.attach_thing("gw_U", &shared).unwrap();
    let other = cert("gw_U");
    let new = cert("gw_T");
    let gone = cert("gw_T");
    registry
        .set_certificate_status(&gone, CertStatus::Inactive)
        .unwrap();
    let status = |id: &str| registry.certificate_status(id).unwrap().unwrap();
    let attached = |thing: &str| registry.thing(thing).unwrap().unwrap().certificates;

    let forged = [
        // Not published by the certificate it names as new.
        report("gw_T", &other, &new, &[&old]),
        // On another thing's topic.
        {
            let mut r = report("gw_T", &new, &new, &[&old]);
            r["topicThing"] = "gw_U".into();
            r
        },
        // Another thing's certificate, and the reporting one itself.
        report("gw_T", &new, &new, &[&other, &new]),
        // A certificate that is not ACTIVE any more.
        report("gw_T", &gone, &gone, &[&new]),
        // Not JSON of the right shape.
        json!({"thingName": "gw_T"}),
        json!([1, 2]),
    ];
    for event in &forged {
        let done = invoke(&cloud, event);
        assert_eq!(done["retired"], json!([]), "{event}: {done}");
        assert!(
            !done["ignored"].as_object().unwrap().is_empty(),
            "{event}: {done}"
        );
    }
    for id in [&old, &shared, &other, &new] {
        assert_eq!(status(id), CertStatus::Active);
    }
    assert_eq!(attached("gw_T").len(), 4);

    // The genuine report: the old certificate is set INACTIVE and detached;
    // the one gw_U still uses is only detached from gw_T.
    let done = invoke(&cloud, &report("gw_T", &new, &new, &[&old, &shared]));
    let mut retired: Vec<String> = serde_json::from_value(done["retired"].clone()).unwrap();
    retired.sort();
    let mut expected = vec![old.clone(), shared.clone()];
    expected.sort();
    assert_eq!(retired, expected, "{done}");
    assert_eq!(status(&old), CertStatus::Inactive);
    assert_eq!(status(&shared), CertStatus::Active);
    assert_eq!(status(&new), CertStatus::Active);
    let mut t = attached("gw_T");
    t.sort();
    let mut expected = vec![new.clone(), gone.clone()];
    expected.sort();
    assert_eq!(t, expected);
    let mut u = attached("gw_U");
    u.sort();
    let mut expected = vec![shared.clone(), other.clone()];
    expected.sort();
    assert_eq!(u, expected);
}

/// End to end with the emulator's built-in report rule off, as on AWS: the
/// agent rotates and publishes its report; the backend takes the report off
/// `things/+/rotation` and hands it to the Lambda with what the IoT rule's
/// SQL adds (`topic(2)`, `principal()`: the publishing certificate, the
/// new one). Until then the old certificate stays ACTIVE; after it, it is
/// INACTIVE and detached.
#[tokio::test(flavor = "multi_thread")]
async fn the_lambda_retires_the_old_certificate_of_a_real_rotation() {
    use common::backend::Backend;
    use common::device::{text, Device};
    use std::time::Duration;

    let cloud = TestCloud::start_with(|c| c.rotation_report_rule = false).await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    let mut backend = cloud.backend_session().await;
    backend
        .subscribe(&["things/+/rotation".to_string()], Duration::from_secs(5))
        .await
        .unwrap();
    let out = device.run(&["rotate"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let after = device.identity().unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), backend.next_message())
        .await
        .expect("no report within 10 s")
        .unwrap();
    backend.close().await;
    assert_eq!(
        message.topic,
        format!("things/{}/rotation", before.thing_name)
    );
    let status = |id: &str| cloud.handle.registry().certificate_status(id).unwrap();
    // No built-in rule: the old certificate is still ACTIVE.
    assert_eq!(status(&before.certificate_id), Some(CertStatus::Active));

    // What the IoT rule's SQL hands the Lambda.
    let payload: Value = serde_json::from_slice(&message.payload).unwrap();
    let mut event = json!({
        "topicThing": before.thing_name,
        "principal": after.certificate_id,
    });
    for field in [
        "thingName",
        "newCertificateId",
        "oldCertificateIds",
        "oldCertificateId",
    ] {
        if let Some(v) = payload.get(field) {
            event[field] = v.clone();
        }
    }
    invoke(&cloud, &event);
    assert_eq!(status(&before.certificate_id), Some(CertStatus::Inactive));
    assert_eq!(status(&after.certificate_id), Some(CertStatus::Active));
    let thing = cloud
        .handle
        .registry()
        .thing(&before.thing_name)
        .unwrap()
        .unwrap();
    assert_eq!(thing.certificates, vec![after.certificate_id.clone()]);
}
