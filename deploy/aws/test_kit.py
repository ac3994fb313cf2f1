"""Tests of the AWS-side kit without AWS (ci/test-aws-kit.sh): the
CloudFormation template is what build_template.py makes from the
repository's files and passes cfn-lint; the rotation-report Lambda, run
unchanged against moto's IoT, deactivates and detaches the replaced
certificate of a genuine report and nothing for a forged one; rotate.py
creates the rotation job and publishes the command as the daemon expects."""

import json
import os
import pathlib
import subprocess
import sys
import unittest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "cloud"), str(HERE)]

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
for leaked in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(leaked, None)

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

import rotate  # noqa: E402
import rotation_report  # noqa: E402


class Template(unittest.TestCase):
    def test_it_is_built_from_the_repository(self):
        subprocess.run([sys.executable, str(HERE / "build_template.py"), "--check"], check=True)
        template = json.loads((HERE / "prov-agent.template.json").read_text())
        body = json.loads(template["Resources"]["ProdTemplate"]["Properties"]["TemplateBody"])
        self.assertEqual(body, json.loads((ROOT / "templates/ProdTemplate.json").read_text()))
        device = template["Resources"]["DevicePolicy"]["Properties"]["PolicyDocument"]
        self.assertEqual(device, json.loads((ROOT / "policies/device.json").read_text()))

    def test_cfn_lint_finds_nothing(self):
        lint = subprocess.run(
            [str(pathlib.Path(sys.executable).parent / "cfn-lint"), str(HERE / "prov-agent.template.json")],
            capture_output=True, text=True,
        )
        self.assertEqual(lint.returncode, 0, lint.stdout + lint.stderr)


@mock_aws
class RotationReport(unittest.TestCase):
    def setUp(self):
        self.iot = boto3.client("iot")
        self.thing = "gw_SN0042"
        self.iot.create_thing(thingName=self.thing)
        self.old = self.certificate(self.thing)
        self.new = self.certificate(self.thing)

    def certificate(self, thing):
        cert = self.iot.create_keys_and_certificate(setAsActive=True)
        self.iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
        return cert

    def status(self, cert):
        return self.iot.describe_certificate(certificateId=cert["certificateId"])[
            "certificateDescription"]["status"]

    def attached(self):
        return set(self.iot.list_thing_principals(thingName=self.thing)["principals"])

    def report(self, principal):
        return rotation_report.lambda_handler({
            "thingName": self.thing,
            "newCertificateId": self.new["certificateId"],
            "oldCertificateIds": [self.old["certificateId"]],
            "topicThing": self.thing,
            "principal": principal,
        })

    def test_a_genuine_report_deactivates_and_detaches_the_old_certificate(self):
        self.report(self.new["certificateId"])
        self.assertEqual(self.status(self.old), "INACTIVE")
        self.assertEqual(self.status(self.new), "ACTIVE")
        self.assertEqual(self.attached(), {self.new["certificateArn"]})

    def test_a_report_from_another_things_certificate_changes_nothing(self):
        self.iot.create_thing(thingName="gw_SN0666")
        thief = self.certificate("gw_SN0666")
        self.report(thief["certificateId"])
        self.assertEqual(self.status(self.old), "ACTIVE")
        self.assertEqual(self.attached(), {self.old["certificateArn"], self.new["certificateArn"]})


@mock_aws
class Rotate(unittest.TestCase):
    def test_a_job_asks_the_things_to_rotate(self):
        iot = boto3.client("iot")
        iot.create_thing(thingName="gw_SN0042")
        rotate.create_job(iot, "rotate-2026-12", ["gw_SN0042"])
        job = iot.describe_job(jobId="rotate-2026-12")["job"]
        self.assertEqual(len(job["targets"]), 1)
        self.assertTrue(job["targets"][0].endswith("thing/gw_SN0042"))
        document = json.loads(iot.get_job_document(jobId="rotate-2026-12")["document"])
        # What the daemon matches (src/daemon/run.rs, JOB_OPERATION).
        self.assertEqual(document, {"operation": "rotate-certificate"})

    def test_the_command_goes_to_the_things_command_topic_without_retain(self):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.iotdata.models import iotdata_backends
        rotate.send_command(boto3.client("iot-data"), ["gw_SN0042", "gw_SN0043"])
        published = iotdata_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].published_payloads
        topics = [topic for topic, _ in published]
        self.assertEqual(topics, ["cmd/gw_SN0042", "cmd/gw_SN0043"])
        self.assertEqual(json.loads(published[0][1]), {"msg": "rotate_cert"})


if __name__ == "__main__":
    unittest.main()
