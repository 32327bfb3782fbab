#!/usr/bin/env bash
# A guided run of pv-xconnect's main job on one machine: two "provider"
# services, a graph that publishes them (a tcp port, and one http port whose
# paths go to different providers), traffic through the workers, the
# status socket, a worker killed and replaced on the same socket while a
# client keeps connecting, a live route change, and a clean stop.
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== building (release)"
cargo build --release -q

. scripts/lib/common.sh
scratch demo
WEB=$(port); API=$(port); TCP=$(port); HTTP=$(port)

# Provider "webapp": a static site. Provider "sensors": an API that shows
# what it was asked and the identity headers pv-xconnect added.
mkdir -p "$work/www"
echo "hello from the webapp container" > "$work/www/index.html"
python3 -m http.server "$WEB" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 & pids+=($!)
cat > "$work/api.py" <<'PY'
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("sensors got %s; X-PV-Client=%s X-PV-Role=%s X-Forwarded-For=%s\n" % (
            self.path, self.headers.get("X-PV-Client"), self.headers.get("X-PV-Role"),
            self.headers.get("X-Forwarded-For"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/api.py" "$API" & pids+=($!)

graph() { # $1: the sensors prefix
cat > "$work/graph.json" <<JSON
[
  {"type":"tcp","name":"web-raw","consumer":"EXTERNAL","consumer_pid":0,
   "provider":"webapp","provider_pid":0,"role":"any","interface":"http",
   "target":"127.0.0.1:$TCP","socket":"127.0.0.1:$WEB"},
  {"type":"http","name":"site","consumer":"EXTERNAL","consumer_pid":0,
   "provider":"webapp","provider_pid":0,"role":"any",
   "target":"127.0.0.1:$HTTP/","socket":"127.0.0.1:$WEB"},
  {"type":"http","name":"sensors","consumer":"EXTERNAL","consumer_pid":0,
   "provider":"sensors","provider_pid":0,"role":"reader",
   "target":"127.0.0.1:$HTTP$1","socket":"127.0.0.1:$API"},
  {"type":"dbus","name":"bus","consumer":"app","target":"x","socket":"y"}
]
JSON
}
graph /api/v1
echo "== the graph (as Pantavisor serves it at GET /xconnect-graph)"
cat "$work/graph.json"
echo "== pv-xconnect check (the dbus link is reported and skipped)"
target/release/pv-xconnect check "$work/graph.json" || true

echo "== starting pv-xconnect"
ST="$work/status.sock"
target/release/pv-xconnect run --graph "$work/graph.json" --status-socket "$ST" \
  --log-target stderr 2>"$work/pvx.log" & pids+=($!)
sup=$!
for _ in $(seq 50); do [ "$(pgrep -c -P "$sup")" -ge 2 ] && break; sleep 0.1; done
sleep 0.3
echo "== ps: one worker per endpoint"
ps -o pid,ppid,args --ppid "$sup"

echo "== curl through the tcp link 127.0.0.1:$TCP"
curl -sS "http://127.0.0.1:$TCP/"
echo "== curl through the http port 127.0.0.1:$HTTP: paths routed to two providers"
curl -sS "http://127.0.0.1:$HTTP/"
curl -sS "http://127.0.0.1:$HTTP/api/v1/temperature?unit=C" -H 'X-PV-Role: admin'
echo "   (the client's forged X-PV-Role was dropped; the prefix /api/v1 was stripped)"
curl -sS -o /dev/null -w "   /nothing-here -> %{http_code}\n" "http://127.0.0.1:$HTTP/nothing-here"

w=$(pgrep -P "$sup" -f pvx-worker-http)
echo "== kill -9 the http worker (pid $w) while a client keeps connecting"
( for _ in $(seq 40); do curl -sS -o /dev/null -w '%{http_code} ' "http://127.0.0.1:$HTTP/api/v1/x" 2>/dev/null || echo -n "LOST "; sleep 0.01; done; echo ) &
client=$!
sleep 0.1; kill -9 "$w"
wait "$client"
echo "   (a request inside the worker at the moment of SIGKILL is lost with it;"
echo "    none is refused: new connections wait in the kernel backlog for the next worker)"
sleep 0.2
echo "== the worker came back on the same socket:"
ps -o pid,ppid,args --ppid "$sup"

echo "== live change: the sensors route moves to /sensors (SIGHUP); the worker pid stays"
graph /sensors
kill -HUP "$sup"; sleep 0.5
ps -o pid,args --ppid "$sup" | grep http
curl -sS "http://127.0.0.1:$HTTP/sensors/humidity"

echo "== pv-xconnect status"
target/release/pv-xconnect status --status-socket "$ST"

echo "== SIGTERM: workers drain, everything exits 0"
kill -TERM "$sup"; wait "$sup" && echo "pv-xconnect exited with status $?"
echo "== its log (syslog on a device, stderr here)"
sed 's/^/   /' "$work/pvx.log"
