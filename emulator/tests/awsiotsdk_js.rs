//! A third real client: the AWS IoT Device SDK v2 for JavaScript
//! (`aws-iot-device-sdk-v2` from npm, pinned in
//! `tests/awsiotsdk-js/package-lock.json`) provisions against the emulator
//! unchanged but for endpoint, port and CA: MQTT 3.1.1 and 5, keys and CSR,
//! through `IotIdentityClient` (its own subscriptions to the accepted and
//! rejected topics) and `IotIdentityClientv2` (the request-response client
//! of the SDK's current sample); and a rejection reaches it in AWS's shape.
//!
//! `ci/node-sdk.sh` installs the SDK (`npm ci`, once per lock file, into
//! `target/node-sdk/<hash>/` beside a copy of `provision.js`) before the
//! first case; `node` is `$AWSIOTSDK_JS_NODE` when set, with the npm beside
//! it. The last tests check that script.
//! `IOTCORE_SKIP_AWSIOTSDK_JS=1` skips the tests (they say so), but not in
//! CI (`CI` set): there a missing Node.js or a failed install fails them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use iotcore_emulator::{CertStatus, Credential};
use serde_json::Value;

/// The directory with the installed SDK and `provision.js`, asked of
/// `ci/node-sdk.sh` once per test process (the script itself locks against
/// other processes; the directory is never changed once made, so a lock
/// file change elsewhere does not disturb this process).
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

/// Runs `ci/node-sdk.sh` with `env` added, returning (success, stdout, stderr).
fn node_sdk_sh(env: &[(&str, &Path)]) -> (bool, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/node-sdk.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running ci/node-sdk.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An executable shell script `name` in `dir` with body `body`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The `node` the tests use, as an absolute path (a wrapper must not find
/// itself on PATH).
fn real_node() -> String {
    let node = std::env::var("AWSIOTSDK_JS_NODE").unwrap_or_else(|_| "node".into());
    let out = std::process::Command::new("bash")
        .args(["-c", "command -v \"$1\"", "-", &node])
        .output()
        .unwrap();
    assert!(out.status.success(), "{node} not found");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The SDK is installed under target/, not in the source tree (a read-only
/// checkout works, `git status` stays clean), with `provision.js` beside
/// its `node_modules`, in a directory named by the lock file's hash.
#[test]
fn sdk_is_installed_outside_the_source_tree() {
    let Some(dir) = sdk_unless_skipped() else {
        return;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/awsiotsdk-js");
    let src = src.canonicalize().unwrap();
    let dir = dir.canonicalize().unwrap();
    assert!(
        !dir.starts_with(&src),
        "ci/node-sdk.sh installed into the source tree: {}",
        dir.display()
    );
    assert_eq!(
        std::fs::read(dir.join("provision.js")).unwrap(),
        std::fs::read(src.join("provision.js")).unwrap(),
        "{}/provision.js is not the source's",
        dir.display()
    );
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(
        name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "{} is not named by the lock file's hash",
        dir.display()
    );
}

/// A `$AWSIOTSDK_JS_NODE` with no npm beside it is refused, naming npm,
/// rather than installed with whichever npm PATH finds.
#[test]
fn node_sdk_refuses_a_node_without_npm_beside_it() {
    if sdk_unless_skipped().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let node = script(tmp.path(), "node", &format!("exec {} \"$@\"", real_node()));
    let install = tmp.path().join("install");
    let (ok, stdout, stderr) = node_sdk_sh(&[
        ("AWSIOTSDK_JS_NODE", &node),
        ("AWSIOTSDK_JS_INSTALL_DIR", &install),
    ]);
    assert!(!ok, "accepted a node without npm: printed {stdout}");
    assert!(
        stderr.contains(&format!("no npm beside {}", node.display())),
        "{stderr}"
    );
    assert!(!install.exists(), "installed anyway");
}

/// From a clean state, `ci/node-sdk.sh` installs with the npm beside
/// `$AWSIOTSDK_JS_NODE`, under that node (first on PATH for npm's
/// `#!/usr/bin/env node`); a second run finds the install and runs no npm.
#[test]
fn node_sdk_installs_with_the_npm_beside_awsiotsdk_js_node() {
    if sdk_unless_skipped().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let node = script(&bin, "node", &format!("exec {} \"$@\"", real_node()));
    let log = tmp.path().join("npm.log");
    let npm = std::process::Command::new("bash")
        .args(["-c", "command -v npm"])
        .output()
        .unwrap();
    let npm = String::from_utf8(npm.stdout).unwrap().trim().to_owned();
    assert!(!npm.is_empty(), "npm not found");
    script(
        &bin,
        "npm",
        &format!(
            "echo \"npm $* with node $(command -v node)\" >> {}\nexec {npm} \"$@\"",
            log.display()
        ),
    );
    let install = tmp.path().join("install");
    let env = [
        ("AWSIOTSDK_JS_NODE", node.as_path()),
        ("AWSIOTSDK_JS_INSTALL_DIR", install.as_path()),
    ];
    let (ok, dir, stderr) = node_sdk_sh(&env);
    assert!(ok, "{stderr}");
    let dir = PathBuf::from(dir);
    assert!(
        dir.starts_with(&install),
        "{} not under {}",
        dir.display(),
        install.display()
    );
    assert!(dir.join("node_modules/aws-iot-device-sdk-v2").is_dir());
    let calls = std::fs::read_to_string(&log).expect("the npm beside the node did not run");
    assert_eq!(calls.lines().count(), 1, "{calls}");
    assert!(
        calls.starts_with("npm ci ")
            && calls
                .trim_end()
                .ends_with(&format!("with node {}", node.display())),
        "{calls}"
    );

    let (ok, again, stderr) = node_sdk_sh(&env);
    assert!(ok, "{stderr}");
    assert_eq!(PathBuf::from(again), dir);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        calls,
        "npm ran again"
    );
}
