"""Hardware-attested enrollment against real TPMs: two swtpm simulators, each
manufactured by swtpm_setup with an EK certificate from its own local CA
(swtpm_localca, state in a temp dir), driven by tpm2-tools; the
manufacturer CA tool run as a program; the pre-provisioning hook's decision
made in-process against moto's IoT registry.

    ci/test-attestation.sh

What they show: a challenge opens only in the TPM holding both the EK and the
AK; the CA refuses EK certificates of another CA, unrestricted or movable
AKs and wrong names; TPM2_Certify evidence verifies and each forgery or
mismatch is refused, by verify_certify and by the hook, with its reason.
"""

import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "templates" / "hooks"))

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
for leaked in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT"):
    os.environ.pop(leaked, None)

import boto3  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from moto import mock_aws  # noqa: E402

import provisioning_hook as hook  # noqa: E402
import tpm_attestation as ta  # noqa: E402

CA_TOOL = ROOT / "factory" / "manufacturer_ca.py"
HOOK = ROOT / "templates" / "hooks" / "provisioning_hook.py"

EK_HANDLE = 0x81010001  # where swtpm_setup persists the RSA 2048 EK (TCG default template)
EK_CERT_NV = "0x01c00002"  # its certificate (TCG EK Credential Profile)
SRK = 0x81000001
AK = 0x81000002
DEV1 = 0x81000003
DEV2 = 0x81000004
IMPORTED = 0x81000005
DECRYPT_ONLY = 0x81000006
MOVABLE_AK = 0x81000007
AK_RSASSA = 0x81000008
AK_RSAPSS = 0x81000009

DEVICE_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"


def run(*args, env=None, check=True):
    p = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.strip()}")
    return p


class LocalCa:
    """An EK CA of swtpm_localca, state in `directory` (never the system's
    /var/lib/swtpm-localca). swtpm_localca makes a root and an intermediate
    ("issuercert") on first use; the intermediate signs the EK certificates."""

    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        state = self.dir / "state"
        state.mkdir(parents=True)
        (self.dir / "swtpm-localca.conf").write_text(
            f"statedir = {state}\n"
            f"signingkey = {state}/signkey.pem\n"
            f"issuercert = {state}/issuercert.pem\n"
            f"certserial = {state}/certserial\n"
        )
        (self.dir / "swtpm-localca.options").write_text(
            "--platform-manufacturer prov-agent-test\n--platform-version 2.1\n--platform-model swtpm\n"
        )
        self.setup_conf = self.dir / "swtpm_setup.conf"
        self.setup_conf.write_text(
            "create_certs_tool = /usr/bin/swtpm_localca\n"
            f"create_certs_tool_config = {self.dir}/swtpm-localca.conf\n"
            f"create_certs_tool_options = {self.dir}/swtpm-localca.options\n"
            "active_pcr_banks = sha256\n"
        )
        self.root = state / "swtpm-localca-rootca-cert.pem"
        self.intermediate = state / "issuercert.pem"


def free_port_pair():
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        if port == 65535:
            return None
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                return None
    return port


class Tpm:
    """A swtpm with an EK certificate, its SRK persisted at SRK."""

    def __init__(self, directory, ca):
        self.dir = pathlib.Path(directory)
        self.state = self.dir / "state"
        self.state.mkdir(parents=True)
        run("swtpm_setup", "--tpm2", "--create-ek-cert", "--tpmstate", self.state,
            "--config", ca.setup_conf, "--logfile", self.dir / "swtpm_setup.log")
        self.proc = None
        for _ in range(20):
            port = free_port_pair()
            if port and self._start(port):
                break
        else:
            raise AssertionError("could not start swtpm")
        self.tools("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", self.file("srk.ctx"))
        self.persist("srk.ctx", SRK)

    def _start(self, port):
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--tpmstate", f"dir={self.state}", "--flags", "not-need-init,startup-clear"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # most likely a port taken meanwhile
            try:
                socket.create_connection(("127.0.0.1", port + 1), timeout=0.2).close()
                time.sleep(0.05)
                if self.proc.poll() is None:
                    self.port = port
                    self.env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:host=127.0.0.1,port={port}")
                    return True
                return False
            except OSError:
                time.sleep(0.02)
        self.close()
        return False

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def file(self, name):
        return self.dir / name

    def tools(self, *args, check=True):
        return run(*args, env=self.env, check=check)

    def flush(self):
        # Without a resource manager, tpm2-tools leave their objects loaded
        # and swtpm has three transient slots.
        self.tools("tpm2_flushcontext", "-t")

    def persist(self, ctx, handle):
        self.tools("tpm2_evictcontrol", "-C", "o", "-c", self.file(ctx), f"0x{handle:08x}")
        self.flush()

    def read_public(self, handle):
        """(TPMT_PUBLIC, name) as the TPM reports them."""
        self.tools("tpm2_readpublic", "-c", f"0x{handle:08x}", "-f", "tpmt",
                   "-o", self.file("pub.tpmt"), "-n", self.file("pub.name"))
        return self.file("pub.tpmt").read_bytes(), self.file("pub.name").read_bytes()

    def ek_certificate_pem(self):
        self.tools("tpm2_nvread", EK_CERT_NV, "-o", self.file("ek.der"))
        cert = x509.load_der_x509_certificate(self.file("ek.der").read_bytes())
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def create_ak(self, handle, alg="ecc", scheme="ecdsa"):
        self.tools("tpm2_createak", "-C", f"0x{EK_HANDLE:08x}", "-c", self.file("ak.ctx"),
                   "-G", alg, "-g", "sha256", "-s", scheme)
        self.persist("ak.ctx", handle)
        return self.read_public(handle)

    def create_key(self, handle, attributes=DEVICE_ATTRIBUTES, alg="ecc"):
        self.tools("tpm2_create", "-C", f"0x{SRK:08x}", "-G", alg, "-a", attributes,
                   "-c", self.file("key.ctx"))
        self.persist("key.ctx", handle)
        return self.read_public(handle)

    def import_key(self, handle, private_key):
        pem = self.file("import.pem")
        pem.write_bytes(private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        self.tools("tpm2_import", "-C", f"0x{SRK:08x}", "-G", "ecc", "-i", pem,
                   "-u", self.file("imp.pub"), "-r", self.file("imp.priv"))
        self.tools("tpm2_load", "-C", f"0x{SRK:08x}", "-u", self.file("imp.pub"),
                   "-r", self.file("imp.priv"), "-c", self.file("imp.ctx"))
        self.persist("imp.ctx", handle)
        return self.read_public(handle)

    def certify(self, key, signer, qualifying_data):
        """TPM2_Certify sent as raw command bytes (tpm2-tools 5.4's
        tpm2_certify has no option for the qualifying data): two password
        sessions with empty auth, inScheme TPM_ALG_NULL (the AK's scheme).
        Returns (TPMS_ATTEST, TPMT_SIGNATURE)."""
        pw = struct.pack(">IHBH", 0x40000009, 0, 0, 0)  # TPM_RS_PW, no nonce, no attributes, empty hmac
        body = (struct.pack(">III", key, signer, 2 * len(pw)) + pw + pw
                + struct.pack(">H", len(qualifying_data)) + qualifying_data
                + struct.pack(">H", ta.ALG_NULL))
        command = struct.pack(">HII", 0x8002, 10 + len(body), 0x00000148) + body  # TPM_CC_Certify
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(command)
            response = b""
            while len(response) < 10 or len(response) < struct.unpack(">I", response[2:6])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    raise AssertionError("swtpm closed the connection")
                response += chunk
        _, _, rc = struct.unpack(">HII", response[:10])
        if rc:
            raise AssertionError(f"TPM2_Certify failed: 0x{rc:03x}")
        size = struct.unpack(">I", response[10:14])[0]
        params = response[14 : 14 + size]
        n = struct.unpack(">H", params[:2])[0]
        return params[2 : 2 + n], params[2 + n :]

    def activate(self, challenge, ak_context):
        """tpm2_activatecredential of a CA challenge; the secret, or None
        with the tool's error."""
        blob = base64.b64decode(challenge["credentialBlob"])
        secret = base64.b64decode(challenge["encryptedSecret"])
        # tpm2-tools' credential file: magic, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
        self.file("cred.blob").write_bytes(
            struct.pack(">IIH", 0xBADCC0DE, 1, len(blob)) + blob + struct.pack(">H", len(secret)) + secret)
        out = self.file("cred.secret")
        if out.exists():
            out.unlink()
        # The EK's policy is PolicySecret(endorsement hierarchy).
        self.tools("tpm2_startauthsession", "--policy-session", "-S", self.file("session.ctx"))
        try:
            self.tools("tpm2_policysecret", "-S", self.file("session.ctx"), "-c", "e")
            p = self.tools("tpm2_activatecredential", "-c", ak_context, "-C", f"0x{EK_HANDLE:08x}",
                           "-i", self.file("cred.blob"), "-o", out,
                           "-P", f"session:{self.file('session.ctx')}", check=False)
        finally:
            self.tools("tpm2_flushcontext", "-l", check=False)
            self.tools("tpm2_flushcontext", "-s", check=False)
            self.flush()
        if p.returncode != 0:
            return None, p.stderr
        return out.read_bytes(), ""


def ca_tool(*args):
    return run(sys.executable, CA_TOOL, *args, check=False)


def request_for(tpm, ak_public, ak_name, serial):
    return {
        "version": 1,
        "serialNumber": serial,
        "ekCertificate": tpm.ek_certificate_pem(),
        "akPublic": base64.b64encode(ak_public).decode(),
        "akName": ak_name.hex(),
    }


class Fixture:
    """Everything the tests share, made once (about 10 s)."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="attestation-test.")
        self.work = pathlib.Path(self.tmp.name)
        self.tpms = []
        try:
            self.make()
        except BaseException:
            self.close()  # no simulator outlives a failed setup
            raise

    def make(self):
        self.ek_ca1 = LocalCa(self.work / "ek-ca-1")
        self.ek_ca2 = LocalCa(self.work / "ek-ca-2")
        self.a = self.tpm("tpm-a", self.ek_ca1)
        self.b = self.tpm("tpm-b", self.ek_ca2)
        self.ak_a = self.a.create_ak(AK)
        self.ak_b = self.b.create_ak(AK)
        self.dev1 = self.a.create_key(DEV1)
        self.dev2 = self.a.create_key(DEV2)
        self.imported = self.a.import_key(IMPORTED, ec.generate_private_key(ec.SECP256R1()))
        self.decrypt_only = self.a.create_key(
            DECRYPT_ONLY, "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt")
        self.ca = self.work / "mca"
        self.other_ca = self.work / "mca-other"
        for d, cn in ((self.ca, "Test Manufacturer CA"), (self.other_ca, "Another Manufacturer CA")):
            p = ca_tool("init", "--dir", d, "--subject", cn)
            assert p.returncode == 0, p.stderr
        self.serial = "SN-A-0001"
        self.ak_cert_pem = self.enroll(self.a, self.ak_a, self.ca, self.serial)
        self.other_ak_cert_pem = self.enroll(self.a, self.ak_a, self.other_ca, self.serial)

    def tpm(self, name, ca):
        t = Tpm(self.work / name, ca)
        self.tpms.append(t)
        return t

    def ek_cas(self, ca):
        return ["--ek-ca", ca.intermediate, "--ek-ca", ca.root]

    def challenge(self, request, ca_dir, ek_ca, name="challenge"):
        req = self.work / f"{name}.request.json"
        out = self.work / f"{name}.json"
        req.write_text(json.dumps(request))
        if out.exists():
            out.unlink()
        p = ca_tool("challenge", "--ca", ca_dir, *self.ek_cas(ek_ca), "--request", req, "--out", out)
        return p, out

    def enroll(self, tpm, ak, ca_dir, serial):
        """AK certificate chain (PEM) through the whole factory protocol."""
        p, out = self.challenge(request_for(tpm, ak[0], ak[1], serial), ca_dir, self.ek_ca1)
        assert p.returncode == 0, p.stderr
        challenge = json.loads(out.read_text())
        secret, err = tpm.activate(challenge, f"0x{AK:08x}")
        assert secret is not None, err
        return ta.open_certificate(secret, ak[1], base64.b64decode(challenge["nonce"]),
                                   base64.b64decode(challenge["encryptedCertificate"]))

    def close(self):
        for t in self.tpms:
            t.close()
        self.tmp.cleanup()


F = None


def setUpModule():
    global F
    F = Fixture()


def tearDownModule():
    if F is not None:
        F.close()


def flip(data, at):
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


class Challenge(unittest.TestCase):
    def test_the_tpm_holding_ek_and_ak_answers_and_gets_its_certificate(self):
        p, out = F.challenge(request_for(F.a, *F.ak_a, "SN-A-0001"), F.ca, F.ek_ca1)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o600)
        challenge = json.loads(out.read_text())
        self.assertEqual(challenge["version"], 1)
        self.assertEqual(len(base64.b64decode(challenge["nonce"])), 12)
        secret, err = F.a.activate(challenge, f"0x{AK:08x}")
        self.assertIsNotNone(secret, err)
        self.assertEqual(len(secret), 32)
        chain = ta.open_certificate(secret, F.ak_a[1], base64.b64decode(challenge["nonce"]),
                                    base64.b64decode(challenge["encryptedCertificate"]))
        ak_cert, ca_cert = x509.load_pem_x509_certificates(chain)
        self.assertEqual(ca_cert, x509.load_pem_x509_certificate((F.ca / "ca.pem").read_bytes()))
        self.assertTrue(ta.same_public_key(ak_cert.public_key(), ta.parse_public(F.ak_a[0]).public_key()))
        self.assertEqual(ta.subject_serial_number(ak_cert), "SN-A-0001")
        self.assertEqual(ak_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "SN-A-0001")
        ku = ak_cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(ku.digital_signature)
        self.assertFalse(ku.key_cert_sign)
        days = (ak_cert.not_valid_after_utc - ak_cert.not_valid_before_utc).days
        self.assertEqual(days, 7300)
        # The chain holds for cryptography's verifier and for OpenSSL.
        ta.verify_chain(ak_cert, [ca_cert], time.time(), "ak")
        (F.work / "ak.pem").write_bytes(ak_cert.public_bytes(serialization.Encoding.PEM))
        v = run("openssl", "verify", "-CAfile", F.ca / "ca.pem", F.work / "ak.pem", check=False)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        # The wrong secret does not open it.
        with self.assertRaises(ta.AttestationRefused):
            ta.open_certificate(bytes(32), F.ak_a[1], base64.b64decode(challenge["nonce"]),
                                base64.b64decode(challenge["encryptedCertificate"]))

    def test_an_ak_that_is_not_in_the_eks_tpm_cannot_activate(self):
        # A's (genuine) EK certificate, B's AK: the CA cannot tell, the TPMs can.
        p, out = F.challenge(request_for(F.a, *F.ak_b, "SN-A-0001"), F.ca, F.ek_ca1, "cross")
        self.assertEqual(p.returncode, 0, p.stderr)
        challenge = json.loads(out.read_text())
        # B holds the AK but not the EK the seed is wrapped for.
        secret, err = F.b.activate(challenge, f"0x{AK:08x}")
        self.assertIsNone(secret)
        self.assertIn("ActivateCredential", err)
        # A holds the EK, but its AK has another name.
        secret, err = F.a.activate(challenge, f"0x{AK:08x}")
        self.assertIsNone(secret)
        self.assertIn("ActivateCredential", err)
        # B's AK public area loaded into A (same name, no private part).
        tpm2b = F.a.file("ak-b.tpm2b")
        tpm2b.write_bytes(struct.pack(">H", len(F.ak_b[0])) + F.ak_b[0])
        F.a.tools("tpm2_loadexternal", "-C", "n", "-u", tpm2b, "-c", F.a.file("ak-b.ctx"))
        secret, err = F.a.activate(challenge, F.a.file("ak-b.ctx"))
        self.assertIsNone(secret)
        self.assertIn("authValue or authPolicy is not available", err)
        # The same request made honestly (B's EK and B's AK) activates on B.
        p, out = F.challenge(request_for(F.b, *F.ak_b, "SN-B-0001"), F.ca, F.ek_ca2, "b")
        self.assertEqual(p.returncode, 0, p.stderr)
        secret, err = F.b.activate(json.loads(out.read_text()), f"0x{AK:08x}")
        self.assertIsNotNone(secret, err)

    def assertRefused(self, p, out, *words):
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        line = p.stderr.strip()
        self.assertEqual(len(line.splitlines()), 1, line)
        self.assertTrue(line.startswith("manufacturer_ca.py: "), line)
        for w in words:
            self.assertIn(w, line)
        self.assertFalse(out.exists())
        self.assertEqual([f for f in os.listdir(out.parent) if f.endswith(".tmp")], [])

    def test_an_ek_certificate_of_another_ca_is_refused(self):
        p, out = F.challenge(request_for(F.b, *F.ak_b, "SN-B-0001"), F.ca, F.ek_ca1, "other-ek-ca")
        self.assertRefused(p, out, "other-ek-ca.request.json", "ekCertificate", "does not chain")

    def test_only_the_root_without_the_intermediate_is_not_enough(self):
        req = F.work / "root-only.request.json"
        out = F.work / "root-only.json"
        req.write_text(json.dumps(request_for(F.a, *F.ak_a, "SN-A-0001")))
        p = ca_tool("challenge", "--ca", F.ca, "--ek-ca", F.ek_ca1.root, "--request", req, "--out", out)
        self.assertRefused(p, out, "does not chain")

    def test_an_unrestricted_ak_is_refused(self):
        p, out = F.challenge(request_for(F.a, *F.dev1, "SN-A-0001"), F.ca, F.ek_ca1, "unrestricted")
        self.assertRefused(p, out, "lacks restricted")

    def test_an_ak_that_can_leave_the_tpm_is_refused(self):
        ak = F.a.create_key(MOVABLE_AK, "restricted|sign|sensitivedataorigin|userwithauth", alg="ecc256:ecdsa-sha256:null")
        p, out = F.challenge(request_for(F.a, *ak, "SN-A-0001"), F.ca, F.ek_ca1, "movable")
        self.assertRefused(p, out, "lacks fixedTPM, fixedParent")

    def test_a_wrong_ak_name_is_refused(self):
        p, out = F.challenge(request_for(F.a, F.ak_a[0], F.ak_b[1], "SN-A-0001"), F.ca, F.ek_ca1, "name")
        self.assertRefused(p, out, f"akName {F.ak_b[1].hex()} is not the name of akPublic")

    def test_malformed_requests_are_refused(self):
        good = request_for(F.a, *F.ak_a, "SN-A-0001")
        cases = [
            (dict(good, version=2), "version is 2"),
            ({k: v for k, v in good.items() if k != "akPublic"}, "akPublic is missing"),
            (dict(good, akPublic=base64.b64encode(F.ak_a[0] + b"\0").decode()), "1 bytes after its end"),
            (dict(good, akPublic=base64.b64encode(F.ak_a[0][:-1]).decode()), "truncated"),
            (dict(good, akPublic="not base64!"), "akPublic is not base64"),
            (dict(good, serialNumber="SN 1"), "serialNumber 'SN 1' is not"),
            (dict(good, ekCertificate="garbage"), "ekCertificate is not a PEM certificate"),
        ]
        for request, words in cases:
            with self.subTest(words):
                p, out = F.challenge(request, F.ca, F.ek_ca1, "malformed")
                self.assertRefused(p, out, "malformed.request.json", words)

    def test_init_never_replaces_a_ca(self):
        before = (F.ca / "ca.key").read_bytes()
        p = ca_tool("init", "--dir", F.ca)
        self.assertEqual(p.returncode, 2)
        self.assertIn("exists", p.stderr)
        self.assertEqual((F.ca / "ca.key").read_bytes(), before)
        self.assertEqual(os.stat(F.ca / "ca.key").st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(F.ca).st_mode & 0o777, 0o700)
        ca = x509.load_pem_x509_certificate((F.ca / "ca.pem").read_bytes())
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertIsInstance(ca.public_key(), ec.EllipticCurvePublicKey)


class Certify(unittest.TestCase):
    QD = b"0123456789abcdef" * 4  # what the hook passes: a certificate id's 64 hex characters

    def ak_key(self, ak=None):
        return ta.parse_public((ak or F.ak_a)[0]).public_key()

    def test_public_areas_and_names_are_the_tpms(self):
        for key in (F.ak_a, F.ak_b, F.dev1, F.imported, F.decrypt_only):
            public = ta.parse_public(key[0])
            self.assertEqual(public.name(), key[1])
        ak = ta.parse_public(F.ak_a[0])
        self.assertTrue(ak.restricted and ak.sign and ak.fixed_tpm and ak.fixed_parent and ak.sensitive_data_origin)
        self.assertFalse(ak.decrypt)
        imported = ta.parse_public(F.imported[0])
        self.assertFalse(imported.sensitive_data_origin or imported.fixed_tpm)
        with self.assertRaisesRegex(ta.AttestationRefused, "1 bytes after its end"):
            ta.parse_public(F.dev1[0] + b"\0")
        with self.assertRaisesRegex(ta.AttestationRefused, "truncated"):
            ta.parse_public(F.dev1[0][:-3])

    def test_a_certify_with_qualifying_data_verifies(self):
        attest, sig = F.a.certify(DEV1, AK, self.QD)
        device = ta.verify_certify(attest, sig, self.ak_key(), F.dev1[0], self.QD)
        self.assertEqual(device.name(), F.dev1[1])

    def test_tpm2_tools_certify_verifies(self):
        F.a.tools("tpm2_certify", "-c", f"0x{DEV1:08x}", "-C", f"0x{AK:08x}", "-g", "sha256",
                  "-o", F.a.file("attest.bin"), "-s", F.a.file("sig.bin"))
        F.a.flush()
        attest, sig = F.a.file("attest.bin").read_bytes(), F.a.file("sig.bin").read_bytes()
        # tpm2-tools 5.4 puts a fixed 00 ff 55 aa in the qualifying data.
        ta.verify_certify(attest, sig, self.ak_key(), F.dev1[0], b"\x00\xff\x55\xaa")
        with self.assertRaisesRegex(ta.AttestationRefused, "qualifying data"):
            ta.verify_certify(attest, sig, self.ak_key(), F.dev1[0], self.QD)

    def test_rsa_aks_verify(self):
        for handle, scheme in ((AK_RSASSA, "rsassa"), (AK_RSAPSS, "rsapss")):
            with self.subTest(scheme):
                ak = F.a.create_ak(handle, "rsa", scheme)
                attest, sig = F.a.certify(DEV1, handle, self.QD)
                self.assertEqual(struct.unpack(">H", sig[:2])[0],
                                 ta.ALG_RSASSA if scheme == "rsassa" else ta.ALG_RSAPSS)
                ta.verify_certify(attest, sig, self.ak_key(ak), F.dev1[0], self.QD)
                with self.assertRaisesRegex(ta.AttestationRefused, "does not verify"):
                    ta.verify_certify(flip(attest, 30), sig, self.ak_key(ak), F.dev1[0], self.QD)
                with self.assertRaisesRegex(ta.AttestationRefused, "the attestation key is not an RSA key"):
                    ta.verify_certify(attest, sig, self.ak_key(), F.dev1[0], self.QD)

    def test_another_qualifying_data_is_refused(self):
        attest, sig = F.a.certify(DEV1, AK, self.QD)
        with self.assertRaisesRegex(ta.AttestationRefused, "qualifying data"):
            ta.verify_certify(attest, sig, self.ak_key(), F.dev1[0], b"f" * 64)

    def test_a_tampered_attestation_is_refused(self):
        attest, sig = F.a.certify(DEV1, AK, self.QD)
        # In the qualifying data, the clock, the firmware version, the certified name.
        for at in (12 + 34 + 5, len(attest) - 120, len(attest) - 80, len(attest) - 40):
            with self.subTest(at=at):
                with self.assertRaisesRegex(ta.AttestationRefused, "does not verify"):
                    ta.verify_certify(flip(attest, at), sig, self.ak_key(), F.dev1[0], self.QD)
        with self.assertRaises(ta.AttestationRefused):
            ta.verify_certify(attest + b"\0", sig, self.ak_key(), F.dev1[0], self.QD)

    def test_a_tampered_signature_is_refused(self):
        attest, sig = F.a.certify(DEV1, AK, self.QD)
        with self.assertRaisesRegex(ta.AttestationRefused, "does not verify"):
            ta.verify_certify(attest, flip(sig, len(sig) - 1), self.ak_key(), F.dev1[0], self.QD)
        with self.assertRaisesRegex(ta.AttestationRefused, "does not verify"):
            ta.verify_certify(attest, sig, self.ak_key(F.ak_b), F.dev1[0], self.QD)

    def test_a_genuine_attestation_of_another_key_is_refused(self):
        attest, sig = F.a.certify(DEV2, AK, self.QD)
        with self.assertRaisesRegex(ta.AttestationRefused, f"certifies the key named {F.dev2[1].hex()}"):
            ta.verify_certify(attest, sig, self.ak_key(), F.dev1[0], self.QD)

    def test_an_imported_key_is_refused(self):
        attest, sig = F.a.certify(IMPORTED, AK, self.QD)
        with self.assertRaisesRegex(ta.AttestationRefused, "lacks the attributes fixedTPM, fixedParent, sensitiveDataOrigin"):
            ta.verify_certify(attest, sig, self.ak_key(), F.imported[0], self.QD)

    def test_a_key_that_cannot_sign_is_refused(self):
        attest, sig = F.a.certify(DECRYPT_ONLY, AK, self.QD)
        with self.assertRaisesRegex(ta.AttestationRefused, r"lacks the attributes sign \("):
            ta.verify_certify(attest, sig, self.ak_key(), F.decrypt_only[0], self.QD)

    def test_what_a_tpm_did_not_make_is_refused(self):
        # Only an unrestricted key could sign these (the CA certifies none):
        # a software key stands for one.
        attest, _ = F.a.certify(DEV1, AK, self.QD)
        key = ec.generate_private_key(ec.SECP256R1())
        for changed, words in (
            (b"\x00" + attest[1:], "magic is 0x00544347"),
            (attest[:4] + b"\x80\x18" + attest[6:], "type is 0x8018"),
        ):
            r, s = decode_dss_signature(key.sign(changed, ec.ECDSA(hashes.SHA256())))
            sig = (struct.pack(">HH", ta.ALG_ECDSA, ta.ALG_SHA256)
                   + struct.pack(">H", 32) + r.to_bytes(32, "big") + struct.pack(">H", 32) + s.to_bytes(32, "big"))
            with self.subTest(words):
                with self.assertRaisesRegex(ta.AttestationRefused, words):
                    ta.verify_certify(changed, sig, key.public_key(), F.dev1[0], self.QD)


@mock_aws
class Hook(unittest.TestCase):
    """The hook's decision, in-process, with moto's IoT registry."""

    def setUp(self):
        self.iot = boto3.client("iot", region_name="us-east-1")
        self.aws_key = ec.generate_private_key(ec.SECP256R1())
        ak_cert = x509.load_pem_x509_certificates(F.ak_cert_pem)[0]
        self.ak_cert = base64.b64encode(ak_cert.public_bytes(serialization.Encoding.DER)).decode()
        other = x509.load_pem_x509_certificates(F.other_ak_cert_pem)[0]
        self.other_ak_cert = base64.b64encode(other.public_bytes(serialization.Encoding.DER)).decode()
        self.settings = self.settings_with(ATTESTATION_CA=str(F.ca / "ca.pem"))

    def settings_with(self, **env):
        return hook.Settings(env)

    def certificate(self, public):
        """A certificate for a TPM key, as CreateCertificateFromCsr issues it: (PEM, id)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(ta.parse_public(public).public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.aws_key, hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        return cert.public_bytes(serialization.Encoding.PEM).decode(), hashlib.sha256(der).hexdigest()

    def request(self, serial=None, key=None, handle=DEV1, attest_for=None, template="ProdTemplate", **params):
        """A hook request for a new certificate of `key` (default dev1),
        attested by TPM A's AK; params override the template parameters."""
        key = key or F.dev1
        pem, cert_id = self.certificate(key[0])
        attest, sig = F.a.certify(handle, AK, bytes.fromhex(attest_for or cert_id))
        parameters = {
            "SerialNumber": serial or F.serial,
            "TpmAkCertificate": self.ak_cert,
            "TpmAttest": base64.b64encode(attest).decode(),
            "TpmAttestSignature": base64.b64encode(sig).decode(),
            "TpmDevicePublic": base64.b64encode(key[0]).decode(),
        }
        parameters.update(params)
        parameters = {k: v for k, v in parameters.items() if v is not None}
        return {
            "claimCertificateId": "c" * 64,
            "certificateId": cert_id,
            "certificatePem": pem,
            "templateArn": f"arn:aws:iot:us-east-1:123456789012:provisioningtemplate/{template}",
            "clientId": "prov-test",
            "parameters": parameters,
        }

    def decide(self, event, settings=None, now=None):
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            answer = hook.decide(event, self.iot, settings or self.settings, now or time.time())
        return answer, log.getvalue()

    def thing_exists(self, name):
        try:
            self.iot.describe_thing(thingName=name)
            return True
        except self.iot.exceptions.ResourceNotFoundException:
            return False

    def assertAllowed(self, event, settings=None):
        answer, log = self.decide(event, settings)
        self.assertTrue(answer["allowProvisioning"], log)
        serial = event["parameters"]["SerialNumber"]
        self.assertTrue(self.thing_exists(f"gw_{serial}"))
        return log

    def assertRefused(self, event, reason, settings=None, now=None):
        answer, log = self.decide(event, settings, now)
        self.assertEqual(answer, {"allowProvisioning": False})
        self.assertIn("ProdTemplate: refused: ", log)
        self.assertIn(reason, log)
        serial = event["parameters"].get("SerialNumber", "")
        self.assertFalse(self.thing_exists(f"gw_{serial}"), "a refused request created its thing")

    def test_an_attested_request_is_allowed(self):
        log = self.assertAllowed(self.request())
        self.assertIn(f"attested: key {F.dev1[1].hex()} in the TPM of serial '{F.serial}'", log)
        self.assertIn("Test Manufacturer CA", log)

    def test_without_attestation_ca_nothing_changes(self):
        event = self.request(TpmAkCertificate=None, TpmAttest=None, TpmAttestSignature=None, TpmDevicePublic=None)
        log = self.assertAllowed(event, self.settings_with())
        self.assertNotIn("attest", log)

    def test_each_flaw_is_refused_with_its_reason(self):
        other_pem, other_id = self.certificate(F.dev2[0])
        mismatched = self.request(attest_for=other_id)
        mismatched["certificateId"], mismatched["certificatePem"] = other_id, other_pem
        replayed = self.request()
        replayed["certificateId"] = hashlib.sha256(b"another certificate").hexdigest()
        tampered_attest = self.request()
        a = base64.b64decode(tampered_attest["parameters"]["TpmAttest"])
        tampered_attest["parameters"]["TpmAttest"] = base64.b64encode(flip(a, len(a) - 50)).decode()
        tampered_sig = self.request()
        s = base64.b64decode(tampered_sig["parameters"]["TpmAttestSignature"])
        tampered_sig["parameters"]["TpmAttestSignature"] = base64.b64encode(flip(s, len(s) - 1)).decode()
        cases = {
            "TpmAkCertificate missing": (self.request(TpmAkCertificate=None), "the parameter TpmAkCertificate is missing"),
            "TpmAttest missing": (self.request(TpmAttest=None), "the parameter TpmAttest is missing"),
            "TpmAttestSignature missing": (self.request(TpmAttestSignature=None), "the parameter TpmAttestSignature is missing"),
            "TpmDevicePublic missing": (self.request(TpmDevicePublic=None), "the parameter TpmDevicePublic is missing"),
            "oversized": (self.request(TpmAttest="A" * 4100), "TpmAttest is 4100 characters, more than 4096"),
            "not base64": (self.request(TpmAttestSignature="@@@@"), "TpmAttestSignature is not base64"),
            "AK certificate of another CA": (
                self.request(TpmAkCertificate=self.other_ak_cert),
                "attestation: the certificate (subject '2.5.4.5=SN-A-0001,CN=SN-A-0001', issuer "
                "'CN=Another Manufacturer CA') does not chain to a configured CA"),
            "AK certificate not DER": (self.request(TpmAkCertificate="AAAA"), "TpmAkCertificate is not a DER X.509 certificate"),
            "replayed with another certificate id": (replayed, "qualifying data"),
            "genuine attestation of another key": (
                self.request(handle=DEV2), f"certifies the key named {F.dev2[1].hex()}"),
            "imported key": (
                self.request(key=F.imported, handle=IMPORTED), "lacks the attributes fixedTPM, fixedParent, sensitiveDataOrigin"),
            "tampered attestation": (tampered_attest, "does not verify with the attestation key"),
            "tampered signature": (tampered_sig, "does not verify with the attestation key"),
            "key of another certificate": (mismatched, f"is not the key of the new certificate {other_id}"),
        }
        for what, (event, reason) in cases.items():
            with self.subTest(what):
                self.assertRefused(event, reason)

    def test_an_expired_ak_certificate_is_refused(self):
        ak_cert = x509.load_pem_x509_certificates(F.ak_cert_pem)[0]
        later = (ak_cert.not_valid_after_utc + datetime.timedelta(days=1)).timestamp()
        self.assertRefused(self.request(), "does not chain to a configured CA", now=later)

    def test_a_wrong_serial_is_refused_only_when_checked(self):
        checked = self.settings_with(ATTESTATION_CA=str(F.ca / "ca.pem"), ATTESTATION_CHECK_SERIAL="1")
        self.assertRefused(self.request(serial="SN-B-0002"), "SerialNumber 'SN-B-0002' is not the serial "
                           f"number '{F.serial}' of the attestation key certificate", checked)
        self.assertAllowed(self.request(serial="SN-B-0003"))  # ATTESTATION_CHECK_SERIAL unset
        self.assertAllowed(self.request(serial=F.serial), checked)

    def test_rotation_is_attested_and_serial_checked(self):
        checked = self.settings_with(ATTESTATION_CA=str(F.ca / "ca.pem"), ATTESTATION_CHECK_SERIAL="1")
        current = self.iot.create_keys_and_certificate(setAsActive=True)
        for thing, serial in (("gw_mine", F.serial), ("gw_other", "SN-OTHER")):
            self.iot.create_thing(thingName=thing, attributePayload={"attributes": {"serialNumber": serial}})
            self.iot.attach_thing_principal(thingName=thing, principal=current["certificateArn"])

        def rotation(thing, **params):
            event = self.request(template="RotationTemplate", SerialNumber=None, ThingName=thing, **params)
            event["claimCertificateId"], event["clientId"] = current["certificateId"], thing
            log = io.StringIO()
            with contextlib.redirect_stderr(log):
                return hook.decide(event, self.iot, checked, time.time()), log.getvalue()

        answer, log = rotation("gw_mine")
        self.assertTrue(answer["allowProvisioning"], log)
        self.assertIn("attested", log)
        answer, log = rotation("gw_other")
        self.assertFalse(answer["allowProvisioning"])
        self.assertIn("thing gw_other's serialNumber 'SN-OTHER' is not the serial number", log)
        answer, log = rotation("gw_mine", TpmAttest=None)
        self.assertFalse(answer["allowProvisioning"])
        self.assertIn("RotationTemplate: refused: attestation is required", log)

    def test_settings_that_cannot_work_are_refused(self):
        for env, reason in (
            ({"ATTESTATION_CA": ""}, "ATTESTATION_CA is empty"),
            ({"ATTESTATION_CA": str(F.work / "missing.pem")}, "cannot read it"),
            ({"ATTESTATION_CA": str(F.work / "ek-ca-1" / "swtpm_setup.conf")}, "holds no PEM certificate"),
            ({"ATTESTATION_CHECK_SERIAL": "1"}, "needs ATTESTATION_CA"),
            ({"ATTESTATION_CA": str(F.ca / "ca.pem"), "ATTESTATION_CHECK_SERIAL": "yes"}, "not 0 or 1"),
        ):
            with self.subTest(reason):
                with self.assertRaisesRegex(hook.Refused, reason):
                    hook.Settings(env)

    def test_the_executable_refuses_an_unattested_request(self):
        event = self.request(TpmAttest=None)
        env = dict(os.environ, ATTESTATION_CA=str(F.ca / "ca.pem"), AWS_ENDPOINT_URL_IOT="http://127.0.0.1:9")
        p = subprocess.run([sys.executable, HOOK], input=json.dumps(event), env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {"allowProvisioning": False})
        self.assertIn("provisioning_hook: ProdTemplate: refused: attestation is required (ATTESTATION_CA) "
                      "and the parameter TpmAttest is missing", p.stderr)


if __name__ == "__main__":
    unittest.main()
