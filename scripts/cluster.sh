#!/usr/bin/env bash
# A cluster on this box: one redis-server and N pollcast nodes sharing one port
# (--reuse-port: the kernel spreads connections over them), each node pinned to a core
# (taskset; core i mod the number of cores). Runs until Ctrl-C, then stops every process
# it started, by PID. Installs redis-server (Debian's) if missing.
#
# usage: scripts/cluster.sh [--check] N [PORT]
#   N      nodes (default 2)
#   PORT   the shared public port (default 8080; 0: a free one, printed)
#   --check  start everything, wait until every node is ready, print the summary, stop
# Node i's admin port (/metrics, /healthz) is printed; Redis listens on a free loopback
# port, without persistence (history lives in its streams: a restart of this script starts
# empty). Extra node flags go in POLLCAST_NODE_FLAGS (e.g. "--no-history").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage_if_help "$@"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHECK=0
[[ "${1:-}" == "--check" ]] && { CHECK=1; shift; }
N="${1:-2}"
PORT="${2:-8080}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: N is a number of nodes, got '$N'" >&2; exit 2; }

scripts/redis.sh >/dev/null
[[ -x target/release/pollcast ]] || cargo build --release --quiet
with_cleanup

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
  >"$DIR/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "cluster.sh: redis-server did not start" >&2; cat "$DIR/redis.log" >&2; exit 1; }
echo "redis: redis://127.0.0.1:$REDIS_PORT/0"

CORES="$(nproc)"
for i in $(seq 1 "$N"); do
  core=$(( (i - 1) % CORES ))
  # shellcheck disable=SC2086 # POLLCAST_NODE_FLAGS is a list of flags
  taskset -c "$core" target/release/pollcast --listen "127.0.0.1:$PORT" --reuse-port \
    --admin-listen 127.0.0.1:0 --redis "redis://127.0.0.1:$REDIS_PORT/0" --node-id "node$i" \
    ${POLLCAST_NODE_FLAGS:-} 2>"$DIR/node$i.log" &
  PIDS+=($!)
  addr="$(listening_addr "$DIR/node$i.log" "$!")"
  PORT="${addr##*:}" # node 1 may have been given a free port: the others share it
  echo "node$i: core $core, ws://$addr/, admin http://$(admin_addr "$DIR/node$i.log" "$!")/ (log $DIR/node$i.log)"
done

ready=0
for _ in $(seq 1 100); do
  ready="$(grep -l 'ready (both links up' "$DIR"/node*.log 2>/dev/null | wc -l)"
  [[ "$ready" -eq "$N" ]] && break
  sleep 0.1
done
echo "cluster: $ready of $N nodes ready on port $PORT"
[[ "$ready" -eq "$N" ]] || { tail -n 5 "$DIR"/node*.log >&2; exit 1; }
[[ "$CHECK" -eq 1 ]] && exit 0
echo "Ctrl-C stops the cluster."
wait
