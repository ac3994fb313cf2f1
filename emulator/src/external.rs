//! An external program run in place of a customer's Lambda function (the
//! pre-provisioning hook, the certificate provider): the event as JSON on
//! stdin, the answer as JSON on stdout, within a time limit, its stderr
//! kept and logged as a Lambda's output goes to CloudWatch.
//!
//! It runs in the emulator's environment minus the AWS settings that would
//! send an AWS SDK to AWS ([`INHERITED_AWS_SETTINGS_REMOVED`]), plus the
//! environment [`ProgramRunner::new`] gives, in a process group of its own
//! that is killed when it exits, times out or is abandoned, so that
//! nothing it started outlives the invocation (a Lambda's environment is
//! frozen once the handler returns).

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::config::EmulatorConfig;

/// The access key id a program gets: the API checks no signature, but an
/// AWS SDK refuses to sign a request without credentials.
pub(crate) const PROGRAM_ACCESS_KEY_ID: &str = "emulator";
/// The secret access key a program gets (see [`PROGRAM_ACCESS_KEY_ID`]).
pub(crate) const PROGRAM_SECRET_ACCESS_KEY: &str = "emulator-not-checked";

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

/// A program answering more than this on stdout fails. Its answer ends up
/// in an MQTT message, which AWS IoT caps at 128 KiB, so 1 MiB refuses no
/// useful answer while bounding memory (a Lambda may answer up to 6 MB,
/// which no device could be sent).
pub(crate) const STDOUT_LIMIT: usize = 1024 * 1024;

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
    #[error("it answered more than {STDOUT_LIMIT} bytes on stdout")]
    TooMuchOutput,
    /// All [`ProgramRunner`] slots are taken: retrying later can help.
    #[error("{0} hook and provider programs are running already, the most the emulator runs at once: retry later")]
    Busy(usize),
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
    /// exited 0 within the limit, having written at most
    /// [`STDOUT_LIMIT`] bytes. Its stderr goes to `stderr_out`, as much as
    /// was read when it ended. When it exits, what it started is killed
    /// and the answer is what it wrote until then.
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
            // Its own group, killed as a whole: see ProcessGroup.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(ProgramError::Spawn)?;
        let mut group = ProcessGroup::of(&child);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // stdin, stdout, stderr and the exit at once: a program may write
        // before it reads.
        let work = async {
            let write = async {
                if let Some(mut s) = stdin {
                    // A program that ignores its input may close stdin early: not an error.
                    let _ = s.write_all(input).await;
                }
                Ok(())
            };
            let read_out = async {
                let mut out = Vec::new();
                if let Some(s) = stdout {
                    // One byte more than allowed tells "too much" from "exactly the limit".
                    s.take(STDOUT_LIMIT as u64 + 1)
                        .read_to_end(&mut out)
                        .await
                        .map_err(ProgramError::Spawn)?;
                    if out.len() > STDOUT_LIMIT {
                        return Err(ProgramError::TooMuchOutput);
                    }
                }
                Ok(out)
            };
            let read_err = async {
                if let Some(s) = stderr {
                    stderr_out.cut = read_bounded(s, &mut stderr_out.kept, STDERR_LIMIT).await;
                }
                Ok(())
            };
            let exit = async {
                let status = child.wait().await.map_err(ProgramError::Spawn)?;
                // What it left running (holding stdout or stderr open)
                // would keep the reads waiting: the invocation is over.
                group.kill();
                Ok(status)
            };
            let ((), out, (), status) = tokio::try_join!(write, read_out, read_err, exit)?;
            Ok::<_, ProgramError>((status, out))
        };
        // On timeout or too much output the group is killed when `group`
        // is dropped, and `child` is killed and reaped when it is.
        let (status, out) = tokio::time::timeout(self.limit, work)
            .await
            .map_err(|_| ProgramError::Timeout(self.limit))??;
        if !status.success() {
            return Err(ProgramError::Failed(status));
        }
        Ok(out)
    }
}

/// The process group of a program spawned with `process_group(0)` (its
/// id is the program's pid), killed with SIGKILL on [`ProcessGroup::kill`]
/// or drop, once. Killing it right after the program was reaped (or
/// before) is safe: a group id is not reused while the group has members.
struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> Self {
        ProcessGroup(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
        )
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH: every member is gone already.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the programs of one emulator (pre-provisioning hooks, certificate
/// providers) with its time limit and environment, at most
/// [`EmulatorConfig::programs_at_once`] at once, and keeps what failed
/// ones wrote on stderr (test-only: [`ProgramRunner::failures`]).
pub(crate) struct ProgramRunner {
    limit: Duration,
    environment: Vec<(String, String)>,
    slots: Semaphore,
    slot_count: usize,
    failures: Mutex<VecDeque<String>>,
}

/// How many failures [`ProgramRunner::failures`] keeps.
const FAILURES_KEPT: usize = 64;

impl ProgramRunner {
    /// The environment a program gets on top of the emulator's own:
    /// `AWS_ENDPOINT_URL_IOT` (boto3's and the AWS CLI's per-service
    /// endpoint) = `api_url`, `AWS_REGION` and `AWS_DEFAULT_REGION` = the
    /// region, placeholder credentials, `AWS_EC2_METADATA_DISABLED=true`
    /// (no credential lookup against an instance metadata service), the
    /// AWS config and credentials files pointed at `/dev/null`, then
    /// [`EmulatorConfig::hook_environment`], which may override them.
    pub fn new(config: &EmulatorConfig, api_url: &str) -> Self {
        let mut environment: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL_IOT", api_url),
            ("AWS_REGION", &config.region),
            ("AWS_DEFAULT_REGION", &config.region),
            ("AWS_ACCESS_KEY_ID", PROGRAM_ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", PROGRAM_SECRET_ACCESS_KEY),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        environment.extend(config.hook_environment.iter().cloned());
        let slot_count = config.programs_at_once.max(1);
        ProgramRunner {
            limit: config.hook_timeout,
            environment,
            slots: Semaphore::new(slot_count),
            slot_count,
            failures: Default::default(),
        }
    }

    /// Runs `argv` (see [`Program::run`]), or fails at once with
    /// [`ProgramError::Busy`] when all slots are taken: a flood of
    /// requests is throttled, never queued behind slow programs.
    pub async fn run(
        &self,
        argv: &[String],
        input: &[u8],
        stderr: &mut Stderr,
    ) -> Result<Vec<u8>, ProgramError> {
        let _slot = self
            .slots
            .try_acquire()
            .map_err(|_| ProgramError::Busy(self.slot_count))?;
        Program {
            argv,
            environment: &self.environment,
            limit: self.limit,
        }
        .run(input, stderr)
        .await
    }

    /// Keeps what a program that failed or refused wrote on stderr.
    pub fn record_failure(&self, stderr: &Stderr) {
        let mut kept = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == FAILURES_KEPT {
            kept.pop_front();
        }
        kept.push_back(stderr.text());
    }

    /// Test-only: the stderr of each run that refused or failed, oldest
    /// first (the last [`FAILURES_KEPT`]), where programs give reasons.
    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
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

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    async fn run_sh(script: &str, limit: Duration) -> (Result<Vec<u8>, ProgramError>, String) {
        let argv = argv(&["/bin/sh", "-c", script]);
        let mut stderr = Stderr::default();
        let out = Program {
            argv: &argv,
            environment: &[],
            limit,
        }
        .run(b"", &mut stderr)
        .await;
        (out, stderr.text())
    }

    #[test]
    fn environment_points_an_aws_sdk_at_the_emulator() {
        let mut config = EmulatorConfig::new("/nonexistent");
        config.region = "eu-west-1".into();
        config.hook_environment = vec![
            ("PATH".into(), "/venv/bin:/usr/bin".into()),
            ("AWS_REGION".into(), "eu-central-1".into()),
        ];
        let runner = ProgramRunner::new(&config, "http://127.0.0.1:1234");
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
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some(PROGRAM_ACCESS_KEY_ID));
        // Extra variables come last, so they win.
        assert_eq!(get("AWS_REGION"), Some("eu-central-1"));
        assert_eq!(get("PATH"), Some("/venv/bin:/usr/bin"));
    }

    #[tokio::test]
    async fn an_answer_over_the_stdout_limit_fails_at_once() {
        // Floods stdout forever: the run ends when the limit is passed, not at the time limit.
        let started = std::time::Instant::now();
        let (out, _) = run_sh("yes 0123456789", Duration::from_secs(20)).await;
        assert!(matches!(out, Err(ProgramError::TooMuchOutput)), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            ProgramError::TooMuchOutput.to_string(),
            format!("it answered more than {STDOUT_LIMIT} bytes on stdout")
        );
        // Exactly the limit is an answer.
        let (out, _) = run_sh(
            &format!("head -c {STDOUT_LIMIT} /dev/zero"),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(out.unwrap().len(), STDOUT_LIMIT);
    }

    /// True while a process with `marker` in its command line runs.
    fn running(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
    }

    #[tokio::test]
    async fn what_a_program_started_dies_with_it() {
        // A unique sleep duration marks the grandchild in /proc.
        let secs = 100 + std::process::id() % 800;
        let marker = format!("sleep {secs}.5");
        // Answers, leaving a background grandchild holding stdout open.
        let script = format!("{marker} & echo answer");
        let started = std::time::Instant::now();
        let (out, _) = run_sh(&script, Duration::from_secs(20)).await;
        assert_eq!(out.unwrap(), b"answer\n");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the grandchild delayed the answer: {:?}",
            started.elapsed()
        );
        // Killed with the group (SIGKILL is immediate; give /proc a moment).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!running(&marker.replace(' ', "\0")), "{marker} still runs");

        // Timed out while its grandchild runs: both die, the error comes at the limit.
        let marker = format!("sleep {secs}.25");
        let script = format!("{marker} & wait");
        let started = std::time::Instant::now();
        let (out, _) = run_sh(&script, Duration::from_millis(300)).await;
        assert!(matches!(out, Err(ProgramError::Timeout(_))), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!running(&marker.replace(' ', "\0")), "{marker} still runs");
    }

    #[tokio::test]
    async fn a_runner_with_all_slots_taken_answers_busy() {
        let mut config = EmulatorConfig::new("/nonexistent");
        config.programs_at_once = 1;
        let runner = ProgramRunner::new(&config, "http://127.0.0.1:1");
        let slow = argv(&["/bin/sh", "-c", "sleep 1; echo slow"]);
        let quick = argv(&["/bin/sh", "-c", "echo quick"]);
        let (mut e1, mut e2) = (Stderr::default(), Stderr::default());
        let (first, second) = tokio::join!(runner.run(&slow, b"", &mut e1), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            runner.run(&quick, b"", &mut e2).await
        });
        assert_eq!(first.unwrap(), b"slow\n");
        assert!(matches!(second, Err(ProgramError::Busy(1))), "{second:?}");
        // Free again.
        assert_eq!(runner.run(&quick, b"", &mut e2).await.unwrap(), b"quick\n");
    }

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
