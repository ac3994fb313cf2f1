//! Pre-provisioning hook: an executable that gets the request as JSON on
//! stdin and answers `{"allowProvisioning": bool, "parameterOverrides": {..}}`
//! on stdout within the time limit (5 s, like AWS's Lambda limit).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

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
    #[error("pre-provisioning hook could not run: {0}")]
    Spawn(std::io::Error),
    #[error("pre-provisioning hook did not answer within {0:?}")]
    Timeout(Duration),
    #[error("pre-provisioning hook exited with {0}")]
    Failed(std::process::ExitStatus),
    #[error("pre-provisioning hook answered invalid JSON: {0}")]
    BadAnswer(serde_json::Error),
    #[error("pre-provisioning hook refused provisioning")]
    Refused,
}

/// Runs the hook; returns the parameter overrides when it allows provisioning.
pub(crate) async fn run(
    executable: &str,
    request: &HookRequest<'_>,
    limit: Duration,
) -> Result<BTreeMap<String, String>, HookError> {
    let input = serde_json::to_vec(request).unwrap_or_default();
    let mut child = Command::new(executable)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(HookError::Spawn)?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let work = async {
        if let Some(mut s) = stdin.take() {
            // A hook that ignores its input may close stdin early: not an error.
            let _ = s.write_all(&input).await;
        }
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            s.read_to_end(&mut out).await.map_err(HookError::Spawn)?;
        }
        let status = child.wait().await.map_err(HookError::Spawn)?;
        Ok::<_, HookError>((status, out))
    };
    let (status, out) = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| HookError::Timeout(limit))??;
    if !status.success() {
        return Err(HookError::Failed(status));
    }
    let answer: HookResponse = serde_json::from_slice(&out).map_err(HookError::BadAnswer)?;
    if !answer.allow_provisioning {
        return Err(HookError::Refused);
    }
    Ok(answer.parameter_overrides)
}
