//! AWS IoT Jobs, the device side: a job registry in SQLite and the Jobs
//! MQTT API under `$aws/things/<thing>/jobs/` (GetPendingJobExecutions,
//! StartNextPendingJobExecution, DescribeJobExecution, UpdateJobExecution,
//! and the `notify` and `notify-next` notifications). JSON only, like AWS.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::registry::{now_unix, Registry, RegistryError};

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

impl JobExecutionRecord {
    /// `JobExecution` of the Jobs MQTT API.
    fn execution(&self, include_document: bool) -> Value {
        let mut m = Map::new();
        m.insert("jobId".into(), json!(self.job_id));
        m.insert("thingName".into(), json!(self.thing_name));
        m.insert("status".into(), json!(self.status.as_str()));
        if !self.status_details.is_empty() {
            m.insert("statusDetails".into(), json!(self.status_details));
        }
        m.insert("queuedAt".into(), json!(self.queued_at));
        if let Some(t) = self.started_at {
            m.insert("startedAt".into(), json!(t));
        }
        m.insert("lastUpdatedAt".into(), json!(self.last_updated_at));
        m.insert("versionNumber".into(), json!(self.version_number));
        m.insert("executionNumber".into(), json!(self.execution_number));
        if include_document {
            m.insert("jobDocument".into(), self.job_document.clone());
        }
        Value::Object(m)
    }

    /// `JobExecutionSummary` of the Jobs MQTT API.
    fn summary(&self) -> Value {
        let mut m = Map::new();
        m.insert("jobId".into(), json!(self.job_id));
        m.insert("queuedAt".into(), json!(self.queued_at));
        if let Some(t) = self.started_at {
            m.insert("startedAt".into(), json!(t));
        }
        m.insert("lastUpdatedAt".into(), json!(self.last_updated_at));
        m.insert("versionNumber".into(), json!(self.version_number));
        m.insert("executionNumber".into(), json!(self.execution_number));
        Value::Object(m)
    }

    /// `JobExecutionState` of the Jobs MQTT API.
    fn state(&self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), json!(self.status.as_str()));
        if !self.status_details.is_empty() {
            m.insert("statusDetails".into(), json!(self.status_details));
        }
        m.insert("versionNumber".into(), json!(self.version_number));
        Value::Object(m)
    }
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
                .query_row("SELECT 1 FROM jobs WHERE id = ?1", [job_id], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(RegistryError::Invalid(format!(
                    "job {job_id} already exists"
                )));
            }
            for t in things {
                let known: Option<i64> = tx
                    .query_row("SELECT 1 FROM things WHERE name = ?1", [t], |r| r.get(0))
                    .optional()?;
                if known.is_none() {
                    return Err(RegistryError::NotFound {
                        kind: "thing",
                        name: (*t).into(),
                    });
                }
            }
            tx.execute(
                "INSERT INTO jobs (id, document, created_at) VALUES (?1, ?2, ?3)",
                params![job_id, doc, now],
            )?;
            for t in things {
                tx.execute(
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
            .query_row(
                "SELECT document, created_at FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((document, created_at)) = row else {
            return Ok(None);
        };
        let mut st = db
            .prepare("SELECT thing, status FROM job_executions WHERE job_id = ?1 ORDER BY thing")?;
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
            document: serde_json::from_str(&document)
                .map_err(|e| RegistryError::Invalid(format!("job document is corrupt: {e}")))?,
            targets: execs.into_iter().map(|(t, _)| t).collect(),
            status: if pending { "IN_PROGRESS" } else { "COMPLETED" }.into(),
            created_at,
        }))
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, RegistryError> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut st = db.prepare("SELECT id FROM jobs ORDER BY created_at, rowid")?;
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
            .query_row(
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
            let mut st = db.prepare(&format!(
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
        let mut st = db.prepare("SELECT DISTINCT thing FROM job_executions ORDER BY thing")?;
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
                .query_row(
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
            tx.execute(
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

// ---- the MQTT API ----

/// A Jobs request topic: `$aws/things/<thing>/jobs/<rest>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JobsApi {
    GetPending,
    StartNext,
    Describe(String),
    Update(String),
    /// Under the Jobs prefix but no API: answered `InvalidTopic`.
    Invalid,
}

/// Recognises a request topic and its thing. Notification and response
/// topics are not requests (`None`: dropped like other reserved topics).
pub(crate) fn parse_topic(topic: &str) -> Option<(String, JobsApi)> {
    let parts: Vec<&str> = topic.split('/').collect();
    let ["$aws", "things", thing, "jobs", rest @ ..] = parts.as_slice() else {
        return None;
    };
    if matches!(rest.last(), Some(&"accepted") | Some(&"rejected")) {
        return None;
    }
    let api = match rest {
        ["notify"] | ["notify-next"] => return None,
        ["get"] => JobsApi::GetPending,
        ["start-next"] => JobsApi::StartNext,
        [job, "get"] if *job == "$next" || valid_job_id(job) => JobsApi::Describe((*job).into()),
        [job, "update"] if valid_job_id(job) => JobsApi::Update((*job).into()),
        _ => JobsApi::Invalid,
    };
    Some(((*thing).to_owned(), api))
}

struct Rejection {
    code: &'static str,
    message: String,
    state: Option<Value>,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
        state: None,
    }
}

impl From<RegistryError> for Rejection {
    fn from(e: RegistryError) -> Self {
        reject("InternalError", e.to_string())
    }
}

fn bool_field(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(reject("InvalidRequest", format!("{key} must be a boolean"))),
    }
}

fn int_field(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| reject("InvalidRequest", format!("{key} must be an integer"))),
    }
}

fn details_field(body: &Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, Rejection> {
    match body.get("statusDetails") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| {
                    reject(
                        "InvalidRequest",
                        format!("statusDetails.{k} must be a string"),
                    )
                })?;
                out.insert(k.clone(), v.to_owned());
            }
            Ok(Some(out))
        }
        Some(_) => Err(reject(
            "InvalidRequest",
            "statusDetails must be a map of strings",
        )),
    }
}

/// Handles one Jobs request; returns whether it was accepted and the body
/// of the answer (to `<topic>/accepted` or `<topic>/rejected`).
pub(crate) fn handle(
    registry: &Registry,
    thing: &str,
    api: &JobsApi,
    payload: &[u8],
) -> (bool, Vec<u8>) {
    // The clientToken is echoed even in rejections, when it can be read.
    let parsed: Result<Value, _> = if payload.is_empty() {
        Ok(json!({}))
    } else {
        serde_json::from_slice(payload)
    };
    let client_token = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("clientToken"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let result = match parsed {
        Err(e) => Err(reject(
            "InvalidJson",
            format!("request is not valid JSON: {e}"),
        )),
        Ok(Value::Object(body)) => answer(registry, thing, api, &body),
        Ok(_) => Err(reject(
            "InvalidRequest",
            "request body must be a JSON object",
        )),
    };
    let now = now_unix();
    let (accepted, mut body) = match result {
        Ok(Value::Object(m)) => (true, m),
        Ok(_) => (true, Map::new()),
        Err(r) => {
            tracing::info!(%thing, code = r.code, message = %r.message, "jobs request rejected");
            let mut m = Map::new();
            m.insert("code".into(), json!(r.code));
            m.insert("message".into(), json!(r.message));
            if let Some(s) = r.state {
                m.insert("executionState".into(), s);
            }
            (false, m)
        }
    };
    body.insert("timestamp".into(), json!(now));
    if let Some(t) = client_token {
        body.insert("clientToken".into(), json!(t));
    }
    (
        accepted,
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
    )
}

fn answer(
    registry: &Registry,
    thing: &str,
    api: &JobsApi,
    body: &Map<String, Value>,
) -> Result<Value, Rejection> {
    match api {
        JobsApi::Invalid => Err(reject("InvalidTopic", "no Jobs API on this topic")),
        JobsApi::GetPending => {
            let execs = registry.job_executions_of(thing)?;
            let of = |s: JobExecutionStatus| -> Vec<Value> {
                execs
                    .iter()
                    .filter(|e| e.status == s)
                    .map(JobExecutionRecord::summary)
                    .collect()
            };
            Ok(json!({
                "inProgressJobs": of(JobExecutionStatus::InProgress),
                "queuedJobs": of(JobExecutionStatus::Queued),
            }))
        }
        JobsApi::Describe(job) => {
            let include = bool_field(body, "includeJobDocument", true)?;
            let number = int_field(body, "executionNumber")?;
            let exec = if job == "$next" {
                registry.next_job_execution(thing)?
            } else {
                let e = registry.job_execution(job, thing)?;
                if e.is_none()
                    || number.is_some_and(|n| e.as_ref().is_some_and(|e| e.execution_number != n))
                {
                    return Err(reject(
                        "ResourceNotFound",
                        format!("no execution of job {job} on thing {thing}"),
                    ));
                }
                e
            };
            Ok(match exec {
                Some(e) => json!({"execution": e.execution(include)}),
                None => json!({}),
            })
        }
        JobsApi::StartNext => {
            let details = details_field(body)?;
            if let Some(t) = int_field(body, "stepTimeoutInMinutes")? {
                if !(1..=10080).contains(&t) {
                    return Err(reject(
                        "InvalidRequest",
                        "stepTimeoutInMinutes must be 1 to 10080",
                    ));
                }
            }
            let Some(next) = registry.next_job_execution(thing)? else {
                return Ok(json!({}));
            };
            if next.status == JobExecutionStatus::InProgress {
                return Ok(json!({"execution": next.execution(true)}));
            }
            match registry.update_job_execution(
                &next.job_id,
                thing,
                JobExecutionStatus::InProgress,
                details.as_ref(),
                Some(next.version_number),
                None,
            )? {
                Ok(e) => Ok(json!({"execution": e.execution(true)})),
                // Changed between the read and the write: the device retries.
                Err(_) => Err(reject(
                    "InternalError",
                    "the next job execution changed meanwhile: try again",
                )),
            }
        }
        JobsApi::Update(job) => {
            let status = match body.get("status").and_then(Value::as_str) {
                Some(s @ ("IN_PROGRESS" | "SUCCEEDED" | "FAILED" | "REJECTED")) => {
                    s.parse::<JobExecutionStatus>()?
                }
                Some(other) => {
                    return Err(reject(
                        "InvalidRequest",
                        format!(
                            "status {other:?} is not IN_PROGRESS, SUCCEEDED, FAILED or REJECTED"
                        ),
                    ))
                }
                None => return Err(reject("InvalidRequest", "status is required")),
            };
            let details = details_field(body)?;
            let expected = int_field(body, "expectedVersion")?;
            let number = int_field(body, "executionNumber")?;
            let include_state = bool_field(body, "includeJobExecutionState", false)?;
            let include_doc = bool_field(body, "includeJobDocument", false)?;
            match registry.update_job_execution(
                job,
                thing,
                status,
                details.as_ref(),
                expected,
                number,
            )? {
                Ok(e) => {
                    let mut m = Map::new();
                    if include_state {
                        m.insert("executionState".into(), e.state());
                    }
                    if include_doc {
                        m.insert("jobDocument".into(), e.job_document.clone());
                    }
                    Ok(Value::Object(m))
                }
                Err(UpdateRefused::NotFound) => Err(reject(
                    "ResourceNotFound",
                    format!("no execution of job {job} on thing {thing}"),
                )),
                Err(UpdateRefused::VersionMismatch(e)) => Err(Rejection {
                    code: "VersionMismatch",
                    message: format!(
                        "expectedVersion {} is not the current version {}",
                        expected.unwrap_or_default(),
                        e.version_number
                    ),
                    state: Some(e.state()),
                }),
                Err(UpdateRefused::InvalidStateTransition(e)) => Err(Rejection {
                    code: "InvalidStateTransition",
                    message: format!(
                        "the job execution is {}, a terminal state: it cannot become {}",
                        e.status.as_str(),
                        status.as_str()
                    ),
                    state: Some(e.state()),
                }),
            }
        }
    }
}

/// What the device was last told about a thing's pending executions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Told {
    next: Option<String>,
    pending: Vec<(String, &'static str)>,
}

/// Computes `notify-next` and `notify` messages when a thing's next pending
/// execution, or its list of pending executions, changes.
#[derive(Default)]
pub(crate) struct JobNotifier {
    told: Mutex<Option<HashMap<String, Told>>>,
}

impl JobNotifier {
    /// The (topic, body) pairs to publish now. The first call only records
    /// the current state (nothing changed from the device's point of view
    /// when the emulator starts).
    pub fn changes(&self, registry: &Registry) -> Vec<(String, Vec<u8>)> {
        let mut guard = self.told.lock().unwrap_or_else(|e| e.into_inner());
        let first = guard.is_none();
        let told = guard.get_or_insert_with(HashMap::new);
        let things = match registry.things_with_jobs() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("jobs notifications: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let now = now_unix();
        for thing in things {
            let Ok(execs) = registry.job_executions_of(&thing) else {
                continue;
            };
            let pending: Vec<&JobExecutionRecord> =
                execs.iter().filter(|e| e.status.is_pending()).collect();
            let state = Told {
                next: pending.first().map(|e| e.job_id.clone()),
                pending: pending
                    .iter()
                    .map(|e| (e.job_id.clone(), e.status.as_str()))
                    .collect(),
            };
            let before = told
                .insert(thing.clone(), state.clone())
                .unwrap_or_default();
            if first {
                continue;
            }
            if before.pending != state.pending {
                let mut jobs = Map::new();
                for e in &pending {
                    if let Value::Array(a) = jobs
                        .entry(e.status.as_str())
                        .or_insert_with(|| Value::Array(Vec::new()))
                    {
                        a.push(e.summary());
                    }
                }
                out.push((
                    format!("$aws/things/{thing}/jobs/notify"),
                    serde_json::to_vec(&json!({"timestamp": now, "jobs": jobs}))
                        .unwrap_or_default(),
                ));
            }
            if before.next != state.next {
                let body = match pending.first() {
                    Some(e) => json!({"timestamp": now, "execution": e.execution(true)}),
                    None => json!({"timestamp": now}),
                };
                out.push((
                    format!("$aws/things/{thing}/jobs/notify-next"),
                    serde_json::to_vec(&body).unwrap_or_default(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        let p = |t: &str| parse_topic(t);
        assert_eq!(
            p("$aws/things/T/jobs/get"),
            Some(("T".into(), JobsApi::GetPending))
        );
        assert_eq!(
            p("$aws/things/T/jobs/start-next"),
            Some(("T".into(), JobsApi::StartNext))
        );
        assert_eq!(
            p("$aws/things/T/jobs/$next/get"),
            Some(("T".into(), JobsApi::Describe("$next".into())))
        );
        assert_eq!(
            p("$aws/things/T/jobs/j-1/update"),
            Some(("T".into(), JobsApi::Update("j-1".into())))
        );
        assert_eq!(
            p("$aws/things/T/jobs/j/bogus"),
            Some(("T".into(), JobsApi::Invalid))
        );
        assert_eq!(p("$aws/things/T/jobs/get/accepted"), None);
        assert_eq!(p("$aws/things/T/jobs/notify-next"), None);
        assert_eq!(p("$aws/things/T/shadow/get"), None);
    }
}
