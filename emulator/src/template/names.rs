//! The thing groups, thing types and billing groups a template can name,
//! as far as the template alone tells (before any device's parameters):
//! what `iotcore-emulator init` creates so that the template's
//! registrations can succeed, since AWS wants them to exist.

use std::collections::BTreeSet;

use serde_json::Value;

use super::expr::{as_intrinsic, parse_sub, SubPart};
use super::model::Template;

/// Results with more names than this are not enumerated (a `Fn::Join` of
/// several mappings, say): such a name counts as computed.
const MAX_NAMES: usize = 256;

/// What [`Template::named_objects`] finds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedObjects {
    /// Every thing group name the template can give (literal names, and
    /// every entry of a mapping it looks a name up in), sorted.
    pub thing_groups: Vec<String>,
    pub thing_types: Vec<String>,
    pub billing_groups: Vec<String>,
    /// Where the template builds a name from what only a registration
    /// tells (a parameter, say): the property's path. Such names cannot
    /// be made beforehand.
    pub computed: Vec<String>,
}

impl Template {
    /// The registry objects the template's thing resource can name: see
    /// [`NamedObjects`].
    pub fn named_objects(&self) -> NamedObjects {
        let mut out = NamedObjects::default();
        let Some(thing) = &self.thing else {
            return out;
        };
        let p = &thing.path;
        let mut one = |v: &Option<Value>, path: String, into: &mut Vec<String>| {
            if let Some(v) = v {
                match self.string_values(v) {
                    Some(names) => into.extend(names),
                    None => out.computed.push(path),
                }
            }
        };
        let (mut types, mut billing) = (Vec::new(), Vec::new());
        one(&thing.thing_type, format!("{p}.ThingTypeName"), &mut types);
        one(
            &thing.billing_group,
            format!("{p}.BillingGroup"),
            &mut billing,
        );
        let mut groups = Vec::new();
        match &thing.groups {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match self.string_values(item) {
                        Some(names) => groups.extend(names),
                        None => out.computed.push(format!("{p}.ThingGroups[{i}]")),
                    }
                }
            }
            Some(other) => match self.list_values(other) {
                Some(names) => groups.extend(names),
                None => out.computed.push(format!("{p}.ThingGroups")),
            },
        }
        let sorted = |v: Vec<String>| -> Vec<String> {
            v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
        };
        out.thing_groups = sorted(groups);
        out.thing_types = sorted(types);
        out.billing_groups = sorted(billing);
        out
    }

    /// Every string `v` can evaluate to, if the template alone tells.
    fn string_values(&self, v: &Value) -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Number(n) => Some(vec![n.to_string()]),
            Value::Bool(b) => Some(vec![b.to_string()]),
            Value::Object(_) => {
                let (function, arg) = as_intrinsic(v, "").ok()??;
                let at = |i: usize| arg.as_array().and_then(|a| a.get(i));
                match function {
                    "Fn::FindInMap" => {
                        let found = self.mapping_entries(at(0)?, at(1)?, at(2)?)?;
                        let strings: Vec<String> = found
                            .into_iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect();
                        Some(strings)
                    }
                    "Fn::Join" => {
                        let delim = self.string_values(at(0)?)?;
                        let [delim] = delim.as_slice() else {
                            return None;
                        };
                        let Value::Array(parts) = at(1)? else {
                            return None;
                        };
                        let mut joined = vec![String::new()];
                        for (i, part) in parts.iter().enumerate() {
                            let options = self.string_values(part)?;
                            let mut next = Vec::new();
                            for head in &joined {
                                for o in &options {
                                    let sep = if i == 0 { "" } else { delim.as_str() };
                                    next.push(format!("{head}{sep}{o}"));
                                }
                            }
                            if next.len() > MAX_NAMES {
                                return None;
                            }
                            joined = next;
                        }
                        Some(joined)
                    }
                    "Fn::Sub" => {
                        let parts = parse_sub(arg.as_str()?, "").ok()?;
                        let mut text = String::new();
                        for part in parts {
                            match part {
                                SubPart::Lit(l) => text.push_str(&l),
                                SubPart::Var(_) => return None,
                            }
                        }
                        Some(vec![text])
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Every name a list-valued expression (a `Fn::FindInMap` of lists)
    /// can give, if the template alone tells.
    fn list_values(&self, v: &Value) -> Option<Vec<String>> {
        let (function, arg) = as_intrinsic(v, "").ok()??;
        let at = |i: usize| arg.as_array().and_then(|a| a.get(i));
        if function != "Fn::FindInMap" {
            return None;
        }
        let mut out = Vec::new();
        for entry in self.mapping_entries(at(0)?, at(1)?, at(2)?)? {
            match entry {
                Value::Array(items) => {
                    out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)))
                }
                Value::String(s) => out.push(s.clone()),
                _ => {}
            }
        }
        Some(out)
    }

    /// The entries a `Fn::FindInMap [map, key, key]` can reach: a key the
    /// template does not fix (a parameter) stands for every key there is.
    fn mapping_entries(&self, map: &Value, k1: &Value, k2: &Value) -> Option<Vec<&Value>> {
        let maps = self.string_values(map)?;
        let (k1, k2) = (self.string_values(k1), self.string_values(k2));
        let mut found = Vec::new();
        for m in &maps {
            let Some(Value::Object(first)) = self.mappings.get(m) else {
                continue;
            };
            for (key1, second) in first {
                if k1.as_ref().is_some_and(|ks| !ks.contains(key1)) {
                    continue;
                }
                let Value::Object(second) = second else {
                    continue;
                };
                for (key2, entry) in second {
                    if k2.as_ref().is_some_and(|ks| !ks.contains(key2)) {
                        continue;
                    }
                    found.push(entry);
                }
            }
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_prod_template_names_gateways_and_every_site_group() {
        let body = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../templates/ProdTemplate.json"
        ))
        .unwrap();
        let t = Template::parse(&body).unwrap();
        let n = t.named_objects();
        assert_eq!(
            n.thing_groups,
            [
                "gateways",
                "gateways-plant-a",
                "gateways-plant-b",
                "gateways-unassigned"
            ]
        );
        assert!(n.thing_types.is_empty() && n.billing_groups.is_empty());
        assert!(n.computed.is_empty(), "{:?}", n.computed);
    }

    #[test]
    fn names_from_parameters_are_computed_and_literals_and_joins_known() {
        let t = Template::parse(
            r#"{
              "Parameters": {"Site": {"Type": "String"}, "Kind": {"Type": "String", "Default": "a"}},
              "Mappings": {"Lists": {"x": {"Groups": ["l1", "l2"]}, "y": {"Groups": ["l3"]}}},
              "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": "t1",
                "ThingTypeName": {"Fn::Join": ["-", ["type", {"Fn::Sub": "v1"}]]},
                "BillingGroup": {"Fn::Sub": "billing-${Site}"},
                "ThingGroups": ["static", {"Ref": "Site"}, {"Fn::Join": ["-", ["site", {"Ref": "Kind"}]]}]
              }}}
            }"#,
        )
        .unwrap();
        let n = t.named_objects();
        assert_eq!(n.thing_groups, ["static"]);
        assert_eq!(n.thing_types, ["type-v1"]);
        assert!(n.billing_groups.is_empty());
        assert_eq!(
            n.computed,
            [
                "Resources.thing.Properties.BillingGroup",
                "Resources.thing.Properties.ThingGroups[1]",
                "Resources.thing.Properties.ThingGroups[2]"
            ]
        );
        let t = Template::parse(
            r#"{
              "Parameters": {"Site": {"Type": "String"}},
              "Mappings": {"Lists": {"x": {"Groups": ["l1", "l2"]}, "y": {"Groups": ["l3"]}}},
              "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": "t1",
                "ThingGroups": {"Fn::FindInMap": ["Lists", {"Ref": "Site"}, "Groups"]}
              }}}
            }"#,
        )
        .unwrap();
        assert_eq!(t.named_objects().thing_groups, ["l1", "l2", "l3"]);
    }
}
