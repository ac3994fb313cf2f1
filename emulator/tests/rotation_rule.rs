//! The rotation report rule: a report on `things/<thing>/rotation` from
//! the new certificate retires the thing's old certificates, and nothing
//! else does.

mod common;

use common::*;
use iotcore_emulator::{CertStatus, Credential, EmulatorHandle, ThingRecord};
use serde_json::{json, Value};

const REPORTER_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    { "Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:us-east-1:123456789012:client/*" },
    { "Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:us-east-1:123456789012:topic/things/*" },
    { "Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/things/*" }
  ]
}"#;

/// Policy "reporter" and things T and U.
fn setup(emu: &EmulatorHandle) {
    emu.registry()
        .create_policy("reporter", REPORTER_POLICY)
        .unwrap();
    for name in ["T", "U"] {
        emu.registry()
            .put_thing(&ThingRecord {
                thing_name: name.into(),
                ..Default::default()
            })
            .unwrap();
    }
}

/// An ACTIVE certificate with the reporter policy, attached to `thing`.
fn cert_of(emu: &EmulatorHandle, thing: &str) -> Credential {
    let c = emu.create_credential(thing, &["reporter"]).unwrap();
    emu.registry()
        .attach_thing(thing, &c.certificate_id)
        .unwrap();
    c
}

fn status(emu: &EmulatorHandle, id: &str) -> CertStatus {
    emu.registry().certificate_status(id).unwrap().unwrap()
}

fn things_of(emu: &EmulatorHandle, thing: &str) -> Vec<String> {
    emu.registry().thing(thing).unwrap().unwrap().certificates
}

fn report(thing: &str, new: &str, old: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "thingName": thing, "newCertificateId": new, "oldCertificateIds": old,
        "time": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

/// Publishes `payload` on `topic` then a marker on the same topic, and
/// waits for both to come back: the connection handles its PUBLISHes in
/// order, so the report's rule has run when the marker arrives.
async fn publish_and_settle(c: &mut Client, topic: &str, payload: Vec<u8>) {
    c.subscribe(&[topic]).await;
    c.publish(topic, payload).await;
    c.publish(topic, "marker").await;
    loop {
        let (t, p) = c.next_message(WAIT).await.expect("marker not delivered");
        if t == topic && p == b"marker" {
            return;
        }
    }
}

#[tokio::test]
async fn report_from_new_certificate_retires_old_certificates_of_the_thing() {
    let emu = start().await;
    setup(&emu);
    let old = cert_of(&emu, "T");
    let older = cert_of(&emu, "T");
    let new = cert_of(&emu, "T");
    let other = cert_of(&emu, "U");

    let mut old_conn = connect(&emu, &old, "T-old").await.unwrap();
    let mut watcher = connect(&emu, &other, "watcher").await.unwrap();
    watcher.subscribe(&["things/+/rotation"]).await;

    let mut dev = connect(&emu, &new, "T").await.unwrap();
    // The list form and the single form together.
    let body = serde_json::to_vec(&json!({
        "thingName": "T", "newCertificateId": new.certificate_id,
        "oldCertificateIds": [old.certificate_id], "oldCertificateId": older.certificate_id
    }))
    .unwrap();
    dev.publish("things/T/rotation", body.clone()).await;

    // Delivered as any message.
    let (t, p) = watcher.next_message(WAIT).await.unwrap();
    assert_eq!(
        (t.as_str(), p.as_slice()),
        ("things/T/rotation", body.as_slice())
    );
    // The old certificate's live connection is dropped.
    assert!(
        old_conn.closed_within(WAIT).await,
        "old connection survived"
    );
    assert_eq!(status(&emu, &old.certificate_id), CertStatus::Inactive);
    assert_eq!(status(&emu, &older.certificate_id), CertStatus::Inactive);
    assert_eq!(things_of(&emu, "T"), vec![new.certificate_id.clone()]);
    assert!(emu
        .registry()
        .certificate(&old.certificate_id)
        .unwrap()
        .unwrap()
        .things
        .is_empty());
    assert!(connect(&emu, &old, "T-old").await.is_err());
    // The new one and the other thing's are untouched; the reporter stays connected.
    assert_eq!(status(&emu, &new.certificate_id), CertStatus::Active);
    assert_eq!(status(&emu, &other.certificate_id), CertStatus::Active);
    assert!(
        !dev.closed_within(std::time::Duration::from_millis(300))
            .await
    );
}

#[tokio::test]
async fn report_naming_another_things_certificate_changes_nothing() {
    let emu = start().await;
    setup(&emu);
    let old = cert_of(&emu, "T");
    let new = cert_of(&emu, "T");
    let other = cert_of(&emu, "U");
    let mut other_conn = connect(&emu, &other, "U").await.unwrap();
    let mut dev = connect(&emu, &new, "T").await.unwrap();

    // U's certificate named as T's old one.
    publish_and_settle(
        &mut dev,
        "things/T/rotation",
        report("T", &new.certificate_id, &[&other.certificate_id]),
    )
    .await;
    // On U's topic, as U: the new certificate is not U's.
    publish_and_settle(
        &mut dev,
        "things/U/rotation",
        report("U", &new.certificate_id, &[&other.certificate_id]),
    )
    .await;
    // Topic and thingName disagree.
    publish_and_settle(
        &mut dev,
        "things/U/rotation",
        report("T", &new.certificate_id, &[&old.certificate_id]),
    )
    .await;
    assert_eq!(status(&emu, &other.certificate_id), CertStatus::Active);
    assert_eq!(things_of(&emu, "U"), vec![other.certificate_id.clone()]);
    assert_eq!(status(&emu, &old.certificate_id), CertStatus::Active);
    assert_eq!(things_of(&emu, "T").len(), 2);
    assert!(
        !other_conn
            .closed_within(std::time::Duration::from_millis(300))
            .await
    );

    // A mixed report retires T's old certificate only.
    publish_and_settle(
        &mut dev,
        "things/T/rotation",
        report(
            "T",
            &new.certificate_id,
            &[&other.certificate_id, &old.certificate_id],
        ),
    )
    .await;
    assert_eq!(status(&emu, &old.certificate_id), CertStatus::Inactive);
    assert_eq!(status(&emu, &other.certificate_id), CertStatus::Active);
    assert_eq!(things_of(&emu, "U"), vec![other.certificate_id.clone()]);
}

#[tokio::test]
async fn report_sent_by_a_certificate_that_is_not_the_new_one_changes_nothing() {
    let emu = start().await;
    setup(&emu);
    let old = cert_of(&emu, "T");
    let new = cert_of(&emu, "T");
    let third = cert_of(&emu, "T");

    // A third certificate of the same thing claims the rotation.
    let mut c = connect(&emu, &third, "T-third").await.unwrap();
    publish_and_settle(
        &mut c,
        "things/T/rotation",
        report("T", &new.certificate_id, &[&old.certificate_id]),
    )
    .await;
    // The old certificate itself claims it (and names itself old).
    let mut c = connect(&emu, &old, "T-old").await.unwrap();
    publish_and_settle(
        &mut c,
        "things/T/rotation",
        report("T", &new.certificate_id, &[&old.certificate_id]),
    )
    .await;
    for cert in [&old, &new, &third] {
        assert_eq!(status(&emu, &cert.certificate_id), CertStatus::Active);
    }
    assert_eq!(things_of(&emu, "T").len(), 3);
}

#[tokio::test]
async fn unauthorised_report_is_refused_and_changes_nothing() {
    let emu = start().await;
    setup(&emu);
    let old = cert_of(&emu, "T");
    // Allowed to connect and publish on data/* only.
    let new = emu.create_credential("T", &["pubsub"]).unwrap();
    emu.registry()
        .attach_thing("T", &new.certificate_id)
        .unwrap();
    let mut dev = connect(&emu, &new, "T").await.unwrap();
    dev.publish(
        "things/T/rotation",
        report("T", &new.certificate_id, &[&old.certificate_id]),
    )
    .await;
    // MQTT 3.1.1: an unauthorised PUBLISH closes the connection.
    assert!(dev.closed_within(WAIT).await);
    assert_eq!(status(&emu, &old.certificate_id), CertStatus::Active);
    assert_eq!(things_of(&emu, "T").len(), 2);
}

#[tokio::test]
async fn rule_turned_off_leaves_old_certificates_alone() {
    let emu = start_with(|c| c.rotation_report_rule = false).await;
    setup(&emu);
    let old = cert_of(&emu, "T");
    let new = cert_of(&emu, "T");
    let mut dev = connect(&emu, &new, "T").await.unwrap();
    publish_and_settle(
        &mut dev,
        "things/T/rotation",
        report("T", &new.certificate_id, &[&old.certificate_id]),
    )
    .await;
    assert_eq!(status(&emu, &old.certificate_id), CertStatus::Active);
    assert_eq!(things_of(&emu, "T").len(), 2);
}

#[tokio::test]
async fn old_certificate_shared_with_another_thing_is_detached_but_stays_active() {
    let emu = start().await;
    setup(&emu);
    let shared = cert_of(&emu, "T");
    emu.registry()
        .attach_thing("U", &shared.certificate_id)
        .unwrap();
    let new = cert_of(&emu, "T");
    let mut dev = connect(&emu, &new, "T").await.unwrap();
    let body: Value = json!({"thingName": "T", "newCertificateId": new.certificate_id,
        "oldCertificateId": shared.certificate_id});
    publish_and_settle(
        &mut dev,
        "things/T/rotation",
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(things_of(&emu, "T"), vec![new.certificate_id.clone()]);
    assert_eq!(things_of(&emu, "U"), vec![shared.certificate_id.clone()]);
    assert_eq!(status(&emu, &shared.certificate_id), CertStatus::Active);
}
