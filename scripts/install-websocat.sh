#!/usr/bin/env bash
# Install websocat (the WebSocket netcat) with cargo, if it is not on PATH yet.
# usage: scripts/install-websocat.sh
set -euo pipefail
if command -v websocat >/dev/null 2>&1; then
  echo "websocat: $(command -v websocat) ($(websocat --version))"
  exit 0
fi
echo "installing websocat with cargo (a few minutes the first time)..." >&2
cargo install websocat --locked
echo "websocat: $(command -v websocat || echo "$HOME/.cargo/bin/websocat") ($("${CARGO_HOME:-$HOME/.cargo}/bin/websocat" --version))"
