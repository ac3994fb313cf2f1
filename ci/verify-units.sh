#!/usr/bin/env bash
# systemd-analyze verify on the units in systemd/, as shipped except for the
# agent's path: verify refuses an ExecStart= binary that does not exist, so
# temp copies run the binary built here instead of /usr/bin/prov-agent.
# Works without a running systemd (containers). Any output fails: verify
# exits 0 on unknown keys and unparsable values, printing only a warning.
# Then `systemd-analyze security --offline` must rate each service at most
# $MAX_EXPOSURE, in tenths of the printed level (20 = 2.0; 0 = locked
# down, 100 = unprotected).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=${MAX_EXPOSURE:-20}

# --all-features: the binary `cargo test --all-features` already built.
cargo build --locked --all-features --bin prov-agent --quiet
agent="$PWD/target/debug/prov-agent"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

units=()
for f in systemd/*.service systemd/*.timer; do
  out="$tmp/$(basename "$f")"
  sed "s|^\(Exec[A-Za-z]*=\)/usr/bin/prov-agent |\1$agent |" "$f" >"$out"
  # Every ExecStart= of ours must have been rewritten, none left behind.
  if grep -q '/usr/bin/prov-agent' "$out"; then
    echo "$f: /usr/bin/prov-agent left after rewriting Exec lines" >&2
    exit 1
  fi
  units+=("$out")
done

systemd-analyze --version | head -1
# --man=no: no Documentation= man pages to look up. The temp dir holds all
# the units, so their references to each other resolve.
if ! output=$(cd "$tmp" && systemd-analyze verify --man=no "${units[@]}" 2>&1) || [[ -n $output ]]; then
  echo "systemd-analyze verify failed:" >&2
  echo "$output" >&2
  exit 1
fi
echo "verify: ${#units[@]} units clean"

# The encrypted-PIN drop-in (systemd/README.md), installed for each
# service as an operator would, verified with the unit it changes.
names=()
for u in "$tmp"/*.service; do
  name=$(basename "$u")
  mkdir -p "$tmp/$name.d"
  cp systemd/encrypted-pin.conf "$tmp/$name.d/"
  names+=("$name")
done
if ! output=$(cd "$tmp" && SYSTEMD_UNIT_PATH="$tmp:" systemd-analyze verify --man=no "${names[@]}" 2>&1) || [[ -n $output ]]; then
  echo "systemd-analyze verify failed with systemd/encrypted-pin.conf:" >&2
  echo "$output" >&2
  exit 1
fi
echo "verify: encrypted-pin.conf clean on ${#names[@]} services"

for u in "$tmp"/*.service; do
  systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE" "$u" >"$tmp/security.txt" 2>&1 || {
    cat "$tmp/security.txt" >&2
    echo "$(basename "$u"): exposure above $MAX_EXPOSURE" >&2
    exit 1
  }
  tail -1 "$tmp/security.txt"
done

# The sysusers.d entry makes the user the units name (in a temp root).
mkdir -p "$tmp/root/etc"
cp /etc/passwd /etc/group "$tmp/root/etc/"
systemd-sysusers --root="$tmp/root" "$PWD/systemd/prov-agent.sysusers" 2>&1
grep -q '^prov-agent:' "$tmp/root/etc/passwd" || { echo "sysusers made no prov-agent user" >&2; exit 1; }
grep -Eq '^tss:[^:]*:[0-9]+:(.*,)?prov-agent(,|$)' "$tmp/root/etc/group" || {
  echo "sysusers did not put prov-agent in group tss" >&2
  exit 1
}
