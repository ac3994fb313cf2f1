//! Duplicate object keys in a policy document. `serde_json::Value` keeps
//! the last of them, so `{"Effect": "Deny", "Effect": "Allow"}` would read
//! as an Allow that a reviewer of the text sees as a Deny. AWS's policy
//! documentation does not say how duplicates are read (JSON leaves it
//! open); the emulator refuses them, naming where, so that no reading of
//! the text grants more than another.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first duplicate key in `json` as (the path of the object holding
/// it, the key), e.g. `("Statement[0]", "Effect")`; `None` when there is
/// none or the text is not JSON (the caller's own parse reports that).
pub(crate) fn first_duplicate(json: &str) -> Option<(String, String)> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(json);
    let _ = Check {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de);
    found.into_inner()
}

/// Walks one JSON value at `path`, recording the first duplicate key.
struct Check<'a> {
    path: String,
    found: &'a RefCell<Option<(String, String)>>,
}

impl<'a> Check<'a> {
    fn child(&self, path: String) -> Check<'a> {
        Check {
            path,
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(self.child(format!("{}[{i}]", self.path)))?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key.clone()) {
                let at = if self.path.is_empty() {
                    "(root)".to_owned()
                } else {
                    self.path.clone()
                };
                *self.found.borrow_mut() = Some((at, key));
                // Stop at the first: the caller reports it.
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(self.child(path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::first_duplicate;

    #[test]
    fn finds_the_first_duplicate_and_where() {
        let dup = |json: &str| first_duplicate(json);
        assert_eq!(dup(r#"{"a": 1, "b": [1, {"c": 2}]}"#), None);
        assert_eq!(
            dup(r#"{"a": 1, "a": 2}"#),
            Some(("(root)".into(), "a".into()))
        );
        assert_eq!(
            dup(r#"{"Statement": [{"Effect": "Allow"}, {"Effect": "Deny", "Effect": "Allow"}]}"#),
            Some(("Statement[1]".into(), "Effect".into()))
        );
        assert_eq!(
            dup(r#"{"S": {"Condition": {"Bool": {"k": "true", "k": "false"}}}}"#),
            Some(("S.Condition.Bool".into(), "k".into()))
        );
        // Keys equal only after unescaping are the same key.
        assert_eq!(
            dup(r#"{"Effect": "Deny", "Eff\u0065ct": "Allow"}"#),
            Some(("(root)".into(), "Effect".into()))
        );
        // Not JSON: left to the caller's parse.
        assert_eq!(dup("{not json"), None);
    }
}
