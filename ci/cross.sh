#!/usr/bin/env bash
# Cross-builds prov-agent (default features: tpm, pkcs11) and
# iotcore-emulator for an ARM Linux target:
#   ci/cross.sh [debug|release] [TARGET]   (default: release, aarch64)
# TARGET is aarch64-unknown-linux-gnu (arm64, the default) or
# armv7-unknown-linux-gnueabihf (armhf).
# rustup cannot add targets here (its download host is out of reach), so the
# build uses Debian's Rust (rustc-web, cargo-web) with Debian's standard
# library for the target (libstd-rust-web-dev:arm64 or :armhf), the Debian
# cross gcc (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf) as the linker
# and C compiler, and the multiarch libtss2-dev of that architecture for
# tss-esapi (tss-esapi-sys ships pre-generated aarch64 and arm Linux
# bindings: no bindgen). Installs what is missing, adding the Debian
# architecture to dpkg first (idempotent, like ci/install-deps.sh).
# Binaries land in target/cross/TARGET/<profile>/ (its own target dir: it
# never disturbs target/debug or target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile=${1:-release}
case $profile in
  debug|release) ;;
  -h|--help) echo "usage: ci/cross.sh [debug|release] [aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf]"; exit 0 ;;
  *) echo "ci/cross.sh: profile is debug or release, not '$profile'" >&2; exit 2 ;;
esac

target=${2:-aarch64-unknown-linux-gnu}
# Per target: the Debian architecture, the GNU triplet (the cross gcc's
# prefix and the multiarch directory), qemu-user's binary and the ELF
# e_machine of its binaries.
case $target in
  aarch64-unknown-linux-gnu)
    arch=arm64 triplet=aarch64-linux-gnu qemu=qemu-aarch64 e_machine=183 ;;   # EM_AARCH64
  armv7-unknown-linux-gnueabihf)
    arch=armhf triplet=arm-linux-gnueabihf qemu=qemu-arm e_machine=40 ;;      # EM_ARM
  *) echo "ci/cross.sh: target is aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf, not '$target'" >&2; exit 2 ;;
esac
start=$SECONDS
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- packages ------------------------------------------------------------
packages=(
  rustc-web cargo-web            # Debian's Rust, beside rustup's
  "libstd-rust-web-dev:$arch"    # its standard library for the target
  "gcc-$triplet"                 # linker and C compiler (ring, bundled sqlite)
  "libc6-dev-$arch-cross"        # its sysroot /usr/$triplet (only a Recommends of the above)
  "libtss2-dev:$arch"            # tss2-esys/-tctildr/-mu/-sys .pc files and libraries for tss-esapi
  "libtss2-tcti-swtpm0:$arch"    # the TCTI tss-esapi loads by name (ci/test-arm.sh)
  "libc6:$arch"                  # the target's run time (loader and libc) qemu-user uses
  qemu-user                      # qemu-aarch64, qemu-arm (ci/test-arm.sh)
  pkg-config
)
missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "== ci/cross.sh: installing ${missing[*]}"
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    $SUDO dpkg --add-architecture "$arch"
  fi
  # A dpkg already running on the machine is waited for (up to 10 minutes)
  # instead of failing on its lock.
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
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
# Cargo's and the cc crate's per-target variables: CARGO_TARGET_<TARGET>_*
# in upper case, CC_<target>/AR_<target> with underscores.
t_upper=$(tr 'a-z-' 'A-Z_' <<<"$target")
t_lower=${target//-/_}
export "CARGO_TARGET_${t_upper}_LINKER=$triplet-gcc"
export "CC_${t_lower}=$triplet-gcc"
export "AR_${t_lower}=$triplet-ar"
# `cargo run`/`cargo test` through qemu, with the target's multiarch run
# time (see ci/test-arm.sh for why not the cross sysroot's loader).
export "CARGO_TARGET_${t_upper}_RUNNER=$qemu -L /"
# pkg-config for the target only: its multiarch .pc files. The pkg-config
# crate reads PKG_CONFIG_*_<target> first; host build scripts (none probe
# pkg-config today) keep the host's.
export PKG_CONFIG_ALLOW_CROSS=1
export "PKG_CONFIG_PATH_${t_lower}=/usr/lib/$triplet/pkgconfig:/usr/share/pkgconfig"
export "PKG_CONFIG_LIBDIR_${t_lower}=/usr/lib/$triplet/pkgconfig:/usr/share/pkgconfig"
export "PKG_CONFIG_SYSROOT_DIR_${t_lower}=/"

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
  # ELF e_machine (offset 18, little endian): 183 is EM_AARCH64, 40 EM_ARM.
  [[ $(od -An -j18 -N2 -tu2 "$out/$b" | tr -d ' ') == "$e_machine" ]] ||
    { echo "ci/cross.sh: $out/$b is not an ELF binary for $target (e_machine $e_machine)" >&2; exit 1; }
  echo "   $out/$b"
done
echo "== ci/cross.sh: $profile build took ${build_time} s; total $((SECONDS - start)) s"
