//! `prov-agent run`, the daemon, against the emulator: rotation on
//! command, on an AWS IoT job and on schedule; offline start and an
//! emulator restart; the post-rotation command; a clean stop on SIGTERM.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backend::Backend;
use common::daemon::{
    create_rotation_job, retain_command, send_rotation_command, wait_job_succeeded, wait_rotated,
    Daemon, ROTATION_COMMAND,
};
use common::device::Device;
use common::emulator::TestCloud;
use tokio::io::AsyncBufReadExt;

/// Waits until identity.json names a certificate other than `old`.
async fn only_active(cloud: &TestCloud, thing: &str, cert: &str) {
    assert_eq!(
        cloud.active_certificates(thing, 1).await,
        vec![cert.to_string()]
    );
}

async fn command_rotation(backend: Backend) {
    let cloud = TestCloud::start().await;
    let post = tempfile::tempdir().unwrap();
    let env_file = post.path().join("post.env");
    let fds_file = post.path().join("post.fds");
    let device = Device::enrolled(&cloud, backend, "").await;
    // Add the post-rotation command to the config. Its `ls` lists the
    // descriptors it inherited, besides the one it reads the list from.
    let mut cfg = std::fs::read_to_string(&device.config).unwrap();
    cfg.push_str(&format!(
        "[ROTATION]\nPOST_ROTATION_COMMAND = env > {}; ls -l /proc/self/fd > {}\n",
        env_file.display(),
        fds_file.display()
    ));
    std::fs::write(&device.config, cfg).unwrap();
    let before = device.identity().unwrap();

    // What the daemon's environment may hold (a PIN given as
    // `PIN_SOURCE = env:`, systemd's credentials directory) must not reach
    // the command.
    let daemon = Daemon::start_env(
        &device,
        &[
            ("PKCS11_PIN", "daemon-env-secret-1234"),
            (
                "CREDENTIALS_DIRECTORY",
                "/run/credentials/prov-agent.service",
            ),
        ],
    );
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    only_active(&cloud, &before.thing_name, &new).await;
    // The daemon is back online with the new identity.
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;
    device.round_trip(&cloud).await.unwrap();

    // The post-rotation command saw the new identity, and no systemd
    // notification socket.
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains(&format!("PROV_AGENT_CERTIFICATE_ID={new}")),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "PROV_AGENT_PREVIOUS_CERTIFICATE_ID={}",
            before.certificate_id
        )),
        "{env}"
    );
    assert!(
        env.contains(&format!("PROV_AGENT_THING_NAME={}", before.thing_name)),
        "{env}"
    );
    assert!(env.contains("PROV_AGENT_CERT_PATH="), "{env}");
    assert!(env.contains("PROV_AGENT_KEY_REFERENCE="), "{env}");
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
    // Nothing of the daemon's environment but the allowlist.
    for secret in [
        "daemon-env-secret-1234",
        "CREDENTIALS_DIRECTORY",
        "PROV_AGENT_LOG",
    ] {
        assert!(!env.contains(secret), "{secret} reached the command: {env}");
    }
    assert!(env.contains("PATH="), "{env}");
    // The references other programs take are those `status --json` gives
    // for the new identity: the export directory, the key as the agent
    // names it and as OpenSSL takes it (a TSS2 key file, a PKCS#11 URI).
    let out = device.run(&["status", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = |name: &str| status[name].as_str().unwrap_or_default().to_string();
    assert_eq!(field("certificateId"), new);
    for (variable, name) in [
        ("PROV_AGENT_EXPORT_DIR", "exportDir"),
        ("PROV_AGENT_KEY_REFERENCE", "keyReference"),
        ("PROV_AGENT_OPENSSL_KEY", "opensslKey"),
    ] {
        let value = field(name);
        assert!(!value.is_empty(), "status --json has no {name}: {status}");
        assert!(
            env.lines().any(|l| l == format!("{variable}={value}")),
            "{variable} is not {value:?} ({name}): {env}"
        );
    }
    let openssl_key = field("opensslKey");
    assert!(
        openssl_key.starts_with("pkcs11:token=") && openssl_key.contains(";object=")
            || openssl_key.ends_with(".tss2.pem") && std::path::Path::new(&openssl_key).is_file(),
        "{openssl_key}"
    );
    // ... and inherited no descriptor beyond stdin, stdout and stderr: no
    // TPM connection, no token session, nothing of the daemon's.
    let listing = std::fs::read_to_string(&fds_file).unwrap();
    let mut fds: Vec<u32> = listing
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
        .filter_map(|(fd, _)| fd.split_whitespace().last()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(
        fds,
        vec![0, 1, 2],
        "descriptors of the post-rotation command:\n{listing}"
    );
    daemon.holds_no_hardware(&device).await;
    daemon.stop().await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_command_rotation_and_post_rotation_command() {
    command_rotation(Backend::pkcs11("daemon")).await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_command_rotation_and_post_rotation_command() {
    command_rotation(Backend::tpm()).await;
}

async fn job_rotation(backend: Backend) {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, backend, "").await;
    let before = device.identity().unwrap();
    let daemon = Daemon::start(&device);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    create_rotation_job(&cloud, "rotate-1", &before.thing_name);
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    wait_job_succeeded(&cloud, "rotate-1", &before.thing_name).await;
    only_active(&cloud, &before.thing_name, &new).await;
    // Remembered, so that the job is not done again if the service sends
    // it once more (its SUCCEEDED update lost).
    let done = std::fs::read_to_string(device.state_dir().join("jobs-done.json")).unwrap();
    assert!(done.contains("\"rotate-1\""), "{done}");
    daemon.stop().await;
}

/// A job the gateway already did, whose SUCCEEDED update the service
/// never got, comes back: the daemon answers SUCCEEDED again and does not
/// rotate a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_already_done_is_answered_without_rotating_again() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    // As the daemon records a completed job (the update of which was then
    // lost on the way).
    std::fs::write(
        device.state_dir().join("jobs-done.json"),
        r#"["rotate-lost"]"#,
    )
    .unwrap();
    let daemon = Daemon::start(&device);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    create_rotation_job(&cloud, "rotate-lost", &before.thing_name);
    wait_job_succeeded(&cloud, "rotate-lost", &before.thing_name).await;
    daemon
        .wait_log("job already done", 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        device.identity().unwrap().certificate_id,
        before.certificate_id,
        "the job was done again"
    );
    only_active(&cloud, &before.thing_name, &before.certificate_id).await;
    daemon.stop().await;
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn pkcs11_job_rotation_succeeds() {
    job_rotation(Backend::pkcs11("djob")).await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_job_rotation_succeeds() {
    job_rotation(Backend::tpm()).await;
}

/// A certificate valid for 8 s, rotated at half its life: the daemon
/// rotates it by itself, more than once.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_rotation_of_a_short_lived_certificate() {
    let cloud = TestCloud::start_with(|c| c.certificate_validity = Duration::from_secs(8)).await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let mut cfg = std::fs::read_to_string(&device.config).unwrap();
    cfg.push_str("[ROTATION]\nTHRESHOLD = 50%\nRANDOM_DELAY = 0s\nCHECK_INTERVAL = 500ms\n");
    std::fs::write(&device.config, cfg).unwrap();
    let first = device.identity().unwrap();
    let daemon = Daemon::start(&device);
    let second = wait_rotated(&device, &first.certificate_id, Duration::from_secs(20)).await;
    let third = wait_rotated(&device, &second, Duration::from_secs(20)).await;
    only_active(&cloud, &first.thing_name, &third).await;
    daemon.stop().await;
}

/// Started while the service is down, the daemon waits; it connects once
/// the service is up, rides out a restart of it, and still rotates.
/// A key store that cannot be opened stops the daemon at start with the
/// key store's exit code and what the store said (the daemon opens its
/// hardware in a helper process, which reports back before the daemon goes
/// on), rather than a daemon that retries for ever.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn a_key_store_that_cannot_be_opened_stops_the_daemon_at_start() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("daemon-pin"), "").await;
    let Backend::Pkcs11(hsm) = &device.backend else {
        unreachable!()
    };
    std::fs::write(&hsm.pin_file, "a-wrong-pin\n").unwrap();
    let before = device.identity().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), device.run(&["run"]))
        .await
        .expect("the daemon stops at once");
    // A wrong PIN is the configuration's (exit 2), which the unit does not
    // restart (RestartPreventExitStatus=2): no second try of the PIN.
    let stderr = common::device::failed_with(&out, 2);
    assert!(stderr.contains("PIN"), "{stderr}");
    let all = common::device::text(&out);
    assert!(!all.contains("a-wrong-pin"), "{all}");
    assert_eq!(
        device.identity().unwrap().certificate_id,
        before.certificate_id
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_start_and_service_restart() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    let port = cloud.handle.addr().port();
    let data = cloud.dir.path().join("emulator");
    let TestCloud { handle, claim, dir } = cloud;
    handle.shutdown().await;

    let daemon = Daemon::start(&device);
    daemon
        .wait_log("cannot connect", 1, Duration::from_secs(15))
        .await;
    assert_eq!(daemon.count("connected as"), 0);

    let restart = |data: std::path::PathBuf| async move {
        let mut cfg = iotcore_emulator::EmulatorConfig::new(data);
        cfg.port = port;
        iotcore_emulator::Emulator::start(cfg).await.unwrap()
    };
    let handle = restart(data.clone()).await;
    daemon
        .wait_log("INFO connected", 1, Duration::from_secs(30))
        .await;
    handle.shutdown().await;
    daemon
        .wait_log("connection lost", 1, Duration::from_secs(15))
        .await;
    let handle = restart(data).await;
    daemon
        .wait_log("INFO connected", 2, Duration::from_secs(30))
        .await;

    let cloud = TestCloud { handle, claim, dir };
    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    only_active(&cloud, &before.thing_name, &new).await;
    daemon.stop().await;
}

/// Under systemd: READY=1 once started, STATUS lines, WATCHDOG=1 pings at
/// half the watchdog timeout; SIGHUP reloads the config (RELOADING=1, then
/// READY=1 again) and a bad config is refused without stopping the daemon;
/// STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_notifications_and_reload() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut child = common::clean_tokio_command(env!("CARGO_BIN_EXE_prov-agent"))
        .arg("--config")
        .arg(&device.config)
        .arg("run")
        .env("PROV_AGENT_LOG", "info")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let collector = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let deadline = std::time::Instant::now() + Duration::from_secs(12);
            while std::time::Instant::now() < deadline {
                if let Ok(n) = sock.recv(&mut buf) {
                    received
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        })
    };
    let wait_msg = |needle: &'static str, n: usize| {
        let received = received.clone();
        async move {
            for _ in 0..100 {
                if received
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|m| m.contains(needle))
                    .count()
                    >= n
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no {n}x {needle}: {:?}", received.lock().unwrap());
        }
    };
    wait_msg("READY=1", 1).await;
    wait_msg("STATUS=", 1).await;
    wait_msg("WATCHDOG=1", 3).await;

    // A good reload.
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(hup().success());
    wait_msg("RELOADING=1", 1).await;
    wait_msg("READY=1", 2).await;
    // A bad config is refused, the daemon keeps running.
    let good = std::fs::read_to_string(&device.config).unwrap();
    std::fs::write(&device.config, format!("{good}[NOPE]\n")).unwrap();
    assert!(hup().success());
    wait_msg("RELOADING=1", 2).await;
    for _ in 0..50 {
        if log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("configuration not reloaded"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("configuration not reloaded")));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon stopped on a bad reload"
    );
    std::fs::write(&device.config, good).unwrap();

    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    wait_msg("STOPPING=1", 1).await;
    drop(collector);
}

/// A rotation command sooner than `[ROTATION] MIN_INTERVAL` after the last
/// commit (a backend repeating `rotate_cert`, say) is ignored: no rotation
/// loop.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_within_the_minimum_interval_is_ignored() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    let daemon = Daemon::start_env(&device, &[("PROV_AGENT_ROTATION_MIN_INTERVAL", "1h")]);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    for _ in 0..2 {
        send_rotation_command(&cloud, &before.thing_name).await;
    }
    daemon
        .wait_log(
            "sooner than [ROTATION] MIN_INTERVAL",
            2,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(daemon.count("rotated"), 0);
    assert_eq!(device.identity().unwrap(), before);
    daemon.stop().await;
}

/// A retained `rotate_cert` (which AWS IoT Core sends again at every
/// subscription, so after every reconnect, and a rotation reconnects) is
/// ignored with a warning, also with no minimum interval; a command
/// without RETAIN still rotates, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_retained_command_is_ignored() {
    let retained_ignored = "retained command ignored";
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    retain_command(&cloud, &before.thing_name, ROTATION_COMMAND).await;

    // PROV_AGENT_ROTATION_MIN_INTERVAL is 0s: only RETAIN tells.
    let daemon = Daemon::start(&device);
    daemon
        .wait_log(retained_ignored, 1, Duration::from_secs(15))
        .await;
    let topic = format!("cmd/{}", before.thing_name);
    assert!(
        daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(retained_ignored) && l.contains(&topic)),
        "the warning names {topic}"
    );
    assert_eq!(device.identity().unwrap(), before);

    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    // The reconnect after the rotation subscribes again and gets the
    // retained command again: ignored again, no second rotation.
    daemon
        .wait_log(retained_ignored, 2, Duration::from_secs(15))
        .await;
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(device.identity().unwrap().certificate_id, new);
    only_active(&cloud, &before.thing_name, &new).await;
    daemon.stop().await;
}

/// A key helper that hangs in the middle of a rotation (stopped, as a hung
/// TPM or token holds the process that waits for it) does not hold the
/// daemon: the watchdog pings go on, the rotation fails once
/// `[KEYSTORE] HELPER_TIMEOUT` is up (four times that for a key generation)
/// and the device keeps its identity and reconnects; and SIGTERM stops the
/// daemon, and its hung helper, without waiting for the deadline.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_key_helper_does_not_hold_the_daemon() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let pings = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let collector = {
        let (pings, done) = (pings.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                        pings.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let daemon = Daemon::start_env(
        &device,
        &[
            ("PROV_AGENT_FAULT", "helper-generate"),
            ("PROV_AGENT_KEYSTORE_HELPER_TIMEOUT", "4s"),
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // A ping every 0.5 s.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;

    send_rotation_command(&cloud, &before.thing_name).await;
    daemon
        .wait_log("stopping at helper-generate", 1, Duration::from_secs(15))
        .await;
    let pings_at_hang = pings.load(Ordering::SeqCst);
    daemon
        .wait_log("rotation failed", 1, Duration::from_secs(40))
        .await;
    let pings_during_hang = pings.load(Ordering::SeqCst) - pings_at_hang;
    // 16 s of hang at a ping every 0.5 s: 32 if on time; a daemon held by
    // the helper sends none.
    assert!(
        pings_during_hang >= 10,
        "{pings_during_hang} watchdog pings while the helper hung"
    );
    assert!(
        daemon.count("did not finish a key generation within 16s") > 0,
        "{}",
        daemon.log.lock().unwrap().join("\n")
    );
    assert_eq!(device.identity().unwrap(), before);
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;

    // Again, and stop the daemon while the helper hangs: it stops without
    // waiting the 16 s (Daemon::stop allows 10), and takes the helper along.
    send_rotation_command(&cloud, &before.thing_name).await;
    daemon
        .wait_log("stopping at helper-generate", 2, Duration::from_secs(15))
        .await;
    let helpers = common::daemon::children_of(daemon.child.id().unwrap());
    assert_eq!(helpers.len(), 1, "helper processes {helpers:?}");
    let helper = helpers[0];
    daemon.stop().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{helper}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_string()));
        match state {
            None => break,
            Some(s) if s.starts_with('Z') || s.starts_with('X') => break,
            Some(s) => assert!(
                std::time::Instant::now() < deadline,
                "the hung helper {helper} outlived the daemon: {s}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(device.identity().unwrap(), before);
    done.store(true, Ordering::SeqCst);
    collector.join().unwrap();
}

/// A device key that another tool replaced: the daemon says once, clearly,
/// what is wrong and what to do (instead of a warning at every retry), and
/// `check` says the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_device_key_is_reported_once_with_what_to_do() {
    use prov_agent::keystore::{KeyAlgorithm, KeyLabel};

    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let before = device.identity().unwrap();
    {
        let store = device.store();
        let label = KeyLabel::new(before.key_label.clone()).unwrap();
        store.delete(&label).unwrap();
        store.generate(&label, KeyAlgorithm::EcP256).unwrap();
    }
    let daemon = Daemon::start(&device);
    daemon
        .wait_log("does not belong to the key", 1, Duration::from_secs(15))
        .await;
    // Long enough for the backoff of an ordinary failure (from 1 s) to
    // have retried several times.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = daemon.log.lock().unwrap().join("\n");
    assert_eq!(daemon.count("does not belong to the key"), 1, "{log}");
    assert_eq!(daemon.count("WARN cannot connect"), 0, "{log}");
    assert!(log.contains("prov-agent enroll --force"), "{log}");
    assert!(log.contains(&before.certificate_id), "{log}");
    assert_eq!(device.identity().unwrap(), before);

    let check = device.run(&["check"]).await;
    assert!(!check.status.success());
    let text = common::device::text(&check);
    assert!(text.contains("does not belong to the key"), "{text}");
    assert!(text.contains("prov-agent enroll --force"), "{text}");
    daemon.stop().await;
}

/// `PIN_SOURCE = env:NAME`: the daemon takes the PIN out of its own
/// environment at start (`/proc/<pid>/environ` no longer shows it) and
/// hands it to each key helper, so the handshake and a rotation still log
/// in to the token.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn a_pin_from_the_environment_leaves_the_daemons_environment() {
    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::pkcs11("env-pin"), "").await;
    device.pin_from_variable("GATEWAY_TOKEN_PIN");
    let before = device.identity().unwrap();
    let daemon = Daemon::start_env(&device, &[("GATEWAY_TOKEN_PIN", common::softhsm::USER_PIN)]);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    let pid = daemon.child.id().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let pin = common::softhsm::USER_PIN.as_bytes();
    assert!(
        !environ.windows(pin.len()).any(|w| w == pin),
        "the PIN is in the daemon's /proc/{pid}/environ"
    );
    // The name stays in the block the process started with (it is no
    // secret); its value there is wiped.
    assert!(
        environ
            .windows(b"GATEWAY_TOKEN_PIN=\0".len())
            .any(|w| w == b"GATEWAY_TOKEN_PIN=\0"),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    send_rotation_command(&cloud, &before.thing_name).await;
    let new = wait_rotated(&device, &before.certificate_id, Duration::from_secs(30)).await;
    only_active(&cloud, &before.thing_name, &new).await;
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;
    daemon.stop().await;
}
