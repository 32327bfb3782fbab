# Shared by the demo, the soak and chaos: a scratch directory and the
# processes a script starts, both removed on exit, and free loopback ports.
#   . scripts/lib/common.sh; scratch NAME   -> $work, pids=() ; trap on EXIT
# Append every background pid to `pids`.

scratch() {
  work=$(mktemp -d "/tmp/pvx-$1.XXXXXX")
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# A free loopback port (bound, then released).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The executable under test: $PVX_BIN_DIR's, else a release build (a no-op
# when target/release is fresh). Sets BIN; NAME prefixes the messages.
#   release_bin NAME
release_bin() {
  if [[ -n ${PVX_BIN_DIR:-} ]]; then
    BIN=$PVX_BIN_DIR
  else
    echo "$1: cargo build --release (a no-op when target/release is fresh)"
    cargo build --release -q
    BIN=target/release
  fi
  [[ -x $BIN/pv-xconnect ]] || { echo "$1: no $BIN/pv-xconnect" >&2; exit 2; }
}
