#!/usr/bin/env bash
# Build every cargo-fuzz target in fuzz/ and run each for SECONDS, one after
# the other; report executions and crashes per target. Exit 1 if any target
# found a crash, a leak or a timeout (its reproducer is kept and printed).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    (SECONDS defaults to 600; all targets)
#
# Each run starts from the committed seeds (fuzz/corpus/TARGET), copied to a
# scratch corpus so the repository does not grow; the scratch directory
# (corpora, logs, artifacts) is kept and its path printed. Needs the nightly
# toolchain (cargo-fuzz builds with -Zsanitizer); cargo-fuzz is installed
# from crates.io when missing. Not part of .ci/run.
#
# Environment: PVX_FUZZ_SANITIZER (address, the default, or none: faster,
#   finds panics and timeouts only), PVX_FUZZ_NICE (nice level, default 0),
#   PVX_FUZZ_TIMEOUT (seconds one input may take, default 10),
#   PVX_FUZZ_DIR (scratch directory, default a new /tmp/pvx-fuzz.XXXXXX).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECS=${1:-600}
[[ $SECS =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
shift || true
SAN=${PVX_FUZZ_SANITIZER:-address}
NICE=${PVX_FUZZ_NICE:-0}
TIMEOUT=${PVX_FUZZ_TIMEOUT:-10}

rustup toolchain list | grep -q '^nightly' || { echo "fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 2; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
work=${PVX_FUZZ_DIR:-$(mktemp -d /tmp/pvx-fuzz.XXXXXX)}
mkdir -p "$work"
echo "fuzz: ${#targets[@]} targets x ${SECS}s, sanitizer $SAN, scratch $work"

# -a: debug assertions and overflow checks, which turn silent wrap-arounds
# into crashes.
nice -n "$NICE" cargo +nightly fuzz build -a -s "$SAN" >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log" >&2; echo "fuzz: build failed ($work/build.log)" >&2; exit 2; }

failed=0
rows=()
for t in "${targets[@]}"; do
  d="$work/$t"
  mkdir -p "$d/corpus" "$d/artifacts"
  cp -r corpus/"$t"/. "$d/corpus/" 2>/dev/null || true
  extra=()
  # A ClientHello may fill one whole TLS record.
  [ "$t" = client_hello ] && extra+=(-max_len=17000)
  set +e
  nice -n "$NICE" cargo +nightly fuzz run -a -s "$SAN" "$t" "$d/corpus" -- \
    -max_total_time="$SECS" -timeout="$TIMEOUT" -rss_limit_mb=2048 \
    -artifact_prefix="$d/artifacts/" -print_final_stats=1 "${extra[@]}" >"$d/log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$d/log" | grep -o '[0-9]*$' | tail -1)
  secs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$d/log" | grep -o '[0-9]*$' | tail -1)
  found=$(find "$d/artifacts" -type f | wc -l)
  if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    failed=1
    result="FAILED (exit $rc)"
    find "$d/artifacts" -type f | sed 's/^/  reproducer: /'
    grep -m3 -E 'panicked|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY' "$d/log" | sed 's/^/  /' || true
  else
    result=ok
  fi
  row=$(printf '%-16s %6ss %12s execs %8s/s  %2s crashes  %s' "$t" "$SECS" "${execs:-?}" "${secs:-?}" "$found" "$result")
  echo "$row"
  rows+=("$row")
done

echo
echo "fuzz: summary (logs, corpora and artifacts in $work)"
printf '%s\n' "${rows[@]}"
exit "$failed"
