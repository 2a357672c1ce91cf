#!/usr/bin/env bash
# Shows the slow-consumer policy: a client that never reads is closed (1008) once its
# queue passes --max-queue, while a normal reader in the same room gets every message.
# usage: scripts/slow-consumer.sh [SERVER] [ROOM]   (defaults: 127.0.0.1:8080 slow)
# Bounded: sends 20000 lines of 1 KiB (20 MiB, more than loopback socket buffers hold), stops every process it started by PID.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
SERVER="${1:-127.0.0.1:8080}"
ROOM="${2:-slow}"
LINES=20000
command -v websocat >/dev/null || { echo "slow-consumer.sh: no websocat; run scripts/install-websocat.sh" >&2; exit 2; }
metric() { curl -s "http://$SERVER/metrics" | awk -v m="pollcast_$1" '$1 == m {print $2}'; }

DIR="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

before=$(metric slow_consumers_total)
# The stalled client: websocat writes into a FIFO nobody reads, so once the pipe (64 KiB)
# and its socket buffers are full it stops reading from the server.
mkfifo "$DIR/stuck"
exec 3<>"$DIR/stuck" # hold the FIFO open (never read) so websocat's writes block, not fail
timeout 60 websocat -t "ws://$SERVER/$ROOM?name=stalled" < <(sleep 60) > "$DIR/stuck" 2>/dev/null &
PIDS+=($!)
# A normal reader.
timeout 60 websocat -t -E --max-messages-rev "$LINES" "ws://$SERVER/$ROOM?name=reader" < <(sleep 60) > "$DIR/reader.txt" 2>/dev/null &
reader=$!
PIDS+=($reader)
sleep 0.5

payload=$(head -c 1000 /dev/zero | tr '\0' 'x')
for i in $(seq 1 "$LINES"); do echo "$i $payload"; done > "$DIR/lines.txt"
timeout 60 websocat -t "ws://$SERVER/$ROOM?name=flooder" < "$DIR/lines.txt" > /dev/null 2>&1 || true
wait "$reader" 2>/dev/null || true

after=$(metric slow_consumers_total)
got=$(wc -l < "$DIR/reader.txt")
echo "slow-consumer: sent $LINES lines of ~1 KiB; the reader got $got; slow consumers dropped: ${before:-?} -> ${after:-?}"
echo "(the server logs: 'conn N: 127.0.0.1:... is a slow consumer (... bytes queued, limit ...): closing 1008')"
[[ "$got" -eq "$LINES" && "${after:-0}" -gt "${before:-0}" ]]
