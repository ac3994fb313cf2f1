//! `prov-agent claim import|generate` and `keys list` as an operator runs
//! them, on every backend: the file backend, a fresh SoftHSM token and a
//! fresh swtpm.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use common::pki::{cert_pem, openssl_verify_csr, TestCa};
use prov_agent::keystore::{KeyAlgorithm, KeyLabel, KeyStore, PublicKey, SignatureScheme};

use common::backend::Backend;
use common::device::{failed_with, text};

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    _backend: Backend,
}

impl Env {
    fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.ini");
        std::fs::write(
            &config,
            format!(
                "[SETTINGS]\nSECURE_CERT_PATH = certs\nCLAIM_CERT = claim.pem.crt\n\
                 SECURE_KEY = claim.private.pem.key\nIOT_ENDPOINT = localhost\n\
                 PRODUCTION_TEMPLATE = ProdTemplate\n[AGENT]\nSTATE_DIR = state\n{}",
                backend.config_section(&dir.path().join("state"))
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            _backend: backend,
        }
    }

    #[allow(clippy::let_unit_value)]
    fn run(&self, args: &[&str]) -> Output {
        let _shared = common::token_store_shared();
        common::clean_command(env!("CARGO_BIN_EXE_prov-agent"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(self._backend.env())
            .env_remove("PROV_AGENT_LOG")
            .output()
            .unwrap()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The store the agent uses, opened in this process from the same
    /// config, under the token store's exclusive lock (SoftHSM's in-process
    /// state must not meet another test's token creation or child; drop it
    /// before [`Env::run`]).
    fn store(&self) -> common::Exclusive<Arc<dyn KeyStore>> {
        let guard = common::token_store_exclusive();
        let config = prov_agent::config::Config::load(&self.config).unwrap();
        common::Exclusive {
            value: prov_agent::keystore::open(&config.keystore.settings).unwrap(),
            _guard: guard,
        }
    }

    /// A claim key and certificate as a CA would hand them out.
    fn claim_files(&self, ca: &TestCa) -> (PathBuf, PathBuf, PublicKey) {
        let (key_pem, spki) = common::conformance::software_key_pem(KeyAlgorithm::EcP256, "pkcs8");
        let kp = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let cert = ca.issue_for(&kp, "claim");
        let key_path = self.path("delivered.key");
        let cert_path = self.path("delivered.crt");
        std::fs::write(&key_path, key_pem.as_bytes()).unwrap();
        std::fs::write(&cert_path, cert_pem(&cert)).unwrap();
        (
            key_path,
            cert_path,
            PublicKey::from_spki_der(&spki).unwrap(),
        )
    }
}

fn import_with_shred_leaves_no_key_file_and_a_working_key(env: Env) {
    let ca = TestCa::new();
    let (key, cert, public) = env.claim_files(&ca);
    let out = env.run(&[
        "claim",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--shred",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!key.exists(), "the key file is still there");
    // The certificate now sits where CLAIM_CERT says.
    let stored = std::fs::read_to_string(env.path("certs/claim.pem.crt")).unwrap();
    assert_eq!(
        stored.trim(),
        std::fs::read_to_string(&cert).unwrap().trim()
    );
    // The key in the store signs, and the signature verifies with the
    // delivered certificate's public key.
    let store = env.store();
    let label = KeyLabel::new("claim").unwrap();
    let sig = store
        .sign(&label, SignatureScheme::EcdsaSha256, b"hello")
        .unwrap();
    public
        .verify(SignatureScheme::EcdsaSha256, b"hello", &sig)
        .unwrap();
    // The output names where the key lives and never prints key material.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reference = store.info(&label).unwrap().reference;
    assert!(
        stdout.contains(&format!("claim key imported: {reference}")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("PRIVATE KEY")
            && !String::from_utf8_lossy(&out.stderr).contains("PRIVATE KEY")
    );

    drop(store);

    // A second import is refused and says how to replace.
    let (key2, cert2, _) = env.claim_files(&ca);
    let out = env.run(&[
        "claim",
        "import",
        "--cert",
        cert2.to_str().unwrap(),
        "--key",
        key2.to_str().unwrap(),
    ]);
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("--replace"), "{}", text(&out));
    assert!(
        key2.exists(),
        "a refused import must not touch the key file"
    );
}

fn key_that_does_not_match_the_certificate_changes_nothing(env: Env) {
    let ca = TestCa::new();
    let (key_a, _cert_a, _) = env.claim_files(&ca);
    let key_a_copy = env.path("a.key");
    std::fs::copy(&key_a, &key_a_copy).unwrap();
    let (_key_b, cert_b, _) = env.claim_files(&ca);
    let out = env.run(&[
        "claim",
        "import",
        "--cert",
        cert_b.to_str().unwrap(),
        "--key",
        key_a_copy.to_str().unwrap(),
        "--shred",
    ]);
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("public keys differ"), "{}", text(&out));
    assert!(
        key_a_copy.exists(),
        "the key file must survive a refused import"
    );
    assert!(
        env.store().list().unwrap().is_empty(),
        "nothing may be imported"
    );
    assert!(!env.path("certs/claim.pem.crt").exists());
}

fn a_pem_that_is_not_a_key_is_refused(env: Env) {
    let ca = TestCa::new();
    let (_key, cert, _) = env.claim_files(&ca);
    let out = env.run(&[
        "claim",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        cert.to_str().unwrap(),
    ]);
    let stderr = failed_with(&out, 2);
    assert!(stderr.contains("not a private key"), "{}", text(&out));
    assert!(env.store().list().unwrap().is_empty());
}

fn generate_writes_a_csr_for_the_stored_key(env: Env) {
    let csr = env.path("claim.csr");
    let out = env.run(&[
        "claim",
        "generate",
        "--csr",
        csr.to_str().unwrap(),
        "--subject",
        "factory-7",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    let openssl_pub = openssl_verify_csr(env.dir.path(), &csr_pem);
    let from_csr =
        PublicKey::from_spki_der(pem::parse(openssl_pub.trim()).unwrap().contents()).unwrap();
    let stored = env.store().info(&KeyLabel::new("claim").unwrap()).unwrap();
    assert_eq!(from_csr, stored.public_key);

    let out = env.run(&["keys", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schemaVersion"], 1, "{doc}");
    let rows = &doc["keys"];
    assert_eq!(rows[0]["label"], "claim");
    assert_eq!(rows[0]["algorithm"], "ec-p256");
    assert_eq!(rows[0]["publicKeySha256"], stored.public_key.fingerprint());
}

#[test]
fn bad_config_exits_2_naming_file_line_and_key() {
    let env = Env::new(Backend::File);
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("KEY_ALGORTHM = ec-p256\n");
    std::fs::write(&env.config, cfg).unwrap();
    let out = env.run(&["keys", "list"]);
    let stderr = failed_with(&out, 2);
    assert!(
        stderr.contains(&format!("{}:11", env.config.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("KEY_ALGORTHM") && stderr.contains("did you mean KEY_ALGORITHM"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_says_how_to_point_at_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_prov-agent"))
        .args(["--config", "/nonexistent/prov-agent.ini", "keys", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn a_bad_log_filter_is_reported_not_ignored() {
    let out = Command::new(env!("CARGO_BIN_EXE_prov-agent"))
        .args(["--config", "/nonexistent/prov-agent.ini", "keys", "list"])
        .env("PROV_AGENT_LOG", "prov_agent=loud")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PROV_AGENT_LOG=\"prov_agent=loud\" is not a log filter"),
        "{stderr}"
    );
    // The command itself still runs and fails for its own reason.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

/// On a TPM that cannot encrypt an imported key for TPM2_Import (no
/// TPM2_EncryptDecrypt2; swtpm has it, so the test makes the agent behave
/// as on a TPM without it), `claim import` refuses to send the key over the
/// TPM bus in clear and says how to accept it; nothing is changed. With
/// `[TPM] ALLOW_UNWRAPPED_IMPORT = true` the same import succeeds, with a
/// warning.
#[cfg(feature = "tpm")]
#[test]
fn an_unwrapped_tpm_import_is_refused_unless_allowed() {
    let env = Env::new(Backend::tpm());
    let ca = TestCa::new();
    let (key, cert, public) = env.claim_files(&ca);
    let import = |env: &Env| {
        let _shared = common::token_store_shared();
        common::clean_command(env!("CARGO_BIN_EXE_prov-agent"))
            .arg("--config")
            .arg(&env.config)
            .args(["claim", "import", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .envs(env._backend.env())
            .env("PROV_AGENT_FAULT", "tpm-encrypt-decrypt-2")
            .env_remove("PROV_AGENT_LOG")
            .output()
            .unwrap()
    };
    let out = import(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("ALLOW_UNWRAPPED_IMPORT"), "{stderr}");
    assert!(stderr.contains("TPM_RC_COMMAND_CODE"), "{stderr}");
    assert!(
        !env.path("certs/claim.pem.crt").exists(),
        "the certificate was stored"
    );
    {
        let store = env.store();
        assert!(
            store.info(&KeyLabel::new("claim").unwrap()).is_err(),
            "a key was imported"
        );
    }

    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config = config.replace("[TPM]\n", "[TPM]\nALLOW_UNWRAPPED_IMPORT = true\n");
    assert!(config.contains("ALLOW_UNWRAPPED_IMPORT"), "{config}");
    std::fs::write(&env.config, config).unwrap();
    let out = import(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("without the inner wrapper"), "{stderr}");
    let store = env.store();
    let sig = store
        .sign(
            &KeyLabel::new("claim").unwrap(),
            SignatureScheme::EcdsaSha256,
            b"hello",
        )
        .unwrap();
    public
        .verify(SignatureScheme::EcdsaSha256, b"hello", &sig)
        .unwrap();
}

/// One #[test] per flow and backend, so that a failure names both.
macro_rules! on_backends {
    ($($flow:ident),*) => {
        mod file {
            use super::*;
            $( #[test] fn $flow() { super::$flow(Env::new(Backend::File)) } )*
        }
        #[cfg(feature = "pkcs11")]
        mod pkcs11 {
            use super::*;
            $( #[test] fn $flow() {
                super::$flow(Env::new(Backend::pkcs11("cli")))
            } )*
        }
        #[cfg(feature = "tpm")]
        mod tpm {
            use super::*;
            $( #[test] fn $flow() { super::$flow(Env::new(Backend::tpm())) } )*
        }
    };
}

on_backends!(
    import_with_shred_leaves_no_key_file_and_a_working_key,
    key_that_does_not_match_the_certificate_changes_nothing,
    a_pem_that_is_not_a_key_is_refused,
    generate_writes_a_csr_for_the_stored_key
);
