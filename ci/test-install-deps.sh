#!/usr/bin/env bash
# Checks ci/install-deps.sh's choice of Node.js packages without apt: each
# case runs it with PATH holding only stand-ins (node, npm, dpkg, dpkg-query,
# apt-get) that describe one machine, and compares what it would install,
# its exit code and its message. Takes well under a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# fake_node FILE MAJOR: a node that answers -p (the major) and --version.
fake_node() {
  printf '#!/bin/bash\ncase "$1" in -p) echo %s;; --version) echo v%s.0.0;; esac\n' "$2" "$2" >"$1"
  chmod +x "$1"
}

# check NAME NODE NPM [ENV=VALUE..] -- RC INSTALLED MESSAGE
#   NODE: none, or KIND:MAJOR with KIND debian (Debian's nodejs), nodesource
#   (NodeSource's, bundles npm), tarball (in no package); NPM: yes or no;
#   a Debian nodejs apt installs is Node.js DEBIAN_NODE=MAJOR (default 18).
#   Expected: the exit code, the packages of interest apt is asked for
#   (nodejs/npm, space-separated, "-" for none) and a part of stderr.
check() {
  local name=$1 node=$2 npm=$3
  shift 3
  local envs=(HOME=/nonexistent)
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local want_rc=$1 want_pkgs=$2 want_msg=$3
  local d=$work/$name
  mkdir -p "$d/bin"
  for t in grep readlink dirname cat id chmod cp; do ln -s "$(command -v "$t")" "$d/bin/$t"; done
  local provides="" owner=nodejs version=""
  case $node in
    none) owner="" ;;
    debian:*) version="${node#*:}.0.0+dfsg-1~deb12u3" provides="node-types-node nodejs-legacy" ;;
    nodesource:*) version="${node#*:}.0.0-1nodesource1" provides="nodejs-dev, npm nodejs-dev, npm" ;;
    tarball:*) owner="" ;;
  esac
  [[ $node == none ]] || fake_node "$d/bin/node" "${node#*:}"
  if [[ $npm == yes ]]; then printf '#!/bin/bash\n' >"$d/bin/npm" && chmod +x "$d/bin/npm"; fi
  local debian_node=18 e
  for e in "${envs[@]}"; do [[ $e != DEBIAN_NODE=* ]] || debian_node=${e#*=}; done
  fake_node "$d/debian-node" "$debian_node"
  cat >"$d/bin/dpkg-query" <<EOF
#!/bin/bash
case "\$2" in
  *Status*) echo 'install ok installed' ;;
  *'{Version}') echo '$version' ;;
  *) echo '$version $provides' ;;
esac
EOF
  cat >"$d/bin/dpkg" <<EOF
#!/bin/bash
[[ -n '$owner' ]] && { echo "$owner: \$2"; exit 0; }
echo "dpkg-query: no path found matching pattern \$2" >&2; exit 1
EOF
  cat >"$d/bin/apt-get" <<EOF
#!/bin/bash
[[ \$1 == install ]] && echo "\$*" >'$d/apt'
if [[ " \$* " == *" nodejs "* ]]; then cp '$d/debian-node' '$d/bin/node'; fi
EOF
  chmod +x "$d/bin/"*
  local rc=0
  env -i PATH="$d/bin" "${envs[@]}" /bin/bash "$root/ci/install-deps.sh" 2>"$d/stderr" || rc=$?
  local pkgs=-
  if [[ -f $d/apt ]]; then
    pkgs=$(tr ' ' '\n' <"$d/apt" | grep -xE 'nodejs|npm' | paste -sd' ' || true)
    [[ -n $pkgs ]] || pkgs=-
  fi
  if [[ $rc != "$want_rc" || $pkgs != "$want_pkgs" ]] || { [[ -n $want_msg ]] && ! grep -qF -- "$want_msg" "$d/stderr"; }; then
    echo "FAIL $name: rc $rc (want $want_rc), installs '$pkgs' (want '$want_pkgs'), stderr:" >&2
    sed 's/^/  /' "$d/stderr" >&2
    echo "  (wanted a part: $want_msg)" >&2
    failures=$((failures + 1))
  else
    echo "ok $name"
  fi
}

check no-node none no -- 0 "nodejs npm" ""
check no-node-debian-11 none no DEBIAN_NODE=12 -- 1 "nodejs npm" "is Node.js v12.0.0; the JavaScript device SDK test needs 18 or later"
check debian-node-no-npm debian:18 no -- 0 "npm" ""
check debian-node-and-npm debian:18 yes -- 0 - ""
check debian-11-node debian:12 no -- 1 - "needs 18 or later"
check nodesource-node nodesource:20 yes -- 0 - ""
check nodesource-node-no-npm nodesource:20 no -- 1 - "which bundles npm (and conflicts with Debian's)"
check tarball-node tarball:20 yes -- 0 - ""
check tarball-node-no-npm tarball:20 no -- 1 - "is not from a Debian package and there is no npm"
check old-tarball-node tarball:16 yes -- 1 - "is Node.js v16.0.0"
check skipped debian:12 no IOTCORE_SKIP_AWSIOTSDK_JS=1 -- 0 - "Node.js not checked"
check skip-ignored-in-ci debian:12 no IOTCORE_SKIP_AWSIOTSDK_JS=1 CI= -- 1 - "needs 18 or later"
check awsiotsdk-js-node debian:12 no AWSIOTSDK_JS_NODE=/opt/node/bin/node -- 0 - ""

if ((failures)); then
  echo "ci/test-install-deps.sh: $failures case(s) failed" >&2
  exit 1
fi
