//! MQTT sessions over TLS: CONNECT, publish/subscribe between clients,
//! IoT policy enforcement, and dispatch of the provisioning APIs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{EmulatorConfig, ROTATION_REPORT_FILTER};
use crate::jobs::{self, JobNotifier};
use crate::mqtt::{
    self, ConnAckCode, DisconnectReason, Inbound, Message, Outbound, Protocol, Qos, SubRefusal,
    MAX_PACKET, MAX_PAYLOAD,
};
use crate::outbound::{self, OutboundTx, Refused};
use crate::packet_log::{ConnectionRecorder, PacketLog};
use crate::pki;
use crate::policy::{
    self, Action, CertificateFacts, ConnectedThing, PolicyDocument, RequestContext,
};
use crate::provisioning::{self, Provisioner, Requester};
use crate::registry::{CertStatus, Registry};
use crate::retained::{RetainedMessages, Retention, MAX_RETAINED_TOPICS};
use crate::rotation;
use crate::subscriptions::Subscriptions;
use crate::topic;

/// Longest client id AWS IoT accepts, in bytes.
pub const MAX_CLIENT_ID: usize = 128;
/// Most filters in one SUBSCRIBE.
pub const MAX_SUBSCRIBE_FILTERS: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write of one packet (or the closing of the TLS session) may
/// take: a client whose socket accepts nothing for that long is dropped,
/// so that a stalled peer cannot hold its connection's task forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by all connections.
pub(crate) struct Broker {
    pub config: Arc<EmulatorConfig>,
    pub registry: Registry,
    pub provisioner: Arc<Provisioner>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    retained: Mutex<RetainedMessages>,
    next_connection: AtomicU64,
    jobs: JobNotifier,
    /// With [`EmulatorConfig::record_packets`] only.
    pub packet_log: Option<PacketLog>,
}

struct AuthState {
    generation: u64,
    /// The attached policies' names and documents as read from the
    /// registry, to tell whether a reload found them changed.
    documents: Vec<(String, String)>,
    policies: Arc<Vec<PolicyDocument>>,
    /// The thing the thing policy variables name, if any.
    thing: Option<Arc<ConnectedThing>>,
}

pub(crate) struct Session {
    connection: u64,
    client_id: String,
    certificate_id: String,
    /// What the certificate policy variables read.
    certificate: CertificateFacts,
    /// The client's address (`aws:SourceIp`).
    peer: std::net::IpAddr,
    tx: OutboundTx,
    kill: watch::Sender<Option<DisconnectReason>>,
    subscriptions: Mutex<Subscriptions>,
    auth: Mutex<AuthState>,
    /// See [`Requester::keys_in_flight`].
    keys_in_flight: Arc<tokio::sync::Semaphore>,
}

/// Parses the documents of the policies attached to `certificate_id`. A
/// stored document that no longer parses (written by an older emulator,
/// or refused by a stricter parser since) could hold the Deny that matters,
/// so then the certificate is allowed nothing (fail closed) and the error,
/// naming the policy and why, is logged: once per load, since the parsed
/// result is kept until the documents change.
fn parse_attached(certificate_id: &str, documents: &[(String, String)]) -> Vec<PolicyDocument> {
    let mut policies = Vec::with_capacity(documents.len());
    for (name, document) in documents {
        match PolicyDocument::parse(document) {
            Ok(p) => policies.push(p),
            Err(e) => {
                tracing::error!(
                    certificate_id,
                    policy = %name,
                    "attached policy {name} no longer parses ({e}); the certificate is allowed \
                     nothing until its document is replaced with a valid one or it is detached"
                );
                return Vec::new();
            }
        }
    }
    policies
}

/// The address `aws:SourceIp` sees for `peer`: on a dual-stack listener an
/// IPv4 client arrives as `::ffff:a.b.c.d`, which an IPv4 range in a policy
/// (`203.0.113.0/24`) would never contain; it is the IPv4 address it maps.
fn source_ip(peer: std::net::SocketAddr) -> std::net::IpAddr {
    peer.ip().to_canonical()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    pub fn new(
        config: Arc<EmulatorConfig>,
        registry: Registry,
        provisioner: Arc<Provisioner>,
    ) -> Self {
        Broker {
            registry,
            provisioner,
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(RetainedMessages::default()),
            next_connection: AtomicU64::new(1),
            jobs: JobNotifier::default(),
            packet_log: config.record_packets.then(PacketLog::default),
            config,
        }
    }

    /// Publishes `notify-next` and `notify` for every thing whose pending
    /// job executions changed since the last call (the first call only
    /// records the state).
    pub fn publish_job_notifications(&self) {
        for (topic, payload) in self.jobs.changes(&self.registry) {
            tracing::debug!(%topic, "jobs notification");
            self.route(&Message {
                topic,
                qos: Qos::AtLeastOnce,
                retain: false,
                pkid: 0,
                payload: payload.into(),
            });
        }
    }

    /// Drops the connections of certificates no longer ACTIVE.
    pub fn check_certificate_statuses(&self) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        let mut statuses: HashMap<String, bool> = HashMap::new();
        for s in sessions {
            let active = *statuses.entry(s.certificate_id.clone()).or_insert_with(|| {
                matches!(
                    self.registry.certificate_status(&s.certificate_id),
                    Ok(Some(CertStatus::Active))
                )
            });
            if !active {
                tracing::info!(client_id = %s.client_id, "certificate no longer ACTIVE: dropping connection");
                let _ = s.kill.send(Some(DisconnectReason::NotAuthorized));
            }
        }
    }

    /// Number of live MQTT sessions.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The policies and thing of a connection as the registry has them now;
    /// `previous`, the state they replace, lends its parsed policies when
    /// the documents are the same.
    fn load_auth(
        &self,
        certificate_id: &str,
        client_id: &str,
        previous: Option<&AuthState>,
    ) -> AuthState {
        let generation = self.registry.auth_epoch();
        let documents = self
            .registry
            .policy_documents_for(certificate_id)
            .unwrap_or_default();
        // The epoch moves with every change of any policy, thing or
        // attachment, and so with every RegisterThing: under many
        // enrollments at once each connection reloads at nearly every
        // check, its own documents unchanged. Parsing them again each time
        // was several percent of the emulator's CPU.
        let policies = match previous {
            Some(p) if p.documents == documents => p.policies.clone(),
            _ => Arc::new(parse_attached(certificate_id, &documents)),
        };
        // The thing variables exist only when the client id is a thing's
        // name and that thing is attached to the certificate ("Thing
        // policy variables").
        let thing = match self.registry.thing_attached(client_id, certificate_id) {
            Ok(true) => self.registry.thing(client_id).ok().flatten().map(|t| {
                Arc::new(ConnectedThing {
                    name: t.thing_name,
                    type_name: t.thing_type_name,
                    attributes: t.attributes,
                })
            }),
            _ => None,
        };
        AuthState {
            generation,
            documents,
            policies,
            thing,
        }
    }

    fn allowed(&self, s: &Session, action: Action, name: &str) -> bool {
        let (policies, thing) = {
            let mut auth = lock(&s.auth);
            if auth.generation != self.registry.auth_epoch() {
                *auth = self.load_auth(&s.certificate_id, &s.client_id, Some(&auth));
            }
            (auth.policies.clone(), auth.thing.clone())
        };
        let ctx = RequestContext {
            region: &self.config.region,
            account: &self.config.account,
            client_id: &s.client_id,
            thing: thing.as_deref(),
            certificate: &s.certificate,
            source_ip: Some(s.peer),
            now_unix: crate::registry::now_unix(),
        };
        policy::is_allowed(&policies, action, name, &ctx)
    }

    /// Delivers a message to every session with a matching subscription
    /// whose policy allows iot:Receive on the topic.
    fn route(&self, msg: &Message) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for s in sessions {
            self.deliver(&s, msg);
        }
    }

    /// Delivers to one session if it subscribed and may receive, without
    /// RETAIN: a message forwarded as it is published goes out with the
    /// flag cleared, retained or not (MQTT 3.1.1, 3.3.1.3).
    fn deliver(&self, s: &Session, msg: &Message) {
        let granted = lock(&s.subscriptions).granted_for(&msg.topic);
        let Some(granted) = granted else {
            tracing::debug!(client_id = %s.client_id, topic = %msg.topic, "no matching subscription");
            return;
        };
        self.send(s, msg, granted, false);
    }

    /// Sends one session the retained messages matching `filter`, which it
    /// has just been granted at `granted`, with RETAIN set.
    fn deliver_retained(&self, s: &Session, filter: &str, granted: Qos) {
        // Out of the lock before sending: a send looks at the policies.
        let found = lock(&self.retained).matching(filter);
        for msg in &found {
            self.send(s, msg, granted, true);
        }
    }

    /// Keeps, replaces or deletes the retained message of `msg`'s topic
    /// (a PUBLISH with RETAIN set).
    fn retain(&self, s: &Session, msg: &Message) {
        let retention = lock(&self.retained).apply(msg);
        match retention {
            Retention::Full => tracing::warn!(
                client_id = %s.client_id,
                topic = %msg.topic,
                "retained message not stored (delivered to current subscribers only): \
                 the emulator keeps at most {MAX_RETAINED_TOPICS} retained topics; delete \
                 one by publishing an empty retained payload to its topic"
            ),
            other => {
                tracing::debug!(client_id = %s.client_id, topic = %msg.topic, ?other, "retained message")
            }
        }
    }

    /// Sends `msg` to `s` at most at `granted`, if its policy allows
    /// iot:Receive on the topic; `retain` is the RETAIN flag sent.
    fn send(&self, s: &Session, msg: &Message, granted: Qos, retain: bool) {
        if !self.allowed(s, Action::Receive, &msg.topic) {
            tracing::debug!(client_id = %s.client_id, topic = %msg.topic, "iot:Receive denied: not delivered");
            return;
        }
        let mut out = msg.clone();
        out.qos = granted.min(msg.qos).min(Qos::AtLeastOnce);
        out.retain = retain;
        match s.tx.try_send(Outbound::Publish(out)) {
            Ok(()) | Err(Refused::Closed) => {}
            Err(Refused::Full) => {
                // Once per connection: later messages find it dropped already.
                let first = s.kill.send_if_modified(|reason| {
                    let first = reason.is_none();
                    if first {
                        *reason = Some(DisconnectReason::QuotaExceeded);
                    }
                    first
                });
                if first {
                    tracing::warn!(client_id = %s.client_id, "outbound queue full (the client does not read): dropping connection");
                }
            }
        }
    }
}

/// Why a connection ends, as the log tells it.
#[derive(Debug, thiserror::Error)]
enum Close {
    #[error("the client sent DISCONNECT")]
    Graceful,
    #[error("{1} ({0:?})")]
    Reason(DisconnectReason, String),
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("reading from the client failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing to the client failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("write timed out after {WRITE_TIMEOUT:?}: the client does not read")]
    WriteTimeout,
    #[error("a packet cannot be encoded: {0}")]
    Encode(#[source] mqtt::CodecError),
}

struct Connection<S> {
    stream: S,
    proto: Protocol,
    buf: BytesMut,
    out: BytesMut,
    next_pkid: u16,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn send(&mut self, packet: &Outbound) -> Result<(), Close> {
        let mut packet = packet.clone();
        if let Outbound::Publish(m) = &mut packet {
            if m.qos != Qos::AtMostOnce {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                m.pkid = self.next_pkid;
            } else {
                m.pkid = 0;
            }
        }
        self.out.clear();
        mqtt::encode(self.proto, &packet, &mut self.out).map_err(Close::Encode)?;
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(written) => written.map_err(Close::Write),
            Err(_) => Err(Close::WriteTimeout),
        }
    }

    /// Ends the TLS session (close_notify), within [`WRITE_TIMEOUT`].
    async fn close(&mut self) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.stream.shutdown()).await;
    }
}

/// Serves one TLS connection from `peer` whose client certificate is
/// `cert_der`, accepted at tick `accepted` of the packet log's clock.
pub(crate) async fn serve<S>(
    broker: Arc<Broker>,
    stream: S,
    cert_der: Vec<u8>,
    peer: std::net::SocketAddr,
    accepted: u64,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Connection {
        stream,
        proto: Protocol::V4,
        buf: BytesMut::with_capacity(4096),
        out: BytesMut::new(),
        next_pkid: 0,
    };
    let started = std::time::Instant::now();
    // Reads from the stream so far (the packet log tells which read
    // completed a packet).
    let mut reads: u64 = 0;
    // CONNECT first, within a deadline.
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match mqtt::decode_connect(&mut conn.buf, MAX_PACKET) {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) => return Err("closed before CONNECT".to_owned()),
                Ok(_) => reads += 1,
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let (proto, info) = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!("connection dropped before CONNECT: {e}");
            return;
        }
        Err(_) => {
            tracing::info!("no CONNECT within {CONNECT_TIMEOUT:?}: connection dropped");
            return;
        }
    };
    conn.proto = proto;
    let recorder = broker
        .packet_log
        .as_ref()
        .map(|log| log.connection(&info.client_id, accepted, started, reads));
    let certificate_id = pki::certificate_id(&cert_der);

    let refusal = if info.client_id.is_empty() || info.client_id.len() > MAX_CLIENT_ID {
        Some(ConnAckCode::BadClientId)
    } else if !matches!(
        broker.registry.certificate_status(&certificate_id),
        Ok(Some(CertStatus::Active))
    ) {
        Some(ConnAckCode::NotAuthorized)
    } else {
        None
    };
    if let Some(code) = refusal {
        let _ = conn
            .send(&Outbound::ConnAck {
                code,
                keep_alive: 0,
            })
            .await;
        conn.close().await;
        return;
    }
    let (tx, mut rx) = outbound::queue();
    let (kill, mut killed) = watch::channel(None);
    let session = Arc::new(Session {
        connection: broker.next_connection.fetch_add(1, Ordering::SeqCst),
        auth: Mutex::new(broker.load_auth(&certificate_id, &info.client_id, None)),
        client_id: info.client_id.clone(),
        certificate: pki::certificate_facts(&cert_der),
        certificate_id,
        peer: source_ip(peer),
        tx,
        kill,
        subscriptions: Mutex::new(Subscriptions::default()),
        keys_in_flight: Arc::new(tokio::sync::Semaphore::new(1)),
    });
    if !broker.allowed(&session, Action::Connect, &session.client_id) {
        tracing::info!(client_id = %session.client_id, "iot:Connect denied");
        let _ = conn
            .send(&Outbound::ConnAck {
                code: ConnAckCode::NotAuthorized,
                keep_alive: 0,
            })
            .await;
        conn.close().await;
        return;
    }
    if let Some(old) = lock(&broker.sessions).insert(session.client_id.clone(), session.clone()) {
        let _ = old.kill.send(Some(DisconnectReason::SessionTakenOver));
    }
    // A status change between the CONNECT check and the insertion above
    // would have missed this session: look once more.
    if !matches!(
        broker.registry.certificate_status(&session.certificate_id),
        Ok(Some(CertStatus::Active))
    ) {
        let _ = session.kill.send(Some(DisconnectReason::NotAuthorized));
    }
    tracing::info!(client_id = %session.client_id, ?proto, "client connected");

    // AWS: keep-alive below 30 s counts as 30 s, at most 1200 s; 0 means the maximum.
    let keep_alive = match info.keep_alive {
        0 => 1200,
        k => k.clamp(broker.config.min_keep_alive_secs.min(1200), 1200),
    };
    let idle_limit = Duration::from_millis(u64::from(keep_alive) * 1500);

    let result: Result<Close, Close> = async {
        conn.send(&Outbound::ConnAck { code: ConnAckCode::Accepted, keep_alive }).await?;
        // Packets that came in the same read as the CONNECT.
        if let Some(close) = handle_buffered(&broker, &session, &mut conn, recorder.as_ref(), reads).await {
            return Ok(close);
        }
        let mut deadline = Instant::now() + idle_limit;
        loop {
            tokio::select! {
                _ = killed.changed() => {
                    let reason = (*killed.borrow()).unwrap_or(DisconnectReason::AdministrativeAction);
                    let _ = conn.send(&Outbound::Disconnect(reason)).await;
                    return Ok(Close::Reason(reason, "dropped by the server".into()));
                }
                _ = shutdown.changed() => {
                    return Ok(Close::Reason(DisconnectReason::AdministrativeAction, "server shutting down".into()));
                }
                out = rx.recv() => {
                    if let Some(out) = out {
                        // A connection dropped (its queue full, say) while
                        // a write is stuck ends now, without a DISCONNECT
                        // that could not be written either.
                        tokio::select! {
                            sent = conn.send(&out) => sent?,
                            _ = killed.changed() => {
                                let reason = (*killed.borrow()).unwrap_or(DisconnectReason::AdministrativeAction);
                                return Ok(Close::Reason(reason, "dropped by the server while writing".into()));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = conn.send(&Outbound::Disconnect(DisconnectReason::KeepAliveTimeout)).await;
                    return Ok(Close::Reason(DisconnectReason::KeepAliveTimeout, "keep-alive expired".into()));
                }
                read = conn.stream.read_buf(&mut conn.buf) => {
                    match read {
                        Ok(0) => return Ok(Close::PeerClosed),
                        Ok(_) => {
                            reads += 1;
                            deadline = Instant::now() + idle_limit;
                        }
                        Err(e) => return Ok(Close::Read(e)),
                    }
                    if let Some(close) = handle_buffered(&broker, &session, &mut conn, recorder.as_ref(), reads).await {
                        return Ok(close);
                    }
                }
            }
        }
    }
    .await;
    let result = result.unwrap_or_else(|e| e);
    tracing::info!(client_id = %session.client_id, result = %result, "client disconnected");
    {
        let mut sessions = lock(&broker.sessions);
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| s.connection == session.connection)
        {
            sessions.remove(&session.client_id);
        }
    }
    // After the session is gone: closing a stalled socket may take
    // WRITE_TIMEOUT.
    conn.close().await;
}

/// Handles every whole packet in the connection's buffer (completed by
/// read number `read`); `Some` when the connection is to end.
async fn handle_buffered<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    conn: &mut Connection<S>,
    recorder: Option<&ConnectionRecorder>,
    read: u64,
) -> Option<Close> {
    loop {
        let packet = match mqtt::decode(conn.proto, &mut conn.buf, MAX_PACKET) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(mqtt::CodecError::TooLarge(_)) => {
                let _ = conn
                    .send(&Outbound::Disconnect(DisconnectReason::PacketTooLarge))
                    .await;
                return Some(Close::Reason(
                    DisconnectReason::PacketTooLarge,
                    "packet too large".into(),
                ));
            }
            Err(e) => {
                return Some(Close::Reason(
                    DisconnectReason::ProtocolError,
                    e.to_string(),
                ))
            }
        };
        if let Some(r) = recorder {
            r.record(&packet, read);
        }
        if let Some(close) = handle_packet(broker, session, conn, packet).await {
            if let Close::Reason(r, _) = &close {
                let _ = conn.send(&Outbound::Disconnect(*r)).await;
            }
            return Some(close);
        }
    }
}

async fn handle_packet<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    conn: &mut Connection<S>,
    packet: Inbound,
) -> Option<Close> {
    match packet {
        Inbound::Unexpected(_) => Some(Close::Reason(
            DisconnectReason::ProtocolError,
            format!("{packet:?}"),
        )),
        Inbound::PingReq => conn.send(&Outbound::PingResp).await.err(),
        Inbound::PubAck => None,
        Inbound::Disconnect => Some(Close::Graceful),
        Inbound::Unsubscribe { pkid, filters } => {
            {
                let mut subs = lock(&session.subscriptions);
                for f in &filters {
                    subs.remove(f);
                }
            }
            conn.send(&Outbound::UnsubAck {
                pkid,
                count: filters.len(),
            })
            .await
            .err()
        }
        Inbound::Subscribe { pkid, filters } => {
            let too_many = filters.len() > MAX_SUBSCRIBE_FILTERS;
            let mut granted = Vec::with_capacity(filters.len());
            let mut subscribed = Vec::with_capacity(filters.len());
            for (filter, qos) in filters {
                let ok = !too_many
                    && topic::valid_filter(&filter)
                    && broker.allowed(session, Action::Subscribe, &filter);
                let answer = if ok {
                    // AWS has no QoS 2: a QoS 2 request is granted QoS 1.
                    let qos = qos.min(Qos::AtLeastOnce);
                    lock(&session.subscriptions).add(filter.clone(), qos)
                } else {
                    Err(SubRefusal::NotAuthorized)
                };
                match answer {
                    Ok(qos) => subscribed.push((filter, qos)),
                    Err(why) => {
                        tracing::info!(client_id = %session.client_id, %filter, ?why, "subscription refused")
                    }
                }
                granted.push(answer);
            }
            if let Some(close) = conn.send(&Outbound::SubAck { pkid, granted }).await.err() {
                return Some(close);
            }
            // After the SUBACK, through the connection's queue: the
            // retained messages of every filter granted (again, for a
            // filter held already, as MQTT 3.1.1 has it).
            for (filter, qos) in &subscribed {
                broker.deliver_retained(session, filter, *qos);
            }
            None
        }
        Inbound::Publish(msg) => handle_publish(broker, session, conn, msg).await,
    }
}

async fn handle_publish<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    conn: &mut Connection<S>,
    msg: Message,
) -> Option<Close> {
    tracing::debug!(client_id = %session.client_id, topic = %msg.topic, bytes = msg.payload.len(), "PUBLISH");
    if msg.qos == Qos::ExactlyOnce {
        return Some(Close::Reason(
            DisconnectReason::ProtocolError,
            "QoS 2 is not supported".into(),
        ));
    }
    if msg.payload.len() > MAX_PAYLOAD {
        return Some(Close::Reason(
            DisconnectReason::PacketTooLarge,
            "payload over 128 KiB".into(),
        ));
    }
    if !topic::valid_publish_topic(&msg.topic) {
        return Some(Close::Reason(
            DisconnectReason::TopicNameInvalid,
            format!("invalid topic {:?}", msg.topic),
        ));
    }
    let allowed = broker.allowed(session, Action::Publish, &msg.topic)
        && (!msg.retain || broker.allowed(session, Action::RetainPublish, &msg.topic));
    if !allowed {
        tracing::info!(client_id = %session.client_id, topic = %msg.topic, "iot:Publish denied");
        return match conn.proto {
            // MQTT 3.1.1 has no way to refuse a PUBLISH: AWS closes the connection.
            Protocol::V4 => Some(Close::Reason(
                DisconnectReason::NotAuthorized,
                "publish not authorised".into(),
            )),
            Protocol::V5 => {
                if msg.qos == Qos::AtLeastOnce {
                    conn.send(&Outbound::PubAck {
                        pkid: msg.pkid,
                        not_authorized: true,
                    })
                    .await
                    .err()
                } else {
                    None
                }
            }
        };
    }
    if let Some((api, format)) = provisioning::parse_topic(&msg.topic) {
        let broker = broker.clone();
        let session = session.clone();
        let msg = msg.clone();
        tokio::spawn(async move {
            let from = Requester {
                client_id: session.client_id.clone(),
                certificate_id: session.certificate_id.clone(),
                keys_in_flight: session.keys_in_flight.clone(),
            };
            let Some((accepted, body)) = broker
                .provisioner
                .handle(&api, format, &msg.payload, &from)
                .await
            else {
                return;
            };
            let suffix = if accepted { "accepted" } else { "rejected" };
            // The response goes only to the connection that asked.
            broker.deliver(
                &session,
                &Message {
                    topic: format!("{}/{suffix}", msg.topic),
                    qos: Qos::AtLeastOnce,
                    retain: false,
                    pkid: 0,
                    payload: body.into(),
                },
            );
        });
    } else if let Some((thing, api)) = jobs::parse_topic(&msg.topic) {
        let (accepted, body) = jobs::handle(&broker.registry, &thing, &api, &msg.payload);
        let suffix = if accepted { "accepted" } else { "rejected" };
        // The response goes only to the connection that asked.
        broker.deliver(
            session,
            &Message {
                topic: format!("{}/{suffix}", msg.topic),
                qos: Qos::AtLeastOnce,
                retain: false,
                pkid: 0,
                payload: body.into(),
            },
        );
        broker.publish_job_notifications();
    } else if msg.topic.starts_with("$aws/") || msg.topic.starts_with("$AWS/") {
        // Other reserved topics are AWS services this emulator does not have.
        tracing::debug!(topic = %msg.topic, "reserved topic without a service: dropped");
    } else {
        if msg.retain {
            broker.retain(session, &msg);
        }
        broker.route(&msg);
        if broker.config.rotation_report_rule && topic::matches(&msg.topic, ROTATION_REPORT_FILTER)
        {
            rotation::apply_report(
                &broker.registry,
                &session.certificate_id,
                &msg.topic,
                &msg.payload,
            );
        }
    }
    if msg.qos == Qos::AtLeastOnce {
        return conn
            .send(&Outbound::PubAck {
                pkid: msg.pkid,
                not_authorized: false,
            })
            .await
            .err();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::source_ip;

    #[test]
    fn source_ip_of_an_ipv4_mapped_peer_is_ipv4() {
        let ip = |peer: &str| source_ip(peer.parse().unwrap()).to_string();
        assert_eq!(ip("[::ffff:203.0.113.7]:8883"), "203.0.113.7");
        assert_eq!(ip("203.0.113.7:8883"), "203.0.113.7");
        assert_eq!(ip("[2001:db8::1]:8883"), "2001:db8::1");
    }
}
