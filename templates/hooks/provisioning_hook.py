#!/usr/bin/env python3
"""Pre-provisioning hook for prov-agent's fleet provisioning templates.

One program, two ways to run it, one code path:

* AWS Lambda: handler ``provisioning_hook.lambda_handler``, runtime python3.12
  or later (boto3 is part of the runtime); the function's role needs
  iot:CreateThing, iot:DescribeThing, iot:ListThingPrincipals,
  iot:DescribeCertificate and iot:UpdateThing. Attach it to the templates as their pre-provisioning hook.
* iotcore-emulator: the executable named by ``templates/hooks/*.hook``; it
  reads the hook request on stdin and writes the answer on stdout. The
  emulator sets AWS_ENDPOINT_URL_IOT (its own control-plane API), a region and
  placeholder credentials, so boto3 talks to the emulator's registry.

Every gateway of a fleet holds the same claim credential, so the hook assumes
that whoever sends a request may be an attacker holding it. It allows:

* ProdTemplate (the templates named in ENROLLMENT_TEMPLATES): a thing that
  does not exist yet, which the hook creates at once (CreateThing, with the
  attribute ``enrollmentKey``: the SHA-256 of the new certificate's public
  key), so that of two requests racing for the same new thing exactly one
  wins. A thing that exists only when the request proves that it comes from
  that thing's device:
  1. it is sent over a connection of an ACTIVE certificate attached to the
     thing, with the thing's name as client id (``prov-agent enroll --force``
     on an enrolled gateway), or
  2. the new certificate is for the key of an ACTIVE certificate attached to
     the thing, or is itself attached to it (a device repeating a
     registration whose answer it lost: only the holder of that key could
     have had a certificate issued for it), or
  3. no certificate at all is attached to the thing and its ``enrollmentKey``
     is the new certificate's key: the device finishing a first enrollment
     that an earlier attempt of its own began (it keeps its key for exactly
     this), or
  4. an operator opened the thing for re-enrollment after a factory reset:
     the thing's attribute ``reenrollUntil`` holds a Unix time in the future
     (at most REENROLL_MAX_WINDOW seconds ahead) and none of its certificates
     is ACTIVE. The attribute is removed before the answer, so it admits one
     enrollment.
  The parameters that decide names and groups are checked against
  allowlists: ThingNamePrefix against THING_NAME_PREFIXES, Site against
  SITES; SerialNumber and HardwareRevision against strict character sets.
  A thing name may never start with the claim sessions' client-id prefix
  (CLAIM_CLIENT_ID_PREFIX), which the claim policy lets anyone with the claim
  credential connect as.
* RotationTemplate (the templates named in ROTATION_TEMPLATES): only a
  request sent over a connection of an ACTIVE certificate attached to the
  thing named by ThingName, with that name as client id.
* Any other template: refused (a template this hook does not know might name
  its thing differently from what the checks above assume).

Hardware attestation (when ATTESTATION_CA is set), for both templates and
before the registry is asked or changed: the request must carry the TPM's
proof that the new certificate's key was made in, and cannot leave, the TPM
of a gateway the manufacturer built (templates/README.md, issue 14):
  TpmAkCertificate    base64 DER: the attestation key's certificate, which
                      must chain to a certificate in ATTESTATION_CA and be
                      valid now
  TpmAttest           base64 TPMS_ATTEST of TPM2_Certify of the new key by
                      the attestation key, qualifying data = the request's
                      certificateId as its 32 bytes (hex-decoded)
  TpmAttestSignature  base64 TPMT_SIGNATURE of it, by the attestation key
  TpmDevicePublic     base64 TPMT_PUBLIC of the new key: the certified name,
                      the key of certificatePem, with fixedTPM, fixedParent,
                      sensitiveDataOrigin and sign
each at most 4096 characters. With ATTESTATION_CHECK_SERIAL=1 the gateway's
serial must be the serialNumber (2.5.4.5) of the attestation key
certificate's subject: the SerialNumber parameter (ProdTemplate) or the
thing's serialNumber attribute (RotationTemplate). The checks need the
`cryptography` package and tpm_attestation.py next to this file (both in the
Lambda's zip); without ATTESTATION_CA neither is imported.

Anything else, and any error (the registry unreachable, a malformed request),
is refused: the hook fails closed. The reason is written to stderr (the
emulator's log, or CloudWatch Logs for the Lambda); the device only sees
AccessDenied, as AWS answers it.

Settings (environment variables of the Lambda or of the emulator):
  THING_NAME_PREFIXES     comma-separated allowlist, first = default ("gw")
  SITES                   comma-separated allowlist ("default,plant-a,plant-b")
  CLAIM_CLIENT_ID_PREFIX  the claim policy's client-id prefix ("prov-")
  ENROLLMENT_TEMPLATES    templates checked as enrollment ("ProdTemplate")
  ROTATION_TEMPLATES      templates checked as rotation ("RotationTemplate")
  REENROLL_MAX_WINDOW     seconds; a later reenrollUntil is refused (604800)
  ATTESTATION_CA          PEM file of the manufacturer CA certificate(s);
                          set: every request must be attested (unset)
  ATTESTATION_CHECK_SERIAL  1: the serial must be the attestation key
                          certificate's (0)
"""

import base64
import datetime
import hashlib
import json
import os
import re
import sys
import time

THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")
SERIAL_NUMBER = re.compile(r"[A-Za-z0-9_-]{1,64}")
# AWS IoT attribute values: [a-zA-Z0-9_.,@/:#-]*; kept short here.
HARDWARE_REVISION = re.compile(r"[A-Za-z0-9_.,@/:#-]{1,64}")
CERTIFICATE_ID = re.compile(r"[0-9a-f]{64}")
TEMPLATE_ARN = re.compile(r"arn:aws[a-z-]*:iot:[^:]*:[^:]*:provisioningtemplate/([0-9A-Za-z_-]{1,36})")
REENROLL_ATTRIBUTE = "reenrollUntil"
ENROLLMENT_KEY_ATTRIBUTE = "enrollmentKey"
# The attribute ProdTemplate records the serial number in (templates/ProdTemplate.json).
SERIAL_NUMBER_ATTRIBUTE = "serialNumber"
# The attestation's template parameters, in the order they are checked.
ATTESTATION_PARAMETERS = ("TpmAkCertificate", "TpmAttest", "TpmAttestSignature", "TpmDevicePublic")
# AWS's limit for a template parameter value.
PARAMETER_LIMIT = 4096


class Refused(Exception):
    """The request does not prove what it must; the message says why."""


class Settings:
    def __init__(self, env):
        def names(key, default):
            value = [v.strip() for v in env.get(key, default).split(",") if v.strip()]
            if not value:
                raise Refused(f"setting {key} is empty")
            return value

        self.thing_name_prefixes = names("THING_NAME_PREFIXES", "gw")
        self.sites = names("SITES", "default,plant-a,plant-b")
        self.claim_client_id_prefix = env.get("CLAIM_CLIENT_ID_PREFIX", "prov-")
        if not self.claim_client_id_prefix:
            raise Refused("setting CLAIM_CLIENT_ID_PREFIX is empty")
        self.enrollment_templates = names("ENROLLMENT_TEMPLATES", "ProdTemplate")
        self.rotation_templates = names("ROTATION_TEMPLATES", "RotationTemplate")
        self.reenroll_max_window = int(env.get("REENROLL_MAX_WINDOW", "604800"))
        self.attestation = None
        if "ATTESTATION_CA" in env:
            self.attestation = Attestation(env["ATTESTATION_CA"])
        check_serial = env.get("ATTESTATION_CHECK_SERIAL", "0")
        if check_serial not in ("0", "1"):
            raise Refused(f"setting ATTESTATION_CHECK_SERIAL is {check_serial!r}, not 0 or 1")
        self.attestation_check_serial = check_serial == "1"
        if self.attestation_check_serial and self.attestation is None:
            raise Refused("setting ATTESTATION_CHECK_SERIAL=1 needs ATTESTATION_CA")


class Attestation:
    """The manufacturer CA certificates that attestation key certificates
    must chain to, and the module that checks the TPM's structures (imported
    only here: the hook without attestation needs no `cryptography`)."""

    def __init__(self, path):
        if not path:
            raise Refused("setting ATTESTATION_CA is empty")
        try:
            import tpm_attestation
        except ImportError as e:
            raise Refused(
                f"ATTESTATION_CA is set but tpm_attestation cannot be imported ({e}): put "
                "tpm_attestation.py next to this file and pip install 'cryptography>=45'"
            )
        self.tpm = tpm_attestation
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise Refused(f"ATTESTATION_CA {path}: cannot read it ({e.strerror})")
        try:
            self.anchors = tpm_attestation.load_certificates(pem, f"ATTESTATION_CA {path}")
        except tpm_attestation.AttestationRefused as e:
            raise Refused(str(e))


class Attested:
    """What an attestation that held up proves about the request."""

    def __init__(self, serial, summary):
        self.serial = serial
        self.summary = summary


def lambda_handler(event, context=None):
    """The Lambda entry point; the emulator's stdin/stdout path calls it too."""
    try:
        settings = Settings(os.environ)
        iot = iot_client()
    except Exception as e:  # a setting, boto3 missing, no region: fail closed
        log(f"refused: the hook is not set up: {type(e).__name__}: {e}")
        return {"allowProvisioning": False}
    return decide(event, iot, settings, time.time())


def iot_client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise Refused(f"boto3 is not installed ({e}): pip install 'boto3>=1.28'")
    # The emulator and AWS give the hook 5 s: fail fast rather than late.
    config = Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 2})
    return boto3.client("iot", config=config)


def decide(event, iot, settings, now):
    """The answer to one hook request: allow (with the checked parameters as
    overrides) or refuse. Never raises."""
    template = "?"
    try:
        if not isinstance(event, dict):
            raise Refused("the request is not a JSON object")
        template = template_name(event)
        params = event.get("parameters") or {}
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise Refused("parameters must be a map of strings")
        rotating = template in settings.rotation_templates
        if not rotating and template not in settings.enrollment_templates:
            raise Refused(
                "the template is neither in ENROLLMENT_TEMPLATES nor in ROTATION_TEMPLATES"
            )
        # Before the registry is asked or changed: a request the TPM does not
        # vouch for creates no thing.
        attested = None
        if settings.attestation is not None:
            attested = attestation(event, params, settings, now)
        if rotating:
            overrides, why = rotation(event, params, iot, settings, attested)
        else:
            overrides, why = enrollment(event, params, iot, settings, now, attested)
        if attested is not None:
            why = f"{why}; {attested.summary}"
        log(f"{template}: allowed: {why}")
        return {"allowProvisioning": True, "parameterOverrides": overrides}
    except Refused as e:
        log(f"{template}: refused: {e}")
    except Exception as e:  # the registry unreachable, an API error: fail closed
        log(f"{template}: refused: the check failed: {type(e).__name__}: {e}")
    return {"allowProvisioning": False}


def template_name(event):
    m = TEMPLATE_ARN.fullmatch(str(event.get("templateArn", "")))
    if not m:
        raise Refused("templateArn is missing or not a provisioning template ARN")
    return m.group(1)


def requester(event):
    """The certificate of the connection that sent the request and its client id."""
    cert = str(event.get("claimCertificateId", ""))
    if not CERTIFICATE_ID.fullmatch(cert):
        raise Refused("claimCertificateId is missing or not a certificate id")
    return cert, str(event.get("clientId", ""))


def checked_thing_name(name, settings):
    if not THING_NAME.fullmatch(name):
        raise Refused(f"thing name {name!r} is not 1 to 128 of A-Z a-z 0-9 : _ -")
    if name.startswith(settings.claim_client_id_prefix):
        raise Refused(
            f"thing name {name!r} starts with the claim client-id prefix "
            f"{settings.claim_client_id_prefix!r}: anyone with the claim credential could "
            "connect as it"
        )
    return name


def enrollment(event, params, iot, settings, now, attested=None):
    serial = params.get("SerialNumber", "")
    if not SERIAL_NUMBER.fullmatch(serial):
        raise Refused(f"SerialNumber {serial!r} is not 1 to 64 of A-Z a-z 0-9 _ -")
    if attested is not None and settings.attestation_check_serial and serial != attested.serial:
        raise Refused(
            f"SerialNumber {serial!r} is not the serial number {attested.serial!r} of the "
            "attestation key certificate (ATTESTATION_CHECK_SERIAL=1)"
        )
    prefix = params.get("ThingNamePrefix", settings.thing_name_prefixes[0])
    if prefix not in settings.thing_name_prefixes:
        raise Refused(f"ThingNamePrefix {prefix!r} is not in THING_NAME_PREFIXES")
    site = params.get("Site", "default")
    if site not in settings.sites:
        raise Refused(f"Site {site!r} is not in SITES")
    revision = params.get("HardwareRevision", "unknown")
    if not HARDWARE_REVISION.fullmatch(revision):
        raise Refused(f"HardwareRevision {revision!r} is not 1 to 64 of A-Z a-z 0-9 _ . , @ / : # -")
    thing = checked_thing_name(f"{prefix}_{serial}", settings)
    # The template gets exactly the values checked here.
    overrides = {
        "SerialNumber": serial,
        "ThingNamePrefix": prefix,
        "Site": site,
        "HardwareRevision": revision,
    }
    new_key = public_key_of(str(event.get("certificatePem", "")))
    key_id = hashlib.sha256(new_key).hexdigest()

    existing = describe_thing(iot, thing)
    if existing is None:
        claim_new_thing(iot, thing, key_id)
        return overrides, f"new thing {thing}, created for the key {key_id}"

    cert, client_id = requester(event)
    attached = thing_certificates(iot, thing)
    active = {c for c, d in attached.items() if d["status"] == "ACTIVE"}
    if cert in active and client_id == thing:
        return overrides, f"{thing} exists; the request comes from its certificate {cert}"
    new_cert = str(event.get("certificateId", ""))
    if new_cert in active:
        return overrides, f"{thing} exists; {new_cert} is already its certificate (a repeated registration)"
    for c in sorted(active):
        try:
            same = public_key_of(attached[c]["certificatePem"]) == new_key
        except Refused as e:
            log(f"{thing}: certificate {c} not compared: {e}")
            continue
        if same:
            return overrides, f"{thing} exists; the new certificate is for the key of its ACTIVE certificate {c}"
    attributes = existing.get("attributes") or {}
    # Only while no certificate at all is attached: once one was (even if it
    # is INACTIVE or detached again later by a rotation), the recorded key may
    # be an old, retired or compromised one.
    if not attached and attributes.get(ENROLLMENT_KEY_ATTRIBUTE) == key_id:
        return overrides, f"{thing} was created for this key ({key_id}) by an earlier attempt"

    marker = attributes.get(REENROLL_ATTRIBUTE)
    if marker is None:
        raise Refused(
            f"thing {thing} exists and the request does not come from its device (client "
            f"{client_id!r}, certificate {cert}); to re-enroll a gateway that lost its identity, "
            f"deactivate the thing's certificates and set its attribute {REENROLL_ATTRIBUTE} to a "
            "Unix time in the near future (templates/README.md)"
        )
    try:
        until = int(marker)
    except ValueError:
        raise Refused(f"thing {thing}: {REENROLL_ATTRIBUTE} {marker!r} is not a Unix time")
    if until <= now:
        raise Refused(f"thing {thing}: re-enrollment window ended at {until}")
    if until > now + settings.reenroll_max_window:
        raise Refused(
            f"thing {thing}: {REENROLL_ATTRIBUTE} {until} is more than "
            f"{settings.reenroll_max_window} s ahead; set a nearer time"
        )
    if active:
        raise Refused(
            f"thing {thing} is open for re-enrollment but still has ACTIVE certificates "
            f"{sorted(active)}: deactivate them first"
        )
    # One enrollment per opening: the version check makes two concurrent
    # requests race for a single success. The key that used it is recorded
    # (for the operator: who used the opening).
    iot.update_thing(
        thingName=thing,
        attributePayload={
            "attributes": {REENROLL_ATTRIBUTE: "", ENROLLMENT_KEY_ATTRIBUTE: key_id},
            "merge": True,
        },
        expectedVersion=existing["version"],
    )
    return overrides, f"{thing} was opened for re-enrollment until {until}; the opening is used up"


def rotation(event, params, iot, settings, attested=None):
    thing = checked_thing_name(params.get("ThingName", ""), settings)
    cert, client_id = requester(event)
    if client_id != thing:
        raise Refused(f"ThingName {thing!r} is not the requesting client id {client_id!r}")
    existing = describe_thing(iot, thing)
    if existing is None:
        raise Refused(f"thing {thing} does not exist")
    if attested is not None and settings.attestation_check_serial:
        # The serial its enrollment recorded: a thing's key may move only
        # into the TPM of the gateway with that serial.
        recorded = (existing.get("attributes") or {}).get(SERIAL_NUMBER_ATTRIBUTE)
        if recorded != attested.serial:
            raise Refused(
                f"thing {thing}'s {SERIAL_NUMBER_ATTRIBUTE} {recorded!r} is not the serial number "
                f"{attested.serial!r} of the attestation key certificate (ATTESTATION_CHECK_SERIAL=1)"
            )
    attached = thing_certificates(iot, thing)
    if attached.get(cert, {}).get("status") != "ACTIVE":
        raise Refused(f"the requesting certificate {cert} is not an ACTIVE certificate of {thing}")
    return {}, f"{thing} rotates from its certificate {cert}"


def attestation(event, params, settings, now):
    """Checks the TPM's proof that the new certificate's key lives in the
    TPM of a gateway the manufacturer certified (module docstring)."""
    tpm = settings.attestation.tpm
    values = {}
    for name in ATTESTATION_PARAMETERS:
        value = params.get(name)
        if value is None:
            raise Refused(f"attestation is required (ATTESTATION_CA) and the parameter {name} is missing")
        if len(value) > PARAMETER_LIMIT:
            raise Refused(f"attestation parameter {name} is {len(value)} characters, more than {PARAMETER_LIMIT}")
        try:
            values[name] = base64.b64decode(value, validate=True)
        except ValueError:
            raise Refused(f"attestation parameter {name} is not base64")
    cert_id = str(event.get("certificateId", ""))
    if not CERTIFICATE_ID.fullmatch(cert_id):
        raise Refused("certificateId is missing or not a certificate id")
    try:
        ak_cert = tpm.load_der_certificate(values["TpmAkCertificate"], "TpmAkCertificate")
        at = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        tpm.verify_chain(ak_cert, settings.attestation.anchors, at, "ak")
        device = tpm.verify_certify(
            values["TpmAttest"],
            values["TpmAttestSignature"],
            ak_cert.public_key(),
            values["TpmDevicePublic"],
            bytes.fromhex(cert_id),
        )
        if not tpm.public_matches_certificate(device, str(event.get("certificatePem", ""))):
            raise tpm.AttestationRefused(
                f"the attested key (named {device.name().hex()}) is not the key of the new "
                f"certificate {cert_id}"
            )
        if settings.attestation_check_serial:
            serial = tpm.subject_serial_number(ak_cert)
        else:
            serial = tpm.subject_serial_number(ak_cert, required=False)
    except tpm.AttestationRefused as e:
        raise Refused(f"attestation: {e}")
    return Attested(
        serial,
        f"attested: key {device.name().hex()} in the TPM of serial {serial!r} (attestation key "
        f"certificate {ak_cert.serial_number:x} from {ak_cert.issuer.rfc4514_string()!r})",
    )


def claim_new_thing(iot, thing, key_id):
    """Creates the thing for this key, or refuses when another request just
    created it: CreateThing is idempotent only for the same attributes, so of
    two racing requests (with two keys) exactly one gets the thing."""
    try:
        iot.create_thing(
            thingName=thing,
            attributePayload={"attributes": {ENROLLMENT_KEY_ATTRIBUTE: key_id}},
        )
    except iot.exceptions.ResourceAlreadyExistsException:
        raise Refused(f"thing {thing} was just created by another request")


def describe_thing(iot, name):
    try:
        return iot.describe_thing(thingName=name)
    except iot.exceptions.ResourceNotFoundException:
        return None


def thing_certificates(iot, thing):
    """Certificate id -> description of every certificate attached to the thing."""
    out = {}
    kwargs = {"thingName": thing}
    while True:
        page = iot.list_thing_principals(**kwargs)
        for arn in page.get("principals", []):
            kind, _, cert = arn.rpartition(":")[2].partition("/")
            if kind == "cert" and CERTIFICATE_ID.fullmatch(cert):
                out[cert] = iot.describe_certificate(certificateId=cert)["certificateDescription"]
        if not page.get("nextToken"):
            return out
        kwargs["nextToken"] = page["nextToken"]


def public_key_of(pem):
    """The DER of a certificate's SubjectPublicKeyInfo (no crypto library needed)."""
    lines = pem.strip().splitlines()
    try:
        start = lines.index("-----BEGIN CERTIFICATE-----")
        end = lines.index("-----END CERTIFICATE-----", start)
        der = base64.b64decode("".join(l.strip() for l in lines[start + 1 : end]), validate=True)
        if der[0] != 0x30:
            raise ValueError("not a DER SEQUENCE")
        tbs = children(der, *content(der, 0))[0]
        fields = children(der, *content(der, tbs))
        if der[fields[0]] == 0xA0:  # [0] version
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        spki = fields[5]
        return der[spki : content(der, spki)[1]]
    except (ValueError, IndexError) as e:
        raise Refused(f"a certificate is not a PEM X.509 certificate ({e})")


def content(der, at):
    """(start, end) of the content of the DER element at `at`."""
    if der[at] & 0x1F == 0x1F:
        raise ValueError("high tag numbers are not used in certificates")
    first = der[at + 1]
    if first < 0x80:
        start, length = at + 2, first
    else:
        n = first & 0x7F
        if not 1 <= n <= 4:
            raise ValueError("bad DER length")
        start, length = at + 2 + n, int.from_bytes(der[at + 2 : at + 2 + n], "big")
    if start + length > len(der):
        raise ValueError("truncated DER")
    return start, start + length


def children(der, start, end):
    """Offsets of the elements inside a constructed element's content."""
    out = []
    while start < end:
        out.append(start)
        start = content(der, start)[1]
    return out


def log(message):
    print(f"provisioning_hook: {message}", file=sys.stderr, flush=True)


def main():
    try:
        answer = lambda_handler(json.load(sys.stdin))
    except ValueError as e:
        log(f"refused: the request is not JSON: {e}")
        answer = {"allowProvisioning": False}
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
