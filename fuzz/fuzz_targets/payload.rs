//! The `$aws` APIs' answers as read off MQTT: `payload::decode` in both
//! formats (CreateCertificateFromCsr, CreateKeysAndCertificate and
//! RegisterThing answer in the format of the request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prov_agent::config::PayloadFormat;
use prov_agent::mqtt::payload;
use serde_json::Value;

const FORMATS: [PayloadFormat; 2] = [PayloadFormat::Json, PayloadFormat::Cbor];

/// Equal, but for floats read from JSON text: serde_json (without its
/// `float_roundtrip` feature) may read a float one unit in the last place
/// off, so those may differ by two.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ulps(x, y) <= 2,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// How many floats apart `x` and `y` are (both finite: JSON has no other).
fn ulps(x: f64, y: f64) -> u64 {
    // Order the bit patterns as the numbers are ordered.
    let key = |f: f64| {
        let b = f.to_bits() as i64;
        if b < 0 {
            i64::MIN - b
        } else {
            b
        }
    };
    key(x).abs_diff(key(y))
}

/// Levels of arrays and objects.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    for format in FORMATS {
        let Ok(value) = payload::decode(format, data) else {
            continue;
        };
        // Whatever was read encodes in either format and reads back the
        // same: exactly through CBOR, floats to the last place through JSON.
        // (serde_json reads 127 levels of nesting, ciborium 256: deeper
        // values read only in the format they came in.)
        for f in FORMATS {
            if f != format && depth(&value) >= 128 {
                continue;
            }
            let again = payload::decode(f, &payload::encode(f, &value))
                .unwrap_or_else(|e| panic!("{value:?} in {f:?} does not read back: {e}"));
            match f {
                PayloadFormat::Cbor => assert_eq!(again, value, "CBOR round trip"),
                _ => assert!(
                    same(&again, &value),
                    "JSON round trip: {again:?} != {value:?}"
                ),
            }
        }
    }
});
