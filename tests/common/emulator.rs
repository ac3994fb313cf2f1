//! An iotcore-emulator in this test process, on port 0, with the
//! repository's policies and templates, and a claim credential.

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

impl TestCloud {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmulatorConfig::new(dir.path().join("emulator"));
        tweak(&mut config);
        let handle = Emulator::start(config).await.unwrap();
        for (name, body) in json_files(&repo("policies")) {
            handle.registry().create_policy(&name, &body).unwrap();
        }
        for (name, body) in json_files(&repo("templates")) {
            handle
                .registry()
                .create_template(&name, &body, true, None)
                .unwrap();
        }
        let claim = handle.create_claim_credential("claim").unwrap();
        Self { handle, claim, dir }
    }
}

impl TestCloud {
    /// A connection of the device's backend: a certificate whose policy
    /// allows everything, as a cloud-side service would hold.
    pub async fn backend_session(&self) -> prov_agent::mqtt::Session {
        use prov_agent::keystore::{
            file::FileKeyStore, FileSettings, KeyLabel, KeyStore, PrivateKeyMaterial,
        };
        let policy = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;
        let registry = self.handle.registry();
        if registry.policy("backend").unwrap().is_none() {
            registry.create_policy("backend", policy).unwrap();
        }
        let cred = self
            .handle
            .create_credential("backend-service", &["backend"])
            .unwrap();
        let dir = self
            .dir
            .path()
            .join(format!("backend-{}", rand::random::<u32>()));
        let store =
            std::sync::Arc::new(FileKeyStore::open(&FileSettings { key_dir: dir }).unwrap());
        let label = KeyLabel::new("backend").unwrap();
        let key = store
            .import(
                &label,
                &PrivateKeyMaterial::from_pem(&cred.private_key_pem).unwrap(),
            )
            .unwrap();
        let cert =
            prov_agent::crypto::Certificate::from_pem(&cred.certificate_pem, "backend").unwrap();
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
            client_id: format!("backend-{}", rand::random::<u32>()),
            tls: std::sync::Arc::new(tls),
            connect_timeout: std::time::Duration::from_secs(5),
            keep_alive: std::time::Duration::from_secs(30),
        };
        prov_agent::mqtt::Session::connect(&opts).await.unwrap()
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
