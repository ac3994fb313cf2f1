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
//!
//! - `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`, when it is safe:
//!   the pages the process touches stay in RAM and never reach swap, with
//!   whatever secret they hold at the time. Only with CAP_IPC_LOCK (root)
//!   or no locked-memory limit (the units set `LimitMEMLOCK=infinity`):
//!   under a finite limit the kernel counts every later mapping in full
//!   (a thread's 64 MiB malloc arena, say) against it, and an allocation
//!   past it would fail and abort the agent. Otherwise the agent says so (a
//!   warning if the machine has swap, where it matters) and goes on.

use rustix::mm::{self, MlockAllFlags};
use rustix::process::{self, DumpableBehavior, Resource, Rlimit};

/// Why a protection could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot protect the process's memory ({what}): {source}")]
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

/// Locks the process's memory in RAM (see the module docs). `Err` when
/// the kernel refused, which the caller reports and survives.
pub fn lock_memory() -> Result<(), HardeningError> {
    let unlimited = process::getrlimit(Resource::Memlock).current.is_none();
    let privileged = rustix::thread::capabilities(None).is_ok_and(|c| {
        c.effective
            .contains(rustix::thread::CapabilitySet::IPC_LOCK)
    });
    if !unlimited && !privileged {
        return Err(HardeningError {
            what: "mlockall",
            source: std::io::Error::other(
                "the locked-memory limit is finite and the process lacks CAP_IPC_LOCK, so \
                 locking would make later allocations fail",
            ),
        });
    }
    mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT).map_err(
        |e| HardeningError {
            what: "mlockall",
            source: e.into(),
        },
    )
}

/// [`lock_memory`], and a word when it fails: a warning when the machine
/// has swap (secrets could be written to it), else a debug line.
pub fn lock_memory_or_say() {
    if let Err(e) = lock_memory() {
        let swap = std::fs::read_to_string("/proc/swaps")
            .map(|s| s.lines().count() > 1)
            .unwrap_or(true);
        if swap {
            tracing::warn!(
                error = %crate::error::report(&e),
                "memory not locked: secrets in it may be written to swap; lift the \
                 locked-memory limit (LimitMEMLOCK=infinity, as the shipped units do) or \
                 disable swap"
            );
        } else {
            tracing::debug!(error = %crate::error::report(&e), "memory not locked (no swap)");
        }
    }
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
