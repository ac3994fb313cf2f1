//! The agent's process cannot be dumped or read by another process of its
//! user (src/hardening.rs), observed from outside: the agent runs as
//! `nobody` while the test (root) looks at its /proc entry, and while
//! another process of `nobody` (this test binary run again, [`prober`])
//! tries to read its memory and to ptrace it. A process that does not
//! protect itself is looked at the same way, so the checks can fail.

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

/// The environment variable that makes [`prober`] probe (`agent` or
/// `control`); not a `PROV_AGENT_` name, which the agent would check.
const PROBE: &str = "HARDENING_PROBE";

/// What a process of `nobody` could do to a process of `nobody` it
/// started itself (so that even Yama's ptrace_scope 1, which allows a
/// parent, would not stand in the way): the results of opening
/// /proc/<pid>/maps, of opening /proc/<pid>/mem and reading 16 bytes at the
/// first readable mapping, and of PTRACE_ATTACH, each `ok` or an errno, as
/// `name=result` lines.
fn probe_as_nobody(target: &str) -> std::collections::HashMap<String, String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "prober", "--nocapture", "--test-threads=1"])
        .env(PROBE, target)
        .env("PROBE_AGENT", env!("CARGO_BIN_EXE_prov-agent"))
        .current_dir("/");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the prober failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: std::collections::HashMap<String, String> = stdout
        .lines()
        // The harness prints the first line after `test prober ... `.
        .filter_map(|l| l.split_once("probe: ").map(|(_, said)| said))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for key in ["uid", "target-uid", "maps", "mem", "ptrace"] {
        assert!(results.contains_key(key), "no {key} in {stdout}");
    }
    results
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        _ => format!("{e}"),
    }
}

/// Not a check of its own: the prober [`probe_as_nobody`] runs, this test
/// binary again with `HARDENING_PROBE` set, as `nobody`. It starts the
/// target (the agent's key helper, which runs `main` like every command
/// and waits on stdin; or `cat`), waits until it has run for a while, and
/// says what it could do to it. Without the variable it returns at once.
#[test]
fn prober() {
    let Ok(target) = std::env::var(PROBE) else {
        return;
    };
    let (program, comm) = match target.as_str() {
        "agent" => (std::env::var("PROBE_AGENT").unwrap(), "prov-agent"),
        _ => ("cat".to_string(), "cat"),
    };
    let mut cmd = common::clean_command(&program);
    if target == "agent" {
        cmd.arg("key-helper");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let proc_dir = format!("/proc/{pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("{proc_dir}/comm"))
        .unwrap_or_default()
        .trim()
        != comm
    {
        assert!(Instant::now() < deadline, "{program} never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Time to protect itself (first thing in main).
    std::thread::sleep(Duration::from_millis(300));
    let say = |k: &str, v: String| println!("probe: {k}={v}");
    say("uid", unsafe { libc::getuid() }.to_string());
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    say("target-uid", uid);
    // The first readable mapping, where the memory is to be read.
    let maps = std::fs::read_to_string(format!("{proc_dir}/maps"));
    let address = maps.as_ref().ok().and_then(|m| {
        m.lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p.starts_with('r'))
            })
            .and_then(|l| l.split('-').next())
            .and_then(|a| u64::from_str_radix(a, 16).ok())
    });
    say(
        "maps",
        match &maps {
            Ok(_) => "ok".into(),
            Err(e) => errno_name(e),
        },
    );
    let mem = std::fs::File::open(format!("{proc_dir}/mem")).and_then(|f| {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        // Where the maps said, or (maps unreadable) where a non-PIE
        // executable's text would be: the open is what is refused anyway.
        f.read_exact_at(&mut buf, address.unwrap_or(0x40_0000))
    });
    say(
        "mem",
        match &mem {
            Ok(()) => "ok".into(),
            Err(e) => errno_name(e),
        },
    );
    // SAFETY: plain ptrace calls on our own child.
    let attached = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if attached == 0 {
        say("ptrace", "ok".into());
        let mut status = 0;
        unsafe {
            libc::waitpid(pid as libc::pid_t, &mut status, libc::__WALL);
            libc::ptrace(
                libc::PTRACE_DETACH,
                pid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
        }
    } else {
        say("ptrace", errno_name(&std::io::Error::last_os_error()));
    }
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Another process of the agent's user cannot read the agent's memory
/// (/proc/<pid>/maps and /proc/<pid>/mem refused) or ptrace it (EPERM),
/// though it started the agent itself; the same prober reads the memory of
/// a `cat` of that user and attaches to it.
#[test]
fn another_process_of_its_user_cannot_read_or_trace_the_agent() {
    let agent = probe_as_nobody("agent");
    let control = probe_as_nobody("control");
    for r in [&agent, &control] {
        assert_eq!(r["uid"], NOBODY.to_string(), "{r:?}");
        assert_eq!(r["target-uid"], NOBODY.to_string(), "{r:?}");
    }
    assert_eq!(control["maps"], "ok", "the control: {control:?}");
    assert_eq!(control["mem"], "ok", "the control: {control:?}");
    assert_eq!(control["ptrace"], "ok", "the control: {control:?}");
    // The kernel hands a non-dumpable process's /proc files to root and
    // refuses the ptrace access check.
    assert!(
        ["EACCES", "EPERM"].contains(&agent["maps"].as_str()),
        "{agent:?}"
    );
    assert!(
        ["EACCES", "EPERM"].contains(&agent["mem"].as_str()),
        "{agent:?}"
    );
    assert_eq!(agent["ptrace"], "EPERM", "{agent:?}");
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
