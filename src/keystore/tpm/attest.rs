//! Hardware attestation (docs/attestation.md): an attestation key made in
//! this TPM, its activation against the TPM's endorsement key, and
//! TPM2_Certify of the device keys by it.
//!
//! Invariants:
//! - the attestation key is a restricted ECDSA P-256/SHA-256 signing key
//!   with fixedTPM, fixedParent and sensitiveDataOrigin: the TPM signs
//!   with it only structures it made itself (TPM2_Certify), never a digest
//!   from outside, so no caller of the TPM can make it sign a forged
//!   attestation; it never leaves the TPM;
//! - it is made under the store's storage primary ([`Parent::NEW_KEYS`])
//!   and stored as any key is, under its own label;
//! - its certificate is stored beside its key file
//!   (`<key_dir>/<label>.cert.pem`) only once the certificate's key is
//!   checked to be the attestation key's.

use std::path::PathBuf;

use sha2::Digest as _;
use tss_esapi::abstraction::ek::retrieve_ek_pubcert;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EccPoint, EccScheme, EncryptedSecret, HashScheme, IdObject, KeyDerivationFunctionScheme,
    Public, PublicBuilder, PublicEccParameters, SignatureScheme, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use super::context::{code, describe, rc_kind, tpm_err, Tpm, BACKEND};
use super::meta::{self, KeyFile, Location, Origin};
use super::parent::Parent;
use super::{NewKey, TpmKeyStore};
use crate::durable;
use crate::keystore::{Certification, KeyAlgorithm, KeyInfo, KeyLabel, KeyStoreError, Result};

/// The TCG's NV index of the RSA-2048 endorsement key certificate.
pub const EK_CERT_NV_INDEX: u32 = 0x01c0_0002;

/// An attestation key, as a manufacturer's CA needs to see it.
#[derive(Clone, Debug)]
pub struct AttestationKey {
    pub info: KeyInfo,
    /// The marshalled TPMT_PUBLIC.
    pub public_area: Vec<u8>,
    /// Its TPM name: nameAlg (SHA-256, 0x000b) and the SHA-256 of the
    /// TPMT_PUBLIC.
    pub name: Vec<u8>,
}

/// The template of an attestation key.
fn attestation_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(PublicEccParameters::new(
            SymmetricDefinitionObject::Null,
            // A restricted signing key names its scheme.
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
            KeyDerivationFunctionScheme::Null,
        ))
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The TPM name of a public area with nameAlg SHA-256.
fn name_of(public_area: &[u8]) -> Vec<u8> {
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&sha2::Sha256::digest(public_area));
    name
}

/// Refuses a key file that is not an attestation key's (a restricted
/// signing key made in this TPM).
fn ensure_attestation_key(file: &KeyFile) -> Result<()> {
    let attrs = file.public.object_attributes();
    if attrs.restricted()
        && attrs.sign_encrypt()
        && attrs.fixed_tpm()
        && attrs.fixed_parent()
        && attrs.sensitive_data_origin()
    {
        Ok(())
    } else {
        Err(not_attestation_key(file))
    }
}

fn not_attestation_key(file: &KeyFile) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: "use the attestation key".into(),
        detail: format!(
            "{} is not an attestation key (a restricted signing key made in this TPM): run \
             `prov-agent attest init` to make one",
            file.path.display()
        ),
        code: None,
    }
}

impl TpmKeyStore {
    /// Makes the attestation key under `label` (`prov-agent attest init`).
    /// Fails with [`KeyStoreError::AlreadyExists`] if the label is taken.
    pub fn create_attestation_key(&self, label: &KeyLabel) -> Result<AttestationKey> {
        let path = self.ensure_free(label)?;
        let template =
            attestation_template().map_err(|e| tpm_err("build the attestation key template", e))?;
        let mut tpm = self.lock()?;
        self.persistent_room(&mut tpm, false)?;
        tpm.unload_blob();
        let created = tpm.create_key(Parent::NEW_KEYS, &template)?;
        let info = self.store(
            &mut tpm,
            label,
            path,
            NewKey {
                algorithm: KeyAlgorithm::EcP256,
                origin: Origin::Generated,
                import_wrapper: None,
                public: created.out_public,
                private: created.out_private,
                parent: Parent::NEW_KEYS,
            },
        )?;
        drop(tpm);
        let file = self.key_file(label)?;
        self.describe_attestation_key(info, &file)
    }

    /// The attestation key under `label`.
    pub fn attestation_key(&self, label: &KeyLabel) -> Result<AttestationKey> {
        let file = self.key_file(label)?;
        let info = super::info_of(label, &file)?;
        self.describe_attestation_key(info, &file)
    }

    fn describe_attestation_key(&self, info: KeyInfo, file: &KeyFile) -> Result<AttestationKey> {
        ensure_attestation_key(file)?;
        let public_area = meta::marshall_public(&file.public)?;
        let name = name_of(&public_area);
        Ok(AttestationKey {
            info,
            public_area,
            name,
        })
    }

    /// The TPM's RSA-2048 endorsement key certificate (DER), from NV index
    /// [`EK_CERT_NV_INDEX`], where the TPM's maker put it.
    pub fn endorsement_certificate(&self) -> Result<Vec<u8>> {
        let mut tpm = self.lock()?;
        retrieve_ek_pubcert(
            &mut tpm.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .map_err(|e| match rc_kind(e) {
            Some(Tss2ResponseCodeKind::Handle | Tss2ResponseCodeKind::Value) => {
                KeyStoreError::Backend {
                    backend: BACKEND,
                    op: "read the endorsement key certificate".into(),
                    detail: format!(
                        "this TPM holds no RSA endorsement key certificate at NV index \
                         0x{EK_CERT_NV_INDEX:08x} ({}): most TPMs ship with one; give the \
                         certificate from the TPM's maker with --ek-cert (a simulator makes \
                         one with swtpm_setup --create-ek-cert)",
                        describe(e)
                    ),
                    code: code(e),
                }
            }
            _ => tpm.classify("read the endorsement key certificate", e),
        })
    }

    /// TPM2_ActivateCredential: the secret a manufacturer's CA sealed to
    /// this TPM's endorsement key (TCG default RSA template) and the
    /// attestation key under `label`'s name. Only the TPM that holds both
    /// recovers it.
    pub fn activate_credential(
        &self,
        label: &KeyLabel,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let bad = |what: &str, e: tss_esapi::Error| KeyStoreError::Backend {
            backend: BACKEND,
            op: "read the activation challenge".into(),
            detail: format!("{what} is malformed: {}", describe(e)),
            code: code(e),
        };
        let blob =
            IdObject::try_from(credential_blob.to_vec()).map_err(|e| bad("credentialBlob", e))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|e| bad("encryptedSecret", e))?;
        let ak_file = self.key_file(label)?;
        ensure_attestation_key(&ak_file)?;
        let mut tpm = self.lock()?;
        tpm.unload_blob();
        let ak = self.loaded(&mut tpm, &ak_file)?;
        let ek = tpm.create_endorsement_key()?.key_handle;
        let result = activate(&mut tpm, ak, ek, &blob, &secret);
        let _ = tpm.plain("flush the EK", |ctx| {
            ctx.flush_context(ObjectHandle::from(ek))
        });
        result
    }

    /// Where the attestation key's certificate chain is kept: beside its
    /// key file.
    pub fn attestation_certificate_path(&self, label: &KeyLabel) -> PathBuf {
        crate::keystore::TpmSettings::certificate_in(&self.key_dir, label)
    }

    /// Stores the attestation key's certificate chain (PEM, the key's own
    /// certificate first) once its key is checked to be the attestation
    /// key's; atomically, 0600.
    pub fn store_attestation_certificate(&self, label: &KeyLabel, chain_pem: &str) -> Result<()> {
        let ak = self.attestation_key(label)?;
        let first = pem::parse_many(chain_pem)
            .ok()
            .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
            .ok_or_else(|| KeyStoreError::Backend {
                backend: BACKEND,
                op: "store the attestation key certificate".into(),
                detail: "the decrypted answer holds no PEM certificate".into(),
                code: None,
            })?;
        let (_, cert) = x509_parser::parse_x509_certificate(first.contents()).map_err(|e| {
            KeyStoreError::Backend {
                backend: BACKEND,
                op: "store the attestation key certificate".into(),
                detail: format!("the attestation key certificate does not parse: {e}"),
                code: None,
            }
        })?;
        if cert.public_key().raw != ak.info.public_key.spki_der() {
            return Err(KeyStoreError::Backend {
                backend: BACKEND,
                op: "store the attestation key certificate".into(),
                detail: format!(
                    "the certificate the CA sent is for another key than attestation key \
                     {label}: ask the manufacturer's CA for a new challenge"
                ),
                code: None,
            });
        }
        let path = self.attestation_certificate_path(label);
        durable::write_file(&path, chain_pem.as_bytes()).map_err(|source| KeyStoreError::Io {
            what: "cannot write the attestation key certificate".into(),
            path,
            source,
        })
    }

    /// TPM2_Certify of the key under `key` by the attestation key under
    /// `by`, `qualifying` as its extraData.
    pub(super) fn certify_with(
        &self,
        key: &KeyLabel,
        by: &KeyLabel,
        qualifying: &[u8],
    ) -> Result<Certification> {
        let key_file = self.key_file(key)?;
        let ak_file = self.key_file(by)?;
        ensure_attestation_key(&ak_file)?;
        let qualifying =
            Data::try_from(qualifying.to_vec()).map_err(|e| KeyStoreError::Backend {
                backend: BACKEND,
                op: "certify a key".into(),
                detail: format!("qualifying data of {} bytes: {e}", qualifying.len()),
                code: None,
            })?;
        let mut tpm = self.lock()?;
        let object = self.loaded(&mut tpm, &key_file)?;
        // The device key holds the one cached blob slot; the attestation
        // key is loaded beside it for the call.
        let (ak, transient) = self.load_beside(&mut tpm, &ak_file)?;
        let certified = tpm.with_sessions(
            "certify a key (TPM2_Certify)",
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |ctx| {
                ctx.certify(
                    ObjectHandle::from(object),
                    ak,
                    qualifying.clone(),
                    SignatureScheme::Null,
                )
            },
        );
        if transient {
            let _ = tpm.plain("flush the attestation key", |ctx| {
                ctx.flush_context(ObjectHandle::from(ak))
            });
        }
        let (attest, signature) = certified?;
        let marshalled = |what: &str, r: tss_esapi::Result<Vec<u8>>| {
            r.map_err(|e| tpm_err_owned(format!("marshal the {what}"), e))
        };
        Ok(Certification {
            attest: marshalled("attestation", attest.marshall())?,
            signature: marshalled("signature", signature.marshall())?,
            public: meta::marshall_public(&key_file.public)?,
        })
    }

    /// A handle for `file` that leaves the cached blob loaded: a persistent
    /// key's handle, or a blob loaded now (`true`: flush it after use).
    fn load_beside(&self, tpm: &mut Tpm, file: &KeyFile) -> Result<(KeyHandle, bool)> {
        match &file.location {
            Location::Persistent { .. } => Ok((self.loaded(tpm, file)?, false)),
            Location::Blob { private } => {
                if file.parent != Parent::NEW_KEYS {
                    return Err(not_attestation_key(file));
                }
                let private = tss_esapi::structures::Private::try_from(private.clone())
                    .map_err(|e| tpm_err("read the attestation key blob", e))?;
                let public = file.public.clone();
                let primary = tpm.primary;
                // A password session, as for TPM2_Sign (`Tpm::password`):
                // the primary's auth value is empty, so an HMAC session
                // proves nothing more, and an interposer that answered with
                // another object would only make an attestation the
                // verifier refuses; its HMACs cost about 2.5 ms here.
                let handle = tpm.password("load the attestation key", |ctx| {
                    ctx.load(primary, private.clone(), public.clone())
                })?;
                Ok((handle, true))
            }
        }
    }
}

fn tpm_err_owned(op: String, e: tss_esapi::Error) -> KeyStoreError {
    KeyStoreError::Backend {
        backend: BACKEND,
        op: op.into(),
        detail: describe(e),
        code: code(e),
    }
}

/// PolicySecret(endorsement) in a fresh policy session (the EK's
/// authPolicy in the TCG template), then TPM2_ActivateCredential; the
/// session is flushed whatever happens.
fn activate(
    tpm: &mut Tpm,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: &IdObject,
    secret: &EncryptedSecret,
) -> Result<Zeroizing<Vec<u8>>> {
    let session = tpm
        .ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| tpm.classify("start a policy session", e))?
        .ok_or_else(|| {
            tpm_err_owned(
                "start a policy session".into(),
                tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
            )
        })?;
    let result = (|| {
        let policy =
            PolicySession::try_from(session).map_err(|e| tpm_err("use the policy session", e))?;
        tpm.password("PolicySecret(endorsement)", |ctx| {
            ctx.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })?;
        tpm.with_sessions(
            "activate the credential (TPM2_ActivateCredential)",
            (Some(AuthSession::Password), Some(session), None),
            |ctx| ctx.activate_credential(ak, ek, blob.clone(), secret.clone()),
        )
        .map_err(|e| {
            // TPM_RC_INTEGRITY (or VALUE, SIZE) on the credential blob or the
            // secret: they were sealed to another EK or another name;
            // libtpms (swtpm) answers a secret sealed to another EK with
            // TPM_RC_FAILURE. Any other failure (a lost connection,
            // lockout) keeps its own error.
            let sealed_elsewhere = e
                .hardware_code()
                .and_then(|c| c.tpm_kind())
                .is_some_and(|k| {
                    matches!(
                        k,
                        Tss2ResponseCodeKind::Integrity
                            | Tss2ResponseCodeKind::Value
                            | Tss2ResponseCodeKind::Size
                            | Tss2ResponseCodeKind::Failure
                    )
                });
            if !sealed_elsewhere {
                return e;
            }
            KeyStoreError::Backend {
                backend: BACKEND,
                op: "activate the credential (TPM2_ActivateCredential)".into(),
                detail: format!(
                    "the TPM refused the challenge ({e}): most likely it was not made for \
                     this TPM's endorsement key and this attestation key (if every TPM \
                     command fails, the TPM is in failure mode instead). Send the request \
                     that `prov-agent attest init` wrote on this gateway to the CA again"
                ),
                code: e.hardware_code(),
            }
        })
    })();
    let _ = tpm
        .ctx
        .flush_context(ObjectHandle::from(SessionHandle::from(session)));
    result.map(|digest| Zeroizing::new(digest.value().to_vec()))
}
