//! The TLS handshake as AWS IoT Core's endpoints do it: a client
//! certificate outside its validity period (expired, or not yet valid) is
//! refused, registered or not, and so is a client that sends no SNI, on
//! both listeners (8883-style and ALPN 443-style), with TLS 1.3 and 1.2.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use iotcore_emulator::pki::Validity;
use iotcore_emulator::{CertStatus, Credential};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Ended an hour ago (valid for the day before).
fn expired() -> Validity {
    Validity {
        not_before: now() - 86_400,
        not_after: now() - 3600,
    }
}

/// Valid from an hour from now.
fn not_yet_valid() -> Validity {
    Validity {
        not_before: now() + 3600,
        not_after: now() + 86_400,
    }
}

/// TLS 1.3 and 1.2 ("1.3" / "1.2").
const VERSIONS: [&str; 2] = ["1.3", "1.2"];

/// A client configuration for `listener` (ALPN `x-amzn-mqtt-ca` on the
/// ALPN one) with `cred`, speaking only TLS `version`.
fn client(emu: &TestEmulator, cred: &Credential, alpn: bool, version: &str) -> Arc<ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
        "1.3" => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS12],
    };
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots(&emu.root_ca_pem()))
            .with_client_auth_cert(
                vec![cert_der(&cred.certificate_pem)],
                private_key(&cred.private_key_pem),
            )
            .unwrap();
    if alpn {
        config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    }
    Arc::new(config)
}

/// The two listeners: (address, needs ALPN).
fn listeners(emu: &TestEmulator) -> [(SocketAddr, bool); 2] {
    [(emu.addr(), false), (emu.alpn_addr(), true)]
}

/// What a client that connects to `addr` as `server_name` and sends
/// CONNECT as `client_id` gets: the first four bytes of the answer
/// (`20 02 00 00`: CONNACK accepted), or the TLS error it met, in the
/// handshake (TLS 1.2, or 1.3 for the server's own checks) or at its
/// first read (TLS 1.3: the server checks the client's certificate after
/// the client has finished its side of the handshake).
async fn attempt(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    client_id: &str,
) -> Result<[u8; 4], rustls::Error> {
    let tls_error = |e: std::io::Error| -> rustls::Error {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(t) => t.clone(),
            None => rustls::Error::General(format!("not a TLS error: {e}")),
        }
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .expect("handshake within WAIT")
    .map_err(tls_error)?;
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    let mut buf = bytes::BytesMut::new();
    Packet::Connect(Connect::new(client_id))
        .write(&mut buf, 1024)
        .unwrap();
    // A write after the server's alert may fail too: the read tells why.
    let _ = tls.write_all(&buf).await;
    let _ = tls.flush().await;
    let mut answer = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut answer))
        .await
        .expect("an answer within WAIT")
        .map_err(tls_error)?;
    Ok(answer)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

fn assert_handshake_failure(got: Result<[u8; 4], rustls::Error>, what: &str) {
    match got {
        Err(rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)) => {}
        other => panic!("{what}: expected a handshake_failure alert, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_registered_certificate_is_refused_with_handshake_failure_and_a_valid_one_connects()
{
    let emu = start().await;
    let old = emu
        .create_credential_valid("expired", &["pubsub"], expired())
        .unwrap();
    let good = emu.create_credential("valid", &["pubsub"]).unwrap();
    // Registered and ACTIVE: only its dates refuse it.
    assert_eq!(
        emu.registry()
            .certificate(&old.certificate_id)
            .unwrap()
            .unwrap()
            .status,
        CertStatus::Active
    );
    for (addr, alpn) in listeners(&emu) {
        for version in VERSIONS {
            let what = format!("{addr} ALPN {alpn} TLS {version}");
            assert_handshake_failure(
                attempt(
                    addr,
                    localhost(),
                    client(&emu, &old, alpn, version),
                    "expired-1",
                )
                .await,
                &format!("expired certificate, {what}"),
            );
            assert_eq!(
                attempt(
                    addr,
                    localhost(),
                    client(&emu, &good, alpn, version),
                    "valid-1"
                )
                .await
                .unwrap_or_else(|e| panic!("valid certificate, {what}: {e}")),
                CONNACK_ACCEPTED,
                "valid certificate, {what}"
            );
        }
    }
    // rumqttc, as a device would connect.
    assert!(connect(&emu, &old, "expired-2").await.is_err());
    let mut c = connect(&emu, &good, "valid-2").await.unwrap();
    c.subscribe(&["data/ok"]).await;
    c.publish("data/ok", "yes").await;
    assert_eq!(c.next_message(WAIT).await.unwrap().0, "data/ok");
    assert_eq!(emu.session_count(), 1);
}

#[tokio::test]
async fn not_yet_valid_registered_certificate_is_refused_with_handshake_failure() {
    let emu = start().await;
    let early = emu
        .create_credential_valid("early", &["pubsub"], not_yet_valid())
        .unwrap();
    for (addr, alpn) in listeners(&emu) {
        for version in VERSIONS {
            assert_handshake_failure(
                attempt(
                    addr,
                    localhost(),
                    client(&emu, &early, alpn, version),
                    "early-1",
                )
                .await,
                &format!("not yet valid certificate, {addr} ALPN {alpn} TLS {version}"),
            );
        }
    }
    assert!(connect(&emu, &early, "early-2").await.is_err());
    assert_eq!(emu.session_count(), 0);
}

#[tokio::test]
async fn expired_claim_certificate_is_refused_and_a_valid_claim_provisions() {
    let emu = start().await;
    let old_claim = emu
        .create_credential_valid("claim", &["claim"], expired())
        .unwrap();
    for (addr, alpn) in listeners(&emu) {
        assert_handshake_failure(
            attempt(
                addr,
                localhost(),
                client(&emu, &old_claim, alpn, "1.3"),
                "claim-old",
            )
            .await,
            &format!("expired claim certificate, {addr}"),
        );
    }
    assert!(connect(&emu, &old_claim, "claim-old").await.is_err());
    // A valid claim still provisions.
    let mut c = claim_client(&emu, "claim-new", "prod").await;
    let (device, _) = create_from_csr(&mut c).await;
    assert!(device.certificate_pem.contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn expired_certificate_of_a_registered_ca_is_refused_and_not_registered() {
    let emu = start().await;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    emu.registry()
        .register_ca_certificate(&ca_cert.pem(), &["pubsub"])
        .unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet device");
    let v = expired();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(v.not_before).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(v.not_after).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cred = Credential {
        certificate_id: iotcore_emulator::pki::certificate_id(cert.der()),
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
    };
    assert_handshake_failure(
        attempt(
            emu.addr(),
            localhost(),
            client(&emu, &cred, false, "1.3"),
            "fleet-1",
        )
        .await,
        "expired certificate of a registered CA",
    );
    assert!(emu
        .registry()
        .certificate(&cred.certificate_id)
        .unwrap()
        .is_none());
}

fn loopback_ip() -> ServerName<'static> {
    // rustls sends no SNI for an IP address (RFC 6066 allows host names only).
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

#[tokio::test]
async fn client_without_sni_is_refused_on_both_listeners_and_one_with_sni_connects() {
    let emu = start().await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    for (addr, alpn) in listeners(&emu) {
        for version in VERSIONS {
            let what = format!("{addr} ALPN {alpn} TLS {version}");
            assert_handshake_failure(
                attempt(
                    addr,
                    loopback_ip(),
                    client(&emu, &cred, alpn, version),
                    "no-sni",
                )
                .await,
                &format!("no SNI, {what}"),
            );
            assert_eq!(
                attempt(addr, localhost(), client(&emu, &cred, alpn, version), "sni")
                    .await
                    .unwrap_or_else(|e| panic!("SNI localhost, {what}: {e}")),
                CONNACK_ACCEPTED
            );
        }
    }
    // rumqttc given an IP address as its host sends no SNI either.
    let err = connect_tls_host(
        emu.addr(),
        "127.0.0.1",
        client_tls(&emu.root_ca_pem(), Some(&cred), false),
        "by-ip",
    )
    .await
    .unwrap_err();
    assert!(err.to_lowercase().contains("handshake"), "{err}");
    connect(&emu, &cred, "by-name").await.unwrap();
}

#[tokio::test]
async fn allow_no_sni_serves_a_client_without_sni_on_both_listeners() {
    let emu = start_with(|c| c.allow_no_sni = true).await;
    let cred = emu.create_credential("dev", &["pubsub"]).unwrap();
    for (addr, alpn) in listeners(&emu) {
        for version in VERSIONS {
            assert_eq!(
                attempt(
                    addr,
                    loopback_ip(),
                    client(&emu, &cred, alpn, version),
                    "no-sni"
                )
                .await
                .unwrap_or_else(|e| panic!("no SNI allowed, {addr} TLS {version}: {e}")),
                CONNACK_ACCEPTED
            );
        }
    }
    let mut c = connect_tls_host(
        emu.alpn_addr(),
        "127.0.0.1",
        client_tls(&emu.root_ca_pem(), Some(&cred), true),
        "by-ip",
    )
    .await
    .unwrap();
    c.subscribe(&["data/ip"]).await;
    c.publish("data/ip", "yes").await;
    assert_eq!(c.next_message(WAIT).await.unwrap().0, "data/ip");
    // The validity check stays on.
    let old = emu
        .create_credential_valid("expired", &["pubsub"], expired())
        .unwrap();
    assert_handshake_failure(
        attempt(
            emu.addr(),
            loopback_ip(),
            client(&emu, &old, false, "1.3"),
            "expired",
        )
        .await,
        "expired certificate without SNI, allowed",
    );
}
