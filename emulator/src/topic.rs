//! Topic rules of AWS IoT Core: size and depth limits, filter matching.

/// Longest topic or filter AWS accepts, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Most forward slashes in a topic, not counting the `$aws/rules/<rule>/` prefix.
pub const MAX_TOPIC_SLASHES: usize = 7;

fn within_limits(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_TOPIC_BYTES || s.contains('\0') {
        return false;
    }
    let counted = if s.to_ascii_lowercase().starts_with("$aws/rules/") {
        s.splitn(4, '/').nth(3).unwrap_or_default()
    } else {
        s
    };
    counted.matches('/').count() <= MAX_TOPIC_SLASHES
}

/// A topic a client may publish to.
pub fn valid_publish_topic(topic: &str) -> bool {
    within_limits(topic) && rumqttc::mqttbytes::valid_topic(topic)
}

/// A filter a client may subscribe to.
pub fn valid_filter(filter: &str) -> bool {
    within_limits(filter) && rumqttc::mqttbytes::valid_filter(filter)
}

/// MQTT filter matching (`+` one level, `#` the rest, the parent level
/// included). Topics starting with `$` are not matched by a wildcard in the
/// first level (MQTT 3.1.1 section 4.7.2); rumqttc's own matcher refuses
/// every `$` topic, which would hide the `$aws/...` responses.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(_) if f == "+" => {}
            Some(t) if t == f => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(valid_publish_topic("a/b/c/d/e/f/g/h"));
        assert!(!valid_publish_topic("a/b/c/d/e/f/g/h/i"));
        assert!(valid_publish_topic("$aws/rules/r/a/b/c/d/e/f/g/h"));
        assert!(!valid_publish_topic(&"x".repeat(257)));
        assert!(!valid_publish_topic("a/+/b"));
        assert!(valid_filter("a/+/b/#"));
        assert!(matches(
            "$aws/certificates/create/json/accepted",
            "$aws/certificates/create/json/+"
        ));
        assert!(matches("a/b/c", "a/#"));
        assert!(!matches("a/b/c", "a/+"));
        assert!(matches("a/b", "a/b/#"));
        assert!(!matches("$aws/x", "#"));
        assert!(!matches("$aws/x", "+/x"));
        assert!(matches("a/b", "a/+"));
        assert!(!matches("a", "a/+"));
    }
}
