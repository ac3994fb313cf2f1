#!/usr/bin/env bash
# prov-agent demo: installs what is missing, builds, starts iotcore-emulator
# in a temp dir (init + serve), makes a fresh SoftHSM token (or, with
# --backend tpm, starts a swtpm), imports the claim key into it, runs
# `prov-agent enroll`, and prints the thing, the certificate, where the key
# lives and the emulator's registry entry. Everything it starts is stopped
# and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

backend=pkcs11
while (($#)); do
  case $1 in
    --backend) backend=${2:?--backend needs tpm or pkcs11}; shift 2 ;;
    --backend=*) backend=${1#*=}; shift ;;
    -h|--help) echo "usage: ci/demo.sh [--backend pkcs11|tpm]"; exit 0 ;;
    *) echo "ci/demo.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $backend == pkcs11 || $backend == tpm ]] || { echo "ci/demo.sh: --backend is pkcs11 or tpm" >&2; exit 2; }

ci/install-deps.sh
echo "== building prov-agent and iotcore-emulator"
cargo build --quiet --workspace --bins
agent=$root/target/debug/prov-agent
emulator=$root/target/debug/iotcore-emulator

work=$(mktemp -d -t prov-agent-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/certs" "$work/state"
chmod 700 "$work"

echo "== iotcore-emulator init and serve"
"$emulator" init "$work/cloud" >/dev/null
cp "$work/cloud/root-ca.pem" "$work/certs/root-ca.pem"
cp "$work/cloud/claim/claim.pem.crt" "$work/claim.pem.crt"
cp "$work/cloud/claim/claim.private.pem.key" "$work/claim.private.pem.key"
# The templates' pre-provisioning hook is Python with boto3: a virtualenv
# with it goes first on the emulator's PATH.
pybin=$(ci/python-venv.sh)
PATH="$pybin:$PATH" "$emulator" serve "$work/cloud" --port 0 --alpn-port 0 --api-port 0 \
  > "$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/serve.out ]] && break; sleep 0.1; done
[[ -s $work/serve.out ]] || { cat "$work/serve.err" >&2; echo "ci/demo.sh: the emulator did not start" >&2; exit 1; }
cat "$work/serve.out"
port=$(grep -oE '127\.0\.0\.1:[0-9]+' "$work/serve.out" | head -1 | cut -d: -f2)
[[ -n $port ]] || { echo "ci/demo.sh: cannot read the emulator's port" >&2; exit 1; }

cat > "$work/config.ini" <<INI
[SETTINGS]
SECURE_CERT_PATH = certs
ROOT_CERT = root-ca.pem
CLAIM_CERT = claim.pem.crt
IOT_ENDPOINT = localhost
PRODUCTION_TEMPLATE = ProdTemplate
CERT_ROTATION_TEMPLATE = RotationTemplate
[AGENT]
STATE_DIR = state
[PROVISIONING]
PORT = $port
SERIAL_NUMBER = DEMO-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
[TEMPLATE_PARAMETERS]
Site = plant-a
INI

if [[ $backend == pkcs11 ]]; then
  echo "== a fresh SoftHSM token"
  mkdir -m 700 "$work/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" > "$work/softhsm2.conf"
  export SOFTHSM2_CONF=$work/softhsm2.conf
  umask 077
  pin=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s\n' "$pin" > "$work/pin"
  softhsm2-util --init-token --free --label prov-agent-demo --so-pin "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" --pin "$pin" >/dev/null
  cat >> "$work/config.ini" <<INI
[KEYSTORE]
BACKEND = pkcs11
[PKCS11]
MODULE = /usr/lib/softhsm/libsofthsm2.so
TOKEN_LABEL = prov-agent-demo
PIN_SOURCE = file:$work/pin
INI
else
  echo "== a fresh swtpm"
  mkdir -m 700 "$work/tpmstate"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  swtpm socket --tpm2 --tpmstate dir="$work/tpmstate" --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  cat >> "$work/config.ini" <<INI
[KEYSTORE]
BACKEND = tpm
[TPM]
TCTI = swtpm:host=127.0.0.1,port=$port
INI
fi

echo "== prov-agent claim import --shred"
"$agent" --config "$work/config.ini" claim import --cert "$work/claim.pem.crt" --key "$work/claim.private.pem.key" --shred
[[ ! -e $work/claim.private.pem.key ]] && echo "the PEM claim key file is gone; the key lives only in the $backend store"

echo "== prov-agent enroll"
"$agent" --config "$work/config.ini" enroll
thing=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["thingName"])' "$work/state/identity.json")

echo "== prov-agent keys list"
"$agent" --config "$work/config.ini" keys list

echo "== the emulator's registry entry for $thing"
"$emulator" -d "$work/cloud" --json things describe "$thing"

echo "== someone with a copy of the claim key tries to enroll as $thing"
# Its own directory and a software key store; the same serial number.
mkdir -p -m 700 "$work/thief/certs"
cp "$work/certs/root-ca.pem" "$work/thief/certs/"
sed -e '/^\[KEYSTORE\]/,$d' "$work/config.ini" > "$work/thief/config.ini"
printf '[KEYSTORE]\nBACKEND = file\n' >> "$work/thief/config.ini"
"$agent" --config "$work/thief/config.ini" claim import --cert "$work/claim.pem.crt" \
  --key "$work/cloud/claim/claim.private.pem.key" >/dev/null 2>&1
set +e
"$agent" --config "$work/thief/config.ini" enroll 2>"$work/thief/enroll.err"
code=$?
set -e
if [[ $code -eq 3 ]] && grep -q AccessDenied "$work/thief/enroll.err"; then
  echo "refused (exit 3, AccessDenied): $(grep -o 'errorCode [A-Za-z]*' "$work/thief/enroll.err" | head -1)"
  grep -h 'provisioning_hook: .*refused' "$work/serve.err" | sed 's/^.*provisioning_hook: /the hook: /' | head -1
else
  cat "$work/thief/enroll.err" >&2
  echo "ci/demo.sh: the thief was not refused (exit $code)" >&2
  exit 1
fi

echo "== demo done"
