#!/usr/bin/env bash
# Installs the system packages the build, the tests and the demo use.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  swtpm swtpm-tools        # software TPM for the tpm backend's tests
  softhsm2                 # software PKCS#11 token for the pkcs11 backend's tests
  libtss2-dev tpm2-tools   # tpm2-tss headers (tss-esapi) and tools (debugging, tests)
  opensc                   # pkcs11-tool, for inspecting tokens
  libtpm2-pkcs11-1 libtpm2-pkcs11-tools  # tpm2-pkcs11 module and tpm2_ptool (tests/tpm2_pkcs11.rs)
  tpm2-abrmd libtss2-tcti-tabrmd0        # resource manager the module needs on a swtpm
  dbus-x11                 # dbus-launch: the private session bus tpm2-abrmd --session uses
  openssl                  # independent verifier of CSRs and certificates in tests
  tpm2-openssl             # OpenSSL's tpm2 provider: a consumer of the TPM key file (tests/consumers.rs)
  libengine-pkcs11-openssl # OpenSSL's pkcs11 engine: a consumer of the PKCS#11 URI (tests/consumers.rs)
  gnutls-bin               # gnutls-cli: a consumer of tpm2-pkcs11 keys (tests/consumers.rs)
  mosquitto mosquitto-clients  # an MQTT bridge using the TPM key file (tests/consumers.rs)
  pkg-config clang libclang-dev
  python3-venv             # the awsiotsdk test's virtualenv
  time                     # GNU time: peak RSS in ci/bench.sh enroll
  groff-base               # groff: renders the generated man pages (tests/cli_docs.rs)
  dpkg-dev binutils        # dpkg-shlibdeps and strip: ci/package.sh
  systemd                  # systemd-analyze: ci/verify-units.sh (debian:12 images lack it)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# Node.js 18 or later and its npm: the JavaScript device SDK test
# (emulator/tests/awsiotsdk_js.rs, installed by ci/node-sdk.sh), unless it is
# skipped (IOTCORE_SKIP_AWSIOTSDK_JS=1 where CI is not set, as the test and
# ci/test.sh do). Debian's nodejs and npm are installed where there is no
# node; a node that is there is kept, and Debian's npm is added only to
# Debian's nodejs: NodeSource's nodejs bundles npm and Conflicts: npm, and a
# node from nodejs.org or nvm has its own. A problem is reported after the
# other packages are installed, so that one run installs all it can.

# Prints why the node at $1 will not do, if it is older than 18 (Debian 11's
# nodejs is 12).
node_too_old() {
  local major
  major=$("$1" -p 'process.versions.node.split(".")[0]')
  if ((major < 18)); then
    echo "$1 is Node.js $("$1" --version); the JavaScript device SDK test needs 18 or later: on Debian 12 install its nodejs and npm; on older Debian (11's nodejs is 12) install Node.js 18 or later from NodeSource (deb.nodesource.com, bundles npm) or nodejs.org, and put it first on PATH or name it in AWSIOTSDK_JS_NODE; or skip the test outside CI with IOTCORE_SKIP_AWSIOTSDK_JS=1"
  fi
}

node_problem=""
check_node_after=""
if [[ ${IOTCORE_SKIP_AWSIOTSDK_JS:-} == 1 && -z ${CI+set} ]]; then
  echo "ci/install-deps.sh: Node.js not checked (IOTCORE_SKIP_AWSIOTSDK_JS=1)" >&2
elif [[ -n ${AWSIOTSDK_JS_NODE:-} ]]; then
  # The test's node is the caller's: nothing to install; ci/node-sdk.sh
  # checks its version and the npm beside it.
  :
elif ! node_path=$(command -v node); then
  missing+=(nodejs npm)
  check_node_after=1
else
  node_problem=$(node_too_old "$node_path")
  if [[ -z $node_problem ]] && ! command -v npm >/dev/null; then
    # The package owning node, asked by the path dpkg knows too (/usr/bin/node
    # where PATH finds /bin/node on a merged /usr).
    owner=$(dpkg -S "$node_path" 2>/dev/null || dpkg -S "$(readlink -f "$node_path")" 2>/dev/null || true)
    owner=${owner%%:*}
    if [[ -z $owner ]]; then
      node_problem="$node_path is not from a Debian package and there is no npm: install the npm of that Node.js (nodejs.org's and nvm's bundle it), or remove that node so that Debian's nodejs and npm can be installed"
    elif dpkg-query -W -f='${Version} ${Provides} ${Conflicts}\n' "$owner" | grep -qE 'nodesource|\<npm\>'; then
      node_problem="$node_path is from $owner $(dpkg-query -W -f='${Version}' "$owner"), which bundles npm (and conflicts with Debian's), yet there is no npm: reinstall it (apt-get install --reinstall $owner)"
    else
      missing+=(npm)
    fi
  fi
fi

if ((${#missing[@]})); then
  echo "ci/install-deps.sh: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ -n $check_node_after ]]; then
  node_problem=$(node_too_old "$(command -v node)")
fi
if [[ -n $node_problem ]]; then
  echo "ci/install-deps.sh: $node_problem" >&2
  exit 1
fi
