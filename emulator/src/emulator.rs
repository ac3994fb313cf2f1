//! Starting and stopping an emulator instance; the data directory.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{self, Broker};
use crate::config::{EmulatorConfig, ResponseFault};
use crate::control::{self, ControlPlane};
use crate::external::ProgramRunner;
use crate::jobs::{JobExecutionRecord, JobRecord};
use crate::keypool::KeyPool;
use crate::link::{self, LinkError, LinkSimulation};
use crate::packet_log::ConnectionLog;
use crate::pki::{CertificateAuthority, PkiError, Validity};
use crate::provisioning::Provisioner;
use crate::registry::{now_unix, CertStatus, Registry, RegistryError};
use crate::tls::{self, ALPN_MQTT_CA};

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("control-plane API bind address {0} is not a loopback address: the API does not check SigV4 signatures, so it binds only loopback (127.0.0.1, ::1)")]
    ApiNotLoopback(IpAddr),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("token key in the data directory is corrupt: {0} (the data directory is damaged: restore it from a backup, or run init on a new one)")]
    TokenKey(#[source] hex::FromHexError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate with its private key, as a device would hold it.
#[derive(Clone)]
pub struct Credential {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("certificate_id", &self.certificate_id)
            .finish_non_exhaustive()
    }
}

/// The data directory: registry, CA and server certificate.
pub struct DataDir {
    pub registry: Registry,
    pub ca: Arc<CertificateAuthority>,
}

impl DataDir {
    /// Opens a data directory, creating it, its CA, server certificate and
    /// token key on first use.
    pub fn open(dir: &Path) -> Result<Self, EmulatorError> {
        // The registry holds the CA's private key: the directory is private
        // (and the database file too, see `Registry::open`).
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| EmulatorError::Io {
                    what: format!("creating data directory {}", dir.display()),
                    source,
                })?;
        } else if let Ok(meta) = std::fs::metadata(dir) {
            // Someone else's directory: told about, not changed.
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "data directory {} is mode {mode:04o}, open to other users; it holds the CA key: chmod 700 it",
                    dir.display()
                );
            }
        }
        let registry = Registry::open(dir)?;
        let ca = match (registry.meta("ca_cert_pem")?, registry.meta("ca_key_pem")?) {
            (Some(cert), Some(key)) => CertificateAuthority::load(&cert, &key)?,
            _ => {
                let (ca, key) = CertificateAuthority::generate()?;
                registry.set_meta("ca_cert_pem", ca.cert_pem())?;
                registry.set_meta("ca_key_pem", &key)?;
                ca
            }
        };
        if registry.meta("server_cert_pem")?.is_none() {
            let (cert, key) = ca.issue_server()?;
            registry.set_meta("server_cert_pem", &cert)?;
            registry.set_meta("server_key_pem", &key)?;
        }
        if registry.meta("token_key")?.is_none() {
            let key: [u8; 32] = rand::random();
            registry.set_meta("token_key", &hex::encode(key))?;
        }
        Ok(DataDir {
            registry,
            ca: Arc::new(ca),
        })
    }

    pub fn root_ca_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    /// Issues an ACTIVE certificate with a new P-256 key, registers it and
    /// attaches `policies` (which must exist).
    pub fn create_credential(
        &self,
        common_name: &str,
        policies: &[&str],
    ) -> Result<Credential, EmulatorError> {
        self.create_credential_with(common_name, policies, None)
    }

    /// As [`DataDir::create_credential`], valid for `validity` (`None`:
    /// 1975 to 4096), so that tests can hold an expired or a not yet valid
    /// registered certificate.
    pub fn create_credential_with(
        &self,
        common_name: &str,
        policies: &[&str],
        validity: Option<Validity>,
    ) -> Result<Credential, EmulatorError> {
        let (issued, key) = self.ca.issue_with_new_ec_key_with(common_name, validity)?;
        let inserted = self.registry.insert_certificate(
            &issued.certificate_id,
            &issued.certificate_pem,
            CertStatus::Active,
            None,
        )?;
        // A fresh key and serial number: a collision means a hand-edited registry.
        if !inserted {
            return Err(RegistryError::AlreadyExists {
                kind: "certificate",
                name: issued.certificate_id,
            }
            .into());
        }
        for p in policies {
            self.registry.attach_policy(p, &issued.certificate_id)?;
        }
        Ok(Credential {
            certificate_id: issued.certificate_id,
            certificate_pem: issued.certificate_pem,
            private_key_pem: key,
        })
    }
}

/// A running emulator.
pub struct EmulatorHandle {
    data: DataDir,
    broker: Arc<Broker>,
    addr: SocketAddr,
    alpn_addr: SocketAddr,
    api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Emulator;

impl Emulator {
    /// Opens (or initialises) the data directory and starts both MQTT
    /// listeners and the control-plane API. Refuses an `api_bind` that is
    /// not a loopback address.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        if !config.api_bind.is_loopback() {
            return Err(EmulatorError::ApiNotLoopback(config.api_bind));
        }
        config.link.validate()?;
        let data = DataDir::open(&config.data_dir)?;
        let registry = data.registry.clone();
        let meta = |k: &str| -> Result<String, EmulatorError> {
            registry.meta(k)?.ok_or_else(|| {
                RegistryError::Invalid(format!("data directory lacks {k}: run init")).into()
            })
        };
        let (cert, key) = (meta("server_cert_pem")?, meta("server_key_pem")?);
        let token_key = hex::decode(meta("token_key")?).map_err(EmulatorError::TokenKey)?;
        let config = Arc::new(config);
        let plain = tls::server_config(registry.clone(), &cert, &key, data.ca.cert_pem(), false)?;
        let alpn = tls::server_config(registry.clone(), &cert, &key, data.ca.cert_pem(), true)?;

        let bind = |ip: IpAddr, port: u16| {
            let addr = SocketAddr::new(ip, port);
            crate::listener::bind(addr).map_err(|source| EmulatorError::Io {
                what: format!("binding {addr}"),
                source,
            })
        };
        let l1 = bind(config.bind, config.port)?;
        let l2 = bind(config.bind, config.alpn_port)?;
        let l3 = bind(config.api_bind, config.api_port)?;
        let local = |l: &TcpListener| {
            l.local_addr().map_err(|source| EmulatorError::Io {
                what: "local address".into(),
                source,
            })
        };
        let (addr, alpn_addr, api_addr) = (local(&l1)?, local(&l2)?, local(&l3)?);
        // Hooks get the API's address, so it is bound first.
        let programs = ProgramRunner::new(&config, &api_url(api_addr));
        let keys = KeyPool::start(config.rsa_key_pool).map_err(|source| EmulatorError::Io {
            what: "starting the RSA key pool's thread".into(),
            source,
        })?;
        let provisioner = Arc::new(Provisioner::new(
            registry.clone(),
            data.ca.clone(),
            &token_key,
            config.clone(),
            programs,
            keys,
        ));
        let broker = Arc::new(Broker::new(config.clone(), registry.clone(), provisioner));
        let control_plane = Arc::new(ControlPlane::new(registry.clone(), &config));
        // Records the jobs state the devices are assumed to know.
        broker.publish_job_notifications();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(accept_loop(
                l1,
                plain,
                false,
                !config.allow_no_sni,
                config.link,
                broker.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(accept_loop(
                l2,
                alpn,
                true,
                !config.allow_no_sni,
                config.link,
                broker.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(control::serve(l3, control_plane, shutdown_rx.clone())),
            tokio::spawn(supervise(broker.clone(), shutdown_rx)),
        ];
        if config.link.is_off() {
            tracing::info!(%addr, %alpn_addr, %api_addr, "iotcore-emulator listening");
        } else {
            tracing::info!(%addr, %alpn_addr, %api_addr, link = %config.link, "iotcore-emulator listening, simulating a slow link");
        }
        Ok(EmulatorHandle {
            data,
            broker,
            addr,
            alpn_addr,
            api_addr,
            shutdown,
            tasks,
        })
    }
}

impl EmulatorHandle {
    /// The listener without ALPN (AWS's port 8883).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener that requires ALPN `x-amzn-mqtt-ca` (AWS's port 443).
    pub fn alpn_addr(&self) -> SocketAddr {
        self.alpn_addr
    }

    /// The control-plane HTTP API (loopback; SigV4 signatures not checked).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give boto3 or the AWS CLI
    /// (`AWS_ENDPOINT_URL_IOT`).
    pub fn api_url(&self) -> String {
        api_url(self.api_addr)
    }

    /// PEM of the root CA that issued the server and device certificates.
    pub fn root_ca_pem(&self) -> String {
        self.data.root_ca_pem()
    }

    pub fn registry(&self) -> &Registry {
        &self.data.registry
    }

    /// Test-only: the MQTT packets each connection sent, in order, one
    /// [`ConnectionLog`] per CONNECT in the order they came (empty unless
    /// [`EmulatorConfig::record_packets`]; payloads are never recorded).
    pub fn packet_log(&self) -> Vec<ConnectionLog> {
        self.broker
            .packet_log
            .as_ref()
            .map(|log| log.snapshot())
            .unwrap_or_default()
    }

    /// Test-only: the private keys CreateKeysAndCertificate sent, as PEM,
    /// in order (empty unless [`EmulatorConfig::record_issued_keys`]).
    pub fn issued_keys(&self) -> Vec<zeroize::Zeroizing<String>> {
        self.broker.provisioner.issued_keys()
    }

    /// Test-only: the certificate ownership tokens the service sent, in
    /// order (empty unless [`EmulatorConfig::record_issued_keys`]).
    pub fn issued_tokens(&self) -> Vec<zeroize::Zeroizing<String>> {
        self.broker.provisioner.issued_tokens()
    }

    /// Test-only: what the pre-provisioning hooks and certificate
    /// providers that refused (or failed) wrote on stderr, oldest first
    /// (the last 64): their reasons, which the device never sees.
    pub fn hook_refusals(&self) -> Vec<String> {
        self.broker.provisioner.program_failures()
    }

    /// Number of MQTT sessions currently connected.
    pub fn session_count(&self) -> usize {
        self.broker.session_count()
    }

    /// Test-only: replaces the response fault of the provisioning APIs
    /// (`None`: answer correctly) and restarts the counts of
    /// `DropResponses` and `ThrottleFirst`. Requests already being handled
    /// keep the fault they started with.
    pub fn set_response_fault(&self, fault: Option<ResponseFault>) {
        self.broker.provisioner.set_response_fault(fault);
    }

    /// The response fault in force.
    pub fn response_fault(&self) -> Option<ResponseFault> {
        self.broker.provisioner.response_fault()
    }

    /// A claim-style credential: ACTIVE, with `policy` attached.
    pub fn create_claim_credential(&self, policy: &str) -> Result<Credential, EmulatorError> {
        self.data.create_credential("claim", &[policy])
    }

    /// An ACTIVE credential with the given policies attached.
    pub fn create_credential(
        &self,
        common_name: &str,
        policies: &[&str],
    ) -> Result<Credential, EmulatorError> {
        self.data.create_credential(common_name, policies)
    }

    /// An ACTIVE credential with the given policies attached, valid for
    /// `validity` only (notBefore and notAfter in Unix seconds): an
    /// expired or not yet valid one is refused at the TLS handshake.
    pub fn create_credential_valid(
        &self,
        common_name: &str,
        policies: &[&str],
        validity: Validity,
    ) -> Result<Credential, EmulatorError> {
        self.data
            .create_credential_with(common_name, policies, Some(validity))
    }

    /// Creates a job with one QUEUED execution for each thing (each must
    /// exist); connected things subscribed to `$aws/things/<thing>/jobs/notify-next`
    /// (and `notify`) are told at once.
    pub fn create_job(
        &self,
        job_id: &str,
        document: serde_json::Value,
        things: &[&str],
    ) -> Result<JobRecord, RegistryError> {
        let job = self.data.registry.create_job(job_id, &document, things)?;
        self.broker.publish_job_notifications();
        Ok(job)
    }

    /// The execution of `job_id` on `thing`, if the job targets the thing.
    pub fn job_execution(
        &self,
        job_id: &str,
        thing: &str,
    ) -> Result<Option<JobExecutionRecord>, RegistryError> {
        self.data.registry.job_execution(job_id, thing)
    }

    /// RSA keys CreateKeysAndCertificate has ready (at most
    /// [`EmulatorConfig::rsa_key_pool`]); a test can wait for the pool to
    /// fill before timing requests.
    pub fn rsa_keys_pooled(&self) -> usize {
        self.broker.provisioner.keys.pooled()
    }

    /// Stops listening, closes every connection and waits for the tasks
    /// and the RSA key pool's threads.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let refill = self.broker.provisioner.keys.stop();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        for thread in refill {
            // It ends after the key it may be making (under a second).
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Let connection tasks see the signal and close their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for EmulatorHandle {
    /// A handle dropped without `shutdown` still stops the server.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        // Not joined here (drop cannot wait): the thread ends on its own.
        let _ = self.broker.provisioner.keys.stop();
    }
}

fn api_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    require_alpn: bool,
    require_sni: bool,
    link: LinkSimulation,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((tcp, peer)) =
        crate::listener::next_connection(&listener, &mut shutdown, "MQTT").await
    {
        // No Nagle delay on anything the emulator (or its link relay) writes.
        let _ = tcp.set_nodelay(true);
        // When it was accepted, for the packet log (0 when not recording).
        let accepted = broker.packet_log.as_ref().map_or(0, |log| log.tick());
        let handshake = Handshake {
            tls: tls.clone(),
            require_alpn,
            require_sni,
        };
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let served = if link.is_off() {
                connection(tcp, peer, handshake, broker, accepted, shutdown).await
            } else {
                let relayed = link::relay(tcp, link);
                connection(relayed, peer, handshake, broker, accepted, shutdown).await
            };
            if let Err(e) = served {
                tracing::info!(%peer, "connection refused: {e}");
            }
        });
    }
}

/// What a listener asks of a client's TLS handshake.
struct Handshake {
    tls: Arc<rustls::ServerConfig>,
    /// ALPN `x-amzn-mqtt-ca` (the 443-style listener).
    require_alpn: bool,
    /// The SNI extension (unless [`EmulatorConfig::allow_no_sni`]).
    require_sni: bool,
}

async fn connection<S>(
    tcp: S,
    peer: SocketAddr,
    handshake: Handshake,
    broker: Arc<Broker>,
    accepted: u64,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tls::accept(tcp, handshake.tls, handshake.require_sni),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())??;
    let (_, server) = tls.get_ref();
    if handshake.require_alpn && server.alpn_protocol() != Some(ALPN_MQTT_CA) {
        return Err("client did not offer ALPN x-amzn-mqtt-ca".into());
    }
    let cert = server
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "no client certificate".to_owned())?;
    broker::serve(broker, tls, cert, peer, accepted, shutdown).await;
    Ok(())
}

/// Every poll interval, or at once on an in-process status or jobs change:
/// notice other processes' writes, drop connections of certificates no
/// longer ACTIVE, publish jobs notifications, and delete certificates whose
/// ownership token expired unused.
async fn supervise(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let registry = broker.registry.clone();
    let mut last_version = registry.data_version().unwrap_or_default();
    let mut checked_epoch = registry.status_epoch();
    let interval = broker.config.poll_interval;
    loop {
        let mut jobs_changed = false;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = registry.status_change() => {}
            _ = registry.jobs_change() => jobs_changed = true,
            _ = tokio::time::sleep(interval) => {}
        }
        let version = registry.data_version().unwrap_or_default();
        if version != last_version {
            last_version = version;
            registry.external_change();
            jobs_changed = true;
        }
        if jobs_changed {
            broker.publish_job_notifications();
        }
        let epoch = registry.status_epoch();
        if epoch != checked_epoch {
            checked_epoch = epoch;
            broker.check_certificate_statuses();
        }
        match registry.delete_expired_pending(now_unix()) {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(count = ids.len(), "deleted certificates never registered")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("expiry sweep failed: {e}"),
        }
    }
}
