//! The simulated slow link (test-only): latency on both listeners seen by a
//! real TLS + MQTT client, jitter that keeps TLS intact (a reordered byte
//! would fail its record), cuts, the relay's end, and the flags' checks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use iotcore_emulator::{Emulator, EmulatorConfig, EmulatorError, LinkSimulation};

fn latency(ms: u64) -> LinkSimulation {
    LinkSimulation {
        latency: Duration::from_millis(ms),
        ..Default::default()
    }
}

/// SUBSCRIBE to SUBACK after CONNACK on the listener at `alpn`.
async fn subscribe_round_trip(emu: &TestEmulator, alpn: bool, client_id: &str) -> Duration {
    let cred = emu.create_credential(client_id, &["pubsub"]).unwrap();
    let addr = if alpn { emu.alpn_addr() } else { emu.addr() };
    let mut c = connect_tls(
        addr,
        client_tls(&emu.root_ca_pem(), Some(&cred), alpn),
        client_id,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let codes = c.subscribe(&["data/link"]).await;
    let took = started.elapsed();
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));
    took
}

#[tokio::test]
async fn latency_delays_each_direction_on_both_listeners() {
    let emu = start_with(|c| c.link = latency(150)).await;
    for alpn in [false, true] {
        let took = subscribe_round_trip(&emu, alpn, &format!("slow-{alpn}")).await;
        // 150 ms each way: at least 300 ms.
        assert!(
            took >= Duration::from_millis(300),
            "alpn={alpn}: round trip {took:?}"
        );
    }
}

/// A new connection costs what it would on a real link: the TCP
/// handshake's round trip (held by the relay, the kernel having answered
/// it), the TLS 1.3 handshake's and CONNECT's: three round trips to the
/// CONNACK.
#[tokio::test]
async fn a_new_connection_costs_three_round_trips_to_the_connack() {
    let emu = start_with(|c| c.link = latency(50)).await;
    let cred = emu.create_credential("dialer", &["pubsub"]).unwrap();
    let started = Instant::now();
    connect_tls(
        emu.addr(),
        client_tls(&emu.root_ca_pem(), Some(&cred), false),
        "dialer",
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "CONNACK after {took:?}");
}

#[tokio::test]
async fn without_latency_the_round_trip_works() {
    let emu = start_with(|c| c.link = LinkSimulation::default()).await;
    for alpn in [false, true] {
        subscribe_round_trip(&emu, alpn, &format!("fast-{alpn}")).await;
    }
}

#[tokio::test]
async fn jitter_keeps_bytes_in_order() {
    let emu = start_with(|c| {
        c.link = LinkSimulation {
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(40),
            disconnect_rate: 0.0,
        }
    })
    .await;
    let cred = emu.create_credential("jitter", &["pubsub"]).unwrap();
    let mut c = connect(&emu, &cred, "jitter").await.unwrap();
    c.subscribe(&["data/jitter"]).await;
    // Many small writes in both directions: any reordering would break a
    // TLS record (and the connection) or the order of the messages.
    for i in 0..30 {
        c.publish("data/jitter", format!("{i}")).await;
    }
    for i in 0..30 {
        let (t, p) = c.next_message(WAIT).await.expect("message lost");
        assert_eq!(
            (t.as_str(), p),
            ("data/jitter", format!("{i}").into_bytes())
        );
    }
}

#[tokio::test]
async fn disconnect_rate_one_cuts_at_the_first_client_bytes() {
    let emu = start_with(|c| {
        c.link = LinkSimulation {
            disconnect_rate: 1.0,
            ..Default::default()
        }
    })
    .await;
    let cred = emu.create_credential("cut", &["pubsub"]).unwrap();
    for (addr, alpn) in [(emu.addr(), false), (emu.alpn_addr(), true)] {
        let err = connect_tls(
            addr,
            client_tls(&emu.root_ca_pem(), Some(&cred), alpn),
            "cut",
        )
        .await
        .expect_err("connected through a link that cuts every chunk");
        assert!(!err.contains("timed out"), "{err}");
    }
    assert_eq!(emu.session_count(), 0);
}

#[tokio::test]
async fn relay_tasks_end_with_their_connection() {
    let emu = start_with(|c| c.link = latency(20)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let cred = emu.create_credential("ends", &["pubsub"]).unwrap();
    for i in 0..3 {
        let c = connect(&emu, &cred, &format!("ends-{i}")).await.unwrap();
        c.client.disconnect().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > before || emu.session_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} tasks alive, {before} before the connections; {} sessions",
            metrics.num_alive_tasks(),
            emu.session_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn start_refuses_a_rate_that_is_not_a_probability() {
    for bad in [-0.5, 1.5, f64::NAN] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmulatorConfig::new(dir.path());
        config.link.disconnect_rate = bad;
        match Emulator::start(config).await {
            Err(EmulatorError::Link(e)) => assert!(e.to_string().contains("probability"), "{e}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad}: started"),
        }
    }
}

#[tokio::test]
async fn serve_flags_print_the_simulation_and_refuse_bad_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_with_fixtures(&dir);
    let serve = ServeProcess::spawn_with(&dir, &["--latency", "100", "--jitter", "5"]).await;
    assert!(
        serve
            .line
            .ends_with(" link: latency=100ms jitter=5ms disconnect-rate=0"),
        "{}",
        serve.line
    );
    drop(serve);
    let plain = ServeProcess::spawn(&dir).await;
    assert!(!plain.line.contains("link:"), "{}", plain.line);
    drop(plain);

    for (flag, value) in [
        ("--disconnect-rate", "1.5"),
        ("--disconnect-rate", "-0.1"),
        ("--disconnect-rate", "NaN"),
        ("--disconnect-rate", "often"),
        ("--latency", "-5"),
        ("--jitter", "1.5"),
    ] {
        let out = std::process::Command::new(BIN)
            .arg("serve")
            .arg(&dir)
            .args(SERVE_PORTS_0)
            .args([flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
