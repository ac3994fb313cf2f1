#!/usr/bin/env bash
# Builds the Debian packages of prov-agent and iotcore-emulator with
# dpkg-deb from the release binaries (stripped), into dist/:
#   ci/package.sh [REVISION] [TARGET]
# REVISION is the Debian revision (default 1). TARGET is a Rust target
# triple whose release binaries ci/cross.sh already built (in
# target/cross/TARGET/release); default: build the host's. The package's Depends come from dpkg-shlibdeps on the binary, plus
# what it loads at run time that dpkg-shlibdeps cannot see (the TPM's TCTI
# libraries, which tss-esapi loads by name).
set -euo pipefail
cd "$(dirname "$0")/.."

revision=${1:-1}
target=${2:-}
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "prov-agent"))')

if [[ -z $target ]]; then
  cargo build --quiet --release --locked --workspace --bins
  bin=target/release
  arch=$(dpkg --print-architecture)
else
  # Where ci/cross.sh builds.
  bin=target/cross/$target/release
  [[ -x $bin/prov-agent ]] || { echo "ci/package.sh: no $bin/prov-agent: run ci/cross.sh release" >&2; exit 2; }
  case $target in
    aarch64-*) arch=arm64 ;;
    armv7-*-gnueabihf) arch=armhf ;;
    x86_64-*) arch=amd64 ;;
    *) echo "ci/package.sh: unknown target $target" >&2; exit 2 ;;
  esac
fi

out=dist
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Depends of a binary, as dpkg-shlibdeps computes them.
shlibs() {
  local dir=$work/shlibs
  rm -rf "$dir"
  mkdir -p "$dir/debian"
  printf 'Source: x\n\nPackage: x\nArchitecture: any\n' >"$dir/debian/control"
  cp "$1" "$dir/binary"
  (cd "$dir" && dpkg-shlibdeps -O ${2:+-l"$2"} binary 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

strip_bin() {
  local strip=strip
  case $arch in
    arm64) strip=aarch64-linux-gnu-strip ;;
    armhf) strip=arm-linux-gnueabihf-strip ;;
  esac
  $strip --strip-all -o "$2" "$1"
}

# --- prov-agent ---------------------------------------------------------
root=$work/prov-agent
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" "$root/etc/prov-agent" \
  "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
  "$root/usr/share/doc/prov-agent/examples"
strip_bin "$bin/prov-agent" "$root/usr/bin/prov-agent"
chmod 0755 "$root/usr/bin/prov-agent"
install -m 0644 systemd/prov-agent.service systemd/prov-agent-enroll.service \
  systemd/prov-agent-rotate.service systemd/prov-agent-rotate.timer "$root/lib/systemd/system/"
install -m 0644 systemd/prov-agent.sysusers "$root/usr/lib/sysusers.d/prov-agent.conf"
install -m 0644 packaging/prov-agent/tmpfiles.conf "$root/usr/lib/tmpfiles.d/prov-agent.conf"
install -m 0644 packaging/prov-agent/config.ini "$root/etc/prov-agent/config.ini"
# Man pages and completions come from the binary's own CLI definition; a
# cross-built binary is run by the host's build of the same source.
host_agent=target/release/prov-agent
[[ -x $host_agent ]] || cargo build --quiet --release --locked --bin prov-agent
"$host_agent" manpages "$work/man" >/dev/null
for page in "$work"/man/*.1; do
  gzip -9n -c "$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
"$host_agent" completions bash >"$root/usr/share/bash-completion/completions/prov-agent"
"$host_agent" completions zsh >"$root/usr/share/zsh/vendor-completions/_prov-agent"
"$host_agent" completions fish >"$root/usr/share/fish/vendor_completions.d/prov-agent.fish"
install -m 0644 README.md "$root/usr/share/doc/prov-agent/README.md"
install -m 0644 systemd/README.md "$root/usr/share/doc/prov-agent/systemd-README.md"
install -m 0644 docs/*.md "$root/usr/share/doc/prov-agent/"
install -m 0644 systemd/encrypted-pin.conf "$root/usr/share/doc/prov-agent/examples/"
gzip -9n -c CHANGELOG.md >"$root/usr/share/doc/prov-agent/changelog.gz"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: prov-agent\nLicense: Apache-2.0\n' \
  >"$root/usr/share/doc/prov-agent/copyright"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/prov-agent/$script" "$root/DEBIAN/$script"
done
echo /etc/prov-agent/config.ini >"$root/DEBIAN/conffiles"
depends=$(shlibs "$root/usr/bin/prov-agent")
# tss-esapi opens its TCTI by name at run time: the kernel resource
# manager's (device) or tpm2-abrmd's (tabrmd).
depends="$depends, libtss2-tcti-device0 | libtss2-tcti-tabrmd0, systemd (>= 247)"
cat >"$root/DEBIAN/control" <<CONTROL
Package: prov-agent
Version: $version-$revision
Architecture: $arch
Maintainer: prov-agent maintainers <prov-agent@example.invalid>
Section: admin
Priority: optional
Depends: $depends
Recommends: tpm2-tools
Suggests: libtpm2-pkcs11-1, tpm2-abrmd, opensc
Installed-Size: $(du -sk "$root" | cut -f1)
Description: hardware-backed AWS IoT fleet provisioning and certificate rotation
 Trades the fleet's shared claim certificate for the gateway's own identity
 (AWS IoT Core fleet provisioning, MQTT) and rotates it on a schedule or on
 command. Every private key lives in a TPM 2.0 or a PKCS#11 token.
 .
 The package installs the units but enables and starts nothing: configure
 /etc/prov-agent/config.ini first (see /usr/share/doc/prov-agent).
CONTROL
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/prov-agent_${version}-${revision}_${arch}.deb" >/dev/null

# --- iotcore-emulator ---------------------------------------------------
root=$work/iotcore-emulator
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/doc/iotcore-emulator"
strip_bin "$bin/iotcore-emulator" "$root/usr/bin/iotcore-emulator"
chmod 0755 "$root/usr/bin/iotcore-emulator"
install -m 0644 emulator/README.md "$root/usr/share/doc/iotcore-emulator/README.md"
printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: iotcore-emulator\nLicense: Apache-2.0\n' \
  >"$root/usr/share/doc/iotcore-emulator/copyright"
cat >"$root/DEBIAN/control" <<CONTROL
Package: iotcore-emulator
Version: $version-$revision
Architecture: $arch
Maintainer: prov-agent maintainers <prov-agent@example.invalid>
Section: devel
Priority: optional
Depends: $(shlibs "$root/usr/bin/iotcore-emulator")
Installed-Size: $(du -sk "$root" | cut -f1)
Description: local stand-in for AWS IoT Core's fleet provisioning, for tests
 MQTT 3.1.1 and 5 over TLS, IoT policies, the fleet provisioning APIs, Jobs
 and a boto3-compatible control plane on loopback, for testing gateways
 and their provisioning without an AWS account.
CONTROL
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/iotcore-emulator_${version}-${revision}_${arch}.deb" >/dev/null

ls -1 "$out"/*_"${version}-${revision}"_"$arch".deb
