//! What the module and its token can do, learnt from them rather than
//! assumed: the mechanisms the agent uses (C_GetMechanismInfo, read when
//! the store opens and kept for its life) and
//! the token's flags; on first need (`prov-agent check`, or the first
//! import for private-key import), whether private-key import,
//! C_CopyObject and changing CKA_LABEL work, tried on session objects that
//! vanish with the session and kept for the store's life ([`Tried`]). Not
//! at open: the key helper opens a store for each job, and the tries cost
//! a key generation.
//!
//! The store refuses, with the module named, a key algorithm or signature
//! scheme whose mechanism the module does not offer, before it asks the
//! module for anything.

use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::super::{HardwareFact, KeyAlgorithm, KeyStoreError, Result, SignatureScheme};
use super::{error, keys, BACKEND};

/// The mechanisms the agent uses, by name.
const USED: [(MechanismType, &str); 5] = [
    (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
    (MechanismType::ECDSA, "CKM_ECDSA"),
    (
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
    ),
    (MechanismType::RSA_PKCS, "CKM_RSA_PKCS"),
    (MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"),
];

/// The module's mechanisms the agent uses, as the token reports them.
#[derive(Clone, Debug, Default)]
pub struct Mechanisms {
    offered: Vec<(MechanismType, &'static str, MechanismInfo)>,
    /// The module did not answer C_GetMechanismInfo: nothing is refused
    /// beforehand (the operation then says what went wrong).
    unknown: bool,
}

impl Mechanisms {
    /// Asks for the info of each mechanism the agent uses (C_GetMechanismInfo:
    /// CKR_MECHANISM_INVALID means not offered). Not C_GetMechanismList:
    /// cryptoki logs an error for every vendor mechanism in the list.
    pub fn read(ctx: &Pkcs11, slot: Slot) -> Self {
        let mut offered = Vec::new();
        for (m, name) in USED {
            match ctx.get_mechanism_info(slot, m) {
                Ok(info) => offered.push((m, name, info)),
                Err(cryptoki::error::Error::Pkcs11(RvError::MechanismInvalid, _)) => {}
                Err(e) => {
                    tracing::warn!("pkcs11: the module does not describe {name}: {e}");
                    return Self {
                        offered: Vec::new(),
                        unknown: true,
                    };
                }
            }
        }
        Self {
            offered,
            unknown: false,
        }
    }

    fn get(&self, m: MechanismType) -> Option<&MechanismInfo> {
        self.offered
            .iter()
            .find(|(t, _, _)| *t == m)
            .map(|(_, _, i)| i)
    }

    /// Whether the module makes `algorithm` keys: its key-pair mechanism is
    /// offered for generation, with the key size in range. `Err` names
    /// what is missing.
    pub fn check_generate(&self, algorithm: KeyAlgorithm) -> Result<()> {
        if self.unknown {
            return Ok(());
        }
        let (mechanism, name, bits) = match algorithm {
            KeyAlgorithm::EcP256 => (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", 256),
            KeyAlgorithm::EcP384 => (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", 384),
            KeyAlgorithm::Rsa2048 => (
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
                2048,
            ),
            KeyAlgorithm::Rsa3072 => (
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
                3072,
            ),
        };
        let unsupported = |why: String| KeyStoreError::UnsupportedAlgorithm {
            what: format!(
                "{algorithm} keys in this PKCS#11 token: {why}; choose another [KEYSTORE] \
                 KEY_ALGORITHM (`prov-agent check` lists what the token offers)"
            ),
        };
        match self.get(mechanism) {
            None => Err(unsupported(format!("the module does not offer {name}"))),
            Some(info) if !info.generate_key_pair() => Err(unsupported(format!(
                "the module's {name} does not generate key pairs"
            ))),
            Some(info) if !in_range(info, bits) => Err(unsupported(format!(
                "{name} takes {}-{} bit keys",
                info.min_key_size(),
                info.max_key_size()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Whether the module signs with `scheme`'s mechanism.
    pub fn check_sign(&self, scheme: SignatureScheme) -> Result<()> {
        if self.unknown {
            return Ok(());
        }
        let (mechanism, name) = match scheme {
            SignatureScheme::EcdsaSha256 | SignatureScheme::EcdsaSha384 => {
                (MechanismType::ECDSA, "CKM_ECDSA")
            }
            SignatureScheme::RsaPkcs1Sha256
            | SignatureScheme::RsaPkcs1Sha384
            | SignatureScheme::RsaPkcs1Sha512 => (MechanismType::RSA_PKCS, "CKM_RSA_PKCS"),
            SignatureScheme::RsaPssSha256
            | SignatureScheme::RsaPssSha384
            | SignatureScheme::RsaPssSha512 => (MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"),
        };
        match self.get(mechanism) {
            Some(info) if info.sign() => Ok(()),
            _ => Err(KeyStoreError::UnsupportedAlgorithm {
                what: format!(
                    "{scheme:?} signatures in this PKCS#11 token: the module does not sign \
                     with {name}"
                ),
            }),
        }
    }

    /// One line per used mechanism: offered (with key sizes and what it
    /// does) or not.
    pub fn describe(&self) -> String {
        if self.unknown {
            return "the module does not list its mechanisms".into();
        }
        USED.iter()
            .map(|(m, name)| match self.get(*m) {
                Some(info) => {
                    let mut does = Vec::new();
                    if info.generate_key_pair() {
                        does.push("generate");
                    }
                    if info.sign() {
                        does.push("sign");
                    }
                    if info.hardware() {
                        does.push("hardware");
                    }
                    format!(
                        "{name} ({}-{} bits, {})",
                        info.min_key_size(),
                        info.max_key_size(),
                        does.join("/")
                    )
                }
                None => format!("{name} not offered"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A blank-padded PKCS#11 text field (some modules pad with NULs).
fn text(field: &str) -> &str {
    field.trim_end_matches(|c: char| c == '\0' || c.is_whitespace())
}

/// EC mechanisms report field sizes in bits; RSA ones modulus bits (a few
/// modules report bytes: a maximum below 1024 for RSA is read as bytes).
fn in_range(info: &MechanismInfo, bits: usize) -> bool {
    let (min, max) = (info.min_key_size(), info.max_key_size());
    if max == 0 {
        return true;
    }
    let scale = if bits >= 1024 && max < 1024 { 8 } else { 1 };
    (min * scale..=max * scale).contains(&bits)
}

/// The module, the token and what they do, for `prov-agent check`: the
/// mechanisms, the token's flags, and the results of trying import, copy
/// and relabel on session objects.
pub fn facts(
    ctx: &Pkcs11,
    slot: Slot,
    mechanisms: &Mechanisms,
    tried: &Tried,
) -> Vec<HardwareFact> {
    let mut facts = Vec::new();
    if let Ok(info) = ctx.get_library_info() {
        facts.push(HardwareFact::info(
            "pkcs11-module",
            "PKCS#11 module",
            format!(
                "{} ({}), version {}, Cryptoki {}",
                text(info.library_description()),
                text(info.manufacturer_id()),
                info.library_version(),
                info.cryptoki_version()
            ),
        ));
    }
    match ctx.get_token_info(slot) {
        Ok(token) => {
            facts.push(HardwareFact::info(
                "token",
                "token",
                format!(
                    "{} by {}, serial {}, firmware {}",
                    text(token.model()),
                    text(token.manufacturer_id()),
                    text(token.serial_number()),
                    token.firmware_version()
                ),
            ));
            let mut flags = Vec::new();
            for (on, name) in [
                (token.login_required(), "login required"),
                (token.protected_authentication_path(), "PIN pad"),
                (token.rng(), "RNG"),
                (token.write_protected(), "WRITE-PROTECTED"),
            ] {
                if on {
                    flags.push(name);
                }
            }
            facts.push(HardwareFact::info(
                "token-flags",
                "token flags",
                flags.join(", "),
            ));
            if token.user_pin_locked() {
                facts.push(HardwareFact::problem(
                    "user-pin",
                    "user PIN",
                    "locked: the security officer must unlock it (for SoftHSM: \
                     softhsm2-util --init-pin)",
                ));
            } else if token.user_pin_final_try() || token.user_pin_count_low() {
                facts.push(HardwareFact::problem(
                    "user-pin",
                    "user PIN",
                    if token.user_pin_final_try() {
                        "one try left before the token locks: check PIN_SOURCE"
                    } else {
                        "wrong PINs were given lately: check PIN_SOURCE"
                    },
                ));
            }
        }
        Err(e) => facts.push(HardwareFact::problem(
            "token",
            "token",
            format!("C_GetTokenInfo failed: {e}"),
        )),
    }
    facts.push(HardwareFact::info(
        "mechanisms",
        "mechanisms",
        mechanisms.describe(),
    ));
    let shown = |r: &std::result::Result<(), String>| match r {
        Ok(()) => "works".to_string(),
        Err(e) => format!("refused ({e})"),
    };
    facts.push(HardwareFact::info(
        "private-key-import",
        "private-key import",
        shown(&tried.import),
    ));
    facts.push(HardwareFact::info(
        "copy-object",
        "C_CopyObject",
        shown(&tried.copy),
    ));
    facts.push(HardwareFact::info(
        "relabel",
        "changing CKA_LABEL",
        shown(&tried.relabel),
    ));
    facts
}

/// What trying private-key import, C_CopyObject and changing CKA_LABEL on
/// session objects showed (each refusal as the module's error, rendered).
/// Trying them costs a key generation and a handful of calls, so a store
/// learns them once, on first need, and keeps them for its life.
#[derive(Clone, Debug)]
pub struct Tried {
    pub import: std::result::Result<(), String>,
    pub copy: std::result::Result<(), String>,
    pub relabel: std::result::Result<(), String>,
}

impl Tried {
    /// Tries the three on `session`; nothing is left on the token (the
    /// objects are session objects, destroyed after).
    pub fn learn(session: &Session) -> Self {
        let rendered = |r: Result<()>| r.map_err(|e| e.to_string());
        let import = rendered(keys::probe_import(session));
        let (copy, relabel) = probe_copy_and_relabel(session);
        Tried {
            import,
            copy: rendered(copy),
            relabel: rendered(relabel),
        }
    }
}

/// C_CopyObject and C_SetAttributeValue(CKA_LABEL) on a session data
/// object (a stand-in for the keys, which the module may treat more
/// strictly: the store's own relabelling of keys reports its own errors).
fn probe_copy_and_relabel(session: &Session) -> (Result<()>, Result<()>) {
    let made = session.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Label(b"prov-agent-probe".to_vec()),
        Attribute::Value(vec![0]),
    ]);
    let object = match made {
        Ok(o) => o,
        Err(e) => {
            let e = error::map("create a session data object", e);
            let again = KeyStoreError::Backend {
                backend: BACKEND,
                op: "probe".into(),
                detail: "could not make the session object to try it on".into(),
                code: e.hardware_code(),
            };
            return (Err(e), Err(again));
        }
    };
    let copy = session
        .copy_object(
            object,
            &[Attribute::Label(b"prov-agent-probe-copy".to_vec())],
        )
        .map(|copy| {
            let _ = session.destroy_object(copy);
        })
        .map_err(|e| error::map("C_CopyObject", e));
    let relabel = session
        .update_attributes(object, &[Attribute::Label(b"prov-agent-probe-2".to_vec())])
        .map_err(|e| error::map("C_SetAttributeValue(CKA_LABEL)", e));
    let _ = session.destroy_object(object);
    (copy, relabel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::{CKF_GENERATE_KEY_PAIR, CKF_SIGN, CK_MECHANISM_INFO};

    fn info(min: u64, max: u64, flags: u64) -> MechanismInfo {
        MechanismInfo::from(CK_MECHANISM_INFO {
            ulMinKeySize: min as _,
            ulMaxKeySize: max as _,
            flags: flags as _,
        })
    }

    fn offering(list: &[(MechanismType, MechanismInfo)]) -> Mechanisms {
        Mechanisms {
            offered: list
                .iter()
                .map(|(m, i)| {
                    let name = USED.iter().find(|(t, _)| t == m).unwrap().1;
                    (*m, name, *i)
                })
                .collect(),
            unknown: false,
        }
    }

    /// A module with P-256 only (a secure element, say): P-384 and RSA are
    /// refused before the module is asked, naming what is missing.
    #[test]
    fn algorithms_the_module_does_not_offer_are_refused() {
        let m = offering(&[
            (
                MechanismType::ECC_KEY_PAIR_GEN,
                info(256, 256, CKF_GENERATE_KEY_PAIR),
            ),
            (MechanismType::ECDSA, info(256, 256, CKF_SIGN)),
        ]);
        m.check_generate(KeyAlgorithm::EcP256).unwrap();
        let e = m
            .check_generate(KeyAlgorithm::EcP384)
            .unwrap_err()
            .to_string();
        assert!(e.contains("256-256 bit keys"), "{e}");
        assert!(e.contains("KEY_ALGORITHM"), "{e}");
        let e = m
            .check_generate(KeyAlgorithm::Rsa2048)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not offer CKM_RSA_PKCS_KEY_PAIR_GEN"),
            "{e}"
        );
        m.check_sign(SignatureScheme::EcdsaSha256).unwrap();
        let e = m
            .check_sign(SignatureScheme::RsaPssSha256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CKM_RSA_PKCS_PSS"), "{e}");
        assert!(
            m.describe().contains("CKM_RSA_PKCS not offered"),
            "{}",
            m.describe()
        );
    }

    /// A mechanism listed but not for the operation; RSA sizes some modules
    /// give in bytes; a module that does not list its mechanisms is not
    /// second-guessed.
    #[test]
    fn flags_sizes_and_silence() {
        let m = offering(&[
            (MechanismType::ECC_KEY_PAIR_GEN, info(256, 521, 0)),
            (
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                info(128, 512, CKF_GENERATE_KEY_PAIR),
            ),
        ]);
        let e = m
            .check_generate(KeyAlgorithm::EcP256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not generate key pairs"), "{e}");
        m.check_generate(KeyAlgorithm::Rsa3072).unwrap();
        let silent = Mechanisms {
            offered: Vec::new(),
            unknown: true,
        };
        silent.check_generate(KeyAlgorithm::Rsa3072).unwrap();
        silent.check_sign(SignatureScheme::RsaPssSha512).unwrap();
    }
}
