//! Enrollment benchmark: N simulated devices at once, each doing
//! CreateCertificateFromCsr (csr mode, software P-256 keys) or
//! CreateKeysAndCertificate (keys mode) then RegisterThing against an
//! in-process emulator over loopback TLS. Prints enrollments per second,
//! p50/p99 latency and the most concurrent connections held, per mode.
//!
//! In keys mode the emulator's RSA key pool is made as large as the number
//! of devices and filled before the clock starts (as the CSRs and keys of
//! csr mode are made before it): the service answers in milliseconds, and
//! so must its stand-in; the time to fill it is printed on its own.
//!
//! `cargo run --release -p iotcore-emulator --example enroll_bench -- [DEVICES] [csr|keys|both]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotcore_emulator::{Emulator, EmulatorConfig, Rate};
use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::sync::Barrier;

const CLAIM_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/claim-*"},
 {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/$aws/certificates/create-from-csr/*","arn:aws:iot:us-east-1:123456789012:topic/$aws/certificates/create/*","arn:aws:iot:us-east-1:123456789012:topic/$aws/provisioning-templates/bench/provision/*"]},
 {"Effect":"Allow","Action":"iot:Subscribe","Resource":["arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/certificates/create-from-csr/*","arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/certificates/create/*","arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/provisioning-templates/bench/provision/*"]}]}"#;
const DEVICE_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
const TEMPLATE: &str = r#"{"Parameters":{"SerialNumber":{"Type":"String"}},"Resources":{
 "thing":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Fn::Join":["",["bench-",{"Ref":"SerialNumber"}]]}}},
 "certificate":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":{"Ref":"AWS::IoT::Certificate::Id"},"Status":"Active"}},
 "policy":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"bench-device"}}},
 "DeviceConfiguration":{}}"#;

const CSR: &str = "$aws/certificates/create-from-csr/json";
const KEYS: &str = "$aws/certificates/create/json";
const REG: &str = "$aws/provisioning-templates/bench/provision/json";

async fn next_publish(ev: &mut rumqttc::EventLoop) -> Result<(String, Value), String> {
    loop {
        match ev.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Incoming::Publish(p)) => {
                return Ok((
                    p.topic,
                    serde_json::from_slice(&p.payload).map_err(|e| e.to_string())?,
                ))
            }
            _ => continue,
        }
    }
}

async fn wait_suback(ev: &mut rumqttc::EventLoop, n: usize) -> Result<(), String> {
    let mut seen = 0;
    while seen < n {
        if let Event::Incoming(Incoming::SubAck(_)) = ev.poll().await.map_err(|e| e.to_string())? {
            seen += 1;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let modes: &[bool] = match args.get(2).map(String::as_str) {
        None | Some("both") => &[false, true],
        Some("csr") => &[false],
        Some("keys") => &[true],
        Some(other) => panic!("mode {other:?}: give csr, keys or both"),
    };
    for &keys in modes {
        run(devices, keys).await;
    }
}

async fn run(devices: usize, keys_mode: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmulatorConfig::new(dir.path());
    config.rsa_key_pool = if keys_mode { devices } else { 0 };
    let unlimited = Rate::new(1e9, u32::MAX);
    config.throttle.create_certificate_from_csr = unlimited;
    config.throttle.create_keys_and_certificate = unlimited;
    config.throttle.register_thing = unlimited;
    let emu = Emulator::start(config).await.unwrap();
    emu.registry().create_policy("claim", CLAIM_POLICY).unwrap();
    emu.registry()
        .create_policy("bench-device", DEVICE_POLICY)
        .unwrap();
    emu.registry()
        .create_template("bench", TEMPLATE, true, None)
        .unwrap();
    let claim = emu.create_claim_credential("claim").unwrap();
    if keys_mode {
        let filling = Instant::now();
        while emu.rsa_keys_pooled() < devices {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "keys mode: {devices} RSA-2048 keys pooled in {:.1}s",
            filling.elapsed().as_secs_f64()
        );
    }

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(
            pem::parse(emu.root_ca_pem()).unwrap().into_contents(),
        ))
        .unwrap();
    let key = PrivatePkcs8KeyDer::from(pem::parse(&claim.private_key_pem).unwrap().into_contents());
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(
                pem::parse(&claim.certificate_pem).unwrap().into_contents(),
            )],
            key.into(),
        )
        .unwrap(),
    );
    // Keys and CSRs are made before the clock starts: the device's cost, not the server's.
    let csrs: Vec<String> = (0..devices)
        .map(|_| {
            if keys_mode {
                return String::new();
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            rcgen::CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap()
        })
        .collect();

    let port = emu.addr().port();
    let max_sessions = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Barrier::new(devices + 1));
    let sampler = {
        let max = max_sessions.clone();
        let emu_sessions = Arc::new(emu);
        let e2 = emu_sessions.clone();
        (
            tokio::spawn(async move {
                loop {
                    max.fetch_max(e2.session_count(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }),
            emu_sessions,
        )
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, csr) in csrs.into_iter().enumerate() {
        let tls = tls.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let result = async {
                let mut opts = MqttOptions::new(format!("claim-{i}"), "localhost", port);
                opts.set_keep_alive(Duration::from_secs(60));
                opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
                let (client, mut ev) = AsyncClient::new(opts, 10);
                let mut network = NetworkOptions::new();
                network.set_tcp_nodelay(true);
                ev.set_network_options(network);
                let api = if keys_mode { KEYS } else { CSR };
                for t in [api, REG] {
                    client.subscribe(format!("{t}/accepted"), QoS::AtLeastOnce).await.unwrap();
                    client.subscribe(format!("{t}/rejected"), QoS::AtLeastOnce).await.unwrap();
                }
                wait_suback(&mut ev, 4).await?;
                let t0 = Instant::now();
                let request = if keys_mode {
                    json!({})
                } else {
                    json!({"certificateSigningRequest": csr})
                };
                client
                    .publish(api, QoS::AtLeastOnce, false, request.to_string())
                    .await
                    .unwrap();
                let (topic, body) = next_publish(&mut ev).await?;
                if !topic.ends_with("accepted") {
                    return Err(format!("{api} rejected: {body}"));
                }
                let req = json!({"certificateOwnershipToken": body["certificateOwnershipToken"], "parameters": {"SerialNumber": i.to_string()}});
                client.publish(REG, QoS::AtLeastOnce, false, req.to_string()).await.unwrap();
                let (topic, body) = next_publish(&mut ev).await?;
                if !topic.ends_with("accepted") {
                    return Err(format!("RegisterThing rejected: {body}"));
                }
                Ok((t0.elapsed(), client, ev))
            }
            .await;
            // Hold the connection until every device is done, to count concurrency.
            let keep = match result {
                Ok((lat, client, mut ev)) => {
                    let poller = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
                    Ok((lat, client, poller))
                }
                Err(e) => Err(e),
            };
            done.wait().await;
            keep.map(|(lat, client, poller)| {
                drop(client);
                poller.abort();
                lat
            })
        }));
    }
    done.wait().await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(l) => latencies.push(l),
            Err(e) => {
                failures += 1;
                if failures <= 3 {
                    eprintln!("enrollment failed: {e}");
                }
            }
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "mode={} devices={devices} enrolled={} failed={failures} elapsed={:.2}s enrollments_per_s={:.1} p50_ms={:.1} p99_ms={:.1} max_concurrent_connections={}",
        if keys_mode { "keys" } else { "csr" },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        max_sessions.load(Ordering::Relaxed)
    );
    sampler.0.abort();
}
