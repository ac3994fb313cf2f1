//! Every resource property and OverrideSettings key AWS documents for a
//! fleet provisioning template, seen by a device over real TLS and MQTT:
//! a template using all of them registers a thing the device then connects
//! as; templates AWS's validation refuses are not registered, so a device
//! naming one gets ResourceNotFoundException.

mod common;

use common::*;
use iotcore_emulator::{CertStatus, RegistryError};
use serde_json::json;

/// A fleet template with every documented property of the thing, the
/// certificate (with its Status override) and the policy.
fn full_template() -> serde_json::Value {
    json!({
        "Parameters": {
            "SerialNumber": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Fn::Join": ["", ["full-", {"Ref": "SerialNumber"}]]},
                    "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
                    "ThingTypeName": "gateway-type",
                    "ThingGroups": ["gateways", "plant-a"],
                    "BillingGroup": "fleet-billing",
                    "PackageVersions": {"firmware": {"versionName": {"Fn::Sub": "1.0-${SerialNumber}"}}}
                },
                "OverrideSettings": {
                    "AttributePayload": "MERGE",
                    "ThingTypeName": "REPLACE",
                    "ThingGroups": "MERGE"
                }
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                    "Status": "ACTIVE"
                },
                "OverrideSettings": {"Status": "DO_NOTHING"}
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
        }
    })
}

#[tokio::test]
async fn a_template_with_every_documented_property_provisions_a_device_that_connects() {
    let emu = start().await;
    emu.registry()
        .create_template("full", &full_template().to_string(), true, None)
        .unwrap();
    // The type, groups and billing group must exist, as on AWS.
    emu.registry().create_objects_named_by("full").unwrap();

    let mut claim = claim_client(&emu, "claim-full", "full").await;
    let (device, token) = create_from_csr(&mut claim).await;
    let (ok, body) = claim
        .call(
            &register_topic("full"),
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "7"}}),
        )
        .await;
    assert!(ok, "{body}");
    assert_eq!(body["thingName"], "full-7");

    let thing = emu.registry().thing("full-7").unwrap().unwrap();
    assert_eq!(thing.thing_type_name.as_deref(), Some("gateway-type"));
    assert_eq!(thing.thing_groups, vec!["gateways", "plant-a"]);
    assert_eq!(thing.billing_group.as_deref(), Some("fleet-billing"));
    assert_eq!(
        thing.attributes.get("serial").map(String::as_str),
        Some("7")
    );
    assert_eq!(thing.certificates, vec![device.certificate_id.clone()]);
    // Status ACTIVE applies to the new certificate whatever its override:
    // there is no earlier status to keep.
    let cert = emu
        .registry()
        .certificate(&device.certificate_id)
        .unwrap()
        .unwrap();
    assert_eq!(cert.status, CertStatus::Active);
    assert!(connect(&emu, &device, "full-7").await.is_ok());
}

#[tokio::test]
async fn templates_aws_refuses_are_not_registered_and_a_device_cannot_use_them() {
    let emu = start().await;
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut t = full_template();
        edit(&mut t);
        t.to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad-prop",
            with(&|t| t["Resources"]["thing"]["Properties"]["Colour"] = json!("red")),
            "Resources.thing.Properties.Colour: unknown property of AWS::IoT::Thing",
        ),
        (
            "merge-status",
            with(&|t| t["Resources"]["certificate"]["OverrideSettings"]["Status"] = json!("MERGE")),
            "Resources.certificate.OverrideSettings.Status: MERGE is only valid",
        ),
        (
            "csr-prop",
            with(&|t| {
                t["Resources"]["certificate"]["Properties"]["CertificateSigningRequest"] =
                    json!("x")
            }),
            "CertificateSigningRequest is a property of JITP and bulk registration templates",
        ),
        (
            "policy-override",
            with(&|t| t["Resources"]["policy"]["OverrideSettings"] = json!({})),
            "OverrideSettings are not available for policy resources",
        ),
    ];
    for (name, body, want) in &cases {
        let err = emu
            .registry()
            .create_template(name, body, true, None)
            .expect_err(name);
        assert!(matches!(err, RegistryError::Template { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{name}: {err}");
    }

    let (_, csr) = p256_csr();
    for (name, _, _) in &cases {
        let mut claim = claim_client(&emu, &format!("claim-{name}"), name).await;
        let (ok, body) = claim
            .call(CSR_TOPIC, &json!({"certificateSigningRequest": csr}))
            .await;
        assert!(ok, "{body}");
        let (ok, body) = claim
            .call(
                &register_topic(name),
                &json!({
                    "certificateOwnershipToken": body["certificateOwnershipToken"],
                    "parameters": {"SerialNumber": "1"},
                }),
            )
            .await;
        assert!(!ok, "{name}: {body}");
        assert_eq!(body["statusCode"], 404, "{body}");
        assert_eq!(body["errorCode"], "ResourceNotFoundException", "{body}");
    }
}
