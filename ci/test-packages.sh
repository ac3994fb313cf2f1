#!/usr/bin/env bash
# Builds the Debian packages (ci/package.sh) and puts them through what a
# gateway's package manager does, on this machine: install, check what was
# installed (the binaries run, systemd-analyze verify on the installed
# units, the user, man pages, the packaged config valid, nothing enabled or
# started), upgrade over the previous build with the operator's config
# change kept, purge. Needs root (it installs packages), like ci/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
fail() { echo "ci/test-packages.sh: $*" >&2; exit 1; }

arch=$(dpkg --print-architecture)
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "prov-agent"))')

# A clean start: nothing of an earlier run installed.
$SUDO dpkg --purge prov-agent iotcore-emulator >/dev/null 2>&1 || true

echo "== package: revision 1 (the previous build)"
ci/package.sh 1 >/dev/null
agent_deb=dist/prov-agent_${version}-1_${arch}.deb
emulator_deb=dist/iotcore-emulator_${version}-1_${arch}.deb
$SUDO env DEBIAN_FRONTEND=noninteractive dpkg -i "$agent_deb" "$emulator_deb" </dev/null >/dev/null

echo "== installed files"
out=$(/usr/bin/prov-agent --version)
[[ $out == "prov-agent $version (backends: tpm, pkcs11, file)" ]] || fail "--version says: $out"
/usr/bin/iotcore-emulator --version >/dev/null || fail "iotcore-emulator does not run"
getent passwd prov-agent >/dev/null || fail "no prov-agent user"
id -nG prov-agent | tr ' ' '\n' | grep -qx tss || fail "prov-agent is not in group tss"
[[ $(stat -c '%a %U' /etc/prov-agent/certs) == "700 prov-agent" ]] || fail "/etc/prov-agent/certs: $(stat -c '%a %U' /etc/prov-agent/certs)"
if output=$(systemd-analyze verify --man=no /lib/systemd/system/prov-agent.service \
    /lib/systemd/system/prov-agent-enroll.service /lib/systemd/system/prov-agent-rotate.service \
    /lib/systemd/system/prov-agent-rotate.timer 2>&1) && [[ -z $output ]]; then :; else
  fail "systemd-analyze verify on the installed units: $output"
fi
# Installed, not enabled, not started: the config is not filled in yet.
if ls /etc/systemd/system/*.wants/prov-agent* >/dev/null 2>&1; then
  fail "a unit was enabled: $(ls /etc/systemd/system/*.wants/prov-agent*)"
fi
if [[ -d /run/systemd/system ]] && systemctl is-active --quiet prov-agent.service; then
  fail "prov-agent.service was started"
fi
for page in /usr/share/man/man1/prov-agent*.1.gz; do
  warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1) || fail "$page does not render"
  [[ -z $warnings ]] || fail "$page: $warnings"
done
[[ -f /usr/share/man/man1/prov-agent-enroll.1.gz ]] || fail "no prov-agent-enroll(1)"
bash -n /usr/share/bash-completion/completions/prov-agent || fail "bash completion does not parse"
# The packaged config is valid; only what is not there yet fails.
check=$(/usr/bin/prov-agent --config /etc/prov-agent/config.ini check --offline --json 2>/dev/null || true)
python3 -c '
import json, sys
doc = json.loads(sys.argv[1])
config = [c for c in doc["checks"] if c["id"] == "config"]
assert config and config[0]["verdict"] == "pass", doc
' "$check" || fail "the packaged config.ini is not valid: $check"

echo "== upgrade to revision 2 with the operator's config change"
$SUDO sed -i 's/^IOT_ENDPOINT = .*/IOT_ENDPOINT = a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com/' /etc/prov-agent/config.ini
ci/package.sh 2 >/dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive dpkg -i "dist/prov-agent_${version}-2_${arch}.deb" \
  "dist/iotcore-emulator_${version}-2_${arch}.deb" </dev/null >/dev/null
[[ $(dpkg-query -W -f='${Version}' prov-agent) == "${version}-2" ]] || fail "not upgraded"
grep -q '^IOT_ENDPOINT = a1b2c3d4e5f6g7-ats' /etc/prov-agent/config.ini || fail "the config change was lost on upgrade"
/usr/bin/prov-agent --version >/dev/null

echo "== purge"
$SUDO dpkg --purge prov-agent iotcore-emulator >/dev/null
for gone in /usr/bin/prov-agent /usr/bin/iotcore-emulator /etc/prov-agent/config.ini \
    /lib/systemd/system/prov-agent.service /usr/lib/sysusers.d/prov-agent.conf; do
  [[ ! -e $gone ]] || fail "$gone is left after purge"
done
echo "packages: installed, verified, upgraded with the config kept, purged"
