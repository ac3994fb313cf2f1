//! The queue of packets waiting to be written to one connection, bounded
//! in packets and in payload bytes.
//!
//! A client that stops reading fills it: the next packet for it is refused
//! ([`Refused::Full`]) and the broker drops the connection, as AWS IoT
//! drops a client that does not keep up, instead of holding every message
//! published to it in memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::mqtt::Outbound;

/// Most packets queued for one connection.
pub(crate) const MAX_QUEUED_PACKETS: usize = 1024;
/// Most payload bytes queued for one connection (64 of AWS's largest
/// payloads, 128 KiB).
pub(crate) const MAX_QUEUED_BYTES: usize = 8 << 20;

/// Why a packet was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`MAX_QUEUED_PACKETS`] or [`MAX_QUEUED_BYTES`] reached: the client
    /// does not read.
    Full,
    /// The connection has ended.
    Closed,
}

/// The sending side, held by the session (cheap to clone).
#[derive(Clone)]
pub(crate) struct OutboundTx {
    tx: mpsc::Sender<Outbound>,
    /// Payload bytes in the queue; invariant: at most [`MAX_QUEUED_BYTES`].
    bytes: Arc<AtomicUsize>,
}

/// The receiving side, read by the connection's task.
pub(crate) struct OutboundRx {
    rx: mpsc::Receiver<Outbound>,
    bytes: Arc<AtomicUsize>,
}

pub(crate) fn queue() -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_PACKETS);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        OutboundTx {
            tx,
            bytes: bytes.clone(),
        },
        OutboundRx { rx, bytes },
    )
}

fn payload_len(packet: &Outbound) -> usize {
    match packet {
        Outbound::Publish(m) => m.payload.len() + m.topic.len(),
        _ => 0,
    }
}

impl OutboundTx {
    /// Queues `packet` without waiting.
    pub fn try_send(&self, packet: Outbound) -> Result<(), Refused> {
        let n = payload_len(&packet);
        let reserved = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held + n <= MAX_QUEUED_BYTES).then_some(held + n)
            });
        if reserved.is_err() {
            return Err(Refused::Full);
        }
        self.tx.try_send(packet).map_err(|e| {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

impl OutboundRx {
    /// The next packet; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let packet = self.rx.recv().await?;
        self.bytes.fetch_sub(payload_len(&packet), Ordering::SeqCst);
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Message, Qos};

    fn publish(bytes: usize) -> Outbound {
        Outbound::Publish(Message {
            topic: String::new(),
            qos: Qos::AtMostOnce,
            retain: false,
            pkid: 0,
            payload: vec![0; bytes].into(),
        })
    }

    #[tokio::test]
    async fn bounded_in_packets() {
        let (tx, mut rx) = queue();
        for _ in 0..MAX_QUEUED_PACKETS {
            tx.try_send(Outbound::PingResp).unwrap();
        }
        assert_eq!(tx.try_send(Outbound::PingResp), Err(Refused::Full));
        rx.recv().await.unwrap();
        tx.try_send(Outbound::PingResp).unwrap();
    }

    #[tokio::test]
    async fn bounded_in_bytes() {
        let (tx, mut rx) = queue();
        let big = 128 * 1024;
        for _ in 0..MAX_QUEUED_BYTES / big {
            tx.try_send(publish(big)).unwrap();
        }
        assert_eq!(tx.try_send(publish(1)), Err(Refused::Full));
        rx.recv().await.unwrap();
        tx.try_send(publish(big)).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(Outbound::PingResp), Err(Refused::Closed));
    }
}
