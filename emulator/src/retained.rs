//! Retained messages, as AWS IoT Core keeps them (AWS IoT Core developer
//! guide, "MQTT retained messages"): one per topic, stored by a PUBLISH
//! with RETAIN set and a payload, replaced by the next such PUBLISH on the
//! same topic, deleted by one with an empty payload, and sent to a client
//! when it subscribes to a filter matching the topic.
//!
//! Kept in memory, at most [`MAX_RETAINED_TOPICS`] of them: an emulator
//! restart forgets them (AWS keeps a retained message for three years
//! after it was last updated or read).

use std::collections::HashMap;

use bytes::Bytes;

use crate::mqtt::{Message, Qos};
use crate::topic;

/// Most topics with a retained message. AWS's quota is 500,000 per account
/// (adjustable); the emulator, which holds them in memory with payloads of
/// up to 128 KiB each, keeps far fewer (at most 128 MiB of payload).
pub const MAX_RETAINED_TOPICS: usize = 1024;

/// What a retained PUBLISH did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retention {
    /// The topic had no retained message and now has this one.
    Stored,
    /// The topic's retained message was replaced by this one.
    Replaced,
    /// An empty payload: the topic's retained message, if any, is gone.
    Deleted,
    /// A new topic while [`MAX_RETAINED_TOPICS`] are held: not stored.
    Full,
}

/// One retained message: its topic is the key in [`RetainedMessages`].
#[derive(Debug, Clone)]
struct Kept {
    qos: Qos,
    payload: Bytes,
}

/// Invariant: at most [`MAX_RETAINED_TOPICS`] entries, none with an empty
/// payload (an empty retained payload deletes instead of storing).
#[derive(Debug, Default)]
pub(crate) struct RetainedMessages {
    by_topic: HashMap<String, Kept>,
}

impl RetainedMessages {
    /// Applies a PUBLISH whose RETAIN flag is set.
    pub fn apply(&mut self, msg: &Message) -> Retention {
        if msg.payload.is_empty() {
            self.by_topic.remove(&msg.topic);
            return Retention::Deleted;
        }
        let kept = Kept {
            qos: msg.qos,
            payload: msg.payload.clone(),
        };
        let held = self.by_topic.len();
        match self.by_topic.get_mut(&msg.topic) {
            Some(old) => {
                *old = kept;
                Retention::Replaced
            }
            None if held >= MAX_RETAINED_TOPICS => Retention::Full,
            None => {
                self.by_topic.insert(msg.topic.clone(), kept);
                Retention::Stored
            }
        }
    }

    /// The retained messages whose topics `filter` matches, RETAIN set, in
    /// no particular order (MQTT orders only the messages of one topic).
    pub fn matching(&self, filter: &str) -> Vec<Message> {
        self.by_topic
            .iter()
            .filter(|(t, _)| topic::matches(t, filter))
            .map(|(t, k)| Message {
                topic: t.clone(),
                qos: k.qos,
                retain: true,
                pkid: 0,
                payload: k.payload.clone(),
            })
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_topic.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retained(topic: &str, payload: &'static [u8]) -> Message {
        Message {
            topic: topic.into(),
            qos: Qos::AtLeastOnce,
            retain: true,
            pkid: 7,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn store_replace_delete() {
        let mut kept = RetainedMessages::default();
        assert_eq!(kept.apply(&retained("a/b", b"1")), Retention::Stored);
        assert_eq!(kept.apply(&retained("a/b", b"2")), Retention::Replaced);
        let found = kept.matching("a/+");
        assert_eq!(found.len(), 1);
        assert_eq!(&found[0].payload[..], b"2");
        assert!(found[0].retain);
        assert_eq!(kept.apply(&retained("a/b", b"")), Retention::Deleted);
        assert!(kept.matching("#").is_empty());
        // Deleting what is not there is no error.
        assert_eq!(kept.apply(&retained("a/c", b"")), Retention::Deleted);
    }

    #[test]
    fn caps_new_topics_but_not_replacements() {
        let mut kept = RetainedMessages::default();
        let topics: Vec<String> = (0..MAX_RETAINED_TOPICS).map(|i| format!("t/{i}")).collect();
        for t in &topics {
            assert_eq!(kept.apply(&retained(t, b"x")), Retention::Stored);
        }
        assert_eq!(kept.apply(&retained("t/new", b"x")), Retention::Full);
        assert_eq!(kept.apply(&retained("t/0", b"y")), Retention::Replaced);
        assert_eq!(kept.len(), MAX_RETAINED_TOPICS);
        assert_eq!(kept.apply(&retained("t/1", b"")), Retention::Deleted);
        assert_eq!(kept.apply(&retained("t/new", b"x")), Retention::Stored);
    }
}
