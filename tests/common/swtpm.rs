//! A swtpm of its own for each test: fresh state in a temp dir, free TCP
//! ports, killed on drop.
//!
//! Drop order matters: whatever holds a TPM context (a key store, a raw
//! tss-esapi `Context`) must be dropped before the `Swtpm`, or its
//! finalisation talks to a dead simulator.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Child,
    port: u16,
    // Kept for the simulator's lifetime; removed on drop, after the kill.
    state: tempfile::TempDir,
    /// Where the TPM's own state is when not `state` itself.
    tpm_state: Option<std::path::PathBuf>,
}

impl Swtpm {
    /// Starts a fresh simulator and waits until it accepts connections.
    pub fn start() -> Self {
        let mut last_err = String::new();
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            match Self::try_start(port) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start swtpm: {last_err}");
    }

    fn try_start(port: u16) -> Result<Self, String> {
        let state = tempfile::tempdir().map_err(|e| e.to_string())?;
        let child = spawn_and_wait(port, state.path())?;
        Ok(Swtpm {
            child,
            port,
            state,
            tpm_state: None,
        })
    }

    /// A fresh simulator manufactured as a TPM maker would: an RSA (and an
    /// ECC) endorsement key certificate in NV, signed by a CA of its own
    /// (`swtpm_setup --create-ek-cert` with swtpm_localca, its files in
    /// [`Swtpm::ek_ca_dir`]: `issuercert.pem` signed the EK certificate,
    /// `swtpm-localca-rootca-cert.pem` signed that).
    #[allow(dead_code)]
    pub fn start_with_ek_cert() -> Self {
        let state = tempfile::tempdir().unwrap();
        let ca = state.path().join("ek-ca");
        std::fs::create_dir(&ca).unwrap();
        let localca = state.path().join("swtpm-localca.conf");
        std::fs::write(
            &localca,
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
                 certserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .unwrap();
        let setup = state.path().join("swtpm_setup.conf");
        std::fs::write(
            &setup,
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\n\
                 create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                localca.display()
            ),
        )
        .unwrap();
        let tpm_state = state.path().join("tpm");
        std::fs::create_dir(&tpm_state).unwrap();
        let out = super::clean_command("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(&tpm_state)
            .arg("--config")
            .arg(&setup)
            .output()
            .expect("swtpm_setup (install swtpm-tools)");
        assert!(
            out.status.success(),
            "swtpm_setup: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last_err = String::new();
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            match spawn_and_wait(port, &tpm_state) {
                Ok(child) => {
                    return Swtpm {
                        child,
                        port,
                        state,
                        tpm_state: Some(tpm_state),
                    }
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start swtpm: {last_err}");
    }

    /// The CA that signed a [`Swtpm::start_with_ek_cert`] TPM's endorsement
    /// key certificate.
    #[allow(dead_code)]
    pub fn ek_ca_dir(&self) -> std::path::PathBuf {
        self.state.path().join("ek-ca")
    }

    /// Resets the TPM through the control channel (CMD_INIT), like a
    /// power cycle: transient objects and sessions are gone, persistent
    /// ones and the seeds stay. The process and its ports stay, so no other
    /// test can take the ports in between.
    pub fn reset(&self) {
        use std::io::{Read, Write};
        let mut ctrl = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port + 1)).unwrap();
        // CMD_INIT (2) with no flags.
        ctrl.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
        let mut result = [0u8; 4];
        ctrl.read_exact(&mut result).unwrap();
        assert_eq!(result, [0; 4], "swtpm CMD_INIT failed");
    }

    /// The simulator's process id (to kill it, as a crash or a power loss
    /// would, while something else borrows it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the simulator again, on the same ports and with the same
    /// state, once it has died (or kills it first): a TPM after a power
    /// cycle, with its persistent objects and seeds.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut last = String::new();
        // The ports may take a moment to be free again.
        for _ in 0..50 {
            match spawn_and_wait(self.port, self.tpm_state_dir()) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart swtpm on port {}: {last}", self.port);
    }

    /// TCTI string for this simulator, as tpm2-tools take it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn state_dir(&self) -> &std::path::Path {
        self.tpm_state_dir()
    }

    fn tpm_state_dir(&self) -> &std::path::Path {
        self.tpm_state.as_deref().unwrap_or(self.state.path())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts swtpm on `port` (commands) and `port + 1` (control) with its
/// state in `state`, and waits until it answers.
fn spawn_and_wait(port: u16, state: &std::path::Path) -> Result<Child, String> {
    let mut child = super::clean_command("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run swtpm (install swtpm): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // Most likely a port collision with another test: retry.
            return Err(format!("swtpm exited early ({status})"));
        }
        // The control port answers once the server is up; probing it does
        // not occupy the command port.
        let ctrl = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 1);
        if TcpStream::connect_timeout(&ctrl.into(), Duration::from_millis(200)).is_ok() {
            // Make sure it was our simulator that answered, not another
            // test's that took the port while ours failed to bind it.
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("swtpm exited early ({status})"));
            }
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("swtpm did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port P such that P and P+1 were both free a moment ago (the swtpm
/// TCTI talks to the control channel on P+1).
fn free_port_pair() -> Option<u16> {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    let port = a.local_addr().ok()?.port();
    if port == u16::MAX {
        return None;
    }
    let _b = TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).ok()?;
    Some(port)
}
