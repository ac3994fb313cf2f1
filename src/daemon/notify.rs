//! systemd service notifications (`sd_notify(3)`) without libsystemd.
//!
//! Under `Type=notify` systemd passes `NOTIFY_SOCKET`, a datagram socket
//! (a file system path, or an abstract address written with a leading `@`),
//! and with `WatchdogSec=` also `WATCHDOG_USEC` and `WATCHDOG_PID`. The
//! agent sends `READY=1` once started, `STATUS=` lines, `WATCHDOG=1` pings,
//! `RELOADING=1` (then `READY=1`) around a SIGHUP reload and `STOPPING=1`.
//!
//! Notifications are best effort: a failed send is logged at debug level
//! and otherwise ignored, so they can never stop the agent. Children the
//! daemon starts (the post-rotation command) should not inherit
//! `NOTIFY_SOCKET`: remove it from their environment
//! (`Command::env_remove(NOTIFY_SOCKET)`); `NotifyAccess=main` in the unit
//! ignores them anyway.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Environment variable naming the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Environment variable holding the watchdog timeout in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// Environment variable naming the process the watchdog is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// A send never blocks the agent longer than this, even when the service
/// manager does not read its socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier for this process, or `None` when it does not run under
    /// a service manager that listens (no or unusable `NOTIFY_SOCKET`).
    /// Does not change the environment.
    pub fn from_env() -> Option<Self> {
        let socket = std::env::var_os(NOTIFY_SOCKET)?;
        let mut notifier = match Self::new(&socket) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("{NOTIFY_SOCKET}={socket:?} not usable, not notifying: {e}");
                return None;
            }
        };
        notifier.watchdog = watchdog_interval(
            std::env::var_os(WATCHDOG_USEC).as_deref(),
            std::env::var_os(WATCHDOG_PID).as_deref(),
            std::process::id(),
        );
        Some(notifier)
    }

    /// A notifier for the socket `addr`, written as in `NOTIFY_SOCKET`: an
    /// absolute path, or `@name` for an abstract socket. No watchdog.
    pub fn new(addr: impl AsRef<OsStr>) -> io::Result<Self> {
        let addr = parse_addr(addr.as_ref())?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Self {
            socket,
            addr,
            watchdog: None,
        })
    }

    /// The agent has started (or finished reloading).
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line status shown by `systemctl status`. Line breaks are
    /// replaced by spaces: a status cannot add other assignments.
    pub fn status(&self, status: &str) {
        let line: String = status
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"));
    }

    /// A watchdog keep-alive ping.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// A reload has begun; send [`ready`](Self::ready) when it is done.
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// The agent is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// How often to call [`watchdog`](Self::watchdog): half the timeout
    /// systemd set (`WatchdogSec=`), as `sd_watchdog_enabled(3)` advises;
    /// `None` when no watchdog is enabled for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one
    /// datagram; failures are logged at debug level and ignored.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!("notifying the service manager ({state:?}) failed: {e}");
        }
    }
}

/// `NOTIFY_SOCKET` syntax: an absolute path, or `@` and an abstract name.
fn parse_addr(addr: &OsStr) -> io::Result<SocketAddr> {
    let bytes = addr.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(addr),
        Some(b'@') if bytes.len() > 1 => abstract_addr(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path nor an abstract socket (@name)",
        )),
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// The watchdog ping interval from `WATCHDOG_USEC` and `WATCHDOG_PID`:
/// half the timeout, and only if the watchdog is meant for `own_pid` (a
/// missing `WATCHDOG_PID` means this process, as in `sd_watchdog_enabled`).
fn watchdog_interval(usec: Option<&OsStr>, pid: Option<&OsStr>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).expect("a notification arrives");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn path_socket_receives_every_notification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(&path).unwrap();

        n.ready();
        assert_eq!(receive(&listener), "READY=1");
        n.status("connected to a1b2-ats.iot.eu-west-1.amazonaws.com");
        assert_eq!(
            receive(&listener),
            "STATUS=connected to a1b2-ats.iot.eu-west-1.amazonaws.com"
        );
        n.watchdog();
        assert_eq!(receive(&listener), "WATCHDOG=1");
        n.reloading();
        assert_eq!(receive(&listener), "RELOADING=1");
        n.stopping();
        assert_eq!(receive(&listener), "STOPPING=1");
        assert_eq!(n.watchdog_interval(), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_receives_notifications() {
        use std::os::linux::net::SocketAddrExt;
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // Abstract names are system-wide: make this one unique.
        let name = format!(
            "prov-agent-notify-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::new(format!("@{name}")).unwrap();
        n.ready();
        assert_eq!(receive(&listener), "READY=1");
        n.watchdog();
        assert_eq!(receive(&listener), "WATCHDOG=1");
    }

    #[test]
    fn status_cannot_inject_assignments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(&path)
            .unwrap()
            .status("rotating\nREADY=1\r\nSTOPPING=1");
        let got = receive(&listener);
        assert_eq!(got, "STATUS=rotating READY=1  STOPPING=1");
        assert_eq!(got.lines().count(), 1);
    }

    #[test]
    fn a_socket_nobody_listens_on_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(dir.path().join("gone")).unwrap();
        // Must neither panic nor block.
        n.ready();
        n.status("still running");
        n.watchdog();
        n.stopping();
    }

    #[test]
    fn unusable_addresses_are_refused() {
        for bad in ["", "@", "relative/notify", "vsock:2:1234"] {
            assert!(Notifier::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert_eq!(
            watchdog_interval(s("60000000"), s("4242"), 4242),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(s("60000000"), None, 4242),
            Some(Duration::from_secs(30))
        );
        // Meant for another process (for example our parent).
        assert_eq!(watchdog_interval(s("60000000"), s("1"), 4242), None);
        assert_eq!(watchdog_interval(None, s("4242"), 4242), None);
        assert_eq!(watchdog_interval(s("0"), None, 4242), None);
        assert_eq!(watchdog_interval(s("sixty"), None, 4242), None);
        assert_eq!(watchdog_interval(s("60000000"), s("x"), 4242), None);
    }
}
