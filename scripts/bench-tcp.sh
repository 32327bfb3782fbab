#!/usr/bin/env bash
# Bulk TCP throughput through one pvx-worker-tcp, side by side with direct
# loopback, HAProxy, nginx (stream) and socat in the same run; all on
# loopback against one iperf3 server. Prints the median of RUNS runs each
# and the ratio to direct.
#   scripts/bench-tcp.sh [RUNS] [SECONDS]
#   PVX_BENCH_FLAGS="--pipe-size 262144" scripts/bench-tcp.sh   (extra supervisor flags)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SECS=${2:-3}
scripts/setup.sh --bench
cargo build --release -q

. scripts/lib/common.sh
scratch bench-tcp

B=$(port); P_PVX=$(port); P_HA=$(port); P_NGX=$(port); P_SOCAT=$(port)

iperf3 -s -p "$B" >/dev/null 2>&1 & pids+=($!)

cat > "$work/graph.json" <<JSON
[{"type":"tcp","name":"bench","consumer":"EXTERNAL","consumer_pid":0,"provider":"iperf","provider_pid":0,
  "target":"127.0.0.1:$P_PVX","socket":"127.0.0.1:$B"}]
JSON
target/release/pv-xconnect run --graph "$work/graph.json" --log-target stderr ${PVX_BENCH_FLAGS:-} 2>"$work/pvx.log" & pids+=($!)

cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$P_HA
  default_backend b
backend b
  server s 127.0.0.1:$B
CFG
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)

cat > "$work/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
stream { server { listen 127.0.0.1:$P_NGX; proxy_pass 127.0.0.1:$B; } }
CFG
nginx -c "$work/nginx.conf" >/dev/null 2>&1 & pids+=($!)

socat TCP-LISTEN:"$P_SOCAT",bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:"$B" & pids+=($!)

sleep 1
gbps() { # port -> Gbit/s received by the server
  iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
declare -A res
names=(direct pv-xconnect haproxy nginx socat)
declare -A ports=([direct]=$B [pv-xconnect]=$P_PVX [haproxy]=$P_HA [nginx]=$P_NGX [socat]=$P_SOCAT)
for r in $(seq "$RUNS"); do
  for n in "${names[@]}"; do
    res[$n]="${res[$n]:-} $(gbps "${ports[$n]}")"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
d=$(echo "${res[direct]}" | median)
printf '%-12s %10s %8s   runs (Gbit/s)\n' target median ratio
for n in "${names[@]}"; do
  m=$(echo "${res[$n]}" | median)
  printf '%-12s %10s %8.2f  %s\n' "$n" "$m" "$(awk -v a="$m" -v b="$d" 'BEGIN{print a/b}')" "${res[$n]}"
done
