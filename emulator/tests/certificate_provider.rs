//! Certificate providers (AWS's self-managed certificate signing), seen
//! from a device over real TLS and MQTT: while the account has one, every
//! CreateCertificateFromCsr is signed by it (here the sample
//! `emulator/providers/local_ca.py` with its own CA and a short validity)
//! and the device connects with what it signed; a failing provider gives
//! the device AWS's rejected shape; CreateKeysAndCertificate never goes to
//! the provider.

mod common;

use std::path::Path;
use std::process::Command;

use common::local_ca::{make_local_ca, openssl_verifies, sample_provider};
use common::*;
use iotcore_emulator::{CertStatus, Credential, RegistryError, CREATE_CERTIFICATE_FROM_CSR};
use serde_json::{json, Value};

/// An emulator whose programs find the virtualenv's Python (with
/// `cryptography`) first on their PATH.
async fn start_with_venv() -> TestEmulator {
    start_with(|c| {
        let path = format!(
            "{}:{}",
            venv_bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.hook_environment.push(("PATH".into(), path));
        // Python's start-up on a loaded CI machine.
        c.hook_timeout = std::time::Duration::from_secs(20);
    })
    .await
}

fn set_provider(emu: &TestEmulator, command: &[&str]) {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    emu.registry()
        .create_certificate_provider(
            "LocalCa",
            &command,
            "arn:aws:lambda:us-east-1:123456789012:function:LocalCa",
            &[CREATE_CERTIFICATE_FROM_CSR.to_owned()],
        )
        .unwrap();
}

/// Now, in whole Unix seconds (as X.509 times are).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A CA of the test's own (not the emulator's, not the sample's).
fn test_ca() -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::Issuer::new(params, key)
}

/// A certificate by `ca` for the key `key_pem`, valid from one minute ago
/// to `params`' notAfter (tweaked by `tweak`), PEM.
fn certificate_for(
    key_pem: &str,
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    tweak: impl FnOnce(&mut rcgen::CertificateParams),
) -> String {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    tweak(&mut params);
    params.signed_by(&key, ca).unwrap().pem()
}

/// A provider that ignores its event and answers `answer`, which the test
/// writes to `DIR/answer.json` (so no quoting is involved).
fn answering(emu: &TestEmulator, answer: &Value) {
    let file = emu.dir.path().join("answer.json");
    std::fs::write(&file, answer.to_string()).unwrap();
    let _ = emu.registry().delete_certificate_provider("LocalCa");
    let script = format!("cat >/dev/null; cat '{}'", file.display());
    set_provider(emu, &["/bin/sh", "-c", &script]);
}

fn assert_rejected(body: &Value, status: u64, code: &str, says: &str) {
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["errorCode"], code, "{body}");
    let message = body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_signs_csrs_and_the_device_connects_with_its_certificate() {
    let emu = start_with_venv().await;
    let ca_dir = emu.dir.path().join("local-ca");
    make_local_ca(&ca_dir);
    let provider = sample_provider();
    set_provider(
        &emu,
        &[
            provider.to_str().unwrap(),
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--seconds",
            "120",
        ],
    );
    let local_ca = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();

    let mut claim = claim_client(&emu, "claim-1", "prod").await;
    let requested = unix_now();
    let (device, token) = create_from_csr(&mut claim).await;
    let answered = unix_now();

    // Issued by the local CA, not the emulator's, for the short lifetime.
    assert!(openssl_verifies(
        emu.dir.path(),
        &local_ca,
        &device.certificate_pem
    ));
    assert!(!openssl_verifies(
        emu.dir.path(),
        &emu.root_ca_pem(),
        &device.certificate_pem
    ));
    let der = pem::parse(&device.certificate_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    // notAfter = signing time (whole seconds, between the two instants) + 120 s.
    let not_after = cert.validity().not_after.timestamp();
    assert!(
        (requested + 120 - 1..=answered + 120).contains(&not_after),
        "notAfter {not_after} is not 120 s after a signing in [{requested}, {answered}]"
    );
    // Registered as it was signed, waiting for RegisterThing.
    let rec = emu
        .registry()
        .certificate(&device.certificate_id)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, CertStatus::PendingActivation);
    assert!(connect(&emu, &device, "dev-SN1").await.is_err());

    let (ok, body) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "SN1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(
        emu.registry()
            .certificate_status(&device.certificate_id)
            .unwrap(),
        Some(CertStatus::Active)
    );
    // Its CA is registered nowhere, yet the device connects and publishes.
    assert!(emu.registry().ca_certificates().unwrap().is_empty());
    let mut dev = connect(&emu, &device, "dev-SN1").await.unwrap();
    dev.subscribe(&["devices/dev-SN1/cmd"]).await;
    dev.publish("devices/dev-SN1/cmd", "hello").await;
    let (t, p) = dev.next_message(WAIT).await.unwrap();
    assert_eq!(
        (t.as_str(), p.as_slice()),
        ("devices/dev-SN1/cmd", b"hello".as_slice())
    );

    // Deleted: the emulator's CA signs again.
    assert!(emu
        .registry()
        .delete_certificate_provider("LocalCa")
        .unwrap());
    let (again, _) = create_from_csr(&mut claim).await;
    assert!(openssl_verifies(
        emu.dir.path(),
        &emu.root_ca_pem(),
        &again.certificate_pem
    ));
    emu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_keys_and_certificate_is_not_sent_to_the_provider() {
    let emu = start().await;
    // Records every call (one line each) and fails.
    let calls = emu.dir.path().join("provider-calls");
    let script = format!("cat >/dev/null; echo call >> '{}'; exit 1", calls.display());
    set_provider(&emu, &["/bin/sh", "-c", &script]);
    let calls_so_far = || std::fs::read_to_string(&calls).unwrap_or_default();
    let mut claim = claim_client(&emu, "claim-1", "prod").await;
    claim.subscribe_responses(KEYS_TOPIC).await;
    let (ok, body) = claim.call(KEYS_TOPIC, &json!({})).await;
    assert!(ok, "{body}");
    let pem = body["certificatePem"].as_str().unwrap();
    assert!(openssl_verifies(emu.dir.path(), &emu.root_ca_pem(), pem));
    // The whole flow: RegisterThing activates it, the device connects.
    let (ok, reg) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": body["certificateOwnershipToken"], "parameters": {"SerialNumber": "SN9"}}),
        )
        .await;
    assert!(ok, "{reg}");
    let device = Credential {
        certificate_id: body["certificateId"].as_str().unwrap().to_owned(),
        certificate_pem: pem.to_owned(),
        private_key_pem: body["privateKey"].as_str().unwrap().to_owned(),
    };
    connect(&emu, &device, "dev-SN9").await.unwrap();
    assert_eq!(calls_so_far(), "", "the provider ran in the keys flow");
    // The recording provider does record: a CSR request runs it once.
    let (_, csr) = p256_csr();
    let (ok, _) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(!ok);
    assert_eq!(calls_so_far(), "call\n");
    emu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_provider_gives_the_device_an_internal_failure_and_registers_nothing() {
    let emu = start().await;
    let event = emu.dir.path().join("event.json");
    // Keeps the event it got, says why on stderr and fails.
    let script = format!("cat > {}; echo 'no CA today' >&2; exit 3", event.display());
    set_provider(&emu, &["/bin/sh", "-c", &script]);
    let claim_cred = emu.create_claim_credential("claim").unwrap();
    let mut claim = connect(&emu, &claim_cred, "claim-7").await.unwrap();
    claim.subscribe_responses(CSR_TOPIC).await;
    let before = emu.registry().certificates().unwrap().len();

    let (_, csr) = p256_csr();
    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(!ok, "{body}");
    assert_rejected(
        &body,
        500,
        "InternalFailureException",
        "certificate provider LocalCa failed (its stderr is in the emulator's log): it exited with exit status: 3",
    );
    assert_eq!(emu.registry().certificates().unwrap().len(), before);
    // Its stderr went to the emulator's log (and is kept for tests), not to the device.
    assert!(
        emu.hook_refusals()
            .iter()
            .any(|e| e.contains("no CA today")),
        "{:?}",
        emu.hook_refusals()
    );
    assert!(!body.to_string().contains("no CA today"), "{body}");

    // The event is the Lambda's: the CSR, the connection's certificate and client id.
    let got: Value = serde_json::from_slice(&std::fs::read(&event).unwrap()).unwrap();
    assert_eq!(
        got,
        json!({
            "certificateSigningRequest": csr,
            "principalId": claim_cred.certificate_id,
            "clientId": "claim-7",
        })
    );

    // A CSR the emulator refuses never reaches the provider: the device's fault, 400.
    std::fs::remove_file(&event).unwrap();
    let (ok, body) = claim
        .call(
            CSR_TOPIC,
            &json!({"certificateSigningRequest": "not a CSR"}),
        )
        .await;
    assert!(!ok);
    assert_rejected(
        &body,
        400,
        "InvalidRequestException",
        "certificate signing request is invalid",
    );
    assert!(!event.exists());
    emu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_answers_are_refused_naming_the_provider_and_why() {
    let emu = start().await;
    let claim_cred = emu.create_claim_credential("claim").unwrap();
    let mut claim = connect(&emu, &claim_cred, "claim-1").await.unwrap();
    claim.subscribe_responses(CSR_TOPIC).await;
    // A certificate for another key: the emulator's own root CA certificate.
    let other_key = json!({"certificatePem": emu.root_ca_pem()}).to_string();
    let cases = [
        (
            "echo 'not json'".to_owned(),
            "answered no JSON object with a string certificatePem",
        ),
        (
            "echo '{\"certificatePem\": 5}'".to_owned(),
            "answered no JSON object",
        ),
        (
            "echo '{\"certificatePem\": \"junk\"}'".to_owned(),
            "answered an unusable certificate",
        ),
        (
            format!("printf '%s' '{other_key}'"),
            "for another public key than the CSR's",
        ),
    ];
    let before = emu.registry().certificates().unwrap().len();
    for (script, says) in cases {
        let _ = emu.registry().delete_certificate_provider("LocalCa");
        set_provider(
            &emu,
            &["/bin/sh", "-c", &format!("cat >/dev/null; {script}")],
        );
        let (_, csr) = p256_csr();
        let (ok, body) = claim
            .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
            .await;
        assert!(!ok, "{script}: {body}");
        assert_rejected(&body, 500, "InternalFailureException", says);
    }
    assert_eq!(emu.registry().certificates().unwrap().len(), before);
    emu.handle.shutdown().await;
}

#[tokio::test]
async fn an_account_has_at_most_one_provider() {
    let emu = start().await;
    set_provider(&emu, &["/bin/true"]);
    let e = emu
        .registry()
        .create_certificate_provider(
            "Another",
            &["/bin/true".to_owned()],
            "arn",
            &[CREATE_CERTIFICATE_FROM_CSR.to_owned()],
        )
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::OneCertificateProvider { ref existing } if existing == "LocalCa"),
        "{e}"
    );
    emu.handle.shutdown().await;
}

#[test]
fn the_cli_creates_describes_refuses_a_second_and_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    bin_ok([std::ffi::OsStr::new("init"), dir.as_os_str()]);
    let d = dir.to_str().unwrap();
    let provider = sample_provider();
    let out = bin_ok([
        "-d",
        d,
        "--json",
        "certificate-providers",
        "create",
        "LocalCa",
        "--command",
        provider.to_str().unwrap(),
        "--arg",
        "--ca-dir",
        "--arg",
        "/ca",
        "--arg",
        "--seconds",
        "--arg",
        "120",
    ]);
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["certificateProviderName"], "LocalCa");
    assert_eq!(
        made["command"],
        json!([
            provider.to_str().unwrap(),
            "--ca-dir",
            "/ca",
            "--seconds",
            "120"
        ])
    );
    assert_eq!(
        made["accountDefaultForOperations"],
        json!(["CreateCertificateFromCsr"])
    );
    assert_eq!(
        made["lambdaFunctionArn"],
        "arn:aws:lambda:us-east-1:123456789012:function:LocalCa"
    );
    let out = bin_ok([
        "-d",
        d,
        "--json",
        "certificate-providers",
        "describe",
        "LocalCa",
    ]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), made);

    let refused = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["-d", d])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&[
        "certificate-providers",
        "create",
        "Second",
        "--command",
        "/bin/true",
    ]);
    assert!(
        e.contains("LocalCa exists already") && e.contains("certificate-providers delete LocalCa"),
        "{e}"
    );
    let e = refused(&[
        "certificate-providers",
        "create",
        "P",
        "--command",
        "/no/such/exe",
    ]);
    assert!(e.contains("does not exist"), "{e}");
    // A directory, a file without an execute bit, a name not on PATH.
    let e = refused(&["certificate-providers", "create", "P", "--command", "/tmp"]);
    assert!(e.contains("/tmp is a directory"), "{e}");
    let plain = tmp.path().join("provider.txt");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let e = refused(&[
        "certificate-providers",
        "create",
        "P",
        "--command",
        plain.to_str().unwrap(),
    ]);
    assert!(e.contains("is not executable: `chmod +x"), "{e}");
    let e = refused(&[
        "certificate-providers",
        "create",
        "P",
        "--command",
        "no-such-provider-anywhere",
    ]);
    assert!(
        e.contains("no-such-provider-anywhere is not an executable on PATH: give its path"),
        "{e}"
    );

    bin_ok(["-d", d, "certificate-providers", "delete", "LocalCa"]);
    // A bare name is looked up on PATH now and stored absolute.
    let out = bin_ok([
        "-d",
        d,
        "--json",
        "certificate-providers",
        "create",
        "P",
        "--command",
        "sh",
    ]);
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let exe = made["command"][0].as_str().unwrap();
    assert!(exe.starts_with('/') && Path::new(exe).is_file(), "{made}");
    bin_ok(["-d", d, "certificate-providers", "delete", "P"]);
    let e = refused(&[
        "certificate-providers",
        "create",
        "P",
        "--command",
        "/bin/true",
        "--operations",
        "CreateKeysAndCertificate",
    ]);
    assert!(
        e.contains("must be exactly [\"CreateCertificateFromCsr\"]"),
        "{e}"
    );
    let out = bin_ok(["-d", d, "--json", "certificate-providers", "list"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_answered_twice_is_refused_and_the_registered_one_kept() {
    let emu = start().await;
    let mut claim = claim_client(&emu, "claim-1", "prod").await;
    let (key, csr) = p256_csr();
    // The provider answers the same certificate for the CSR's key every time.
    let pem = certificate_for(&key, &test_ca(), |_| {});
    answering(&emu, &json!({ "certificatePem": pem }));

    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(ok, "{body}");
    let id = body["certificateId"].as_str().unwrap().to_owned();
    let token = body["certificateOwnershipToken"].clone();
    let (ok, body) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "SN1"}}),
        )
        .await;
    assert!(ok, "{body}");
    let registered = emu.registry().certificate(&id).unwrap().unwrap();
    assert_eq!(registered.status, CertStatus::Active);
    let count = emu.registry().certificates().unwrap().len();

    // The same answer again: refused, and the ACTIVE certificate untouched
    // (not reset to PENDING_ACTIVATION, no second row).
    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(!ok, "{body}");
    assert_rejected(
        &body,
        500,
        "InternalFailureException",
        &format!("answered certificate {id}, which is registered already"),
    );
    let after = emu.registry().certificate(&id).unwrap().unwrap();
    assert_eq!(after.status, CertStatus::Active);
    assert_eq!(after.updated_at, registered.updated_at);
    assert_eq!(after.customer_version, registered.customer_version);
    assert_eq!(emu.registry().certificates().unwrap().len(), count);
    emu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_finding_every_program_slot_busy_is_throttled() {
    let emu = start_with(|c| c.programs_at_once = 1).await;
    let ran = emu.dir.path().join("runs");
    // Slow, and records each run; its answer does not matter here.
    let script = format!(
        "cat >/dev/null; echo run >> '{}'; sleep 2; exit 1",
        ran.display()
    );
    set_provider(&emu, &["/bin/sh", "-c", &script]);
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut slow = connect(&emu, &claim, "claim-slow").await.unwrap();
    slow.subscribe_responses(CSR_TOPIC).await;
    let mut second = connect(&emu, &claim, "claim-second").await.unwrap();
    second.subscribe_responses(CSR_TOPIC).await;
    let (_, csr1) = p256_csr();
    let (_, csr2) = p256_csr();
    let first = json!({"certificateSigningRequest": csr1});
    let ((ok1, body1), (ok2, body2)) = tokio::join!(slow.call(CSR_TOPIC, &first), async {
        // Once the first provider run has started.
        let deadline = std::time::Instant::now() + WAIT;
        while !ran.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        second
            .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr2}))
            .await
    });
    assert!(!ok1 && !ok2, "{body1} {body2}");
    assert_rejected(&body1, 500, "InternalFailureException", "exited with");
    assert_rejected(
        &body2,
        429,
        "ThrottlingException",
        "1 hook and provider programs are running already",
    );
    // The throttled request never ran the provider.
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "run\n");
    emu.handle.shutdown().await;
}

#[test]
fn the_sample_makes_a_private_ca_and_never_overwrites_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let python = venv_bin().join("python");
    let make_ca = |extra: &[&str]| {
        Command::new(&python)
            .arg(sample_provider())
            .arg("make-ca")
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = make_ca(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    // No temporary files left behind.
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.key", "ca.pem"]);
    let key = std::fs::read(dir.join("ca.key")).unwrap();

    // Again: refused, the CA left as it is.
    let out = make_ca(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("exists already: pass --force"), "{err}");
    assert!(!err.contains("Traceback"), "{err}");
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), key);
    // With --force: a new CA.
    let out = make_ca(&["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read(dir.join("ca.key")).unwrap(), key);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    // A validity that is not a number: a message, not a traceback.
    let out = Command::new(&python)
        .arg(sample_provider())
        .args(["--ca-dir", dir.to_str().unwrap()])
        .env("LOCAL_CA_SECONDS", "2m")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("LOCAL_CA_SECONDS='2m' is not a whole number"),
        "{err}"
    );
    assert!(!err.contains("Traceback"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_ca_other_key_and_key_carrying_answers_are_refused() {
    let emu = start().await;
    let claim_cred = emu.create_claim_credential("claim").unwrap();
    let mut claim = connect(&emu, &claim_cred, "claim-1").await.unwrap();
    claim.subscribe_responses(CSR_TOPIC).await;
    let ca = test_ca();
    let (key, csr) = p256_csr();
    let (other_key, _) = p256_csr();
    let now = time::OffsetDateTime::now_utc();
    let good = certificate_for(&key, &ca, |_| {});
    let cases = [
        (
            certificate_for(&key, &ca, |p| {
                p.not_before = now - time::Duration::hours(2);
                p.not_after = now - time::Duration::hours(1);
            }),
            "the certificate expired at",
        ),
        (
            certificate_for(&key, &ca, |p| {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            }),
            "is a CA certificate",
        ),
        (
            // A device certificate (not a CA), by the same CA, for another key.
            certificate_for(&other_key, &ca, |_| {}),
            "for another public key than the CSR's",
        ),
        (
            format!("{good}{key}"),
            "block 2 of certificatePem is PRIVATE KEY, not CERTIFICATE",
        ),
    ];
    let before = emu.registry().certificates().unwrap().len();
    for (pem, says) in cases {
        answering(&emu, &json!({ "certificatePem": pem }));
        let (ok, body) = claim
            .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
            .await;
        assert!(!ok, "{says}: {body}");
        assert_rejected(
            &body,
            500,
            "InternalFailureException",
            "certificate provider LocalCa answered an unusable certificate",
        );
        assert_rejected(&body, 500, "InternalFailureException", says);
        assert!(!body.to_string().contains("PRIVATE KEY-----"), "{body}");
    }
    assert_eq!(emu.registry().certificates().unwrap().len(), before);
    // The same CSR with the good answer is accepted: the refusals were the answers'.
    answering(&emu, &json!({ "certificatePem": good }));
    let (ok, body) = claim
        .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
        .await;
    assert!(ok, "{body}");
    emu.handle.shutdown().await;
}
