#!/usr/bin/env bash
# Installs the AWS IoT Device SDK v2 for JavaScript that
# emulator/tests/awsiotsdk_js.rs drives, from the npm registry only, and
# prints the directory to run provision.js from: `npm ci` of
# emulator/tests/awsiotsdk-js/package{,-lock}.json in
# target/node-sdk/<hash>/ ($AWSIOTSDK_JS_INSTALL_DIR/<hash>/ when set), where
# <hash> is a SHA-256 prefix of those two files. provision.js is copied
# beside node_modules, so that Node.js resolves the SDK there first and no
# node_modules elsewhere (a stale one in a parent directory) can shadow it.
#
# Why so: the source tree is never written (a read-only or shared checkout
# works, `git status` stays clean); an install, once complete, is renamed
# into place whole and never changed, so a lock file change (a branch
# switch, a pull) while another process runs provision.js from the previous
# install installs beside it instead of under it (npm ci would first delete
# the node_modules in use). Installs unused for a day are removed.
#
# Fast when already installed (a hash of two files, a shared lock, a touch);
# safe to run concurrently, as tests and ci/test.sh do.
#
# $AWSIOTSDK_JS_NODE picks the node (default: `node` on PATH); the npm used
# is the one beside it, run with that node first on PATH (npm's
# `#!/usr/bin/env node`), so the SDK is installed by the Node.js that runs it.
#
# --ignore-scripts: aws-crt's only install script looks for the native
# binding its npm tarball ships prebuilt (linux-x64 and linux-arm64, glibc
# and musl) and would otherwise download the CRT's sources and build them
# with cmake-js. Skipping it means nothing is fetched beyond the registry's
# tarballs; the check below loads the prebuilt binding and fails, naming
# the platform, where there is none (armhf, for one).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/emulator/tests/awsiotsdk-js
base=${AWSIOTSDK_JS_INSTALL_DIR:-$root/target/node-sdk}
node=${AWSIOTSDK_JS_NODE:-node}
me=ci/node-sdk.sh

if ! node_path=$(command -v "$node"); then
  echo "$me: $node not found: install Node.js 18 or later and npm (ci/install-deps.sh installs Debian's nodejs and npm), or set AWSIOTSDK_JS_NODE to a node" >&2
  exit 1
fi
[[ $node_path == /* ]] || node_path=$PWD/$node_path
major=$("$node_path" -p 'process.versions.node.split(".")[0]')
if ((major < 18)); then
  echo "$me: $node_path is Node.js $("$node_path" --version); aws-iot-device-sdk-v2 needs 18 or later: install one (Debian 12's nodejs, or NodeSource's or nodejs.org's) and put it first on PATH or in AWSIOTSDK_JS_NODE" >&2
  exit 1
fi

# The npm of this Node.js: beside it, or beside the file it links to
# (/usr/local/bin/node -> /opt/node-v20/bin/node).
node_bin=$(dirname "$node_path")
if [[ ! -x $node_bin/npm ]]; then
  node_bin=$(dirname "$(readlink -f "$node_path")")
fi
if [[ ! -x $node_bin/npm ]]; then
  echo "$me: no npm beside $node_path (nor beside $(readlink -f "$node_path")): install the npm of that Node.js (Debian's nodejs: apt-get install npm; NodeSource's and nodejs.org's bundle it), or set AWSIOTSDK_JS_NODE to a node that has npm beside it" >&2
  exit 1
fi

key=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
dir=$base/$key

# Copies provision.js into the install unless it is there already: a rename,
# so a concurrent run reads the old script or the new one, whole.
sync_script() {
  if ! cmp -s "$src/provision.js" "$dir/provision.js"; then
    cp "$src/provision.js" "$dir/.provision.js.$$"
    mv -f "$dir/.provision.js.$$" "$dir/provision.js"
  fi
}

# The fast path. The shared lock keeps the pruning below from removing the
# install between the check and the touch that marks it used.
if [[ -d $base ]]; then
  exec 9>>"$base/.lock"
  flock -s 9
  if [[ -f $dir/.installed ]]; then
    touch "$dir/.installed"
    flock -u 9
    sync_script
    echo "$dir"
    exit 0
  fi
  flock -u 9
fi

mkdir -p "$base"
# One install at a time; readers of complete installs are not held up.
exec 8>>"$base/.install.lock"
flock 8
if [[ ! -f $dir/.installed ]]; then
  # Left by an install that was killed (this one holds the install lock).
  rm -rf "$base"/.new-*
  echo "$me: npm ci in $dir ($node_bin/npm, Node.js $("$node_path" --version))" >&2
  start=$SECONDS
  tmp=$(mktemp -d "$base/.new-$key.XXXXXX")
  chmod 755 "$tmp" # mktemp's 0700 would keep a shared checkout's other users out
  trap 'rm -rf "$tmp"' EXIT
  cp "$src/package.json" "$src/package-lock.json" "$tmp/"
  (cd "$tmp" && PATH=$node_bin:$PATH npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  if ! (cd "$tmp" && "$node_path" -e 'require("aws-iot-device-sdk-v2"); require("aws-crt").io.is_alpn_available()') >&2; then
    echo "$me: aws-crt has no prebuilt native binding for $("$node_path" -p 'process.platform + "-" + process.arch') in its npm package" >&2
    exit 1
  fi
  touch "$tmp/.installed"
  exec 9>>"$base/.lock"
  flock 9
  # Not complete (no .installed), so nothing runs from it: left by hand.
  rm -rf "$dir"
  mv -T "$tmp" "$dir"
  trap - EXIT
  # Other installs that no run has asked for in a day.
  for old in "$base"/*/; do
    old=${old%/}
    [[ $old != "$dir" ]] || continue
    if [[ ! -f $old/.installed ]] || [[ -n $(find "$old/.installed" -mmin +1440) ]]; then
      echo "$me: removing $old (unused for a day)" >&2
      rm -rf "$old"
    fi
  done
  flock -u 9
  echo "$me: installed in $((SECONDS - start)) s" >&2
fi
sync_script
echo "$dir"
