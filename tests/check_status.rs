//! `prov-agent status` and `prov-agent check` on a healthy device and on
//! deliberately broken ones: each broken thing is named.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

/// The verdict `check --json` gave for one check.
fn verdict(out: &std::process::Output, check: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {}", text(out)));
    let f = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no check {check}: {}", text(out)));
    (
        f["verdict"].as_str().unwrap().to_string(),
        f["detail"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_device() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let out = device.run(&["check"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("CONNACK 0"), "{stdout}");

    let out = device.run(&["status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let identity = device.identity().unwrap();
    assert_eq!(s["enrolled"], true);
    assert_eq!(s["thingName"], identity.thing_name.as_str());
    assert_eq!(s["certificateId"], identity.certificate_id.as_str());
    assert_eq!(s["keyReference"], identity.key_reference.as_str());
    assert_eq!(s["expired"], false);
    assert!(s["secondsLeft"].as_u64().unwrap() > 0);
    let human = device.run(&["status"]).await;
    assert!(String::from_utf8_lossy(&human.stdout).contains(&identity.thing_name));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_before_enrollment() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    // Said on stdout, and in the exit code (6, README) for scripts.
    let out = device.run(&["status"]).await;
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not enrolled"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prov-agent enroll"));
    let out = device.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["enrolled"], false);
    assert_eq!(s["schemaVersion"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificate_is_named() {
    let cloud = TestCloud::start_with(|c| c.certificate_validity = Duration::from_secs(2)).await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = device.run(&["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (v, detail) = verdict(&out, "certificate expiry");
    assert_eq!(v, "fail");
    assert!(detail.contains("expired"), "{detail}");
    let status = device.run(&["status", "--json"]).await;
    assert_eq!(status.status.code(), Some(7), "{}", text(&status));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["expired"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_that_does_not_match_is_named() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    // Put another certificate (the claim's) in the identity.
    let path = device.state_dir().join("identity.json");
    let mut identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    identity["certificatePem"] = cloud.claim.certificate_pem.clone().into();
    std::fs::write(&path, serde_json::to_vec(&identity).unwrap()).unwrap();
    let out = device.run(&["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (v, detail) = verdict(&out, "key matches certificate");
    assert_eq!(v, "fail");
    assert!(detail.contains("does not belong"), "{detail}");
}

/// The identity's key deleted by another tool: `check` says so as the
/// daemon does, with what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_device_key_is_named_with_what_to_do() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let identity = device.identity().unwrap();
    device
        .store()
        .delete(&identity.key_label.parse().unwrap())
        .unwrap();
    let out = device.run(&["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (v, detail) = verdict(&out, "key");
    assert_eq!(v, "fail");
    assert!(detail.contains(&identity.certificate_id), "{detail}");
    assert!(detail.contains("prov-agent enroll --force"), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_endpoint_is_named() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = device
        .run_env(
            &["check", "--json"],
            &[("PROV_AGENT_PROVISIONING_PORT", &closed.to_string())],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (v, detail) = verdict(&out, "endpoint");
    assert_eq!(v, "fail");
    assert!(detail.contains("cannot connect"), "{detail}");
    // Everything else is fine.
    let (v, _) = verdict(&out, "key matches certificate");
    assert_eq!(v, "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_permissions_are_named() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    std::fs::set_permissions(device.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = device.run(&["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (v, detail) = verdict(&out, "state directory");
    assert_eq!(v, "fail");
    assert!(
        detail.contains("0755") && detail.contains("chmod 0700"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thing_name_inside_the_claim_client_ids_is_named() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let out = device.run(&["check", "--json"]).await;
    let (v, _) = verdict(&out, "thing name");
    assert_eq!(v, "pass", "{}", text(&out));
    // A claim client-id prefix that covers the thing's name ("gw_SN..."):
    // every claim holder could connect as this gateway.
    let out = device
        .run_env(
            &["check", "--json"],
            &[("PROV_AGENT_PROVISIONING_CLIENT_ID_PREFIX", "gw_")],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (v, detail) = verdict(&out, "thing name");
    assert_eq!(v, "fail");
    assert!(
        detail.contains("knock this gateway off") && detail.contains("gw_"),
        "{detail}"
    );
}

/// `check` on a PKCS#11 token says what the module is and can do, learnt
/// from it: SoftHSM offers every mechanism the agent uses and lets it
/// import, copy and relabel.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn check_lists_what_the_pkcs11_module_can_do() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("abilities"), "").await;
    let out = device.run(&["check", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let (_, module) = verdict(&out, "PKCS#11 module");
    assert!(module.contains("SoftHSM"), "{module}");
    let (_, mechanisms) = verdict(&out, "mechanisms");
    for m in [
        "CKM_EC_KEY_PAIR_GEN (",
        "CKM_ECDSA (",
        "CKM_RSA_PKCS_KEY_PAIR_GEN (",
        "CKM_RSA_PKCS (",
        "CKM_RSA_PKCS_PSS (",
    ] {
        assert!(mechanisms.contains(m), "{m}: {mechanisms}");
    }
    for ability in ["private-key import", "C_CopyObject", "changing CKA_LABEL"] {
        assert_eq!(
            verdict(&out, ability),
            ("pass".into(), "works".into()),
            "{ability}"
        );
    }
    let (_, flags) = verdict(&out, "token flags");
    assert!(flags.contains("login required"), "{flags}");
}

/// `check` connects as the thing and needs CONNACK 0: a deactivated
/// certificate, whose TLS handshake still completes on the client's side
/// (TLS 1.3), fails the endpoint check.
#[tokio::test(flavor = "multi_thread")]
async fn check_fails_for_a_deactivated_certificate() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let out = device.run(&["check", "--json"]).await;
    assert_eq!(verdict(&out, "endpoint").0, "pass", "{}", text(&out));
    let id = device.identity().unwrap().certificate_id;
    cloud
        .handle
        .registry()
        .set_certificate_status(&id, iotcore_emulator::CertStatus::Inactive)
        .unwrap();
    let out = device.run(&["check", "--json"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let (v, detail) = verdict(&out, "endpoint");
    assert_eq!(v, "fail", "{detail}");
    assert!(
        detail.contains("ACTIVE") || detail.contains("refused"),
        "{detail}"
    );
}
