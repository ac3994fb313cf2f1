//! `prov-agent keys list`.

use std::sync::Arc;

use super::CommandError;
use crate::keystore::KeyStore;

/// One line per key for people, or a JSON document with the keys.
pub fn list(store: &Arc<dyn KeyStore>, json: bool) -> Result<String, CommandError> {
    let keys = store.list()?;
    if json {
        let rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "label": k.label.as_str(),
                    "backend": k.backend.as_str(),
                    "reference": k.reference,
                    "algorithm": k.algorithm().as_str(),
                    "publicKeySha256": k.public_key.fingerprint(),
                })
            })
            .collect();
        return Ok(super::outcome::document(
            serde_json::json!({ "keys": rows }),
        ));
    }
    if keys.is_empty() {
        return Ok(format!("no keys in the {} key store", store.backend()));
    }
    let mut out = String::new();
    for k in &keys {
        out.push_str(&format!(
            "{:<24} {:<9} {}  sha256:{}\n",
            k.label.as_str(),
            k.algorithm().as_str(),
            k.reference,
            &k.public_key.fingerprint()[..16]
        ));
    }
    Ok(out.trim_end().to_string())
}
