//! What `prov-agent enroll` does when the service says no, is slow, or is
//! not there: clear errors, the documented exit codes, retries where they
//! help, and a device left as it was.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::backend::Backend;
use common::device::{failed_with, text, Device};
use common::emulator::TestCloud;

/// The device kept its state: no identity, no journal, only the claim key.
fn assert_untouched(device: &Device) {
    assert!(device.identity().is_none(), "an identity was written");
    assert!(
        !device.state_dir().join("journal.json").exists(),
        "a journal was left"
    );
    let labels: Vec<String> = device
        .store()
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.label.to_string())
        .collect();
    assert_eq!(labels, vec!["claim".to_string()], "keys left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_template_is_refused_with_exit_3() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let out = device
        .run_env(
            &["enroll"],
            &[("PROV_AGENT_SETTINGS_PRODUCTION_TEMPLATE", "NoSuchTemplate")],
        )
        .await;
    let stderr = failed_with(&out, 3);
    // The claim policy does not even allow the unknown template's topics:
    // either the subscription or the service refuses, and says so.
    assert!(
        stderr.contains("NoSuchTemplate") || stderr.contains("ResourceNotFoundException"),
        "{stderr}"
    );
    // The certificate was issued but never registered: the journal keeps
    // it for a retry within the hour, and nothing is committed.
    assert!(device.identity().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_refusal_is_access_denied_with_exit_3() {
    let cloud = TestCloud::start().await;
    let hook = cloud.dir.path().join("refuse.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\ncat >/dev/null\necho '{\"allowProvisioning\": false}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/ProdTemplate.json"),
    )
    .unwrap();
    cloud
        .handle
        .registry()
        .create_template("ProdTemplate", &body, true, Some(hook.to_str().unwrap()))
        .unwrap();
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 3);
    assert!(stderr.contains("RegisterThing rejected"), "{stderr}");
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    assert!(stderr.contains("statusCode 403"), "{stderr}");
    assert!(device.identity().is_none());
    assert!(cloud.handle.registry().things().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn template_error_is_refused_with_exit_3() {
    let cloud = TestCloud::start().await;
    // The shipped hook refuses an unknown site before the template runs
    // (tests/takeover.rs); here the template's own error is the subject.
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/templates/ProdTemplate.json"
    ))
    .unwrap();
    cloud
        .handle
        .registry()
        .create_template("ProdTemplate", &body, true, None)
        .unwrap();
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    // The template maps Site through SiteGroups: an unknown site fails
    // Fn::FindInMap in the service.
    let out = device
        .run_env(
            &["enroll"],
            &[("PROV_AGENT_TEMPLATE_PARAMETERS_Site", "atlantis")],
        )
        .await;
    let stderr = failed_with(&out, 3);
    assert!(stderr.contains("InvalidRequestException"), "{stderr}");
    assert!(device.identity().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_root_cert_fails_the_handshake_clearly() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let other = common::pki::TestCa::new();
    std::fs::write(
        device.path("certs/root-ca.pem"),
        common::pki::cert_pem(&other.der()),
    )
    .unwrap();
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 4);
    assert!(
        stderr.contains("TLS") && stderr.contains("ROOT_CERT"),
        "{stderr}"
    );
    assert_untouched(&device);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_claim_key_says_to_import_it() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("claim import"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_that_starts_late_is_waited_for() {
    // Reserve a port, start enroll against it, and bring the service up
    // a moment later on that port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let early = TestCloud::start().await;
    let device = Device::new(&early, Backend::File, "MAX_RETRIES = 8\n");
    device.import_claim().await;
    let config = std::fs::read_to_string(&device.config).unwrap().replace(
        &format!("PORT = {}", early.handle.addr().port()),
        &format!("PORT = {port}"),
    );
    std::fs::write(&device.config, config).unwrap();
    let data = early.dir.path().join("emulator");
    let claim = early.claim.clone();
    early.handle.shutdown().await;

    let run = tokio::spawn({
        let config = device.config.clone();
        async move {
            common::clean_tokio_command(env!("CARGO_BIN_EXE_prov-agent"))
                .arg("--config")
                .arg(config)
                .args(["enroll", "--json"])
                .output()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cfg = iotcore_emulator::EmulatorConfig::new(&data);
    cfg.port = port;
    let late = iotcore_emulator::Emulator::start(cfg).await.unwrap();
    let out = run.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "{}",
        text(&out)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(late
        .registry()
        .thing(result["thingName"].as_str().unwrap())
        .unwrap()
        .is_some());
    drop(claim);
}

/// Bad answers from the service are refused, and the device keeps the
/// state it had: no identity, no journal, no pending key.
async fn bad_answer(fault: iotcore_emulator::ResponseFault, mode: &str, expect: &str) {
    let cloud = TestCloud::start_with(|c| c.response_fault = Some(fault)).await;
    let device = Device::new(&cloud, Backend::File, &format!("MODE = {mode}\n"));
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(!out.status.success(), "{fault:?} {mode}: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expect), "{fault:?} {mode}: {stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    assert_untouched(&device);
    assert!(cloud.handle.registry().things().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_answer_is_refused() {
    use iotcore_emulator::ResponseFault::MalformedJson;
    bad_answer(MalformedJson, "csr", "invalid JSON").await;
    bad_answer(MalformedJson, "keys", "invalid JSON").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_for_another_key_is_refused() {
    use iotcore_emulator::ResponseFault::CertificateForAnotherKey;
    bad_answer(CertificateForAnotherKey, "csr", "for another key than ours").await;
    bad_answer(
        CertificateForAnotherKey,
        "keys",
        "for another key than ours",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_certificate_id_is_refused() {
    use iotcore_emulator::ResponseFault::WrongCertificateId;
    bad_answer(
        WrongCertificateId,
        "csr",
        "is not the SHA-256 of the certificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_answer_is_refused() {
    use iotcore_emulator::ResponseFault::OversizedPayload;
    bad_answer(OversizedPayload, "csr", "over the 131072-byte limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_retried_and_succeeds() {
    let cloud = TestCloud::start_with(|c| {
        c.response_fault = Some(iotcore_emulator::ResponseFault::ThrottleFirst(2))
    })
    .await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let out = device.run(&["enroll", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("ThrottlingException").count(), 2, "{stderr}");
    assert!(device.identity().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_is_retried() {
    let cloud = TestCloud::start_with(|c| {
        c.response_fault = Some(iotcore_emulator::ResponseFault::DropResponses(1))
    })
    .await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let out = device
        .run_env(
            &["enroll", "--json"],
            &[("PROV_AGENT_PROVISIONING_RESPONSE_TIMEOUT", "1s")],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer within"),
        "{}",
        text(&out)
    );
    // The certificate of the lost answer was never activated.
    let registry = cloud.handle.registry();
    let active = registry
        .certificates()
        .unwrap()
        .into_iter()
        .filter(|c| c.status == iotcore_emulator::CertStatus::Active)
        .count();
    // The claim certificate and the device's.
    assert_eq!(active, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_are_bounded_and_exit_4() {
    let cloud = TestCloud::start_with(|c| {
        c.response_fault = Some(iotcore_emulator::ResponseFault::ThrottleFirst(50))
    })
    .await;
    let device = Device::new(&cloud, Backend::File, "MAX_RETRIES = 2\n");
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 4);
    assert!(stderr.contains("gave up after 3 attempts"), "{stderr}");
    assert_untouched(&device);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_garbled_root_cert_is_a_configuration_error() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let root = device.path("certs/root-ca.pem");
    std::fs::remove_file(&root).unwrap();
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(
        stderr.contains("cannot read ROOT_CERT") && stderr.contains("root-ca.pem"),
        "{stderr}"
    );
    std::fs::write(&root, "not a certificate\n").unwrap();
    let out = device.run(&["enroll"]).await;
    let stderr = failed_with(&out, 2);
    assert!(
        stderr.contains("ROOT_CERT") && stderr.contains("not a PEM certificate"),
        "{stderr}"
    );
    assert_untouched(&device);
}

/// Other programs' persistent objects, below the agent's range, until the
/// TPM has room for no more.
#[cfg(feature = "tpm")]
fn fill_persistent_space(tcti: &str) {
    use std::str::FromStr;
    use tss_esapi::constants::PropertyTag;
    use tss_esapi::handles::PersistentTpmHandle;
    use tss_esapi::interface_types::dynamic_handles::Persistent;
    use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
    use tss_esapi::interface_types::session_handles::AuthSession;

    let conf = tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap();
    let mut ctx = tss_esapi::Context::new(conf).unwrap();
    let primary = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(
                Hierarchy::Owner,
                tss_esapi::utils::create_restricted_decryption_rsa_public(
                    tss_esapi::structures::SymmetricDefinitionObject::AES_128_CFB,
                    tss_esapi::interface_types::key_bits::RsaKeyBits::Rsa2048,
                    tss_esapi::structures::RsaExponent::default(),
                )
                .unwrap(),
                None,
                None,
                None,
                None,
            )
        })
        .unwrap()
        .key_handle;
    // Until the TPM says no more (its estimate, or TPM_RC_NV_SPACE).
    let mut handle = 0x8100_0000;
    while ctx
        .get_tpm_property(PropertyTag::HrPersistentAvail)
        .unwrap()
        .unwrap_or(0)
        > 0
    {
        let persisted = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(
                Provision::Owner,
                primary.into(),
                Persistent::Persistent(PersistentTpmHandle::new(handle).unwrap()),
            )
        });
        match persisted {
            Ok(_) => handle += 1,
            Err(tss_esapi::Error::Tss2Error(rc))
                if rc.kind() == Some(tss_esapi::constants::Tss2ResponseCodeKind::NvSpace) =>
            {
                break
            }
            Err(e) => panic!("filling the TPM: {e}"),
        }
        assert!(handle < 0x8100_0100, "the TPM never ran out of room");
    }
    ctx.flush_context(primary.into()).unwrap();
}

/// A TPM whose persistent-object space is full (filled by other programs):
/// with `KEY_STORAGE = persistent`, enrollment in csr and keys mode says so
/// and what to do before anything is made, on the device or in the cloud.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn a_tpm_without_room_for_a_persistent_key_changes_nothing() {
    let cloud = TestCloud::start().await;
    for mode in ["csr", "keys"] {
        let backend = Backend::tpm();
        let Backend::Tpm(tpm) = &backend else {
            unreachable!()
        };
        fill_persistent_space(&tpm.tcti());
        let certificates = cloud.handle.registry().certificates().unwrap().len();
        let device = Device::new(&cloud, backend, &format!("MODE = {mode}\n"));
        let config = std::fs::read_to_string(&device.config)
            .unwrap()
            .replace("KEY_STORAGE = blob", "KEY_STORAGE = persistent");
        std::fs::write(&device.config, config).unwrap();
        // The claim key stays a blob: it was imported before the TPM filled
        // up in a real gateway's life; here it goes in the same way.
        let out = device
            .run_env(
                &[
                    "claim",
                    "import",
                    "--cert",
                    device.path("claim.pem.crt").to_str().unwrap(),
                ],
                &[("PROV_AGENT_TPM_KEY_STORAGE", "blob")],
            )
            .await;
        assert!(out.status.success(), "claim import: {}", text(&out));
        let out = device.run(&["enroll"]).await;
        let err = failed_with(&out, 5);
        assert!(
            err.contains("no room for another persistent object"),
            "{mode}: {err}"
        );
        assert!(err.contains("nothing was changed"), "{mode}: {err}");
        assert!(err.contains("KEY_STORAGE = blob"), "{mode}: {err}");
        assert_untouched(&device);
        assert_eq!(
            cloud.handle.registry().certificates().unwrap().len(),
            certificates,
            "{mode}: the service made a certificate"
        );
    }
}

/// A state directory another user could write to (or that is another
/// user's) is refused before anything is written into it: a planted
/// symlink there once made `enroll` overwrite a file elsewhere with the
/// journal.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let state = device.state_dir();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = device.run(&["enroll"]).await;
    let err = failed_with(&out, 2);
    assert!(
        err.contains("may be written by its group or others"),
        "{err}"
    );
    assert!(!state.join("journal.json").exists());
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    let out = device.run(&["enroll"]).await;
    let err = failed_with(&out, 2);
    assert!(err.contains("belongs to uid 65534"), "{err}");
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
}

/// Another program's wrong passwords put the TPM into dictionary-attack
/// lockout: the agent's keys (not noDA) then cannot sign. `rotate` and
/// `check` name the lockout and what to do, exit 5, and leave the identity
/// as it was; once the lockout is cleared, the rotation succeeds.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn a_tpm_in_dictionary_attack_lockout_is_named_with_what_to_do() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::tpm(), "").await;
    let before = device.identity().unwrap();
    let Backend::Tpm(tpm) = &device.backend else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let tool = |args: &[&str]| {
        let _shared = common::token_store_shared();
        common::clean_command(args[0])
            .args(&args[1..])
            .current_dir(dir.path())
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .output()
            .unwrap()
    };
    // One wrong authorization locks the TPM out (for 10 minutes).
    let out = tool(&[
        "tpm2_dictionarylockout",
        "--setup-parameters",
        "--max-tries=1",
        "--recovery-time=600",
        "--lockout-recovery-time=600",
    ]);
    assert!(
        out.status.success(),
        "tpm2_dictionarylockout: {}",
        text(&out)
    );
    // Another program's key with a password, used with a wrong one.
    let out = tool(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-p",
        "right",
        "-c",
        "other.ctx",
    ]);
    assert!(out.status.success(), "tpm2_createprimary: {}", text(&out));
    let out = tool(&[
        "tpm2_create",
        "-C",
        "other.ctx",
        "-P",
        "wrong",
        "-u",
        "k.pub",
        "-r",
        "k.priv",
    ]);
    assert!(!out.status.success(), "a wrong password was accepted");
    let out = tool(&["tpm2_getcap", "properties-variable"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("inLockout:                 1")
            || String::from_utf8_lossy(&out.stdout).contains("inLockout: 1"),
        "the TPM is not in lockout: {}",
        text(&out)
    );

    let out = device.run(&["rotate"]).await;
    let stderr = failed_with(&out, 5);
    assert!(stderr.contains("dictionary-attack lockout"), "{stderr}");
    assert!(
        stderr.contains("tpm2_dictionarylockout --clear-lockout"),
        "{stderr}"
    );
    assert_eq!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
    let out = device.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dictionary-attack lockout"),
        "{}",
        text(&out)
    );

    let out = tool(&["tpm2_dictionarylockout", "--clear-lockout"]);
    assert!(out.status.success(), "--clear-lockout: {}", text(&out));
    let out = device.run(&["rotate"]).await;
    assert!(
        out.status.success(),
        "rotate after the lockout: {}",
        text(&out)
    );
    assert_ne!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
}

/// The same at a rotation: a gateway enrolled with persistent keys whose
/// TPM other programs have since filled. `rotate` says so before anything
/// is made, on the device or in the cloud, and the identity stays.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_on_a_full_tpm_changes_nothing() {
    let cloud = TestCloud::start().await;
    let backend = Backend::tpm();
    let device = Device::new(&cloud, backend, "");
    let config = std::fs::read_to_string(&device.config)
        .unwrap()
        .replace("KEY_STORAGE = blob", "KEY_STORAGE = persistent");
    std::fs::write(&device.config, config).unwrap();
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let before = device.identity().unwrap();
    assert!(
        before.key_reference.starts_with("tpm:handle="),
        "{}",
        before.key_reference
    );
    let Backend::Tpm(tpm) = &device.backend else {
        unreachable!()
    };
    fill_persistent_space(&tpm.tcti());
    let certificates = cloud.handle.registry().certificates().unwrap().len();
    let out = device.run(&["rotate"]).await;
    let err = failed_with(&out, 5);
    assert!(
        err.contains("no room for another persistent object"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
    assert!(!device.state_dir().join("journal.json").exists());
    assert_eq!(
        cloud.handle.registry().certificates().unwrap().len(),
        certificates,
        "the service made a certificate"
    );
    device.round_trip(&cloud).await.unwrap();
}

/// RegisterThing answers a thingName with a character AWS does not allow
/// in a thing name (`+` and `#` are topic wildcards, `/` a topic level):
/// the enroll fails with exit 1 (a refused answer, "anything else" in the
/// README's table), says why, commits nothing, and never uses the name: no
/// connection as it, no topic or filter with it, no wildcard filter at all.
/// With a truthful service the next enroll completes, as the thing the
/// service really registered.
#[tokio::test(flavor = "multi_thread")]
async fn a_thing_name_with_topic_characters_is_refused() {
    use iotcore_emulator::{LoggedPacket, ResponseFault};
    let cloud = TestCloud::start_with(|c| c.record_packets = true).await;
    for c in ['+', '#', '/'] {
        let device = Device::new(&cloud, Backend::File, "");
        device.import_claim().await;
        cloud
            .handle
            .set_response_fault(Some(ResponseFault::ThingNameWith(c)));
        let seen = cloud.handle.packet_log().len();
        let out = device.run(&["enroll"]).await;
        let stderr = failed_with(&out, 1);
        // The thing the service registered (the answer named it with `c`
        // appended).
        let things: Vec<String> = cloud
            .handle
            .registry()
            .things()
            .unwrap()
            .into_iter()
            .map(|t| t.thing_name)
            .filter(|name| name.contains(&device.serial))
            .collect();
        let [thing] = things.as_slice() else {
            panic!("{c:?}: one thing registered for the serial: {things:?}")
        };
        let answered = format!("{thing}{c}");
        assert!(
            stderr.contains("RegisterThing: the service's answer is refused")
                && stderr.contains("not a thing name"),
            "{c:?}: {}",
            text(&out)
        );
        assert!(!stderr.contains("panicked"), "{}", text(&out));
        assert!(
            device.identity().is_none(),
            "{c:?}: an identity was written"
        );
        let log = cloud.handle.packet_log();
        let connections = &log[seen..];
        assert!(!connections.is_empty());
        for connection in connections {
            assert_ne!(connection.client_id, answered, "{connection:?}");
            for record in &connection.packets {
                let names: Vec<&String> = match &record.packet {
                    LoggedPacket::Publish { topic, .. } => vec![topic],
                    LoggedPacket::Subscribe { filters } | LoggedPacket::Unsubscribe { filters } => {
                        filters.iter().collect()
                    }
                    _ => continue,
                };
                for name in names {
                    assert!(
                        !name.contains(thing.as_str()),
                        "{c:?}: the refused name was used: {name}: {connection:?}"
                    );
                    if matches!(record.packet, LoggedPacket::Subscribe { .. }) {
                        assert!(
                            !name.contains(['+', '#']),
                            "{c:?}: a wildcard subscription: {name}"
                        );
                    }
                }
            }
        }
        // The thing the service registered, under its true name, is this
        // gateway's once the service answers truthfully.
        cloud.handle.set_response_fault(None);
        let again = device.run(&["enroll"]).await;
        assert!(again.status.success(), "{c:?}: {}", text(&again));
        assert_eq!(&device.identity().unwrap().thing_name, thing);
        device.round_trip(&cloud).await.unwrap();
    }
}

/// A symlink planted at `STATE_DIR/lock` is not followed (the lock file is
/// opened with O_NOFOLLOW): `enroll` stops (exit 1, naming the lock file and
/// the link) before it writes anything, and the link's target is as it was:
/// an existing file keeps its content, mode and time, a missing one is not
/// created. Without O_NOFOLLOW the first would be locked and used, the
/// second created. Once the link is gone, enroll completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_planted_as_the_lock_file_is_not_followed() {
    use std::os::unix::fs::MetadataExt;
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let state = device.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let lock = state.join("lock");

    let existing = outside.path().join("victim");
    std::fs::write(&existing, "not the agent's\n").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::metadata(&existing).unwrap();
    let missing = outside.path().join("created-by-the-agent");
    for target in [&existing, &missing] {
        let _ = std::fs::remove_file(&lock);
        std::os::unix::fs::symlink(target, &lock).unwrap();
        let out = device.run(&["enroll"]).await;
        let err = failed_with(&out, 1);
        assert!(
            err.contains(&format!("cannot open lock file {}", lock.display()))
                && err.contains("os error 40"),
            "{target:?}: {}",
            text(&out)
        );
        assert!(
            std::fs::symlink_metadata(&lock)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link was replaced"
        );
        assert!(device.identity().is_none());
        assert!(!state.join("journal.json").exists());
        assert!(
            cloud.handle.registry().things().unwrap().is_empty(),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "not the agent's\n"
    );
    let after = std::fs::metadata(&existing).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.mtime(), after.mtime_nsec()),
        (
            before.mode(),
            before.uid(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    assert!(!missing.exists(), "the link's missing target was created");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);

    std::fs::remove_file(&lock).unwrap();
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
}
