//! The record of the packets each connection sent (test-only,
//! `EmulatorConfig::record_packets`), and packets that arrive in the same
//! read as the CONNECT.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use iotcore_emulator::{ConnectionLog, LoggedPacket};
use rumqttc::{Packet, QoS, SubscribeFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The log of `client_id` once it has at least `n` packets.
async fn log_of(emu: &TestEmulator, client_id: &str, n: usize) -> ConnectionLog {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = emu
            .packet_log()
            .into_iter()
            .find(|c| c.client_id == client_id);
        if let Some(log) = log.filter(|l| l.packets.len() >= n) {
            return log;
        }
        assert!(Instant::now() < deadline, "{:?}", emu.packet_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connect_subscribe_publish_recorded_in_order_without_payloads() {
    let emu = start_with(|c| c.record_packets = true).await;
    let cred = emu.create_credential("logged", &["pubsub"]).unwrap();
    let mut c = connect(&emu, &cred, "logged").await.unwrap();
    // One SUBSCRIBE with two filters (subscribe_many).
    c.subscribe(&["data/a", "data/b"]).await;
    c.publish("data/a", "secret payload").await;
    let log = log_of(&emu, "logged", 3).await;
    let packets: Vec<&LoggedPacket> = log.packets.iter().map(|p| &p.packet).collect();
    assert_eq!(
        packets[..3],
        [
            &LoggedPacket::Connect,
            &LoggedPacket::Subscribe {
                filters: vec!["data/a".into(), "data/b".into()]
            },
            &LoggedPacket::Publish {
                topic: "data/a".into(),
                qos: 1
            },
        ]
    );
    // Times never go back; rumqttc waits for CONNACK, so the SUBSCRIBE
    // came in a later read than the CONNECT.
    assert!(log.packets.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(log.packets[1].read > log.packets[0].read);
    assert_eq!(log.dropped, 0);
    assert!(!format!("{log:?}").contains("secret"));
    // The other client ids have logs of their own.
    assert!(emu.packet_log().iter().all(|l| !l.packets.is_empty()));
}

#[tokio::test]
async fn nothing_recorded_by_default() {
    let emu = start().await;
    let cred = emu.create_credential("unlogged", &["pubsub"]).unwrap();
    let mut c = connect(&emu, &cred, "unlogged").await.unwrap();
    c.subscribe(&["data/a"]).await;
    assert!(emu.packet_log().is_empty());
}

/// A client that writes CONNECT and SUBSCRIBE at once (one TLS write) gets
/// its SUBACK without sending anything else, and the log shows both
/// packets completed by the same read.
#[tokio::test]
async fn subscribe_in_the_same_write_as_connect_is_answered() {
    let emu = start_with(|c| c.record_packets = true).await;
    let cred = emu.create_credential("batched", &["pubsub"]).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(&emu.root_ca_pem(), Some(&cred), false));
    let tcp = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tls.connect(name, tcp).await.unwrap();

    let mut out = BytesMut::new();
    let mut connect = rumqttc::Connect::new("batched");
    connect.keep_alive = 60;
    Packet::Connect(connect).write(&mut out, 1 << 20).unwrap();
    let mut subscribe = rumqttc::Subscribe::new_many([
        SubscribeFilter::new("data/x".into(), QoS::AtLeastOnce),
        SubscribeFilter::new("data/y".into(), QoS::AtLeastOnce),
    ]);
    subscribe.pkid = 7;
    Packet::Subscribe(subscribe)
        .write(&mut out, 1 << 20)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    stream.flush().await.unwrap();

    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|p| matches!(p, Packet::SubAck(_))) {
        loop {
            match Packet::read(&mut buf, 1 << 20) {
                Ok(p) => seen.push(p),
                Err(rumqttc::Error::InsufficientBytes(_)) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        if seen.iter().any(|p| matches!(p, Packet::SubAck(_))) {
            break;
        }
        let n = tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf))
            .await
            .expect("no SUBACK: the SUBSCRIBE behind the CONNECT was not handled")
            .unwrap();
        assert_ne!(n, 0, "closed; got {seen:?}");
    }
    assert!(matches!(seen[0], Packet::ConnAck(_)), "{seen:?}");
    match &seen[1] {
        Packet::SubAck(ack) => {
            assert_eq!(ack.pkid, 7);
            assert_eq!(ack.return_codes.len(), 2);
        }
        other => panic!("{other:?}"),
    }

    let log = log_of(&emu, "batched", 2).await;
    assert_eq!(log.packets[0].packet, LoggedPacket::Connect);
    assert_eq!(
        log.packets[1].packet,
        LoggedPacket::Subscribe {
            filters: vec!["data/x".into(), "data/y".into()]
        }
    );
    assert_eq!(
        log.packets[0].read, log.packets[1].read,
        "one read: {log:?}"
    );
}
