//! The systemd units in `systemd/`: the properties the agent relies on are
//! there, the three services share one sandbox, and every `ExecStart=` runs
//! a `prov-agent` command line the CLI accepts. `ci/test.sh` runs
//! `systemd-analyze verify` on the same files.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use prov_agent::cli::Cli;
use prov_agent::config::{DEFAULT_PATH, SCHEMA};
use prov_agent::provision::identity;

const ENROLL: &str = "prov-agent-enroll.service";
const DAEMON: &str = "prov-agent.service";
const ROTATE: &str = "prov-agent-rotate.service";
const TIMER: &str = "prov-agent-rotate.timer";
const SERVICES: [&str; 3] = [ENROLL, DAEMON, ROTATE];
const BINARY: &str = "/usr/bin/prov-agent";
/// The credential `PIN_SOURCE = credential:pkcs11-pin` reads.
const PIN_CREDENTIAL: &str = "pkcs11-pin";

/// One unit file: `(section, key, value)` in file order; a key set twice
/// appears twice, as systemd sees list settings.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &str) -> Self {
        let path: PathBuf = units_dir().join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Self {
            name: name.to_string(),
            entries: parse(&text),
        }
    }

    /// Every value of `section`/`key`.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one value of `section`/`key`; fails when absent or set twice.
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [v] => v,
            [] => panic!("{}: [{section}] {key}= missing", self.name),
            many => panic!("{}: [{section}] {key}= set {} times", self.name, many.len()),
        }
    }

    fn has(&self, section: &str, key: &str, value: &str) {
        assert!(
            self.all(section, key).contains(&value),
            "{}: [{section}] {key}={value} missing (found {:?})",
            self.name,
            self.all(section, key)
        );
    }

    /// Space-separated list settings (After=, Wants=, ...) as one list.
    fn words(&self, section: &str, key: &str) -> Vec<&str> {
        self.all(section, key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }
}

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// The files of `systemd/` whose names end in `suffix`, sorted.
fn files_ending_in(suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(units_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// Every service unit shipped: what is in `systemd/`, not a list that a new
/// unit could be missing from.
fn service_units() -> Vec<String> {
    files_ending_in(".service")
}

/// systemd's unit file syntax, as far as these files use it: `[Section]`,
/// `Key=value`, `#`/`;` comment lines, a trailing `\` continues the line.
fn parse(text: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            pending.push_str(body);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a Key=value line: {line:?}"));
        assert!(!section.is_empty(), "{key}= outside a section");
        entries.push((section.clone(), key.trim().into(), value.trim().into()));
    }
    assert!(pending.is_empty(), "file ends in a continuation line");
    entries
}

fn default_state_dir() -> &'static str {
    SCHEMA
        .iter()
        .find(|(section, _)| *section == "AGENT")
        .and_then(|(_, keys)| keys.iter().find(|(k, _)| *k == "STATE_DIR"))
        .and_then(|(_, default)| *default)
        .expect("STATE_DIR has a default")
}

/// `ExecStart=` split into words, checked to run the agent with the
/// default config path; returns the arguments after `--config PATH`.
fn exec_start(unit: &Unit) -> Vec<String> {
    let words: Vec<String> = unit
        .one("Service", "ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        words[0], BINARY,
        "{}: ExecStart runs {}",
        unit.name, words[0]
    );
    assert_eq!(
        words[1..3],
        ["--config", DEFAULT_PATH],
        "{}: ExecStart must name the config explicitly",
        unit.name
    );
    words[3..].to_vec()
}

#[test]
fn every_exec_start_runs_a_documented_prov_agent_command() {
    for (name, expected) in [
        (ENROLL, &["enroll"][..]),
        (DAEMON, &["run"][..]),
        (ROTATE, &["rotate", "--if-due"][..]),
    ] {
        let args = exec_start(&Unit::load(name));
        assert_eq!(args, expected, "{name}");
    }
}

#[test]
fn exec_start_command_lines_parse_with_the_cli() {
    let cli = Cli::command();
    for name in SERVICES {
        let unit = Unit::load(name);
        let args = exec_start(&unit);
        let sub = args[0].as_str();
        // `run` and `rotate` are being built on another branch; once the
        // CLI has them, their unit command lines must parse as well.
        if sub != "enroll" && cli.find_subcommand(sub).is_none() {
            eprintln!("{name}: `{sub}` not in this CLI yet, command line not parsed");
            continue;
        }
        let line = unit.one("Service", "ExecStart");
        let parsed = Cli::try_parse_from(line.split_whitespace());
        assert!(
            parsed.is_ok(),
            "{name}: {line:?} rejected: {:?}",
            parsed.err()
        );
        assert_eq!(
            parsed.unwrap().config.as_deref(),
            Some(Path::new(DEFAULT_PATH))
        );
    }
}

#[test]
fn daemon_is_a_notify_service_with_a_watchdog() {
    let u = Unit::load(DAEMON);
    u.has("Service", "Type", "notify");
    u.has("Service", "NotifyAccess", "main");
    let watchdog: u64 = u.one("Service", "WatchdogSec").parse().unwrap();
    assert!(watchdog >= 10, "WatchdogSec={watchdog} too short");
    u.has("Service", "Restart", "on-failure");
    u.has("Service", "ExecReload", "/bin/kill -HUP $MAINPID");
    for dep in [ENROLL, "network-online.target"] {
        assert!(u.words("Unit", "After").contains(&dep), "After={dep}");
        assert!(u.words("Unit", "Wants").contains(&dep), "Wants={dep}");
    }
    u.has("Install", "WantedBy", "multi-user.target");
}

#[test]
fn enroll_runs_once_only_on_a_device_without_identity() {
    let u = Unit::load(ENROLL);
    u.has("Service", "Type", "oneshot");
    u.has("Service", "RemainAfterExit", "yes");
    u.has("Service", "Restart", "on-failure");
    let identity = Path::new(default_state_dir()).join(identity::FILE_NAME);
    u.has(
        "Unit",
        "ConditionPathExists",
        &format!("!{}", identity.display()),
    );
    for unit in [DAEMON, ROTATE] {
        assert!(u.words("Unit", "Before").contains(&unit), "Before={unit}");
    }
    assert!(u.words("Unit", "After").contains(&"network-online.target"));
    assert!(u.words("Unit", "Wants").contains(&"network-online.target"));
    // The daemon and the rotation need the identity enroll makes.
    for unit in [DAEMON, ROTATE] {
        Unit::load(unit).has(
            "Unit",
            "ConditionPathExists",
            &identity.display().to_string(),
        );
    }
}

#[test]
fn timer_rotates_with_a_random_delay_and_never_beside_the_daemon() {
    let t = Unit::load(TIMER);
    t.has("Timer", "Unit", ROTATE);
    for key in ["OnBootSec", "OnUnitActiveSec", "RandomizedDelaySec"] {
        assert!(!t.one("Timer", key).is_empty(), "{key}");
    }
    t.has("Install", "WantedBy", "timers.target");
    let r = Unit::load(ROTATE);
    r.has("Service", "Type", "oneshot");
    // RemainAfterExit=yes would keep the oneshot active and the timer could
    // never start it again.
    assert!(r.all("Service", "RemainAfterExit").is_empty());
    for unit in [&t, &r] {
        assert!(
            unit.words("Unit", "Conflicts").contains(&DAEMON),
            "{}: Conflicts={DAEMON}",
            unit.name
        );
    }
}

/// Sandbox settings every service carries, with their exact values.
const SANDBOX: &[(&str, &str)] = &[
    ("User", "prov-agent"),
    ("Group", "prov-agent"),
    ("SupplementaryGroups", "tss"),
    ("StateDirectory", "prov-agent"),
    ("StateDirectoryMode", "0700"),
    ("ConfigurationDirectory", "prov-agent"),
    ("UMask", "0077"),
    ("LoadCredential", PIN_CREDENTIAL),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("DevicePolicy", "closed"),
    ("DeviceAllow", "/dev/tpmrm0 rw"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("SystemCallFilter", "@system-service"),
    // No core file of a process that may hold a key (src/hardening.rs
    // makes the process non-dumpable too), and room to lock all memory.
    ("LimitCORE", "0"),
    ("LimitMEMLOCK", "infinity"),
];

/// The tests that name the services one by one (`SERVICES`) see every
/// service unit of `systemd/`: a unit added there and not here fails.
#[test]
fn the_service_list_is_every_service_unit_in_systemd() {
    let mut listed: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        listed,
        service_units(),
        "SERVICES is not the list of systemd/*.service"
    );
    assert!(service_units().len() >= 3, "{:?}", service_units());
}

#[test]
fn every_service_runs_in_the_sandbox() {
    // Each service unit in the directory, so that none escapes LimitCORE=0
    // and the rest of the sandbox.
    for name in service_units() {
        let name = name.as_str();
        let u = Unit::load(name);
        for (key, value) in SANDBOX {
            u.has("Service", key, value);
        }
        // The state directory is the only writable path; the TPM stays
        // reachable (PrivateDevices= would hide it).
        assert!(u.all("Service", "ReadWritePaths").is_empty(), "{name}");
        assert!(u.all("Service", "PrivateDevices").is_empty(), "{name}");
        assert_eq!(
            Path::new("/var/lib").join(u.one("Service", "StateDirectory")),
            Path::new(default_state_dir()),
            "{name}: StateDirectory= is not the default STATE_DIR"
        );
    }
}

/// A drop-in shipped beside the units (`systemd/*.conf`) changes none of
/// the sandbox: it could otherwise bring core dumps back.
#[test]
fn no_drop_in_weakens_the_sandbox() {
    let drop_ins = files_ending_in(".conf");
    assert!(!drop_ins.is_empty(), "systemd/encrypted-pin.conf is gone");
    for name in drop_ins {
        let u = Unit::load(&name);
        for (key, _) in SANDBOX {
            // The drop-in replaces the plain PIN credential by the
            // encrypted one, and only that.
            if *key == "LoadCredential" {
                continue;
            }
            assert!(
                u.all("Service", key).is_empty(),
                "{name}: sets {key}= of the sandbox"
            );
        }
    }
}

#[test]
fn the_three_services_share_one_sandbox() {
    // Everything after User= is the shared sandbox; it must not drift
    // between the units.
    let sandbox = |name: &str| {
        let u = Unit::load(name);
        let start = u
            .entries
            .iter()
            .position(|(s, k, _)| s == "Service" && k == "User")
            .expect("User=");
        u.entries[start..]
            .iter()
            .filter(|(s, _, _)| s == "Service")
            .cloned()
            .collect::<Vec<_>>()
    };
    let daemon = sandbox(DAEMON);
    assert!(daemon.len() > SANDBOX.len());
    for name in service_units() {
        assert_eq!(sandbox(&name), daemon, "{name} and {DAEMON} differ");
    }
}

/// `LoadCredential=ID[:SOURCE]` and `LoadCredentialEncrypted=` as
/// `(ID, SOURCE)`; without a source systemd takes the ID as the source.
fn credentials(unit: &Unit) -> Vec<(&str, &str)> {
    ["LoadCredential", "LoadCredentialEncrypted"]
        .into_iter()
        .flat_map(|key| unit.all("Service", key))
        .map(|v| v.split_once(':').unwrap_or((v, v)))
        .collect()
}

#[test]
fn pin_credential_cannot_fail_a_start_without_a_pin() {
    // systemd (252 and later, load_credential() in src/core/execute.c,
    // exec-credential.c from 255) fails the start with 243/CREDENTIALS when
    // an absolute source, file or directory, is missing, but skips a
    // missing credential given by name only (looked up among systemd's own
    // credentials and in /etc/credstore, /run/credstore, /usr/local/lib/
    // credstore, /usr/lib/credstore). TPM gateways have no PIN: the units
    // must start there without a drop-in.
    for name in SERVICES {
        let u = Unit::load(name);
        let creds = credentials(&u);
        assert_eq!(
            creds.iter().filter(|(id, _)| *id == PIN_CREDENTIAL).count(),
            1,
            "{name}: {PIN_CREDENTIAL} loaded once (found {creds:?})"
        );
        for (id, source) in &creds {
            assert!(
                !source.starts_with('/'),
                "{name}: credential {id} from {source}: a missing file or directory fails the start"
            );
            // The same name in the credential store: where systemd/README.md
            // tells the operator to put it.
            assert_eq!(id, source, "{name}: credential {id} looked up as {source}");
        }
        // A SetCredential= fallback would reach the token as the PIN (and
        // count against its retry limit); ImportCredential= needs systemd
        // 254 and is ignored, with a warning, by 252.
        for key in [
            "SetCredential",
            "SetCredentialEncrypted",
            "ImportCredential",
        ] {
            assert!(u.all("Service", key).is_empty(), "{name}: {key}= set");
        }
    }
}

#[test]
fn readme_puts_the_pin_where_the_units_look_for_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let store = format!("/etc/credstore/{PIN_CREDENTIAL}");
    assert!(readme.contains(&store), "systemd/README.md: no {store}");
}

#[test]
fn parser_reads_lists_continuations_and_comments() {
    let e = parse("# c\n[Unit]\n; c\nAfter=a b \\\n  c\nAfter=d\n[Service]\nX=\n");
    assert_eq!(
        e,
        vec![
            ("Unit".into(), "After".into(), "a b  c".into()),
            ("Unit".into(), "After".into(), "d".into()),
            ("Service".into(), "X".into(), String::new()),
        ]
    );
}

/// A wrong PIN exits 2 (a configuration error): a service that restarts on
/// failure must not restart on it, since each restart would log in again
/// and spend one of the token's few PIN tries.
#[test]
fn no_service_restarts_on_a_configuration_error() {
    for name in SERVICES {
        let u = Unit::load(name);
        let restart = u.all("Service", "Restart");
        if restart.iter().all(|r| *r == "no") {
            continue;
        }
        assert!(
            u.words("Service", "RestartPreventExitStatus")
                .contains(&"2"),
            "{name}: Restart={restart:?} without RestartPreventExitStatus=2"
        );
    }
}
