//! Someone holding the fleet's claim credential (it is on every gateway, so
//! assume it leaked) against an enrolled gateway, with the shipped
//! templates, pre-provisioning hook and policies: they cannot take over its
//! thing, knock it off the air, or have its certificate deactivated. A
//! gateway that lost its identity re-enrolls only once an operator opens
//! its thing.

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::daemon::Daemon;
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;
use iotcore_emulator::CertStatus;

/// An enrolled gateway (its key in a SoftHSM token) whose daemon is
/// connected.
async fn connected_gateway(cloud: &TestCloud) -> (Device, Daemon) {
    let gateway = Device::enrolled(cloud, Backend::pkcs11("victim"), "").await;
    let daemon = Daemon::start(&gateway);
    daemon
        .wait_log("connected thing=", 1, Duration::from_secs(20))
        .await;
    (gateway, daemon)
}

/// The gateway kept its one connection and its certificate all along.
async fn still_connected(cloud: &TestCloud, gateway: &Device, daemon: &Daemon) {
    // Long enough for a dropped connection to be noticed and logged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = daemon.log.lock().unwrap().join("\n");
    assert_eq!(daemon.count("connection lost"), 0, "{log}");
    assert_eq!(daemon.count("connected thing="), 1, "{log}");
    let identity = gateway.identity().unwrap();
    assert_eq!(
        cloud.active_certificates(&identity.thing_name, 1).await,
        vec![identity.certificate_id]
    );
}

/// The leaked claim credential, in the attacker's own (software) key store.
fn attacker(cloud: &TestCloud, serial: &str, extra: &str) -> Device {
    Device::with_serial(cloud, Backend::File, extra, serial)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_holder_cannot_enroll_as_an_existing_gateway() {
    let cloud = TestCloud::start().await;
    let (gateway, daemon) = connected_gateway(&cloud).await;
    let identity = gateway.identity().unwrap();

    for mode in ["csr", "keys"] {
        let thief = attacker(&cloud, &gateway.serial, &format!("MODE = {mode}\n"));
        thief.import_claim().await;
        let out = thief.run(&["enroll"]).await;
        let stderr = failed_with(&out, 3);
        assert!(
            stderr.contains("AccessDenied") && stderr.contains("RegisterThing"),
            "{mode}: {stderr}"
        );
        assert!(thief.identity().is_none(), "{mode}");
    }
    // Nothing of theirs is attached to the thing, which kept its attributes.
    let registry = cloud.handle.registry();
    let thing = registry.thing(&identity.thing_name).unwrap().unwrap();
    assert_eq!(thing.certificates, vec![identity.certificate_id.clone()]);
    assert_eq!(thing.attributes["hardwareRevision"], "r2");

    // Parameters that decide names or groups are checked against allowlists.
    for (key, value) in [("ThingNamePrefix", "evil"), ("Site", "plant-z")] {
        let thief = attacker(&cloud, &format!("{}x", gateway.serial), "");
        thief.import_claim().await;
        // The config ends in [TEMPLATE_PARAMETERS].
        let mut config = std::fs::read_to_string(&thief.config).unwrap();
        config = config.replace("Site = plant-a\n", "");
        config.push_str(&format!("{key} = {value}\n"));
        std::fs::write(&thief.config, config).unwrap();
        let out = thief.run(&["enroll"]).await;
        let stderr = failed_with(&out, 3);
        assert!(stderr.contains("AccessDenied"), "{key}={value}: {stderr}");
    }
    assert!(registry
        .things()
        .unwrap()
        .iter()
        .all(|t| t.thing_name == identity.thing_name));

    // (A round trip of the test's own as the thing would drop the daemon's
    // connection, one connection per client id: the daemon's staying up is
    // the proof that the gateway still works.)
    still_connected(&cloud, &gateway, &daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claim_credential_cannot_connect_as_a_gateway() {
    let cloud = TestCloud::start().await;
    let (gateway, daemon) = connected_gateway(&cloud).await;
    let thing = gateway.identity().unwrap().thing_name;
    for _ in 0..5 {
        let refused = cloud.session_as(&cloud.claim, &thing).await;
        match refused {
            Err(prov_agent::mqtt::MqttError::ConnectRefused { .. }) => {}
            Err(e) => panic!("expected a CONNACK refusal, got {e}"),
            Ok(_) => panic!("the claim credential connected as {thing}"),
        }
    }
    // A claim session (client id prov-...) still connects.
    let claim = cloud
        .session_as(&cloud.claim, &format!("prov-{}", gateway.serial))
        .await
        .unwrap();
    claim.close().await;
    still_connected(&cloud, &gateway, &daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_reports_act_only_on_the_reporting_things_own_certificates() {
    let cloud = TestCloud::start().await;
    let a = Device::enrolled(&cloud, Backend::File, "").await;
    let b = Device::enrolled(&cloud, Backend::File, "").await;
    let (ia, ib) = (a.identity().unwrap(), b.identity().unwrap());
    let t = Duration::from_secs(5);
    let report = |thing: &str, new: &str, old: &str| {
        serde_json::to_vec(&serde_json::json!({
            "thingName": thing, "newCertificateId": new, "oldCertificateIds": [old],
            "reason": "rotation", "time": 0,
        }))
        .unwrap()
    };

    // A names B's certificate (and its own) on its own report topic.
    let (mut session, store) = a.session(&cloud).await.unwrap();
    let topic = format!("things/{}/rotation", ia.thing_name);
    for old in [&ib.certificate_id, &ia.certificate_id] {
        session
            .publish(&topic, report(&ia.thing_name, &ia.certificate_id, old), t)
            .await
            .unwrap();
    }
    // A publishes on B's report topic: the device policy refuses it (the
    // service closes the connection).
    let b_topic = format!("things/{}/rotation", ib.thing_name);
    let refused = session
        .publish(
            &b_topic,
            report(&ib.thing_name, &ib.certificate_id, &ib.certificate_id),
            t,
        )
        .await;
    assert!(refused.is_err(), "A published on B's report topic");
    drop((session, store));

    // A holder of the claim credential cannot publish reports at all.
    let mut claim = cloud
        .session_as(&cloud.claim, &format!("prov-{}", b.serial))
        .await
        .unwrap();
    let refused = claim
        .publish(
            &b_topic,
            report(&ib.thing_name, &ib.certificate_id, &ib.certificate_id),
            t,
        )
        .await;
    assert!(refused.is_err(), "the claim credential published a report");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let registry = cloud.handle.registry();
    for id in [&ia, &ib] {
        assert_eq!(
            registry.certificate_status(&id.certificate_id).unwrap(),
            Some(CertStatus::Active),
            "{}",
            id.thing_name
        );
    }
    a.round_trip(&cloud).await.unwrap();
    b.round_trip(&cloud).await.unwrap();
}

/// `iotcore-emulator things update <thing> --attribute reenrollUntil=<t>`,
/// done here through the registry the admin CLI writes.
fn open_for_reenrollment(cloud: &TestCloud, thing: &str, seconds: u64) {
    let registry = cloud.handle.registry();
    let mut record = registry.thing(thing).unwrap().unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    record
        .attributes
        .insert("reenrollUntil".into(), until.to_string());
    registry.put_thing(&record).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_gateway_reenrolls_once_an_operator_opens_its_thing() {
    let cloud = TestCloud::start().await;
    let old = Device::enrolled(&cloud, Backend::File, "").await;
    let identity = old.identity().unwrap();
    let registry = cloud.handle.registry();

    // Factory reset: the same serial number, nothing else.
    let reset = Device::with_serial(&cloud, Backend::File, "", &old.serial);
    reset.import_claim().await;
    let refused = |out: &std::process::Output| {
        let stderr = failed_with(out, 3);
        assert!(stderr.contains("AccessDenied"), "{stderr}");
    };
    refused(&reset.run(&["enroll"]).await);

    // Opened, but its certificate is still ACTIVE: still refused.
    open_for_reenrollment(&cloud, &identity.thing_name, 600);
    refused(&reset.run(&["enroll"]).await);

    // An opening in the past does not count.
    registry
        .set_certificate_status(&identity.certificate_id, CertStatus::Inactive)
        .unwrap();
    let mut record = registry.thing(&identity.thing_name).unwrap().unwrap();
    record
        .attributes
        .insert("reenrollUntil".into(), "1000".into());
    registry.put_thing(&record).unwrap();
    refused(&reset.run(&["enroll"]).await);

    // The operator step: certificates deactivated, thing opened.
    open_for_reenrollment(&cloud, &identity.thing_name, 600);
    let out = reset.run(&["enroll"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let new = reset.identity().unwrap();
    assert_eq!(new.thing_name, identity.thing_name);
    reset.round_trip(&cloud).await.unwrap();
    let thing = registry.thing(&identity.thing_name).unwrap().unwrap();
    assert!(
        !thing.attributes.contains_key("reenrollUntil"),
        "the opening is used up: {:?}",
        thing.attributes
    );

    // One enrollment per opening: another device with the serial is refused.
    let second = Device::with_serial(&cloud, Backend::File, "", &old.serial);
    second.import_claim().await;
    refused(&second.run(&["enroll"]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn force_reenrollment_needs_a_certificate_that_still_works() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let old = device.identity().unwrap();
    // The current certificate proves the request: accepted (the claim
    // credential alone would be refused for this existing thing).
    let out = device.run(&["enroll", "--force"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connect with the current certificate"),
        "{}",
        text(&out)
    );
    let new = device.identity().unwrap();
    assert_eq!(new.thing_name, old.thing_name);
    assert_ne!(new.certificate_id, old.certificate_id);

    // Once it is deactivated (by an operator, say), --force falls back to
    // the claim credential, which the hook refuses for an existing thing.
    cloud
        .handle
        .registry()
        .set_certificate_status(&new.certificate_id, CertStatus::Inactive)
        .unwrap();
    let out = device.run(&["enroll", "--force"]).await;
    let stderr = failed_with(&out, 3);
    assert!(
        stderr.contains("refused the client certificate")
            && stderr.contains("claim credential instead")
            && stderr.contains("AccessDenied"),
        "{stderr}"
    );
    // A refused certificate is not retried as if the network had failed.
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert_eq!(
        device.identity().unwrap().certificate_id,
        new.certificate_id
    );
}
