//! The identity other programs on the gateway use (docs/consumers.md):
//! OpenSSL connects to the emulator as the thing with the device key, using
//! only what the export directory (`STATE_DIR/export/current`) gives it,
//! before and after a rotation, on the same paths.
//!
//! - TPM blob keys, through Debian's tpm2-openssl provider and the standard
//!   TPM 2.0 key file, the TPM shared through tpm2-abrmd;
//! - TPM persistent keys, through tpm2-openssl's `handle:` form;
//! - SoftHSM keys, through the OpenSSL pkcs11 engine and the RFC 7512 URI;
//! - tpm2-pkcs11 keys, through GnuTLS and the URI.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;
use serde_json::Value;

/// An MQTT 3.1.1 CONNECT for `client_id`, clean session, keep-alive 60 s.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// The published identity: `current/identity.json`.
fn published(device: &Device) -> (PathBuf, Value) {
    let current = device.state_dir().join("export/current");
    let text = std::fs::read(current.join("identity.json"))
        .unwrap_or_else(|e| panic!("no identity.json in {}: {e}", current.display()));
    (current, serde_json::from_slice(&text).unwrap())
}

/// `openssl s_client` with the published certificate and CA, `key_args`
/// naming the key, and `env`; see [`connack`].
fn openssl_connack(
    cloud: &TestCloud,
    current: &Path,
    thing: &str,
    key_args: &[&str],
    env: &[(String, String)],
) -> Result<[u8; 4], String> {
    let mut cmd = common::clean_command("openssl");
    cmd.arg("s_client")
        .args([
            "-connect",
            &format!("127.0.0.1:{}", cloud.handle.addr().port()),
        ])
        .args(["-servername", "localhost", "-quiet", "-verify_return_error"])
        .arg("-CAfile")
        .arg(current.join("ca.pem"))
        .arg("-cert")
        .arg(current.join("certificate.pem"))
        .args(key_args)
        .envs(env.iter().cloned());
    connack(cmd, thing)
}

/// Runs the TLS client `cmd`, sends CONNECT as `thing` on its standard
/// input and returns the first four bytes the emulator answers (a CONNACK:
/// `20 02 00 00` when accepted), or the client's messages if there are none.
fn connack(mut cmd: Command, thing: &str) -> Result<[u8; 4], String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a TLS client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&connect_packet(thing)).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut answer = [0u8; 4];
        stdout.read_exact(&mut answer).map(|_| answer)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !reader.is_finished() {
        return Err(format!("no answer within 20 s; client: {stderr}"));
    }
    reader
        .join()
        .unwrap()
        .map_err(|e| format!("{e}; client: {stderr}"))
}

const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// OpenSSL's arguments for `key` through tpm2-openssl (preferred over the
/// default provider, which cannot sign with a TPM key).
#[cfg(feature = "tpm")]
fn tpm2_provider_key(key: &str) -> Vec<String> {
    [
        "-provider",
        "tpm2",
        "-provider",
        "default",
        "-propquery",
        "?provider=tpm2",
        "-key",
        key,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Enrolls, connects with OpenSSL as the published identity says, rotates,
/// and connects again with the same paths; `key_args` builds OpenSSL's key
/// arguments from `identity.json`.
async fn consumer_before_and_after_rotation(
    device: &Device,
    cloud: &TestCloud,
    env: &[(String, String)],
    key_args: impl Fn(&Path, &Value) -> Vec<String>,
) {
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let mut seen = Vec::new();
    for round in ["enrolled", "rotated"] {
        if round == "rotated" {
            let out = device.run(&["rotate"]).await;
            assert!(out.status.success(), "rotate: {}", text(&out));
        }
        let identity = device.identity().unwrap();
        let (current, published) = published(device);
        assert_eq!(published["thingName"], identity.thing_name.as_str());
        assert_eq!(published["certificateId"], identity.certificate_id.as_str());
        // The published certificate is the committed one.
        let cert = std::fs::read_to_string(current.join("certificate.pem")).unwrap();
        assert_eq!(cert.trim(), identity.certificate_pem.trim(), "{round}");
        let args = key_args(&current, &published);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = openssl_connack(cloud, &current, &identity.thing_name, &args, env)
            .unwrap_or_else(|e| panic!("{round}: OpenSSL could not connect: {e}"));
        assert_eq!(answer, CONNACK_ACCEPTED, "{round}: CONNACK");
        seen.push(identity.certificate_id);
    }
    assert_ne!(seen[0], seen[1], "the rotation changed nothing");
    // Only the current version is left.
    let versions: Vec<_> = std::fs::read_dir(device.state_dir().join("export"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("id-"))
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
}

/// The key file the export names for a TPM blob key: tpm2-openssl loads it.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn openssl_with_the_tpm2_provider_uses_the_tpm_key_file() {
    let cloud = TestCloud::start().await;
    let backend = Backend::tpm_shared();
    let env = backend.env();
    let device = Device::new(&cloud, backend, "MODE = csr\n");
    consumer_before_and_after_rotation(&device, &cloud, &env, |current, published| {
        let key = &published["key"];
        assert_eq!(key["form"], "tss2-key-file", "{published}");
        let file = current
            .parent()
            .unwrap()
            .join(current.read_link().unwrap())
            .join("device.tss2.pem");
        assert_eq!(key["openssl"], file.to_str().unwrap(), "{published}");
        let pem = std::fs::read_to_string(&file).unwrap();
        assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"), "{pem}");
        tpm2_provider_key(&current.join("device.tss2.pem").display().to_string())
    })
    .await;
}

/// Persistent TPM keys: tpm2-openssl's `handle:0x…`, which changes at each
/// rotation; `identity.json` says which.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn openssl_with_the_tpm2_provider_uses_the_persistent_handle() {
    let cloud = TestCloud::start().await;
    let backend = Backend::tpm_shared();
    let env = backend.env();
    let device = Device::new(&cloud, backend, "MODE = csr\n");
    let config = std::fs::read_to_string(&device.config)
        .unwrap()
        .replace("KEY_STORAGE = blob", "KEY_STORAGE = persistent");
    std::fs::write(&device.config, config).unwrap();
    consumer_before_and_after_rotation(&device, &cloud, &env, |_, published| {
        let key = &published["key"];
        assert_eq!(key["form"], "tpm-handle", "{published}");
        let openssl = key["openssl"].as_str().unwrap().to_string();
        assert!(openssl.starts_with("handle:0x81"), "{published}");
        tpm2_provider_key(&openssl)
    })
    .await;
}

/// A gateway enrolled by a release from before the standard key file: its
/// device key is under the zero-unique SRK and its key file has no
/// `parent` (as those releases wrote it). The key keeps working (the agent
/// connects with it: `check` passes; the export names it as a `tpm-blob` no
/// other tool can load), and the next rotation makes the new key under the primary other
/// tools recreate: tpm2-openssl then connects with the published key file,
/// and the old key's file is gone.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn a_key_from_before_the_key_file_keeps_working_and_rotation_moves_it_to_one() {
    let cloud = TestCloud::start().await;
    let backend = Backend::tpm_shared();
    let env = backend.env();
    let device = Device::new(&cloud, backend, "MODE = csr\n");
    device.import_claim().await;
    let out = device
        .run_env(&["enroll"], &[("PROV_AGENT_FAULT", "tss2-key-file")])
        .await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let old = device.identity().unwrap();
    let old_file = PathBuf::from(old.key_reference.strip_prefix("tpm:blob=").unwrap());
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&old_file).unwrap()).unwrap();
    assert_eq!(meta["parent"], "zero-unique", "{meta}");
    meta.as_object_mut().unwrap().remove("parent");
    std::fs::write(&old_file, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();

    // The older key still signs the handshake: `check` connects with it.
    let out = device.run(&["check"]).await;
    assert!(out.status.success(), "check: {}", text(&out));
    // The export names it as a blob no other tool can load, and says how
    // to get one they can.
    let (_, before) = published(&device);
    assert_eq!(before["key"]["form"], "tpm-blob", "{before}");
    assert!(before["key"]["openssl"].is_null(), "{before}");
    assert!(
        before["key"]["note"]
            .as_str()
            .unwrap()
            .contains("prov-agent rotate"),
        "{before}"
    );

    let out = device.run(&["rotate"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let new = device.identity().unwrap();
    assert_ne!(new.certificate_id, old.certificate_id);
    let new_file = PathBuf::from(new.key_reference.strip_prefix("tpm:blob=").unwrap());
    let meta: Value = serde_json::from_slice(&std::fs::read(&new_file).unwrap()).unwrap();
    assert_eq!(meta["parent"], "owner", "{meta}");
    assert!(!old_file.exists(), "the older key's file is left");
    let (current, published) = published(&device);
    assert_eq!(published["key"]["form"], "tss2-key-file", "{published}");
    let args = tpm2_provider_key(&current.join("device.tss2.pem").display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let answer = openssl_connack(&cloud, &current, &new.thing_name, &args, &env)
        .unwrap_or_else(|e| panic!("OpenSSL could not connect after the rotation: {e}"));
    assert_eq!(answer, CONNACK_ACCEPTED);
}

/// An OpenSSL configuration loading the pkcs11 engine for `module`, with
/// the user PIN (what a consumer's own configuration would hold).
#[cfg(feature = "pkcs11")]
fn pkcs11_engine_conf(dir: &Path, module: &Path, pin: &str) -> PathBuf {
    let out = Command::new("dpkg")
        .args(["-L", "libengine-pkcs11-openssl"])
        .output()
        .unwrap();
    let engine = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("/pkcs11.so"))
        .map(str::to_string)
        .expect("libengine-pkcs11-openssl is not installed: run ci/install-deps.sh");
    let conf = dir.join("openssl-pkcs11.cnf");
    std::fs::write(
        &conf,
        format!(
            "openssl_conf = init\n[init]\nengines = engines\n[engines]\npkcs11 = pkcs11\n\
             [pkcs11]\nengine_id = pkcs11\ndynamic_path = {engine}\nMODULE_PATH = {}\n\
             PIN = {pin}\ninit = 0\n",
            module.display()
        ),
    )
    .unwrap();
    conf
}

#[cfg(feature = "pkcs11")]
fn engine_args(published: &Value) -> Vec<String> {
    let key = &published["key"];
    assert_eq!(key["form"], "pkcs11-uri", "{published}");
    let uri = key["uri"].as_str().unwrap();
    assert!(uri.starts_with("pkcs11:token="), "{published}");
    assert_eq!(key["openssl"], uri, "{published}");
    ["-engine", "pkcs11", "-keyform", "engine", "-key", uri]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// SoftHSM through the OpenSSL pkcs11 engine and the published URI.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn openssl_with_the_pkcs11_engine_uses_the_softhsm_uri() {
    let cloud = TestCloud::start().await;
    let backend = Backend::pkcs11("consumer");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("openssl-pkcs11.cnf");
    let mut env = backend.env();
    env.push(("OPENSSL_CONF".into(), conf.display().to_string()));
    let device = Device::new(&cloud, backend, "MODE = csr\n");
    consumer_before_and_after_rotation(&device, &cloud, &env, |_, published| {
        // The engine's module is the one the published identity names.
        let module = Path::new(published["key"]["module"].as_str().unwrap());
        assert!(module.is_file(), "{published}");
        pkcs11_engine_conf(dir.path(), module, common::softhsm::USER_PIN);
        engine_args(published)
    })
    .await;
}

/// tpm2-pkcs11 through OpenSSL and through GnuTLS (`gnutls-cli`), with
/// the published URI and module, before and after a rotation. OpenSSL with
/// the pkcs11 engine named by its key URI (`org.openssl.engine:pkcs11:`),
/// not registered as OpenSSL's default with `-engine` or `openssl.cnf`:
/// registered so, its RSA method is also what tpm2-tss gets inside the
/// module's login, which then fails (tpm2-tss #3151; docs/consumers.md).
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn openssl_and_gnutls_use_the_tpm2_pkcs11_uri() {
    let cloud = TestCloud::start().await;
    let token = common::tpm2pkcs11::Tpm2Pkcs11::new("consumer");
    let dir = tempfile::tempdir().unwrap();
    let env = token.env();
    let device = Device::new(&cloud, Backend::Tpm2Pkcs11(token), "MODE = csr\n");
    // tpm2-pkcs11 cannot import: the claim key goes in with its own tool
    // and the certificate where CLAIM_CERT says.
    let Backend::Tpm2Pkcs11(token) = &device.backend else {
        unreachable!()
    };
    let config = device.load_config();
    let key = device.path("claim.private.pem.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    let ec = prov_agent::keystore::PrivateKeyMaterial::from_pem(&pem)
        .unwrap()
        .algorithm()
        .is_ec();
    token.import_key(
        config.keystore.claim_key.as_str(),
        &key,
        if ec { "ecc" } else { "rsa" },
    );
    let cert = &config.settings.claim_cert;
    std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
    std::fs::copy(device.path("claim.pem.crt"), cert).unwrap();
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    for round in ["enrolled", "rotated"] {
        if round == "rotated" {
            let out = device.run(&["rotate"]).await;
            assert!(out.status.success(), "rotate: {}", text(&out));
        }
        let identity = device.identity().unwrap();
        let (current, published) = published(&device);
        engine_args(&published);
        let uri = published["key"]["uri"].as_str().unwrap();
        let module = published["key"]["module"].as_str().unwrap();
        // OpenSSL: the engine reached through the key's store URI, the
        // module from PKCS11_MODULE_PATH, the PIN from a file.
        let key = format!("org.openssl.engine:pkcs11:{uri}");
        let pass = format!("file:{}", token.pin_file.display());
        let mut openssl_env = env.clone();
        openssl_env.push(("PKCS11_MODULE_PATH".into(), module.to_string()));
        let answer = openssl_connack(
            &cloud,
            &current,
            &identity.thing_name,
            &["-key", &key, "-pass", &pass],
            &openssl_env,
        )
        .unwrap_or_else(|e| panic!("{round}: OpenSSL could not connect: {e}"));
        assert_eq!(answer, CONNACK_ACCEPTED, "{round}: OpenSSL's CONNACK");
        // GnuTLS, with the module as its provider.
        let mut cmd = common::clean_command("gnutls-cli");
        cmd.args(["localhost", "-p", &cloud.handle.addr().port().to_string()])
            .arg(format!(
                "--logfile={}",
                dir.path().join("gnutls.log").display()
            ))
            .arg(format!("--x509cafile={}", current.join("ca.pem").display()))
            .arg(format!(
                "--x509certfile={}",
                current.join("certificate.pem").display()
            ))
            .arg(format!("--x509keyfile={uri}"))
            .arg(format!("--provider={module}"))
            .envs(env.iter().cloned())
            .env("GNUTLS_PIN", common::tpm2pkcs11::USER_PIN);
        let answer = connack(cmd, &identity.thing_name).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("gnutls.log")).unwrap_or_default();
            panic!("{round}: GnuTLS could not connect: {e}\n{log}")
        });
        assert_eq!(answer, CONNACK_ACCEPTED, "{round}: CONNACK");
    }
}

/// Reads `path` as `nobody` (group `nogroup`): whether another user of
/// the gateway can.
fn nobody_can_read(path: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `[EXPORT] GROUP`: the group's members read the published identity
/// (directories 0750, files 0640, the group's); without it nobody else
/// can, and the key store's own files stay the agent's either way.
#[tokio::test(flavor = "multi_thread")]
async fn the_export_group_reads_the_identity_and_no_one_else_does() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cloud = TestCloud::start().await;
    let device = Device::new(&cloud, Backend::File, "MODE = csr\n");
    // The test's temp dir is 0700; a gateway's /var/lib is not.
    std::fs::set_permissions(device.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = device.dir.path().join("identity");
    let mut config = std::fs::read_to_string(&device.config).unwrap();
    config.push_str(&format!(
        "[EXPORT]\nDIR = {}\nGROUP = nogroup\n",
        shared.display()
    ));
    std::fs::write(&device.config, config).unwrap();
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));

    let current = shared.join("current");
    for name in ["certificate.pem", "ca.pem", "identity.json"] {
        let file = current.join(name);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640, "{name}");
        assert_eq!(meta.gid(), 65534, "{name}");
        assert!(nobody_can_read(&file), "nogroup cannot read {name}");
    }
    let version = std::fs::metadata(&current).unwrap();
    assert_eq!(version.mode() & 0o777, 0o750);
    assert_eq!(version.gid(), 65534);
    // The state directory and the key store stay private.
    assert!(!nobody_can_read(&device.state_dir().join("identity.json")));

    // Without the group: nobody else reads the default export.
    let other = Device::new(&cloud, Backend::File, "MODE = csr\n");
    std::fs::set_permissions(other.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    other.import_claim().await;
    let out = other.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let cert = other.state_dir().join("export/current/certificate.pem");
    assert!(cert.exists());
    assert_eq!(std::fs::metadata(&cert).unwrap().mode() & 0o777, 0o600);
    assert!(!nobody_can_read(&cert));
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto bridge on the gateway: a local broker whose bridge connects
/// to the emulator as the thing with the published certificate and the
/// TPM key file (through OpenSSL 3 and the tpm2 provider, which the
/// bridge's OpenSSL configuration activates). A message published to the
/// local broker reaches the emulator over the bridge, before and after a
/// rotation (the bridge restarted by the post-rotation step, as
/// docs/consumers.md says).
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn a_mosquitto_bridge_uses_the_tpm_key_file() {
    let cloud = TestCloud::start_with(|c| c.record_packets = true).await;
    let backend = Backend::tpm_shared();
    let mut env = backend.env();
    let device = Device::new(&cloud, backend, "MODE = csr\n");
    let dir = tempfile::tempdir().unwrap();
    let ossl = dir.path().join("openssl.cnf");
    std::fs::write(
        &ossl,
        "openssl_conf = init\n[init]\nproviders = providers\nalg_section = algorithms\n\
         [algorithms]\ndefault_properties = ?provider=tpm2\n[providers]\n\
         default = default_provider\ntpm2 = tpm2_provider\n[default_provider]\nactivate = 1\n\
         [tpm2_provider]\nactivate = 1\n",
    )
    .unwrap();
    env.push(("OPENSSL_CONF".into(), ossl.display().to_string()));
    device.import_claim().await;
    let out = device.run(&["enroll"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let thing = device.identity().unwrap().thing_name;
    let current = device.state_dir().join("export/current");
    let topic = format!("things/{thing}/telemetry");

    for round in ["enrolled", "rotated"] {
        if round == "rotated" {
            let out = device.run(&["rotate"]).await;
            assert!(out.status.success(), "rotate: {}", text(&out));
        }
        let local = free_port();
        let conf = dir.path().join(format!("mosquitto-{round}.conf"));
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {local} 127.0.0.1\nallow_anonymous true\n\
                 log_dest stderr\nlog_type all\n\
                 connection emulator\naddress localhost:{port}\nclientid {thing}\n\
                 bridge_protocol_version mqttv311\ntry_private false\nnotifications false\n\
                 cleansession true\nstart_type automatic\nrestart_timeout 1\n\
                 bridge_cafile {ca}\nbridge_certfile {cert}\nbridge_keyfile {key}\n\
                 topic {topic} out 1\n",
                port = cloud.handle.addr().port(),
                ca = current.join("ca.pem").display(),
                cert = current.join("certificate.pem").display(),
                key = current.join("device.tss2.pem").display(),
            ),
        )
        .unwrap();
        let mut broker = common::clean_command("mosquitto")
            .arg("-c")
            .arg(&conf)
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto (run ci/install-deps.sh)");
        let before = cloud.handle.packet_log().len();
        // Publish until the bridge has carried one message over.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let carried = loop {
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &local.to_string(), "-q", "1"])
                .args(["-t", &topic, "-m", round])
                .status();
            let log = cloud.handle.packet_log();
            let seen = log[before.min(log.len())..].iter().any(|c| {
                c.client_id == thing
                    && c.packets.iter().any(|p| {
                        matches!(&p.packet, iotcore_emulator::LoggedPacket::Publish { topic: t, .. } if *t == topic)
                    })
            });
            if seen || std::time::Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let _ = broker.kill();
        let out = broker.wait_with_output().unwrap();
        assert!(
            carried,
            "{round}: the bridge carried nothing to the emulator; mosquitto:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
