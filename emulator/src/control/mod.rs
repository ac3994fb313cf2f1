//! The AWS IoT control-plane API over HTTP, in the shape boto3 and the AWS
//! CLI speak: REST-JSON as in botocore's service model
//! `iot/2015-05-28/service-2.json` (paths, methods, query strings, headers,
//! members, error types and their HTTP statuses), on the same [`Registry`]
//! the MQTT side and the admin CLI use, so a change through one is seen by
//! the others at once.
//!
//! **SigV4 signatures are not checked**: anyone who can reach the port can
//! change the registry. That is why the listener binds loopback addresses
//! only (`EmulatorConfig::api_bind`; `Emulator::start` refuses any other).
//!
//! One file per idea: [`server`] (HTTP), [`router`] (the route table),
//! [`error`] (AWS's error shape), [`request`] (decoding a request),
//! [`pagination`], and one per resource: [`things`], [`certificates`],
//! [`principals`], [`groups`] (thing groups, thing types, billing groups),
//! [`policies`], [`providers`] (certificate providers). A new operation
//! is a row in [`router::ROUTES`] and a function in its resource's file.

mod certificates;
mod error;
mod groups;
mod pagination;
mod policies;
mod principals;
mod providers;
mod request;
mod router;
mod server;
mod things;

pub(crate) use server::serve;

use crate::config::EmulatorConfig;
use crate::registry::Registry;

/// What every operation reads: the registry and the names in ARNs.
pub(crate) struct ControlPlane {
    registry: Registry,
    region: String,
    account: String,
}

impl ControlPlane {
    pub(crate) fn new(registry: Registry, config: &EmulatorConfig) -> Self {
        ControlPlane {
            registry,
            region: config.region.clone(),
            account: config.account.clone(),
        }
    }

    /// `arn:aws:iot:<region>:<account>:thing/<name>`
    fn thing_arn(&self, name: &str) -> String {
        format!("arn:aws:iot:{}:{}:thing/{name}", self.region, self.account)
    }

    /// `arn:aws:iot:<region>:<account>:thinggroup/<name>`
    fn thing_group_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:thinggroup/{name}",
            self.region, self.account
        )
    }

    /// `arn:aws:iot:<region>:<account>:thingtype/<name>`
    fn thing_type_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:thingtype/{name}",
            self.region, self.account
        )
    }

    /// `arn:aws:iot:<region>:<account>:billinggroup/<name>`
    fn billing_group_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:billinggroup/{name}",
            self.region, self.account
        )
    }

    /// `arn:aws:iot:<region>:<account>:cert/<certificateId>`
    fn certificate_arn(&self, id: &str) -> String {
        format!("arn:aws:iot:{}:{}:cert/{id}", self.region, self.account)
    }
}

/// A successful answer: a JSON body, or none (an operation without output,
/// such as UpdateCertificate).
pub(crate) enum Reply {
    Json(serde_json::Value),
    Empty,
}

/// 16 bytes written as a UUID (`8-4-4-4-12` hex digits), the shape of
/// AWS's thing ids, generation ids and request ids.
pub(crate) fn uuid_text(bytes: &[u8]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
