//! Parsing a template body as CreateProvisioningTemplate does: its
//! sections, one function per resource type (thing, certificate, policy),
//! and the template name.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::check::{check_expr, check_ref_cycles, Scope};
use super::error::TemplateError;
use super::expr::{as_intrinsic, type_name};
use super::model::{
    CertDef, CertStatusSpec, OverrideAction, OverrideSettings, PolicyDef, PolicyDocDef, Template,
    ThingDef,
};
use super::{CERTIFICATE_ID_PARAMETER, MAX_TEMPLATE_CHARS};
use crate::policy::PolicyDocument;

impl Template {
    /// Parses and validates a template body, as CreateProvisioningTemplate does.
    pub fn parse(json: &str) -> Result<Self, TemplateError> {
        let size = json.chars().count();
        if size > MAX_TEMPLATE_CHARS {
            return Err(TemplateError::TooLarge { size });
        }
        let value: Value = serde_json::from_str(json).map_err(|e| TemplateError::Json(e.into()))?;
        let root = get_obj(&value, "(root)")?;
        check_top_level_keys(root)?;
        let parameters = match root.get("Parameters") {
            Some(p) => parse_parameters(p)?,
            None => BTreeMap::new(),
        };
        let mappings = match root.get("Mappings") {
            Some(m) => parse_mappings(m)?,
            None => Map::new(),
        };
        let resources = match root.get("Resources") {
            Some(r) => get_obj(r, "Resources")?,
            None => return Err(TemplateError::invalid("Resources", "is required")),
        };
        let resource_refs = resource_refs(resources, &parameters)?;
        let scope = Scope {
            parameters: &parameters,
            resources: &resource_refs,
            mappings: &mappings,
        };

        let mut thing = None;
        let mut certificate = None;
        let mut policies = Vec::new();
        for (logical, res) in resources {
            let res = Resource::new(logical, res)?;
            if res.kind == "AWS::IoT::Policy" && res.body.contains_key("OverrideSettings") {
                return Err(TemplateError::invalid(
                    format!("{}.OverrideSettings", res.path),
                    "OverrideSettings are not available for policy resources (only for AWS::IoT::Thing and the Status of AWS::IoT::Certificate)",
                ));
            }
            match res.kind {
                "AWS::IoT::Thing" => {
                    if thing.is_some() {
                        return Err(TemplateError::invalid(
                            res.path,
                            "a template may declare at most one AWS::IoT::Thing",
                        ));
                    }
                    thing = Some(parse_thing(&res, &scope)?);
                }
                "AWS::IoT::Certificate" => {
                    if certificate.is_some() {
                        return Err(TemplateError::invalid(
                            res.path,
                            "a template may declare at most one AWS::IoT::Certificate",
                        ));
                    }
                    certificate = Some(parse_certificate(&res, &scope)?);
                }
                _ => policies.push(parse_policy(&res, &scope)?),
            }
        }

        check_ref_cycles(&resource_refs)?;

        let device_configuration = match root.get("DeviceConfiguration") {
            Some(dc) => parse_device_configuration(dc, &scope)?,
            None => Vec::new(),
        };

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
}

fn check_top_level_keys(root: &Map<String, Value>) -> Result<(), TemplateError> {
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
    Ok(())
}

/// `Parameters`: each declared name and its default.
fn parse_parameters(p: &Value) -> Result<BTreeMap<String, Option<String>>, TemplateError> {
    let mut parameters = BTreeMap::new();
    for (name, def) in get_obj(p, "Parameters")? {
        let path = format!("Parameters.{name}");
        let def = get_obj(def, &path)?;
        allow_keys(def, &["Type", "Default", "Description"], &path, "key")?;
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
    Ok(parameters)
}

/// `Mappings`: two levels of keys down to a string or a list of strings.
fn parse_mappings(m: &Value) -> Result<Map<String, Value>, TemplateError> {
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
    Ok(get_obj(m, "Mappings")?.clone())
}

/// First pass over `Resources`: types, and what a Ref to each resource gives.
fn resource_refs(
    resources: &Map<String, Value>,
    parameters: &BTreeMap<String, Option<String>>,
) -> Result<BTreeMap<String, Option<(String, Value)>>, TemplateError> {
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
        allow_keys(
            res,
            &["Type", "Properties", "OverrideSettings"],
            &path,
            "key",
        )?;
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
    Ok(resource_refs)
}

/// One entry of `Resources`, its shape already checked by [`resource_refs`].
struct Resource<'a> {
    /// `Resources.<logical name>`.
    path: String,
    /// `Resources.<logical name>.Properties`.
    ppath: String,
    body: &'a Map<String, Value>,
    props: &'a Map<String, Value>,
    kind: &'a str,
}

impl<'a> Resource<'a> {
    fn new(logical: &str, res: &'a Value) -> Result<Self, TemplateError> {
        let path = format!("Resources.{logical}");
        let body = get_obj(res, &path)?;
        let ppath = format!("{path}.Properties");
        let props = get_obj(&body["Properties"], &ppath)?;
        let kind = body["Type"].as_str().unwrap_or_default();
        Ok(Resource {
            path,
            ppath,
            body,
            props,
            kind,
        })
    }

    /// Each property must be one AWS documents for the resource's type.
    fn allow_properties(&self, allowed: &[&str]) -> Result<(), TemplateError> {
        let what = format!("property of {}", self.kind);
        allow_keys(self.props, allowed, &self.ppath, &what)
    }

    /// A property and its path.
    fn prop(&self, name: &str) -> Option<(String, &'a Value)> {
        self.props
            .get(name)
            .map(|v| (format!("{}.{name}", self.ppath), v))
    }
}

fn parse_thing(res: &Resource, scope: &Scope) -> Result<ThingDef, TemplateError> {
    let ppath = &res.ppath;
    res.allow_properties(&[
        "ThingName",
        "AttributePayload",
        "ThingTypeName",
        "ThingGroups",
        "BillingGroup",
        "PackageVersions",
    ])?;
    let (npath, name) = res
        .prop("ThingName")
        .ok_or_else(|| TemplateError::invalid(format!("{ppath}.ThingName"), "is required"))?;
    check_expr(name, &npath, scope)?;
    let mut attributes = Vec::new();
    if let Some((apath, attrs)) = res.prop("AttributePayload") {
        for (k, v) in get_obj(attrs, &apath)? {
            check_expr(v, &format!("{apath}.{k}"), scope)?;
            attributes.push((k.clone(), v.clone()));
        }
    }
    let optional = |name: &str| -> Result<Option<Value>, TemplateError> {
        match res.prop(name) {
            Some((p, v)) => {
                check_expr(v, &p, scope)?;
                Ok(Some(v.clone()))
            }
            None => Ok(None),
        }
    };
    let thing_type = optional("ThingTypeName")?;
    let groups = optional("ThingGroups")?;
    let billing_group = optional("BillingGroup")?;
    // Checked, then not applied: the emulator has no Software Package
    // Catalog to associate versions with (see mod.rs).
    if let Some((vpath, v)) = res.prop("PackageVersions") {
        check_package_versions(v, &vpath, scope)?;
    }
    let overrides = match res.body.get("OverrideSettings") {
        Some(o) => parse_overrides(o, &format!("{}.OverrideSettings", res.path))?,
        None => OverrideSettings::default(),
    };
    Ok(ThingDef {
        path: ppath.clone(),
        name: name.clone(),
        attributes,
        thing_type,
        groups,
        billing_group,
        overrides,
    })
}

fn parse_certificate(res: &Resource, scope: &Scope) -> Result<CertDef, TemplateError> {
    let ppath = &res.ppath;
    // Documented for AWS::IoT::Certificate, but for JITP and bulk
    // registration templates: "Only certificate IDs can be used with a fleet
    // provisioning template." Named before the general refusal.
    for k in [
        "CertificateSigningRequest",
        "CertificatePem",
        "CACertificatePem",
    ] {
        if res.props.contains_key(k) {
            return Err(TemplateError::invalid(
                format!("{ppath}.{k}"),
                format!("{k} is a property of JITP and bulk registration templates; a fleet provisioning template's AWS::IoT::Certificate is given by CertificateId ({{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}}) and Status only"),
            ));
        }
    }
    res.allow_properties(&["CertificateId", "Status"])?;
    if let Some(o) = res.body.get("OverrideSettings") {
        parse_certificate_overrides(o, &format!("{}.OverrideSettings", res.path))?;
    }
    let (ipath, id) = res.prop("CertificateId").ok_or_else(|| {
        TemplateError::invalid(
            format!("{ppath}.CertificateId"),
            format!("is required: {{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}}"),
        )
    })?;
    check_expr(id, &ipath, scope)?;
    let status = match res.prop("Status") {
        Some((spath, Value::String(s))) => {
            parse_status(s, &spath)?;
            Some(Value::String(s.clone()))
        }
        Some((spath, v)) => {
            check_expr(v, &spath, scope)?;
            Some(v.clone())
        }
        None => None,
    };
    Ok(CertDef {
        path: ppath.clone(),
        id: id.clone(),
        status,
    })
}

fn parse_policy(res: &Resource, scope: &Scope) -> Result<PolicyDef, TemplateError> {
    let ppath = &res.ppath;
    res.allow_properties(&["PolicyName", "PolicyDocument"])?;
    let name = match res.prop("PolicyName") {
        Some((p, v)) => {
            check_expr(v, &p, scope)?;
            Some(v.clone())
        }
        None => None,
    };
    let document = match res.prop("PolicyDocument") {
        Some((dpath, v)) => Some(parse_policy_doc(v, &dpath, scope)?),
        None => None,
    };
    if name.is_none() && document.is_none() {
        return Err(TemplateError::invalid(
            ppath,
            "a policy needs a PolicyName or a PolicyDocument",
        ));
    }
    Ok(PolicyDef {
        path: ppath.clone(),
        name,
        document,
    })
}

fn parse_device_configuration(
    dc: &Value,
    scope: &Scope,
) -> Result<Vec<(String, Value)>, TemplateError> {
    let mut device_configuration = Vec::new();
    for (k, v) in get_obj(dc, "DeviceConfiguration")? {
        let path = format!("DeviceConfiguration.{k}");
        check_expr(v, &path, scope)?;
        device_configuration.push((k.clone(), v.clone()));
    }
    Ok(device_configuration)
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

/// `PackageVersions`: AWS documents it for the thing resource without
/// giving its shape, so an expression (a string, a list, a function) or
/// an object of package names to such values (or to objects of them, like
/// `{"versionName": ..}`) is accepted, every expression in it checked.
fn check_package_versions(v: &Value, path: &str, scope: &Scope) -> Result<(), TemplateError> {
    match v {
        Value::Object(map) if as_intrinsic(v, path)?.is_none() => {
            for (k, item) in map {
                check_package_versions(item, &format!("{path}.{k}"), scope)?;
            }
            Ok(())
        }
        _ => check_expr(v, path, scope),
    }
}

/// A certificate resource's `OverrideSettings`: only `Status`, with
/// DO_NOTHING, REPLACE or FAIL ("MERGE" is valid only for a thing's
/// AttributePayload and ThingGroups). Checked, with no effect on
/// RegisterThing: the certificate it registers is always the one just made
/// with the ownership token, still PENDING_ACTIVATION, so there is no
/// existing status to keep, replace or fail on (see mod.rs).
fn parse_certificate_overrides(v: &Value, path: &str) -> Result<OverrideAction, TemplateError> {
    let obj = get_obj(v, path)?;
    let mut action = OverrideAction::DoNothing;
    for (key, value) in obj {
        let kpath = format!("{path}.{key}");
        if key != "Status" && key != "STATUS" {
            return Err(TemplateError::invalid(
                kpath,
                "unknown override key of AWS::IoT::Certificate (allowed: Status)",
            ));
        }
        action = parse_override_action(value, &kpath)?;
        if action == OverrideAction::Merge {
            return Err(TemplateError::invalid(
                kpath,
                "MERGE is only valid for a thing's AttributePayload and ThingGroups; use DO_NOTHING, REPLACE or FAIL",
            ));
        }
    }
    Ok(action)
}

/// Every key of `obj` (at `path`) must be in `allowed`; the first other one
/// is refused as an unknown `what` (`key`, `property of AWS::IoT::Thing`),
/// naming the allowed ones. The one check for template objects' keys and
/// resources' properties.
fn allow_keys(
    obj: &Map<String, Value>,
    allowed: &[&str],
    path: &str,
    what: &str,
) -> Result<(), TemplateError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(TemplateError::invalid(
            format!("{path}.{k}"),
            format!("unknown {what} (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn parse_policy_doc(v: &Value, path: &str, scope: &Scope) -> Result<PolicyDocDef, TemplateError> {
    match v {
        Value::Object(_) if as_intrinsic(v, path)?.is_none() => {
            let text = v.to_string();
            PolicyDocument::parse(&text).map_err(|e| TemplateError::policy(path, e))?;
            Ok(PolicyDocDef::Literal(text))
        }
        Value::String(s) => {
            PolicyDocument::parse(s).map_err(|e| TemplateError::policy(path, e))?;
            Ok(PolicyDocDef::Literal(s.clone()))
        }
        _ => {
            check_expr(v, path, scope)?;
            Ok(PolicyDocDef::Expr(v.clone()))
        }
    }
}

pub(super) fn parse_status(s: &str, path: &str) -> Result<CertStatusSpec, TemplateError> {
    match s.to_ascii_uppercase().as_str() {
        "ACTIVE" => Ok(CertStatusSpec::Active),
        "INACTIVE" => Ok(CertStatusSpec::Inactive),
        _ => Err(TemplateError::invalid(
            path,
            format!("{s:?} is not a certificate status a template may set (ACTIVE or INACTIVE)"),
        )),
    }
}
