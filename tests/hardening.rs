//! The agent's process cannot be dumped or read by another process of its
//! user (src/hardening.rs), observed from outside: the agent runs as
//! `nobody` while the test (root) looks at its /proc entry. A process that
//! does not protect itself is looked at the same way, so the check can
//! fail.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn as_nobody(mut cmd: std::process::Command) -> Child {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The owner of /proc/<pid>/environ once the process runs as nobody and
/// has had `settle` to protect itself, and its core size limit.
fn observe(child: &Child, settle: Duration) -> (u32, String) {
    let proc_dir = format!("/proc/{}", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let running_as_nobody = uid_line.split_whitespace().nth(1) == Some("65534");
        let exe = std::fs::read_link(format!("{proc_dir}/exe")).ok();
        if running_as_nobody && exe.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the child never ran as nobody");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
    let owner = std::fs::metadata(format!("{proc_dir}/environ"))
        .unwrap()
        .uid();
    let limits = std::fs::read_to_string(format!("{proc_dir}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_string();
    (owner, core)
}

#[test]
fn the_agent_cannot_be_dumped_or_read_by_its_own_user() {
    // The key helper waits on stdin for the daemon's hello: alive long
    // enough to be looked at, and it runs `main` like every command.
    let mut cmd = common::clean_command(env!("CARGO_BIN_EXE_prov-agent"));
    cmd.arg("key-helper");
    let mut agent = as_nobody(cmd);
    let (owner, core) = observe(&agent, Duration::from_millis(500));
    drop(agent.stdin.take());
    let _ = agent.wait();
    // Not dumpable: the kernel hands its /proc files to root.
    assert_eq!(owner, 0, "/proc/<agent>/environ is owned by uid {owner}");
    let soft = core.split_whitespace().nth(4).unwrap();
    assert_eq!(soft, "0", "{core}");

    // The same look at a process that does nothing of the kind.
    let mut control = as_nobody(common::clean_command("cat"));
    let (owner, _) = observe(&control, Duration::from_millis(100));
    drop(control.stdin.take());
    let _ = control.wait();
    assert_eq!(owner, NOBODY, "the check cannot tell a dumpable process");
}

/// `VmLck` of a process, in kB.
fn locked_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// With CAP_IPC_LOCK (the tests run as root) the agent's memory is locked,
/// so nothing it holds reaches swap; as an unprivileged user under a finite
/// locked-memory limit it does not lock (that would make allocations fail
/// later) and still works.
#[test]
fn the_agents_memory_is_locked_when_that_is_safe() {
    let mut cmd = common::clean_command(env!("CARGO_BIN_EXE_prov-agent"));
    cmd.arg("key-helper")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut agent = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut locked = 0;
    while Instant::now() < deadline {
        locked = locked_kb(agent.id());
        if locked > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(agent.stdin.take());
    let _ = agent.wait();
    assert!(locked > 0, "the agent running as root locked no memory");

    // As nobody, whose locked-memory limit is finite: not locked, alive.
    let mut cmd = common::clean_command(env!("CARGO_BIN_EXE_prov-agent"));
    cmd.arg("key-helper");
    let mut agent = as_nobody(cmd);
    observe(&agent, Duration::from_millis(300));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.id())).unwrap();
    let memlock = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .unwrap()
        .to_string();
    let still_running = agent.try_wait().unwrap().is_none();
    let locked = locked_kb(agent.id());
    drop(agent.stdin.take());
    let _ = agent.wait();
    assert!(still_running, "the agent as nobody died");
    if !memlock.contains("unlimited") {
        assert_eq!(locked, 0, "locked under a finite limit: {memlock}");
    }
}
