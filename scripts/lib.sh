# Shared by the websocat scripts (sourced, not run): --help from the script's header,
# the websocat check, and a scratch directory plus the PIDs to stop on exit.

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
  trap cleanup EXIT
}

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
