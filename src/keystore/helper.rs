//! The key helper: a short-lived child process that holds the hardware for
//! the daemon.
//!
//! `prov-agent run` stays connected for months but needs its key only for a
//! TLS handshake or a rotation. It therefore keeps no TPM context and no
//! PKCS#11 session of its own: [`HelperKeyStore`] starts `prov-agent
//! key-helper` (the very executable that is running, `/proc/self/exe`) when
//! a key operation comes, forwards the operations over a pipe, and ends it
//! on [`KeyStore::release`], once the handshake or the rotation is over.
//! The idle daemon therefore
//! - holds no TPM device or socket and no logged-in token session that a
//!   post-rotation command (or any other child) could inherit;
//! - has never initialised the PKCS#11 module, nor tpm2-tss and the OpenSSL
//!   under it, which keeps its resident memory small (`ci/bench.sh daemon`);
//! - leaves the TPM or token to other users between operations.
//!
//! The protocol is private to one executable. A frame is a 4-byte
//! big-endian length and that many bytes; a message is two frames, a JSON
//! header and a binary body (a message to sign, a signature, the PKCS#8 of
//! a key to import, or nothing). Bodies live in `Zeroizing` buffers on both
//! sides and no buffered reader or writer keeps a copy.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    Backend, HelperErrorKind, KeyAlgorithm, KeyInfo, KeyLabel, KeyStore, KeyStoreError,
    PrivateKeyMaterial, PublicKey, Result, SignatureScheme,
};

/// The hidden subcommand that runs the helper side.
pub const SUBCOMMAND: &str = "key-helper";

/// Protocol version; both sides are the same executable, so this guards
/// only against someone starting `key-helper` by hand with another build.
const VERSION: u32 = 1;

/// Largest frame either side accepts (the hello carries the config text).
const MAX_FRAME: usize = 1 << 20;

/// How long a helper may take to finish after its input is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Request {
    Hello {
        version: u32,
        config_path: PathBuf,
        config_text: String,
    },
    Generate {
        label: String,
        algorithm: KeyAlgorithm,
    },
    /// Body: the key's PKCS#8 DER.
    Import {
        label: String,
    },
    Info {
        label: String,
    },
    /// Body: the message to sign.
    Sign {
        label: String,
        scheme: SignatureScheme,
    },
    Promote {
        pending: String,
        current: String,
    },
    Delete {
        label: String,
    },
    List,
    HardwareId,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
enum Reply {
    Hello {
        version: u32,
        backend: Backend,
    },
    Done,
    Key {
        key: WireKey,
    },
    Keys {
        keys: Vec<WireKey>,
    },
    /// Body: the signature.
    Signature,
    HardwareId {
        id: Option<String>,
    },
    Error {
        kind: HelperErrorKind,
        message: String,
        retryable: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WireKey {
    label: String,
    backend: Backend,
    reference: String,
    /// Hex of the DER SubjectPublicKeyInfo.
    spki: String,
}

impl From<&KeyInfo> for WireKey {
    fn from(info: &KeyInfo) -> Self {
        Self {
            label: info.label.as_str().to_string(),
            backend: info.backend,
            reference: info.reference.clone(),
            spki: hex::encode(info.public_key.spki_der()),
        }
    }
}

impl WireKey {
    fn into_info(self) -> std::result::Result<KeyInfo, String> {
        let der = hex::decode(&self.spki).map_err(|e| format!("public key is not hex: {e}"))?;
        Ok(KeyInfo {
            label: KeyLabel::new(self.label).map_err(|e| e.to_string())?,
            backend: self.backend,
            reference: self.reference,
            public_key: PublicKey::from_spki_der(&der).map_err(|e| e.to_string())?,
        })
    }
}

fn error_reply(e: &KeyStoreError) -> Reply {
    Reply::Error {
        kind: e.helper_kind(),
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}

/// Writes one message: header frame, then body frame. The body goes
/// straight to the pipe, never through a buffer of our own.
fn write_message(w: &mut impl Write, header: &impl Serialize, body: &[u8]) -> std::io::Result<()> {
    let json = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    if json.len() > MAX_FRAME || body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "message of {} + {} bytes is over the {MAX_FRAME}-byte frame limit",
            json.len(),
            body.len()
        )));
    }
    let mut head = Vec::with_capacity(json.len() + 8);
    head.extend_from_slice(&(json.len() as u32).to_be_bytes());
    head.extend_from_slice(&json);
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    w.write_all(&head)?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one frame; `None` when the peer closed the pipe before it.
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads one message; `None` on a clean end of input.
fn read_message<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> std::io::Result<Option<(T, Zeroizing<Vec<u8>>)>> {
    let Some(header) = read_frame(r)? else {
        return Ok(None);
    };
    let header = serde_json::from_slice(&header).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad message header: {e}"),
        )
    })?;
    let body = read_frame(r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
    Ok(Some((header, body)))
}

/// The helper side: answers the requests on `input` until it closes.
/// `open` turns the hello's configuration into a key store. Returns an
/// error for a broken conversation; an error of the store itself goes
/// back to the daemon as a reply.
pub fn serve(
    input: &mut impl Read,
    output: &mut impl Write,
    open: impl FnOnce(&Path, &str) -> Result<Arc<dyn KeyStore>>,
) -> std::result::Result<(), String> {
    let io = |e: std::io::Error| format!("key helper: {e}");
    let Some((hello, _)) = read_message::<Request>(input).map_err(io)? else {
        return Ok(());
    };
    let Request::Hello {
        version,
        config_path,
        config_text,
    } = hello
    else {
        return Err("key helper: the first request was not a hello".into());
    };
    if version != VERSION {
        let e = KeyStoreError::Helper {
            kind: HelperErrorKind::Other,
            message: format!(
                "key helper speaks protocol {VERSION}, the daemon {version}: restart the daemon"
            ),
            retryable: false,
        };
        write_message(output, &error_reply(&e), &[]).map_err(io)?;
        return Err(e.to_string());
    }
    let store = match open(&config_path, &config_text) {
        Ok(store) => store,
        Err(e) => {
            // The daemon reports it; the helper just ends.
            write_message(output, &error_reply(&e), &[]).map_err(io)?;
            return Ok(());
        }
    };
    let hello = Reply::Hello {
        version: VERSION,
        backend: store.backend(),
    };
    write_message(output, &hello, &[]).map_err(io)?;
    while let Some((request, body)) = read_message::<Request>(input).map_err(io)? {
        let (reply, out) = match handle(store.as_ref(), request, &body) {
            Ok(answer) => answer,
            Err(e) => (error_reply(&e), Vec::new()),
        };
        write_message(output, &reply, &out).map_err(io)?;
    }
    Ok(())
}

fn handle(store: &dyn KeyStore, request: Request, body: &[u8]) -> Result<(Reply, Vec<u8>)> {
    let key = |info: KeyInfo| Reply::Key {
        key: WireKey::from(&info),
    };
    Ok(match request {
        Request::Hello { .. } => {
            return Err(KeyStoreError::Helper {
                kind: HelperErrorKind::Other,
                message: "key helper: hello twice".into(),
                retryable: false,
            })
        }
        Request::Generate { label, algorithm } => (
            key(store.generate(&KeyLabel::new(label)?, algorithm)?),
            vec![],
        ),
        Request::Import { label } => {
            let material = PrivateKeyMaterial::from_pkcs8_der(body)?;
            (
                key(store.import(&KeyLabel::new(label)?, &material)?),
                vec![],
            )
        }
        Request::Info { label } => (key(store.info(&KeyLabel::new(label)?)?), vec![]),
        Request::Sign { label, scheme } => (
            Reply::Signature,
            store.sign(&KeyLabel::new(label)?, scheme, body)?,
        ),
        Request::Promote { pending, current } => (
            key(store.promote(&KeyLabel::new(pending)?, &KeyLabel::new(current)?)?),
            vec![],
        ),
        Request::Delete { label } => {
            store.delete(&KeyLabel::new(label)?)?;
            (Reply::Done, vec![])
        }
        Request::List => (
            Reply::Keys {
                keys: store.list()?.iter().map(WireKey::from).collect(),
            },
            vec![],
        ),
        Request::HardwareId => (
            Reply::HardwareId {
                id: store.hardware_id().transpose()?,
            },
            vec![],
        ),
    })
}

/// An error reply as the error it reports.
fn into_result(answer: (Reply, Zeroizing<Vec<u8>>)) -> Result<(Reply, Zeroizing<Vec<u8>>)> {
    match answer {
        (
            Reply::Error {
                kind,
                message,
                retryable,
            },
            _,
        ) => Err(KeyStoreError::Helper {
            kind,
            message,
            retryable,
        }),
        answer => Ok(answer),
    }
}

struct HelperProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl HelperProcess {
    fn exchange(
        &mut self,
        request: &Request,
        body: &[u8],
    ) -> std::io::Result<(Reply, Zeroizing<Vec<u8>>)> {
        let stdin = self.stdin.as_mut().ok_or(std::io::ErrorKind::BrokenPipe)?;
        write_message(stdin, request, body)?;
        read_message(&mut self.stdout)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the helper exited without answering",
            )
        })
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

    fn broken(&self, what: &str, e: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError::Unavailable {
            backend: self.backend.as_str(),
            detail: format!("the key helper process {what}: {e}"),
            retryable: true,
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
            version: VERSION,
            config_path: self.config_path.clone(),
            config_text: self.config_text.clone(),
        };
        let result = match process.exchange(&hello, &[]).map(into_result) {
            Ok(Ok((Reply::Hello { version, backend }, _)))
                if version == VERSION && backend == self.backend =>
            {
                return Ok(process);
            }
            Ok(Ok((Reply::Hello { version, backend }, _))) => Err(self.broken(
                "does not match the daemon",
                format!(
                    "protocol {version} and backend {backend}, expected {VERSION} and {}; restart the daemon",
                    self.backend
                ),
            )),
            Ok(Ok((other, _))) => Err(self.broken("answered the hello with", format!("{other:?}"))),
            Ok(Err(refused)) => Err(refused),
            Err(e) => Err(self.broken("failed to start", e)),
        };
        process.end();
        result
    }

    fn call(&self, request: Request, body: &[u8]) -> Result<(Reply, Zeroizing<Vec<u8>>)> {
        let mut guard = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        match self.running(&mut guard)?.exchange(&request, body) {
            Ok(answer) => into_result(answer),
            Err(e) => {
                // A dead or confused helper is ended; the next call starts
                // a fresh one.
                if let Some(p) = guard.take() {
                    p.end();
                }
                Err(self.broken("failed", e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        let request = Request::Sign {
            label: "device".into(),
            scheme: SignatureScheme::EcdsaSha256,
        };
        write_message(&mut buf, &request, b"to be signed").unwrap();
        let mut r = &buf[..];
        let (back, body) = read_message::<Request>(&mut r).unwrap().unwrap();
        assert!(matches!(
            back,
            Request::Sign { ref label, scheme: SignatureScheme::EcdsaSha256 } if label == "device"
        ));
        assert_eq!(&body[..], b"to be signed");
        // A clean end of input between messages is not an error ...
        assert!(read_message::<Request>(&mut r).unwrap().is_none());
        // ... but one in the middle of a message is.
        let mut cut = &buf[..buf.len() - 3];
        assert!(read_message::<Request>(&mut cut).is_err());
    }

    #[test]
    fn oversized_and_garbled_frames_are_refused() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let err = read_frame(&mut &huge[..]).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");

        let mut garbled = Vec::new();
        garbled.extend_from_slice(&5u32.to_be_bytes());
        garbled.extend_from_slice(b"{oops");
        garbled.extend_from_slice(&0u32.to_be_bytes());
        let err = read_message::<Request>(&mut &garbled[..]).unwrap_err();
        assert!(err.to_string().contains("bad message header"), "{err}");
    }

    #[test]
    fn errors_keep_their_kind_message_and_retryability() {
        let e = KeyStoreError::NotFound {
            label: "device".into(),
            backend: "tpm",
            reference: "tpm:handle=0x81000100".into(),
            hint: "enroll first",
        };
        let Reply::Error {
            kind,
            message,
            retryable,
        } = error_reply(&e)
        else {
            panic!("not an error reply");
        };
        let back = KeyStoreError::Helper {
            kind,
            message,
            retryable,
        };
        assert!(back.is_not_found());
        assert!(!back.is_retryable());
        assert_eq!(back.to_string(), e.to_string());

        let busy = KeyStoreError::Unavailable {
            backend: "tpm",
            detail: "TPM_RC_RETRY".into(),
            retryable: true,
        };
        let Reply::Error {
            retryable, kind, ..
        } = error_reply(&busy)
        else {
            panic!("not an error reply");
        };
        assert!(retryable);
        assert_eq!(kind, HelperErrorKind::Other);
    }
}
