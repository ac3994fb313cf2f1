//! A secret taken out of this process's environment (`PIN_SOURCE =
//! env:NAME`): its value is returned, the value's bytes are overwritten in
//! the environment block the process started with (what
//! `/proc/<pid>/environ` shows and a core image would hold), and the
//! variable is removed.
//!
//! Without unsafe code (the crate forbids it): the block's place comes from
//! `/proc/self/stat` (`env_start`, `env_end`) and it is rewritten through
//! `/proc/self/mem`. The environment is not thread-safe: call [`take`]
//! while the process has one thread, before anything else starts one.

use std::os::unix::fs::FileExt;

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Takes `name` out of the environment (see the module docs); `None` when
/// it is not set. The value is returned even if the block could not be
/// rewritten (then a warning says so).
pub fn take(name: &str) -> Option<SecretString> {
    let value = Zeroizing::new(std::env::var(name).ok()?);
    if let Err(e) = wipe_initial(name) {
        tracing::warn!(
            variable = name,
            error = %e,
            "could not wipe the variable from the environment block; it stays readable \
             in /proc/<pid>/environ"
        );
    }
    std::env::remove_var(name);
    Some(SecretString::from(value.to_string()))
}

/// Overwrites the value of every `name=value` in the initial environment
/// block with NUL bytes.
fn wipe_initial(name: &str) -> std::io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // pid (comm) state ...: comm may hold spaces, so count after ')'.
    // env_start and env_end are fields 50 and 51 (proc(5)); after ')' the
    // first field is the 3rd.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> std::io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("/proc/self/stat has no field {n}")))
    };
    let (start, end) = (field(50)?, field(51)?);
    if end <= start {
        return Ok(());
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let len = usize::try_from(end - start).map_err(std::io::Error::other)?;
    let mut block = Zeroizing::new(vec![0u8; len]);
    mem.read_exact_at(&mut block, start)?;
    let prefix = format!("{name}=");
    let mut at = 0;
    for entry in block.split(|&b| b == 0) {
        if entry.starts_with(prefix.as_bytes()) {
            let value_len = entry.len() - prefix.len();
            let zeros = vec![0u8; value_len];
            mem.write_all_at(&zeros, start + (at + prefix.len()) as u64)?;
        }
        at += entry.len() + 1;
    }
    Ok(())
}

/// Runs the unit test `test` (its full path) alone in a child process of
/// the test binary with `env` added, and asserts it passed: for tests of
/// what a process's own environment holds, which threads share.
#[cfg(test)]
pub(crate) fn in_a_child(test: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", test, "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    /// In a child process of its own (the environment is process-wide and
    /// the tests run on threads): the value comes back, the variable is
    /// gone, and /proc/self/environ no longer holds the value.
    #[test]
    fn a_taken_variable_leaves_no_trace_in_the_environment() {
        if std::env::var_os("PROV_AGENT_ENVIRON_CHILD").is_some() {
            let secret = super::take("PROV_AGENT_ENVIRON_SECRET").expect("set");
            assert_eq!(secret.expose_secret(), "s3cret-pin-value");
            assert!(std::env::var_os("PROV_AGENT_ENVIRON_SECRET").is_none());
            let environ = std::fs::read("/proc/self/environ").unwrap();
            assert!(
                !environ
                    .windows(b"s3cret-pin-value".len())
                    .any(|w| w == b"s3cret-pin-value"),
                "the value is still in /proc/self/environ"
            );
            assert!(super::take("PROV_AGENT_ENVIRON_SECRET").is_none());
            return;
        }
        super::in_a_child(
            "environ::tests::a_taken_variable_leaves_no_trace_in_the_environment",
            &[
                ("PROV_AGENT_ENVIRON_CHILD", "1"),
                ("PROV_AGENT_ENVIRON_SECRET", "s3cret-pin-value"),
            ],
        );
    }
}
