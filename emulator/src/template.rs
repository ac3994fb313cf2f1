//! PLACEHOLDER for the provisioning-template engine: written in another
//! worktree and replaced at merge. Only the interface matters here; this
//! version knows Parameters/Default, Ref (with the certificate-id
//! pseudo-parameter), Fn::Join, the three resource types and
//! DeviceConfiguration.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

impl TemplateError {
    pub fn error_code(&self) -> &'static str {
        match self {
            TemplateError::Conflict(_) => "ResourceConflictsException",
            _ => "InvalidRequestException",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Template {
    body: Value,
}

#[derive(Debug, Clone, Default)]
pub struct ProvisioningPlan {
    pub thing: Option<ThingSpec>,
    pub certificate: Option<CertificateSpec>,
    pub policies: Vec<PolicySpec>,
    pub device_configuration: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ThingSpec {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    pub thing_type_name: Option<String>,
    pub thing_groups: Vec<String>,
    pub billing_group: Option<String>,
    pub overrides: OverrideSettings,
}

#[derive(Debug, Clone)]
pub struct OverrideSettings {
    pub attribute_payload: OverrideAction,
    pub thing_type_name: OverrideAction,
    pub thing_groups: OverrideAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideAction {
    DoNothing,
    Replace,
    Fail,
    Merge,
}

#[derive(Debug, Clone)]
pub struct CertificateSpec {
    pub certificate_id: String,
    pub status: CertStatusSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatusSpec {
    Active,
    Inactive,
}

#[derive(Debug, Clone)]
pub enum PolicySpec {
    Named(String),
    Document {
        name: Option<String>,
        document: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingThing {
    pub attributes: BTreeMap<String, String>,
    pub thing_type_name: Option<String>,
    pub thing_groups: Vec<String>,
}

pub fn validate_name(name: &str) -> Result<(), TemplateError> {
    let ok = (1..=36).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TemplateError::Invalid(format!(
            "template name {name:?} must be 1 to 36 characters of [0-9A-Za-z_-]"
        )))
    }
}

fn override_action(v: Option<&Value>) -> OverrideAction {
    match v
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("REPLACE") => OverrideAction::Replace,
        Some("FAIL") => OverrideAction::Fail,
        Some("MERGE") => OverrideAction::Merge,
        _ => OverrideAction::DoNothing,
    }
}

impl Template {
    pub fn parse(json: &str) -> Result<Self, TemplateError> {
        let body: Value = serde_json::from_str(json)?;
        if !body.get("Resources").is_some_and(Value::is_object) {
            return Err(TemplateError::Invalid("template has no Resources".into()));
        }
        Ok(Template { body })
    }

    fn resolve(
        &self,
        v: &Value,
        params: &BTreeMap<String, String>,
    ) -> Result<Value, TemplateError> {
        match v {
            Value::Object(o) if o.len() == 1 && o.contains_key("Ref") => {
                let name = o["Ref"].as_str().unwrap_or_default();
                params
                    .get(name)
                    .map(|s| Value::String(s.clone()))
                    .ok_or_else(|| TemplateError::Invalid(format!("parameter {name} has no value")))
            }
            Value::Object(o) if o.len() == 1 && o.contains_key("Fn::Join") => {
                let args = o["Fn::Join"].as_array().cloned().unwrap_or_default();
                let delim = args.first().and_then(Value::as_str).unwrap_or_default();
                let parts = match args.get(1) {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| self.resolve(x, params))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => return Err(TemplateError::Invalid("bad Fn::Join".into())),
                };
                let parts: Vec<String> = parts
                    .iter()
                    .map(|p| p.as_str().unwrap_or_default().to_owned())
                    .collect();
                Ok(Value::String(parts.join(delim)))
            }
            Value::Object(o) => {
                let mut out = serde_json::Map::new();
                for (k, v) in o {
                    out.insert(k.clone(), self.resolve(v, params)?);
                }
                Ok(Value::Object(out))
            }
            Value::Array(a) => Ok(Value::Array(
                a.iter()
                    .map(|x| self.resolve(x, params))
                    .collect::<Result<_, _>>()?,
            )),
            other => Ok(other.clone()),
        }
    }

    pub fn evaluate(
        &self,
        parameters: &BTreeMap<String, String>,
        certificate_id: &str,
    ) -> Result<ProvisioningPlan, TemplateError> {
        let mut params = BTreeMap::new();
        if let Some(Value::Object(decl)) = self.body.get("Parameters") {
            for (k, d) in decl {
                if let Some(def) = d.get("Default").and_then(Value::as_str) {
                    params.insert(k.clone(), def.to_owned());
                }
            }
        }
        params.extend(parameters.clone());
        params.insert("AWS::IoT::Certificate::Id".into(), certificate_id.into());
        let mut plan = ProvisioningPlan::default();
        let resources = self.body["Resources"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (_, res) in resources {
            let props = self.resolve(res.get("Properties").unwrap_or(&Value::Null), &params)?;
            let str_of = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_owned);
            match res.get("Type").and_then(Value::as_str) {
                Some("AWS::IoT::Thing") => {
                    let ov = res.get("OverrideSettings");
                    plan.thing = Some(ThingSpec {
                        thing_name: str_of("ThingName")
                            .ok_or_else(|| TemplateError::Invalid("ThingName missing".into()))?,
                        attributes: props
                            .get("AttributePayload")
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| {
                                        (k.clone(), v.as_str().unwrap_or_default().to_owned())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        thing_type_name: str_of("ThingTypeName"),
                        thing_groups: props
                            .get("ThingGroups")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        billing_group: str_of("BillingGroup"),
                        overrides: OverrideSettings {
                            attribute_payload: override_action(
                                ov.and_then(|o| o.get("AttributePayload")),
                            ),
                            thing_type_name: override_action(
                                ov.and_then(|o| o.get("ThingTypeName")),
                            ),
                            thing_groups: override_action(ov.and_then(|o| o.get("ThingGroups"))),
                        },
                    });
                }
                Some("AWS::IoT::Certificate") => {
                    let status = match str_of("Status").map(|s| s.to_ascii_uppercase()).as_deref() {
                        Some("INACTIVE") => CertStatusSpec::Inactive,
                        _ => CertStatusSpec::Active,
                    };
                    plan.certificate = Some(CertificateSpec {
                        certificate_id: str_of("CertificateId")
                            .unwrap_or_else(|| certificate_id.to_owned()),
                        status,
                    });
                }
                Some("AWS::IoT::Policy") => {
                    if let Some(name) =
                        str_of("PolicyName").filter(|_| props.get("PolicyDocument").is_none())
                    {
                        plan.policies.push(PolicySpec::Named(name));
                    } else {
                        let document = match props.get("PolicyDocument") {
                            Some(Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                            None => {
                                return Err(TemplateError::Invalid(
                                    "policy without document".into(),
                                ))
                            }
                        };
                        plan.policies.push(PolicySpec::Document {
                            name: str_of("PolicyName"),
                            document,
                        });
                    }
                }
                other => {
                    return Err(TemplateError::Invalid(format!(
                        "unsupported resource type {other:?}"
                    )))
                }
            }
        }
        if let Some(dc) = self.body.get("DeviceConfiguration") {
            if let Value::Object(m) = self.resolve(dc, &params)? {
                for (k, v) in m {
                    plan.device_configuration.insert(
                        k,
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    );
                }
            }
        }
        Ok(plan)
    }
}

pub fn apply_overrides(
    existing: &ExistingThing,
    spec: &ThingSpec,
) -> Result<ExistingThing, TemplateError> {
    let mut out = existing.clone();
    let fail = |what: &str| {
        Err(TemplateError::Conflict(format!(
            "thing {} already exists and its {what} override is FAIL",
            spec.thing_name
        )))
    };
    match spec.overrides.attribute_payload {
        OverrideAction::DoNothing => {}
        OverrideAction::Replace => out.attributes = spec.attributes.clone(),
        OverrideAction::Merge => out.attributes.extend(spec.attributes.clone()),
        OverrideAction::Fail => {
            if existing.attributes != spec.attributes {
                return fail("AttributePayload");
            }
        }
    }
    match spec.overrides.thing_type_name {
        OverrideAction::Replace | OverrideAction::Merge => {
            out.thing_type_name = spec.thing_type_name.clone()
        }
        OverrideAction::Fail if existing.thing_type_name != spec.thing_type_name => {
            return fail("ThingTypeName")
        }
        _ => {}
    }
    match spec.overrides.thing_groups {
        OverrideAction::Replace => out.thing_groups = spec.thing_groups.clone(),
        OverrideAction::Merge => {
            for g in &spec.thing_groups {
                if !out.thing_groups.contains(g) {
                    out.thing_groups.push(g.clone());
                }
            }
        }
        OverrideAction::Fail if existing.thing_groups != spec.thing_groups => {
            return fail("ThingGroups")
        }
        _ => {}
    }
    Ok(out)
}
