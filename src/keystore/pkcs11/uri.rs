//! RFC 7512 PKCS#11 URIs: `pkcs11:token=gw;object=claim;type=private;id=%01%02`.
//!
//! Only what the agent needs to name a key is kept: the token (label,
//! manufacturer, model, serial), the object (label, id, type) and the
//! module from the query. Unknown attributes are ignored, as RFC 7512
//! allows. A PIN inside the URI (`pin-value`) is refused: PINs come from a
//! PIN source (file, environment, systemd credential) and never travel in a
//! string that ends up in configs, logs and process listings.

use std::fmt;
use std::str::FromStr;

/// The `type` attribute of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectType {
    Private,
    Public,
    Cert,
    SecretKey,
    Data,
}

impl ObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Private => "private",
            ObjectType::Public => "public",
            ObjectType::Cert => "cert",
            ObjectType::SecretKey => "secret-key",
            ObjectType::Data => "data",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "private" => ObjectType::Private,
            "public" => ObjectType::Public,
            "cert" => ObjectType::Cert,
            "secret-key" => ObjectType::SecretKey,
            "data" => ObjectType::Data,
            _ => return None,
        })
    }
}

/// Why a string is not a usable PKCS#11 URI. Never holds a PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("not a PKCS#11 URI: it must start with \"pkcs11:\"")]
    Scheme,
    #[error("PKCS#11 URI holds a PIN (pin-value): remove it and give the PIN through a PIN source (file:/path, env:NAME or credential:NAME) instead")]
    PinValue,
    #[error("PKCS#11 URI attribute {attribute:?} has no '=' sign")]
    NoValue { attribute: String },
    #[error("PKCS#11 URI attribute {attribute} is given twice")]
    Duplicate { attribute: String },
    #[error("PKCS#11 URI attribute {attribute} has a bad percent-encoding: {detail}")]
    Encoding {
        attribute: String,
        detail: &'static str,
    },
    #[error("PKCS#11 URI attribute type={value:?} is not one of private, public, cert, secret-key, data")]
    Type { value: String },
}

/// A parsed PKCS#11 URI. Formatting with `Display` gives the canonical form
/// (attributes in RFC 7512 order, percent-encoded where needed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub object_type: Option<ObjectType>,
    /// `module-path` from the query part.
    pub module_path: Option<String>,
    /// `pin-source` from the query part: where the PIN is, not the PIN.
    pub pin_source: Option<String>,
}

impl Pkcs11Uri {
    /// The URI of a private key object by token and key label, as the
    /// key store reports it.
    pub fn private_key(token: &str, object: &str) -> Self {
        Self {
            token: Some(token.to_string()),
            object: Some(object.to_string()),
            object_type: Some(ObjectType::Private),
            ..Self::default()
        }
    }

    pub fn parse(s: &str) -> Result<Self, UriError> {
        let rest = s
            .strip_prefix("pkcs11:")
            .or_else(|| {
                // The scheme is case-insensitive (RFC 3986).
                s.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("pkcs11:"))
                    .map(|_| &s[7..])
            })
            .ok_or(UriError::Scheme)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        // Refuse a PIN before anything else, so that no later error can
        // echo any part of it.
        let has_pin = |part: &str, sep: char| {
            part.split(sep)
                .any(|a| a.split('=').next().map(str::trim) == Some("pin-value"))
        };
        if has_pin(path, ';') || query.is_some_and(|q| has_pin(q, '&')) {
            return Err(UriError::PinValue);
        }

        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').ok_or_else(|| UriError::NoValue {
                attribute: attr.to_string(),
            })?;
            let slot = match name {
                "token" => Some(&mut uri.token),
                "manufacturer" => Some(&mut uri.manufacturer),
                "model" => Some(&mut uri.model),
                "serial" => Some(&mut uri.serial),
                "object" => Some(&mut uri.object),
                _ => None,
            };
            if let Some(slot) = slot {
                set_once(slot, name, decode_str(name, value)?)?;
                continue;
            }
            match name {
                "id" => set_once(&mut uri.id, name, decode(name, value)?)?,
                "type" => {
                    let text = decode_str(name, value)?;
                    let t = ObjectType::parse(&text).ok_or(UriError::Type {
                        value: text.clone(),
                    })?;
                    set_once(&mut uri.object_type, name, t)?;
                }
                // Library and slot attributes, vendor extensions and
                // anything newer than RFC 7512: not needed to find a key.
                _ => {}
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').ok_or_else(|| UriError::NoValue {
                attribute: attr.to_string(),
            })?;
            match name {
                "module-path" => set_once(&mut uri.module_path, name, decode_str(name, value)?)?,
                "pin-source" => set_once(&mut uri.pin_source, name, decode_str(name, value)?)?,
                _ => {}
            }
        }
        Ok(uri)
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError::Duplicate {
            attribute: name.to_string(),
        });
    }
    *slot = Some(value);
    Ok(())
}

fn decode(name: &str, value: &str) -> Result<Vec<u8>, UriError> {
    let bad = |detail| UriError::Encoding {
        attribute: name.to_string(),
        detail,
    };
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or_else(|| bad("'%' is not followed by two hex digits"))?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad("'%' is not followed by hex"))?;
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| bad("'%' is not followed by two hex digits"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn decode_str(name: &str, value: &str) -> Result<String, UriError> {
    String::from_utf8(decode(name, value)?).map_err(|_| UriError::Encoding {
        attribute: name.to_string(),
        detail: "the decoded value is not UTF-8",
    })
}

/// Percent-encodes everything outside RFC 3986 `unreserved`, which is
/// always valid in both the path and the query of a PKCS#11 URI.
fn encode(bytes: &[u8], all: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if !all && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

impl FromStr for Pkcs11Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        Self::parse(s)
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path: Vec<String> = Vec::new();
        let text = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("object", &self.object),
        ];
        for (name, value) in text {
            if let Some(v) = value {
                path.push(format!("{name}={}", encode(v.as_bytes(), false)));
            }
        }
        if let Some(t) = self.object_type {
            path.push(format!("type={}", t.as_str()));
        }
        if let Some(id) = &self.id {
            path.push(format!("id={}", encode(id, true)));
        }
        write!(f, "pkcs11:{}", path.join(";"))?;
        let mut query = Vec::new();
        if let Some(p) = &self.module_path {
            // '/' is allowed in a query and keeps paths readable.
            query.push(format!(
                "module-path={}",
                encode(p.as_bytes(), false).replace("%2f", "/")
            ));
        }
        if let Some(p) = &self.pin_source {
            query.push(format!(
                "pin-source={}",
                encode(p.as_bytes(), false).replace("%2f", "/")
            ));
        }
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_brief_example() {
        let uri = Pkcs11Uri::parse("pkcs11:token=gw;object=claim;type=private;id=%01%02").unwrap();
        assert_eq!(uri.token.as_deref(), Some("gw"));
        assert_eq!(uri.object.as_deref(), Some("claim"));
        assert_eq!(uri.object_type, Some(ObjectType::Private));
        assert_eq!(uri.id, Some(vec![1, 2]));
    }

    #[test]
    fn attribute_order_is_free_and_unknown_attributes_are_ignored() {
        let a = Pkcs11Uri::parse(
            "pkcs11:id=%01%02;type=private;x-vendor=1;object=claim;token=gw;slot-id=3",
        )
        .unwrap();
        let b = Pkcs11Uri::parse("pkcs11:token=gw;object=claim;type=private;id=%01%02").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn percent_decoding_and_encoding_round_trip() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token%3b1;object=a%2Fb;manufacturer=SoftHSM%20project",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("My Token;1"));
        assert_eq!(uri.object.as_deref(), Some("a/b"));
        assert_eq!(uri.manufacturer.as_deref(), Some("SoftHSM project"));
        let text = uri.to_string();
        assert_eq!(
            text,
            "pkcs11:token=My%20Token%3b1;manufacturer=SoftHSM%20project;object=a%2fb"
        );
        assert_eq!(Pkcs11Uri::parse(&text).unwrap(), uri);
    }

    #[test]
    fn formats_the_key_store_reference() {
        let uri = Pkcs11Uri::private_key("gw", "device.pending");
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=gw;object=device.pending;type=private"
        );
        let mut with_id = uri.clone();
        with_id.id = Some(vec![0xab, 0x01]);
        assert_eq!(
            with_id.to_string(),
            "pkcs11:token=gw;object=device.pending;type=private;id=%ab%01"
        );
        assert_eq!(Pkcs11Uri::parse(&with_id.to_string()).unwrap(), with_id);
    }

    #[test]
    fn query_attributes() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=gw?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
        )
        .unwrap();
        assert_eq!(
            uri.module_path.as_deref(),
            Some("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(uri.pin_source.as_deref(), Some("file:/etc/pin"));
        assert_eq!(Pkcs11Uri::parse(&uri.to_string()).unwrap(), uri);
    }

    #[test]
    fn pin_value_is_rejected_and_never_echoed() {
        for text in [
            "pkcs11:token=gw;object=claim?pin-value=s3cr3t-1234",
            "pkcs11:token=gw;pin-value=s3cr3t-1234;object=claim",
            "pkcs11:token=gw?module-path=/x.so&pin-value=s3cr3t-1234",
            // Even when the rest of the URI is broken.
            "pkcs11:token=%zz;pin-value=s3cr3t-1234",
        ] {
            let err = Pkcs11Uri::parse(text).unwrap_err();
            assert_eq!(err, UriError::PinValue);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("PIN source"), "{shown}");
        }
    }

    #[test]
    fn malformed_uris_are_rejected() {
        assert_eq!(Pkcs11Uri::parse("file:/x").unwrap_err(), UriError::Scheme);
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=%4").unwrap_err(),
            UriError::Encoding { .. }
        ));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=%ff").unwrap_err(),
            UriError::Encoding { .. }
        ));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token").unwrap_err(),
            UriError::NoValue { .. }
        ));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:token=a;token=b").unwrap_err(),
            UriError::Duplicate { .. }
        ));
        assert!(matches!(
            Pkcs11Uri::parse("pkcs11:type=secret").unwrap_err(),
            UriError::Type { .. }
        ));
        // A binary id need not be UTF-8.
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:id=%ff%00").unwrap().id,
            Some(vec![0xff, 0])
        );
        assert_eq!(
            Pkcs11Uri::parse("PKCS11:token=gw")
                .unwrap()
                .token
                .as_deref(),
            Some("gw")
        );
    }
}
