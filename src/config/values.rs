//! Parsers for the value kinds that appear in `config.ini`.

use std::time::Duration;

/// `10s`, `500ms`, `5m`, `2h`, `30d`, or a bare number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write e.g. 10s, 500ms, 5m, 2h or 30d"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Ok(Duration::from_millis(n)),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => Err(format!(
            "unknown duration unit {other:?} in {s:?}: use ms, s, m, h or d"
        )),
    }
}

pub fn boolean(s: &str) -> Result<bool, String> {
    // configparser's spellings.
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean: use true or false")),
    }
}

pub fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "{s:?} is not a TCP port (1-65535); AWS IoT uses 8883 or 443"
        )),
    }
}

pub fn u32_auto_radix(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex)"))
}

pub fn non_empty(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        Err("the value is empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// A provisioning template name: 1 to 36 characters of `[0-9A-Za-z_-]`.
pub fn template_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty()
        && s.len() <= 36
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a provisioning template name: 1 to 36 characters of 0-9 A-Z a-z _ -"
        ))
    }
}

/// An MQTT topic the agent publishes to: no wildcards, at most 256 bytes.
pub fn topic(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 256 || s.contains(['+', '#']) {
        Err(format!(
            "{s:?} is not a publishable MQTT topic: 1 to 256 bytes without + or #"
        ))
    } else {
        Ok(s.to_string())
    }
}

/// The client-id prefix of claim sessions: 1 to 64 of `[A-Za-z0-9_.:-]`.
/// The claim policy grants `iot:Connect` on `client/<prefix>*` only, so the
/// prefix must not be empty (that would be any client id, a gateway's thing
/// name included) nor hold a policy wildcard (`*`, `?`) or an MQTT one.
pub fn client_id_prefix(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: 1 to 64 of A-Z a-z 0-9 _ . : - (the claim policy allows iot:Connect only \
             on client/<CLIENT_ID_PREFIX>*, so an empty prefix would let the claim credential \
             connect as any thing)"
        ))
    }
}

/// A share of a lifetime, `0.66` or `66%`, strictly between 0 and 1.
pub fn fraction(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share: write e.g. 0.66 or 66%"))?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{s:?} must lie strictly between 0 and 1 (0% and 100%)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(duration("ten").is_err());
        assert!(duration("5y").unwrap_err().contains("unit"));
    }

    #[test]
    fn other_values() {
        assert!(boolean("Yes").unwrap());
        assert!(!boolean("off").unwrap());
        assert!(boolean("maybe").is_err());
        assert_eq!(port("443").unwrap(), 443);
        assert!(port("0").is_err());
        assert_eq!(u32_auto_radix("0x81000100").unwrap(), 0x8100_0100);
        assert!(template_name("ProdTemplate").is_ok());
        assert!(template_name("bad name").is_err());
        assert!(template_name(&"a".repeat(37)).is_err());
        assert!(topic("a/+/b").is_err());
        assert_eq!(fraction("66%").unwrap(), 0.66);
        assert!(fraction("1.5").is_err());
    }
}
