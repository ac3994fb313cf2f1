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

# Node.js 18 or later and npm: the JavaScript device SDK test
# (emulator/tests/awsiotsdk_js.rs, installed by ci/node-sdk.sh). Debian 12's
# nodejs (18) and npm do; a Node.js installed otherwise (NodeSource's, which
# bundles npm) is kept, since Debian's npm would conflict with it.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

if ((${#missing[@]})); then
  echo "ci/install-deps.sh: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
