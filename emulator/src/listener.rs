//! Binding the TCP listeners and accepting connections until the emulator
//! shuts down, for the MQTT listeners and the control-plane API alike.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// The next connection on `listener`, or `None` once `shutdown` changes. A
/// failed accept (out of descriptors, say) is logged and tried again
/// shortly, never the end of the listener.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Connections the kernel completes and queues for a listener before it
/// is accepted (Linux caps it at `net.core.somaxconn`, 4096 by default).
///
/// Why not `TcpListener::bind`'s 128: a fleet coming online connects in a
/// burst (the enrollment benchmark's 1,000 devices at once), and while
/// both cores are busy with TLS handshakes the accept loop falls behind;
/// past 128 waiting connections the kernel dropped each further SYN, and
/// the client sent it again only after TCP's one-second retransmission
/// timeout: hundreds of SYN retransmissions per 1,000-device run (netstat's
/// ListenOverflows), a second added to their enrollment and half the
/// measured throughput. AWS IoT Core's endpoints take such bursts.
pub(crate) const BACKLOG: u32 = 4096;

/// A listener on `addr` with a [`BACKLOG`]-long accept queue; otherwise
/// as `TcpListener::bind` (SO_REUSEADDR set, so that a restarted emulator
/// can bind its port again while old connections are in TIME_WAIT).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
