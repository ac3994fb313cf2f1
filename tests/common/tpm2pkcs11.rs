//! Debian's tpm2-pkcs11 module on a swtpm of its own, as a gateway runs it:
//! the module talks to tpm2-abrmd over D-Bus (a bare swtpm TCTI runs out of
//! object contexts), here a private session bus per test, and keeps its
//! objects in a store directory that tpm2_ptool initialises.
//!
//! Drop order: the TPM behind tpm2-abrmd, then the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::abrmd::Abrmd;

pub const USER_PIN: &str = "USER-pin-1234";
const SO_PIN: &str = "SO-pin-5678";

/// Where Debian's libtpm2-pkcs11-1 installs the module.
pub fn module_path() -> PathBuf {
    let out = Command::new("dpkg")
        .args(["-L", "libtpm2-pkcs11-1"])
        .output()
        .expect("dpkg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("pkcs11/libtpm2_pkcs11.so"))
        .map(PathBuf::from)
        .expect("libtpm2-pkcs11-1 is not installed: run ci/install-deps.sh")
}

pub struct Tpm2Pkcs11 {
    pub tpm: Abrmd,
    pub dir: tempfile::TempDir,
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
}

impl Tpm2Pkcs11 {
    /// A swtpm, a session bus, tpm2-abrmd on both, and a store holding one
    /// token labelled `token_label` with [`USER_PIN`].
    pub fn new(token_label: &str) -> Self {
        let tpm = Abrmd::start();
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, USER_PIN).unwrap();
        let this = Tpm2Pkcs11 {
            tpm,
            module: module_path(),
            token_label: token_label.to_string(),
            pin_file,
            dir,
        };
        std::fs::create_dir(this.store()).unwrap();
        let store = this.store().display().to_string();
        this.ptool(&["init", "--path", &store]);
        this.ptool(&[
            "addtoken",
            "--path",
            &store,
            "--pid=1",
            &format!("--sopin={SO_PIN}"),
            &format!("--userpin={USER_PIN}"),
            &format!("--label={token_label}"),
        ]);
        this
    }

    /// The module's object store (`TPM2_PKCS11_STORE`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// What every process that loads the module (or runs tpm2-tools) needs.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.tpm.env();
        env.push((
            "TPM2_PKCS11_STORE".into(),
            self.store().display().to_string(),
        ));
        env
    }

    /// A command for `program` with [`Self::env`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = super::clean_command(program);
        cmd.envs(self.env());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs tpm2_ptool, which must succeed; returns its stdout.
    pub fn ptool(&self, args: &[&str]) -> String {
        let out = self.command("tpm2_ptool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tpm2_ptool {}: {}\n{}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports the PEM private key in `key_file` into the token under
    /// `label`, with the module's own tool (the module cannot import).
    pub fn import_key(&self, label: &str, key_file: &Path, algorithm: &str) {
        let store = self.store().display().to_string();
        self.ptool(&[
            "import",
            "--path",
            &store,
            "--label",
            &self.token_label,
            "--key-label",
            label,
            "--userpin",
            USER_PIN,
            "--privkey",
            key_file.to_str().unwrap(),
            "--algorithm",
            algorithm,
        ]);
    }

    /// The token's objects as pkcs11-tool lists them (labels, classes,
    /// CKA_IDs, public points): a fingerprint of what the token holds.
    pub fn objects(&self) -> String {
        let out = self
            .command("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.token_label, "--login", "--pin"])
            .arg(USER_PIN)
            .arg("--list-objects")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pkcs11-tool --list-objects: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
