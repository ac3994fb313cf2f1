//! The RotationTemplate's pre-provisioning hook (templates/hooks/same-thing.sh),
//! registered by `init`: a device may re-register its own thing with a new
//! certificate, never another thing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use iotcore_emulator::{
    CertStatus, Credential, Emulator, EmulatorConfig, EmulatorHandle, ThingRecord,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_iotcore-emulator");

fn hook_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../templates/hooks/same-thing.sh")
        .canonicalize()
        .unwrap()
}

/// Thing `name` with a certificate carrying the `device` policy.
fn device(emu: &EmulatorHandle, name: &str) -> Credential {
    emu.registry()
        .put_thing(&ThingRecord {
            thing_name: name.into(),
            ..Default::default()
        })
        .unwrap();
    let c = emu.create_credential(name, &["device"]).unwrap();
    emu.registry()
        .attach_thing(name, &c.certificate_id)
        .unwrap();
    c
}

#[tokio::test]
async fn init_registers_rotation_template_with_the_same_thing_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = std::process::Command::new(BIN)
        .arg("init")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("template RotationTemplate registered with pre-provisioning hook"),
        "{stdout}"
    );

    let emu = Emulator::start(EmulatorConfig::new(&dir)).await.unwrap();
    let t = emu
        .registry()
        .template("RotationTemplate")
        .unwrap()
        .unwrap();
    assert_eq!(
        t.pre_provisioning_hook.as_deref(),
        Some(hook_path().to_str().unwrap())
    );
    // ProdTemplate has no hook file: none.
    let p = emu.registry().template("ProdTemplate").unwrap().unwrap();
    assert_eq!(p.pre_provisioning_hook, None);

    let me = device(&emu, "gw_1");
    let victim = device(&emu, "gw_2");
    let topic = register_topic("RotationTemplate");
    let mut c = connect(&emu, &me, "gw_1").await.unwrap();
    c.subscribe_responses(CSR_TOPIC).await;
    c.subscribe_responses(&topic).await;

    // Naming its own thing: accepted, the new certificate joins the thing.
    let (new, token) = create_from_csr(&mut c).await;
    let (ok, body) = c
        .call(
            &topic,
            &json!({"certificateOwnershipToken": token, "parameters": {"ThingName": "gw_1"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(body["thingName"], "gw_1");
    assert_eq!(
        body["deviceConfiguration"]["rotatedCertificateId"],
        new.certificate_id
    );
    let certs = emu.registry().thing("gw_1").unwrap().unwrap().certificates;
    assert!(certs.contains(&new.certificate_id) && certs.contains(&me.certificate_id));
    assert_eq!(
        emu.registry()
            .certificate_status(&new.certificate_id)
            .unwrap(),
        Some(CertStatus::Active)
    );

    // Naming another thing: AccessDenied, nothing attached to it.
    let (stolen, token) = create_from_csr(&mut c).await;
    let (ok, body) = c
        .call(
            &topic,
            &json!({"certificateOwnershipToken": token, "parameters": {"ThingName": "gw_2"}}),
        )
        .await;
    assert!(!ok, "{body}");
    assert_eq!(body["errorCode"], "AccessDenied");
    assert_eq!(body["statusCode"], 403);
    assert_eq!(
        emu.registry().thing("gw_2").unwrap().unwrap().certificates,
        vec![victim.certificate_id.clone()]
    );
    assert_eq!(
        emu.registry()
            .certificate_status(&stolen.certificate_id)
            .unwrap(),
        Some(CertStatus::PendingActivation)
    );
    // A parameter trying to smuggle a second clientId is refused too.
    let (_, token) = create_from_csr(&mut c).await;
    let (ok, body) = c
        .call(
            &topic,
            &json!({"certificateOwnershipToken": token,
                    "parameters": {"ThingName": "gw_2", "clientId": "gw_2"}}),
        )
        .await;
    assert!(!ok);
    assert_eq!(body["errorCode"], "AccessDenied");
    emu.shutdown().await;
}

fn hook(input: &str) -> Value {
    let mut child = std::process::Command::new(hook_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn same_thing_hook_allows_only_the_callers_own_thing() {
    let allowed = |v: Value| v["allowProvisioning"].as_bool().unwrap();
    let req = |client: &str, params: Value| {
        serde_json::to_string(&json!({
            "claimCertificateId": "a", "certificateId": "b",
            "certificatePem": "-----BEGIN CERTIFICATE-----\nMII,{}\n-----END CERTIFICATE-----\n",
            "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/RotationTemplate",
            "clientId": client, "parameters": params
        }))
        .unwrap()
    };
    assert!(allowed(hook(&req("gw_1", json!({"ThingName": "gw_1"})))));
    assert!(!allowed(hook(&req("gw_1", json!({"ThingName": "gw_2"})))));
    assert!(!allowed(hook(&req("gw_1", json!({})))));
    assert!(!allowed(hook(&req("gw 1", json!({"ThingName": "gw 1"})))));
    // Values that try to look like keys are strings: not keys.
    assert!(!allowed(hook(&req(
        "gw_1",
        json!({"ThingName": "gw_2", "X": "\",\"ThingName\":\"gw_1"})
    ))));
    assert!(!allowed(hook(&req(
        "gw_1\",\"x\":\"",
        json!({"ThingName": "gw_1"})
    ))));
    // A parameter named clientId makes the request ambiguous.
    assert!(!allowed(hook(&req(
        "gw_2",
        json!({"ThingName": "gw_1", "clientId": "gw_1"})
    ))));
    // Pretty-printed JSON is read as well; garbage is refused.
    let pretty = serde_json::to_string_pretty(
        &json!({"clientId": "gw_1", "parameters": {"ThingName": "gw_1"}}),
    )
    .unwrap();
    assert!(allowed(hook(&pretty)));
    assert!(!allowed(hook("not json")));
    assert!(!allowed(hook("")));
}
