# Shared by the scripts (sourced, not run): --help from the script's header, the websocat
# check, a scratch directory plus the PIDs to stop on exit, and the address a server
# started with --listen 127.0.0.1:0 reports.

# Prints the script's header comment (up to `set -euo pipefail`) on -h/--help and exits.
usage_if_help() {
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 0
  fi
}

need_websocat() {
  command -v websocat >/dev/null ||
    { echo "$(basename "$0"): no websocat; run scripts/install-websocat.sh" >&2; exit 2; }
}

# A scratch directory in $DIR, and every PID added to PIDS stopped (by PID) at exit.
with_cleanup() {
  DIR="$(mktemp -d)"
  PIDS=()
  trap stop_tracked EXIT
}

stop_tracked() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}

# Waits (up to 10 s) for a pollcast started with `--listen 127.0.0.1:0 2>LOG` as PID to
# log where it listens, and prints that address (127.0.0.1:PORT). Fails, showing the log,
# if the server exits or never says. `admin_addr` does the same for `--admin-listen
# 127.0.0.1:0` (the admin port: /metrics and the API).
listening_addr() { logged_addr "$1" "$2" 'pollcast listening on wss*://'; }
admin_addr() { logged_addr "$1" "$2" 'admin listening on http://'; }

logged_addr() {
  local log=$1 pid=$2 what=$3 addr=""
  for _ in $(seq 1 100); do
    addr="$(sed -n "s|.*${what}\(127\.0\.0\.1:[0-9][0-9]*\)/.*|\1|p" "$log" | head -n 1)"
    [[ -n "$addr" ]] && { echo "$addr"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$(basename "$0"): the server did not start:" >&2
  cat "$log" >&2
  return 1
}
