#!/usr/bin/env bash
# HTTP request rate and tail latency through one pvx-worker-http, side by
# side in one run with the backend direct, nginx proxy_pass (Debian nginx,
# one worker, upstream keep-alive) and HAProxy (one thread, connection
# reuse); all on loopback against the same backend: a separate nginx
# (one worker) serving a 600-byte static file.
#
# wrk -t1 -c50 for SECONDS per run, RUNS runs per target, interleaved;
# prints the median req/s and median p99 of each, and ratios to direct and
# to nginx.
#   scripts/bench-http.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
scripts/setup.sh --bench
cargo build --release -q

. scripts/lib/common.sh
scratch bench-http
chmod 755 "$work"  # nginx workers (www-data) read the file

B=$(port); P_PVX=$(port); P_NGX=$(port); P_HA=$(port)

mkdir -p "$work/html"
head -c 600 /dev/zero | tr '\0' 'x' > "$work/html/index.html"

# The backend: its own nginx process, so every proxy below is one more
# process in the path, as pv-xconnect is.
cat > "$work/backend.conf" <<CFG
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; root $work/html; }
}
CFG
nginx -c "$work/backend.conf" >/dev/null 2>&1 & pids+=($!)

cat > "$work/graph.json" <<JSON
[{"type":"http","name":"bench","consumer":"EXTERNAL","consumer_pid":0,"provider":"nginx","provider_pid":0,
  "role":"any","target":"127.0.0.1:$P_PVX","socket":"127.0.0.1:$B"}]
JSON
target/release/pv-xconnect run --graph "$work/graph.json" --log-target stderr --log-level warn 2>"$work/pvx.log" & pids+=($!)

cat > "$work/proxy.conf" <<CFG
worker_processes 1;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$B; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGX;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CFG
nginx -c "$work/proxy.conf" >/dev/null 2>&1 & pids+=($!)

cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:$P_HA
  default_backend b
backend b
  server s 127.0.0.1:$B
CFG
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)

for p in $B $P_PVX $P_NGX $P_HA; do
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$p/index.html" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$p/index.html" || { echo "bench: port $p not answering" >&2; cat "$work/pvx.log" >&2; exit 1; }
done

# wrk's summary -> "req/s p99_ms"
measure() {
  wrk -t1 -c50 -d"${SECS}s" --latency "http://127.0.0.1:$1/index.html" | awk '
    /Requests\/sec:/ { rps = $2 }
    /^ +99%/ { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
               ms = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
    /Non-2xx|Socket errors/ { err = err " " $0 }
    END { if (err != "") print "wrk:" err > "/dev/stderr"; printf "%.0f %.3f\n", rps, ms }'
}

names=(direct pv-xconnect nginx haproxy)
declare -A ports=([direct]=$B [pv-xconnect]=$P_PVX [nginx]=$P_NGX [haproxy]=$P_HA)
declare -A rps lat
for _ in $(seq "$RUNS"); do
  for n in "${names[@]}"; do
    read -r r l < <(measure "${ports[$n]}")
    rps[$n]="${rps[$n]:-} $r"
    lat[$n]="${lat[$n]:-} $l"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
d_r=$(echo "${rps[direct]}" | median); d_l=$(echo "${lat[direct]}" | median)
n_r=$(echo "${rps[nginx]}" | median); n_l=$(echo "${lat[nginx]}" | median)
echo "wrk -t1 -c50 -d${SECS}s, ${RUNS} runs each, medians; 600-byte file from nginx (1 worker)"
printf '%-12s %10s %9s %9s %10s %9s %9s\n' target req/s /direct /nginx p99_ms /direct /nginx
for n in "${names[@]}"; do
  r=$(echo "${rps[$n]}" | median); l=$(echo "${lat[$n]}" | median)
  printf '%-12s %10.0f %9.2f %9.2f %10.3f %9.2f %9.2f\n' "$n" "$r" \
    "$(awk -v a="$r" -v b="$d_r" 'BEGIN{print a/b}')" "$(awk -v a="$r" -v b="$n_r" 'BEGIN{print a/b}')" \
    "$l" "$(awk -v a="$l" -v b="$d_l" 'BEGIN{print a/b}')" "$(awk -v a="$l" -v b="$n_l" 'BEGIN{print a/b}')"
done
echo "runs req/s:"; for n in "${names[@]}"; do echo "  $n:${rps[$n]}"; done
