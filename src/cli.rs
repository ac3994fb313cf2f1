//! Command-line interface (clap). PINs and other secrets are never taken
//! from the command line: the config names where they come from.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `--version`: the version and the key store backends built in, such as
/// `0.1.0 (backends: tpm, pkcs11, file)`.
pub fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let mut backends = Vec::new();
        if cfg!(feature = "tpm") {
            backends.push("tpm");
        }
        if cfg!(feature = "pkcs11") {
            backends.push("pkcs11");
        }
        backends.push("file");
        format!(
            "{} (backends: {})",
            env!("CARGO_PKG_VERSION"),
            backends.join(", ")
        )
    })
}

/// The man pages of the command line: `prov-agent.1` and one per visible
/// subcommand (`prov-agent-enroll.1`, `prov-agent-claim-import.1`, ...),
/// written into `dir` (made if missing).
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut command = Cli::command();
    command.build();
    write_man_page(dir, &command, "prov-agent", &mut written)?;
    Ok(written)
}

fn write_man_page(
    dir: &std::path::Path,
    command: &clap::Command,
    name: &str,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let page = command.clone().name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    crate::durable::write_file_mode(&path, &out, 0o644)?;
    written.push(path);
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_man_page(dir, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}

#[derive(Debug, Parser)]
#[command(
    name = "prov-agent",
    version = version_text(),
    about = "Hardware-backed AWS IoT fleet provisioning and certificate rotation"
)]
pub struct Cli {
    /// Configuration file [default: $PROV_AGENT_CONFIG, else /etc/prov-agent/config.ini]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the shared bootstrap ("claim") credential.
    #[command(subcommand)]
    Claim(ClaimCommand),
    /// Trade the claim credential for the device's own identity (fleet
    /// provisioning), with every private key in the key store.
    Enroll(Enroll),
    /// Replace the device's certificate and key (rotation template, current
    /// identity); rolls back on any failure before the commit.
    Rotate(Rotate),
    /// The daemon: keeps a connection as the thing and rotates the
    /// certificate on schedule, on command (cmd/<thing>) and on AWS IoT
    /// jobs; SIGHUP reloads the config, SIGTERM stops.
    Run,
    /// Show the device's identity: thing, certificate, expiry, key, any
    /// interrupted operation.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the setup: config, state directory permissions, key and
    /// certificate, expiry, clock, endpoint. Exits 1 when a check fails.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Only what needs neither the hardware nor the network: the
        /// config, files and their permissions, the certificates, the clock.
        #[arg(long)]
        offline: bool,
    },
    /// Inspect the keys in the configured key store.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Hardware attestation (docs/attestation.md): the TPM's attestation
    /// key and its certificate from the manufacturer's CA.
    #[command(subcommand)]
    Attest(AttestCommand),
    /// Internal: the daemon's key helper process, which holds the hardware
    /// during a handshake or a rotation and speaks a private protocol on
    /// stdin and stdout. Not for people.
    #[command(name = "key-helper", hide = true)]
    KeyHelper,
    /// Print the completion script for SHELL on stdout (for example
    /// `prov-agent completions bash > /usr/share/bash-completion/completions/prov-agent`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (prov-agent.1 and one per subcommand) into DIR;
    /// for packaging.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct Enroll {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Enroll again although the device has an identity (the current one
    /// stays in use until the new one is proven and committed).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct Rotate {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Rotate only when the certificate has reached [ROTATION] THRESHOLD
    /// (for a systemd timer); exit 0 either way.
    #[arg(long)]
    pub if_due: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClaimCommand {
    /// Move the claim private key into the configured key store and store
    /// the claim certificate where CLAIM_CERT says.
    Import(ClaimImport),
    /// Make the claim key inside the hardware and write a CSR for it, for
    /// factories whose own registered CA signs claim certificates.
    Generate(ClaimGenerate),
}

#[derive(Debug, Args)]
pub struct ClaimImport {
    /// The claim certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The claim private key (PEM: PKCS#8, SEC1 or PKCS#1) [default: SECURE_KEY]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Overwrite and remove the key file once the imported key has made a
    /// signature that verifies with the certificate.
    #[arg(long)]
    pub shred: bool,
    /// Replace a claim key that is already in the store.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct ClaimGenerate {
    /// Where to write the CSR (PEM).
    #[arg(long, value_name = "FILE")]
    pub csr: PathBuf,
    /// Subject common name of the CSR.
    #[arg(long, value_name = "CN", default_value = "prov-agent claim")]
    pub subject: String,
}

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Make the attestation key in the TPM (or keep the one there is) and
    /// write the request for the manufacturer's CA: the TPM's endorsement
    /// key certificate and the attestation key's public area.
    Init(AttestInit),
    /// Answer the CA's challenge with TPM2_ActivateCredential and store
    /// the attestation key certificate it unlocks.
    Activate(AttestActivate),
}

#[derive(Debug, Args)]
pub struct AttestInit {
    /// Where to write the request (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The endorsement key certificate (PEM or DER), for a TPM that does
    /// not hold one at NV index 0x01c00002.
    #[arg(long, value_name = "FILE")]
    pub ek_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AttestActivate {
    /// The CA's challenge (JSON).
    #[arg(long, value_name = "FILE")]
    pub challenge: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the keys the agent holds in the key store.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}
