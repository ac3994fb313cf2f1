//! Under systemd a unit's stderr is the journal (`JOURNAL_STREAM` names it):
//! the agent then logs to journald natively, each event with its priority
//! and its fields, at `info` by default. Tested against a journal socket of
//! the test's own, in a mount namespace (`/run` is a tmpfs there), with
//! stderr a file whose device and inode `JOURNAL_STREAM` names.

mod common;

use common::backend::Backend;
use common::device::Device;
use common::emulator::TestCloud;

const SCRIPT: &str = r#"
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
exec python3 -c '
import json, os, socket, struct, subprocess, sys
agent, config, log = sys.argv[1:4]

def fields(data):
    # journald native protocol: NAME=value lines, or NAME, newline, a
    # 64-bit little-endian length, the value and a newline.
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = nl + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            i = nl + 9 + size + 1
        out[name.decode()] = value.decode("utf-8", "replace")
    return out

journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
journal.bind("/run/systemd/journal/socket")
err = open(log, "w+")
st = os.fstat(err.fileno())
env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
env.pop("PROV_AGENT_LOG", None)
run = subprocess.run([agent, "--config", config, "enroll"], stdout=subprocess.PIPE, stderr=err, env=env)
journal.setblocking(False)
messages = []
while True:
    try:
        data = journal.recv(1 << 20)
        if data:
            messages.append(fields(data))
    except BlockingIOError:
        break
err.seek(0)
print(json.dumps({"rc": run.returncode, "stderr": err.read(), "messages": messages}))
' "$@"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn under_systemd_the_log_goes_to_the_journal_with_priorities() {
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "");
    device.import_claim().await;
    let log = device.dir.path().join("stderr.log");
    let out = common::in_mount_namespace(
        SCRIPT,
        &[
            env!("CARGO_BIN_EXE_prov-agent").as_ref(),
            device.config.as_os_str(),
            log.as_os_str(),
        ],
        vec![],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["rc"], 0, "{result}");
    let messages = result["messages"].as_array().unwrap();
    let entry = |text: &str| {
        messages
            .iter()
            .find(|m| m["MESSAGE"].as_str().is_some_and(|t| t.contains(text)))
            .unwrap_or_else(|| panic!("no journal entry with {text:?}: {messages:#?}"))
    };
    // An info event: logged by default under the journal, with its fields.
    let published = entry("published the identity for other programs");
    assert_eq!(published["SYSLOG_IDENTIFIER"], "prov-agent", "{published}");
    assert!(
        published["PRIORITY"] == "5" || published["PRIORITY"] == "6",
        "{published}"
    );
    assert!(
        published["DIR"]
            .as_str()
            .is_some_and(|d| d.contains("/export/")),
        "{published}"
    );
    // A warning, with the warning's priority.
    let warning = entry("file key store in use");
    assert_eq!(warning["PRIORITY"], "4", "{warning}");
    // Nothing of it went to stderr as text as well.
    let stderr = result["stderr"].as_str().unwrap();
    assert!(!stderr.contains("published the identity"), "{stderr}");
}
