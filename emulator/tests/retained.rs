//! Retained messages: kept per topic, sent with RETAIN set to a client
//! that subscribes later, replaced, deleted by an empty payload, subject
//! to iot:Receive, and forwarded to subscribers at publish time without
//! RETAIN.

mod common;

use std::time::Duration;

use common::*;

/// What a test waits for a message that must not come.
const QUIET: Duration = Duration::from_millis(700);

/// iot:RetainPublish on `data/*`, on top of the `pubsub` policy.
const RETAIN_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:RetainPublish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/data/*"}]}"#;

/// A client that may publish retained messages on `data/*`.
async fn retaining_publisher(emu: &TestEmulator) -> Client {
    emu.registry()
        .create_policy("retain", RETAIN_POLICY)
        .unwrap();
    let cred = emu
        .create_credential("retainer", &["pubsub", "retain"])
        .unwrap();
    connect(emu, &cred, "retainer").await.unwrap()
}

/// A client with the `pubsub` policy (iot:Receive on `data/*` but for
/// `data/secret`), subscribed to `filter`.
async fn subscriber(emu: &TestEmulator, client_id: &str, filter: &str) -> Client {
    let cred = emu.create_credential(client_id, &["pubsub"]).unwrap();
    let mut c = connect(emu, &cred, client_id).await.unwrap();
    c.subscribe(&[filter]).await;
    c
}

#[tokio::test]
async fn a_later_subscriber_gets_the_retained_message_with_retain_set() {
    let emu = start().await;
    let mut publ = retaining_publisher(&emu).await;
    publ.publish_retained("data/config", "v1").await;

    let mut late = subscriber(&emu, "late", "data/+").await;
    let p = late
        .next_publish(WAIT)
        .await
        .expect("the retained message on subscribe");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("data/config", b"v1".as_slice(), true)
    );
    assert!(late.next_publish(QUIET).await.is_none());

    // Subscribing again to the same filter sends it again (MQTT 3.1.1).
    late.subscribe(&["data/+"]).await;
    let p = late.next_publish(WAIT).await.expect("sent again");
    assert_eq!((&p.payload[..], p.retain), (b"v1".as_slice(), true));
}

#[tokio::test]
async fn a_retained_message_is_replaced_by_the_next_one() {
    let emu = start().await;
    let mut publ = retaining_publisher(&emu).await;
    publ.publish_retained("data/config", "v1").await;
    publ.publish_retained("data/config", "v2").await;

    let mut late = subscriber(&emu, "late", "data/#").await;
    let p = late.next_publish(WAIT).await.expect("the retained message");
    assert_eq!((&p.payload[..], p.retain), (b"v2".as_slice(), true));
    assert!(
        late.next_publish(QUIET).await.is_none(),
        "only the last retained message of a topic is kept"
    );
}

#[tokio::test]
async fn an_empty_retained_payload_deletes_the_retained_message() {
    let emu = start().await;
    let mut publ = retaining_publisher(&emu).await;
    publ.publish_retained("data/config", "v1").await;
    publ.publish_retained("data/other", "kept").await;
    publ.publish_retained("data/config", "").await;

    let mut late = subscriber(&emu, "late", "data/#").await;
    let p = late.next_publish(WAIT).await.expect("the other topic's");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("data/other", b"kept".as_slice(), true)
    );
    assert!(
        late.next_publish(QUIET).await.is_none(),
        "data/config's retained message was deleted"
    );
}

#[tokio::test]
async fn a_retained_message_needs_iot_receive() {
    let emu = start().await;
    let mut publ = retaining_publisher(&emu).await;
    // The `pubsub` policy denies iot:Receive on data/secret.
    publ.publish_retained("data/secret", "hidden").await;
    publ.publish_retained("data/open", "visible").await;

    let mut late = subscriber(&emu, "late", "data/#").await;
    let p = late.next_publish(WAIT).await.expect("the allowed one");
    assert_eq!(
        (p.topic.as_str(), p.retain),
        ("data/open", true),
        "data/secret must not be delivered"
    );
    assert!(late.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn a_subscriber_at_publish_time_gets_it_without_retain() {
    let emu = start().await;
    let mut early = subscriber(&emu, "early", "data/config").await;
    let mut publ = retaining_publisher(&emu).await;
    publ.publish_retained("data/config", "v1").await;

    let p = early.next_publish(WAIT).await.expect("the live message");
    assert_eq!(
        (&p.payload[..], p.retain),
        (b"v1".as_slice(), false),
        "forwarded at publish time: RETAIN cleared"
    );
    // ... and it was retained all the same.
    let mut late = subscriber(&emu, "late", "data/config").await;
    let p = late.next_publish(WAIT).await.expect("the retained message");
    assert_eq!((&p.payload[..], p.retain), (b"v1".as_slice(), true));
    // The empty payload that deletes it is forwarded too.
    publ.publish_retained("data/config", "").await;
    for c in [&mut early, &mut late] {
        let p = c.next_publish(WAIT).await.expect("the deletion, forwarded");
        assert_eq!((&p.payload[..], p.retain), (b"".as_slice(), false));
    }
}
