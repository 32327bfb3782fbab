#!/usr/bin/env bash
# tcp links side by side with direct loopback, HAProxy (mode tcp, one
# thread), nginx (stream, one worker) and socat, in one run, on loopback.
# Scenarios (all by default, or those named):
#   bulk   bulk throughput: iperf3, one stream, SECONDS per run (Gbit/s)
#   close  a new connection per request: wrk -t1 -c20 with
#          `Connection: close` for a 100-byte file from an nginx backend
#          (one worker) through the tcp link (req/s; no socat)
# Prints the median of RUNS runs of each target, the ratio to direct, and
# the CPU time the relaying process spends per request or per GB (socat:
# its forks included) and the backend's (scripts/lib/bench.sh side_by_side).
#   scripts/bench-tcp.sh [RUNS] [SECONDS] [bulk|close ...]
#   PVX_BENCH_FLAGS="--pipe-size 262144" scripts/bench-tcp.sh   (extra supervisor flags)
#   PVX_BIN=path/to/pv-xconnect (default: target/release, built here)
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
RUNS=${1:-5}
SECS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
SCENARIOS=${*:-bulk close}
bench_init bench-tcp
bench_files

B=$(port); P_PVX=$(port); P_HA=$(port); P_NGX=$(port); P_SOCAT=$(port)
W=$(port); W_PVX=$(port); W_HA=$(port); W_NGX=$(port)

iperf3 -s -p "$B" >/dev/null 2>&1 & pids+=($!); cpu_backend[$B]=$!
nginx_backend web "$W"
pvx_start pvx "$(pvx_link tcp bulk "$P_PVX" "$B")" "$(pvx_link tcp close "$W_PVX" "$W")"
haproxy_proxy ha tcp "$P_HA" "$B"
haproxy_proxy ha-close tcp "$W_HA" "$W"
nginx_proxy ngx stream "$P_NGX" "$B"
nginx_proxy ngx-close stream "$W_NGX" "$W"
socat TCP-LISTEN:"$P_SOCAT",bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:"$B" & pids+=($!); cpu_relay[$P_SOCAT]=$!
sleep 1
for p in $W $W_PVX $W_HA $W_NGX; do wait_http "$p" 100; done

# port -> "Gbit/s - bytes" received by the server ("0 - 0" and why, on
# stderr, when iperf3 failed).
gbps() {
  iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -J 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r: print("iperf3 -p %s: %s" % (sys.argv[1], r["error"]), file=sys.stderr); print("0 - 0")
else: s = r["end"]["sum_received"]; print("%.2f - %d" % (s["bits_per_second"] / 1e9, s["bytes"]))' "$1"
}
close_rps() { wrk_run "$1" 100 "$SECS" -c20 -H 'Connection: close'; }

for s in $SCENARIOS; do
  case $s in
    bulk) side_by_side "bulk tcp, iperf3 1 stream, ${SECS} s" Gbit/s gbps \
            direct="$B" pv-xconnect="$P_PVX" haproxy="$P_HA" nginx="$P_NGX" socat="$P_SOCAT" ;;
    close) side_by_side "new connection per request, tcp link (wrk -t1 -c20 'Connection: close', 100 B file), ${SECS} s" req/s close_rps \
            direct="$W" pv-xconnect="$W_PVX" haproxy="$W_HA" nginx="$W_NGX" ;;
    *) echo "bench-tcp: unknown scenario $s (bulk, close)" >&2; exit 2 ;;
  esac
done
