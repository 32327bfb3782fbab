#!/usr/bin/env bash
# Syscalls per short tcp connection: wrk (`Connection: close`, a ~100-byte
# request) through a tcp link to an nginx answering a 100-byte body, with
# `strace -c -f` on the pv-xconnect tcp worker, and on HAProxy (one thread)
# under the same load for comparison. Counts, not timings: strace slows the
# process it traces, which changes nothing in what each connection costs.
# Connections = `connect` calls (one backend connect per client).
#   scripts/syscalls-tcp.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
scripts/setup.sh --bench
command -v strace >/dev/null || { echo "needs strace" >&2; exit 1; }
cargo build --release -q

. scripts/lib/common.sh
scratch syscalls-tcp

B=$(port); P_PVX=$(port); P_HA=$(port)
body=$(head -c 100 /dev/zero | tr '\0' 'x')

cat > "$work/backend.conf" <<CFG
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$B; location / { return 200 "$body"; } }
}
CFG
nginx -c "$work/backend.conf" >/dev/null 2>&1 & pids+=($!)

cat > "$work/graph.json" <<JSON
[{"type":"tcp","name":"strace","consumer":"EXTERNAL","consumer_pid":0,"provider":"nginx","provider_pid":0,
  "target":"127.0.0.1:$P_PVX","socket":"127.0.0.1:$B"}]
JSON
target/release/pv-xconnect run --graph "$work/graph.json" --log-target stderr \
  --status-socket "$work/status.sock" ${PVX_BENCH_FLAGS:-} 2>"$work/pvx.log" & pvx=$!
pids+=($pvx)

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
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & ha=$!
pids+=($ha)

worker=""
for _ in $(seq 50); do
  worker=$(pgrep -P "$pvx" -x pvx-worker-tcp || true)
  [ -n "$worker" ] && break
  sleep 0.1
done
[ -n "$worker" ] || { echo "no tcp worker" >&2; cat "$work/pvx.log" >&2; exit 1; }
sleep 0.5

# strace -c's table -> "name calls" lines, then per-connection figures.
count() { # name pid port
  local out="$work/$1.strace"
  wrk -t1 -c20 -d"$((SECS + 2))s" -H "Connection: close" "http://127.0.0.1:$3/" >"$work/$1.wrk" 2>&1 &
  local w=$!
  sleep 1
  timeout -s INT "$SECS" strace -c -f -p "$2" -o "$out" >/dev/null 2>&1 || true
  wait "$w" || true
  awk -v who="$1" '
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { name = $NF; calls[name] = $4; total += $4 }
    END {
      conns = calls["connect"]
      if (conns == 0) { print who ": no connections seen"; exit 1 }
      printf "%s: %d connections, %.1f syscalls per connection\n", who, conns, total / conns
      for (n in calls) printf "  %-14s %6.2f\n", n, calls[n] / conns | "sort -k2 -gr"
    }' "$out"
}
count pv-xconnect "$worker" "$P_PVX"
echo
count haproxy "$ha" "$P_HA"
