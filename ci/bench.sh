#!/usr/bin/env bash
# Benchmarks (release build). Prints numbers; the targets are in the README.
#   ci/bench.sh keystore [softhsm|swtpm|file]   signatures/s and key generations/s
#   ci/bench.sh emulator [DEVICES] [MODE]       enrollments/s against iotcore-emulator (csr|keys|both)
#   ci/bench.sh enroll [RUNS]                   prov-agent enroll and rotate at 0 and 100 ms RTT: wall
#                                               time, peak RSS, HW signatures, round trips
#   ci/bench.sh attest [RUNS]                   enroll and rotate on swtpm with and without hardware
#                                               attestation, without and with the shipped hook
#   ci/bench.sh daemon [IDLE_SECONDS]           prov-agent run: RSS and CPU idle, one rotation
#   ci/bench.sh alloc [RUNS]                    enroll and rotate on loopback with the allocator
#                                               that wipes freed memory, then with the system one
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install-deps.sh

what=${1:-keystore}
shift || true
case $what in
  keystore)
    cargo bench --quiet --bench keystore -- "$@" ;;
  emulator)
    cargo run --quiet --release -p iotcore-emulator --example enroll_bench -- "${1:-1000}" "${2:-both}" ;;
  enroll)
    cargo build --quiet --release --workspace --bins
    python3 ci/bench_enroll.py "${1:-10}" ;;
  attest)
    cargo build --quiet --release --workspace --bins
    python3 ci/bench_attest.py "${1:-10}" ;;
  daemon)
    cargo build --quiet --release --workspace --bins
    python3 ci/bench_daemon.py "${1:-60}" ;;
  alloc)
    # The second build differs only in its allocator (src/main.rs), in a
    # target directory of its own so that the real one is never it.
    cargo build --quiet --release --workspace --bins
    RUSTFLAGS="--cfg prov_agent_plain_alloc" CARGO_TARGET_DIR=target/plain-alloc \
      cargo build --quiet --release --bin prov-agent
    echo "== wiping allocator (as shipped)"
    BENCH_LOOPBACK_ONLY=1 python3 ci/bench_enroll.py "${1:-10}"
    echo "== system allocator (for comparison only)"
    BENCH_LOOPBACK_ONLY=1 BENCH_AGENT="$PWD/target/plain-alloc/release/prov-agent" \
      python3 ci/bench_enroll.py "${1:-10}" ;;
  *)
    echo "usage: ci/bench.sh keystore|emulator|enroll|attest|daemon|alloc [args]" >&2; exit 2 ;;
esac
