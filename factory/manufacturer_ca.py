#!/usr/bin/env python3
"""The manufacturer's CA for hardware-attested enrollment: certifies a
gateway's attestation key (AK) once it has proved, through the TPM's
endorsement key (EK), that the AK lives in that TPM.

    manufacturer_ca.py init --dir DIR [--subject CN]
    manufacturer_ca.py challenge --ca DIR --ek-ca PEM [--ek-ca PEM ...] \\
        --request request.json --out challenge.json [--days N]

`init` makes the CA: DIR/ca.key (EC P-256, PKCS#8 PEM, mode 0600) and
DIR/ca.pem (self-signed, CA:true), the certificate the pre-provisioning
hook's ATTESTATION_CA names. It refuses to replace an existing CA.

`challenge` reads the request `prov-agent attest init` wrote, checks it
(the EK certificate chains to one of the --ek-ca certificates and is valid
now; akName is the name of akPublic; the AK is a restricted signing key with
fixedTPM, fixedParent and sensitiveDataOrigin), issues the AK certificate
(subject CN and serialNumber = the request's serialNumber) and writes the
challenge: the certificate chain encrypted under a fresh credential that
TPM2_MakeCredential wraps for the EK and binds to the AK's name. Only the TPM
holding both (TPM2_ActivateCredential, `prov-agent attest activate`) can
read it. Every certificate in the --ek-ca files is trusted (give the TPM
vendor's roots and the intermediates that issue EK certificates).

A starting point and a test fixture: a factory keeps ca.key in an HSM and
records what it issued. Errors: one line naming the file and the problem,
exit status 2, nothing written.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "templates" / "hooks"))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

import tpm_attestation as ta  # noqa: E402

# What the pre-provisioning hook accepts as SerialNumber (provisioning_hook.py):
# the AK certificate's serial must be comparable with it.
SERIAL_NUMBER = re.compile(r"[A-Za-z0-9_-]{1,64}")
CA_KEY = "ca.key"
CA_CERT = "ca.pem"
CA_DAYS = 10950  # 30 years: outlives the AK certificates it issues (7300 days by default)
REQUEST_LIMIT = 64 * 1024


class Failed(Exception):
    """A one-line reason; the CLI prints it and exits 2."""


def write_atomically(path, data, mode=0o600):
    """Temp file in the same directory (created with `mode`), fsync, rename,
    fsync the directory: `path` is either absent/old or complete."""
    path = pathlib.Path(path)
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def init(directory, subject):
    directory = pathlib.Path(directory)
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    for p in (key_path, cert_path):
        if p.exists():
            raise Failed(f"{p}: exists; a CA is never replaced (remove it yourself if you mean it)")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise Failed(f"{directory}: cannot make the directory ({e.strerror})")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    start = now() - datetime.timedelta(minutes=5)  # clocks of the verifiers may lag
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        write_atomically(key_path, pem_key, 0o600)
        write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as e:
        raise Failed(f"{directory}: cannot write the CA ({e.strerror})")
    print(f"manufacturer CA {subject!r} made: {cert_path} (give it to the hook as ATTESTATION_CA), key {key_path}")


def key_usage(cert_sign=False, digital_signature=False):
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def load_ca(directory):
    directory = pathlib.Path(directory)
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as e:
        raise Failed(f"{key_path}: cannot read the CA key ({e.strerror}); make the CA with `init --dir {directory}`")
    except (ValueError, TypeError) as e:
        raise Failed(f"{key_path}: not an unencrypted PEM private key ({e})")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as e:
        raise Failed(f"{cert_path}: cannot read the CA certificate ({e.strerror})")
    except ValueError as e:
        raise Failed(f"{cert_path}: not a PEM certificate ({e})")
    if ta.spki_der(cert.public_key()) != ta.spki_der(key.public_key()):
        raise Failed(f"{cert_path}: is not the certificate of {key_path}")
    return key, cert


def load_ek_cas(paths):
    anchors = []
    for p in paths:
        try:
            anchors += ta.load_certificates(pathlib.Path(p).read_bytes(), p)
        except OSError as e:
            raise Failed(f"{p}: cannot read the EK CA certificates ({e.strerror})")
        except ta.AttestationRefused as e:
            raise Failed(f"{p}: {e}")
    return anchors


def read_request(path):
    """The request's fields, checked for shape (not yet for trust)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(REQUEST_LIMIT + 1)
    except OSError as e:
        raise Failed(f"{path}: cannot read the request ({e.strerror})")
    if len(raw) > REQUEST_LIMIT:
        raise Failed(f"{path}: more than {REQUEST_LIMIT} bytes: not a request")
    try:
        request = json.loads(raw)
    except ValueError as e:
        raise Failed(f"{path}: not JSON ({e})")
    if not isinstance(request, dict):
        raise Failed(f"{path}: not a JSON object")
    if request.get("version") != 1:
        raise Failed(f"{path}: version is {request.get('version')!r}, this CA reads version 1")
    for field in ("serialNumber", "ekCertificate", "akPublic", "akName"):
        if not isinstance(request.get(field), str):
            raise Failed(f"{path}: {field} is missing or not a string")
    if not SERIAL_NUMBER.fullmatch(request["serialNumber"]):
        raise Failed(f"{path}: serialNumber {request['serialNumber']!r} is not 1 to 64 of A-Z a-z 0-9 _ -")
    return request


def check_request(path, request, ek_anchors, at):
    """(EK public key, AK public area, AK name) once the request holds up."""
    try:
        ek_cert = x509.load_pem_x509_certificate(request["ekCertificate"].encode())
    except ValueError as e:
        raise Failed(f"{path}: ekCertificate is not a PEM certificate ({e})")
    try:
        ta.verify_chain(ek_cert, ek_anchors, at, "ek")
    except ta.AttestationRefused as e:
        raise Failed(f"{path}: ekCertificate: {e}")
    try:
        ak = ta.parse_public(ta.unb64(request["akPublic"], "akPublic"), "akPublic (TPMT_PUBLIC)")
        ta.check_name_alg(ak, "akPublic")
    except ta.AttestationRefused as e:
        raise Failed(f"{path}: {e}")
    if not re.fullmatch(r"([0-9a-f]{2})+", request["akName"]):
        raise Failed(f"{path}: akName is not lowercase hex")
    if bytes.fromhex(request["akName"]) != ak.name():
        raise Failed(
            f"{path}: akName {request['akName']} is not the name of akPublic ({ak.name().hex()})"
        )
    missing = ak.missing(ta.RESTRICTED, ta.SIGN, ta.FIXED_TPM, ta.FIXED_PARENT, ta.SENSITIVE_DATA_ORIGIN)
    if missing:
        raise Failed(
            f"{path}: the attestation key lacks {', '.join(missing)} (attributes "
            f"0x{ak.object_attributes:08x}): it must be a restricted signing key made in the TPM "
            "that cannot leave it"
        )
    ak_key = ak.public_key()
    if isinstance(ak_key, rsa.RSAPublicKey) and ak_key.key_size < 2048:
        raise Failed(f"{path}: the attestation key is RSA {ak_key.key_size}, less than 2048")
    return ek_cert.public_key(), ak, ak_key


def challenge(ca_dir, ek_ca_paths, request_path, out_path, days):
    if not 1 <= days <= 36500:
        raise Failed(f"--days {days}: not 1 to 36500")
    ca_key, ca_cert = load_ca(ca_dir)
    ek_anchors = load_ek_cas(ek_ca_paths)
    request = read_request(request_path)
    at = now()
    ek_key, ak, ak_key = check_request(request_path, request, ek_anchors, at)
    serial = request["serialNumber"]
    start = at - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=days)
    if end > ca_cert.not_valid_after_utc:
        raise Failed(
            f"{pathlib.Path(ca_dir) / CA_CERT}: the CA is valid until {ca_cert.not_valid_after_utc:%Y-%m-%d}, "
            f"before the certificate would end ({end:%Y-%m-%d}): use a smaller --days"
        )
    ak_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, serial),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(ak_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ak_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = ak_cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    secret = os.urandom(32)
    try:
        blob, encrypted_secret = ta.make_credential(ek_key, ak.name(), secret)
    except ta.AttestationRefused as e:
        raise Failed(f"{request_path}: ekCertificate: {e}")
    nonce, sealed = ta.seal_certificate(secret, ak.name(), chain)
    answer = {
        "version": 1,
        "credentialBlob": ta.b64(blob),
        "encryptedSecret": ta.b64(encrypted_secret),
        "nonce": ta.b64(nonce),
        "encryptedCertificate": ta.b64(sealed),
    }
    try:
        write_atomically(out_path, (json.dumps(answer, indent=2) + "\n").encode())
    except OSError as e:
        raise Failed(f"{out_path}: cannot write the challenge ({e.strerror})")
    print(
        f"{out_path}: challenge for {serial} (AK {ak.name().hex()}); its certificate "
        f"{ak_cert.serial_number:x} is valid until {end:%Y-%m-%d}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="manufacturer_ca.py", description="The manufacturer CA of hardware-attested enrollment."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="make the CA key and certificate")
    p.add_argument("--dir", required=True, help="the CA's directory (made 0700)")
    p.add_argument("--subject", default="prov-agent manufacturer CA", help="the CA's common name")
    p = sub.add_parser("challenge", help="check a request and write its challenge")
    p.add_argument("--ca", required=True, help="the CA's directory (from init)")
    p.add_argument("--ek-ca", required=True, action="append", metavar="PEM",
                   help="PEM file of trusted EK CA certificates (repeatable)")
    p.add_argument("--request", required=True, help="request.json from `prov-agent attest init`")
    p.add_argument("--out", required=True, help="where to write challenge.json")
    p.add_argument("--days", type=int, default=7300, help="AK certificate validity in days (7300)")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            init(args.dir, args.subject)
        else:
            challenge(args.ca, args.ek_ca, args.request, args.out, args.days)
    except Failed as e:
        print(f"manufacturer_ca.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
