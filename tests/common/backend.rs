//! The key store behind a test device, with the hardware it needs (a fresh
//! SoftHSM token or a fresh swtpm), as a config section.

use std::path::Path;

pub enum Backend {
    File,
    #[cfg(feature = "pkcs11")]
    Pkcs11(super::softhsm::SoftHsm),
    /// tpm2-pkcs11 behind tpm2-abrmd on a swtpm.
    #[cfg(feature = "pkcs11")]
    Tpm2Pkcs11(super::tpm2pkcs11::Tpm2Pkcs11),
    #[cfg(feature = "tpm")]
    Tpm(super::swtpm::Swtpm),
    /// A swtpm behind tpm2-abrmd, shared with other programs.
    #[cfg(feature = "tpm")]
    TpmShared(super::abrmd::Abrmd),
}

impl Backend {
    #[cfg(feature = "pkcs11")]
    pub fn pkcs11(name: &str) -> Self {
        Backend::Pkcs11(super::softhsm::SoftHsm::new(name))
    }

    #[cfg(feature = "tpm")]
    pub fn tpm() -> Self {
        Backend::Tpm(super::swtpm::Swtpm::start())
    }

    #[cfg(feature = "tpm")]
    pub fn tpm_shared() -> Self {
        Backend::TpmShared(super::abrmd::Abrmd::start())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::File => "file",
            #[cfg(feature = "pkcs11")]
            Backend::Pkcs11(_) => "pkcs11",
            #[cfg(feature = "pkcs11")]
            Backend::Tpm2Pkcs11(_) => "pkcs11",
            #[cfg(feature = "tpm")]
            Backend::Tpm(_) | Backend::TpmShared(_) => "tpm",
        }
    }

    /// The agent's name for this backend.
    pub fn keystore_backend(&self) -> prov_agent::keystore::Backend {
        self.name().parse().expect("a backend name the agent knows")
    }

    /// `[KEYSTORE]` and the backend's own section.
    pub fn config_section(&self, _state_dir: &Path) -> String {
        match self {
            Backend::File => "[KEYSTORE]\nBACKEND = file\n".into(),
            #[cfg(feature = "pkcs11")]
            Backend::Pkcs11(hsm) => format!(
                "[KEYSTORE]\nBACKEND = pkcs11\n[PKCS11]\nMODULE = {}\nTOKEN_LABEL = {}\nPIN_SOURCE = file:{}\n",
                hsm.module.display(),
                hsm.token_label,
                hsm.pin_file.display()
            ),
            #[cfg(feature = "pkcs11")]
            Backend::Tpm2Pkcs11(t) => format!(
                "[KEYSTORE]\nBACKEND = pkcs11\n[PKCS11]\nMODULE = {}\nTOKEN_LABEL = {}\nPIN_SOURCE = file:{}\n",
                t.module.display(),
                t.token_label,
                t.pin_file.display()
            ),
            #[cfg(feature = "tpm")]
            Backend::Tpm(tpm) => format!(
                "[KEYSTORE]\nBACKEND = tpm\n[TPM]\nTCTI = {}\nKEY_STORAGE = blob\n",
                tpm.tcti()
            ),
            #[cfg(feature = "tpm")]
            Backend::TpmShared(_) => format!(
                "[KEYSTORE]\nBACKEND = tpm\n[TPM]\nTCTI = {}\nKEY_STORAGE = blob\n",
                super::abrmd::TCTI
            ),
        }
    }

    /// Environment the backend's hardware needs in every `prov-agent` child.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            #[cfg(feature = "pkcs11")]
            Backend::Pkcs11(hsm) => hsm.env(),
            #[cfg(feature = "pkcs11")]
            Backend::Tpm2Pkcs11(t) => t.env(),
            #[cfg(feature = "tpm")]
            Backend::TpmShared(t) => t.env(),
            _ => Vec::new(),
        }
    }

    /// `program` as a process this process starts itself (the key helper)
    /// must be started to reach this backend: itself when the backend needs
    /// no environment, else a symlink in `dir` to
    /// `tests/fixtures/with-env.sh`, which sets [`Backend::env`] from the
    /// file next to the link and execs `program`. (No executable is written:
    /// a file being written while another thread forks is open for writing
    /// in the child too, and executing it then fails with ETXTBSY.)
    pub fn program(&self, program: &str, dir: &Path) -> std::path::PathBuf {
        let env = self.env();
        if env.is_empty() {
            return program.into();
        }
        let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
        let mut settings = String::new();
        for (k, v) in env {
            settings.push_str(&format!("export {k}={}\n", quote(&v)));
        }
        settings.push_str(&format!("PROGRAM={}\n", quote(program)));
        let link = dir.join("with-backend-env");
        std::fs::write(dir.join("with-backend-env.env"), settings)
            .expect("write the backend's environment");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/with-env.sh"),
            &link,
        )
        .expect("link the backend wrapper");
        link
    }
}
