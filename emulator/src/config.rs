//! Settings of an emulator instance.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::throttle::Rate;

/// What RegisterThing does with an ownership token whose certificate was
/// already registered (a device retrying after a lost response). AWS
/// documents nothing; `Reject` is the default (see README).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokenReuse {
    /// Answer `InvalidCertificateOwnershipToken` (400).
    #[default]
    Reject,
    /// Run the registration again (idempotent for the same template and
    /// parameters) and answer as the first time, until the token expires.
    Replay,
}

/// Per-API rate limits, answered with `ThrottlingException` (429).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleConfig {
    pub create_keys_and_certificate: Rate,
    pub create_certificate_from_csr: Rate,
    pub register_thing: Rate,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            create_keys_and_certificate: Rate::new(50.0, 100),
            create_certificate_from_csr: Rate::new(1000.0, 2000),
            register_thing: Rate::new(1000.0, 2000),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Holds `registry.sqlite3` (CA, certificates, things, policies, templates).
    pub data_dir: PathBuf,
    /// Address both listeners bind (loopback by default).
    pub bind: IpAddr,
    /// Listener without ALPN (AWS's 8883); 0 picks a free port.
    pub port: u16,
    /// Listener that requires ALPN `x-amzn-mqtt-ca` (AWS's 443); 0 picks a free port.
    pub alpn_port: u16,
    /// Lifetime of an ownership token; certificates never registered are deleted after it.
    pub token_ttl: Duration,
    pub token_reuse: TokenReuse,
    pub throttle: ThrottleConfig,
    pub hook_timeout: Duration,
    /// A smaller keep-alive asked by a client counts as this (AWS: 30 s).
    /// Lower it only to test keep-alive enforcement quickly.
    pub min_keep_alive_secs: u16,
    /// How often live connections are checked against certificate statuses
    /// and policies changed by another process.
    pub poll_interval: Duration,
    /// Used in ARNs matched by policies.
    pub region: String,
    pub account: String,
}

impl EmulatorConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmulatorConfig {
            data_dir: data_dir.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            alpn_port: 0,
            token_ttl: Duration::from_secs(3600),
            token_reuse: TokenReuse::Reject,
            throttle: ThrottleConfig::default(),
            hook_timeout: Duration::from_secs(5),
            min_keep_alive_secs: 30,
            poll_interval: Duration::from_millis(500),
            region: "us-east-1".into(),
            account: "123456789012".into(),
        }
    }
}
