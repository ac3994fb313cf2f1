//! The subscriptions of one connection, at most
//! [`MAX_SUBSCRIPTIONS_PER_CONNECTION`] of them.

use std::collections::HashMap;

use crate::mqtt::{Qos, SubRefusal};
use crate::topic;

/// Most subscriptions one connection holds: AWS IoT Core's "Subscriptions
/// per connection" quota, 50 (AWS IoT Core endpoints and quotas, "Message
/// broker and protocol limits and quotas",
/// <https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits>).
/// AWS rejects subscription requests beyond it and tells clients to check
/// their SUBACK; the emulator answers the failure code for each filter
/// that would be one too many, keeps the connection and the subscriptions
/// it has, and still accepts a SUBSCRIBE to a filter already held (which
/// only replaces its QoS).
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 50;

/// Invariant: never more than [`MAX_SUBSCRIPTIONS_PER_CONNECTION`]
/// filters, each once (keyed by the filter, so that a SUBSCRIBE or
/// UNSUBSCRIBE costs one lookup per filter).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    granted: HashMap<String, Qos>,
}

impl Subscriptions {
    /// Subscribes `filter` at `qos` (or replaces its QoS), unless that
    /// would make one subscription too many.
    pub fn add(&mut self, filter: String, qos: Qos) -> Result<Qos, SubRefusal> {
        let held = self.granted.len();
        match self.granted.get_mut(&filter) {
            Some(q) => *q = qos,
            None if held >= MAX_SUBSCRIPTIONS_PER_CONNECTION => {
                return Err(SubRefusal::QuotaExceeded)
            }
            None => {
                self.granted.insert(filter, qos);
            }
        }
        Ok(qos)
    }

    pub fn remove(&mut self, filter: &str) {
        self.granted.remove(filter);
    }

    /// The highest QoS granted by a filter matching `topic`, if any does.
    pub fn granted_for(&self, topic: &str) -> Option<Qos> {
        self.granted
            .iter()
            .filter(|(f, _)| topic::matches(topic, f))
            .map(|(_, q)| *q)
            .max()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.granted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_new_filters_but_not_resubscriptions() {
        let mut subs = Subscriptions::default();
        for i in 0..MAX_SUBSCRIPTIONS_PER_CONNECTION {
            assert_eq!(
                subs.add(format!("a/{i}"), Qos::AtMostOnce),
                Ok(Qos::AtMostOnce)
            );
        }
        assert_eq!(
            subs.add("a/new".into(), Qos::AtLeastOnce),
            Err(SubRefusal::QuotaExceeded)
        );
        // A filter held already: its QoS changes, the count does not.
        assert_eq!(
            subs.add("a/0".into(), Qos::AtLeastOnce),
            Ok(Qos::AtLeastOnce)
        );
        assert_eq!(subs.len(), MAX_SUBSCRIPTIONS_PER_CONNECTION);
        assert_eq!(subs.granted_for("a/0"), Some(Qos::AtLeastOnce));
        assert_eq!(subs.granted_for("a/new"), None);
        subs.remove("a/1");
        assert_eq!(
            subs.add("a/new".into(), Qos::AtLeastOnce),
            Ok(Qos::AtLeastOnce)
        );
    }

    #[test]
    fn highest_matching_qos() {
        let mut subs = Subscriptions::default();
        subs.add("a/+".into(), Qos::AtMostOnce).unwrap();
        subs.add("a/#".into(), Qos::AtLeastOnce).unwrap();
        assert_eq!(subs.granted_for("a/b"), Some(Qos::AtLeastOnce));
        assert_eq!(subs.granted_for("b"), None);
    }
}
