//! JSON and CBOR bodies of the `$aws` APIs. Both carry the same keys; CBOR
//! maps have text keys.

use crate::config::PayloadFormat;

pub fn encode(format: PayloadFormat, value: &serde_json::Value) -> Vec<u8> {
    match format {
        PayloadFormat::Json => serde_json::to_vec(value).expect("a JSON value serialises"),
        PayloadFormat::Cbor => {
            let mut out = Vec::new();
            ciborium::into_writer(value, &mut out).expect("a JSON value serialises as CBOR");
            out
        }
    }
}

/// A body that is not a document of the format agreed for the API.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid CBOR: {0}")]
    Cbor(#[source] ciborium::de::Error<std::io::Error>),
}

pub fn decode(format: PayloadFormat, bytes: &[u8]) -> Result<serde_json::Value, PayloadError> {
    match format {
        PayloadFormat::Json => serde_json::from_slice(bytes).map_err(PayloadError::Json),
        PayloadFormat::Cbor => ciborium::from_reader(bytes).map_err(PayloadError::Cbor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_both_formats() {
        let v = serde_json::json!({"certificateOwnershipToken": "t", "parameters": {"SerialNumber": "1"}});
        for f in [PayloadFormat::Json, PayloadFormat::Cbor] {
            assert_eq!(decode(f, &encode(f, &v)).unwrap(), v);
        }
        // CBOR is not JSON: the formats are not interchangeable.
        assert!(decode(PayloadFormat::Json, &encode(PayloadFormat::Cbor, &v)).is_err());
        assert!(decode(PayloadFormat::Cbor, b"\xff\x00").is_err());
    }
}
