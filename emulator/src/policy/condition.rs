//! The `Condition` element: parsed when the policy is, evaluated for each
//! request, with IAM's semantics ("IAM JSON policy elements: Condition
//! operators", "Creating a condition with multiple keys or values"):
//!
//! - every operator block must hold, and within a block every key (AND);
//!   the values listed for one key are alternatives (OR);
//! - a key absent from the request makes a test false, except that a
//!   negated operator (`StringNotEquals`, `ArnNotLike`, ...) is then true,
//!   an `...IfExists` operator is true, and `Null` tests exactly that;
//! - `ForAnyValue:` holds when some value of the key passes (false for an
//!   absent key), `ForAllValues:` when every value does (true for an
//!   absent key);
//! - a policy value whose variable has no value never widens a grant
//!   ([`Unresolved`]): in an `Allow` it is skipped for a positive operator
//!   and makes a negated test false (it can no longer tell what is
//!   excluded); in a `Deny` it makes the test true, positive or negated.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::context::RequestContext;
use super::keys::{Key, Place};
use super::pattern::{arn_match, glob_match, Template};
use super::{PolicyError, Unresolved};

/// The base operators, as IAM names them.
const OPERATORS: &[&str] = &[
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnNotEquals",
    "ArnLike",
    "ArnNotLike",
    "Null",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

/// What one key value is tested against one policy value by; the
/// negated operators are the positive one with [`Test::negated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    String { ignore_case: bool },
    Like,
    Numeric(Cmp),
    Date(Cmp),
    Bool,
    Ip,
    Arn,
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetRule {
    /// No qualifier: the key's value; for a list key, any of them matching
    /// a positive test, none of them matching a negated one.
    Single,
    ForAnyValue,
    ForAllValues,
}

#[derive(Clone, Debug)]
struct Test {
    op: Op,
    negated: bool,
    if_exists: bool,
    set: SetRule,
    key: Key,
    values: Vec<Template>,
}

/// A statement's parsed `Condition`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Condition {
    tests: Vec<Test>,
}

impl Condition {
    /// Parses `Condition` at `path` (e.g. `Statement[1].Condition`).
    pub(crate) fn parse(path: &str, value: &Value) -> Result<Condition, PolicyError> {
        let Value::Object(blocks) = value else {
            return Err(PolicyError::invalid(
                path,
                "must be an object of condition operators, e.g. {\"Bool\": {\"iot:Connection.Thing.IsAttached\": \"true\"}}",
            ));
        };
        let mut tests = Vec::new();
        for (operator, block) in blocks {
            let opath = format!("{path}.{operator}");
            let (op, negated, if_exists, set) = parse_operator(operator)
                .ok_or_else(|| PolicyError::invalid(&opath, unknown_operator(operator)))?;
            let Value::Object(keys) = block else {
                return Err(PolicyError::invalid(
                    &opath,
                    "must be an object of condition keys and their values",
                ));
            };
            tests.extend(parse_block(&opath, keys, op, negated, if_exists, set)?);
        }
        Ok(Condition { tests })
    }

    /// Whether every test holds for this request; `unresolved` says what
    /// a test with a value whose variable has no value does.
    pub(crate) fn holds(&self, ctx: &RequestContext, unresolved: Unresolved) -> bool {
        self.tests.iter().all(|t| t.holds(ctx, unresolved))
    }
}

fn unknown_operator(operator: &str) -> String {
    format!(
        "unknown condition operator \"{operator}\"; accepted: {}, each but Null also with the \
         suffix IfExists, and with the prefix ForAnyValue: or ForAllValues:",
        OPERATORS.join(", ")
    )
}

fn parse_operator(name: &str) -> Option<(Op, bool, bool, SetRule)> {
    let (set, rest) = if let Some(r) = name.strip_prefix("ForAnyValue:") {
        (SetRule::ForAnyValue, r)
    } else if let Some(r) = name.strip_prefix("ForAllValues:") {
        (SetRule::ForAllValues, r)
    } else {
        (SetRule::Single, name)
    };
    let (base, if_exists) = match rest.strip_suffix("IfExists") {
        Some(b) if b != "Null" => (b, true),
        Some(_) => return None,
        None => (rest, false),
    };
    let (op, negated) = match base {
        "StringEquals" => (Op::String { ignore_case: false }, false),
        "StringNotEquals" => (Op::String { ignore_case: false }, true),
        "StringEqualsIgnoreCase" => (Op::String { ignore_case: true }, false),
        "StringNotEqualsIgnoreCase" => (Op::String { ignore_case: true }, true),
        "StringLike" => (Op::Like, false),
        "StringNotLike" => (Op::Like, true),
        "NumericEquals" => (Op::Numeric(Cmp::Eq), false),
        "NumericNotEquals" => (Op::Numeric(Cmp::Eq), true),
        "NumericLessThan" => (Op::Numeric(Cmp::Lt), false),
        "NumericLessThanEquals" => (Op::Numeric(Cmp::Le), false),
        "NumericGreaterThan" => (Op::Numeric(Cmp::Gt), false),
        "NumericGreaterThanEquals" => (Op::Numeric(Cmp::Ge), false),
        "DateEquals" => (Op::Date(Cmp::Eq), false),
        "DateNotEquals" => (Op::Date(Cmp::Eq), true),
        "DateLessThan" => (Op::Date(Cmp::Lt), false),
        "DateLessThanEquals" => (Op::Date(Cmp::Le), false),
        "DateGreaterThan" => (Op::Date(Cmp::Gt), false),
        "DateGreaterThanEquals" => (Op::Date(Cmp::Ge), false),
        "Bool" => (Op::Bool, false),
        "IpAddress" => (Op::Ip, false),
        "NotIpAddress" => (Op::Ip, true),
        "ArnEquals" | "ArnLike" => (Op::Arn, false),
        "ArnNotEquals" | "ArnNotLike" => (Op::Arn, true),
        "Null" => (Op::Null, false),
        _ => return None,
    };
    Some((op, negated, if_exists, set))
}

fn parse_block(
    opath: &str,
    keys: &Map<String, Value>,
    op: Op,
    negated: bool,
    if_exists: bool,
    set: SetRule,
) -> Result<Vec<Test>, PolicyError> {
    let mut tests = Vec::new();
    for (name, value) in keys {
        let kpath = format!("{opath}.{name}");
        let key =
            Key::parse(name, Place::Condition).map_err(|e| PolicyError::invalid(&kpath, e))?;
        let texts = condition_values(&kpath, value)?;
        let mut values = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let vpath = if texts.len() == 1 && !value.is_array() {
                kpath.clone()
            } else {
                format!("{kpath}[{i}]")
            };
            let template = Template::parse(text).map_err(|e| PolicyError::invalid(&vpath, e))?;
            check_literal(op, &template).map_err(|e| PolicyError::invalid(&vpath, e))?;
            values.push(template);
        }
        tests.push(Test {
            op,
            negated,
            if_exists,
            set,
            key,
            values,
        });
    }
    Ok(tests)
}

/// A string, number or boolean, or a non-empty list of them (IAM's
/// grammar), as text.
fn condition_values(path: &str, value: &Value) -> Result<Vec<String>, PolicyError> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        Value::Array(list) if list.is_empty() => {
            Err(PolicyError::invalid(path, "must not be an empty list"))
        }
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                scalar(v).ok_or_else(|| {
                    PolicyError::invalid(
                        format!("{path}[{i}]"),
                        "must be a string, a number or a boolean",
                    )
                })
            })
            .collect(),
        v => scalar(v).map(|s| vec![s]).ok_or_else(|| {
            PolicyError::invalid(
                path,
                "must be a string, a number, a boolean or a list of them",
            )
        }),
    }
}

/// Refuses a written value the operator can never match (a date that is
/// no date, say); values with variables are checked when evaluated.
fn check_literal(op: Op, value: &Template) -> Result<(), String> {
    let Some(text) = value.literal() else {
        return match op {
            Op::Null => Err("Null takes \"true\" or \"false\", not a policy variable".into()),
            _ => Ok(()),
        };
    };
    let ok = match op {
        Op::Numeric(_) => parse_number(&text).is_some(),
        Op::Date(_) => parse_date(&text).is_some(),
        Op::Bool | Op::Null => {
            text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false")
        }
        Op::Ip => Cidr::parse(&text).is_some(),
        Op::String { .. } | Op::Like | Op::Arn => true,
    };
    if ok {
        return Ok(());
    }
    Err(match op {
        Op::Numeric(_) => format!("\"{text}\" is not a number"),
        Op::Date(_) => format!(
            "\"{text}\" is not a date: use ISO 8601 (2026-12-01, 2026-12-01T13:05:00Z) or Unix seconds"
        ),
        Op::Ip => format!("\"{text}\" is not an IP address or CIDR range (203.0.113.0/24)"),
        _ => format!("\"{text}\" is not \"true\" or \"false\""),
    })
}

impl Test {
    fn holds(&self, ctx: &RequestContext, unresolved: Unresolved) -> bool {
        let present = self.key.values(ctx);
        if self.op == Op::Null {
            // Null: "true" asks for an absent key, "false" for a present one.
            return self.values.iter().any(|v| {
                v.literal()
                    .is_some_and(|t| t.eq_ignore_ascii_case("true") == present.is_empty())
            });
        }
        if present.is_empty() {
            return match self.set {
                _ if self.if_exists => true,
                SetRule::ForAllValues => true,
                SetRule::ForAnyValue => false,
                SetRule::Single => self.negated,
            };
        }
        // The policy's values for this request.
        let mut wanted = Vec::with_capacity(self.values.len());
        for v in &self.values {
            match Wanted::resolve(self.op, v, ctx) {
                Some(w) => wanted.push(w),
                // A Deny's test cannot be shown false: it holds.
                None if unresolved == Unresolved::Match => return true,
                // An Allow's negated test cannot tell what it excludes.
                None if self.negated => return false,
                None => {}
            }
        }
        // A value of the wrong type for the operator (NumericNotEquals on
        // "abc") cannot show the test false or true: "not equal to 5" is not
        // shown by a value that is no number. Like an unresolved variable,
        // it fails an Allow's test and holds a Deny's (fail closed: a value
        // the device may choose, such as an attribute it registered, never
        // lifts a Deny).
        let passes = |value: &String| {
            let mut matched = false;
            for w in &wanted {
                match w.matches(self.op, value) {
                    Some(m) => matched |= m,
                    None => return unresolved == Unresolved::Match,
                }
            }
            matched != self.negated
        };
        match self.set {
            // Unqualified on a multi-valued key: a positive test holds when
            // some value matches, a negated one when no value matches (IAM:
            // "does not match any of the values"), so `StringNotEquals
            // {...Organization.List: Evil}` refuses [Acme, Evil].
            SetRule::Single if self.negated => present.iter().all(passes),
            SetRule::Single | SetRule::ForAnyValue => present.iter().any(passes),
            SetRule::ForAllValues => present.iter().all(passes),
        }
    }
}

/// One policy value resolved for a request, in the form its operator
/// compares.
enum Wanted {
    Text(String),
    Pattern(Vec<super::pattern::Tok>),
}

impl Wanted {
    fn resolve(op: Op, value: &Template, ctx: &RequestContext) -> Option<Wanted> {
        match op {
            Op::Like | Op::Arn => value.pattern(ctx).map(Wanted::Pattern),
            _ => value.text(ctx).map(Wanted::Text),
        }
    }

    /// Whether `value` matches; `None` when either side is not of the
    /// operator's type (a number, a date, an IP address or range).
    fn matches(&self, op: Op, value: &str) -> Option<bool> {
        Some(match (self, op) {
            (Wanted::Pattern(p), Op::Like) => glob_match(p, value),
            (Wanted::Pattern(p), Op::Arn) => arn_match(p, value),
            (Wanted::Text(w), Op::String { ignore_case: false }) => w == value,
            (Wanted::Text(w), Op::String { ignore_case: true }) => {
                w.to_lowercase() == value.to_lowercase()
            }
            (Wanted::Text(w), Op::Bool) => w.eq_ignore_ascii_case(value),
            (Wanted::Text(w), Op::Numeric(cmp)) => {
                cmp.holds(parse_number(value)?, parse_number(w)?)
            }
            (Wanted::Text(w), Op::Date(cmp)) => cmp.holds(parse_date(value)?, parse_date(w)?),
            (Wanted::Text(w), Op::Ip) => Cidr::parse(w)?.contains(value.parse::<IpAddr>().ok()?),
            _ => false,
        })
    }
}

fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A date as IAM's date operators take it: Unix seconds, or ISO 8601
/// (`2026-12-01`, `2026-12-01T13:05`, `2026-12-01T13:05:00Z`, fractions
/// of a second and `+02:00` offsets too; no zone means UTC). Seconds since
/// the epoch, fractions dropped.
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let (date, rest) = match text.find(['T', 't']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let mut d = date.splitn(3, '-');
    let year: i32 = digits(d.next()?, 4)?;
    let month: u8 = digits(d.next()?, 2)?;
    let day: u8 = digits(d.next()?, 2)?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let (mut hour, mut minute, mut second, mut offset) = (0u8, 0u8, 0u8, 0i64);
    if let Some(rest) = rest {
        let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
        let (clock, zone) = rest.split_at(zone_at);
        let clock = clock.split('.').next()?;
        let mut c = clock.split(':');
        hour = digits(c.next()?, 2)?;
        minute = digits(c.next()?, 2)?;
        second = match c.next() {
            Some(s) => digits(s, 2)?,
            None => 0,
        };
        if c.next().is_some() {
            return None;
        }
        offset = match zone {
            "" | "Z" | "z" => 0,
            z => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                // `z` starts with the ASCII sign `find` stopped at, so
                // `[1..]` is on a character boundary; what follows is
                // untrusted (a device's value under a Date operator), so
                // it is split with `get`, never by byte index, and a
                // multi-byte character is a refusal, not a panic.
                let hm = z[1..].replace(':', "");
                let h: i64 = digits(hm.get(..2)?, 2)?;
                let m: i64 = digits(hm.get(2..)?, 2)?;
                sign * (h * 3600 + m * 60)
            }
        };
    }
    let time = time::Time::from_hms(hour, minute, second).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp()
            - offset,
    )
}

fn digits<T: std::str::FromStr>(text: &str, len: usize) -> Option<T> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Unix seconds as `aws:CurrentTime` gives them: `2026-12-01T13:05:00Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// An address or a CIDR range (`IpAddress`, `NotIpAddress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { network, prefix })
    }

    fn contains(self, ip: IpAddr) -> bool {
        let mask = |bits: u32, width: u32| -> u128 {
            if bits == 0 {
                0
            } else {
                (!0u128 >> (128 - width)) & !((1u128 << (width - bits)) - 1)
            }
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask(u32::from(self.prefix), 32);
                (u128::from(u32::from(n)) & m) == (u128::from(u32::from(a)) & m)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = if self.prefix == 128 {
                    !0u128
                } else {
                    mask(u32::from(self.prefix), 128)
                };
                (u128::from(n) & m) == (u128::from(a) & m)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_forms_iam_takes() {
        let base = 1_764_590_700; // 2025-12-01T12:05:00Z
        let cases = [
            ("1764590700", Some(base)),
            ("2025-12-01T12:05:00Z", Some(base)),
            ("2025-12-01T12:05:00.250Z", Some(base)),
            ("2025-12-01T12:05Z", Some(base)),
            ("2025-12-01T14:05:00+02:00", Some(base)),
            ("2025-12-01T07:05:00-0500", Some(base)),
            ("2025-12-01", Some(base - 12 * 3600 - 300)),
            ("2025-13-01", None),
            ("2025-12-01T25:00:00Z", None),
            ("yesterday", None),
            ("", None),
            // Multi-byte text where the offset's digits are: refused, not
            // a panic on a byte index inside a character.
            ("2025-12-01T00:00+1é1", None),
            ("2025-12-01T00:00+é", None),
            ("2025-12-01T00:00-00é", None),
            ("2025-12-01T00:00+\u{1F600}", None),
            ("2025-12-01T00:00+0100", Some(base - 13 * 3600 - 300)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_date(text), want, "{text}");
        }
        assert_eq!(rfc3339(base), "2025-12-01T12:05:00Z");
        assert_eq!(parse_date(&rfc3339(base)), Some(base));
    }

    #[test]
    fn cidr_ranges() {
        let c = |r: &str, ip: &str| Cidr::parse(r).unwrap().contains(ip.parse().unwrap());
        assert!(c("203.0.113.0/24", "203.0.113.77"));
        assert!(!c("203.0.113.0/24", "203.0.114.1"));
        assert!(c("0.0.0.0/0", "8.8.8.8"));
        assert!(c("127.0.0.1", "127.0.0.1"));
        assert!(!c("127.0.0.1", "127.0.0.2"));
        assert!(c("2001:db8::/32", "2001:db8:1::5"));
        assert!(!c("2001:db8::/32", "2001:db9::1"));
        assert!(c("::1", "::1"));
        assert!(!c("0.0.0.0/0", "::1"));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0/8").is_none());
    }

    #[test]
    fn operator_names() {
        assert!(parse_operator("StringEquals").is_some());
        assert!(parse_operator("ForAnyValue:StringLikeIfExists").is_some());
        assert!(parse_operator("NullIfExists").is_none());
        assert!(parse_operator("StringEqualz").is_none());
        assert!(parse_operator("stringequals").is_none());
        assert!(parse_operator("BinaryEquals").is_none());
    }
}
