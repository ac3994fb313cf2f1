#!/usr/bin/env python3
"""Asks gateways to rotate their certificate now, the two ways prov-agent's
daemon listens for (docs/architecture.md):

    deploy/aws/rotate.py --job NAME THING [THING ...]   # an AWS IoT Job
    deploy/aws/rotate.py --command THING [THING ...]    # cmd/<thing>, MQTT

A job is the fleet way: it waits for gateways that are offline, and each
gateway reports SUCCEEDED or FAILED; its document is
{"operation": "rotate-certificate"}. A command reaches only connected
gateways and is published without RETAIN (a retained command is ignored).
The daemon rotates at most once per [ROTATION] MIN_INTERVAL either way.

Uses boto3 with the usual credentials and region (AWS_ENDPOINT_URL_IOT and
AWS_ENDPOINT_URL_IOT_DATA point it elsewhere, for tests)."""

import argparse
import json
import sys

JOB_DOCUMENT = {"operation": "rotate-certificate"}
COMMAND = {"msg": "rotate_cert"}


def create_job(iot, job_id, things):
    arns = [iot.describe_thing(thingName=t)["thingArn"] for t in things]
    return iot.create_job(
        jobId=job_id,
        targets=arns,
        document=json.dumps(JOB_DOCUMENT),
        description="prov-agent certificate rotation",
        targetSelection="SNAPSHOT",
    )


def send_command(iot_data, things):
    for thing in things:
        iot_data.publish(topic=f"cmd/{thing}", qos=1, retain=False,
                         payload=json.dumps(COMMAND).encode())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--job", metavar="NAME", help="create the AWS IoT Job NAME")
    how.add_argument("--command", action="store_true", help="publish on cmd/<thing>")
    parser.add_argument("things", nargs="+", metavar="THING")
    args = parser.parse_args(argv)
    import boto3
    if args.job:
        job = create_job(boto3.client("iot"), args.job, args.things)
        print(f"job {job['jobId']}: {job['jobArn']}")
    else:
        send_command(boto3.client("iot-data"), args.things)
        print(f"rotation command sent to {len(args.things)} thing(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
