"""Tests of the AWS-side kit without AWS (ci/test-aws-kit.sh): the
CloudFormation template is what build_template.py makes from the
repository's files and passes cfn-lint; the rotation-report Lambda, run
unchanged against moto's IoT, deactivates and detaches the replaced
certificate of a genuine report and nothing for a forged one; rotate.py
creates the rotation job and publishes the command as the daemon expects.

The hook's zip (package_hook.py, deploy.sh run with a stand-in `aws`):
without attestation it holds provisioning_hook.py alone and the stack keeps
attestation off; with --attestation-ca it holds tpm_attestation.py, the CA
file and cryptography's Linux wheels for the template's runtime, and the
stack's parameters point ATTESTATION_CA at the file. Unzipped and run by a
fresh Python that sees nothing of the repository (the zip built for the
running interpreter: cffi, which cryptography loads, has no abi3 wheel), the
hook imports tpm_attestation and cryptography from the zip, allows a genuine
TPM attestation made by a swtpm (factory/test_attestation.py's helpers) and
refuses, with the reason logged, requests whose attestation is missing or
garbled; only the AWS API is mocked (moto)."""

import base64
import datetime
import hashlib
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import unittest
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "cloud"), str(HERE), str(ROOT / "factory")]

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
for leaked in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(leaked, None)

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

import package_hook  # noqa: E402
import rotate  # noqa: E402
import rotation_report  # noqa: E402
# The swtpm and factory CA helpers (its tests are not loaded here).
import test_attestation as factory  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TEMPLATE = HERE / "prov-agent.template.json"
HOOK = ROOT / "templates" / "hooks" / "provisioning_hook.py"
TPM_ATTESTATION = ROOT / "templates" / "hooks" / "tpm_attestation.py"
NO_VALUE = object()


def resolve(parameters):
    """The template's parameters, conditions, rules and HookFunction's
    environment as CloudFormation resolves them for `parameters` (given as
    deploy.sh's KEY=VALUE overrides; the others take their defaults):
    (environment, names of the rules that fail)."""
    template = json.loads(TEMPLATE.read_text())
    values = {k: p.get("Default") for k, p in template["Parameters"].items()}
    for assignment in parameters:
        key, value = assignment.split("=", 1)
        if key not in values:
            raise AssertionError(f"deploy.sh passes {key}, which the template does not declare")
        declared = template["Parameters"][key]
        if value not in declared.get("AllowedValues", [value]) or not re.fullmatch(
                declared.get("AllowedPattern", ".*"), value):
            raise AssertionError(f"the template does not allow {key}={value!r}")
        values[key] = value
    conditions = {}

    def evaluate(x):
        if isinstance(x, str):
            return x
        (fn, arg), = x.items()
        if fn == "Ref":
            return NO_VALUE if arg == "AWS::NoValue" else values[arg]
        if fn == "Fn::If":
            return evaluate(arg[1] if conditions[arg[0]] else arg[2])
        if fn == "Fn::Not":
            return not evaluate(arg[0])
        if fn == "Fn::Equals":
            return evaluate(arg[0]) == evaluate(arg[1])
        raise AssertionError(f"{fn} is not resolved by this test")

    for name, condition in template.get("Conditions", {}).items():
        conditions[name] = evaluate(condition)
    failed = [
        name for name, rule in template.get("Rules", {}).items()
        if ("RuleCondition" not in rule or evaluate(rule["RuleCondition"]))
        and not all(evaluate(a["Assert"]) for a in rule["Assertions"])
    ]
    variables = template["Resources"]["HookFunction"]["Properties"]["Environment"]["Variables"]
    environment = {k: evaluate(v) for k, v in variables.items()}
    return {k: v for k, v in environment.items() if v is not NO_VALUE}, failed


def wheel_tags(archive, package):
    """The Tag lines of `package`'s WHEEL file in the zip."""
    (wheel,) = [n for n in archive.namelist() if re.fullmatch(rf"{package}-[^/]+\.dist-info/WHEEL", n)]
    return re.findall(r"^Tag: (\S+)$", archive.read(wheel).decode(), re.M)


def make_ca(directory):
    """A manufacturer CA made by factory/manufacturer_ca.py init."""
    p = factory.ca_tool("init", "--dir", directory, "--subject", "Kit Test Manufacturer CA")
    assert p.returncode == 0, p.stderr
    return pathlib.Path(directory) / "ca.pem"


class Template(unittest.TestCase):
    def test_it_is_built_from_the_repository(self):
        subprocess.run([sys.executable, str(HERE / "build_template.py"), "--check"], check=True)
        template = json.loads((HERE / "prov-agent.template.json").read_text())
        body = json.loads(template["Resources"]["ProdTemplate"]["Properties"]["TemplateBody"])
        self.assertEqual(body, json.loads((ROOT / "templates/ProdTemplate.json").read_text()))
        device = template["Resources"]["DevicePolicy"]["Properties"]["PolicyDocument"]
        self.assertEqual(device, json.loads((ROOT / "policies/device.json").read_text()))

    def test_attestation_is_off_unless_asked_for(self):
        # The defaults (and what deploy.sh passes without --attestation-ca):
        # the hook's environment as before attestation.
        for parameters in ([], ["AttestationCa=", "AttestationCheckSerial=0"]):
            self.assertEqual(resolve(parameters), (
                {"THING_NAME_PREFIXES": "gw", "SITES": "default,plant-a,plant-b"}, []))
        env, failed = resolve(["AttestationCa=/var/task/attestation-ca.pem", "AttestationCheckSerial=1"])
        self.assertEqual(failed, [])
        self.assertEqual(env["ATTESTATION_CA"], "/var/task/attestation-ca.pem")
        self.assertEqual(env["ATTESTATION_CHECK_SERIAL"], "1")
        # A serial check without a CA would refuse every request: the stack refuses it.
        self.assertEqual(resolve(["AttestationCheckSerial=1"])[1], ["CheckSerialNeedsAttestation"])
        with self.assertRaisesRegex(AssertionError, "does not allow AttestationCa='attestation-ca.pem'"):
            resolve(["AttestationCa=attestation-ca.pem"])

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


class Package(unittest.TestCase):
    """package_hook.py, the hook's zip."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="aws-kit-package.")
        self.addCleanup(self.tmp.cleanup)
        self.work = pathlib.Path(self.tmp.name)

    def package(self, *args):
        out = self.work / "hook.zip"
        p = subprocess.run([sys.executable, str(HERE / "package_hook.py"), str(out), *map(str, args)],
                           capture_output=True, text=True)
        return p, out

    def test_without_attestation_the_zip_holds_the_hook_alone(self):
        p, out = self.package()
        self.assertEqual(p.returncode, 0, p.stderr)
        with zipfile.ZipFile(out) as z:
            self.assertEqual(z.namelist(), ["provisioning_hook.py"])
            self.assertEqual(z.read("provisioning_hook.py"), HOOK.read_bytes())

    def test_an_arm64_lambda_gets_aarch64_wheels(self):
        p, out = self.package("--attestation-ca", make_ca(self.work / "mca"), "--architecture", "arm64")
        self.assertEqual(p.returncode, 0, p.stderr)
        version, _ = package_hook.hook_runtime()
        with zipfile.ZipFile(out) as z:
            for package in ("cryptography", "cffi"):
                tags = wheel_tags(z, package)
                self.assertTrue(any(wheel_works_on(t, version, "manylinux2014_aarch64") for t in tags), tags)
            cp = "cpython-" + version.replace(".", "")
            self.assertIn(f"_cffi_backend.{cp}-aarch64-linux-gnu.so", z.namelist())

    def test_a_ca_file_of_anything_but_certificates_is_refused(self):
        ca = make_ca(self.work / "mca")
        with_key = self.work / "with-key.pem"
        with_key.write_text(ca.read_text() + (self.work / "mca" / "ca.key").read_text())
        no_pem = self.work / "no-pem.pem"
        no_pem.write_text("not a certificate\n")
        for path, reason in (
            (with_key, "holds a PRIVATE KEY, not only certificates"),
            (no_pem, "holds no PEM certificate"),
            (self.work / "missing.pem", "cannot read it"),
        ):
            with self.subTest(reason):
                p, out = self.package("--attestation-ca", path)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertTrue(p.stderr.startswith(f"package_hook.py: --attestation-ca {path}: {reason}"),
                                p.stderr)
                self.assertFalse(out.exists())


CLAIM_ARN = "arn:aws:iot:eu-west-1:123456789012:cert/" + "a" * 64
FAKE_AWS = """#!{python}
# A stand-in for the AWS CLI: records each call and keeps what s3 cp uploads.
import json, os, pathlib, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AWS_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["s3", "cp"]:
    source, target = [a for a in args[2:] if not a.startswith("--")]
    out = pathlib.Path(os.environ["FAKE_S3"], target.removeprefix("s3://"))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
elif args[:2] == ["cloudformation", "describe-stacks"]:
    print("arn:aws:lambda:eu-west-1:123456789012:function:prov-agent-fake")
"""


def wheel_works_on(tag, version, platform_tag):
    """Whether a wheel tag (python-abi-platform) loads on CPython `version` ("3.12")."""
    python, abi, plat = tag.split("-")
    cp = "cp" + version.replace(".", "")
    if plat not in (platform_tag, "any"):
        return False
    if python == cp and abi in (cp, "abi3", "none"):
        return True
    m = re.fullmatch(r"cp3(\d+)", python)
    return abi == "abi3" and m is not None and int(m.group(1)) <= int(version.split(".")[1])


class Deploy(unittest.TestCase):
    """deploy.sh run with a stand-in `aws` on PATH."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="aws-kit-deploy.")
        cls.work = pathlib.Path(cls.tmp.name)
        (cls.work / "bin").mkdir()
        aws = cls.work / "bin" / "aws"
        aws.write_text(FAKE_AWS.format(python=sys.executable))
        aws.chmod(0o755)
        cls.ca = make_ca(cls.work / "mca")
        cls.plain = cls.deploy("plain")
        # A relative path is the caller's (deploy.sh works in the repository).
        cls.attested = cls.deploy("attested", "--attestation-ca", "mca/ca.pem", "--check-serial")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def deploy(cls, name, *args):
        """(process, the aws calls, the uploaded zips' directory)."""
        d = cls.work / name
        d.mkdir()
        path = os.pathsep.join([str(cls.work / "bin"), str(pathlib.Path(sys.executable).parent), os.environ["PATH"]])
        env = dict(os.environ, PATH=path, FAKE_AWS_LOG=str(d / "calls"), FAKE_S3=str(d / "s3"))
        p = subprocess.run(["bash", str(HERE / "deploy.sh"), *map(str, args), "prov-agent", "code-bucket",
                            CLAIM_ARN, "Sites=default,plant-a"], env=env, cwd=cls.work,
                           capture_output=True, text=True)
        calls = [json.loads(line) for line in (d / "calls").read_text().splitlines()] if (d / "calls").exists() else []
        return p, calls, d / "s3" / "code-bucket" / "prov-agent"

    def overrides(self, calls):
        (deploy,) = [c for c in calls if c[:2] == ["cloudformation", "deploy"]]
        return deploy[deploy.index("--parameter-overrides") + 1:]

    def assertDeployed(self, deployed):
        p, calls, s3 = deployed
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        updated = [c for c in calls if c[:2] == ["lambda", "update-function-code"]]
        self.assertEqual([c[c.index("--s3-key") + 1] for c in updated],
                         ["prov-agent/provisioning_hook.zip", "prov-agent/rotation_report.zip"])
        with zipfile.ZipFile(s3 / "rotation_report.zip") as z:
            self.assertEqual(z.namelist(), ["rotation_report.py"])
        return self.overrides(calls), zipfile.ZipFile(s3 / "provisioning_hook.zip")

    def test_without_attestation_the_hook_and_the_stack_are_as_before(self):
        overrides, hook = self.assertDeployed(self.plain)
        with hook:
            self.assertEqual(hook.namelist(), ["provisioning_hook.py"])
            self.assertEqual(hook.read("provisioning_hook.py"), HOOK.read_bytes())
        self.assertEqual(overrides, [f"ClaimCertificateArn={CLAIM_ARN}", "CodeBucket=code-bucket",
                                     "AttestationCa=", "AttestationCheckSerial=0", "Sites=default,plant-a"])
        self.assertEqual(resolve(overrides), ({"THING_NAME_PREFIXES": "gw", "SITES": "default,plant-a"}, []))
        self.assertEqual(self.plain[0].stdout, "stack prov-agent deployed\n")

    def test_with_attestation_the_zip_holds_what_the_hook_needs_for_the_lambda(self):
        overrides, hook = self.assertDeployed(self.attested)
        env, failed = resolve(overrides)
        self.assertEqual(failed, [])
        self.assertEqual(env["ATTESTATION_CHECK_SERIAL"], "1")
        self.assertTrue(env["ATTESTATION_CA"].startswith("/var/task/"), env)
        version, arch = package_hook.hook_runtime()
        self.assertEqual((version, arch), ("3.12", "x86_64"))  # the template's HookFunction
        plat = package_hook.PLATFORMS[arch]
        with hook:
            names = hook.namelist()
            self.assertEqual(hook.read(env["ATTESTATION_CA"].removeprefix("/var/task/")), self.ca.read_bytes())
            self.assertEqual(hook.read("provisioning_hook.py"), HOOK.read_bytes())
            self.assertEqual(hook.read("tpm_attestation.py"), TPM_ATTESTATION.read_bytes())
            pinned = package_hook.pinned("cryptography")
            self.assertIn(f"cryptography-{pinned}.dist-info/WHEEL", names)
            for package in ("cryptography", "cffi"):
                tags = wheel_tags(hook, package)
                self.assertTrue(any(wheel_works_on(t, version, plat) for t in tags), (package, tags))
            cp = "cpython-" + version.replace(".", "")
            self.assertIn(f"_cffi_backend.{cp}-x86_64-linux-gnu.so", names)
            self.assertIn("cryptography/hazmat/bindings/_rust.abi3.so", names)
            self.assertFalse([n for n in names if "__pycache__" in n or n.startswith("bin/")])
        self.assertEqual(self.attested[0].stdout,
                         f"stack prov-agent deployed, attestation on (CA {self.ca}, serial checked)\n")

    def test_options_that_cannot_work_are_refused_before_anything_is_done(self):
        for n, (args, reason) in enumerate((
            (["--check-serial"], "--check-serial needs --attestation-ca FILE"),
            (["--attestation-ca", self.ca, "--", "s", "b", CLAIM_ARN, "AttestationCa=/opt/ca.pem"],
             "set attestation with --attestation-ca FILE and --check-serial, not AttestationCa=/opt/ca.pem"),
            (["--attestation"], "unknown option --attestation"),
        )):
            with self.subTest(reason):
                p, calls, _ = self.deploy(f"refused-{n}", *args)
                self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
                self.assertIn(reason, p.stderr)
                self.assertEqual(calls, [])


SERIAL = "SN-KIT-0001"
ARCHITECTURES = {"x86_64": "x86_64", "aarch64": "arm64"}
# The Lambda's runtime imports the handler's module and calls it for each
# event; here with moto's IoT as the AWS API. Prints what it decided and
# where every module it ran came from.
DRIVER = r"""
import contextlib, io, json, sys
events = json.load(sys.stdin)
from moto import mock_aws
with mock_aws():
    import boto3
    import provisioning_hook
    results = []
    for event in events:
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            answer = provisioning_hook.lambda_handler(event, None)
        results.append({"answer": answer, "log": log.getvalue()})
    things = sorted(t["thingName"] for t in boto3.client("iot").list_things()["things"])
modules = {n: m.__file__ for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)}
json.dump({"results": results, "things": things, "modules": modules, "path": sys.path}, sys.stdout)
"""
AWS_KEY = ec.generate_private_key(ec.SECP256R1())


def b64(data):
    return base64.b64encode(data).decode()


def certificate(public):
    """A certificate for a TPM key, as CreateCertificateFromCsr issues it: (PEM, id)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(factory.ta.parse_public(public).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(AWS_KEY, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return cert.public_bytes(serialization.Encoding.PEM).decode(), hashlib.sha256(der).hexdigest()


class HookFromTheZip(unittest.TestCase):
    """The attestation zip unzipped and run by a Python that has only it and
    the Lambda runtime's packages (here the venv's, less every package the
    zip holds, and moto), with the environment the stack gives the Lambda
    for --attestation-ca --check-serial. The attestations are genuine: a
    swtpm with an EK certificate, its AK certified by the factory CA tool
    through TPM2_ActivateCredential, the new key certified by TPM2_Certify."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="aws-kit-hook.")
        cls.work = pathlib.Path(cls.tmp.name)
        cls.tpm = None
        try:
            cls.make()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.tpm is not None:
            cls.tpm.close()
        cls.tmp.cleanup()

    @classmethod
    def make(cls):
        work = cls.work
        ek_ca = factory.LocalCa(work / "ek-ca")
        cls.tpm = factory.Tpm(work / "tpm", ek_ca)
        ak = cls.tpm.create_ak(factory.AK)
        cls.device = cls.tpm.create_key(factory.DEV1)
        ca = make_ca(work / "mca")
        (work / "request.json").write_text(json.dumps(factory.request_for(cls.tpm, *ak, SERIAL)))
        p = factory.ca_tool("challenge", "--ca", work / "mca", "--ek-ca", ek_ca.intermediate,
                            "--ek-ca", ek_ca.root, "--request", work / "request.json",
                            "--out", work / "challenge.json")
        assert p.returncode == 0, p.stderr
        challenge = json.loads((work / "challenge.json").read_text())
        secret, err = cls.tpm.activate(challenge, f"0x{factory.AK:08x}")
        assert secret is not None, err
        chain = factory.ta.open_certificate(secret, ak[1], base64.b64decode(challenge["nonce"]),
                                            base64.b64decode(challenge["encryptedCertificate"]))
        cls.ak_cert = b64(x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.DER))

        # The zip, for this interpreter and machine, unzipped as the Lambda
        # does into its task root.
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run([sys.executable, str(HERE / "package_hook.py"), str(work / "hook.zip"),
                        "--attestation-ca", str(ca), "--python-version", version,
                        "--architecture", ARCHITECTURES[platform.machine()]], check=True)
        cls.task = work / "task"
        with zipfile.ZipFile(work / "hook.zip") as z:
            z.extractall(cls.task)
        # The runtime's packages: the venv's, less those the zip brings.
        runtime = work / "runtime"
        runtime.mkdir()
        shadowed = {re.split(r"[.-]", n)[0] for n in os.listdir(cls.task)}
        for entry in pathlib.Path(boto3.__file__).parents[1].iterdir():
            if re.split(r"[.-]", entry.name)[0] not in shadowed and entry.name != "__pycache__":
                (runtime / entry.name).symlink_to(entry)

        env, failed = resolve(["AttestationCa=/var/task/attestation-ca.pem", "AttestationCheckSerial=1"])
        assert failed == [] and env["ATTESTATION_CHECK_SERIAL"] == "1", (env, failed)
        env["ATTESTATION_CA"] = str(cls.task / env["ATTESTATION_CA"].removeprefix("/var/task/"))
        env.update(
            PATH=os.environ["PATH"], PYTHONPATH=os.pathsep.join([str(cls.task), str(runtime)]),
            PYTHONDONTWRITEBYTECODE="1", AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        cls.cases = cls.requests()
        # -S: not the venv's site-packages, only PYTHONPATH.
        p = subprocess.run([sys.executable, "-S", "-c", DRIVER], cwd=cls.task, env=env,
                           input=json.dumps([event for event, _ in cls.cases.values()]),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        cls.results = dict(zip(cls.cases, out["results"]))
        cls.things, cls.modules, cls.path = out["things"], out["modules"], out["path"]

    @classmethod
    def request(cls, serial=SERIAL, **params):
        """A ProdTemplate request for a new certificate of the TPM's device
        key, attested by the TPM; params replace (None: remove) parameters."""
        pem, cert_id = certificate(cls.device[0])
        attest, sig = cls.tpm.certify(factory.DEV1, factory.AK, bytes.fromhex(cert_id))
        parameters = {
            "SerialNumber": serial,
            "TpmAkCertificate": cls.ak_cert,
            "TpmAttest": b64(attest),
            "TpmAttestSignature": b64(sig),
            "TpmDevicePublic": b64(cls.device[0]),
        }
        for k, v in params.items():
            parameters[k] = v(parameters[k]) if callable(v) else v
        return {
            "claimCertificateId": "c" * 64,
            "certificateId": cert_id,
            "certificatePem": pem,
            "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/ProdTemplate",
            "clientId": "prov-kit",
            "parameters": {k: v for k, v in parameters.items() if v is not None},
        }

    @classmethod
    def requests(cls):
        """name -> (request, the reason it is refused, or None)."""
        def flipped(value):
            data = bytearray(base64.b64decode(value))
            data[-50] ^= 1
            return b64(bytes(data))

        none = dict.fromkeys(("TpmAkCertificate", "TpmAttest", "TpmAttestSignature", "TpmDevicePublic"))
        return {
            "genuine": (cls.request(), None),
            "no attestation": (cls.request("SN-KIT-0002", **none),
                               "attestation is required (ATTESTATION_CA) and the parameter TpmAkCertificate is missing"),
            "TpmAttest missing": (cls.request("SN-KIT-0003", TpmAttest=None),
                                  "attestation is required (ATTESTATION_CA) and the parameter TpmAttest is missing"),
            "signature not base64": (cls.request("SN-KIT-0004", TpmAttestSignature="@@@@"),
                                     "attestation parameter TpmAttestSignature is not base64"),
            "AK certificate garbled": (cls.request("SN-KIT-0005", TpmAkCertificate="AAAA"),
                                       "TpmAkCertificate is not a DER X.509 certificate"),
            "attestation tampered": (cls.request("SN-KIT-0006", TpmAttest=flipped),
                                     "does not verify with the attestation key"),
            "serial not the AK certificate's": (
                cls.request("SN-KIT-0666"),
                f"SerialNumber 'SN-KIT-0666' is not the serial number '{SERIAL}' of the attestation key "
                "certificate (ATTESTATION_CHECK_SERIAL=1)"),
        }

    def test_the_hook_tpm_attestation_and_cryptography_come_from_the_zip(self):
        for module in ("provisioning_hook", "tpm_attestation", "cryptography",
                       "cryptography.hazmat.bindings._rust", "_cffi_backend"):
            with self.subTest(module):
                self.assertIn(module, self.modules)
                self.assertTrue(pathlib.Path(self.modules[module]).is_relative_to(self.task), self.modules[module])
        # Nothing from the repository: every module is the zip's, the
        # standard library's or a runtime package's (the venv's, symlinked).
        venv = pathlib.Path(sys.prefix).resolve()
        for module, file in self.modules.items():
            real = pathlib.Path(file).resolve()
            if real.is_relative_to(ROOT):
                self.assertTrue(real.is_relative_to(venv), f"{module} from the repository: {file}")
        # ("": the working directory, the task root.)
        entries = [pathlib.Path(p or self.task).resolve() for p in self.path]
        self.assertEqual([p for p in entries if p.is_relative_to(ROOT) and not p.is_relative_to(venv)], [])
        self.assertEqual(entries[:3], [self.task.resolve(), self.task.resolve(), self.work.resolve() / "runtime"])

    def test_a_genuine_attestation_is_allowed(self):
        result = self.results["genuine"]
        self.assertTrue(result["answer"]["allowProvisioning"], result["log"])
        self.assertEqual(result["answer"]["parameterOverrides"]["SerialNumber"], SERIAL)
        self.assertIn(f"provisioning_hook: ProdTemplate: allowed: new thing gw_{SERIAL}", result["log"])
        self.assertIn(f"attested: key {self.device[1].hex()} in the TPM of serial '{SERIAL}'", result["log"])
        self.assertIn("Kit Test Manufacturer CA", result["log"])
        self.assertEqual(self.things, [f"gw_{SERIAL}"])  # no refused request made a thing

    def test_a_missing_or_garbled_attestation_is_refused_with_its_reason(self):
        for name, (_, reason) in self.cases.items():
            if reason is None:
                continue
            with self.subTest(name):
                result = self.results[name]
                self.assertEqual(result["answer"], {"allowProvisioning": False})
                self.assertIn("provisioning_hook: ProdTemplate: refused: ", result["log"])
                self.assertIn(reason, result["log"])


if __name__ == "__main__":
    unittest.main()
