#!/usr/bin/env bash
# What one request costs pvx-worker-http, counted rather than timed (so it
# repeats on a busy machine): instructions (valgrind --tool=callgrind) and
# syscalls (strace -c) per request, each the difference between a run of
# N and a run of N/5 requests (start-up, warm-up and exit cancel out).
# The worker runs alone (no supervisor, scripts/lib/http_worker.py) in
# front of nginx (one worker) serving a 100-byte file; the client sends
# its requests one after another.
#   scripts/prof-http.sh [N] [MODE...]
# MODE: close (a new connection per request, `Connection: close`; the
#   default), keep (one kept-alive connection). Also prints the per-function
#   profile of the last callgrind run (callgrind_annotate, top 25).
#   idle: no profile; the worker's RssAnon per client with N clients idle
#   on a kept-alive connection after a whole exchange, then with N more
#   freshly accepted ones that sent nothing.
# Environment: PVX_BIN (default: a release build that keeps its symbols,
#   target/prof/release/pv-xconnect, built here; the same code as the
#   stripped one, so the same counts, with function names in the profile).
#   PVX_PROF_SIZE: bytes of the file served (default 100; 1048576 counts
#   what a 1 MiB response costs: spliced body, pipes, pool probes).
#   PVX_PROF_ACCESS_LOG=stderr: the worker writes an access line per
#   request (to /dev/null: scripts/lib/http_worker.py), what a line costs.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
N=${1:-2000}
shift || true
MODES=("${@:-close}")
bench_init prof-http --symbols
chmod 755 "$work"
B=$(port)
mkdir -p "$work/html"
head -c "${PVX_PROF_SIZE:-100}" /dev/zero | tr '\0' 'x' > "$work/html/index.html"
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
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$B/index.html" && break; sleep 0.1; done

drive() { # mode n wrapper... -> runs the worker through n requests
  local mode=$1 n=$2; shift 2
  python3 scripts/lib/http_worker.py "$PVX_BIN" "$B" "$n" "$mode" "$@"
}
small=$((N / 5))
for mode in "${MODES[@]}"; do
  if [ "$mode" = idle ]; then
    drive idle "$N"
    continue
  fi
  # strace -c: calls per syscall in each run; the difference per request.
  drive "$mode" "$small" strace -c -o "$work/s1" -U name,calls
  drive "$mode" "$N" strace -c -o "$work/s2" -U name,calls
  echo "== $mode: syscalls per request (strace -c, runs of $N and $small requests)"
  awk -v d=$((N - small)) '
    FNR == NR && $2 ~ /^[0-9]+$/ { a[$1] = $2; next }
    $2 ~ /^[0-9]+$/ && $1 != "total" { b[$1] = $2 }
    END {
      for (k in b) { x = (b[k] - a[k]) / d; if (x >= 0.005) { t += x; printf "  %-16s %6.2f\n", k, x } }
      printf "  %-16s %6.2f\n", "total", t
    }' "$work/s1" "$work/s2" | sort -k2 -gr
  # callgrind: instructions (Ir) in each run; the difference per request.
  cg() { drive "$mode" "$1" valgrind --tool=callgrind --callgrind-out-file="$2" -q; }
  cg "$small" "$work/c1"
  cg "$N" "$work/c2"
  ir() { awk '/^summary:/ {print $2}' "$1"; }
  echo "== $mode: instructions per request (callgrind Ir)"
  awk -v a="$(ir "$work/c1")" -v b="$(ir "$work/c2")" -v d=$((N - small)) \
    'BEGIN { printf "  %.0f\n", (b - a) / d }'
  echo "== $mode: where they go (run of $N requests, self cost)"
  { callgrind_annotate --threshold=99 "$work/c2" 2>/dev/null || true; } | sed -n '/^Ir/,$p' | sed -n 1,30p
done
