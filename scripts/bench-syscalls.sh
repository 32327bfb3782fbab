#!/usr/bin/env bash
# Syscalls per short tcp connection through a tcp link, beside HAProxy
# (mode tcp, one thread): N connections (CONC at a time), each a 100-byte
# request and a 100-byte answer with `Connection: close`
# (scripts/lib/short_conns.py, client and backend), counted with
# `strace -c -f` attached to the process that relays them (our tcp worker,
# HAProxy). Prints syscalls per connection, in total and per syscall,
# then the TCP segments per connection (direct, through each): everything
# runs in a network namespace of its own (`unshare -n`), so the kernel's
# counters (/proc/net/snmp Tcp OutSegs) count this traffic and nothing
# else; loopback counts both ends of every connection.
#   scripts/bench-syscalls.sh [N] [CONC]        (default 3000 connections, 20 at a time)
#   PVX_BIN=path/to/pv-xconnect (default: target/release, built here)
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
N=${1:-3000}
CONC=${2:-20}
# The counts come from a network namespace of its own (`unshare -n`), so
# only this script's traffic moves the kernel's TCP counters; setup and the
# build run outside it, where the package mirrors are reachable.
if [ -z "${PVX_SYSCALLS_NETNS:-}" ]; then
  self=$(realpath "$0")
  cd "$(dirname "$self")/.."
  scripts/setup.sh --bench
  if [ -z "${PVX_BIN:-}" ]; then
    cargo build --release -q
    PVX_BIN=target/release/pv-xconnect
  fi
  PVX_SYSCALLS_NETNS=1 PVX_BIN=$PVX_BIN exec unshare -n "$self" "$@"
fi
ip link set lo up
bench_init bench-syscalls --no-setup

B=$(port); P_PVX=$(port); P_HA=$(port)
python3 scripts/lib/short_conns.py backend "$B" & pids+=($!)
pvx_start pvx "$(pvx_link tcp short "$P_PVX" "$B")"
haproxy_proxy ha tcp "$P_HA" "$B"
sleep 1
declare -A target_pid=([pv-xconnect]=$(pvx_worker "$P_PVX") [haproxy]=$peer_pid)
names=(pv-xconnect haproxy)

count() { # name port -> $work/NAME.strace
  python3 scripts/lib/short_conns.py client "$2" 50 5 # warm: first-use costs aside
  strace -c -f -q -o "$work/$1.strace" -p "${target_pid[$1]}" & local st=$!
  sleep 1 # attached
  python3 scripts/lib/short_conns.py client "$2" "$N" "$CONC"
  sleep 0.5 # the last closes
  kill -INT "$st"; wait "$st" || true
}
count pv-xconnect "$P_PVX"
count haproxy "$P_HA"

# strace -c's table -> "syscall calls" lines, and "total calls".
# Columns: % time, seconds, usecs/call, calls, [errors], syscall.
calls() { awk '$1 ~ /^[0-9.]+$/ && NF >= 5 { print $NF, $4 }' "$work/$1.strace"; }
echo "syscalls per connection: strace -c -f, $N connections ($CONC at a time), 100 B request, 100 B answer, Connection: close"
{
  for n in "${names[@]}"; do calls "$n" | sed "s/^/$n /"; done
} | awk -v n="$N" -v names="${names[*]}" '
  { c[$2, $1] = $3; if (!($2 in seen)) { seen[$2] = 1; order[++k] = $2 } }
  END {
    m = split(names, who, " ")
    printf "%-16s", "syscall"; for (i = 1; i <= m; i++) printf " %12s", who[i]; printf "\n"
    printf "%-16s", "total"; for (i = 1; i <= m; i++) printf " %12.1f", c["total", who[i]] / n; printf "\n"
    for (j = 1; j <= k; j++) {
      s = order[j]; if (s == "total") continue
      keep = 0; for (i = 1; i <= m; i++) if (c[s, who[i]] / n >= 0.05) keep = 1
      if (!keep) continue
      printf "%-16s", s; for (i = 1; i <= m; i++) printf " %12.2f", c[s, who[i]] / n; printf "\n"
    }
  }'

# TCP segments per connection, without strace (it would change when each
# side runs, and so which segments can be merged).
outsegs() { awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") c = i; h = 1 } else print $c }' /proc/net/snmp; }
segs() { # port -> segments per connection
  local a b
  a=$(outsegs)
  python3 scripts/lib/short_conns.py client "$1" "$N" "$CONC"
  sleep 0.5 # the last closes
  b=$(outsegs)
  awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }'
}
echo "TCP segments per connection (all hosts on loopback), $N connections ($CONC at a time), same exchange"
printf "%-16s %12s" "" direct; for n in "${names[@]}"; do printf " %12s" "$n"; done; printf "\n"
printf "%-16s %12s %12s %12s\n" segments "$(segs "$B")" "$(segs "$P_PVX")" "$(segs "$P_HA")"
