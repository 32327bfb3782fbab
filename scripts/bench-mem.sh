#!/usr/bin/env bash
# Memory of pv-xconnect beside HAProxy and nginx, in one run, on loopback:
#   - PSS (/proc/PID/smaps_rollup) of the supervisor plus one idle worker,
#     against one HAProxy process with the same single tcp frontend;
#   - the cost of each idle client connection (PSS growth / N of the
#     process serving it: our worker, HAProxy, nginx's worker and master),
#     each scenario on processes of its own: a tcp link with one byte sent
#     (the backend holds it and never answers); an http link with
#     connections freshly accepted, no byte sent; an http link with
#     keep-alive connections idle after one request (100 B answer);
#   - an http worker with N clients that each sent one byte of a request
#     head, and its RSS once they closed (the burst given back);
#   - idle PSS by graph size: the supervisor with one tcp worker, then
#     with 10 tcp, 1 http and 1 unix endpoints (the cost of each further
#     worker, all running the one shared executable);
#   - the stripped size of the executable.
#   scripts/bench-mem.sh [N_CONNECTIONS]
#   scripts/bench-mem.sh idle        (idle PSS and size only; no HAProxy)
# Environment: PVX_BIN (the executable; default target/release/pv-xconnect,
#   built here).
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
MODE=all
[ "${1:-}" = idle ] && { MODE=idle; shift; }
N=${1:-1000}
if [ "$MODE" = idle ]; then bench_init bench-mem --no-setup; else bench_init bench-mem; fi
pss() { awk '/^Pss:/ {s+=$2} END {print s}' $(for p in "$@"; do echo /proc/$p/smaps_rollup; done); }
# Anonymous memory (heap, stacks, anonymous maps): what connections
# allocate. Not PSS: an idle worker drops its code and a new connection
# maps some back, file pages shared with every worker, not its cost.
anon() { awk '/^Anonymous:/ {s+=$2} END {print s}' $(for p in "$@"; do echo /proc/$p/smaps_rollup; done); }
B=$(port); P_HTTP=$(port)

# Idle PSS of a supervisor on graph $1 once $2 workers run: sets
# idle_sup (the supervisor's) and idle_workers (all workers' together).
idle_pss() {
  "$PVX_BIN" run --graph "$1" --status-socket "$work/idle.sock" --log-target stderr 2>>"$work/idle.log" &
  local s=$! t0=$SECONDS ws
  pids+=("$s")
  until [ "$(pgrep -c -P "$s" || true)" -ge "$2" ] || [ $((SECONDS - t0)) -ge 20 ]; do sleep 0.2; done
  # Start-up settles: workers drop their code after init and again 25 ms
  # after each quiet wake-up (health checks, every 5 s by default); the
  # drop right after init does not hold (the worker's RSS stays at its
  # start-up size until the first health tick's drop: not explained yet,
  # see README "Measured"), so measure past one tick.
  sleep 7
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

# Backends: one that accepts and holds connections without answering (tcp),
# and nginx serving files (http).
python3 - "$B" <<'PY' & pids+=($!)
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
held = []
while True:
    c, _ = s.accept(); held.append(c)
PY
bench_files
W=$(port); nginx_backend web "$W"

# Each scenario on processes of its own (an allocator's pools grown by one
# scenario would hide the next one's cost).
P_T=$(port) P_HF=$(port) P_HK=$(port)
pvx_start pvx "$(pvx_link tcp mem "$P_T" "$B")" "$(pvx_link http memf "$P_HF" "$W")" \
  "$(pvx_link http memk "$P_HK" "$W")" "$(pvx_link http memh "$P_HTTP" "$B")"
sup=$pvx_pid
declare -A port_of pids_of
for s in tcp fresh keepalive; do
  for peer in haproxy nginx; do port_of[$s.$peer]=$(port); done
done
haproxy_proxy ha-tcp tcp "${port_of[tcp.haproxy]}" "$B"; pids_of[tcp.haproxy]=$peer_pid
haproxy_proxy ha-fresh http "${port_of[fresh.haproxy]}" "$W"; pids_of[fresh.haproxy]=$peer_pid
haproxy_proxy ha-ka http "${port_of[keepalive.haproxy]}" "$W"; pids_of[keepalive.haproxy]=$peer_pid
nginx_proxy ngx-tcp stream "${port_of[tcp.nginx]}" "$B"; pids_of[tcp.nginx]=$peer_pid
nginx_proxy ngx-fresh http "${port_of[fresh.nginx]}" "$W"; pids_of[fresh.nginx]=$peer_pid
nginx_proxy ngx-ka http "${port_of[keepalive.nginx]}" "$W"; pids_of[keepalive.nginx]=$peer_pid
port_of[tcp.pv-xconnect]=$P_T; port_of[fresh.pv-xconnect]=$P_HF; port_of[keepalive.pv-xconnect]=$P_HK
for p in $P_T $P_HF $P_HK $P_HTTP; do pids_of[$p]=$(pvx_worker "$p"); done
pids_of[tcp.pv-xconnect]=${pids_of[$P_T]}; pids_of[fresh.pv-xconnect]=${pids_of[$P_HF]}
pids_of[keepalive.pv-xconnect]=${pids_of[$P_HK]}; hworker=${pids_of[$P_HTTP]}
for p in $W "${port_of[fresh.haproxy]}" "${port_of[fresh.nginx]}"; do wait_http "$p" 100; done
sleep 1
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; } # pid field -> KiB
# nginx: the master and its worker.
with_children() { for p in "$@"; do echo "$p"; pgrep -P "$p" || true; done | tr '\n' ' '; }

# Opens N connections to PORT and holds them until killed; MODE: none (no
# byte), byte (one byte of a request), get (one keep-alive GET /100, its
# answer read whole). Prints its pid once every connection is in that state.
hold() { # port n mode
  rm -f "$work/ready.$1"
  python3 - "$1" "$2" "$3" "$work/ready.$1" >/dev/null <<'PY' &
import socket, sys, time
port, n, mode, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for c in conns:
    if mode == "byte":
        c.send(b"x")
    elif mode == "get":
        c.sendall(b"GET /100 HTTP/1.1\r\nHost: bench\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 100:
            more = c.recv(4096)
            if not more:
                sys.exit("connection closed before the answer")
            got += more
open(ready, "w").close()
time.sleep(3600)
PY
  local h=$! t0=$SECONDS
  until [ -e "$work/ready.$1" ] || [ $((SECONDS - t0)) -ge 120 ]; do sleep 0.2; done
  sleep 1 # the proxy's side settles
  echo "$h"
}
# PSS growth of PIDS per connection (bytes) when N clients hold PORT in MODE.
per_conn() { # port mode pid...
  local port=$1 mode=$2 before after h; shift 2
  # A few connections first, so that what the first connection ever
  # brings in (code faulted back after start-up's drop, pools) is not
  # counted as per-connection cost.
  h=$(N=10 hold "$port" 10 "$mode"); kill "$h"; sleep 1
  before=$(anon "$@")
  h=$(hold "$port" "$N" "$mode"); pids+=("$h")
  after=$(anon "$@")
  kill "$h"
  awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN{printf "%.0f", (a-b)*1024/n}'
}

pvx_idle=$(( $(pss "$sup") + $(pss "${pids_of[tcp.pv-xconnect]}") ))
ha_idle=$(pss "${pids_of[tcp.haproxy]}")
echo "idle PSS: pv-xconnect supervisor+tcp worker $pvx_idle KiB (4 links in this graph: supervisor $(pss "$sup")), haproxy $ha_idle KiB (one tcp frontend)"
echo "per idle client connection (growth of anonymous memory / $N connections, bytes):"
printf '  %-44s %12s %9s %9s\n' scenario pv-xconnect haproxy nginx
for s in tcp fresh keepalive; do
  case $s in
    tcp) label="tcp link, one byte sent (backend holds)"; mode=byte ;;
    fresh) label="http link, accepted, no byte sent"; mode=none ;;
    keepalive) label="http link, keep-alive, idle after one request"; mode=get ;;
  esac
  row=()
  for peer in pv-xconnect haproxy nginx; do
    # shellcheck disable=SC2046 # one pid a word
    row+=("$(per_conn "${port_of[$s.$peer]}" "$mode" $(with_children "${pids_of[$s.$peer]}"))")
  done
  printf '  %-44s %12s %9s %9s\n' "$label" "${row[@]}"
done

# http: N clients that each sent one byte of a head, then closed.
h_rest=$(kib "$hworker" VmRSS); h_rest_anon=$(kib "$hworker" RssAnon)
h3=$(hold "$P_HTTP" "$N" byte); pids+=($h3)
h_busy=$(kib "$hworker" VmRSS); h_busy_anon=$(kib "$hworker" RssAnon)
kill "$h3"; t0=$SECONDS
until [ "$(kib "$hworker" VmRSS)" -le $((h_rest + 2048)) ] || [ $((SECONDS - t0)) -ge 30 ]; do sleep 0.5; done
sleep 3 # the give-back after the burst settles
h_after=$(kib "$hworker" VmRSS); h_after_anon=$(kib "$hworker" RssAnon)
echo "http worker RSS: resting $h_rest KiB, with $N one-byte clients $h_busy KiB, after they closed $h_after KiB (back within 2 MiB in $((SECONDS - t0 - 3)) s)"
# RSS counts the code the burst faulted back in (shared with the other
# workers, file pages); the anonymous part is what the burst allocated.
echo "http worker RssAnon: resting $h_rest_anon KiB, with $N one-byte clients $h_busy_anon KiB, after they closed $h_after_anon KiB"
awk -v b="$h_busy_anon" -v r="$h_rest_anon" -v n="$N" 'BEGIN{printf "per idle http client: %.0f bytes of heap\n", (b-r)*1024/n}'
