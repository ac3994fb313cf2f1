//! Evaluating a validated template for one RegisterThing call: parameter
//! values, one function per resource type, the intrinsic functions, and the
//! registry's name patterns the results must fit.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::TemplateError;
use super::expr::{function_object, parse_sub, SubPart};
use super::model::{
    CertDef, CertStatusSpec, CertificateSpec, PolicyDef, PolicyDocDef, PolicySpec,
    ProvisioningPlan, Template, ThingDef, ThingSpec,
};
use super::parse::parse_status;
use super::CERTIFICATE_ID_PARAMETER;
use crate::policy::PolicyDocument;

impl Template {
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
        let thing = self.thing.as_ref().map(|def| ev.thing(def)).transpose()?;
        let certificate = self
            .certificate
            .as_ref()
            .map(|def| ev.certificate(def, certificate_id))
            .transpose()?;
        let policies = self
            .policies
            .iter()
            .map(|def| ev.policy(def))
            .collect::<Result<_, _>>()?;
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

enum Val {
    Str(String),
    List(Vec<String>),
}

struct Evaluator<'a> {
    template: &'a Template,
    values: &'a BTreeMap<String, String>,
}

impl Evaluator<'_> {
    fn thing(&self, def: &ThingDef) -> Result<ThingSpec, TemplateError> {
        let p = &def.path;
        let thing_name = self.string(&def.name, &format!("{p}.ThingName"), &[])?;
        check_registry_name(&thing_name, &format!("{p}.ThingName"), "thing name")?;
        let mut attributes = BTreeMap::new();
        for (k, v) in &def.attributes {
            let apath = format!("{p}.AttributePayload.{k}");
            let value = self.string(v, &apath, &[])?;
            check_attribute(k, &value, &apath)?;
            attributes.insert(k.clone(), value);
        }
        let thing_type_name = match &def.thing_type {
            Some(v) => {
                let tpath = format!("{p}.ThingTypeName");
                let t = self.string(v, &tpath, &[])?;
                check_registry_name(&t, &tpath, "thing type name")?;
                Some(t)
            }
            None => None,
        };
        let thing_groups = match &def.groups {
            Some(v) => {
                let gpath = format!("{p}.ThingGroups");
                let groups = self.list(v, &gpath, &[])?;
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
                let b = self.string(v, &bpath, &[])?;
                check_registry_name(&b, &bpath, "billing group name")?;
                Some(b)
            }
            None => None,
        };
        Ok(ThingSpec {
            thing_name,
            attributes,
            thing_type_name,
            thing_groups,
            billing_group,
            overrides: def.overrides,
        })
    }

    fn certificate(
        &self,
        def: &CertDef,
        certificate_id: &str,
    ) -> Result<CertificateSpec, TemplateError> {
        let ipath = format!("{}.CertificateId", def.path);
        let id = self.string(&def.id, &ipath, &[])?;
        if id != certificate_id {
            return Err(TemplateError::invalid(
                ipath,
                format!("resolves to {id:?}, not the certificate being registered ({certificate_id}); a fleet template must use {{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}}"),
            ));
        }
        let status = match &def.status {
            Some(v) => {
                let spath = format!("{}.Status", def.path);
                parse_status(&self.string(v, &spath, &[])?, &spath)?
            }
            None => CertStatusSpec::Active,
        };
        Ok(CertificateSpec {
            certificate_id: id,
            status,
        })
    }

    fn policy(&self, def: &PolicyDef) -> Result<PolicySpec, TemplateError> {
        let name = match &def.name {
            Some(v) => Some(self.string(v, &format!("{}.PolicyName", def.path), &[])?),
            None => None,
        };
        Ok(match (&def.document, name) {
            (None, Some(name)) => PolicySpec::Named(name),
            (Some(PolicyDocDef::Literal(doc)), name) => PolicySpec::Document {
                name,
                document: doc.clone(),
            },
            (Some(PolicyDocDef::Expr(v)), name) => {
                let dpath = format!("{}.PolicyDocument", def.path);
                let document = self.string(v, &dpath, &[])?;
                PolicyDocument::parse(&document).map_err(|e| TemplateError::policy(dpath, e))?;
                PolicySpec::Document { name, document }
            }
            (None, None) => unreachable!("refused by Template::parse"),
        })
    }

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
                let (function, arg) = function_object(v, path)?;
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
