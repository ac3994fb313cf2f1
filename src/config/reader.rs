//! Reading `config.ini` values: the file's entries with the environment's
//! `PROV_AGENT_<SECTION>_<KEY>` overrides on top, each value with the place
//! it came from (file and line, or variable) for messages; unknown keys
//! refused with a near-miss suggestion.

use std::collections::BTreeMap;
use std::path::Path;

use super::ini::Ini;
use super::{ConfigError, KeySpec, ENV_PREFIX, FREE_FORM_SECTION, RESERVED_ENV, SCHEMA};

/// A value with the place it came from, for messages.
pub(super) struct Located {
    pub(super) value: String,
    pub(super) origin: String,
}

pub(super) struct Reader {
    pub(super) ini: Ini,
    /// `(SECTION, KEY)` upper-case -> value from the environment.
    pub(super) env: BTreeMap<(String, String), (String, String)>,
}

impl Reader {
    pub(super) fn new(
        ini: Ini,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut overrides = BTreeMap::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if RESERVED_ENV.contains(&var.as_str()) {
                continue;
            }
            let found = SCHEMA.iter().find_map(|(section, keys)| {
                let key = rest.strip_prefix(section)?.strip_prefix('_')?;
                if *section == FREE_FORM_SECTION {
                    return (!key.is_empty()).then(|| (section.to_string(), key.to_string()));
                }
                keys.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(k, _)| (section.to_string(), k.to_string()))
            });
            let (section, key) = found.ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: "names no known [SECTION] KEY; write PROV_AGENT_<SECTION>_<KEY>, e.g. \
                          PROV_AGENT_SETTINGS_IOT_ENDPOINT"
                    .into(),
            })?;
            overrides.insert((section, key.to_ascii_uppercase()), (var, value));
        }
        Ok(Self {
            ini,
            env: overrides,
        })
    }

    pub(super) fn file(&self) -> &Path {
        &self.ini.path
    }

    pub(super) fn get(&self, section: &str, key: &str) -> Option<Located> {
        if let Some((var, value)) = self.env.get(&(section.to_string(), key.to_string())) {
            return Some(Located {
                value: value.clone(),
                origin: format!("environment {var}"),
            });
        }
        let entry = self.ini.section(section)?.get(key)?;
        Some(Located {
            value: entry.value.clone(),
            origin: format!("{}:{}", self.ini.path.display(), entry.line),
        })
    }

    /// The parsed value, or `None` when the key is absent (an empty value
    /// counts as absent for keys that have no default).
    pub(super) fn parse<T>(
        &self,
        section: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(located) = self.get(section, key) else {
            return Ok(None);
        };
        parse(&located.value)
            .map(Some)
            .map_err(|message| ConfigError::Value {
                origin: located.origin,
                section: section.into(),
                key: key.into(),
                message,
            })
    }

    /// The parsed value, or the schema's default.
    pub(super) fn with_default<T>(
        &self,
        section: &str,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        if let Some(v) = self.parse(section, key, &parse)? {
            return Ok(v);
        }
        let default = schema_default(section, key)
            .unwrap_or_else(|| panic!("[{section}] {key} has no default in SCHEMA"));
        Ok(parse(default).expect("SCHEMA defaults parse"))
    }

    pub(super) fn required<T>(
        &self,
        section: &str,
        key: &str,
        hint: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(section, key, parse)?
            .ok_or_else(|| ConfigError::Missing {
                file: self.file().to_path_buf(),
                section: section.into(),
                key: key.into(),
                hint: hint.into(),
            })
    }

    pub(super) fn check_unknown(&self) -> Result<(), ConfigError> {
        let known: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
        for section in &self.ini.sections {
            let Some((name, keys)) = SCHEMA
                .iter()
                .find(|(s, _)| s.eq_ignore_ascii_case(&section.name))
            else {
                return Err(ConfigError::UnknownSection {
                    file: self.ini.path.clone(),
                    line: section.line,
                    section: section.name.clone(),
                    known: known.join(", "),
                });
            };
            if *name == FREE_FORM_SECTION {
                continue;
            }
            for entry in &section.entries {
                if !keys.iter().any(|(k, _)| k.eq_ignore_ascii_case(&entry.key)) {
                    return Err(ConfigError::UnknownKey {
                        origin: format!("{}:{}", self.ini.path.display(), entry.line),
                        section: section.name.clone(),
                        key: entry.key.clone(),
                        suggestion: suggest(&entry.key, keys),
                    });
                }
            }
        }
        Ok(())
    }
}

fn schema_default(section: &str, key: &str) -> Option<&'static str> {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)?
        .1
        .iter()
        .find(|(k, _)| *k == key)?
        .1
}

/// "; did you mean X?" for a near miss (same letters ignoring case and
/// separators, or one edit away).
fn suggest(key: &str, keys: &[KeySpec]) -> String {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>()
    };
    let k = norm(key);
    keys.iter()
        .find(|(cand, _)| {
            let c = norm(cand);
            c == k || edit_distance(&c, &k) <= 2
        })
        .map(|(cand, _)| format!("; did you mean {cand}?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
