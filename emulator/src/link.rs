//! A simulated slow or flaky link (test-only): a relay between an accepted
//! MQTT socket and the emulator's TLS and MQTT code that delays every
//! chunk of bytes in each direction and may cut the connection.
//!
//! Invariants:
//! - bytes are delivered in the order they were read: a chunk is due no
//!   earlier than the chunk before it, and one writer per direction
//!   writes them first in, first out, so jitter never reorders;
//! - with [`LinkSimulation::is_off`] no relay exists at all (zero cost);
//! - the relay ends when both directions have ended: a side's end of
//!   stream is passed on (half-close) once the bytes before it are
//!   delivered; a failed write or a cut ends both at once; once the
//!   emulator has closed its side the other direction lasts at most
//!   [`AFTER_CLOSE`], as a real socket in FIN-WAIT-2 would;
//! - the TCP handshake costs its round trip: the kernel answers it at once
//!   (no `netem` here), so the relay holds the client's first bytes as a
//!   real link would have: they reach the emulator no earlier than one
//!   round trip (SYN, SYN-ACK) plus their own one-way delay after the
//!   accept. A client that dials and sends at once sees its first answer
//!   as late as on a real link; one that dials while other work is in
//!   flight has that round trip hidden, as it would have.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Delays and connection cuts of every MQTT connection, on both listeners.
/// **Test-only**: nothing like it is a setting of AWS IoT Core. The
/// default (all zero) is off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkSimulation {
    /// Added to every chunk of bytes in each direction (one-way delay: a
    /// round trip takes at least twice this).
    pub latency: Duration,
    /// An extra delay, uniformly random in `0..=jitter`, drawn for each
    /// chunk; chunks still arrive in order.
    pub jitter: Duration,
    /// Probability (0 to 1) that a chunk read from the client, instead of
    /// being passed on, cuts the connection.
    pub disconnect_rate: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinkError {
    #[error("link disconnect rate {0} is not a probability: give a number from 0 to 1")]
    DisconnectRate(f64),
}

impl LinkSimulation {
    /// No delay and no cuts: connections get no relay.
    pub fn is_off(&self) -> bool {
        self.latency.is_zero() && self.jitter.is_zero() && self.disconnect_rate == 0.0
    }

    /// Refuses a disconnect rate that is not a number from 0 to 1.
    pub fn validate(&self) -> Result<(), LinkError> {
        if (0.0..=1.0).contains(&self.disconnect_rate) {
            Ok(())
        } else {
            Err(LinkError::DisconnectRate(self.disconnect_rate))
        }
    }

    /// A random delay for one chunk: latency plus up to jitter.
    fn delay(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        let jitter_us = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        self.latency + Duration::from_micros(rand::random::<u64>() % jitter_us.saturating_add(1))
    }

    fn cut_now(&self) -> bool {
        self.disconnect_rate > 0.0 && rand::random::<f64>() < self.disconnect_rate
    }
}

impl std::fmt::Display for LinkSimulation {
    /// `latency=100ms jitter=0ms disconnect-rate=0`, as the listening line
    /// prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "latency={}ms jitter={}ms disconnect-rate={}",
            self.latency.as_millis(),
            self.jitter.as_millis(),
            self.disconnect_rate
        )
    }
}

/// How long the client-to-emulator direction may outlive the emulator's
/// close of its side (a real closed socket answers the next segment with a
/// reset, and an orphaned FIN-WAIT-2 times out).
pub(crate) const AFTER_CLOSE: Duration = Duration::from_secs(5);

/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction before reading waits (backpressure).
const IN_FLIGHT: usize = 256;
/// Capacity of the in-memory pipe to the emulator's TLS code.
const PIPE: usize = 64 * 1024;

/// Puts a relay simulating `sim` between `tcp` and the returned stream,
/// which the emulator then serves as it would the socket. The relay runs
/// in its own task until the connection ends.
pub(crate) fn relay(tcp: TcpStream, sim: LinkSimulation) -> tokio::io::DuplexStream {
    let (emulator_side, relay_side) = tokio::io::duplex(PIPE);
    // On a real link the client could send only once the SYN-ACK was in.
    let handshake_done = Instant::now() + 2 * sim.latency;
    tokio::spawn(run(tcp, relay_side, sim, handshake_done));
    emulator_side
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source's end of stream was passed on after its bytes.
    Closed,
    /// A write failed or the source failed: the connection is over.
    Broken,
    /// The simulation cut the connection.
    Cut,
}

async fn run(
    tcp: TcpStream,
    inner: tokio::io::DuplexStream,
    sim: LinkSimulation,
    handshake_done: Instant,
) {
    let (client_read, client_write) = tcp.into_split();
    let (emu_read, emu_write) = tokio::io::split(inner);
    // Set once the emulator-to-client direction is over.
    let (down_done, mut down_over) = watch::channel(false);
    let (cut, mut cut_seen) = watch::channel(false);
    let up = async {
        let end = tokio::select! {
            end = direction(client_read, emu_write, sim, true, handshake_done) => end,
            _ = async {
                let _ = down_over.wait_for(|d| *d).await;
                tokio::time::sleep(AFTER_CLOSE).await;
            } => End::Broken,
        };
        if end != End::Closed {
            let _ = cut.send(true);
        }
        end
    };
    let down = async {
        let end = tokio::select! {
            end = direction(emu_read, client_write, sim, false, Instant::now()) => end,
            _ = cut_seen.wait_for(|c| *c) => End::Broken,
        };
        let _ = down_done.send(true);
        end
    };
    let (up, down) = tokio::join!(up, down);
    tracing::debug!(?up, ?down, "link relay ended");
}

/// Copies `from` to `to`, each chunk written at (time read, or
/// `sendable_from` if later, + a delay of `sim`) but never before the chunk
/// read before it; with `may_cut`, a chunk may instead end the connection
/// ([`LinkSimulation::disconnect_rate`]).
async fn direction<R, W>(
    mut from: R,
    mut to: W,
    sim: LinkSimulation,
    may_cut: bool,
    sendable_from: Instant,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let reading = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) => return End::Closed,
                Ok(n) => n,
                Err(_) => return End::Broken,
            };
            if may_cut && sim.cut_now() {
                tracing::info!("link simulation: connection cut");
                return End::Cut;
            }
            let due = (Instant::now().max(sendable_from) + sim.delay()).max(last_due);
            last_due = due;
            if tx
                .send((due, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return End::Broken;
            }
        }
    };
    // Ends when the reader's end has been passed on, or a write fails.
    let writing = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() || to.flush().await.is_err() {
                return false;
            }
        }
        let _ = to.shutdown().await;
        true
    };
    tokio::pin!(reading, writing);
    let mut read_end = None;
    loop {
        tokio::select! {
            end = &mut reading, if read_end.is_none() => match end {
                End::Closed => read_end = Some(End::Closed),
                other => return other,
            },
            delivered = &mut writing => {
                return match (delivered, read_end) {
                    (true, Some(end)) => end,
                    _ => End::Broken,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_and_validation() {
        assert!(LinkSimulation::default().is_off());
        let slow = LinkSimulation {
            latency: Duration::from_millis(100),
            ..Default::default()
        };
        assert!(!slow.is_off());
        assert_eq!(
            slow.to_string(),
            "latency=100ms jitter=0ms disconnect-rate=0"
        );
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let sim = LinkSimulation {
                disconnect_rate: bad,
                ..Default::default()
            };
            assert!(sim.validate().is_err(), "{bad} accepted");
        }
        for good in [0.0, 0.5, 1.0] {
            let sim = LinkSimulation {
                disconnect_rate: good,
                ..Default::default()
            };
            assert_eq!(sim.validate(), Ok(()));
        }
    }

    #[test]
    fn delay_stays_within_latency_plus_jitter() {
        let sim = LinkSimulation {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            disconnect_rate: 0.0,
        };
        for _ in 0..1000 {
            let d = sim.delay();
            assert!(d >= sim.latency && d <= sim.latency + sim.jitter, "{d:?}");
        }
    }

    /// Numbered chunks written one by one, with a jitter much larger than
    /// the gap between them, come out as the same bytes in the same order,
    /// and the end of stream follows them.
    #[tokio::test]
    async fn chunks_stay_in_order_under_jitter() {
        let sim = LinkSimulation {
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(30),
            disconnect_rate: 0.0,
        };
        let (mut writer, relay_in) = tokio::io::duplex(1024);
        let (relay_out, mut reader) = tokio::io::duplex(1024);
        let relay = tokio::spawn(direction(relay_in, relay_out, sim, false, Instant::now()));
        let mut sent = Vec::new();
        for i in 0u32..200 {
            let chunk = i.to_be_bytes();
            writer.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
            if i % 10 == 0 {
                // Separate reads on the relay's side: separate chunks.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        drop(writer);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, sent);
        assert_eq!(relay.await.unwrap(), End::Closed);
    }

    #[tokio::test]
    async fn delivers_no_earlier_than_the_latency() {
        let sim = LinkSimulation {
            latency: Duration::from_millis(80),
            ..Default::default()
        };
        let (mut writer, relay_in) = tokio::io::duplex(1024);
        let (relay_out, mut reader) = tokio::io::duplex(1024);
        tokio::spawn(direction(relay_in, relay_out, sim, false, Instant::now()));
        let started = std::time::Instant::now();
        writer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(80));
        assert_eq!(&buf, b"ping");
    }

    /// The first bytes wait for the simulated TCP handshake's round trip;
    /// bytes sent once it would be over only for their one-way delay.
    #[tokio::test]
    async fn first_bytes_wait_for_the_handshake_round_trip() {
        let sim = LinkSimulation {
            latency: Duration::from_millis(60),
            ..Default::default()
        };
        let accepted = Instant::now();
        let (mut writer, relay_in) = tokio::io::duplex(1024);
        let (relay_out, mut reader) = tokio::io::duplex(1024);
        tokio::spawn(direction(
            relay_in,
            relay_out,
            sim,
            false,
            accepted + 2 * sim.latency,
        ));
        writer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).await.unwrap();
        assert!(
            accepted.elapsed() >= 3 * sim.latency,
            "{:?}",
            accepted.elapsed()
        );
        tokio::time::sleep_until(accepted + 3 * sim.latency).await;
        let sent = Instant::now();
        writer.write_all(b"again").await.unwrap();
        reader.read_exact(&mut buf).await.unwrap();
        let took = sent.elapsed();
        assert!(took >= sim.latency && took < 3 * sim.latency, "{took:?}");
    }

    #[tokio::test]
    async fn a_cut_ends_the_direction_without_passing_the_chunk_on() {
        let sim = LinkSimulation {
            disconnect_rate: 1.0,
            ..Default::default()
        };
        let (mut writer, relay_in) = tokio::io::duplex(1024);
        let (relay_out, mut reader) = tokio::io::duplex(1024);
        let relay = tokio::spawn(direction(relay_in, relay_out, sim, true, Instant::now()));
        writer.write_all(b"hello").await.unwrap();
        assert_eq!(relay.await.unwrap(), End::Cut);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }
}
