//! prov-agent: hardware-backed AWS IoT Core fleet provisioning and
//! certificate rotation for industrial gateways.
//!
//! The modules follow the flow of the agent: [`config`] reads `config.ini`,
//! [`keystore`] holds every private key in a TPM or PKCS#11 token, [`crypto`]
//! lets rustls and rcgen sign with those keys.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod durable;
pub mod environ;
pub mod error;
pub mod fault;
pub mod hardening;
pub mod keystore;
pub mod logging;
#[cfg(feature = "fault-injection")]
pub mod memdump;
pub mod mqtt;
pub mod provision;
pub mod runtime;
pub mod timefmt;
