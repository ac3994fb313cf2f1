//! Mapping of cryptoki errors onto [`KeyStoreError`], keeping the C function
//! that failed and its `CKR_*` return value in the details.

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};

use super::super::KeyStoreError;
use super::BACKEND;

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
pub(super) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `Login` -> `C_Login`.
fn c_name(function: Function) -> String {
    format!("C_{function:?}")
}

/// A short, PIN-free description: `C_Login returned CKR_PIN_INCORRECT`.
pub(super) fn describe(err: &Error) -> String {
    match err {
        Error::Pkcs11(rv, function) => format!("{} returned {}", c_name(*function), ckr_name(*rv)),
        other => other.to_string(),
    }
}

/// Whether `err` came from a function that writes token objects.
fn writes_token_objects(err: &Error) -> bool {
    matches!(
        err,
        Error::Pkcs11(
            _,
            Function::GenerateKeyPair
                | Function::CreateObject
                | Function::CopyObject
                | Function::SetAttributeValue
                | Function::DestroyObject
        )
    )
}

/// Maps an error of `op` (a step of the agent: "sign", "generate key pair")
/// onto the key store's error enum.
pub(super) fn map(op: &'static str, err: Error) -> KeyStoreError {
    let detail = format!("{op}: {}", describe(&err));
    match &err {
        Error::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => {
                KeyStoreError::BadPin {
                    backend: BACKEND,
                    detail,
                }
            }
            RvError::PinLocked => KeyStoreError::BadPin {
                backend: BACKEND,
                detail: format!(
                    "{detail}: the user PIN is locked after too many wrong attempts; \
                     the token's security officer must reset it"
                ),
            },
            RvError::PinExpired => KeyStoreError::BadPin {
                backend: BACKEND,
                detail: format!("{detail}: the PIN has expired; set a new one on the token"),
            },
            RvError::UserPinNotInitialized => KeyStoreError::BadPin {
                backend: BACKEND,
                detail: format!(
                    "{detail}: the token has no user PIN yet; initialise it \
                     (softhsm2-util --init-token, or the vendor's tool)"
                ),
            },
            // The token went away or the session died with it: plugging it
            // back in or restarting the daemon behind it helps.
            RvError::TokenNotPresent
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::SessionCount
            | RvError::FunctionCanceled => KeyStoreError::Unavailable {
                backend: BACKEND,
                detail,
                retryable: true,
                code: None,
            },
            RvError::TokenNotRecognized | RvError::CryptokiNotInitialized => {
                KeyStoreError::Unavailable {
                    backend: BACKEND,
                    detail,
                    retryable: false,
                    code: None,
                }
            }
            // A module that fails to store a token object often says only
            // this (SoftHSM does on a read-only or full token directory).
            RvError::GeneralError if writes_token_objects(&err) => KeyStoreError::Backend {
                backend: BACKEND,
                op: op.into(),
                detail: format!(
                    "{}: the module could not store the token object; check that the token's \
                     storage is writable and has room (for SoftHSM: its token directory)",
                    describe(&err)
                ),
                code: None,
            },
            _ => KeyStoreError::Backend {
                backend: BACKEND,
                op: op.into(),
                detail: describe(&err),
                code: None,
            },
        },
        Error::LibraryLoading(_) | Error::MissingSymbol(_) | Error::NullFunctionPointer => {
            KeyStoreError::Unavailable {
                backend: BACKEND,
                detail: format!("{detail}: is the module path right and the module installed?"),
                retryable: false,
                code: None,
            }
        }
        _ => KeyStoreError::Backend {
            backend: BACKEND,
            op: op.into(),
            detail: describe(&err),
            code: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_c_headers() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::CryptokiAlreadyInitialized),
            "CKR_CRYPTOKI_ALREADY_INITIALIZED"
        );
        let e = Error::Pkcs11(RvError::PinIncorrect, Function::Login);
        assert_eq!(describe(&e), "C_Login returned CKR_PIN_INCORRECT");
        assert!(matches!(map("log in", e), KeyStoreError::BadPin { .. }));
    }

    #[test]
    fn a_general_error_storing_an_object_points_at_the_storage() {
        let e = map(
            "generate key pair",
            Error::Pkcs11(RvError::GeneralError, Function::GenerateKeyPair),
        );
        assert!(e.to_string().contains("storage is writable"), "{e}");
        let e = map("sign", Error::Pkcs11(RvError::GeneralError, Function::Sign));
        assert!(!e.to_string().contains("storage"), "{e}");
    }

    #[test]
    fn lost_tokens_are_retryable() {
        let e = map(
            "sign",
            Error::Pkcs11(RvError::DeviceRemoved, Function::Sign),
        );
        assert!(e.is_retryable());
        assert!(e.to_string().contains("C_Sign returned CKR_DEVICE_REMOVED"));
    }
}
