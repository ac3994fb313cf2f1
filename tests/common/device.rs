//! A simulated gateway: a state directory, a config.ini pointing at a
//! [`TestCloud`], a key store (file, SoftHSM or swtpm), and the real
//! `prov-agent` binary run as a separate process.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use prov_agent::config::{Config, PayloadFormat};
use prov_agent::crypto::{client_config, Certificate};
use prov_agent::keystore::KeyStore;
use prov_agent::mqtt::{ConnectOptions, Session};
use prov_agent::provision::identity::Identity;

use super::backend::Backend;
use super::emulator::TestCloud;

pub struct Device {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub serial: String,
    pub backend: Backend,
}

impl Device {
    /// A device with the claim certificate and key delivered as files
    /// (not imported yet). `extra` is appended to the config.
    pub fn new(cloud: &TestCloud, backend: Backend, extra: &str) -> Self {
        let serial = format!("SN{}", hex::encode(rand::random::<[u8; 5]>()));
        Self::with_serial(cloud, backend, extra, &serial)
    }

    /// [`Device::new`] with a given serial number (another device's, for an
    /// attacker).
    pub fn with_serial(cloud: &TestCloud, backend: Backend, extra: &str, serial: &str) -> Self {
        let serial = serial.to_string();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("root-ca.pem"), cloud.handle.root_ca_pem()).unwrap();
        std::fs::write(
            dir.path().join("claim.pem.crt"),
            &cloud.claim.certificate_pem,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("claim.private.pem.key"),
            &cloud.claim.private_key_pem,
        )
        .unwrap();
        let config = dir.path().join("config.ini");
        let state = dir.path().join("state");
        std::fs::write(
            &config,
            format!(
                "[SETTINGS]\nSECURE_CERT_PATH = certs\nROOT_CERT = root-ca.pem\n\
                 CLAIM_CERT = claim.pem.crt\nSECURE_KEY = ../claim.private.pem.key\n\
                 IOT_ENDPOINT = localhost\nPRODUCTION_TEMPLATE = ProdTemplate\n\
                 CERT_ROTATION_TEMPLATE = RotationTemplate\n\
                 [AGENT]\nSTATE_DIR = state\n{}\
                 [PROVISIONING]\nPORT = {}\nSERIAL_NUMBER = {serial}\nRESPONSE_TIMEOUT = 5s\n\
                 CONNECT_TIMEOUT = 5s\n{extra}\n\
                 [TEMPLATE_PARAMETERS]\nSite = plant-a\nHardwareRevision = r2\n",
                backend.config_section(&state),
                cloud.handle.addr().port(),
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            serial,
            backend,
        }
    }

    /// A device that has imported its claim key and enrolled.
    pub async fn enrolled(cloud: &TestCloud, backend: Backend, extra: &str) -> Self {
        let device = Self::new(cloud, backend, extra);
        device.import_claim().await;
        let out = device.run(&["enroll"]).await;
        assert!(out.status.success(), "enroll: {}", text(&out));
        device
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Runs `prov-agent --config ... <args>` with extra environment.
    // The token-store lock is held for the child's whole run on purpose.
    #[allow(clippy::await_holding_lock, clippy::let_unit_value)]
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = super::clean_tokio_command(env!("CARGO_BIN_EXE_prov-agent"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env("PROV_AGENT_LOG", "info");
        cmd.envs(self.backend.env());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let _shared = super::token_store_shared();
        cmd.spawn().unwrap().wait_with_output().await.unwrap()
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    /// `claim import --shred`, which must succeed.
    pub async fn import_claim(&self) {
        let out = self
            .run(&[
                "claim",
                "import",
                "--cert",
                self.path("claim.pem.crt").to_str().unwrap(),
                "--shred",
            ])
            .await;
        assert!(out.status.success(), "claim import: {}", text(&out));
    }

    /// Rewrites the config's `PIN_SOURCE` to `env:NAME` (PKCS#11 backends).
    #[allow(dead_code)]
    pub fn pin_from_variable(&self, name: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let line = config
            .lines()
            .find(|l| l.starts_with("PIN_SOURCE"))
            .expect("a PKCS#11 config with PIN_SOURCE")
            .to_string();
        std::fs::write(
            &self.config,
            config.replace(&line, &format!("PIN_SOURCE = env:{name}")),
        )
        .unwrap();
    }

    pub fn load_config(&self) -> Config {
        Config::load(&self.config).unwrap()
    }

    /// The device's key store, opened in this process. While it lives no
    /// `prov-agent` child runs and no token is being made, so that this
    /// process's view of a SoftHSM token store is never one that another
    /// process is changing.
    pub fn store(&self) -> super::Exclusive<Arc<dyn KeyStore>> {
        let guard = super::token_store_exclusive();
        super::Exclusive {
            value: prov_agent::keystore::open(&self.load_config().keystore.settings).unwrap(),
            _guard: guard,
        }
    }

    pub fn identity(&self) -> Option<Identity> {
        Identity::load(&self.state_dir()).unwrap()
    }

    /// Connects with the committed identity, as the thing, and makes a
    /// publish/subscribe round trip: proof that the identity works.
    pub async fn round_trip(&self, cloud: &TestCloud) -> Result<(), String> {
        let identity = self.identity().ok_or("no identity")?;
        let (mut session, _store) = self.session(cloud).await?;
        let topic = format!("things/{}/telemetry", identity.thing_name);
        let t = Duration::from_secs(5);
        session
            .subscribe(std::slice::from_ref(&topic), t)
            .await
            .map_err(|e| e.to_string())?;
        session
            .publish(&topic, b"hello".to_vec(), t)
            .await
            .map_err(|e| e.to_string())?;
        let got = session
            .receive(&topic, t)
            .await
            .map_err(|e| e.to_string())?;
        session.close().await;
        if got == b"hello" {
            Ok(())
        } else {
            Err("round trip returned another payload".into())
        }
    }

    /// A connection with the committed identity, as the thing, and the
    /// in-process key store it signed with (hold it while the session is
    /// used: see [`Device::store`]).
    #[allow(clippy::await_holding_lock)]
    pub async fn session(
        &self,
        cloud: &TestCloud,
    ) -> Result<(Session, super::Exclusive<Arc<dyn KeyStore>>), String> {
        let identity = self.identity().ok_or("no identity")?;
        let locked = self.store();
        let store: Arc<dyn KeyStore> = locked.value.clone();
        let label = identity.key_label.parse().map_err(|e| format!("{e}"))?;
        let key = store.info(&label).map_err(|e| e.to_string())?;
        let cert = Certificate::from_pem(&identity.certificate_pem, "identity").unwrap();
        let roots = Certificate::from_pem(&cloud.handle.root_ca_pem(), "root").unwrap();
        let tls = client_config(roots.chain(), cert.chain().to_vec(), store, &key, None)
            .map_err(|e| e.to_string())?;
        let opts = ConnectOptions {
            host: "localhost".into(),
            port: cloud.handle.addr().port(),
            client_id: identity.thing_name.clone(),
            tls: Arc::new(tls),
            connect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
        };
        let session = Session::connect(&opts).await.map_err(|e| e.to_string())?;
        Ok((session, locked))
    }

    /// Every file under the state directory, with its contents.
    pub fn state_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.state_dir(), &mut out);
        out
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that the command exited with `code` and returns its stderr for
/// the checks of the message.
pub fn failed_with(o: &Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The payload format names the config takes.
pub fn format_name(f: PayloadFormat) -> &'static str {
    f.as_str()
}
