#!/usr/bin/env bash
# Which system calls, options and flags pv-xconnect really makes: the
# integration tests are run with every process started from the
# executable (supervisor, workers, namespace helpers; not the tests' own
# processes, nor the tools they start) under `strace -f`, and the logs
# summarised by scripts/lib/syscalls.py. docs/KERNEL.md's table comes from
# this and from reading the code.
#
#   scripts/syscalls.sh [--old-kernel] [TEST...]
#
#   --old-kernel  the tests under scripts/lib/old_kernel.py's Linux 4.9
#                 filter: the summary's last part then shows each call
#                 the filter refused and so which fallbacks ran
#   TEST          integration test files to run (e.g. tcp http), all if none
#
# How: the tests find the executable in $CARGO_TARGET_DIR/debug and build
# it there with $CARGO first (tests/support, bin_dir). Both point into a
# scratch directory whose debug/pv-xconnect is a small wrapper (C, built
# here with cc): it starts `strace -f -p` on itself from a detached
# grandchild, waits until traced, then execs the real executable with
# argv[0] unchanged (workers are picked by it) and its pid unchanged (the
# tests signal and wait for it). Root only (the namespace tests run).
set -euo pipefail
cd "$(dirname "$0")/.."

filter=()
if [ "${1:-}" = "--old-kernel" ]; then
  filter=(/usr/bin/python3 scripts/lib/old_kernel.py --)
  shift
fi
if [ "$(id -u)" != 0 ]; then
  echo "syscalls: run as root: the namespace tests must run here" >&2
  exit 2
fi
scripts/setup.sh --old-kernel

work=$(mktemp -d /tmp/pvx-syscalls.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debug" "$work/logs"

# The test executables, by file name (tests/NAME.rs).
cargo test --locked --no-run --message-format=json-render-diagnostics \
  | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("kind") == ["test"] and m.get("executable"):
        print(t["name"], m["executable"])
' > "$work/tests"
real=$(cargo metadata --format-version 1 --no-deps \
  | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/pv-xconnect
[ -x "$real" ] || { echo "syscalls: $real was not built" >&2; exit 1; }

cat > "$work/wrap.c" <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int traced(void) {
  char line[256];
  int t = 0;
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "TracerPid:", 10)) t = atoi(line + 10);
  fclose(f);
  return t;
}

int main(int argc, char **argv) {
  (void)argc;
  pid_t me = getpid();
  pid_t c = fork();
  if (c < 0) { perror("wrap: fork"); return 126; }
  if (c == 0) {
    /* A grandchild, so neither the tests nor the supervisor (which reaps
       every child it has) ever see strace as a child. It holds none of
       our fds: a control socket kept open by it would never reach EOF. */
    if (fork() == 0) {
      char out[4096], pid[32];
      snprintf(out, sizeof out, "%s/trace.%d", LOGS, (int)me);
      snprintf(pid, sizeof pid, "%d", (int)me);
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0); dup2(null, 1); dup2(null, 2);
      for (int fd = 3; fd < 4096; fd++) close(fd);
      execlp("strace", "strace", "-f", "-qq", "-s", "64", "-o", out, "-p", pid, (char *)0);
      _exit(127);
    }
    _exit(0);
  }
  waitpid(c, 0, 0);
  for (int i = 0; i < 10000 && !traced(); i++) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, 0);
  }
  if (!traced()) { fprintf(stderr, "wrap: strace did not attach\n"); return 126; }
  execv(REAL, argv);
  perror("wrap: execv " REAL);
  return 127;
}
EOF
cc -O1 -Wall -DREAL="\"$real\"" -DLOGS="\"$work/logs\"" -o "$work/debug/pv-xconnect" "$work/wrap.c"

failed=()
while read -r name exe; do
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then
    continue
  fi
  echo "syscalls: tests/$name.rs" >&2
  if ! CI=true CARGO=/bin/true CARGO_TARGET_DIR="$work" "${filter[@]}" "$exe" -q >"$work/$name.out" 2>&1; then
    failed+=("$name")
    tail -40 "$work/$name.out" >&2
  fi
done < "$work/tests"

/usr/bin/python3 scripts/lib/syscalls.py "$work/logs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "syscalls: FAILED tests: ${failed[*]}" >&2
  exit 1
fi
