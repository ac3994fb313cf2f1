//! Pre-provisioning hook: an executable that gets the request as JSON on
//! stdin and answers `{"allowProvisioning": bool, "parameterOverrides": {..}}`
//! on stdout within the time limit (5 s, like AWS's Lambda limit).
//!
//! It runs in the emulator's environment plus what an AWS SDK needs to reach
//! the emulator's control-plane API instead of AWS (see [`HookRunner::new`]),
//! so that a hook written with boto3 runs unchanged here and as a Lambda. Its
//! stderr is logged, as a Lambda's output goes to CloudWatch.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::EmulatorConfig;
use crate::external::{Program, ProgramError, Stderr};

/// The access key id a hook gets: the API checks no signature, but an AWS
/// SDK refuses to sign a request without credentials.
pub(crate) const HOOK_ACCESS_KEY_ID: &str = "emulator";
/// The secret access key a hook gets (see [`HOOK_ACCESS_KEY_ID`]).
pub(crate) const HOOK_SECRET_ACCESS_KEY: &str = "emulator-not-checked";

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

/// Runs hooks with the time limit and environment of one emulator.
pub(crate) struct HookRunner {
    limit: Duration,
    environment: Vec<(String, String)>,
    /// What hooks that refused or failed wrote on stderr, newest last, at
    /// most [`REFUSALS_KEPT`] (test-only: [`HookRunner::refusals`]).
    refusals: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// How many refusals [`HookRunner::refusals`] keeps.
const REFUSALS_KEPT: usize = 64;

impl HookRunner {
    /// The environment a hook gets on top of the emulator's own:
    /// `AWS_ENDPOINT_URL_IOT` (boto3's and the AWS CLI's per-service
    /// endpoint) = `api_url`, `AWS_REGION` and `AWS_DEFAULT_REGION` = the
    /// region, placeholder credentials, `AWS_EC2_METADATA_DISABLED=true`
    /// (no credential lookup against an instance metadata service), then
    /// [`EmulatorConfig::hook_environment`], which may override them.
    pub fn new(config: &EmulatorConfig, api_url: &str) -> Self {
        let mut environment: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL_IOT", api_url),
            ("AWS_REGION", &config.region),
            ("AWS_DEFAULT_REGION", &config.region),
            ("AWS_ACCESS_KEY_ID", HOOK_ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", HOOK_SECRET_ACCESS_KEY),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        environment.extend(config.hook_environment.iter().cloned());
        HookRunner {
            limit: config.hook_timeout,
            environment,
            refusals: Default::default(),
        }
    }

    /// `argv` run with the environment and time limit hooks get (the
    /// certificate provider runs this way too).
    pub(crate) fn program<'a>(&'a self, argv: &'a [String]) -> Program<'a> {
        Program {
            argv,
            environment: &self.environment,
            limit: self.limit,
        }
    }

    /// Test-only: the stderr of each hook run that refused or failed,
    /// oldest first (the last [`REFUSALS_KEPT`]), where hooks give their
    /// reasons.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Runs the hook of `template`; returns the parameter overrides when it
    /// allows provisioning. Its stderr is logged line by line, prefixed with
    /// the template name: at `warn` when it refused or failed, else `info`.
    pub async fn run(
        &self,
        template: &str,
        executable: &str,
        request: &HookRequest<'_>,
    ) -> Result<BTreeMap<String, String>, HookError> {
        let mut stderr = Stderr::default();
        let result = self.run_capturing(executable, request, &mut stderr).await;
        stderr.log(
            &format!("pre-provisioning hook of template {template}"),
            result.is_err(),
        );
        if result.is_err() {
            let mut kept = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() == REFUSALS_KEPT {
                kept.pop_front();
            }
            kept.push_back(stderr.text());
        }
        result
    }

    async fn run_capturing(
        &self,
        executable: &str,
        request: &HookRequest<'_>,
        stderr_out: &mut Stderr,
    ) -> Result<BTreeMap<String, String>, HookError> {
        let input = serde_json::to_vec(request).unwrap_or_default();
        let argv = [executable.to_owned()];
        let out = self
            .program(&argv)
            .run(&input, stderr_out)
            .await
            .map_err(|e| match e {
                ProgramError::Spawn(e) => HookError::Spawn(e),
                ProgramError::Timeout(limit) => HookError::Timeout(limit),
                ProgramError::Failed(status) => HookError::Failed(status),
            })?;
        let answer: HookResponse = serde_json::from_slice(&out).map_err(HookError::BadAnswer)?;
        if !answer.allow_provisioning {
            return Err(HookError::Refused);
        }
        Ok(answer.parameter_overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_points_an_aws_sdk_at_the_emulator() {
        let mut config = EmulatorConfig::new("/nonexistent");
        config.region = "eu-west-1".into();
        config.hook_environment = vec![
            ("PATH".into(), "/venv/bin:/usr/bin".into()),
            ("AWS_REGION".into(), "eu-central-1".into()),
        ];
        let runner = HookRunner::new(&config, "http://127.0.0.1:1234");
        let get = |k: &str| {
            runner
                .environment
                .iter()
                .rev()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("AWS_ENDPOINT_URL_IOT"), Some("http://127.0.0.1:1234"));
        assert_eq!(get("AWS_DEFAULT_REGION"), Some("eu-west-1"));
        assert_eq!(get("AWS_EC2_METADATA_DISABLED"), Some("true"));
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some(HOOK_ACCESS_KEY_ID));
        // Extra variables come last, so they win.
        assert_eq!(get("AWS_REGION"), Some("eu-central-1"));
        assert_eq!(get("PATH"), Some("/venv/bin:/usr/bin"));
    }
}
