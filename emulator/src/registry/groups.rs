//! Thing groups, thing types and billing groups: the registry objects a
//! provisioning template (and CreateThing, UpdateThing) may name, which
//! must exist before a thing is put in them, as on AWS. Static thing groups
//! only (no dynamic groups, no fleet indexing); a group's parent must exist
//! when the group is made.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::cached::CachedStatements;
use super::{
    check_attributes, check_version, now_unix, put_thing_in, thing_in, valid_attribute_name,
    valid_thing_name, Registry, RegistryError,
};

/// A static thing group (AWS's CreateThingGroup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThingGroupRecord {
    pub thing_group_name: String,
    /// A random UUID, made when the group is.
    pub thing_group_id: String,
    pub parent_group_name: Option<String>,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub created_at: i64,
    /// 1 when made (AWS's `version`).
    pub version: i64,
}

/// A thing type (AWS's CreateThingType).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThingTypeRecord {
    pub thing_type_name: String,
    /// A random UUID, made when the type is.
    pub thing_type_id: String,
    pub description: Option<String>,
    pub searchable_attributes: Vec<String>,
    pub created_at: i64,
    /// When it was deprecated (DeprecateThingType); no thing may be given a
    /// deprecated type, and only a deprecated type can be deleted.
    pub deprecated_at: Option<i64>,
}

/// A billing group (AWS's CreateBillingGroup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BillingGroupRecord {
    pub billing_group_name: String,
    /// A random UUID, made when the group is.
    pub billing_group_id: String,
    pub description: Option<String>,
    pub created_at: i64,
    /// 1 when made (AWS's `version`).
    pub version: i64,
}

/// A random (version 4) UUID as text, the shape of AWS's group and type ids.
fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn check_name(kind: &str, name: &str) -> Result<(), RegistryError> {
    if valid_thing_name(name) {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{kind} name {name:?} must be 1 to 128 characters of [a-zA-Z0-9:_-]"
        )))
    }
}

/// AWS's descriptions: at most 2028 printable characters or spaces.
fn check_description(kind: &str, d: Option<&str>) -> Result<(), RegistryError> {
    match d {
        Some(d) if d.chars().count() > 2028 || d.chars().any(char::is_control) => {
            Err(RegistryError::Invalid(format!(
                "{kind} description must be at most 2028 printable characters"
            )))
        }
        _ => Ok(()),
    }
}

fn corrupt(what: String) -> impl FnOnce(serde_json::Error) -> RegistryError {
    move |source| RegistryError::Corrupt { what, source }
}

fn thing_group_in(db: &Connection, name: &str) -> Result<Option<ThingGroupRecord>, RegistryError> {
    let row = db
        .query_row_cached(
            "SELECT name, id, parent, description, attributes_json, created_at, version
             FROM thing_groups WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    ThingGroupRecord {
                        thing_group_name: r.get(0)?,
                        thing_group_id: r.get(1)?,
                        parent_group_name: r.get(2)?,
                        description: r.get(3)?,
                        attributes: BTreeMap::new(),
                        created_at: r.get(5)?,
                        version: r.get(6)?,
                    },
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((mut g, attrs)) = row else {
        return Ok(None);
    };
    g.attributes = serde_json::from_str(&attrs).map_err(corrupt(format!(
        "thing group {name}: stored attributes are corrupt"
    )))?;
    Ok(Some(g))
}

fn thing_type_in(db: &Connection, name: &str) -> Result<Option<ThingTypeRecord>, RegistryError> {
    let row = db
        .query_row_cached(
            "SELECT name, id, description, searchable_json, created_at, deprecated_at
             FROM thing_types WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    ThingTypeRecord {
                        thing_type_name: r.get(0)?,
                        thing_type_id: r.get(1)?,
                        description: r.get(2)?,
                        searchable_attributes: Vec::new(),
                        created_at: r.get(4)?,
                        deprecated_at: r.get(5)?,
                    },
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((mut t, searchable)) = row else {
        return Ok(None);
    };
    t.searchable_attributes = serde_json::from_str(&searchable).map_err(corrupt(format!(
        "thing type {name}: stored searchable attributes are corrupt"
    )))?;
    Ok(Some(t))
}

fn billing_group_in(
    db: &Connection,
    name: &str,
) -> Result<Option<BillingGroupRecord>, RegistryError> {
    Ok(db
        .query_row_cached(
            "SELECT name, id, description, created_at, version FROM billing_groups WHERE name = ?1",
            [name],
            |r| {
                Ok(BillingGroupRecord {
                    billing_group_name: r.get(0)?,
                    billing_group_id: r.get(1)?,
                    description: r.get(2)?,
                    created_at: r.get(3)?,
                    version: r.get(4)?,
                })
            },
        )
        .optional()?)
}

fn names(db: &Connection, sql: &str) -> Result<Vec<String>, RegistryError> {
    let mut st = db.prepare_cached(sql)?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Names of the things whose stored JSON holds `needle` (a superset: the
/// caller looks at each thing).
fn things_mentioning(
    db: &Connection,
    column: &str,
    needle: &str,
) -> Result<Vec<String>, RegistryError> {
    let sql = format!("SELECT name FROM things WHERE instr({column}, ?1) > 0 ORDER BY name");
    let mut st = db.prepare_cached(&sql)?;
    let rows = st
        .query_map([needle], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// What [`Registry::create_thing_group`] is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewThingGroup {
    pub name: String,
    pub parent_group_name: Option<String>,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// One object [`Registry::create_objects_named_by`] looked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedObject {
    /// `thing group`, `thing type` or `billing group`.
    pub kind: &'static str,
    pub name: String,
    /// False when it existed already.
    pub created: bool,
}

/// What [`Registry::create_objects_named_by`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TemplateObjects {
    pub objects: Vec<NamedObject>,
    /// Paths of the names the template builds from a registration's
    /// parameters, which could not be made beforehand.
    pub computed: Vec<String>,
}

impl Registry {
    /// Creates the thing groups, thing types and billing groups the
    /// registered template `template_name` can name, as far as the template
    /// alone tells ([`crate::template::NamedObjects`]), leaving those that
    /// exist as they are: what `init` does, so that the template's
    /// registrations can succeed.
    pub fn create_objects_named_by(
        &self,
        template_name: &str,
    ) -> Result<TemplateObjects, RegistryError> {
        let record = self
            .template(template_name)?
            .ok_or_else(|| RegistryError::NotFound {
                kind: "template",
                name: template_name.into(),
            })?;
        let template = crate::template::Template::parse(&record.body).map_err(|source| {
            RegistryError::Template {
                name: template_name.into(),
                source,
            }
        })?;
        let named = template.named_objects();
        let mut out = TemplateObjects {
            computed: named.computed,
            ..Default::default()
        };
        for name in named.thing_groups {
            let created = match self.thing_group(&name)? {
                Some(_) => false,
                None => {
                    self.create_thing_group(&NewThingGroup {
                        name: name.clone(),
                        ..Default::default()
                    })?
                    .1
                }
            };
            out.objects.push(NamedObject {
                kind: "thing group",
                name,
                created,
            });
        }
        for name in named.thing_types {
            let created = match self.thing_type(&name)? {
                Some(_) => false,
                None => self.create_thing_type(&name, None, &[])?.1,
            };
            out.objects.push(NamedObject {
                kind: "thing type",
                name,
                created,
            });
        }
        for name in named.billing_groups {
            let created = match self.billing_group(&name)? {
                Some(_) => false,
                None => self.create_billing_group(&name, None)?.1,
            };
            out.objects.push(NamedObject {
                kind: "billing group",
                name,
                created,
            });
        }
        Ok(out)
    }

    // ---- thing groups ----

    /// Creates a static thing group (AWS's CreateThingGroup): idempotent
    /// for a group of that name with the same parent, description and
    /// attributes (AWS answers 200), [`RegistryError::AlreadyExists`] for
    /// one with another; the parent must exist ([`RegistryError::NotFound`]).
    /// Returns the group and whether it was made now.
    pub fn create_thing_group(
        &self,
        new: &NewThingGroup,
    ) -> Result<(ThingGroupRecord, bool), RegistryError> {
        check_name("thing group", &new.name)?;
        if let Some(p) = &new.parent_group_name {
            check_name("parent thing group", p)?;
        }
        check_description("thing group", new.description.as_deref())?;
        check_attributes(&new.attributes)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(existing) = thing_group_in(&tx, &new.name)? {
            let same = existing.parent_group_name == new.parent_group_name
                && existing.description == new.description
                && existing.attributes == new.attributes;
            if !same {
                return Err(RegistryError::AlreadyExists {
                    kind: "thing group",
                    name: new.name.clone(),
                });
            }
            return Ok((existing, false));
        }
        if let Some(p) = &new.parent_group_name {
            if p == &new.name || thing_group_in(&tx, p)?.is_none() {
                return Err(RegistryError::NotFound {
                    kind: "parent thing group",
                    name: p.clone(),
                });
            }
        }
        let attrs = serde_json::to_string(&new.attributes).unwrap_or_else(|_| "{}".into());
        tx.execute_cached(
            "INSERT INTO thing_groups (name, id, parent, description, attributes_json, created_at, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
            params![
                new.name,
                new_id(),
                new.parent_group_name,
                new.description,
                attrs,
                now_unix()
            ],
        )?;
        let made = thing_group_in(&tx, &new.name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "thing group",
            name: new.name.clone(),
        })?;
        tx.commit()?;
        Ok((made, true))
    }

    pub fn thing_group(&self, name: &str) -> Result<Option<ThingGroupRecord>, RegistryError> {
        thing_group_in(&self.db(), name)
    }

    /// Every thing group, by name.
    pub fn thing_groups(&self) -> Result<Vec<ThingGroupRecord>, RegistryError> {
        let db = self.db();
        names(&db, "SELECT name FROM thing_groups ORDER BY name")?
            .iter()
            .filter_map(|n| thing_group_in(&db, n).transpose())
            .collect()
    }

    /// Deletes a thing group (AWS's DeleteThingGroup), taking it off the
    /// things in it; false when there was none (not an error, as on AWS).
    /// A group with child groups is refused ([`RegistryError::Invalid`]),
    /// and so is one not at `expected_version`.
    pub fn delete_thing_group(
        &self,
        name: &str,
        expected_version: Option<i64>,
    ) -> Result<bool, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let Some(group) = thing_group_in(&tx, name)? else {
            return Ok(false);
        };
        check_version("thing group", name, expected_version, group.version)?;
        let children = {
            let mut st =
                tx.prepare_cached("SELECT name FROM thing_groups WHERE parent = ?1 ORDER BY name")?;
            let rows = st
                .query_map([name], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        if !children.is_empty() {
            return Err(RegistryError::Invalid(format!(
                "thing group {name} has child groups ({}): delete them first",
                children.join(", ")
            )));
        }
        let quoted = serde_json::to_string(name).unwrap_or_default();
        for thing_name in things_mentioning(&tx, "groups_json", &quoted)? {
            if let Some(mut t) = thing_in(&tx, &thing_name)? {
                t.thing_groups.retain(|g| g != name);
                put_thing_in(&tx, &t)?;
            }
        }
        tx.execute_cached("DELETE FROM thing_groups WHERE name = ?1", [name])?;
        tx.commit()?;
        drop(db);
        self.auth_changed();
        Ok(true)
    }

    // ---- thing types ----

    /// Creates a thing type (AWS's CreateThingType): idempotent for a type
    /// of that name with the same description and searchable attributes,
    /// [`RegistryError::AlreadyExists`] for one with others. Returns the
    /// type and whether it was made now.
    pub fn create_thing_type(
        &self,
        name: &str,
        description: Option<&str>,
        searchable_attributes: &[String],
    ) -> Result<(ThingTypeRecord, bool), RegistryError> {
        check_name("thing type", name)?;
        check_description("thing type", description)?;
        if searchable_attributes.len() > 3 {
            return Err(RegistryError::Invalid(
                "a thing type has at most 3 searchable attributes".into(),
            ));
        }
        if let Some(a) = searchable_attributes
            .iter()
            .find(|a| !valid_attribute_name(a))
        {
            return Err(RegistryError::Invalid(format!(
                "searchable attribute {a:?} must be 1 to 128 characters of [a-zA-Z0-9_.,@/:#-]"
            )));
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(existing) = thing_type_in(&tx, name)? {
            let same = existing.description.as_deref() == description
                && existing.searchable_attributes == searchable_attributes;
            if !same {
                return Err(RegistryError::AlreadyExists {
                    kind: "thing type",
                    name: name.into(),
                });
            }
            return Ok((existing, false));
        }
        let searchable =
            serde_json::to_string(searchable_attributes).unwrap_or_else(|_| "[]".into());
        tx.execute_cached(
            "INSERT INTO thing_types (name, id, description, searchable_json, created_at, deprecated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
            params![name, new_id(), description, searchable, now_unix()],
        )?;
        let made = thing_type_in(&tx, name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "thing type",
            name: name.into(),
        })?;
        tx.commit()?;
        Ok((made, true))
    }

    pub fn thing_type(&self, name: &str) -> Result<Option<ThingTypeRecord>, RegistryError> {
        thing_type_in(&self.db(), name)
    }

    /// Every thing type, by name.
    pub fn thing_types(&self) -> Result<Vec<ThingTypeRecord>, RegistryError> {
        let db = self.db();
        names(&db, "SELECT name FROM thing_types ORDER BY name")?
            .iter()
            .filter_map(|n| thing_type_in(&db, n).transpose())
            .collect()
    }

    /// Deprecates a thing type, or with `undo` undeprecates it (AWS's
    /// DeprecateThingType); the type must exist.
    pub fn deprecate_thing_type(
        &self,
        name: &str,
        undo: bool,
    ) -> Result<ThingTypeRecord, RegistryError> {
        let db = self.db();
        if thing_type_in(&db, name)?.is_none() {
            return Err(RegistryError::NotFound {
                kind: "thing type",
                name: name.into(),
            });
        }
        let at = (!undo).then(now_unix);
        db.execute_cached(
            "UPDATE thing_types SET deprecated_at = CASE WHEN ?2 IS NULL THEN NULL ELSE COALESCE(deprecated_at, ?2) END WHERE name = ?1",
            params![name, at],
        )?;
        thing_type_in(&db, name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "thing type",
            name: name.into(),
        })
    }

    /// Deletes a thing type (AWS's DeleteThingType): it must exist, be
    /// deprecated, and no thing may have it ([`RegistryError::Invalid`]).
    /// AWS also wants five minutes between the deprecation and the delete;
    /// the emulator does not wait.
    pub fn delete_thing_type(&self, name: &str) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let t = thing_type_in(&tx, name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "thing type",
            name: name.into(),
        })?;
        if t.deprecated_at.is_none() {
            return Err(RegistryError::Invalid(format!(
                "thing type {name} is not deprecated: deprecate it (DeprecateThingType) before deleting it"
            )));
        }
        let users = {
            let mut st =
                tx.prepare_cached("SELECT name FROM things WHERE thing_type = ?1 ORDER BY name")?;
            let rows = st
                .query_map([name], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        if !users.is_empty() {
            return Err(RegistryError::Invalid(format!(
                "thing type {name} is the type of {} thing(s) ({}): change their type first",
                users.len(),
                users.join(", ")
            )));
        }
        tx.execute_cached("DELETE FROM thing_types WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    // ---- billing groups ----

    /// Creates a billing group (AWS's CreateBillingGroup): idempotent for
    /// one of that name with the same description,
    /// [`RegistryError::AlreadyExists`] for another. Returns the group and
    /// whether it was made now.
    pub fn create_billing_group(
        &self,
        name: &str,
        description: Option<&str>,
    ) -> Result<(BillingGroupRecord, bool), RegistryError> {
        check_name("billing group", name)?;
        check_description("billing group", description)?;
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(existing) = billing_group_in(&tx, name)? {
            if existing.description.as_deref() != description {
                return Err(RegistryError::AlreadyExists {
                    kind: "billing group",
                    name: name.into(),
                });
            }
            return Ok((existing, false));
        }
        tx.execute_cached(
            "INSERT INTO billing_groups (name, id, description, created_at, version)
             VALUES (?1, ?2, ?3, ?4, 1)",
            params![name, new_id(), description, now_unix()],
        )?;
        let made = billing_group_in(&tx, name)?.ok_or_else(|| RegistryError::NotFound {
            kind: "billing group",
            name: name.into(),
        })?;
        tx.commit()?;
        Ok((made, true))
    }

    pub fn billing_group(&self, name: &str) -> Result<Option<BillingGroupRecord>, RegistryError> {
        billing_group_in(&self.db(), name)
    }

    /// Every billing group, by name.
    pub fn billing_groups(&self) -> Result<Vec<BillingGroupRecord>, RegistryError> {
        let db = self.db();
        names(&db, "SELECT name FROM billing_groups ORDER BY name")?
            .iter()
            .filter_map(|n| billing_group_in(&db, n).transpose())
            .collect()
    }

    /// Deletes a billing group (AWS's DeleteBillingGroup), taking it off
    /// the things in it; false when there was none (not an error, as on
    /// AWS); refused when not at `expected_version`.
    pub fn delete_billing_group(
        &self,
        name: &str,
        expected_version: Option<i64>,
    ) -> Result<bool, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let Some(group) = billing_group_in(&tx, name)? else {
            return Ok(false);
        };
        check_version("billing group", name, expected_version, group.version)?;
        let users = {
            let mut st = tx
                .prepare_cached("SELECT name FROM things WHERE billing_group = ?1 ORDER BY name")?;
            let rows = st
                .query_map([name], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        for thing_name in users {
            if let Some(mut t) = thing_in(&tx, &thing_name)? {
                t.billing_group = None;
                put_thing_in(&tx, &t)?;
            }
        }
        tx.execute_cached("DELETE FROM billing_groups WHERE name = ?1", [name])?;
        tx.commit()?;
        drop(db);
        self.auth_changed();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ThingRecord;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        (dir, reg)
    }

    #[test]
    fn thing_groups_are_idempotent_need_their_parent_and_leave_their_things_when_deleted() {
        let (_dir, reg) = registry();
        let new = |name: &str, parent: Option<&str>| NewThingGroup {
            name: name.into(),
            parent_group_name: parent.map(Into::into),
            ..Default::default()
        };
        let (g, made) = reg.create_thing_group(&new("gateways", None)).unwrap();
        assert!(made);
        assert_eq!(g.version, 1);
        assert_eq!(g.thing_group_id.len(), 36);
        let (again, made) = reg.create_thing_group(&new("gateways", None)).unwrap();
        assert!(!made);
        assert_eq!(again, g);
        let mut other = new("gateways", None);
        other.description = Some("another".into());
        assert!(matches!(
            reg.create_thing_group(&other),
            Err(RegistryError::AlreadyExists { .. })
        ));
        assert!(matches!(
            reg.create_thing_group(&new("child", Some("missing"))),
            Err(RegistryError::NotFound { .. })
        ));
        reg.create_thing_group(&new("child", Some("gateways")))
            .unwrap();
        assert!(reg.create_thing_group(&new("bad name", None)).is_err());

        reg.put_thing(&ThingRecord {
            thing_name: "gw_1".into(),
            thing_groups: vec!["gateways".into(), "child".into()],
            ..Default::default()
        })
        .unwrap();
        let e = reg.delete_thing_group("gateways", None).unwrap_err();
        assert!(e.to_string().contains("child groups (child)"), "{e}");
        assert!(matches!(
            reg.delete_thing_group("child", Some(7)),
            Err(RegistryError::VersionConflict { .. })
        ));
        assert!(reg.delete_thing_group("child", Some(1)).unwrap());
        assert!(!reg.delete_thing_group("child", None).unwrap());
        assert!(reg.delete_thing_group("gateways", None).unwrap());
        let t = reg.thing("gw_1").unwrap().unwrap();
        assert!(t.thing_groups.is_empty());
        assert!(reg.thing_groups().unwrap().is_empty());
    }

    #[test]
    fn thing_types_are_deleted_only_deprecated_and_unused() {
        let (_dir, reg) = registry();
        let (t, made) = reg
            .create_thing_type("gateway", Some("a gateway"), &["serial".into()])
            .unwrap();
        assert!(made);
        assert_eq!(t.deprecated_at, None);
        assert!(reg
            .create_thing_type("gateway", None, &["serial".into()])
            .is_err());
        reg.put_thing(&ThingRecord {
            thing_name: "gw_1".into(),
            thing_type_name: Some("gateway".into()),
            ..Default::default()
        })
        .unwrap();
        let e = reg.delete_thing_type("gateway").unwrap_err();
        assert!(e.to_string().contains("not deprecated"), "{e}");
        assert!(reg
            .deprecate_thing_type("gateway", false)
            .unwrap()
            .deprecated_at
            .is_some());
        let e = reg.delete_thing_type("gateway").unwrap_err();
        assert!(e.to_string().contains("gw_1"), "{e}");
        assert!(reg
            .deprecate_thing_type("gateway", true)
            .unwrap()
            .deprecated_at
            .is_none());
        reg.put_thing(&ThingRecord {
            thing_name: "gw_1".into(),
            ..Default::default()
        })
        .unwrap();
        reg.deprecate_thing_type("gateway", false).unwrap();
        reg.delete_thing_type("gateway").unwrap();
        assert!(matches!(
            reg.delete_thing_type("gateway"),
            Err(RegistryError::NotFound { .. })
        ));
        assert!(matches!(
            reg.deprecate_thing_type("gateway", false),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn billing_groups_leave_their_things_when_deleted() {
        let (_dir, reg) = registry();
        reg.create_billing_group("standard", None).unwrap();
        assert!(!reg.create_billing_group("standard", None).unwrap().1);
        assert!(reg.create_billing_group("standard", Some("x")).is_err());
        reg.put_thing(&ThingRecord {
            thing_name: "gw_1".into(),
            billing_group: Some("standard".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(reg.delete_billing_group("standard", None).unwrap());
        assert_eq!(reg.thing("gw_1").unwrap().unwrap().billing_group, None);
        assert!(!reg.delete_billing_group("standard", None).unwrap());
    }
}
