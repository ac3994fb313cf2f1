//! The control-plane HTTP API, driven by the real boto3 from PyPI (the
//! virtualenv of `ci/python-venv.sh`), configured by the environment only:
//! what it reads and changes is the registry the MQTT side and the admin CLI
//! use, and a pre-provisioning hook written with boto3 runs unchanged.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;
use iotcore_emulator::{CertStatus, Emulator, EmulatorConfig, EmulatorError, ThingRecord};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

/// Every log line of the emulator in this test binary (all tests share one
/// global subscriber, installed before any emulator starts).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Capture(&'static Mutex<Vec<u8>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter("iotcore_emulator=info")
            .with_ansi(false)
            .with_writer(move || Capture(buf))
            .init();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Runs `tests/control_plane/boto3_client.py` against `api_url` with `calls`
/// on stdin and returns its output: `{endpoint, region, results}`.
async fn boto3(api_url: &str, calls: Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/control_plane/boto3_client.py");
    let mut child = tokio::process::Command::new(venv_bin().join("python"))
        .arg(&script)
        // The environment a program written for AWS gets, and nothing from
        // a developer's ~/.aws.
        .env("AWS_ENDPOINT_URL_IOT", api_url)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "emulator")
        .env("AWS_SECRET_ACCESS_KEY", "emulator-not-checked")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(&calls).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("boto3 script timed out")
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["endpoint"], api_url,
        "boto3 did not take AWS_ENDPOINT_URL_IOT"
    );
    assert_eq!(v["region"], REGION);
    v
}

/// The successful answer of a call, or a panic naming the error.
fn ok(r: &Value) -> &Value {
    assert!(r.get("error").is_none(), "call failed: {r}");
    assert_eq!(r["status"], 200, "{r}");
    &r["ok"]
}

/// The error a call raised: (code, HTTP status), after checking that boto3
/// raised the modeled exception class `client.exceptions.<code>`.
fn error(r: &Value) -> (String, u64) {
    let e = r
        .get("error")
        .unwrap_or_else(|| panic!("call did not fail: {r}"));
    assert_eq!(e["modeled"], true, "boto3 raised no modeled exception: {e}");
    assert!(!e["message"].as_str().unwrap().is_empty());
    (
        e["code"].as_str().unwrap().to_owned(),
        e["status"].as_u64().unwrap(),
    )
}

/// Items of every page of a paginator result, and the page count.
fn pages(r: &Value, key: &str) -> (Vec<Value>, usize) {
    let pages = r["pages"]
        .as_array()
        .unwrap_or_else(|| panic!("no pages: {r}"));
    let items = pages
        .iter()
        .flat_map(|p| p[key].as_array().unwrap().clone())
        .collect();
    (items, pages.len())
}

fn thing_arn(name: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:thing/{name}")
}

fn cert_arn(id: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:cert/{id}")
}

fn attrs(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn thing(name: &str, attributes: &[(&str, &str)], thing_type: Option<&str>) -> ThingRecord {
    ThingRecord {
        thing_name: name.into(),
        attributes: attrs(attributes),
        thing_type_name: thing_type.map(Into::into),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_reads_and_changes_the_registry_of_the_mqtt_side() {
    logs();
    let emu = start().await;
    let reg = emu.registry();
    reg.put_thing(&thing(
        "cp-a",
        &[("color", "red"), ("site", "plant-a")],
        Some("gateway"),
    ))
    .unwrap();
    reg.put_thing(&thing("cp-b", &[("color", "blue")], None))
        .unwrap();
    reg.put_thing(&thing("cp-c", &[], None)).unwrap();
    // A thing and certificate made by the provisioning flow over MQTT.
    let mut claim = claim_client(&emu, "claim-cp", "prod").await;
    let (device, token) = create_from_csr(&mut claim).await;
    let (accepted, body) = claim
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "CP1"}}),
        )
        .await;
    assert!(accepted, "{body}");
    // A second certificate on dev-CP1, and the device's certificate on cp-a too.
    let second = emu.create_credential("second", &["device"]).unwrap();
    reg.attach_thing("dev-CP1", &second.certificate_id).unwrap();
    reg.attach_thing("cp-a", &device.certificate_id).unwrap();
    let mut live = connect(&emu, &device, "dev-CP1").await.unwrap();

    let missing_cert = "0".repeat(64);
    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "describe_thing", "args": {"thingName": "cp-a"}},
            {"op": "describe_thing", "args": {"thingName": "cp-a"}},
            {"op": "describe_thing", "args": {"thingName": "cp-b"}},
            {"op": "describe_thing", "args": {"thingName": "cp-missing"}},
            {"op": "describe_thing", "args": {"thingName": "bad name!"}},
            {"paginate": "list_things", "pageSize": 1},
            {"op": "list_things", "args": {"attributeName": "color", "attributeValue": "blue"}},
            {"paginate": "list_thing_principals", "args": {"thingName": "dev-CP1"}, "pageSize": 1},
            {"paginate": "list_principal_things",
             "args": {"principal": cert_arn(&device.certificate_id)}, "pageSize": 1},
            {"op": "describe_certificate", "args": {"certificateId": device.certificate_id}},
            {"op": "describe_certificate", "args": {"certificateId": missing_cert}},
            {"paginate": "list_certificates", "pageSize": 1},
            {"op": "list_things", "args": {"maxResults": 1}},
            {"op": "list_thing_principals", "args": {"thingName": "cp-missing"}},
            {"op": "list_principal_things", "args": {"principal": cert_arn(&missing_cert)}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();

    // DescribeThing, against the registry.
    let a = ok(&r[0]);
    let rec = reg.thing("cp-a").unwrap().unwrap();
    assert_eq!(a["thingName"], "cp-a");
    assert_eq!(a["defaultClientId"], "cp-a");
    assert_eq!(a["thingArn"], thing_arn("cp-a"));
    assert_eq!(a["attributes"], json!(rec.attributes));
    assert_eq!(a["thingTypeName"], "gateway");
    assert_eq!(a["version"], rec.version);
    assert_eq!(rec.version, 1);
    assert!(a.get("billingGroupName").is_none());
    let id = a["thingId"].as_str().unwrap();
    assert_eq!(ok(&r[1])["thingId"], id, "thingId is not stable");
    assert_ne!(ok(&r[2])["thingId"], id, "two things share a thingId");
    assert!(ok(&r[2]).get("thingTypeName").is_none());
    assert_eq!(error(&r[3]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[4]), ("InvalidRequestException".into(), 400));

    // ListThings: one thing per page, every thing once, in name order.
    let (things, n) = pages(&r[5], "things");
    let names: Vec<&str> = things
        .iter()
        .map(|t| t["thingName"].as_str().unwrap())
        .collect();
    let all: Vec<String> = reg
        .things()
        .unwrap()
        .into_iter()
        .map(|t| t.thing_name)
        .collect();
    assert_eq!(names, all);
    assert_eq!(names, ["cp-a", "cp-b", "cp-c", "dev-CP1"]);
    assert_eq!(n, 4);
    assert_eq!(things[0]["thingArn"], thing_arn("cp-a"));
    assert_eq!(things[0]["version"], 1);
    assert_eq!(things[0]["thingTypeName"], "gateway");
    assert_eq!(things[3]["attributes"]["serial"], "CP1");
    let blue = ok(&r[6])["things"].as_array().unwrap();
    assert_eq!(blue.len(), 1);
    assert_eq!(blue[0]["thingName"], "cp-b");
    let first = ok(&r[12]);
    assert_eq!(first["things"].as_array().unwrap().len(), 1);
    assert!(first["nextToken"].is_string(), "{first}");

    // Principals of a thing, things of a principal.
    let (principals, n) = pages(&r[7], "principals");
    let mut expected = vec![
        cert_arn(&device.certificate_id),
        cert_arn(&second.certificate_id),
    ];
    expected.sort();
    assert_eq!(principals, expected);
    assert_eq!(n, 2);
    let (things, n) = pages(&r[8], "things");
    assert_eq!(things, [json!("cp-a"), json!("dev-CP1")]);
    assert_eq!(n, 2);
    assert_eq!(error(&r[13]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[14]), ("ResourceNotFoundException".into(), 404));

    // DescribeCertificate, against the registry and the certificate itself.
    let d = &ok(&r[9])["certificateDescription"];
    let rec = reg.certificate(&device.certificate_id).unwrap().unwrap();
    assert_eq!(d["certificateId"], device.certificate_id);
    assert_eq!(d["certificateArn"], cert_arn(&device.certificate_id));
    assert_eq!(d["status"], "ACTIVE");
    assert_eq!(d["certificatePem"], rec.certificate_pem);
    assert_eq!(d["ownedBy"], ACCOUNT);
    assert_eq!(d["creationDate"].as_f64(), Some(rec.created_at as f64));
    assert_eq!(d["lastModifiedDate"].as_f64(), Some(rec.updated_at as f64));
    assert_eq!(d["customerVersion"], 2, "PENDING_ACTIVATION then ACTIVE");
    assert!(d["generationId"].is_string());
    assert_eq!(d["certificateMode"], "DEFAULT");
    assert!(d.get("caCertificateId").is_none(), "{d}");
    let der = pem::parse(&device.certificate_pem).unwrap().into_contents();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        d["validity"]["notBefore"].as_f64(),
        Some(x509.validity().not_before.timestamp() as f64)
    );
    assert_eq!(
        d["validity"]["notAfter"].as_f64(),
        Some(x509.validity().not_after.timestamp() as f64)
    );
    assert_eq!(error(&r[10]), ("ResourceNotFoundException".into(), 404));

    // ListCertificates: one per page, newest first, every certificate once.
    let (certs, n) = pages(&r[11], "certificates");
    let mut listed: Vec<&str> = certs
        .iter()
        .map(|c| c["certificateId"].as_str().unwrap())
        .collect();
    assert_eq!(n, listed.len());
    let dates: Vec<f64> = certs
        .iter()
        .map(|c| c["creationDate"].as_f64().unwrap())
        .collect();
    assert!(
        dates.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {dates:?}"
    );
    listed.sort();
    let mut registered: Vec<String> = reg
        .certificates()
        .unwrap()
        .into_iter()
        .map(|c| c.certificate_id)
        .collect();
    registered.sort();
    assert_eq!(listed, registered);

    // Changes. A thing may be given only a thing type that exists, as on AWS.
    let out = boto3(
        &emu.api_url(),
        json!([{"op": "create_thing_type", "args": {"thingTypeName": "sensor"}}]),
    )
    .await;
    ok(&out["results"][0]);
    let version = reg.thing("cp-a").unwrap().unwrap().version;
    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "update_thing", "args": {"thingName": "cp-a", "expectedVersion": version,
              "attributePayload": {"attributes": {"color": "green", "site": ""}, "merge": true}}},
            {"op": "update_thing", "args": {"thingName": "cp-a", "expectedVersion": version,
              "attributePayload": {"attributes": {"color": "black"}, "merge": true}}},
            {"op": "update_thing", "args": {"thingName": "cp-b", "thingTypeName": "sensor",
              "attributePayload": {"attributes": {"only": "x"}}}},
            {"op": "update_thing", "args": {"thingName": "cp-a", "removeThingType": true}},
            {"op": "update_thing", "args": {"thingName": "cp-missing",
              "attributePayload": {"attributes": {"a": "b"}}}},
            {"op": "update_thing", "args": {"thingName": "cp-c",
              "attributePayload": {"attributes": {"bad key": "b"}}}},
            {"op": "detach_thing_principal",
             "args": {"thingName": "dev-CP1", "principal": cert_arn(&second.certificate_id)}},
            {"op": "update_certificate",
             "args": {"certificateId": device.certificate_id, "newStatus": "INACTIVE"}},
            {"op": "update_certificate",
             "args": {"certificateId": missing_cert, "newStatus": "INACTIVE"}},
            {"op": "update_certificate",
             "args": {"certificateId": second.certificate_id, "newStatus": "PENDING_TRANSFER"}},
            {"op": "describe_thing", "args": {"thingName": "cp-a"}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();
    assert_eq!(ok(&r[0]), &json!({}));
    assert_eq!(error(&r[1]), ("VersionConflictException".into(), 409));
    ok(&r[2]);
    ok(&r[3]);
    assert_eq!(error(&r[4]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[5]), ("InvalidRequestException".into(), 400));
    assert_eq!(ok(&r[6]), &json!({}));
    assert_eq!(ok(&r[7]), &json!({}));
    assert_eq!(error(&r[8]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[9]), ("InvalidRequestException".into(), 400));

    let a = reg.thing("cp-a").unwrap().unwrap();
    assert_eq!(a.attributes, attrs(&[("color", "green")]));
    assert_eq!(a.thing_type_name, None);
    assert_eq!(a.version, version + 2, "two changes");
    assert_eq!(ok(&r[10])["version"], a.version);
    let b = reg.thing("cp-b").unwrap().unwrap();
    assert_eq!(
        b.attributes,
        attrs(&[("only", "x")]),
        "merge false replaces"
    );
    assert_eq!(b.thing_type_name.as_deref(), Some("sensor"));
    assert_eq!(reg.thing("cp-c").unwrap().unwrap().version, 1);
    assert_eq!(
        reg.thing("dev-CP1").unwrap().unwrap().certificates,
        vec![device.certificate_id.clone()]
    );
    assert_eq!(
        reg.certificate_status(&second.certificate_id).unwrap(),
        Some(CertStatus::Active)
    );

    // UpdateCertificate INACTIVE did what Registry::set_certificate_status does.
    assert_eq!(
        reg.certificate_status(&device.certificate_id).unwrap(),
        Some(CertStatus::Inactive)
    );
    assert!(
        live.closed_within(Duration::from_secs(3)).await,
        "the live MQTT connection of a certificate set INACTIVE through boto3 survived"
    );
    assert!(connect(&emu, &device, "dev-CP1").await.is_err());
}

/// Sends one raw HTTP/1.1 request and returns (status, headers in lowercase, body).
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> (u16, String, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn unknown_routes_and_malformed_bodies_get_aws_shaped_errors() {
    logs();
    let emu = start().await;
    emu.registry()
        .put_thing(&thing("raw-1", &[], None))
        .unwrap();
    let addr = emu.api_addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(emu.api_url(), format!("http://{addr}"));

    let (status, head, body) = raw_http(
        addr,
        "POST /dimensions/d1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        head.contains("x-amzn-errortype: unknownoperationexception"),
        "{head}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("POST /dimensions/d1"), "{message}");

    for (payload, names) in [
        (
            "{\"attributePayload\": 5}",
            "attributePayload must be an object",
        ),
        (
            "{\"attributePayload\": {\"attributes\": {\"k\": 1}}}",
            "attributePayload.attributes.k must be a string",
        ),
        (
            "{\"expectedVersion\": \"one\"}",
            "expectedVersion must be a whole number",
        ),
        ("{not json", "not valid JSON"),
        (
            "{\"thingTypeName\": \"t\", \"removeThingType\": true}",
            "not both",
        ),
    ] {
        let (status, head, body) = raw_http(
            addr,
            &format!(
                "PATCH /things/raw-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            ),
        )
        .await;
        assert_eq!(status, 400, "{payload}");
        assert!(
            head.contains("x-amzn-errortype: invalidrequestexception"),
            "{head}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("UpdateThing: "), "{message}");
        assert!(message.contains(names), "{payload}: {message}");
    }
    assert_eq!(emu.registry().thing("raw-1").unwrap().unwrap().version, 1);

    let (status, head, _) = raw_http(
        addr,
        "GET /principals/things HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        head.contains("x-amzn-errortype: invalidrequestexception"),
        "{head}"
    );
    let (status, _, body) = raw_http(
        addr,
        "GET /principals/things HTTP/1.1\r\nHost: x\r\nx-amzn-principal: us-east-1:cognito-id\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("must be a certificate ARN"),
        "{body}"
    );
    let (status, _, _) = raw_http(
        addr,
        "GET /things?maxResults=251 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_api_binds_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmulatorConfig::new(dir.path());
    config.api_bind = "0.0.0.0".parse().unwrap();
    match Emulator::start(config).await {
        Err(e @ EmulatorError::ApiNotLoopback(_)) => {
            assert!(e.to_string().contains("does not check SigV4"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started with the API on 0.0.0.0"),
    }
    let mut config = EmulatorConfig::new(dir.path());
    config.api_bind = "::1".parse().unwrap();
    if let Ok(emu) = Emulator::start(config).await {
        // (Only where the machine has IPv6 loopback.)
        assert_eq!(
            emu.api_url(),
            format!("http://[::1]:{}", emu.api_addr().port())
        );
        emu.shutdown().await;
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN).args(args).output().unwrap()
}

fn cli_json(args: &[&str]) -> Value {
    let out = cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_cli_changes_are_seen_by_boto3_through_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    init_with_fixtures(&dir);
    let claim_id = iotcore_emulator::pki::certificate_id_from_pem(
        &std::fs::read_to_string(dir.join("claim/claim.pem.crt")).unwrap(),
    )
    .unwrap();
    iotcore_emulator::Registry::open(&dir)
        .unwrap()
        .put_thing(&thing("gw_cli", &[("a", "1")], None))
        .unwrap();

    // The words other tests parse (mqtt=, alpn=: spawn parses them) are
    // still there, the API's is appended.
    let mut serve = ServeProcess::spawn(&dir).await;
    let (line, api) = (&serve.line, serve.api_url.clone());
    assert!(api.starts_with("http://127.0.0.1:"), "{line}");
    assert!(line.ends_with(&format!("api={api}")), "{line}");

    let t = cli_json(&[
        "things",
        "update",
        "gw_cli",
        "--attribute",
        "b=2",
        "--attribute",
        "c=3",
        "--remove-attribute",
        "a",
        "--json",
        "-d",
        d,
    ]);
    assert_eq!(t["attributes"], json!({"b": "2", "c": "3"}));
    assert_eq!(t["version"], 2);
    cli_json(&[
        "certs",
        "set-status",
        &claim_id,
        "INACTIVE",
        "--json",
        "-d",
        d,
    ]);

    let out = boto3(
        &api,
        json!([
            {"op": "describe_thing", "args": {"thingName": "gw_cli"}},
            {"op": "describe_certificate", "args": {"certificateId": claim_id}},
            {"op": "update_thing", "args": {"thingName": "gw_cli", "expectedVersion": 2,
              "attributePayload": {"attributes": {"d": "4"}, "merge": true}}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();
    let t = ok(&r[0]);
    assert_eq!(t["attributes"], json!({"b": "2", "c": "3"}));
    assert_eq!(t["version"], 2);
    let c = &ok(&r[1])["certificateDescription"];
    assert_eq!(c["status"], "INACTIVE");
    assert_eq!(c["customerVersion"], 2);
    ok(&r[2]);
    // ...and the other way round.
    let t = cli_json(&["things", "describe", "gw_cli", "--json", "-d", d]);
    assert_eq!(t["attributes"], json!({"b": "2", "c": "3", "d": "4"}));
    assert_eq!(t["version"], 3);

    // The CLI refuses what it cannot do, saying why.
    for (args, says) in [
        (&["things", "update", "gw_cli"][..], "nothing to change"),
        (
            &["things", "update", "nope", "--attribute", "a=1"][..],
            "thing nope not found",
        ),
        (
            &["things", "update", "gw_cli", "--attribute", "a b=1"][..],
            "attribute name",
        ),
        (
            &[
                "things",
                "update",
                "gw_cli",
                "--attribute",
                "a=1",
                "--remove-attribute",
                "a",
            ][..],
            "both set and removed",
        ),
    ] {
        let out = cli(&[args, &["-d", d][..]].concat());
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = cli(&[
        "things",
        "update",
        "gw_cli",
        "--attribute",
        "novalue",
        "-d",
        d,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed KEY=VALUE is a usage error"
    );

    let _ = serve.child.start_kill();
    let _ = serve.child.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_hook_refuses_an_existing_thing_and_its_stderr_is_logged() {
    logs();
    let bin = venv_bin();
    // The fixture, made executable in a temp dir whatever its mode in git.
    let hook_dir = tempfile::tempdir().unwrap();
    let hook = hook_dir.path().join("refuse_existing_thing.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/control_plane/refuse_existing_thing.py"),
        &hook,
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let emu = start_with(|c| {
        // `#!/usr/bin/env python3` finds the virtualenv's, which has boto3.
        c.hook_environment = vec![("PATH".into(), path)];
        // Importing boto3 on a loaded CI machine can take seconds; the
        // default stays AWS's 5 s.
        c.hook_timeout = Duration::from_secs(20);
    })
    .await;
    let body = std::fs::read_to_string(fixtures().join("templates/prod.json")).unwrap();
    emu.registry()
        .create_template("hooked", &body, true, Some(hook.to_str().unwrap()))
        .unwrap();
    emu.registry()
        .put_thing(&thing("dev-EXIST", &[], None))
        .unwrap();
    let topic = register_topic("hooked");
    let mut c = claim_client(&emu, "claim-hook", "hooked").await;

    let (refused, token) = create_from_csr(&mut c).await;
    let (accepted, body) = c
        .call(
            &topic,
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "EXIST"}}),
        )
        .await;
    assert!(!accepted, "{body}");
    assert_eq!(body["errorCode"], "AccessDenied");
    assert_eq!(body["statusCode"], 403);
    assert!(emu
        .registry()
        .thing("dev-EXIST")
        .unwrap()
        .unwrap()
        .certificates
        .is_empty());
    assert_eq!(
        emu.registry()
            .certificate_status(&refused.certificate_id)
            .unwrap(),
        Some(CertStatus::PendingActivation)
    );

    let (allowed, token) = create_from_csr(&mut c).await;
    let (accepted, body) = c
        .call(
            &topic,
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "NEW1"}}),
        )
        .await;
    assert!(accepted, "{body}");
    assert_eq!(body["thingName"], "dev-NEW1");
    assert_eq!(
        emu.registry()
            .thing("dev-NEW1")
            .unwrap()
            .unwrap()
            .certificates,
        vec![allowed.certificate_id.clone()]
    );

    // The hook's stderr, in the log: why it refused at warn, why it allowed
    // at info, prefixed with the template; and boto3 asked this emulator.
    let log = log_text();
    let line_with = |text: &str| {
        log.lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no log line with {text:?} in:\n{log}"))
            .to_owned()
    };
    let refusal = line_with("refusing: thing dev-EXIST exists (version 1)");
    assert!(refusal.contains("WARN"), "{refusal}");
    assert!(
        refusal.contains("pre-provisioning hook of template hooked: "),
        "{refusal}"
    );
    let allowance = line_with("allowing: thing dev-NEW1 is new");
    assert!(allowance.contains("INFO"), "{allowance}");
    assert!(allowance.contains("template hooked"), "{allowance}");
    line_with(&format!("asking {} in {REGION}", emu.api_url()));
}

/// A template naming thing groups, a thing type and a billing group:
/// RegisterThing is refused with AWS's error shape and registers nothing
/// while one of them is missing; once boto3 made them (CreateThingGroup,
/// CreateThingType, CreateBillingGroup) the same token registers the thing
/// in them. Describe, List and Delete of each through boto3, their
/// exceptions, and CreateThing refusing a type that does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn register_thing_needs_the_groups_type_and_billing_group_boto3_makes() {
    logs();
    let emu = start().await;
    let template = json!({
        "Parameters": {"SerialNumber": {"Type": "String"}, "Site": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": {"Fn::Join": ["-", ["grp", {"Ref": "SerialNumber"}]]},
                "ThingTypeName": "sensor-type",
                "BillingGroup": "billing-a",
                "ThingGroups": ["fleet", {"Fn::Join": ["-", ["site", {"Ref": "Site"}]]}]
            }},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
        }
    });
    emu.registry()
        .create_template("grouped", &template.to_string(), true, None)
        .unwrap();
    let mut c = claim_client(&emu, "claim-grouped", "grouped").await;
    let (device, token) = create_from_csr(&mut c).await;
    let request = json!({"certificateOwnershipToken": token,
                         "parameters": {"SerialNumber": "G1", "Site": "north"}});
    let refused = |body: &Value, missing: &str| {
        assert_eq!(body["statusCode"], 400, "{body}");
        assert_eq!(
            body["errorCode"], "ResourceRegistrationFailureException",
            "{body}"
        );
        let message = body["errorMessage"].as_str().unwrap();
        assert!(message.contains(missing), "{message}");
        assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    };
    let nothing_registered = || {
        assert!(emu.registry().thing("grp-G1").unwrap().is_none());
        let cert = emu
            .registry()
            .certificate(&device.certificate_id)
            .unwrap()
            .unwrap();
        assert_eq!(cert.status, CertStatus::PendingActivation);
        assert!(
            cert.policies.is_empty() && cert.things.is_empty(),
            "{cert:?}"
        );
    };

    let (accepted, body) = c.call(&register_topic("grouped"), &request).await;
    assert!(!accepted);
    refused(&body, "thing group fleet");
    nothing_registered();

    // boto3 makes them one by one; each registration names the next missing.
    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "create_thing_group", "args": {"thingGroupName": "fleet",
              "thingGroupProperties": {"thingGroupDescription": "all gateways",
                                       "attributePayload": {"attributes": {"tier": "1"}}},
              "tags": [{"Key": "team", "Value": "iot"}]}},
            {"op": "create_thing_group", "args": {"thingGroupName": "site-north",
              "parentGroupName": "fleet"}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();
    let fleet = ok(&r[0]);
    assert_eq!(fleet["thingGroupName"], "fleet");
    assert_eq!(
        fleet["thingGroupArn"],
        format!("arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/fleet")
    );
    assert_eq!(fleet["thingGroupId"].as_str().unwrap().len(), 36);
    ok(&r[1]);
    let (accepted, body) = c.call(&register_topic("grouped"), &request).await;
    assert!(!accepted);
    refused(&body, "thing type sensor-type");
    nothing_registered();

    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "create_thing_type", "args": {"thingTypeName": "sensor-type",
              "thingTypeProperties": {"thingTypeDescription": "a sensor",
                                      "searchableAttributes": ["serial"]}}},
            {"op": "deprecate_thing_type", "args": {"thingTypeName": "sensor-type"}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();
    assert_eq!(
        ok(&r[0])["thingTypeArn"],
        format!("arn:aws:iot:{REGION}:{ACCOUNT}:thingtype/sensor-type")
    );
    ok(&r[1]);
    let (accepted, body) = c.call(&register_topic("grouped"), &request).await;
    assert!(!accepted);
    refused(&body, "deprecated");
    nothing_registered();

    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "deprecate_thing_type", "args": {"thingTypeName": "sensor-type",
                                                    "undoDeprecate": true}},
        ]),
    )
    .await;
    ok(&out["results"][0]);
    let (accepted, body) = c.call(&register_topic("grouped"), &request).await;
    assert!(!accepted);
    refused(&body, "billing group billing-a");
    nothing_registered();

    let out = boto3(
        &emu.api_url(),
        json!([{"op": "create_billing_group", "args": {"billingGroupName": "billing-a",
                 "billingGroupProperties": {"billingGroupDescription": "plant A"}}}]),
    )
    .await;
    assert_eq!(
        ok(&out["results"][0])["billingGroupArn"],
        format!("arn:aws:iot:{REGION}:{ACCOUNT}:billinggroup/billing-a")
    );
    let (accepted, body) = c.call(&register_topic("grouped"), &request).await;
    assert!(accepted, "{body}");
    assert_eq!(body["thingName"], "grp-G1");
    let thing = emu.registry().thing("grp-G1").unwrap().unwrap();
    assert_eq!(thing.thing_groups, ["fleet", "site-north"]);
    assert_eq!(thing.thing_type_name.as_deref(), Some("sensor-type"));
    assert_eq!(thing.billing_group.as_deref(), Some("billing-a"));
    assert_eq!(thing.certificates, vec![device.certificate_id.clone()]);
    assert_eq!(
        emu.registry()
            .certificate_status(&device.certificate_id)
            .unwrap(),
        Some(CertStatus::Active)
    );

    // Describe and List, and the exceptions boto3 raises.
    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "describe_thing_group", "args": {"thingGroupName": "site-north"}},
            {"op": "describe_thing_group", "args": {"thingGroupName": "fleet"}},
            {"paginate": "list_thing_groups", "pageSize": 1},
            {"op": "list_thing_groups", "args": {"parentGroup": "fleet"}},
            {"op": "list_thing_groups", "args": {"namePrefixFilter": "site-"}},
            {"op": "describe_thing_type", "args": {"thingTypeName": "sensor-type"}},
            {"paginate": "list_thing_types", "pageSize": 1},
            {"op": "describe_billing_group", "args": {"billingGroupName": "billing-a"}},
            {"paginate": "list_billing_groups", "pageSize": 1},
            {"op": "describe_thing", "args": {"thingName": "grp-G1"}},
            {"op": "describe_thing_group", "args": {"thingGroupName": "nope"}},
            {"op": "describe_thing_type", "args": {"thingTypeName": "nope"}},
            {"op": "describe_billing_group", "args": {"billingGroupName": "nope"}},
            {"op": "create_thing_group", "args": {"thingGroupName": "fleet",
              "thingGroupProperties": {"thingGroupDescription": "other"}}},
            {"op": "create_thing_group", "args": {"thingGroupName": "fleet",
              "thingGroupProperties": {"thingGroupDescription": "all gateways",
                                       "attributePayload": {"attributes": {"tier": "1"}}}}},
            {"op": "create_thing_group", "args": {"thingGroupName": "orphan",
                                                  "parentGroupName": "nope"}},
            {"op": "create_thing", "args": {"thingName": "typed", "thingTypeName": "nope"}},
            {"op": "create_thing", "args": {"thingName": "billed", "billingGroupName": "nope"}},
            {"op": "update_thing", "args": {"thingName": "grp-G1", "thingTypeName": "nope"}},
            {"op": "create_thing_group", "args": {"thingGroupName": "bad name"}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();
    let north = ok(&r[0]);
    assert_eq!(north["version"], 1);
    assert_eq!(north["thingGroupMetadata"]["parentGroupName"], "fleet");
    assert_eq!(
        north["thingGroupMetadata"]["rootToParentThingGroups"],
        json!([{"groupName": "fleet",
                "groupArn": format!("arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/fleet")}])
    );
    let f = ok(&r[1]);
    assert_eq!(f["thingGroupId"], fleet["thingGroupId"]);
    assert_eq!(
        f["thingGroupProperties"],
        json!({"thingGroupDescription": "all gateways",
               "attributePayload": {"attributes": {"tier": "1"}}})
    );
    assert!(f["thingGroupMetadata"]["creationDate"].as_f64().unwrap() > 0.0);
    let (groups, n) = pages(&r[2], "thingGroups");
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["groupName"].as_str().unwrap())
        .collect();
    assert_eq!((names, n), (vec!["fleet", "site-north"], 2));
    assert_eq!(ok(&r[3])["thingGroups"][0]["groupName"], "site-north");
    assert_eq!(ok(&r[3])["thingGroups"].as_array().unwrap().len(), 1);
    assert_eq!(ok(&r[4])["thingGroups"].as_array().unwrap().len(), 1);
    let t = ok(&r[5]);
    assert_eq!(
        t["thingTypeProperties"],
        json!({"thingTypeDescription": "a sensor", "searchableAttributes": ["serial"]})
    );
    assert_eq!(t["thingTypeMetadata"]["deprecated"], false);
    let (types, _) = pages(&r[6], "thingTypes");
    assert_eq!(types.len(), 1);
    assert_eq!(types[0]["thingTypeName"], "sensor-type");
    let b = ok(&r[7]);
    assert_eq!(
        b["billingGroupProperties"]["billingGroupDescription"],
        "plant A"
    );
    assert_eq!(b["version"], 1);
    let (billing, _) = pages(&r[8], "billingGroups");
    assert_eq!(billing[0]["groupName"], "billing-a");
    let d = ok(&r[9]);
    assert_eq!(d["thingTypeName"], "sensor-type");
    assert_eq!(d["billingGroupName"], "billing-a");
    for i in [10, 11, 12] {
        assert_eq!(error(&r[i]), ("ResourceNotFoundException".into(), 404));
    }
    assert_eq!(
        error(&r[13]),
        ("ResourceAlreadyExistsException".into(), 409)
    );
    assert_eq!(ok(&r[14])["thingGroupId"], fleet["thingGroupId"]);
    assert_eq!(error(&r[15]), ("InvalidRequestException".into(), 400));
    assert_eq!(error(&r[16]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[17]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[18]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(error(&r[19]), ("InvalidRequestException".into(), 400));
    assert!(emu.registry().thing("typed").unwrap().is_none());
    assert!(emu.registry().thing("billed").unwrap().is_none());

    // Delete: a parent with a child and a type still in use are refused; a
    // group deleted leaves its things; deleting it again is no error.
    let out = boto3(
        &emu.api_url(),
        json!([
            {"op": "delete_thing_group", "args": {"thingGroupName": "fleet"}},
            {"op": "delete_thing_group", "args": {"thingGroupName": "site-north",
                                                  "expectedVersion": 5}},
            {"op": "delete_thing_group", "args": {"thingGroupName": "site-north"}},
            {"op": "delete_thing_group", "args": {"thingGroupName": "site-north"}},
            {"op": "delete_thing_type", "args": {"thingTypeName": "sensor-type"}},
            {"op": "deprecate_thing_type", "args": {"thingTypeName": "sensor-type"}},
            {"op": "delete_thing_type", "args": {"thingTypeName": "sensor-type"}},
            {"op": "update_thing", "args": {"thingName": "grp-G1", "removeThingType": true}},
            {"op": "delete_thing_type", "args": {"thingTypeName": "sensor-type"}},
            {"op": "delete_thing_type", "args": {"thingTypeName": "sensor-type"}},
            {"op": "delete_billing_group", "args": {"billingGroupName": "billing-a"}},
            {"op": "delete_billing_group", "args": {"billingGroupName": "billing-a"}},
            {"op": "describe_thing_group", "args": {"thingGroupName": "site-north"}},
        ]),
    )
    .await;
    let r = out["results"].as_array().unwrap();
    assert_eq!(error(&r[0]), ("InvalidRequestException".into(), 400));
    assert_eq!(error(&r[1]), ("VersionConflictException".into(), 409));
    assert_eq!(ok(&r[2]), &json!({}));
    assert_eq!(ok(&r[3]), &json!({}));
    assert_eq!(error(&r[4]), ("InvalidRequestException".into(), 400));
    ok(&r[5]);
    assert_eq!(error(&r[6]), ("InvalidRequestException".into(), 400));
    ok(&r[7]);
    assert_eq!(ok(&r[8]), &json!({}));
    assert_eq!(error(&r[9]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(ok(&r[10]), &json!({}));
    assert_eq!(ok(&r[11]), &json!({}));
    assert_eq!(error(&r[12]), ("ResourceNotFoundException".into(), 404));
    let thing = emu.registry().thing("grp-G1").unwrap().unwrap();
    assert_eq!(thing.thing_groups, ["fleet"]);
    assert_eq!(thing.thing_type_name, None);
    assert_eq!(thing.billing_group, None);
}

/// CreatePolicy over HTTP, as boto3's `create_policy` sends it.
async fn create_policy_http(
    addr: std::net::SocketAddr,
    name: &str,
    document: &str,
) -> (u16, String, Value) {
    let body = json!({ "policyDocument": document }).to_string();
    raw_http(
        addr,
        &format!(
            "POST /policies/{name} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn create_policy_refuses_unknown_condition_parts_and_accepts_conditions() {
    logs();
    let emu = start().await;
    let addr = emu.api_addr();
    let statements = |condition: &str| {
        format!(
            r#"{{"Version": "2012-10-17", "Statement": [
                {{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}},
                {{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*", "Condition": {condition}}}]}}"#
        )
    };
    for (condition, names) in [
        (
            r#"{"StringEqualz": {"iot:ClientId": "a"}}"#,
            "Statement[1].Condition.StringEqualz: unknown condition operator \"StringEqualz\"; accepted: StringEquals, StringNotEquals",
        ),
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAtached": "true"}}"#,
            "Statement[1].Condition.Bool.iot:Connection.Thing.IsAtached: unknown condition key",
        ),
    ] {
        let (status, head, body) =
            create_policy_http(addr, "typo", &statements(condition)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            head.contains("x-amzn-errortype: malformedpolicyexception"),
            "{head}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
    }
    assert!(emu.registry().policy("typo").unwrap().is_none());

    // AWS's own example is accepted, and a device it is attached to
    // connects under its thing's name only.
    let good = statements(r#"{"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}"#);
    let (status, _, body) = create_policy_http(addr, "attached", &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policyName"], "attached");
    assert_eq!(
        body["policyArn"],
        "arn:aws:iot:us-east-1:123456789012:policy/attached"
    );
    assert_eq!(body["policyVersionId"], "1");
    let (status, head, _) = create_policy_http(addr, "attached", &good).await;
    assert_eq!(status, 409);
    assert!(
        head.contains("x-amzn-errortype: resourcealreadyexistsexception"),
        "{head}"
    );
    let (status, _, got) = raw_http(
        addr,
        "GET /policies/attached HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["policyDocument"], good.as_str());

    // The real boto3: its request is the one above, its exceptions the
    // modeled ones.
    let v = boto3(
        &emu.api_url(),
        json!([
            {"op": "create_policy", "args": {"policyName": "typo-boto3",
                "policyDocument": statements(r#"{"StringEqualz": {"iot:ClientId": "a"}}"#)}},
            {"op": "create_policy", "args": {"policyName": "by-boto3", "policyDocument": &good,
                "tags": [{"Key": "k", "Value": "v"}]}},
            {"op": "create_policy", "args": {"policyName": "by-boto3", "policyDocument": &good}},
            {"op": "get_policy", "args": {"policyName": "by-boto3"}},
            {"op": "get_policy", "args": {"policyName": "nope"}},
        ]),
    )
    .await;
    let r = v["results"].as_array().unwrap();
    assert_eq!(error(&r[0]), ("MalformedPolicyException".into(), 400));
    assert!(
        r[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Statement[1].Condition.StringEqualz"),
        "{}",
        r[0]
    );
    assert_eq!(
        ok(&r[1])["policyArn"],
        "arn:aws:iot:us-east-1:123456789012:policy/by-boto3"
    );
    assert_eq!(error(&r[2]), ("ResourceAlreadyExistsException".into(), 409));
    assert_eq!(ok(&r[3])["policyDocument"], good.as_str());
    assert_eq!(error(&r[4]), ("ResourceNotFoundException".into(), 404));

    let cred = emu.create_credential("gw_9", &["attached"]).unwrap();
    emu.registry().put_thing(&thing("gw_9", &[], None)).unwrap();
    emu.registry()
        .attach_thing("gw_9", &cred.certificate_id)
        .unwrap();
    connect(&emu, &cred, "gw_9")
        .await
        .expect("the thing connects");
    let err = connect(&emu, &cred, "gw_10").await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
}

/// Certificate providers through the real boto3: one made with the CLI's
/// registry call is listed, described, updated and deleted as on AWS;
/// CreateCertificateProvider, and an update naming another Lambda function,
/// are refused naming the CLI command, since the emulator runs a local
/// command in the function's place.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_sees_updates_and_deletes_the_certificate_provider() {
    let emu = start().await;
    let arn = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:local-ca");
    let ops = vec!["CreateCertificateFromCsr".to_owned()];
    emu.registry()
        .create_certificate_provider("local-ca", &["/bin/false".to_owned()], &arn, &ops)
        .unwrap();
    let other = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:other");
    let v = boto3(
        &emu.api_url(),
        json!([
            {"op": "list_certificate_providers"},
            {"op": "describe_certificate_provider", "args": {"certificateProviderName": "local-ca"}},
            {"op": "update_certificate_provider", "args": {"certificateProviderName": "local-ca",
                "lambdaFunctionArn": &arn, "accountDefaultForOperations": ["CreateCertificateFromCsr"]}},
            {"op": "update_certificate_provider", "args": {"certificateProviderName": "local-ca",
                "lambdaFunctionArn": &other}},
            {"op": "update_certificate_provider", "args": {"certificateProviderName": "local-ca",
                "accountDefaultForOperations": ["CreateKeysAndCertificate"]}},
            {"op": "create_certificate_provider", "args": {"certificateProviderName": "second",
                "lambdaFunctionArn": &other, "accountDefaultForOperations": ["CreateCertificateFromCsr"]}},
            {"op": "describe_certificate_provider", "args": {"certificateProviderName": "local-ca"}},
            {"op": "describe_certificate_provider", "args": {"certificateProviderName": "nope"}},
            {"op": "delete_certificate_provider", "args": {"certificateProviderName": "local-ca"}},
            {"op": "delete_certificate_provider", "args": {"certificateProviderName": "local-ca"}},
            {"op": "list_certificate_providers"},
        ]),
    )
    .await;
    let r = v["results"].as_array().unwrap();
    let provider_arn = format!("arn:aws:iot:{REGION}:{ACCOUNT}:certificateprovider/local-ca");
    assert_eq!(
        ok(&r[0])["certificateProviders"],
        json!([{"certificateProviderName": "local-ca", "certificateProviderArn": provider_arn}])
    );
    let d = ok(&r[1]);
    assert_eq!(d["certificateProviderArn"], provider_arn.as_str());
    assert_eq!(d["lambdaFunctionArn"], arn.as_str());
    assert_eq!(
        d["accountDefaultForOperations"],
        json!(["CreateCertificateFromCsr"])
    );
    assert!(d["creationDate"].as_f64().unwrap() > 1.7e9, "{d}");
    assert_eq!(ok(&r[2])["certificateProviderArn"], provider_arn.as_str());
    assert_eq!(error(&r[3]), ("InvalidRequestException".into(), 400));
    let m = r[3]["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("certificate-providers create local-ca --command"),
        "{m}"
    );
    assert_eq!(error(&r[4]), ("InvalidRequestException".into(), 400));
    assert_eq!(error(&r[5]), ("InvalidRequestException".into(), 400));
    let m = r[5]["error"]["message"].as_str().unwrap();
    assert!(m.contains("certificate-providers create second"), "{m}");
    // The refused calls changed nothing.
    assert_eq!(ok(&r[6])["lambdaFunctionArn"], arn.as_str());
    assert_eq!(
        ok(&r[6])["accountDefaultForOperations"],
        json!(["CreateCertificateFromCsr"])
    );
    assert_eq!(error(&r[7]), ("ResourceNotFoundException".into(), 404));
    ok(&r[8]);
    assert_eq!(error(&r[9]), ("ResourceNotFoundException".into(), 404));
    assert_eq!(ok(&r[10])["certificateProviders"], json!([]));
    assert!(emu.registry().certificate_providers().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_create_policy_of_one_name_creates_it_once() {
    logs();
    let emu = start().await;
    let addr = emu.api_addr();
    let document = |i: usize| {
        format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/t{i}"}}]}}"#
        )
    };
    let creates: Vec<_> = (0..8)
        .map(|i| {
            let doc = document(i);
            tokio::spawn(async move {
                let (status, head, _) = create_policy_http(addr, "raced", &doc).await;
                (i, status, head)
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in creates {
        results.push(c.await.unwrap());
    }
    let won: Vec<usize> = results
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .map(|(i, _, _)| *i)
        .collect();
    assert_eq!(won.len(), 1, "exactly one create succeeds: {won:?}");
    for (_, status, head) in results.iter().filter(|(_, s, _)| *s != 200) {
        assert_eq!(*status, 409, "{head}");
        assert!(
            head.contains("x-amzn-errortype: resourcealreadyexistsexception"),
            "{head}"
        );
    }
    // The winner's document is the one kept: no later create replaced it.
    let stored = emu.registry().policy("raced").unwrap().unwrap();
    assert_eq!(stored.document, document(won[0]));
}

#[tokio::test]
async fn insert_policy_never_replaces() {
    // The race above is narrow and rarely lost in a test; this is the
    // contract CreatePolicy relies on, checked deterministically.
    let emu = start().await;
    let doc = |topic: &str| {
        format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/{topic}"}}]}}"#
        )
    };
    emu.registry().insert_policy("once", &doc("a")).unwrap();
    let err = emu.registry().insert_policy("once", &doc("b")).unwrap_err();
    assert!(
        matches!(err, iotcore_emulator::RegistryError::AlreadyExists { kind: "policy", ref name } if name == "once"),
        "{err:?}"
    );
    assert_eq!(
        emu.registry().policy("once").unwrap().unwrap().document,
        doc("a")
    );
    // The admin CLI's create still replaces.
    emu.registry().create_policy("once", &doc("b")).unwrap();
    assert_eq!(
        emu.registry().policy("once").unwrap().unwrap().document,
        doc("b")
    );
}
