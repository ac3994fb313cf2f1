//! `Journal::load`: STATE_DIR/journal.json, version 2 or a version-1 one
//! converted.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prov_agent::provision::journal::{self, Journal};

/// A state directory of this process's own.
fn state_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("prov-agent-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = state_dir();
    let path = Journal::path(dir);
    std::fs::write(&path, data).unwrap();
    let Ok(Some(loaded)) = Journal::load(dir) else {
        return;
    };
    // A journal that loads (a converted version-1 one too) is one of this
    // version, and written as this version it loads the same.
    assert_eq!(loaded.version, journal::VERSION);
    std::fs::write(&path, serde_json::to_vec_pretty(&loaded).unwrap()).unwrap();
    let again = Journal::load(dir).unwrap().unwrap();
    assert_eq!(again, loaded);
});
