#!/usr/bin/env bash
# The AWS-side kit (deploy/aws/) tested without AWS: the template (built
# from the repository's files, cfn-lint), the rotation-report Lambda against
# moto, the rotation trigger, deploy.sh with a stand-in aws command, and the
# hook's attestation zip run unzipped against a swtpm's attestations. The
# Lambda also runs against the emulator's control-plane API in
# tests/cloud_rotation_report.rs. Needs swtpm, swtpm_setup and tpm2-tools
# (ci/install-deps.sh) and PyPI (cryptography's wheels for the zip).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ci/python-venv.sh)
"$bin/python" -m unittest -v deploy/aws/test_kit.py 2>&1
