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
# Tests run under the emulator, through scripts/lib/qemu-runner.sh: it
# tells the tests so (PVX_EMULATOR) and drops any QEMU_LD_PREFIX. The
# target's glibc is installed multiarch (/lib/${gnu}), where the target's
# loader looks, so no prefix is needed; with one pointing at the cross
# sysroot, ld.so and libc.so.6 come from two glibc builds and forked
# children hang (docs/DEVICE-32BIT.md, "Under emulation"). An absolute
# path: cargo runs tests from each package's directory.
export "CARGO_TARGET_${up}_RUNNER=$PWD/scripts/lib/qemu-runner.sh ${qemu}"

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
