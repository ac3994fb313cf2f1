#!/usr/bin/env bash
# Installs the AWS IoT Device SDK for Python (awsiotsdk, from PyPI) into a
# virtualenv and runs the emulator's SDK compatibility test with it required.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${AWSIOTSDK_VENV:-${TMPDIR:-/tmp}/iotcore-emulator-awsiotsdk}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import awsiot.iotidentity' 2>/dev/null || "$venv/bin/pip" install --quiet awsiotsdk
cd "$here"
AWSIOTSDK_PYTHON="$venv/bin/python" IOTCORE_REQUIRE_AWSIOTSDK=1 \
    cargo test -p iotcore-emulator --test awsiotsdk -- --nocapture
