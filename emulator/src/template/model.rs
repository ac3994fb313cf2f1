//! What a validated template holds ([`Template`] and its resource
//! definitions, still expressions) and what evaluating it gives
//! ([`ProvisioningPlan`] and its specs, plain values).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What to do with one property of a thing that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OverrideAction {
    #[default]
    DoNothing,
    Replace,
    Fail,
    Merge,
}

/// A thing resource's `OverrideSettings`; absent keys are `DoNothing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverrideSettings {
    pub attribute_payload: OverrideAction,
    pub thing_type_name: OverrideAction,
    pub thing_groups: OverrideAction,
}

/// The thing a RegisterThing call creates or updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingSpec {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    pub thing_type_name: Option<String>,
    pub thing_groups: Vec<String>,
    pub billing_group: Option<String>,
    pub overrides: OverrideSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatusSpec {
    Active,
    Inactive,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSpec {
    pub certificate_id: String,
    pub status: CertStatusSpec,
}

/// A policy to attach to the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySpec {
    /// An existing policy, by name.
    Named(String),
    /// A policy defined in the template; `document` is JSON text that
    /// [`PolicyDocument::parse`](crate::policy::PolicyDocument::parse) accepts.
    Document {
        name: Option<String>,
        document: String,
    },
}

/// Everything one RegisterThing call does to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningPlan {
    pub thing: Option<ThingSpec>,
    pub certificate: Option<CertificateSpec>,
    pub policies: Vec<PolicySpec>,
    pub device_configuration: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub(super) struct ThingDef {
    pub(super) path: String,
    pub(super) name: Value,
    pub(super) attributes: Vec<(String, Value)>,
    pub(super) thing_type: Option<Value>,
    pub(super) groups: Option<Value>,
    pub(super) billing_group: Option<Value>,
    pub(super) overrides: OverrideSettings,
}

#[derive(Clone, Debug)]
pub(super) struct CertDef {
    pub(super) path: String,
    pub(super) id: Value,
    pub(super) status: Option<Value>,
}

#[derive(Clone, Debug)]
pub(super) enum PolicyDocDef {
    /// An object, already serialised and validated.
    Literal(String),
    /// A string or an expression giving the document's text.
    Expr(Value),
}

#[derive(Clone, Debug)]
pub(super) struct PolicyDef {
    pub(super) path: String,
    pub(super) name: Option<Value>,
    pub(super) document: Option<PolicyDocDef>,
}

/// A validated provisioning template.
#[derive(Clone, Debug)]
pub struct Template {
    /// Declared parameters and their defaults (the pseudo parameter excluded).
    pub(super) parameters: BTreeMap<String, Option<String>>,
    pub(super) mappings: Map<String, Value>,
    /// Logical resource name -> the expression `Ref` to it gives.
    pub(super) resource_refs: BTreeMap<String, Option<(String, Value)>>,
    pub(super) thing: Option<ThingDef>,
    pub(super) certificate: Option<CertDef>,
    pub(super) policies: Vec<PolicyDef>,
    pub(super) device_configuration: Vec<(String, Value)>,
}

impl Template {
    /// Names of the declared parameters (the pseudo parameter excluded).
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.parameters.keys().map(String::as_str)
    }
}
