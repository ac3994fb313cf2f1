//! The key helper's pipe: `wire::read_message` of frames from the daemon
//! (`RequestFrame`) or from the helper (`ReplyFrame`, its keys' public
//! keys included), as many messages as the input holds.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use prov_agent::keystore::helper::wire::{self, ReplyFrame, RequestFrame};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads every message of `data`; each one that reads is written again and
/// reads back to the same header and body.
fn messages<T: DeserializeOwned + Serialize + std::fmt::Debug>(
    data: &[u8],
    mut each: impl FnMut(&T),
) {
    let mut input = Cursor::new(data);
    while let Ok(Some((header, body))) = wire::read_message::<T>(&mut input) {
        let mut out = Vec::new();
        wire::write_message(&mut out, &header, &body).expect("a message that was read is written");
        let (again, again_body) = wire::read_message::<T>(&mut Cursor::new(&out[..]))
            .expect("a written message reads")
            .expect("a written message is there");
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&header).unwrap(),
            "{header:?}"
        );
        assert_eq!(&again_body[..], &body[..]);
        each(&header);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        messages::<RequestFrame>(data, |_| {});
    } else {
        messages::<ReplyFrame>(data, |reply| {
            // The daemon turns each key into a KeyInfo (label and SPKI
            // checked); whatever it says, it must not panic.
            let value = serde_json::to_value(reply).unwrap();
            let keys = match value.pointer("/v1/key") {
                Some(key) => vec![key.clone()],
                None => value
                    .pointer("/v1/keys")
                    .and_then(|k| k.as_array())
                    .cloned()
                    .unwrap_or_default(),
            };
            for key in keys {
                if let Ok(key) = serde_json::from_value::<wire::WireKey>(key) {
                    let _ = key.into_info();
                }
            }
        });
    }
});
