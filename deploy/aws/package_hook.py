#!/usr/bin/env python3
"""Builds the pre-provisioning hook's Lambda zip (deploy.sh uploads it).

    deploy/aws/package_hook.py OUT.zip
        provisioning_hook.py alone: the hook without attestation (boto3 is
        part of the Lambda runtime)
    deploy/aws/package_hook.py OUT.zip --attestation-ca CA.pem
        with hardware attestation (docs/attestation.md): also
        tpm_attestation.py, the manufacturer CA certificate(s) as
        attestation-ca.pem (ATTESTATION_CA=/var/task/attestation-ca.pem in
        the Lambda) and the `cryptography` package, as Linux wheels for the
        hook's runtime and architecture (read from prov-agent.template.json)
        at the version pinned in ci/requirements-python.txt

--python-version X.Y and --architecture x86_64|arm64 build for another
interpreter or architecture than the template's (the kit's tests run the zip
with the CI's Python). Needs pip (python3 -m pip) and PyPI, only with
--attestation-ca."""

import argparse
import base64
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HOOKS = ROOT / "templates" / "hooks"
TEMPLATE = HERE / "prov-agent.template.json"
REQUIREMENTS = ROOT / "ci" / "requirements-python.txt"
# The CA file's name in the zip; the Lambda unpacks its zip into /var/task.
CA_NAME = "attestation-ca.pem"
TASK_ROOT = "/var/task"
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
# Timestamp of every entry, so that the same inputs make the same zip.
DATE = (1980, 1, 1, 0, 0, 0)


class Refused(Exception):
    pass


def hook_runtime():
    """(python version "3.12", architecture "x86_64") of HookFunction in the template."""
    props = json.loads(TEMPLATE.read_text())["Resources"]["HookFunction"]["Properties"]
    m = re.fullmatch(r"python(3\.\d+)", props["Runtime"])
    if not m:
        raise Refused(f"HookFunction's runtime {props['Runtime']!r} is not a Python runtime")
    (arch,) = props.get("Architectures", ["x86_64"])
    return m.group(1), arch


def pinned(package):
    """The version of `package` in ci/requirements-python.txt."""
    for line in REQUIREMENTS.read_text().splitlines():
        m = re.fullmatch(rf"\s*{re.escape(package)}==(\S+)\s*(#.*)?", line)
        if m:
            return m.group(1)
    raise Refused(f"{REQUIREMENTS} pins no version of {package}")


def checked_ca(path):
    """The content of a PEM file of CA certificates; refused when it holds
    no certificate, something other than certificates (a private key put
    there by mistake would end up in the Lambda), or garbled base64."""
    try:
        text = pathlib.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise Refused(f"--attestation-ca {path}: cannot read it ({e})")
    blocks = re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", text, re.S)
    if not blocks:
        raise Refused(f"--attestation-ca {path}: holds no PEM certificate")
    for label, body in blocks:
        if label != "CERTIFICATE":
            raise Refused(f"--attestation-ca {path}: holds a {label}, not only certificates")
        try:
            base64.b64decode("".join(body.split()), validate=True)
        except ValueError:
            raise Refused(f"--attestation-ca {path}: a certificate is not base64")
    return text


def install_cryptography(target, python_version, arch):
    """pip install --target of the pinned cryptography (and its
    dependencies) as binary wheels for the Lambda's Python and architecture."""
    if arch not in PLATFORMS:
        raise Refused(f"architecture {arch!r} is not one of {', '.join(PLATFORMS)}")
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--target", str(target),
        "--platform", PLATFORMS[arch], "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp",
        f"cryptography=={pinned('cryptography')}",
    ]
    p = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise Refused(f"pip install of cryptography failed ({p.returncode}): {p.stderr.strip()}")
    # Scripts (cffi-gen-src) are of no use in a Lambda.
    shutil.rmtree(target / "bin", ignore_errors=True)


def add(archive, name, data, mode=0o644):
    info = zipfile.ZipInfo(name, DATE)
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def build(out, attestation_ca=None, python_version=None, arch=None):
    """Writes the hook's zip to `out`; returns the names in it."""
    files = {"provisioning_hook.py": (HOOKS / "provisioning_hook.py").read_bytes()}
    with tempfile.TemporaryDirectory(prefix="package_hook.") as tmp:
        if attestation_ca is not None:
            files[CA_NAME] = checked_ca(attestation_ca).encode()
            files["tpm_attestation.py"] = (HOOKS / "tpm_attestation.py").read_bytes()
            runtime_version, runtime_arch = hook_runtime()
            site = pathlib.Path(tmp) / "site"
            install_cryptography(site, python_version or runtime_version, arch or runtime_arch)
            for path in sorted(site.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    name = path.relative_to(site).as_posix()
                    if name in files:
                        raise Refused(f"the cryptography package has a file {name}, as the hook")
                    files[name] = path.read_bytes()
        partial = pathlib.Path(str(out) + ".tmp")
        with zipfile.ZipFile(partial, "w") as archive:
            for name in sorted(files):
                add(archive, name, files[name])
        partial.replace(out)
    return sorted(files)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT.zip")
    parser.add_argument("--attestation-ca", metavar="FILE",
                        help="PEM of the manufacturer CA certificates: build the hook with attestation")
    parser.add_argument("--python-version", metavar="X.Y",
                        help="the wheels' Python (default: the template's hook runtime)")
    parser.add_argument("--architecture", choices=sorted(PLATFORMS),
                        help="the wheels' architecture (default: the template's hook architecture)")
    args = parser.parse_args(argv)
    if args.attestation_ca is None and (args.python_version or args.architecture):
        parser.error("--python-version and --architecture go with --attestation-ca")
    if args.python_version and not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version {args.python_version!r} is not 3.X")
    try:
        build(args.out, args.attestation_ca, args.python_version, args.architecture)
    except Refused as e:
        print(f"package_hook.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
