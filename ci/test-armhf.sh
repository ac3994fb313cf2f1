#!/usr/bin/env bash
# ci/test-arm.sh for armhf (armv7-unknown-linux-gnueabihf): a real enroll and rotate
# of the cross-built prov-agent under qemu-user, and the armhf packages.
exec "$(dirname "$0")/test-arm.sh" armv7-unknown-linux-gnueabihf
