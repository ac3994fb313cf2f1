//! Command-line interface (clap). PINs and other secrets are never taken
//! from the command line: the config names where they come from.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "prov-agent",
    version,
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
    /// Internal: the daemon's key helper process, which holds the hardware
    /// during a handshake or a rotation and speaks a private protocol on
    /// stdin and stdout. Not for people.
    #[command(name = "key-helper", hide = true)]
    KeyHelper,
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
pub enum KeysCommand {
    /// List the keys the agent holds in the key store.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}
