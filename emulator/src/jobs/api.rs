//! The Jobs MQTT request handler: which topic is which API, and the
//! answer to one request (to `<topic>/accepted` or `<topic>/rejected`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::registry::jobs::{valid_job_id, JobExecutionRecord, JobExecutionStatus, UpdateRefused};
use crate::registry::{now_unix, Registry, RegistryError};

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
