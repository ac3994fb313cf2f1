//! A running `prov-agent run` daemon whose log lines are collected.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::device::Device;

/// A running daemon whose log lines are collected.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(device: &Device) -> Self {
        Self::start_env(device, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(device: &Device, env: &[(&str, &str)]) -> Self {
        let mut child = super::clean_tokio_command(env!("CARGO_BIN_EXE_prov-agent"))
            .arg("--config")
            .arg(&device.config)
            .arg("run")
            .env("PROV_AGENT_LOG", "info")
            // The tests rotate right after enrolling: no minimum interval
            // unless a test sets one.
            .env("PROV_AGENT_ROTATION_MIN_INTERVAL", "0s")
            .envs(device.backend.env())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `needle` has appeared `n` times in the log.
    pub async fn wait_log(&self, needle: &str, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.count(needle) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {n}x {needle:?} within {within:?}; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks that the connected, idle daemon holds none of the hardware:
    /// its key helper process has ended, it never loaded the PKCS#11 module
    /// or a TPM transport itself, and another process can use the key store
    /// (swtpm serves one connection at a time, so a TPM connection kept by
    /// the daemon would make `keys list` wait for ever).
    pub async fn holds_no_hardware(&self, device: &Device) {
        let pid = self.child.id().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let children = children_of(pid);
            if children.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle daemon still has child processes {children:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        for library in ["softhsm", "libtpm2_pkcs11", "libtss2-tcti-"] {
            assert!(
                !maps.contains(library),
                "the daemon itself has loaded {library}"
            );
        }
        let list = tokio::time::timeout(Duration::from_secs(30), device.run(&["keys", "list"]))
            .await
            .expect("`keys list` got the key store while the daemon was idle");
        assert!(list.status.success(), "{}", super::device::text(&list));
    }

    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the daemon stops on SIGTERM")
            .unwrap();
        assert!(
            exit.success(),
            "exit status {exit:?}; log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// The rotation command the backend sends.
pub const ROTATION_COMMAND: &[u8] = br#"{"msg": "rotate_cert"}"#;

/// Sends the rotation command on `cmd/<thing>` as the backend would.
pub async fn send_rotation_command(cloud: &super::emulator::TestCloud, thing: &str) {
    let mut backend = cloud.backend_session().await;
    backend
        .publish(
            &format!("cmd/{thing}"),
            ROTATION_COMMAND.to_vec(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    backend.close().await;
}

/// Publishes `payload` on `cmd/<thing>` with RETAIN set, as a misconfigured
/// backend would: the broker keeps it (until an empty retained payload
/// deletes it) and sends it at every subscription to the topic.
pub async fn retain_command(cloud: &super::emulator::TestCloud, thing: &str, payload: &[u8]) {
    let mut backend = cloud.backend_session().await;
    backend
        .publish_retained(
            &format!("cmd/{thing}"),
            payload.to_vec(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    backend.close().await;
}

/// Creates the rotation job `job` for `thing`, as a fleet backend would.
#[allow(dead_code)]
pub fn create_rotation_job(cloud: &super::emulator::TestCloud, job: &str, thing: &str) {
    cloud
        .handle
        .create_job(
            job,
            serde_json::json!({"operation": "rotate-certificate"}),
            &[thing],
        )
        .unwrap();
}

/// Waits until `thing`'s execution of `job` is SUCCEEDED (at most 15 s).
#[allow(dead_code)]
pub async fn wait_job_succeeded(cloud: &super::emulator::TestCloud, job: &str, thing: &str) {
    let mut status = None;
    for _ in 0..150 {
        status = cloud
            .handle
            .job_execution(job, thing)
            .unwrap()
            .map(|e| e.status);
        if status == Some(iotcore_emulator::JobExecutionStatus::Succeeded) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job} of {thing} is {status:?}, not SUCCEEDED, after 15 s");
}

/// Waits until the device's identity names a certificate other than
/// `old`; returns the new certificate's id.
pub async fn wait_rotated(device: &Device, old: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(id) = device.identity() {
            if id.certificate_id != old {
                return id.certificate_id;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
