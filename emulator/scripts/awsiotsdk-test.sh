#!/usr/bin/env bash
# Runs the emulator's compatibility test with the AWS IoT Device SDK for
# Python; the test installs awsiotsdk from PyPI into a virtualenv under
# cargo's target directory on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p iotcore-emulator --test awsiotsdk -- --nocapture
