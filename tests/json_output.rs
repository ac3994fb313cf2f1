//! The `--json` documents (docs/json.md): each carries `schemaVersion` 1,
//! gives dates in RFC 3339 UTC, and `check` names its checks by stable
//! kebab-case ids, each of which docs/json.md lists.

mod common;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_rfc3339(value: &serde_json::Value) -> bool {
    let Some(s) = value.as_str() else {
        return false;
    };
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn document(out: &std::process::Output) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)));
    assert_eq!(doc["schemaVersion"], 1, "{doc}");
    doc
}

fn documented_ids() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_document_has_its_version_rfc3339_dates_and_stable_check_ids() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;

    let enrolled = document(&device.run(&["enroll", "--json"]).await);
    assert!(is_rfc3339(&enrolled["notAfter"]), "{enrolled}");
    assert_eq!(enrolled["resumedFrom"], serde_json::Value::Null);

    let out = device.run(&["status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let status = document(&out);
    for field in ["notAfter", "rotationDue", "lastCommit"] {
        assert!(is_rfc3339(&status[field]), "{field}: {status}");
    }
    // For people too.
    let out = device.run(&["status"]).await;
    let human = String::from_utf8_lossy(&out.stdout);
    let not_after = status["notAfter"].as_str().unwrap();
    assert!(human.contains(not_after), "{human}");

    let out = device.run(&["rotate", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let rotated = document(&out);
    assert!(is_rfc3339(&rotated["notAfter"]), "{rotated}");

    let docs = documented_ids();
    for args in [
        &["check", "--json"][..],
        &["check", "--json", "--offline"][..],
    ] {
        let out = device.run(args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let check = document(&out);
        assert_eq!(check["ok"], true);
        assert_eq!(check["offline"], args.len() == 3);
        let checks = check["checks"].as_array().unwrap();
        assert!(
            checks.len() >= if args.len() == 3 { 5 } else { 8 },
            "{check}"
        );
        for c in checks {
            let id = c["id"].as_str().unwrap();
            assert!(
                !id.is_empty()
                    && id.split('-').all(|w| !w.is_empty()
                        && w.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())),
                "{id:?} is not kebab-case"
            );
            assert!(
                docs.contains(&format!("`{id}`")),
                "{id} is not in docs/json.md"
            );
        }
        let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
        if args.len() == 3 {
            // Offline: neither the key store nor the endpoint.
            for online in ["key-store", "key", "endpoint"] {
                assert!(!ids.contains(&online), "{online} ran offline: {ids:?}");
            }
        } else {
            for id in [
                "config",
                "key-store",
                "key",
                "key-matches-certificate",
                "endpoint",
            ] {
                assert!(ids.contains(&id), "{id} missing: {ids:?}");
            }
        }
    }
}

/// `check --offline` needs no hardware: with a key store that cannot be
/// opened (its PKCS#11 module is not there), `check` fails at the key store
/// and `check --offline` passes.
#[tokio::test(flavor = "multi_thread")]
async fn check_offline_needs_no_key_store() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let config = std::fs::read_to_string(&device.config).unwrap();
    assert!(config.contains("BACKEND = file"), "{config}");
    std::fs::write(
        &device.config,
        config.replace("BACKEND = file", "BACKEND = pkcs11")
            + "\n[PKCS11]\nMODULE = /nonexistent/libpkcs11.so\nTOKEN_LABEL = gateway\n\
               PIN_SOURCE = file:/nonexistent/pin\n",
    )
    .unwrap();
    let out = device.run(&["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let check = document(&out);
    let failed: Vec<&str> = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["key-store"], "{check}");
    let out = device.run(&["check", "--json", "--offline"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(document(&out)["ok"], true);
}

/// On a PKCS#11 token `check` also reports what the module and token are
/// and can do; those checks carry the ids docs/json.md lists too.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn the_pkcs11_checks_have_documented_ids() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("json-ids"), "").await;
    let out = device.run(&["check", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let check = document(&out);
    let ids: Vec<&str> = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let docs = documented_ids();
    for id in &ids {
        assert!(
            docs.contains(&format!("`{id}`")),
            "{id} is not in docs/json.md"
        );
    }
    for id in [
        "pkcs11-module",
        "token",
        "token-flags",
        "mechanisms",
        "private-key-import",
        "copy-object",
        "relabel",
    ] {
        assert!(ids.contains(&id), "{id} missing: {ids:?}");
    }
}
