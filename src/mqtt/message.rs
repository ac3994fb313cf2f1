//! A message the server delivered on a subscribed topic.

use zeroize::Zeroizing;

/// One PUBLISH from the server. Its payload may be a secret
/// (CreateKeysAndCertificate answers with a private key): wiped on drop,
/// and not printed by `Debug`.
pub struct Message {
    pub topic: String,
    pub payload: Zeroizing<Vec<u8>>,
    /// RETAIN was set: the broker kept this message from before the
    /// subscription and sends it at every subscription to the topic (so
    /// after every reconnect) until it is deleted, rather than forwarding it
    /// as it was published.
    pub retained: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("retained", &self.retained)
            .finish()
    }
}
