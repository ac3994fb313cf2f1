#!/usr/bin/env python3
"""A sample certificate provider: signs the CSR with a local CA, for a short
validity, following the AWS IoT Core certificate provider Lambda contract.

Event on stdin (what AWS passes the Lambda function):
    {"certificateSigningRequest": PEM, "principalId": ID, "clientId": ID}
Answer on stdout (what the Lambda function returns):
    {"certificatePem": PEM}

The emulator runs it for every CreateCertificateFromCsr once it is the
account's certificate provider:

    emulator/providers/local_ca.py make-ca DIR          # DIR/ca.pem, DIR/ca.key
    iotcore-emulator certificate-providers create LocalCa \\
        --command "$PWD/emulator/providers/local_ca.py" \\
        --arg --ca-dir --arg DIR --arg --seconds --arg 120

Options (or environment variables, for a Lambda-like configuration):
    --ca-dir DIR      LOCAL_CA_DIR      holds ca.pem and ca.key
    --seconds N       LOCAL_CA_SECONDS  validity (default 86400)

A Lambda function would sign with AWS Private CA or another PKI instead;
the event and the answer are the same. Needs the `cryptography` package.
"""

import argparse
import datetime
import json
import os
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_ca(directory: pathlib.Path) -> None:
    """Writes a new P-256 root CA: DIR/ca.pem and DIR/ca.key (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local_ca.py sample CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "ca.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def sign(event: dict, ca_dir: pathlib.Path, seconds: int) -> dict:
    """The Lambda handler's work: the CSR's key and subject, signed by the CA."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    csr = x509.load_pem_x509_csr(event["certificateSigningRequest"].encode())
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack for a device clock behind ours, within the lifetime.
        .not_valid_before(now - datetime.timedelta(seconds=min(60, seconds // 10)))
        .not_valid_after(now + datetime.timedelta(seconds=seconds))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    print(
        f"signed {csr.subject.rfc4514_string() or '(empty subject)'} for principal "
        f"{event.get('principalId')} (client {event.get('clientId')}), valid {seconds} s",
        file=sys.stderr,
    )
    return {"certificatePem": cert.public_bytes(serialization.Encoding.PEM).decode()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["make-ca"])
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--ca-dir", default=os.environ.get("LOCAL_CA_DIR"))
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("LOCAL_CA_SECONDS", "86400")))
    args = parser.parse_args()
    if args.command == "make-ca":
        if not args.directory:
            parser.error("make-ca needs the directory to write ca.pem and ca.key to")
        make_ca(pathlib.Path(args.directory))
        return 0
    if not args.ca_dir:
        print("local_ca.py: no CA: pass --ca-dir DIR or set LOCAL_CA_DIR "
              "(make one with `local_ca.py make-ca DIR`)", file=sys.stderr)
        return 2
    if args.seconds < 1:
        print(f"local_ca.py: --seconds {args.seconds} must be at least 1", file=sys.stderr)
        return 2
    try:
        event = json.load(sys.stdin)
        answer = sign(event, pathlib.Path(args.ca_dir), args.seconds)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A non-zero exit is a failed invocation: the device is told.
        print(f"local_ca.py: cannot sign: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
