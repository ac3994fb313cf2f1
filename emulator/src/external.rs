//! An external program run in place of a customer's Lambda function (the
//! pre-provisioning hook, the certificate provider): the event as JSON on
//! stdin, the answer as JSON on stdout, within a time limit, its stderr
//! kept and logged as a Lambda's output goes to CloudWatch.
//!
//! It runs in the emulator's environment minus the AWS settings that would
//! send an AWS SDK to AWS ([`INHERITED_AWS_SETTINGS_REMOVED`]), plus the
//! environment its caller gives (see [`crate::hook::HookRunner::new`]).

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// AWS settings of the emulator's own environment a program must not
/// inherit: a developer's profile, session token or shared files would give
/// boto3 real credentials, and these would send it to AWS instead of the
/// emulator's API. The config and credentials files are pointed at
/// `/dev/null` by the environment the caller gives.
const INHERITED_AWS_SETTINGS_REMOVED: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// At most this much of a program's stderr is kept and logged; the rest is
/// read and dropped, so that a chatty program never blocks on a full pipe.
pub(crate) const STDERR_LIMIT: usize = 16 * 1024;

/// Why a program gave no answer. The I/O cause is the source, not
/// repeated in the message ([`with_causes`] shows both).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProgramError {
    #[error("could not run it")]
    Spawn(#[source] std::io::Error),
    #[error("it did not answer within {0:?}")]
    Timeout(Duration),
    #[error("it exited with {0}")]
    Failed(ExitStatus),
}

/// `e`'s message followed by each of its causes, `": "` between: for
/// messages that go where no one can walk the chain (a device's
/// rejected answer, the log).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// One program to run: the executable, its arguments, the environment it
/// gets on top of the emulator's, and its time limit.
pub(crate) struct Program<'a> {
    pub argv: &'a [String],
    pub environment: &'a [(String, String)],
    pub limit: Duration,
}

/// What a program wrote on stderr: the first [`STDERR_LIMIT`] bytes.
#[derive(Default)]
pub(crate) struct Stderr {
    pub kept: Vec<u8>,
    /// More was written than kept.
    pub cut: bool,
}

impl Stderr {
    /// Logs each line prefixed with `who` ("certificate provider p1"): at
    /// `warn` when the program failed or refused, else `info`.
    pub fn log(&self, who: &str, failed: bool) {
        let text = String::from_utf8_lossy(&self.kept);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if failed {
                tracing::warn!("{who}: {line}");
            } else {
                tracing::info!("{who}: {line}");
            }
        }
        if self.cut {
            tracing::info!("{who}: stderr cut after {STDERR_LIMIT} bytes");
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

impl Program<'_> {
    /// Runs the program with `input` on stdin; returns its stdout if it
    /// exited 0 within the limit. Its stderr goes to `stderr_out`, as much as
    /// was read when the time ran out.
    pub async fn run(
        &self,
        input: &[u8],
        stderr_out: &mut Stderr,
    ) -> Result<Vec<u8>, ProgramError> {
        let Some((executable, args)) = self.argv.split_first() else {
            return Err(ProgramError::Spawn(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no executable given",
            )));
        };
        let mut command = Command::new(executable);
        command.args(args);
        for var in INHERITED_AWS_SETTINGS_REMOVED {
            command.env_remove(var);
        }
        let mut child = command
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(ProgramError::Spawn)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // stdin, stdout and stderr at once: a program may write before it reads.
        let work = async {
            let write = async {
                if let Some(mut s) = stdin {
                    // A program that ignores its input may close stdin early: not an error.
                    let _ = s.write_all(input).await;
                }
            };
            let read_out = async {
                let mut out = Vec::new();
                if let Some(mut s) = stdout {
                    s.read_to_end(&mut out).await?;
                }
                Ok::<_, std::io::Error>(out)
            };
            let read_err = async {
                if let Some(s) = stderr {
                    stderr_out.cut = read_bounded(s, &mut stderr_out.kept, STDERR_LIMIT).await;
                }
            };
            let ((), out, ()) = tokio::join!(write, read_out, read_err);
            let out = out.map_err(ProgramError::Spawn)?;
            let status = child.wait().await.map_err(ProgramError::Spawn)?;
            Ok::<_, ProgramError>((status, out))
        };
        // On timeout `child` is dropped on return, which kills it.
        let (status, out) = tokio::time::timeout(self.limit, work)
            .await
            .map_err(|_| ProgramError::Timeout(self.limit))??;
        if !status.success() {
            return Err(ProgramError::Failed(status));
        }
        Ok(out)
    }
}

/// Reads `from` to its end (or a read error), keeping the first `limit`
/// bytes in `into`; true when bytes were dropped.
async fn read_bounded(mut from: impl AsyncRead + Unpin, into: &mut Vec<u8>, limit: usize) -> bool {
    let mut buf = [0u8; 4096];
    let mut cut = false;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return cut,
            Ok(n) => {
                let room = limit.saturating_sub(into.len());
                into.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stderr_is_kept_up_to_the_limit_and_drained() {
        let data = vec![b'x'; 3 * STDERR_LIMIT];
        let mut kept = Vec::new();
        assert!(read_bounded(&data[..], &mut kept, STDERR_LIMIT).await);
        assert_eq!(kept.len(), STDERR_LIMIT);
        let mut kept = Vec::new();
        assert!(!read_bounded(&data[..STDERR_LIMIT], &mut kept, STDERR_LIMIT).await);
        assert_eq!(kept.len(), STDERR_LIMIT);
    }

    #[tokio::test]
    async fn arguments_are_passed_and_failures_named() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let run = |argv: Vec<String>, limit| async move {
            let mut stderr = Stderr::default();
            let out = Program {
                argv: &argv,
                environment: &[],
                limit,
            }
            .run(b"in", &mut stderr)
            .await;
            (out, stderr.text())
        };
        let (out, _) = run(
            argv(&["/bin/sh", "-c", "cat; echo \" $0 $1\"", "a", "b"]),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.unwrap(), b"in a b\n");
        let (out, err) = run(
            argv(&["/bin/sh", "-c", "echo why >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(out, Err(ProgramError::Failed(s)) if s.code() == Some(3)));
        assert_eq!(err, "why\n");
        let (out, _) = run(
            argv(&["/bin/sh", "-c", "sleep 5"]),
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(out, Err(ProgramError::Timeout(_))));
        let (out, _) = run(argv(&["/nonexistent/program"]), Duration::from_secs(5)).await;
        assert!(matches!(out, Err(ProgramError::Spawn(_))));
        let (out, _) = run(Vec::new(), Duration::from_secs(5)).await;
        assert!(matches!(out, Err(ProgramError::Spawn(_))));
    }
}
