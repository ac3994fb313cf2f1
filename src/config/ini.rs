//! A small INI reader that keeps line numbers, in the dialect of Python's
//! `configparser` that the reference client's `config.ini` is written in:
//! `[SECTION]`, `key = value` or `key: value`, whole-line `#` and `;`
//! comments, keys case-insensitive, values trimmed, indented lines continue
//! the previous value.

use std::path::{Path, PathBuf};

use super::ConfigError;

#[derive(Debug, Clone)]
pub struct Entry {
    /// Key as written (for messages).
    pub key: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Section {
    /// Section name as written.
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Default)]
pub struct Ini {
    pub path: PathBuf,
    pub sections: Vec<Section>,
}

impl Ini {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut ini = Ini {
            path: path.to_path_buf(),
            sections: Vec::new(),
        };
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let err = |message: String| ConfigError::Syntax {
                file: path.to_path_buf(),
                line: line_no,
                message,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                // Continuation of the previous value.
                let entry = ini
                    .sections
                    .last_mut()
                    .and_then(|s| s.entries.last_mut())
                    .ok_or_else(|| err("indented line continues nothing".into()))?;
                entry.value.push('\n');
                entry.value.push_str(trimmed);
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| {
                        err(format!("section header {trimmed:?} lacks its closing ']'"))
                    })?
                    .trim();
                if name.is_empty() {
                    return Err(err("empty section name".into()));
                }
                if let Some(prev) = ini
                    .sections
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(name))
                {
                    return Err(err(format!(
                        "section [{name}] appears twice (first at line {})",
                        prev.line
                    )));
                }
                ini.sections.push(Section {
                    name: name.to_string(),
                    line: line_no,
                    entries: Vec::new(),
                });
                continue;
            }
            let sep = trimmed.find(['=', ':']).ok_or_else(|| {
                err(format!(
                    "{trimmed:?} is neither `KEY = value` nor a [SECTION]"
                ))
            })?;
            let key = trimmed[..sep].trim();
            let value = trimmed[sep + 1..].trim();
            if key.is_empty() {
                return Err(err("a value with no key".into()));
            }
            let section = ini
                .sections
                .last_mut()
                .ok_or_else(|| err(format!("key {key} comes before any [SECTION]")))?;
            if let Some(prev) = section
                .entries
                .iter()
                .find(|e| e.key.eq_ignore_ascii_case(key))
            {
                return Err(err(format!(
                    "[{}] {key} is set twice (first at line {})",
                    section.name, prev.line
                )));
            }
            section.entries.push(Entry {
                key: key.to_string(),
                value: value.to_string(),
                line: line_no,
            });
        }
        Ok(ini)
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reference_format() {
        let text = "[SETTINGS]\n# comment\nSECURE_CERT_PATH = ./certs\nIOT_ENDPOINT: x.example\n\
                    ; other comment\n[More]\nmulti = a\n  b\n";
        let ini = Ini::parse(Path::new("c.ini"), text).unwrap();
        let s = ini.section("settings").unwrap();
        assert_eq!(s.get("secure_cert_path").unwrap().value, "./certs");
        assert_eq!(s.get("IOT_ENDPOINT").unwrap().value, "x.example");
        assert_eq!(s.get("IOT_ENDPOINT").unwrap().line, 4);
        assert_eq!(
            ini.section("MORE").unwrap().get("multi").unwrap().value,
            "a\nb"
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("KEY = 1\n", 1, "before any [SECTION]"),
            ("[A]\n[A]\n", 2, "appears twice"),
            ("[A]\nk=1\nK=2\n", 3, "set twice"),
            ("[A]\njunk\n", 2, "neither"),
            ("[A\n", 1, "closing"),
        ] {
            let e = Ini::parse(Path::new("c.ini"), text).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("c.ini:{line}")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }
}
