//! Static checks made when a template is registered: every name an
//! expression refers to exists, every function gets arguments of its shape,
//! and no resource refers to itself through others.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::error::TemplateError;
use super::expr::{function_object, parse_sub, type_name, SubPart};
use super::CERTIFICATE_ID_PARAMETER;

/// Names a `Ref` or `${}` may use while the template is checked.
pub(super) struct Scope<'a> {
    pub(super) parameters: &'a BTreeMap<String, Option<String>>,
    pub(super) resources: &'a BTreeMap<String, Option<(String, Value)>>,
    pub(super) mappings: &'a Map<String, Value>,
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
pub(super) fn check_expr(v: &Value, path: &str, scope: &Scope) -> Result<(), TemplateError> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        Value::Null => Err(TemplateError::invalid(path, "null is not a value")),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_expr(item, &format!("{path}[{i}]"), scope)),
        Value::Object(_) => {
            let (function, arg) = function_object(v, path)?;
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

/// Refuses resources whose name, id or policy name refer to each other in a circle.
pub(super) fn check_ref_cycles(
    refs: &BTreeMap<String, Option<(String, Value)>>,
) -> Result<(), TemplateError> {
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
