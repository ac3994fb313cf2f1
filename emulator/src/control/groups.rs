//! Thing groups, thing types and billing groups: Create, Describe, List
//! and Delete of each, and DeprecateThingType, in the shapes of botocore's
//! service model. Tags are accepted and not kept (ListTagsForResource is
//! not served).

use serde_json::{json, Map, Value};

use super::error::{ApiError, ErrorKind};
use super::pagination::{self, Order};
use super::request::ApiRequest;
use super::{ControlPlane, Reply};
use crate::registry::{valid_thing_name, NewThingGroup, RegistryError, ThingGroupRecord};

/// A name label of the path: 1 to 128 of `[a-zA-Z0-9:_-]`.
fn name_label<'a>(req: &'a ApiRequest, label: &str) -> Result<&'a str, ApiError> {
    let name = req.label(label);
    if valid_thing_name(name) {
        Ok(name)
    } else {
        Err(ApiError::invalid(format!(
            "{}: {label} {name:?} must be 1 to 128 characters of [a-zA-Z0-9:_-]",
            req.operation
        )))
    }
}

/// `maxResults` of a list operation, as a page size.
fn page_size(req: &ApiRequest) -> Result<usize, ApiError> {
    Ok(req
        .query_int("maxResults", 1, pagination::MAX_PAGE_SIZE)?
        .map_or(pagination::DEFAULT_PAGE_SIZE, |n| n as usize))
}

/// `expectedVersion` of a delete.
fn expected_version(req: &ApiRequest) -> Result<Option<i64>, ApiError> {
    req.query_int("expectedVersion", i64::MIN, i64::MAX)
}

fn with_next(mut out: Value, next: Option<String>) -> Value {
    if let Some(n) = next {
        out["nextToken"] = json!(n);
    }
    out
}

fn attributes(map: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

// ---- thing groups ----

/// `POST /thing-groups/{thingGroupName}`: `parentGroupName`,
/// `thingGroupProperties {thingGroupDescription, attributePayload}`, `tags`.
/// The same group again answers 200; another configuration
/// `ResourceAlreadyExistsException`; a parent that does not exist
/// `InvalidRequestException` (the operation has no ResourceNotFound).
pub(super) fn create_thing_group(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "thingGroupName")?;
    let body = req.json_body()?;
    let (description, attrs) = match body.object("thingGroupProperties")? {
        Some(p) => (
            p.string("thingGroupDescription")?.map(str::to_owned),
            match p.object("attributePayload")? {
                Some(a) => a.string_map("attributes")?.unwrap_or_default(),
                None => Default::default(),
            },
        ),
        None => (None, Default::default()),
    };
    let new = NewThingGroup {
        name: name.to_owned(),
        parent_group_name: body.string("parentGroupName")?.map(str::to_owned),
        description,
        attributes: attrs,
    };
    let (g, _) = cp.registry.create_thing_group(&new).map_err(|e| match e {
        RegistryError::NotFound { kind, name } => {
            ApiError::invalid(format!("{op}: {kind} {name} does not exist"))
        }
        other => ApiError::from(other).in_operation(op),
    })?;
    Ok(Reply::Json(json!({
        "thingGroupName": g.thing_group_name,
        "thingGroupArn": cp.thing_group_arn(&g.thing_group_name),
        "thingGroupId": g.thing_group_id,
    })))
}

fn thing_group_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("ThingGroup {name} does not exist"))
}

/// `GET /thing-groups/{thingGroupName}`
pub(super) fn describe_thing_group(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let name = name_label(req, "thingGroupName")?;
    let g = cp
        .registry
        .thing_group(name)?
        .ok_or_else(|| thing_group_not_found(name))?;
    // Root first, down to the parent.
    let mut ancestors = Vec::new();
    let mut next = g.parent_group_name.clone();
    while let Some(p) = next {
        if ancestors
            .iter()
            .any(|a: &ThingGroupRecord| a.thing_group_name == p)
        {
            break;
        }
        match cp.registry.thing_group(&p)? {
            Some(parent) => {
                next = parent.parent_group_name.clone();
                ancestors.push(parent);
            }
            None => break,
        }
    }
    ancestors.reverse();
    let mut properties = Map::new();
    if let Some(d) = &g.description {
        properties.insert("thingGroupDescription".into(), json!(d));
    }
    properties.insert(
        "attributePayload".into(),
        json!({"attributes": attributes(&g.attributes)}),
    );
    let mut metadata = Map::new();
    if let Some(p) = &g.parent_group_name {
        metadata.insert("parentGroupName".into(), json!(p));
    }
    metadata.insert(
        "rootToParentThingGroups".into(),
        Value::Array(
            ancestors
                .iter()
                .map(|a| {
                    json!({
                        "groupName": a.thing_group_name,
                        "groupArn": cp.thing_group_arn(&a.thing_group_name),
                    })
                })
                .collect(),
        ),
    );
    metadata.insert("creationDate".into(), json!(g.created_at));
    Ok(Reply::Json(json!({
        "thingGroupName": g.thing_group_name,
        "thingGroupId": g.thing_group_id,
        "thingGroupArn": cp.thing_group_arn(&g.thing_group_name),
        "version": g.version,
        "thingGroupProperties": properties,
        "thingGroupMetadata": metadata,
    })))
}

/// `GET /thing-groups`: `maxResults`, `nextToken`, `namePrefixFilter`,
/// `parentGroup` (its children; with `recursive` all its descendants).
pub(super) fn list_thing_groups(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let size = page_size(req)?;
    let prefix = req.query("namePrefixFilter");
    let parent = req.query("parentGroup");
    let recursive = req.query_bool("recursive")?.unwrap_or(false);
    let all = cp.registry.thing_groups()?;
    let under: Option<Vec<String>> = match parent {
        None => None,
        Some(p) => {
            if !all.iter().any(|g| g.thing_group_name == p) {
                return Err(thing_group_not_found(p));
            }
            let mut found: Vec<String> = Vec::new();
            let mut frontier = vec![p.to_owned()];
            while let Some(current) = frontier.pop() {
                for g in all
                    .iter()
                    .filter(|g| g.parent_group_name.as_deref() == Some(current.as_str()))
                {
                    if !found.contains(&g.thing_group_name) {
                        found.push(g.thing_group_name.clone());
                        if recursive {
                            frontier.push(g.thing_group_name.clone());
                        }
                    }
                }
            }
            Some(found)
        }
    };
    let groups: Vec<ThingGroupRecord> = all
        .into_iter()
        .filter(|g| prefix.is_none_or(|p| g.thing_group_name.starts_with(p)))
        .filter(|g| {
            under
                .as_ref()
                .is_none_or(|u| u.contains(&g.thing_group_name))
        })
        .collect();
    let (page, next) = pagination::page(
        groups,
        |g| g.thing_group_name.clone(),
        Order::Ascending,
        req.query("nextToken"),
        size,
        "nextToken",
    )?;
    let items: Vec<Value> = page
        .iter()
        .map(|g| {
            json!({
                "groupName": g.thing_group_name,
                "groupArn": cp.thing_group_arn(&g.thing_group_name),
            })
        })
        .collect();
    Ok(Reply::Json(with_next(
        json!({ "thingGroups": items }),
        next,
    )))
}

/// `DELETE /thing-groups/{thingGroupName}?expectedVersion=`: 200 also for
/// a group that does not exist (the operation has no ResourceNotFound).
pub(super) fn delete_thing_group(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "thingGroupName")?;
    cp.registry
        .delete_thing_group(name, expected_version(req)?)
        .map_err(|e| ApiError::from(e).in_operation(op))?;
    Ok(Reply::Json(json!({})))
}

// ---- thing types ----

/// `POST /thing-types/{thingTypeName}`: `thingTypeProperties
/// {thingTypeDescription, searchableAttributes}`, `tags`.
pub(super) fn create_thing_type(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "thingTypeName")?;
    let body = req.json_body()?;
    let (description, searchable) = match body.object("thingTypeProperties")? {
        Some(p) => (
            p.string("thingTypeDescription")?.map(str::to_owned),
            p.string_list("searchableAttributes")?.unwrap_or_default(),
        ),
        None => (None, Vec::new()),
    };
    let (t, _) = cp
        .registry
        .create_thing_type(name, description.as_deref(), &searchable)
        .map_err(|e| ApiError::from(e).in_operation(op))?;
    Ok(Reply::Json(json!({
        "thingTypeName": t.thing_type_name,
        "thingTypeArn": cp.thing_type_arn(&t.thing_type_name),
        "thingTypeId": t.thing_type_id,
    })))
}

fn thing_type_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("Thing type {name} does not exist"))
}

/// `thingTypeProperties` and `thingTypeMetadata` of a type.
fn thing_type_parts(t: &crate::registry::ThingTypeRecord) -> (Value, Value) {
    let mut properties = Map::new();
    if let Some(d) = &t.description {
        properties.insert("thingTypeDescription".into(), json!(d));
    }
    properties.insert(
        "searchableAttributes".into(),
        json!(t.searchable_attributes),
    );
    let mut metadata = Map::new();
    metadata.insert("deprecated".into(), json!(t.deprecated_at.is_some()));
    if let Some(at) = t.deprecated_at {
        metadata.insert("deprecationDate".into(), json!(at));
    }
    metadata.insert("creationDate".into(), json!(t.created_at));
    (Value::Object(properties), Value::Object(metadata))
}

/// `GET /thing-types/{thingTypeName}`
pub(super) fn describe_thing_type(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let name = name_label(req, "thingTypeName")?;
    let t = cp
        .registry
        .thing_type(name)?
        .ok_or_else(|| thing_type_not_found(name))?;
    let (properties, metadata) = thing_type_parts(&t);
    Ok(Reply::Json(json!({
        "thingTypeName": t.thing_type_name,
        "thingTypeId": t.thing_type_id,
        "thingTypeArn": cp.thing_type_arn(&t.thing_type_name),
        "thingTypeProperties": properties,
        "thingTypeMetadata": metadata,
    })))
}

/// `GET /thing-types`: `maxResults`, `nextToken`, `thingTypeName`.
pub(super) fn list_thing_types(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let size = page_size(req)?;
    let only = req.query("thingTypeName");
    let types: Vec<_> = cp
        .registry
        .thing_types()?
        .into_iter()
        .filter(|t| only.is_none_or(|n| t.thing_type_name == n))
        .collect();
    let (page, next) = pagination::page(
        types,
        |t| t.thing_type_name.clone(),
        Order::Ascending,
        req.query("nextToken"),
        size,
        "nextToken",
    )?;
    let items: Vec<Value> = page
        .iter()
        .map(|t| {
            let (properties, metadata) = thing_type_parts(t);
            json!({
                "thingTypeName": t.thing_type_name,
                "thingTypeArn": cp.thing_type_arn(&t.thing_type_name),
                "thingTypeProperties": properties,
                "thingTypeMetadata": metadata,
            })
        })
        .collect();
    Ok(Reply::Json(with_next(json!({ "thingTypes": items }), next)))
}

/// `POST /thing-types/{thingTypeName}/deprecate`: `undoDeprecate`.
pub(super) fn deprecate_thing_type(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "thingTypeName")?;
    let undo = req.json_body()?.bool("undoDeprecate")?.unwrap_or(false);
    cp.registry
        .deprecate_thing_type(name, undo)
        .map_err(|e| match e {
            RegistryError::NotFound { .. } => thing_type_not_found(name),
            other => ApiError::from(other).in_operation(op),
        })?;
    Ok(Reply::Json(json!({})))
}

/// `DELETE /thing-types/{thingTypeName}`: the type must be deprecated and
/// no thing may have it (`InvalidRequestException`); AWS's five minutes
/// between the deprecation and the delete are not waited for.
pub(super) fn delete_thing_type(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "thingTypeName")?;
    cp.registry.delete_thing_type(name).map_err(|e| match e {
        RegistryError::NotFound { .. } => thing_type_not_found(name),
        other => ApiError::from(other).in_operation(op),
    })?;
    Ok(Reply::Json(json!({})))
}

// ---- billing groups ----

/// `POST /billing-groups/{billingGroupName}`: `billingGroupProperties
/// {billingGroupDescription}`, `tags`.
pub(super) fn create_billing_group(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "billingGroupName")?;
    let body = req.json_body()?;
    let description = match body.object("billingGroupProperties")? {
        Some(p) => p.string("billingGroupDescription")?.map(str::to_owned),
        None => None,
    };
    let (b, _) = cp
        .registry
        .create_billing_group(name, description.as_deref())
        .map_err(|e| ApiError::from(e).in_operation(op))?;
    Ok(Reply::Json(json!({
        "billingGroupName": b.billing_group_name,
        "billingGroupArn": cp.billing_group_arn(&b.billing_group_name),
        "billingGroupId": b.billing_group_id,
    })))
}

/// `GET /billing-groups/{billingGroupName}`
pub(super) fn describe_billing_group(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let name = name_label(req, "billingGroupName")?;
    let b = cp.registry.billing_group(name)?.ok_or_else(|| {
        ApiError::new(
            ErrorKind::ResourceNotFound,
            format!("Billing group {name} does not exist"),
        )
    })?;
    let mut properties = Map::new();
    if let Some(d) = &b.description {
        properties.insert("billingGroupDescription".into(), json!(d));
    }
    Ok(Reply::Json(json!({
        "billingGroupName": b.billing_group_name,
        "billingGroupId": b.billing_group_id,
        "billingGroupArn": cp.billing_group_arn(&b.billing_group_name),
        "version": b.version,
        "billingGroupProperties": properties,
        "billingGroupMetadata": {"creationDate": b.created_at},
    })))
}

/// `GET /billing-groups`: `maxResults`, `nextToken`, `namePrefixFilter`.
pub(super) fn list_billing_groups(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let size = page_size(req)?;
    let prefix = req.query("namePrefixFilter");
    let groups: Vec<_> = cp
        .registry
        .billing_groups()?
        .into_iter()
        .filter(|b| prefix.is_none_or(|p| b.billing_group_name.starts_with(p)))
        .collect();
    let (page, next) = pagination::page(
        groups,
        |b| b.billing_group_name.clone(),
        Order::Ascending,
        req.query("nextToken"),
        size,
        "nextToken",
    )?;
    let items: Vec<Value> = page
        .iter()
        .map(|b| {
            json!({
                "groupName": b.billing_group_name,
                "groupArn": cp.billing_group_arn(&b.billing_group_name),
            })
        })
        .collect();
    Ok(Reply::Json(with_next(
        json!({ "billingGroups": items }),
        next,
    )))
}

/// `DELETE /billing-groups/{billingGroupName}?expectedVersion=`: 200 also
/// for one that does not exist (the operation has no ResourceNotFound).
pub(super) fn delete_billing_group(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req, "billingGroupName")?;
    cp.registry
        .delete_billing_group(name, expected_version(req)?)
        .map_err(|e| ApiError::from(e).in_operation(op))?;
    Ok(Reply::Json(json!({})))
}
