//! AWS IoT Jobs, the device side: the Jobs MQTT API under
//! `$aws/things/<thing>/jobs/` (GetPendingJobExecutions,
//! StartNextPendingJobExecution, DescribeJobExecution, UpdateJobExecution)
//! in `api.rs`, and the `notify` and `notify-next` notifications in
//! `notify.rs`. JSON only, like AWS. The jobs themselves are stored by the
//! registry (`registry/jobs.rs`); this module owns the JSON shapes both the
//! API and the notifications send.

use serde_json::{json, Map, Value};

mod api;
mod notify;

pub use crate::registry::jobs::{valid_job_id, JobExecutionRecord, JobExecutionStatus, JobRecord};
pub(crate) use api::{handle, parse_topic};
pub(crate) use notify::JobNotifier;

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
