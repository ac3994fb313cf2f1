//! The registry: certificates, things, policies and templates in SQLite;
//! jobs and their executions in `jobs.rs`; thing groups, thing types and
//! billing groups in `groups.rs`.
//!
//! One connection behind a mutex: the emulator's writes are small and the
//! handshake path only reads one row, so contention stays low. Every write
//! wakes the connection supervisor, which re-checks certificate statuses of
//! live connections (and notices other processes' writes through
//! `PRAGMA data_version`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::Notify;

mod cached;
mod file;
mod groups;
pub(crate) mod jobs;
pub(crate) mod providers;

pub use groups::{
    BillingGroupRecord, NamedObject, NewThingGroup, TemplateObjects, ThingGroupRecord,
    ThingTypeRecord,
};

pub use providers::{CertificateProviderRecord, CREATE_CERTIFICATE_FROM_CSR};

use cached::{CachedStatements, STATEMENT_CACHE_CAPACITY};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{kind} {name} not found in the registry")]
    NotFound { kind: &'static str, name: String },
    /// A name, value or request the registry refuses; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A policy document CreatePolicy refuses.
    #[error("policy {name}: {source}")]
    Policy {
        name: String,
        #[source]
        source: crate::policy::PolicyError,
    },
    /// A template name CreateProvisioningTemplate refuses (the error names it).
    #[error(transparent)]
    TemplateName(crate::template::TemplateError),
    /// A template body CreateProvisioningTemplate refuses.
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: crate::template::TemplateError,
    },
    /// JSON stored in the registry does not parse: `what` names the row
    /// (written by hand, or by another version of the emulator).
    #[error("{what}: {source}")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// CreateThing for a thing that exists with another configuration.
    #[error("{kind} {name} already exists with another configuration")]
    AlreadyExists { kind: &'static str, name: String },
    /// CreateCertificateProvider while the account has one (AWS allows one).
    #[error("certificate provider {existing} exists already and an account has at most one (as on AWS): delete it first (`iotcore-emulator certificate-providers delete {existing}`)")]
    OneCertificateProvider { existing: String },
    /// An update or delete named a version that is not the object's
    /// current one (`kind`: thing, thing group, billing group).
    #[error("{kind} {name} is at version {actual}, not the expected version {expected}")]
    VersionConflict {
        kind: &'static str,
        name: String,
        expected: i64,
        actual: i64,
    },
}

/// The statuses AWS IoT Core knows for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertStatus {
    Active,
    Inactive,
    Revoked,
    PendingActivation,
    PendingTransfer,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Active => "ACTIVE",
            CertStatus::Inactive => "INACTIVE",
            CertStatus::Revoked => "REVOKED",
            CertStatus::PendingActivation => "PENDING_ACTIVATION",
            CertStatus::PendingTransfer => "PENDING_TRANSFER",
        }
    }
}

impl std::str::FromStr for CertStatus {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "ACTIVE" => CertStatus::Active,
            "INACTIVE" => CertStatus::Inactive,
            "REVOKED" => CertStatus::Revoked,
            "PENDING_ACTIVATION" => CertStatus::PendingActivation,
            "PENDING_TRANSFER" => CertStatus::PendingTransfer,
            other => {
                return Err(RegistryError::Invalid(format!(
                    "unknown certificate status {other:?}: use ACTIVE, INACTIVE, REVOKED, PENDING_ACTIVATION or PENDING_TRANSFER"
                )))
            }
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CertificateRecord {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub status: CertStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// Starts at 1 and grows by one with every change of status (AWS's
    /// `customerVersion`).
    pub customer_version: i64,
    /// Unix time after which a never-registered certificate is deleted.
    pub pending_until: Option<i64>,
    /// True once a RegisterThing has consumed its ownership token.
    pub registered: bool,
    pub policies: Vec<String>,
    pub things: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ThingRecord {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    pub thing_type_name: Option<String>,
    pub thing_groups: Vec<String>,
    pub billing_group: Option<String>,
    pub certificates: Vec<String>,
    /// Starts at 1 and grows by one with every change of the thing
    /// (attributes, type, groups, billing group; not attachments). Kept by
    /// the registry: [`Registry::put_thing`] ignores the value given.
    pub version: i64,
}

/// A change of a thing's attributes, as UpdateThing's `attributePayload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeUpdate {
    /// Adds or replaces the given attributes; one given the empty string is
    /// removed (AWS's `merge: true`).
    Merge(BTreeMap<String, String>),
    /// Replaces all attributes by the given ones (AWS's `merge: false`);
    /// one given the empty string is not set.
    Replace(BTreeMap<String, String>),
}

/// What [`Registry::update_thing`] changes; `None` leaves a part as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingUpdate {
    pub attributes: Option<AttributeUpdate>,
    /// `Some(None)` removes the thing type.
    pub thing_type_name: Option<Option<String>>,
    /// Refuse the update ([`RegistryError::VersionConflict`]) unless the
    /// thing is at this version.
    pub expected_version: Option<i64>,
}

/// A CA registered by the user: device certificates it issued are
/// registered (ACTIVE, with `auto_attach_policies`) on their first connection.
#[derive(Clone, Debug, Serialize)]
pub struct CaCertificateRecord {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub status: CertStatus,
    pub auto_attach_policies: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyRecord {
    pub policy_name: String,
    pub document: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TemplateRecord {
    pub template_name: String,
    pub body: String,
    pub enabled: bool,
    pub pre_provisioning_hook: Option<String>,
}

/// What [`Registry::retire_certificate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retired {
    /// The certificate was not attached to the thing: nothing changed.
    NotAttached,
    /// Detached; still attached to another thing, so left as it was.
    DetachedOnly,
    /// Detached and set INACTIVE.
    Deactivated,
}

/// What RegisterThing writes, as one transaction.
pub(crate) struct ProvisioningWrite {
    pub certificate_id: String,
    /// The status the ownership token was checked against: the write
    /// happens only if the certificate still has it, so that a certificate
    /// revoked (or registered by another request) meanwhile is not
    /// overwritten.
    pub expected_status: CertStatus,
    pub status: CertStatus,
    pub thing: Option<ThingRecord>,
    pub new_policies: Vec<(String, String)>,
    pub attach_policies: Vec<String>,
}

/// What [`Registry::apply_provisioning`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProvisioningOutcome {
    Applied,
    /// The certificate's status was no longer the expected one (`None`:
    /// the certificate is gone): nothing was written.
    CertificateChanged(Option<CertStatus>),
}

/// Counters of in-process changes, so that live connections re-read only
/// what changed: `auth` (policies, things, attachments) is compared lazily
/// by each connection; `status` (certificate statuses) wakes the supervisor.
#[derive(Default)]
struct Epochs {
    auth: AtomicU64,
    status: AtomicU64,
    status_changed: Notify,
    jobs_changed: Notify,
}

/// Handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    conn: Arc<Mutex<Connection>>,
    epochs: Arc<Epochs>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

/// AWS IoT thing names (and thing type and billing group names): 1 to 128
/// characters of `[a-zA-Z0-9:_-]`.
pub(crate) fn valid_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// AWS's thing attribute names: 1 to 128 of `[a-zA-Z0-9_.,@/:#-]`.
pub(crate) fn valid_attribute_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b))
}

/// AWS's thing attribute values: at most 800 of `[a-zA-Z0-9_.,@/:#=[]-]`
/// (empty: removes the attribute in an update).
pub(crate) fn valid_attribute_value(s: &str) -> bool {
    s.len() <= 800
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#=[]-".contains(&b))
}

/// SQL assignment for an `UPDATE certificates` whose new status is `?2`:
/// the customer version grows only when the status changes.
const BUMP_CUSTOMER_VERSION: &str =
    "customer_version = customer_version + (CASE WHEN status = ?2 THEN 0 ELSE 1 END)";

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
  id TEXT PRIMARY KEY, pem TEXT NOT NULL, status TEXT NOT NULL,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
  pending_until INTEGER, registered INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS things (
  name TEXT PRIMARY KEY, attributes TEXT NOT NULL, thing_type TEXT,
  groups_json TEXT NOT NULL, billing_group TEXT);
CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
  name TEXT PRIMARY KEY, body TEXT NOT NULL, enabled INTEGER NOT NULL, hook TEXT);
CREATE TABLE IF NOT EXISTS cert_policies (
  cert_id TEXT NOT NULL, policy TEXT NOT NULL, PRIMARY KEY (cert_id, policy));
CREATE TABLE IF NOT EXISTS cert_things (
  cert_id TEXT NOT NULL, thing TEXT NOT NULL, PRIMARY KEY (cert_id, thing));
CREATE TABLE IF NOT EXISTS ca_certificates (
  id TEXT PRIMARY KEY, pem TEXT NOT NULL, status TEXT NOT NULL, policies_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, document TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS job_executions (
  job_id TEXT NOT NULL, thing TEXT NOT NULL, status TEXT NOT NULL, status_details TEXT NOT NULL,
  version INTEGER NOT NULL, execution_number INTEGER NOT NULL, queued_at INTEGER NOT NULL,
  started_at INTEGER, last_updated_at INTEGER NOT NULL, PRIMARY KEY (job_id, thing));
CREATE TABLE IF NOT EXISTS thing_groups (
  name TEXT PRIMARY KEY, id TEXT NOT NULL, parent TEXT, description TEXT,
  attributes_json TEXT NOT NULL, created_at INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS thing_types (
  name TEXT PRIMARY KEY, id TEXT NOT NULL, description TEXT, searchable_json TEXT NOT NULL,
  created_at INTEGER NOT NULL, deprecated_at INTEGER);
CREATE TABLE IF NOT EXISTS certificate_providers (
  name TEXT PRIMARY KEY, command_json TEXT NOT NULL, lambda_arn TEXT NOT NULL,
  operations_json TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS billing_groups (
  name TEXT PRIMARY KEY, id TEXT NOT NULL, description TEXT,
  created_at INTEGER NOT NULL, version INTEGER NOT NULL);
";

/// (table, column, definition) of an [`ADDED_COLUMNS`] entry.
type AddedColumn = (&'static str, &'static str, &'static str);

/// Columns added after the first release: added to data directories made before them, existing rows getting the
/// default. Only ever append.
const ADDED_COLUMNS: &[AddedColumn] = &[
    ("things", "version", "INTEGER NOT NULL DEFAULT 1"),
    (
        "certificates",
        "customer_version",
        "INTEGER NOT NULL DEFAULT 1",
    ),
];

/// Adds the missing [`ADDED_COLUMNS`]. When one is missing, in one
/// transaction that takes the write lock first and looks again, so that two
/// processes opening an old data directory at once do not both add it.
fn migrate(conn: &mut Connection) -> Result<(), RegistryError> {
    fn missing(db: &Connection) -> Result<Vec<&'static AddedColumn>, RegistryError> {
        let mut out = Vec::new();
        for added in ADDED_COLUMNS {
            let (table, column, _) = added;
            let present: bool = db.query_row_cached(
                "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                params![table, column],
                |r| r.get(0),
            )?;
            if !present {
                out.push(added);
            }
        }
        Ok(out)
    }
    if missing(conn)?.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (table, column, definition) in missing(&tx)? {
        tx.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN {column} {definition}"
        ))?;
    }
    tx.commit()?;
    Ok(())
}

impl Registry {
    /// Opens (creating if needed, mode 0600) `DIR/registry.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let path = data_dir.join("registry.sqlite3");
        file::ensure_private_database(&path)?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&mut conn)?;
        Ok(Registry {
            conn: Arc::new(Mutex::new(conn)),
            epochs: Arc::new(Epochs::default()),
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn auth_changed(&self) {
        self.epochs.auth.fetch_add(1, Ordering::SeqCst);
    }

    fn status_changed(&self) {
        self.epochs.status.fetch_add(1, Ordering::SeqCst);
        self.epochs.status_changed.notify_one();
    }

    /// Another process changed the database: everything may have changed.
    pub(crate) fn external_change(&self) {
        self.auth_changed();
        self.status_changed();
        self.jobs_changed();
    }

    /// Wakes the supervisor, which publishes the jobs notifications.
    pub(crate) fn jobs_changed(&self) {
        self.epochs.jobs_changed.notify_one();
    }

    /// Resolves after the next in-process change of jobs.
    pub(crate) async fn jobs_change(&self) {
        self.epochs.jobs_changed.notified().await
    }

    pub(crate) fn auth_epoch(&self) -> u64 {
        self.epochs.auth.load(Ordering::SeqCst)
    }

    pub(crate) fn status_epoch(&self) -> u64 {
        self.epochs.status.load(Ordering::SeqCst)
    }

    /// Resolves after the next in-process certificate status change.
    pub(crate) async fn status_change(&self) {
        self.epochs.status_changed.notified().await
    }

    /// SQLite's counter of commits made by other connections (other processes).
    pub(crate) fn data_version(&self) -> Result<i64, RegistryError> {
        Ok(self
            .db()
            .query_row_cached("PRAGMA data_version", [], |r| r.get(0))?)
    }

    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .db()
            .query_row_cached("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn set_meta(&self, key: &str, value: &str) -> Result<(), RegistryError> {
        self.db().execute_cached(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- certificates ----

    /// Stores a new certificate. Returns false, changing nothing, when a
    /// certificate with this id is registered already: one statement, so
    /// that a check-then-insert race cannot reset an ACTIVE certificate to
    /// PENDING_ACTIVATION (a certificate provider may answer the same
    /// certificate twice).
    #[must_use = "false means the certificate was registered already and nothing was stored"]
    pub(crate) fn insert_certificate(
        &self,
        id: &str,
        pem: &str,
        status: CertStatus,
        pending_until: Option<i64>,
    ) -> Result<bool, RegistryError> {
        let now = now_unix();
        let inserted = self.db().execute_cached(
            "INSERT INTO certificates (id, pem, status, created_at, updated_at, pending_until, registered)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, 0)
             ON CONFLICT (id) DO NOTHING",
            params![id, pem, status.as_str(), now, pending_until],
        )?;
        Ok(inserted == 1)
    }

    pub fn certificate_status(&self, id: &str) -> Result<Option<CertStatus>, RegistryError> {
        let s: Option<String> = self
            .db()
            .query_row_cached("SELECT status FROM certificates WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        s.map(|s| s.parse()).transpose()
    }

    pub fn certificate(&self, id: &str) -> Result<Option<CertificateRecord>, RegistryError> {
        let db = self.db();
        let row = db
            .query_row_cached(
                "SELECT id, pem, status, created_at, updated_at, pending_until, registered, customer_version FROM certificates WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            certificate_id,
            certificate_pem,
            status,
            created_at,
            updated_at,
            pending_until,
            registered,
            customer_version,
        )) = row
        else {
            return Ok(None);
        };
        let policies = column_list(
            &db,
            "SELECT policy FROM cert_policies WHERE cert_id = ?1 ORDER BY policy",
            id,
        )?;
        let things = column_list(
            &db,
            "SELECT thing FROM cert_things WHERE cert_id = ?1 ORDER BY thing",
            id,
        )?;
        Ok(Some(CertificateRecord {
            certificate_id,
            certificate_pem,
            status: status.parse()?,
            created_at,
            updated_at,
            customer_version,
            pending_until,
            registered,
            policies,
            things,
        }))
    }

    pub fn certificates(&self) -> Result<Vec<CertificateRecord>, RegistryError> {
        let ids = column_list(
            &self.db(),
            "SELECT id FROM certificates WHERE ?1 = ?1 ORDER BY created_at, id",
            "",
        )?;
        ids.iter()
            .filter_map(|id| self.certificate(id).transpose())
            .collect()
    }

    /// Changes a certificate's status. Moving it away from ACTIVE drops its
    /// live connections within the supervisor's poll interval.
    pub fn set_certificate_status(
        &self,
        id: &str,
        status: CertStatus,
    ) -> Result<(), RegistryError> {
        let n = self.db().execute_cached(
            &format!("UPDATE certificates SET status = ?2, updated_at = ?3, {BUMP_CUSTOMER_VERSION} WHERE id = ?1"),
            params![id, status.as_str(), now_unix()],
        )?;
        self.status_changed();
        if n == 0 {
            return Err(RegistryError::NotFound {
                kind: "certificate",
                name: id.into(),
            });
        }
        Ok(())
    }

    pub fn delete_certificate(&self, id: &str) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute_cached("DELETE FROM cert_policies WHERE cert_id = ?1", [id])?;
        tx.execute_cached("DELETE FROM cert_things WHERE cert_id = ?1", [id])?;
        tx.execute_cached("DELETE FROM certificates WHERE id = ?1", [id])?;
        tx.commit()?;
        drop(db);
        self.status_changed();
        Ok(())
    }

    /// Deletes never-registered certificates whose ownership token has expired.
    pub(crate) fn delete_expired_pending(&self, now: i64) -> Result<Vec<String>, RegistryError> {
        let ids = {
            let db = self.db();
            let mut st = db.prepare_cached(
                "SELECT id FROM certificates WHERE registered = 0 AND pending_until IS NOT NULL AND pending_until <= ?1",
            )?;
            let ids = st
                .query_map([now], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids
        };
        for id in &ids {
            self.delete_certificate(id)?;
        }
        Ok(ids)
    }

    // ---- registered CAs ----

    /// Registers a CA certificate (ACTIVE). Certificates it issued connect
    /// and are registered ACTIVE with `policies` attached on first use.
    pub fn register_ca_certificate(
        &self,
        pem_str: &str,
        policies: &[&str],
    ) -> Result<String, RegistryError> {
        let id = crate::pki::certificate_id_from_pem(pem_str)
            .ok_or_else(|| RegistryError::Invalid("CA certificate is not PEM".into()))?;
        for p in policies {
            if self.policy(p)?.is_none() {
                return Err(RegistryError::NotFound {
                    kind: "policy",
                    name: (*p).into(),
                });
            }
        }
        let policies = serde_json::to_string(policies).unwrap_or_else(|_| "[]".into());
        self.db().execute_cached(
            "INSERT OR REPLACE INTO ca_certificates (id, pem, status, policies_json) VALUES (?1, ?2, 'ACTIVE', ?3)",
            params![id, pem_str, policies],
        )?;
        self.auth_changed();
        Ok(id)
    }

    pub fn set_ca_certificate_status(
        &self,
        id: &str,
        status: CertStatus,
    ) -> Result<(), RegistryError> {
        let n = self.db().execute_cached(
            "UPDATE ca_certificates SET status = ?2 WHERE id = ?1",
            params![id, status.as_str()],
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound {
                kind: "CA certificate",
                name: id.into(),
            });
        }
        self.auth_changed();
        Ok(())
    }

    pub fn ca_certificates(&self) -> Result<Vec<CaCertificateRecord>, RegistryError> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT id, pem, status, policies_json FROM ca_certificates ORDER BY id",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(certificate_id, certificate_pem, status, policies)| {
                let auto_attach_policies =
                    serde_json::from_str(&policies).map_err(|source| RegistryError::Corrupt {
                        what: format!("CA certificate {certificate_id}: its policies are corrupt"),
                        source,
                    })?;
                Ok(CaCertificateRecord {
                    certificate_id,
                    certificate_pem,
                    status: status.parse()?,
                    auto_attach_policies,
                })
            })
            .collect()
    }

    /// Registers a device certificate issued by a registered CA on its first
    /// connection: ACTIVE, with the CA's policies attached.
    pub(crate) fn auto_register(
        &self,
        pem_str: &str,
        id: &str,
        policies: &[String],
    ) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let now = now_unix();
        tx.execute_cached(
            "INSERT OR IGNORE INTO certificates (id, pem, status, created_at, updated_at, pending_until, registered)
             VALUES (?1, ?2, 'ACTIVE', ?3, ?3, NULL, 1)",
            params![id, pem_str, now],
        )?;
        for p in policies {
            tx.execute_cached(
                "INSERT OR IGNORE INTO cert_policies (cert_id, policy) VALUES (?1, ?2)",
                params![id, p],
            )?;
        }
        tx.commit()?;
        drop(db);
        self.auth_changed();
        Ok(())
    }

    // ---- policies ----

    /// Creates or replaces a policy. The document must parse.
    pub fn create_policy(&self, name: &str, document: &str) -> Result<(), RegistryError> {
        crate::policy::PolicyDocument::parse(document).map_err(|source| RegistryError::Policy {
            name: name.to_owned(),
            source,
        })?;
        self.db().execute_cached(
            "INSERT OR REPLACE INTO policies (name, document) VALUES (?1, ?2)",
            params![name, document],
        )?;
        self.auth_changed();
        Ok(())
    }

    /// Stores a new policy after validating its document; a name already
    /// taken is [`RegistryError::AlreadyExists`] and the stored policy is
    /// left as it is. One statement, so that of two callers creating the
    /// same name at once exactly one succeeds (CreatePolicy's contract;
    /// [`create_policy`](Self::create_policy) replaces instead).
    pub fn insert_policy(&self, name: &str, document: &str) -> Result<(), RegistryError> {
        crate::policy::PolicyDocument::parse(document).map_err(|source| RegistryError::Policy {
            name: name.to_owned(),
            source,
        })?;
        let inserted = self.db().execute_cached(
            "INSERT INTO policies (name, document) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![name, document],
        )?;
        if inserted == 0 {
            return Err(RegistryError::AlreadyExists {
                kind: "policy",
                name: name.to_owned(),
            });
        }
        self.auth_changed();
        Ok(())
    }

    pub fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, RegistryError> {
        Ok(self
            .db()
            .query_row_cached(
                "SELECT name, document FROM policies WHERE name = ?1",
                [name],
                |r| {
                    Ok(PolicyRecord {
                        policy_name: r.get(0)?,
                        document: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>, RegistryError> {
        let db = self.db();
        let mut st = db.prepare_cached("SELECT name, document FROM policies ORDER BY name")?;
        let rows = st
            .query_map([], |r| {
                Ok(PolicyRecord {
                    policy_name: r.get(0)?,
                    document: r.get(1)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn attach_policy(&self, policy: &str, cert_id: &str) -> Result<(), RegistryError> {
        if self.policy(policy)?.is_none() {
            return Err(RegistryError::NotFound {
                kind: "policy",
                name: policy.into(),
            });
        }
        if self.certificate_status(cert_id)?.is_none() {
            return Err(RegistryError::NotFound {
                kind: "certificate",
                name: cert_id.into(),
            });
        }
        self.db().execute_cached(
            "INSERT OR IGNORE INTO cert_policies (cert_id, policy) VALUES (?1, ?2)",
            params![cert_id, policy],
        )?;
        self.auth_changed();
        Ok(())
    }

    pub fn detach_policy(&self, policy: &str, cert_id: &str) -> Result<(), RegistryError> {
        self.db().execute_cached(
            "DELETE FROM cert_policies WHERE cert_id = ?1 AND policy = ?2",
            params![cert_id, policy],
        )?;
        self.auth_changed();
        Ok(())
    }

    /// Documents of the policies attached to a certificate.
    /// The names and documents of the policies attached to `cert_id`, by
    /// name.
    pub(crate) fn policy_documents_for(
        &self,
        cert_id: &str,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT p.name, p.document FROM cert_policies c JOIN policies p ON p.name = c.policy \
             WHERE c.cert_id = ?1 ORDER BY p.name",
        )?;
        let rows = st
            .query_map([cert_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // ---- templates ----

    /// Registers (or replaces) a provisioning template after validating its
    /// name and body.
    pub fn create_template(
        &self,
        name: &str,
        body: &str,
        enabled: bool,
        hook: Option<&str>,
    ) -> Result<(), RegistryError> {
        crate::template::validate_name(name).map_err(RegistryError::TemplateName)?;
        crate::template::Template::parse(body).map_err(|source| RegistryError::Template {
            name: name.to_owned(),
            source,
        })?;
        self.db().execute_cached(
            "INSERT OR REPLACE INTO templates (name, body, enabled, hook) VALUES (?1, ?2, ?3, ?4)",
            params![name, body, enabled, hook],
        )?;
        Ok(())
    }

    pub fn set_template_enabled(&self, name: &str, enabled: bool) -> Result<(), RegistryError> {
        let n = self.db().execute_cached(
            "UPDATE templates SET enabled = ?2 WHERE name = ?1",
            params![name, enabled],
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound {
                kind: "template",
                name: name.into(),
            });
        }
        Ok(())
    }

    pub fn template(&self, name: &str) -> Result<Option<TemplateRecord>, RegistryError> {
        Ok(self
            .db()
            .query_row_cached(
                "SELECT name, body, enabled, hook FROM templates WHERE name = ?1",
                [name],
                template_row,
            )
            .optional()?)
    }

    pub fn templates(&self) -> Result<Vec<TemplateRecord>, RegistryError> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT name, body, enabled, hook FROM templates ORDER BY name")?;
        let rows = st
            .query_map([], template_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // ---- things ----

    pub fn thing(&self, name: &str) -> Result<Option<ThingRecord>, RegistryError> {
        let db = self.db();
        thing_in(&db, name)
    }

    pub fn things(&self) -> Result<Vec<ThingRecord>, RegistryError> {
        let names = column_list(
            &self.db(),
            "SELECT name FROM things WHERE ?1 = ?1 ORDER BY name",
            "",
        )?;
        names
            .iter()
            .filter_map(|n| self.thing(n).transpose())
            .collect()
    }

    /// Creates or replaces a thing (certificates attached to it are kept).
    pub fn put_thing(&self, thing: &ThingRecord) -> Result<(), RegistryError> {
        put_thing_in(&self.db(), thing)?;
        self.auth_changed();
        Ok(())
    }

    /// Creates a thing (AWS's CreateThing), in one transaction: a thing of
    /// that name with the same attributes, type and billing group is left
    /// as it is (the call is idempotent, as AWS's), one with another
    /// configuration is [`RegistryError::AlreadyExists`]. Of two callers
    /// racing to create the same name with different attributes exactly one
    /// succeeds, which is what a pre-provisioning hook relies on to claim a
    /// new thing for one certificate.
    pub fn create_thing(&self, thing: &ThingRecord) -> Result<ThingRecord, RegistryError> {
        check_attributes(&thing.attributes)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        let created = match thing_in(&tx, &thing.thing_name)? {
            Some(existing) => {
                let same = existing.attributes == thing.attributes
                    && existing.thing_type_name == thing.thing_type_name
                    && existing.billing_group == thing.billing_group;
                if !same {
                    return Err(RegistryError::AlreadyExists {
                        kind: "thing",
                        name: thing.thing_name.clone(),
                    });
                }
                existing
            }
            None => {
                put_thing_in(&tx, thing)?;
                thing_in(&tx, &thing.thing_name)?.ok_or_else(|| RegistryError::NotFound {
                    kind: "thing",
                    name: thing.thing_name.clone(),
                })?
            }
        };
        tx.commit()?;
        drop(db);
        self.auth_changed();
        Ok(created)
    }

    /// Changes a thing's attributes and type in one transaction (AWS's
    /// UpdateThing) and returns it as it now is. The version grows by one
    /// when something changed. Attribute names and values and the type name
    /// must fit AWS's patterns ([`RegistryError::Invalid`]).
    pub fn update_thing(
        &self,
        name: &str,
        update: &ThingUpdate,
    ) -> Result<ThingRecord, RegistryError> {
        let given = match &update.attributes {
            None => None,
            Some(AttributeUpdate::Merge(m) | AttributeUpdate::Replace(m)) => Some(m),
        };
        for (k, v) in given.into_iter().flatten() {
            if !valid_attribute_name(k) {
                return Err(RegistryError::Invalid(format!(
                    "attribute name {k:?} must be 1 to 128 characters of [a-zA-Z0-9_.,@/:#-]"
                )));
            }
            if !valid_attribute_value(v) {
                return Err(RegistryError::Invalid(format!(
                    "the value of attribute {k} must be at most 800 characters of [a-zA-Z0-9_.,@/:#=[]-]"
                )));
            }
        }
        if let Some(Some(t)) = &update.thing_type_name {
            if !valid_thing_name(t) {
                return Err(RegistryError::Invalid(format!(
                    "thing type name {t:?} must be 1 to 128 characters of [a-zA-Z0-9:_-]"
                )));
            }
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut thing = thing_in(&tx, name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "thing",
            name: name.into(),
        })?;
        check_version("thing", name, update.expected_version, thing.version)?;
        match &update.attributes {
            None => {}
            Some(AttributeUpdate::Merge(given)) => {
                for (k, v) in given {
                    if v.is_empty() {
                        thing.attributes.remove(k);
                    } else {
                        thing.attributes.insert(k.clone(), v.clone());
                    }
                }
            }
            Some(AttributeUpdate::Replace(given)) => {
                thing.attributes = given
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            }
        }
        if let Some(t) = &update.thing_type_name {
            thing.thing_type_name = t.clone();
        }
        put_thing_in(&tx, &thing)?;
        let thing = thing_in(&tx, name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "thing",
            name: name.into(),
        })?;
        tx.commit()?;
        drop(db);
        self.auth_changed();
        Ok(thing)
    }

    pub fn attach_thing(&self, thing: &str, cert_id: &str) -> Result<(), RegistryError> {
        self.db().execute_cached(
            "INSERT OR IGNORE INTO cert_things (cert_id, thing) VALUES (?1, ?2)",
            params![cert_id, thing],
        )?;
        self.auth_changed();
        Ok(())
    }

    /// Detaches a certificate from a thing (AWS's DetachThingPrincipal);
    /// false when it was not attached.
    pub fn detach_thing(&self, thing: &str, cert_id: &str) -> Result<bool, RegistryError> {
        let n = self.db().execute_cached(
            "DELETE FROM cert_things WHERE cert_id = ?1 AND thing = ?2",
            params![cert_id, thing],
        )?;
        self.auth_changed();
        Ok(n > 0)
    }

    /// What the rotation report rule did to one old certificate.
    /// In one transaction: if `cert_id` is attached to `thing`, detach it
    /// and, unless another thing still has it, set it INACTIVE.
    pub(crate) fn retire_certificate(
        &self,
        thing: &str,
        cert_id: &str,
    ) -> Result<Retired, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let n = tx.execute_cached(
            "DELETE FROM cert_things WHERE cert_id = ?1 AND thing = ?2",
            params![cert_id, thing],
        )?;
        if n == 0 {
            return Ok(Retired::NotAttached);
        }
        let others: i64 = tx.query_row_cached(
            "SELECT COUNT(*) FROM cert_things WHERE cert_id = ?1",
            [cert_id],
            |r| r.get(0),
        )?;
        let outcome = if others > 0 {
            Retired::DetachedOnly
        } else {
            tx.execute_cached(
                &format!("UPDATE certificates SET status = ?2, updated_at = ?3, {BUMP_CUSTOMER_VERSION} WHERE id = ?1"),
                params![cert_id, CertStatus::Inactive.as_str(), now_unix()],
            )?;
            Retired::Deactivated
        };
        tx.commit()?;
        drop(db);
        self.auth_changed();
        self.status_changed();
        Ok(outcome)
    }

    /// True when `thing` exists and `cert_id` is attached to it.
    pub(crate) fn thing_attached(&self, thing: &str, cert_id: &str) -> Result<bool, RegistryError> {
        Ok(self
            .db()
            .query_row_cached(
                "SELECT 1 FROM cert_things c JOIN things t ON t.name = c.thing WHERE c.thing = ?1 AND c.cert_id = ?2",
                params![thing, cert_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Everything a successful RegisterThing writes, in one transaction.
    pub(crate) fn apply_provisioning(
        &self,
        w: &ProvisioningWrite,
    ) -> Result<ProvisioningOutcome, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(thing) = &w.thing {
            put_thing_in(&tx, thing)?;
            tx.execute_cached(
                "INSERT OR IGNORE INTO cert_things (cert_id, thing) VALUES (?1, ?2)",
                params![w.certificate_id, thing.thing_name],
            )?;
        }
        for (name, doc) in &w.new_policies {
            tx.execute_cached(
                "INSERT OR REPLACE INTO policies (name, document) VALUES (?1, ?2)",
                params![name, doc],
            )?;
        }
        for name in w
            .attach_policies
            .iter()
            .chain(w.new_policies.iter().map(|(n, _)| n))
        {
            tx.execute_cached(
                "INSERT OR IGNORE INTO cert_policies (cert_id, policy) VALUES (?1, ?2)",
                params![w.certificate_id, name],
            )?;
        }
        let n = tx.execute_cached(
            &format!("UPDATE certificates SET status = ?2, updated_at = ?3, registered = 1, pending_until = NULL, {BUMP_CUSTOMER_VERSION} WHERE id = ?1 AND status = ?4"),
            params![w.certificate_id, w.status.as_str(), now_unix(), w.expected_status.as_str()],
        )?;
        if n == 0 {
            let found: Option<String> = tx
                .query_row_cached(
                    "SELECT status FROM certificates WHERE id = ?1",
                    [&w.certificate_id],
                    |r| r.get(0),
                )
                .optional()?;
            // Dropping `tx` rolls back the thing and policy writes above.
            return Ok(ProvisioningOutcome::CertificateChanged(
                found.map(|s| s.parse()).transpose()?,
            ));
        }
        tx.commit()?;
        drop(db);
        self.auth_changed();
        if w.status != CertStatus::Active {
            self.status_changed();
        }
        Ok(ProvisioningOutcome::Applied)
    }
}

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRecord> {
    Ok(TemplateRecord {
        template_name: r.get(0)?,
        body: r.get(1)?,
        enabled: r.get(2)?,
        pre_provisioning_hook: r.get(3)?,
    })
}

fn column_list(db: &Connection, sql: &str, arg: &str) -> Result<Vec<String>, RegistryError> {
    let mut st = db.prepare_cached(sql)?;
    let rows = st
        .query_map([arg], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn thing_in(db: &Connection, name: &str) -> Result<Option<ThingRecord>, RegistryError> {
    let row = db
        .query_row_cached(
            "SELECT name, attributes, thing_type, groups_json, billing_group, version FROM things WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((thing_name, attrs, thing_type_name, groups, billing_group, version)) = row else {
        return Ok(None);
    };
    let bad = |source: serde_json::Error| RegistryError::Corrupt {
        what: format!("thing {name}: stored JSON is corrupt"),
        source,
    };
    Ok(Some(ThingRecord {
        certificates: column_list(
            db,
            "SELECT cert_id FROM cert_things WHERE thing = ?1 ORDER BY cert_id",
            name,
        )?,
        thing_name,
        attributes: serde_json::from_str(&attrs).map_err(bad)?,
        thing_type_name,
        thing_groups: serde_json::from_str(&groups).map_err(bad)?,
        billing_group,
        version,
    }))
}

/// Creates a thing at version 1, or replaces its fields and bumps its
/// version when one of them differs (attributes and groups are stored as
/// canonical JSON, so equal contents compare equal).
fn put_thing_in(db: &Connection, t: &ThingRecord) -> Result<(), RegistryError> {
    let attrs = serde_json::to_string(&t.attributes).unwrap_or_else(|_| "{}".into());
    let groups = serde_json::to_string(&t.thing_groups).unwrap_or_else(|_| "[]".into());
    db.execute_cached(
        "INSERT INTO things (name, attributes, thing_type, groups_json, billing_group, version)
         VALUES (?1, ?2, ?3, ?4, ?5, 1)
         ON CONFLICT (name) DO UPDATE SET
           attributes = excluded.attributes, thing_type = excluded.thing_type,
           groups_json = excluded.groups_json, billing_group = excluded.billing_group,
           version = things.version + 1
         WHERE things.attributes IS NOT excluded.attributes
            OR things.thing_type IS NOT excluded.thing_type
            OR things.groups_json IS NOT excluded.groups_json
            OR things.billing_group IS NOT excluded.billing_group",
        params![
            t.thing_name,
            attrs,
            t.thing_type_name,
            groups,
            t.billing_group
        ],
    )?;
    Ok(())
}

/// Attribute names and values as AWS allows them (an empty value is
/// refused: it means "remove" only in an update).
pub(crate) fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    for (k, v) in attributes {
        if !valid_attribute_name(k) || !valid_attribute_value(v) || v.is_empty() {
            return Err(RegistryError::Invalid(format!(
                "attribute {k:?}={v:?}: names are 1 to 128 of [a-zA-Z0-9_.,@/:#-], values 1 \
                 to 800 of [a-zA-Z0-9_.,@/:#=[]-]"
            )));
        }
    }
    Ok(())
}

/// AWS's `expectedVersion`: a write or delete of `kind` `name` given one
/// goes through only while the object is at that version.
pub(crate) fn check_version(
    kind: &'static str,
    name: &str,
    expected: Option<i64>,
    actual: i64,
) -> Result<(), RegistryError> {
    match expected {
        Some(expected) if expected != actual => Err(RegistryError::VersionConflict {
            kind,
            name: name.into(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory written before the version columns existed keeps
    /// its things and certificates, which start at version 1.
    #[test]
    fn old_data_directories_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join("registry.sqlite3")).unwrap();
            old.execute_batch(SCHEMA).unwrap();
            old.execute(
                "INSERT INTO things (name, attributes, thing_type, groups_json, billing_group)
                 VALUES ('gw_1', '{\"a\":\"1\"}', 'gateway', '[]', NULL)",
                [],
            )
            .unwrap();
            old.execute(
                "INSERT INTO certificates (id, pem, status, created_at, updated_at, pending_until, registered)
                 VALUES ('c1', 'PEM', 'ACTIVE', 10, 20, NULL, 1)",
                [],
            )
            .unwrap();
        }
        let reg = Registry::open(dir.path()).unwrap();
        let t = reg.thing("gw_1").unwrap().unwrap();
        assert_eq!(t.version, 1);
        assert_eq!(t.attributes.get("a").map(String::as_str), Some("1"));
        assert_eq!(t.thing_type_name.as_deref(), Some("gateway"));
        let c = reg.certificate("c1").unwrap().unwrap();
        assert_eq!((c.customer_version, c.created_at), (1, 10));
        // Opening again (another process, a restart) changes nothing.
        drop(reg);
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.thing("gw_1").unwrap().unwrap().version, 1);

        reg.set_certificate_status("c1", CertStatus::Inactive)
            .unwrap();
        reg.set_certificate_status("c1", CertStatus::Inactive)
            .unwrap();
        assert_eq!(reg.certificate("c1").unwrap().unwrap().customer_version, 2);
    }

    /// Inserting a certificate registered already (a provider answering
    /// the same one twice) changes nothing: an ACTIVE one stays ACTIVE.
    #[test]
    fn a_certificate_registered_already_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        assert!(reg
            .insert_certificate("c1", "PEM", CertStatus::PendingActivation, Some(1))
            .unwrap());
        reg.set_certificate_status("c1", CertStatus::Active)
            .unwrap();
        let before = reg.certificate("c1").unwrap().unwrap();
        assert!(!reg
            .insert_certificate("c1", "OTHER", CertStatus::PendingActivation, Some(2))
            .unwrap());
        let after = reg.certificate("c1").unwrap().unwrap();
        assert_eq!(after.status, CertStatus::Active);
        assert_eq!(after.certificate_pem, "PEM");
        assert_eq!(after.customer_version, before.customer_version);
    }

    #[test]
    fn refused_documents_keep_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let e = reg.create_policy("p", "{not json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("policy p: policy document is not valid JSON: "),
            "{e}"
        );
        assert!(matches!(
            &e,
            RegistryError::Policy {
                source: crate::policy::PolicyError::Json(_),
                ..
            }
        ));
        let e = reg
            .create_template("t", "{not json", true, None)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("template t: template body is not valid JSON: "),
            "{e}"
        );
        assert!(matches!(
            &e,
            RegistryError::Template {
                source: crate::template::TemplateError::Json(_),
                ..
            }
        ));
        let e = reg.create_template("a b", "{}", true, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("template name \"a b\" is invalid"),
            "{e}"
        );
        assert!(matches!(e, RegistryError::TemplateName(_)));

        reg.put_thing(&ThingRecord {
            thing_name: "gw_1".into(),
            ..Default::default()
        })
        .unwrap();
        reg.db()
            .execute("UPDATE things SET attributes = '{' WHERE name = 'gw_1'", [])
            .unwrap();
        let e = reg.thing("gw_1").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("thing gw_1: stored JSON is corrupt: "),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("the JSON error");
        assert!(source.is::<serde_json::Error>());
    }

    #[test]
    fn attribute_patterns() {
        assert!(valid_attribute_name("serial.no@site/1:#a,b-c_d"));
        assert!(!valid_attribute_name(""));
        assert!(!valid_attribute_name("a b"));
        assert!(valid_attribute_value(""));
        assert!(valid_attribute_value("k=[v]"));
        assert!(!valid_attribute_value("a b"));
        assert!(!valid_attribute_value(&"a".repeat(801)));
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        reg.put_thing(&ThingRecord {
            thing_name: "gw_1".into(),
            ..Default::default()
        })
        .unwrap();
        let bad = ThingUpdate {
            attributes: Some(AttributeUpdate::Merge(BTreeMap::from([(
                "a b".to_owned(),
                "1".to_owned(),
            )]))),
            ..Default::default()
        };
        assert!(matches!(
            reg.update_thing("gw_1", &bad),
            Err(RegistryError::Invalid(m)) if m.contains("attribute name \"a b\"")
        ));
    }

    #[test]
    fn versions_grow_with_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let mut t = ThingRecord {
            thing_name: "gw_1".into(),
            ..Default::default()
        };
        reg.put_thing(&t).unwrap();
        assert_eq!(reg.thing("gw_1").unwrap().unwrap().version, 1);
        reg.put_thing(&t).unwrap();
        assert_eq!(reg.thing("gw_1").unwrap().unwrap().version, 1);
        t.attributes.insert("a".into(), "1".into());
        reg.put_thing(&t).unwrap();
        assert_eq!(reg.thing("gw_1").unwrap().unwrap().version, 2);

        let merge = |pairs: &[(&str, &str)]| ThingUpdate {
            attributes: Some(AttributeUpdate::Merge(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )),
            ..Default::default()
        };
        let t = reg
            .update_thing("gw_1", &merge(&[("b", "2"), ("a", "")]))
            .unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(
            t.attributes,
            BTreeMap::from([("b".to_owned(), "2".to_owned())])
        );
        // Removing what is not there changes nothing.
        assert_eq!(
            reg.update_thing("gw_1", &merge(&[("a", "")]))
                .unwrap()
                .version,
            3
        );
        let stale = ThingUpdate {
            expected_version: Some(2),
            ..merge(&[("c", "3")])
        };
        assert!(matches!(
            reg.update_thing("gw_1", &stale),
            Err(RegistryError::VersionConflict {
                expected: 2,
                actual: 3,
                ..
            })
        ));
        let replace = ThingUpdate {
            attributes: Some(AttributeUpdate::Replace(BTreeMap::from([
                ("x".to_owned(), "9".to_owned()),
                ("y".to_owned(), String::new()),
            ]))),
            thing_type_name: Some(Some("gateway".into())),
            expected_version: Some(3),
        };
        let t = reg.update_thing("gw_1", &replace).unwrap();
        assert_eq!(
            (t.version, t.attributes, t.thing_type_name.as_deref()),
            (
                4,
                BTreeMap::from([("x".to_owned(), "9".to_owned())]),
                Some("gateway")
            )
        );
        assert!(matches!(
            reg.update_thing("nope", &ThingUpdate::default()),
            Err(RegistryError::NotFound { kind: "thing", .. })
        ));
    }
}
