//! The binary: init, serve, and registry commands acting on a live server.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use iotcore_emulator::Credential;
use serde_json::{json, Value};

fn run(args: &[&str]) -> Value {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The data directory holds the CA key and the token key: `init` creates
/// it 0700 and the registry 0600, and the SQLite files `serve` adds beside
/// the registry (WAL, shared memory) are 0600 too.
#[tokio::test]
async fn data_directory_and_registry_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/data");
    init_with_fixtures(&dir);
    assert_eq!(mode(&dir), 0o700);
    let db = dir.join("registry.sqlite3");
    assert_eq!(mode(&db), 0o600);
    let serve = ServeProcess::spawn(&dir).await;
    // A write through the running server's registry.
    let claim_id =
        iotcore_emulator::pki::certificate_id_from_pem(&read(&dir.join("claim/claim.pem.crt")))
            .unwrap();
    run(&[
        "certs",
        "set-status",
        &claim_id,
        "ACTIVE",
        "-d",
        dir.to_str().unwrap(),
    ]);
    let mut companions = 0;
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = dir.join(format!("registry.sqlite3{suffix}"));
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            companions += 1;
        }
    }
    assert!(
        companions > 0,
        "no WAL files beside the registry while serving"
    );
    assert_eq!(mode(&db), 0o600);
    drop(serve);
}

#[tokio::test]
async fn init_serve_provision_and_set_status_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    init_with_fixtures(&dir);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let key_path = dir.join("claim/claim.private.pem.key");
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let claim_pem = read(&dir.join("claim/claim.pem.crt"));
    let claim_id = iotcore_emulator::pki::certificate_id_from_pem(&claim_pem).unwrap();
    let claim = Credential {
        certificate_id: claim_id.clone(),
        certificate_pem: claim_pem,
        private_key_pem: read(&key_path),
    };
    let root_ca = read(&dir.join("root-ca.pem"));

    let policies = run(&["policies", "list", "--json", "-d", d]);
    let names: Vec<&str> = policies
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy_name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"claim") && names.contains(&"device"));
    let cert = run(&["certs", "describe", &claim_id, "--json", "-d", d]);
    assert_eq!(cert["status"], "ACTIVE");
    assert_eq!(cert["policies"], json!(["claim"]));

    let mut serve = ServeProcess::spawn(&dir).await;
    let addr = serve.mqtt;

    let mut c = connect_tls(addr, client_tls(&root_ca, Some(&claim), false), "claim-cli")
        .await
        .unwrap();
    c.subscribe_responses(CSR_TOPIC).await;
    c.subscribe_responses(&register_topic("prod")).await;
    let (device, token) = create_from_csr(&mut c).await;
    let (ok, body) = c
        .call(
            &register_topic("prod"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "CLI1"}}),
        )
        .await;
    assert!(ok, "{body}");
    let things = run(&["things", "list", "--json", "-d", d]);
    assert_eq!(things[0]["thing_name"], "dev-CLI1");

    let mut dev = connect_tls(addr, client_tls(&root_ca, Some(&device), false), "dev-CLI1")
        .await
        .unwrap();
    run(&[
        "certs",
        "set-status",
        &device.certificate_id,
        "INACTIVE",
        "-d",
        d,
    ]);
    assert!(
        dev.closed_within(Duration::from_millis(1500)).await,
        "live connection survived INACTIVE"
    );
    assert!(
        connect_tls(addr, client_tls(&root_ca, Some(&device), false), "dev-CLI1")
            .await
            .is_err()
    );

    let pid = serve.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(WAIT, serve.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exit.success(),
        "serve exited with {exit}: {}",
        serve.stderr()
    );
}

#[test]
fn templates_create_validates_and_describes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let fx = fixtures();
    init_with_fixtures(tmp.path());
    let file = fx.join("templates/prod.json");
    run(&[
        "templates",
        "create",
        "extra",
        file.to_str().unwrap(),
        "--hook",
        "/bin/true",
        "-d",
        d,
    ]);
    let t = run(&["templates", "describe", "extra", "--json", "-d", d]);
    assert_eq!(t["pre_provisioning_hook"], "/bin/true");
    assert_eq!(t["enabled"], true);
    // Policies: create from a file and attach to the claim certificate.
    let claim_id = iotcore_emulator::pki::certificate_id_from_pem(&read(
        &tmp.path().join("claim/claim.pem.crt"),
    ))
    .unwrap();
    let pol = fx.join("policies/pubsub.json");
    run(&[
        "policies",
        "create",
        "extra-policy",
        pol.to_str().unwrap(),
        "-d",
        d,
    ]);
    run(&["policies", "attach", "extra-policy", &claim_id, "-d", d]);
    let cert = run(&["certs", "describe", &claim_id, "--json", "-d", d]);
    assert_eq!(cert["policies"], json!(["claim", "extra-policy"]));
    let certs = run(&["certs", "list", "--json", "-d", d]);
    assert_eq!(certs.as_array().unwrap().len(), 1);
    // A bad name is refused with a message.
    let out = std::process::Command::new(BIN)
        .args([
            "templates",
            "create",
            "bad name!",
            file.to_str().unwrap(),
            "-d",
            d,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("template name"));
}

#[tokio::test]
async fn serve_flags_cert_validity_response_fault_and_no_report_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    init_with_fixtures(&dir);

    // Bad values are usage errors.
    for bad in [
        &["--response-fault", "nonsense"][..],
        &["--response-fault", "drop-responses:x"][..],
        &["--cert-validity", "0"][..],
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", d])
            .args(SERVE_PORTS_0)
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!out.stderr.is_empty());
    }

    let mut serve = ServeProcess::spawn_with(
        &dir,
        &[
            "--cert-validity",
            "30",
            "--no-report-rule",
            "--response-fault",
            "throttle-first:1",
        ],
    )
    .await;
    let addr = serve.mqtt;
    let claim = Credential {
        certificate_id: String::new(),
        certificate_pem: read(&dir.join("claim/claim.pem.crt")),
        private_key_pem: read(&dir.join("claim/claim.private.pem.key")),
    };
    let root_ca = read(&dir.join("root-ca.pem"));
    let mut c = connect_tls(
        addr,
        client_tls(&root_ca, Some(&claim), false),
        "claim-flags",
    )
    .await
    .unwrap();
    c.subscribe_responses(CSR_TOPIC).await;
    let (ok, body) = c
        .call(
            CSR_TOPIC,
            &json!({"certificateSigningRequest": p256_csr().1}),
        )
        .await;
    assert!(!ok);
    assert_eq!(body["errorCode"], "ThrottlingException", "{body}");
    let (device, _) = create_from_csr(&mut c).await;
    let der = pem::parse(&device.certificate_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let v = cert.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 33);
    let _ = serve.child.start_kill();
    let _ = serve.child.wait().await;
}

/// `serve` refuses a client that sends no SNI (one connecting by IP
/// address) on both listeners, as AWS's endpoints do; `--allow-no-sni`
/// serves it.
#[tokio::test]
async fn serve_requires_sni_unless_allow_no_sni() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_with_fixtures(&dir);
    let claim = Credential {
        certificate_id: String::new(),
        certificate_pem: read(&dir.join("claim/claim.pem.crt")),
        private_key_pem: read(&dir.join("claim/claim.private.pem.key")),
    };
    let root_ca = read(&dir.join("root-ca.pem"));
    for allow in [false, true] {
        let extra: &[&str] = if allow { &["--allow-no-sni"] } else { &[] };
        let mut serve = ServeProcess::spawn_with(&dir, extra).await;
        for (addr, alpn) in [(serve.mqtt, false), (serve.alpn, true)] {
            let tls = || client_tls(&root_ca, Some(&claim), alpn);
            let by_ip = connect_tls_host(addr, "127.0.0.1", tls(), "claim-ip").await;
            assert_eq!(by_ip.is_ok(), allow, "allow {allow}, {addr}: {by_ip:?}");
            connect_tls(addr, tls(), "claim-name")
                .await
                .unwrap_or_else(|e| panic!("allow {allow}, {addr} by name: {e}"));
        }
        let _ = serve.child.start_kill();
        let _ = serve.child.wait().await;
    }
}

/// `init` creates the thing groups the repository's templates name (and
/// says so), and says which names a template builds from its parameters;
/// RegisterThing through `serve` is refused until such a group exists, and
/// succeeds once `thing-groups create` made it; the admin commands of thing
/// groups, thing types and billing groups.
#[tokio::test]
async fn init_creates_the_groups_templates_name_and_the_cli_manages_them() {
    let tmp = tempfile::tempdir().unwrap();

    // The repository's own policies and templates (init's defaults).
    let repo = tmp.path().join("repo");
    let out = bin_ok([OsStr::new("init"), repo.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for g in [
        "gateways",
        "gateways-plant-a",
        "gateways-plant-b",
        "gateways-unassigned",
    ] {
        assert!(
            stdout.contains(&format!(
                "thing group {g} created (named by template ProdTemplate)"
            )),
            "{stdout}"
        );
    }
    let r = repo.to_str().unwrap();
    let groups = run(&["thing-groups", "list", "--json", "-d", r]);
    let names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["thing_group_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "gateways",
            "gateways-plant-a",
            "gateways-plant-b",
            "gateways-unassigned"
        ]
    );
    // Again: nothing new, and it says so.
    let out = bin_ok([OsStr::new("init"), repo.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("thing group gateways exists (named by template ProdTemplate)"),
        "{stdout}"
    );
    assert_eq!(
        run(&["thing-groups", "list", "--json", "-d", r])
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // A template whose group is built from a parameter.
    let templates = tmp.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("sited.json"),
        json!({
            "Parameters": {"SerialNumber": {"Type": "String"}, "Site": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                    "ThingName": {"Ref": "SerialNumber"},
                    "ThingTypeName": "gw-type",
                    "ThingGroups": ["all", {"Fn::Sub": "site-${Site}"}]
                }},
                "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
                "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
            }
        })
        .to_string(),
    )
    .unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    let out = bin_ok([
        OsStr::new("init"),
        dir.as_os_str(),
        OsStr::new("--policies"),
        fixtures().join("policies").as_os_str(),
        OsStr::new("--templates"),
        templates.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("thing group all created (named by template sited)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("thing type gw-type created (named by template sited)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "template sited builds a name from its parameters at Resources.thing.Properties.ThingGroups[1]: not created"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("iotcore-emulator thing-groups create NAME"),
        "{stdout}"
    );

    let mut serve = ServeProcess::spawn(&dir).await;
    let claim = Credential {
        certificate_id: String::new(),
        certificate_pem: read(&dir.join("claim/claim.pem.crt")),
        private_key_pem: read(&dir.join("claim/claim.private.pem.key")),
    };
    let root_ca = read(&dir.join("root-ca.pem"));
    let mut c = connect_tls(
        serve.mqtt,
        client_tls(&root_ca, Some(&claim), false),
        "claim-sited",
    )
    .await
    .unwrap();
    c.subscribe_responses(CSR_TOPIC).await;
    c.subscribe_responses(&register_topic("sited")).await;
    let (_, token) = create_from_csr(&mut c).await;
    let request = json!({"certificateOwnershipToken": token,
                         "parameters": {"SerialNumber": "S1", "Site": "north"}});
    let (ok, body) = c.call(&register_topic("sited"), &request).await;
    assert!(!ok);
    assert_eq!(
        body,
        json!({"statusCode": 400, "errorCode": "ResourceRegistrationFailureException",
               "errorMessage": "thing group site-north named by the template does not exist"})
    );
    assert!(run(&["things", "list", "--json", "-d", d])
        .as_array()
        .unwrap()
        .is_empty());

    let made = run(&[
        "thing-groups",
        "create",
        "site-north",
        "--parent",
        "all",
        "--description",
        "the north site",
        "--attribute",
        "region=n",
        "--json",
        "-d",
        d,
    ]);
    assert_eq!(made["parent_group_name"], "all");
    assert_eq!(made["attributes"], json!({"region": "n"}));
    let (ok, body) = c.call(&register_topic("sited"), &request).await;
    assert!(ok, "{body}");
    let thing = run(&["things", "describe", "S1", "--json", "-d", d]);
    assert_eq!(thing["thing_groups"], json!(["all", "site-north"]));
    assert_eq!(thing["thing_type_name"], "gw-type");
    let _ = serve.child.start_kill();
    let _ = serve.child.wait().await;

    // The admin commands.
    let g = run(&["thing-groups", "describe", "site-north", "--json", "-d", d]);
    assert_eq!(g["description"], "the north site");
    let fails = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(fails(&["-d", d, "thing-groups", "delete", "all"]).contains("child groups"));
    assert!(fails(&["-d", d, "thing-groups", "describe", "nope"]).contains("not found"));
    assert_eq!(
        run(&["thing-groups", "delete", "site-north", "--json", "-d", d])["deleted"],
        true
    );
    assert_eq!(
        run(&["thing-groups", "delete", "site-north", "--json", "-d", d])["deleted"],
        false
    );
    let thing = run(&["things", "describe", "S1", "--json", "-d", d]);
    assert_eq!(thing["thing_groups"], json!(["all"]));

    assert!(fails(&["-d", d, "thing-types", "delete", "gw-type"]).contains("not deprecated"));
    let t = run(&["thing-types", "deprecate", "gw-type", "--json", "-d", d]);
    assert!(t["deprecated_at"].is_i64(), "{t}");
    assert!(fails(&["-d", d, "thing-types", "delete", "gw-type"]).contains("S1"));
    let t = run(&[
        "thing-types",
        "deprecate",
        "gw-type",
        "--undo",
        "--json",
        "-d",
        d,
    ]);
    assert!(t["deprecated_at"].is_null(), "{t}");
    let types = run(&["thing-types", "list", "--json", "-d", d]);
    assert_eq!(types[0]["thing_type_name"], "gw-type");
    let t = run(&[
        "thing-types",
        "create",
        "spare",
        "--description",
        "unused",
        "--searchable-attribute",
        "serial",
        "--json",
        "-d",
        d,
    ]);
    assert_eq!(t["searchable_attributes"], json!(["serial"]));
    run(&["thing-types", "deprecate", "spare", "-d", d]);
    run(&["thing-types", "delete", "spare", "-d", d]);
    assert!(fails(&["-d", d, "thing-types", "describe", "spare"]).contains("not found"));

    let b = run(&[
        "billing-groups",
        "create",
        "standard",
        "--description",
        "default plan",
        "--json",
        "-d",
        d,
    ]);
    assert_eq!(b["version"], 1);
    assert_eq!(
        run(&["billing-groups", "describe", "standard", "--json", "-d", d])["description"],
        "default plan"
    );
    assert_eq!(
        run(&["billing-groups", "list", "--json", "-d", d])[0]["billing_group_name"],
        "standard"
    );
    assert!(fails(&[
        "-d",
        d,
        "billing-groups",
        "create",
        "standard",
        "--description",
        "other"
    ])
    .contains("already exists"));
    assert_eq!(
        run(&["billing-groups", "delete", "standard", "--json", "-d", d])["deleted"],
        true
    );
}

#[test]
fn policies_create_refuses_unknown_condition_parts_and_accepts_conditions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    init_with_fixtures(tmp.path());
    let write = |name: &str, condition: &str| {
        let p = tmp.path().join(name);
        std::fs::write(
            &p,
            format!(
                r#"{{"Version": "2012-10-17", "Statement": [
                    {{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}},
                    {{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*", "Condition": {condition}}}]}}"#
            ),
        )
        .unwrap();
        p
    };
    let typo = write("typo.json", r#"{"StringEqualz": {"iot:ClientId": "a"}}"#);
    let out = std::process::Command::new(BIN)
        .args([
            "policies",
            "create",
            "typo",
            typo.to_str().unwrap(),
            "-d",
            d,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Statement[1].Condition.StringEqualz: unknown condition operator \"StringEqualz\"; accepted: StringEquals,"),
        "{stderr}"
    );
    let key = write(
        "key.json",
        r#"{"StringEquals": {"iot:Connection.Thing.Attributes[]": "a"}}"#,
    );
    let out = std::process::Command::new(BIN)
        .args(["policies", "create", "key", key.to_str().unwrap(), "-d", d])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Statement[1].Condition.StringEquals.iot:Connection.Thing.Attributes[]: unknown condition key"),
        "{stderr}"
    );
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["policy_name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let listed = run(&["policies", "list", "--json", "-d", d]);
    assert!(
        !names(&listed).iter().any(|n| n == "typo" || n == "key"),
        "{listed}"
    );

    let good = write(
        "good.json",
        r#"{"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}, "StringLike": {"iot:Connection.Thing.Attributes[site]": "b*"}}"#,
    );
    run(&[
        "policies",
        "create",
        "good",
        good.to_str().unwrap(),
        "-d",
        d,
    ]);
    let listed = run(&["policies", "list", "--json", "-d", d]);
    assert!(names(&listed).iter().any(|n| n == "good"), "{listed}");
}
