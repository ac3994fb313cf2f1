use super::*;
use crate::keystore::SecretSource;

const MINIMAL: &str = "[SETTINGS]\nIOT_ENDPOINT = abc-ats.iot.eu-west-1.amazonaws.com\n\
                       PRODUCTION_TEMPLATE = Prod\n[KEYSTORE]\nBACKEND = file\n";

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_with_env(Path::new("/etc/pa/config.ini"), text, Vec::new())
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_str_with_env(
        Path::new("/etc/pa/config.ini"),
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn reference_client_config_is_accepted() {
    // The reference client's config.ini, keys and layout as it ships them.
    let text = "[SETTINGS]\n\
        # Set the path to the location containing your certificates (root, private, claim certificate)\n\
        SECURE_CERT_PATH = /home/pi/certs\n\
        ROOT_CERT = root.ca.pem\n\
        CLAIM_CERT = bootstrap-certificate.pem.crt\n\
        SECURE_KEY = bootstrap-private.pem.key\n\
        IOT_ENDPOINT = xxxxxxxxxx-ats.iot.us-east-1.amazonaws.com\n\
        PRODUCTION_TEMPLATE = birthing_template\n\
        CERT_ROTATION_TEMPLATE = rotation_template\n";
    let c = load(text).unwrap();
    assert_eq!(
        c.settings.root_cert,
        Path::new("/home/pi/certs/root.ca.pem")
    );
    assert_eq!(
        c.settings.claim_cert,
        Path::new("/home/pi/certs/bootstrap-certificate.pem.crt")
    );
    assert_eq!(
        c.settings.secure_key.as_deref(),
        Some(Path::new("/home/pi/certs/bootstrap-private.pem.key"))
    );
    assert_eq!(c.settings.production_template, "birthing_template");
    assert_eq!(
        c.settings.cert_rotation_template.as_deref(),
        Some("rotation_template")
    );
    // Defaults of the new sections.
    assert_eq!(c.keystore.backend, Backend::Tpm);
    assert_eq!(c.keystore.algorithm, KeyAlgorithm::EcP256);
    assert_eq!(c.provisioning.mode, ProvisioningMode::Csr);
    assert_eq!(c.provisioning.port, 8883);
    assert_eq!(c.provisioning.response_timeout, Duration::from_secs(10));
    assert_eq!(c.state_dir, Path::new("/var/lib/prov-agent"));
}

#[test]
fn readme_alias_for_template_name() {
    let text = "[SETTINGS]\nIOT_ENDPOINT = e.example\nPROVISIONING_TEMPLATE_NAME = birth\n";
    assert_eq!(load(text).unwrap().settings.production_template, "birth");
    let conflict = format!("{text}PRODUCTION_TEMPLATE = other\n");
    let e = load(&conflict).unwrap_err().to_string();
    assert!(e.contains("contradicts"), "{e}");
    let none = "[SETTINGS]\nIOT_ENDPOINT = e.example\n";
    let e = load(none).unwrap_err().to_string();
    assert!(e.contains("PRODUCTION_TEMPLATE is required"), "{e}");
}

#[test]
fn relative_paths_follow_the_config_file() {
    let text = "[SETTINGS]\nSECURE_CERT_PATH = certs\nIOT_ENDPOINT = e\nPRODUCTION_TEMPLATE = p\n\
                [AGENT]\nSTATE_DIR = state\n[KEYSTORE]\nBACKEND = file\n";
    let c = load(text).unwrap();
    assert_eq!(c.settings.root_cert, Path::new("/etc/pa/certs/root.ca.pem"));
    assert_eq!(c.state_dir, Path::new("/etc/pa/state"));
    match c.keystore.settings {
        KeyStoreSettings::File(f) => assert_eq!(f.key_dir, Path::new("/etc/pa/state/keys")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = format!("{MINIMAL}[PROVISIONING]\nMODE = csr\nRESPONSE_TIMOUT = 5s\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.starts_with("/etc/pa/config.ini:8:"), "{e}");
    assert!(e.contains("RESPONSE_TIMOUT"), "{e}");
    assert!(e.contains("did you mean RESPONSE_TIMEOUT"), "{e}");
}

#[test]
fn unknown_section_is_an_error() {
    let e = load(&format!("{MINIMAL}[PROVISONING]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(":6: unknown section [PROVISONING]"), "{e}");
}

#[test]
fn bad_values_name_file_line_and_key() {
    for (extra, line, needle) in [
        ("[PROVISIONING]\nPORT = 99999\n", 7, "[PROVISIONING] PORT"),
        ("[PROVISIONING]\nMODE = magic\n", 7, "use csr"),
        (
            "[PROVISIONING]\nRESPONSE_TIMEOUT = 0s\n",
            7,
            "longer than zero",
        ),
        ("[KEYSTORE2]\n", 6, "unknown section"),
        ("[ROTATION]\nTHRESHOLD = 150%\n", 7, "between 0 and 1"),
        (
            "[TPM]\nPERSISTENT_BASE = 0x1000\n",
            7,
            "owner persistent range",
        ),
    ] {
        let text = format!("{MINIMAL}{extra}");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains(&format!("config.ini:{line}")), "{extra}: {e}");
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let e = load(&MINIMAL.replace("BACKEND = file", "BACKEND = tpm\nKEY_ALGORITHM = ed25519"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(":6: [KEYSTORE] KEY_ALGORITHM"), "{e}");
    assert!(e.contains("ec-p256"), "{e}");
    let e = load(&MINIMAL.replace("abc-ats.iot.eu-west-1.amazonaws.com", "mqtts://x:8883"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[SETTINGS] IOT_ENDPOINT"), "{e}");
}

#[test]
fn pkcs11_needs_module_token_and_pin_source() {
    let base = MINIMAL.replace("BACKEND = file", "BACKEND = pkcs11");
    let e = load(&base).unwrap_err().to_string();
    assert!(e.contains("[PKCS11] MODULE is required"), "{e}");
    let full = format!(
        "{base}[PKCS11]\nMODULE = /usr/lib/softhsm/libsofthsm2.so\nTOKEN_LABEL = gw\nPIN_SOURCE = file:/run/pin\n"
    );
    let c = load(&full).unwrap();
    match c.keystore.settings {
        KeyStoreSettings::Pkcs11(p) => {
            assert_eq!(p.token_label, "gw");
            assert_eq!(p.pin, SecretSource::File("/run/pin".into()));
        }
        other => panic!("{other:?}"),
    }
    let bad = full.replace("file:/run/pin", "1234");
    let e = load(&bad).unwrap_err().to_string();
    assert!(e.contains("[PKCS11] PIN_SOURCE"), "{e}");
    assert!(
        !e.contains("1234\""),
        "a PIN-like value is echoed only as the source: {e}"
    );
}

#[test]
fn environment_overrides_file() {
    let c = load_env(
        MINIMAL,
        &[
            ("PROV_AGENT_SETTINGS_IOT_ENDPOINT", "other.example"),
            ("PROV_AGENT_PROVISIONING_PORT", "443"),
            ("PROV_AGENT_TEMPLATE_PARAMETERS_SITE", "b"),
            ("PROV_AGENT_PIN", "not an override"),
            ("HOME", "/root"),
        ],
    )
    .unwrap();
    assert_eq!(c.settings.iot_endpoint, "other.example");
    assert_eq!(c.provisioning.port, 443);
    assert_eq!(
        c.template_parameters.get("SITE").map(String::as_str),
        Some("b")
    );

    let e = load_env(MINIMAL, &[("PROV_AGENT_PROVISIONING_PORT", "x")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("environment PROV_AGENT_PROVISIONING_PORT"),
        "{e}"
    );
    let e = load_env(MINIMAL, &[("PROV_AGENT_PROVISIONING_PROT", "1")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("PROV_AGENT_PROVISIONING_PROT"), "{e}");
}

#[test]
fn template_parameters_pass_through_but_not_serial() {
    let c = load(&format!(
        "{MINIMAL}[TEMPLATE_PARAMETERS]\nSite = plant-1\nLine = 4\n"
    ))
    .unwrap();
    assert_eq!(c.template_parameters.len(), 2);
    assert_eq!(c.template_parameters["Site"], "plant-1");
    let e = load(&format!(
        "{MINIMAL}[TEMPLATE_PARAMETERS]\nSerialNumber = 1\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("SERIAL_NUMBER"), "{e}");
}

#[test]
fn serial_is_never_an_empty_constant() {
    let c = load(&format!(
        "{MINIMAL}[PROVISIONING]\nSERIAL_NUMBER = GW-0042\n"
    ))
    .unwrap();
    assert_eq!(c.provisioning.serial, SerialSource::Fixed("GW-0042".into()));
    assert!(load(&format!("{MINIMAL}[PROVISIONING]\nSERIAL_NUMBER = a b\n")).is_err());
}

#[test]
fn same_label_for_claim_and_device_is_refused() {
    let e = load(&MINIMAL.replace("BACKEND = file", "BACKEND = file\nDEVICE_KEY = claim"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("both lead to the label claim"), "{e}");
}

#[test]
fn repository_sample_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.ini");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_str_with_env(&path, &text, Vec::new()).unwrap();
    assert_eq!(c.keystore.backend, Backend::Pkcs11);
    assert_eq!(c.settings.production_template, "ProdTemplate");
}

#[test]
fn configuration_doc_lists_every_key_with_its_default() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    for (section, keys) in SCHEMA {
        assert!(
            doc.contains(&format!("[{section}]")),
            "docs lack section [{section}]"
        );
        // The section's own part: from its heading to the next one of its
        // level (two sections may share a key name: MODE).
        let heading = format!("## [{section}]");
        let part: Vec<&str> = doc
            .lines()
            .skip_while(|l| !l.starts_with(&heading))
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .collect();
        for (key, default) in *keys {
            let row = part
                .iter()
                .find(|l| l.starts_with(&format!("| `{key}`")))
                .unwrap_or_else(|| {
                    panic!("docs/configuration.md lacks a row for [{section}] {key}")
                });
            if let Some(d) = default {
                assert!(
                    row.contains(&format!("`{d}`")),
                    "row for {key} lacks default {d}: {row}"
                );
            }
        }
    }
}

#[test]
fn alpn_follows_the_port_unless_set() {
    let c = load(&format!("{MINIMAL}[PROVISIONING]\nPORT = 443\n")).unwrap();
    assert!(c.provisioning.alpn);
    let c = load(MINIMAL).unwrap();
    assert!(!c.provisioning.alpn);
    let c = load(&format!(
        "{MINIMAL}[PROVISIONING]\nPORT = 9443\nALPN = true\n"
    ))
    .unwrap();
    assert!(c.provisioning.alpn);
    assert!(load(&format!("{MINIMAL}[PROVISIONING]\nALPN = maybe\n")).is_err());
}

/// Built without a backend (`cargo test --no-default-features`, run by
/// ci/test.sh), a config naming it is refused with the feature's name.
#[cfg(not(feature = "tpm"))]
#[test]
fn backend_not_built_in_names_the_feature() {
    let e = load(&MINIMAL.replace("BACKEND = file", "BACKEND = tpm"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[KEYSTORE] BACKEND"), "{e}");
    assert!(e.contains("--features tpm"), "{e}");
}

#[cfg(not(feature = "pkcs11"))]
#[test]
fn pkcs11_not_built_in_names_the_feature() {
    let text = MINIMAL.replace("BACKEND = file", "BACKEND = pkcs11");
    let e = load(&format!(
        "{text}[PKCS11]\nMODULE = /m.so\nTOKEN_LABEL = t\nPIN_SOURCE = env:P\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("--features pkcs11"), "{e}");
}

#[test]
fn claim_client_ids_cannot_be_any_client_id() {
    // Empty, or a policy or MQTT wildcard: `client/<prefix>*` in the claim
    // policy would match a gateway's thing name.
    for bad in ["\"\"", "prov-*", "pr?v", "a/b", "a+b", "x#"] {
        let value = if bad == "\"\"" { "" } else { bad };
        let text = format!("{MINIMAL}[PROVISIONING]\nCLIENT_ID_PREFIX = {value}\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("CLIENT_ID_PREFIX"), "{bad}: {e}");
        assert!(e.contains("any thing"), "{bad}: {e}");
    }
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.provisioning.client_id_prefix, "prov-");
}

#[test]
fn thing_names_overlapping_the_claim_client_ids_are_refused() {
    for (prefix, tnp) in [("prov-", "prov-gw"), ("gw", "gw"), ("gw_1", "gw")] {
        let text = format!(
            "{MINIMAL}[PROVISIONING]\nCLIENT_ID_PREFIX = {prefix}\n[TEMPLATE_PARAMETERS]\nThingNamePrefix = {tnp}\n"
        );
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("ThingNamePrefix"), "{prefix} {tnp}: {e}");
        assert!(e.contains("knock it off"), "{prefix} {tnp}: {e}");
    }
    let text = format!("{MINIMAL}[TEMPLATE_PARAMETERS]\nThingNamePrefix = gw\n");
    assert!(load(&text).is_ok());
}

#[test]
fn export_defaults_and_group() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.export.dir, Path::new("/var/lib/prov-agent/export"));
    assert_eq!(c.export.group, None);
    let c = load(&format!(
        "{MINIMAL}[EXPORT]\nDIR = /var/lib/prov-agent-identity\nGROUP = 4242\n"
    ))
    .unwrap();
    assert_eq!(c.export.dir, Path::new("/var/lib/prov-agent-identity"));
    assert_eq!(c.export.group, Some(("4242".into(), 4242)));
    // Relative to the config file, like every path.
    let c = load(&format!("{MINIMAL}[EXPORT]\nDIR = identity\n")).unwrap();
    assert_eq!(c.export.dir, Path::new("/etc/pa/identity"));
}

#[test]
fn an_export_group_cannot_reach_inside_the_state_dir() {
    let e = load(&format!("{MINIMAL}[EXPORT]\nGROUP = 4242\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[EXPORT] GROUP"), "{e}");
    assert!(e.contains("outside STATE_DIR"), "{e}");
    let e = load(&format!(
        "{MINIMAL}[EXPORT]\nDIR = /var/lib/prov-agent-identity\nGROUP = no-such-group-here\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("no group \"no-such-group-here\""), "{e}");
}

#[test]
fn groups_are_looked_up_in_the_group_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("group");
    std::fs::write(
        &file,
        "root:x:0:\nmqtt-bridge:x:998:mosquitto\n# odd\nbad-line\n",
    )
    .unwrap();
    assert_eq!(sections::group_id("mqtt-bridge", &file), Ok(998));
    assert_eq!(sections::group_id("root", &file), Ok(0));
    assert_eq!(sections::group_id("12", &file), Ok(12));
    assert!(sections::group_id("bad-line", &file).is_err());
    assert!(sections::group_id("mosquitto", &file).is_err());
}

#[test]
fn claim_key_id_forms_and_misuse() {
    let pkcs11 = MINIMAL.replace(
        "BACKEND = file",
        "BACKEND = pkcs11\n[PKCS11]\nMODULE = /m.so\nTOKEN_LABEL = gw\nPIN_SOURCE = env:PIN",
    );
    for form in ["0a1b", "0a:1b", "%0a%1b", "0A1B"] {
        let c = load(&format!("{pkcs11}\nCLAIM_KEY_ID = {form}\n")).unwrap();
        let KeyStoreSettings::Pkcs11(p) = &c.keystore.settings else {
            panic!("not pkcs11")
        };
        assert_eq!(p.key_ids.get("claim"), Some(&vec![0x0a, 0x1b]), "{form}");
    }
    for bad in ["xyz", "", "%zz", "0a1"] {
        let e = load(&format!("{pkcs11}\nCLAIM_KEY_ID = {bad}\n"));
        assert!(e.is_err(), "{bad:?} accepted");
    }
    let e = load(&format!("{MINIMAL}[PKCS11]\nCLAIM_KEY_ID = 0a\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("BACKEND = pkcs11"), "{e}");
    let e = load(&format!(
        "{pkcs11}\nCLAIM_KEY_ID = 0a\n[PROVISIONING]\nDECOMMISSION_CLAIM = true\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("DECOMMISSION_CLAIM"), "{e}");
}

/// Labels the agent derives from CLAIM_KEY and DEVICE_KEY collide with
/// none of the other's, and fit in 64 characters.
#[test]
fn key_labels_leave_room_and_never_collide() {
    let with =
        |keys: &str| load(&MINIMAL.replace("BACKEND = file", &format!("BACKEND = file\n{keys}")));
    for (keys, shared) in [
        ("CLAIM_KEY = device.alt", "device.alt"),
        ("CLAIM_KEY = device.old", "device.old"),
        ("DEVICE_KEY = claim.pending", "claim.pending"),
        ("CLAIM_KEY = gw.alt\nDEVICE_KEY = gw", "gw.alt"),
    ] {
        let e = with(keys).unwrap_err().to_string();
        assert!(e.contains(&format!("the label {shared}")), "{keys}: {e}");
    }
    let long = "k".repeat(57);
    let e = with(&format!("DEVICE_KEY = {long}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 56"), "{e}");
    let e = with(&format!("CLAIM_KEY = {long}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[KEYSTORE] CLAIM_KEY"), "{e}");
    with(&format!("DEVICE_KEY = {}", "k".repeat(56))).unwrap();
    with("CLAIM_KEY = factory\nDEVICE_KEY = gateway").unwrap();
}

/// Durations are bounded where they are read, so that adding them to a
/// clock at run time cannot overflow (RANDOM_DELAY, RESPONSE_TIMEOUT once
/// panicked `run` and `rotate`).
#[test]
fn durations_are_bounded() {
    for (extra, key) in [
        ("[ROTATION]\nRANDOM_DELAY = 99999999999d\n", "RANDOM_DELAY"),
        ("[ROTATION]\nRANDOM_DELAY = 31d\n", "RANDOM_DELAY"),
        (
            "[PROVISIONING]\nRESPONSE_TIMEOUT = 18446744073709551615s\n",
            "RESPONSE_TIMEOUT",
        ),
        ("[PROVISIONING]\nCONNECT_TIMEOUT = 2h\n", "CONNECT_TIMEOUT"),
        ("[ROTATION]\nCHECK_INTERVAL = 400d\n", "CHECK_INTERVAL"),
        ("[ROTATION]\nTHRESHOLD = 99999999d\n", "THRESHOLD"),
    ] {
        let e = load(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
        assert!(
            e.contains("longer than") || e.contains("too long"),
            "{extra}: {e}"
        );
    }
    let c = load(&format!(
        "{MINIMAL}[ROTATION]\nRANDOM_DELAY = 30d\nCHECK_INTERVAL = 30d\n[PROVISIONING]\nRESPONSE_TIMEOUT = 1h\n"
    ))
    .unwrap();
    assert_eq!(c.rotation.random_delay, Duration::from_secs(30 * 86_400));
}

#[test]
fn unwrapped_tpm_import_is_opt_in() {
    let tpm = MINIMAL.replace("BACKEND = file", "BACKEND = tpm");
    let c = load(&tpm).unwrap();
    let KeyStoreSettings::Tpm(t) = &c.keystore.settings else {
        panic!("not tpm")
    };
    assert!(!t.allow_unwrapped_import);
    let c = load(&format!("{tpm}\n[TPM]\nALLOW_UNWRAPPED_IMPORT = yes\n")).unwrap();
    let KeyStoreSettings::Tpm(t) = &c.keystore.settings else {
        panic!("not tpm")
    };
    assert!(t.allow_unwrapped_import);
}

/// `[KEYSTORE] HELPER_TIMEOUT`: 30 s unless set; zero and more than an hour
/// are refused, naming the key.
#[test]
fn helper_timeout_is_bounded() {
    assert_eq!(
        load(MINIMAL).unwrap().keystore.helper_timeout,
        Duration::from_secs(30)
    );
    let with = |v: &str| {
        load(&MINIMAL.replace(
            "BACKEND = file",
            &format!("BACKEND = file\nHELPER_TIMEOUT = {v}"),
        ))
    };
    assert_eq!(
        with("2m").unwrap().keystore.helper_timeout,
        Duration::from_secs(120)
    );
    for bad in ["0s", "2h", "soon"] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.contains("HELPER_TIMEOUT"), "{bad}: {e}");
    }
}

#[test]
fn attestation_is_off_by_default_and_needs_a_tpm_and_csr_mode() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.attestation.mode, AttestationMode::None);
    assert_eq!(c.attestation.key.as_str(), "attest");

    // The file backend cannot attest.
    let e = load(&format!("{MINIMAL}[ATTESTATION]\nMODE = tpm\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[ATTESTATION] MODE") && e.contains("BACKEND = tpm"),
        "{e}"
    );

    let tpm = MINIMAL.replace("BACKEND = file", "BACKEND = tpm");
    let c = load(&format!("{tpm}[ATTESTATION]\nMODE = tpm\n")).unwrap();
    assert_eq!(c.attestation.mode, AttestationMode::Tpm);

    // In keys mode the cloud made the key: no TPM can attest it.
    let e = load(&format!(
        "{tpm}[PROVISIONING]\nMODE = keys\n[ATTESTATION]\nMODE = tpm\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("MODE = keys") && e.contains("MODE = csr"), "{e}");

    // The attestation key cannot share a label with the device's keys.
    let e = load(&format!(
        "{tpm}[ATTESTATION]\nMODE = tpm\nKEY = device.alt\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("[ATTESTATION] KEY"), "{e}");

    let e = load(&format!("{tpm}[ATTESTATION]\nMODE = yes\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none or tpm"), "{e}");
}
