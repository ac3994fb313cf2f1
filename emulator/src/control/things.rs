//! Things: CreateThing, DescribeThing, UpdateThing, ListThings.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::pagination::{self, Order};
use super::request::ApiRequest;
use super::{ControlPlane, Reply};
use crate::registry::{valid_thing_name, AttributeUpdate, RegistryError, ThingRecord, ThingUpdate};

/// The `thingName` of a path: 1 to 128 of `[a-zA-Z0-9:_-]`.
pub(super) fn thing_name<'a>(req: &ApiRequest, name: &'a str) -> Result<&'a str, ApiError> {
    if valid_thing_name(name) {
        Ok(name)
    } else {
        Err(ApiError::invalid(format!(
            "{}: thingName {name:?} must be 1 to 128 characters of [a-zA-Z0-9:_-]",
            req.operation
        )))
    }
}

/// The thing named by the path, which must exist.
fn existing_thing(cp: &ControlPlane, req: &ApiRequest) -> Result<ThingRecord, ApiError> {
    let name = thing_name(req, req.label("thingName"))?;
    cp.registry
        .thing(name)?
        .ok_or_else(|| thing_not_found(name))
}

pub(super) fn thing_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("Thing {name} cannot be found."))
}

/// AWS's thingId is a UUID it stores; the emulator derives one from the
/// name, so it is stable across restarts and processes with no column of
/// its own (a thing deleted and made again would get the same id).
pub(super) fn thing_id(name: &str) -> String {
    super::uuid_text(&Sha256::digest(format!("thing-id:{name}").as_bytes())[..16])
}

fn attributes(t: &ThingRecord) -> Value {
    Value::Object(
        t.attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// `GET /things/{thingName}`
pub(super) fn describe_thing(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let t = existing_thing(cp, req)?;
    let mut out = Map::new();
    out.insert("defaultClientId".into(), json!(t.thing_name));
    out.insert("thingName".into(), json!(t.thing_name));
    out.insert("thingId".into(), json!(thing_id(&t.thing_name)));
    out.insert("thingArn".into(), json!(cp.thing_arn(&t.thing_name)));
    if let Some(tt) = &t.thing_type_name {
        out.insert("thingTypeName".into(), json!(tt));
    }
    out.insert("attributes".into(), attributes(&t));
    out.insert("version".into(), json!(t.version));
    if let Some(bg) = &t.billing_group {
        out.insert("billingGroupName".into(), json!(bg));
    }
    Ok(Reply::Json(Value::Object(out)))
}

/// `POST /things/{thingName}`: `attributePayload {attributes}`,
/// `thingTypeName`, `billingGroupName`. Idempotent for the same
/// configuration; `ResourceAlreadyExistsException` for another.
pub(super) fn create_thing(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = thing_name(req, req.label("thingName"))?;
    let body = req.json_body()?;
    let attributes = match body.object("attributePayload")? {
        Some(payload) => payload.string_map("attributes")?.unwrap_or_default(),
        None => Default::default(),
    };
    let thing = ThingRecord {
        thing_name: name.to_owned(),
        attributes,
        thing_type_name: body.string("thingTypeName")?.map(str::to_owned),
        billing_group: body.string("billingGroupName")?.map(str::to_owned),
        ..Default::default()
    };
    let existing = cp.registry.thing(name)?;
    if let Some(t) = &thing.thing_type_name {
        let had = existing.as_ref().and_then(|e| e.thing_type_name.as_ref());
        usable_thing_type(cp, op, t, had)?;
    }
    if let Some(b) = &thing.billing_group {
        if cp.registry.billing_group(b)?.is_none() {
            return Err(ApiError::not_found(format!(
                "Billing group {b} does not exist"
            )));
        }
    }
    let t = cp
        .registry
        .create_thing(&thing)
        .map_err(|e| ApiError::from(e).in_operation(op))?;
    Ok(Reply::Json(json!({
        "thingName": t.thing_name,
        "thingArn": cp.thing_arn(&t.thing_name),
        "thingId": thing_id(&t.thing_name),
    })))
}

/// A thing type a thing may be given: one that exists
/// (`ResourceNotFoundException`) and is not deprecated
/// (`InvalidRequestException`), unless the thing has it already.
fn usable_thing_type(
    cp: &ControlPlane,
    op: &str,
    name: &str,
    had: Option<&String>,
) -> Result<(), ApiError> {
    if had.map(String::as_str) == Some(name) {
        return Ok(());
    }
    match cp.registry.thing_type(name)? {
        None => Err(ApiError::not_found(format!(
            "Thing type {name} does not exist"
        ))),
        Some(t) if t.deprecated_at.is_some() => Err(ApiError::invalid(format!(
            "{op}: thing type {name} is deprecated: no thing can be given it"
        ))),
        Some(_) => Ok(()),
    }
}

/// `PATCH /things/{thingName}`: `attributePayload {attributes, merge}`,
/// `thingTypeName`, `removeThingType`, `expectedVersion`.
pub(super) fn update_thing(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = thing_name(req, req.label("thingName"))?;
    let body = req.json_body()?;
    let mut update = ThingUpdate {
        expected_version: body.i64("expectedVersion")?,
        ..Default::default()
    };
    if let Some(payload) = body.object("attributePayload")? {
        // Names and values are checked by the registry.
        let given = payload.string_map("attributes")?.unwrap_or_default();
        update.attributes = Some(if payload.bool("merge")?.unwrap_or(false) {
            AttributeUpdate::Merge(given)
        } else {
            AttributeUpdate::Replace(given)
        });
    }
    let remove_type = body.bool("removeThingType")?.unwrap_or(false);
    match (body.string("thingTypeName")?, remove_type) {
        (Some(_), true) => {
            return Err(ApiError::invalid(format!(
                "{op}: give thingTypeName or removeThingType, not both"
            )))
        }
        (Some(tt), false) => {
            let had = cp.registry.thing(name)?.and_then(|t| t.thing_type_name);
            usable_thing_type(cp, op, tt, had.as_ref())?;
            update.thing_type_name = Some(Some(tt.to_owned()))
        }
        (None, true) => update.thing_type_name = Some(None),
        (None, false) => {}
    }
    cp.registry
        .update_thing(name, &update)
        .map_err(|e| match e {
            RegistryError::NotFound { .. } => thing_not_found(name),
            other => ApiError::from(other).in_operation(op),
        })?;
    Ok(Reply::Json(json!({})))
}

/// `GET /things`: `maxResults`, `nextToken`, `attributeName` with
/// `attributeValue` (and `usePrefixAttributeValue`), `thingTypeName`.
pub(super) fn list_things(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let size = req.query_int("maxResults", 1, pagination::MAX_PAGE_SIZE)?;
    let attr_name = req.query("attributeName");
    let attr_value = req.query("attributeValue");
    let prefix = req.query_bool("usePrefixAttributeValue")?.unwrap_or(false);
    let thing_type = req.query("thingTypeName");
    if attr_value.is_some() && attr_name.is_none() {
        return Err(ApiError::invalid(format!(
            "{op}: attributeValue needs attributeName"
        )));
    }
    let things: Vec<ThingRecord> = cp
        .registry
        .things()?
        .into_iter()
        .filter(|t| match (attr_name, attr_value) {
            (None, _) => true,
            (Some(n), None) => t.attributes.contains_key(n),
            (Some(n), Some(v)) => t.attributes.get(n).is_some_and(|have| {
                if prefix {
                    have.starts_with(v)
                } else {
                    have == v
                }
            }),
        })
        .filter(|t| thing_type.is_none() || t.thing_type_name.as_deref() == thing_type)
        .collect();
    let (page, next) = pagination::page(
        things,
        |t| t.thing_name.clone(),
        Order::Ascending,
        req.query("nextToken"),
        size.map_or(pagination::DEFAULT_PAGE_SIZE, |n| n as usize),
        "nextToken",
    )?;
    let things: Vec<Value> = page
        .iter()
        .map(|t| {
            let mut item = Map::new();
            item.insert("thingName".into(), json!(t.thing_name));
            if let Some(tt) = &t.thing_type_name {
                item.insert("thingTypeName".into(), json!(tt));
            }
            item.insert("thingArn".into(), json!(cp.thing_arn(&t.thing_name)));
            item.insert("attributes".into(), attributes(t));
            item.insert("version".into(), json!(t.version));
            Value::Object(item)
        })
        .collect();
    let mut out = json!({ "things": things });
    if let Some(n) = next {
        out["nextToken"] = json!(n);
    }
    Ok(Reply::Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_ids_are_stable_and_distinct() {
        assert_eq!(thing_id("gw_1"), thing_id("gw_1"));
        assert_ne!(thing_id("gw_1"), thing_id("gw_2"));
        let id = thing_id("gw_1");
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
    }
}
