//! Where the agent's log goes. To stderr as text, filtered by
//! `PROV_AGENT_LOG` (warnings and errors by default); or, when stderr is
//! the systemd journal (`JOURNAL_STREAM` names stderr's device and inode,
//! as systemd sets it for a unit's output), straight to journald with each
//! event's priority and fields, `info` by default, so that every
//! enrollment, rotation, reconnect and job is a line in the journal.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The identifier the journal files the agent's lines under.
pub const SYSLOG_IDENTIFIER: &str = "prov-agent";

/// Sets up logging for the process; call once, first thing.
pub fn init() {
    let journal = stderr_is_journal();
    let default = if journal { "info" } else { "warn" };
    let filter = match std::env::var("PROV_AGENT_LOG") {
        Ok(value) => tracing_subscriber::EnvFilter::try_new(&value).unwrap_or_else(|e| {
            eprintln!(
                "prov-agent: PROV_AGENT_LOG={value:?} is not a log filter ({e}); logging \
                 at {default}. Use a level (info) or target=level pairs"
            );
            tracing_subscriber::EnvFilter::new(default)
        }),
        Err(_) => tracing_subscriber::EnvFilter::new(default),
    };
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(
                        layer
                            .with_syslog_identifier(SYSLOG_IDENTIFIER.into())
                            .with_field_prefix(None),
                    )
                    .init();
                return;
            }
            Err(e) => eprintln!(
                "prov-agent: stderr is the journal but its socket cannot be opened ({e}); \
                 logging to stderr"
            ),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Whether stderr is the stream `JOURNAL_STREAM` names (`DEV:INODE`).
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(stat) => names(&value, stat.st_dev, stat.st_ino),
        Err(_) => false,
    }
}

/// Whether `value` (`DEV:INODE`, decimal) names this device and inode.
fn names(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn journal_stream_is_matched_on_device_and_inode() {
        assert!(names("64770:123456", 64770, 123456));
        assert!(!names("64770:123457", 64770, 123456));
        assert!(!names("64771:123456", 64770, 123456));
        assert!(!names("garbage", 64770, 123456));
        assert!(!names("", 0, 0));
    }
}
