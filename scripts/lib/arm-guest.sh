# The ARM-kernel smoke suite, run by the initramfs's /init under busybox sh
# (scripts/arm-smoke.sh builds that initramfs and boots it). One line per
# check, `PASS name` or `FAIL name: why`, then `N passed, M failed`; the
# host script reads those from the console.
#
# Only busybox is here: nc (no unix sockets, no -q), httpd with CGI, wget
# (its --post-file stops at a NUL byte, so POST bodies are base64 text).
# unix links are therefore reached through a tcp link whose backend is the
# unix link's socket: every byte crosses both workers.

SMOKE=/run/smoke
SOCK=/run/pv-xconnect/status.sock
PAYLOAD=100000        # past the 64 KiB a tcp relay copies before it splices
CLIENTS=4             # concurrent clients during a kill
ROUNDS=6              # connections each client makes
pass=0 fail=0
mkdir -p $SMOKE /srv/www/cgi-bin /srv/c

ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }

# Poll CMD... every 0.2 s until it succeeds; give up after $1 seconds (a
# bound for a wedged guest, not a measure: TCG is slow and uneven).
wait_until() {
	n=$(($1 * 5)); shift
	while ! "$@" >/dev/null 2>&1; do
		n=$((n - 1))
		[ $n -gt 0 ] || return 1
		sleep 0.2
	done
}

md5() { md5sum "$1" | cut -d' ' -f1; }

# The pid of the worker of the endpoint at ADDRESS for CONSUMER (its argv:
# `pvx-worker-KIND ADDRESS consumer=NAME`).
worker_pid() {
	ps -o pid,args | awk -v a="$1" -v c="consumer=$2" '$2 ~ /^pvx-worker-/ && $3 == a && $4 == c {print $1}'
}

# The value of metric NAME for the host's endpoint at ADDRESS.
metric() { pv-xconnect status --metrics | awk -v m="$1" -v a="endpoint=\"$2\"" 'index($1, m "{") == 1 && index($1, a) {print $2}'; }

# Status table rows in state running.
running() { pv-xconnect status | awk '$0 ~ / running / {n++} END {print n + 0}'; }
all_running() { [ "$(running)" = "$1" ]; }

# A tcp echo round trip: PAYLOAD bytes out, half-close, the same back.
# tcp_echo OUT PORT [nsenter args...]
tcp_echo() {
	out=$1 port=$2; shift 2
	"$@" nc 127.0.0.1 "$port" <$SMOKE/payload >"$out" 2>"$out.err"
	rc=$?
	[ $rc = 0 ] && [ "$(md5 "$out")" = "$PAYLOAD_MD5" ]
}
# GET the blob through an http link: http_get OUT URL [nsenter args...]
http_get() {
	out=$1 url=$2; shift 2
	"$@" wget -q -O "$out" "$url" 2>"$out.err"
	rc=$?
	[ $rc = 0 ] && [ "$(md5 "$out")" = "$BLOB_MD5" ]
}
# POST text and read it back from the echo CGI: http_post OUT URL [nsenter...]
http_post() {
	out=$1 url=$2; shift 2
	"$@" wget -q -O "$out" --post-file $SMOKE/post.txt "$url" 2>"$out.err"
	rc=$?
	[ $rc = 0 ] && [ "$(md5 "$out")" = "$POST_MD5" ]
}
# What the last of those clients saw, for a FAIL line: why OUT
why() { echo "client exit $rc, $(wc -c <"$1") bytes back, stderr: $(tr '\n' ' ' <"$1.err")"; }

# --- the world: backends, two consumer containers, the supervisor ---------
ip link set lo up
head -c $PAYLOAD /dev/urandom >$SMOKE/payload
PAYLOAD_MD5=$(md5 $SMOKE/payload)
head -c 300000 /dev/urandom >/srv/www/blob
BLOB_MD5=$(md5 /srv/www/blob)
head -c 60000 /dev/urandom | base64 >$SMOKE/post.txt
POST_MD5=$(md5 $SMOKE/post.txt)
cat >/srv/www/cgi-bin/echo <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
exec head -c "$CONTENT_LENGTH"
EOF
chmod +x /srv/www/cgi-bin/echo
# busybox nc listens with a backlog of one per -l (-ll: 2). A new worker
# takes the connections queued during a kill at once and dials them all:
# past a full accept queue Linux answers with syncookies, and a connection
# whose first flight is more than one segment (our 100 kB) is reset when
# the segment carrying the cookie was dropped. Clients straight to such a
# backend are reset alike; a backlog of 64 is what a real server has.
nc -$(printf 'l%.0s' $(seq 64)) -p 7001 -e cat &
httpd -f -p 127.0.0.1:7002 -h /srv/www &
# A container with its own network namespace, and one with its own mount
# namespace whose /srv/c is a tmpfs the host does not see.
# $! is the forked shell until it has called unshare: wait for the new
# namespace before entering it (else nsenter enters the host's).
unshare -n sleep 1000000 &
CN=$!
unshare -m sh -c 'mount -t tmpfs tmpfs /srv/c && exec sleep 1000000' &
CM=$!
own_ns() { [ "$(readlink /proc/$1/ns/$2)" != "$(readlink /proc/self/ns/$2)" ]; }
wait_until 10 own_ns $CN net && nsenter -t $CN -n ip link set lo up ||
	bad setup "no network namespace of its own for pid $CN"
wait_until 10 grep -q ' /srv/c ' /proc/$CM/mounts ||
	bad setup "no tmpfs at /srv/c in the mount namespace of pid $CM"

link() { # type name consumer consumer_pid provider provider_pid target socket
	printf '{"type":"%s","name":"%s","consumer":"%s","consumer_pid":%s,"provider":"%s","provider_pid":%s,"role":"any","target":"%s","socket":"%s"}' "$@"
}
graph_a() {
	echo "[$(link tcp t-host EXTERNAL 0 echo 0 127.0.0.1:7101 127.0.0.1:7001),"
	echo " $(link tcp t-ns cnet $CN echo 0 127.0.0.1:7102 127.0.0.1:7001),"
	echo " $(link http h-host EXTERNAL 0 www 0 127.0.0.1:7201/api 127.0.0.1:7002),"
	echo " $(link http h-ns cnet $CN www 0 127.0.0.1:7202/api 127.0.0.1:7002),"
	echo " $(link unix u-host EXTERNAL 0 echo 0 $SMOKE/u.sock 127.0.0.1:7001),"
	echo " $(link tcp u-host-front EXTERNAL 0 EXTERNAL 0 127.0.0.1:7103 $SMOKE/u.sock),"
	echo " $(link unix u-ns cmnt $CM echo 0 /srv/c/u.sock 127.0.0.1:7001),"
	echo " $(link tcp u-ns-front EXTERNAL 0 cmnt $CM 127.0.0.1:7104 /srv/c/u.sock)"
}
graph_a >$SMOKE/graph.json
echo "]" >>$SMOKE/graph.json
# debug: a worker says why it ended a direction (a backend's reset, ...);
# printed only on a failure.
pv-xconnect run --graph $SMOKE/graph.json --log-target stderr --log-level debug 2>$SMOKE/sup.log &
SUP=$!

if wait_until 60 all_running 8; then
	ok "start: 8 endpoints running on $(uname -m) $(uname -r)"
else
	bad start "$(running) of 8 endpoints running after 60 s: $(pv-xconnect status 2>&1 | tr '\n' '|')"
fi

# --- traffic, each link on the host and in a consumer namespace ----------
conns_7101=0 conns_7201=0
if tcp_echo $SMOKE/o 7101; then ok tcp-host; else bad tcp-host "echo through 127.0.0.1:7101 differs or failed: $(why $SMOKE/o)"; fi
conns_7101=1
if tcp_echo $SMOKE/o 7102 nsenter -t $CN -n; then
	if nc 127.0.0.1 7102 </dev/null >/dev/null 2>&1; then
		bad tcp-netns "127.0.0.1:7102 answers in the host's namespace too"
	else
		ok tcp-netns
	fi
else
	bad tcp-netns "echo through 127.0.0.1:7102 in the consumer's namespace differs or failed: $(why $SMOKE/o)"
fi
if http_get $SMOKE/o http://127.0.0.1:7201/api/blob && http_post $SMOKE/o http://127.0.0.1:7201/api/cgi-bin/echo; then
	ok http-host
else
	bad http-host "GET or POST through 127.0.0.1:7201/api differs or failed: $(why $SMOKE/o)"
fi
conns_7201=2
if http_get $SMOKE/o http://127.0.0.1:7202/api/blob nsenter -t $CN -n &&
	http_post $SMOKE/o http://127.0.0.1:7202/api/cgi-bin/echo nsenter -t $CN -n; then
	if wget -q -O /dev/null http://127.0.0.1:7202/api/blob 2>/dev/null; then
		bad http-netns "127.0.0.1:7202 answers in the host's namespace too"
	else
		ok http-netns
	fi
else
	bad http-netns "GET or POST through 127.0.0.1:7202/api in the consumer's namespace differs or failed: $(why $SMOKE/o)"
fi
if [ -S $SMOKE/u.sock ] && tcp_echo $SMOKE/o 7103; then
	ok unix-host
else
	bad unix-host "no socket at $SMOKE/u.sock, or the echo through it differs: $(why $SMOKE/o)"
fi
if [ -e /srv/c/u.sock ]; then
	bad unix-mntns "/srv/c/u.sock is in the host's mount namespace"
elif ! nsenter -t $CM -m test -S /srv/c/u.sock; then
	bad unix-mntns "no socket at /srv/c/u.sock in the consumer's mount namespace"
elif ! tcp_echo $SMOKE/o 7104; then
	bad unix-mntns "echo through /srv/c/u.sock in the consumer's mount namespace differs or failed: $(why $SMOKE/o)"
else
	ok unix-mntns
fi

# --- kill -9 of a worker under load --------------------------------------
# CLIENTS clients make ROUNDS connections each, back to back. The kill
# waits for a moment with none in flight (a SIGKILL takes the connections
# its worker holds with it: that is not what is measured), then the
# clients go on at once and a probe connects right after the kill, while
# the worker is dead: their connections wait in the listener's backlog,
# which the supervisor holds, until the new worker takes them. Every one
# must complete with the right bytes.
L=$SMOKE/load
client() { # id check-function url-or-port
	id=$1 i=0
	while [ $i -lt $ROUNDS ]; do
		# Announce, then look: the killer sets pause, then waits for
		# no busy marker, so it never kills with a connection in flight.
		touch $L/busy.$id
		while [ -e $L/pause ]; do
			rm -f $L/busy.$id
			sleep 0.05
			touch $L/busy.$id
		done
		if "$2" $L/out.$id "$3"; then
			echo ok >$L/rc.$id.$i
		else
			echo "client $id round $i: $(why $L/out.$id)" >$L/rc.$id.$i
		fi
		rm -f $L/busy.$id
		i=$((i + 1))
	done
}
done_count() { ls $L 2>/dev/null | grep -c '^rc\.'; }
at_least() { [ "$(done_count)" -ge "$1" ]; }
no_busy() { ! ls $L | grep -q '^busy\.'; }
# The endpoint's connection count as the supervisor has it.
conns() { metric pvx_connections_total "$1"; }
# Workers report their counters every 500 ms at most, and a killed one
# takes what it had not reported with it: the kill waits until the
# supervisor has counted every connection made so far (so the totals
# checked under "metrics" are exact).
reported() { [ "$(conns "$1")" = $(($2 + $(done_count))) ]; }
# kill_under_load NAME KIND ADDRESS CHECK-FUNCTION TARGET CONNS-SO-FAR
kill_under_load() {
	name=$1 kind=$2 addr=$3 check=$4 target=$5 before=$6
	rm -rf $L && mkdir -p $L
	old=$(worker_pid "$addr" EXTERNAL)
	[ -n "$old" ] || { bad "$name" "no pvx-worker-$kind for $addr"; return; }
	pids=
	c=0
	while [ $c -lt $CLIENTS ]; do
		client $c "$check" "$target" &
		pids="$pids $!"
		c=$((c + 1))
	done
	wait_until 120 at_least $CLIENTS
	touch $L/pause
	wait_until 60 no_busy
	wait_until 20 reported "$addr" "$before"
	kill -9 "$old"
	rm -f $L/pause
	probe=ok
	"$check" $L/probe "$target" || probe=bad
	for p in $pids; do wait "$p"; done
	total=$(done_count)
	good=$(cat $L/rc.* | grep -c '^ok$')
	new=$(worker_pid "$addr" EXTERNAL)
	if [ "$probe" != ok ]; then
		bad "$name" "the connection made right after kill -9 of pid $old failed: $(why $L/probe)"
	elif [ "$total" != $((CLIENTS * ROUNDS)) ] || [ "$good" != "$total" ]; then
		bad "$name" "$good of $total connections (of $((CLIENTS * ROUNDS))) completed with the right bytes; $(cat $L/rc.* | grep -v '^ok$' | tr '\n' ';')"
	elif [ -z "$new" ] || [ "$new" = "$old" ]; then
		bad "$name" "no new worker after kill -9 of pid $old (now: '$new')"
	else
		ok "$name: $((total + 1)) connections, worker $old -> $new"
	fi
}
kill_under_load kill9-tcp tcp 127.0.0.1:7101 tcp_echo 7101 $conns_7101
conns_7101=$((conns_7101 + CLIENTS * ROUNDS + 1))
kill_under_load kill9-http http 127.0.0.1:7201 http_get http://127.0.0.1:7201/api/blob $conns_7201
conns_7201=$((conns_7201 + CLIENTS * ROUNDS + 1))

# --- SIGHUP: a route added to a running http endpoint, a new tcp link ----
hpid=$(worker_pid 127.0.0.1:7201 EXTERNAL)
if wget -q -O /dev/null http://127.0.0.1:7201/v2/blob 2>/dev/null; then
	bad sighup "/v2 answered before it was in the graph"
else
	{
		graph_a
		echo ", $(link http h-host-v2 EXTERNAL 0 www 0 127.0.0.1:7201/v2 127.0.0.1:7002)"
		echo ", $(link tcp t-new EXTERNAL 0 echo 0 127.0.0.1:7105 127.0.0.1:7001)]"
	} >$SMOKE/graph.new
	mv $SMOKE/graph.new $SMOKE/graph.json
	kill -HUP $SUP
	acked() { pv-xconnect status | grep "link #8 'h-host-v2'" | grep -qv pending; }
	if ! wait_until 60 all_running 9 || ! wait_until 30 acked; then
		bad sighup "the new graph is not applied after 60 s: $(pv-xconnect status 2>&1 | tr '\n' '|')"
	elif ! http_get $SMOKE/o http://127.0.0.1:7201/v2/blob; then
		bad sighup "GET /v2/blob through the new route differs or failed: $(why $SMOKE/o)"
	elif ! tcp_echo $SMOKE/o 7105; then
		bad sighup "echo through the new tcp link 127.0.0.1:7105 differs or failed: $(why $SMOKE/o)"
	elif [ "$(worker_pid 127.0.0.1:7201 EXTERNAL)" != "$hpid" ]; then
		bad sighup "the http worker of 127.0.0.1:7201 changed pid ($hpid -> $(worker_pid 127.0.0.1:7201 EXTERNAL)) for a route update"
	else
		ok "sighup: route /v2 added to http worker $hpid (same pid), tcp link 127.0.0.1:7105 added"
	fi
fi
# Two connections: the 404 before the update, the GET after it.
conns_7201=$((conns_7201 + 2))

# --- status, status --json, /metrics -------------------------------------
# A row's RESTARTS column: the killed workers' endpoints 1, the others 0.
restarts() { pv-xconnect status | awk -v a="$1" '$1 == a && $2 != "[pid" {print $6}'; }
table=$(pv-xconnect status)
if [ "$(restarts 127.0.0.1:7101)" = 1 ] && [ "$(restarts 127.0.0.1:7201)" = 1 ] &&
	[ "$(restarts 127.0.0.1:7103)" = 0 ] && echo "$table" | grep -q "^ENDPOINT " &&
	echo "$table" | grep -q "127.0.0.1:7102 \[pid:$CN\] *tcp *cnet"; then
	ok status
else
	bad status "unexpected table: $(echo "$table" | tr '\n' '|')"
fi
# Pretty-printed JSON; no jq here: its whitespace goes, then grep counts.
json=$(pv-xconnect status --json | tr -d ' \n\t')
if echo "$json" | grep -q '"endpoints":\[' && [ "$(echo "$json" | grep -o '"restarts":1[,}]' | wc -l)" = 2 ] &&
	[ "$(echo "$json" | grep -o '"state":"running"' | wc -l)" = 9 ]; then
	ok status-json
else
	bad status-json "unexpected: $(echo "$json" | head -c 600)"
fi
# Workers report their counters every 500 ms at most: wait for the totals.
counted() { [ "$(metric pvx_connections_total 127.0.0.1:7101)" = $conns_7101 ] && [ "$(metric pvx_connections_total 127.0.0.1:7201)" = $conns_7201 ]; }
if ! pv-xconnect status --metrics | grep -q '^# TYPE pvx_worker_restarts_total counter'; then
	bad metrics "no pvx_worker_restarts_total in: $(pv-xconnect status --metrics 2>&1 | head -c 400)"
elif ! wait_until 20 counted; then
	bad metrics "pvx_connections_total 127.0.0.1:7101 $(metric pvx_connections_total 127.0.0.1:7101) (want $conns_7101), 127.0.0.1:7201 $(metric pvx_connections_total 127.0.0.1:7201) (want $conns_7201)"
elif [ "$(metric pvx_worker_restarts_total 127.0.0.1:7101)" != 1 ] || [ "$(metric pvx_worker_up 127.0.0.1:7101)" != 1 ]; then
	bad metrics "127.0.0.1:7101: restarts $(metric pvx_worker_restarts_total 127.0.0.1:7101), up $(metric pvx_worker_up 127.0.0.1:7101) (want 1, 1)"
else
	ok "metrics: $conns_7101 tcp and $conns_7201 http connections counted, 1 restart each"
fi

if [ $fail -gt 0 ]; then
	echo "--- dmesg (tail)"
	dmesg | tail -n 40
	# A full accept queue (a backend's, or ours) shows here.
	echo "--- TCP listen overflows and syncookies"
	awk '/^TcpExt:/ { if (!h) { split($0, n); h = 1 } else { for (i = 2; i <= NF; i++) if (n[i] ~ /Listen|Syncookies/) printf "%s=%s ", n[i], $i; print "" } }' /proc/net/netstat
	echo "--- supervisor and worker log: what went wrong"
	grep -E 'warn|error|ECONN|EPIPE|refus|reset' $SMOKE/sup.log | grep -v 'graph applied' | tail -n 30
	echo "--- supervisor and worker log (tail, without per-connection lines)"
	grep -v "connection closed\|health" $SMOKE/sup.log | tail -n 40
fi
echo "$pass passed, $fail failed"
