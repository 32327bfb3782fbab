#!/usr/bin/env bash
# A Pantavisor-like lab on one machine, for trying pv-xconnect by hand and
# for the kill script:
#
#   consumer  "container": own network + mount namespaces (netns NAME-c and a
#             private mount namespace with a tmpfs at STATE/consumer); its
#             init is a `sleep` whose pid is the graph's consumer_pid
#   provider A (IPAM-like): netns NAME-pa behind a veth pair on a free /30 of
#             169.254.213.0/24; a tcp echo on :7000 and python3 http.server on :8000
#   provider B: a unix-socket echo in a private mount namespace (tmpfs at
#             STATE/prov-b): reachable only through /proc/<pid>/root
#
# and STATE/graph.json with links that use them (tcp, http, unix, and one
# host tcp ingress to the unix provider). STATE/lab.env has the numbers.
#
#   scripts/lab.sh up | down | status
#
# Environment: PVX_LAB_NAME (default pvxlab; at most 10 of [a-z0-9]),
#              PVX_LAB_STATE (default /run/pvx-lab/$PVX_LAB_NAME).
#
# `up` records every namespace, link, process and directory it makes in
# STATE/made as soon as it exists; `down` removes exactly those, newest
# first (a process only if its start time still matches), and nothing else.
# (/run/pvx-lab.lock, shared by all labs to pick distinct addresses, stays.)
set -euo pipefail

NAME=${PVX_LAB_NAME:-pvxlab}
STATE=${PVX_LAB_STATE:-/run/pvx-lab/$NAME}
MADE=$STATE/made

die() { echo "lab: $*" >&2; exit 1; }
[[ $NAME =~ ^[a-z0-9]{1,10}$ ]] || die "PVX_LAB_NAME must be 1-10 of [a-z0-9] (interface names are short)"

# Field 22 of /proc/PID/stat: start time, to recognise our process later
# even if its pid were reused.
starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
record() { echo "$*" >>"$MADE"; }

wait_until() { # SECONDS WHAT CMD...
	local until=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < until)) || die "timed out waiting for $what"
		sleep 0.05
	done
}

# Start a long-running command as its own session (so `down` can kill its
# whole process group, socat's forked children included) and record it.
start() { # WHAT CMD...
	local what=$1
	shift
	setsid "$@" </dev/null >>"$STATE/$what.log" 2>&1 &
	local pid=$!
	wait_until 5 "$what to start" test -n "$(starttime $pid)"
	record "pid $pid $(starttime $pid) $what"
	echo "$pid"
}

# A free /30 in 169.254.213.0/24 (tests pick theirs the same way).
free_net() {
	local used k
	used=$(ip -o addr show)
	for k in $(seq 40 63) $(seq 0 39); do
		if ! grep -qE "169\.254\.213\.($((4 * k + 1))|$((4 * k + 2)))/" <<<"$used"; then
			echo "$k"
			return
		fi
	done
	die "no free /30 left in 169.254.213.0/24"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mounted_in() { grep -q " $2 " "/proc/$1/mountinfo"; }
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2"; }

# shellcheck disable=SC2329 # the EXIT trap of `up` calls it
on_up_exit() {
	local rc=$?
	if [[ -z ${UP_DONE:-} ]]; then
		echo "lab: up failed; removing what it made" >&2
		down >&2
	fi
	exit "$rc"
}

up() {
	[[ $(id -u) == 0 ]] || die "needs root (namespaces, veth)"
	for t in ip unshare setsid flock socat python3 curl; do
		command -v $t >/dev/null || die "needs $t (scripts/setup.sh installs it)"
	done
	[[ ! -e $STATE ]] || die "lab '$NAME' is already up (state in $STATE); run: scripts/lab.sh down"
	mkdir -p "$STATE"
	: >"$MADE"
	record "dir $STATE"
	# Whatever fails from here on (set -e, die), undo what was made.
	trap on_up_exit EXIT

	local k pa_host pa_ip cdir pbdir cpid pbpid hport
	# Two labs coming up at once (parallel tests) must not pick the same
	# /30: choose and assign it under a lock.
	exec 9>"/run/pvx-lab.lock"
	flock 9
	k=$(free_net)
	pa_host=169.254.213.$((4 * k + 1))
	pa_ip=169.254.213.$((4 * k + 2))
	cdir=$STATE/consumer
	pbdir=$STATE/prov-b
	mkdir -p "$cdir" "$pbdir" "$STATE/www"
	echo "hello from provider A" >"$STATE/www/hello.txt"

	# Consumer: netns + private mount namespace with its own tmpfs.
	ip netns add "$NAME-c"
	record "netns $NAME-c"
	[[ -e /run/netns/$NAME-c ]] || die "netns $NAME-c missing"
	ip -n "$NAME-c" link set lo up
	cpid=$(start consumer ip netns exec "$NAME-c" unshare --mount --propagation private \
		sh -c "mount -t tmpfs pvxlab-consumer '$cdir' && exec sleep infinity")
	wait_until 5 "consumer tmpfs" mounted_in "$cpid" "$cdir"

	# Provider A behind a veth pair; nothing is sent before it exists.
	ip netns add "$NAME-pa"
	record "netns $NAME-pa"
	[[ -e /run/netns/$NAME-pa ]] || die "netns $NAME-pa missing"
	ip link add "$NAME-pa-h" type veth peer name "$NAME-pa-n"
	record "link $NAME-pa-h"
	ip link set "$NAME-pa-n" netns "$NAME-pa"
	ip addr add "$pa_host/30" dev "$NAME-pa-h"
	ip link set "$NAME-pa-h" up
	flock -u 9
	exec 9>&-
	ip -n "$NAME-pa" link set lo up
	ip -n "$NAME-pa" addr add "$pa_ip/30" dev "$NAME-pa-n"
	ip -n "$NAME-pa" link set "$NAME-pa-n" up
	# socat -t 30: after the client's EOF, socat waits only -t (0.5 s by
	# default) for cat's echo before it closes; on a loaded machine that
	# cut echoes short, a loss that was the backend's, not ours.
	start prov-a-echo ip netns exec "$NAME-pa" \
		socat -t 30 "TCP-LISTEN:7000,bind=$pa_ip,fork,reuseaddr,backlog=512" EXEC:cat >/dev/null
	start prov-a-http ip netns exec "$NAME-pa" \
		python3 -m http.server 8000 --bind "$pa_ip" --directory "$STATE/www" >/dev/null

	# Provider B: a unix socket only its own mount namespace can see.
	pbpid=$(start prov-b-unix unshare --mount --propagation private \
		sh -c "mount -t tmpfs pvxlab-prov-b '$pbdir' && exec socat -t 30 'UNIX-LISTEN:$pbdir/echo.sock,fork,mode=666,backlog=512' EXEC:cat")

	wait_until 10 "provider A echo" tcp_open "$pa_ip" 7000
	wait_until 10 "provider A http" curl -sf "http://$pa_ip:8000/hello.txt"
	wait_until 10 "provider B socket" test -S "/proc/$pbpid/root$pbdir/echo.sock"
	[[ ! -S $pbdir/echo.sock ]] || die "provider B's socket leaked into the host mount namespace"

	hport=$(free_port)
	cat >"$STATE/graph.json" <<JSON
[
 {"type":"tcp","name":"c-echo","consumer":"consumer","consumer_pid":$cpid,"provider":"prov-a","provider_pid":0,
  "role":"any","interface":"echo","target":"127.0.0.1:7000","socket":"$pa_ip:7000"},
 {"type":"http","name":"c-web","consumer":"consumer","consumer_pid":$cpid,"provider":"prov-a","provider_pid":0,
  "role":"any","interface":"http","target":"127.0.0.1:8080/files","socket":"$pa_ip:8000"},
 {"type":"unix","name":"c-sock","consumer":"consumer","consumer_pid":$cpid,"provider":"prov-b","provider_pid":$pbpid,
  "role":"any","interface":"echo","target":"$cdir/echo.sock","socket":"$pbdir/echo.sock"},
 {"type":"tcp","name":"ext-sock","consumer":"EXTERNAL","consumer_pid":0,"provider":"prov-b","provider_pid":$pbpid,
  "role":"any","interface":"echo","target":"127.0.0.1:$hport","socket":"$pbdir/echo.sock"}
]
JSON
	cat >"$STATE/lab.env" <<ENV
LAB_NAME=$NAME
LAB_STATE=$STATE
LAB_GRAPH=$STATE/graph.json
CONSUMER_NETNS=$NAME-c
CONSUMER_PID=$cpid
CONSUMER_DIR=$cdir
PROVIDER_A_NETNS=$NAME-pa
PROVIDER_A_IP=$pa_ip
PROVIDER_B_PID=$pbpid
PROVIDER_B_SOCKET=$pbdir/echo.sock
HOST_PORT=$hport
ENV
	UP_DONE=1
	echo "lab '$NAME' is up; graph: $STATE/graph.json"
	echo "  consumer pid $cpid (netns $NAME-c, private mount ns); links inside: 127.0.0.1:7000 tcp, 127.0.0.1:8080/files http, $cdir/echo.sock unix"
	echo "  provider A $pa_ip (netns $NAME-pa, veth $NAME-pa-h): echo :7000, http :8000"
	echo "  provider B pid $pbpid: unix echo $pbdir/echo.sock (private mount ns)"
	echo "  host ingress 127.0.0.1:$hport -> provider B"
	echo "try: pv-xconnect run --graph $STATE/graph.json"
}

kill_recorded() { # PID START WHAT
	local pid=$1 start=$2
	[[ $(starttime "$pid") == "$start" ]] || return 0
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 40); do
		[[ $(starttime "$pid") == "$start" ]] || break
		sleep 0.05
	done
	kill -KILL -- "-$pid" 2>/dev/null || true
}

down() {
	if [[ ! -f $MADE ]]; then
		echo "lab '$NAME' is not up (no $MADE)"
		return 0
	fi
	local kind a b rest
	# Newest first: processes before their namespaces, the state dir last.
	while read -r kind a b rest; do
		case $kind in
		pid) kill_recorded "$a" "$b" ;;
		link) ip link del "$a" 2>/dev/null || true ;;
		netns)
			# Anything still inside a namespace we made is ours
			# (a socat child that outlived its group, say).
			for p in $(ip netns pids "$a" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
			ip netns del "$a" 2>/dev/null || true
			;;
		dir) rm -rf -- "$a" ;;
		esac
	done < <(tac "$MADE")
	echo "lab '$NAME' is down"
}

status() {
	[[ -f $STATE/lab.env ]] || { echo "lab '$NAME' is not up"; return 1; }
	cat "$STATE/lab.env"
	while read -r kind a b rest; do
		case $kind in
		pid) [[ $(starttime "$a") == "$b" ]] && echo "pid $a ($rest): running" || echo "pid $a ($rest): GONE" ;;
		netns) [[ -e /run/netns/$a ]] && echo "netns $a: present" || echo "netns $a: GONE" ;;
		link) ip link show "$a" >/dev/null 2>&1 && echo "link $a: present" || echo "link $a: GONE" ;;
		esac
	done <"$MADE"
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
