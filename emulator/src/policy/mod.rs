//! AWS IoT policy engine: parses policy documents and decides whether an MQTT
//! request (connect, publish, subscribe, receive, retained publish) is allowed.
//!
//! Evaluation follows the IoT developer guide (`iot-policies`, `pub-sub-policy`,
//! `iot-action-resources`, `iot-policy-variables`) and IAM's policy grammar:
//!
//! - everything is denied unless an `Allow` statement matches, and any matching
//!   `Deny` wins over every `Allow`, across all policies given;
//! - a statement matches when the request's action is one of its `Action`s (or
//!   none of its `NotAction`s), its resource ARN matches one of its `Resource`s
//!   (or none of its `NotResource`s), and its `Condition` holds
//!   ([`condition`]);
//! - in resources `*` matches any run of characters (`/` included) and `?` exactly
//!   one; MQTT `+` and `#` are ordinary characters; matching is case-sensitive;
//! - policy variables ([`keys`]) are substituted in resources and condition
//!   values; thing variables have a value only when the client id is the name
//!   of a thing attached to the certificate.
//!
//! Choices made where AWS documents nothing (each also noted where it is made):
//!
//! - Action names are matched case-insensitively (IAM treats action names so);
//!   actions of other services (`greengrass:*`, `iot:GetThingShadow`) are
//!   accepted in documents but never match an MQTT request.
//! - A substituted variable value is literal: a client id containing `*` or `?`
//!   does not widen a grant. `${*}`, `${?}` and `${$}` stand for a literal `*`,
//!   `?` and `$` as in IAM.
//! - A variable with no value never widens what a policy grants (fail closed):
//!   in an `Allow`, a `Resource` entry with one is skipped, a `NotResource` with
//!   one makes the statement match nothing, and so does a negated condition
//!   value with one (a positive one is skipped); in a `Deny`, any `Resource`,
//!   `NotResource` or condition value with one makes that part match, so an
//!   unattached client cannot escape a Deny written for things. AWS documents
//!   only that such a variable "is not substituted"; see `Unresolved`.
//! - An unknown statement key, condition operator, condition key or policy
//!   variable is refused when the policy is created, naming its path and what
//!   is accepted, so that a typo never silently grants or denies.

mod condition;
mod context;
mod duplicate_keys;
mod keys;
mod pattern;

pub use context::{CertificateFacts, ConnectedThing, RequestContext};

use condition::Condition;
use pattern::{glob_match, literal_pattern, Template};

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// The only policy language version AWS IoT accepts.
pub const POLICY_VERSION: &str = "2012-10-17";

/// Largest policy document AWS IoT accepts, in characters other than white space.
pub const MAX_POLICY_CHARS: usize = 2048;

/// A JSON syntax error, kept whole (line, column, category) for the
/// errors that stay `Clone` and comparable ([`PolicyError`],
/// [`TemplateError`](crate::template::TemplateError)): shared, and equal
/// when both errors say the same thing at the same place.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct JsonError(Arc<serde_json::Error>);

impl JsonError {
    /// The underlying parser error.
    pub fn get(&self) -> &serde_json::Error {
        &self.0
    }
}

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> Self {
        JsonError(Arc::new(e))
    }
}

impl PartialEq for JsonError {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.get(), other.get());
        Arc::ptr_eq(&self.0, &other.0)
            || (a.classify() == b.classify()
                && a.line() == b.line()
                && a.column() == b.column()
                && a.to_string() == b.to_string())
    }
}

impl Eq for JsonError {}

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not JSON.
    #[error("policy document is not valid JSON: {0}")]
    Json(#[source] JsonError),
    /// Longer than [`MAX_POLICY_CHARS`] without its white space.
    #[error("policy document is {size} characters long without white space; the limit is {MAX_POLICY_CHARS}")]
    TooLarge { size: usize },
    /// The JSON does not follow the policy grammar; `path` names the element.
    #[error("policy document {path}: {message}")]
    Invalid { path: String, message: String },
}

impl PolicyError {
    /// The AWS error code CreatePolicy answers with for this error.
    pub fn error_code(&self) -> &'static str {
        "MalformedPolicyException"
    }

    fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An MQTT action an IoT policy can allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    RetainPublish,
}

impl Action {
    /// The action's name in policy documents, e.g. `iot:Publish`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
        }
    }

    /// The resource type the action applies to (`client`, `topic`, `topicfilter`).
    pub fn resource_type(self) -> &'static str {
        match self {
            Action::Connect => "client",
            Action::Publish | Action::Receive | Action::RetainPublish => "topic",
            Action::Subscribe => "topicfilter",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// What a part of a statement (a resource, a condition value) whose policy
/// variable has no value for this request does to that part: chosen by the
/// statement's effect so that a missing value never grants more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// `Allow`: the part cannot be shown to match, so it does not.
    NoMatch,
    /// `Deny`: the part cannot be shown not to match, so it does.
    Match,
}

impl From<Effect> for Unresolved {
    fn from(effect: Effect) -> Unresolved {
        match effect {
            Effect::Allow => Unresolved::NoMatch,
            Effect::Deny => Unresolved::Match,
        }
    }
}

/// `Action` or `NotAction`: lower-cased action patterns.
#[derive(Clone, Debug)]
enum Actions {
    Action(Vec<String>),
    NotAction(Vec<String>),
}

#[derive(Clone, Debug)]
enum Resources {
    Resource(Vec<Template>),
    NotResource(Vec<Template>),
}

#[derive(Clone, Debug)]
struct Statement {
    effect: Effect,
    actions: Actions,
    resources: Resources,
    condition: Condition,
}

/// A parsed and validated IoT policy document.
#[derive(Clone, Debug)]
pub struct PolicyDocument {
    statements: Vec<Statement>,
}

impl PolicyDocument {
    /// Parses and validates a policy document.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        // AWS IoT's quota: 2048 characters, white space excluded.
        let size = json.chars().filter(|c| !c.is_whitespace()).count();
        if size > MAX_POLICY_CHARS {
            return Err(PolicyError::TooLarge { size });
        }
        let value: Value = serde_json::from_str(json).map_err(|e| PolicyError::Json(e.into()))?;
        // `Value` keeps the last of duplicate keys; the text may say more.
        if let Some((object, key)) = duplicate_keys::first_duplicate(json) {
            return Err(PolicyError::invalid(
                object,
                format!(
                    "key \"{key}\" appears more than once; keep one (JSON keys must be unique)"
                ),
            ));
        }
        let root = value
            .as_object()
            .ok_or_else(|| PolicyError::invalid("(root)", "must be a JSON object"))?;
        for key in root.keys() {
            // `Id` is part of the IAM grammar and harmless; anything else is a typo.
            if !matches!(key.as_str(), "Version" | "Statement" | "Id") {
                return Err(PolicyError::invalid(
                    key,
                    "unknown top-level key (allowed: Version, Statement, Id)",
                ));
            }
        }
        match root.get("Version") {
            Some(Value::String(v)) if v == POLICY_VERSION => {}
            Some(other) => {
                return Err(PolicyError::invalid(
                    "Version",
                    format!("must be \"{POLICY_VERSION}\", found {other}"),
                ))
            }
            None => {
                return Err(PolicyError::invalid(
                    "Version",
                    format!("is required and must be \"{POLICY_VERSION}\""),
                ))
            }
        }
        let statements = match root.get("Statement") {
            Some(Value::Object(s)) => vec![parse_statement("Statement", s)?],
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let path = format!("Statement[{i}]");
                    match s {
                        Value::Object(s) => parse_statement(&path, s),
                        _ => Err(PolicyError::invalid(path, "must be an object")),
                    }
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => {
                return Err(PolicyError::invalid("Statement", "must not be empty"))
            }
            Some(_) => {
                return Err(PolicyError::invalid(
                    "Statement",
                    "must be an object or a list of objects",
                ))
            }
            None => return Err(PolicyError::invalid("Statement", "is required")),
        };
        Ok(PolicyDocument { statements })
    }
}

/// The keys a statement may have.
const STATEMENT_KEYS: &str = "Sid, Effect, Action or NotAction, Resource or NotResource, Condition";

fn parse_statement(path: &str, s: &Map<String, Value>) -> Result<Statement, PolicyError> {
    for key in s.keys() {
        if !matches!(
            key.as_str(),
            "Sid" | "Effect" | "Action" | "NotAction" | "Resource" | "NotResource" | "Condition"
        ) {
            // `Principal` too: an IoT policy's principal is what it is attached to.
            return Err(PolicyError::invalid(
                format!("{path}.{key}"),
                format!("unknown statement key (allowed: {STATEMENT_KEYS})"),
            ));
        }
    }
    let effect = match s.get("Effect") {
        Some(Value::String(e)) if e == "Allow" => Effect::Allow,
        Some(Value::String(e)) if e == "Deny" => Effect::Deny,
        Some(other) => {
            return Err(PolicyError::invalid(
                format!("{path}.Effect"),
                format!("must be \"Allow\" or \"Deny\", found {other}"),
            ))
        }
        None => {
            return Err(PolicyError::invalid(
                format!("{path}.Effect"),
                "is required",
            ))
        }
    };
    let actions = match (s.get("Action"), s.get("NotAction")) {
        (Some(_), Some(_)) => {
            return Err(PolicyError::invalid(
                path,
                "has both Action and NotAction; use one",
            ))
        }
        (Some(a), None) => Actions::Action(action_list(a, &format!("{path}.Action"))?),
        (None, Some(a)) => Actions::NotAction(action_list(a, &format!("{path}.NotAction"))?),
        (None, None) => {
            return Err(PolicyError::invalid(
                format!("{path}.Action"),
                "is required (or NotAction)",
            ))
        }
    };
    let resources = match (s.get("Resource"), s.get("NotResource")) {
        (Some(_), Some(_)) => {
            return Err(PolicyError::invalid(
                path,
                "has both Resource and NotResource; use one",
            ))
        }
        (Some(r), None) => Resources::Resource(resource_list(r, &format!("{path}.Resource"))?),
        (None, Some(r)) => {
            Resources::NotResource(resource_list(r, &format!("{path}.NotResource"))?)
        }
        (None, None) => {
            return Err(PolicyError::invalid(
                path,
                "needs a Resource or a NotResource",
            ))
        }
    };
    let condition = match s.get("Condition") {
        Some(c) => Condition::parse(&format!("{path}.Condition"), c)?,
        None => Condition::default(),
    };
    Ok(Statement {
        effect,
        actions,
        resources,
        condition,
    })
}

fn string_or_list(value: Option<&Value>, path: &str) -> Result<Vec<String>, PolicyError> {
    match value {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(PolicyError::invalid(
                    format!("{path}[{i}]"),
                    "must be a string",
                )),
            })
            .collect(),
        Some(Value::Array(_)) => Err(PolicyError::invalid(path, "must not be empty")),
        Some(_) => Err(PolicyError::invalid(
            path,
            "must be a string or a list of strings",
        )),
        None => Err(PolicyError::invalid(path, "is required")),
    }
}

fn action_list(value: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    let actions = string_or_list(Some(value), path)?;
    for (i, a) in actions.iter().enumerate() {
        if a != "*" && !a.contains(':') {
            return Err(PolicyError::invalid(
                format!("{path}[{i}]"),
                format!(
                    "\"{a}\" is not an action name of the form service:Action (e.g. iot:Publish)"
                ),
            ));
        }
    }
    Ok(actions
        .into_iter()
        .map(|a| a.to_ascii_lowercase())
        .collect())
}

fn resource_list(value: &Value, path: &str) -> Result<Vec<Template>, PolicyError> {
    let list = string_or_list(Some(value), path)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        // AWS accepts only `*` or an ARN here; a bare `topic/x` would never match.
        if r != "*" && !r.starts_with("arn:") {
            return Err(PolicyError::invalid(
                format!("{path}[{i}]"),
                format!("\"{r}\" must be \"*\" or an ARN such as arn:aws:iot:us-east-1:123456789012:topic/a/b"),
            ));
        }
        out.push(
            Template::parse(r)
                .map_err(|message| PolicyError::invalid(format!("{path}[{i}]"), message))?,
        );
    }
    Ok(out)
}

/// The ARN of the resource `action` applies to, e.g.
/// `arn:aws:iot:us-east-1:123456789012:topic/a/b` for a publish to `a/b`.
pub fn resource_arn(ctx: &RequestContext, action: Action, name: &str) -> String {
    format!(
        "arn:aws:iot:{}:{}:{}/{}",
        ctx.region,
        ctx.account,
        action.resource_type(),
        name
    )
}

/// Whether `policies` together allow `action` on `name` (a client id, topic or
/// topic filter) for the connection described by `ctx`.
pub fn is_allowed(
    policies: &[PolicyDocument],
    action: Action,
    name: &str,
    ctx: &RequestContext,
) -> bool {
    let arn = resource_arn(ctx, action, name);
    let action_name = action.name().to_ascii_lowercase();
    let mut allowed = false;
    for statement in policies.iter().flat_map(|p| p.statements.iter()) {
        let unresolved = Unresolved::from(statement.effect);
        if !actions_match(&statement.actions, &action_name)
            || !resources_match(&statement.resources, &arn, ctx, unresolved)
            || !statement.condition.holds(ctx, unresolved)
        {
            continue;
        }
        match statement.effect {
            Effect::Deny => return false,
            Effect::Allow => allowed = true,
        }
    }
    allowed
}

fn actions_match(actions: &Actions, action_name: &str) -> bool {
    let any = |list: &[String]| {
        list.iter()
            .any(|pattern| glob_match(&literal_pattern(pattern), action_name))
    };
    match actions {
        Actions::Action(list) => any(list),
        Actions::NotAction(list) => !any(list),
    }
}

fn resources_match(
    resources: &Resources,
    arn: &str,
    ctx: &RequestContext,
    unresolved: Unresolved,
) -> bool {
    match resources {
        Resources::Resource(list) => list.iter().any(|r| match r.pattern(ctx) {
            Some(p) => glob_match(&p, arn),
            None => unresolved == Unresolved::Match,
        }),
        Resources::NotResource(list) => {
            let mut patterns = Vec::with_capacity(list.len());
            for r in list {
                match r.pattern(ctx) {
                    Some(p) => patterns.push(p),
                    // Unknown exclusions: the statement cannot tell what it
                    // leaves out, so it applies to everything (Deny) or
                    // nothing (Allow).
                    None => return unresolved == Unresolved::Match,
                }
            }
            !patterns.iter().any(|p| glob_match(p, arn))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_keep_their_source() {
        let e = PolicyDocument::parse("{not json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("policy document is not valid JSON: key must be a string"),
            "{e}"
        );
        let PolicyError::Json(json) = &e else {
            panic!("{e:?}")
        };
        assert_eq!((json.get().line(), json.get().column()), (1, 2));
        let source = std::error::Error::source(&e).expect("the JSON error");
        assert!(source.is::<JsonError>());
        // Equal when they say the same at the same place.
        assert_eq!(e, PolicyDocument::parse("{not json").unwrap_err());
        assert_eq!(e.clone(), e);
        assert_ne!(e, PolicyDocument::parse("{\"a\": tru").unwrap_err());
    }
}
