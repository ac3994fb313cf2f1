//! `prov-agent claim import` and `prov-agent claim generate`.

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::CommandError;
use crate::cli::{ClaimGenerate, ClaimImport};
use crate::config::Config;
use crate::crypto::{make_csr, Certificate};
use crate::durable;
use crate::keystore::{KeyInfo, KeyStore, KeyStoreError, KeyStoreSettings, PrivateKeyMaterial};

/// What `claim import` did, for the caller to print.
#[derive(Debug)]
pub struct Imported {
    pub key: KeyInfo,
    pub certificate_id: String,
    pub certificate_path: std::path::PathBuf,
    pub shredded: Option<std::path::PathBuf>,
}

/// Imports the claim key into the store and stores the claim certificate.
///
/// Order matters: everything that can be checked is checked before the
/// store changes (the PEM parses, the key is supported and matches the
/// certificate); after the import a test signature must verify with the
/// certificate's public key, else the imported key is deleted again. The
/// key file is shredded only after all of that, and the certificate is
/// written last.
pub fn import(
    config: &Config,
    store: &Arc<dyn KeyStore>,
    args: &ClaimImport,
) -> Result<Imported, CommandError> {
    let label = &config.keystore.claim_key;
    refuse_foreign_claim_key(config)?;
    let key_path = args
        .key
        .clone()
        .or_else(|| config.settings.secure_key.clone())
        .ok_or_else(|| {
            CommandError::Input(
                "no claim key file: give --key FILE or set [SETTINGS] SECURE_KEY".into(),
            )
        })?;

    let cert_text = std::fs::read_to_string(&args.cert).map_err(CommandError::io(
        "cannot read claim certificate",
        &args.cert,
    ))?;
    let cert = Certificate::from_pem(&cert_text, &args.cert.display().to_string())?;

    let key_text = Zeroizing::new(
        std::fs::read_to_string(&key_path)
            .map_err(CommandError::io("cannot read claim key", &key_path))?,
    );
    let material =
        PrivateKeyMaterial::from_pem(&key_text).map_err(|source| CommandError::KeyFile {
            path: key_path.clone(),
            source,
        })?;
    drop(key_text);
    if material.public_key()? != *cert.public_key() {
        return Err(CommandError::Input(format!(
            "{} does not belong to certificate {}: their public keys differ; nothing was imported",
            key_path.display(),
            args.cert.display()
        )));
    }

    // The key goes in under a staging label and replaces the claim key only
    // once it has proven itself, so that a failed `--replace` leaves the old
    // claim key in place.
    match store.info(label) {
        Ok(existing) if !args.replace => {
            return Err(CommandError::Input(format!(
                "a claim key is already in the store ({}). To replace it run \
                 `prov-agent claim import --replace ...`",
                existing.reference
            )))
        }
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let staging = label.pending();
    match store.delete(&staging) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let staged = store.import(&staging, &material).map_err(|e| match e {
        KeyStoreError::ImportRefused { .. } => CommandError::ClaimImportRefused {
            source: e,
            instead: Box::new(ClaimKeyInstead {
                token: match &config.keystore.settings {
                    KeyStoreSettings::Pkcs11(p) => p.token_label.clone(),
                    _ => "<TOKEN_LABEL>".into(),
                },
                claim_key: label.to_string(),
                key_file: key_path.clone(),
                claim_cert: config.settings.claim_cert.clone(),
            }),
        },
        e => e.into(),
    })?;
    drop(material);
    if let Err(e) = prove_key(store, &staged, &cert) {
        if let Err(cleanup) = store.delete(&staging) {
            tracing::error!(key = %staging, error = %cleanup, "could not remove the imported key after a failed check");
        }
        return Err(e);
    }
    let info = store.promote(&staging, label)?;

    let cert_path = config.settings.claim_cert.clone();
    if let Some(dir) = cert_path.parent() {
        durable::create_dir_all(dir).map_err(CommandError::io("cannot create directory", dir))?;
    }
    if !same_file(&args.cert, &cert_path) {
        durable::write_file(&cert_path, cert.to_pem().as_bytes()).map_err(CommandError::io(
            "cannot write claim certificate",
            &cert_path,
        ))?;
    }

    let shredded = if args.shred {
        durable::shred(&key_path)
            .map_err(CommandError::io("cannot shred claim key file", &key_path))?;
        Some(key_path)
    } else {
        None
    };
    tracing::info!(key = %info.reference, certificate = %cert.id(), "claim key imported");
    Ok(Imported {
        key: info,
        certificate_id: cert.id(),
        certificate_path: cert_path,
        shredded,
    })
}

/// What to do instead of `claim import` on a store that cannot import
/// private keys.
#[derive(Debug)]
pub struct ClaimKeyInstead {
    token: String,
    claim_key: String,
    key_file: std::path::PathBuf,
    claim_cert: std::path::PathBuf,
}

impl std::fmt::Display for ClaimKeyInstead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Make the claim key in the token with `prov-agent claim generate`, or import it \
             with the module's own tool (tpm2-pkcs11: `tpm2_ptool import --label {} \
             --key-label {} --privkey {} --algorithm ecc|rsa --userpin ...`) and copy the \
             claim certificate to {}",
            self.token,
            self.claim_key,
            self.key_file.display(),
            self.claim_cert.display()
        )
    }
}

/// A signature made in the store verifies with the certificate's key.
fn prove_key(
    store: &Arc<dyn KeyStore>,
    info: &KeyInfo,
    cert: &Certificate,
) -> Result<(), CommandError> {
    let scheme = info.algorithm().default_scheme();
    let challenge: [u8; 32] = rand::random();
    let signature = store.sign(&info.label, scheme, &challenge)?;
    cert.public_key()
        .verify(scheme, &challenge, &signature)
        .map_err(|_| CommandError::ImportUnproven {
            key: info.reference.to_string(),
        })
}

/// `[PKCS11] CLAIM_KEY_ID`: the claim key is one other tools made, which
/// the agent neither makes nor replaces.
fn refuse_foreign_claim_key(config: &Config) -> Result<(), CommandError> {
    if let crate::keystore::KeyStoreSettings::Pkcs11(p) = &config.keystore.settings {
        if let Some(id) = p.key_ids.get(config.keystore.claim_key.as_str()) {
            return Err(CommandError::Input(format!(
                "[PKCS11] CLAIM_KEY_ID names the claim key (CKA_ID {}), made in the token by \
                 other tools: prov-agent uses it as it is and does not make or import one; put \
                 its certificate where [SETTINGS] CLAIM_CERT says, or remove CLAIM_KEY_ID",
                hex::encode(id)
            )));
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Makes the claim key in the hardware and writes a CSR for it.
pub fn generate(
    config: &Config,
    store: &Arc<dyn KeyStore>,
    args: &ClaimGenerate,
) -> Result<KeyInfo, CommandError> {
    if args.subject.is_empty() || args.subject.len() > 64 {
        return Err(CommandError::Input(
            "--subject must be 1 to 64 characters".into(),
        ));
    }
    if args.csr.exists() {
        return Err(CommandError::Input(format!(
            "{} exists already: choose another --csr path or remove it",
            args.csr.display()
        )));
    }
    let label = &config.keystore.claim_key;
    refuse_foreign_claim_key(config)?;
    let info = store.generate(label, config.keystore.algorithm)?;
    let result = make_csr(store.clone(), &info, &args.subject)
        .map_err(|e| CommandError::from(crate::provision::ProvisionError::from(e)))
        .and_then(|csr| {
            durable::write_file(&args.csr, csr.as_bytes())
                .map_err(CommandError::io("cannot write CSR", &args.csr))
        });
    if let Err(e) = result {
        let _ = store.delete(label);
        return Err(e);
    }
    Ok(info)
}
