#!/usr/bin/env bash
# An ARM build, for real:
#   ci/test-arm.sh [TARGET]   (ci/test-arm64.sh, ci/test-armhf.sh)
# TARGET is aarch64-unknown-linux-gnu (arm64, the default) or
# armv7-unknown-linux-gnueabihf (armhf). Cross-builds with ci/cross.sh
# (profile $CROSS_PROFILE, default release), then runs the cross-built
# prov-agent under qemu-user (qemu-aarch64, qemu-arm) against the native
# iotcore-emulator and a native swtpm over TCP: `claim import`, `enroll`,
# `status --json`, `rotate`, and checks in the emulator's registry that the
# thing exists and the rotated certificate is its only, ACTIVE certificate
# (the old one detached and INACTIVE); then builds that architecture's
# packages with ci/package.sh and checks them. Modelled on ci/demo.sh
# --backend tpm. Everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$SECONDS

target=${1:-aarch64-unknown-linux-gnu}
# Per target: the Debian architecture, qemu-user's binary, the ELF
# e_machine (as od -tx2 prints it) and the multiarch triplet.
case $target in
  aarch64-unknown-linux-gnu)
    arch=arm64 qemu=qemu-aarch64 e_machine=00b7 triplet=aarch64-linux-gnu ;;   # EM_AARCH64
  armv7-unknown-linux-gnueabihf)
    arch=armhf qemu=qemu-arm e_machine=0028 triplet=arm-linux-gnueabihf ;;     # EM_ARM
  *) echo "ci/test-arm.sh: target is aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf, not '$target'" >&2; exit 2 ;;
esac
fail() { echo "ci/test-arm.sh ($arch): FAILED: $*" >&2; exit 1; }

profile=${CROSS_PROFILE:-release}

echo "== ci/cross.sh $profile $target"
ci/cross.sh "$profile" "$target"
agent=$root/target/cross/$target/$profile/prov-agent
[[ -x $agent ]] || fail "no $agent after ci/cross.sh"
t_build=$((SECONDS - t0))

# swtpm (and python3-venv for the hook's boto3) come from ci/install-deps.sh.
ci/install-deps.sh

# The target's run time is Debian's multiarch one (libc6:$arch, pulled in by
# libtss2-dev:$arch): /lib/ld-linux-aarch64.so.1 or /lib/ld-linux-armhf.so.3
# and the libraries in /usr/lib/$triplet (libtss2-*, and
# libtss2-tcti-swtpm.so.0 that tss-esapi opens by name). Not
# `-L /usr/$triplet`: that sysroot's loader (libc6-$arch-cross, an older
# 2.36 build) then picks up the multiarch libc.so.6, and (seen on arm64) the
# mismatch hangs pthread_create in a busy loop (prov-agent's first thread is
# tokio's DNS lookup of `localhost`).
export QEMU_LD_PREFIX=/
# Each run is bounded: a hang fails the test (exit 124) instead of CI.
arm() { timeout "${ARM_STEP_TIMEOUT:-${ARM64_STEP_TIMEOUT:-300}}" "$qemu" "$agent" "$@"; }

echo "== the native iotcore-emulator"
emulator=""
for e in target/debug/iotcore-emulator target/release/iotcore-emulator; do
  [[ -x $e ]] && { emulator=$root/$e; break; }
done
if [[ -z $emulator ]]; then
  echo "   building it (cargo build -p iotcore-emulator)"
  cargo build --quiet --locked -j 2 -p iotcore-emulator --bin iotcore-emulator
  emulator=$root/target/debug/iotcore-emulator
fi
echo "   $emulator"

work=$(mktemp -d -t prov-agent-$arch.XXXXXX)
pids=()
cleanup() {
  local code=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if ((code != 0)) && [[ -d $work ]]; then
    for f in serve.err swtpm.log; do
      [[ -s $work/$f ]] && { echo "--- $f (last lines)" >&2; tail -20 "$work/$f" >&2; }
    done
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$work/certs" "$work/state"
chmod 700 "$work"

echo "== --version under $qemu"
version=$(arm --version) || fail "the $arch prov-agent does not run under $qemu"
echo "   $version"
[[ $version == *"(backends: tpm, pkcs11, file)"* ]] || fail "--version says '$version', not '(backends: tpm, pkcs11, file)'"

echo "== iotcore-emulator init and serve"
"$emulator" init "$work/cloud" >/dev/null || fail "iotcore-emulator init"
cp "$work/cloud/root-ca.pem" "$work/certs/root-ca.pem"
cp "$work/cloud/claim/claim.pem.crt" "$work/claim.pem.crt"
cp "$work/cloud/claim/claim.private.pem.key" "$work/claim.private.pem.key"
# The templates' pre-provisioning hook needs boto3: its virtualenv goes
# first on the emulator's PATH.
pybin=$(ci/python-venv.sh)
PATH="$pybin:$PATH" "$emulator" serve "$work/cloud" --port 0 --alpn-port 0 --api-port 0 \
  >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/serve.out ]] && break; sleep 0.1; done
[[ -s $work/serve.out ]] || fail "the emulator did not start"
echo "   $(cat "$work/serve.out")"
mqtt_port=$(grep -oE 'mqtt=127\.0\.0\.1:[0-9]+' "$work/serve.out" | cut -d: -f2)
[[ -n $mqtt_port ]] || fail "cannot read the emulator's MQTT port"

echo "== a fresh swtpm"
mkdir -m 700 "$work/tpmstate"
tpm_port=""
for _ in $(seq 20); do
  # A port P with P+1 free too (the swtpm TCTI uses P+1 for control).
  p=$(python3 -c '
import socket
a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
b = socket.socket(); b.bind(("127.0.0.1", p + 1)); print(p)' 2>/dev/null) || continue
  swtpm socket --tpm2 --tpmstate dir="$work/tpmstate" \
    --server type=tcp,port="$p",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((p + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear --log file="$work/swtpm.log" </dev/null &
  spid=$!
  for _ in $(seq 100); do
    kill -0 "$spid" 2>/dev/null || break
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null && { tpm_port=$p; break; }
    sleep 0.1
  done
  if [[ -n $tpm_port ]] && kill -0 "$spid" 2>/dev/null; then pids+=("$spid"); break; fi
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
  tpm_port=""
done
[[ -n $tpm_port ]] || fail "could not start swtpm"
echo "   swtpm:host=127.0.0.1,port=$tpm_port (pid $spid)"

serial=${arch^^}-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
cat >"$work/config.ini" <<INI
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
PORT = $mqtt_port
SERIAL_NUMBER = $serial
[TEMPLATE_PARAMETERS]
Site = plant-a
[KEYSTORE]
BACKEND = tpm
[TPM]
TCTI = swtpm:host=127.0.0.1,port=$tpm_port
INI
cfg=(--config "$work/config.ini")

json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
timed() { # label, command...: runs it, prints how long it took
  local label=$1 s=$SECONDS; shift
  "$@" || fail "$label (exit $?)"
  echo "   ($label: $((SECONDS - s)) s)"
}

t_qemu=$SECONDS
echo "== [$arch] prov-agent claim import --shred"
timed "claim import" arm "${cfg[@]}" claim import --cert "$work/claim.pem.crt" \
  --key "$work/claim.private.pem.key" --shred
[[ ! -e $work/claim.private.pem.key ]] || fail "claim import --shred left the PEM key file"

echo "== [$arch] prov-agent enroll"
timed "enroll" arm "${cfg[@]}" enroll

echo "== [$arch] prov-agent status --json"
status=$(arm "${cfg[@]}" status --json) || fail "status --json (exit $?)"
echo "$status"
[[ $(json_field "$status" enrolled) == True ]] || fail "status says not enrolled"
[[ $(json_field "$status" backend) == tpm ]] || fail "status: backend is not tpm"
thing=$(json_field "$status" thingName)
cert1=$(json_field "$status" certificateId)
[[ -n $thing && -n $cert1 ]] || fail "status --json has no thingName or certificateId"

echo "== [$arch] prov-agent rotate"
timed "rotate" arm "${cfg[@]}" rotate

status=$(arm "${cfg[@]}" status --json) || fail "status --json after rotate (exit $?)"
cert2=$(json_field "$status" certificateId)
prev=$(json_field "$status" previousCertificateId)
[[ $(json_field "$status" thingName) == "$thing" ]] || fail "the thing changed in the rotation"
[[ $cert2 != "$cert1" ]] || fail "rotate kept certificate $cert1"
[[ $prev == "$cert1" ]] || fail "previousCertificateId is '$prev', not $cert1"
echo "   certificate $cert1 -> $cert2"
t_qemu=$((SECONDS - t_qemu))

echo "== the emulator's registry: thing $thing, its certificates"
reg() { "$emulator" -d "$work/cloud" --json "$@"; }
check_registry() {
  python3 - "$thing" "$cert1" "$cert2" "$(reg things describe "$thing")" \
    "$(reg certs describe "$cert2")" "$(reg certs describe "$cert1")" <<'PY'
import json, sys
thing, old, new = sys.argv[1:4]
t, n, o = (json.loads(a) for a in sys.argv[4:7])
problems = []
if t.get("thing_name") != thing: problems.append(f"thing is {t.get('thing_name')!r}")
if t.get("certificates") != [new]: problems.append(f"thing's certificates are {t.get('certificates')}, not [{new}]")
if n.get("status") != "ACTIVE": problems.append(f"new certificate is {n.get('status')}")
if thing not in n.get("things", []): problems.append("new certificate not attached to the thing")
if o.get("status") != "INACTIVE": problems.append(f"old certificate is {o.get('status')}, not INACTIVE")
print("; ".join(problems) if problems else
      f"thing {thing}: certificates {t['certificates']}; {new} {n['status']}; {old} {o['status']}")
sys.exit(1 if problems else 0)
PY
}
# The rotation report rule runs as the report arrives; allow a moment.
ok=""
for _ in $(seq 20); do
  if out=$(check_registry); then ok=1; break; fi
  sleep 0.25
done
echo "   $out"
[[ -n $ok ]] || fail "registry check: $out"

echo "== the $arch packages: ci/package.sh 1 $target"
t_pkg=$SECONDS
debs=$(ci/package.sh 1 "$target") || fail "ci/package.sh 1 $target"
agent_deb=$(grep '/prov-agent_.*\.deb$' <<<"$debs")
emulator_deb=$(grep '/iotcore-emulator_.*\.deb$' <<<"$debs")
[[ -f $agent_deb && -f $emulator_deb ]] || fail "ci/package.sh made no $arch packages: $debs"
for deb in "$agent_deb" "$emulator_deb"; do
  [[ $(dpkg-deb --field "$deb" Architecture) == "$arch" ]] || fail "$deb is not $arch"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/"$(dpkg-deb --field "$deb" Package)" >"$work/packaged"
  file_arch=$(od -An -j18 -N2 -tx2 "$work/packaged" | tr -d ' ')
  [[ $file_arch == "$e_machine" ]] || fail "$deb's binary is not for $target (e_machine $file_arch)"
done
# The TPM library it depends on is the one of its architecture.
esys=$(dpkg-deb --field "$agent_deb" Depends | grep -oE 'libtss2-esys[^ ,(]*' | head -1)
[[ -n $esys ]] || fail "the $arch package does not depend on libtss2-esys"
dpkg-query -W -f='${Status}' "$esys:$arch" 2>/dev/null | grep -q 'install ok installed' ||
  fail "the $arch package depends on $esys, which is not the installed $arch libtss2-esys"
t_pkg=$((SECONDS - t_pkg))
echo "   $agent_deb (Depends $esys), $emulator_deb (${t_pkg} s)"

echo "== $arch end to end passed: build+install ${t_build} s, qemu run ${t_qemu} s, packages ${t_pkg} s, total $((SECONDS - t0)) s"
