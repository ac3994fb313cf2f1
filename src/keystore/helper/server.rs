//! The helper side: `prov-agent key-helper` answers the daemon's requests
//! on its stdin and stdout with the store the hello's configuration opens.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;

use super::wire::{
    read_message, write_message, ReadError, Reply, ReplyFrame, Request, RequestFrame, WireKey,
    VERSION,
};
use crate::keystore::{KeyInfo, KeyLabel, KeyStore, KeyStoreError, PrivateKeyMaterial, Result};

/// Why the helper's conversation with the daemon ended badly (an error of
/// the store goes back to the daemon as a reply instead).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("key helper: {0}")]
    Read(#[from] ReadError),
    #[error("key helper: cannot answer the daemon: {0}")]
    Write(#[source] std::io::Error),
    #[error("key helper: the first message is not a hello but {0}")]
    NoHello(String),
    #[error("key helper: the first message is not a hello but {0}")]
    NoHelloUnreadable(#[source] serde_json::Error),
    #[error("key helper: a second hello")]
    SecondHello,
    /// The daemon is another build; it was told so in a reply.
    #[error(transparent)]
    Version(KeyStoreError),
}

/// Answers the requests on `input` until it closes. `open` turns the
/// hello's configuration, and the PIN the daemon sent with it (the body of
/// the hello, for `PIN_SOURCE = env:NAME`), into a key store. Returns an
/// error for a broken conversation (it goes to the helper's stderr, which
/// is the daemon's); an error of the store, or of opening it, goes back to
/// the daemon as a reply.
pub fn serve(
    input: &mut impl Read,
    output: &mut impl Write,
    open: impl FnOnce(&Path, &str, Option<SecretString>) -> Result<Arc<dyn KeyStore>>,
) -> std::result::Result<(), ServeError> {
    let io = ServeError::Write;
    let (config_path, config_text, pin) = match read_message::<RequestFrame>(input) {
        Ok(None) => return Ok(()),
        Ok(Some((
            RequestFrame::V1(Request::Hello {
                config_path,
                config_text,
            }),
            body,
        ))) => (config_path, config_text, secret(body)),
        Ok(Some((RequestFrame::V1(other), _))) => {
            return Err(ServeError::NoHello(format!("{other:?}")))
        }
        Err(ReadError::Unknown(e)) => return Err(ServeError::NoHelloUnreadable(e)),
        Err(ReadError::Version(daemon)) => {
            // Answered in our own version: the daemon, whatever it speaks,
            // reads the version from the envelope.
            let e = KeyStoreError::HelperVersion {
                program: std::env::current_exe().unwrap_or_else(|_| "prov-agent".into()),
                daemon,
                helper: VERSION,
            };
            write_message(output, &ReplyFrame::V1(Reply::error(&e)), &[]).map_err(io)?;
            return Err(ServeError::Version(e));
        }
        Err(e) => return Err(e.into()),
    };
    let store = match open(&config_path, &config_text, pin) {
        Ok(store) => store,
        Err(e) => {
            // The daemon reports it; the helper just ends.
            write_message(output, &ReplyFrame::V1(Reply::error(&e)), &[]).map_err(io)?;
            return Ok(());
        }
    };
    let hello = Reply::Hello {
        backend: store.backend(),
    };
    write_message(output, &ReplyFrame::V1(hello), &[]).map_err(io)?;
    loop {
        let (RequestFrame::V1(request), body) = match read_message::<RequestFrame>(input) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Request::Hello { .. } = request {
            return Err(ServeError::SecondHello);
        }
        let (reply, out) = match handle(store.as_ref(), request, &body) {
            Ok(answer) => answer,
            Err(e) => (Reply::error(&e), Vec::new()),
        };
        write_message(output, &ReplyFrame::V1(reply), &out).map_err(io)?;
    }
}

/// The hello's body as a secret: `None` when empty or not UTF-8 (a PIN
/// is text); the bytes are wiped either way.
fn secret(body: zeroize::Zeroizing<Vec<u8>>) -> Option<SecretString> {
    let text = std::str::from_utf8(&body).ok().filter(|t| !t.is_empty())?;
    Some(SecretString::from(text.to_string()))
}

/// One request against the store: the reply and its body.
fn handle(store: &dyn KeyStore, request: Request, body: &[u8]) -> Result<(Reply, Vec<u8>)> {
    let key = |info: KeyInfo| Reply::Key {
        key: WireKey::from(&info),
    };
    Ok(match request {
        Request::Hello { .. } => unreachable!("refused before"),
        Request::Generate { label, algorithm } => (
            key({
                crate::fault::stall("helper-generate");
                store.generate(&KeyLabel::new(label)?, algorithm)?
            }),
            vec![],
        ),
        Request::Import { label } => {
            // Test builds: this helper's memory dump says it held a key
            // on its way into the store (tests/memory.rs).
            #[cfg(feature = "fault-injection")]
            crate::memdump::tag("imported-key");
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
        Request::Certify {
            key,
            by,
            qualifying,
        } => {
            let c = store.certify(&KeyLabel::new(key)?, &KeyLabel::new(by)?, &qualifying)?;
            (
                Reply::Certification {
                    attest: hex::encode(c.attest),
                    signature: hex::encode(c.signature),
                    public: hex::encode(c.public),
                },
                vec![],
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::wire::WireError;
    use super::*;
    use crate::keystore::{file::FileKeyStore, FileSettings};

    fn frames(requests: &[RequestFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in requests {
            write_message(&mut out, r, &[]).unwrap();
        }
        out
    }

    fn replies(mut bytes: &[u8]) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Some((ReplyFrame::V1(reply), _)) = read_message(&mut bytes).unwrap() {
            out.push(reply);
        }
        out
    }

    fn hello() -> RequestFrame {
        RequestFrame::V1(Request::Hello {
            config_path: "config.ini".into(),
            config_text: String::new(),
        })
    }

    #[test]
    fn store_errors_are_replies_and_the_conversation_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KeyStore> = Arc::new(
            FileKeyStore::open(&FileSettings {
                key_dir: dir.path().to_path_buf(),
            })
            .unwrap(),
        );
        let input = frames(&[
            hello(),
            RequestFrame::V1(Request::Info {
                label: "device".into(),
            }),
            RequestFrame::V1(Request::List),
        ]);
        let mut output = Vec::new();
        serve(&mut &input[..], &mut output, |_, _, _| Ok(store)).unwrap();
        let replies = replies(&output);
        assert!(matches!(replies[0], Reply::Hello { .. }), "{replies:?}");
        assert!(
            matches!(
                replies[1],
                Reply::Error {
                    error: WireError::NotFound { .. }
                }
            ),
            "{replies:?}"
        );
        assert!(matches!(replies[2], Reply::Keys { ref keys } if keys.is_empty()));
    }

    /// A daemon of another version gets an error in this helper's version,
    /// naming both, and the helper ends with the same words.
    #[test]
    fn a_daemon_of_another_version_is_refused_naming_both() {
        let mut input = Vec::new();
        let v2 = br#"{"v2":{"op":"hello","config":"whatever version 2 sends"}}"#;
        input.extend_from_slice(&(v2.len() as u32).to_be_bytes());
        input.extend_from_slice(v2);
        input.extend_from_slice(&0u32.to_be_bytes());
        let mut output = Vec::new();
        let err = serve(&mut &input[..], &mut output, |_, _, _| {
            panic!("no store is opened for a daemon of another version")
        })
        .unwrap_err();
        assert!(matches!(err, ServeError::Version(_)), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("version 1") && err.contains("version 2"),
            "{err}"
        );
        let replies = replies(&output);
        let [Reply::Error {
            error: WireError::HelperVersion { daemon, helper, .. },
        }] = &replies[..]
        else {
            panic!("{replies:?}");
        };
        assert_eq!((*daemon, *helper), (2, VERSION));
    }

    #[test]
    fn a_store_that_does_not_open_is_the_only_reply() {
        let input = frames(&[hello()]);
        let mut output = Vec::new();
        serve(&mut &input[..], &mut output, |_, _, _| {
            Err(KeyStoreError::HelperConfig {
                message: "config.ini: unknown key NO_SUCH_KEY".into(),
            })
        })
        .unwrap();
        let replies = replies(&output);
        assert!(
            matches!(
                &replies[..],
                [Reply::Error {
                    error: WireError::Helper { message }
                }] if message.contains("NO_SUCH_KEY")
            ),
            "{replies:?}"
        );
    }

    #[test]
    fn a_second_hello_ends_the_conversation() {
        let input = frames(&[hello(), hello()]);
        let mut output = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let err = serve(&mut &input[..], &mut output, |_, _, _| {
            Ok(Arc::new(
                FileKeyStore::open(&FileSettings {
                    key_dir: dir.path().to_path_buf(),
                })
                .unwrap(),
            ))
        })
        .unwrap_err();
        assert!(matches!(err, ServeError::SecondHello), "{err}");
        assert!(err.to_string().contains("second hello"), "{err}");
    }
}
