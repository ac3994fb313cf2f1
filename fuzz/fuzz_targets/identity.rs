//! `Identity::load`: STATE_DIR/identity.json (serde JSON and the
//! certificate it carries).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prov_agent::crypto::Certificate;
use prov_agent::provision::identity::Identity;

/// A state directory of this process's own.
fn state_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("prov-agent-fuzz-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = state_dir();
    let path = Identity::path(dir);
    std::fs::write(&path, data).unwrap();
    let Ok(Some(identity)) = Identity::load(dir) else {
        return;
    };
    // Its certificate parses, and the identity as `save` writes it loads
    // the same.
    Certificate::from_pem(&identity.certificate_pem, "identity").expect("load checked it");
    std::fs::write(&path, serde_json::to_vec_pretty(&identity).unwrap()).unwrap();
    assert_eq!(Identity::load(dir).unwrap().unwrap(), identity);
});
