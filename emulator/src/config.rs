//! Settings of an emulator instance.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::link::LinkSimulation;
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

/// Wrong answers and lost answers of the provisioning APIs, so that a
/// client's defences can be tested. **Test-only**: nothing like this is a
/// setting of AWS IoT Core. Set it in [`EmulatorConfig::response_fault`] or
/// change it on a running emulator with
/// [`EmulatorHandle::set_response_fault`](crate::EmulatorHandle::set_response_fault)
/// (which also restarts the counts of `DropResponses` and `ThrottleFirst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFault {
    /// Accepted answers of CreateCertificateFromCsr and
    /// CreateKeysAndCertificate are cut in half: not valid JSON or CBOR.
    /// The certificate is still issued and registered (PENDING_ACTIVATION).
    MalformedJson,
    /// Accepted answers of CreateCertificateFromCsr and
    /// CreateKeysAndCertificate carry a valid certificate, registered under
    /// its id and covered by the ownership token, but issued for a freshly
    /// made key of the same kind instead of the CSR's (or the returned
    /// `privateKey`'s) key. The subject is kept.
    CertificateForAnotherKey,
    /// Accepted answers of CreateCertificateFromCsr and
    /// CreateKeysAndCertificate carry a `certificateId` that is not the
    /// SHA-256 of the certificate's DER (64 lowercase hex digits all the
    /// same). The registry and the ownership token use the true id.
    WrongCertificateId,
    /// Accepted answers of CreateCertificateFromCsr and
    /// CreateKeysAndCertificate are padded with an extra `"padding"` field
    /// to more than 128 KiB (AWS's payload limit) and sent anyway.
    OversizedPayload,
    /// The first `n` requests to any of the three provisioning APIs are
    /// processed (certificates issued, things registered: side effects
    /// happen) but no answer is sent: a lost response.
    DropResponses(u32),
    /// The first `n` requests to any of the three provisioning APIs are
    /// rejected with `ThrottlingException` (429) without any side effect.
    ThrottleFirst(u32),
    /// Accepted answers of RegisterThing name the thing with this
    /// character appended to its name: with `+`, `#` or `/`, a name that
    /// would make a topic wildcard or another topic level of the thing's
    /// topics. The thing is registered under its true name (AWS allows
    /// only `a-zA-Z0-9:_-` in a thing name).
    ThingNameWith(char),
}

impl ResponseFault {
    /// Applies to the accepted answers of the two certificate APIs only.
    pub(crate) fn alters_certificate_answers(self) -> bool {
        matches!(
            self,
            ResponseFault::MalformedJson
                | ResponseFault::CertificateForAnotherKey
                | ResponseFault::WrongCertificateId
                | ResponseFault::OversizedPayload
        )
    }
}

impl std::fmt::Display for ResponseFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseFault::MalformedJson => f.write_str("malformed-json"),
            ResponseFault::CertificateForAnotherKey => f.write_str("certificate-for-another-key"),
            ResponseFault::WrongCertificateId => f.write_str("wrong-certificate-id"),
            ResponseFault::OversizedPayload => f.write_str("oversized-payload"),
            ResponseFault::DropResponses(n) => write!(f, "drop-responses:{n}"),
            ResponseFault::ThrottleFirst(n) => write!(f, "throttle-first:{n}"),
            ResponseFault::ThingNameWith(c) => write!(f, "thing-name-with:{c}"),
        }
    }
}

impl std::str::FromStr for ResponseFault {
    type Err = String;
    /// `malformed-json`, `certificate-for-another-key`,
    /// `wrong-certificate-id`, `oversized-payload`, `drop-responses:N`,
    /// `throttle-first:N`, `thing-name-with:C` (the `Display` form).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let count = |n: &str| {
            n.parse::<u32>()
                .map_err(|_| format!("{s:?}: the count after ':' must be a number"))
        };
        Ok(match s.split_once(':') {
            None => match s {
                "malformed-json" => ResponseFault::MalformedJson,
                "certificate-for-another-key" => ResponseFault::CertificateForAnotherKey,
                "wrong-certificate-id" => ResponseFault::WrongCertificateId,
                "oversized-payload" => ResponseFault::OversizedPayload,
                _ => return Err(format!("unknown response fault {s:?}: use malformed-json, certificate-for-another-key, wrong-certificate-id, oversized-payload, drop-responses:N, throttle-first:N or thing-name-with:C")),
            },
            Some(("drop-responses", n)) => ResponseFault::DropResponses(count(n)?),
            Some(("throttle-first", n)) => ResponseFault::ThrottleFirst(count(n)?),
            Some(("thing-name-with", c)) => {
                let mut chars = c.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => ResponseFault::ThingNameWith(c),
                    _ => return Err(format!("{s:?}: one character must follow ':'")),
                }
            }
            Some(_) => return Err(format!("unknown response fault {s:?}: use drop-responses:N, throttle-first:N or thing-name-with:C")),
        })
    }
}

/// The default [`EmulatorConfig::certificate_validity`]: unbounded, so
/// that issued certificates end on AWS's fixed date,
/// [`AWS_NOT_AFTER_UNIX`] (2049-12-31 23:59:59 UTC).
pub const DEFAULT_CERTIFICATE_VALIDITY: Duration = Duration::MAX;

/// 2049-12-31 23:59:59 UTC, the notAfter of every certificate AWS IoT's
/// CreateKeysAndCertificate and CreateCertificateFromCsr issue; no
/// certificate the emulator issues ends later.
pub const AWS_NOT_AFTER_UNIX: i64 = 2_524_607_999;

/// The topic filter of rotation reports read by the report rule
/// ([`EmulatorConfig::rotation_report_rule`]).
pub const ROTATION_REPORT_FILTER: &str = "things/+/rotation";

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Holds `registry.sqlite3` (CA, certificates, things, policies, templates).
    pub data_dir: PathBuf,
    /// Address both MQTT listeners bind (loopback by default).
    pub bind: IpAddr,
    /// Listener without ALPN (AWS's 8883); 0 picks a free port.
    pub port: u16,
    /// Listener that requires ALPN `x-amzn-mqtt-ca` (AWS's 443); 0 picks a free port.
    pub alpn_port: u16,
    /// Port of the control-plane HTTP API (README, "Control-plane API"); 0
    /// picks a free port. The listener always starts.
    pub api_port: u16,
    /// Address the control-plane API binds: loopback only (127.0.0.1 by
    /// default), because it does not check SigV4 signatures;
    /// [`Emulator::start`](crate::Emulator::start) refuses any other.
    pub api_bind: IpAddr,
    /// Lifetime of an ownership token; certificates never registered are deleted after it.
    pub token_ttl: Duration,
    pub token_reuse: TokenReuse,
    pub throttle: ThrottleConfig,
    pub hook_timeout: Duration,
    /// Extra environment variables of the pre-provisioning hook, set after
    /// (and so overriding) the ones the emulator sets (`AWS_ENDPOINT_URL_IOT`,
    /// `AWS_REGION`, ...; see README); everything else is inherited.
    pub hook_environment: Vec<(String, String)>,
    /// Hook and certificate provider programs running at once, at most
    /// (default 16); a request finding them all busy is answered
    /// `ThrottlingException` (429) rather than queued.
    pub programs_at_once: usize,
    /// A smaller keep-alive asked by a client counts as this (AWS: 30 s).
    /// Lower it only to test keep-alive enforcement quickly.
    pub min_keep_alive_secs: u16,
    /// How often live connections are checked against certificate statuses
    /// and policies changed by another process.
    pub poll_interval: Duration,
    /// Used in ARNs matched by policies.
    pub region: String,
    pub account: String,
    /// Test-only: wrong or lost answers of the provisioning APIs (see
    /// [`ResponseFault`]). `None` (the default) answers correctly.
    pub response_fault: Option<ResponseFault>,
    /// Lifetime of the certificates CreateCertificateFromCsr and
    /// CreateKeysAndCertificate issue, in whole seconds (a fraction rounds
    /// up, at least 1 s): notAfter = issuance + this, never after
    /// 2049-12-31 23:59:59 UTC (AWS's fixed notAfter, which the default
    /// [`DEFAULT_CERTIFICATE_VALIDITY`] gives); notBefore = issuance minus a
    /// clock-skew allowance of a tenth of the validity, at most 60 s.
    pub certificate_validity: Duration,
    /// The backend rule standing in for a customer's function that reacts
    /// to rotation reports on `things/<thing>/rotation` (on by default; see
    /// README). Not an AWS service.
    pub rotation_report_rule: bool,
    /// How many RSA-2048 keys CreateKeysAndCertificate keeps made ahead of
    /// time, refilled by a background thread (default
    /// [`DEFAULT_RSA_KEY_POOL`]); a request finding the pool empty makes its
    /// key itself. 0: no pool, every request makes its key (0.3 to 1 s).
    pub rsa_key_pool: usize,
    /// Test-only: latency, jitter and cuts on every MQTT connection (see
    /// [`LinkSimulation`]); the default is off (no relay at all).
    /// [`Emulator::start`](crate::Emulator::start) refuses a disconnect
    /// rate outside 0 to 1.
    pub link: LinkSimulation,
    /// Test-only: keep a record of the MQTT packets each connection sends
    /// (types, topics and filters, never payloads; bounded), read with
    /// [`EmulatorHandle::packet_log`](crate::EmulatorHandle::packet_log).
    /// Off by default.
    pub record_packets: bool,
    /// Serve clients whose ClientHello has no SNI extension (one that
    /// connects by IP address, say). Off by default: AWS IoT Core's
    /// endpoints require SNI, and the emulator refuses such a client at
    /// the handshake (a `handshake_failure` alert) on both listeners.
    pub allow_no_sni: bool,
    /// Test-only: keep every private key CreateKeysAndCertificate sends (the
    /// PEM as sent), read with
    /// [`EmulatorHandle::issued_keys`](crate::EmulatorHandle::issued_keys),
    /// and every certificate ownership token, read with
    /// [`EmulatorHandle::issued_tokens`](crate::EmulatorHandle::issued_tokens),
    /// for tests that look for them in a device's memory. Never on in
    /// `serve`. Off by default.
    pub record_issued_keys: bool,
}

/// The default [`EmulatorConfig::rsa_key_pool`].
pub const DEFAULT_RSA_KEY_POOL: usize = 8;

impl EmulatorConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmulatorConfig {
            data_dir: data_dir.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            alpn_port: 0,
            api_port: 0,
            api_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            token_ttl: Duration::from_secs(3600),
            token_reuse: TokenReuse::Reject,
            throttle: ThrottleConfig::default(),
            hook_timeout: Duration::from_secs(5),
            hook_environment: Vec::new(),
            programs_at_once: 16,
            min_keep_alive_secs: 30,
            poll_interval: Duration::from_millis(500),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            response_fault: None,
            certificate_validity: DEFAULT_CERTIFICATE_VALIDITY,
            rotation_report_rule: true,
            rsa_key_pool: DEFAULT_RSA_KEY_POOL,
            link: LinkSimulation::default(),
            record_packets: false,
            allow_no_sni: false,
            record_issued_keys: false,
        }
    }
}
