#!/usr/bin/env python3
"""Runs AWS IoT control-plane calls with the real boto3 and prints the results.

The client is ``boto3.client("iot")`` with no arguments: endpoint, region and
credentials come from the environment only (AWS_ENDPOINT_URL_IOT, AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), exactly as a program meant for AWS
gets them.

stdin: a JSON list of calls, each one of
  {"op": "describe_thing", "args": {"thingName": "gw_1"}}
  {"paginate": "list_things", "args": {...}, "pageSize": 1}
stdout: {"endpoint": ..., "region": ..., "results": [...]}, one result per call:
  {"ok": <response without ResponseMetadata>, "status": 200, "requestId": ...}
  {"pages": [<page>, ...]}                       (a paginator's pages)
  {"error": {"code", "status", "message", "modeled"}}
``modeled`` is true when boto3 raised ``client.exceptions.<code>``, the
exception class it makes from the service model. Timestamps print as epoch
seconds.
"""

import datetime
import json
import sys

import boto3
from botocore.exceptions import ClientError


def plain(value):
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    raise TypeError(f"cannot print {type(value).__name__}")


def strip(response):
    response = dict(response)
    response.pop("ResponseMetadata", None)
    return response


def run(client, call):
    try:
        if "paginate" in call:
            paginator = client.get_paginator(call["paginate"])
            config = {"PageSize": call["pageSize"]} if "pageSize" in call else {}
            pages = paginator.paginate(**call.get("args", {}), PaginationConfig=config)
            return {"pages": [strip(p) for p in pages]}
        response = getattr(client, call["op"])(**call.get("args", {}))
        meta = response.get("ResponseMetadata", {})
        return {
            "ok": strip(response),
            "status": meta.get("HTTPStatusCode"),
            "requestId": meta.get("RequestId"),
        }
    except ClientError as e:
        code = e.response["Error"]["Code"]
        modeled_class = getattr(client.exceptions, code, None)
        return {
            "error": {
                "code": code,
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
                "message": e.response["Error"]["Message"],
                "modeled": modeled_class is not None and isinstance(e, modeled_class),
            }
        }


def main():
    calls = json.load(sys.stdin)
    client = boto3.client("iot")
    out = {
        "endpoint": client.meta.endpoint_url,
        "region": client.meta.region_name,
        "results": [run(client, c) for c in calls],
    }
    json.dump(out, sys.stdout, default=plain)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
