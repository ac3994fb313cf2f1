//! The daemon side: [`HelperKeyStore`] starts the helper process, says
//! hello, forwards each operation and ends the process on release.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::deadline::{nonblocking, Timed};
use super::wire::{
    read_message, write_message, ReadError, Reply, ReplyFrame, Request, RequestFrame, VERSION,
};
use super::SUBCOMMAND;
use crate::keystore::{
    Backend, Certification, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError,
    PrivateKeyMaterial, Result, SignatureScheme,
};

/// How long a helper may take to finish after its input is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long the helper may take to answer, unless the configuration says
/// otherwise (`[KEYSTORE] HELPER_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Key generation may take this many times the timeout: an RSA key made
/// inside a TPM or a smart card takes up to a minute or more.
const GENERATE_FACTOR: u32 = 4;

/// The deadline for the answer to `request`, given the store's timeout.
fn answer_within(request: &Request, timeout: Duration) -> Duration {
    match request {
        Request::Generate { .. } => timeout.saturating_mul(GENERATE_FACTOR),
        _ => timeout,
    }
}

/// What a request is, for messages.
fn operation(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "opening the key store",
        Request::Generate { .. } => "a key generation",
        Request::Import { .. } => "a key import",
        Request::Info { .. } => "a key look-up",
        Request::Sign { .. } => "a signature",
        Request::Promote { .. } => "a key promotion",
        Request::Delete { .. } => "a key deletion",
        Request::List => "listing the keys",
        Request::HardwareId => "reading the hardware id",
        Request::Certify { .. } => "a key certification",
    }
}

struct HelperProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl HelperProcess {
    /// Sends `request` and reads the answer, both before `until`
    /// ([`std::io::ErrorKind::TimedOut`] after it).
    fn exchange(
        &mut self,
        request: Request,
        body: &[u8],
        until: Instant,
    ) -> std::result::Result<(Reply, Zeroizing<Vec<u8>>), ReadError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or(std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        write_message(
            &mut Timed {
                inner: stdin,
                until,
            },
            &RequestFrame::V1(request),
            body,
        )?;
        let mut stdout = Timed {
            inner: &mut self.stdout,
            until,
        };
        match read_message::<ReplyFrame>(&mut stdout)? {
            Some((ReplyFrame::V1(reply), body)) => Ok((reply, body)),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the helper exited without answering",
            )
            .into()),
        }
    }

    /// Closes the helper's input, which ends it, and reaps it; kills it if
    /// it has not finished within [`EXIT_GRACE`].
    fn end(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        tracing::warn!(%status, "the key helper ended with an error");
                    }
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    tracing::warn!("the key helper did not end; killing it");
                    self.kill();
                    return;
                }
            }
        }
    }

    /// Kills the helper at once and reaps it: for a helper that did not
    /// answer in time, which is not asked to finish anything.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A [`KeyStore`] whose hardware lives in a `prov-agent key-helper` child
/// process, started on the first operation and ended by
/// [`KeyStore::release`].
pub struct HelperKeyStore {
    backend: Backend,
    program: PathBuf,
    config_path: PathBuf,
    config_text: String,
    timeout: Duration,
    /// The PIN of `PIN_SOURCE = env:NAME`, which the daemon's environment
    /// no longer holds, sealed outside the daemon's memory; every helper
    /// gets it in its hello.
    pin: Option<Arc<super::sealed::SealedSecret>>,
    process: Mutex<Option<HelperProcess>>,
    /// A pidfd of the running helper, held apart from `process` (which an
    /// operation holds while it waits) for [`KeyStore::abandon`]; a pidfd,
    /// not a pid, so that a helper already reaped is never confused with
    /// a process that reused its pid.
    pidfd: Mutex<Option<Arc<OwnedFd>>>,
}

impl std::fmt::Debug for HelperKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelperKeyStore")
            .field("backend", &self.backend)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl HelperKeyStore {
    /// A store that runs `program key-helper` with the configuration
    /// `config_text` (read from `config_path`), whose key store is of
    /// `backend`. `program` is normally `/proc/self/exe`: the running
    /// executable, even if a package upgrade has replaced the file since.
    pub fn new(
        program: impl Into<PathBuf>,
        backend: Backend,
        config_path: impl Into<PathBuf>,
        config_text: String,
    ) -> Self {
        Self {
            backend,
            program: program.into(),
            config_path: config_path.into(),
            config_text,
            timeout: DEFAULT_TIMEOUT,
            pin: None,
            process: Mutex::new(None),
            pidfd: Mutex::new(None),
        }
    }

    /// How long the helper may take to answer (key generation: four times
    /// as long) before it is killed and the operation fails as retryable
    /// [`KeyStoreError::Unavailable`]; [`DEFAULT_TIMEOUT`] unless set.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Gives every helper `pin`, the PIN of `PIN_SOURCE = env:NAME`, which
    /// the caller took out of its own environment into a sealed memfd,
    /// outside its memory
    /// ([`crate::keystore::KeyStoreSettings::take_pin_from_environment`]);
    /// each helper gets it in its hello, over the pipe, never in its
    /// environment, and uses it for its one login.
    pub fn with_pin(mut self, pin: Arc<super::sealed::SealedSecret>) -> Self {
        self.pin = Some(pin);
        self
    }

    /// Starts the helper now, so that a key store that cannot be opened
    /// (no device, wrong PIN) is reported at once rather than at the first
    /// operation. The helper keeps running until [`KeyStore::release`].
    pub fn start(&self) -> Result<()> {
        off_runtime(|| {
            let mut guard = self.process.lock().unwrap_or_else(PoisonError::into_inner);
            self.running(&mut guard).map(drop)
        })
    }

    /// The running helper, started if there is none.
    fn running<'a>(&self, process: &'a mut Option<HelperProcess>) -> Result<&'a mut HelperProcess> {
        if process.is_none() {
            *process = Some(self.spawn()?);
        }
        Ok(process.as_mut().expect("a helper was just started"))
    }

    /// Whether a helper process is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// The process id of the running helper, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.child.id())
    }

    /// A helper that failed or gave an answer that makes no sense: worth
    /// another try with a fresh one.
    fn broken(&self, what: &str, e: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError::Unavailable {
            backend: self.backend,
            detail: format!("the key helper process {what}: {e}"),
            retryable: true,
            code: None,
        }
    }

    /// The error for a conversation that failed: a helper of another
    /// version, or a broken one.
    fn failed(&self, what: &str, e: ReadError) -> KeyStoreError {
        match e {
            ReadError::Version(helper) => KeyStoreError::HelperVersion {
                program: self.program.clone(),
                daemon: VERSION,
                helper,
            },
            e => self.broken(what, e),
        }
    }

    fn spawn(&self) -> Result<HelperProcess> {
        let pin = match &self.pin {
            Some(sealed) => Some(
                sealed
                    .read()
                    .map_err(|e| self.broken("could not be given the PIN", e))?,
            ),
            None => None,
        };
        let mut child = Command::new(&self.program)
            .arg0("prov-agent")
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Only the daemon talks to systemd.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .spawn()
            .map_err(|e| self.broken(&format!("{} could not start", self.program.display()), e))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        *self.pidfd.lock().unwrap_or_else(PoisonError::into_inner) = pidfd.map(Arc::new);
        let mut process = HelperProcess {
            child,
            stdin: Some(stdin),
            stdout,
        };
        if let Err(e) = nonblocking(process.stdin.as_ref().expect("just set"))
            .and_then(|()| nonblocking(&process.stdout))
        {
            process.kill();
            return Err(self.broken("pipes could not be set up", e));
        }
        let hello = Request::Hello {
            config_path: self.config_path.clone(),
            config_text: self.config_text.clone(),
        };
        let within = answer_within(&hello, self.timeout);
        let what = operation(&hello);
        let body: &[u8] = pin.as_deref().map_or(&[], |p| p.as_slice());
        let result = match process.exchange(hello, body, Instant::now() + within) {
            Ok((Reply::Hello { backend }, _)) if backend == self.backend => return Ok(process),
            Ok((Reply::Hello { backend }, _)) => Err(self.broken(
                "does not match the daemon",
                format!(
                    "it serves a {backend} key store, the daemon's is {}; restart the daemon",
                    self.backend
                ),
            )),
            Ok((Reply::Error { error }, _)) => Err(error.into()),
            Ok((other, _)) => Err(self.broken("answered the hello with", format!("{other:?}"))),
            Err(e) if timed_out(&e) => {
                process.kill();
                return Err(self.too_slow(what, within));
            }
            Err(e) => Err(self.failed("failed to start", e)),
        };
        process.end();
        result
    }

    /// The error for a helper that did not answer `what` in time.
    fn too_slow(&self, what: &str, within: Duration) -> KeyStoreError {
        self.broken(
            &format!("did not finish {what} within {within:?}"),
            "it was stopped; the TPM or token may be hung or very slow (raise \
             [KEYSTORE] HELPER_TIMEOUT if it is only slow)",
        )
    }

    /// Forwards one operation ([`off_runtime`]).
    fn call(&self, request: Request, body: &[u8]) -> Result<(Reply, Zeroizing<Vec<u8>>)> {
        off_runtime(|| self.call_blocking(request, body))
    }

    fn call_blocking(&self, request: Request, body: &[u8]) -> Result<(Reply, Zeroizing<Vec<u8>>)> {
        let mut guard = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        let what = operation(&request);
        let process = self.running(&mut guard)?;
        let within = answer_within(&request, self.timeout);
        match process.exchange(request, body, Instant::now() + within) {
            Ok((Reply::Error { error }, _)) => Err(error.into()),
            Ok(answer) => Ok(answer),
            Err(e) if timed_out(&e) => {
                if let Some(p) = guard.take() {
                    p.kill();
                }
                Err(self.too_slow(what, within))
            }
            Err(e) => {
                // A dead or confused helper is ended; the next call starts
                // a fresh one.
                if let Some(p) = guard.take() {
                    p.end();
                }
                Err(self.failed("failed", e))
            }
        }
    }

    fn unexpected(&self, reply: Reply) -> KeyStoreError {
        self.broken("gave an unexpected answer", format!("{reply:?}"))
    }

    /// Sends `request` and `body`, expecting a key description back.
    fn key(&self, request: Request, body: &[u8]) -> Result<KeyInfo> {
        match self.call(request, body)?.0 {
            Reply::Key { key } => key
                .into_info()
                .map_err(|e| self.broken("sent a bad key description", e)),
            other => Err(self.unexpected(other)),
        }
    }
}

/// Runs `f`, which waits for the helper. Inside a multi-threaded tokio
/// runtime (the daemon's) the wait leaves the runtime's worker
/// (`block_in_place`), so that the runtime's other tasks (signals, the
/// watchdog) go on meanwhile; elsewhere it just blocks.
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn timed_out(e: &ReadError) -> bool {
    matches!(e, ReadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

impl KeyStore for HelperKeyStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn generate(&self, label: &KeyLabel, algorithm: KeyAlgorithm) -> Result<KeyInfo> {
        self.key(
            Request::Generate {
                label: label.as_str().into(),
                algorithm,
            },
            &[],
        )
    }

    fn import(&self, label: &KeyLabel, key: &PrivateKeyMaterial) -> Result<KeyInfo> {
        let request = Request::Import {
            label: label.as_str().into(),
        };
        self.key(request, key.pkcs8_der())
    }

    fn info(&self, label: &KeyLabel) -> Result<KeyInfo> {
        self.key(
            Request::Info {
                label: label.as_str().into(),
            },
            &[],
        )
    }

    fn sign(&self, label: &KeyLabel, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        let request = Request::Sign {
            label: label.as_str().into(),
            scheme,
        };
        match self.call(request, message)? {
            (Reply::Signature, signature) => Ok(signature.to_vec()),
            (other, _) => Err(self.unexpected(other)),
        }
    }

    fn promote(&self, pending: &KeyLabel, current: &KeyLabel) -> Result<KeyInfo> {
        self.key(
            Request::Promote {
                pending: pending.as_str().into(),
                current: current.as_str().into(),
            },
            &[],
        )
    }

    fn delete(&self, label: &KeyLabel) -> Result<()> {
        let request = Request::Delete {
            label: label.as_str().into(),
        };
        match self.call(request, &[])?.0 {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        match self.call(Request::List, &[])?.0 {
            Reply::Keys { keys } => keys
                .into_iter()
                .map(|k| {
                    k.into_info()
                        .map_err(|e| self.broken("sent a bad key description", e))
                })
                .collect(),
            other => Err(self.unexpected(other)),
        }
    }

    fn certify(&self, key: &KeyLabel, by: &KeyLabel, qualifying: &[u8]) -> Result<Certification> {
        let request = Request::Certify {
            key: key.as_str().into(),
            by: by.as_str().into(),
            qualifying: qualifying.to_vec(),
        };
        match self.call(request, &[])?.0 {
            Reply::Certification {
                attest,
                signature,
                public,
            } => {
                let part = |hex_text: &str| {
                    hex::decode(hex_text)
                        .map_err(|e| self.broken("sent a certification that is not hex", e))
                };
                Ok(Certification {
                    attest: part(&attest)?,
                    signature: part(&signature)?,
                    public: part(&public)?,
                })
            }
            other => Err(self.unexpected(other)),
        }
    }

    fn hardware_id(&self) -> Option<Result<String>> {
        match self.call(Request::HardwareId, &[]) {
            Ok((Reply::HardwareId { id }, _)) => id.map(Ok),
            Ok((other, _)) => Some(Err(self.unexpected(other))),
            Err(e) => Some(Err(e)),
        }
    }

    fn abandon(&self) {
        let pidfd = self
            .pidfd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(fd) = pidfd {
            // ESRCH: it has ended already.
            let _ = rustix::process::pidfd_send_signal(&*fd, rustix::process::Signal::KILL);
            tracing::debug!("key helper killed");
        }
    }

    fn release(&self) {
        let process = self
            .process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.pidfd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(p) = process {
            p.end();
            tracing::debug!("key helper ended");
        }
    }
}

impl Drop for HelperKeyStore {
    fn drop(&mut self) {
        self.release();
    }
}
