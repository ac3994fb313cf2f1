//! An iotcore-emulator in this test process, on port 0, with the
//! repository's policies, templates and pre-provisioning hooks (the shipped
//! files, as `iotcore-emulator init` registers them, with the thing groups
//! the templates name), and a claim credential.

use std::path::{Path, PathBuf};

use iotcore_emulator::{Credential, Emulator, EmulatorConfig, EmulatorHandle};

pub struct TestCloud {
    pub handle: EmulatorHandle,
    pub claim: Credential,
    pub dir: tempfile::TempDir,
}

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
}

fn json_files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The hook `templates/hooks/<template>.hook` names, as an absolute path
/// (the convention `iotcore-emulator init` follows).
pub fn shipped_hook(template: &str) -> Option<String> {
    let hooks = repo("templates/hooks");
    let link = std::fs::read_to_string(hooks.join(format!("{template}.hook"))).ok()?;
    let exe = hooks.join(link.lines().next()?.trim());
    Some(exe.canonicalize().unwrap().to_string_lossy().into_owned())
}

/// `PATH` with the virtualenv that has boto3 first.
pub fn python_path() -> String {
    format!(
        "{}:{}",
        python_bin(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The `bin` directory of the virtualenv that has boto3 (made once by
/// `ci/python-venv.sh`, which is safe to run from several tests at once).
pub fn python_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::process::Command::new(repo("ci/python-venv.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ci/python-venv.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

impl TestCloud {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmulatorConfig::new(dir.path().join("emulator"));
        // The hooks are Python with boto3 (`#!/usr/bin/env python3`).
        config.hook_environment.push(("PATH".into(), python_path()));
        // AWS gives a hook 5 s; Python and boto3 start in about 0.35 s, but
        // on a CI machine running four tests at once a start can take
        // seconds. The 5 s limit itself is tested in the emulator's tests.
        config.hook_timeout = std::time::Duration::from_secs(20);
        // A test makes a keys-mode request or two at most: a small pool,
        // so that the dozens of emulators the tests start do not spend the
        // machine's CPU making keys no one takes.
        config.rsa_key_pool = 2;
        tweak(&mut config);
        let handle = Emulator::start(config).await.unwrap();
        for (name, body) in json_files(&repo("policies")) {
            handle.registry().create_policy(&name, &body).unwrap();
        }
        for (name, body) in json_files(&repo("templates")) {
            let hook = shipped_hook(&name);
            handle
                .registry()
                .create_template(&name, &body, true, hook.as_deref())
                .unwrap();
            // The thing groups it names, as `iotcore-emulator init` makes
            // them: AWS refuses a registration into a group that does not exist.
            handle.registry().create_objects_named_by(&name).unwrap();
        }
        let claim = handle.create_claim_credential("claim").unwrap();
        Self { handle, claim, dir }
    }
}

impl TestCloud {
    /// A connection of the device's backend: a certificate whose policy
    /// allows everything, as a cloud-side service would hold.
    pub async fn backend_session(&self) -> prov_agent::mqtt::Session {
        let policy = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;
        let registry = self.handle.registry();
        if registry.policy("backend").unwrap().is_none() {
            registry.create_policy("backend", policy).unwrap();
        }
        let cred = self
            .handle
            .create_credential("backend-service", &["backend"])
            .unwrap();
        let client_id = format!("backend-{}", rand::random::<u32>());
        self.session_as(&cred, &client_id).await.unwrap()
    }

    /// A connection with `cred` (certificate and key as PEM, the key in a
    /// file store) as `client_id`.
    pub async fn session_as(
        &self,
        cred: &Credential,
        client_id: &str,
    ) -> Result<prov_agent::mqtt::Session, prov_agent::mqtt::MqttError> {
        use prov_agent::keystore::{
            file::FileKeyStore, FileSettings, KeyLabel, KeyStore, PrivateKeyMaterial,
        };
        let dir = self
            .dir
            .path()
            .join(format!("session-{}", rand::random::<u32>()));
        let store =
            std::sync::Arc::new(FileKeyStore::open(&FileSettings { key_dir: dir }).unwrap());
        let label = KeyLabel::new("session").unwrap();
        let key = store
            .import(
                &label,
                &PrivateKeyMaterial::from_pem(&cred.private_key_pem).unwrap(),
            )
            .unwrap();
        let cert =
            prov_agent::crypto::Certificate::from_pem(&cred.certificate_pem, "session").unwrap();
        let roots =
            prov_agent::crypto::Certificate::from_pem(&self.handle.root_ca_pem(), "root").unwrap();
        let tls = prov_agent::crypto::client_config(
            roots.chain(),
            cert.chain().to_vec(),
            store,
            &key,
            None,
        )
        .unwrap();
        let opts = prov_agent::mqtt::ConnectOptions {
            host: "localhost".into(),
            port: self.handle.addr().port(),
            client_id: client_id.into(),
            tls: std::sync::Arc::new(tls),
            connect_timeout: std::time::Duration::from_secs(5),
            keep_alive: std::time::Duration::from_secs(30),
        };
        prov_agent::mqtt::Session::connect(&opts).await
    }
}

impl TestCloud {
    /// The ACTIVE certificates attached to `thing`, polled for up to 3 s
    /// until there are `expect` of them (the backend rule acts on a
    /// rotation report asynchronously).
    pub async fn active_certificates(&self, thing: &str, expect: usize) -> Vec<String> {
        let registry = self.handle.registry();
        let mut active = Vec::new();
        for _ in 0..30 {
            let t = registry.thing(thing).unwrap().expect("thing exists");
            active = t
                .certificates
                .iter()
                .filter(|id| {
                    registry.certificate_status(id).unwrap()
                        == Some(iotcore_emulator::CertStatus::Active)
                })
                .cloned()
                .collect();
            if active.len() == expect {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        active
    }
}
