#!/usr/bin/env bash
# Hardware-attested enrollment's Python side (factory/manufacturer_ca.py,
# templates/hooks/tpm_attestation.py and the hook's attestation check)
# against two swtpm simulators with EK certificates from local CAs, driven
# by tpm2-tools; needs swtpm, swtpm_setup (swtpm-tools) and tpm2-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ci/python-venv.sh)
"$bin/python" -m unittest -v factory/test_attestation.py 2>&1
