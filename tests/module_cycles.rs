//! The top-level modules of each crate form no import cycle: a module may
//! use those before it in this order (keystore, config, crypto, mqtt,
//! provision, daemon, commands: the config layer builds the key stores'
//! settings), never one after it.
//!
//! Read from the source text: every `crate::<module>` path outside comments,
//! attributed to the top-level module of the file it is in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::x` references of one file, comments left out.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` is written by nobody here; a module name starts
            // with a lower-case letter (types re-exported at the root do not).
            if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut g = Graph::new();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = g.entry(module.clone()).or_default();
        for r in references(&text) {
            if r != module {
                deps.insert(r);
            }
        }
    }
    g
}

/// A cycle, as the list of modules around it, if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if g.contains_key(d) {
                if let Some(c) = visit(g, d, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(g, m, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn assert_acyclic(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(crate_dir)
        .join("src");
    let g = graph(&src);
    assert!(g.len() > 3, "{}: modules not found", src.display());
    if let Some(c) = cycle(&g) {
        panic!(
            "{}: import cycle between top-level modules: {}\nall edges: {g:#?}",
            src.display(),
            c.join(" -> ")
        );
    }
}

#[test]
fn the_detector_finds_a_cycle() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).unwrap().join(" "), "a b c a");
    g.get_mut("c").unwrap().clear();
    assert!(cycle(&g).is_none());
    assert_eq!(
        references("use crate::keystore::X; // crate::commands\nlet _ = crate::mqtt::y;"),
        ["keystore", "mqtt"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn no_import_cycle_in_prov_agent() {
    assert_acyclic(".");
}

#[test]
fn no_import_cycle_in_iotcore_emulator() {
    assert_acyclic("emulator");
}
