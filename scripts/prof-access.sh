#!/usr/bin/env bash
# What an access line costs a tcp worker (issue 20, README "Access log"),
# counted rather than timed (so it repeats on a busy machine), for
# --access-log off, stderr (to a file) and syslog (a reader drains it):
# instructions (valgrind --tool=callgrind: the whole worker per
# connection, and `ended::write_down` per line: the route's count and the
# line) and syscalls (strace -c) per connection, each the difference
# between a run of N and a run of N/5 connections (start-up, warm-up and
# exit cancel out). The worker runs alone (scripts/lib/tcp_worker.py) in
# front of a loopback echo backend; each connection sends 100 bytes,
# reads them back, and both sides close.
#   scripts/prof-access.sh [N]
# Environment: PVX_BIN (default: a release build that keeps its symbols,
#   target/prof/release/pv-xconnect, built here).
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
N=${1:-2000}
bench_init prof-access --no-setup --symbols
small=$((N / 5))
export PVX_SYSLOG_PATH=$work/syslog.sock
socat -u UNIX-RECV:"$PVX_SYSLOG_PATH" /dev/null & pids+=($!)
for _ in $(seq 50); do [ -S "$PVX_SYSLOG_PATH" ] && break; sleep 0.1; done

drive() { python3 scripts/lib/tcp_worker.py "$PVX_BIN" "$@" 2>>"$work/driver.log"; }
ir() { awk '/^summary:/ {print $2}' "$1"; }
# Inclusive instructions of the function named $2 in callgrind file $1:
# the largest of its entries (one per source file its inlined code came
# from; the one of its own file includes the rest).
incl() { { callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null || true; } |
  awk -v f=":$2" 'index($0, f) { gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0 } END { print m + 0 }'; }
for mode in off stderr syslog; do
  drive "$small" "$mode" strace -f -c -o "$work/s1" -U name,calls
  drive "$N" "$mode" strace -f -c -o "$work/s2" -U name,calls
  drive "$small" "$mode" valgrind --tool=callgrind --callgrind-out-file="$work/c1" -q
  drive "$N" "$mode" valgrind --tool=callgrind --callgrind-out-file="$work/c2" -q
  d=$((N - small))
  echo "== --access-log $mode ($N and $small connections)"
  awk -v a="$(ir "$work/c1")" -v b="$(ir "$work/c2")" -v d=$d \
    'BEGIN { printf "  instructions per connection (the whole worker): %.0f\n", (b - a) / d }'
  f=runtime::conns::ended::write_down
  awk -v a="$(incl "$work/c1" $f)" -v b="$(incl "$work/c2" $f)" -v d=$d \
    'BEGIN { printf "  instructions per line (write_down: count and line): %.0f\n", (b - a) / d }'
  awk -v d=$d '
    FNR == NR && $2 ~ /^[0-9]+$/ { a[$1] = $2; next }
    $2 ~ /^[0-9]+$/ && $1 != "total" { b[$1] = $2 }
    END { for (k in b) { x = (b[k] - a[k]) / d; t += x; if (x >= 0.05) s = s sprintf(" %s %.2f", k, x) }
          printf "  syscalls per connection: %.2f (%s )\n", t, s }' "$work/s1" "$work/s2"
done
