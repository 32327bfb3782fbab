#!/usr/bin/env bash
# Install what the tests, demo and benchmarks need from Debian's packages,
# only when something is missing (a fresh machine), so repeated runs are fast.
#   scripts/setup.sh          tools the tests and demo use
#   scripts/setup.sh --bench  also the peers the benchmarks compare against
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip      || need+=(iproute2)
have unshare || need+=(util-linux)
have kill    || need+=(procps)
have curl    || need+=(curl)
have socat   || need+=(socat)
have python3 || need+=(python3)
if [ "${1:-}" = "--bench" ]; then
  have haproxy || need+=(haproxy)
  have nginx   || need+=(nginx-light)
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
  have wrk     || need+=(wrk)
  have iperf3  || need+=(iperf3)
  have strace  || need+=(strace)    # scripts/bench-syscalls.sh, scripts/prof-http.sh
  have valgrind || need+=(valgrind) # callgrind: instruction counts, repeatable on a noisy machine
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
