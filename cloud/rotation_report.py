#!/usr/bin/env python3
"""The rotation-report rule for AWS IoT: retires a thing's old certificates
once the device reports, with its new certificate, that it moved to it.

prov-agent publishes, after it committed a new identity (rotation, or an
enrollment that gave up on a certificate), on ``things/<thing>/rotation``:
``{"thingName", "newCertificateId", "oldCertificateIds": [..], "reason", "time"}``.

On AWS an IoT rule hands each report to this Lambda (handler
``rotation_report.lambda_handler``), adding who sent it::

    SELECT thingName, newCertificateId, oldCertificateIds, oldCertificateId,
           topic(2) AS topicThing, principal() AS principal
    FROM 'things/+/rotation'

(``principal()`` is the certificate id of a certificate-authenticated
connection. The fields are named one by one, not ``SELECT *``: a payload
carrying its own ``topicThing`` or ``principal`` must not be able to stand
in for what the service says.) The function's role needs iot:DescribeCertificate,
iot:ListThingPrincipals, iot:ListPrincipalThings, iot:UpdateCertificate and
iot:DetachThingPrincipal. Run as a program it reads one such event on stdin
and prints what it did, against the endpoint boto3 is given
(AWS_ENDPOINT_URL_IOT for iotcore-emulator's control-plane API); the
emulator also has the same rule built in (emulator/README.md).

Every gateway holds the fleet's claim credential, so a report is acted on
only when it is genuine: published on the thing's own topic by an ACTIVE
certificate of that thing which the report names as the new one. Each old
certificate must be attached to that thing and must not be the reporting
certificate. It is then set INACTIVE (unless another thing still uses it)
and detached from the thing. (The reporting certificate may be the older
one: a device whose rotation failed after the new certificate was activated
reports that one, with its current certificate. Whoever holds an ACTIVE key
of a thing is that thing until the certificate is retired.) Anything else
is ignored with a log line; the function never raises for a bad report.
"""

import json
import re
import sys

CERTIFICATE_ID = re.compile(r"[0-9a-f]{64}")
THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")


class Ignored(Exception):
    """The report is not acted on; the message says why."""


def lambda_handler(event, context=None):
    try:
        iot = iot_client()
    except Exception as e:  # boto3 missing, no region: nothing is changed
        log(f"ignored: {e}")
        return {"retired": [], "ignored": {"*": str(e)}}
    return handle(event, iot)


def iot_client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise Ignored(f"boto3 is not installed ({e}): pip install 'boto3>=1.28'")
    return boto3.client("iot", config=Config(retries={"max_attempts": 3}))


def handle(event, iot):
    """Retires what a genuine report names; returns what it did."""
    done = {"retired": [], "ignored": {}}
    try:
        thing, new, olds = genuine(event, iot)
    except Ignored as e:
        log(f"report ignored: {e}")
        done["ignored"]["*"] = str(e)
        return done
    except Exception as e:  # an API error: nothing was changed
        log(f"report ignored: the check failed: {type(e).__name__}: {e}")
        done["ignored"]["*"] = f"{type(e).__name__}: {e}"
        return done
    try:
        attached = thing_certificates(iot, thing)
    except Exception as e:
        log(f"report ignored: the check failed: {type(e).__name__}: {e}")
        done["ignored"]["*"] = f"{type(e).__name__}: {e}"
        return done
    for old in olds:
        try:
            if old == new:
                raise Ignored("it is the reporting certificate")
            if old not in attached:
                raise Ignored(f"it is not attached to {thing}")
            arn = describe(iot, old)["certificateArn"]
            others = [t for t in principal_things(iot, arn) if t != thing]
            if not others:
                iot.update_certificate(certificateId=old, newStatus="INACTIVE")
            iot.detach_thing_principal(thingName=thing, principal=arn)
            log(
                f"{thing}: certificate {old} detached"
                + (f"; still attached to {others}, so left as it was" if others else " and set INACTIVE")
            )
            done["retired"].append(old)
        except Ignored as e:
            log(f"{thing}: old certificate {old} ignored: {e}")
            done["ignored"][old] = str(e)
        except Exception as e:
            log(f"{thing}: old certificate {old}: {type(e).__name__}: {e}")
            done["ignored"][old] = f"{type(e).__name__}: {e}"
    return done


def genuine(event, iot):
    """(thing, new certificate id, old ids) of a report that checks out."""
    if not isinstance(event, dict):
        raise Ignored("the event is not a JSON object")
    thing = event.get("thingName")
    if not isinstance(thing, str) or not THING_NAME.fullmatch(thing):
        raise Ignored("thingName is missing or not a thing name")
    if event.get("topicThing") != thing:
        raise Ignored(f"thingName {thing} is not the thing of the topic ({event.get('topicThing')!r})")
    new = event.get("newCertificateId")
    if not isinstance(new, str) or not CERTIFICATE_ID.fullmatch(new):
        raise Ignored("newCertificateId is missing or not a certificate id")
    if event.get("principal") != new:
        raise Ignored("the report was not published by the certificate it names as new")
    olds = event.get("oldCertificateIds")
    if olds is None:
        olds = []
    if not isinstance(olds, list):
        raise Ignored("oldCertificateIds must be a list of certificate ids")
    if isinstance(event.get("oldCertificateId"), str):
        olds = olds + [event["oldCertificateId"]]
    if not all(
        isinstance(o, str) and CERTIFICATE_ID.fullmatch(o) for o in olds
    ):
        raise Ignored("oldCertificateIds must be a list of certificate ids")
    if not olds:
        raise Ignored("the report names no old certificate")
    if describe(iot, new)["status"] != "ACTIVE":
        raise Ignored(f"the reporting certificate {new} is not ACTIVE")
    if new not in thing_certificates(iot, thing):
        raise Ignored(f"the reporting certificate {new} is not attached to {thing}")
    return thing, new, sorted(set(olds))


def describe(iot, certificate_id):
    return iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]


def thing_certificates(iot, thing):
    """Ids of the certificates attached to a thing."""
    out = set()
    kwargs = {"thingName": thing}
    while True:
        page = iot.list_thing_principals(**kwargs)
        for arn in page.get("principals", []):
            kind, _, cert = arn.rpartition(":")[2].partition("/")
            if kind == "cert":
                out.add(cert)
        if not page.get("nextToken"):
            return out
        kwargs["nextToken"] = page["nextToken"]


def principal_things(iot, arn):
    out = []
    kwargs = {"principal": arn}
    while True:
        page = iot.list_principal_things(**kwargs)
        out.extend(page.get("things", []))
        if not page.get("nextToken"):
            return out
        kwargs["nextToken"] = page["nextToken"]


def log(message):
    print(f"rotation_report: {message}", file=sys.stderr, flush=True)


def main():
    try:
        event = json.load(sys.stdin)
    except ValueError as e:
        log(f"report ignored: the event is not JSON: {e}")
        event = None
    json.dump(lambda_handler(event), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
