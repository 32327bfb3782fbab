#!/usr/bin/env bash
# Soak: MINUTES of mixed and misbehaving traffic through pv-xconnect while
# workers are killed and the graph reloaded; then checks that every
# well-behaved request succeeded and that RSS and fds came back.
#
#   scripts/soak.sh [MINUTES]        (default 10; fractions allowed: 0.5)
#
# Loopback only, in a scratch directory (/tmp/pvx-soak.*, removed at the
# end unless PVX_SOAK_KEEP=1). It starts:
#   backends    scripts/lib/soak_backend.py: tcp echo, unix echo, two HTTP/1.1
#               servers (keep-alive, chunked uploads, WebSocket echo)
#   supervisor  pv-xconnect run --graph GRAPH --reset-window 0s (every kill is
#               a first crash, restarted after --retry-delay: repeated kills
#               of one endpoint would otherwise back off towards 30 s)
#   graph A     tcp link 127.0.0.1:T -> tcp echo; http endpoint 127.0.0.1:H
#               with routes /a -> http backend 1 and /b -> http backend 2;
#               unix link SCRATCH/link.sock -> unix echo
#   graph B     A plus route /c and a second tcp endpoint (switched to and
#               back by the reloads)
# then scripts/lib/soak_load.py does the traffic, kills, reloads, samples
# (SCRATCH/samples.csv: t_s,role,pid,rss_kb,fds,pipes each second), the
# checks and the summary. What passes and how failures inside a killed
# worker are counted apart: see that file's docstring.
#
# Environment: PVX_BIN_DIR (the directory of a pv-xconnect to use instead
#   of building release),
#   PVX_SOAK_SETTLE (seconds allowed to return to baseline, default 45),
#   PVX_SOAK_SEED (random seed), PVX_SOAK_KEEP=1 (keep the scratch dir),
#   PVX_SOAK_FLOOD (connections per burst, default 300; 0: no bursts).
# Exit 0 on PASS, 1 on FAIL, 2 on usage or setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:-10}
[[ $MINUTES =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "usage: $0 [MINUTES]" >&2; exit 2; }
scripts/setup.sh
. scripts/lib/common.sh
release_bin soak
scratch soak
# Not in pids: once reaped below, their pids must not be signalled again.
sup=""
load=""
if [[ -n ${PVX_SOAK_KEEP:-} ]]; then
	# shellcheck disable=SC2329 # called by the EXIT trap
	cleanup() {
		for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
		wait 2>/dev/null || true
		echo "soak: kept $work"
	}
fi
# shellcheck disable=SC2329 # called by the EXIT trap
soak_cleanup() {
	[[ -z $load ]] || kill -TERM "$load" 2>/dev/null || true
	[[ -z $sup ]] || kill -TERM "$sup" 2>/dev/null || true
	cleanup
}
trap soak_cleanup EXIT
# A signal ends the run through the EXIT trap at once (the load runs in the
# background so that `wait` is interrupted rather than the signal deferred).
trap 'exit 130' INT
trap 'exit 143' TERM
BE_TCP=$(port); BE_H1=$(port); BE_H2=$(port); TCP=$(port); TCP2=$(port); HTTP=$(port)
BE_UNIX=$work/backend.sock
LINK=$work/link.sock

python3 -u scripts/lib/soak_backend.py --tcp "$BE_TCP" --unix "$BE_UNIX" \
	--http "$BE_H1" --http "$BE_H2" >"$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/backend.log" && break; sleep 0.05; done
grep -q ready "$work/backend.log" || { echo "soak: backends did not start:" >&2; cat "$work/backend.log" >&2; exit 2; }

link() { # TYPE NAME TARGET SOCKET
	printf ' {"type":"%s","name":"%s","consumer":"EXTERNAL","consumer_pid":0,"provider":"soak","provider_pid":0,"role":"any","target":"%s","socket":"%s"}' "$@"
}
{
	echo "["
	link tcp echo "127.0.0.1:$TCP" "127.0.0.1:$BE_TCP"; echo ","
	link http web-a "127.0.0.1:$HTTP/a" "127.0.0.1:$BE_H1"; echo ","
	link http web-b "127.0.0.1:$HTTP/b" "127.0.0.1:$BE_H2"; echo ","
	link unix sock "$LINK" "$BE_UNIX"; echo
	echo "]"
} >"$work/graph-a.json"
{
	head -n -1 "$work/graph-a.json" | sed '$ s/$/,/'
	link http web-c "127.0.0.1:$HTTP/c" "127.0.0.1:$BE_H2"; echo ","
	link tcp echo-2 "127.0.0.1:$TCP2" "127.0.0.1:$BE_TCP"; echo
	echo "]"
} >"$work/graph-b.json"
python3 -c 'import json,sys; [json.load(open(f)) for f in sys.argv[1:]]' "$work/graph-a.json" "$work/graph-b.json"
cp "$work/graph-a.json" "$work/graph.json"

ST=$work/status.sock
"$BIN/pv-xconnect" run --graph "$work/graph.json" --status-socket "$ST" \
	--log-target stderr --reset-window 0s 2>"$work/pv-xconnect.log" &
sup=$!
up=""
for _ in $(seq 100); do
	if "$BIN/pv-xconnect" status --json --status-socket "$ST" 2>/dev/null |
		python3 -c 'import json,sys; st=json.load(sys.stdin); sys.exit(0 if len(st["endpoints"])==3 and all(e["worker"].get("state")=="running" for e in st["endpoints"]) else 1)' 2>/dev/null; then
		up=1
		break
	fi
	kill -0 "$sup" 2>/dev/null || break
	sleep 0.1
done
if [[ -z $up ]]; then
	echo "soak: the supervisor did not bring up 3 running workers; its log:" >&2
	cat "$work/pv-xconnect.log" >&2
	exit 2
fi
echo "soak: pv-xconnect pid $sup; scratch $work"

rc=0
python3 -u scripts/lib/soak_load.py --status-socket "$ST" --sup-pid "$sup" \
	--graph "$work/graph.json" --graph-a "$work/graph-a.json" --graph-b "$work/graph-b.json" \
	--tcp "127.0.0.1:$TCP" --http "127.0.0.1:$HTTP" --unix "$LINK" \
	--seconds "$(python3 -c "print($MINUTES * 60)")" --settle "${PVX_SOAK_SETTLE:-45}" \
	--csv "$work/samples.csv" --flood "${PVX_SOAK_FLOOD:-300}" ${PVX_SOAK_SEED:+--seed "$PVX_SOAK_SEED"} &
load=$!
wait "$load" || rc=$?
load=""

echo
"$BIN/pv-xconnect" status --status-socket "$ST" || true
if [[ $rc != 0 ]]; then
	echo "--- supervisor log (warnings and errors, last 40) ---"
	grep -v ': info: ' "$work/pv-xconnect.log" | tail -n 40 || true
fi
# A clean stop is part of the check: SIGTERM, everything exits 0.
kill -TERM "$sup"
wait "$sup" || { echo "soak: pv-xconnect did not exit 0 on SIGTERM" >&2; rc=1; }
sup=""
exit $rc
