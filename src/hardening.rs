//! Process-wide protections, set first thing in `main` (the key helper
//! runs `main` too): the agent holds keys, PINs and ownership tokens in
//! memory, so no core file and no debugger of its user may take them.
//!
//! - `PR_SET_DUMPABLE` 0: the kernel writes no core dump of the process
//!   (whatever `core_pattern` says, systemd-coredump included), and
//!   processes of the same user can neither ptrace it nor read its
//!   `/proc/<pid>/mem` or `environ`. `execve` resets it, so it does not
//!   reach the post-rotation command.
//! - `RLIMIT_CORE` soft limit 0, for settings where the first would not
//!   hold; the hard limit is left as it is, so a child program may raise
//!   its own again.
//!
//! The units set `LimitCORE=0` too (systemd/).

use rustix::process::{self, DumpableBehavior, Resource, Rlimit};

/// Why a protection could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot forbid core dumps ({what}): {source}")]
pub struct HardeningError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// Makes the process non-dumpable and its core size limit 0.
pub fn forbid_core_dumps() -> Result<(), HardeningError> {
    process::set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| HardeningError {
        what: "prctl(PR_SET_DUMPABLE, 0)",
        source: e.into(),
    })?;
    let limit = process::getrlimit(Resource::Core);
    process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| HardeningError {
        what: "setrlimit(RLIMIT_CORE)",
        source: e.into(),
    })
}

/// Whether the process may be dumped (`PR_GET_DUMPABLE`).
pub fn dumpable() -> bool {
    matches!(process::dumpable_behavior(), Ok(DumpableBehavior::Dumpable))
}

#[cfg(test)]
mod tests {
    /// In a process of its own (the test binary's threads would share the
    /// setting): the child re-runs this test binary for one test.
    #[test]
    fn core_dumps_are_forbidden_in_this_process() {
        if std::env::var_os("PROV_AGENT_HARDENING_CHILD").is_some() {
            assert!(super::dumpable());
            super::forbid_core_dumps().unwrap();
            assert!(!super::dumpable());
            let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
            let core = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .unwrap();
            assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hardening::tests::core_dumps_are_forbidden_in_this_process",
                "--nocapture",
            ])
            .env("PROV_AGENT_HARDENING_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
