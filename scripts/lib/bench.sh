# Shared by the benchmarks: their common opening (bench_init), the peers
# each benchmark starts beside pv-xconnect, configured the same way
# everywhere (one process or worker, one thread), wrk and the summary
# arithmetic. Every process started is appended to `pids`.
#   . "$(dirname "$0")/lib/bench.sh"; bench_init NAME

NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so

# Which processes do the work of a target, for side_by_side's CPU columns,
# by the port a target is measured on. cpu_relay: the process trees that
# relay PORT (a peer proxy, socat), or "pvx:SUPERVISOR" (the supervisor's
# worker serving PORT, looked up at each reading, so that a respawned
# worker counts); set by the helpers that start them. cpu_backend: the
# process tree of the backend listening on PORT.
declare -gA cpu_relay=() cpu_backend=()

# The opening of every benchmark: run from the repository's root, install
# the peers (scripts/setup.sh --bench), build pv-xconnect unless PVX_BIN
# names one (a relative PVX_BIN is taken from the root), raise the fd limit
# to its hard maximum, and make the scratch directory (common.sh: $work,
# pids, both cleaned up on exit).
#   --no-setup  install nothing (what runs needs none of the peers)
#   --symbols   build with symbols and line tables, in target/prof (the
#               same code as the stripped release build, for profiles)
bench_init() { # name [--no-setup] [--symbols]
  local name=$1 setup=1 symbols=0 o
  shift
  for o in "$@"; do
    case $o in
      --no-setup) setup=0 ;;
      --symbols) symbols=1 ;;
      *) echo "bench_init: unknown option $o" >&2; return 2 ;;
    esac
  done
  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  [ "$setup" = 0 ] || scripts/setup.sh --bench
  if [ -z "${PVX_BIN:-}" ]; then
    if [ "$symbols" = 1 ]; then
      CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        cargo build --release -q --target-dir target/prof
      PVX_BIN=target/prof/release/pv-xconnect
    else
      cargo build --release -q
      PVX_BIN=target/release/pv-xconnect
    fi
  fi
  ulimit -n "$(ulimit -Hn)"
  . scripts/lib/common.sh
  scratch "$name"
}

# Median of the numbers on stdin (space or newline separated).
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
# a/b with two decimals ("-" when b is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 == 0) print "-"; else printf "%.2f", a/b }'; }

# Files an nginx backend serves from $work/html: 100 (100 bytes), 600,
# 1m (1 MiB). nginx's workers (www-data) must read them.
bench_files() {
  mkdir -p "$work/html"
  chmod 755 "$work" "$work/html"
  head -c 100 /dev/zero | tr '\0' x > "$work/html/100"
  head -c 600 /dev/zero | tr '\0' x > "$work/html/600"
  head -c 1048576 /dev/zero | tr '\0' x > "$work/html/1m"
}

# nginx (one worker) serving $work/html on 127.0.0.1:PORT, keep-alive.
nginx_backend() { # name port
  cat > "$work/$1.conf" <<CFG
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$2 backlog=4096; root $work/html; }
}
CFG
  nginx -c "$work/$1.conf" >/dev/null 2>&1 & pids+=($!)
  cpu_backend[$2]=$!
}

# nginx (one worker) proxying 127.0.0.1:FRONT to 127.0.0.1:BACK: `stream`
# (tcp) or `http` (proxy_pass with upstream keep-alive). Sets peer_pid.
nginx_proxy() { # name stream|http front back
  local body
  if [ "$2" = stream ]; then
    body="stream { server { listen 127.0.0.1:$3 backlog=4096; proxy_pass 127.0.0.1:$4; } }"
  else
    body="http {
  access_log off;
  keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$4; keepalive 64; }
  server {
    listen 127.0.0.1:$3 backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }
}"
  fi
  { [ "$2" = stream ] && echo "load_module $NGINX_STREAM;"
    cat <<CFG
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err;
events { worker_connections 16384; }
$body
CFG
  } > "$work/$1.conf"
  nginx -c "$work/$1.conf" >/dev/null 2>&1 & peer_pid=$!; pids+=($!)
  cpu_relay[$3]=$peer_pid # the master: its tree holds the worker
}

# HAProxy (one thread) proxying 127.0.0.1:FRONT to 127.0.0.1:BACK in mode
# tcp or http (http: server connections reused). Sets peer_pid.
haproxy_proxy() { # name tcp|http front back
  cat > "$work/$1.cfg" <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode $2
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  $([ "$2" = http ] && echo "http-reuse always")
frontend f
  bind 127.0.0.1:$3
  default_backend b
backend b
  server s 127.0.0.1:$4
CFG
  haproxy -f "$work/$1.cfg" -db >/dev/null 2>&1 & peer_pid=$!; pids+=($!)
  cpu_relay[$3]=$peer_pid
}

# A graph link from 127.0.0.1:FRONT to 127.0.0.1:BACK (JSON object).
pvx_link() { # type name front back
  printf '{"type":"%s","name":"%s","consumer":"EXTERNAL","consumer_pid":0,"provider":"p","provider_pid":0,"role":"any","target":"127.0.0.1:%s","socket":"127.0.0.1:%s"}' "$1" "$2" "$3" "$4"
}

# The supervisor on a graph of the given link objects. Sets pvx_pid.
pvx_start() { # name link...
  local name=$1 l flags; shift
  # Split the extra flags on spaces before IFS becomes the links' comma.
  read -r -a flags <<< "${PVX_BENCH_FLAGS:-}"
  local IFS=,
  echo "[$*]" > "$work/$name.json"
  "$PVX_BIN" run --graph "$work/$name.json" --status-socket "$work/$name.sock" --log-target stderr \
    --log-level warn "${flags[@]}" 2>"$work/$name.log" & pvx_pid=$!; pids+=($!)
  # A link's "target" is where its clients connect (pvx_link's FRONT).
  for l in "$@"; do
    if [[ $l =~ \"target\":\"127\.0\.0\.1:([0-9]+)\" ]]; then cpu_relay[${BASH_REMATCH[1]}]=pvx:$pvx_pid; fi
  done
}

# The worker of pvx_pid serving 127.0.0.1:PORT (waits for it).
pvx_worker() { # port
  local w t0=$SECONDS
  until w=$(pgrep -P "$pvx_pid" -f "pvx-worker-[a-z]* 127.0.0.1:$1 ") || [ $((SECONDS - t0)) -ge 20 ]; do sleep 0.2; done
  echo "$w"
}

# Waits until GET /PATH on PORT answers 200.
wait_http() { # port path
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/$2" && return 0; sleep 0.1; done
  echo "bench: 127.0.0.1:$1/$2 does not answer" >&2; tail -n 5 "$work"/*.err "$work"/*.log >&2 || true
  return 1
}

# wrk -t1 against PORT/PATH -> "req/s p99_ms requests" (requests: how many
# completed, the work side_by_side divides CPU time by); extra args go to
# wrk (e.g. -c20 -H 'Connection: close'). Errors wrk reports go to stderr.
wrk_run() { # port path secs wrk-args...
  local port=$1 path=$2 secs=$3; shift 3
  wrk -t1 -d"${secs}s" --latency "$@" "http://127.0.0.1:$port/$path" | awk '
    /Requests\/sec:/ { rps = $2 }
    / requests in / { n = $1 }
    /^ +99%/ { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
               ms = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v }
    /Non-2xx|Socket errors/ { err = err " " $0 }
    END { if (err != "") print "wrk:" err > "/dev/stderr"; printf "%.0f %.3f %d\n", rps, ms, n }'
}

# The processes relaying PORT now (cpu_relay; none: nothing).
relay_pids() { # port
  local r=${cpu_relay[$1]:-}
  case $r in
    pvx:*) pgrep -P "${r#pvx:}" -f "pvx-worker-[a-z]* 127.0.0.1:$1 " || true ;;
    *) echo "$r" ;;
  esac
}

# The CPU time of the process trees of PIDS (each process and all its
# descendants): a line "pid:starttime ppid ticks" for each process, ticks
# = utime + stime + cutime + cstime from /proc/PID/stat (cutime and cstime:
# the children it reaped, such as socat's per-connection forks). Nothing
# when none of PIDS runs; a process that exits while this reads is left out.
cpu_snap() { # pid...
  [ $# -gt 0 ] || return 0
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$(printf '%s ' "$@")" '
    { r = $0; sub(/^[^(]*\(.*\) /, "", r); n = split(r, f, " ")
      if (n < 20) next
      pid = $1; ppid[pid] = f[2]; key[pid] = pid ":" f[20]; t[pid] = f[12] + f[13] + f[14] + f[15]
      kids[f[2]] = kids[f[2]] " " pid }
    END {
      m = split(roots, q, " ")
      for (i = 1; i <= m; i++) {
        p = q[i]; if (!(p in key) || (p in seen)) continue
        seen[p] = 1; print key[p], ppid[p], t[p]
        c = split(kids[p], k, " "); for (j = 1; j <= c; j++) q[++m] = k[j]
      }
    }'
}

# CPU per unit of work between two cpu_snap readings, BEFORE and AFTER:
# seconds * SCALE / WORK, printed with FMT; "-" when either reading is
# empty (nothing ran) or WORK is not a positive number. A process in both
# readings counts its growth, one born since counts all of its own time;
# one gone since counts nothing, except that when it was reaped within the
# tree (its parent, or a parent gone too that its own parent reaped, and so
# on up to a process still there), that process's cutime now holds its
# whole life, so what it had at BEFORE is taken off.
cpu_per() { # before after work scale fmt
  [ -n "$1" ] && [ -n "$2" ] || { echo -; return 0; }
  { sed 's/^/b /' <<<"$1"; sed 's/^/a /' <<<"$2"; } | awk -v work="$3" -v scale="$4" -v fmt="$5" -v hz="$CLK_TCK" '
    NF < 4 { next }
    $1 == "b" { b[$2] = $4; bp[$2] = $3; split($2, k, ":"); was[k[1]] = $2; next }
    { a[$2] = $4; split($2, k, ":"); live[k[1]] = 1 }
    END {
      for (p in a) d += a[p] - ((p in b) ? b[p] : 0)
      for (p in b) {
        if (p in a) continue
        q = bp[p]; h = 0 # h: a bound, should pid reuse make a loop
        while (!(q in live) && (q in was) && h++ < 64) q = bp[was[q]]
        if (q in live) d -= b[p]
      }
      if (work !~ /^[0-9.]+$/ || work + 0 <= 0) print "-"
      else printf fmt "\n", d / hz * scale / work
    }'
}
CLK_TCK=$(getconf CLK_TCK)

# Median of the numbers on stdin, "-" ignored; "-" when none is left.
median_known() { local m; m=$(tr ' ' '\n' | awk 'NF && $1 != "-"'); if [ -n "$m" ]; then median <<<"$m"; else echo -; fi; }

# One scenario, side by side: RUNS rounds, each measuring every target
# once (interleaved, so a noisy moment hits all of them), then the median
# of each and its ratio to the first target (direct).
#   side_by_side TITLE UNIT MEASURE target=PORT...
# MEASURE is a command given PORT, printing one number, then optionally a
# p99 latency in ms ("-": none) and the work done (requests, or bytes when
# UNIT is Gbit/s).
# Beside them, the CPU time (user + system) the target's relaying
# processes (cpu_relay of PORT: none for direct) spent per unit of that
# work, and the backend's (cpu_backend of the first target's PORT): per
# run, then the median. It moves far less than the throughput when the
# machine is busy: it counts what each proxy does, not how soon it got a
# core.
side_by_side() {
  local title=$1 unit=$2 measure=$3; shift 3
  local names=() t n a v l w d out roots be c0 c1 b0 b1 cu bu scale fmt
  declare -A val lat arg cpu bcpu
  case $unit in
    Gbit/s) cu=cpu_s/GB bu=be_s/GB scale=1e9 fmt=%.2f ;;
    *) cu=cpu_us/req bu=be_us/req scale=1e6 fmt=%.1f ;;
  esac
  for t in "$@"; do n=${t%%=*}; names+=("$n"); arg[$n]=${t#*=}; done
  be=${cpu_backend[${arg[${names[0]}]}]:-}
  for _ in $(seq "$RUNS"); do
    for n in "${names[@]}"; do
      a=${arg[$n]}
      roots=$(relay_pids "$a")
      # shellcheck disable=SC2086 # one pid a word
      c0=$(cpu_snap $roots); b0=$(cpu_snap $be)
      out=$($measure "$a") || true
      v= l= w=
      read -r v l w <<<"$out" || true
      [ "$l" != - ] || l=
      # What the last connections' closes cost (socat's forks reaped).
      [ -z "$roots$be" ] || sleep 0.2
      roots=$(relay_pids "$a")
      # shellcheck disable=SC2086
      c1=$(cpu_snap $roots); b1=$(cpu_snap $be)
      val[$n]="${val[$n]:-} $v"; lat[$n]="${lat[$n]:-} ${l:-}"
      cpu[$n]="${cpu[$n]:-} $(cpu_per "$c0" "$c1" "$w" "$scale" "$fmt")"
      bcpu[$n]="${bcpu[$n]:-} $(cpu_per "$b0" "$b1" "$w" "$scale" "$fmt")"
    done
  done
  echo "== $title; $RUNS runs, medians"
  echo "   $cu: CPU time (user+sys) of the relaying process(es) per ${cu#*/}; $bu: the backend's"
  d=$(echo "${val[${names[0]}]}" | median)
  printf '%-12s %12s %8s %10s %10s %10s   runs (%s)\n' target "$unit" /direct p99_ms "$cu" "$bu" "$unit"
  for n in "${names[@]}"; do
    v=$(echo "${val[$n]}" | median); l=$(echo "${lat[$n]}" | median)
    [ -n "${lat[$n]// /}" ] || l=-
    printf '%-12s %12s %8s %10s %10s %10s  %s\n' "$n" "$v" "$(ratio "$v" "$d")" "$l" \
      "$(median_known <<<"${cpu[$n]}")" "$(median_known <<<"${bcpu[$n]}")" "${val[$n]}"
  done
}
