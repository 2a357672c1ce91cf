#!/usr/bin/env bash
# End-to-end tests of the built-in chat page in a real browser: Debian's headless
# `chromium` driven by `playwright-core` (tests/browser/*.test.mjs: the chat itself, the
# phone layout and axe-core's accessibility checks, the page's side of token auth).
# Installs what they need (chromium via apt when missing, the npm packages from the
# lockfile), builds the release binary, starts it on a free port, runs the tests one file
# after another (they share the server and its rooms), and stops the server. The auth tests
# start their own server from the same binary. Screenshots land in test-artifacts/.
#
# usage: scripts/browser-test.sh [TEST-FILE...]   (default: every tests/browser/*.test.mjs)
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
(cd "$scratch" && RUST_LOG=info POLLCAST_DB="$scratch/pollcast.db" POLLCAST_HISTORY_DEFAULT=10 exec "$bin" --listen 127.0.0.1:0 --admin-listen off 2>"$log") &
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
  files=("$@")
  [ "${#files[@]}" -gt 0 ] || files=(chat.test.mjs layout.test.mjs auth.test.mjs files.test.mjs tls.test.mjs)
  POLLCAST_URL="http://127.0.0.1:$port/" ARTIFACTS_DIR="$root/test-artifacts" HISTORY_DEFAULT=10 \
    POLLCAST_BIN="$bin" timeout 240 node --test --test-concurrency=1 --test-reporter=spec "${files[@]##*/}"
) || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser-test: FAILED (exit $status); server log:" >&2
  tail -n 50 "$log" >&2
fi
exit "$status"
