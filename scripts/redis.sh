#!/usr/bin/env bash
# Makes sure a real `redis-server` is on this machine, for the cluster tests and
# scripts/cluster.sh: installs Debian's package when the binary is missing (the tests
# start their own servers on free loopback ports; this never starts one, and the
# package's own service is stopped by PID if the install started it).
#
# usage: scripts/redis.sh        (prints the path of redis-server)
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis.sh: no redis-server; installing Debian's package" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq >&2
  timeout 300 apt-get install -y -qq --no-install-recommends redis-server >&2
  # The package may start its own server on 6379: the tests do not use it.
  if [[ -r /run/redis/redis-server.pid ]]; then
    kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true
  fi
fi
command -v redis-server
