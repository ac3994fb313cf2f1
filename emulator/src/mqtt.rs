//! MQTT framing through rumqttc's codecs (`mqttbytes::v4` for 3.1.1,
//! `v5::mqttbytes` for 5), mapped to the few packet shapes the broker needs,
//! and the packet size it accepts. Nothing here parses bytes by hand.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};

/// Largest PUBLISH payload AWS IoT accepts.
pub const MAX_PAYLOAD: usize = 128 * 1024;
/// Room for the fixed and variable headers around the payload.
pub(crate) const MAX_PACKET: usize = MAX_PAYLOAD + 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    V4,
    V5,
}

/// QoS levels (AWS IoT supports 0 and 1; 2 is refused). Named as in MQTT.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectInfo {
    pub client_id: String,
    pub keep_alive: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub topic: String,
    pub qos: Qos,
    pub retain: bool,
    pub pkid: u16,
    pub payload: Bytes,
}

#[derive(Debug)]
#[allow(dead_code)] // `Unexpected`'s text is read through `Debug` in the log.
pub(crate) enum Inbound {
    Publish(Message),
    PubAck,
    Subscribe {
        pkid: u16,
        filters: Vec<(String, Qos)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet a client must not send to a server, or QoS 2 flow packets.
    Unexpected(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnAckCode {
    Accepted,
    BadClientId,
    NotAuthorized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisconnectReason {
    NotAuthorized,
    SessionTakenOver,
    KeepAliveTimeout,
    PacketTooLarge,
    ProtocolError,
    TopicNameInvalid,
    AdministrativeAction,
    /// The client does not read what is sent to it.
    QuotaExceeded,
}

impl DisconnectReason {
    fn text(self) -> &'static str {
        match self {
            DisconnectReason::NotAuthorized => "not authorised",
            DisconnectReason::SessionTakenOver => "another connection used this client id",
            DisconnectReason::KeepAliveTimeout => "keep-alive expired",
            DisconnectReason::PacketTooLarge => "packet or payload too large",
            DisconnectReason::ProtocolError => "protocol error",
            DisconnectReason::TopicNameInvalid => "invalid topic",
            DisconnectReason::AdministrativeAction => "server shutting down",
            DisconnectReason::QuotaExceeded => {
                "the client does not read: its outbound queue is full"
            }
        }
    }
}

/// Why a filter of a SUBSCRIBE is refused. MQTT 3.1.1 has one failure
/// code (0x80) for all; MQTT 5 tells which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubRefusal {
    /// Not allowed by the policies, an invalid filter, or too many filters
    /// in one SUBSCRIBE (MQTT 5: 0x87).
    NotAuthorized,
    /// The connection holds as many subscriptions as AWS allows (MQTT 5:
    /// 0x97 Quota exceeded).
    QuotaExceeded,
}

#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// `keep_alive`: the keep-alive the server enforces (MQTT 5 tells it).
    ConnAck {
        code: ConnAckCode,
        keep_alive: u16,
    },
    Publish(Message),
    PubAck {
        pkid: u16,
        not_authorized: bool,
    },
    /// One answer per filter, in the SUBSCRIBE's order.
    SubAck {
        pkid: u16,
        granted: Vec<Result<Qos, SubRefusal>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    /// MQTT 5 sends a DISCONNECT with this reason; 3.1.1 just closes.
    Disconnect(DisconnectReason),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("packet larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

fn q4(q: m4::QoS) -> Qos {
    match q {
        m4::QoS::AtMostOnce => Qos::AtMostOnce,
        m4::QoS::AtLeastOnce => Qos::AtLeastOnce,
        m4::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}
fn to_q4(q: Qos) -> m4::QoS {
    match q {
        Qos::AtMostOnce => m4::QoS::AtMostOnce,
        Qos::AtLeastOnce => m4::QoS::AtLeastOnce,
        Qos::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}
fn q5(q: m5::QoS) -> Qos {
    match q {
        m5::QoS::AtMostOnce => Qos::AtMostOnce,
        m5::QoS::AtLeastOnce => Qos::AtLeastOnce,
        m5::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}
fn to_q5(q: Qos) -> m5::QoS {
    match q {
        Qos::AtMostOnce => m5::QoS::AtMostOnce,
        Qos::AtLeastOnce => m5::QoS::AtLeastOnce,
        Qos::ExactlyOnce => m5::QoS::ExactlyOnce,
    }
}

/// Decodes the first packet, which must be CONNECT, and tells its protocol
/// version: the 3.1.1 codec is tried first, the 5 codec when the 3.1.1 one
/// reads protocol level 5 or fails on the properties.
pub(crate) fn decode_connect(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(Protocol, ConnectInfo)>, CodecError> {
    let mut probe = buf.clone();
    match v4::Packet::read(&mut probe, max) {
        Err(m4::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m4::Error::PayloadSizeLimitExceeded(_)) => return Err(CodecError::TooLarge(max)),
        Ok(v4::Packet::Connect(c)) if c.protocol == m4::Protocol::V4 => {
            *buf = probe;
            return Ok(Some((
                Protocol::V4,
                ConnectInfo {
                    client_id: c.client_id,
                    keep_alive: c.keep_alive,
                },
            )));
        }
        Ok(v4::Packet::Connect(_)) | Err(_) => {}
        Ok(other) => {
            return Err(CodecError::Malformed(format!(
                "first packet must be CONNECT, got {other:?}"
            )))
        }
    }
    match v5::Packet::read(buf, Some(max as u32)) {
        Err(m5::Error::InsufficientBytes(_)) => Ok(None),
        Err(m5::Error::PayloadSizeLimitExceeded { .. }) => Err(CodecError::TooLarge(max)),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
        Ok(v5::Packet::Connect(c, _, _)) => Ok(Some((
            Protocol::V5,
            ConnectInfo {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
            },
        ))),
        Ok(_) => Err(CodecError::Malformed("first packet must be CONNECT".into())),
    }
}

/// Decodes the next packet after CONNECT; `Ok(None)` when more bytes are needed.
pub(crate) fn decode(
    proto: Protocol,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Inbound>, CodecError> {
    match proto {
        Protocol::V4 => match v4::Packet::read(buf, max) {
            Err(m4::Error::InsufficientBytes(_)) => Ok(None),
            Err(m4::Error::PayloadSizeLimitExceeded(_)) => Err(CodecError::TooLarge(max)),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
            Ok(p) => Ok(Some(match p {
                v4::Packet::Publish(p) => Inbound::Publish(Message {
                    topic: p.topic,
                    qos: q4(p.qos),
                    retain: p.retain,
                    pkid: p.pkid,
                    payload: p.payload,
                }),
                v4::Packet::PubAck(_) => Inbound::PubAck,
                v4::Packet::Subscribe(s) => Inbound::Subscribe {
                    pkid: s.pkid,
                    filters: s.filters.into_iter().map(|f| (f.path, q4(f.qos))).collect(),
                },
                v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.topics,
                },
                v4::Packet::PingReq => Inbound::PingReq,
                v4::Packet::Disconnect => Inbound::Disconnect,
                v4::Packet::Connect(_) => Inbound::Unexpected("second CONNECT"),
                _ => Inbound::Unexpected("packet type not accepted from a client"),
            })),
        },
        Protocol::V5 => match v5::Packet::read(buf, Some(max as u32)) {
            Err(m5::Error::InsufficientBytes(_)) => Ok(None),
            Err(m5::Error::PayloadSizeLimitExceeded { .. }) => Err(CodecError::TooLarge(max)),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
            Ok(p) => Ok(Some(match p {
                v5::Packet::Publish(p) => Inbound::Publish(Message {
                    topic: String::from_utf8(p.topic.to_vec())
                        .map_err(|_| CodecError::Malformed("topic is not UTF-8".into()))?,
                    qos: q5(p.qos),
                    retain: p.retain,
                    pkid: p.pkid,
                    payload: p.payload,
                }),
                v5::Packet::PubAck(_) => Inbound::PubAck,
                v5::Packet::Subscribe(s) => Inbound::Subscribe {
                    pkid: s.pkid,
                    filters: s.filters.into_iter().map(|f| (f.path, q5(f.qos))).collect(),
                },
                v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters,
                },
                v5::Packet::PingReq(_) => Inbound::PingReq,
                v5::Packet::Disconnect(_) => Inbound::Disconnect,
                v5::Packet::Connect(..) => Inbound::Unexpected("second CONNECT"),
                _ => Inbound::Unexpected("packet type not accepted from a client"),
            })),
        },
    }
}

/// Fuzzing entry point: [`decode_connect`] and [`decode`] over `bytes`, asserting that each PUBLISH re-encodes to one that decodes the same.
#[cfg(fuzzing)]
pub fn fuzz_decode(bytes: &[u8]) {
    // The first byte picks the start: CONNECT first, or straight to 3.1.1 or 5 packets.
    let Some((&mode, bytes)) = bytes.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(bytes);
    let proto = match mode % 3 {
        0 => match decode_connect(&mut buf, MAX_PACKET) {
            Ok(Some((proto, _))) => proto,
            _ => return,
        },
        1 => Protocol::V4,
        _ => Protocol::V5,
    };
    while let Ok(Some(packet)) = decode(proto, &mut buf, MAX_PACKET) {
        let Inbound::Publish(msg) = packet else {
            continue;
        };
        let mut out = BytesMut::new();
        encode(proto, &Outbound::Publish(msg.clone()), &mut out)
            .expect("a decoded PUBLISH encodes");
        match decode(proto, &mut out, MAX_PACKET) {
            Ok(Some(Inbound::Publish(again))) => {
                assert_eq!(
                    (
                        &again.topic,
                        again.qos,
                        again.retain,
                        again.pkid,
                        &again.payload
                    ),
                    (&msg.topic, msg.qos, msg.retain, msg.pkid, &msg.payload)
                );
            }
            other => panic!("a re-encoded PUBLISH decodes as {other:?}"),
        }
        assert!(out.is_empty(), "bytes left after a re-encoded PUBLISH");
    }
}

/// What an MQTT 5 client learns in CONNACK: QoS 1 at most, no topic
/// aliases, subscription identifiers or shared subscriptions (not emulated),
/// and the keep-alive actually enforced.
fn server_capabilities(keep_alive: u16) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: Some(100),
        max_qos: Some(1),
        retain_available: None,
        max_packet_size: Some(MAX_PACKET as u32),
        assigned_client_identifier: None,
        topic_alias_max: Some(0),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: Some(keep_alive),
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// Appends the encoding of `out` to `buf`. A 3.1.1 DISCONNECT from the
/// server does not exist: nothing is written and the caller closes.
pub(crate) fn encode(
    proto: Protocol,
    out: &Outbound,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    let bad = |e: String| CodecError::Malformed(e);
    match proto {
        Protocol::V4 => {
            let packet = match out {
                Outbound::ConnAck { code, .. } => v4::Packet::ConnAck(v4::ConnAck::new(
                    match code {
                        ConnAckCode::Accepted => v4::ConnectReturnCode::Success,
                        ConnAckCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                        ConnAckCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    },
                    false,
                )),
                Outbound::Publish(msg) => v4::Packet::Publish({
                    let mut p = v4::Publish::from_bytes(
                        msg.topic.clone(),
                        to_q4(msg.qos),
                        msg.payload.clone(),
                    );
                    p.pkid = msg.pkid;
                    p.retain = msg.retain;
                    p
                }),
                // 3.1.1 has no refusal code in PUBACK: the caller closes instead.
                Outbound::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
                Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
                    *pkid,
                    granted
                        .iter()
                        .map(|g| match g {
                            Ok(q) => v4::SubscribeReasonCode::Success(to_q4(*q)),
                            Err(_) => v4::SubscribeReasonCode::Failure,
                        })
                        .collect(),
                )),
                Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
                Outbound::PingResp => v4::Packet::PingResp,
                Outbound::Disconnect(_) => return Ok(()),
            };
            packet
                .write(buf, usize::MAX)
                .map_err(|e| bad(e.to_string()))?;
        }
        Protocol::V5 => {
            let packet = match out {
                Outbound::ConnAck { code, keep_alive } => v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code: match code {
                        ConnAckCode::Accepted => v5::ConnectReturnCode::Success,
                        ConnAckCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                        ConnAckCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    },
                    properties: (*code == ConnAckCode::Accepted)
                        .then(|| server_capabilities(*keep_alive)),
                }),
                Outbound::Publish(msg) => v5::Packet::Publish({
                    let mut p = v5::Publish::new(
                        msg.topic.clone(),
                        to_q5(msg.qos),
                        msg.payload.clone(),
                        None,
                    );
                    p.pkid = msg.pkid;
                    p.retain = msg.retain;
                    p
                }),
                Outbound::PubAck {
                    pkid,
                    not_authorized,
                } => v5::Packet::PubAck({
                    let mut a = v5::PubAck::new(*pkid, None);
                    if *not_authorized {
                        a.reason = v5::PubAckReason::NotAuthorized;
                    }
                    a
                }),
                Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
                    pkid: *pkid,
                    return_codes: granted
                        .iter()
                        .map(|g| match g {
                            Ok(q) => v5::SubscribeReasonCode::Success(to_q5(*q)),
                            Err(SubRefusal::NotAuthorized) => {
                                v5::SubscribeReasonCode::NotAuthorized
                            }
                            Err(SubRefusal::QuotaExceeded) => {
                                v5::SubscribeReasonCode::QuotaExceeded
                            }
                        })
                        .collect(),
                    properties: None,
                }),
                Outbound::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid: *pkid,
                    reasons: vec![v5::UnsubAckReason::Success; *count],
                    properties: None,
                }),
                Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
                Outbound::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect {
                    reason_code: match reason {
                        DisconnectReason::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
                        DisconnectReason::SessionTakenOver => {
                            v5::DisconnectReasonCode::SessionTakenOver
                        }
                        DisconnectReason::KeepAliveTimeout => {
                            v5::DisconnectReasonCode::KeepAliveTimeout
                        }
                        DisconnectReason::PacketTooLarge => {
                            v5::DisconnectReasonCode::PacketTooLarge
                        }
                        DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                        DisconnectReason::TopicNameInvalid => {
                            v5::DisconnectReasonCode::TopicNameInvalid
                        }
                        DisconnectReason::AdministrativeAction => {
                            v5::DisconnectReasonCode::AdministrativeAction
                        }
                        DisconnectReason::QuotaExceeded => v5::DisconnectReasonCode::QuotaExceeded,
                    },
                    // Always with a reason string: rumqttc 0.25 cannot read a DISCONNECT
                    // without properties (remaining length 1), although MQTT 5 allows it,
                    // and writes an empty property block as remaining length 0.
                    properties: Some(v5::DisconnectProperties {
                        session_expiry_interval: None,
                        reason_string: Some(reason.text().to_owned()),
                        user_properties: Vec::new(),
                        server_reference: None,
                    }),
                }),
            };
            packet.write(buf, None).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(())
}
