#!/usr/bin/env bash
# HTTP through one pvx-worker-http, side by side in one run with the
# backend direct, nginx proxy_pass (one worker, upstream keep-alive) and
# HAProxy (mode http, one thread, server connections reused); all on
# loopback against the same backend, a separate nginx (one worker)
# serving static files. wrk -t1, SECONDS per run, RUNS runs per target,
# interleaved. Scenarios (all by default, or those named):
#   keepalive  100-byte file, keep-alive, wrk -c50 (req/s and p99)
#   1mib       1 MiB file, keep-alive, wrk -c50
#   close      a new connection per request: 100-byte file, wrk -c20 with
#              `Connection: close`
# Prints the median of each target, the ratio to direct, and the CPU time
# the relaying process spends per request and the backend's
# (scripts/lib/bench.sh side_by_side).
#   scripts/bench-http.sh [RUNS] [SECONDS] [keepalive|1mib|close ...]
#   PVX_BIN=path/to/pv-xconnect (default: target/release, built here)
#   PVX_BENCH_FLAGS="--access-log stderr"   (extra supervisor flags; its
#     stderr, access lines included, goes to a file in the scratch dir)
#   PVX_BENCH_ALSO="--access-log stderr"    (a second pv-xconnect, with
#     these flags added, measured in the same runs as target pvx-also:
#     the cost of a flag, interleaved, so the machine's noise hits both)
#   PVX_BENCH_ALSO_BIN=path   (pvx-also runs this executable instead: two
#     builds side by side; PVX_BENCH_ALSO may then be empty, or a space)
#   PVX_BENCH_TARGETS="direct pv-xconnect pvx-also"   (only these targets;
#     default: all; direct stays first, the others' ratio is to it)
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
RUNS=${1:-5}
SECS=${2:-5}
shift $(( $# < 2 ? $# : 2 ))
SCENARIOS=${*:-keepalive 1mib close}
bench_init bench-http
bench_files

# The backend: its own nginx process, so every proxy below is one more
# process in the path, as pv-xconnect is.
B=$(port); P_PVX=$(port); P_NGX=$(port); P_HA=$(port); P_ALSO=$(port)
nginx_backend backend "$B"
pvx_start pvx "$(pvx_link http bench "$P_PVX" "$B")"
nginx_proxy proxy http "$P_NGX" "$B"
haproxy_proxy ha http "$P_HA" "$B"
all=(direct="$B" pv-xconnect="$P_PVX" haproxy="$P_HA" nginx="$P_NGX")
if [ -n "${PVX_BENCH_ALSO:-}${PVX_BENCH_ALSO_BIN:-}" ]; then
  PVX_BIN=${PVX_BENCH_ALSO_BIN:-$PVX_BIN} PVX_BENCH_FLAGS="${PVX_BENCH_FLAGS:-} ${PVX_BENCH_ALSO:-}" \
    pvx_start pvx-also "$(pvx_link http bench "$P_ALSO" "$B")"
  all+=(pvx-also="$P_ALSO")
fi
targets=()
for t in "${all[@]}"; do
  [[ " ${PVX_BENCH_TARGETS:-${all[*]%%=*}} " == *" ${t%%=*} "* ]] && targets+=("$t")
done
for t in "${targets[@]}"; do wait_http "${t#*=}" 100; done

keepalive() { wrk_run "$1" 100 "$SECS" -c50; }
mib() { wrk_run "$1" 1m "$SECS" -c50; }
close() { wrk_run "$1" 100 "$SECS" -c20 -H 'Connection: close'; }
for s in $SCENARIOS; do
  case $s in
    keepalive) side_by_side "HTTP keep-alive, 100 B file, wrk -t1 -c50, ${SECS} s" req/s keepalive "${targets[@]}" ;;
    1mib) side_by_side "HTTP keep-alive, 1 MiB file, wrk -t1 -c50, ${SECS} s" req/s mib "${targets[@]}" ;;
    close) side_by_side "new connection per request, http link (wrk -t1 -c20 'Connection: close', 100 B file), ${SECS} s" req/s close "${targets[@]}" ;;
    *) echo "bench-http: unknown scenario $s (keepalive, 1mib, close)" >&2; exit 2 ;;
  esac
done
