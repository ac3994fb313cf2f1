//! An iotcore-emulator in this test process, on port 0, with the
//! repository's policies and templates, and a claim credential.

use std::path::{Path, PathBuf};

use iotcore_emulator::{Credential, Emulator, EmulatorConfig, EmulatorHandle};

pub struct TestCloud {
    pub handle: EmulatorHandle,
    pub claim: Credential,
    pub dir: tempfile::TempDir,
}

fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
}

fn json_files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

impl TestCloud {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmulatorConfig::new(dir.path().join("emulator"));
        tweak(&mut config);
        let handle = Emulator::start(config).await.unwrap();
        for (name, body) in json_files(&repo("policies")) {
            handle.registry().create_policy(&name, &body).unwrap();
        }
        for (name, body) in json_files(&repo("templates")) {
            handle
                .registry()
                .create_template(&name, &body, true, None)
                .unwrap();
        }
        let claim = handle.create_claim_credential("claim").unwrap();
        Self { handle, claim, dir }
    }
}
