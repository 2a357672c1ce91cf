#!/usr/bin/env bash
# End-to-end test of the built-in chat page in a real browser: Debian's headless
# `chromium` driven by `playwright-core` (tests/browser/chat.test.mjs). Installs what it
# needs (chromium via apt when missing, the npm packages from the lockfile), builds the
# release binary, starts it on a free port, runs the test, and stops the server.
# Screenshots land in test-artifacts/.
#
# usage: scripts/browser-test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

if [ ! -x /usr/bin/chromium ]; then
  echo "browser-test: installing chromium" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

(
  cd tests/browser
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
)

cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/pollcast"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac

# The server runs in a scratch directory with its own history database, so every run
# starts from an empty chat.
scratch=$(mktemp -d)
log="$scratch/server.log"
(cd "$scratch" && RUST_LOG=info POLLCAST_DB="$scratch/pollcast.db" POLLCAST_HISTORY_DEFAULT=10 exec "$bin" --listen 127.0.0.1:0 2>"$log") &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

source "$root/scripts/lib.sh"
addr="$(listening_addr "$log" "$server")"
port="${addr##*:}"

mkdir -p "$root/test-artifacts"
status=0
(
  cd tests/browser
  POLLCAST_URL="http://127.0.0.1:$port/" ARTIFACTS_DIR="$root/test-artifacts" HISTORY_DEFAULT=10 \
    timeout 90 node --test --test-reporter=spec chat.test.mjs
) || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser-test: FAILED (exit $status); server log:" >&2
  tail -n 50 "$log" >&2
fi
exit "$status"
