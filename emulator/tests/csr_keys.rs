//! CreateCertificateFromCsr with every key and signature algorithm AWS
//! accepts, end to end over real TLS and MQTT (CSR, RegisterThing, the
//! device connecting with its new certificate and key), and the ones it
//! refuses, with AWS's error shape on the rejected topic.
//!
//! Keys and CSRs are made by the `openssl` command, an implementation
//! independent of the emulator's, which also verifies the issued
//! certificates against the emulator's root CA.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use iotcore_emulator::{CertStatus, Credential};
use serde_json::{json, Value};

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Makes a key with `genpkey_args` and a CSR for it signed with
/// `req_args` (digest, padding); returns (key PEM, CSR PEM).
fn key_and_csr(
    dir: &Path,
    name: &str,
    genpkey_args: &[&str],
    req_args: &[&str],
) -> (String, String) {
    let key = format!("{name}.key");
    let mut args = vec!["genpkey", "-out", &key];
    args.extend_from_slice(genpkey_args);
    openssl(dir, &args);
    csr_for_key(dir, name, &format!("/CN={name}/O=csr-keys test"), req_args)
}

/// A CSR with subject `subj` for the key `<name>.key` made before;
/// returns (key PEM, CSR PEM).
fn csr_for_key(dir: &Path, name: &str, subj: &str, req_args: &[&str]) -> (String, String) {
    let key = format!("{name}.key");
    let mut args = vec!["req", "-new", "-key", &key, "-subj", subj];
    args.extend_from_slice(req_args);
    let csr = openssl(dir, &args);
    (std::fs::read_to_string(dir.join(&key)).unwrap(), csr)
}

/// An EC key on `curve` written with a compressed point (OpenSSL writes
/// uncompressed ones unless told), and its CSR signed with `digest`.
fn compressed_point_key_and_csr(
    dir: &Path,
    name: &str,
    curve: &str,
    digest: &str,
) -> (String, String) {
    let key = format!("{name}.key");
    let curve = format!("ec_paramgen_curve:{curve}");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            &curve,
            "-out",
            &key,
        ],
    );
    openssl(
        dir,
        &["ec", "-in", &key, "-conv_form", "compressed", "-out", &key],
    );
    let (key_pem, csr) = csr_for_key(dir, name, &format!("/CN={name}"), &[digest]);
    // The CSR really carries a compressed point (0x02 or 0x03, X only).
    let spki = spki_of(dir, "req", &csr);
    let point_len = if curve.ends_with("256") { 33 } else { 49 };
    assert!(
        matches!(spki[spki.len() - point_len], 0x02 | 0x03),
        "{name}: openssl did not compress the point"
    );
    (key_pem, csr)
}

/// One DER element of `tag` around `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A CSR (PEM) for an RSA key with a modulus of exactly 8193 bits (one
/// bit more than whole bytes), written by hand: openssl would take minutes
/// to make such a key, and the key's size is refused before the signature
/// (zeros here) is looked at.
fn rsa_8193_bit_csr() -> String {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let mut modulus = vec![0x01];
    modulus.extend([0xff; 1024]);
    let rsa_key = der(
        0x30,
        &[der(0x02, &modulus), der(0x02, &[0x01, 0x00, 0x01])].concat(),
    );
    let alg = |oid: &[u8]| der(0x30, &[der(0x06, oid), vec![0x05, 0x00]].concat());
    let spki = der(
        0x30,
        &[
            alg(RSA_ENCRYPTION),
            der(0x03, &[&[0][..], &rsa_key].concat()),
        ]
        .concat(),
    );
    let cn = der(
        0x31,
        &der(
            0x30,
            &[der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"rsa8193")].concat(),
        ),
    );
    let info = der(
        0x30,
        &[
            vec![0x02, 0x01, 0x00],
            der(0x30, &cn),
            spki,
            vec![0xa0, 0x00],
        ]
        .concat(),
    );
    let signature = der(0x03, &[0u8; 1025]);
    let csr = der(0x30, &[info, alg(SHA256_WITH_RSA), signature].concat());
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr))
}

/// The SubjectPublicKeyInfo DER of a CSR or of a certificate, as openssl reads it.
fn spki_of(dir: &Path, kind: &str, pem_text: &str) -> Vec<u8> {
    let file = dir.join(format!("spki-input.{kind}"));
    std::fs::write(&file, pem_text).unwrap();
    let pubkey = openssl(
        dir,
        &[kind, "-in", file.to_str().unwrap(), "-noout", "-pubkey"],
    );
    pem::parse(pubkey).unwrap().into_contents()
}

fn assert_rejected(body: &Value, code: &str, message_has: &[&str]) {
    assert_eq!(body["statusCode"], 400, "{body}");
    assert_eq!(body["errorCode"], code, "{body}");
    let m = body["errorMessage"].as_str().unwrap_or_default();
    for part in message_has {
        assert!(m.contains(part), "{m:?} lacks {part:?}");
    }
}

/// CreateCertificateFromCsr, checks on the issued certificate, RegisterThing
/// and a connection as the new thing; returns the certificate's PEM.
async fn enroll(
    emu: &TestEmulator,
    claim: &mut Client,
    dir: &Path,
    serial: &str,
    key_pem: String,
    csr_pem: String,
) -> String {
    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr_pem}))
        .await;
    assert!(ok, "{serial}: {body}");
    let cert_pem = body["certificatePem"].as_str().unwrap().to_owned();

    // The certificate carries the CSR's public key, byte for byte, and
    // chains to the root CA for openssl too.
    assert_eq!(
        spki_of(dir, "x509", &cert_pem),
        spki_of(dir, "req", &csr_pem),
        "{serial}: the certificate is not for the CSR's key"
    );
    std::fs::write(dir.join("ca.pem"), emu.root_ca_pem()).unwrap();
    std::fs::write(dir.join("issued.pem"), &cert_pem).unwrap();
    let verified = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslclient",
            "issued.pem",
        ],
    );
    assert!(verified.contains("issued.pem: OK"), "{serial}: {verified}");
    let subject = openssl(dir, &["x509", "-in", "issued.pem", "-noout", "-subject"]);
    assert!(subject.contains(&format!("CN = {serial}")), "{subject}");

    let (ok, body) = claim
        .call(
            &register_topic("prod"),
            &json!({
                "certificateOwnershipToken": body["certificateOwnershipToken"],
                "parameters": {"SerialNumber": serial},
            }),
        )
        .await;
    assert!(ok, "{serial}: {body}");
    let thing = format!("dev-{serial}");
    assert_eq!(body["thingName"], thing.as_str());
    let device = Credential {
        certificate_id: iotcore_emulator::pki::certificate_id_from_pem(&cert_pem).unwrap(),
        certificate_pem: cert_pem.clone(),
        private_key_pem: key_pem,
    };
    let rec = emu
        .registry()
        .certificate(&device.certificate_id)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CertStatus::Active);
    // The device's TLS handshake signs with its own key of that kind.
    let conn = connect(emu, &device, &thing).await;
    assert!(conn.is_ok(), "{serial}: {:?}", conn.err());
    cert_pem
}

#[tokio::test]
async fn rsa_keys_of_2048_3072_and_4096_bits_with_every_aws_digest_enroll_and_connect() {
    let emu = start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut claim = claim_client(&emu, "claim-rsa", "prod").await;
    let cases: [(&str, &str, &[&str]); 6] = [
        ("rsa2048-sha256", "2048", &["-sha256"]),
        ("rsa3072-sha384", "3072", &["-sha384"]),
        // The key size the issue reported refused.
        ("rsa4096-sha256", "4096", &["-sha256"]),
        ("rsa4096-sha512", "4096", &["-sha512"]),
        (
            "rsa2048-pss256",
            "2048",
            &[
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ],
        ),
        (
            "rsa3072-pss512",
            "3072",
            &[
                "-sha512",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ],
        ),
    ];
    for (serial, bits, req) in cases {
        let bits = format!("rsa_keygen_bits:{bits}");
        let (key, csr) = key_and_csr(
            dir.path(),
            serial,
            &["-algorithm", "RSA", "-pkeyopt", &bits],
            req,
        );
        enroll(&emu, &mut claim, dir.path(), serial, key, csr).await;
    }
}

#[tokio::test]
async fn ec_keys_p256_and_p384_with_every_aws_digest_enroll_and_connect() {
    let emu = start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut claim = claim_client(&emu, "claim-ec", "prod").await;
    for (curve, name) in [("P-256", "p256"), ("P-384", "p384")] {
        // A key may sign with a digest of another size than its curve's:
        // the certificate must still name the key's own curve.
        for digest in ["sha256", "sha384", "sha512"] {
            let serial = format!("{name}-{digest}");
            let curve = format!("ec_paramgen_curve:{curve}");
            let (key, csr) = key_and_csr(
                dir.path(),
                &serial,
                &["-algorithm", "EC", "-pkeyopt", &curve],
                &[&format!("-{digest}")],
            );
            enroll(&emu, &mut claim, dir.path(), &serial, key, csr).await;
        }
    }
}

#[tokio::test]
async fn keys_and_signature_algorithms_aws_refuses_are_rejected_with_its_error_shape() {
    let emu = start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut claim = claim_client(&emu, "claim-refused", "prod").await;
    let pss = |mgf1: &'static str| {
        [
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
            "-sigopt",
            mgf1,
        ]
    };
    let cases: Vec<(&str, (String, String), &[&str])> = vec![
        (
            "RSA-1024",
            key_and_csr(
                d,
                "rsa1024",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                &["-sha256"],
            ),
            &["RSA key of 1024 bits"],
        ),
        (
            // Its exact size, not a whole number of bytes (2040).
            "RSA-2047",
            key_and_csr(
                d,
                "rsa2047",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2047"],
                &["-sha256"],
            ),
            &["RSA key of 2047 bits"],
        ),
        (
            // Not "does not verify": ring's limit, named.
            "RSA-8193",
            (String::new(), rsa_8193_bit_csr()),
            &["RSA key of 8193 bits", "up to 8192"],
        ),
        (
            "RSA exponent above ring's 2^33-1",
            key_and_csr(
                d,
                "rsa-big-e",
                &[
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-pkeyopt",
                    "rsa_keygen_pubexp:8589934593",
                ],
                &["-sha256"],
            ),
            &["RSA public exponent 8589934593", "65537"],
        ),
        (
            "SHA-1 signature",
            key_and_csr(
                d,
                "rsa-sha1",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                &["-sha1"],
            ),
            &[
                "signature algorithm SHA1WITHRSA (1.2.840.113549.1.1.5)",
                "openssl req -sha256",
            ],
        ),
        (
            "RSASSA-PSS with a salt longer than the digest",
            key_and_csr(
                d,
                "rsa-pss-max",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                &[
                    "-sha256",
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:max",
                ],
            ),
            &["rsa_pss_saltlen:digest"],
        ),
        (
            "RSASSA-PSS with SHA-256 and MGF1 with SHA-1",
            key_and_csr(
                d,
                "rsa-pss-mgf1",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                &pss("rsa_mgf1_md:sha1"),
            ),
            &["MGF1 with SHA-1", "rsa_mgf1_md:sha256"],
        ),
        (
            "P-256, compressed point, ECDSA-WITH-SHA256",
            compressed_point_key_and_csr(d, "p256-compressed", "P-256", "-sha256"),
            &["P-256 is a compressed point of 33 bytes", "uncompressed"],
        ),
        (
            // Verified by RustCrypto's p384, which reads compressed points:
            // it used to get a certificate its device could never use.
            "P-384, compressed point, ECDSA-WITH-SHA512",
            compressed_point_key_and_csr(d, "p384-compressed", "P-384", "-sha512"),
            &[
                "P-384 is a compressed point of 49 bytes",
                "-conv_form uncompressed",
            ],
        ),
        (
            "secp256k1",
            key_and_csr(
                d,
                "k1",
                &[
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:secp256k1",
                ],
                &["-sha256"],
            ),
            &["EC key on curve secp256k1 (1.3.132.0.10)"],
        ),
        (
            "P-521 (AWS accepts it, the emulator cannot)",
            key_and_csr(
                d,
                "p521",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
                &["-sha512"],
            ),
            &["P-521"],
        ),
        (
            "Ed25519",
            key_and_csr(d, "ed", &["-algorithm", "ED25519"], &[]),
            &["public key of algorithm ED25519 (1.3.101.112)"],
        ),
    ];
    for (what, (_key, csr), message) in cases {
        let (ok, body) = claim
            .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
            .await;
        assert!(!ok, "{what} was accepted: {body}");
        assert_rejected(&body, "InvalidRequestException", message);
        assert!(
            body["errorMessage"]
                .as_str()
                .unwrap()
                .starts_with("certificate signing request is invalid: "),
            "{what}: {body}"
        );
    }
    // Only the claim certificate is registered: nothing was issued.
    assert_eq!(emu.registry().certificates().unwrap().len(), 1);

    // An accepted kind whose signature was altered is refused too.
    let (_key, csr) = key_and_csr(
        d,
        "p384-bad",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &["-sha512"],
    );
    let mut der = pem::parse(&csr).unwrap().into_contents();
    let at = der.len() - 3;
    der[at] ^= 0x01;
    let bad = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": bad}))
        .await;
    assert!(!ok, "{body}");
    assert_rejected(
        &body,
        "InvalidRequestException",
        &["the signature does not verify"],
    );

    // The same parameters with MGF1 over the signature's own hash (what
    // openssl writes without rsa_mgf1_md) are accepted.
    let (_key, csr) = key_and_csr(
        d,
        "rsa-pss-mgf1-same",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        &pss("rsa_mgf1_md:sha256"),
    );
    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(ok, "{body}");
}

/// AWS keeps the CSR's subject: repeated attribute types (two OUs, two DCs),
/// their order, and a multi-valued RDN come back in the certificate, byte
/// for byte, and the device still enrolls and connects.
#[tokio::test]
async fn the_csr_subject_is_kept_with_repeated_attributes_in_order() {
    let emu = start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut claim = claim_client(&emu, "claim-subject", "prod").await;
    let serial = "subject-repeats";
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{serial}.key"),
        ],
    );
    let subj = format!("/DC=com/DC=example/OU=line 1/OU=cell 7/CN={serial}+serialNumber=42");
    let (key, csr) = csr_for_key(d, serial, &subj, &["-sha256", "-multivalue-rdn"]);
    let cert = enroll(&emu, &mut claim, d, serial, key, csr.clone()).await;

    std::fs::write(d.join("subject.pem"), &cert).unwrap();
    std::fs::write(d.join("subject.csr"), &csr).unwrap();
    let issued = openssl(
        d,
        &[
            "x509",
            "-in",
            "subject.pem",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
    );
    let requested = openssl(
        d,
        &[
            "req",
            "-in",
            "subject.csr",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
    );
    assert_eq!(
        issued.trim(),
        format!("subject=CN={serial}+serialNumber=42,OU=cell 7,OU=line 1,DC=example,DC=com")
    );
    assert_eq!(
        issued.trim_start_matches("subject="),
        requested.trim_start_matches("subject=")
    );
    // Byte for byte, string types included.
    use x509_parser::prelude::FromDer;
    let cert_der = pem::parse(&cert).unwrap().into_contents();
    let csr_der = pem::parse(&csr).unwrap().into_contents();
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&cert_der).unwrap();
    let (_, r) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der).unwrap();
    assert_eq!(
        c.subject().as_raw(),
        r.certification_request_info.subject.as_raw()
    );
}
