#!/usr/bin/env bash
# Makes (once, and again when ci/requirements-python.txt changes) the Python
# virtualenv that runs the cloud-side programs: the pre-provisioning hook the
# emulator executes and the boto3 tests of its control-plane API. Prints the
# virtualenv's bin directory; put it first on PATH for `iotcore-emulator
# serve` so that the hooks' `#!/usr/bin/env python3` finds boto3.
# Safe to run concurrently (a lock), as the tests do.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${PROV_AGENT_PYTHON_VENV:-$root/target/python-venv}
req=$root/ci/requirements-python.txt
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! cmp -s "$req" "$venv/.requirements" 2>/dev/null; then
  echo "ci/python-venv.sh: making $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$venv/.requirements"
fi
echo "$venv/bin"
