//! Fleet provisioning template engine: validates a template when it is
//! registered, evaluates it for one RegisterThing call, and applies a thing
//! resource's `OverrideSettings` to a thing that already exists.
//!
//! Grammar and functions follow the IoT developer guide (`provision-template`).
//! Choices made where AWS documents nothing are marked "Choice:" below and
//! summarised here:
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
//! - `AWS::IoT::Certificate` may only carry `CertificateId` and `Status`;
//!   `Status` absent means Active (RegisterThing exists to activate the
//!   certificate); only ACTIVE and INACTIVE, in any case, are accepted.
//! - `OverrideSettings` absent, or a key absent: `DO_NOTHING`. Values are
//!   accepted in any case. `FAIL` fails only when the template would change the
//!   existing value, so a device repeating an identical registration (lost
//!   response) succeeds. `REPLACE` replaces with what the template gives, an
//!   empty map, list or no type included. `MERGE` on attributes: the template's
//!   value wins for a key present in both; on groups: union, existing first.
//! - A `PolicyDocument` given as an object is taken literally (functions
//!   inside it are not evaluated); to put template values into a document, give
//!   it as `Fn::Sub` over the document's text. Either way the document must pass
//!   [`PolicyDocument::parse`].
//! - Names are checked against the registry's patterns at evaluation: thing,
//!   thing type, group and billing group names `[a-zA-Z0-9:_-]{1,128}`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::policy::PolicyDocument;

/// Largest template body accepted, in characters.
pub const MAX_TEMPLATE_CHARS: usize = 10_240;
/// The pseudo parameter holding the id of the certificate being registered.
pub const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

const SUPPORTED_FUNCTIONS: &str = "Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub";

/// A template that cannot be registered or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template body is not valid JSON: {0}")]
    Json(String),
    #[error("template body is {size} characters long; the limit is {MAX_TEMPLATE_CHARS}")]
    TooLarge { size: usize },
    #[error("template name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{path}: {function} is not supported in provisioning templates (supported: {SUPPORTED_FUNCTIONS})")]
    UnsupportedFunction { path: String, function: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("parameter {name} was not provided and has no Default in the template")]
    MissingParameter { name: String },
    /// An `OverrideSettings` value of `FAIL` met an existing thing that differs.
    #[error("{0}")]
    ResourceConflict(String),
}

impl TemplateError {
    /// The error code RegisterThing / CreateProvisioningTemplate answers with.
    pub fn error_code(&self) -> &'static str {
        match self {
            TemplateError::ResourceConflict(_) => "ResourceConflictsException",
            _ => "InvalidRequestException",
        }
    }

    fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        TemplateError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Checks a template name: 1 to 36 characters of `[0-9A-Za-z_-]`.
pub fn validate_name(name: &str) -> Result<(), TemplateError> {
    let err = |reason: &str| {
        Err(TemplateError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return err("it is empty; use 1 to 36 characters of [0-9A-Za-z_-]");
    }
    if name.chars().count() > 36 {
        return err("it is longer than 36 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return err("only the characters [0-9A-Za-z_-] are allowed");
    }
    Ok(())
}

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
    /// [`PolicyDocument::parse`] accepts.
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

/// The registry's view of a thing, before and after overrides.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExistingThing {
    pub attributes: BTreeMap<String, String>,
    pub thing_type_name: Option<String>,
    pub thing_groups: Vec<String>,
}

/// Applies `spec` to a thing that already exists, following `spec.overrides`.
pub fn apply_overrides(
    existing: &ExistingThing,
    spec: &ThingSpec,
) -> Result<ExistingThing, TemplateError> {
    let conflict = |what: &str| {
        TemplateError::ResourceConflict(format!(
            "thing {} already exists with a different {what} and the template's OverrideSettings for {what} is FAIL",
            spec.thing_name
        ))
    };
    let attributes = match spec.overrides.attribute_payload {
        OverrideAction::DoNothing => existing.attributes.clone(),
        OverrideAction::Replace => spec.attributes.clone(),
        OverrideAction::Merge => {
            let mut merged = existing.attributes.clone();
            merged.extend(spec.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
            merged
        }
        OverrideAction::Fail => {
            if existing.attributes != spec.attributes {
                return Err(conflict("AttributePayload"));
            }
            existing.attributes.clone()
        }
    };
    let thing_type_name = match spec.overrides.thing_type_name {
        OverrideAction::DoNothing => existing.thing_type_name.clone(),
        OverrideAction::Replace => spec.thing_type_name.clone(),
        OverrideAction::Fail => {
            if existing.thing_type_name != spec.thing_type_name {
                return Err(conflict("ThingTypeName"));
            }
            existing.thing_type_name.clone()
        }
        // Refused when the template is parsed; kept total for hand-built specs.
        OverrideAction::Merge => {
            return Err(TemplateError::invalid(
                "OverrideSettings.ThingTypeName",
                "MERGE is only valid for AttributePayload and ThingGroups",
            ))
        }
    };
    let thing_groups = match spec.overrides.thing_groups {
        OverrideAction::DoNothing => existing.thing_groups.clone(),
        OverrideAction::Replace => spec.thing_groups.clone(),
        OverrideAction::Merge => {
            let mut groups = existing.thing_groups.clone();
            for g in &spec.thing_groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
            groups
        }
        OverrideAction::Fail => {
            let old: BTreeSet<_> = existing.thing_groups.iter().collect();
            let new: BTreeSet<_> = spec.thing_groups.iter().collect();
            if old != new {
                return Err(conflict("ThingGroups"));
            }
            existing.thing_groups.clone()
        }
    };
    Ok(ExistingThing {
        attributes,
        thing_type_name,
        thing_groups,
    })
}

#[derive(Clone, Debug)]
struct ThingDef {
    path: String,
    name: Value,
    attributes: Vec<(String, Value)>,
    thing_type: Option<Value>,
    groups: Option<Value>,
    billing_group: Option<Value>,
    overrides: OverrideSettings,
}

#[derive(Clone, Debug)]
struct CertDef {
    path: String,
    id: Value,
    status: Option<Value>,
}

#[derive(Clone, Debug)]
enum PolicyDocDef {
    /// An object, already serialised and validated.
    Literal(String),
    /// A string or an expression giving the document's text.
    Expr(Value),
}

#[derive(Clone, Debug)]
struct PolicyDef {
    path: String,
    name: Option<Value>,
    document: Option<PolicyDocDef>,
}

/// A validated provisioning template.
#[derive(Clone, Debug)]
pub struct Template {
    /// Declared parameters and their defaults (the pseudo parameter excluded).
    parameters: BTreeMap<String, Option<String>>,
    mappings: Map<String, Value>,
    /// Logical resource name -> the expression `Ref` to it gives.
    resource_refs: BTreeMap<String, Option<(String, Value)>>,
    thing: Option<ThingDef>,
    certificate: Option<CertDef>,
    policies: Vec<PolicyDef>,
    device_configuration: Vec<(String, Value)>,
}

/// Names a `Ref` or `${}` may use while the template is checked.
struct Scope<'a> {
    parameters: &'a BTreeMap<String, Option<String>>,
    resources: &'a BTreeMap<String, Option<(String, Value)>>,
    mappings: &'a Map<String, Value>,
}

impl Scope<'_> {
    fn check_name(&self, name: &str, path: &str) -> Result<(), TemplateError> {
        if name == CERTIFICATE_ID_PARAMETER || self.parameters.contains_key(name) {
            return Ok(());
        }
        match self.resources.get(name) {
            Some(Some(_)) => Ok(()),
            Some(None) => Err(TemplateError::invalid(
                path,
                format!("resource {name} has no PolicyName, so it cannot be referred to"),
            )),
            None if name.starts_with("iot:") => Err(TemplateError::invalid(
                path,
                format!("{name} is a policy variable, not a template name: write ${{!{name}}} in Fn::Sub to keep it literal"),
            )),
            None => Err(TemplateError::invalid(
                path,
                format!(
                    "{name} is neither a declared parameter, {CERTIFICATE_ID_PARAMETER}, nor a resource"
                ),
            )),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The function name and argument when `v` is an intrinsic function object.
fn as_intrinsic<'v>(
    v: &'v Value,
    path: &str,
) -> Result<Option<(&'v str, &'v Value)>, TemplateError> {
    let Value::Object(obj) = v else {
        return Ok(None);
    };
    let is_fn = |k: &str| k == "Ref" || k.starts_with("Fn::");
    match obj.iter().next() {
        Some((k, arg)) if obj.len() == 1 && is_fn(k) => Ok(Some((k.as_str(), arg))),
        _ => {
            if let Some(k) = obj.keys().find(|k| is_fn(k)) {
                return Err(TemplateError::invalid(
                    path,
                    format!("an object holding {k} must have no other key"),
                ));
            }
            Ok(None)
        }
    }
}

fn args<'v>(
    arg: &'v Value,
    n: usize,
    function: &str,
    shape: &str,
    path: &str,
) -> Result<&'v [Value], TemplateError> {
    match arg {
        Value::Array(a) if a.len() == n => Ok(a),
        _ => Err(TemplateError::invalid(
            path,
            format!("{function} takes {shape}, found {}", compact(arg)),
        )),
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SubPart {
    Lit(String),
    Var(String),
}

/// Splits an `Fn::Sub` string into literal text and `${Name}` references.
fn parse_sub(s: &str, path: &str) -> Result<Vec<SubPart>, TemplateError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        lit.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            TemplateError::invalid(path, format!("unterminated ${{ in Fn::Sub string {s:?}"))
        })?;
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            lit.push_str("${");
            lit.push_str(literal);
            lit.push('}');
        } else if name.is_empty() {
            return Err(TemplateError::invalid(path, "empty ${} in Fn::Sub string"));
        } else if name.contains('.') && !name.starts_with("AWS::") {
            return Err(TemplateError::invalid(
                path,
                format!("${{{name}}}: attribute references are not supported in Fn::Sub; write ${{!{name}}} for the literal text"),
            ));
        } else {
            if !lit.is_empty() {
                parts.push(SubPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(SubPart::Var(name.to_string()));
        }
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(SubPart::Lit(lit));
    }
    Ok(parts)
}

/// Checks an expression that must give a list: a literal list or a function.
fn check_list_expr(v: &Value, path: &str, scope: &Scope) -> Result<(), TemplateError> {
    match v {
        Value::Array(_) | Value::Object(_) => check_expr(v, path, scope),
        other => Err(TemplateError::invalid(
            path,
            format!("expected a list, found {}", type_name(other)),
        )),
    }
}

/// Checks an expression that must give a string or a list.
fn check_expr(v: &Value, path: &str, scope: &Scope) -> Result<(), TemplateError> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        Value::Null => Err(TemplateError::invalid(path, "null is not a value")),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_expr(item, &format!("{path}[{i}]"), scope)),
        Value::Object(_) => {
            let Some((function, arg)) = as_intrinsic(v, path)? else {
                return Err(TemplateError::invalid(
                    path,
                    "expected a string, a list or an intrinsic function, found an object",
                ));
            };
            let fpath = format!("{path}.{function}");
            match function {
                "Ref" => match arg {
                    Value::String(name) => scope.check_name(name, &fpath),
                    _ => Err(TemplateError::invalid(
                        fpath,
                        "Ref takes a name as a string",
                    )),
                },
                "Fn::Join" => {
                    let a = args(arg, 2, function, "[delimiter, [values]]", &fpath)?;
                    check_expr(&a[0], &format!("{fpath}[0]"), scope)?;
                    check_list_expr(&a[1], &format!("{fpath}[1]"), scope)
                }
                "Fn::Select" => {
                    let a = args(arg, 2, function, "[index, [values]]", &fpath)?;
                    match &a[0] {
                        Value::Number(n) if n.as_u64().is_none() => {
                            return Err(TemplateError::invalid(
                                format!("{fpath}[0]"),
                                format!("index {n} is not a non-negative integer"),
                            ))
                        }
                        Value::String(s) if s.parse::<usize>().is_err() => {
                            return Err(TemplateError::invalid(
                                format!("{fpath}[0]"),
                                format!("index {s:?} is not a non-negative integer"),
                            ))
                        }
                        other => check_expr(other, &format!("{fpath}[0]"), scope)?,
                    }
                    check_list_expr(&a[1], &format!("{fpath}[1]"), scope)
                }
                "Fn::Split" => {
                    let a = args(arg, 2, function, "[delimiter, string]", &fpath)?;
                    if a[0] == Value::String(String::new()) {
                        return Err(TemplateError::invalid(
                            format!("{fpath}[0]"),
                            "the delimiter must not be empty",
                        ));
                    }
                    check_expr(&a[0], &format!("{fpath}[0]"), scope)?;
                    check_expr(&a[1], &format!("{fpath}[1]"), scope)
                }
                "Fn::FindInMap" => {
                    let a = args(arg, 3, function, "[map, key1, key2]", &fpath)?;
                    for (i, item) in a.iter().enumerate() {
                        check_expr(item, &format!("{fpath}[{i}]"), scope)?;
                    }
                    if let Value::String(map) = &a[0] {
                        if !scope.mappings.contains_key(map) {
                            return Err(TemplateError::invalid(
                                format!("{fpath}[0]"),
                                format!("no mapping named {map} in Mappings"),
                            ));
                        }
                    }
                    Ok(())
                }
                "Fn::Sub" => {
                    let (text, vars) = match arg {
                        Value::String(s) => (s, None),
                        Value::Array(a) if a.len() == 2 => match (&a[0], &a[1]) {
                            (Value::String(s), Value::Object(vars)) => (s, Some(vars)),
                            _ => {
                                return Err(TemplateError::invalid(
                                    fpath,
                                    "Fn::Sub takes a string or [string, {name: value}]",
                                ))
                            }
                        },
                        _ => {
                            return Err(TemplateError::invalid(
                                fpath,
                                "Fn::Sub takes a string or [string, {name: value}]",
                            ))
                        }
                    };
                    if let Some(vars) = vars {
                        for (k, v) in vars {
                            check_expr(v, &format!("{fpath}[1].{k}"), scope)?;
                        }
                    }
                    for part in parse_sub(text, &fpath)? {
                        if let SubPart::Var(name) = part {
                            if !vars.is_some_and(|m| m.contains_key(&name)) {
                                scope.check_name(&name, &fpath)?;
                            }
                        }
                    }
                    Ok(())
                }
                other => Err(TemplateError::UnsupportedFunction {
                    path: path.to_string(),
                    function: other.to_string(),
                }),
            }
        }
    }
}

/// Names of resources an expression refers to (for the cycle check).
fn referenced_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| referenced_names(i, out)),
        Value::Object(obj) => {
            for (k, arg) in obj {
                match (k.as_str(), arg) {
                    ("Ref", Value::String(name)) => out.push(name.clone()),
                    ("Fn::Sub", _) => {
                        let text = match arg {
                            Value::String(s) => Some(s.as_str()),
                            Value::Array(a) => a.first().and_then(Value::as_str),
                            _ => None,
                        };
                        if let Some(text) = text {
                            if let Ok(parts) = parse_sub(text, "") {
                                for p in parts {
                                    if let SubPart::Var(n) = p {
                                        out.push(n);
                                    }
                                }
                            }
                        }
                        referenced_names(arg, out);
                    }
                    _ => referenced_names(arg, out),
                }
            }
        }
        _ => {}
    }
}

fn get_obj<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, TemplateError> {
    v.as_object().ok_or_else(|| {
        TemplateError::invalid(path, format!("must be an object, found {}", type_name(v)))
    })
}

fn parse_override_action(v: &Value, path: &str) -> Result<OverrideAction, TemplateError> {
    let s = v.as_str().ok_or_else(|| {
        TemplateError::invalid(path, "must be DO_NOTHING, REPLACE, FAIL or MERGE")
    })?;
    match s.to_ascii_uppercase().as_str() {
        "DO_NOTHING" => Ok(OverrideAction::DoNothing),
        "REPLACE" => Ok(OverrideAction::Replace),
        "FAIL" => Ok(OverrideAction::Fail),
        "MERGE" => Ok(OverrideAction::Merge),
        _ => Err(TemplateError::invalid(
            path,
            format!("{s:?} is not one of DO_NOTHING, REPLACE, FAIL, MERGE"),
        )),
    }
}

fn parse_overrides(v: &Value, path: &str) -> Result<OverrideSettings, TemplateError> {
    let obj = get_obj(v, path)?;
    let mut settings = OverrideSettings::default();
    let mut seen = BTreeSet::new();
    for (key, value) in obj {
        let kpath = format!("{path}.{key}");
        let canonical =
            match key.as_str() {
                "AttributePayload" | "ATTRIBUTE_PAYLOAD" => "AttributePayload",
                "ThingTypeName" | "THING_TYPE_NAME" => "ThingTypeName",
                "ThingGroups" | "THING_GROUPS" => "ThingGroups",
                _ => return Err(TemplateError::invalid(
                    kpath,
                    "unknown override key (allowed: AttributePayload, ThingTypeName, ThingGroups)",
                )),
            };
        if !seen.insert(canonical) {
            return Err(TemplateError::invalid(
                kpath,
                format!("{canonical} is given twice"),
            ));
        }
        let action = parse_override_action(value, &kpath)?;
        match canonical {
            "AttributePayload" => settings.attribute_payload = action,
            "ThingGroups" => settings.thing_groups = action,
            _ => {
                if action == OverrideAction::Merge {
                    return Err(TemplateError::invalid(
                        kpath,
                        "MERGE is only valid for AttributePayload and ThingGroups",
                    ));
                }
                settings.thing_type_name = action;
            }
        }
    }
    Ok(settings)
}

fn allow_keys(obj: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), TemplateError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(TemplateError::invalid(
                format!("{path}.{k}"),
                format!("unknown key (allowed: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

impl Template {
    /// Parses and validates a template body, as CreateProvisioningTemplate does.
    pub fn parse(json: &str) -> Result<Self, TemplateError> {
        let size = json.chars().count();
        if size > MAX_TEMPLATE_CHARS {
            return Err(TemplateError::TooLarge { size });
        }
        let value: Value =
            serde_json::from_str(json).map_err(|e| TemplateError::Json(e.to_string()))?;
        let root = get_obj(&value, "(root)")?;
        for key in root.keys() {
            match key.as_str() {
                "Parameters" | "Mappings" | "Resources" | "DeviceConfiguration" => {}
                "Conditions" => {
                    return Err(TemplateError::invalid(
                        "Conditions",
                        "Conditions is not supported in provisioning templates",
                    ))
                }
                other => {
                    return Err(TemplateError::invalid(
                        other,
                        "unknown top-level key (allowed: Parameters, Mappings, Resources, DeviceConfiguration)",
                    ))
                }
            }
        }

        let mut parameters = BTreeMap::new();
        if let Some(p) = root.get("Parameters") {
            for (name, def) in get_obj(p, "Parameters")? {
                let path = format!("Parameters.{name}");
                let def = get_obj(def, &path)?;
                allow_keys(def, &["Type", "Default", "Description"], &path)?;
                match def.get("Type") {
                    Some(Value::String(t)) if t == "String" => {}
                    Some(other) => {
                        return Err(TemplateError::invalid(
                            format!("{path}.Type"),
                            format!("only \"String\" is supported, found {other}"),
                        ))
                    }
                    None => {
                        return Err(TemplateError::invalid(
                            format!("{path}.Type"),
                            "is required (\"String\")",
                        ))
                    }
                }
                let default = match def.get("Default") {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(TemplateError::invalid(
                            format!("{path}.Default"),
                            format!("must be a string, found {}", type_name(other)),
                        ))
                    }
                };
                if name != CERTIFICATE_ID_PARAMETER {
                    parameters.insert(name.clone(), default);
                }
            }
        }

        let mut mappings = Map::new();
        if let Some(m) = root.get("Mappings") {
            for (map, level1) in get_obj(m, "Mappings")? {
                for (k1, level2) in get_obj(level1, &format!("Mappings.{map}"))? {
                    for (k2, v) in get_obj(level2, &format!("Mappings.{map}.{k1}"))? {
                        let ok = match v {
                            Value::String(_) => true,
                            Value::Array(a) => a.iter().all(Value::is_string),
                            _ => false,
                        };
                        if !ok {
                            return Err(TemplateError::invalid(
                                format!("Mappings.{map}.{k1}.{k2}"),
                                "must be a string or a list of strings",
                            ));
                        }
                    }
                }
            }
            mappings = get_obj(m, "Mappings")?.clone();
        }

        let resources = match root.get("Resources") {
            Some(r) => get_obj(r, "Resources")?,
            None => return Err(TemplateError::invalid("Resources", "is required")),
        };

        // First pass: types, and what a Ref to each resource gives.
        let mut resource_refs = BTreeMap::new();
        for (logical, res) in resources {
            let path = format!("Resources.{logical}");
            if parameters.contains_key(logical) || logical == CERTIFICATE_ID_PARAMETER {
                return Err(TemplateError::invalid(
                    path,
                    "a resource must not have the name of a parameter",
                ));
            }
            let res = get_obj(res, &path)?;
            allow_keys(res, &["Type", "Properties", "OverrideSettings"], &path)?;
            let props = match res.get("Properties") {
                Some(p) => get_obj(p, &format!("{path}.Properties"))?,
                None => {
                    return Err(TemplateError::invalid(
                        format!("{path}.Properties"),
                        "is required",
                    ))
                }
            };
            let key = match res.get("Type").and_then(Value::as_str) {
                Some("AWS::IoT::Thing") => "ThingName",
                Some("AWS::IoT::Certificate") => "CertificateId",
                Some("AWS::IoT::Policy") => "PolicyName",
                Some(other) => {
                    return Err(TemplateError::invalid(
                        format!("{path}.Type"),
                        format!("{other} is not a provisioning resource type (AWS::IoT::Thing, AWS::IoT::Certificate, AWS::IoT::Policy)"),
                    ))
                }
                None => {
                    return Err(TemplateError::invalid(
                        format!("{path}.Type"),
                        "is required and must be a string",
                    ))
                }
            };
            let target = props
                .get(key)
                .map(|v| (format!("{path}.Properties.{key}"), v.clone()));
            resource_refs.insert(logical.clone(), target);
        }

        let scope = Scope {
            parameters: &parameters,
            resources: &resource_refs,
            mappings: &mappings,
        };

        let mut thing = None;
        let mut certificate = None;
        let mut policies = Vec::new();
        for (logical, res) in resources {
            let path = format!("Resources.{logical}");
            let res = get_obj(res, &path)?;
            let ppath = format!("{path}.Properties");
            let props = get_obj(&res["Properties"], &ppath)?;
            let kind = res["Type"].as_str().unwrap_or_default();
            if kind != "AWS::IoT::Thing" && res.contains_key("OverrideSettings") {
                return Err(TemplateError::invalid(
                    format!("{path}.OverrideSettings"),
                    "OverrideSettings applies only to AWS::IoT::Thing",
                ));
            }
            let prop = |name: &str| props.get(name).map(|v| (format!("{ppath}.{name}"), v));
            match kind {
                "AWS::IoT::Thing" => {
                    if thing.is_some() {
                        return Err(TemplateError::invalid(
                            path,
                            "a template may declare at most one AWS::IoT::Thing",
                        ));
                    }
                    allow_keys(
                        props,
                        &[
                            "ThingName",
                            "AttributePayload",
                            "ThingTypeName",
                            "ThingGroups",
                            "BillingGroup",
                        ],
                        &ppath,
                    )?;
                    let (npath, name) = prop("ThingName").ok_or_else(|| {
                        TemplateError::invalid(format!("{ppath}.ThingName"), "is required")
                    })?;
                    check_expr(name, &npath, &scope)?;
                    let mut attributes = Vec::new();
                    if let Some((apath, attrs)) = prop("AttributePayload") {
                        for (k, v) in get_obj(attrs, &apath)? {
                            check_expr(v, &format!("{apath}.{k}"), &scope)?;
                            attributes.push((k.clone(), v.clone()));
                        }
                    }
                    let optional = |name: &str| -> Result<Option<Value>, TemplateError> {
                        match prop(name) {
                            Some((p, v)) => {
                                check_expr(v, &p, &scope)?;
                                Ok(Some(v.clone()))
                            }
                            None => Ok(None),
                        }
                    };
                    let thing_type = optional("ThingTypeName")?;
                    let groups = optional("ThingGroups")?;
                    let billing_group = optional("BillingGroup")?;
                    let overrides = match res.get("OverrideSettings") {
                        Some(o) => parse_overrides(o, &format!("{path}.OverrideSettings"))?,
                        None => OverrideSettings::default(),
                    };
                    thing = Some(ThingDef {
                        path: ppath,
                        name: name.clone(),
                        attributes,
                        thing_type,
                        groups,
                        billing_group,
                        overrides,
                    });
                }
                "AWS::IoT::Certificate" => {
                    if certificate.is_some() {
                        return Err(TemplateError::invalid(
                            path,
                            "a template may declare at most one AWS::IoT::Certificate",
                        ));
                    }
                    for k in props.keys() {
                        if k != "CertificateId" && k != "Status" {
                            return Err(TemplateError::invalid(
                                format!("{ppath}.{k}"),
                                "a fleet provisioning template's certificate may only have CertificateId and Status",
                            ));
                        }
                    }
                    let (ipath, id) = prop("CertificateId").ok_or_else(|| {
                        TemplateError::invalid(
                            format!("{ppath}.CertificateId"),
                            format!("is required: {{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}}"),
                        )
                    })?;
                    check_expr(id, &ipath, &scope)?;
                    let status = match prop("Status") {
                        Some((spath, Value::String(s))) => {
                            parse_status(s, &spath)?;
                            Some(Value::String(s.clone()))
                        }
                        Some((spath, v)) => {
                            check_expr(v, &spath, &scope)?;
                            Some(v.clone())
                        }
                        None => None,
                    };
                    certificate = Some(CertDef {
                        path: ppath,
                        id: id.clone(),
                        status,
                    });
                }
                _ => {
                    allow_keys(props, &["PolicyName", "PolicyDocument"], &ppath)?;
                    let name = match prop("PolicyName") {
                        Some((p, v)) => {
                            check_expr(v, &p, &scope)?;
                            Some(v.clone())
                        }
                        None => None,
                    };
                    let document = match prop("PolicyDocument") {
                        Some((dpath, v)) => Some(parse_policy_doc(v, &dpath, &scope)?),
                        None => None,
                    };
                    if name.is_none() && document.is_none() {
                        return Err(TemplateError::invalid(
                            ppath,
                            "a policy needs a PolicyName or a PolicyDocument",
                        ));
                    }
                    policies.push(PolicyDef {
                        path: ppath,
                        name,
                        document,
                    });
                }
            }
        }

        check_ref_cycles(&resource_refs)?;

        let mut device_configuration = Vec::new();
        if let Some(dc) = root.get("DeviceConfiguration") {
            for (k, v) in get_obj(dc, "DeviceConfiguration")? {
                let path = format!("DeviceConfiguration.{k}");
                check_expr(v, &path, &scope)?;
                device_configuration.push((k.clone(), v.clone()));
            }
        }

        Ok(Template {
            parameters,
            mappings,
            resource_refs,
            thing,
            certificate,
            policies,
            device_configuration,
        })
    }

    /// Names of the declared parameters (the pseudo parameter excluded).
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.parameters.keys().map(String::as_str)
    }

    /// Evaluates the template for one RegisterThing call.
    pub fn evaluate(
        &self,
        parameters: &BTreeMap<String, String>,
        certificate_id: &str,
    ) -> Result<ProvisioningPlan, TemplateError> {
        let mut values = BTreeMap::new();
        for (name, default) in &self.parameters {
            match parameters.get(name).or(default.as_ref()) {
                Some(v) => {
                    values.insert(name.clone(), v.clone());
                }
                None => return Err(TemplateError::MissingParameter { name: name.clone() }),
            }
        }
        // The pseudo parameter is the service's, never the device's.
        values.insert(
            CERTIFICATE_ID_PARAMETER.to_string(),
            certificate_id.to_string(),
        );
        let ev = Evaluator {
            template: self,
            values: &values,
        };

        let thing = match &self.thing {
            None => None,
            Some(def) => {
                let p = &def.path;
                let thing_name = ev.string(&def.name, &format!("{p}.ThingName"), &[])?;
                check_registry_name(&thing_name, &format!("{p}.ThingName"), "thing name")?;
                let mut attributes = BTreeMap::new();
                for (k, v) in &def.attributes {
                    let apath = format!("{p}.AttributePayload.{k}");
                    let value = ev.string(v, &apath, &[])?;
                    check_attribute(k, &value, &apath)?;
                    attributes.insert(k.clone(), value);
                }
                let thing_type_name = match &def.thing_type {
                    Some(v) => {
                        let tpath = format!("{p}.ThingTypeName");
                        let t = ev.string(v, &tpath, &[])?;
                        check_registry_name(&t, &tpath, "thing type name")?;
                        Some(t)
                    }
                    None => None,
                };
                let thing_groups = match &def.groups {
                    Some(v) => {
                        let gpath = format!("{p}.ThingGroups");
                        let groups = ev.list(v, &gpath, &[])?;
                        for g in &groups {
                            check_registry_name(g, &gpath, "thing group name")?;
                        }
                        groups
                    }
                    None => Vec::new(),
                };
                let billing_group = match &def.billing_group {
                    Some(v) => {
                        let bpath = format!("{p}.BillingGroup");
                        let b = ev.string(v, &bpath, &[])?;
                        check_registry_name(&b, &bpath, "billing group name")?;
                        Some(b)
                    }
                    None => None,
                };
                Some(ThingSpec {
                    thing_name,
                    attributes,
                    thing_type_name,
                    thing_groups,
                    billing_group,
                    overrides: def.overrides,
                })
            }
        };

        let certificate = match &self.certificate {
            None => None,
            Some(def) => {
                let ipath = format!("{}.CertificateId", def.path);
                let id = ev.string(&def.id, &ipath, &[])?;
                if id != certificate_id {
                    return Err(TemplateError::invalid(
                        ipath,
                        format!("resolves to {id:?}, not the certificate being registered ({certificate_id}); a fleet template must use {{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}}"),
                    ));
                }
                let status = match &def.status {
                    Some(v) => {
                        let spath = format!("{}.Status", def.path);
                        parse_status(&ev.string(v, &spath, &[])?, &spath)?
                    }
                    None => CertStatusSpec::Active,
                };
                Some(CertificateSpec {
                    certificate_id: id,
                    status,
                })
            }
        };

        let mut policies = Vec::new();
        for def in &self.policies {
            let name = match &def.name {
                Some(v) => Some(ev.string(v, &format!("{}.PolicyName", def.path), &[])?),
                None => None,
            };
            let spec = match (&def.document, name) {
                (None, Some(name)) => PolicySpec::Named(name),
                (Some(PolicyDocDef::Literal(doc)), name) => PolicySpec::Document {
                    name,
                    document: doc.clone(),
                },
                (Some(PolicyDocDef::Expr(v)), name) => {
                    let dpath = format!("{}.PolicyDocument", def.path);
                    let document = ev.string(v, &dpath, &[])?;
                    PolicyDocument::parse(&document)
                        .map_err(|e| TemplateError::invalid(dpath, e.to_string()))?;
                    PolicySpec::Document { name, document }
                }
                (None, None) => unreachable!("refused by Template::parse"),
            };
            policies.push(spec);
        }

        let mut device_configuration = BTreeMap::new();
        for (k, v) in &self.device_configuration {
            let value = ev.string(v, &format!("DeviceConfiguration.{k}"), &[])?;
            device_configuration.insert(k.clone(), value);
        }

        Ok(ProvisioningPlan {
            thing,
            certificate,
            policies,
            device_configuration,
        })
    }
}

fn parse_policy_doc(v: &Value, path: &str, scope: &Scope) -> Result<PolicyDocDef, TemplateError> {
    match v {
        Value::Object(_) if as_intrinsic(v, path)?.is_none() => {
            let text = v.to_string();
            PolicyDocument::parse(&text)
                .map_err(|e| TemplateError::invalid(path, e.to_string()))?;
            Ok(PolicyDocDef::Literal(text))
        }
        Value::String(s) => {
            PolicyDocument::parse(s).map_err(|e| TemplateError::invalid(path, e.to_string()))?;
            Ok(PolicyDocDef::Literal(s.clone()))
        }
        _ => {
            check_expr(v, path, scope)?;
            Ok(PolicyDocDef::Expr(v.clone()))
        }
    }
}

fn parse_status(s: &str, path: &str) -> Result<CertStatusSpec, TemplateError> {
    match s.to_ascii_uppercase().as_str() {
        "ACTIVE" => Ok(CertStatusSpec::Active),
        "INACTIVE" => Ok(CertStatusSpec::Inactive),
        _ => Err(TemplateError::invalid(
            path,
            format!("{s:?} is not a certificate status a template may set (ACTIVE or INACTIVE)"),
        )),
    }
}

fn check_registry_name(name: &str, path: &str, what: &str) -> Result<(), TemplateError> {
    let ok = (1..=128).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TemplateError::invalid(
            path,
            format!("{name:?} is not a valid {what} (1 to 128 characters of [a-zA-Z0-9:_-])"),
        ))
    }
}

fn check_attribute(key: &str, value: &str, path: &str) -> Result<(), TemplateError> {
    let key_ok = (1..=128).contains(&key.chars().count())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c));
    if !key_ok {
        return Err(TemplateError::invalid(
            path,
            format!("{key:?} is not a valid attribute name (1 to 128 characters of [a-zA-Z0-9_.,@/:#-])"),
        ));
    }
    let value_ok = value.chars().count() <= 800
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c));
    if !value_ok {
        return Err(TemplateError::invalid(
            path,
            format!("{value:?} is not a valid attribute value (up to 800 characters of [a-zA-Z0-9_.,@/:#=\\[\\]-])"),
        ));
    }
    Ok(())
}

/// Refuses resources whose name, id or policy name refer to each other in a circle.
fn check_ref_cycles(refs: &BTreeMap<String, Option<(String, Value)>>) -> Result<(), TemplateError> {
    fn visit(
        node: &str,
        refs: &BTreeMap<String, Option<(String, Value)>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Result<(), TemplateError> {
        if done.contains(node) {
            return Ok(());
        }
        if stack.iter().any(|s| s == node) {
            stack.push(node.to_string());
            return Err(TemplateError::invalid(
                format!("Resources.{}", stack[0]),
                format!("circular reference: {}", stack.join(" -> ")),
            ));
        }
        let Some(Some((_, expr))) = refs.get(node) else {
            return Ok(());
        };
        stack.push(node.to_string());
        let mut names = Vec::new();
        referenced_names(expr, &mut names);
        for n in names {
            if refs.contains_key(&n) {
                visit(&n, refs, stack, done)?;
            }
        }
        stack.pop();
        done.insert(node.to_string());
        Ok(())
    }
    let mut done = BTreeSet::new();
    for node in refs.keys() {
        visit(node, refs, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

enum Val {
    Str(String),
    List(Vec<String>),
}

struct Evaluator<'a> {
    template: &'a Template,
    values: &'a BTreeMap<String, String>,
}

impl Evaluator<'_> {
    fn string(&self, v: &Value, path: &str, stack: &[&str]) -> Result<String, TemplateError> {
        match self.eval(v, path, stack)? {
            Val::Str(s) => Ok(s),
            Val::List(_) => Err(TemplateError::invalid(
                path,
                "expected a string, found a list",
            )),
        }
    }

    fn list(&self, v: &Value, path: &str, stack: &[&str]) -> Result<Vec<String>, TemplateError> {
        match self.eval(v, path, stack)? {
            Val::List(l) => Ok(l),
            Val::Str(_) => Err(TemplateError::invalid(
                path,
                "expected a list, found a string",
            )),
        }
    }

    fn lookup(&self, name: &str, path: &str, stack: &[&str]) -> Result<String, TemplateError> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        match self.template.resource_refs.get(name) {
            Some(Some((rpath, expr))) => {
                if stack.contains(&name) {
                    return Err(TemplateError::invalid(
                        path,
                        format!("circular reference to {name}"),
                    ));
                }
                let mut inner = stack.to_vec();
                inner.push(name);
                self.string(expr, rpath, &inner)
            }
            _ => Err(TemplateError::invalid(
                path,
                format!("{name} is not defined"),
            )),
        }
    }

    fn eval(&self, v: &Value, path: &str, stack: &[&str]) -> Result<Val, TemplateError> {
        match v {
            Value::String(s) => Ok(Val::Str(s.clone())),
            Value::Number(n) => Ok(Val::Str(n.to_string())),
            Value::Bool(b) => Ok(Val::Str(b.to_string())),
            Value::Null => Err(TemplateError::invalid(path, "null is not a value")),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(item, &format!("{path}[{i}]"), stack))
                .collect::<Result<_, _>>()
                .map(Val::List),
            Value::Object(_) => {
                let Some((function, arg)) = as_intrinsic(v, path)? else {
                    return Err(TemplateError::invalid(
                        path,
                        "expected a string, a list or an intrinsic function, found an object",
                    ));
                };
                let fpath = format!("{path}.{function}");
                let arg_at = |i: usize| -> Result<&Value, TemplateError> {
                    arg.as_array().and_then(|a| a.get(i)).ok_or_else(|| {
                        TemplateError::invalid(
                            &fpath,
                            format!("{function} is missing argument {i}"),
                        )
                    })
                };
                match function {
                    "Ref" => {
                        let name = arg
                            .as_str()
                            .ok_or_else(|| TemplateError::invalid(&fpath, "Ref takes a name"))?;
                        self.lookup(name, &fpath, stack).map(Val::Str)
                    }
                    "Fn::Join" => {
                        let delim = self.string(arg_at(0)?, &format!("{fpath}[0]"), stack)?;
                        let items = self.list(arg_at(1)?, &format!("{fpath}[1]"), stack)?;
                        Ok(Val::Str(items.join(&delim)))
                    }
                    "Fn::Select" => {
                        let ipath = format!("{fpath}[0]");
                        let index = match arg_at(0)? {
                            Value::Number(n) => n.as_u64().and_then(|i| usize::try_from(i).ok()),
                            other => self.string(other, &ipath, stack)?.trim().parse().ok(),
                        }
                        .ok_or_else(|| {
                            TemplateError::invalid(
                                &ipath,
                                "the index must be a non-negative integer",
                            )
                        })?;
                        let items = self.list(arg_at(1)?, &format!("{fpath}[1]"), stack)?;
                        let len = items.len();
                        items.into_iter().nth(index).map(Val::Str).ok_or_else(|| {
                            TemplateError::invalid(
                                &fpath,
                                format!("index {index} is out of range for a list of {len}"),
                            )
                        })
                    }
                    "Fn::Split" => {
                        let delim = self.string(arg_at(0)?, &format!("{fpath}[0]"), stack)?;
                        if delim.is_empty() {
                            return Err(TemplateError::invalid(
                                format!("{fpath}[0]"),
                                "the delimiter must not be empty",
                            ));
                        }
                        let source = self.string(arg_at(1)?, &format!("{fpath}[1]"), stack)?;
                        Ok(Val::List(
                            source.split(delim.as_str()).map(str::to_string).collect(),
                        ))
                    }
                    "Fn::FindInMap" => {
                        let map = self.string(arg_at(0)?, &format!("{fpath}[0]"), stack)?;
                        let k1 = self.string(arg_at(1)?, &format!("{fpath}[1]"), stack)?;
                        let k2 = self.string(arg_at(2)?, &format!("{fpath}[2]"), stack)?;
                        let found = self
                            .template
                            .mappings
                            .get(&map)
                            .and_then(|m| m.get(&k1))
                            .and_then(|m| m.get(&k2))
                            .ok_or_else(|| {
                                TemplateError::invalid(
                                    &fpath,
                                    format!("Mappings has no entry {map}.{k1}.{k2}"),
                                )
                            })?;
                        // Mappings hold only strings and lists of strings (checked by parse).
                        self.eval(found, &format!("Mappings.{map}.{k1}.{k2}"), stack)
                    }
                    "Fn::Sub" => {
                        let (text, vars) = match arg {
                            Value::String(s) => (s.as_str(), None),
                            Value::Array(a) => (
                                a.first().and_then(Value::as_str).unwrap_or_default(),
                                a.get(1).and_then(Value::as_object),
                            ),
                            _ => {
                                return Err(TemplateError::invalid(
                                    &fpath,
                                    "Fn::Sub takes a string or [string, {name: value}]",
                                ))
                            }
                        };
                        let mut out = String::new();
                        for part in parse_sub(text, &fpath)? {
                            match part {
                                SubPart::Lit(s) => out.push_str(&s),
                                SubPart::Var(name) => match vars.and_then(|m| m.get(&name)) {
                                    Some(v) => out.push_str(&self.string(
                                        v,
                                        &format!("{fpath}[1].{name}"),
                                        stack,
                                    )?),
                                    None => out.push_str(&self.lookup(&name, &fpath, stack)?),
                                },
                            }
                        }
                        Ok(Val::Str(out))
                    }
                    other => Err(TemplateError::UnsupportedFunction {
                        path: path.to_string(),
                        function: other.to_string(),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_parts() {
        assert_eq!(
            parse_sub("a-${X}-${!iot:ClientId}", "p").unwrap(),
            vec![
                SubPart::Lit("a-".into()),
                SubPart::Var("X".into()),
                SubPart::Lit("-${iot:ClientId}".into()),
            ]
        );
        assert!(parse_sub("${X", "p").is_err());
        assert!(parse_sub("${}", "p").is_err());
        assert!(parse_sub("${thing.Arn}", "p").is_err());
    }
}
