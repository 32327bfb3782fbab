#!/usr/bin/env bash
# kill -9 random pv-xconnect workers N times while a bounded client load
# runs through every endpoint; report refused and lost connections, the
# time from each kill to the new worker accepting (median, max) and the
# restart count seen in `pv-xconnect status`. Exit 1 if any connection was
# refused or lost (or a restart was not seen).
#
#   scripts/kill-workers.sh [N]        (N defaults to 10)
#
# Against the supervisor answering on PVX_STATUS_SOCKET (default
# /run/pv-xconnect/status.sock) if there is one; otherwise it starts one on
# the lab graph (scripts/lab.sh; brought up here, and down again at the
# end, if it is not up) and stops it at the end.
#
# The load expects what lab.sh provides: echo backends behind tcp and unix
# links, an HTTP server behind http links.
#
# Environment: PVX_STATUS_SOCKET, PVX_LAB_NAME / PVX_LAB_STATE (as lab.sh),
#   PVX_BIN_DIR (the directory of pv-xconnect; default target/release,
#   else target/debug),
#   PVX_KILL_INTERVAL (seconds between kills, default 0.3),
#   PVX_KILL_CLIENTS (client threads per endpoint, default 2),
#   PVX_KILL_SUPERVISOR_FLAGS (flags for a supervisor started here,
#   default --reset-window 0s: every kill is a first crash).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-10}
[[ $N =~ ^[0-9]+$ ]] || { echo "usage: $0 [N]" >&2; exit 2; }
SOCK=${PVX_STATUS_SOCKET:-/run/pv-xconnect/status.sock}
NAME=${PVX_LAB_NAME:-pvxlab}
STATE=${PVX_LAB_STATE:-/run/pvx-lab/$NAME}
export PVX_LAB_NAME=$NAME PVX_LAB_STATE=$STATE
if [[ -n ${PVX_BIN_DIR:-} ]]; then
	BIN=$PVX_BIN_DIR
elif [[ -x target/release/pv-xconnect ]]; then
	BIN=target/release
else
	BIN=target/debug
fi
[[ -x $BIN/pv-xconnect ]] || { echo "kill-workers: no $BIN/pv-xconnect; cargo build first (or PVX_BIN_DIR)" >&2; exit 2; }

work=$(mktemp -d /tmp/pvx-kill.XXXXXX)
sup=""
lab_ours=""
# shellcheck disable=SC2329 # called by the EXIT trap
cleanup() {
	if [[ -n $sup ]]; then
		kill -TERM "$sup" 2>/dev/null || true
		wait "$sup" 2>/dev/null || true
	fi
	[[ -z $lab_ours ]] || scripts/lab.sh down >/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

if "$BIN/pv-xconnect" status --json --status-socket "$SOCK" >/dev/null 2>&1; then
	echo "kill-workers: using the supervisor on $SOCK"
else
	if [[ ! -f $STATE/graph.json ]]; then
		scripts/lab.sh up >/dev/null
		lab_ours=1
	fi
	SOCK=$work/status.sock
	# Each kill counts as a first crash (--reset-window 0s), so the latency
	# is one recovery: --retry-delay (20 ms) + exec + init. With the default
	# policy, repeated kills of one endpoint back off towards 30 s, which
	# is right for a crash loop on a device but is not what this measures.
	# shellcheck disable=SC2086 # word splitting of the flags is wanted
	"$BIN/pv-xconnect" run --graph "$STATE/graph.json" --status-socket "$SOCK" \
		--log-target stderr ${PVX_KILL_SUPERVISOR_FLAGS---reset-window 0s} 2>"$work/pv-xconnect.log" &
	sup=$!
	echo "kill-workers: started pv-xconnect pid $sup on $STATE/graph.json ${PVX_KILL_SUPERVISOR_FLAGS---reset-window 0s} (log: $work/pv-xconnect.log)"
	for _ in $(seq 100); do
		"$BIN/pv-xconnect" status --json --status-socket "$SOCK" >/dev/null 2>&1 && break
		kill -0 "$sup" 2>/dev/null || { cat "$work/pv-xconnect.log" >&2; exit 1; }
		sleep 0.05
	done
	sleep 0.3 # let every worker start (or fail to)
fi

rc=0
python3 scripts/lib/kill_load.py --status-socket "$SOCK" --kills "$N" \
	--interval "${PVX_KILL_INTERVAL:-0.3}" --clients "${PVX_KILL_CLIENTS:-2}" || rc=$?
echo
"$BIN/pv-xconnect" status --status-socket "$SOCK" || true
if [[ $rc != 0 && -n $sup ]]; then
	echo "--- supervisor log (last 40 lines) ---"
	tail -n 40 "$work/pv-xconnect.log"
fi
exit $rc
