//! Certificate providers (AWS's CreateCertificateProvider): at most one per
//! account, as on AWS; while it exists, every CreateCertificateFromCsr MQTT
//! request is signed by it instead of the emulator's CA. On AWS a provider
//! names a Lambda function; here it also names the command run in its
//! place (see `crate::certificate_provider`).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::cached::CachedStatements;
use super::{now_unix, Registry, RegistryError};

/// The one operation AWS lets a certificate provider take over.
pub const CREATE_CERTIFICATE_FROM_CSR: &str = "CreateCertificateFromCsr";

/// A certificate provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateProviderRecord {
    pub certificate_provider_name: String,
    /// The program run in place of the Lambda function: the executable and
    /// its arguments (never empty).
    pub command: Vec<String>,
    /// The Lambda function's ARN, as given (kept for the control-plane API;
    /// the emulator runs [`Self::command`]).
    pub lambda_function_arn: String,
    /// Always `["CreateCertificateFromCsr"]`, the only value AWS accepts.
    pub account_default_for_operations: Vec<String>,
    pub creation_date: i64,
    pub last_modified_date: i64,
}

/// AWS's certificate provider names: 1 to 128 of `[\w=,@-]`.
pub(crate) fn valid_provider_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_=,@-".contains(&b))
}

/// The operations list AWS accepts: exactly `["CreateCertificateFromCsr"]`.
fn check_operations(operations: &[String]) -> Result<(), RegistryError> {
    if operations != [CREATE_CERTIFICATE_FROM_CSR] {
        return Err(RegistryError::Invalid(format!(
            "accountDefaultForOperations {operations:?} is not valid: it must be exactly [\"{CREATE_CERTIFICATE_FROM_CSR}\"], the only operation a certificate provider serves"
        )));
    }
    Ok(())
}

fn check_command(command: &[String]) -> Result<(), RegistryError> {
    if command.first().is_none_or(|exe| exe.is_empty()) {
        return Err(RegistryError::Invalid(
            "a certificate provider needs a command: the executable run in place of its Lambda function".into(),
        ));
    }
    Ok(())
}

fn provider_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, i64, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

const SELECT: &str = "SELECT name, command_json, lambda_arn, operations_json, created_at, updated_at FROM certificate_providers";

impl Registry {
    /// Creates the account's certificate provider. Refused when one exists
    /// already, under any name (AWS allows one per account).
    pub fn create_certificate_provider(
        &self,
        name: &str,
        command: &[String],
        lambda_function_arn: &str,
        operations: &[String],
    ) -> Result<CertificateProviderRecord, RegistryError> {
        if !valid_provider_name(name) {
            return Err(RegistryError::Invalid(format!(
                "certificate provider name {name:?} must be 1 to 128 characters of [a-zA-Z0-9_=,@-]"
            )));
        }
        check_operations(operations)?;
        check_command(command)?;
        let mut db = self.db();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .query_row_cached("SELECT name FROM certificate_providers LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(existing) = existing {
            return Err(RegistryError::OneCertificateProvider { existing });
        }
        let now = now_unix();
        tx.execute_cached(
            "INSERT INTO certificate_providers (name, command_json, lambda_arn, operations_json, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                name,
                serde_json::to_string(command).unwrap_or_default(),
                lambda_function_arn,
                serde_json::to_string(operations).unwrap_or_default(),
                now
            ],
        )?;
        tx.commit()?;
        Ok(CertificateProviderRecord {
            certificate_provider_name: name.to_owned(),
            command: command.to_vec(),
            lambda_function_arn: lambda_function_arn.to_owned(),
            account_default_for_operations: operations.to_vec(),
            creation_date: now,
            last_modified_date: now,
        })
    }

    /// Changes a provider's command, Lambda ARN or operations (those given);
    /// [`RegistryError::NotFound`] when there is no provider of that name.
    /// One statement: a delete by another process (the CLI beside `serve`)
    /// between a read and the write cannot make a vanished provider look
    /// updated, and two updates cannot mix their fields.
    pub fn update_certificate_provider(
        &self,
        name: &str,
        command: Option<&[String]>,
        lambda_function_arn: Option<&str>,
        operations: Option<&[String]>,
    ) -> Result<CertificateProviderRecord, RegistryError> {
        if let Some(ops) = operations {
            check_operations(ops)?;
        }
        if let Some(c) = command {
            check_command(c)?;
        }
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        let row = self
            .db()
            .query_row_cached(
                "UPDATE certificate_providers SET
                   command_json = COALESCE(?2, command_json),
                   lambda_arn = COALESCE(?3, lambda_arn),
                   operations_json = COALESCE(?4, operations_json),
                   updated_at = ?5
                 WHERE name = ?1
                 RETURNING name, command_json, lambda_arn, operations_json, created_at, updated_at",
                params![
                    name,
                    command.map(json),
                    lambda_function_arn,
                    operations.map(json),
                    now_unix()
                ],
                provider_row,
            )
            .optional()?;
        let row = row.ok_or_else(|| RegistryError::NotFound {
            kind: "certificate provider",
            name: name.into(),
        })?;
        to_record(row)
    }

    /// Deletes a provider; false when there was none of that name. From
    /// then on CreateCertificateFromCsr is signed by the emulator's CA again.
    pub fn delete_certificate_provider(&self, name: &str) -> Result<bool, RegistryError> {
        let n = self
            .db()
            .execute_cached("DELETE FROM certificate_providers WHERE name = ?1", [name])?;
        Ok(n > 0)
    }

    pub fn certificate_provider(
        &self,
        name: &str,
    ) -> Result<Option<CertificateProviderRecord>, RegistryError> {
        let row = self
            .db()
            .query_row_cached(&format!("{SELECT} WHERE name = ?1"), [name], provider_row)
            .optional()?;
        row.map(to_record).transpose()
    }

    /// All providers (zero or one).
    pub fn certificate_providers(&self) -> Result<Vec<CertificateProviderRecord>, RegistryError> {
        let db = self.db();
        let mut st = db.prepare_cached(&format!("{SELECT} ORDER BY name"))?;
        let rows = st
            .query_map([], provider_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(to_record).collect()
    }

    /// The provider that signs `operation` requests, if any.
    pub(crate) fn provider_for(
        &self,
        operation: &str,
    ) -> Result<Option<CertificateProviderRecord>, RegistryError> {
        Ok(self.certificate_providers()?.into_iter().find(|p| {
            p.account_default_for_operations
                .iter()
                .any(|o| o == operation)
        }))
    }
}

fn to_record(
    (name, command, lambda_function_arn, operations, created, updated): (
        String,
        String,
        String,
        String,
        i64,
        i64,
    ),
) -> Result<CertificateProviderRecord, RegistryError> {
    let corrupt = |what: &str| {
        let what = format!("certificate provider {name}: its {what} is corrupt");
        move |source| RegistryError::Corrupt { what, source }
    };
    Ok(CertificateProviderRecord {
        command: serde_json::from_str(&command).map_err(corrupt("command"))?,
        account_default_for_operations: serde_json::from_str(&operations)
            .map_err(corrupt("operations list"))?,
        certificate_provider_name: name,
        lambda_function_arn,
        creation_date: created,
        last_modified_date: updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<String> {
        vec![CREATE_CERTIFICATE_FROM_CSR.to_owned()]
    }

    #[test]
    fn one_provider_per_account_persisted_updated_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.provider_for(CREATE_CERTIFICATE_FROM_CSR).unwrap(), None);
        let cmd = vec!["/bin/provider".to_owned(), "--days".to_owned()];
        let made = reg
            .create_certificate_provider(
                "p1",
                &cmd,
                "arn:aws:lambda:us-east-1:1:function:f",
                &ops(),
            )
            .unwrap();
        // A second one, under any name: refused, naming the first.
        for name in ["p1", "p2"] {
            let e = reg
                .create_certificate_provider(name, &cmd, "arn", &ops())
                .unwrap_err();
            assert!(e.to_string().contains("p1"), "{e}");
        }
        // Persisted.
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(
            reg.certificate_provider("p1").unwrap().as_ref(),
            Some(&made)
        );
        assert_eq!(
            reg.provider_for(CREATE_CERTIFICATE_FROM_CSR)
                .unwrap()
                .as_ref(),
            Some(&made)
        );
        let new_cmd = vec!["/bin/other".to_owned()];
        let updated = reg
            .update_certificate_provider("p1", Some(&new_cmd), None, None)
            .unwrap();
        assert_eq!(updated.command, new_cmd);
        assert_eq!(updated.lambda_function_arn, made.lambda_function_arn);
        assert_eq!(updated.creation_date, made.creation_date);
        assert_eq!(reg.certificate_provider("p1").unwrap(), Some(updated));
        let rearned = reg
            .update_certificate_provider("p1", None, Some("arn:other"), None)
            .unwrap();
        assert_eq!(
            (rearned.command, rearned.lambda_function_arn.as_str()),
            (new_cmd.clone(), "arn:other")
        );
        // Deleted by another process (another connection to the same
        // file): an update then reports not found, and creates nothing.
        let other = Registry::open(dir.path()).unwrap();
        assert!(other.delete_certificate_provider("p1").unwrap());
        let e = reg
            .update_certificate_provider("p1", Some(&new_cmd), None, None)
            .unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
        assert_eq!(reg.certificate_providers().unwrap(), vec![]);
        let again = reg
            .create_certificate_provider("p1", &cmd, "arn", &ops())
            .unwrap();
        assert_eq!(again.command, cmd);
        assert!(reg.delete_certificate_provider("p1").unwrap());
        assert!(!reg.delete_certificate_provider("p1").unwrap());
        assert_eq!(reg.certificate_providers().unwrap(), vec![]);
    }

    #[test]
    fn bad_names_operations_and_commands_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let cmd = vec!["/bin/provider".to_owned()];
        assert!(reg
            .create_certificate_provider("has space", &cmd, "arn", &ops())
            .is_err());
        let e = reg
            .create_certificate_provider("p", &cmd, "arn", &["CreateKeysAndCertificate".into()])
            .unwrap_err();
        assert!(e.to_string().contains("CreateCertificateFromCsr"), "{e}");
        assert!(reg
            .create_certificate_provider("p", &[], "arn", &ops())
            .is_err());
        assert_eq!(reg.certificate_providers().unwrap(), vec![]);
    }
}
