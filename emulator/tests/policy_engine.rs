//! The IoT policy engine, table-driven: parsing, matching, variables, and the
//! repository's own policies against realistic requests.

use iotcore_emulator::policy::{
    is_allowed, resource_arn, Action, CertificateFacts, ConnectedThing, PolicyDocument,
    RequestContext,
};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

fn subject() -> Vec<(String, String)> {
    vec![
        ("CommonName".to_string(), "dev1".to_string()),
        ("Organization".to_string(), "Acme".to_string()),
        ("Country".to_string(), "DE".to_string()),
        ("Organization".to_string(), "Second".to_string()),
    ]
}

fn issuer() -> Vec<(String, String)> {
    vec![("CommonName".to_string(), "Acme Root".to_string())]
}

/// A request context; its parts are leaked, a test's few bytes, so that
/// contexts can be built by a helper and copied into tables.
fn ctx<'a>(
    client_id: &'a str,
    thing_name: Option<&'a str>,
    subject: &'a [(String, String)],
    issuer: &'a [(String, String)],
) -> RequestContext<'a> {
    let certificate: &'static CertificateFacts = Box::leak(Box::new(CertificateFacts {
        id: "c0ffee".into(),
        serial_number: Some("4660".into()),
        subject: subject.to_vec(),
        issuer: issuer.to_vec(),
        ..CertificateFacts::default()
    }));
    let thing = thing_name.map(|name| {
        &*Box::leak(Box::new(ConnectedThing {
            name: name.into(),
            ..ConnectedThing::default()
        }))
    });
    RequestContext {
        region: REGION,
        account: ACCOUNT,
        client_id,
        thing,
        certificate,
        source_ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        now_unix: 1_800_000_000,
    }
}

fn policy(statements: &str) -> PolicyDocument {
    let json = format!(r#"{{"Version": "2012-10-17", "Statement": {statements}}}"#);
    PolicyDocument::parse(&json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn allow(action: &str, resource: &str) -> String {
    format!(r#"{{"Effect": "Allow", "Action": "{action}", "Resource": "{resource}"}}"#)
}

fn repo_policy(name: &str) -> PolicyDocument {
    let path = format!("{}/../policies/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    PolicyDocument::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn resource_arns_per_action() {
    let (s, i) = (subject(), issuer());
    let c = ctx("dev1", None, &s, &i);
    let cases = [
        (
            Action::Connect,
            "dev1",
            "arn:aws:iot:us-east-1:123456789012:client/dev1",
        ),
        (
            Action::Publish,
            "a/b",
            "arn:aws:iot:us-east-1:123456789012:topic/a/b",
        ),
        (
            Action::Receive,
            "a/b",
            "arn:aws:iot:us-east-1:123456789012:topic/a/b",
        ),
        (
            Action::RetainPublish,
            "a/b",
            "arn:aws:iot:us-east-1:123456789012:topic/a/b",
        ),
        (
            Action::Subscribe,
            "a/+/#",
            "arn:aws:iot:us-east-1:123456789012:topicfilter/a/+/#",
        ),
    ];
    for (action, name, want) in cases {
        assert_eq!(resource_arn(&c, action, name), want, "{action}");
    }
}

#[test]
fn parse_accepts_valid_grammar() {
    let cases = [
        // Statement as an object, Action and Resource as strings.
        r#"{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}}"#,
        // Lists, Sid, Id, NotResource, other services' actions.
        r#"{"Version": "2012-10-17", "Id": "x", "Statement": [
            {"Sid": "a", "Effect": "Deny", "Action": ["iot:Publish", "greengrass:*"], "NotResource": ["arn:aws:iot:*:*:topic/a"]},
            {"Effect": "Allow", "Action": "*", "Resource": ["*", "arn:aws:iot:us-east-1:1:client/${iot:ClientId}"]}]}"#,
        // AWS's own examples ("Thing policy examples", "Basic AWS IoT Core
        // policy variables").
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["*"],
            "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}}]}"#,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Publish"],
            "Resource": "arn:aws:iot:us-east-1:123456789012:topic/device/stats",
            "Condition": {"StringEquals": {"iot:Connection.Thing.Attributes[attributeName]": "attributeValue",
                "iot:Connection.Thing.ThingTypeName": "Thing_Type_Name"},
                "Bool": {"iot:Connection.Thing.IsAttached": "true"}}}]}"#,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Publish"],
            "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/my/topic/${iot:ClientId}"],
            "Condition": {"IpAddress": {"aws:SourceIp": "123.45.167.89"}}}]}"#,
        // NotAction, every operator family, IfExists, set qualifiers, JSON
        // booleans and numbers as values, condition keys in any case.
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "NotAction": "iot:Connect", "NotResource": "*",
            "Condition": {
                "StringNotEqualsIgnoreCase": {"iot:clientid": "x"},
                "StringLikeIfExists": {"iot:Connection.Thing.ThingTypeName": "gw-*"},
                "ForAnyValue:StringEquals": {"iot:Certificate.Subject.Organization.List": ["a", "b"]},
                "ForAllValues:StringLike": {"iot:Certificate.Subject.AlternativeName.DNSName.List": "*.example.com"},
                "ArnLike": {"iot:ClientId": "arn:aws:iot:*:*:thing/*"},
                "NumericLessThanEquals": {"aws:EpochTime": 4102444800},
                "DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"},
                "Bool": {"iot:Connection.Thing.IsAttached": true},
                "Null": {"iot:Certificate.Subject.Country.1": "false"},
                "NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "2001:db8::/32"]}
            }}]}"#,
    ];
    for json in cases {
        assert!(PolicyDocument::parse(json).is_ok(), "{json}");
    }
}

#[test]
fn parse_rejects_with_a_message_naming_the_problem() {
    let s = |stmt: &str| format!(r#"{{"Version": "2012-10-17", "Statement": {stmt}}}"#);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not valid JSON"),
        ("[]".into(), "must be a JSON object"),
        (r#"{"Statement": []}"#.into(), "Version: is required"),
        (
            r#"{"Version": "2008-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}"#.into(),
            "Version: must be \"2012-10-17\"",
        ),
        (r#"{"Version": "2012-10-17"}"#.into(), "Statement: is required"),
        (s("[]"), "Statement: must not be empty"),
        (s("\"x\""), "must be an object or a list"),
        (s("[1]"), "Statement[0]: must be an object"),
        (
            r#"{"Version": "2012-10-17", "Extra": 1, "Statement": []}"#.into(),
            "Extra: unknown top-level key",
        ),
        (s(r#"{"Action": "*", "Resource": "*"}"#), "Statement.Effect: is required"),
        // Duplicate keys: serde_json's Value would keep the last (an Allow).
        (
            s(r#"[{"Effect": "Deny", "Effect": "Allow", "Action": "*", "Resource": "*"}]"#),
            "Statement[0]: key \"Effect\" appears more than once",
        ),
        (
            r#"{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}"#.into(),
            "(root): key \"Version\" appears more than once",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": "a", "iot:ClientId": "b"}}}"#),
            "Statement.Condition.StringEquals: key \"iot:ClientId\" appears more than once",
        ),
        (
            s(r#"{"Effect": "allow", "Action": "*", "Resource": "*"}"#),
            "must be \"Allow\" or \"Deny\"",
        ),
        (s(r#"{"Effect": "Allow", "Resource": "*"}"#), "Statement.Action: is required"),
        (
            s(r#"{"Effect": "Allow", "Action": [], "Resource": "*"}"#),
            "Action: must not be empty",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": 3, "Resource": "*"}"#),
            "must be a string or a list of strings",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": ["iot:Publish", 3], "Resource": "*"}"#),
            "Action[1]: must be a string",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "Publish", "Resource": "*"}"#),
            "not an action name",
        ),
        (s(r#"{"Effect": "Allow", "Action": "*"}"#), "needs a Resource or a NotResource"),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "NotResource": "*"}"#),
            "both Resource and NotResource",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "topic/a"}"#),
            "must be \"*\" or an ARN",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId"}"#),
            "unterminated policy variable",
        ),
        (
            s(r#"[{"Effect": "Allow", "Action": "*", "Resource": "*"}, {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEqualz": {"iot:ClientId": "a"}}}]"#),
            "Statement[1].Condition.StringEqualz: unknown condition operator \"StringEqualz\"; accepted: StringEquals,",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:Connection.Thing.Atributes[a]": "x"}}}"#),
            "Statement.Condition.StringEquals.iot:Connection.Thing.Atributes[a]: unknown condition key",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bool": {"iot:DomainName": "true"}}}"#),
            "documented by AWS IoT but not emulated",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"NullIfExists": {"iot:ClientId": "true"}}}"#),
            "unknown condition operator \"NullIfExists\"",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": "x"}"#),
            "Statement.Condition: must be an object of condition operators",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bool": ["x"]}}"#),
            "Statement.Condition.Bool: must be an object of condition keys",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": []}}}"#),
            "Statement.Condition.StringEquals.iot:ClientId: must not be an empty list",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": ["a", {}]}}}"#),
            "iot:ClientId[1]: must be a string, a number or a boolean",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"DateLessThan": {"aws:CurrentTime": "soon"}}}"#),
            "aws:CurrentTime: \"soon\" is not a date",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"NumericLessThan": {"aws:EpochTime": "many"}}}"#),
            "\"many\" is not a number",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "yes"}}}"#),
            "\"yes\" is not \"true\" or \"false\"",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/40"}}}"#),
            "is not an IP address or CIDR range",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": "${iot:Thing}"}}}"#),
            "unknown policy variable \"iot:Thing\"",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "Resource": "arn:aws:iot:*:*:topic/${iot:Connection.Thing.Attributes}"}"#),
            "Statement.Resource[0]: in \"arn:aws:iot:*:*:topic/${iot:Connection.Thing.Attributes}\": unknown policy variable",
        ),
        (
            s(r#"{"Effect": "Allow", "Action": "*", "NotAction": "iot:Publish", "Resource": "*"}"#),
            "both Action and NotAction",
        ),
        (
            s(r#"{"Effect": "Allow", "NotAction": ["Publish"], "Resource": "*"}"#),
            "Statement.NotAction[0]: \"Publish\" is not an action name",
        ),
        (
            s(r#"{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}"#),
            "Statement.Principal: unknown statement key",
        ),
    ];
    let big = s(&format!(
        r#"{{"Effect": "Allow", "Action": "*", "Resource": ["arn:aws:iot:*:*:topic/{}"]}}"#,
        "x".repeat(2048)
    ));
    let cases: Vec<(String, &str)> = cases
        .into_iter()
        .chain([(
            big,
            "characters long without white space; the limit is 2048",
        )])
        .collect();
    for (json, want) in cases {
        let err = PolicyDocument::parse(&json).expect_err(&json);
        assert!(
            err.to_string().contains(want),
            "{json}: got {err}, want {want:?}"
        );
        assert_eq!(err.error_code(), "MalformedPolicyException");
    }
}

#[test]
fn size_limit_ignores_white_space() {
    let body = |pad: usize| {
        let stmt = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:iot:*:*:topic/"}}"#;
        let name = "x".repeat(pad - stmt.len());
        stmt.replace("topic/", &format!("topic/{name}"))
    };
    let exact = body(2048);
    let spaced = exact.replace(',', " ,\n   ");
    assert!(PolicyDocument::parse(&exact).is_ok());
    assert!(
        PolicyDocument::parse(&spaced).is_ok(),
        "white space does not count"
    );
    assert!(matches!(
        PolicyDocument::parse(&body(2049)),
        Err(iotcore_emulator::policy::PolicyError::TooLarge { size: 2049 })
    ));
}

#[test]
fn action_matching() {
    let (s, i) = (subject(), issuer());
    let c = ctx("dev1", None, &s, &i);
    // (action pattern, request action, allowed)
    let cases = [
        ("iot:*", Action::Connect, true),
        ("iot:*", Action::RetainPublish, true),
        ("*", Action::Subscribe, true),
        ("iot:Publish", Action::Publish, true),
        ("iot:Publish", Action::Receive, false),
        ("iot:Publish", Action::RetainPublish, false),
        ("iot:Pub*", Action::Publish, true),
        ("iot:Pub*", Action::Subscribe, false),
        ("iot:*Publish", Action::RetainPublish, true),
        ("iot:Receiv?", Action::Receive, true),
        ("iot:publish", Action::Publish, true), // action names are case-insensitive
        ("greengrass:*", Action::Publish, false),
        ("iot:GetThingShadow", Action::Publish, false),
    ];
    for (pattern, action, want) in cases {
        let p = policy(&format!("[{}]", allow(pattern, "*")));
        assert_eq!(
            is_allowed(&[p], action, "x", &c),
            want,
            "{pattern} vs {action}"
        );
    }
}

#[test]
fn resource_wildcards() {
    let (s, i) = (subject(), issuer());
    let c = ctx("dev1", None, &s, &i);
    // (resource pattern, action, name, allowed)
    let cases = [
        ("*", Action::Publish, "any/thing", true),
        (
            "arn:aws:iot:*:*:topic/a/*",
            Action::Publish,
            "a/b/c/d",
            true,
        ), // * spans /
        ("arn:aws:iot:*:*:topic/a/*", Action::Publish, "b/a", false),
        ("arn:aws:iot:*:*:topic/a/*", Action::Subscribe, "a/b", false), // topic != topicfilter
        ("arn:aws:iot:*:*:topic/a/?", Action::Publish, "a/b", true),
        ("arn:aws:iot:*:*:topic/a/?", Action::Publish, "a/bc", false),
        ("arn:aws:iot:*:*:topic/a/?", Action::Publish, "a/", false),
        (
            "arn:aws:iot:*:*:topicfilter/a/+/b",
            Action::Subscribe,
            "a/+/b",
            true,
        ),
        (
            "arn:aws:iot:*:*:topicfilter/a/+/b",
            Action::Subscribe,
            "a/x/b",
            false,
        ),
        (
            "arn:aws:iot:*:*:topicfilter/a/#",
            Action::Subscribe,
            "a/#",
            true,
        ),
        (
            "arn:aws:iot:*:*:topicfilter/a/#",
            Action::Subscribe,
            "a/b",
            false,
        ),
        ("arn:aws:iot:*:*:topic/a/#", Action::Publish, "a/b", false),
        (
            "arn:aws:iot:*:*:topicfilter/a/*",
            Action::Subscribe,
            "a/#",
            true,
        ),
        (
            "arn:aws:iot:*:*:topic/Sensors",
            Action::Publish,
            "sensors",
            false,
        ), // case-sensitive
        (
            "arn:aws:iot:us-east-1:123456789012:topic/x",
            Action::Publish,
            "x",
            true,
        ),
        (
            "arn:aws:iot:eu-west-1:123456789012:topic/x",
            Action::Publish,
            "x",
            false,
        ),
        (
            "arn:aws:iot:us-east-1:999999999999:topic/x",
            Action::Publish,
            "x",
            false,
        ),
        (
            "arn:aws:iot:us-east-1:123456789012:client/dev?",
            Action::Connect,
            "dev1",
            true,
        ),
        (
            "arn:aws:iot:us-east-1:123456789012:client/dev?",
            Action::Connect,
            "dev12",
            false,
        ),
        ("arn:aws:iot:*:*:topic/${*}", Action::Publish, "*", true), // escaped literal *
        ("arn:aws:iot:*:*:topic/${*}", Action::Publish, "ab", false),
    ];
    for (resource, action, name, want) in cases {
        let p = policy(&format!("[{}]", allow("iot:*", resource)));
        assert_eq!(
            is_allowed(&[p], action, name, &c),
            want,
            "{resource} vs {action} {name}"
        );
    }
}

#[test]
fn policy_variables() {
    let (s, i) = (subject(), issuer());
    let empty: Vec<(String, String)> = Vec::new();
    let with_thing = ctx("dev1", Some("dev1"), &s, &i);
    let no_thing = ctx("dev1", None, &s, &i);
    let no_fields = ctx("dev1", None, &empty, &empty);
    let no_id = CertificateFacts {
        id: String::new(),
        ..no_thing.certificate.clone()
    };
    let no_cert_id = RequestContext {
        certificate: &no_id,
        ..no_thing
    };
    let star_client = ctx("a*", None, &s, &i);
    // (resource with variables, context, topic, allowed)
    let cases: Vec<(&str, RequestContext, &str, bool)> = vec![
        ("topic/${iot:ClientId}/x", no_thing, "dev1/x", true),
        ("topic/${iot:ClientId}/x", no_thing, "dev2/x", false),
        // A substituted value is literal: client id "a*" does not grant "abc".
        ("topic/${iot:ClientId}", star_client, "abc", false),
        ("topic/${iot:ClientId}", star_client, "a*", true),
        (
            "topic/${iot:Connection.Thing.ThingName}",
            with_thing,
            "dev1",
            true,
        ),
        (
            "topic/${iot:Connection.Thing.ThingName}",
            with_thing,
            "dev2",
            false,
        ),
        (
            "topic/${iot:Connection.Thing.ThingName}",
            no_thing,
            "dev1",
            false,
        ),
        (
            "topic/attached/${iot:Connection.Thing.IsAttached}",
            with_thing,
            "attached/true",
            true,
        ),
        (
            "topic/attached/${iot:Connection.Thing.IsAttached}",
            no_thing,
            "attached/false",
            true,
        ),
        (
            "topic/attached/${iot:Connection.Thing.IsAttached}",
            no_thing,
            "attached/true",
            false,
        ),
        (
            "topic/cn/${iot:Certificate.Subject.CommonName}",
            no_thing,
            "cn/dev1",
            true,
        ),
        (
            "topic/cn/${iot:Certificate.Subject.CommonName}",
            no_fields,
            "cn/dev1",
            false,
        ),
        (
            "topic/o/${iot:Certificate.Subject.Organization}",
            no_thing,
            "o/Acme",
            true,
        ),
        (
            "topic/o/${iot:Certificate.Subject.Organization}",
            no_thing,
            "o/Second",
            false,
        ),
        (
            "topic/c/${iot:Certificate.Subject.Country}",
            no_thing,
            "c/DE",
            true,
        ),
        (
            "topic/i/${iot:Certificate.Issuer.CommonName}",
            no_thing,
            "i/Acme Root",
            true,
        ),
        (
            "topic/i/${iot:Certificate.Issuer.Organization}",
            no_thing,
            "i/Acme",
            false,
        ),
        ("topic/id/${iot:CertificateId}", no_thing, "id/c0ffee", true),
        (
            "topic/id/${iot:CertificateId}",
            no_cert_id,
            "id/c0ffee",
            false,
        ),
        // A variable without a value (the thing has no type) matches
        // nothing, even with a wildcard next to it.
        (
            "topic/${iot:Connection.Thing.ThingTypeName}*",
            with_thing,
            "x",
            false,
        ),
    ];
    for (resource, c, topic, want) in cases {
        let p = policy(&format!(
            "[{}]",
            allow("iot:Publish", &format!("arn:aws:iot:*:*:{resource}"))
        ));
        assert_eq!(
            is_allowed(&[p], Action::Publish, topic, &c),
            want,
            "{resource} with client {} thing {:?} on {topic}",
            c.client_id,
            c.thing.map(|t| &t.name)
        );
    }
}

#[test]
fn unresolved_variable_skips_only_that_resource() {
    let (s, i) = (subject(), issuer());
    let c = ctx("dev1", None, &s, &i);
    let p = policy(
        r#"[{"Effect": "Allow", "Action": "iot:Publish", "Resource": [
            "arn:aws:iot:*:*:topic/${iot:Connection.Thing.ThingName}", "arn:aws:iot:*:*:topic/open"]}]"#,
    );
    assert!(is_allowed(
        std::slice::from_ref(&p),
        Action::Publish,
        "open",
        &c
    ));
    assert!(!is_allowed(&[p], Action::Publish, "dev1", &c));
}

#[test]
fn unresolved_variables_never_escape_a_deny() {
    let (s, i) = (subject(), issuer());
    let on = ctx("dev1", Some("dev1"), &s, &i);
    let off = ctx("dev1", None, &s, &i);
    let thing = "${iot:Connection.Thing.ThingName}";
    let deny = |rest: &str| {
        policy(&format!(
            r#"[{}, {{"Effect": "Deny", "Action": "iot:Publish", {rest}}}]"#,
            allow("iot:Publish", "*")
        ))
    };
    let cases = [
        // Resource: an unresolved entry matches in a Deny.
        (
            format!(r#""Resource": "arn:aws:iot:*:*:topic/things/{thing}/admin""#),
            "things/dev1/admin",
        ),
        // Condition values, positive and negated.
        (
            format!(
                r#""Resource": "*", "Condition": {{"StringEquals": {{"iot:ClientId": "{thing}"}}}}"#
            ),
            "t",
        ),
        (
            format!(
                r#""Resource": "*", "Condition": {{"StringNotEquals": {{"iot:ClientId": "{thing}"}}}}"#
            ),
            "t",
        ),
        (
            format!(
                r#""Resource": "*", "Condition": {{"StringNotLike": {{"iot:ClientId": ["{thing}", "x"]}}}}"#
            ),
            "t",
        ),
    ];
    for (rest, topic) in cases {
        let p = deny(&rest);
        assert!(
            !is_allowed(std::slice::from_ref(&p), Action::Publish, topic, &off),
            "unattached client escaped the Deny {rest} on {topic}"
        );
        // With the variable resolved the Deny is evaluated as written.
        let want = !rest.contains(r#""StringEquals""#) && !rest.contains("admin");
        assert_eq!(
            is_allowed(&[p], Action::Publish, topic, &on),
            want,
            "attached thing, {rest} on {topic}"
        );
    }
}

#[test]
fn deny_wins_and_default_deny() {
    let (s, i) = (subject(), issuer());
    let c = ctx("dev1", None, &s, &i);
    let allow_all = policy(&format!("[{}]", allow("iot:*", "*")));
    let deny_secret = policy(
        r#"{"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/secret/*"}"#,
    );
    let both_in_one = policy(&format!(
        r#"[{}, {{"Effect": "Deny", "Action": "iot:*", "Resource": "arn:aws:iot:*:*:topic/secret/*"}}]"#,
        allow("iot:Publish", "*")
    ));
    let cases: Vec<(Vec<PolicyDocument>, Action, &str, bool)> = vec![
        (vec![], Action::Connect, "dev1", false),
        (vec![deny_secret.clone()], Action::Publish, "public", false),
        (vec![allow_all.clone()], Action::Publish, "secret/x", true),
        (
            vec![allow_all.clone(), deny_secret.clone()],
            Action::Publish,
            "secret/x",
            false,
        ),
        (
            vec![deny_secret.clone(), allow_all.clone()],
            Action::Publish,
            "secret/x",
            false,
        ),
        (
            vec![allow_all.clone(), deny_secret.clone()],
            Action::Publish,
            "public",
            true,
        ),
        (
            vec![allow_all.clone(), deny_secret.clone()],
            Action::Receive,
            "secret/x",
            true,
        ),
        (
            vec![both_in_one.clone()],
            Action::Publish,
            "secret/a/b",
            false,
        ),
        (vec![both_in_one], Action::Publish, "public", true),
    ];
    for (policies, action, name, want) in cases {
        assert_eq!(
            is_allowed(&policies, action, name, &c),
            want,
            "{} policies, {action} {name}",
            policies.len()
        );
    }
}

#[test]
fn not_resource() {
    let (s, i) = (subject(), issuer());
    let with_thing = ctx("dev1", Some("dev1"), &s, &i);
    let no_thing = ctx("dev1", None, &s, &i);
    let allow_except = policy(
        r#"{"Effect": "Allow", "Action": "iot:Publish", "NotResource": ["arn:aws:iot:*:*:topic/admin/*", "arn:aws:iot:*:*:topic/ops"]}"#,
    );
    let deny_outside_own = policy(&format!(
        r#"[{}, {{"Effect": "Deny", "Action": "iot:Publish", "NotResource": "arn:aws:iot:*:*:topic/things/${{iot:Connection.Thing.ThingName}}/*"}}]"#,
        allow("iot:Publish", "*")
    ));
    let cases: Vec<(&PolicyDocument, RequestContext, &str, bool)> = vec![
        (&allow_except, no_thing, "telemetry", true),
        (&allow_except, no_thing, "admin/x", false),
        (&allow_except, no_thing, "ops", false),
        (&allow_except, no_thing, "ops/x", true),
        (&deny_outside_own, with_thing, "things/dev1/t", true),
        (&deny_outside_own, with_thing, "things/dev2/t", false),
        // The Deny's exclusion cannot be resolved without a thing: the
        // Deny cannot tell what it leaves out, so it applies (fail closed).
        (&deny_outside_own, no_thing, "things/dev2/t", false),
        (&deny_outside_own, no_thing, "things/dev1/t", false),
    ];
    for (p, c, topic, want) in cases {
        assert_eq!(
            is_allowed(std::slice::from_ref(p), Action::Publish, topic, &c),
            want,
            "{topic} thing {:?}",
            c.thing.map(|t| &t.name)
        );
    }
}

#[test]
fn every_repository_policy_parses() {
    let dir = format!("{}/../policies", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("policies/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("readable");
            PolicyDocument::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected claim, device and rotation policies, found {seen}"
    );
}

#[test]
fn claim_policy_allows_only_provisioning() {
    let claim = [repo_policy("claim.json")];
    let (s, i) = (subject(), issuer());
    let c = ctx("any-client-id", None, &s, &i);
    let cases = [
        // Only as a claim session: with a gateway's thing name as client id
        // the claim credential could knock the gateway off.
        (Action::Connect, "prov-SN0001", true),
        (Action::Connect, "prov-", true),
        (Action::Connect, "any-client-id", false),
        (Action::Connect, "gw_0001", false),
        (Action::Connect, "xprov-SN0001", false),
        (Action::Publish, "$aws/certificates/create/json", true),
        (
            Action::Receive,
            "$aws/certificates/create/json/accepted",
            true,
        ),
        (
            Action::Subscribe,
            "$aws/certificates/create/json/accepted",
            true,
        ),
        (
            Action::Publish,
            "$aws/certificates/create-from-csr/cbor",
            true,
        ),
        (
            Action::Subscribe,
            "$aws/certificates/create-from-csr/json/rejected",
            true,
        ),
        (
            Action::Publish,
            "$aws/provisioning-templates/ProdTemplate/provision/json",
            true,
        ),
        (
            Action::Receive,
            "$aws/provisioning-templates/ProdTemplate/provision/json/accepted",
            true,
        ),
        (
            Action::Subscribe,
            "$aws/provisioning-templates/ProdTemplate/provision/json/+",
            true,
        ),
        (
            Action::Publish,
            "$aws/provisioning-templates/RotationTemplate/provision/json",
            false,
        ),
        (
            Action::Publish,
            "$aws/provisioning-templates/OtherTemplate/provision/json",
            false,
        ),
        (Action::Subscribe, "$aws/certificates/#", false),
        (Action::Subscribe, "#", false),
        (Action::Publish, "things/gw_0001/telemetry", false),
        (
            Action::Publish,
            "$aws/certificates/create/json/accepted",
            true,
        ),
        (
            Action::RetainPublish,
            "$aws/certificates/create/json",
            false,
        ),
    ];
    for (action, name, want) in cases {
        assert_eq!(
            is_allowed(&claim, action, name, &c),
            want,
            "{action} {name}"
        );
    }
}

#[test]
fn device_policy_is_least_privilege() {
    let device = [repo_policy("device.json")];
    let (s, i) = (subject(), issuer());
    let own = ctx("gw_0001", Some("gw_0001"), &s, &i);
    // The server sets no thing name when the client id is not an attached thing.
    let other_id = ctx("gw_0002", None, &s, &i);
    let cases: Vec<(RequestContext, Action, &str, bool)> = vec![
        (own, Action::Connect, "gw_0001", true),
        (other_id, Action::Connect, "gw_0002", false),
        (own, Action::Publish, "things/gw_0001/telemetry", true),
        (own, Action::Publish, "things/gw_0001/a/b/c", true),
        (own, Action::Receive, "things/gw_0001/config", true),
        (own, Action::Subscribe, "things/gw_0001/#", true),
        (own, Action::Subscribe, "things/gw_0001/+/state", true),
        (own, Action::Publish, "things/gw_0002/telemetry", false),
        (own, Action::Receive, "things/gw_0002/telemetry", false),
        (own, Action::Subscribe, "things/gw_0002/#", false),
        (own, Action::Subscribe, "things/+/telemetry", false),
        (own, Action::Subscribe, "things/#", false),
        (own, Action::Subscribe, "cmd/gw_0001", true),
        (own, Action::Receive, "cmd/gw_0001", true),
        (own, Action::Subscribe, "cmd/gw_0002", false),
        (own, Action::Subscribe, "cmd/+", false),
        (own, Action::Receive, "cmd/gw_0001/extra", false),
        (
            own,
            Action::Subscribe,
            "$aws/things/gw_0001/jobs/notify-next",
            true,
        ),
        (
            own,
            Action::Publish,
            "$aws/things/gw_0001/jobs/start-next",
            true,
        ),
        (
            own,
            Action::Publish,
            "$aws/things/gw_0002/jobs/start-next",
            false,
        ),
        (
            own,
            Action::Publish,
            "$aws/certificates/create-from-csr/json",
            true,
        ),
        (
            own,
            Action::Subscribe,
            "$aws/certificates/create-from-csr/json/accepted",
            true,
        ),
        (
            own,
            Action::Publish,
            "$aws/provisioning-templates/RotationTemplate/provision/json",
            true,
        ),
        (
            own,
            Action::Receive,
            "$aws/provisioning-templates/RotationTemplate/provision/json/accepted",
            true,
        ),
        // `enroll --force` re-enrolls with the device's own certificate.
        (
            own,
            Action::Publish,
            "$aws/provisioning-templates/ProdTemplate/provision/json",
            true,
        ),
        (
            own,
            Action::Publish,
            "$aws/provisioning-templates/OtherTemplate/provision/json",
            false,
        ),
        (
            own,
            Action::RetainPublish,
            "things/gw_0001/telemetry",
            false,
        ),
        (other_id, Action::Publish, "things/gw_0002/telemetry", false),
    ];
    for (c, action, name, want) in cases {
        assert_eq!(
            is_allowed(&device, action, name, &c),
            want,
            "client {} {action} {name}",
            c.client_id
        );
    }
}

#[test]
fn rotation_policy_allows_only_rotation() {
    let rotation = [repo_policy("rotation.json")];
    let (s, i) = (subject(), issuer());
    let own = ctx("gw_0001", Some("gw_0001"), &s, &i);
    let cases = [
        (Action::Connect, "gw_0001", true),
        (Action::Subscribe, "cmd/gw_0001", true),
        (Action::Receive, "cmd/gw_0001", true),
        (
            Action::Publish,
            "$aws/certificates/create-from-csr/json",
            true,
        ),
        (
            Action::Publish,
            "$aws/provisioning-templates/RotationTemplate/provision/cbor",
            true,
        ),
        (Action::Publish, "$aws/certificates/create/json", false),
        (Action::Publish, "things/gw_0001/telemetry", false),
        (Action::Subscribe, "cmd/gw_0002", false),
    ];
    for (action, name, want) in cases {
        assert_eq!(
            is_allowed(&rotation, action, name, &own),
            want,
            "{action} {name}"
        );
    }
}

/// A context with everything set: a thing with a type and attributes, a
/// certificate with repeated fields and alternative names.
fn rich_ctx(client_id: &'static str, attached: bool) -> RequestContext<'static> {
    let certificate: &'static CertificateFacts = Box::leak(Box::new(CertificateFacts {
        id: "c0ffee".into(),
        serial_number: Some("4660".into()),
        subject: vec![
            ("CommonName".into(), "gw_1".into()),
            ("Organization".into(), "Acme".into()),
            ("Organization".into(), "Second".into()),
        ],
        issuer: vec![("CommonName".into(), "Acme Root".into())],
        subject_alt_names: vec![
            ("DNSName".into(), "gw-1.example.com".into()),
            ("DNSName".into(), "gw-1.example.org".into()),
        ],
        issuer_alt_names: Vec::new(),
    }));
    let thing: &'static ConnectedThing = Box::leak(Box::new(ConnectedThing {
        name: client_id.into(),
        type_name: Some("gateway".into()),
        attributes: [
            ("site".to_string(), "berlin".to_string()),
            ("line".to_string(), "3".to_string()),
        ]
        .into(),
    }));
    RequestContext {
        region: REGION,
        account: ACCOUNT,
        client_id,
        thing: attached.then_some(thing),
        certificate,
        source_ip: Some("203.0.113.7".parse().unwrap()),
        // 2027-01-15T08:00:00Z
        now_unix: 1_800_000_000,
    }
}

#[test]
fn conditions_evaluate_as_iam_says() {
    let on = rich_ctx("gw_1", true);
    let off = rich_ctx("gw_1", false);
    let no_ip = RequestContext {
        source_ip: None,
        ..on
    };
    // (condition, context, allowed)
    let cases: Vec<(&str, RequestContext, bool)> = vec![
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#,
            on,
            true,
        ),
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#,
            off,
            false,
        ),
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAttached": ["TRUE"]}}"#,
            on,
            true,
        ),
        (
            r#"{"Bool": {"iot:Connection.Thing.IsAttached": false}}"#,
            off,
            true,
        ),
        // Keys in one block AND, values of one key OR, blocks AND.
        (
            r#"{"StringEquals": {"iot:Connection.Thing.Attributes[site]": ["paris", "berlin"]}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:Connection.Thing.Attributes[site]": "berlin", "iot:Connection.Thing.ThingTypeName": "gateway"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:Connection.Thing.Attributes[site]": "berlin", "iot:Connection.Thing.ThingTypeName": "sensor"}}"#,
            on,
            false,
        ),
        (
            r#"{"StringEquals": {"iot:Connection.Thing.Attributes[site]": "berlin"}, "Bool": {"iot:Connection.Thing.IsAttached": "false"}}"#,
            on,
            false,
        ),
        // Attribute names are case-sensitive, key prefixes are not.
        (
            r#"{"StringEquals": {"IOT:connection.thing.Attributes[site]": "berlin"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:Connection.Thing.Attributes[Site]": "berlin"}}"#,
            on,
            false,
        ),
        // Absent keys: false for positive operators, true for negated ones,
        // IfExists and Null as documented.
        (
            r#"{"StringEquals": {"iot:Connection.Thing.ThingName": "gw_1"}}"#,
            off,
            false,
        ),
        (
            r#"{"StringNotEquals": {"iot:Connection.Thing.ThingName": "gw_1"}}"#,
            off,
            true,
        ),
        (
            r#"{"StringNotEquals": {"iot:Connection.Thing.ThingName": "gw_1"}}"#,
            on,
            false,
        ),
        (
            r#"{"StringNotEquals": {"iot:Connection.Thing.ThingName": ["a", "b"]}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "sensor"}}"#,
            off,
            true,
        ),
        (
            r#"{"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "sensor"}}"#,
            on,
            false,
        ),
        (
            r#"{"Null": {"iot:Connection.Thing.ThingTypeName": "true"}}"#,
            off,
            true,
        ),
        (
            r#"{"Null": {"iot:Connection.Thing.ThingTypeName": "true"}}"#,
            on,
            false,
        ),
        (
            r#"{"Null": {"iot:Connection.Thing.ThingTypeName": "false"}}"#,
            on,
            true,
        ),
        (r#"{"Null": {"aws:SourceIp": "true"}}"#, no_ip, true),
        // Case and wildcards.
        (r#"{"StringEquals": {"iot:ClientId": "GW_1"}}"#, on, false),
        (
            r#"{"StringEqualsIgnoreCase": {"iot:ClientId": "GW_1"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringNotEqualsIgnoreCase": {"iot:ClientId": "GW_1"}}"#,
            on,
            false,
        ),
        (r#"{"StringLike": {"iot:ClientId": "gw_?"}}"#, on, true),
        (r#"{"StringLike": {"iot:ClientId": "sensor*"}}"#, on, false),
        (
            r#"{"StringNotLike": {"iot:ClientId": "sensor*"}}"#,
            on,
            true,
        ),
        (r#"{"StringEquals": {"iot:ClientId": "gw_*"}}"#, on, false),
        // Variables in values, substituted literally.
        (
            r#"{"StringEquals": {"iot:Certificate.Subject.CommonName": "${iot:ClientId}"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:Connection.Thing.ThingName": "${iot:Certificate.Subject.CommonName}"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingTypeName}"}}"#,
            on,
            false,
        ),
        // In an Allow, a negated test whose value cannot be resolved is
        // false (the Deny side: `unresolved_variables_never_escape_a_deny`).
        (
            r#"{"StringNotEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}"#,
            off,
            false,
        ),
        // Certificate fields: first value, index, list.
        (
            r#"{"StringEquals": {"iot:Certificate.Subject.Organization": "Acme"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringEquals": {"iot:Certificate.Subject.Organization": "Second"}}"#,
            on,
            false,
        ),
        (
            r#"{"StringEquals": {"iot:Certificate.Subject.Organization.1": "Second"}}"#,
            on,
            true,
        ),
        (
            r#"{"Null": {"iot:Certificate.Subject.Organization.2": "true"}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:Certificate.Subject.Organization.List": "Second"}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals": {"iot:Certificate.Subject.Organization.List": "Second"}}"#,
            on,
            false,
        ),
        // Unqualified on a list: positive when some value matches, negated
        // when none does, so one bad organization among good ones refuses.
        (
            r#"{"StringEquals": {"iot:Certificate.Subject.Organization.List": "Second"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringNotEquals": {"iot:Certificate.Subject.Organization.List": "Second"}}"#,
            on,
            false,
        ),
        (
            r#"{"StringNotLike": {"iot:Certificate.Subject.Organization.List": "Sec*"}}"#,
            on,
            false,
        ),
        (
            r#"{"StringNotEquals": {"iot:Certificate.Subject.Organization.List": "Evil"}}"#,
            on,
            true,
        ),
        (
            r#"{"StringNotEquals": {"iot:Certificate.AvailableKeys": "iot:Certificate.Subject.Organization"}}"#,
            on,
            false,
        ),
        // ForAnyValue: negated still means "some value does not match".
        (
            r#"{"ForAnyValue:StringNotEquals": {"iot:Certificate.Subject.Organization.List": "Second"}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals": {"iot:Certificate.Subject.Organization.List": ["Acme", "Second"]}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAllValues:StringLike": {"iot:Certificate.Subject.AlternativeName.DNSName.List": "*.example.com"}}"#,
            on,
            false,
        ),
        (
            r#"{"ForAnyValue:StringLike": {"iot:Certificate.Subject.AlternativeName.DNSName.List": "*.example.com"}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals": {"iot:Certificate.Issuer.AlternativeName.DNSName.List": "x"}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:Certificate.Issuer.AlternativeName.DNSName.List": "x"}}"#,
            on,
            false,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:Certificate.AvailableKeys": "iot:Certificate.Subject.AlternativeName.DNSName"}}"#,
            on,
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals": {"iot:Certificate.AvailableKeys": "iot:Certificate.Subject.Country"}}"#,
            on,
            false,
        ),
        (
            r#"{"StringEquals": {"iot:Certificate.SerialNumber": "4660", "iot:CertificateId": "c0ffee", "iot:Certificate.Issuer.CommonName": "Acme Root"}}"#,
            on,
            true,
        ),
        // Numbers, dates, addresses, ARNs.
        (
            r#"{"NumericEquals": {"iot:Connection.Thing.Attributes[line]": 3}}"#,
            on,
            true,
        ),
        (
            r#"{"NumericGreaterThan": {"iot:Connection.Thing.Attributes[line]": "3.5"}}"#,
            on,
            false,
        ),
        (
            r#"{"NumericNotEquals": {"iot:Connection.Thing.Attributes[line]": 4}}"#,
            on,
            true,
        ),
        (
            r#"{"NumericLessThan": {"iot:Connection.Thing.Attributes[site]": 4}}"#,
            on,
            false,
        ),
        // A value of the wrong type fails negated tests too.
        (
            r#"{"NumericNotEquals": {"iot:Connection.Thing.Attributes[site]": 4}}"#,
            on,
            false,
        ),
        (
            r#"{"DateNotEquals": {"iot:Connection.Thing.Attributes[site]": "2026-01-01"}}"#,
            on,
            false,
        ),
        (
            r#"{"NotIpAddress": {"iot:Connection.Thing.Attributes[site]": "10.0.0.0/8"}}"#,
            on,
            false,
        ),
        (
            r#"{"NumericNotEquals": {"iot:Connection.Thing.Attributes[line]": "${iot:ClientId}"}}"#,
            on,
            false,
        ),
        (
            r#"{"NumericLessThan": {"aws:EpochTime": 1800000001}}"#,
            on,
            true,
        ),
        (
            r#"{"DateLessThan": {"aws:CurrentTime": "2027-01-15T08:00:01Z"}}"#,
            on,
            true,
        ),
        (
            r#"{"DateLessThan": {"aws:CurrentTime": "2027-01-15T08:00:00Z"}}"#,
            on,
            false,
        ),
        (
            r#"{"DateLessThanEquals": {"aws:CurrentTime": "2027-01-15T08:00:00Z"}}"#,
            on,
            true,
        ),
        (
            r#"{"DateGreaterThan": {"aws:CurrentTime": "2027-01-15"}}"#,
            on,
            true,
        ),
        (
            r#"{"DateGreaterThanEquals": {"aws:EpochTime": "2027-01-16"}}"#,
            on,
            false,
        ),
        (
            r#"{"DateEquals": {"aws:EpochTime": "2027-01-15T09:00:00+01:00"}}"#,
            on,
            true,
        ),
        (
            r#"{"DateNotEquals": {"aws:EpochTime": "1800000000"}}"#,
            on,
            false,
        ),
        (
            r#"{"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}"#,
            on,
            true,
        ),
        (
            r#"{"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "203.0.113.7"]}}"#,
            on,
            true,
        ),
        (
            r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#,
            on,
            false,
        ),
        (
            r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#,
            on,
            true,
        ),
        (
            r#"{"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}"#,
            no_ip,
            false,
        ),
        (
            r#"{"ArnLike": {"iot:Connection.Thing.Attributes[site]": "arn:*"}}"#,
            on,
            false,
        ),
        (
            r#"{"ArnNotLike": {"iot:Connection.Thing.Attributes[site]": "arn:aws:iot:*:*:thing/*"}}"#,
            on,
            true,
        ),
    ];
    for (condition, c, want) in cases {
        let p = policy(&format!(
            r#"[{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*", "Condition": {condition}}}]"#
        ));
        assert_eq!(
            is_allowed(&[p], Action::Publish, "t", &c),
            want,
            "{condition} with thing {:?}",
            c.thing.map(|t| &t.name)
        );
    }
}

#[test]
fn thing_and_certificate_variables_in_resources() {
    let on = rich_ctx("gw_1", true);
    let off = rich_ctx("gw_1", false);
    let cases: Vec<(&str, RequestContext, &str, bool)> = vec![
        (
            "site/${iot:Connection.Thing.Attributes[site]}/#",
            on,
            "site/berlin/#",
            true,
        ),
        (
            "site/${iot:Connection.Thing.Attributes[site]}/#",
            on,
            "site/paris/#",
            false,
        ),
        (
            "site/${iot:Connection.Thing.Attributes[site]}/#",
            off,
            "site/berlin/#",
            false,
        ),
        (
            "site/${iot:Connection.Thing.Attributes[nope]}/*",
            on,
            "site//x",
            false,
        ),
        (
            "type/${iot:Connection.Thing.ThingTypeName}",
            on,
            "type/gateway",
            true,
        ),
        (
            "type/${iot:Connection.Thing.ThingTypeName}",
            off,
            "type/gateway",
            false,
        ),
        (
            "org/${iot:Certificate.Subject.Organization.1}",
            on,
            "org/Second",
            true,
        ),
        (
            "dns/${iot:Certificate.Subject.AlternativeName.DNSName}",
            on,
            "dns/gw-1.example.com",
            true,
        ),
        (
            "serial/${iot:Certificate.SerialNumber}",
            on,
            "serial/4660",
            true,
        ),
        ("ip/${aws:SourceIp}", on, "ip/203.0.113.7", true),
    ];
    for (resource, c, filter, want) in cases {
        let p = policy(&format!(
            "[{}]",
            allow(
                "iot:Subscribe",
                &format!("arn:aws:iot:*:*:topicfilter/{resource}")
            )
        ));
        assert_eq!(
            is_allowed(&[p], Action::Subscribe, filter, &c),
            want,
            "{resource} on {filter} with thing {:?}",
            c.thing.map(|t| &t.name)
        );
    }
}

#[test]
fn not_action_and_deny_with_conditions() {
    let on = rich_ctx("gw_1", true);
    let off = rich_ctx("gw_1", false);
    let p = policy(
        r#"[{"Effect": "Allow", "NotAction": ["iot:Subscribe", "iot:Receive"], "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/admin/*",
             "Condition": {"StringNotEquals": {"iot:Connection.Thing.ThingTypeName": "admin"}}}]"#,
    );
    let cases = [
        (Action::Connect, "gw_1", on, true),
        (Action::Publish, "a/b", on, true),
        (Action::RetainPublish, "a/b", on, true),
        (Action::Subscribe, "a/b", on, false),
        (Action::Receive, "a/b", on, false),
        // The Deny's condition holds (type gateway, not admin; or no thing
        // at all: an absent key passes a negated test): Deny wins.
        (Action::Publish, "admin/x", on, false),
        (Action::Publish, "admin/x", off, false),
    ];
    for (action, name, c, want) in cases {
        assert_eq!(
            is_allowed(std::slice::from_ref(&p), action, name, &c),
            want,
            "{action} {name}"
        );
    }
    // A value of the wrong type cannot lift a Deny: the thing's "site"
    // attribute ("berlin") is no number, so neither NumericEquals nor
    // NumericNotEquals can be shown false, and the Deny applies; in an
    // Allow the same tests fail, so nothing is granted either way.
    for op in [
        "NumericEquals",
        "NumericNotEquals",
        "DateNotEquals",
        "NotIpAddress",
    ] {
        let value = match op {
            "DateNotEquals" => "\"2026-01-01\"",
            "NotIpAddress" => "\"10.0.0.0/8\"",
            _ => "4",
        };
        let deny = policy(&format!(
            r#"[{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}},
                {{"Effect": "Deny", "Action": "iot:Publish", "Resource": "*",
                 "Condition": {{"{op}": {{"iot:Connection.Thing.Attributes[site]": {value}}}}}}}]"#
        ));
        assert!(
            !is_allowed(std::slice::from_ref(&deny), Action::Publish, "a/b", &on),
            "a wrong-typed value lifted a Deny with {op}"
        );
        let allow = policy(&format!(
            r#"[{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*",
                 "Condition": {{"{op}": {{"iot:Connection.Thing.Attributes[site]": {value}}}}}}}]"#
        ));
        assert!(
            !is_allowed(std::slice::from_ref(&allow), Action::Publish, "a/b", &on),
            "a wrong-typed value granted an Allow with {op}"
        );
    }
    // A thing of type admin: the Deny's condition fails, the Allow stands.
    let admin_thing = ConnectedThing {
        name: "gw_1".into(),
        type_name: Some("admin".into()),
        ..ConnectedThing::default()
    };
    let admin = RequestContext {
        thing: Some(&admin_thing),
        ..on
    };
    assert!(is_allowed(&[p], Action::Publish, "admin/x", &admin));
}
