//! Fleet provisioning template engine: validates a template when it is
//! registered, evaluates it for one RegisterThing call, and applies a thing
//! resource's `OverrideSettings` to a thing that already exists.
//!
//! Grammar and functions follow the IoT developer guide (`provision-template`).
//! Choices made where AWS documents nothing are summarised here:
//!
//! - Size: at most 10,240 characters (CreateProvisioningTemplate's
//!   `templateBody` length constraint counts characters).
//! - Parameters: only `Type: "String"` is accepted (the fleet provisioning
//!   API's parameters are a string-to-string map); `Default` must be a string.
//!   Allowed parameter keys: `Type`, `Default`, `Description`. The pseudo
//!   parameter `AWS::IoT::Certificate::Id` may be declared (the console's
//!   templates do) and always takes the certificate's id, whatever the device
//!   sends. Request parameters the template does not declare are ignored.
//! - Every declared parameter without a `Default` must be provided, whether
//!   or not it is used.
//! - `Ref` to a resource gives the thing's name, the certificate's id or the
//!   policy's name (a policy with only a `PolicyDocument` cannot be referred to).
//! - Literal numbers and booleans are taken as their JSON text ("1", "true").
//! - `Fn::Sub` treats `${!x}` as the literal `${x}`; `${X.Attr}` is refused.
//! - `AWS::IoT::Certificate` may only carry `CertificateId` and `Status`
//!   (AWS: "Only certificate IDs can be used with a fleet provisioning
//!   template"; `CertificateSigningRequest`, `CertificatePem` and
//!   `CACertificatePem` are refused, naming that rule); `Status` absent
//!   means Active (RegisterThing exists to activate the certificate); only
//!   ACTIVE and INACTIVE, in any case, are accepted. Its `OverrideSettings`
//!   may hold `Status` (DO_NOTHING, REPLACE, FAIL; AWS documents it without
//!   saying what it means for fleet provisioning): it is accepted and has no
//!   effect, since the certificate RegisterThing registers is always the
//!   new PENDING_ACTIVATION one of the ownership token, never an existing
//!   certificate with a status of its own; the template's `Status` is what
//!   it gets. A policy resource takes no `OverrideSettings`.
//! - `AWS::IoT::Thing` takes `ThingName`, `AttributePayload`,
//!   `ThingTypeName`, `ThingGroups`, `BillingGroup` and `PackageVersions`.
//!   AWS documents `PackageVersions` without its shape: an expression, or an
//!   object of package names to expressions (or objects of them), is
//!   accepted and its expressions checked; it is not applied (the emulator
//!   has no Software Package Catalog).
//! - A property AWS does not document for the resource's type is refused,
//!   naming the property, the type and the ones allowed.
//! - `OverrideSettings` absent, or a key absent: `DO_NOTHING`. Values are
//!   accepted in any case. `FAIL` fails only when the template would change the
//!   existing value, so a device repeating an identical registration (lost
//!   response) succeeds. `REPLACE` replaces with what the template gives, an
//!   empty map, list or no type included. `MERGE` on attributes: the template's
//!   value wins for a key present in both; on groups: union, existing first.
//! - A `PolicyDocument` given as an object is taken literally (functions
//!   inside it are not evaluated); to put template values into a document, give
//!   it as `Fn::Sub` over the document's text. Either way the document must pass
//!   [`PolicyDocument::parse`](crate::policy::PolicyDocument::parse).
//! - Names are checked against the registry's patterns at evaluation: thing,
//!   thing type, group and billing group names `[a-zA-Z0-9:_-]{1,128}`.
//!
//! Where things are: [`Template::parse`] in `parse.rs` (one function per
//! section and per resource type), the static checks of expressions in
//! `check.rs`, the expression syntax both read in `expr.rs`,
//! [`Template::evaluate`] in `eval.rs`, [`apply_overrides`] in
//! `overrides.rs`, the types in `model.rs` and the errors in `error.rs`.

mod check;
mod error;
mod eval;
mod expr;
mod model;
mod names;
mod overrides;
mod parse;

pub use error::TemplateError;
pub use model::{
    CertStatusSpec, CertificateSpec, OverrideAction, OverrideSettings, PolicySpec,
    ProvisioningPlan, Template, ThingSpec,
};
pub use names::NamedObjects;
pub use overrides::{apply_overrides, ExistingThing};
pub use parse::validate_name;

/// Largest template body accepted, in characters.
pub const MAX_TEMPLATE_CHARS: usize = 10_240;
/// The pseudo parameter holding the id of the certificate being registered.
pub const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";
