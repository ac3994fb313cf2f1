//! A thing resource's `OverrideSettings` applied to a thing that already
//! exists: what the thing looks like after RegisterThing.

use std::collections::{BTreeMap, BTreeSet};

use super::error::TemplateError;
use super::model::{OverrideAction, ThingSpec};

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
