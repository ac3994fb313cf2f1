//! The repository's pre-provisioning hook (templates/hooks/provisioning_hook.py,
//! Python with the real boto3), registered by `init` for both templates and
//! run by the emulator against its own control-plane API: a device may
//! re-register only its own thing; the claim credential may create new
//! things only, with names and groups from the allowlists.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::process::Stdio;

use common::*;
use iotcore_emulator::{CertStatus, Credential, EmulatorHandle, ThingRecord};
use serde_json::{json, Value};

/// Thing `name` with a certificate carrying `policy`.
fn device(emu: &EmulatorHandle, name: &str, policy: &str) -> Credential {
    if emu.registry().thing(name).unwrap().is_none() {
        emu.registry()
            .put_thing(&ThingRecord {
                thing_name: name.into(),
                ..Default::default()
            })
            .unwrap();
    }
    let c = emu.create_credential(name, &[policy]).unwrap();
    emu.registry()
        .attach_thing(name, &c.certificate_id)
        .unwrap();
    c
}

#[tokio::test]
async fn init_registers_both_templates_with_the_provisioning_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = bin_ok([OsStr::new("init"), dir.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hook = shipped_hook();
    for name in ["ProdTemplate", "RotationTemplate"] {
        assert!(
            stdout.contains(&format!(
                "template {name} registered with pre-provisioning hook {}",
                hook.display()
            )),
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_is_allowed_only_for_the_callers_own_thing() {
    let emu = start_with_shipped_files().await;
    let me = device(&emu, "gw_1", "device");
    let victim = device(&emu, "gw_2", "device");
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

    // Naming another thing, or smuggling a clientId parameter: AccessDenied,
    // nothing attached.
    for params in [
        json!({"ThingName": "gw_2"}),
        json!({"ThingName": "gw_2", "clientId": "gw_2"}),
    ] {
        let (stolen, token) = create_from_csr(&mut c).await;
        let (ok, body) = c
            .call(
                &topic,
                &json!({"certificateOwnershipToken": token, "parameters": params}),
            )
            .await;
        assert!(!ok, "{body}");
        assert_eq!(body["errorCode"], "AccessDenied");
        assert_eq!(body["statusCode"], 403);
        assert_eq!(
            emu.registry()
                .certificate_status(&stolen.certificate_id)
                .unwrap(),
            Some(CertStatus::PendingActivation)
        );
    }
    assert_eq!(
        emu.registry().thing("gw_2").unwrap().unwrap().certificates,
        vec![victim.certificate_id.clone()]
    );
    emu.handle.shutdown().await;
}

/// Runs the hook program on `event` against the emulator's API and returns
/// its answer and what it wrote to stderr.
fn run_hook(emu: &EmulatorHandle, event: &Value, env: &[(&str, &str)]) -> (Value, String) {
    let mut cmd = std::process::Command::new(venv_bin().join("python"));
    cmd.arg(shipped_hook())
        .env("AWS_ENDPOINT_URL_IOT", emu.api_url())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

fn event(requester: &Credential, client_id: &str, new: &Credential, params: Value) -> Value {
    json!({
        "claimCertificateId": requester.certificate_id,
        "certificateId": new.certificate_id,
        "certificatePem": new.certificate_pem,
        "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/ProdTemplate",
        "clientId": client_id,
        "parameters": params,
    })
}

fn allowed(answer: &(Value, String)) -> bool {
    answer.0["allowProvisioning"] == json!(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_decisions_for_new_and_existing_things() {
    let emu = start_with_shipped_files().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    // A certificate issued for someone's new key, not attached anywhere.
    let fresh = emu.create_credential("fresh", &[]).unwrap();
    let serial = |s: &str| json!({"SerialNumber": s, "Site": "plant-a"});

    // A new thing: allowed, the checked parameters as overrides.
    let answer = run_hook(&emu, &event(&claim, "prov-N1", &fresh, serial("N1")), &[]);
    assert!(allowed(&answer), "{}", answer.1);
    assert_eq!(
        answer.0["parameterOverrides"],
        json!({"SerialNumber": "N1", "ThingNamePrefix": "gw", "Site": "plant-a", "HardwareRevision": "unknown"})
    );
    // It created the thing for the new certificate's key, so that a second
    // request for it must prove something.
    let created = emu.registry().thing("gw_N1").unwrap().expect("created");
    assert_eq!(created.attributes["enrollmentKey"].len(), 64);
    assert!(created.certificates.is_empty());
    let other = emu.create_credential("other", &[]).unwrap();
    let answer = run_hook(&emu, &event(&claim, "prov-N1", &other, serial("N1")), &[]);
    assert!(!allowed(&answer), "another key: {}", answer.1);
    // The same key again (an attempt of the same device whose registration
    // failed after the hook): allowed while the thing has no certificate.
    let same_key = Credential {
        certificate_id: "1".repeat(64),
        ..fresh.clone()
    };
    let answer = run_hook(
        &emu,
        &event(&claim, "prov-N1", &same_key, serial("N1")),
        &[],
    );
    assert!(allowed(&answer), "same key: {}", answer.1);
    // Once a certificate was attached (here the one for that key, since
    // retired: INACTIVE), the recorded key proves nothing any more.
    emu.registry()
        .attach_thing("gw_N1", &fresh.certificate_id)
        .unwrap();
    emu.registry()
        .set_certificate_status(&fresh.certificate_id, CertStatus::Inactive)
        .unwrap();
    let answer = run_hook(
        &emu,
        &event(&claim, "prov-N1", &same_key, serial("N1")),
        &[],
    );
    assert!(!allowed(&answer), "a retired key: {}", answer.1);
    // A template the hook does not know is refused.
    let mut unknown = event(&claim, "prov-N9", &fresh, serial("N9"));
    unknown["templateArn"] =
        "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/OtherTemplate".into();
    let answer = run_hook(&emu, &unknown, &[]);
    assert!(!allowed(&answer), "{}", answer.1);
    assert!(emu.registry().thing("gw_N9").unwrap().is_none());

    // Parameters outside the allowlists or character sets: refused.
    for params in [
        json!({"SerialNumber": "N1", "ThingNamePrefix": "evil"}),
        json!({"SerialNumber": "N1", "Site": "plant-z"}),
        json!({"SerialNumber": "N/1"}),
        json!({"SerialNumber": ""}),
        json!({"SerialNumber": "N1", "HardwareRevision": "r 2"}),
        json!({}),
        json!({"SerialNumber": 7}),
    ] {
        let answer = run_hook(&emu, &event(&claim, "prov-N1", &fresh, params.clone()), &[]);
        assert!(!allowed(&answer), "{params}: {}", answer.1);
    }
    // A thing name inside the claim sessions' client ids, even when the
    // operator allowlisted the prefix by mistake.
    let answer = run_hook(
        &emu,
        &event(
            &claim,
            "prov-N1",
            &fresh,
            json!({"SerialNumber": "N1", "ThingNamePrefix": "prov-gw"}),
        ),
        &[("THING_NAME_PREFIXES", "gw,prov-gw")],
    );
    assert!(!allowed(&answer), "{}", answer.1);
    assert!(answer.1.contains("claim client-id prefix"), "{}", answer.1);

    // An existing thing with an ACTIVE certificate.
    let owner = device(&emu, "gw_N2", "device");
    let refused = run_hook(&emu, &event(&claim, "prov-N2", &fresh, serial("N2")), &[]);
    assert!(!allowed(&refused), "{}", refused.1);
    assert!(
        refused.1.contains("does not come from its device"),
        "{}",
        refused.1
    );
    // ... from its own certificate, as the thing: allowed.
    let answer = run_hook(&emu, &event(&owner, "gw_N2", &fresh, serial("N2")), &[]);
    assert!(allowed(&answer), "{}", answer.1);
    // ... its certificate under another client id: refused.
    let answer = run_hook(&emu, &event(&owner, "prov-N2", &fresh, serial("N2")), &[]);
    assert!(!allowed(&answer), "{}", answer.1);
    // ... a new certificate for the key of its ACTIVE certificate: allowed
    // (the same key's certificate stands in for a re-issued one; only its
    // holder could have had one issued).
    let same_key = Credential {
        certificate_id: "0".repeat(64),
        ..owner.clone()
    };
    let answer = run_hook(
        &emu,
        &event(&claim, "prov-N2", &same_key, serial("N2")),
        &[],
    );
    assert!(allowed(&answer), "{}", answer.1);
    // ... once that certificate is INACTIVE (its key compromised, say),
    // neither proof counts.
    emu.registry()
        .set_certificate_status(&owner.certificate_id, CertStatus::Inactive)
        .unwrap();
    for (requester, client, new) in [(&claim, "prov-N2", &same_key), (&owner, "gw_N2", &fresh)] {
        let answer = run_hook(&emu, &event(requester, client, new, serial("N2")), &[]);
        assert!(!allowed(&answer), "{}", answer.1);
    }

    // The operator's opening: once, before its time, not too far ahead.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let open = |until: String| {
        let mut t = emu.registry().thing("gw_N2").unwrap().unwrap();
        t.attributes.insert("reenrollUntil".into(), until);
        emu.registry().put_thing(&t).unwrap();
    };
    for bad in [
        (now - 10).to_string(),
        (now + 30 * 86400).to_string(),
        "soon".to_string(),
    ] {
        open(bad.clone());
        let answer = run_hook(&emu, &event(&claim, "prov-N2", &fresh, serial("N2")), &[]);
        assert!(!allowed(&answer), "{bad}: {}", answer.1);
    }
    open((now + 600).to_string());
    let answer = run_hook(&emu, &event(&claim, "prov-N2", &fresh, serial("N2")), &[]);
    assert!(allowed(&answer), "{}", answer.1);
    let attributes = emu.registry().thing("gw_N2").unwrap().unwrap().attributes;
    assert!(!attributes.contains_key("reenrollUntil"), "{attributes:?}");
    // Used up: someone else (another key) is refused, and so is the same
    // key again: the thing has certificates attached (INACTIVE), so a key
    // recorded on it proves nothing (it could be a retired one); an attempt
    // that fails after the opening needs a new opening.
    let another = emu.create_credential("another", &[]).unwrap();
    let answer = run_hook(&emu, &event(&claim, "prov-N2", &another, serial("N2")), &[]);
    assert!(!allowed(&answer), "used up: {}", answer.1);
    assert_eq!(
        emu.registry().thing("gw_N2").unwrap().unwrap().attributes["enrollmentKey"].len(),
        64
    );
    let answer = run_hook(&emu, &event(&claim, "prov-N2", &fresh, serial("N2")), &[]);
    assert!(
        !allowed(&answer),
        "the same key after the opening: {}",
        answer.1
    );

    // Garbage is refused, never an error.
    for bad in [json!("text"), json!({"templateArn": "x"}), json!([])] {
        let answer = run_hook(&emu, &bad, &[]);
        assert!(!allowed(&answer), "{bad}: {}", answer.1);
    }
    emu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_unreachable_is_a_refusal() {
    let emu = start_with_shipped_files().await;
    let claim = emu.create_claim_credential("claim").unwrap();
    let fresh = emu.create_credential("fresh", &[]).unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}");
    let answer = run_hook(
        &emu,
        &event(&claim, "prov-N1", &fresh, json!({"SerialNumber": "N1"})),
        &[("AWS_ENDPOINT_URL_IOT", &url)],
    );
    assert!(!allowed(&answer), "{}", answer.1);
    assert!(answer.1.contains("the check failed"), "{}", answer.1);
    emu.handle.shutdown().await;
}

/// Two holders of the claim credential register the same new serial at the
/// same moment: the hook creates the thing for one of them, and the other
/// is refused; the thing ends with exactly one certificate.
#[tokio::test(flavor = "multi_thread")]
async fn two_requests_racing_for_a_new_thing_cannot_both_get_it() {
    let emu = start_with_shipped_files().await;
    let topic = register_topic("ProdTemplate");
    for round in 0..3 {
        let serial = format!("RACE{round}");
        let mut a = claim_client(&emu, &format!("prov-a{round}"), "ProdTemplate").await;
        let mut b = claim_client(&emu, &format!("prov-b{round}"), "ProdTemplate").await;
        let (ca, ta) = create_from_csr(&mut a).await;
        let (cb, tb) = create_from_csr(&mut b).await;
        let body = |token: &str| json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}});
        let (body_a, body_b) = (body(&ta), body(&tb));
        let ((oka, ra), (okb, rb)) = tokio::join!(a.call(&topic, &body_a), b.call(&topic, &body_b));
        assert!(oka ^ okb, "round {round}: exactly one wins: {ra} {rb}");
        let loser = if oka { &rb } else { &ra };
        assert_eq!(loser["errorCode"], "AccessDenied", "{loser}");
        let winner = if oka { &ca } else { &cb };
        assert_eq!(
            emu.registry()
                .thing(&format!("gw_{serial}"))
                .unwrap()
                .unwrap()
                .certificates,
            vec![winner.certificate_id.clone()],
            "round {round}"
        );
    }
    emu.handle.shutdown().await;
}
