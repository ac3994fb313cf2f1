#!/usr/bin/env bash
# Fuzzes every parser that reads untrusted bytes (fuzz/README.md lists
# them): builds the cargo-fuzz targets on stable Rust (no sanitizer: ASan
# needs nightly) and runs each for SECONDS (the first argument, else
# FUZZ_SECONDS, default 20) from its seed
# corpus, FUZZ_JOBS (default: the number of CPUs) targets at a time. Fails
# if any target crashes or hangs, naming the input that did it: an input
# that runs longer than FUZZ_TIMEOUT seconds (default 5, below any run's
# budget, so that a slow input cannot hide in a short run) is a hang.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-${FUZZ_SECONDS:-20}}
jobs=${FUZZ_JOBS:-$(nproc)}
timeout=${FUZZ_TIMEOUT:-5}
flags=(--sanitizer none -O)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "== cargo fuzz build ${flags[*]}"
cargo fuzz build "${flags[@]}"

# New inputs go to a scratch corpus: the seeds in fuzz/corpus are only read.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The journal and identity targets write their state files under TMPDIR.
mkdir "$work/tmp"
export TMPDIR=$work/tmp

# Seeds that hold a private key are not in fuzz/corpus: the answers that
# carry one are test fixtures (tests/fixtures/fuzz-seeds/README.md), and
# the PEM keys are made fresh here, in every form the parser takes.
keys=$work/seeds/private_key_pem
mkdir -p "$keys"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$keys/p256-pkcs8.pem" 2>/dev/null
openssl ec -in "$keys/p256-pkcs8.pem" -out "$keys/p256-sec1.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$keys/p384-pkcs8.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$keys/rsa2048-pkcs8.pem" 2>/dev/null
openssl rsa -in "$keys/rsa2048-pkcs8.pem" -traditional -out "$keys/rsa2048-pkcs1.pem" 2>/dev/null

# The seed directories of `target` that exist.
seeds_of() {
  local dir
  for dir in "fuzz/corpus/$1" "tests/fixtures/fuzz-seeds/$1" "$work/seeds/$1"; do
    [[ -d $dir ]] && echo "$dir"
  done
}

run_one() {
  local target=$1
  mkdir -p "$work/corpus/$target" "fuzz/artifacts/$target"
  local seeds
  mapfile -t seeds < <(seeds_of "$target")
  if cargo fuzz run "${flags[@]}" "$target" "$work/corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$work/$target.log" 2>&1; then
    echo "ok: $target ($(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$work/$target.log" | grep -oE '[0-9]+$' || echo '?') runs in ${seconds}s)"
  else
    touch "$work/$target.failed"
    echo "FAILED: $target" >&2
    tail -n 40 "$work/$target.log" >&2
    local input
    input=$(grep -oE 'Test unit written to [^ ]+' "$work/$target.log" | tail -n1 | cut -d' ' -f5 || true)
    if [[ -n $input ]]; then
      echo "the crashing or hanging input: $input" >&2
      echo "reproduce: cargo fuzz run ${flags[*]} $target $input" >&2
    fi
  fi
}

targets=$(cargo fuzz list)
echo "== fuzz each target for ${seconds}s, $jobs at a time: $(echo $targets)"
running=0
for target in $targets; do
  run_one "$target" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=$(cd "$work" && ls -- *.failed 2>/dev/null | sed 's/\.failed$//' || true)
if [[ -n $failed ]]; then
  echo "ci/fuzz.sh: crashes or hangs in: $(echo $failed); inputs are in fuzz/artifacts/<target>/" >&2
  exit 1
fi
echo "ci/fuzz.sh: no target crashed or hung"
