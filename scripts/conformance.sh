#!/usr/bin/env bash
# Run the Autobahn TestSuite (RFC 6455 conformance) against pollcast in echo mode.
#
# usage: scripts/conformance.sh [SELECTION] [OUTDIR]
#   SELECTION  ci (default: 1-7, 10, 12/13 up to 8 KiB), quick (1-7, 10), '9.*' (limits and
#              performance, about a minute), all, or wstest case patterns like '5.*,6.2.*'
#   OUTDIR     report directory (default: autobahn-report/), open OUTDIR/index.html
# Needs ../shared/autobahn beside the repository (or AUTOBAHN_DIR); its setup.sh makes
# the Python venv on first use. Exit status: 0 when no case failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELECTION="${1:-ci}"
OUTDIR="${2:-$ROOT/autobahn-report}"
AUTOBAHN_DIR="${AUTOBAHN_DIR:-$ROOT/../shared/autobahn}"

if [[ ! -x "$AUTOBAHN_DIR/run.sh" ]]; then
  echo "conformance: no Autobahn harness at $AUTOBAHN_DIR (set AUTOBAHN_DIR)" >&2
  exit 2
fi

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
LOG="$(mktemp)"
"$ROOT/target/release/pollcast" --listen 127.0.0.1:0 --admin-listen off --mode echo --max-message 16MiB 2>"$LOG" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT

source "$ROOT/scripts/lib.sh"
ADDR="$(listening_addr "$LOG" "$PID")" || exit 2
URL="ws://$ADDR/"

echo "conformance: pollcast (pid $PID) on $URL, selection $SELECTION"
AUTOBAHN_AGENT=pollcast "$AUTOBAHN_DIR/run.sh" "$URL" "$SELECTION" "$OUTDIR"
