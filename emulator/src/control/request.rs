//! One control-plane request as the operations see it: the path labels, the
//! query string and headers (all percent-decoded where AWS encodes them) and
//! the JSON body, with accessors whose errors name the member that was wrong.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::ApiError;

pub(crate) struct ApiRequest {
    /// The operation's name (`DescribeThing`), for messages.
    pub operation: &'static str,
    labels: BTreeMap<String, String>,
    query: Vec<(String, String)>,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl ApiRequest {
    pub(crate) fn new(
        operation: &'static str,
        labels: BTreeMap<String, String>,
        raw_query: Option<&str>,
        headers: hyper::HeaderMap,
        body: Vec<u8>,
    ) -> Result<Self, ApiError> {
        let mut query = Vec::new();
        for pair in raw_query.unwrap_or_default().split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{operation}: query string {pair:?} is not valid percent-encoded UTF-8"
                    ))
                })
            };
            query.push((decode(k)?, decode(v)?));
        }
        Ok(ApiRequest {
            operation,
            labels,
            query,
            headers,
            body,
        })
    }

    /// A path label (`{thingName}`), decoded. Routing guarantees it exists.
    pub(crate) fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// A query parameter; the first when repeated.
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer query parameter within `min..=max`.
    pub(crate) fn query_int(
        &self,
        name: &str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.query(name) else {
            return Ok(None);
        };
        match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(format!(
                "{}: {name} must be a whole number from {min} to {max}, not {v:?}",
                self.operation
            ))),
        }
    }

    /// A boolean query parameter (`true` or `false`, as botocore sends it).
    pub(crate) fn query_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.query(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!(
                "{}: {name} must be true or false, not {v:?}",
                self.operation
            ))),
        }
    }

    /// A header that must be present (`x-amzn-principal`).
    pub(crate) fn required_header(&self, name: &str) -> Result<&str, ApiError> {
        let v = self.headers.get(name).ok_or_else(|| {
            ApiError::invalid(format!("{}: header {name} is required", self.operation))
        })?;
        v.to_str().map_err(|_| {
            ApiError::invalid(format!(
                "{}: header {name} is not printable ASCII",
                self.operation
            ))
        })
    }

    /// The body as a JSON object; an empty body is `{}`.
    pub(crate) fn json_body(&self) -> Result<JsonBody<'_>, ApiError> {
        let op = self.operation;
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody {
                operation: op,
                path: String::new(),
                map: Map::new(),
            });
        }
        let v: Value = serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::invalid(format!("{op}: the request body is not valid JSON: {e}"))
        })?;
        match v {
            Value::Object(map) => Ok(JsonBody {
                operation: op,
                path: String::new(),
                map,
            }),
            other => Err(ApiError::invalid(format!(
                "{op}: the request body must be a JSON object, not {}",
                type_name(&other)
            ))),
        }
    }
}

/// A JSON object of a request body, or a member of one; `path` names it in
/// messages (`attributePayload.`).
pub(crate) struct JsonBody<'a> {
    operation: &'a str,
    path: String,
    map: Map<String, Value>,
}

impl<'a> JsonBody<'a> {
    fn member(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::invalid(format!(
            "{}: {}{name} must be {expected}, not {}",
            self.operation,
            self.path,
            type_name(got)
        ))
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.member(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(name, "a string", v)),
        }
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.member(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(name, "a boolean", v)),
        }
    }

    pub(crate) fn i64(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.member(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(name, "a whole number", v)),
        }
    }

    pub(crate) fn object(&self, name: &str) -> Result<Option<JsonBody<'a>>, ApiError> {
        match self.member(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(JsonBody {
                operation: self.operation,
                path: format!("{}{name}.", self.path),
                map: m.clone(),
            })),
            Some(v) => Err(self.wrong(name, "an object", v)),
        }
    }

    /// A list of strings (`searchableAttributes`).
    pub(crate) fn string_list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.member(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong(&format!("{name}[]"), "a string", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.wrong(name, "a list of strings", v)),
        }
    }

    /// A map of strings (`attributes`).
    pub(crate) fn string_map(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        let Some(obj) = self.object(name)? else {
            return Ok(None);
        };
        let mut out = BTreeMap::new();
        for (k, v) in &obj.map {
            match v {
                Value::String(s) => {
                    out.insert(k.clone(), s.clone());
                }
                other => return Err(obj.wrong(k, "a string", other)),
            }
        }
        Ok(Some(out))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes `%XX` escapes (a `+` stays a `+`, as botocore encodes spaces as
/// `%20`); `None` for a bad escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: Option<&str>, body: &str) -> ApiRequest {
        ApiRequest::new(
            "UpdateThing",
            BTreeMap::new(),
            query,
            hyper::HeaderMap::new(),
            body.as_bytes().to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab%20c+d").as_deref(), Some("a:b c+d"));
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn query_parameters_are_decoded_and_checked() {
        let r = request(
            Some("maxResults=5&attributeValue=a%3Db&flag=true&bad=2x"),
            "",
        );
        assert_eq!(r.query("attributeValue"), Some("a=b"));
        assert_eq!(r.query_int("maxResults", 1, 250).unwrap(), Some(5));
        assert_eq!(r.query_int("missing", 1, 250).unwrap(), None);
        assert_eq!(r.query_bool("flag").unwrap(), Some(true));
        let e = r.query_int("bad", 1, 250).unwrap_err();
        assert!(
            e.message
                .contains("bad must be a whole number from 1 to 250"),
            "{}",
            e.message
        );
        let r = request(Some("maxResults=0"), "");
        assert!(r.query_int("maxResults", 1, 250).is_err());
    }

    #[test]
    fn body_errors_name_the_member() {
        let e = request(None, "{\"attributePayload\": ")
            .json_body()
            .err()
            .unwrap();
        assert!(
            e.message
                .starts_with("UpdateThing: the request body is not valid JSON"),
            "{}",
            e.message
        );
        let e = request(None, "[1]").json_body().err().unwrap();
        assert!(
            e.message.contains("must be a JSON object, not an array"),
            "{}",
            e.message
        );
        let body = request(
            None,
            r#"{"attributePayload": {"attributes": {"a": 1}}, "merge": "yes"}"#,
        );
        let body = body.json_body().unwrap();
        let e = body.bool("merge").unwrap_err();
        assert_eq!(
            e.message,
            "UpdateThing: merge must be a boolean, not a string"
        );
        let payload = body.object("attributePayload").unwrap().unwrap();
        let e = payload.string_map("attributes").unwrap_err();
        assert_eq!(
            e.message,
            "UpdateThing: attributePayload.attributes.a must be a string, not a number"
        );
        assert!(request(None, "")
            .json_body()
            .unwrap()
            .string("x")
            .unwrap()
            .is_none());
    }
}
