#!/usr/bin/env python3
"""Builds prov-agent.template.json, the CloudFormation template of the AWS
side, from the repository's own files, so that what is deployed is what the
emulator tests: the IoT policies (policies/*.json), the provisioning
templates (templates/*.json), the pre-provisioning hook
(templates/hooks/provisioning_hook.py) and the rotation-report Lambda
(cloud/rotation_report.py).

    deploy/aws/build_template.py            # rewrites prov-agent.template.json
    deploy/aws/build_template.py --check    # fails if it is not up to date

The Lambdas' code comes from an S3 bucket (deploy.sh zips and uploads it;
the hook's zip is built by package_hook.py). Hardware attestation
(docs/attestation.md) is off unless the parameter AttestationCa names the
CA file in the hook's zip (deploy.sh --attestation-ca sets it): with the
defaults the hook's environment is what it was before attestation."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = pathlib.Path(__file__).resolve().parent / "prov-agent.template.json"


def load(path):
    return json.loads((ROOT / path).read_text())


def assumed_by(service):
    """The trust policy of a role that `service` takes on."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sts:AssumeRole",
        }],
    }


def lambda_role(name, actions):
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": assumed_by("lambda.amazonaws.com"),
            "ManagedPolicyArns": [
                {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}
            ],
            "Policies": [{
                "PolicyName": name,
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
                },
            }],
        },
    }


def function(description, role, handler, key_parameter, environment=None):
    props = {
        "Description": description,
        "Runtime": "python3.12",
        "Handler": handler,
        "Role": {"Fn::GetAtt": [role, "Arn"]},
        "Timeout": 5,
        "MemorySize": 256,
        "Code": {"S3Bucket": {"Ref": "CodeBucket"}, "S3Key": {"Ref": key_parameter}},
    }
    if environment:
        props["Environment"] = {"Variables": environment}
    return {"Type": "AWS::Lambda::Function", "Properties": props}


def if_attestation(value):
    """`value` when the stack has attestation on, else nothing."""
    return {"Fn::If": ["Attestation", value, {"Ref": "AWS::NoValue"}]}


ATTESTATION_ON = {"Fn::Not": [{"Fn::Equals": [{"Ref": "AttestationCa"}, ""]}]}


def template():
    resources = {}
    # IoT policies, as the emulator tests them.
    for name in ("claim", "device", "rotation"):
        resources[f"{name.capitalize()}Policy"] = {
            "Type": "AWS::IoT::Policy",
            "Properties": {"PolicyName": name, "PolicyDocument": load(f"policies/{name}.json")},
        }
    # The claim certificate (registered beforehand) may use the claim policy.
    resources["ClaimPolicyAttachment"] = {
        "Type": "AWS::IoT::PolicyPrincipalAttachment",
        "Properties": {
            "PolicyName": {"Ref": "ClaimPolicy"},
            "Principal": {"Ref": "ClaimCertificateArn"},
        },
    }
    # The role fleet provisioning uses to register things.
    resources["ProvisioningRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": assumed_by("iot.amazonaws.com"),
            "ManagedPolicyArns": [
                {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSIoTThingsRegistration"}
            ],
        },
    }
    # The pre-provisioning hook that refuses takeovers (templates/README.md).
    resources["HookRole"] = lambda_role("prov-agent-hook", [
        "iot:CreateThing", "iot:DescribeThing", "iot:UpdateThing",
        "iot:ListThingPrincipals", "iot:DescribeCertificate",
    ])
    # With AttestationCa empty (the default), ATTESTATION_CA and
    # ATTESTATION_CHECK_SERIAL are not set at all: the hook treats a set but
    # empty ATTESTATION_CA as a broken setting and refuses everything.
    resources["HookFunction"] = function(
        "prov-agent pre-provisioning hook: refuses takeovers of existing things "
        "and, with AttestationCa, requests the gateway's TPM does not attest",
        "HookRole", "provisioning_hook.lambda_handler", "HookCodeKey",
        {
            "THING_NAME_PREFIXES": {"Ref": "ThingNamePrefixes"},
            "SITES": {"Ref": "Sites"},
            "ATTESTATION_CA": if_attestation({"Ref": "AttestationCa"}),
            "ATTESTATION_CHECK_SERIAL": if_attestation({"Ref": "AttestationCheckSerial"}),
        },
    )
    resources["HookPermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Fn::GetAtt": ["HookFunction", "Arn"]},
            "Principal": "iot.amazonaws.com",
            "SourceAccount": {"Ref": "AWS::AccountId"},
        },
    }
    # The thing groups ProdTemplate puts things in must exist before
    # RegisterThing (AWS refuses to create them there).
    prod = load("templates/ProdTemplate.json")
    groups = {"gateways"} | {
        site["Group"] for site in prod["Mappings"]["SiteGroups"].values()
    }
    for group in sorted(groups):
        logical = "Group" + "".join(w.capitalize() for w in group.split("-"))
        resources[logical] = {
            "Type": "AWS::IoT::ThingGroup",
            "Properties": {"ThingGroupName": group},
        }
    for name in ("ProdTemplate", "RotationTemplate"):
        resources[name] = {
            "Type": "AWS::IoT::ProvisioningTemplate",
            "DependsOn": ["HookPermission"] + sorted(
                r for r in resources if r.startswith("Group")
            ),
            "Properties": {
                "TemplateName": name,
                "Enabled": True,
                "ProvisioningRoleArn": {"Fn::GetAtt": ["ProvisioningRole", "Arn"]},
                "TemplateBody": json.dumps(load(f"templates/{name}.json"), indent=2),
                "PreProvisioningHook": {
                    "TargetArn": {"Fn::GetAtt": ["HookFunction", "Arn"]},
                    "PayloadVersion": "2020-04-01",
                },
            },
        }
    # The rotation report: the old certificates go INACTIVE once the device
    # says, with its new certificate, that it moved (cloud/README.md).
    resources["ReportRole"] = lambda_role("prov-agent-rotation-report", [
        "iot:DescribeCertificate", "iot:ListThingPrincipals", "iot:ListPrincipalThings",
        "iot:UpdateCertificate", "iot:DetachThingPrincipal",
    ])
    resources["ReportFunction"] = function(
        "prov-agent rotation report: deactivates the certificates a gateway replaced",
        "ReportRole", "rotation_report.lambda_handler", "ReportCodeKey",
    )
    resources["ReportRule"] = {
        "Type": "AWS::IoT::TopicRule",
        "Properties": {
            "TopicRulePayload": {
                "AwsIotSqlVersion": "2016-03-23",
                "RuleDisabled": False,
                "Sql": (
                    "SELECT thingName, newCertificateId, oldCertificateIds, oldCertificateId, "
                    "topic(2) AS topicThing, principal() AS principal "
                    "FROM 'things/+/rotation'"
                ),
                "Actions": [{"Lambda": {"FunctionArn": {"Fn::GetAtt": ["ReportFunction", "Arn"]}}}],
            }
        },
    }
    resources["ReportPermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Fn::GetAtt": ["ReportFunction", "Arn"]},
            "Principal": "iot.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": ["ReportRule", "Arn"]},
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "prov-agent: the AWS IoT side of fleet provisioning and certificate "
                       "rotation (built by deploy/aws/build_template.py; do not edit)",
        "Parameters": {
            "ClaimCertificateArn": {
                "Type": "String",
                "Description": "ARN of the fleet's claim certificate, registered and ACTIVE",
            },
            "CodeBucket": {"Type": "String", "Description": "S3 bucket holding the Lambdas' code"},
            "HookCodeKey": {"Type": "String", "Default": "prov-agent/provisioning_hook.zip"},
            "ReportCodeKey": {"Type": "String", "Default": "prov-agent/rotation_report.zip"},
            "ThingNamePrefixes": {"Type": "String", "Default": "gw"},
            "Sites": {"Type": "String", "Default": "default,plant-a,plant-b"},
            "AttestationCa": {
                "Type": "String",
                "Default": "",
                "AllowedPattern": "^(/[^\\s]+)?$",
                "Description": "Hardware attestation (docs/attestation.md): the path, in the hook "
                               "Lambda, of the PEM file of the manufacturer CA certificates "
                               "(deploy.sh --attestation-ca puts it at "
                               "/var/task/attestation-ca.pem); empty: attestation off",
            },
            "AttestationCheckSerial": {
                "Type": "String",
                "Default": "0",
                "AllowedValues": ["0", "1"],
                "Description": "1: the gateway's serial must be the one in its attestation key "
                               "certificate (needs AttestationCa; deploy.sh --check-serial)",
            },
        },
        "Conditions": {"Attestation": ATTESTATION_ON},
        "Rules": {
            "CheckSerialNeedsAttestation": {
                "RuleCondition": {"Fn::Equals": [{"Ref": "AttestationCheckSerial"}, "1"]},
                "Assertions": [{
                    "Assert": ATTESTATION_ON,
                    "AssertDescription": "AttestationCheckSerial=1 needs AttestationCa "
                                         "(deploy.sh --attestation-ca FILE --check-serial)",
                }],
            },
        },
        "Resources": resources,
        "Outputs": {
            "HookFunctionArn": {"Value": {"Fn::GetAtt": ["HookFunction", "Arn"]}},
            "ReportFunctionArn": {"Value": {"Fn::GetAtt": ["ReportFunction", "Arn"]}},
        },
    }


def main():
    text = json.dumps(template(), indent=2, sort_keys=True) + "\n"
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            sys.exit(f"{OUT} is not what deploy/aws/build_template.py builds: run it")
        return
    OUT.write_text(text)


if __name__ == "__main__":
    main()
