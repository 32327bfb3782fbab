#!/usr/bin/env bash
# Chaos: the soak's traffic (well-behaved and misbehaving clients, worker
# kills, reloads) under flag values drawn at random from their documented
# ranges, with backends that go away, come back, stall, black-hole connects
# and flood 1xx heads; invariants checked every second.
#
#   scripts/chaos.sh [MINUTES]        (default 10; fractions allowed: 1.5)
#
# MINUTES are split into rounds of about 100 s (one round below 2.5 min).
# Each round draws a new flag set (hold shorter than, longer than or equal
# to 0 vs the connect timeout, pipes from a page to 1 MiB, health checks on
# and off, --max-held 1 to 1024, http and tcp timeouts, ...) and starts a
# fresh pv-xconnect with it; the flaky backends follow a drawn schedule.
# What is drawn, the graph, the probes and how each invariant is measured:
# scripts/lib/chaos.py's docstring. In short, the round fails at once when
#   idle-cpu      a worker with no client connection for 5 s uses >= 2 % CPU
#   deadline      a connection outlives the bound its flags give it
#   memory        a worker's RssAnon grows 32 MiB over its baseline
#   well-behaved  a well-behaved request fails and no kill of its worker
#                 explains it
#   held-fair     with --max-held 2 or 4 and a route flooding holds for a
#                 provider gone for good, fewer of the requests sent to
#                 another route of the same worker during an outage of its
#                 provider shorter than the hold are held and served than
#                 that route's free share (max(1, --max-held / 2), less
#                 those held already; which ones is not promised); or the
#                 request sent after that route's held clients half-closed
#                 is not held and served
# and at its end when
#   baseline      RSS (4 MiB), fds (2, checks in flight) and pipes of every
#                 process are not back at their baseline within 30 s
#   clean stop    the supervisor does not exit 0 on SIGTERM
# The seed is printed at the start and with every failure; the same seed
# draws the same flags and schedules again:
#   PVX_CHAOS_SEED=N scripts/chaos.sh MINUTES
# Loopback only (127.0.0.1), in a scratch directory (/tmp/pvx-chaos.*,
# removed at the end unless PVX_CHAOS_KEEP=1: round*/pv-xconnect.log and
# samples.csv). No network namespace is created.
#
# Environment:
#   PVX_CHAOS_SEED=N        the seed (default: random)
#   PVX_CHAOS_SKIP=a,b      leave things out, to check the rest passes while
#                           a known defect is being fixed (the final
#                           `scripts/chaos.sh 10` runs everything):
#                             hold-short  never --hold-timeout < --connect-timeout
#                             1xx         no 103 floods from the flaky backend
#                             max-held-1  never --max-held 1
#                             gone, stall, blackhole  no such backend state
#                             health      health checks always off
#                             proxy-rst   no client resets on the proxy_protocol link
#                             held-fair   no dead-route flood beside a restarting route
#                             kills, reloads
#   PVX_CHAOS_KEEP_GOING=1  run every round even after one failed (exit 1 at
#                           the end if any did)
#   PVX_CHAOS_KEEP=1        keep the scratch directory
#   PVX_CHAOS_LOG_LEVEL=L   the workers' --log-level (debug: every hold
#                           begun and ended); each log line stamped with
#                           the driver's clock, held-fair's requests and
#                           outages traced beside them
#   PVX_CHAOS_FLOOD=N       connections per soak flood burst (default 300)
#   PVX_BIN_DIR             the directory of a pv-xconnect to use instead of
#                           building release
# Exit 0 on PASS, 1 on a violated invariant, 2 on usage or setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:-10}
[[ $MINUTES =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "usage: $0 [MINUTES]" >&2; exit 2; }
SEED=${PVX_CHAOS_SEED:-$((RANDOM * 32768 + RANDOM))}
[[ $SEED =~ ^[0-9]+$ ]] || { echo "chaos: PVX_CHAOS_SEED must be a number" >&2; exit 2; }
echo "chaos: seed $SEED (rerun: PVX_CHAOS_SEED=$SEED${PVX_CHAOS_SKIP:+ PVX_CHAOS_SKIP=$PVX_CHAOS_SKIP} scripts/chaos.sh $MINUTES)"
scripts/setup.sh
. scripts/lib/common.sh
release_bin chaos
scratch chaos
run=""
# shellcheck disable=SC2329 # called by the EXIT trap
chaos_cleanup() {
	# The driver stops its supervisors and backends on TERM (by pid).
	if [[ -n $run ]]; then
		kill -TERM "$run" 2>/dev/null || true
		wait "$run" 2>/dev/null || true
	fi
	if [[ -n ${PVX_CHAOS_KEEP:-} ]]; then
		for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
		wait 2>/dev/null || true
		echo "chaos: kept $work"
	else
		cleanup
	fi
}
trap chaos_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BE_TCP=$(port); BE_H1=$(port); BE_H2=$(port)
BE_UNIX=$work/backend.sock
python3 -u scripts/lib/soak_backend.py --tcp "$BE_TCP" --unix "$BE_UNIX" \
	--http "$BE_H1" --http "$BE_H2" >"$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/backend.log" && break; sleep 0.05; done
grep -q ready "$work/backend.log" || { echo "chaos: backends did not start:" >&2; cat "$work/backend.log" >&2; exit 2; }

rc=0
python3 -u scripts/lib/chaos.py --bin "$BIN/pv-xconnect" --work "$work" --seed "$SEED" \
	--minutes "$MINUTES" --be-tcp "$BE_TCP" --be-unix "$BE_UNIX" --be-http "$BE_H1" "$BE_H2" \
	--skip "${PVX_CHAOS_SKIP:-}" --flood "${PVX_CHAOS_FLOOD:-300}" \
	${PVX_CHAOS_KEEP_GOING:+--keep-going} &
run=$!
wait "$run" || rc=$?
run=""
exit $rc
