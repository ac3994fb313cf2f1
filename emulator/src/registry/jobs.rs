//! The jobs registry: jobs, their executions per thing, in the registry's
//! SQLite tables `jobs` and `job_executions` (see the schema in `mod.rs`).

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;

use super::cached::CachedStatements;
use super::{now_unix, Registry, RegistryError};

/// The statuses of a job execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobExecutionStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    Canceled,
    TimedOut,
}

impl JobExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobExecutionStatus::Queued => "QUEUED",
            JobExecutionStatus::InProgress => "IN_PROGRESS",
            JobExecutionStatus::Succeeded => "SUCCEEDED",
            JobExecutionStatus::Failed => "FAILED",
            JobExecutionStatus::Rejected => "REJECTED",
            JobExecutionStatus::Canceled => "CANCELED",
            JobExecutionStatus::TimedOut => "TIMED_OUT",
        }
    }

    /// QUEUED and IN_PROGRESS: the execution still waits for the device.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            JobExecutionStatus::Queued | JobExecutionStatus::InProgress
        )
    }
}

impl std::str::FromStr for JobExecutionStatus {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "QUEUED" => JobExecutionStatus::Queued,
            "IN_PROGRESS" => JobExecutionStatus::InProgress,
            "SUCCEEDED" => JobExecutionStatus::Succeeded,
            "FAILED" => JobExecutionStatus::Failed,
            "REJECTED" => JobExecutionStatus::Rejected,
            "CANCELED" => JobExecutionStatus::Canceled,
            "TIMED_OUT" => JobExecutionStatus::TimedOut,
            other => {
                return Err(RegistryError::Invalid(format!(
                    "unknown job execution status {other:?}"
                )))
            }
        })
    }
}

/// A job: its document and the things it targets.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub job_id: String,
    pub document: Value,
    pub targets: Vec<String>,
    /// `IN_PROGRESS` while an execution is QUEUED or IN_PROGRESS, else `COMPLETED`.
    pub status: String,
    pub created_at: i64,
}

/// One thing's execution of a job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobExecutionRecord {
    pub job_id: String,
    pub thing_name: String,
    pub status: JobExecutionStatus,
    pub status_details: BTreeMap<String, String>,
    pub version_number: i64,
    pub execution_number: i64,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub job_document: Value,
}

/// AWS job ids: 1 to 64 characters of `[a-zA-Z0-9_-]`.
pub fn valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

const EXECUTION_COLUMNS: &str = "e.job_id, e.thing, e.status, e.status_details, e.version, e.execution_number, e.queued_at, e.started_at, e.last_updated_at, j.document";

fn execution_row(r: &Row<'_>) -> rusqlite::Result<[Option<String>; 10]> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match r.get_ref(i)? {
            rusqlite::types::ValueRef::Null => None,
            rusqlite::types::ValueRef::Integer(n) => Some(n.to_string()),
            rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        })
    };
    Ok([
        text(0)?,
        text(1)?,
        text(2)?,
        text(3)?,
        text(4)?,
        text(5)?,
        text(6)?,
        text(7)?,
        text(8)?,
        text(9)?,
    ])
}

fn execution_from(row: [Option<String>; 10]) -> Result<JobExecutionRecord, RegistryError> {
    let corrupt = |what: &str| RegistryError::Invalid(format!("job execution {what} is corrupt"));
    let [job_id, thing, status, details, version, number, queued, started, updated, document] = row;
    let int = |v: Option<String>, what: &str| -> Result<i64, RegistryError> {
        v.and_then(|s| s.parse().ok()).ok_or_else(|| corrupt(what))
    };
    Ok(JobExecutionRecord {
        job_id: job_id.ok_or_else(|| corrupt("job id"))?,
        thing_name: thing.ok_or_else(|| corrupt("thing"))?,
        status: status.ok_or_else(|| corrupt("status"))?.parse()?,
        status_details: serde_json::from_str(&details.unwrap_or_default())
            .map_err(|_| corrupt("statusDetails"))?,
        version_number: int(version, "version")?,
        execution_number: int(number, "execution number")?,
        queued_at: int(queued, "queuedAt")?,
        started_at: started.and_then(|s| s.parse().ok()),
        last_updated_at: int(updated, "lastUpdatedAt")?,
        job_document: serde_json::from_str(&document.unwrap_or_default())
            .map_err(|_| corrupt("document"))?,
    })
}

/// Why [`Registry::update_job_execution`] refused an update.
#[derive(Debug)]
pub(crate) enum UpdateRefused {
    NotFound,
    VersionMismatch(Box<JobExecutionRecord>),
    InvalidStateTransition(Box<JobExecutionRecord>),
}

impl Registry {
    /// Creates a job with one QUEUED execution per thing (each must exist).
    pub fn create_job(
        &self,
        job_id: &str,
        document: &Value,
        things: &[&str],
    ) -> Result<JobRecord, RegistryError> {
        if !valid_job_id(job_id) {
            return Err(RegistryError::Invalid(format!(
                "job id {job_id:?} must be 1 to 64 characters of [a-zA-Z0-9_-]"
            )));
        }
        if !document.is_object() {
            return Err(RegistryError::Invalid(
                "a job document must be a JSON object".into(),
            ));
        }
        if things.is_empty() {
            return Err(RegistryError::Invalid(
                "a job needs at least one thing".into(),
            ));
        }
        let doc = serde_json::to_string(document).unwrap_or_default();
        let now = now_unix();
        {
            let mut db = self.db();
            let tx = db.transaction()?;
            let exists: Option<i64> = tx
                .query_row_cached("SELECT 1 FROM jobs WHERE id = ?1", [job_id], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(RegistryError::Invalid(format!(
                    "job {job_id} already exists"
                )));
            }
            for t in things {
                let known: Option<i64> = tx
                    .query_row_cached("SELECT 1 FROM things WHERE name = ?1", [t], |r| r.get(0))
                    .optional()?;
                if known.is_none() {
                    return Err(RegistryError::NotFound {
                        kind: "thing",
                        name: (*t).into(),
                    });
                }
            }
            tx.execute_cached(
                "INSERT INTO jobs (id, document, created_at) VALUES (?1, ?2, ?3)",
                params![job_id, doc, now],
            )?;
            for t in things {
                tx.execute_cached(
                    "INSERT OR IGNORE INTO job_executions (job_id, thing, status, status_details, version, execution_number, queued_at, started_at, last_updated_at)
                     VALUES (?1, ?2, 'QUEUED', '{}', 1, 1, ?3, NULL, ?3)",
                    params![job_id, t, now],
                )?;
            }
            tx.commit()?;
        }
        self.jobs_changed();
        self.job(job_id)?.ok_or_else(|| RegistryError::NotFound {
            kind: "job",
            name: job_id.into(),
        })
    }

    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, RegistryError> {
        let db = self.db();
        let row: Option<(String, i64)> = db
            .query_row_cached(
                "SELECT document, created_at FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((document, created_at)) = row else {
            return Ok(None);
        };
        let mut st = db.prepare_cached(
            "SELECT thing, status FROM job_executions WHERE job_id = ?1 ORDER BY thing",
        )?;
        let execs = st
            .query_map([job_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut pending = false;
        for (_, s) in &execs {
            pending |= s.parse::<JobExecutionStatus>()?.is_pending();
        }
        Ok(Some(JobRecord {
            job_id: job_id.into(),
            document: serde_json::from_str(&document).map_err(|source| RegistryError::Corrupt {
                what: format!("job {job_id}: its document is corrupt"),
                source,
            })?,
            targets: execs.into_iter().map(|(t, _)| t).collect(),
            status: if pending { "IN_PROGRESS" } else { "COMPLETED" }.into(),
            created_at,
        }))
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, RegistryError> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut st = db.prepare_cached("SELECT id FROM jobs ORDER BY created_at, rowid")?;
            let ids = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids
        };
        ids.iter()
            .filter_map(|id| self.job(id).transpose())
            .collect()
    }

    /// The execution of `job_id` on `thing`, if the job targets the thing.
    pub fn job_execution(
        &self,
        job_id: &str,
        thing: &str,
    ) -> Result<Option<JobExecutionRecord>, RegistryError> {
        let row = self
            .db()
            .query_row_cached(
                &format!("SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN jobs j ON j.id = e.job_id WHERE e.job_id = ?1 AND e.thing = ?2"),
                params![job_id, thing],
                execution_row,
            )
            .optional()?;
        row.map(execution_from).transpose()
    }

    /// A thing's executions: IN_PROGRESS first, then QUEUED, then the
    /// others; each group oldest first.
    pub fn job_executions_of(&self, thing: &str) -> Result<Vec<JobExecutionRecord>, RegistryError> {
        let rows = {
            let db = self.db();
            let mut st = db.prepare_cached(&format!(
                "SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN jobs j ON j.id = e.job_id WHERE e.thing = ?1
                 ORDER BY CASE e.status WHEN 'IN_PROGRESS' THEN 0 WHEN 'QUEUED' THEN 1 ELSE 2 END, e.queued_at, e.rowid"
            ))?;
            let rows = st
                .query_map([thing], execution_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        rows.into_iter().map(execution_from).collect()
    }

    /// The next pending execution of a thing: the oldest IN_PROGRESS one,
    /// else the oldest QUEUED one.
    pub fn next_job_execution(
        &self,
        thing: &str,
    ) -> Result<Option<JobExecutionRecord>, RegistryError> {
        Ok(self
            .job_executions_of(thing)?
            .into_iter()
            .find(|e| e.status.is_pending()))
    }

    /// Things with at least one execution.
    pub(crate) fn things_with_jobs(&self) -> Result<Vec<String>, RegistryError> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT DISTINCT thing FROM job_executions ORDER BY thing")?;
        let things = st
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(things)
    }

    /// Moves an execution to `status` (checked against `expected_version`
    /// and the current status), in one transaction. `started` sets
    /// startedAt if it is not set yet.
    pub(crate) fn update_job_execution(
        &self,
        job_id: &str,
        thing: &str,
        status: JobExecutionStatus,
        status_details: Option<&BTreeMap<String, String>>,
        expected_version: Option<i64>,
        execution_number: Option<i64>,
    ) -> Result<Result<JobExecutionRecord, UpdateRefused>, RegistryError> {
        {
            let mut db = self.db();
            let tx = db.transaction()?;
            let row = tx
                .query_row_cached(
                    &format!("SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN jobs j ON j.id = e.job_id WHERE e.job_id = ?1 AND e.thing = ?2"),
                    params![job_id, thing],
                    execution_row,
                )
                .optional()?;
            let Some(row) = row else {
                return Ok(Err(UpdateRefused::NotFound));
            };
            let current = execution_from(row)?;
            if execution_number.is_some_and(|n| n != current.execution_number) {
                return Ok(Err(UpdateRefused::NotFound));
            }
            if !current.status.is_pending() {
                return Ok(Err(UpdateRefused::InvalidStateTransition(Box::new(
                    current,
                ))));
            }
            if expected_version.is_some_and(|v| v != current.version_number) {
                return Ok(Err(UpdateRefused::VersionMismatch(Box::new(current))));
            }
            let now = now_unix();
            let details = status_details.unwrap_or(&current.status_details);
            let started = match (current.started_at, status) {
                (Some(t), _) => Some(t),
                (None, JobExecutionStatus::Queued) => None,
                (None, _) => Some(now),
            };
            tx.execute_cached(
                "UPDATE job_executions SET status = ?3, status_details = ?4, version = version + 1, started_at = ?5, last_updated_at = ?6
                 WHERE job_id = ?1 AND thing = ?2",
                params![
                    job_id,
                    thing,
                    status.as_str(),
                    serde_json::to_string(details).unwrap_or_else(|_| "{}".into()),
                    started,
                    now
                ],
            )?;
            tx.commit()?;
        }
        self.jobs_changed();
        let updated =
            self.job_execution(job_id, thing)?
                .ok_or_else(|| RegistryError::NotFound {
                    kind: "job execution",
                    name: format!("{job_id}/{thing}"),
                })?;
        Ok(Ok(updated))
    }
}
