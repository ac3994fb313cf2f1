#!/usr/bin/env bash
# ci/test-arm.sh for arm64 (aarch64-unknown-linux-gnu): a real enroll and rotate
# of the cross-built prov-agent under qemu-user, and the arm64 packages.
exec "$(dirname "$0")/test-arm.sh" aarch64-unknown-linux-gnu
