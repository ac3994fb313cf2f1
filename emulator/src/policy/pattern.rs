//! Text with policy variables (`arn:...:client/${iot:ClientId}`) and the
//! IAM wildcards `*` and `?`: parsed once when the policy is, resolved for
//! each request.

use super::context::RequestContext;
use super::keys::{Key, Place};

/// One token of a resolved pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    Lit(char),
    AnyRun,
    AnyOne,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Written text: `*` and `?` in it are wildcards where the operator
    /// takes wildcards.
    Text(String),
    /// `${*}`, `${?}`, `${$}`: the character itself, never a wildcard.
    Escaped(char),
    Var(Key),
}

/// A string of a policy (a resource, a condition value) with its policy
/// variables parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; an unterminated `${` or an unknown variable is
    /// refused, so that a typo is found when the policy is created.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated policy variable in \"{text}\""))?;
            let name = &after[..end];
            parts.push(match name {
                "*" | "?" | "$" => Part::Escaped(name.chars().next().unwrap_or('$')),
                _ => Part::Var(
                    Key::parse(name, Place::Variable).map_err(|e| format!("in \"{text}\": {e}"))?,
                ),
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The pattern for this request, `*` and `?` of the written text as
    /// wildcards and substituted values literal (a client id containing `*`
    /// does not widen a grant); `None` when a variable has no value.
    pub(crate) fn pattern(&self, ctx: &RequestContext) -> Option<Vec<Tok>> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend(literal_pattern(t)),
                Part::Escaped(c) => out.push(Tok::Lit(*c)),
                Part::Var(key) => out.extend(first_value(key, ctx)?.chars().map(Tok::Lit)),
            }
        }
        Some(out)
    }

    /// The text for this request with variables substituted and no
    /// wildcards; `None` when a variable has no value.
    pub(crate) fn text(&self, ctx: &RequestContext) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Escaped(c) => out.push(*c),
                Part::Var(key) => out.push_str(&first_value(key, ctx)?),
            }
        }
        Some(out)
    }

    /// The written text when it has no variables (checked at parse time
    /// for values such as dates and numbers).
    pub(crate) fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Escaped(c) => out.push(*c),
                Part::Var(_) => return None,
            }
        }
        Some(out)
    }
}

fn first_value(key: &Key, ctx: &RequestContext) -> Option<String> {
    key.values(ctx).into_iter().next()
}

/// A pattern without variables (action names, written text).
pub(crate) fn literal_pattern(pattern: &str) -> Vec<Tok> {
    pattern
        .chars()
        .map(|c| match c {
            '*' => Tok::AnyRun,
            '?' => Tok::AnyOne,
            c => Tok::Lit(c),
        })
        .collect()
}

/// Glob match with `*` (any run, possibly empty) and `?` (exactly one char);
/// iterative with single-star backtracking, linear memory.
pub(crate) fn glob_match(pattern: &[Tok], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Tok::AnyRun) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Tok::AnyOne) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|tok| *tok == Tok::AnyRun)
}

/// IAM's ARN match (`ArnEquals`, `ArnLike`): each of the six
/// colon-separated parts is matched on its own, so a `*` never spans a
/// `:` before the resource part. A text that is not a six-part ARN
/// matches nothing.
pub(crate) fn arn_match(pattern: &[Tok], text: &str) -> bool {
    let text_parts: Vec<&str> = text.splitn(6, ':').collect();
    let mut pattern_parts: Vec<&[Tok]> = Vec::with_capacity(6);
    let mut rest = pattern;
    while pattern_parts.len() < 5 {
        match rest.iter().position(|t| *t == Tok::Lit(':')) {
            Some(i) => {
                pattern_parts.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => break,
        }
    }
    pattern_parts.push(rest);
    text_parts.len() == 6
        && pattern_parts.len() == 6
        && pattern_parts
            .iter()
            .zip(&text_parts)
            .all(|(p, t)| glob_match(p, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        glob_match(&literal_pattern(pattern), text)
    }

    #[test]
    fn glob_cases() {
        let cases = [
            ("*", "", true),
            ("*", "a/b/c", true),
            ("a*c", "abc", true),
            ("a*c", "a/b/c", true),
            ("a*c", "ab", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "abbc", false),
            ("a/+/b", "a/+/b", true),
            ("a/+/b", "a/x/b", false),
            ("a/#", "a/#", true),
            ("a/#", "a/b", false),
            ("*a*a*", "aXaYa", true),
            ("*ab", "aab", true),
            ("A", "a", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(m(p, t), want, "pattern {p:?} on {t:?}");
        }
    }

    #[test]
    fn arn_parts_match_on_their_own() {
        let a = |p: &str, t: &str| arn_match(&literal_pattern(p), t);
        let arn = "arn:aws:iot:us-east-1:123456789012:thing/gw_1";
        assert!(a("arn:aws:iot:*:*:thing/*", arn));
        assert!(a("arn:aws:iot:us-east-1:123456789012:thing/gw_1", arn));
        assert!(a("arn:aws:iot:us-?ast-1:*:thing/gw_?", arn));
        // A `*` does not cross a colon before the resource part.
        assert!(!a("arn:*:thing/gw_1", arn));
        assert!(!a("arn:aws:iot:*:*:client/*", arn));
        // The resource part may hold colons.
        assert!(a("arn:aws:iot:*:*:a:*", "arn:aws:iot:r:1:a:b:c"));
        // Not an ARN.
        assert!(!a("*", "gw_1"));
    }

    #[test]
    fn templates_refuse_unknown_and_unterminated_variables() {
        assert!(Template::parse("a/${iot:ClientId}/b").is_ok());
        assert!(Template::parse("a/${*}${?}${$}").is_ok());
        let e = Template::parse("a/${iot:ClientId").unwrap_err();
        assert!(e.contains("unterminated"), "{e}");
        let e = Template::parse("a/${iot:Clientid}").unwrap_err();
        assert!(
            e.contains("unknown policy variable \"iot:Clientid\""),
            "{e}"
        );
        assert!(e.contains("accepted: iot:ClientId"), "{e}");
        let e = Template::parse("${iot:DomainName}").unwrap_err();
        assert!(e.contains("not emulated"), "{e}");
        // `.List` is for conditions only.
        assert!(Template::parse("${iot:Certificate.Subject.Country.List}").is_err());
        assert!(Template::parse("${iot:Certificate.Subject.Country.1}").is_ok());
    }
}
