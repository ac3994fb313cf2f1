//! Pre-provisioning hook: an executable that gets the request as JSON on
//! stdin and answers `{"allowProvisioning": bool, "parameterOverrides": {..}}`
//! on stdout within the time limit (5 s, like AWS's Lambda limit).
//!
//! It runs in the emulator's environment plus what an AWS SDK needs to reach
//! the emulator's control-plane API instead of AWS (see [`ProgramRunner::new`]),
//! so that a hook written with boto3 runs unchanged here and as a Lambda. Its
//! stderr is logged, as a Lambda's output goes to CloudWatch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::external::{ProgramError, ProgramRunner, Stderr};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HookRequest<'a> {
    pub claim_certificate_id: &'a str,
    pub certificate_id: &'a str,
    pub certificate_pem: &'a str,
    pub template_arn: String,
    pub client_id: &'a str,
    pub parameters: &'a BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookResponse {
    allow_provisioning: bool,
    #[serde(default)]
    parameter_overrides: BTreeMap<String, String>,
}

/// Why a hook did not allow provisioning.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    #[error("pre-provisioning hook gave no answer (its stderr is in the emulator's log)")]
    Program(#[from] ProgramError),
    #[error("pre-provisioning hook answered invalid JSON")]
    BadAnswer(#[source] serde_json::Error),
    #[error("pre-provisioning hook refused provisioning")]
    Refused,
}

/// Runs the hook of `template` with `runner`; returns the parameter
/// overrides when it allows provisioning. Its stderr is logged line by
/// line, prefixed with the template name: at `warn` when it refused or
/// failed, else `info` (and kept in [`ProgramRunner::failures`] then).
pub(crate) async fn run(
    runner: &ProgramRunner,
    template: &str,
    executable: &str,
    request: &HookRequest<'_>,
) -> Result<BTreeMap<String, String>, HookError> {
    let mut stderr = Stderr::default();
    let result = async {
        let input = serde_json::to_vec(request).unwrap_or_default();
        let out = runner
            .run(&[executable.to_owned()], &input, &mut stderr)
            .await?;
        let answer: HookResponse = serde_json::from_slice(&out).map_err(HookError::BadAnswer)?;
        if !answer.allow_provisioning {
            return Err(HookError::Refused);
        }
        Ok(answer.parameter_overrides)
    }
    .await;
    stderr.log(
        &format!("pre-provisioning hook of template {template}"),
        result.is_err(),
    );
    if result.is_err() {
        runner.record_failure(&stderr);
    }
    result
}
