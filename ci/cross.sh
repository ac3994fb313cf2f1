#!/usr/bin/env bash
# Cross-builds prov-agent (default features: tpm, pkcs11) and
# iotcore-emulator for aarch64-unknown-linux-gnu:
#   ci/cross.sh [debug|release]        (default: release)
# rustup cannot add targets here (its download host is out of reach), so the
# build uses Debian's Rust (rustc-web, cargo-web) with Debian's arm64
# standard library (libstd-rust-web-dev:arm64), gcc-aarch64-linux-gnu as the
# linker and C compiler, and the arm64 multiarch libtss2-dev for tss-esapi
# (tss-esapi-sys ships pre-generated aarch64 Linux bindings: no bindgen).
# Installs what is missing (idempotent, like ci/install-deps.sh). Binaries
# land in target/cross/aarch64-unknown-linux-gnu/<profile>/ (its own target
# dir: it never disturbs target/debug or target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile=${1:-release}
case $profile in
  debug|release) ;;
  -h|--help) echo "usage: ci/cross.sh [debug|release]"; exit 0 ;;
  *) echo "ci/cross.sh: profile is debug or release, not '$profile'" >&2; exit 2 ;;
esac

target=aarch64-unknown-linux-gnu
start=$SECONDS
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- packages ------------------------------------------------------------
packages=(
  rustc-web cargo-web            # Debian's Rust, beside rustup's
  libstd-rust-web-dev:arm64      # its standard library for aarch64
  gcc-aarch64-linux-gnu          # linker and C compiler (ring, bundled sqlite)
  libc6-dev-arm64-cross          # its sysroot /usr/aarch64-linux-gnu (only a Recommends of the above)
  libtss2-dev:arm64              # tss2-esys/-tctildr/-mu/-sys .pc files and libraries for tss-esapi
  libtss2-tcti-swtpm0:arm64      # the TCTI tss-esapi loads by name (ci/test-arm64.sh)
  libc6:arm64                    # the arm64 run time (loader and libc) qemu-aarch64 uses
  qemu-user                      # qemu-aarch64 (ci/test-arm64.sh)
  pkg-config
)
missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "== ci/cross.sh: installing ${missing[*]}"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for p in "${missing[@]}"; do installed "$p" || { echo "ci/cross.sh: $p did not install" >&2; exit 1; }; done
fi
echo "== ci/cross.sh: packages ready ($((SECONDS - start)) s)"

# --- Debian's toolchain ----------------------------------------------------
debian_tool() { # package, binary name
  local path
  path=$(dpkg -L "$1" | grep -E "/bin/$2\$" | head -1)
  [[ -n $path && -x $path ]] || { echo "ci/cross.sh: no $2 in package $1" >&2; exit 1; }
  printf '%s\n' "$path"
}
rustc_bin=$(debian_tool rustc-web rustc)
cargo_bin=$(debian_tool cargo-web cargo)
[[ -d $("$rustc_bin" --print target-libdir --target "$target") ]] ||
  { echo "ci/cross.sh: $rustc_bin has no standard library for $target" >&2; exit 1; }
echo "== ci/cross.sh: $("$cargo_bin" --version), $("$rustc_bin" --version)"

# --- environment -----------------------------------------------------------
# Debian's rustc for everything, also build scripts (cargo hands RUSTC on);
# rustup's proxies stay out of the way.
export RUSTC=$rustc_bin
unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTFLAGS 2>/dev/null || true
export CARGO_TARGET_DIR=$root/target/cross
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# `cargo run`/`cargo test` through qemu, with the arm64 multiarch run time
# (see ci/test-arm64.sh for why not the cross sysroot's loader).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /"
# pkg-config for the target only: the arm64 multiarch .pc files. The
# pkg-config crate reads PKG_CONFIG_*_<target> first; host build scripts
# (none probe pkg-config today) keep the host's.
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_PATH_aarch64_unknown_linux_gnu=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR_aarch64_unknown_linux_gnu=/

profile_flag=()
[[ $profile == release ]] && profile_flag=(--release)

echo "== ci/cross.sh: cargo build --$profile --target $target (prov-agent, iotcore-emulator)"
build_start=$SECONDS
"$cargo_bin" build --locked -j 2 "${profile_flag[@]}" --target "$target" \
  -p prov-agent --bin prov-agent -p iotcore-emulator --bin iotcore-emulator
build_time=$((SECONDS - build_start))

out=$CARGO_TARGET_DIR/$target/$profile
for b in prov-agent iotcore-emulator; do
  [[ -x $out/$b ]] || { echo "ci/cross.sh: $out/$b was not built" >&2; exit 1; }
  # ELF e_machine (offset 18, little endian): 183 is EM_AARCH64.
  [[ $(od -An -j18 -N2 -tu2 "$out/$b" | tr -d ' ') == 183 ]] ||
    { echo "ci/cross.sh: $out/$b is not an aarch64 ELF binary" >&2; exit 1; }
  echo "   $out/$b"
done
echo "== ci/cross.sh: $profile build took ${build_time} s; total $((SECONDS - start)) s"
