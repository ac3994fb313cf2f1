#!/usr/bin/env bash
# Installs (once, and again when its package-lock.json changes) the AWS IoT
# Device SDK v2 for JavaScript that emulator/tests/awsiotsdk_js.rs drives:
# `npm ci` in emulator/tests/awsiotsdk-js, from the npm registry only.
# Prints that directory. Fast when already installed (a compare of the lock
# file); safe to run concurrently (a lock), as tests and ci/test.sh do.
#
# --ignore-scripts: aws-crt's only install script looks for the native
# binding its npm tarball ships prebuilt (linux-x64 and linux-arm64, glibc
# and musl) and would otherwise download the CRT's sources and build them
# with cmake-js. Skipping it means nothing is fetched beyond the registry's
# tarballs; the check below loads the prebuilt binding and fails, naming
# the platform, where there is none (armhf, for one).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/emulator/tests/awsiotsdk-js
lock=$dir/package-lock.json
stamp=$dir/node_modules/.installed-package-lock.json
node=${AWSIOTSDK_JS_NODE:-node}

for tool in "$node" npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "ci/node-sdk.sh: $tool not found: install Node.js 18 or later and npm (ci/install-deps.sh installs Debian's nodejs and npm)" >&2
    exit 1
  fi
done
major=$("$node" -p 'process.versions.node.split(".")[0]')
if ((major < 18)); then
  echo "ci/node-sdk.sh: $node is Node.js $("$node" --version); aws-iot-device-sdk-v2 needs 18 or later" >&2
  exit 1
fi

exec 9>"$dir/.node_modules.lock"
flock 9
if ! cmp -s "$lock" "$stamp" 2>/dev/null; then
  echo "ci/node-sdk.sh: npm ci in $dir" >&2
  start=$SECONDS
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  if ! (cd "$dir" && "$node" -e 'require("aws-iot-device-sdk-v2"); require("aws-crt").io.is_alpn_available()') >&2; then
    echo "ci/node-sdk.sh: aws-crt has no prebuilt native binding for $("$node" -p 'process.platform + "-" + process.arch') in its npm package" >&2
    exit 1
  fi
  cp "$lock" "$stamp"
  echo "ci/node-sdk.sh: installed in $((SECONDS - start)) s" >&2
fi
echo "$dir"
