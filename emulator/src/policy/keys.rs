//! The names a policy uses for values of the request context: condition
//! keys (`"iot:Connection.Thing.IsAttached": "true"`) and policy variables
//! (`${iot:ClientId}`). Both come from one table, so that what a `Resource`
//! can substitute and what a `Condition` can test never drift apart.
//!
//! From the IoT developer guide: "Basic AWS IoT Core policy variables"
//! (`iot:ClientId`, `aws:SourceIp`), "Thing policy variables", "X.509
//! Certificate AWS IoT Core policy variables", plus IAM's global
//! `aws:CurrentTime` and `aws:EpochTime`. A name outside the table is
//! refused when the policy is created.

use std::fmt::Write as _;

use super::context::RequestContext;

/// Distinguished-name attributes AWS IoT names as
/// `iot:Certificate.Subject.X` and `iot:Certificate.Issuer.X`.
pub const DN_ATTRIBUTES: &[&str] = &[
    "DistinguishedNameQualifier",
    "Country",
    "Organization",
    "OrganizationalUnit",
    "State",
    "CommonName",
    "SerialNumber",
    "Title",
    "Surname",
    "GivenName",
    "Initials",
    "Pseudonym",
    "GenerationQualifier",
];

/// Alternative-name types AWS IoT names as
/// `iot:Certificate.Subject.AlternativeName.X` (and `Issuer`).
pub const ALT_NAME_TYPES: &[&str] = &[
    "RFC822Name",
    "DNSName",
    "DirectoryName",
    "UniformResourceIdentifier",
    "IPAddress",
];

/// Names AWS documents that the emulator does not model: refused with a
/// message that says so, rather than evaluated wrongly.
const NOT_EMULATED: &[&str] = &["iot:DomainName"];

/// Which of the certificate's names a key reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Subject,
    Issuer,
}

/// Which values of a multi-valued certificate field a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// No suffix: the first value, as AWS documents.
    First,
    /// `.N`: the value at index N. AWS calls the index "one-based" but its
    /// own example says `.1` is the *second* value; the example is
    /// followed (`.0` is the first).
    Index(usize),
    /// `.List`: every value (for `ForAnyValue:` / `ForAllValues:`).
    List,
}

/// A value of the request context, parsed from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    ClientId,
    SourceIp,
    CurrentTime,
    EpochTime,
    ThingName,
    ThingTypeName,
    ThingAttribute(String),
    IsAttached,
    CertificateId,
    CertificateSerialNumber,
    CertificateAvailableKeys,
    Name {
        side: Side,
        attribute: &'static str,
        pick: Pick,
    },
    AltName {
        side: Side,
        kind: &'static str,
        pick: Pick,
    },
}

/// How a name is written where it appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A condition key: case-insensitive, as IAM treats condition key
    /// names (a thing attribute's name inside `[...]` stays as written:
    /// the registry's attribute names are case-sensitive); `.List` allowed.
    Condition,
    /// Inside `${...}`: exact, one value only.
    Variable,
}

impl Key {
    /// Parses a condition key or a policy variable's name; the error says
    /// what is accepted.
    pub(crate) fn parse(name: &str, place: Place) -> Result<Key, String> {
        parse(name, place).ok_or_else(|| {
            if NOT_EMULATED.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                format!("\"{name}\" is documented by AWS IoT but not emulated; remove it or test against AWS")
            } else {
                let what = match place {
                    Place::Condition => "condition key",
                    Place::Variable => "policy variable",
                };
                format!("unknown {what} \"{name}\"; accepted: {}", accepted(place))
            }
        })
    }

    /// The key's values for this request; empty when the key is absent.
    /// An empty string counts as absent: `client/${iot:ClientId}` must not
    /// degenerate into `client/`.
    pub(crate) fn values(&self, ctx: &RequestContext) -> Vec<String> {
        let one = |v: Option<&str>| v.map(str::to_owned).into_iter().collect::<Vec<_>>();
        let cert = ctx.certificate;
        let mut values = match self {
            Key::ClientId => vec![ctx.client_id.to_owned()],
            Key::SourceIp => one(ctx.source_ip.map(|ip| ip.to_string()).as_deref()),
            Key::CurrentTime => vec![super::condition::rfc3339(ctx.now_unix)],
            Key::EpochTime => vec![ctx.now_unix.to_string()],
            Key::ThingName => one(ctx.thing.map(|t| t.name.as_str())),
            Key::ThingTypeName => one(ctx.thing.and_then(|t| t.type_name.as_deref())),
            Key::ThingAttribute(a) => one(ctx
                .thing
                .and_then(|t| t.attributes.get(a))
                .map(String::as_str)),
            // AWS documents this one as "true" or "false", always present.
            Key::IsAttached => vec![ctx.thing.is_some().to_string()],
            Key::CertificateId => one(Some(cert.id.as_str())),
            Key::CertificateSerialNumber => one(cert.serial_number.as_deref()),
            Key::CertificateAvailableKeys => available_keys(ctx),
            Key::Name {
                side,
                attribute,
                pick,
            } => {
                let fields = match side {
                    Side::Subject => &cert.subject,
                    Side::Issuer => &cert.issuer,
                };
                picked(fields, attribute, *pick)
            }
            Key::AltName { side, kind, pick } => {
                let fields = match side {
                    Side::Subject => &cert.subject_alt_names,
                    Side::Issuer => &cert.issuer_alt_names,
                };
                picked(fields, kind, *pick)
            }
        };
        values.retain(|v| !v.is_empty());
        values
    }
}

fn picked(fields: &[(String, String)], name: &str, pick: Pick) -> Vec<String> {
    let mut all = fields
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone());
    match pick {
        Pick::First => all.next().into_iter().collect(),
        Pick::Index(i) => all.nth(i).into_iter().collect(),
        Pick::List => all.collect(),
    }
}

/// `iot:Certificate.AvailableKeys`: the names of the certificate variables
/// that have a value for this certificate.
fn available_keys(ctx: &RequestContext) -> Vec<String> {
    let cert = ctx.certificate;
    let mut out = vec!["iot:CertificateId".to_owned()];
    if cert.serial_number.is_some() {
        out.push("iot:Certificate.SerialNumber".to_owned());
    }
    for (side, fields, alts) in [
        ("Subject", &cert.subject, &cert.subject_alt_names),
        ("Issuer", &cert.issuer, &cert.issuer_alt_names),
    ] {
        for a in DN_ATTRIBUTES {
            if fields.iter().any(|(k, _)| k == a) {
                out.push(format!("iot:Certificate.{side}.{a}"));
            }
        }
        for t in ALT_NAME_TYPES {
            if alts.iter().any(|(k, _)| k == t) {
                out.push(format!("iot:Certificate.{side}.AlternativeName.{t}"));
            }
        }
    }
    out
}

fn parse(name: &str, place: Place) -> Option<Key> {
    // `rest` is what follows `prefix` when `name` starts with it, compared
    // as the place wants.
    let strip = |text: &'_ str, prefix: &str| -> Option<String> {
        let head = text.get(..prefix.len())?;
        let same = match place {
            Place::Condition => head.eq_ignore_ascii_case(prefix),
            Place::Variable => head == prefix,
        };
        same.then(|| text[prefix.len()..].to_owned())
    };
    let is = |text: &str, want: &str| strip(text, want).is_some_and(|r| r.is_empty());
    let simple = [
        ("iot:ClientId", Key::ClientId),
        ("aws:SourceIp", Key::SourceIp),
        ("aws:CurrentTime", Key::CurrentTime),
        ("aws:EpochTime", Key::EpochTime),
        ("iot:Connection.Thing.ThingName", Key::ThingName),
        ("iot:Connection.Thing.ThingTypeName", Key::ThingTypeName),
        ("iot:Connection.Thing.IsAttached", Key::IsAttached),
        ("iot:CertificateId", Key::CertificateId),
        ("iot:Certificate.SerialNumber", Key::CertificateSerialNumber),
    ];
    for (n, key) in simple {
        if is(name, n) {
            return Some(key);
        }
    }
    if place == Place::Condition && is(name, "iot:Certificate.AvailableKeys") {
        return Some(Key::CertificateAvailableKeys);
    }
    if let Some(rest) = strip(name, "iot:Connection.Thing.Attributes[") {
        let attribute = rest.strip_suffix(']')?;
        let valid = !attribute.is_empty()
            && attribute
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c));
        return valid.then(|| Key::ThingAttribute(attribute.to_owned()));
    }
    for (prefix, side) in [
        ("iot:Certificate.Subject.", Side::Subject),
        ("iot:Certificate.Issuer.", Side::Issuer),
    ] {
        let Some(rest) = strip(name, prefix) else {
            continue;
        };
        if let Some(rest) = strip(&rest, "AlternativeName.") {
            let (kind, pick) = field_and_pick(&rest, ALT_NAME_TYPES, place)?;
            return Some(Key::AltName { side, kind, pick });
        }
        let (attribute, pick) = field_and_pick(&rest, DN_ATTRIBUTES, place)?;
        return Some(Key::Name {
            side,
            attribute,
            pick,
        });
    }
    None
}

/// `CommonName`, `CommonName.1` or `CommonName.List` (the last only in a
/// condition), the field one of `names`.
fn field_and_pick(
    text: &str,
    names: &[&'static str],
    place: Place,
) -> Option<(&'static str, Pick)> {
    let (field, suffix) = match text.split_once('.') {
        Some((f, s)) => (f, Some(s)),
        None => (text, None),
    };
    let field = names.iter().copied().find(|n| match place {
        Place::Condition => n.eq_ignore_ascii_case(field),
        Place::Variable => *n == field,
    })?;
    let pick = match suffix {
        None => Pick::First,
        Some(s) if place == Place::Condition && s.eq_ignore_ascii_case("List") => Pick::List,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Pick::Index(s.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((field, pick))
}

/// The accepted names, for error messages.
fn accepted(place: Place) -> String {
    let mut s = String::from(
        "iot:ClientId, aws:SourceIp, aws:CurrentTime, aws:EpochTime, \
         iot:Connection.Thing.ThingName, iot:Connection.Thing.ThingTypeName, \
         iot:Connection.Thing.Attributes[NAME], iot:Connection.Thing.IsAttached, \
         iot:CertificateId, iot:Certificate.SerialNumber, ",
    );
    if place == Place::Condition {
        s.push_str("iot:Certificate.AvailableKeys, ");
    }
    let suffix = match place {
        Place::Condition => "[.N|.List]",
        Place::Variable => "[.N]",
    };
    let _ = write!(
        s,
        "iot:Certificate.{{Subject,Issuer}}.{{{}}}{suffix}, \
         iot:Certificate.{{Subject,Issuer}}.AlternativeName.{{{}}}{suffix}",
        DN_ATTRIBUTES.join(","),
        ALT_NAME_TYPES.join(",")
    );
    s
}
