//! The policy engine from a device's point of view, over TLS with rumqttc:
//! `Condition`, `NotAction`, `NotResource`, and the thing and certificate
//! policy variables, each refused where AWS refuses and let through where it
//! lets through.

mod common;

use std::collections::BTreeMap;

use common::*;
use iotcore_emulator::{AttributeUpdate, ThingRecord, ThingUpdate};
use rumqttc::QoS;
use rumqttc::SubscribeReasonCode::Success;

fn doc(statements: &str) -> String {
    format!(r#"{{"Version": "2012-10-17", "Statement": {statements}}}"#)
}

/// Registers thing `name` (with `attributes` and `thing_type`, created if
/// need be) and attaches it to certificate `cert_id`.
fn register_thing(
    emu: &TestEmulator,
    name: &str,
    attributes: &[(&str, &str)],
    thing_type: Option<&str>,
    cert_id: &str,
) {
    if let Some(t) = thing_type {
        emu.registry().create_thing_type(t, None, &[]).unwrap();
    }
    emu.registry()
        .create_thing(&ThingRecord {
            thing_name: name.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            thing_type_name: thing_type.map(str::to_owned),
            ..ThingRecord::default()
        })
        .unwrap();
    emu.registry().attach_thing(name, cert_id).unwrap();
}

fn granted(codes: &[rumqttc::SubscribeReasonCode]) -> Vec<bool> {
    codes.iter().map(|c| matches!(c, Success(_))).collect()
}

#[tokio::test]
async fn is_attached_condition_admits_only_a_registered_things_own_client_id() {
    let emu = start().await;
    // AWS's own example ("Thing policy examples").
    emu.registry()
        .create_policy(
            "attached",
            &doc(
                r#"[{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["*"],
                    "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}}]"#,
            ),
        )
        .unwrap();
    let cred = emu.create_credential("gw_1", &["attached"]).unwrap();

    // Not yet a thing: refused whatever the client id.
    let err = connect(&emu, &cred, "gw_1").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");

    register_thing(&emu, "gw_1", &[], None, &cred.certificate_id);
    connect(&emu, &cred, "gw_1")
        .await
        .expect("the thing's own client id connects");
    // The same certificate under another client id is not the thing.
    let err = connect(&emu, &cred, "gw_2").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");

    // A thing of that name attached to another certificate does not count.
    let other = emu.create_credential("gw_3", &["attached"]).unwrap();
    let err = connect(&emu, &other, "gw_1").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
}

#[tokio::test]
async fn thing_attribute_and_type_variables_name_the_things_own_topics() {
    let emu = start().await;
    emu.registry()
        .create_policy(
            "site",
            &doc(
                r#"[{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
                    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [
                        "arn:aws:iot:us-east-1:123456789012:topicfilter/site/${iot:Connection.Thing.Attributes[site]}/*",
                        "arn:aws:iot:us-east-1:123456789012:topicfilter/type/${iot:Connection.Thing.ThingTypeName}"]}]"#,
            ),
        )
        .unwrap();
    let cred = emu.create_credential("gw_1", &["site"]).unwrap();
    register_thing(
        &emu,
        "gw_1",
        &[("site", "berlin")],
        Some("gateway"),
        &cred.certificate_id,
    );

    let mut c = connect(&emu, &cred, "gw_1").await.unwrap();
    let codes = c
        .subscribe(&[
            "site/berlin/a",
            "site/paris/a",
            "type/gateway",
            "type/sensor",
        ])
        .await;
    assert_eq!(granted(&codes), [true, false, true, false], "{codes:?}");

    // The registry changes: the connection's policy follows the new value.
    emu.registry()
        .update_thing(
            "gw_1",
            &ThingUpdate {
                attributes: Some(AttributeUpdate::Merge(BTreeMap::from([(
                    "site".to_string(),
                    "paris".to_string(),
                )]))),
                thing_type_name: None,
                expected_version: None,
            },
        )
        .unwrap();
    let codes = c.subscribe(&["site/berlin/b", "site/paris/b"]).await;
    assert_eq!(granted(&codes), [false, true], "{codes:?}");

    // Under another client id the thing variables have no value: nothing.
    let mut other = connect(&emu, &cred, "not-the-thing").await.unwrap();
    let codes = other
        .subscribe(&["site/paris/a", "type/gateway", "site//a", "type/"])
        .await;
    assert_eq!(granted(&codes), [false; 4], "{codes:?}");
}

#[tokio::test]
async fn certificate_common_name_variable_names_the_devices_own_topics() {
    let emu = start().await;
    emu.registry()
        .create_policy(
            "by-cn",
            &doc(
                r#"[{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
                    {"Effect": "Allow", "Action": "iot:Subscribe",
                     "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/cn/${iot:Certificate.Subject.CommonName}/*"},
                    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
                     "Resource": "arn:aws:iot:us-east-1:123456789012:topic/cn/${iot:Certificate.Subject.CommonName}/*"}]"#,
            ),
        )
        .unwrap();
    let cred = emu.create_credential("sensor-7", &["by-cn"]).unwrap();
    let mut c = connect(&emu, &cred, "any-client").await.unwrap();
    let codes = c.subscribe(&["cn/sensor-7/#", "cn/sensor-8/#"]).await;
    assert_eq!(granted(&codes), [true, false], "{codes:?}");

    c.publish("cn/sensor-7/t", "hello").await;
    let (topic, payload) = c
        .next_message(WAIT)
        .await
        .expect("its own topic round-trips");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("cn/sensor-7/t", &b"hello"[..])
    );

    // Another device's topic: an unauthorised PUBLISH closes a 3.1.1
    // connection.
    c.client
        .publish("cn/sensor-8/t", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(c.closed_within(WAIT).await, "publish to another CN's topic");
}

#[tokio::test]
async fn not_action_and_not_resource_exclude_what_they_name() {
    let emu = start().await;
    emu.registry()
        .create_policy(
            "except",
            &doc(
                r#"[{"Effect": "Allow", "NotAction": "iot:Subscribe", "Resource": "*"},
                    {"Effect": "Allow", "Action": "iot:Subscribe",
                     "NotResource": "arn:aws:iot:us-east-1:123456789012:topicfilter/secret/*"},
                    {"Effect": "Deny", "NotAction": ["iot:Connect", "iot:Subscribe"],
                     "Resource": "arn:aws:iot:us-east-1:123456789012:topic/secret/*"}]"#,
            ),
        )
        .unwrap();
    let cred = emu.create_credential("dev", &["except"]).unwrap();
    let mut c = connect(&emu, &cred, "dev").await.unwrap();
    // `secret/x` would pass the first statement's Resource "*" if its
    // NotAction did not leave Subscribe out.
    let codes = c.subscribe(&["a/b", "secret/x", "other/#"]).await;
    assert_eq!(granted(&codes), [true, false, true], "{codes:?}");

    c.publish("a/b", "m").await;
    let (topic, _) = c.next_message(WAIT).await.expect("a/b round-trips");
    assert_eq!(topic, "a/b");

    // The Deny's NotAction covers Publish: a publish to secret/ is refused.
    c.client
        .publish("secret/y", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(c.closed_within(WAIT).await, "publish to secret/y");
}

#[tokio::test]
async fn source_ip_and_time_conditions() {
    let emu = start().await;
    let connect_if = |condition: &str| {
        doc(&format!(
            r#"[{{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*", "Condition": {condition}}}]"#
        ))
    };
    let cases = [
        (r#"{"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}"#, true),
        (
            r#"{"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.0.2.1"]}}"#,
            false,
        ),
        (r#"{"NotIpAddress": {"aws:SourceIp": "127.0.0.1"}}"#, false),
        (
            r#"{"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}"#,
            true,
        ),
        (
            r#"{"DateLessThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}"#,
            false,
        ),
        (
            r#"{"NumericGreaterThan": {"aws:EpochTime": 1577836800}}"#,
            true,
        ),
        (r#"{"StringLike": {"iot:ClientId": "dev-*"}}"#, true),
        (r#"{"StringNotLike": {"iot:ClientId": "dev-*"}}"#, false),
    ];
    for (i, (condition, want)) in cases.into_iter().enumerate() {
        let name = format!("cond-{i}");
        emu.registry()
            .create_policy(&name, &connect_if(condition))
            .unwrap();
        let cred = emu.create_credential("dev", &[&name]).unwrap();
        let got = connect(&emu, &cred, "dev-1").await;
        match (&got, want) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(e.contains("NotAuthorized"), "{condition}: {e}"),
            _ => panic!("{condition}: wanted connect={want}, got {:?}", got.err()),
        }
    }
}

#[tokio::test]
async fn a_date_condition_on_a_devices_malformed_value_refuses_and_the_broker_lives() {
    let emu = start().await;
    // The client id is the device's to choose; a date operator on it
    // must refuse a malformed date (here, a multi-byte character where a
    // zone offset's digits go), never bring the emulator down.
    emu.registry()
        .create_policy(
            "date-on-client-id",
            &doc(
                r#"[{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
                    "Condition": {"DateGreaterThan": {"iot:ClientId": "2020-01-01T00:00:00Z"}}}]"#,
            ),
        )
        .unwrap();
    let cred = emu
        .create_credential("dated", &["date-on-client-id"])
        .unwrap();
    let err = connect(&emu, &cred, "2025-12-01T00:00+1é1")
        .await
        .unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    // Still serving: a well-formed date later than the policy's connects.
    connect(&emu, &cred, "2025-12-01T00:00+0100")
        .await
        .expect("a well-formed later date connects");
}

#[tokio::test]
async fn a_deny_not_resource_with_no_thing_applies_to_every_topic() {
    let emu = start().await;
    emu.registry()
        .create_policy(
            "own-topics-only",
            &doc(
                r#"[{"Effect": "Allow", "Action": ["iot:Connect", "iot:Publish"], "Resource": "*"},
                    {"Effect": "Deny", "Action": "iot:Publish",
                     "NotResource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"}]"#,
            ),
        )
        .unwrap();
    let cred = emu.create_credential("gw_1", &["own-topics-only"]).unwrap();
    register_thing(&emu, "gw_1", &[], None, &cred.certificate_id);

    // The thing itself: its own topics pass, another's are refused.
    let mut c = connect(&emu, &cred, "gw_1").await.expect("connects");
    c.client
        .publish("things/gw_1/t", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(!c.closed_within(WAIT).await, "own topic refused");
    c.client
        .publish("things/other/t", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(c.closed_within(WAIT).await, "another thing's topic allowed");

    // Not its thing (the variable has no value): the Deny cannot tell what
    // it excludes, so it applies; the Allow alone would let this through.
    let mut c = connect(&emu, &cred, "not-a-thing").await.expect("connects");
    c.client
        .publish("things/other/t", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(
        c.closed_within(WAIT).await,
        "an unattached client escaped the Deny"
    );
}

#[tokio::test]
async fn a_deny_on_client_id_not_thing_name_stops_an_unattached_client() {
    let emu = start().await;
    emu.registry()
        .create_policy(
            "thing-name-only",
            &doc(
                r#"[{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
                    {"Effect": "Deny", "Action": "iot:Connect", "Resource": "*",
                     "Condition": {"StringNotEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}}]"#,
            ),
        )
        .unwrap();
    let cred = emu.create_credential("gw_1", &["thing-name-only"]).unwrap();
    // No thing attached yet: the Deny's value is unresolved and it applies.
    let err = connect(&emu, &cred, "gw_1").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");

    register_thing(&emu, "gw_1", &[], None, &cred.certificate_id);
    connect(&emu, &cred, "gw_1")
        .await
        .expect("the attached thing's own client id connects");
    let err = connect(&emu, &cred, "gw_2").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
}
