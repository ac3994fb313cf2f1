"""Fleet provisioning with the AWS IoT Device SDK v2 for Python (awsiotsdk),
unchanged but for endpoint, port and CA, as a device would do it.

Prints {"thingName", "certificateId", "deviceConfiguration"} as JSON on success; exits 1
with the reason on stderr otherwise. Driven by tests/awsiotsdk.rs.
"""
import argparse
import json
import sys
import threading
from concurrent.futures import Future

from awscrt import mqtt, mqtt5
from awsiot import iotidentity, mqtt5_client_builder, mqtt_connection_builder

TIMEOUT = 20


def connect(args):
    if args.mqtt == "3":
        conn = mqtt_connection_builder.mtls_from_path(
            endpoint=args.endpoint, port=args.port, cert_filepath=args.cert,
            pri_key_filepath=args.key, ca_filepath=args.ca, client_id=args.client_id,
            clean_session=False, keep_alive_secs=30)
        conn.connect().result(TIMEOUT)
        return conn, lambda: conn.disconnect().result(TIMEOUT)
    connected = Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint=args.endpoint, port=args.port, cert_filepath=args.cert,
        pri_key_filepath=args.key, ca_filepath=args.ca, client_id=args.client_id,
        on_lifecycle_connection_success=lambda d: connected.done() or connected.set_result(True),
        on_lifecycle_connection_failure=lambda d: connected.done() or connected.set_exception(
            RuntimeError(f"MQTT 5 connection failed: {d.exception}")))
    client.start()
    connected.result(TIMEOUT)
    return client, client.stop


class Waiter:
    def __init__(self):
        self.event = threading.Event()
        self.value = None
        self.error = None

    def ok(self, response):
        self.value = response
        self.event.set()

    def rejected(self, error):
        self.error = error
        self.event.set()

    def wait(self, what):
        if not self.event.wait(TIMEOUT):
            raise RuntimeError(f"{what}: no response")
        if self.error is not None:
            raise RuntimeError(f"{what} rejected: {self.error.status_code} {self.error.error_code} {self.error.error_message}")
        return self.value


def main():
    p = argparse.ArgumentParser()
    for a in ("endpoint", "ca", "cert", "key", "client_id", "template", "serial"):
        p.add_argument("--" + a.replace("_", "-"), dest=a, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mqtt", choices=("3", "5"), required=True)
    p.add_argument("--mode", choices=("keys", "csr"), required=True)
    p.add_argument("--csr")
    args = p.parse_args()

    conn, close = connect(args)
    identity = iotidentity.IotIdentityClient(conn)
    qos = mqtt.QoS.AT_LEAST_ONCE

    created = Waiter()
    if args.mode == "keys":
        req = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
        f, _ = identity.subscribe_to_create_keys_and_certificate_accepted(req, qos, created.ok)
        f.result(TIMEOUT)
        f, _ = identity.subscribe_to_create_keys_and_certificate_rejected(req, qos, created.rejected)
        f.result(TIMEOUT)
        identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), qos).result(TIMEOUT)
    else:
        req = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
        f, _ = identity.subscribe_to_create_certificate_from_csr_accepted(req, qos, created.ok)
        f.result(TIMEOUT)
        f, _ = identity.subscribe_to_create_certificate_from_csr_rejected(req, qos, created.rejected)
        f.result(TIMEOUT)
        with open(args.csr) as fh:
            csr = fh.read()
        identity.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), qos).result(TIMEOUT)
    cert = created.wait("certificate creation")

    registered = Waiter()
    req = iotidentity.RegisterThingSubscriptionRequest(template_name=args.template)
    f, _ = identity.subscribe_to_register_thing_accepted(req, qos, registered.ok)
    f.result(TIMEOUT)
    f, _ = identity.subscribe_to_register_thing_rejected(req, qos, registered.rejected)
    f.result(TIMEOUT)
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=args.template,
        certificate_ownership_token=cert.certificate_ownership_token,
        parameters={"SerialNumber": args.serial}), qos).result(TIMEOUT)
    thing = registered.wait("RegisterThing")
    close()
    print(json.dumps({
        "thingName": thing.thing_name,
        "certificateId": cert.certificate_id,
        "deviceConfiguration": thing.device_configuration,
        "privateKey": getattr(cert, "private_key", None),
        "certificatePem": cert.certificate_pem,
    }))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the reason goes to the test's failure message
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
