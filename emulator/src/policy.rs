//! AWS IoT policy engine: parses policy documents and decides whether an MQTT
//! request (connect, publish, subscribe, receive, retained publish) is allowed.
//!
//! Evaluation follows the IoT developer guide (`iot-policies`, `pub-sub-policy`,
//! `iot-action-resources`, `iot-policy-variables`):
//!
//! - everything is denied unless an `Allow` statement matches, and any matching
//!   `Deny` wins over every `Allow`, across all policies given;
//! - a statement matches when one of its actions matches the request's action and
//!   its `Resource` (or `NotResource`) matches the request's resource ARN;
//! - in resources `*` matches any run of characters (`/` included) and `?` exactly
//!   one; MQTT `+` and `#` are ordinary characters; matching is case-sensitive.
//!
//! Choices made where AWS documents nothing (each also noted where it is made):
//!
//! - Action names are matched case-insensitively (IAM treats action names so);
//!   actions of other services (`greengrass:*`, `iot:GetThingShadow`) are
//!   accepted in documents but never match an MQTT request.
//! - A substituted variable value is literal: a client id containing `*` or `?`
//!   does not widen a grant. `${*}`, `${?}` and `${$}` stand for a literal `*`,
//!   `?` and `$` as in IAM.
//! - A resource whose variable has no value matches nothing. For `Resource` only
//!   that entry is skipped; for `NotResource` the whole statement matches nothing
//!   (it can no longer tell what is excluded). This holds for `Deny` too.
//! - `Condition` is rejected when the policy is parsed, so a policy that relies
//!   on a condition never silently grants more than it says.
//! - When a certificate carries the same subject or issuer field more than once,
//!   `${iot:Certificate.Subject.X}` takes the first value.

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

/// What the server knows about the connection a request comes from.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    pub region: &'a str,
    pub account: &'a str,
    pub client_id: &'a str,
    /// Set only when the client id is the name of a thing attached to the
    /// connection's certificate.
    pub thing_name: Option<&'a str>,
    /// Subject fields, e.g. `("CommonName", "dev1")`, `("Organization", ..)`.
    pub cert_subject: &'a [(String, String)],
    pub cert_issuer: &'a [(String, String)],
    pub certificate_id: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
enum Resources {
    Resource(Vec<String>),
    NotResource(Vec<String>),
}

#[derive(Clone, Debug)]
struct Statement {
    effect: Effect,
    /// Lower-cased action patterns.
    actions: Vec<String>,
    resources: Resources,
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

fn parse_statement(path: &str, s: &Map<String, Value>) -> Result<Statement, PolicyError> {
    for key in s.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Action" | "Resource" | "NotResource" => {}
            "Condition" => {
                return Err(PolicyError::invalid(
                    format!("{path}.Condition"),
                    "Condition is not supported by the emulator; express the rule through resources and policy variables",
                ))
            }
            "NotAction" => {
                return Err(PolicyError::invalid(
                    format!("{path}.NotAction"),
                    "NotAction is not supported by the emulator; list the actions under Action",
                ))
            }
            other => {
                return Err(PolicyError::invalid(
                    format!("{path}.{other}"),
                    "unknown statement key (allowed: Sid, Effect, Action, Resource, NotResource)",
                ))
            }
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
    let actions = string_or_list(s.get("Action"), &format!("{path}.Action"))?;
    for (i, a) in actions.iter().enumerate() {
        if a != "*" && !a.contains(':') {
            return Err(PolicyError::invalid(
                format!("{path}.Action[{i}]"),
                format!(
                    "\"{a}\" is not an action name of the form service:Action (e.g. iot:Publish)"
                ),
            ));
        }
    }
    let actions = actions
        .into_iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
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
    Ok(Statement {
        effect,
        actions,
        resources,
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

fn resource_list(value: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    let list = string_or_list(Some(value), path)?;
    for (i, r) in list.iter().enumerate() {
        // AWS accepts only `*` or an ARN here; a bare `topic/x` would never match.
        if r != "*" && !r.starts_with("arn:") {
            return Err(PolicyError::invalid(
                format!("{path}[{i}]"),
                format!("\"{r}\" must be \"*\" or an ARN such as arn:aws:iot:us-east-1:123456789012:topic/a/b"),
            ));
        }
        if let Err(message) = check_variables(r) {
            return Err(PolicyError::invalid(format!("{path}[{i}]"), message));
        }
    }
    Ok(list)
}

/// Rejects an unterminated `${` so a typo is found when the policy is created.
fn check_variables(resource: &str) -> Result<(), String> {
    let mut rest = resource;
    while let Some(start) = rest.find("${") {
        match rest[start + 2..].find('}') {
            Some(end) => rest = &rest[start + 2 + end + 1..],
            None => return Err(format!("unterminated policy variable in \"{resource}\"")),
        }
    }
    Ok(())
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
        if !statement
            .actions
            .iter()
            .any(|pattern| glob_match(&literal_pattern(pattern), &action_name))
        {
            continue;
        }
        if !resources_match(&statement.resources, &arn, ctx) {
            continue;
        }
        match statement.effect {
            Effect::Deny => return false,
            Effect::Allow => allowed = true,
        }
    }
    allowed
}

fn resources_match(resources: &Resources, arn: &str, ctx: &RequestContext) -> bool {
    match resources {
        Resources::Resource(list) => list
            .iter()
            .any(|r| compile_resource(r, ctx).is_some_and(|p| glob_match(&p, arn))),
        Resources::NotResource(list) => {
            let mut patterns = Vec::with_capacity(list.len());
            for r in list {
                match compile_resource(r, ctx) {
                    Some(p) => patterns.push(p),
                    // Unknown exclusions: match nothing rather than guess.
                    None => return false,
                }
            }
            !patterns.iter().any(|p| glob_match(p, arn))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    AnyRun,
    AnyOne,
}

/// A pattern without variables (action names).
fn literal_pattern(pattern: &str) -> Vec<Tok> {
    pattern
        .chars()
        .map(|c| match c {
            '*' => Tok::AnyRun,
            '?' => Tok::AnyOne,
            c => Tok::Lit(c),
        })
        .collect()
}

/// Substitutes the policy variables of a resource; `None` when one of them has
/// no value for this connection.
fn compile_resource(resource: &str, ctx: &RequestContext) -> Option<Vec<Tok>> {
    let mut out = Vec::with_capacity(resource.len());
    let mut rest = resource;
    while let Some(start) = rest.find("${") {
        out.extend(literal_pattern(&rest[..start]));
        let after = &rest[start + 2..];
        // Checked at parse time, so the closing brace is there.
        let end = after.find('}')?;
        let value = variable_value(&after[..end], ctx)?;
        out.extend(value.chars().map(Tok::Lit));
        rest = &after[end + 1..];
    }
    out.extend(literal_pattern(rest));
    Some(out)
}

fn variable_value(name: &str, ctx: &RequestContext) -> Option<String> {
    let field = |fields: &[(String, String)], key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let value = match name {
        "*" | "?" | "$" => Some(name.to_string()),
        "iot:ClientId" => Some(ctx.client_id.to_string()),
        "iot:Connection.Thing.ThingName" => ctx.thing_name.map(str::to_string),
        // AWS documents this one as "true" or "false".
        "iot:Connection.Thing.IsAttached" => Some(ctx.thing_name.is_some().to_string()),
        "iot:CertificateId" => ctx.certificate_id.map(str::to_string),
        _ => {
            if let Some(key) = name.strip_prefix("iot:Certificate.Subject.") {
                field(ctx.cert_subject, key)
            } else if let Some(key) = name.strip_prefix("iot:Certificate.Issuer.") {
                field(ctx.cert_issuer, key)
            } else {
                // Thing attributes, thing type, SAN fields...: not modelled.
                None
            }
        }
    };
    // An empty value (e.g. an empty client id) would let `client/${iot:ClientId}`
    // degenerate into `client/`; treat it as absent.
    value.filter(|v| !v.is_empty())
}

/// Glob match with `*` (any run, possibly empty) and `?` (exactly one char);
/// iterative with single-star backtracking, linear memory.
fn glob_match(pattern: &[Tok], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Tok::AnyRun) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::AnyOne) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|tok| *tok == Tok::AnyRun)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        glob_match(&literal_pattern(pattern), text)
    }

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

    #[test]
    fn glob_cases() {
        let cases = [
            ("*", "", true),
            ("*", "a/b/c", true),
            ("a*c", "abc", true),
            ("a*c", "a/b/c", true),
            ("a*c", "ab", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "abbc", false),
            ("a/+/b", "a/+/b", true),
            ("a/+/b", "a/x/b", false),
            ("a/#", "a/#", true),
            ("a/#", "a/b", false),
            ("*a*a*", "aXaYa", true),
            ("*ab", "aab", true),
            ("A", "a", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(m(p, t), want, "pattern {p:?} on {t:?}");
        }
    }
}
