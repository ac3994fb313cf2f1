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
    make-ca --force                     replace an existing CA in DIR

A Lambda function would sign with AWS Private CA or another PKI instead;
the event and the answer are the same. Needs the `cryptography` package.
"""

import argparse
import datetime
import json
import os
import pathlib
import sys
import tempfile

try:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as e:
    print(f"local_ca.py: needs the `cryptography` package ({e}): pip install cryptography",
          file=sys.stderr)
    sys.exit(2)


class Refusal(Exception):
    """A reason to stop that the user can act on: printed, no traceback."""


def write_new_file(path: pathlib.Path, data: bytes, mode: int, force: bool) -> None:
    """Writes `path` atomically with `mode` set at creation: a temporary
    file (O_EXCL, in the same directory), fsync, rename, fsync of the
    directory. Without `force` an existing `path` is refused, so an existing
    CA is never overwritten by mistake."""
    if path.exists() and not force:
        raise Refusal(f"{path} exists already: pass --force to replace it (every certificate "
                      "it signed stops chaining to the new CA)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates with O_EXCL and mode 0600; widen only when asked.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # Fails if `path` appeared meanwhile: never replaces without --force.
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_ca(directory: pathlib.Path, force: bool = False) -> None:
    """Writes a new P-256 root CA: DIR/ca.pem and DIR/ca.key (mode 0600);
    DIR is created mode 0700. An existing CA is refused unless `force`."""
    if not force:
        for name in ("ca.key", "ca.pem"):
            if (directory / name).exists():
                raise Refusal(f"{directory / name} exists already: pass --force to replace "
                              "the CA (every certificate it signed stops chaining to the new one)")
    # Created 0700 (not chmod'ed after): the key's directory is the owner's only.
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        if not directory.is_dir():
            raise Refusal(f"{directory} exists and is not a directory") from None
        if directory.stat().st_mode & 0o077:
            print(f"local_ca.py: warning: {directory} is open to other users; it holds the CA "
                  f"key: chmod 700 it", file=sys.stderr)
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key first: a ca.pem without its key would be a CA nobody can use.
    write_new_file(directory / "ca.key", key_pem, 0o600, force)
    write_new_file(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644,
                   force)


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


def seconds_from_environment() -> int:
    value = os.environ.get("LOCAL_CA_SECONDS", "86400")
    try:
        return int(value)
    except ValueError:
        raise Refusal(f"LOCAL_CA_SECONDS={value!r} is not a whole number of seconds: "
                      "set it to e.g. 120, or pass --seconds N") from None


def main() -> int:
    try:
        return run()
    except Refusal as e:
        print(f"local_ca.py: {e}", file=sys.stderr)
        return 2


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["make-ca"])
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--force", action="store_true",
                        help="make-ca: replace an existing CA in DIR")
    parser.add_argument("--ca-dir", default=os.environ.get("LOCAL_CA_DIR"))
    parser.add_argument("--seconds", type=int, default=None)
    args = parser.parse_args()
    if args.command == "make-ca":
        if not args.directory:
            parser.error("make-ca needs the directory to write ca.pem and ca.key to")
        make_ca(pathlib.Path(args.directory), args.force)
        return 0
    if args.seconds is None:
        args.seconds = seconds_from_environment()
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
    except UnsupportedAlgorithm as e:
        print(f"local_ca.py: cannot sign: the CSR's key or signature algorithm is not supported "
              f"by this `cryptography` ({e}): use a P-256/P-384 or RSA key", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A non-zero exit is a failed invocation: the device is told.
        print(f"local_ca.py: cannot sign: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
