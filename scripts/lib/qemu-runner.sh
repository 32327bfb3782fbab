#!/usr/bin/env bash
# Cargo's runner for a cross target's test binaries (scripts/cross.sh sets
# CARGO_TARGET_<TRIPLE>_RUNNER to "scripts/lib/qemu-runner.sh qemu-arm" or
# "... qemu-aarch64"): run one test executable under qemu-user.
#
#   qemu-runner.sh QEMU TEST-EXECUTABLE [ARGS...]
#
# Two things it does besides exec'ing the emulator:
#
# - PVX_EMULATOR=<qemu binary> <version> tells the few tests whose check
#   the emulator cannot honour that they run under qemu-user, so they
#   print what they do instead and why (docs/DEVICE-32BIT.md, "Under
#   emulation"); nothing is skipped silently.
# - QEMU_LD_PREFIX is removed from the environment. With it set to the
#   cross toolchain's sysroot (/usr/aarch64-linux-gnu), qemu loads the
#   target's ld.so from there but, because the loader's default multiarch
#   path (/lib/aarch64-linux-gnu) does not exist under that prefix, libc.so.6
#   from the host's multiarch libc6:arm64: two glibc builds whose private
#   _rtld_global layouts differ, and a fork()ed child spins in glibc's
#   reclaim_stacks (aarch64; armhf is mixed the same way and happens to
#   survive). The target's glibc installed multiarch
#   (scripts/setup.sh --cross) is found by the loader without any prefix.
set -euo pipefail

qemu=${1:?usage: qemu-runner.sh qemu-arm|qemu-aarch64 EXECUTABLE [ARGS...]}
shift
unset QEMU_LD_PREFIX
version=$("$qemu" --version | sed -n '1s/.*version \([^ ]*\).*/\1/p')
export PVX_EMULATOR="$qemu $version"
exec "$qemu" "$@"
