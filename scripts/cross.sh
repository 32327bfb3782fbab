#!/usr/bin/env bash
# Build (or test, or lint) pv-xconnect for a device's CPU from this x86-64
# machine, with Debian's own cross toolchain: `rustc-web` and its standard
# library for the target, and the distribution's cross gcc as linker.
#
#   scripts/cross.sh aarch64|armv7                 release executable, stripped
#   scripts/cross.sh aarch64|armv7 CARGO-ARGS...   e.g. `test --workspace --lib`
#                                                  (runs under qemu-user),
#                                                  `clippy --all-targets -- -D warnings`
#
# The first run installs what is missing (scripts/setup.sh --cross). Output
# goes to target/cross/<triple>/ so the host's own build (rustup's toolchain,
# target/) is never rebuilt by this one: the two compilers differ.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  aarch64) triple=aarch64-unknown-linux-gnu     gnu=aarch64-linux-gnu   qemu=qemu-aarch64 ;;
  armv7)   triple=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
  *) echo "usage: scripts/cross.sh aarch64|armv7 [cargo args...]" >&2; exit 2 ;;
esac
shift

scripts/setup.sh --cross

# Debian's toolchain first in PATH: its cargo, rustc, clippy and rustdoc are
# one release and its sysroot (/usr/lib/rustlib) holds the targets' std.
# rustup's proxies in ~/.cargo/bin would pick a compiler without them.
export PATH=/usr/bin:/bin:$PATH
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR=target/cross
up=$(echo "$triple" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${up}_LINKER=${gnu}-gcc"
# Tests run under the emulator. The target's glibc is installed multiarch
# (/lib/${gnu}), where the target's loader looks, so no -L prefix is given:
# with one (QEMU_LD_PREFIX), qemu resolves every absolute path under it
# first, /proc/self/... included (docs/DEVICE.md, "Under emulation").
export "CARGO_TARGET_${up}_RUNNER=${qemu}"

if [ $# -eq 0 ]; then
  cargo build --release --locked --target "$triple" --bin pv-xconnect
  exe="$CARGO_TARGET_DIR/$triple/release/pv-xconnect"
  # The release profile strips already (strip = true); this keeps the
  # promise if that ever changes, and is a no-op otherwise.
  "${gnu}-strip" "$exe"
  echo "$exe: $(stat -c %s "$exe") bytes, $triple"
else
  cmd=$1
  shift
  cargo "$cmd" --locked --target "$triple" "$@"
fi
