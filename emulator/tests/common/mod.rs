//! Shared helpers for the black-box tests: an emulator on port 0 with the
//! fixture policies and templates, the binary's `init` and `serve`, and
//! rumqttc clients over rustls (ring).
#![allow(dead_code)]

pub mod local_ca;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iotcore_emulator::{Credential, Emulator, EmulatorConfig, EmulatorHandle};
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// How long a test waits for an answer before it fails. Only an upper
/// bound (no test waits it out when things work): long enough for an RSA
/// key made in the request (CreateKeysAndCertificate with an empty pool)
/// in a debug build on a loaded two-core CI machine, which once took more
/// than 10 s.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `iotcore-emulator` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_iotcore-emulator");

/// Runs the binary with `args`; it must succeed (else the panic shows its
/// stderr).
pub fn bin_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `iotcore-emulator init DIR` with the fixture policies and templates.
pub fn init_with_fixtures(dir: &Path) -> Output {
    let fx = fixtures();
    bin_ok([
        OsStr::new("init"),
        dir.as_os_str(),
        OsStr::new("--policies"),
        fx.join("policies").as_os_str(),
        OsStr::new("--templates"),
        fx.join("templates").as_os_str(),
    ])
}

/// The `serve` flags that put MQTT, ALPN and the API on port 0.
pub const SERVE_PORTS_0: [&str; 6] = ["--port", "0", "--alpn-port", "0", "--api-port", "0"];

/// `iotcore-emulator serve DIR` with MQTT, ALPN and the API on port 0, and
/// the addresses its first stdout line names. The process is killed when
/// this is dropped.
pub struct ServeProcess {
    pub child: tokio::process::Child,
    pub mqtt: SocketAddr,
    pub alpn: SocketAddr,
    /// `http://ADDR`, as printed.
    pub api_url: String,
    /// The first stdout line:
    /// `iotcore-emulator listening mqtt=ADDR alpn=ADDR api=http://ADDR`.
    pub line: String,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ServeProcess {
    pub async fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with(data_dir, &[]).await
    }

    /// As [`ServeProcess::spawn`], with `extra` after the port flags.
    pub async fn spawn_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .arg("serve")
            .arg(data_dir)
            .args(SERVE_PORTS_0)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Both pipes are read to the end in the background, so that the
        // process never blocks on a full one.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let drained = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf).await {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = match tokio::time::timeout(WAIT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = match tokio::time::timeout(WAIT, child.wait()).await {
                    Ok(Ok(status)) => status.to_string(),
                    other => format!("{other:?}"),
                };
                let _ = tokio::time::timeout(WAIT, drained).await;
                panic!(
                    "serve ended before its listening line ({status}); stderr:\n{}",
                    lossy(&stderr)
                )
            }
            Ok(Err(e)) => panic!("reading serve's stdout: {e}; stderr:\n{}", lossy(&stderr)),
            Err(_) => panic!(
                "no listening line from serve within {WAIT:?}; stderr:\n{}",
                lossy(&stderr)
            ),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let word = |prefix: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {line:?}"))
                .to_owned()
        };
        let addr = |prefix: &str| {
            word(prefix)
                .parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{prefix} in {line:?}: {e}"))
        };
        let (mqtt, alpn, api_url) = (addr("mqtt="), addr("alpn="), word("api="));
        ServeProcess {
            child,
            mqtt,
            alpn,
            api_url,
            line,
            stderr,
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        lossy(&self.stderr)
    }
}

fn lossy(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// The virtualenv's bin directory, made by `ci/python-venv.sh` (boto3 pinned
/// in `ci/requirements-python.txt`).
pub fn venv_bin() -> PathBuf {
    static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/python-venv.sh");
            let out = std::process::Command::new("bash")
                .arg(script)
                .output()
                .expect("running ci/python-venv.sh");
            assert!(
                out.status.success(),
                "ci/python-venv.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            assert!(
                bin.join("python").exists(),
                "{} has no python",
                bin.display()
            );
            bin
        })
        .clone()
}

/// The repository's pre-provisioning hook (`templates/hooks/provisioning_hook.py`).
pub fn shipped_hook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../templates/hooks/provisioning_hook.py")
        .canonicalize()
        .unwrap()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub struct TestEmulator {
    pub handle: EmulatorHandle,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestEmulator {
    type Target = EmulatorHandle;
    fn deref(&self) -> &EmulatorHandle {
        &self.handle
    }
}

/// Registers the fixture policies and templates.
pub fn register_fixtures(handle: &EmulatorHandle) {
    for entry in std::fs::read_dir(fixtures().join("policies")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_owned();
        handle
            .registry()
            .create_policy(&name, &std::fs::read_to_string(&p).unwrap())
            .unwrap();
    }
    for entry in std::fs::read_dir(fixtures().join("templates")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_owned();
        handle
            .registry()
            .create_template(&name, &std::fs::read_to_string(&p).unwrap(), true, None)
            .unwrap();
    }
}

pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> TestEmulator {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmulatorConfig::new(dir.path());
    // A test makes a keys-mode request or two at most: a small pool, so
    // that the emulators the tests start at once do not spend the
    // machine's CPU making RSA keys no one takes.
    config.rsa_key_pool = 2;
    tweak(&mut config);
    let handle = Emulator::start(config).await.unwrap();
    register_fixtures(&handle);
    TestEmulator { handle, dir }
}

impl TestEmulator {
    /// Stops the emulator and starts a new one on the same data directory
    /// (fixtures are not registered again).
    pub async fn restart(self) -> TestEmulator {
        let TestEmulator { handle, dir } = self;
        handle.shutdown().await;
        let mut config = EmulatorConfig::new(dir.path());
        config.rsa_key_pool = 2;
        let handle = Emulator::start(config).await.unwrap();
        TestEmulator { handle, dir }
    }
}

pub async fn start() -> TestEmulator {
    start_with(|_| {}).await
}

pub fn private_key(pem_str: &str) -> PrivateKeyDer<'static> {
    let p = pem::parse(pem_str).unwrap();
    let der = p.contents().to_vec();
    match p.tag() {
        "PRIVATE KEY" => PrivatePkcs8KeyDer::from(der).into(),
        "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(der).into(),
        "EC PRIVATE KEY" => PrivateSec1KeyDer::from(der).into(),
        other => panic!("unexpected key PEM {other}"),
    }
}

pub fn cert_der(pem_str: &str) -> CertificateDer<'static> {
    CertificateDer::from(pem::parse(pem_str).unwrap().into_contents())
}

pub fn roots(root_ca_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(root_ca_pem)).unwrap();
    roots
}

/// rustls client configuration with the ring provider.
pub fn client_tls(root_ca_pem: &str, cred: Option<&Credential>, alpn: bool) -> Arc<ClientConfig> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(root_ca_pem));
    let mut config = match cred {
        Some(c) => builder
            .with_client_auth_cert(
                vec![cert_der(&c.certificate_pem)],
                private_key(&c.private_key_pem),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if alpn {
        config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    }
    Arc::new(config)
}

pub struct Client {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
    pub error: Option<String>,
}

/// Connects with rumqttc over TLS; `Err` carries the connection error.
pub async fn connect_tls(
    addr: std::net::SocketAddr,
    tls: Arc<ClientConfig>,
    client_id: &str,
) -> Result<Client, String> {
    connect_tls_max_packet(addr, tls, client_id, 256 * 1024).await
}

/// As [`connect_tls`] with the largest packet the client accepts and sends.
pub async fn connect_tls_max_packet(
    addr: std::net::SocketAddr,
    tls: Arc<ClientConfig>,
    client_id: &str,
    max_packet: usize,
) -> Result<Client, String> {
    connect_tls_opts(addr, "localhost", tls, client_id, max_packet).await
}

/// As [`connect_tls`] naming the server `host` (rustls sends it as SNI,
/// unless it is an IP address: then it sends none).
pub async fn connect_tls_host(
    addr: std::net::SocketAddr,
    host: &str,
    tls: Arc<ClientConfig>,
    client_id: &str,
) -> Result<Client, String> {
    connect_tls_opts(addr, host, tls, client_id, 256 * 1024).await
}

async fn connect_tls_opts(
    addr: std::net::SocketAddr,
    host: &str,
    tls: Arc<ClientConfig>,
    client_id: &str,
    max_packet: usize,
) -> Result<Client, String> {
    let mut opts = MqttOptions::new(client_id, host, addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(max_packet, max_packet);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    opts.set_credentials("?SDK=Test&Version=1", "");
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let msg = match &e {
                        ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
                        other => other.to_string(),
                    };
                    let _ = tx.send(Err(msg));
                    return;
                }
            }
        }
    });
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err("event loop ended".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| "timed out waiting for CONNACK".to_owned())?;
    first.map(|_| Client {
        client,
        events,
        error: None,
    })
}

pub async fn connect(
    emu: &EmulatorHandle,
    cred: &Credential,
    client_id: &str,
) -> Result<Client, String> {
    connect_tls(
        emu.addr(),
        client_tls(&emu.root_ca_pem(), Some(cred), false),
        client_id,
    )
    .await
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    /// Next incoming event of interest; `Err` when the connection ended.
    async fn next_incoming(&mut self, limit: Duration) -> Option<Result<Incoming, String>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return None,
                Ok(None) => return Some(Err("event loop ended".into())),
                Ok(Some(Err(e))) => {
                    self.error = Some(e.clone());
                    return Some(Err(e));
                }
                Ok(Some(Ok(Event::Incoming(i)))) => match i {
                    Incoming::PingResp | Incoming::PubAck(_) => continue,
                    other => return Some(Ok(other)),
                },
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
        let subs = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        self.client.subscribe_many(subs).await.unwrap();
        loop {
            match self.next_incoming(WAIT).await {
                Some(Ok(Incoming::SubAck(ack))) => return ack.return_codes,
                Some(Ok(_)) => continue,
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        loop {
            match self.next_incoming(WAIT).await {
                Some(Ok(Incoming::UnsubAck(_))) => return,
                Some(Ok(_)) => continue,
                other => panic!("no UNSUBACK: {other:?}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Publishes at QoS 1 with RETAIN set (an empty payload deletes the
    /// topic's retained message) and waits for the PUBACK, which the
    /// broker sends once the message is stored. For a client that
    /// subscribes to nothing: other packets that come meanwhile are
    /// dropped.
    pub async fn publish_retained(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
        let acked = tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Incoming(Incoming::PubAck(_)))) => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e),
                    None => return Err("event loop ended".to_owned()),
                }
            }
        })
        .await;
        match acked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("retained PUBLISH to {topic} not acknowledged: {e}"),
            Err(_) => panic!("no PUBACK for the retained PUBLISH to {topic} within {WAIT:?}"),
        }
    }

    /// Next PUBLISH received within `limit`, whole (its RETAIN flag, QoS).
    pub async fn next_publish(&mut self, limit: Duration) -> Option<rumqttc::Publish> {
        loop {
            match self.next_incoming(limit).await {
                Some(Ok(Incoming::Publish(p))) => return Some(p),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Next PUBLISH received within `limit`.
    pub async fn next_message(&mut self, limit: Duration) -> Option<(String, Vec<u8>)> {
        loop {
            match self.next_incoming(limit).await {
                Some(Ok(Incoming::Publish(p))) => return Some((p.topic, p.payload.to_vec())),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }

    /// True if the server closes the connection within `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        if self.error.is_some() {
            return true;
        }
        loop {
            match self.next_incoming(limit).await {
                Some(Err(_)) => return true,
                Some(Ok(_)) => continue,
                None => return false,
            }
        }
    }

    /// Publishes a JSON request and waits for its accepted/rejected response.
    pub async fn call(&mut self, topic: &str, body: &Value) -> (bool, Value) {
        self.publish(topic, serde_json::to_vec(body).unwrap()).await;
        let (t, payload) = self
            .next_message(WAIT)
            .await
            .expect("no response to the request");
        let accepted = t == format!("{topic}/accepted");
        assert!(
            accepted || t == format!("{topic}/rejected"),
            "unexpected response topic {t}"
        );
        (accepted, serde_json::from_slice(&payload).unwrap())
    }

    /// Subscribes to both response topics of `topic`.
    pub async fn subscribe_responses(&mut self, topic: &str) {
        let codes = self
            .subscribe(&[&format!("{topic}/accepted"), &format!("{topic}/rejected")])
            .await;
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "response subscription refused: {codes:?}"
        );
    }
}

/// A P-256 key and a CSR for it, both PEM.
pub fn p256_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device");
    let csr = params.serialize_request(&key).unwrap();
    (key.serialize_pem(), csr.pem().unwrap())
}

pub const CSR_TOPIC: &str = "$aws/certificates/create-from-csr/json";
pub const KEYS_TOPIC: &str = "$aws/certificates/create/json";
pub fn register_topic(template: &str) -> String {
    format!("$aws/provisioning-templates/{template}/provision/json")
}

/// A claim client subscribed to the CSR and RegisterThing responses.
pub async fn claim_client(emu: &EmulatorHandle, client_id: &str, template: &str) -> Client {
    let claim = emu.create_claim_credential("claim").unwrap();
    let mut c = connect(emu, &claim, client_id).await.unwrap();
    c.subscribe_responses(CSR_TOPIC).await;
    c.subscribe_responses(&register_topic(template)).await;
    c
}

/// CreateCertificateFromCsr: returns the device credential and the token.
pub async fn create_from_csr(c: &mut Client) -> (Credential, String) {
    let (key, csr) = p256_csr();
    let (ok, body) = c
        .call(
            CSR_TOPIC,
            &serde_json::json!({"certificateSigningRequest": csr}),
        )
        .await;
    assert!(ok, "CreateCertificateFromCsr rejected: {body}");
    let cred = Credential {
        certificate_id: body["certificateId"].as_str().unwrap().to_owned(),
        certificate_pem: body["certificatePem"].as_str().unwrap().to_owned(),
        private_key_pem: key,
    };
    (
        cred,
        body["certificateOwnershipToken"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// An emulator with the repository's policies and templates (with the
/// shipped hook), the thing groups the templates name (as `init` makes
/// them), and the hook's Python first on its PATH.
pub async fn start_with_shipped_files() -> TestEmulator {
    let emu = start_with(|c| {
        let path = format!(
            "{}:{}",
            venv_bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.hook_environment.push(("PATH".into(), path));
        // Python's start-up on a loaded CI machine; the 5 s limit itself is
        // tested in provisioning.rs.
        c.hook_timeout = std::time::Duration::from_secs(20);
    })
    .await;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["claim", "device"] {
        let doc = std::fs::read_to_string(repo.join(format!("policies/{name}.json"))).unwrap();
        emu.registry().create_policy(name, &doc).unwrap();
    }
    let hook = shipped_hook();
    for name in ["ProdTemplate", "RotationTemplate"] {
        let body = std::fs::read_to_string(repo.join(format!("templates/{name}.json"))).unwrap();
        emu.registry()
            .create_template(name, &body, true, hook.to_str())
            .unwrap();
        // The thing groups it names, as `init` makes them (AWS wants them
        // to exist before RegisterThing).
        emu.registry().create_objects_named_by(name).unwrap();
    }
    emu
}
