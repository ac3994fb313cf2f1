//! No copy of a secret left in the agent's memory (issue #13), looked for
//! the way an attacker with a core image would: after a keys-mode
//! enrollment (the service sends the device's private key, which goes into
//! the hardware) the agent writes all its writable memory to a file at exit
//! (`PROV_AGENT_MEMDUMP`, test builds only, src/memdump.rs), and the test
//! searches it for the key in every form it travelled in (PEM, JSON-escaped
//! PEM, DER), for the ownership token and for the PKCS#11 PIN. The key and
//! the token are the ones the emulator sent (it records them for the
//! test): besides the PEM markers and DER openings, the test looks for
//! pieces of the key's base64 body and of its DER that encode only private
//! numbers (never the modulus or the public exponent, which the
//! certificate holds), and of each of its secret numbers (d, p, q, dP, dQ,
//! qInv) big-endian, as they cross C_CreateObject and TPM2B_SENSITIVE, and
//! byte-reversed, as a big-number library on a little-endian machine keeps
//! them. Each needle is first shown to be in a copy of what the emulator
//! sent, and not in the certificate, so that no test passes because it
//! looked for something that was never there.
//!
//! The same with `PIN_SOURCE = env:NAME`: the PIN is in neither the dump
//! nor the process's environment block (`/proc/<pid>/environ`, read by the
//! test in the middle of the enrollment where it may, and by the agent
//! itself at exit).
//!
//! The same for the running daemon, some seconds after a keys-mode
//! rotation on command (SIGUSR2 makes it write a dump), and again when it
//! has stopped on SIGTERM, on both hardware backends, and for every key
//! helper it started (each writes its own dump when the daemon ends it;
//! the one that imported the key says so in its dump).
//!
//! Every dump is checked to hold every writable mapping whole, to see the
//! heap (a string the agent keeps is in it) and to see no freed memory (a
//! string it freed is not: freed memory is wiped).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;

/// Where `needle` occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(suffix);
    p.into()
}

/// A memory dump and what src/memdump.rs wrote beside it.
struct Dump {
    path: PathBuf,
    memory: Vec<u8>,
    /// What the process said it did (`tag` lines).
    tags: Vec<String>,
    /// `/proc/self/environ` as the process read it when it wrote the dump.
    environ: Vec<u8>,
}

/// Writable mappings a dump may hold only in part, none so far: every
/// writable mapping of the agent (heap, stacks, data, anonymous maps) can
/// be read through /proc/self/mem, and a dump that misses any of it fails.
/// (`[vvar]` and `[vsyscall]`, which cannot, are not writable and not
/// dumped.)
const MAY_BE_SKIPPED: &[&str] = &[];

/// Reads the dump at `path`, checking that it holds every writable mapping
/// whole (as its `.map` says) and that it sees the heap but no freed memory
/// (`mark`: the test's PROV_AGENT_MEMDUMP_MARK).
fn read_dump(path: &Path, mark: &str) -> Dump {
    let memory = std::fs::read(path).unwrap_or_else(|e| panic!("no memory dump {path:?}: {e}"));
    let map = std::fs::read_to_string(with_suffix(path, ".map")).unwrap();
    let environ = std::fs::read(with_suffix(path, ".environ")).unwrap();
    let mut tags = Vec::new();
    let mut incomplete = Vec::new();
    let mut names = Vec::new();
    let mut read_total = 0u64;
    let mut environ_len = None;
    for line in map.lines() {
        if let Some(tag) = line.strip_prefix("tag ") {
            tags.push(tag.to_string());
        } else if let Some(n) = line.strip_prefix("environ ") {
            environ_len = Some(n.parse::<usize>().unwrap());
        } else if let Some(error) = line.strip_prefix("error ") {
            let last: &mut String = incomplete
                .last_mut()
                .unwrap_or_else(|| panic!("{path:?}.map: an error of a complete mapping: {line}"));
            last.push_str(&format!(" ({error})"));
        } else {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 5, "{path:?}.map: {line:?}");
            let read: u64 = fields[2].parse().unwrap();
            let mapped: u64 = fields[3].parse().unwrap();
            read_total += read;
            names.push(fields[4].to_string());
            if read != mapped && !MAY_BE_SKIPPED.contains(&fields[4]) {
                incomplete.push(format!(
                    "{} {} {:?}: {read} of {mapped} bytes read",
                    fields[0], fields[1], fields[4]
                ));
            }
        }
    }
    assert!(
        incomplete.is_empty(),
        "writable mappings the dump {path:?} does not hold whole (only {MAY_BE_SKIPPED:?} \
         may be skipped):\n{}",
        incomplete.join("\n")
    );
    assert_eq!(
        memory.len() as u64,
        read_total,
        "the dump {path:?} is not the mappings its .map lists"
    );
    assert!(
        names.iter().any(|n| n == "[stack]") && names.iter().any(|n| n == "[heap]"),
        "the dump {path:?} lacks the stack or the heap: {names:?}"
    );
    assert_eq!(environ_len, Some(environ.len()), "{path:?}.environ");
    assert!(memory.len() > 100_000, "the dump is {} bytes", memory.len());
    assert!(
        find(&memory, format!("KEPT-{mark}").as_bytes()).is_some(),
        "the dump {path:?} does not see the heap"
    );
    assert!(
        find(&memory, format!("FREED-{mark}").as_bytes()).is_none(),
        "freed memory is not wiped ({path:?})"
    );
    Dump {
        path: path.to_path_buf(),
        memory,
        tags,
        environ,
    }
}

/// Base64url without padding of `bytes` (a multiple of 3 long).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_eq!(bytes.len() % 3, 0);
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
        }
    }
    out
}

/// DER openings of an RSA-2048 private key (what CreateKeysAndCertificate
/// sends): PKCS#1 RSAPrivateKey (version 0, a 257-byte modulus) and PKCS#8
/// (version 0, rsaEncryption).
const RSA_PKCS1_DER: &[u8] = &[0x02, 0x01, 0x00, 0x02, 0x82, 0x01, 0x01, 0x00];
const PKCS8_RSA_DER: &[u8] = &[
    0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    0x05, 0x00, 0x04, 0x82,
];

/// A needle the tests look for.
struct Piece {
    what: String,
    needle: Vec<u8>,
    /// The bytes of the key's DER (or of one of its numbers) the needle
    /// is or encodes: private material only.
    private: Vec<u8>,
    /// A copy of the key in the form the needle is taken from (its PEM
    /// text, its DER, a number in one byte order).
    copy: Vec<u8>,
}

/// The secret numbers of an RSA key, named, big-endian.
fn secret_numbers(key: &rsa::RsaPrivateKey) -> Vec<(&'static str, Vec<u8>)> {
    use rsa::traits::PrivateKeyParts;
    let primes = key.primes();
    vec![
        ("d", key.d().to_bytes_be()),
        ("p", primes[0].to_bytes_be()),
        ("q", primes[1].to_bytes_be()),
        ("dP", key.dp().unwrap().to_bytes_be()),
        ("dQ", key.dq().unwrap().to_bytes_be()),
        ("qInv", key.qinv().unwrap().to_bytes_be().1),
    ]
}

/// The pieces of `pem` (a private key the emulator sent) the test looks
/// for, each named: 48 characters from the middle of every whole base64
/// line of the PEM that encodes bytes of the secret numbers only (past the
/// modulus and the public exponent, which the certificate holds); for
/// each secret number, 24 bytes from its middle, big-endian and
/// byte-reversed; and 32 bytes of the DER around the header of q (the end
/// of p, the INTEGER tag and length, the start of q).
fn key_pieces(pem: &str) -> Vec<Piece> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;

    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .expect("the emulator sends an RSA key");
    let der = pem::parse(pem).unwrap().into_contents();
    let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    // The base64 body, 64 characters (48 bytes of DER) a line but for the
    // last.
    assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 64));
    let numbers: Vec<(&str, Vec<u8>, usize)> = secret_numbers(&key)
        .into_iter()
        .map(|(name, be)| {
            assert!(be.len() >= 100, "{name} is {} bytes", be.len());
            let at = find(&der, &be).unwrap_or_else(|| panic!("{name} is not in the DER"));
            (name, be, at)
        })
        .collect();
    let mut pieces = Vec::new();
    // Every whole line from the first that starts within d.
    let first = numbers[0].2.div_ceil(48);
    let whole = &lines[..lines.len() - 1];
    for (line, text) in whole.iter().enumerate().skip(first) {
        let bytes = line * 48..line * 48 + 48;
        let within: Vec<&str> = numbers
            .iter()
            .filter(|(_, be, at)| *at < bytes.end && bytes.start < at + be.len())
            .map(|(name, _, _)| *name)
            .collect();
        // Characters 8..56 encode the line's bytes 6..42.
        pieces.push(Piece {
            what: format!(
                "the PEM's base64 line {} (of {})",
                line + 1,
                within.join(", ")
            ),
            needle: text.as_bytes()[8..56].to_vec(),
            private: der[bytes.start + 6..bytes.start + 42].to_vec(),
            copy: pem.as_bytes().to_vec(),
        });
    }
    for (name, be, at) in numbers {
        let mid = be.len() / 2;
        let window = be[mid - 12..mid + 12].to_vec();
        let mut reversed = window.clone();
        reversed.reverse();
        pieces.push(Piece {
            what: format!("its {name} (big-endian)"),
            needle: window.clone(),
            private: window.clone(),
            copy: be.clone(),
        });
        let mut be_reversed = be.clone();
        be_reversed.reverse();
        pieces.push(Piece {
            what: format!("its {name} (byte-reversed)"),
            needle: reversed,
            private: window,
            copy: be_reversed,
        });
        if name == "q" {
            let header = der[at - 20..at + 12].to_vec();
            pieces.push(Piece {
                what: "its DER (the end of p, the header of q)".into(),
                needle: header.clone(),
                private: header,
                copy: der.clone(),
            });
        }
    }
    pieces
}

/// Checks that each of `pieces` of the key `pem` is in the copy it names,
/// stands for bytes past the key's public numbers, and is in none of
/// `public` (the key's public key and certificate, PEM and DER): a needle
/// that is not there, or that the agent may rightly hold, would prove
/// nothing. Says which is not.
fn verify_pieces(pem: &str, pieces: &[Piece], public: &[Vec<u8>]) -> Result<(), String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;

    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .unwrap();
    let der = pem::parse(pem).unwrap().into_contents();
    // The private numbers start where d does, after n and e.
    let n = key.n().to_bytes_be();
    let e = key.e().to_bytes_be();
    let d_at = find(&der, &secret_numbers(&key)[0].1).unwrap();
    assert!(find(&der, &n).unwrap() + n.len() + e.len() < d_at);
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    for piece in pieces {
        let what = &piece.what;
        if find(&piece.copy, &piece.needle).is_none() {
            return Err(format!("{what} is not found in its copy of the key"));
        }
        if find(&der[d_at..], &piece.private).is_none() {
            return Err(format!(
                "{what} does not stand for private bytes of the key's DER"
            ));
        }
        for (i, public) in public.iter().enumerate() {
            if find(public, &piece.needle).is_some() || find(public, &piece.private).is_some() {
                return Err(format!("{what} is in the key's public form #{i}"));
            }
        }
    }
    Ok(())
}

/// The key's public forms: its public key (SubjectPublicKeyInfo and
/// PKCS#1, PEM and DER) and `certificates` (PEM, and their DER).
fn public_forms(pem: &str, certificates: &[&str]) -> Vec<Vec<u8>> {
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};

    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .unwrap();
    let public = key.to_public_key();
    let lf = rsa::pkcs8::LineEnding::LF;
    let mut forms = vec![
        public.to_public_key_der().unwrap().as_bytes().to_vec(),
        public.to_public_key_pem(lf).unwrap().as_bytes().to_vec(),
        public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        public.to_pkcs1_pem(lf).unwrap().as_bytes().to_vec(),
    ];
    for certificate in certificates {
        forms.push(certificate.as_bytes().to_vec());
        for part in pem::parse_many(certificate).unwrap() {
            forms.push(part.into_contents());
        }
    }
    forms
}

/// The emulator, recording the keys and tokens it sends.
async fn recording_cloud() -> TestCloud {
    TestCloud::start_with(|c| c.record_issued_keys = true).await
}

/// How many keys and tokens the emulator has sent.
fn sent(cloud: &TestCloud) -> (usize, usize) {
    (
        cloud.handle.issued_keys().len(),
        cloud.handle.issued_tokens().len(),
    )
}

/// What the tests look for after the emulator's first `before` keys and
/// tokens were sent ([`sent`]): the pieces of every key it sent since (one,
/// unless a request was retried: then each answer's key crossed the
/// agent), each checked against its copy and against `certificate`, the
/// identity's; the ownership tokens' beginning (which encodes the
/// certificate id `certificate_id`, as the token of the committed identity
/// does) and their MAC; the PEM markers and the DER openings of an RSA
/// private key; and the PIN, if there is one.
fn needles(
    cloud: &TestCloud,
    before: (usize, usize),
    certificate: &str,
    certificate_id: &str,
    pin: Option<&str>,
) -> Vec<(String, Vec<u8>)> {
    let keys = cloud.handle.issued_keys();
    assert!(keys.len() > before.0, "the emulator sent no key");
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("a PEM private key".into(), b"PRIVATE KEY".to_vec()),
        (
            "an RSA private key (PKCS#1 DER)".into(),
            RSA_PKCS1_DER.to_vec(),
        ),
        (
            "an RSA private key (PKCS#8 DER)".into(),
            PKCS8_RSA_DER.to_vec(),
        ),
    ];
    for (i, pem) in keys[before.0..].iter().enumerate() {
        let pieces = key_pieces(pem);
        verify_pieces(pem, &pieces, &public_forms(pem, &[certificate])).unwrap();
        // The markers are the key's too (a PKCS#8 key holds the PKCS#1 one).
        let der = pem::parse(pem.as_bytes()).unwrap().into_contents();
        assert!(pem.contains("PRIVATE KEY") && find(&der, RSA_PKCS1_DER).is_some());
        for piece in pieces {
            needles.push((
                format!("a piece of the service-sent key #{}, {}", i + 1, piece.what),
                piece.needle,
            ));
        }
    }
    // The ownership token (the emulator's: base64url of "<certificate
    // id>.<expiry>", then its MAC): its first 84 characters encode the
    // certificate id's first 63 bytes, whatever follows.
    let tokens = cloud.handle.issued_tokens();
    assert!(tokens.len() > before.1, "the emulator sent no token");
    let start = base64url(&certificate_id.as_bytes()[..63]);
    assert!(
        tokens[before.1..].iter().any(|t| t.starts_with(&start)),
        "no token the emulator sent is for certificate {certificate_id}"
    );
    for (i, token) in tokens[before.1..].iter().enumerate() {
        let (claims, mac) = token.split_once('.').expect("claims.MAC");
        assert!(claims.len() >= 84 && mac.len() >= 40, "{}", token.len());
        needles.push((
            format!("the ownership token #{} (its claims)", i + 1),
            claims.as_bytes()[..84].to_vec(),
        ));
        needles.push((
            format!("the ownership token #{} (its MAC)", i + 1),
            mac.as_bytes().to_vec(),
        ));
    }
    if let Some(pin) = pin {
        needles.push(("the PIN".into(), pin.as_bytes().to_vec()));
    }
    needles
}

/// Panics naming the first of `needles` found in `dump` (its memory or
/// its environment block), with what surrounds it.
fn assert_none_in(dump: &Dump, needles: &[(String, Vec<u8>)], whose: &str) {
    for (what, needle) in needles {
        for (place, bytes) in [("memory", &dump.memory), ("environment", &dump.environ)] {
            if let Some(at) = find(bytes, needle) {
                let context = &bytes[at.saturating_sub(64)..(at + 96).min(bytes.len())];
                panic!(
                    "{what} is in {whose} {place} ({:?}) at offset {at}: {:?}",
                    dump.path,
                    String::from_utf8_lossy(context)
                );
            }
        }
    }
}

/// The environment variable the `env:` PIN tests use.
const PIN_VARIABLE: &str = "GATEWAY_TOKEN_PIN";

/// The state of process `pid` (`/proc/<pid>/stat`'s third field).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Checks that `environ` (a process's environment block) holds the PIN
/// variable's name but not the PIN.
fn assert_pin_wiped(environ: &[u8], pin: &str, whose: &str) {
    assert!(
        find(environ, format!("{PIN_VARIABLE}=").as_bytes()).is_some(),
        "{whose} environment block does not hold {PIN_VARIABLE}= at all: not the block \
         the PIN was given in"
    );
    assert!(
        find(environ, pin.as_bytes()).is_none(),
        "the PIN is in {whose} environment block"
    );
}

/// A keys-mode enrollment leaves no key, no ownership token and no PIN in
/// the agent's memory. With `pin_variable`, the PIN comes from that
/// variable (`PIN_SOURCE = env:NAME`): the enrollment is stopped before
/// it writes the identity, so that the test can read its
/// `/proc/<pid>/environ`, which must not hold the PIN any more.
async fn keys_mode_enroll_leaves_no_secret(
    backend: Backend,
    pin: Option<&str>,
    pin_variable: bool,
) {
    let cloud = recording_cloud().await;
    let device = Device::new(&cloud, backend, "MODE = keys\n");
    device.import_claim().await;
    let before = sent(&cloud);
    let dump = device.dir.path().join("memory.dump");
    let mark = hex::encode(rand::random::<[u8; 8]>());
    let mut env = vec![
        ("PROV_AGENT_MEMDUMP", dump.to_str().unwrap().to_string()),
        ("PROV_AGENT_MEMDUMP_MARK", mark.clone()),
    ];
    let out = if pin_variable {
        let pin = pin.expect("a PIN for the variable");
        device.pin_from_variable(PIN_VARIABLE);
        env.push((PIN_VARIABLE, pin.to_string()));
        env.push(("PROV_AGENT_FAULT", "before-identity-write".to_string()));
        enroll_stopped_midway(&device, &env, pin).await
    } else {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        device.run_env(&["enroll"], &env).await
    };
    assert!(out.status.success(), "enroll: {}", text(&out));
    let identity = device.identity().unwrap();
    let needles = needles(
        &cloud,
        before,
        &identity.certificate_pem,
        &identity.certificate_id,
        pin,
    );
    let dump = read_dump(&dump, &mark);
    if pin_variable {
        assert_pin_wiped(&dump.environ, pin.unwrap(), "the agent's (at exit)");
    }
    assert_none_in(&dump, &needles, "the agent's");
    if pin_variable {
        // Another command logs in with the PIN it took from its
        // environment, and says so when the variable is not set.
        let list = device
            .run_env(&["keys", "list"], &[(PIN_VARIABLE, pin.unwrap())])
            .await;
        assert!(list.status.success(), "keys list: {}", text(&list));
        let unset = device.run(&["keys", "list"]).await;
        assert!(
            !unset.status.success()
                && text(&unset).contains(&format!("environment variable {PIN_VARIABLE}")),
            "keys list without the PIN: {}",
            text(&unset)
        );
    }
}

/// `prov-agent enroll` with `env`, which makes it stop (SIGSTOP) before it
/// writes the identity: there its `/proc/<pid>/environ` is read (where the
/// test may: the agent is not dumpable, so only a privileged test can) and
/// must not hold `pin`; then it goes on to its end.
#[allow(clippy::await_holding_lock, clippy::let_unit_value)]
async fn enroll_stopped_midway(
    device: &Device,
    env: &[(&str, String)],
    pin: &str,
) -> std::process::Output {
    let mut cmd = common::clean_tokio_command(env!("CARGO_BIN_EXE_prov-agent"));
    cmd.arg("--config").arg(&device.config).arg("enroll");
    cmd.env("PROV_AGENT_LOG", "info");
    cmd.envs(device.backend.env());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let _shared = common::token_store_shared();
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Stopped by the agent itself (`T`; bash execs it, same pid).
    let stopped = loop {
        match process_state(pid) {
            Some('T') => break true,
            Some('Z') | None => break false,
            _ if tokio::time::Instant::now() > deadline => break false,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    if !stopped {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "the enrollment did not stop before writing the identity: {}",
            text(&out)
        );
    }
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) => assert_pin_wiped(&environ, pin, "the running agent's"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "/proc/{pid}/environ is not readable without privilege: the dump's copy of \
                 it is checked instead"
            );
        }
        Err(e) => panic!("/proc/{pid}/environ: {e}"),
    }
    let status = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the enrollment ends once continued")
        .unwrap()
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn softhsm_keys_mode_enroll_leaves_no_key_or_pin_in_memory() {
    keys_mode_enroll_leaves_no_secret(
        Backend::pkcs11("memory"),
        Some(common::softhsm::USER_PIN),
        false,
    )
    .await;
}

/// With `PIN_SOURCE = env:NAME`, which every command, not only the daemon,
/// takes out of its environment block at start.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn softhsm_keys_mode_enroll_with_a_pin_from_the_environment_leaves_no_key_or_pin() {
    keys_mode_enroll_leaves_no_secret(
        Backend::pkcs11("memory-env"),
        Some(common::softhsm::USER_PIN),
        true,
    )
    .await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn tpm_keys_mode_enroll_leaves_no_key_in_memory() {
    keys_mode_enroll_leaves_no_secret(Backend::tpm(), None, false).await;
}

/// How long after a rotation the running daemon's memory is looked
/// through: the "10 s after a keys-mode rotation".
const AFTER_ROTATION: Duration = Duration::from_secs(10);

/// Makes the running `daemon` write a dump of its memory (SIGUSR2) into
/// `<dump>.live-<n>` and waits for it.
async fn live_dump(daemon: &common::daemon::Daemon, dump: &Path, n: u32) -> PathBuf {
    let pid = daemon.child.id().unwrap();
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::USR2).unwrap();
    let live = with_suffix(dump, &format!(".live-{n}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !live.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon wrote no dump {live:?} on SIGUSR2; log:\n{}",
            daemon.log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live
}

/// The daemon, after a keys-mode rotation on command (the service's key
/// crossed its MQTT session, its parser and the pipe to the key helper):
/// no private key, no ownership token and no PIN in its memory while it
/// runs, [`AFTER_ROTATION`] later, nor once it has stopped on SIGTERM, nor
/// in the memory of any key helper it started.
async fn the_daemon_after_a_keys_mode_rotation_holds_no_secret(
    backend: Backend,
    pin: Option<&str>,
    pin_variable: bool,
) {
    use common::daemon::{send_rotation_command, wait_rotated, Daemon};

    let cloud = recording_cloud().await;
    let device = Device::enrolled(&cloud, backend, "MODE = keys\n").await;
    let before = sent(&cloud);
    let old = device.identity().unwrap();
    let dump = device.dir.path().join("daemon.dump");
    let mark = hex::encode(rand::random::<[u8; 8]>());
    let mut env = vec![
        ("PROV_AGENT_MEMDUMP", dump.to_str().unwrap().to_string()),
        ("PROV_AGENT_MEMDUMP_MARK", mark.clone()),
    ];
    if pin_variable {
        // PIN_SOURCE = env:NAME: the daemon takes the PIN at start.
        device.pin_from_variable(PIN_VARIABLE);
        env.push((PIN_VARIABLE, pin.expect("a PIN").to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start_env(&device, &env);
    daemon
        .wait_log("connected", 1, Duration::from_secs(15))
        .await;
    send_rotation_command(&cloud, &old.thing_name).await;
    wait_rotated(&device, &old.certificate_id, Duration::from_secs(30)).await;
    daemon
        .wait_log("connected", 2, Duration::from_secs(15))
        .await;
    let new = device.identity().unwrap();
    let needles = needles(
        &cloud,
        before,
        &new.certificate_pem,
        &new.certificate_id,
        pin,
    );
    // `own`: the daemon's dump, whose environment block held the PIN; a
    // helper's never had it (the daemon removed the variable first).
    let check = |dump: &Dump, whose: &str, own: bool| {
        if pin_variable && own {
            assert_pin_wiped(&dump.environ, pin.unwrap(), whose);
        }
        assert_none_in(dump, &needles, whose);
    };

    // The running daemon, some time after the rotation.
    tokio::time::sleep(AFTER_ROTATION).await;
    let live = live_dump(&daemon, &dump, 1).await;
    check(&read_dump(&live, &mark), "the running daemon's", true);

    daemon.stop().await;
    check(&read_dump(&dump, &mark), "the stopped daemon's", true);

    // Every helper the daemon started and ended wrote its own dump: one
    // for the first handshake, one for the rotation (which imported the
    // key, and says so) and one for the handshake after it.
    let helpers: Vec<_> = std::fs::read_dir(device.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("daemon.dump.helper-"))
                .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    assert!(
        helpers.len() >= 3,
        "{} key helper dumps: {helpers:?}",
        helpers.len()
    );
    let mut importers = 0;
    for path in helpers {
        let helper = read_dump(&path, &mark);
        importers += usize::from(helper.tags.iter().any(|t| t == "imported-key"));
        check(&helper, "a key helper's", false);
    }
    // One import for each key the service sent.
    let keys = cloud.handle.issued_keys().len() - before.0;
    assert_eq!(
        importers, keys,
        "{importers} key helper dumps say they imported a key; the service sent {keys}"
    );
}

#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_after_a_keys_mode_rotation_holds_no_key_or_pin() {
    the_daemon_after_a_keys_mode_rotation_holds_no_secret(
        Backend::pkcs11("memory-daemon"),
        Some(common::softhsm::USER_PIN),
        false,
    )
    .await;
}

/// The same with `PIN_SOURCE = env:NAME`, the one source the daemon must
/// keep for the helpers it starts later: it keeps it sealed in a memfd,
/// outside its memory, and each helper gets it over the pipe for its one
/// login.
#[cfg(feature = "pkcs11")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_with_a_pin_from_its_environment_holds_no_key_or_pin() {
    the_daemon_after_a_keys_mode_rotation_holds_no_secret(
        Backend::pkcs11("memory-daemon-env"),
        Some(common::softhsm::USER_PIN),
        true,
    )
    .await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_on_a_tpm_after_a_keys_mode_rotation_holds_no_key() {
    the_daemon_after_a_keys_mode_rotation_holds_no_secret(Backend::tpm(), None, false).await;
}

/// The test's own check: each piece of a key is found in the form it names
/// (the PEM text, the DER, each number in either byte order) and stands
/// for private bytes only: none is in the key's public key or its
/// certificate, PEM or DER. A piece of the modulus, as the fourth base64
/// line of the PEM is, is refused.
#[test]
fn every_piece_is_found_in_a_copy_of_the_key() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::EncodePrivateKey;

    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let lf = rsa::pkcs8::LineEnding::LF;
    let pkcs8 = key.to_pkcs8_pem(lf).unwrap();
    let signer = rcgen::KeyPair::from_pem(&pkcs8).unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["device".to_string()])
        .unwrap()
        .self_signed(&signer)
        .unwrap()
        .pem();
    for pem in [pkcs8.to_string(), key.to_pkcs1_pem(lf).unwrap().to_string()] {
        let pieces = key_pieces(&pem);
        // The private part of a 2048-bit key's DER is some 900 bytes: at
        // least 17 whole lines of base64; six numbers in two byte orders;
        // the DER.
        let base64 = pieces
            .iter()
            .filter(|p| p.what.starts_with("the PEM's base64"))
            .count();
        assert!(base64 >= 17, "{base64} lines");
        assert_eq!(pieces.len(), base64 + 6 * 2 + 1);
        let public = public_forms(&pem, &[&certificate]);
        verify_pieces(&pem, &pieces, &public).unwrap();

        // The needle the tests took before (#13): the fourth base64 line
        // encodes the modulus, which the certificate holds.
        let line = pem.lines().filter(|l| !l.starts_with("-----")).nth(3);
        let der = pem::parse(&pem).unwrap().into_contents();
        let modulus_piece = Piece {
            what: "the fourth base64 line".into(),
            needle: line.unwrap().as_bytes()[8..56].to_vec(),
            private: der[3 * 48 + 6..3 * 48 + 42].to_vec(),
            copy: pem.as_bytes().to_vec(),
        };
        let refused = verify_pieces(&pem, &[modulus_piece], &public).unwrap_err();
        assert!(refused.contains("private bytes"), "{refused}");
    }
}
