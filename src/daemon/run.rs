//! `prov-agent run`: the daemon.
//!
//! Offline first: it starts from the identity on disk without a network,
//! and keeps one MQTT connection as the thing, reconnecting with capped
//! exponential backoff and full jitter. It rotates the certificate when it
//! reaches [ROTATION] THRESHOLD (plus a per-certificate random delay, so a
//! fleet does not rotate at once), when the backend publishes
//! `{"msg": "rotate_cert"}` on `cmd/<thing>` (without RETAIN: a retained
//! command is ignored with a warning), and when an AWS IoT job with
//! `"operation": "rotate-certificate"` arrives. Before a rotation it closes
//! its own connection (the verification connection uses the same client id,
//! and IoT Core drops the older of two); afterwards it reconnects with the
//! new identity. SIGHUP reloads the config, SIGTERM stops; under systemd it
//! sends READY, STATUS and WATCHDOG notifications.
//!
//! The daemon's key store is a [`crate::keystore::helper::HelperKeyStore`]:
//! the TPM or token is opened in a child process for a handshake or a
//! rotation and closed again ([`KeyStore::release`]) once it is over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use super::notify::{Notifier, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC};
use crate::config::{Config, PayloadFormat};
use crate::crypto::Certificate;
use crate::keystore::KeyStore;
use crate::mqtt::endpoint::Endpoint;
use crate::mqtt::{response_topics, ConnectOptions, Message, MqttError, Session};
use crate::provision::enroll::{enroll_locked, EnrollOptions};
use crate::provision::identity::Identity;
use crate::provision::journal::{Journal, Operation};
use crate::provision::retry::Backoff;
use crate::provision::rotate::{rotate_locked, scheduled_at, RotateOptions};
use crate::provision::{lock_state_dir, ProvisionError};

/// The job document operation that asks for a rotation.
pub const JOB_OPERATION: &str = "rotate-certificate";

/// The only variables of the daemon's environment the post-rotation
/// command gets (besides the `PROV_AGENT_*` that describe the rotation).
pub const POST_ROTATION_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// Why a rotation runs.
#[derive(Debug, Clone)]
enum Trigger {
    Schedule,
    Command,
    Job { job_id: String },
}

struct Daemon {
    config_path: PathBuf,
    config: Config,
    store: Arc<dyn KeyStore>,
    identity: Identity,
    notifier: Option<Notifier>,
    signals: Signals,
    /// The identity's key was found deleted or replaced, and said so.
    identity_broken: bool,
    /// SIGTERM or SIGINT came while a connection or a rotation was under
    /// way: the main loop stops at its next turn.
    stopping: bool,
    session: Option<Session>,
    reconnect: Backoff,
    attempt: u32,
    next_connect: Instant,
}

/// The signals the daemon acts on.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    /// Test builds with `PROV_AGENT_MEMDUMP` only: SIGUSR2, which writes a
    /// dump of the running daemon's memory (src/memdump.rs). Always `None`
    /// otherwise.
    dump: Option<Signal>,
}

/// What a signal asks of the main loop.
#[derive(Debug)]
enum SignalEvent {
    Stop,
    Reload,
    /// A memory dump was written (test builds only).
    Dumped,
}

impl Signals {
    fn install() -> Result<Self, ProvisionError> {
        let install = |kind: SignalKind, what: &'static str| {
            signal(kind).map_err(ProvisionError::io(what, "signal"))
        };
        #[cfg(feature = "fault-injection")]
        let dump = match std::env::var_os("PROV_AGENT_MEMDUMP") {
            Some(_) => Some(install(
                SignalKind::user_defined2(),
                "install SIGUSR2 handler",
            )?),
            None => None,
        };
        #[cfg(not(feature = "fault-injection"))]
        let dump = None;
        Ok(Self {
            term: install(SignalKind::terminate(), "install SIGTERM handler")?,
            int: install(SignalKind::interrupt(), "install SIGINT handler")?,
            hup: install(SignalKind::hangup(), "install SIGHUP handler")?,
            dump,
        })
    }

    /// SIGTERM or SIGINT (a SIGHUP meanwhile waits for [`Signals::next`]).
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// The next signal.
    async fn next(&mut self) -> SignalEvent {
        let Self {
            term,
            int,
            hup,
            dump,
        } = self;
        let dump = async {
            match dump {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => SignalEvent::Stop,
            _ = int.recv() => SignalEvent::Stop,
            _ = hup.recv() => SignalEvent::Reload,
            Some(()) = dump => {
                #[cfg(feature = "fault-injection")]
                crate::memdump::live();
                SignalEvent::Dumped
            }
        }
    }
}

pub async fn run(
    config_path: &Path,
    config: Config,
    store: Arc<dyn KeyStore>,
) -> Result<(), ProvisionError> {
    let _lock = lock_state_dir(&config.state_dir)?;
    let notifier = Notifier::from_env();

    // Finish whatever a crash interrupted before anything else.
    if let Some(journal) = Journal::load(&config.state_dir)? {
        tracing::info!(operation = ?journal.operation, phase = ?journal.phase(), "finishing an interrupted operation");
        let result = match journal.operation {
            Operation::Rotate => {
                rotate_locked(&config, store.clone(), RotateOptions::default()).await
            }
            Operation::Enroll => {
                let serial =
                    crate::provision::serial::resolve(&config.provisioning.serial, store.as_ref())?;
                enroll_locked(&config, store.clone(), &serial, EnrollOptions::default()).await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %crate::error::report(&e), "the interrupted operation could not be finished; carrying on with the current identity");
        }
    }
    let identity = Identity::load(&config.state_dir)?.ok_or(ProvisionError::NotEnrolled)?;
    crate::provision::export::ensure(&config, &identity);

    let mut daemon = Daemon {
        config_path: config_path.to_path_buf(),
        config,
        store,
        identity,
        notifier,
        signals: Signals::install()?,
        identity_broken: false,
        stopping: false,
        session: None,
        reconnect: Backoff {
            max_retries: u32::MAX,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        },
        attempt: 0,
        next_connect: Instant::now(),
    };
    daemon.notify(|n| n.ready());
    daemon.status("started");
    tracing::info!(thing = %daemon.identity.thing_name, certificate = %daemon.identity.certificate_id, "daemon started");
    daemon.main_loop().await
}

impl Daemon {
    fn notify(&self, f: impl FnOnce(&Notifier)) {
        if let Some(n) = &self.notifier {
            f(n);
        }
    }

    fn status(&self, what: &str) {
        let line = format!(
            "{what}; thing {} certificate {}",
            self.identity.thing_name,
            &self.identity.certificate_id[..12.min(self.identity.certificate_id.len())]
        );
        self.notify(|n| n.status(&line));
    }

    fn watchdog_period(&self) -> Duration {
        self.notifier
            .as_ref()
            .and_then(Notifier::watchdog_interval)
            .unwrap_or(Duration::from_secs(3600))
    }

    /// When the current certificate is due ([`scheduled_at`]: THRESHOLD
    /// plus its own random delay); at once if it cannot be read.
    fn due(&self) -> SystemTime {
        match Certificate::from_pem(&self.identity.certificate_pem, "identity") {
            Ok(cert) => scheduled_at(&cert, &self.config.rotation),
            Err(_) => SystemTime::now(),
        }
    }

    async fn main_loop(&mut self) -> Result<(), ProvisionError> {
        let mut watchdog = tokio::time::interval(self.watchdog_period());
        let mut check = tokio::time::interval(self.config.rotation.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.stopping {
                return self.stop().await;
            }
            if self.session.is_none() && Instant::now() >= self.next_connect {
                self.connect().await;
                continue;
            }
            let reconnect_at = self.next_connect;
            let offline = self.session.is_none();
            tokio::select! {
                signal = self.signals.next() => match signal {
                    SignalEvent::Stop => return self.stop().await,
                    SignalEvent::Reload => self.reload(),
                    SignalEvent::Dumped => {}
                },
                _ = watchdog.tick() => self.notify(|n| n.watchdog()),
                _ = check.tick() => {
                    if SystemTime::now() >= self.due() {
                        tracing::info!("the certificate is due for rotation");
                        self.rotate(Trigger::Schedule).await;
                    }
                }
                _ = tokio::time::sleep_until(reconnect_at), if offline => {}
                message = next_message(&mut self.session) => match message {
                    Ok(message) => self.handle(&message).await,
                    Err(e) => {
                        tracing::warn!(error = %crate::error::report(&e), "connection lost");
                        self.session = None;
                        self.schedule_reconnect();
                        self.status("offline, reconnecting");
                    }
                },
            }
        }
    }

    /// Waits for `work`, which runs elsewhere (a task or a thread of its
    /// own, so that its waits for the key helper never hold this task),
    /// while serving the watchdog and SIGTERM/SIGINT. `None` when a stop
    /// signal came first: then [`Daemon::stopping`] is set and the work is
    /// abandoned, as a crash would leave it (an interrupted rotation is
    /// finished from its journal at the next start).
    async fn serve_while<T>(
        &mut self,
        what: &'static str,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        let mut watchdog = tokio::time::interval(self.watchdog_period());
        loop {
            tokio::select! {
                value = &mut work => return Some(value),
                _ = self.signals.stop() => {
                    tracing::warn!("stop requested during {what}: not waiting for it to finish");
                    self.stopping = true;
                    return None;
                }
                _ = watchdog.tick() => self.notify(|n| n.watchdog()),
            }
        }
    }

    /// A rotation, run on a thread of its own with its own runtime, and its
    /// outcome.
    fn rotation(
        &self,
    ) -> impl std::future::Future<Output = Result<crate::provision::Outcome, ProvisionError>> {
        let config = self.config.clone();
        let store = self.store.clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        let started = std::thread::Builder::new()
            .name("rotation".into())
            .spawn(move || {
                let result = crate::runtime::current_thread()
                    .map_err(ProvisionError::io("start the rotation's runtime", "tokio"))
                    .and_then(|rt| {
                        rt.block_on(rotate_locked(&config, store, RotateOptions::default()))
                    });
                let _ = done.send(result);
            });
        async move {
            started.map_err(ProvisionError::io("start the rotation's thread", "thread"))?;
            outcome.await.unwrap_or_else(|_| {
                Err(ProvisionError::io("finish the rotation", "thread")(
                    std::io::Error::other("the rotation's thread ended without an outcome"),
                ))
            })
        }
    }

    async fn stop(&mut self) -> Result<(), ProvisionError> {
        tracing::info!("stopping");
        // A helper that an abandoned operation still waits for (it may hang
        // in the hardware) ends with the daemon.
        if self.stopping {
            self.store.abandon();
        }
        self.notify(|n| n.stopping());
        if let Some(s) = self.session.take() {
            s.close().await;
        }
        Ok(())
    }

    fn reload(&mut self) {
        self.notify(|n| n.reloading());
        match Config::load(&self.config_path) {
            Ok(new) => {
                if new.keystore.settings != self.config.keystore.settings {
                    tracing::warn!(
                        "key store settings changed: they take effect at the next restart"
                    );
                }
                self.config = new;
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %crate::error::report(&e), "configuration not reloaded; keeping the running one")
            }
        }
        self.notify(|n| n.ready());
    }

    fn schedule_reconnect(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
        let delay = self
            .reconnect
            .delay(self.attempt)
            .max(Duration::from_millis(200));
        self.next_connect = Instant::now() + delay;
        tracing::info!(?delay, attempt = self.attempt, "reconnecting later");
    }

    fn thing_topics(&self) -> (String, String) {
        let thing = &self.identity.thing_name;
        (
            self.config.rotation.command_topic.replace("{thing}", thing),
            format!("$aws/things/{thing}/jobs/notify-next"),
        )
    }

    /// ROOT_CERT is read again at every connection attempt, so that a fixed
    /// file is picked up without a reload.
    fn connect_options(&self) -> Result<ConnectOptions, ProvisionError> {
        let endpoint = Endpoint::new(&self.config)?;
        self.identity.connect_options(&endpoint, self.store.clone())
    }

    /// Connects and then looks for a job queued while the device was
    /// offline.
    async fn connect(&mut self) {
        if self.connect_only().await {
            self.pending_job().await;
        }
    }

    async fn connect_only(&mut self) -> bool {
        let result = match self.connect_options() {
            Ok(opts) => {
                // The command and Jobs topics, and the answers to the
                // pending job query that follows, subscribed right behind
                // CONNECT.
                let (cmd, jobs) = self.thing_topics();
                let [accepted, rejected] = response_topics(&self.next_job_topic());
                let topics = [cmd, jobs, accepted, rejected];
                // A task of its own: the handshake's signature waits for the
                // key helper off this task, which serves signals meanwhile.
                let connecting =
                    tokio::spawn(async move { Session::connect_subscribed(&opts, &topics).await });
                let connected = async {
                    connecting
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                };
                match self.serve_while("connecting", connected).await {
                    Some(result) => result.map_err(ProvisionError::from),
                    None => return false,
                }
            }
            Err(e) => Err(e),
        };
        // The key was needed for the handshake only.
        self.store.release();
        match result {
            Ok(session) => {
                if std::mem::take(&mut self.identity_broken) {
                    tracing::info!("the identity's key is back");
                }
                tracing::info!(thing = %self.identity.thing_name, "connected");
                self.session = Some(session);
                self.attempt = 0;
                self.status("connected");
                true
            }
            Err(
                e @ (ProvisionError::IdentityKeyMismatch { .. }
                | ProvisionError::IdentityKeyMissing { .. }),
            ) => {
                // Nothing the daemon can do: say it once, clearly, and look
                // again now and then in case the key is put back.
                if !std::mem::replace(&mut self.identity_broken, true) {
                    tracing::error!(error = %crate::error::report(&e), retry = ?self.reconnect.cap, "the identity cannot connect until this is fixed");
                } else {
                    tracing::debug!(error = %crate::error::report(&e), "the identity's key is still missing or another");
                }
                self.next_connect = Instant::now() + self.reconnect.cap;
                self.status(&format!("identity broken: {e}"));
                false
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::report(&e), "cannot connect");
                self.schedule_reconnect();
                self.status("offline, reconnecting");
                false
            }
        }
    }

    /// The topic of the query for the next pending job.
    fn next_job_topic(&self) -> String {
        format!("$aws/things/{}/jobs/$next/get", self.identity.thing_name)
    }

    async fn pending_job(&mut self) {
        let topic = self.next_job_topic();
        let timeout = self.config.provisioning.response_timeout;
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session
            .request(
                "DescribeJobExecution",
                &topic,
                PayloadFormat::Json,
                &serde_json::json!({}),
                timeout,
            )
            .await
        {
            Ok(answer) => {
                if let Some(job_id) = rotation_job(&answer) {
                    self.rotate(Trigger::Job { job_id }).await;
                }
            }
            Err(e) => tracing::debug!(error = %crate::error::report(&e), "no pending job"),
        }
    }

    async fn handle(&mut self, message: &Message) {
        let topic = message.topic.as_str();
        let (cmd, jobs) = self.thing_topics();
        // A retained command is sent again at every subscription, so after
        // every reconnect, and a rotation reconnects: acting on it would
        // rotate again after every rotation, as soon as MIN_INTERVAL lets.
        if topic == cmd && message.retained {
            tracing::warn!(
                topic,
                "retained command ignored: the backend must publish commands on this topic \
                 without RETAIN (the broker sends a retained one again at every reconnect); \
                 clear it by publishing an empty retained message to the topic"
            );
            return;
        }
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            tracing::warn!(topic, "ignoring a message that is not JSON");
            return;
        };
        if topic == cmd {
            if body.get("msg").and_then(|m| m.as_str()) == Some("rotate_cert") {
                let since =
                    crate::provision::journal::now().saturating_sub(self.identity.committed_at);
                let min = self.config.rotation.min_interval;
                if since < min.as_secs() {
                    tracing::warn!(
                        topic,
                        since_last_secs = since,
                        ?min,
                        "rotation requested sooner than [ROTATION] MIN_INTERVAL after the \
                         last one: ignored"
                    );
                    return;
                }
                tracing::info!("rotation requested on {topic}");
                self.rotate(Trigger::Command).await;
            } else {
                tracing::info!(topic, "ignoring an unknown command");
            }
        } else if topic == jobs {
            if let Some(job_id) = rotation_job(&body) {
                self.rotate(Trigger::Job { job_id }).await;
            }
        }
    }

    async fn update_job(&mut self, job_id: &str, status: &str, details: serde_json::Value) {
        let topic = format!(
            "$aws/things/{}/jobs/{job_id}/update",
            self.identity.thing_name
        );
        let timeout = self.config.provisioning.response_timeout;
        let body = serde_json::json!({ "status": status, "statusDetails": details });
        let Some(session) = self.session.as_mut() else {
            tracing::warn!(job_id, status, "cannot update the job: offline");
            return;
        };
        if let Err(e) = session
            .request(
                "UpdateJobExecution",
                &topic,
                PayloadFormat::Json,
                &body,
                timeout,
            )
            .await
        {
            tracing::warn!(job_id, status, error = %crate::error::report(&e), "job update failed");
        }
    }

    async fn rotate(&mut self, trigger: Trigger) {
        // A job this daemon already did (its SUCCEEDED update was lost):
        // say so again instead of rotating again.
        if let Trigger::Job { job_id } = &trigger {
            if done_jobs::contains(&self.config.state_dir, job_id) {
                tracing::info!(job_id, "job already done: answering SUCCEEDED again");
                let details = serde_json::json!({ "certificateId": self.identity.certificate_id });
                self.update_job(job_id, "SUCCEEDED", details).await;
                return;
            }
        }
        if let Trigger::Job { job_id } = &trigger {
            self.update_job(job_id, "IN_PROGRESS", serde_json::json!({}))
                .await;
        }
        self.status("rotating");
        // Our own connection uses the thing name as client id, as the
        // verification connection will: close it first.
        if let Some(s) = self.session.take() {
            s.close().await;
        }
        let Some(result) = self.serve_while("a rotation", self.rotation()).await else {
            return;
        };
        // Nothing of the hardware stays open for the post-rotation command
        // to inherit, or to keep from the service it reloads.
        self.store.release();
        let outcome = match result {
            Ok(outcome) => {
                tracing::info!(?trigger, old = ?outcome.identity.previous_certificate_id, new = %outcome.identity.certificate_id, "rotated");
                self.identity = outcome.identity;
                self.post_rotation().await;
                Ok(())
            }
            Err(e) => {
                tracing::error!(?trigger, error = %crate::error::report(&e), "rotation failed; the device keeps its identity");
                Err(crate::error::report(&e))
            }
        };
        // Reconnect at once, with whichever identity is now current.
        self.attempt = 0;
        self.connect_only().await;
        if let Trigger::Job { job_id } = &trigger {
            match &outcome {
                Ok(()) => {
                    if let Err(e) = done_jobs::record(&self.config.state_dir, job_id) {
                        tracing::warn!(job_id, error = %crate::error::report(&e), "cannot remember the job as done");
                    }
                    let details =
                        serde_json::json!({ "certificateId": self.identity.certificate_id });
                    self.update_job(job_id, "SUCCEEDED", details).await;
                }
                Err(e) => {
                    let mut reason = e.clone();
                    reason.truncate(500);
                    self.update_job(job_id, "FAILED", serde_json::json!({ "reason": reason }))
                        .await;
                }
            }
        }
        self.status(if outcome.is_ok() {
            "rotated"
        } else {
            "rotation failed"
        });
    }

    /// Runs [ROTATION] POST_ROTATION_COMMAND with `/bin/sh -c`, telling it
    /// the new identity through the environment, which otherwise holds only
    /// [`POST_ROTATION_ENV`] of the daemon's.
    async fn post_rotation(&self) {
        let Some(command) = self.config.rotation.post_rotation_command.clone() else {
            return;
        };
        let cert_path = Identity::cert_path(&self.config.state_dir);
        let export = crate::provision::export::current(&self.config.export);
        let openssl_key = crate::keystore::ConsumerKey::of_reference(&self.identity.key_reference)
            .ok()
            .and_then(|k| k.openssl_key(Some(&export.join(crate::provision::export::TPM_KEY_FILE))))
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new("/bin/sh");
        // Nothing of the daemon's environment but an allowlist: it may hold
        // the PIN (`PIN_SOURCE = env:`), `CREDENTIALS_DIRECTORY` and the
        // rest of what the daemon was started with.
        cmd.env_clear();
        for name in POST_ROTATION_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        cmd.arg("-c")
            .arg(&command)
            .env("PROV_AGENT_THING_NAME", &self.identity.thing_name)
            .env("PROV_AGENT_CERTIFICATE_ID", &self.identity.certificate_id)
            .env("PROV_AGENT_CERT_PATH", &cert_path)
            .env("PROV_AGENT_KEY_REFERENCE", &self.identity.key_reference)
            .env("PROV_AGENT_EXPORT_DIR", &export)
            .env("PROV_AGENT_OPENSSL_KEY", &openssl_key)
            .env(
                "PROV_AGENT_PREVIOUS_CERTIFICATE_ID",
                self.identity
                    .previous_certificate_id
                    .clone()
                    .unwrap_or_default(),
            )
            .env_remove(NOTIFY_SOCKET)
            .env_remove(WATCHDOG_USEC)
            .env_remove(WATCHDOG_PID)
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(120), cmd.status()).await {
            Ok(Ok(status)) if status.success() => tracing::info!("post-rotation command done"),
            Ok(Ok(status)) => tracing::warn!(%status, "post-rotation command failed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::report(&e), "post-rotation command could not start")
            }
            Err(_) => tracing::warn!("post-rotation command still running after 120 s; killed"),
        }
    }
}

async fn next_message(session: &mut Option<Session>) -> Result<Message, MqttError> {
    match session.as_mut() {
        Some(s) => s.next_message().await,
        None => std::future::pending().await,
    }
}

/// The job id of a pending rotation job in a notify-next or
/// DescribeJobExecution body.
fn rotation_job(body: &serde_json::Value) -> Option<String> {
    let execution = body.get("execution")?;
    let status = execution
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("QUEUED");
    if !matches!(status, "QUEUED" | "IN_PROGRESS") {
        return None;
    }
    let operation = execution.get("jobDocument")?.get("operation")?.as_str()?;
    if operation != JOB_OPERATION {
        tracing::info!(operation, "ignoring a job for another operation");
        return None;
    }
    execution.get("jobId")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_rotation_jobs_count() {
        let job = |status: &str, op: &str| serde_json::json!({"execution": {"jobId": "j1", "status": status, "jobDocument": {"operation": op}}});
        assert_eq!(
            rotation_job(&job("QUEUED", JOB_OPERATION)).as_deref(),
            Some("j1")
        );
        assert_eq!(
            rotation_job(&job("IN_PROGRESS", JOB_OPERATION)).as_deref(),
            Some("j1")
        );
        assert_eq!(rotation_job(&job("SUCCEEDED", JOB_OPERATION)), None);
        assert_eq!(rotation_job(&job("QUEUED", "reboot")), None);
        assert_eq!(rotation_job(&serde_json::json!({"timestamp": 1})), None);
    }
}

/// The rotation jobs this gateway completed (the last [`done_jobs::KEPT`]),
/// in `STATE_DIR/jobs-done.json`: a job whose SUCCEEDED update was lost
/// comes back on the next connection and is answered, not done again.
mod done_jobs {
    use std::path::Path;

    pub const KEPT: usize = 64;
    const FILE: &str = "jobs-done.json";

    fn load(state_dir: &Path) -> Vec<String> {
        std::fs::read(state_dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn contains(state_dir: &Path, job_id: &str) -> bool {
        load(state_dir).iter().any(|j| j == job_id)
    }

    pub fn record(state_dir: &Path, job_id: &str) -> std::io::Result<()> {
        let mut done = load(state_dir);
        done.retain(|j| j != job_id);
        done.push(job_id.to_string());
        if done.len() > KEPT {
            let extra = done.len() - KEPT;
            done.drain(..extra);
        }
        let text = serde_json::to_vec(&done).expect("json");
        crate::durable::write_file(&state_dir.join(FILE), &text)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn remembers_the_last_jobs() {
            let dir = tempfile::tempdir().unwrap();
            assert!(!super::contains(dir.path(), "a"));
            for i in 0..(super::KEPT + 3) {
                super::record(dir.path(), &format!("job-{i}")).unwrap();
            }
            assert!(!super::contains(dir.path(), "job-0"));
            assert!(super::contains(dir.path(), "job-3"));
            assert!(super::contains(
                dir.path(),
                &format!("job-{}", super::KEPT + 2)
            ));
        }
    }
}
