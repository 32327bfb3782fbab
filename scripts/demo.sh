#!/usr/bin/env bash
# A guided run of pv-xconnect's main job on one machine: a "provider" web
# service, a graph that publishes it, traffic through the worker, a worker
# killed and replaced on the same socket, and a clean stop. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== building (release)"
cargo build --release -q

work=$(mktemp -d /tmp/pvx-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(port); TCP=$(port)

mkdir -p "$work/www"
echo "hello from the provider container" > "$work/www/index.html"
python3 -m http.server "$BACKEND" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 & pids+=($!)

cat > "$work/graph.json" <<JSON
[
  {"type":"tcp","name":"web","consumer":"EXTERNAL","consumer_pid":0,
   "provider":"webapp","provider_pid":0,"role":"any","interface":"http",
   "target":"127.0.0.1:$TCP","socket":"127.0.0.1:$BACKEND"},
  {"type":"dbus","name":"bus","consumer":"app","target":"x","socket":"y"}
]
JSON
echo "== the graph (as Pantavisor serves it at /xconnect-graph)"
cat "$work/graph.json"
echo "== pv-xconnect check (the dbus link is reported and skipped)"
target/release/pv-xconnect check "$work/graph.json" || true

echo "== starting pv-xconnect"
target/release/pv-xconnect run --graph "$work/graph.json" --log-target stderr 2>"$work/pvx.log" & pids+=($!)
sup=$!
for _ in $(seq 50); do pgrep -P "$sup" >/dev/null && break; sleep 0.1; done
sleep 0.3
echo "== ps: one worker per endpoint"
ps -o pid,ppid,args --ppid "$sup"

echo "== curl through the tcp link 127.0.0.1:$TCP"
curl -sS "http://127.0.0.1:$TCP/"

w=$(pgrep -P "$sup" -f pvx-worker-tcp)
echo "== kill -9 the worker (pid $w) while a client keeps connecting"
( for i in $(seq 40); do curl -sS -o /dev/null -w '%{http_code} ' "http://127.0.0.1:$TCP/" || echo -n "FAIL "; sleep 0.01; done; echo ) &
client=$!
sleep 0.1; kill -9 "$w"
wait "$client"
sleep 0.2
echo "== the worker came back on the same socket:"
ps -o pid,ppid,args --ppid "$sup"

echo "== SIGTERM: workers drain, everything exits 0"
kill -TERM "$sup"; wait "$sup" && echo "pv-xconnect exited with status $?"
echo "== its log (syslog on a device, stderr here)"
sed 's/^/   /' "$work/pvx.log"
