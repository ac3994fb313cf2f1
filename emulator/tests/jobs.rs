//! AWS IoT Jobs, device side, over real TLS and MQTT: notify-next when a
//! job is created, start-next, update (version and state checks), get and
//! describe, the device policy keeping things to their own topics, and the
//! `jobs` CLI against a live server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use iotcore_emulator::{Credential, EmulatorHandle, JobExecutionStatus, ThingRecord};
use serde_json::{json, Value};

fn repo_device_policy() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/device.json"))
        .unwrap()
}

/// Thing `name` with an ACTIVE certificate carrying the repository's
/// `device` policy (which allows `$aws/things/<own thing>/jobs/*`).
fn device(emu: &EmulatorHandle, name: &str) -> Credential {
    emu.registry()
        .create_policy("device", &repo_device_policy())
        .unwrap();
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

fn jobs_topic(thing: &str, rest: &str) -> String {
    format!("$aws/things/{thing}/jobs/{rest}")
}

/// Publishes a request and waits for its answer, skipping notifications.
async fn request(c: &mut Client, topic: &str, body: &[u8]) -> (bool, Value) {
    c.publish(topic, body.to_vec()).await;
    loop {
        let (t, payload) = c.next_message(WAIT).await.expect("no answer");
        if t == format!("{topic}/accepted") || t == format!("{topic}/rejected") {
            return (
                t.ends_with("/accepted"),
                serde_json::from_slice(&payload).unwrap(),
            );
        }
    }
}

async fn call(c: &mut Client, topic: &str, body: Value) -> (bool, Value) {
    request(c, topic, &serde_json::to_vec(&body).unwrap()).await
}

/// Next message on `topic`, skipping others.
async fn next_on(c: &mut Client, topic: &str) -> Value {
    loop {
        let (t, payload) = c
            .next_message(WAIT)
            .await
            .unwrap_or_else(|| panic!("nothing on {topic}"));
        if t == topic {
            return serde_json::from_slice(&payload).unwrap();
        }
    }
}

async fn subscribed_device(emu: &EmulatorHandle, thing: &str) -> Client {
    let cred = device(emu, thing);
    let mut c = connect(emu, &cred, thing).await.unwrap();
    let codes = c
        .subscribe(&[
            &jobs_topic(thing, "notify-next"),
            &jobs_topic(thing, "notify"),
            &jobs_topic(thing, "+/accepted"),
            &jobs_topic(thing, "+/rejected"),
            &jobs_topic(thing, "+/+/accepted"),
            &jobs_topic(thing, "+/+/rejected"),
        ])
        .await;
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
        "{codes:?}"
    );
    c
}

#[tokio::test]
async fn job_for_connected_thing_notifies_next_then_start_next_and_update_to_succeeded() {
    let emu = start().await;
    let mut c = subscribed_device(&emu, "T").await;
    let doc = json!({"operation": "rotate-certificate"});
    emu.create_job("rotate-1", doc.clone(), &["T"]).unwrap();

    let n = next_on(&mut c, &jobs_topic("T", "notify-next")).await;
    assert!(n["timestamp"].as_i64().unwrap() > 0);
    let e = &n["execution"];
    assert_eq!(e["jobId"], "rotate-1");
    assert_eq!(e["thingName"], "T");
    assert_eq!(e["status"], "QUEUED");
    assert_eq!(e["jobDocument"], doc);
    assert_eq!(e["versionNumber"], 1);
    assert_eq!(e["executionNumber"], 1);
    assert!(e["queuedAt"].as_i64().unwrap() > 0);

    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "start-next"),
        json!({"clientToken": "tok-1", "statusDetails": {"phase": "starting"}}),
    )
    .await;
    assert!(ok, "{body}");
    assert_eq!(body["clientToken"], "tok-1");
    assert_eq!(body["execution"]["jobId"], "rotate-1");
    assert_eq!(body["execution"]["status"], "IN_PROGRESS");
    assert_eq!(body["execution"]["versionNumber"], 2);
    assert_eq!(body["execution"]["jobDocument"], doc);
    assert_eq!(body["execution"]["statusDetails"]["phase"], "starting");
    assert!(body["execution"]["startedAt"].as_i64().is_some());
    let rec = emu.job_execution("rotate-1", "T").unwrap().unwrap();
    assert_eq!(rec.status, JobExecutionStatus::InProgress);
    assert_eq!(rec.version_number, 2);

    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "rotate-1/update"),
        json!({"status": "SUCCEEDED", "statusDetails": {"newCertificateId": "abc"},
               "expectedVersion": 2, "includeJobExecutionState": true, "clientToken": "tok-2"}),
    )
    .await;
    assert!(ok, "{body}");
    assert_eq!(body["clientToken"], "tok-2");
    assert_eq!(body["executionState"]["status"], "SUCCEEDED");
    assert_eq!(body["executionState"]["versionNumber"], 3);
    assert!(body.get("jobDocument").is_none());
    let rec = emu.job_execution("rotate-1", "T").unwrap().unwrap();
    assert_eq!(rec.status, JobExecutionStatus::Succeeded);
    assert_eq!(rec.status_details["newCertificateId"], "abc");
    assert_eq!(rec.version_number, 3);
    assert_eq!(
        emu.registry().job("rotate-1").unwrap().unwrap().status,
        "COMPLETED"
    );

    // Nothing pending any more: notify-next without an execution.
    let n = next_on(&mut c, &jobs_topic("T", "notify-next")).await;
    assert!(n.get("execution").is_none(), "{n}");
    assert!(n["timestamp"].as_i64().is_some());

    // A terminal execution cannot change again.
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "rotate-1/update"),
        json!({"status": "IN_PROGRESS", "clientToken": "tok-3"}),
    )
    .await;
    assert!(!ok);
    assert_eq!(body["code"], "InvalidStateTransition");
    assert_eq!(body["clientToken"], "tok-3");
    assert_eq!(body["executionState"]["status"], "SUCCEEDED");
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "rotate-1/update"),
        json!({"status": "FAILED"}),
    )
    .await;
    assert!(!ok);
    assert_eq!(body["code"], "InvalidStateTransition");
    assert_eq!(
        emu.job_execution("rotate-1", "T").unwrap().unwrap().status,
        JobExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn expected_version_mismatch_is_rejected_and_changes_nothing() {
    let emu = start().await;
    let mut c = subscribed_device(&emu, "T").await;
    emu.create_job("j1", json!({"a": 1}), &["T"]).unwrap();
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "j1/update"),
        json!({"status": "IN_PROGRESS", "expectedVersion": 7, "clientToken": "v"}),
    )
    .await;
    assert!(!ok);
    assert_eq!(body["code"], "VersionMismatch");
    assert_eq!(body["clientToken"], "v");
    assert_eq!(body["executionState"]["versionNumber"], 1);
    assert_eq!(body["executionState"]["status"], "QUEUED");
    let rec = emu.job_execution("j1", "T").unwrap().unwrap();
    assert_eq!(rec.status, JobExecutionStatus::Queued);
    assert_eq!(rec.version_number, 1);

    // The right version goes through; FAILED straight from QUEUED is allowed.
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "j1/update"),
        json!({"status": "FAILED", "expectedVersion": 1, "includeJobDocument": true}),
    )
    .await;
    assert!(ok, "{body}");
    assert_eq!(body["jobDocument"], json!({"a": 1}));
    assert_eq!(
        emu.job_execution("j1", "T").unwrap().unwrap().status,
        JobExecutionStatus::Failed
    );
}

#[tokio::test]
async fn get_pending_describe_and_bad_requests() {
    let emu = start().await;
    let mut c = subscribed_device(&emu, "T").await;
    emu.create_job("j1", json!({"n": 1}), &["T"]).unwrap();
    emu.create_job("j2", json!({"n": 2}), &["T"]).unwrap();

    let (ok, body) = call(&mut c, &jobs_topic("T", "get"), json!({"clientToken": "g"})).await;
    assert!(ok, "{body}");
    assert_eq!(body["clientToken"], "g");
    assert_eq!(body["inProgressJobs"], json!([]));
    let queued: Vec<&str> = body["queuedJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(queued, ["j1", "j2"]);
    assert_eq!(body["queuedJobs"][0]["versionNumber"], 1);
    assert_eq!(body["queuedJobs"][0]["executionNumber"], 1);

    let (ok, _) = call(&mut c, &jobs_topic("T", "start-next"), json!({})).await;
    assert!(ok);
    let (ok, body) = request(&mut c, &jobs_topic("T", "get"), b"").await;
    assert!(ok, "{body}");
    assert_eq!(body["inProgressJobs"][0]["jobId"], "j1");
    assert_eq!(body["queuedJobs"][0]["jobId"], "j2");
    assert_eq!(body["queuedJobs"].as_array().unwrap().len(), 1);

    // start-next again answers the IN_PROGRESS one unchanged.
    let (ok, body) = call(&mut c, &jobs_topic("T", "start-next"), json!({})).await;
    assert!(ok);
    assert_eq!(body["execution"]["jobId"], "j1");
    assert_eq!(body["execution"]["versionNumber"], 2);

    let (ok, body) = call(&mut c, &jobs_topic("T", "$next/get"), json!({})).await;
    assert!(ok, "{body}");
    assert_eq!(body["execution"]["jobId"], "j1");
    assert_eq!(body["execution"]["status"], "IN_PROGRESS");
    assert_eq!(body["execution"]["jobDocument"], json!({"n": 1}));

    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "j2/get"),
        json!({"includeJobDocument": false, "clientToken": "d"}),
    )
    .await;
    assert!(ok, "{body}");
    assert_eq!(body["clientToken"], "d");
    assert_eq!(body["execution"]["status"], "QUEUED");
    assert!(body["execution"].get("jobDocument").is_none());

    let (ok, body) = call(&mut c, &jobs_topic("T", "nope/get"), json!({})).await;
    assert!(!ok);
    assert_eq!(body["code"], "ResourceNotFound");
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "nope/update"),
        json!({"status": "SUCCEEDED"}),
    )
    .await;
    assert!(!ok);
    assert_eq!(body["code"], "ResourceNotFound");

    let (ok, body) = request(&mut c, &jobs_topic("T", "j1/update"), b"{not json").await;
    assert!(!ok);
    assert_eq!(body["code"], "InvalidJson");
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "j1/update"),
        json!({"status": "QUEUED"}),
    )
    .await;
    assert!(!ok);
    assert_eq!(body["code"], "InvalidRequest");
    let (ok, body) = call(
        &mut c,
        &jobs_topic("T", "j1/update"),
        json!({"status": "SUCCEEDED", "statusDetails": {"n": 1}}),
    )
    .await;
    assert!(!ok);
    assert_eq!(body["code"], "InvalidRequest");
    let (ok, body) = call(&mut c, &jobs_topic("T", "j1/bogus"), json!({})).await;
    assert!(!ok);
    assert_eq!(body["code"], "InvalidTopic");

    // Finishing j1 makes j2 the next: notify-next carries it.
    let (ok, _) = call(
        &mut c,
        &jobs_topic("T", "j1/update"),
        json!({"status": "SUCCEEDED"}),
    )
    .await;
    assert!(ok);
    let n = next_on(&mut c, &jobs_topic("T", "notify-next")).await;
    assert_eq!(n["execution"]["jobId"], "j2");
}

#[tokio::test]
async fn another_thing_cannot_use_this_things_jobs_topics() {
    let emu = start().await;
    let _t = subscribed_device(&emu, "T").await;
    let u = device(&emu, "U");
    emu.create_job("j1", json!({}), &["T", "U"]).unwrap();
    let mut c = connect(&emu, &u, "U").await.unwrap();
    let codes = c
        .subscribe(&[
            &jobs_topic("T", "notify-next"),
            &jobs_topic("T", "get/accepted"),
            &jobs_topic("U", "get/accepted"),
        ])
        .await;
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Failure));
    assert!(matches!(codes[1], rumqttc::SubscribeReasonCode::Failure));
    assert!(matches!(codes[2], rumqttc::SubscribeReasonCode::Success(_)));
    // Its own jobs are fine.
    let (ok, body) = call(&mut c, &jobs_topic("U", "get"), json!({})).await;
    assert!(ok, "{body}");
    assert_eq!(body["queuedJobs"][0]["jobId"], "j1");
    // Publishing on T's topics is refused (MQTT 3.1.1: connection closed).
    c.publish(
        &jobs_topic("T", "j1/update"),
        br#"{"status":"SUCCEEDED"}"#.to_vec(),
    )
    .await;
    assert!(c.closed_within(WAIT).await);
    assert_eq!(
        emu.job_execution("j1", "T").unwrap().unwrap().status,
        JobExecutionStatus::Queued
    );
    // A client cannot forge the service's notifications either.
    let mut t = connect(&emu, &device(&emu, "V"), "V").await.unwrap();
    t.subscribe(&[&jobs_topic("V", "notify-next")]).await;
    t.publish(&jobs_topic("V", "notify-next"), b"{}".to_vec())
        .await;
    assert!(t.next_message(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn job_created_through_the_registry_is_notified_by_the_supervisor() {
    let emu = start().await;
    let mut c = subscribed_device(&emu, "T").await;
    emu.registry()
        .create_job("r1", &json!({"x": true}), &["T"])
        .unwrap();
    // Both notifications, in either order.
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 2 {
        let (t, p) = c.next_message(WAIT).await.expect("notifications");
        got.insert(t, serde_json::from_slice::<Value>(&p).unwrap());
    }
    assert_eq!(
        got[&jobs_topic("T", "notify-next")]["execution"]["jobId"],
        "r1"
    );
    assert_eq!(
        got[&jobs_topic("T", "notify")]["jobs"]["QUEUED"][0]["jobId"],
        "r1"
    );
    // Bad jobs are refused.
    assert!(emu.create_job("r1", json!({}), &["T"]).is_err());
    assert!(emu.create_job("r2", json!({}), &["missing"]).is_err());
    assert!(emu.create_job("bad id", json!({}), &["T"]).is_err());
    assert!(emu.create_job("r3", json!([1]), &["T"]).is_err());
}

fn run(args: &[&str]) -> Value {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[tokio::test]
async fn jobs_cli_create_list_describe_reaches_a_live_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    run(&["init", d]);
    let root_ca = std::fs::read_to_string(dir.join("root-ca.pem")).unwrap();
    let reg = iotcore_emulator::Registry::open(&dir).unwrap();
    reg.put_thing(&ThingRecord {
        thing_name: "gw_1".into(),
        ..Default::default()
    })
    .unwrap();
    let data = iotcore_emulator::DataDir::open(&dir).unwrap();
    let cred = data.create_credential("gw_1", &["device"]).unwrap();
    reg.attach_thing("gw_1", &cred.certificate_id).unwrap();
    drop(data);

    let mut serve = ServeProcess::spawn(&dir).await;
    let mut c = connect_tls(serve.mqtt, client_tls(&root_ca, Some(&cred), false), "gw_1")
        .await
        .unwrap();
    c.subscribe(&[&jobs_topic("gw_1", "notify-next")]).await;

    let doc = tmp.path().join("doc.json");
    std::fs::write(&doc, r#"{"operation": "rotate-certificate"}"#).unwrap();
    let job = run(&[
        "jobs",
        "create",
        "cli-1",
        "--document",
        doc.to_str().unwrap(),
        "--thing",
        "gw_1",
        "--json",
        "-d",
        d,
    ]);
    assert_eq!(job["job_id"], "cli-1");
    assert_eq!(job["targets"], json!(["gw_1"]));
    assert_eq!(job["status"], "IN_PROGRESS");
    // The server notices within its poll interval.
    let n = next_on(&mut c, &jobs_topic("gw_1", "notify-next")).await;
    assert_eq!(n["execution"]["jobId"], "cli-1");
    assert_eq!(
        n["execution"]["jobDocument"]["operation"],
        "rotate-certificate"
    );

    let list = run(&["jobs", "list", "--json", "-d", d]);
    assert_eq!(list[0]["job_id"], "cli-1");
    let desc = run(&["jobs", "describe", "cli-1", "--json", "-d", d]);
    assert_eq!(desc["document"]["operation"], "rotate-certificate");
    let exec = run(&[
        "jobs", "describe", "cli-1", "--thing", "gw_1", "--json", "-d", d,
    ]);
    assert_eq!(exec["status"], "QUEUED");
    assert_eq!(exec["version_number"], 1);
    assert_eq!(exec["thing_name"], "gw_1");
    // Unknown things are refused.
    let out = std::process::Command::new(BIN)
        .args([
            "jobs",
            "create",
            "cli-2",
            "--document",
            doc.to_str().unwrap(),
            "--thing",
            "nobody",
            "-d",
            d,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = serve.child.start_kill();
}
