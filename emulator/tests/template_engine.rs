//! The provisioning template engine, table-driven: registration-time
//! validation, every intrinsic function, resources, OverrideSettings, and the
//! repository's own templates.

use std::collections::BTreeMap;

use iotcore_emulator::policy::PolicyDocument;
use iotcore_emulator::template::{
    apply_overrides, validate_name, CertStatusSpec, CertificateSpec, ExistingThing, OverrideAction,
    OverrideSettings, PolicySpec, Template, TemplateError, ThingSpec, MAX_TEMPLATE_CHARS,
};
use serde_json::{json, Value};

const CERT_ID: &str = "4f1a9c0e2b7d4a6f8e3c5b1d7a9f0e2c4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f3a";

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A template whose DeviceConfiguration `out` is `expr`, with parameters
/// P (no default), D (default "dflt"), L = "a,b,c" and a mapping M.
fn expr_template(expr: Value) -> Value {
    json!({
        "Parameters": {
            "P": {"Type": "String"},
            "D": {"Type": "String", "Default": "dflt"},
            "L": {"Type": "String", "Default": "a,b,c"}
        },
        "Mappings": {"M": {"eu": {"Endpoint": "e1", "Groups": ["g1", "g2"]}, "us": {"Endpoint": "u1"}}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Join": ["-", ["t", {"Ref": "P"}]]}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}},
            "named": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
        },
        "DeviceConfiguration": {"out": expr}
    })
}

fn eval_out(expr: Value, p: &str) -> Result<String, TemplateError> {
    let t = Template::parse(&expr_template(expr).to_string())?;
    let plan = t.evaluate(&params(&[("P", p)]), CERT_ID)?;
    Ok(plan.device_configuration["out"].clone())
}

#[test]
fn template_names() {
    let long = "a".repeat(36);
    let too_long = "a".repeat(37);
    let cases = [
        ("ProdTemplate", true),
        ("a", true),
        ("x_Y-9", true),
        (long.as_str(), true),
        (too_long.as_str(), false),
        ("", false),
        ("has space", false),
        ("dot.name", false),
        ("ümlaut", false),
        ("slash/x", false),
    ];
    for (name, ok) in cases {
        let r = validate_name(name);
        assert_eq!(r.is_ok(), ok, "{name:?}: {r:?}");
        if let Err(e) = r {
            assert!(matches!(e, TemplateError::InvalidName { .. }), "{e:?}");
            assert_eq!(e.error_code(), "InvalidRequestException");
        }
    }
}

#[test]
fn intrinsic_functions_evaluate() {
    // P = "us" throughout.
    let cases: Vec<(Value, &str)> = vec![
        (json!("literal"), "literal"),
        (json!(42), "42"),
        (json!(true), "true"),
        (json!({"Ref": "P"}), "us"),
        (json!({"Ref": "D"}), "dflt"),
        (json!({"Ref": "AWS::IoT::Certificate::Id"}), CERT_ID),
        (json!({"Ref": "thing"}), "t-us"),
        (json!({"Ref": "certificate"}), CERT_ID),
        (json!({"Ref": "named"}), "device"),
        (json!({"Fn::Join": ["", ["a", "b"]]}), "ab"),
        (
            json!({"Fn::Join": ["/", ["a", {"Ref": "P"}, "c"]]}),
            "a/us/c",
        ),
        (json!({"Fn::Join": [",", []]}), ""),
        (
            json!({"Fn::Join": ["+", {"Fn::Split": [",", {"Ref": "L"}]}]}),
            "a+b+c",
        ),
        (json!({"Fn::Select": [0, ["x", "y"]]}), "x"),
        (json!({"Fn::Select": ["1", ["x", "y"]]}), "y"),
        (
            json!({"Fn::Select": [2, {"Fn::Split": [",", {"Ref": "L"}]}]}),
            "c",
        ),
        (
            json!({"Fn::Select": [{"Fn::Select": [0, ["1"]]}, ["x", "y"]]}),
            "y",
        ),
        (
            json!({"Fn::Select": [0, {"Fn::Split": ["-", "no-dash-here"]}]}),
            "no",
        ),
        (
            json!({"Fn::Select": [0, {"Fn::Split": ["|", "whole"]}]}),
            "whole",
        ),
        (json!({"Fn::FindInMap": ["M", "eu", "Endpoint"]}), "e1"),
        (
            json!({"Fn::FindInMap": ["M", {"Ref": "P"}, "Endpoint"]}),
            "u1",
        ),
        (
            json!({"Fn::Join": [" ", {"Fn::FindInMap": ["M", "eu", "Groups"]}]}),
            "g1 g2",
        ),
        (json!({"Fn::Sub": "pre-${P}-${D}"}), "pre-us-dflt"),
        (json!({"Fn::Sub": "${AWS::IoT::Certificate::Id}"}), CERT_ID),
        (json!({"Fn::Sub": "${thing}/x"}), "t-us/x"),
        (json!({"Fn::Sub": "no variables"}), "no variables"),
        (
            json!({"Fn::Sub": "topic/${!iot:ClientId}"}),
            "topic/${iot:ClientId}",
        ),
        (
            json!({"Fn::Sub": ["${A}-${P}", {"A": {"Ref": "D"}}]}),
            "dflt-us",
        ),
        (json!({"Fn::Sub": ["${P}", {"P": "shadowed"}]}), "shadowed"),
        (
            json!({"Fn::Sub": ["${X}", {"X": {"Fn::Join": ["", [{"Fn::Select": [1, {"Fn::Split": [",", {"Ref": "L"}]}]}, "!"]]}}]}),
            "b!",
        ),
    ];
    for (expr, want) in cases {
        let got = eval_out(expr.clone(), "us").unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(got, want, "{expr}");
    }
}

#[test]
fn parse_rejects_with_the_path_and_the_reason() {
    // (expression placed at DeviceConfiguration.out, expected message part)
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"Fn::If": ["c", "a", "b"]}),
            "DeviceConfiguration.out: Fn::If is not supported",
        ),
        (
            json!({"Fn::Join": ["", [{"Fn::GetAtt": ["thing", "Arn"]}]]}),
            "DeviceConfiguration.out.Fn::Join[1][0]: Fn::GetAtt is not supported",
        ),
        (json!({"Fn::Base64": "x"}), "Fn::Base64 is not supported"),
        (
            json!({"Ref": "Nope"}),
            "Nope is neither a declared parameter",
        ),
        (json!({"Ref": 3}), "Ref takes a name"),
        (json!({"Ref": "P", "Other": 1}), "must have no other key"),
        (json!({"a": "b"}), "found an object"),
        (json!(null), "null is not a value"),
        (
            json!({"Fn::Join": ["-"]}),
            "Fn::Join takes [delimiter, [values]]",
        ),
        (
            json!({"Fn::Join": ["-", "notalist"]}),
            "DeviceConfiguration.out.Fn::Join[1]: expected a list, found a string",
        ),
        (
            json!({"Fn::Select": [0, 7]}),
            "Fn::Select[1]: expected a list, found a number",
        ),
        (
            json!({"Fn::Select": ["x", ["a"]]}),
            "is not a non-negative integer",
        ),
        (
            json!({"Fn::Select": [-1, ["a"]]}),
            "is not a non-negative integer",
        ),
        (
            json!({"Fn::Select": [0.5, ["a"]]}),
            "is not a non-negative integer",
        ),
        (
            json!({"Fn::Select": [0]}),
            "Fn::Select takes [index, [values]]",
        ),
        (
            json!({"Fn::Split": ["", "a"]}),
            "delimiter must not be empty",
        ),
        (
            json!({"Fn::Split": "a"}),
            "Fn::Split takes [delimiter, string]",
        ),
        (
            json!({"Fn::FindInMap": ["M", "eu"]}),
            "Fn::FindInMap takes [map, key1, key2]",
        ),
        (
            json!({"Fn::FindInMap": ["Nope", "eu", "x"]}),
            "no mapping named Nope",
        ),
        (
            json!({"Fn::Sub": "${Unknown}"}),
            "Unknown is neither a declared parameter",
        ),
        (
            json!({"Fn::Sub": "topic/${iot:ClientId}"}),
            "iot:ClientId is a policy variable, not a template name: write ${!iot:ClientId}",
        ),
        (
            json!({"Fn::Sub": "${thing.Arn}"}),
            "attribute references are not supported",
        ),
        (json!({"Fn::Sub": "${P"}), "unterminated ${"),
        (
            json!({"Fn::Sub": 3}),
            "Fn::Sub takes a string or [string, {name: value}]",
        ),
        (
            json!({"Fn::Sub": ["${A}", ["x"]]}),
            "Fn::Sub takes a string or",
        ),
        (
            json!({"Fn::Sub": ["${A}", {"A": {"Ref": "Nope"}}]}),
            "DeviceConfiguration.out.Fn::Sub[1].A.Ref",
        ),
    ];
    for (expr, want) in cases {
        let body = expr_template(expr.clone()).to_string();
        let err = Template::parse(&body).expect_err(&expr.to_string());
        assert!(
            err.to_string().contains(want),
            "{expr}: got {err}, want {want:?}"
        );
        assert_eq!(err.error_code(), "InvalidRequestException");
    }
}

#[test]
fn evaluation_errors() {
    // (expression, P, expected message part)
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"Fn::Select": [5, ["a"]]}),
            "pv",
            "index 5 is out of range for a list of 1",
        ),
        (
            json!({"Fn::Select": [{"Ref": "P"}, ["a"]]}),
            "x",
            "must be a non-negative integer",
        ),
        (
            json!({"Fn::FindInMap": ["M", {"Ref": "P"}, "Endpoint"]}),
            "asia",
            "Mappings has no entry M.asia.Endpoint",
        ),
        (
            json!({"Fn::FindInMap": ["M", "us", "Groups"]}),
            "pv",
            "Mappings has no entry M.us.Groups",
        ),
        (
            json!({"Fn::Split": [",", "a,b"]}),
            "pv",
            "DeviceConfiguration.out: expected a string, found a list",
        ),
        (json!(["a", "b"]), "pv", "expected a string, found a list"),
        (
            json!({"Fn::Join": ["-", {"Ref": "P"}]}),
            "pv",
            "Fn::Join[1]: expected a list, found a string",
        ),
        (
            json!({"Fn::Join": [["x"], ["a"]]}),
            "pv",
            "Fn::Join[0]: expected a string",
        ),
    ];
    for (expr, p, want) in cases {
        let err = eval_out(expr.clone(), p).expect_err(&expr.to_string());
        assert!(
            err.to_string().contains(want),
            "{expr}: got {err}, want {want:?}"
        );
    }
}

#[test]
fn template_structure_is_validated_at_registration() {
    let thing = json!({"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}});
    let cert = json!({"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}});
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "(root): must be an object"),
        (json!({"Parameters": {}}), "Resources: is required"),
        (json!({"Resources": {}, "Conditions": {}}), "Conditions is not supported"),
        (json!({"Resources": {}, "Outputs": {}}), "Outputs: unknown top-level key"),
        (json!({"Resources": []}), "Resources: must be an object"),
        (json!({"Parameters": {"N": {"Type": "Number"}}, "Resources": {}}), "Parameters.N.Type: only \"String\" is supported"),
        (json!({"Parameters": {"N": {"Type": "CommaDelimitedList"}}, "Resources": {}}), "only \"String\" is supported"),
        (json!({"Parameters": {"N": {}}, "Resources": {}}), "Parameters.N.Type: is required"),
        (json!({"Parameters": {"N": {"Type": "String", "Default": 1}}, "Resources": {}}), "Parameters.N.Default: must be a string"),
        (json!({"Parameters": {"N": {"Type": "String", "AllowedValues": ["a"]}}, "Resources": {}}), "Parameters.N.AllowedValues: unknown key"),
        (json!({"Mappings": {"M": {"k": {"k2": 1}}}, "Resources": {}}), "Mappings.M.k.k2: must be a string or a list of strings"),
        (json!({"Mappings": {"M": "x"}, "Resources": {}}), "Mappings.M: must be an object"),
        (json!({"Resources": {"x": {"Type": "AWS::S3::Bucket", "Properties": {}}}}), "Resources.x.Type: AWS::S3::Bucket is not a provisioning resource type"),
        (json!({"Resources": {"x": {"Properties": {}}}}), "Resources.x.Type: is required"),
        (json!({"Resources": {"x": {"Type": "AWS::IoT::Thing"}}}), "Resources.x.Properties: is required"),
        (json!({"Resources": {"x": {"Type": "AWS::IoT::Thing", "Properties": {}, "DependsOn": "y"}}}), "Resources.x.DependsOn: unknown key"),
        (json!({"Resources": {"a": thing.clone(), "b": thing.clone()}}), "at most one AWS::IoT::Thing"),
        (json!({"Resources": {"a": cert.clone(), "b": cert.clone()}}), "at most one AWS::IoT::Certificate"),
        (json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {}}}}), "Resources.t.Properties.ThingName: is required"),
        (json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "Color": "red"}}}}), "Resources.t.Properties.Color: unknown property of AWS::IoT::Thing (allowed: ThingName, AttributePayload, ThingTypeName, ThingGroups, BillingGroup, PackageVersions)"),
        (json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "AttributePayload": "x"}}}}), "AttributePayload: must be an object"),
        (json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::If": []}}}}}), "Resources.t.Properties.ThingName: Fn::If is not supported"),
        (json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "AttributePayload": {"a": {"Fn::ImportValue": "x"}}}}}}), "Resources.t.Properties.AttributePayload.a: Fn::ImportValue is not supported"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {}}}}), "Resources.c.Properties.CertificateId: is required"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x", "CertificatePem": "x"}}}}), "Resources.c.Properties.CertificatePem: CertificatePem is a property of JITP and bulk registration templates"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x", "Status": "REVOKED"}}}}), "Status: \"REVOKED\" is not a certificate status"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x", "CertificateSigningRequest": "x"}}}}), "CertificateSigningRequest is a property of JITP"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x", "CACertificatePem": "x"}}}}), "CACertificatePem is a property of JITP"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x", "Colour": "x"}}}}), "Resources.c.Properties.Colour: unknown property of AWS::IoT::Certificate (allowed: CertificateId, Status)"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x"}, "OverrideSettings": {"Status": "MERGE"}}}}), "Resources.c.OverrideSettings.Status: MERGE is only valid for a thing's AttributePayload and ThingGroups"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x"}, "OverrideSettings": {"Status": "KEEP"}}}}), "Resources.c.OverrideSettings.Status: \"KEEP\" is not one of"),
        (json!({"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x"}, "OverrideSettings": {"ThingGroups": "MERGE"}}}}), "Resources.c.OverrideSettings.ThingGroups: unknown override key of AWS::IoT::Certificate (allowed: Status)"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "x"}, "OverrideSettings": {}}}}), "Resources.p.OverrideSettings: OverrideSettings are not available for policy resources"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "x", "Tags": []}}}}), "Resources.p.Properties.Tags: unknown property of AWS::IoT::Policy (allowed: PolicyName, PolicyDocument)"),
        (json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "PackageVersions": {"fw": {"Ref": "Nope"}}}}}}), "Resources.t.Properties.PackageVersions.fw.Ref"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {}}}}), "needs a PolicyName or a PolicyDocument"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {"Version": "2012-10-17"}}}}}), "Resources.p.Properties.PolicyDocument: policy document Statement: is required"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{not json"}}}}), "PolicyDocument: policy document is not valid JSON"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{}"}}}, "DeviceConfiguration": {"x": {"Ref": "p"}}}), "Version: is required"),
        (json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "n"}}}, "DeviceConfiguration": []}), "DeviceConfiguration: must be an object"),
        (json!({"Parameters": {"t": {"Type": "String"}}, "Resources": {"t": thing.clone()}}), "Resources.t: a resource must not have the name of a parameter"),
        (
            json!({"Resources": {
                "t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "p"}}},
                "p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": {"Fn::Sub": "${t}-policy"}}}}}),
            "circular reference: p -> t -> p",
        ),
        (
            json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "t"}}}}}),
            "circular reference: t -> t",
        ),
        (
            json!({"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}}},
                                 "t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "p"}}}}}),
            "resource p has no PolicyName, so it cannot be referred to",
        ),
        (
            json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}, "OverrideSettings": {"ThingTypeName": "MERGE"}}}}),
            "OverrideSettings.ThingTypeName: MERGE is only valid for AttributePayload and ThingGroups",
        ),
        (
            json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}, "OverrideSettings": {"ThingGroups": "KEEP"}}}}),
            "\"KEEP\" is not one of DO_NOTHING, REPLACE, FAIL, MERGE",
        ),
        (
            json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}, "OverrideSettings": {"ThingGroups": "FAIL", "THING_GROUPS": "FAIL"}}}}),
            "ThingGroups is given twice",
        ),
        (
            json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}, "OverrideSettings": {"Shadow": "FAIL"}}}}),
            "OverrideSettings.Shadow: unknown override key",
        ),
        (
            json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}, "OverrideSettings": {"ThingGroups": 1}}}}),
            "must be DO_NOTHING, REPLACE, FAIL or MERGE",
        ),
    ];
    for (body, want) in cases {
        let err = Template::parse(&body.to_string()).expect_err(&body.to_string());
        assert!(
            err.to_string().contains(want),
            "{body}: got {err}, want {want:?}"
        );
        assert_eq!(err.error_code(), "InvalidRequestException");
    }
}

#[test]
fn size_and_json_limits() {
    let padding = "x".repeat(MAX_TEMPLATE_CHARS);
    let big = json!({"Resources": {}, "DeviceConfiguration": {"pad": padding}}).to_string();
    match Template::parse(&big) {
        Err(TemplateError::TooLarge { size }) => assert_eq!(size, big.chars().count()),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Exactly at the limit is accepted.
    let base = json!({"Resources": {}, "DeviceConfiguration": {"pad": ""}}).to_string();
    let fill = "y".repeat(MAX_TEMPLATE_CHARS - base.chars().count());
    let at_limit = json!({"Resources": {}, "DeviceConfiguration": {"pad": fill}}).to_string();
    assert_eq!(at_limit.chars().count(), MAX_TEMPLATE_CHARS);
    let plan = Template::parse(&at_limit)
        .expect("a template of exactly the limit registers")
        .evaluate(&BTreeMap::new(), CERT_ID)
        .expect("evaluates");
    assert_eq!(plan.device_configuration["pad"], fill);

    let err = Template::parse("{\"Resources\": ").expect_err("truncated JSON");
    assert!(matches!(err, TemplateError::Json(_)), "{err:?}");
    assert_eq!(err.error_code(), "InvalidRequestException");
}

#[test]
fn parameters_defaults_and_missing() {
    let body = json!({
        "Parameters": {
            "Required": {"Type": "String", "Description": "no default"},
            "Optional": {"Type": "String", "Default": "fallback"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {},
        "DeviceConfiguration": {
            "r": {"Ref": "Required"}, "o": {"Ref": "Optional"}, "c": {"Ref": "AWS::IoT::Certificate::Id"}
        }
    })
    .to_string();
    let t = Template::parse(&body).expect("parses");
    assert_eq!(
        t.parameter_names().collect::<Vec<_>>(),
        ["Optional", "Required"]
    );

    // (request parameters, expected r, o, c) or the missing parameter's name
    let ok_cases = [
        (params(&[("Required", "v")]), ("v", "fallback")),
        (
            params(&[("Required", "v"), ("Optional", "given")]),
            ("v", "given"),
        ),
        // Undeclared parameters are ignored; the pseudo parameter cannot be forged.
        (
            params(&[
                ("Required", "v"),
                ("Extra", "x"),
                ("AWS::IoT::Certificate::Id", "forged"),
            ]),
            ("v", "fallback"),
        ),
    ];
    for (p, (r, o)) in ok_cases {
        let plan = t
            .evaluate(&p, CERT_ID)
            .unwrap_or_else(|e| panic!("{p:?}: {e}"));
        assert_eq!(plan.device_configuration["r"], r);
        assert_eq!(plan.device_configuration["o"], o);
        assert_eq!(plan.device_configuration["c"], CERT_ID);
        assert_eq!(plan.thing, None);
        assert_eq!(plan.certificate, None);
        assert!(plan.policies.is_empty());
    }
    for p in [params(&[]), params(&[("Optional", "x")])] {
        let err = t.evaluate(&p, CERT_ID).expect_err("Required is missing");
        assert_eq!(
            err,
            TemplateError::MissingParameter {
                name: "Required".into()
            }
        );
        assert!(err
            .to_string()
            .contains("parameter Required was not provided"));
        assert_eq!(err.error_code(), "InvalidRequestException");
    }
}

#[test]
fn resources_evaluate_to_a_plan() {
    let body = json!({
        "Parameters": {"Serial": {"Type": "String"}, "Groups": {"Type": "String", "Default": "g1,g2"}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "OverrideSettings": {"ATTRIBUTE_PAYLOAD": "merge", "THING_TYPE_NAME": "FAIL", "THING_GROUPS": "REPLACE"},
                "Properties": {
                    "ThingName": {"Fn::Sub": "dev_${Serial}"},
                    "AttributePayload": {"serial": {"Ref": "Serial"}, "version": "v1"},
                    "ThingTypeName": "gateway",
                    "ThingGroups": {"Fn::Split": [",", {"Ref": "Groups"}]},
                    "BillingGroup": "standard"
                }
            },
            "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "inactive"}},
            "a_named": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": {"Fn::Join": ["-", ["policy", {"Ref": "Serial"}]]}}},
            "b_object": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"}]}}},
            "c_string": {"Type": "AWS::IoT::Policy", "Properties": {
                "PolicyName": "inline",
                "PolicyDocument": "{\"Version\": \"2012-10-17\", \"Statement\": {\"Effect\": \"Allow\", \"Action\": \"iot:Publish\", \"Resource\": \"*\"}}"}},
            "d_sub": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {"Fn::Sub":
                "{\"Version\": \"2012-10-17\", \"Statement\": {\"Effect\": \"Allow\", \"Action\": \"iot:Publish\", \"Resource\": \"arn:aws:iot:*:*:topic/${thing}/${!iot:ClientId}\"}}"}}}
        }
    })
    .to_string();
    let plan = Template::parse(&body)
        .expect("parses")
        .evaluate(&params(&[("Serial", "0042")]), CERT_ID)
        .expect("evaluates");

    let thing = plan.thing.expect("a thing");
    assert_eq!(
        thing,
        ThingSpec {
            thing_name: "dev_0042".into(),
            attributes: params(&[("serial", "0042"), ("version", "v1")]),
            thing_type_name: Some("gateway".into()),
            thing_groups: vec!["g1".into(), "g2".into()],
            billing_group: Some("standard".into()),
            overrides: OverrideSettings {
                attribute_payload: OverrideAction::Merge,
                thing_type_name: OverrideAction::Fail,
                thing_groups: OverrideAction::Replace,
            },
        }
    );
    assert_eq!(
        plan.certificate,
        Some(CertificateSpec {
            certificate_id: CERT_ID.into(),
            status: CertStatusSpec::Inactive
        })
    );
    assert_eq!(plan.policies.len(), 4);
    assert_eq!(plan.policies[0], PolicySpec::Named("policy-0042".into()));
    let docs: Vec<(Option<&str>, &str)> = plan.policies[1..]
        .iter()
        .map(|p| match p {
            PolicySpec::Document { name, document } => (name.as_deref(), document.as_str()),
            PolicySpec::Named(n) => panic!("unexpected named policy {n}"),
        })
        .collect();
    assert_eq!(docs[0].0, None);
    assert!(
        docs[0]
            .1
            .contains("client/${iot:Connection.Thing.ThingName}"),
        "{}",
        docs[0].1
    );
    assert_eq!(docs[1].0, Some("inline"));
    assert!(
        docs[2].1.contains("topic/dev_0042/${iot:ClientId}"),
        "{}",
        docs[2].1
    );
    for (_, doc) in docs {
        PolicyDocument::parse(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
    }
    assert!(plan.device_configuration.is_empty());
}

#[test]
fn certificate_status_and_id() {
    let template = |status: Option<&str>, id: Value| {
        let mut props = json!({"CertificateId": id});
        if let Some(s) = status {
            props["Status"] = json!(s);
        }
        json!({"Parameters": {"S": {"Type": "String", "Default": "active"}},
               "Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": props}}})
        .to_string()
    };
    let cert_ref = json!({"Ref": "AWS::IoT::Certificate::Id"});
    let cases = [
        (Some("Active"), CertStatusSpec::Active),
        (Some("ACTIVE"), CertStatusSpec::Active),
        (Some("active"), CertStatusSpec::Active),
        (Some("Inactive"), CertStatusSpec::Inactive),
        (Some("INACTIVE"), CertStatusSpec::Inactive),
        (None, CertStatusSpec::Active),
    ];
    for (status, want) in cases {
        let plan = Template::parse(&template(status, cert_ref.clone()))
            .expect("parses")
            .evaluate(&BTreeMap::new(), CERT_ID)
            .expect("evaluates");
        assert_eq!(plan.certificate.expect("cert").status, want, "{status:?}");
    }
    // Status from a parameter is checked at evaluation.
    let body = json!({"Parameters": {"S": {"Type": "String"}},
        "Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": cert_ref.clone(), "Status": {"Ref": "S"}}}}})
    .to_string();
    let t = Template::parse(&body).expect("parses");
    let plan = t
        .evaluate(&params(&[("S", "Inactive")]), CERT_ID)
        .expect("evaluates");
    assert_eq!(
        plan.certificate.expect("cert").status,
        CertStatusSpec::Inactive
    );
    let err = t
        .evaluate(&params(&[("S", "PENDING_ACTIVATION")]), CERT_ID)
        .expect_err("bad status");
    assert!(
        err.to_string().contains("Resources.c.Properties.Status"),
        "{err}"
    );

    // The fleet rule: the certificate must be the one being registered.
    let err = Template::parse(&template(None, json!("someotherid")))
        .expect("parses")
        .evaluate(&BTreeMap::new(), CERT_ID)
        .expect_err("another certificate");
    assert!(
        err.to_string()
            .contains("Resources.c.Properties.CertificateId: resolves to \"someotherid\""),
        "{err}"
    );
    assert_eq!(err.error_code(), "InvalidRequestException");
}

#[test]
fn registry_names_are_checked_at_evaluation() {
    let body = json!({"Parameters": {"N": {"Type": "String"}, "A": {"Type": "String", "Default": "ok"}, "G": {"Type": "String", "Default": "grp"}},
        "Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Ref": "N"}, "AttributePayload": {"a": {"Ref": "A"}}, "ThingGroups": [{"Ref": "G"}]}}}})
    .to_string();
    let t = Template::parse(&body).expect("parses");
    let long = "n".repeat(129);
    let cases = [
        (params(&[("N", "good:name_1-2")]), None),
        (params(&[("N", "")]), Some("is not a valid thing name")),
        (
            params(&[("N", "has space")]),
            Some("is not a valid thing name"),
        ),
        (params(&[("N", &long)]), Some("is not a valid thing name")),
        (
            params(&[("N", "x"), ("A", "bad value!")]),
            Some("AttributePayload.a: \"bad value!\" is not a valid attribute value"),
        ),
        (
            params(&[("N", "x"), ("G", "bad/group")]),
            Some("ThingGroups: \"bad/group\" is not a valid thing group name"),
        ),
    ];
    for (p, want) in cases {
        match (t.evaluate(&p, CERT_ID), want) {
            (Ok(plan), None) => assert_eq!(plan.thing.expect("thing").thing_name, p["N"]),
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{p:?}: got {e}, want {w:?}"),
            (r, w) => panic!("{p:?}: got {r:?}, want {w:?}"),
        }
    }
}

fn spec(overrides: OverrideSettings) -> ThingSpec {
    ThingSpec {
        thing_name: "gw_1".into(),
        attributes: params(&[("a", "new"), ("c", "3")]),
        thing_type_name: Some("newtype".into()),
        thing_groups: vec!["g2".into(), "g3".into()],
        billing_group: None,
        overrides,
    }
}

fn existing() -> ExistingThing {
    ExistingThing {
        attributes: params(&[("a", "old"), ("b", "2")]),
        thing_type_name: Some("oldtype".into()),
        thing_groups: vec!["g1".into(), "g2".into()],
    }
}

#[test]
fn override_settings_each_action() {
    use OverrideAction::*;
    let set = |a, t, g| OverrideSettings {
        attribute_payload: a,
        thing_type_name: t,
        thing_groups: g,
    };
    let cases: Vec<(OverrideSettings, Result<ExistingThing, &str>)> = vec![
        (OverrideSettings::default(), Ok(existing())),
        (
            set(Replace, Replace, Replace),
            Ok(ExistingThing {
                attributes: params(&[("a", "new"), ("c", "3")]),
                thing_type_name: Some("newtype".into()),
                thing_groups: vec!["g2".into(), "g3".into()],
            }),
        ),
        (
            set(Merge, DoNothing, Merge),
            Ok(ExistingThing {
                attributes: params(&[("a", "new"), ("b", "2"), ("c", "3")]),
                thing_type_name: Some("oldtype".into()),
                thing_groups: vec!["g1".into(), "g2".into(), "g3".into()],
            }),
        ),
        (
            set(Fail, DoNothing, DoNothing),
            Err("different AttributePayload"),
        ),
        (
            set(DoNothing, Fail, DoNothing),
            Err("different ThingTypeName"),
        ),
        (
            set(DoNothing, DoNothing, Fail),
            Err("different ThingGroups"),
        ),
        (set(DoNothing, Merge, DoNothing), Err("MERGE is only valid")),
    ];
    for (overrides, want) in cases {
        let got = apply_overrides(&existing(), &spec(overrides));
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{overrides:?}"),
            (Err(e), Err(w)) => {
                assert!(
                    e.to_string().contains(w),
                    "{overrides:?}: got {e}, want {w:?}"
                );
                let code = if w.contains("MERGE") {
                    "InvalidRequestException"
                } else {
                    "ResourceConflictsException"
                };
                assert_eq!(e.error_code(), code, "{e}");
            }
            (g, w) => panic!("{overrides:?}: got {g:?}, want {w:?}"),
        }
    }
}

#[test]
fn fail_passes_when_nothing_would_change() {
    let fail = OverrideSettings {
        attribute_payload: OverrideAction::Fail,
        thing_type_name: OverrideAction::Fail,
        thing_groups: OverrideAction::Fail,
    };
    let same = ExistingThing {
        attributes: params(&[("a", "new"), ("c", "3")]),
        thing_type_name: Some("newtype".into()),
        // Group order does not matter.
        thing_groups: vec!["g3".into(), "g2".into()],
    };
    let result =
        apply_overrides(&same, &spec(fail)).expect("an identical re-registration succeeds");
    assert_eq!(result, same);
}

#[test]
fn override_settings_parse_from_templates() {
    use OverrideAction::*;
    let with = |o: Value| {
        json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}, "OverrideSettings": o}}})
            .to_string()
    };
    let cases = [
        (json!({}), (DoNothing, DoNothing, DoNothing)),
        (
            json!({"AttributePayload": "REPLACE"}),
            (Replace, DoNothing, DoNothing),
        ),
        (
            json!({"ThingTypeName": "fail"}),
            (DoNothing, Fail, DoNothing),
        ),
        (
            json!({"ThingGroups": "Merge"}),
            (DoNothing, DoNothing, Merge),
        ),
        (
            json!({"ATTRIBUTE_PAYLOAD": "MERGE", "THING_TYPE_NAME": "REPLACE", "THING_GROUPS": "DO_NOTHING"}),
            (Merge, Replace, DoNothing),
        ),
    ];
    for (o, (a, t, g)) in cases {
        let plan = Template::parse(&with(o.clone()))
            .expect("parses")
            .evaluate(&BTreeMap::new(), CERT_ID)
            .expect("evaluates");
        let got = plan.thing.expect("thing").overrides;
        assert_eq!(
            got,
            OverrideSettings {
                attribute_payload: a,
                thing_type_name: t,
                thing_groups: g
            },
            "{o}"
        );
    }
    // No OverrideSettings at all: DO_NOTHING everywhere.
    let plan = Template::parse(
        &json!({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}}}})
            .to_string(),
    )
    .expect("parses")
    .evaluate(&BTreeMap::new(), CERT_ID)
    .expect("evaluates");
    assert_eq!(
        plan.thing.expect("thing").overrides,
        OverrideSettings::default()
    );
}

fn repo_template(name: &str) -> Template {
    let path = format!("{}/../templates/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Template::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_repository_template_parses_under_a_valid_name() {
    let dir = format!("{}/../templates", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("templates/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 name");
            validate_name(stem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let text = std::fs::read_to_string(&path).expect("readable");
            Template::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected ProdTemplate and RotationTemplate, found {seen}"
    );
}

#[test]
fn prod_template_provisions_a_gateway() {
    let t = repo_template("ProdTemplate.json");
    let plan = t
        .evaluate(
            &params(&[("SerialNumber", "0001"), ("Site", "plant-a")]),
            CERT_ID,
        )
        .expect("evaluates");
    let thing = plan.thing.expect("thing");
    assert_eq!(thing.thing_name, "gw_0001");
    assert_eq!(
        thing.attributes,
        params(&[
            ("serialNumber", "0001"),
            ("site", "plant-a"),
            ("hardwareRevision", "unknown"),
            ("provisionedWith", "ProdTemplate")
        ])
    );
    assert_eq!(thing.thing_groups, ["gateways", "gateways-plant-a"]);
    assert_eq!(thing.overrides.attribute_payload, OverrideAction::Merge);
    // The pre-provisioning hook creates a new thing before the template
    // runs (templates/README.md), so its groups are merged in.
    assert_eq!(thing.overrides.thing_groups, OverrideAction::Merge);
    assert_eq!(
        plan.certificate,
        Some(CertificateSpec {
            certificate_id: CERT_ID.into(),
            status: CertStatusSpec::Active
        })
    );
    assert_eq!(plan.policies, [PolicySpec::Named("device".into())]);
    assert_eq!(
        plan.device_configuration,
        params(&[
            ("thingName", "gw_0001"),
            ("telemetryTopic", "things/gw_0001/telemetry"),
            ("commandTopic", "cmd/gw_0001"),
            ("rotationTemplate", "RotationTemplate"),
        ])
    );

    // Defaults, and a site without a mapping.
    let plan = t
        .evaluate(
            &params(&[("SerialNumber", "7"), ("ThingNamePrefix", "edge")]),
            CERT_ID,
        )
        .expect("evaluates");
    assert_eq!(
        plan.thing.expect("thing").thing_groups,
        ["gateways", "gateways-unassigned"]
    );
    let err = t
        .evaluate(&params(&[("SerialNumber", "7"), ("Site", "mars")]), CERT_ID)
        .expect_err("unknown site");
    assert!(
        err.to_string()
            .contains("Mappings has no entry SiteGroups.mars.Group"),
        "{err}"
    );
    let err = t.evaluate(&params(&[]), CERT_ID).expect_err("no serial");
    assert_eq!(
        err,
        TemplateError::MissingParameter {
            name: "SerialNumber".into()
        }
    );
}

#[test]
fn rotation_template_keeps_the_existing_thing() {
    let t = repo_template("RotationTemplate.json");
    let new_cert = "b".repeat(64);
    let plan = t
        .evaluate(&params(&[("ThingName", "gw_0001")]), &new_cert)
        .expect("evaluates");
    let thing = plan.thing.expect("thing");
    assert_eq!(thing.thing_name, "gw_0001");
    assert_eq!(thing.overrides, OverrideSettings::default());
    let before = ExistingThing {
        attributes: params(&[("serialNumber", "0001"), ("site", "plant-a")]),
        thing_type_name: Some("gateway".into()),
        thing_groups: vec!["gateways".into(), "gateways-plant-a".into()],
    };
    assert_eq!(
        apply_overrides(&before, &thing).expect("no conflict"),
        before
    );
    assert_eq!(
        plan.certificate,
        Some(CertificateSpec {
            certificate_id: new_cert.clone(),
            status: CertStatusSpec::Active
        })
    );
    assert_eq!(plan.policies, [PolicySpec::Named("device".into())]);
    assert_eq!(
        plan.device_configuration,
        params(&[
            ("thingName", "gw_0001"),
            ("rotatedCertificateId", &new_cert)
        ])
    );
    assert_eq!(
        t.evaluate(&params(&[]), &new_cert).expect_err("no name"),
        TemplateError::MissingParameter {
            name: "ThingName".into()
        }
    );
}

#[test]
fn seed_readme_sample_template_registers() {
    // The reference client's sample, verbatim but for the policy name.
    let body = r#"{
      "Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
      "Resources": {
        "certificate": {"Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}, "Type": "AWS::IoT::Certificate"},
        "policy": {"Properties": {"PolicyName": "full_citizen_role"}, "Type": "AWS::IoT::Policy"},
        "thing": {
          "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING", "ThingTypeName": "REPLACE"},
          "Properties": {"AttributePayload": {}, "ThingGroups": [], "ThingName": {"Fn::Join": ["", ["born_", {"Ref": "SerialNumber"}]]}},
          "Type": "AWS::IoT::Thing"
        }
      },
      "DeviceConfiguration": {}
    }"#;
    let plan = Template::parse(body)
        .expect("parses")
        .evaluate(&params(&[("SerialNumber", "42")]), CERT_ID)
        .expect("evaluates");
    let thing = plan.thing.expect("thing");
    assert_eq!(thing.thing_name, "born_42");
    assert!(thing.attributes.is_empty());
    assert!(thing.thing_groups.is_empty());
    assert_eq!(
        plan.policies,
        [PolicySpec::Named("full_citizen_role".into())]
    );
    assert!(plan.device_configuration.is_empty());
}
