//! The daemon side: [`HelperKeyStore`] starts the helper process, says
//! hello, forwards each operation and ends the process on release.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::wire::{
    read_message, write_message, ReadError, Reply, ReplyFrame, Request, RequestFrame, VERSION,
};
use super::SUBCOMMAND;
use crate::keystore::{
    Backend, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError, PrivateKeyMaterial, Result,
    SignatureScheme,
};

/// How long a helper may take to finish after its input is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

struct HelperProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl HelperProcess {
    fn exchange(
        &mut self,
        request: Request,
        body: &[u8],
    ) -> std::result::Result<(Reply, Zeroizing<Vec<u8>>), ReadError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or(std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        write_message(stdin, &RequestFrame::V1(request), body)?;
        match read_message::<ReplyFrame>(&mut self.stdout)? {
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
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
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
    process: Mutex<Option<HelperProcess>>,
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
            process: Mutex::new(None),
        }
    }

    /// Starts the helper now, so that a key store that cannot be opened
    /// (no device, wrong PIN) is reported at once rather than at the first
    /// operation. The helper keeps running until [`KeyStore::release`].
    pub fn start(&self) -> Result<()> {
        let mut guard = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        self.running(&mut guard).map(drop)
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
        let mut process = HelperProcess {
            child,
            stdin: Some(stdin),
            stdout,
        };
        let hello = Request::Hello {
            config_path: self.config_path.clone(),
            config_text: self.config_text.clone(),
        };
        let result = match process.exchange(hello, &[]) {
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
            Err(e) => Err(self.failed("failed to start", e)),
        };
        process.end();
        result
    }

    fn call(&self, request: Request, body: &[u8]) -> Result<(Reply, Zeroizing<Vec<u8>>)> {
        let mut guard = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        match self.running(&mut guard)?.exchange(request, body) {
            Ok((Reply::Error { error }, _)) => Err(error.into()),
            Ok(answer) => Ok(answer),
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

    fn hardware_id(&self) -> Option<Result<String>> {
        match self.call(Request::HardwareId, &[]) {
            Ok((Reply::HardwareId { id }, _)) => id.map(Ok),
            Ok((other, _)) => Some(Err(self.unexpected(other))),
            Err(e) => Some(Err(e)),
        }
    }

    fn release(&self) {
        let process = self
            .process
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
