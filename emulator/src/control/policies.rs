//! Policies: CreatePolicy and GetPolicy. A document is checked by the same
//! parser as the admin CLI's `policies create` and RegisterThing's, so all
//! three refuse the same documents with the same message.

use serde_json::json;

use super::error::{ApiError, ErrorKind};
use super::request::ApiRequest;
use super::{ControlPlane, Reply};
use crate::policy::PolicyDocument;
use crate::registry::RegistryError;

/// The `policyName` of a path: 1 to 128 of `[\w+=,.@-]` (the model's
/// pattern).
fn policy_name<'a>(req: &ApiRequest, name: &'a str) -> Result<&'a str, ApiError> {
    let valid = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(ApiError::invalid(format!(
            "{}: policyName {name:?} must be 1 to 128 characters of [a-zA-Z0-9_+=,.@-]",
            req.operation
        )))
    }
}

fn policy_arn(cp: &ControlPlane, name: &str) -> String {
    format!("arn:aws:iot:{}:{}:policy/{name}", cp.region, cp.account)
}

/// `POST /policies/{policyName}`: `policyDocument` (required), `tags`
/// (accepted, not kept). A document the policy engine refuses is a
/// `MalformedPolicyException` whose message names the element; a name
/// already taken is a `ResourceAlreadyExistsException`, as on AWS (the
/// admin CLI replaces instead).
pub(super) fn create_policy(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = policy_name(req, req.label("policyName"))?;
    let body = req.json_body()?;
    let document = body
        .string("policyDocument")?
        .ok_or_else(|| ApiError::invalid(format!("{op}: policyDocument is required")))?;
    PolicyDocument::parse(document).map_err(|e| {
        ApiError::new(
            ErrorKind::MalformedPolicy,
            format!("{op}: policy {name}: {e}"),
        )
    })?;
    // Insert-only: a check then a replace would let two creates of one
    // name both succeed, the second overwriting the first's document.
    match cp.registry.insert_policy(name, document) {
        Err(RegistryError::AlreadyExists { .. }) => {
            return Err(ApiError::new(
                ErrorKind::ResourceAlreadyExists,
                format!("{op}: policy {name} already exists"),
            ))
        }
        other => other?,
    }
    Ok(Reply::Json(json!({
        "policyName": name,
        "policyArn": policy_arn(cp, name),
        "policyDocument": document,
        "policyVersionId": "1",
    })))
}

/// `GET /policies/{policyName}`.
pub(super) fn get_policy(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let name = policy_name(req, req.label("policyName"))?;
    let p = cp
        .registry
        .policy(name)?
        .ok_or_else(|| ApiError::not_found(format!("policy {name} cannot be found")))?;
    Ok(Reply::Json(json!({
        "policyName": p.policy_name,
        "policyArn": policy_arn(cp, &p.policy_name),
        "policyDocument": p.document,
        "defaultVersionId": "1",
    })))
}
