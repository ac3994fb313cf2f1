//! Principals, the certificates attached to things: ListThingPrincipals,
//! DetachThingPrincipal, ListPrincipalThings. A principal is named by its
//! ARN, `arn:aws:iot:<region>:<account>:cert/<certificateId>`; the emulator
//! has no other kind (AWS also knows Cognito identities).

use serde_json::{json, Value};

use super::certificates::{certificate_id, certificate_not_found};
use super::error::ApiError;
use super::pagination::{self, Order};
use super::request::ApiRequest;
use super::things::{thing_name, thing_not_found};
use super::{ControlPlane, Reply};

/// The header that carries the principal (the model's `x-amzn-principal`).
const PRINCIPAL_HEADER: &str = "x-amzn-principal";

/// The certificate id of the principal in the request's header; the
/// certificate must exist.
fn principal_certificate(cp: &ControlPlane, req: &ApiRequest) -> Result<String, ApiError> {
    let op = req.operation;
    let arn = req.required_header(PRINCIPAL_HEADER)?;
    let prefix = cp.certificate_arn("");
    let id = match arn.strip_prefix(&prefix) {
        Some(id) => id,
        None if arn.starts_with("arn:aws:iot:") && arn.contains(":cert/") => {
            return Err(ApiError::invalid(format!(
                "{op}: principal {arn} is not of this emulator's region and account: its certificate ARNs start with {prefix}"
            )))
        }
        None => {
            return Err(ApiError::invalid(format!(
                "{op}: principal {arn:?} must be a certificate ARN, {prefix}<certificateId>"
            )))
        }
    };
    let id = certificate_id(req, id)?;
    if cp.registry.certificate_status(&id)?.is_none() {
        return Err(certificate_not_found(&id));
    }
    Ok(id)
}

fn page_size(req: &ApiRequest) -> Result<usize, ApiError> {
    Ok(req
        .query_int("maxResults", 1, pagination::MAX_PAGE_SIZE)?
        .map_or(pagination::DEFAULT_PAGE_SIZE, |n| n as usize))
}

/// `GET /things/{thingName}/principals`: certificate ARNs, by certificate id.
pub(super) fn list_thing_principals(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let name = thing_name(req, req.label("thingName"))?;
    let thing = cp
        .registry
        .thing(name)?
        .ok_or_else(|| thing_not_found(name))?;
    let (page, next) = pagination::page(
        thing.certificates,
        String::clone,
        Order::Ascending,
        req.query("nextToken"),
        page_size(req)?,
        "nextToken",
    )?;
    let principals: Vec<Value> = page
        .iter()
        .map(|id| json!(cp.certificate_arn(id)))
        .collect();
    let mut out = json!({ "principals": principals });
    if let Some(n) = next {
        out["nextToken"] = json!(n);
    }
    Ok(Reply::Json(out))
}

/// `DELETE /things/{thingName}/principals` with header `x-amzn-principal`.
/// Detaching a certificate that is not attached succeeds (nothing to do).
pub(super) fn detach_thing_principal(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let name = thing_name(req, req.label("thingName"))?;
    if cp.registry.thing(name)?.is_none() {
        return Err(thing_not_found(name));
    }
    let id = principal_certificate(cp, req)?;
    cp.registry.detach_thing(name, &id)?;
    Ok(Reply::Json(json!({})))
}

/// `GET /principals/things` with header `x-amzn-principal`: thing names.
pub(super) fn list_principal_things(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let id = principal_certificate(cp, req)?;
    let things = cp
        .registry
        .certificate(&id)?
        .ok_or_else(|| certificate_not_found(&id))?
        .things;
    let (page, next) = pagination::page(
        things,
        String::clone,
        Order::Ascending,
        req.query("nextToken"),
        page_size(req)?,
        "nextToken",
    )?;
    let mut out = json!({ "things": page });
    if let Some(n) = next {
        out["nextToken"] = json!(n);
    }
    Ok(Reply::Json(out))
}
