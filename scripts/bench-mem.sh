#!/usr/bin/env bash
# Memory of pv-xconnect beside HAProxy, in one run, on loopback:
#   - PSS (/proc/PID/smaps_rollup) of the supervisor plus one idle worker,
#     against one HAProxy process with the same single tcp frontend;
#   - the cost of each idle proxied connection (PSS growth / N);
#   - an http worker with N clients that each sent one byte of a request
#     head, and its RSS once they closed (the burst given back); then N
#     clients idle on a kept-alive connection after a whole exchange;
#   - idle PSS by graph size: the supervisor with one tcp worker, then
#     with 10 tcp, 1 http and 1 unix endpoints (the cost of each further
#     worker, all running the one shared executable);
#   - the stripped size of the executable.
#   scripts/bench-mem.sh [N_CONNECTIONS]
#   scripts/bench-mem.sh idle        (idle PSS and size only; no HAProxy)
# Environment: PVX_BIN (the executable; default target/release/pv-xconnect,
#   built here).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=all
[ "${1:-}" = idle ] && { MODE=idle; shift; }
N=${1:-1000}
[ "$MODE" = idle ] || scripts/setup.sh --bench
if [ -z "${PVX_BIN:-}" ]; then
  cargo build --release -q
  PVX_BIN=target/release/pv-xconnect
fi
ulimit -n "$(ulimit -Hn)"

. scripts/lib/common.sh
scratch bench-mem
pss() { awk '/^Pss:/ {s+=$2} END {print s}' $(for p in "$@"; do echo /proc/$p/smaps_rollup; done); }
B=$(port); P_PVX=$(port); P_HA=$(port); P_HTTP=$(port); B_HTTP=$(port)

# Idle PSS of a supervisor on graph $1 once $2 workers run: sets
# idle_sup (the supervisor's) and idle_workers (all workers' together).
idle_pss() {
  "$PVX_BIN" run --graph "$1" --status-socket "$work/idle.sock" --log-target stderr 2>>"$work/idle.log" &
  local s=$! t0=$SECONDS ws
  pids+=("$s")
  until [ "$(pgrep -c -P "$s" || true)" -ge "$2" ] || [ $((SECONDS - t0)) -ge 20 ]; do sleep 0.2; done
  sleep 3 # start-up settles (workers trim their code after init)
  ws=$(pgrep -P "$s" | tr '\n' ' ')
  idle_sup=$(pss "$s")
  # shellcheck disable=SC2086 # one pid a word
  idle_workers=$(pss $ws)
  kill "$s"; wait "$s" 2>/dev/null || true
}
tcp_link() { # name port
  printf '{"type":"tcp","name":"%s","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,"target":"127.0.0.1:%s","socket":"127.0.0.1:%s"}' "$1" "$2" "$B"
}
echo "[$(tcp_link t0 "$(port)")]" > "$work/one.json"
{
  echo "["
  for i in $(seq 1 10); do echo "$(tcp_link "t$i" "$(port)"),"; done
  echo '{"type":"http","name":"h","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,"target":"127.0.0.1:'"$(port)"'","socket":"127.0.0.1:'"$B"'"},'
  echo '{"type":"unix","name":"u","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,"target":"'"$work"'/u.sock","socket":"'"$work"'/b.sock"}'
  echo "]"
} > "$work/twelve.json"
idle_pss "$work/one.json" 1; s1=$idle_sup w1=$idle_workers
idle_pss "$work/twelve.json" 12; s12=$idle_sup w12=$idle_workers
echo "idle PSS, supervisor + 1 tcp worker: $((s1 + w1)) KiB (supervisor $s1, worker $w1)"
echo "idle PSS, supervisor + 10 tcp + 1 http + 1 unix workers: $((s12 + w12)) KiB (supervisor $s12, workers $w12)"
awk -v a="$((s1 + w1))" -v b="$((s12 + w12))" 'BEGIN{printf "idle PSS per further worker: %.0f KiB\n", (b-a)/11}'
sz=$(stat -c %s "$PVX_BIN")
printf 'stripped executable: %d bytes (%.2f MiB)\n' "$sz" "$(awk -v t="$sz" 'BEGIN{print t/1048576}')"
[ "$MODE" = idle ] && exit 0

# A backend that accepts and holds connections without answering.
python3 - "$B" <<'PY' & pids+=($!)
import socket, sys, selectors
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
held = []
while True:
    c, _ = s.accept(); held.append(c)
PY

# An http backend that answers every request with 2 bytes, keep-alive.
python3 - "$B_HTTP" <<'PY' & pids+=($!)
import socket, sys, selectors
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096); s.setblocking(False)
sel.register(s, selectors.EVENT_READ)
bufs = {}
while True:
    for k, _ in sel.select():
        if k.fileobj is s:
            c, _ = s.accept(); c.setblocking(False); bufs[c] = b""
            sel.register(c, selectors.EVENT_READ); continue
        c = k.fileobj
        try: d = c.recv(65536)
        except BlockingIOError: continue
        if not d:
            sel.unregister(c); c.close(); bufs.pop(c, None); continue
        bufs[c] += d
        while b"\r\n\r\n" in bufs[c]:
            _, bufs[c] = bufs[c].split(b"\r\n\r\n", 1)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
PY

cat > "$work/graph.json" <<JSON
[{"type":"tcp","name":"mem","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,
  "target":"127.0.0.1:$P_PVX","socket":"127.0.0.1:$B"},
 {"type":"http","name":"memh","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,
  "target":"127.0.0.1:$P_HTTP","socket":"127.0.0.1:$B_HTTP"}]
JSON
"$PVX_BIN" run --graph "$work/graph.json" --log-target stderr 2>"$work/pvx.log" & sup=$!; pids+=($sup)
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 600s
  timeout server 600s
frontend f
  bind 127.0.0.1:$P_HA
  default_backend b
backend b
  server s 127.0.0.1:$B
CFG
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & ha=$!; pids+=($ha)
sleep 1
worker=$(pgrep -P "$sup" -f pvx-worker-tcp)
hworker=$(pgrep -P "$sup" -f pvx-worker-http)
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; } # pid field -> KiB

hold() { # port n -> opens n connections, holds them until stdin closes
  python3 - "$1" "$2" >/dev/null <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for c in conns: c.send(b"x")   # one byte each way of life: a real, then idle, connection
time.sleep(3600)
PY
  echo $!
}

pvx_idle=$(( $(pss "$sup") + $(pss "$worker") ))
ha_idle=$(pss "$ha")
h1=$(hold "$P_PVX" "$N"); pids+=($h1); sleep 2
pvx_busy=$(pss "$worker")
h2=$(hold "$P_HA" "$N"); pids+=($h2); sleep 2
ha_busy=$(pss "$ha")

echo "idle PSS: pv-xconnect supervisor+worker $((pvx_idle)) KiB (supervisor $(pss "$sup"), worker $(pss "$worker") with $N conns)"
echo "idle PSS: haproxy $ha_idle KiB"
awk -v a="$pvx_idle" -v b="$ha_idle" 'BEGIN{printf "ratio pv-xconnect/haproxy idle PSS: %.2f\n", a/b}'
awk -v w="$pvx_busy" -v i="$pvx_idle" -v s="$(pss "$sup")" -v n="$N" 'BEGIN{printf "per idle connection: pv-xconnect %.0f bytes\n", (w-(i-s))*1024/n}'
awk -v w="$ha_busy" -v i="$ha_idle" -v n="$N" 'BEGIN{printf "per idle connection: haproxy %.0f bytes\n", (w-i)*1024/n}'
# http: N clients that each sent one byte of a head, then closed.
h_rest=$(kib "$hworker" VmRSS); h_rest_anon=$(kib "$hworker" RssAnon)
h3=$(hold "$P_HTTP" "$N"); pids+=($h3); sleep 2
h_busy=$(kib "$hworker" VmRSS); h_busy_anon=$(kib "$hworker" RssAnon)
kill "$h3"; t0=$SECONDS
until [ "$(kib "$hworker" VmRSS)" -le $((h_rest + 2048)) ] || [ $((SECONDS - t0)) -ge 30 ]; do sleep 0.5; done
sleep 3 # the give-back after the burst settles
h_after=$(kib "$hworker" VmRSS)
echo "http worker RSS: resting $h_rest KiB, with $N one-byte clients $h_busy KiB, after they closed $h_after KiB (back within 2 MiB in $((SECONDS - t0 - 3)) s)"
awk -v b="$h_busy_anon" -v r="$h_rest_anon" -v n="$N" 'BEGIN{printf "per idle http client: %.0f bytes of heap\n", (b-r)*1024/n}'
# http: N clients that each made one whole request and stay idle on their
# kept-alive connection.
hold_kept() { # port n
  python3 - "$1" "$2" >/dev/null <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"):
        got += c.recv(4096)
    conns.append(c)
time.sleep(3600)
PY
  echo $!
}
h_rest_anon=$(kib "$hworker" RssAnon)
h4=$(hold_kept "$P_HTTP" "$N"); pids+=($h4)
t0=$SECONDS
until [ "$(ss -Htn state established "( sport = :$P_HTTP )" | wc -l)" -ge "$N" ] || [ $((SECONDS - t0)) -ge 60 ]; do sleep 0.5; done
sleep 2
h_kept_anon=$(kib "$hworker" RssAnon)
awk -v b="$h_kept_anon" -v r="$h_rest_anon" -v n="$N" 'BEGIN{printf "per idle keep-alive http client (after a whole exchange): %.0f bytes of heap\n", (b-r)*1024/n}'
kill "$h4"
