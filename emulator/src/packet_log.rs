//! A record of the MQTT packets each connection sent, in order, for tests
//! that check what a client sends and when (on only with
//! [`EmulatorConfig::record_packets`](crate::EmulatorConfig::record_packets)).
//!
//! Invariants:
//! - payloads are never recorded (they can hold private keys and tokens):
//!   only packet types, topics and filters;
//! - bounded: at most [`MAX_LOGGED_CONNECTIONS`] connections (the oldest
//!   forgotten first) of at most [`MAX_LOGGED_PACKETS`] packets each (later
//!   ones only counted);
//! - a connection's packets are in the order the emulator decoded them,
//!   which is the order the client sent them;
//! - one clock orders events across connections: each packet's
//!   [`PacketRecord::seq`] and each connection's
//!   [`ConnectionLog::accepted_seq`] (its TCP accept) are ticks of the same
//!   counter, so a test can tell that a connection was dialed before
//!   another connection's request came.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::mqtt::{Inbound, Qos};

/// Connections kept in the record.
pub const MAX_LOGGED_CONNECTIONS: usize = 1024;
/// Packets kept per connection.
pub const MAX_LOGGED_PACKETS: usize = 4096;

/// One packet a client sent, without its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoggedPacket {
    Connect,
    Publish {
        topic: String,
        /// 0, 1 or 2.
        qos: u8,
    },
    PubAck,
    /// The filters of one SUBSCRIBE, in its order.
    Subscribe {
        filters: Vec<String>,
    },
    Unsubscribe {
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet a client must not send (the connection is then closed).
    Other(String),
}

/// A packet and when it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    pub packet: LoggedPacket,
    /// Since the connection's TLS handshake completed.
    pub at: Duration,
    /// Which read from the connection's TLS stream completed the packet (1:
    /// the first). Packets with the same number arrived together, e.g. a
    /// CONNECT and a SUBSCRIBE written at once.
    pub read: u64,
    /// Where the packet falls among the emulator's recorded events (see the
    /// module docs): larger is later.
    pub seq: u64,
}

/// The packets of one connection, from its CONNECT on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLog {
    /// The CONNECT's client id.
    pub client_id: String,
    /// When the connection's TCP connection was accepted, on the clock of
    /// [`PacketRecord::seq`].
    pub accepted_seq: u64,
    pub packets: Vec<PacketRecord>,
    /// Packets after the first [`MAX_LOGGED_PACKETS`], counted only.
    pub dropped: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every recorded connection, in the order of their CONNECTs.
#[derive(Default)]
pub(crate) struct PacketLog {
    connections: Mutex<VecDeque<Arc<Mutex<ConnectionLog>>>>,
    clock: Arc<AtomicU64>,
}

impl PacketLog {
    /// The next tick of the log's clock: taken at a TCP accept, and given
    /// to [`PacketLog::connection`] once the connection's CONNECT is in.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Starts the record of a connection accepted at tick `accepted_seq`
    /// whose CONNECT (from `client_id`) was completed by read number
    /// `read`; `started` is when its TLS handshake completed.
    pub fn connection(
        &self,
        client_id: &str,
        accepted_seq: u64,
        started: Instant,
        read: u64,
    ) -> ConnectionRecorder {
        let log = Arc::new(Mutex::new(ConnectionLog {
            client_id: client_id.to_owned(),
            accepted_seq,
            packets: Vec::new(),
            dropped: 0,
        }));
        {
            let mut all = lock(&self.connections);
            if all.len() >= MAX_LOGGED_CONNECTIONS {
                all.pop_front();
            }
            all.push_back(log.clone());
        }
        let recorder = ConnectionRecorder {
            log,
            started,
            clock: self.clock.clone(),
        };
        recorder.push(LoggedPacket::Connect, read);
        recorder
    }

    /// A copy of the record.
    pub fn snapshot(&self) -> Vec<ConnectionLog> {
        lock(&self.connections)
            .iter()
            .map(|c| lock(c).clone())
            .collect()
    }
}

/// Appends one connection's packets to the record.
pub(crate) struct ConnectionRecorder {
    log: Arc<Mutex<ConnectionLog>>,
    started: Instant,
    clock: Arc<AtomicU64>,
}

impl ConnectionRecorder {
    pub fn record(&self, packet: &Inbound, read: u64) {
        let qos = |q: Qos| match q {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        };
        let logged = match packet {
            Inbound::Publish(m) => LoggedPacket::Publish {
                topic: m.topic.clone(),
                qos: qos(m.qos),
            },
            Inbound::PubAck => LoggedPacket::PubAck,
            Inbound::Subscribe { filters, .. } => LoggedPacket::Subscribe {
                filters: filters.iter().map(|(f, _)| f.clone()).collect(),
            },
            Inbound::Unsubscribe { filters, .. } => LoggedPacket::Unsubscribe {
                filters: filters.clone(),
            },
            Inbound::PingReq => LoggedPacket::PingReq,
            Inbound::Disconnect => LoggedPacket::Disconnect,
            Inbound::Unexpected(what) => LoggedPacket::Other((*what).to_owned()),
        };
        self.push(logged, read);
    }

    fn push(&self, packet: LoggedPacket, read: u64) {
        let mut log = lock(&self.log);
        if log.packets.len() >= MAX_LOGGED_PACKETS {
            log.dropped += 1;
            return;
        }
        log.packets.push(PacketRecord {
            packet,
            at: self.started.elapsed(),
            read,
            seq: self.clock.fetch_add(1, Ordering::SeqCst),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_connection_and_in_connections() {
        let log = PacketLog::default();
        let rec = log.connection("a", log.tick(), Instant::now(), 1);
        for _ in 0..MAX_LOGGED_PACKETS + 5 {
            rec.record(&Inbound::PingReq, 2);
        }
        let snap = log.snapshot();
        assert_eq!(snap[0].packets.len(), MAX_LOGGED_PACKETS);
        assert_eq!(snap[0].packets[0].packet, LoggedPacket::Connect);
        assert_eq!(snap[0].dropped, 6);
        for i in 0..MAX_LOGGED_CONNECTIONS {
            log.connection(&format!("c{i}"), log.tick(), Instant::now(), 1);
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), MAX_LOGGED_CONNECTIONS);
        assert_eq!(snap[0].client_id, "c0", "the oldest is forgotten first");
    }
}
