//! The expression syntax that both the static checks and the evaluation
//! read: intrinsic-function objects and `Fn::Sub` strings.

use serde_json::Value;

use super::error::TemplateError;

pub(super) fn type_name(v: &Value) -> &'static str {
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
pub(super) fn as_intrinsic<'v>(
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

/// The function name and argument of an object in a place where only an
/// intrinsic function may stand.
pub(super) fn function_object<'v>(
    v: &'v Value,
    path: &str,
) -> Result<(&'v str, &'v Value), TemplateError> {
    as_intrinsic(v, path)?.ok_or_else(|| {
        TemplateError::invalid(
            path,
            "expected a string, a list or an intrinsic function, found an object",
        )
    })
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum SubPart {
    Lit(String),
    Var(String),
}

/// Splits an `Fn::Sub` string into literal text and `${Name}` references.
pub(super) fn parse_sub(s: &str, path: &str) -> Result<Vec<SubPart>, TemplateError> {
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
