//! A third real client: the AWS IoT Device SDK v2 for JavaScript
//! (`aws-iot-device-sdk-v2` from npm, pinned in
//! `tests/awsiotsdk-js/package-lock.json`) provisions against the emulator
//! unchanged but for endpoint, port and CA: MQTT 3.1.1 and 5, keys and CSR,
//! through `IotIdentityClient` (its own subscriptions to the accepted and
//! rejected topics) and `IotIdentityClientv2` (the request-response client
//! of the SDK's current sample); and a rejection reaches it in AWS's shape.
//!
//! `ci/node-sdk.sh` installs the SDK (`npm ci`, once per lock file) before
//! the first case; `node` is `$AWSIOTSDK_JS_NODE` when set.
//! `IOTCORE_SKIP_AWSIOTSDK_JS=1` skips the tests (they say so), but not in
//! CI (`CI` set): there a missing Node.js or a failed install fails them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use iotcore_emulator::{CertStatus, Credential};
use serde_json::Value;

/// The directory with the installed SDK and `provision.js`, made by
/// `ci/node-sdk.sh` once per test process (the script itself locks against
/// other processes).
fn sdk_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/node-sdk.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .expect("running ci/node-sdk.sh");
        assert!(
            out.status.success(),
            "ci/node-sdk.sh could not install aws-iot-device-sdk-v2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(
            dir.join("node_modules/aws-iot-device-sdk-v2").is_dir(),
            "{} has no node_modules/aws-iot-device-sdk-v2 after ci/node-sdk.sh",
            dir.display()
        );
        dir
    })
    .clone()
}

/// The SDK's directory ([`sdk_dir`]), or `None`, after saying so, when a
/// developer without Node.js or network skips with
/// `IOTCORE_SKIP_AWSIOTSDK_JS=1`; CI never does.
fn sdk_unless_skipped() -> Option<PathBuf> {
    if std::env::var("IOTCORE_SKIP_AWSIOTSDK_JS").as_deref() == Ok("1") {
        assert!(
            std::env::var_os("CI").is_none(),
            "IOTCORE_SKIP_AWSIOTSDK_JS is not honoured in CI: the JavaScript SDK test must run"
        );
        eprintln!("SKIPPED by IOTCORE_SKIP_AWSIOTSDK_JS=1");
        return None;
    }
    Some(sdk_dir())
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_owned()
}

/// What the device asks for: MQTT version, flow and SDK client.
#[derive(Clone, Copy, Debug)]
struct Case {
    /// `"3"` (3.1.1) or `"5"`.
    mqtt: &'static str,
    /// `"keys"` (CreateKeysAndCertificate) or `"csr"` (CreateCertificateFromCsr).
    mode: &'static str,
    /// `"topics"` (`IotIdentityClient`) or `"rr"` (`IotIdentityClientv2`).
    api: &'static str,
}

/// What `provision.js` reported.
struct Outcome {
    /// The process's exit code: 0 provisioned, 2 a service rejection.
    code: Option<i32>,
    json: Value,
    stderr: String,
}

/// The script and the files it is given, under the emulator's data
/// directory: the root CA and a new claim credential.
struct Sdk {
    dir: PathBuf,
    script: PathBuf,
    ca: String,
    cert: String,
    key: String,
}

impl Sdk {
    fn new(sdk_dir: &Path, emu: &TestEmulator) -> Sdk {
        let dir = emu.dir.path().join("sdk-js");
        std::fs::create_dir_all(&dir).unwrap();
        let claim = emu.create_claim_credential("claim").unwrap();
        Sdk {
            script: sdk_dir.join("provision.js"),
            ca: write(&dir, "root-ca.pem", &emu.root_ca_pem()),
            cert: write(&dir, "claim.pem.crt", &claim.certificate_pem),
            key: write(&dir, "claim.private.pem.key", &claim.private_key_pem),
            dir,
        }
    }

    /// Runs `provision.js` as the claim client `client_id` against
    /// localhost:`port` (a host name, so the SDK sends SNI); `csr` is the
    /// CSR for csr mode.
    async fn provision(
        &self,
        port: u16,
        client_id: &str,
        template: &str,
        serial: &str,
        case: Case,
        csr: Option<&str>,
    ) -> Outcome {
        let node = std::env::var("AWSIOTSDK_JS_NODE").unwrap_or_else(|_| "node".into());
        let mut cmd = tokio::process::Command::new(&node);
        cmd.arg(&self.script)
            .args(["--endpoint", "localhost", "--port", &port.to_string()])
            .args(["--ca", &self.ca, "--cert", &self.cert, "--key", &self.key])
            .args(["--client-id", client_id, "--template", template])
            .args(["--serial", serial, "--mqtt", case.mqtt, "--mode", case.mode])
            .args(["--api", case.api]);
        if let Some(csr) = csr {
            cmd.args(["--csr", &write(&self.dir, &format!("{serial}.csr"), csr)]);
        }
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{node} provision.js {case:?}: still running after 60 s"))
            .unwrap_or_else(|e| panic!("running {node} (Node.js 18 or later): {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "provision.js {case:?} printed no JSON ({e}): stdout {:?}, stderr {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Outcome {
            code: out.status.code(),
            json,
            stderr,
        }
    }
}

/// Provisions `case` with the fixture template `prod` and checks what a
/// device and AWS would see: the thing `dev-<serial>` with its attributes,
/// the certificate ACTIVE and attached to it, the device policy attached,
/// and the issued credential connecting as the thing.
async fn provisions(emu: &TestEmulator, sdk: &Sdk, case: Case) {
    let Case { mqtt, mode, api } = case;
    let serial = format!("JS{mqtt}{mode}{api}");
    let (key, csr) = p256_csr();
    let csr = (mode == "csr").then_some(csr.as_str());
    let client_id = format!("claim-js-{mqtt}-{mode}-{api}");
    let out = sdk
        .provision(emu.addr().port(), &client_id, "prod", &serial, case, csr)
        .await;
    assert_eq!(out.code, Some(0), "{case:?}: {}", out.stderr);
    let v = out.json;
    let thing_name = format!("dev-{serial}");
    assert_eq!(v["thingName"], thing_name.as_str(), "{case:?}");
    assert_eq!(v["deviceConfiguration"]["mode"], "prod", "{case:?}");
    assert_eq!(v["deviceConfiguration"]["model"], "gw-1", "{case:?}");

    let id = v["certificateId"].as_str().unwrap();
    let cert = emu.registry().certificate(id).unwrap().unwrap();
    assert_eq!(cert.status, CertStatus::Active, "{case:?}");
    assert!(cert.registered, "{case:?}");
    assert_eq!(cert.things, vec![thing_name.clone()], "{case:?}");
    assert_eq!(cert.policies, vec!["device".to_owned()], "{case:?}");
    assert_eq!(cert.certificate_pem, v["certificatePem"].as_str().unwrap());
    let thing = emu.registry().thing(&thing_name).unwrap().unwrap();
    assert_eq!(thing.certificates, vec![id.to_owned()], "{case:?}");
    assert_eq!(thing.attributes["serial"], serial, "{case:?}");

    // The credential the SDK was given, as the device stores it: its own
    // key in csr mode, the one in the response in keys mode.
    let private_key_pem = match mode {
        "keys" => v["privateKey"]
            .as_str()
            .expect("keys mode returns privateKey")
            .to_owned(),
        _ => {
            assert!(v["privateKey"].is_null(), "{case:?}: {v}");
            key
        }
    };
    let device = Credential {
        certificate_id: id.to_owned(),
        certificate_pem: cert.certificate_pem,
        private_key_pem,
    };
    let c = connect(emu, &device, &thing_name).await;
    assert!(c.is_ok(), "{case:?}: the issued certificate: {:?}", c.err());
}

#[tokio::test(flavor = "multi_thread")]
async fn js_sdk_provisions_over_mqtt3_and_mqtt5_with_keys_and_csr() {
    let Some(dir) = sdk_unless_skipped() else {
        return;
    };
    let emu = start().await;
    let sdk = Sdk::new(&dir, &emu);
    for (mqtt, mode) in [("3", "keys"), ("3", "csr"), ("5", "keys"), ("5", "csr")] {
        let api = "topics";
        provisions(&emu, &sdk, Case { mqtt, mode, api }).await;
    }
}

/// `IotIdentityClientv2`, the request-response client the SDK's current sample
/// uses, over both protocols (one flow each: the topics are the same).
#[tokio::test(flavor = "multi_thread")]
async fn js_sdk_request_response_client_provisions() {
    let Some(dir) = sdk_unless_skipped() else {
        return;
    };
    let emu = start().await;
    let sdk = Sdk::new(&dir, &emu);
    for (mqtt, mode) in [("5", "keys"), ("3", "csr")] {
        let api = "rr";
        provisions(&emu, &sdk, Case { mqtt, mode, api }).await;
    }
}

/// RegisterThing naming a template that does not exist: rejected on the
/// rejected topic with AWS's body (`statusCode` 404, `errorCode`
/// `ResourceNotFoundException`, `errorMessage`), as both SDK clients
/// report it; no thing is made and the new certificate stays
/// PENDING_ACTIVATION, unattached, as AWS leaves it.
#[tokio::test(flavor = "multi_thread")]
async fn js_sdk_sees_register_thing_rejected() {
    let Some(dir) = sdk_unless_skipped() else {
        return;
    };
    let emu = start().await;
    let sdk = Sdk::new(&dir, &emu);
    for case in [
        Case {
            mqtt: "3",
            mode: "keys",
            api: "topics",
        },
        Case {
            mqtt: "5",
            mode: "csr",
            api: "rr",
        },
    ] {
        let serial = format!("JSX{}{}", case.mqtt, case.mode);
        let (_, csr) = p256_csr();
        let client_id = format!("claim-js-x-{}", case.mqtt);
        let out = sdk
            .provision(
                emu.addr().port(),
                &client_id,
                "nosuch",
                &serial,
                case,
                Some(&csr),
            )
            .await;
        assert_eq!(out.code, Some(2), "{case:?}: {}", out.stderr);
        let v = out.json;
        assert_eq!(v["rejected"], "RegisterThing", "{case:?}");
        assert_eq!(v["statusCode"], 404, "{case:?}: {v}");
        assert_eq!(v["errorCode"], "ResourceNotFoundException", "{case:?}");
        assert!(
            v["errorMessage"].as_str().unwrap().contains("nosuch"),
            "{case:?}: {v}"
        );
        let id = v["certificateId"].as_str().unwrap();
        let cert = emu.registry().certificate(id).unwrap().unwrap();
        assert_eq!(cert.status, CertStatus::PendingActivation, "{case:?}");
        assert!(cert.things.is_empty(), "{case:?}");
        assert!(emu
            .registry()
            .thing(&format!("dev-{serial}"))
            .unwrap()
            .is_none());
    }
}
