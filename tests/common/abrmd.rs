//! A swtpm behind tpm2-abrmd on a private session bus, as a gateway whose
//! TPM several programs share runs it (a bare swtpm TCTI runs out of
//! object contexts as soon as two programs use it). The agent, tpm2-tools,
//! tpm2-pkcs11 and tpm2-openssl all reach it through the `tabrmd` TCTI.
//!
//! Drop order: tpm2-abrmd goes first (it holds the TPM connection), then
//! the bus, then the swtpm.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::swtpm::Swtpm;

/// The TCTI every program is given.
pub const TCTI: &str = "tabrmd:bus_type=session";

pub struct Abrmd {
    abrmd: Child,
    dbus: Child,
    _swtpm: Swtpm,
    bus_address: String,
}

impl Abrmd {
    /// A fresh swtpm, a session bus, and tpm2-abrmd on both, answering.
    pub fn start() -> Self {
        let swtpm = Swtpm::start();
        let (dbus, bus_address) = start_bus();
        let abrmd = super::clean_command("tpm2-abrmd")
            .arg("--session")
            .arg(format!("--tcti={}", swtpm.tcti()))
            .arg("--allow-root")
            .arg("--flush-all")
            .env("DBUS_SESSION_BUS_ADDRESS", &bus_address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run tpm2-abrmd (run ci/install-deps.sh)");
        let mut this = Abrmd {
            abrmd,
            dbus,
            _swtpm: swtpm,
            bus_address,
        };
        this.wait();
        this
    }

    /// What every process that uses the TPM needs: the bus, and the TCTI
    /// for tpm2-tools, tpm2-pkcs11 and tpm2-openssl.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.bus_address.clone()),
            ("TPM2TOOLS_TCTI".into(), TCTI.into()),
            ("TPM2_PKCS11_TCTI".into(), TCTI.into()),
            ("TPM2OPENSSL_TCTI".into(), TCTI.into()),
        ]
    }

    /// A command for `program` with [`Self::env`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = super::clean_command(program);
        cmd.envs(self.env());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Waits until tpm2-abrmd has taken its name on the bus and talks to
    /// the TPM.
    fn wait(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.abrmd.try_wait() {
                panic!("tpm2-abrmd exited early ({status})");
            }
            let ok = self
                .command("tpm2_getrandom")
                .args(["--hex", "4"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tpm2-abrmd did not answer within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A private session bus: dbus-daemon in the foreground (so that it is our
/// child to kill), its address read from its first line of output.
fn start_bus() -> (Child, String) {
    let mut dbus = super::clean_command("dbus-daemon")
        .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run dbus-daemon (run ci/install-deps.sh)");
    let mut line = String::new();
    BufReader::new(dbus.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().to_string();
    assert!(!address.is_empty(), "dbus-daemon printed no address");
    (dbus, address)
}

impl Drop for Abrmd {
    fn drop(&mut self) {
        for child in [&mut self.abrmd, &mut self.dbus] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
