#!/usr/bin/env bash
# The test command: unit tests of the pure core, integration tests against the real
# binary on 127.0.0.1, the doc tests, and the chat page in headless Chromium. Installs
# nothing by hand: what a test needs (chromium, the npm packages, redis-server for the
# cluster tests), the scripts set up.
#
# usage: scripts/test.sh [extra test-runner args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/redis.sh >/dev/null # the cluster tests start real redis-servers on free ports

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
cargo test --doc --quiet
scripts/browser-test.sh
scripts/scripts-test.sh
scripts/nginx-test.sh
