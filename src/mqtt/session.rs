//! One MQTT 3.1.1 connection on rumqttc's packet codec over a [`Link`]:
//! CONNECT goes out with the TLS handshake's last flight, the SUBSCRIBE
//! for every response topic of an operation right behind it in the same
//! write, and a request as soon as the SUBACK is in. A task of its own
//! reads the connection (answering the server's QoS 1 publishes and
//! keeping the connection alive); the [`Session`] talks to it over
//! channels.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::link::{self, Handshake, Link, LinkError};
use super::{payload, ConnectOptions, Message, MqttError, MAX_PAYLOAD};
use crate::config::PayloadFormat;
use crate::crypto::DeferredClientCert;

/// The largest packet accepted from the server.
const MAX_PACKET: usize = MAX_PAYLOAD + 1024;

enum Incoming {
    ConnAck(ConnectReturnCode),
    SubAck(u16, Vec<SubscribeReasonCode>),
    PubAck(u16),
    Publish(Message),
    Closed(LinkError),
    Oversized(usize),
}

enum Outgoing {
    /// An encoded packet (a RegisterThing request holds the ownership
    /// token: wiped once sent).
    Packet(Zeroizing<Vec<u8>>),
    /// DISCONNECT, close_notify, and the task ends.
    Close,
}

/// One MQTT connection.
pub struct Session {
    outgoing: mpsc::Sender<Outgoing>,
    incoming: mpsc::Receiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
    endpoint: String,
    next_pkid: u16,
    subscribed: HashSet<String>,
    /// Messages that came while the session waited for something else,
    /// oldest first (at most [`BACKLOG`]).
    backlog: VecDeque<Message>,
    nodelay: bool,
}

/// How many messages the session keeps for later while it waits for an
/// acknowledgement or another topic's message.
const BACKLOG: usize = 64;

/// A connection whose TLS handshake waits for its last flight (see
/// [`super::link`]): made with [`Session::prepare`] while another request
/// is in flight, finished with [`Prepared::finish`] once the certificate it
/// presents may be used.
pub struct Prepared {
    handshake: Handshake,
    opts: ConnectOptions,
}

/// A connection dialed (TCP connect and ClientHello) before the certificate
/// it will present exists: made with [`Session::dial`] while the request
/// for that certificate is in flight, the server's answer left unread;
/// [`Dialed::prepare`] gives it the certificate and reads on.
pub struct Dialed {
    dialed: link::Dialed,
    opts: ConnectOptions,
    cert: Arc<DeferredClientCert>,
}

impl Dialed {
    /// Fills the connection's client certificate with `certified`, then
    /// reads the server's first flight within the connect timeout (the
    /// TLS 1.3 CertificateVerify is signed here): a [`Prepared`] connection.
    pub async fn prepare(
        self,
        certified: Arc<rustls::sign::CertifiedKey>,
    ) -> Result<Prepared, MqttError> {
        // `self` is consumed: this is the only fill, made before the read.
        let filled = self.cert.fill(certified);
        debug_assert!(filled, "a dialed connection is prepared once");
        let opts = self.opts;
        let handshake = Session::within_connect_timeout(&opts, async {
            self.dialed
                .server_flight()
                .await
                .map_err(|e| connect_error(e, &opts))
        })
        .await?;
        Ok(Prepared { handshake, opts })
    }
}

impl Prepared {
    /// CONNECT as `client_id` with the SUBSCRIBE for `filters` right
    /// behind it; waits for the CONNACK and the SUBACK.
    pub async fn finish(
        self,
        client_id: &str,
        filters: &[String],
        timeout: Duration,
    ) -> Result<Session, MqttError> {
        let mut opts = self.opts;
        opts.client_id = client_id.to_string();
        let step = format!("connect to {}:{}", opts.host, opts.port);
        tokio::time::timeout(
            timeout,
            Session::establish(self.handshake, &opts, filters, None),
        )
        .await
        .map_err(|_| MqttError::Timeout {
            step,
            after: timeout,
        })?
    }
}

impl Session {
    /// Connects (TCP, TLS, CONNECT, CONNACK) within the connect timeout.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, MqttError> {
        Self::connect_subscribed(opts, &[]).await
    }

    /// Connects and subscribes (QoS 1) to `filters`, the SUBSCRIBE sent
    /// right behind CONNECT, within the connect timeout.
    pub async fn connect_subscribed(
        opts: &ConnectOptions,
        filters: &[String],
    ) -> Result<Self, MqttError> {
        Self::within_connect_timeout(opts, async {
            let handshake = Link::start(opts)
                .await
                .map_err(|e| connect_error(e, opts))?;
            Self::establish(handshake, opts, filters, None).await
        })
        .await
    }

    /// Connects and publishes `payload` to `topic` (QoS 1) right behind
    /// CONNECT, without waiting for the CONNACK (MQTT 3.1.1 lets a client
    /// send before it); returns once the PUBACK is in.
    pub async fn connect_and_publish(
        opts: &ConnectOptions,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<Self, MqttError> {
        Self::within_connect_timeout(opts, async {
            let handshake = Link::start(opts)
                .await
                .map_err(|e| connect_error(e, opts))?;
            Self::establish(handshake, opts, &[], Some((topic, payload))).await
        })
        .await
    }

    /// TCP connect and the first half of the TLS handshake, within the
    /// connect timeout; see [`Prepared`].
    pub async fn prepare(opts: &ConnectOptions) -> Result<Prepared, MqttError> {
        let handshake = Self::within_connect_timeout(opts, async {
            Link::start(opts).await.map_err(|e| connect_error(e, opts))
        })
        .await?;
        Ok(Prepared {
            handshake,
            opts: opts.clone(),
        })
    }

    /// TCP connect and ClientHello within the connect timeout, for a
    /// certificate to come: `opts.tls` must resolve its client certificate
    /// through `cert` (see [`crate::crypto::deferred_client_config`]).
    pub async fn dial(
        opts: ConnectOptions,
        cert: Arc<DeferredClientCert>,
    ) -> Result<Dialed, MqttError> {
        let dialed = Self::within_connect_timeout(&opts, async {
            Link::dial(&opts).await.map_err(|e| connect_error(e, &opts))
        })
        .await?;
        Ok(Dialed { dialed, opts, cert })
    }

    async fn within_connect_timeout<T>(
        opts: &ConnectOptions,
        f: impl std::future::Future<Output = Result<T, MqttError>>,
    ) -> Result<T, MqttError> {
        tokio::time::timeout(opts.connect_timeout, f)
            .await
            .map_err(|_| MqttError::Timeout {
                step: format!("connect to {}:{}", opts.host, opts.port),
                after: opts.connect_timeout,
            })?
    }

    /// Finishes `handshake` with CONNECT (and a SUBSCRIBE for `filters`,
    /// and `publish`) in the same write, starts the reading task, and waits
    /// for the CONNACK (and SUBACK, and PUBACK).
    async fn establish(
        handshake: Handshake,
        opts: &ConnectOptions,
        filters: &[String],
        publish: Option<(&str, Vec<u8>)>,
    ) -> Result<Self, MqttError> {
        let endpoint = format!("{}:{}", opts.host, opts.port);
        let nodelay = handshake.nodelay().unwrap_or(false);
        let mut connect = Connect::new(opts.client_id.clone());
        connect.keep_alive = u16::try_from(opts.keep_alive.as_secs()).unwrap_or(u16::MAX);
        connect.clean_session = true;
        let mut first = BytesMut::new();
        encode(&Packet::Connect(connect), &mut first);
        let mut session_pkid = 1;
        let subscribe_pkid = (!filters.is_empty()).then(|| {
            let pkid = session_pkid;
            session_pkid += 1;
            encode(&subscribe_packet(pkid, filters), &mut first);
            pkid
        });
        let publish_pkid = publish.map(|(topic, payload)| {
            let pkid = session_pkid;
            session_pkid += 1;
            encode(&publish_packet(pkid, topic, payload), &mut first);
            pkid
        });
        let link = handshake
            .finish(&first)
            .await
            .map_err(|e| connect_error(e, opts))?;

        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(16);
        let task = tokio::spawn(pump(link, in_tx, out_rx, opts.keep_alive));
        let mut session = Self {
            outgoing: out_tx,
            incoming: in_rx,
            task,
            endpoint: endpoint.clone(),
            next_pkid: session_pkid,
            subscribed: HashSet::new(),
            backlog: VecDeque::new(),
            nodelay,
        };
        // The connect timeout bounds all of this (the caller's timeout).
        let forever = Duration::from_secs(u32::MAX.into());
        let code = session
            .wait_for("wait for CONNACK", forever, |m| match m {
                Incoming::ConnAck(code) => Some(code),
                _ => None,
            })
            .await
            .map_err(|e| match e {
                MqttError::Disconnected { source, .. } => connect_error(source, opts),
                other => other,
            })?;
        if code != ConnectReturnCode::Success {
            return Err(MqttError::ConnectRefused {
                endpoint,
                client_id: opts.client_id.clone(),
                code,
            });
        }
        if let Some(pkid) = subscribe_pkid {
            session.wait_suback(pkid, filters, forever).await?;
        }
        if let Some(pkid) = publish_pkid {
            session
                .wait_for("wait for PUBACK", forever, |m| {
                    matches!(m, Incoming::PubAck(id) if id == pkid).then_some(())
                })
                .await?;
        }
        Ok(session)
    }

    /// Whether the connection's socket has TCP_NODELAY set, as the kernel
    /// reported it when the connection was made.
    pub fn tcp_nodelay(&self) -> bool {
        self.nodelay
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
        id
    }

    async fn send(&mut self, step: &str, packet: Packet) -> Result<(), MqttError> {
        let mut bytes = BytesMut::new();
        encode(&packet, &mut bytes);
        let encoded = Zeroizing::new(bytes.to_vec());
        zeroize::Zeroize::zeroize(&mut bytes[..]);
        self.outgoing
            .send(Outgoing::Packet(encoded))
            .await
            .map_err(|_| MqttError::Disconnected {
                step: step.to_string(),
                source: LinkError::Closed,
            })
    }

    /// Subscribes to `filters` (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filters: &[String],
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let step = format!("subscribe to {}", filters.join(", "));
        let pkid = self.pkid();
        self.send(&step, subscribe_packet(pkid, filters)).await?;
        self.wait_suback(pkid, filters, timeout).await
    }

    async fn wait_suback(
        &mut self,
        pkid: u16,
        filters: &[String],
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let step = format!("subscribe to {}", filters.join(", "));
        let codes = self
            .wait_for(&step, timeout, |m| match m {
                Incoming::SubAck(id, codes) if id == pkid => Some(codes),
                _ => None,
            })
            .await?;
        if codes.len() != filters.len() {
            return Err(MqttError::BadResponse {
                api: step,
                detail: format!(
                    "SUBACK with {} return codes for {} filters",
                    codes.len(),
                    filters.len()
                ),
            });
        }
        for (filter, code) in filters.iter().zip(codes) {
            if matches!(code, SubscribeReasonCode::Failure) {
                return Err(MqttError::SubscribeRefused {
                    filter: filter.clone(),
                });
            }
            self.subscribed.insert(filter.clone());
        }
        Ok(())
    }

    /// Publishes with QoS 1 and waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        self.publish_flagged(topic, payload, false, timeout).await
    }

    /// Publishes with QoS 1 and RETAIN set and waits for the PUBACK: the
    /// broker keeps the message and sends it to every later subscription
    /// to the topic; an empty payload deletes the topic's retained message.
    /// The agent itself publishes nothing retained: this is a backend's
    /// tool (and the tests', which play the backend).
    pub async fn publish_retained(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        self.publish_flagged(topic, payload, true, timeout).await
    }

    async fn publish_flagged(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let step = format!("publish to {topic}");
        let pkid = self.pkid();
        let mut packet = publish_packet(pkid, topic, payload);
        if let Packet::Publish(p) = &mut packet {
            p.retain = retain;
        }
        self.send(&step, packet).await?;
        self.wait_for(&step, timeout, |m| {
            matches!(m, Incoming::PubAck(id) if id == pkid).then_some(())
        })
        .await
    }

    /// Publishes `payload` (QoS 1) to a topic the session is subscribed to
    /// and waits for the message on it (the service's echo), whether or
    /// not the PUBACK comes first.
    pub async fn publish_then_receive(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, MqttError> {
        let pkid = self.pkid();
        self.send(
            &format!("publish to {topic}"),
            publish_packet(pkid, topic, payload),
        )
        .await?;
        self.receive(topic, timeout).await
    }

    /// Waits for a message on `topic` (an exact topic, no wildcards).
    pub async fn receive(&mut self, topic: &str, timeout: Duration) -> Result<Vec<u8>, MqttError> {
        let step = format!("wait for a message on {topic}");
        let message = self
            .wait_for_message(&step, timeout, |t| t == topic)
            .await?;
        Ok(message.payload.to_vec())
    }

    /// One `$aws` API call: publish `body` and return the accepted body or
    /// the rejection as [`MqttError::Rejected`]. Subscribes to
    /// `<topic>/accepted` and `<topic>/rejected` first unless the session
    /// already is (see [`Session::connect_subscribed`]). The answer is
    /// taken when it comes; the PUBACK, which the service sends first, is
    /// not waited for on its own.
    pub async fn request(
        &mut self,
        api: &str,
        topic: &str,
        format: PayloadFormat,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, MqttError> {
        let [accepted, rejected] = response_topics(topic);
        if !(self.subscribed.contains(&accepted) && self.subscribed.contains(&rejected)) {
            self.subscribe(&[accepted.clone(), rejected.clone()], timeout)
                .await?;
        }
        let pkid = self.pkid();
        let step = format!("{api} request");
        self.send(
            &step,
            publish_packet(pkid, topic, payload::encode(format, body)),
        )
        .await?;
        let step = format!("{api} response");
        // CreateKeysAndCertificate answers with a private key: the raw
        // copy is wiped once decoded.
        let answer = self
            .wait_for_message(&step, timeout, |t| t == accepted || t == rejected)
            .await?;
        let was_accepted = answer.topic == accepted;
        let value =
            payload::decode(format, &answer.payload).map_err(|source| MqttError::BadPayload {
                api: api.into(),
                source,
            })?;
        if was_accepted {
            return Ok(value);
        }
        Err(MqttError::rejected(api, &value))
    }

    /// The next message on any subscribed topic, with whether it was a
    /// retained one; waits as long as it takes (the connection's
    /// keep-alive notices a dead peer). Cancel-safe.
    pub async fn next_message(&mut self) -> Result<Message, MqttError> {
        let forever = Duration::from_secs(u32::MAX.into());
        self.wait_for_message("wait for messages", forever, |_| true)
            .await
    }

    /// Sends DISCONNECT and ends the connection. When this returns the
    /// connection is gone, and with it the TLS session's hold on the key
    /// store.
    pub async fn close(mut self) {
        let _ = self.outgoing.send(Outgoing::Close).await;
        if tokio::time::timeout(Duration::from_millis(500), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The first message, kept or new, whose topic `wanted` accepts.
    async fn wait_for_message(
        &mut self,
        step: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Message, MqttError> {
        if let Some(i) = self.backlog.iter().position(|m| wanted(&m.topic)) {
            return Ok(self.backlog.remove(i).expect("found above"));
        }
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.next_incoming(step, timeout, deadline).await? {
                Incoming::Publish(m) if wanted(&m.topic) => return Ok(m),
                Incoming::Publish(m) => self.keep(m),
                _ => {}
            }
        }
    }

    /// The first packet other than a message that `want` takes; messages
    /// that come meanwhile are kept for later.
    async fn wait_for<T>(
        &mut self,
        step: &str,
        timeout: Duration,
        mut want: impl FnMut(Incoming) -> Option<T>,
    ) -> Result<T, MqttError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.next_incoming(step, timeout, deadline).await? {
                Incoming::Publish(m) => self.keep(m),
                other => {
                    if let Some(v) = want(other) {
                        return Ok(v);
                    }
                }
            }
        }
    }

    fn keep(&mut self, message: Message) {
        if self.backlog.len() == BACKLOG {
            if let Some(dropped) = self.backlog.pop_front() {
                tracing::debug!(topic = %dropped.topic, "message dropped: too many unread");
            }
        }
        self.backlog.push_back(message);
    }

    /// The next packet from the reading task; the end of the connection
    /// and a timeout as errors. Cancel-safe.
    async fn next_incoming(
        &mut self,
        step: &str,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Incoming, MqttError> {
        let next = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.incoming.recv()).await,
            None => Ok(self.incoming.recv().await),
        };
        match next {
            Err(_) => Err(MqttError::Timeout {
                step: step.to_string(),
                after: timeout,
            }),
            Ok(None) => Err(MqttError::Disconnected {
                step: step.to_string(),
                source: LinkError::Closed,
            }),
            Ok(Some(Incoming::Oversized(size))) => Err(MqttError::Oversized {
                step: step.to_string(),
                size,
            }),
            Ok(Some(Incoming::Closed(source))) => Err(MqttError::Disconnected {
                step: step.to_string(),
                source,
            }),
            Ok(Some(m)) => Ok(m),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `<topic>/accepted` and `<topic>/rejected`.
pub fn response_topics(topic: &str) -> [String; 2] {
    [format!("{topic}/accepted"), format!("{topic}/rejected")]
}

fn subscribe_packet(pkid: u16, filters: &[String]) -> Packet {
    let mut subscribe = Subscribe::new_many(
        filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
    );
    subscribe.pkid = pkid;
    Packet::Subscribe(subscribe)
}

fn publish_packet(pkid: u16, topic: &str, payload: Vec<u8>) -> Packet {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
    publish.pkid = pkid;
    Packet::Publish(publish)
}

fn encode(packet: &Packet, into: &mut BytesMut) {
    // Our own packets: a topic or payload over the limit is a bug of the
    // caller, which the service would refuse too.
    packet
        .write(into, usize::MAX)
        .expect("an MQTT packet the agent builds encodes");
}

/// A failure while connecting, classified.
fn connect_error(e: LinkError, opts: &ConnectOptions) -> MqttError {
    let endpoint = format!("{}:{}", opts.host, opts.port);
    if let Some(alert) = e.refusal_alert() {
        return MqttError::CertificateRefused { endpoint, alert };
    }
    MqttError::Connect {
        endpoint,
        retryable: e.is_retryable(),
        source: e,
    }
}

/// Reads the connection until it ends, handing packets to the session,
/// answering QoS 1 publishes, sending the session's packets and pinging
/// when nothing was sent for the keep-alive.
async fn pump(
    mut link: Link,
    tx: mpsc::Sender<Incoming>,
    mut rx: mpsc::Receiver<Outgoing>,
    keep_alive: Duration,
) {
    let mut plain = BytesMut::new();
    let mut last_sent = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let end = loop {
        let wake = match ping_sent {
            Some(at) => at + keep_alive,
            None => last_sent + keep_alive,
        };
        tokio::select! {
            read = link.read() => {
                let closed = match read.and_then(|()| link.take_plaintext(&mut plain)) {
                    Ok(closed) => closed,
                    Err(e) => {
                        // Out of the select: rustls's alert, best effort.
                        let _ = link.flush().await;
                        break Some(Incoming::Closed(e));
                    }
                };
                // What came before a close is handed on first.
                match dispatch(&mut link, &mut plain, &tx, &mut ping_sent).await {
                    Ok(true) if closed => break Some(Incoming::Closed(LinkError::Closed)),
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(incoming) => break Some(incoming),
                }
            }
            out = rx.recv() => match out {
                Some(Outgoing::Packet(bytes)) => {
                    let sent = match link.queue(&bytes) {
                        Ok(()) => link.flush().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = sent {
                        break Some(Incoming::Closed(e));
                    }
                    last_sent = Instant::now();
                }
                Some(Outgoing::Close) | None => {
                    let mut bytes = BytesMut::new();
                    encode(&Packet::Disconnect, &mut bytes);
                    if link.queue(&bytes).is_ok() {
                        let _ = link.flush().await;
                    }
                    link.close().await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                if ping_sent.is_some() {
                    break Some(Incoming::Closed(LinkError::KeepAlive(keep_alive)));
                }
                let mut bytes = BytesMut::new();
                encode(&Packet::PingReq, &mut bytes);
                let sent = match link.queue(&bytes) {
                    Ok(()) => link.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    break Some(Incoming::Closed(e));
                }
                ping_sent = Some(Instant::now());
                last_sent = Instant::now();
            }
        }
    };
    zeroize::Zeroize::zeroize(&mut plain[..]);
    if let Some(incoming) = end {
        let _ = tx.send(incoming).await;
    }
}

/// Hands every whole packet in `plain` to the session. `Ok(false)`: the
/// session is gone. `Err`: the connection ends with that.
async fn dispatch(
    link: &mut Link,
    plain: &mut BytesMut,
    tx: &mpsc::Sender<Incoming>,
    ping_sent: &mut Option<Instant>,
) -> Result<bool, Incoming> {
    loop {
        let frame = match mqttbytes::check(plain.iter(), MAX_PACKET) {
            Ok(header) => header.frame_length(),
            Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(true),
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
                return Err(Incoming::Oversized(size))
            }
            Err(e) => return Err(Incoming::Closed(LinkError::Protocol(e))),
        };
        // A PUBLISH (which may carry CreateKeysAndCertificate's private
        // key) is read in place and its bytes wiped; the codec would split
        // the frame off into a buffer nobody wipes.
        let packet = if plain[0] >> 4 == PUBLISH_TYPE {
            let parsed = read_publish(&plain[..frame]);
            zeroize::Zeroize::zeroize(&mut plain[..frame]);
            bytes::Buf::advance(plain, frame);
            Inbound::Publish(parsed.map_err(|e| Incoming::Closed(LinkError::Protocol(e)))?)
        } else {
            match Packet::read(plain, MAX_PACKET) {
                Ok(packet) => Inbound::Other(packet),
                Err(e) => return Err(Incoming::Closed(LinkError::Protocol(e))),
            }
        };
        // Anything from the server shows the connection is alive.
        *ping_sent = None;
        let incoming = match packet {
            Inbound::Other(Packet::ConnAck(ack)) => Incoming::ConnAck(ack.code),
            Inbound::Other(Packet::SubAck(ack)) => Incoming::SubAck(ack.pkid, ack.return_codes),
            Inbound::Other(Packet::PubAck(ack)) => Incoming::PubAck(ack.pkid),
            Inbound::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    let mut bytes = BytesMut::new();
                    encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut bytes);
                    let sent = match link.queue(&bytes) {
                        Ok(()) => link.flush().await,
                        Err(e) => Err(e),
                    };
                    sent.map_err(Incoming::Closed)?;
                }
                Incoming::Publish(Message {
                    topic: p.topic,
                    payload: p.payload,
                    retained: p.retain,
                })
            }
            Inbound::Other(Packet::Disconnect) => {
                return Err(Incoming::Closed(LinkError::ServerDisconnect))
            }
            Inbound::Other(_) => continue,
        };
        if tx.send(incoming).await.is_err() {
            return Ok(false);
        }
    }
}

/// MQTT's control packet type of PUBLISH (the high nibble of byte 1).
const PUBLISH_TYPE: u8 = 3;

/// A packet from the server, a PUBLISH read by [`read_publish`].
enum Inbound {
    Publish(InboundPublish),
    Other(Packet),
}

#[derive(Debug, PartialEq, Eq)]
struct InboundPublish {
    topic: String,
    qos: QoS,
    /// The RETAIN flag (bit 0 of byte 1).
    retain: bool,
    pkid: u16,
    payload: Zeroizing<Vec<u8>>,
}

/// An MQTT 3.1.1 PUBLISH, `frame` being the whole packet (its fixed header
/// already checked by `mqttbytes::check`), with the payload copied into
/// memory that is wiped when dropped.
fn read_publish(frame: &[u8]) -> Result<InboundPublish, mqttbytes::Error> {
    use mqttbytes::Error as E;
    let first = *frame.first().ok_or(E::MalformedPacket)?;
    let qos = match (first >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        other => return Err(E::InvalidQoS(other)),
    };
    // Past byte 1 and the remaining length (1 to 4 bytes, each but the
    // last with its high bit set).
    let length_bytes = frame
        .get(1..)
        .unwrap_or_default()
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .ok_or(E::MalformedRemainingLength)?;
    let body = frame.get(2 + length_bytes..).ok_or(E::MalformedPacket)?;
    let (topic_len, body) = body.split_first_chunk::<2>().ok_or(E::MalformedPacket)?;
    let topic_len = usize::from(u16::from_be_bytes(*topic_len));
    if body.len() < topic_len {
        return Err(E::BoundaryCrossed(topic_len));
    }
    let (topic, mut rest) = body.split_at(topic_len);
    let topic = std::str::from_utf8(topic)
        .map_err(|_| E::TopicNotUtf8)?
        .to_string();
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        _ => {
            let (id, after) = rest.split_first_chunk::<2>().ok_or(E::MalformedPacket)?;
            rest = after;
            match u16::from_be_bytes(*id) {
                0 => return Err(E::PacketIdZero),
                id => id,
            }
        }
    };
    Ok(InboundPublish {
        topic,
        qos,
        retain: first & 1 == 1,
        pkid,
        payload: Zeroizing::new(rest.to_vec()),
    })
}

/// Fuzzing entry point: [`read_publish`] as (topic, QoS, packet id, payload).
#[cfg(fuzzing)]
pub fn fuzz_read_publish(frame: &[u8]) -> Result<(String, QoS, u16, Vec<u8>), mqttbytes::Error> {
    read_publish(frame).map(|p| (p.topic, p.qos, p.pkid, p.payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(publish: &Publish) -> BytesMut {
        let mut bytes = BytesMut::new();
        Packet::Publish(publish.clone())
            .write(&mut bytes, usize::MAX)
            .unwrap();
        bytes
    }

    #[test]
    fn a_publish_reads_as_the_codec_reads_it() {
        for (qos, pkid, retain, payload) in [
            (QoS::AtMostOnce, 0, false, Vec::new()),
            (
                QoS::AtLeastOnce,
                7,
                false,
                b"{\"privateKey\":\"...\"}".to_vec(),
            ),
            // A remaining length of three bytes.
            (QoS::AtLeastOnce, 65535, false, vec![0x5a; 20_000]),
            // A retained command.
            (
                QoS::AtLeastOnce,
                9,
                true,
                b"{\"msg\":\"rotate_cert\"}".to_vec(),
            ),
            (QoS::AtMostOnce, 0, true, b"x".to_vec()),
        ] {
            let mut publish = Publish::new("$aws/certificates/create/json/accepted", qos, payload);
            publish.pkid = pkid;
            publish.retain = retain;
            let frame = encoded(&publish);
            let ours = read_publish(&frame).unwrap();
            let theirs = match Packet::read(&mut frame.clone(), usize::MAX).unwrap() {
                Packet::Publish(p) => p,
                other => panic!("{other:?}"),
            };
            assert_eq!(ours.topic, theirs.topic);
            assert_eq!(ours.qos, theirs.qos);
            assert_eq!(ours.retain, theirs.retain);
            assert_eq!(ours.pkid, theirs.pkid);
            assert_eq!(&ours.payload[..], &theirs.payload[..]);
        }
    }

    #[test]
    fn a_malformed_publish_is_refused() {
        let mut publish = Publish::new("a/b", QoS::AtLeastOnce, b"x".to_vec());
        publish.pkid = 1;
        let frame = encoded(&publish);
        // A topic length past the end of the packet.
        let mut long_topic = frame.to_vec();
        long_topic[3] = 0xff;
        assert!(read_publish(&long_topic).is_err());
        // Packet id 0 with QoS 1.
        let mut zero_id = frame.to_vec();
        let at = 2 + 2 + 3;
        zero_id[at] = 0;
        zero_id[at + 1] = 0;
        assert!(matches!(
            read_publish(&zero_id),
            Err(mqttbytes::Error::PacketIdZero)
        ));
        // QoS 3.
        let mut qos3 = frame.to_vec();
        qos3[0] |= 0b110;
        assert!(matches!(
            read_publish(&qos3),
            Err(mqttbytes::Error::InvalidQoS(3))
        ));
        // Truncated before the packet id.
        assert!(read_publish(&frame[..2 + 2 + 3]).is_err());
    }
}
