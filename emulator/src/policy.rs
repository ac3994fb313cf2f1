//! PLACEHOLDER for the IoT policy engine: written in another worktree and
//! replaced at merge. Only the interface matters here; matching is minimal
//! (`*` and `?` wildcards, three policy variables, explicit Deny wins).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy document is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("policy document is invalid: {0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    RetainPublish,
}

impl Action {
    fn iam_name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
        }
    }
}

#[derive(Debug, Clone)]
struct Statement {
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PolicyDocument {
    statements: Vec<Statement>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

impl PolicyDocument {
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let v: Value = serde_json::from_str(json)?;
        let stmts = match v.get("Statement") {
            Some(Value::Array(a)) => a.clone(),
            Some(o @ Value::Object(_)) => vec![o.clone()],
            _ => return Err(PolicyError::Invalid("missing Statement".into())),
        };
        let mut statements = Vec::new();
        for s in stmts {
            let allow = match s.get("Effect").and_then(Value::as_str) {
                Some("Allow") => true,
                Some("Deny") => false,
                _ => return Err(PolicyError::Invalid("Effect must be Allow or Deny".into())),
            };
            statements.push(Statement {
                allow,
                actions: strings(s.get("Action")),
                resources: strings(s.get("Resource")),
            });
        }
        Ok(PolicyDocument { statements })
    }
}

pub struct RequestContext<'a> {
    pub region: &'a str,
    pub account: &'a str,
    pub client_id: &'a str,
    pub thing_name: Option<&'a str>,
    pub cert_subject: &'a [(String, String)],
    pub cert_issuer: &'a [(String, String)],
    pub certificate_id: Option<&'a str>,
}

pub fn resource_arn(ctx: &RequestContext, action: Action, name: &str) -> String {
    let kind = match action {
        Action::Connect => "client",
        Action::Subscribe => "topicfilter",
        _ => "topic",
    };
    format!(
        "arn:aws:iot:{}:{}:{}/{}",
        ctx.region, ctx.account, kind, name
    )
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

fn substitute(resource: &str, ctx: &RequestContext) -> Option<String> {
    let mut out = resource.to_owned();
    let cn = ctx
        .cert_subject
        .iter()
        .find(|(k, _)| k == "CommonName")
        .map(|(_, v)| v.as_str());
    for (var, value) in [
        ("${iot:ClientId}", Some(ctx.client_id)),
        ("${iot:Connection.Thing.ThingName}", ctx.thing_name),
        ("${iot:Certificate.Subject.CommonName}", cn),
    ] {
        if out.contains(var) {
            out = out.replace(var, value?);
        }
    }
    Some(out)
}

pub fn is_allowed(
    policies: &[PolicyDocument],
    action: Action,
    name: &str,
    ctx: &RequestContext,
) -> bool {
    let arn = resource_arn(ctx, action, name);
    let mut allowed = false;
    for st in policies.iter().flat_map(|p| &p.statements) {
        let action_matches = st
            .actions
            .iter()
            .any(|a| glob(a.as_bytes(), action.iam_name().as_bytes()));
        if !action_matches {
            continue;
        }
        let resource_matches = st
            .resources
            .iter()
            .any(|r| substitute(r, ctx).is_some_and(|r| glob(r.as_bytes(), arn.as_bytes())));
        if resource_matches {
            if !st.allow {
                return false;
            }
            allowed = true;
        }
    }
    allowed
}
