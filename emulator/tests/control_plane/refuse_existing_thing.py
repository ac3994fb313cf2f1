#!/usr/bin/env python3
"""Test pre-provisioning hook: allows RegisterThing only for a thing that does
not exist yet, asking the control-plane API with boto3 configured by nothing
but the environment the emulator gives its hooks. Thing name as in the
fixture template prod.json: dev-<SerialNumber>. Why it decided goes to stderr.
"""

import json
import sys

import boto3

request = json.load(sys.stdin)
name = "dev-" + request.get("parameters", {}).get("SerialNumber", "")
iot = boto3.client("iot")
print(f"asking {iot.meta.endpoint_url} in {iot.meta.region_name}", file=sys.stderr)
try:
    thing = iot.describe_thing(thingName=name)
    print(f"refusing: thing {name} exists (version {thing['version']})", file=sys.stderr)
    allow = False
except iot.exceptions.ResourceNotFoundException:
    print(f"allowing: thing {name} is new", file=sys.stderr)
    allow = True
json.dump({"allowProvisioning": allow}, sys.stdout)
