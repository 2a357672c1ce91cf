#!/usr/bin/env bash
# Load test with websocat: N listeners in a room, one sender of M numbered, timestamped
# lines; counts what every listener received and reports loss, duplicates and wall time.
# usage: scripts/websocat-load.sh [N] [M] [SERVER] [ROOM]   (defaults: 10 1000 127.0.0.1:8080 load)
#        ADMIN=HOST:PORT for the server's admin port (default 127.0.0.1:8081)
# Bounded: every process it starts is stopped by PID within ~60 s, whatever happens.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage_if_help "$@"
N="${1:-10}"
M="${2:-1000}"
SERVER="${3:-127.0.0.1:8080}"
ROOM="${4:-load}"
LIMIT=60
need_websocat
ADMIN="${ADMIN:-127.0.0.1:8081}" # the admin port, for /metrics
[[ "$N" =~ ^[0-9]+$ && "$M" =~ ^[0-9]+$ && "$N" -ge 1 && "$N" -le 500 && "$M" -ge 1 && "$M" -le 1000000 ]] ||
  { echo "websocat-load.sh: N must be 1-500 and M 1-1000000" >&2; exit 2; }

with_cleanup

# Listeners: each exits by itself after M messages (--max-messages-rev), or at the limit.
for i in $(seq 1 "$N"); do
  timeout "$LIMIT" websocat -t -E --max-messages-rev "$M" "ws://$SERVER/$ROOM?name=listener-$i" \
    < <(sleep "$LIMIT") > "$DIR/listener-$i.txt" 2>/dev/null &
  PIDS+=($!)
done
# Wait until every listener is in the room (the admin port's /metrics counts open sessions).
for _ in $(seq 1 100); do
  open=$(curl -s "http://$ADMIN/metrics" | awk '/^pollcast_open_sessions /{print $2}')
  [[ "${open:-0}" -ge "$N" ]] && break
  sleep 0.1
done

# The sender: M lines "seq start-time-in-ns", then it closes.
start=$(date +%s%N)
awk -v m="$M" -v t="$start" 'BEGIN { for (i = 1; i <= m; i++) printf "%d %s\n", i, t }' > "$DIR/lines.txt"
timeout "$LIMIT" websocat -t "ws://$SERVER/$ROOM?name=sender" < "$DIR/lines.txt" > /dev/null 2>&1 || true

# Wait for the listeners to finish (or the limit), then count.
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()
end=$(date +%s%N)
expected=$((N * M))
received=0
duplicated=0
for f in "$DIR"/listener-*.txt; do
  received=$((received + $(cut -d' ' -f1 "$f" | sort -un | wc -l)))
  duplicated=$((duplicated + $(cut -d' ' -f1 "$f" | sort -n | uniq -d | wc -l)))
done
lost=$((expected - received))
printf 'websocat-load: %d listeners x %d lines: %d expected, %d received, %d lost, %d duplicated, %d ms\n' \
  "$N" "$M" "$expected" "$received" "$lost" "$duplicated" $(((end - start) / 1000000))
[[ "$lost" -eq 0 && "$duplicated" -eq 0 ]]
