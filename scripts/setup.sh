#!/usr/bin/env bash
# Install what the tests, demo and benchmarks need from Debian's packages,
# only when something is missing (a fresh machine), so repeated runs are fast.
#   scripts/setup.sh          tools the tests and demo use
#   scripts/setup.sh --bench  also the peers the benchmarks compare against
#   scripts/setup.sh --cross  the ARM cross toolchain and emulators
#                             (scripts/cross.sh, scripts/arm-smoke.sh)
#   scripts/setup.sh --old-kernel  libseccomp's Python binding, strace, cc
#                             (scripts/old-kernel.sh, scripts/syscalls.sh)
# Flags combine (.ci/run passes --cross --old-kernel: one apt run).
set -euo pipefail

bench=0 cross=0 old_kernel=0
for a in "$@"; do
  case $a in
    --bench) bench=1 ;;
    --cross) cross=1 ;;
    --old-kernel) old_kernel=1 ;;
    *) echo "usage: scripts/setup.sh [--bench] [--cross] [--old-kernel]" >&2; exit 2 ;;
  esac
done

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip      || need+=(iproute2)
have unshare || need+=(util-linux)
have kill    || need+=(procps)
have curl    || need+=(curl)
have socat   || need+=(socat)
have python3 || need+=(python3)
# promtool checks /metrics in the tests (tests/ops.rs); Debian ships it
# in the prometheus package (the server is installed, never started here).
have promtool || need+=(prometheus)
if [ $bench = 1 ]; then
  have haproxy || need+=(haproxy)
  have nginx   || need+=(nginx-light)
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
  have wrk     || need+=(wrk)
  have iperf3  || need+=(iperf3)
  have strace  || need+=(strace)    # scripts/bench-syscalls.sh, scripts/prof-http.sh
  have valgrind || need+=(valgrind) # callgrind: instruction counts, repeatable on a noisy machine
fi

# Debian's rustc-web and its std for each target, the cross linkers, the
# targets' glibc (multiarch, so qemu-user finds the loader without -L),
# qemu-user for unit tests and qemu-system-arm (both ARM machines) for the
# kernel smoke. rustup cannot fetch a target's std here; Debian ships it.
foreign=()
if [ $cross = 1 ]; then
  for a in arm64 armhf; do
    dpkg --print-foreign-architectures | grep -qx $a || foreign+=($a)
  done
  have /usr/bin/rustc || need+=(rustc-web)
  have /usr/bin/cargo || need+=(cargo-web)
  have /usr/bin/cargo-clippy || need+=(rust-web-clippy)
  [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ] || need+=(libstd-rust-web-dev:arm64)
  [ -d /usr/lib/rustlib/armv7-unknown-linux-gnueabihf/lib ] || need+=(libstd-rust-web-dev:armhf)
  have aarch64-linux-gnu-gcc   || need+=(gcc-aarch64-linux-gnu)
  have arm-linux-gnueabihf-gcc || need+=(gcc-arm-linux-gnueabihf)
  [ -e /usr/lib/aarch64-linux-gnu/libc.so ] || need+=(libc6-dev:arm64)
  [ -e /usr/lib/arm-linux-gnueabihf/libc.so ] || need+=(libc6-dev:armhf)
  have qemu-aarch64 || need+=(qemu-user)
  have qemu-system-aarch64 || need+=(qemu-system-arm)
  have cpio || need+=(cpio)
fi

# Debian's python3 (not a python3 earlier in PATH) has the binding.
if [ $old_kernel = 1 ]; then
  /usr/bin/python3 -c 'import seccomp' 2>/dev/null || need+=(python3-seccomp)
  have strace || need+=(strace)
  have cc || need+=(gcc libc6-dev)   # scripts/syscalls.sh builds a wrapper
fi

if [ ${#foreign[@]} -gt 0 ] || [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]:-nothing new}${foreign[*]:+; adding architectures ${foreign[*]}}"
  export DEBIAN_FRONTEND=noninteractive
  for a in "${foreign[@]}"; do dpkg --add-architecture "$a"; done
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
