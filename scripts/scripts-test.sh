#!/usr/bin/env bash
# Smoke test of the websocat scripts exactly as the README prints them (but on a free
# port): installs websocat if missing, starts the release server, runs the load and
# slow-consumer scripts against it, stops the server by PID; starts a two-node cluster
# (scripts/cluster.sh --check) and stops it.
# usage: scripts/scripts-test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-websocat.sh >/dev/null
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --quiet

LOG="$(mktemp)"
target/release/pollcast --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --no-history 2>"$LOG" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT
source scripts/lib.sh
ADDR="$(listening_addr "$LOG" "$SERVER")"
ADMIN="$(admin_addr "$LOG" "$SERVER")"
export ADMIN

passed=0
failed=0
for run in "scripts/websocat-load.sh 5 500 $ADDR" "scripts/slow-consumer.sh $ADDR" "scripts/chat.sh --help" \
  "scripts/cluster.sh --check 2 0"; do
  if $run; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "scripts-test: FAILED: $run" >&2; fi
done
echo "scripts: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
