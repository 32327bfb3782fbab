#!/usr/bin/env bash
# Every test (`cargo test`: unit and integration, the root-only namespace
# tests included) as on the oldest kernel we support, Linux 4.9: under a
# seccomp filter that answers ENOSYS to every system call newer than that
# and the error that kernel gave to the newer options and flags
# (scripts/lib/old_kernel.py; docs/KERNEL.md says what it proves and what
# it cannot).
#
#   scripts/old-kernel.sh [--min X.Y] [CARGO-TEST-ARGS...]
#
# Root only: the namespace tests must run, not skip (CI=true). The tests
# are built first without the filter (the compiler is not under test),
# then cargo, the test binaries, pv-xconnect and every tool the tests
# start (curl, ip, unshare, socat, python3) run under it, as they would
# on such a kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

min=4.9
if [ "${1:-}" = "--min" ]; then
  min=${2:?usage: scripts/old-kernel.sh [--min X.Y] [cargo test args...]}
  shift 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "old-kernel: run as root: the namespace tests must run here" >&2
  exit 2
fi
scripts/setup.sh --old-kernel

cargo test --locked --no-run
export CI=true
echo "old-kernel: cargo test under the Linux $min filter"
exec /usr/bin/python3 scripts/lib/old_kernel.py --min "$min" -- cargo test --locked --no-fail-fast "$@"
