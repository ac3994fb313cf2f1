//! Connections: mutual TLS, ALPN, MQTT limits, policy enforcement,
//! certificate status changes, robustness against bad clients, restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use iotcore_emulator::{
    CertStatus, Credential, Registry, MAX_SUBSCRIBE_FILTERS, MAX_SUBSCRIPTIONS_PER_CONNECTION,
};
use rumqttc::SubscribeReasonCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A subscriber and a publisher with the `pubsub` policy.
async fn pubsub_pair(emu: &TestEmulator) -> (Client, Client) {
    let cred = emu.create_credential("pubsub", &["pubsub"]).unwrap();
    let sub = connect(emu, &cred, "sub").await.unwrap();
    let publ = connect(emu, &cred, "pub").await.unwrap();
    (sub, publ)
}

/// Proves the server still serves: a fresh client round-trips a message.
async fn still_serving(emu: &TestEmulator) {
    let cred = emu.create_credential("check", &["pubsub"]).unwrap();
    let mut c = connect(emu, &cred, "still-serving")
        .await
        .expect("server stopped serving");
    c.subscribe(&["data/alive"]).await;
    c.publish("data/alive", "yes").await;
    let (t, p) = c.next_message(WAIT).await.expect("no round trip");
    assert_eq!(
        (t.as_str(), p.as_slice()),
        ("data/alive", b"yes".as_slice())
    );
}

#[tokio::test]
async fn pubsub_round_trip_with_wildcards() {
    let emu = start().await;
    let (mut sub, publ) = pubsub_pair(&emu).await;
    let codes = sub.subscribe(&["data/+/temp", "data/plant/#"]).await;
    assert!(codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_))));
    publ.publish("data/a/temp", "1").await;
    assert_eq!(sub.next_message(WAIT).await.unwrap().0, "data/a/temp");
    publ.publish("data/plant/x/y", "2").await;
    assert_eq!(sub.next_message(WAIT).await.unwrap().0, "data/plant/x/y");
    publ.publish("data/b/humidity", "3").await;
    assert!(sub.next_message(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn claim_connect_with_client_id_outside_policy_is_not_authorised() {
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let err = connect(&emu, &claim, "device-1").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    connect(&emu, &claim, "claim-ok").await.unwrap();
}

#[tokio::test]
async fn claim_publish_outside_policy_closes_mqtt311_connection() {
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut c = connect(&emu, &claim, "claim-pub").await.unwrap();
    c.publish("data/x", "nope").await;
    assert!(c.closed_within(Duration::from_secs(3)).await);
    still_serving(&emu).await;
}

#[tokio::test]
async fn claim_subscribe_outside_policy_gets_suback_failure() {
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut c = connect(&emu, &claim, "claim-sub").await.unwrap();
    let codes = c
        .subscribe(&["data/#", "$aws/certificates/create/json/accepted"])
        .await;
    assert_eq!(codes[0], SubscribeReasonCode::Failure);
    assert!(matches!(codes[1], SubscribeReasonCode::Success(_)));
    // The connection stays usable.
    assert!(!c.closed_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn claim_cannot_receive_outside_policy() {
    let emu = start().await;
    // Subscribe is allowed on a broad filter, Receive only on the API topics.
    emu.registry()
        .create_policy(
            "broad-sub",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Subscribe","Resource":"*"}]}"#,
        )
        .unwrap();
    let claim = emu
        .create_credential("claim", &["claim", "broad-sub"])
        .unwrap();
    let mut c = connect(&emu, &claim, "claim-recv").await.unwrap();
    assert!(matches!(
        c.subscribe(&["data/#"]).await[0],
        SubscribeReasonCode::Success(_)
    ));
    let (_, publ) = pubsub_pair(&emu).await;
    publ.publish("data/x", "for others").await;
    assert!(c.next_message(Duration::from_secs(1)).await.is_none());
}

#[tokio::test]
async fn explicit_deny_on_receive_wins() {
    let emu = start().await;
    let (mut sub, publ) = pubsub_pair(&emu).await;
    sub.subscribe(&["data/#"]).await;
    publ.publish("data/secret", "hidden").await;
    publ.publish("data/open", "visible").await;
    let (t, _) = sub.next_message(WAIT).await.unwrap();
    assert_eq!(t, "data/open");
}

#[tokio::test]
async fn deactivated_certificate_is_dropped_within_a_second_and_refused() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let mut c = connect(&emu, &cred, "dev-1").await.unwrap();
    emu.registry()
        .set_certificate_status(&cred.certificate_id, CertStatus::Inactive)
        .unwrap();
    assert!(c.closed_within(Duration::from_secs(1)).await);
    assert!(connect(&emu, &cred, "dev-1").await.is_err());
    emu.registry()
        .set_certificate_status(&cred.certificate_id, CertStatus::Active)
        .unwrap();
    connect(&emu, &cred, "dev-1").await.unwrap();
}

#[tokio::test]
async fn status_change_by_another_process_drops_connection() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let mut c = connect(&emu, &cred, "dev-2").await.unwrap();
    // A second registry handle on the same file stands for the CLI.
    let other = Registry::open(emu.dir.path()).unwrap();
    other
        .set_certificate_status(&cred.certificate_id, CertStatus::Revoked)
        .unwrap();
    assert!(c.closed_within(Duration::from_millis(1500)).await);
    assert!(connect(&emu, &cred, "dev-2").await.is_err());
}

#[tokio::test]
async fn second_connection_with_same_client_id_drops_the_first() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let mut first = connect(&emu, &cred, "same").await.unwrap();
    let mut second = connect(&emu, &cred, "same").await.unwrap();
    assert!(first.closed_within(Duration::from_secs(2)).await);
    second.subscribe(&["data/same"]).await;
    second.publish("data/same", "x").await;
    assert!(second.next_message(WAIT).await.is_some());
}

#[tokio::test]
async fn client_id_over_128_bytes_refused() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let err = connect(&emu, &cred, &"c".repeat(129)).await.unwrap_err();
    assert!(err.contains("BadClientId"), "{err}");
    connect(&emu, &cred, &"c".repeat(128)).await.unwrap();
}

#[tokio::test]
async fn oversized_payload_closes_connection_and_server_keeps_serving() {
    let emu = start().await;
    let (mut sub, mut publ) = pubsub_pair(&emu).await;
    sub.subscribe(&["data/big"]).await;
    publ.publish("data/big", vec![7u8; 128 * 1024]).await;
    let (_, p) = sub.next_message(WAIT).await.unwrap();
    assert_eq!(p.len(), 128 * 1024);
    publ.publish("data/big", vec![7u8; 128 * 1024 + 1]).await;
    assert!(publ.closed_within(Duration::from_secs(3)).await);
    assert!(sub.next_message(Duration::from_millis(500)).await.is_none());
    still_serving(&emu).await;
}

#[tokio::test]
async fn topic_limits_and_subscribe_filter_count() {
    let emu = start().await;
    let (mut sub, mut publ) = pubsub_pair(&emu).await;
    let nine: Vec<String> = (0..9).map(|i| format!("data/f{i}")).collect();
    let refs: Vec<&str> = nine.iter().map(String::as_str).collect();
    let codes = sub.subscribe(&refs).await;
    assert!(codes.iter().all(|c| *c == SubscribeReasonCode::Failure));
    let codes = sub.subscribe(&refs[..8]).await;
    assert!(codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_))));
    // Eight slashes: over the limit of seven.
    publ.publish("data/1/2/3/4/5/6/7/8", "x").await;
    assert!(publ.closed_within(Duration::from_secs(3)).await);
}

/// AWS's quota of 50 subscriptions per connection: each filter of a
/// SUBSCRIBE that would be one too many gets the failure code; the
/// connection and its subscriptions stay, a filter held already may be
/// subscribed again, and an UNSUBSCRIBE makes room.
#[tokio::test]
async fn subscriptions_per_connection_capped_at_fifty() {
    let emu = start().await;
    let (mut sub, publ) = pubsub_pair(&emu).await;
    let filters: Vec<String> = (0..MAX_SUBSCRIPTIONS_PER_CONNECTION)
        .map(|i| format!("data/s{i}"))
        .collect();
    for chunk in filters.chunks(MAX_SUBSCRIBE_FILTERS) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let codes = sub.subscribe(&refs).await;
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            "{codes:?}"
        );
    }
    let codes = sub
        .subscribe(&["data/extra1", "data/s0", "data/extra2"])
        .await;
    assert_eq!(codes[0], SubscribeReasonCode::Failure, "{codes:?}");
    assert!(
        matches!(codes[1], SubscribeReasonCode::Success(_)),
        "{codes:?}"
    );
    assert_eq!(codes[2], SubscribeReasonCode::Failure, "{codes:?}");
    // The refused filter delivers nothing, the held ones still deliver.
    publ.publish("data/extra1", "refused").await;
    publ.publish("data/s49", "held").await;
    let (t, _) = sub.next_message(WAIT).await.expect("no message");
    assert_eq!(t, "data/s49");
    sub.unsubscribe("data/s1").await;
    let codes = sub.subscribe(&["data/extra1"]).await;
    assert!(
        matches!(codes[0], SubscribeReasonCode::Success(_)),
        "{codes:?}"
    );
    publ.publish("data/extra1", "room").await;
    let (t, p) = sub.next_message(WAIT).await.expect("no message");
    assert_eq!(
        (t.as_str(), p.as_slice()),
        ("data/extra1", b"room".as_slice())
    );
}

/// A subscriber that never reads while messages are published to it: its
/// outbound queue is bounded, so the emulator drops it instead of holding
/// every message, and keeps serving the others meanwhile.
#[tokio::test]
async fn subscriber_that_never_reads_is_dropped_and_others_are_served() {
    let emu = start().await;
    let cred = emu.create_credential("stalled", &["pubsub"]).unwrap();
    let tls = client_tls(&emu.root_ca_pem(), Some(&cred), false);
    // A small receive buffer, so that the socket fills early.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(emu.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stalled = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    use rumqttc::mqttbytes::v4::{Connect, Packet, Subscribe};
    let mut buf = bytes::BytesMut::new();
    let mut hello = Connect::new("stalled");
    // Keep-alive 0 (1200 s): the keep-alive is not what drops it.
    hello.keep_alive = 0;
    Packet::Connect(hello).write(&mut buf, 1024).unwrap();
    let mut subscribe = Subscribe::new("data/flood", rumqttc::mqttbytes::QoS::AtLeastOnce);
    subscribe.pkid = 1;
    Packet::Subscribe(subscribe).write(&mut buf, 1024).unwrap();
    stalled.write_all(&buf).await.unwrap();
    stalled.flush().await.unwrap();
    let mut acks = [0u8; 4 + 5];
    tokio::time::timeout(WAIT, stalled.read_exact(&mut acks))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acks[..4], [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    assert_eq!(acks[4..], [0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK QoS 1");
    // From here on the stalled client reads nothing.

    let publ_cred = emu.create_credential("publisher", &["pubsub"]).unwrap();
    let mut publ = connect(&emu, &publ_cred, "flood-publisher").await.unwrap();
    publ.subscribe(&["data/publisher"]).await;
    assert_eq!(emu.session_count(), 2);
    let payload = vec![b'x'; 100 * 1024];
    let mut published = 0;
    // Far more than any socket buffers and the queue hold (without a bound
    // the emulator would keep all of it for the stalled client).
    while emu.session_count() == 2 && published < 2000 {
        publ.publish("data/flood", payload.clone()).await;
        published += 1;
        if published % 50 == 0 {
            // The publisher is served all along.
            publ.publish("data/publisher", "ping").await;
            let (t, _) = publ.next_message(WAIT).await.expect("publisher not served");
            assert_eq!(t, "data/publisher");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while emu.session_count() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled subscriber was never dropped ({published} messages of 100 KiB published)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_serving(&emu).await;
    publ.publish("data/publisher", "after").await;
    assert!(publ.next_message(WAIT).await.is_some());
    // The stalled client finds its connection closed once it reads what
    // was written before.
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection is still open");
}

#[tokio::test]
async fn garbage_bytes_on_the_socket_are_dropped() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let tls = client_tls(&emu.root_ca_pem(), Some(&cred), false);
    let tcp = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    // A complete frame of the reserved packet type 0, then noise.
    stream
        .write_all(b"\x00\x02\xde\xadGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("server kept the garbage connection");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "server answered garbage: {n:?}"
    );
    still_serving(&emu).await;
}

#[tokio::test]
async fn tls_without_client_certificate_refused() {
    let emu = start().await;
    let err = connect_tls(
        emu.addr(),
        client_tls(&emu.root_ca_pem(), None, false),
        "anon",
    )
    .await;
    assert!(err.is_err());
    still_serving(&emu).await;
}

#[tokio::test]
async fn certificate_from_unknown_ca_refused() {
    let emu = start().await;
    // Our own CA, unknown to the emulator.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::default()
        .signed_by(&key, &issuer)
        .unwrap();
    let rogue = Credential {
        certificate_id: String::new(),
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
    };
    let _ = ca_cert;
    let err = connect(&emu, &rogue, "rogue").await;
    assert!(err.is_err());
    still_serving(&emu).await;
}

#[tokio::test]
async fn alpn_listener_requires_x_amzn_mqtt_ca() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let ca = emu.root_ca_pem();
    connect_tls(
        emu.alpn_addr(),
        client_tls(&ca, Some(&cred), true),
        "alpn-ok",
    )
    .await
    .unwrap();
    assert!(connect_tls(
        emu.alpn_addr(),
        client_tls(&ca, Some(&cred), false),
        "alpn-missing"
    )
    .await
    .is_err());
    // The plain listener takes clients without ALPN.
    connect_tls(emu.addr(), client_tls(&ca, Some(&cred), false), "plain")
        .await
        .unwrap();
}

#[tokio::test]
async fn tls12_only_client_connects() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots(&emu.root_ca_pem()))
    .with_client_auth_cert(
        vec![cert_der(&cred.certificate_pem)],
        private_key(&cred.private_key_pem),
    )
    .unwrap();
    connect_tls(emu.addr(), Arc::new(config), "tls12")
        .await
        .unwrap();
}

#[tokio::test]
async fn mqtt5_unauthorised_publish_gets_puback_not_authorised_and_api_works() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut opts = MqttOptions::new("claim-v5", "localhost", emu.addr().port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(client_tls(&emu.root_ca_pem(), Some(&claim), false)),
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("{CSR_TOPIC}/accepted"), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish("data/x", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let (_, csr) = p256_csr();
    client
        .publish(
            CSR_TOPIC,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&json!({"certificateSigningRequest": csr})).unwrap(),
        )
        .await
        .unwrap();
    let mut refused = false;
    let mut answered = false;
    tokio::time::timeout(WAIT, async {
        while !(refused && answered) {
            match eventloop.poll().await.expect("MQTT 5 connection failed") {
                Event::Incoming(Packet::PubAck(ack))
                    if ack.reason == PubAckReason::NotAuthorized =>
                {
                    refused = true
                }
                Event::Incoming(Packet::Publish(p)) => {
                    assert_eq!(p.topic.as_ref(), format!("{CSR_TOPIC}/accepted").as_bytes());
                    answered = true;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("no PUBACK 0x87 or no API answer over MQTT 5");
}

#[tokio::test]
async fn restart_keeps_registry() {
    let emu = start().await;
    let mut claim = claim_client(&emu, "claim-r", "prod").await;
    let (device, token) = create_from_csr(&mut claim).await;
    let (ok, _) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "P1"}}),
        )
        .await;
    assert!(ok);
    let ca_before = emu.root_ca_pem();
    drop(claim);
    let emu = emu.restart().await;
    assert_eq!(emu.root_ca_pem(), ca_before);
    assert!(emu.registry().thing("dev-P1").unwrap().is_some());
    assert!(emu.registry().template("prod").unwrap().is_some());
    assert_eq!(
        emu.registry()
            .certificate(&device.certificate_id)
            .unwrap()
            .unwrap()
            .status,
        CertStatus::Active
    );
    let mut dev = connect(&emu, &device, "dev-P1").await.unwrap();
    dev.subscribe(&["devices/dev-P1/x"]).await;
    dev.publish("devices/dev-P1/x", "after restart").await;
    assert!(dev.next_message(WAIT).await.is_some());
}

/// An MQTT 5 client over TLS and its event loop.
async fn connect_v5(
    emu: &TestEmulator,
    cred: &Credential,
    client_id: &str,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(client_id, "localhost", emu.addr().port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(client_tls(&emu.root_ca_pem(), Some(cred), false)),
    ));
    let (client, mut ev) = AsyncClient::new(opts, 16);
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) =
                ev.poll().await.expect("MQTT 5 connect failed")
            {
                let props = ack.properties.expect("CONNACK without properties");
                assert_eq!(props.max_qos, Some(1));
                assert_eq!(props.topic_alias_max, Some(0));
                return;
            }
        }
    })
    .await
    .unwrap();
    (client, ev)
}

/// Polls until the server sends DISCONNECT; returns its reason code.
async fn v5_disconnect_reason(
    ev: &mut rumqttc::v5::EventLoop,
) -> rumqttc::v5::mqttbytes::v5::DisconnectReasonCode {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(d))) => return d.reason_code,
                Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                )) => return reason_code,
                Ok(_) => continue,
                Err(e) => panic!("connection ended without DISCONNECT: {e}"),
            }
        }
    })
    .await
    .expect("no DISCONNECT")
}

#[tokio::test]
async fn mqtt5_subscribe_refused_with_not_authorised_and_takeover_and_deactivation_reasons() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, SubscribeReasonCode as Sub5};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::Event;
    let emu = start().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let (client, mut ev) = connect_v5(&emu, &claim, "claim-v5s").await;
    client.subscribe("data/#", QoS::AtLeastOnce).await.unwrap();
    let codes = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = ev.poll().await.unwrap() {
                return ack.return_codes;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(codes, vec![Sub5::NotAuthorized]);

    // A second connection with the same client id takes the session over.
    let (_c2, mut ev2) = connect_v5(&emu, &claim, "claim-v5s").await;
    assert_eq!(
        v5_disconnect_reason(&mut ev).await,
        DisconnectReasonCode::SessionTakenOver
    );

    // Deactivation: DISCONNECT "not authorised", then the socket closes.
    emu.registry()
        .set_certificate_status(&claim.certificate_id, CertStatus::Inactive)
        .unwrap();
    assert_eq!(
        v5_disconnect_reason(&mut ev2).await,
        DisconnectReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn garbage_after_connect_closes_only_that_connection() {
    let emu = start().await;
    let (mut sub, _publ) = pubsub_pair(&emu).await;
    sub.subscribe(&["data/x"]).await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let tls = client_tls(&emu.root_ca_pem(), Some(&cred), false);
    let tcp = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    // A valid CONNECT, encoded by rumqttc's codec, then a reserved packet type.
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(rumqttc::mqttbytes::v4::Connect::new("raw"))
        .write(&mut buf, 1024)
        .unwrap();
    stream.write_all(&buf).await.unwrap();
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted expected");
    stream.write_all(b"\x00\x02\xde\xad").await.unwrap();
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(WAIT, stream.read(&mut rest))
        .await
        .expect("garbage connection kept");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Others are unaffected.
    _publ.publish("data/x", "still here").await;
    assert!(sub.next_message(WAIT).await.is_some());
}

#[tokio::test]
async fn certificate_of_a_registered_ca_connects_and_is_registered() {
    let emu = start().await;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "factory CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let issue = |cn: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        Credential {
            certificate_id: iotcore_emulator::pki::certificate_id(cert.der()),
            certificate_pem: cert.pem(),
            private_key_pem: key.serialize_pem(),
        }
    };
    let first = issue("factory-1");
    assert!(
        connect(&emu, &first, "factory-1").await.is_err(),
        "CA not registered yet"
    );
    let ca_id = emu
        .registry()
        .register_ca_certificate(&ca_cert.pem(), &["pubsub"])
        .unwrap();

    let mut c = connect(&emu, &first, "factory-1").await.unwrap();
    let rec = emu
        .registry()
        .certificate(&first.certificate_id)
        .unwrap()
        .expect("registered on first use");
    assert_eq!(rec.status, CertStatus::Active);
    assert_eq!(rec.policies, vec!["pubsub".to_owned()]);
    c.subscribe(&["data/factory"]).await;
    c.publish("data/factory", "hi").await;
    assert!(c.next_message(WAIT).await.is_some());

    // A certificate of an INACTIVE CA is refused; one already registered stays as it is.
    emu.registry()
        .set_ca_certificate_status(&ca_id, CertStatus::Inactive)
        .unwrap();
    assert!(connect(&emu, &issue("factory-2"), "factory-2")
        .await
        .is_err());
    connect(&emu, &first, "factory-1b").await.unwrap();
}

#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let emu = start_with(|c| c.min_keep_alive_secs = 1).await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    let tls = client_tls(&emu.root_ca_pem(), Some(&cred), false);
    let tcp = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("silent");
    connect.keep_alive = 1;
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect)
        .write(&mut buf, 1024)
        .unwrap();
    stream.write_all(&buf).await.unwrap();
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let started = std::time::Instant::now();
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(WAIT, stream.read(&mut rest))
        .await
        .expect("silent client kept");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn plain_tcp_garbage_fails_the_handshake_and_server_keeps_serving() {
    let emu = start().await;
    for addr in [emu.addr(), emu.alpn_addr()] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00 not TLS at all")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        // The server answers with a TLS alert at most, then closes.
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "server kept a non-TLS connection open");
    }
    still_serving(&emu).await;
}
