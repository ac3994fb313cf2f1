//! The TPM dies in the middle of `enroll` and of `rotate` (swtpm killed,
//! as a crash or a power loss takes it, at several moments of the run) and
//! comes back: the run fails cleanly (an error and an exit code, no panic,
//! no hang) or completes, the device's identity survives, and the next run
//! completes.
#![cfg(feature = "tpm")]

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

/// Runs `prov-agent <args>` and kills the swtpm `after` into the run; then
/// starts the swtpm again. Returns the run's output.
async fn run_and_kill_the_tpm(
    device: &mut Device,
    args: &[&str],
    after: Duration,
) -> std::process::Output {
    let Backend::Tpm(tpm) = &device.backend else {
        panic!("a TPM device")
    };
    let pid = tpm.pid().to_string();
    let killer = async {
        tokio::time::sleep(after).await;
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await;
    };
    let (out, ()) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(device.run(args), killer)
    })
    .await
    .expect("the run ends after the TPM died");
    let Backend::Tpm(tpm) = &mut device.backend else {
        unreachable!()
    };
    tpm.restart();
    out
}

fn assert_clean(out: &std::process::Output, what: &str) {
    if out.status.success() {
        return;
    }
    let code = out.status.code();
    assert!(
        code.is_some() && code != Some(101),
        "{what}: not a clean failure: {}",
        text(out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{what}: {}",
        text(out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tpm_dies_during_enroll_and_rotate() {
    let cloud = TestCloud::start().await;
    // Runs the kill made fail, of enroll and of rotate: without one of
    // each, the test would prove nothing of that command.
    let (mut enrolls_interrupted, mut rotations_interrupted) = (Vec::new(), Vec::new());
    for ms in [10, 40, 90, 160, 260] {
        let after = Duration::from_millis(ms);
        let mut device = Device::new(&cloud, Backend::tpm(), "");
        device.import_claim().await;

        let out = run_and_kill_the_tpm(&mut device, &["enroll"], after).await;
        assert_clean(&out, &format!("enroll, TPM killed after {ms} ms"));
        if !out.status.success() {
            enrolls_interrupted.push(ms);
        }
        let again = device.run(&["enroll"]).await;
        assert!(
            again.status.success(),
            "enroll after the TPM came back ({ms} ms): {}",
            text(&again)
        );
        device.round_trip(&cloud).await.unwrap();

        let before = device.identity().unwrap();
        let out = run_and_kill_the_tpm(&mut device, &["rotate"], after).await;
        assert_clean(&out, &format!("rotate, TPM killed after {ms} ms"));
        if !out.status.success() {
            rotations_interrupted.push(ms);
        }
        // Old or new: a working identity either way.
        device.round_trip(&cloud).await.unwrap_or_else(|e| {
            panic!(
                "identity after rotate with the TPM killed after {ms} ms: {e}\n{}",
                text(&out)
            )
        });
        let again = device.run(&["rotate"]).await;
        assert!(
            again.status.success(),
            "rotate after the TPM came back ({ms} ms): {}\nthe run the TPM died in: {}",
            text(&again),
            text(&out)
        );
        assert_ne!(
            device.identity().unwrap().certificate_id,
            before.certificate_id
        );
        assert!(!device.state_dir().join("journal.json").exists());
        device.round_trip(&cloud).await.unwrap();
    }
    eprintln!(
        "interrupted: enroll after {enrolls_interrupted:?} ms, rotate after {rotations_interrupted:?} ms"
    );
    assert!(
        !enrolls_interrupted.is_empty(),
        "no kill landed while an enroll was under way"
    );
    assert!(
        !rotations_interrupted.is_empty(),
        "no kill landed while a rotation was under way"
    );
}
