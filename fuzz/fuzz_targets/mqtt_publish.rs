//! The agent's own PUBLISH reader (`read_publish`, which reads answers in
//! place so that a private key in them can be wiped), against rumqttc's
//! codec, behind the same `mqttbytes::check` the session runs first.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::{self, v4::Packet};

const MAX_PACKET: usize = prov_agent::mqtt::MAX_PAYLOAD + 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = mqttbytes::check(data.iter(), MAX_PACKET) else {
        return;
    };
    let frame = &data[..header.frame_length()];
    if frame[0] >> 4 != 3 {
        return;
    }
    let ours = prov_agent::mqtt::fuzz_read_publish(frame);
    let theirs = Packet::read(&mut BytesMut::from(frame), MAX_PACKET);
    match (ours, theirs) {
        (Ok((topic, qos, pkid, payload)), Ok(Packet::Publish(p))) => {
            assert_eq!(topic, p.topic);
            assert_eq!(qos, p.qos);
            assert_eq!(pkid, p.pkid);
            assert_eq!(&payload[..], &p.payload[..]);
        }
        (Ok(ours), theirs) => panic!("we read {ours:?}, the codec {theirs:?}"),
        (Err(_), _) => {}
    }
});
