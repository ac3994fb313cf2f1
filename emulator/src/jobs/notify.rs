//! The `notify` and `notify-next` notifications: what changed in a thing's
//! pending executions since the device was last told.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::registry::jobs::JobExecutionRecord;
use crate::registry::{now_unix, Registry};

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
