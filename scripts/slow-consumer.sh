#!/usr/bin/env bash
# Shows the slow-consumer policy: a client that never reads is closed (1008) once its
# queue passes --max-queue, while a normal reader in the same room gets every message.
# usage: scripts/slow-consumer.sh [SERVER] [ROOM]   (defaults: 127.0.0.1:8080 slow)
#        ADMIN=HOST:PORT for the server's admin port (default 127.0.0.1:8081)
# Bounded: sends 20000 lines of 1 KiB (20 MiB, more than loopback socket buffers hold), stops every process it started by PID.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage_if_help "$@"
SERVER="${1:-127.0.0.1:8080}"
ROOM="${2:-slow}"
LINES=20000
need_websocat
ADMIN="${ADMIN:-127.0.0.1:8081}" # the admin port, for /metrics
metric() { curl -s "http://$ADMIN/metrics" | awk -v m="pollcast_$1" '$1 == m {print $2}'; }

with_cleanup

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

# The flooder sends 100 lines every 5 ms (about 20 MB/s): fast enough to bury the stalled
# client within a second, slow enough that the normal reader, sharing two cores with the
# server and the flooder, keeps up.
payload=$(head -c 1000 /dev/zero | tr '\0' 'x')
for batch in $(seq 0 $((LINES / 100 - 1))); do
  for i in $(seq $((batch * 100 + 1)) $((batch * 100 + 100))); do echo "$i $payload"; done > "$DIR/batch-$batch.txt"
done
for batch in $(seq 0 $((LINES / 100 - 1))); do cat "$DIR/batch-$batch.txt"; sleep 0.005; done |
  timeout 60 websocat -t "ws://$SERVER/$ROOM?name=flooder" > /dev/null 2>&1 || true
wait "$reader" 2>/dev/null || true

after=$(metric slow_consumers_total)
got=$(wc -l < "$DIR/reader.txt")
echo "slow-consumer: sent $LINES lines of ~1 KiB; the reader got $got; slow consumers dropped: ${before:-?} -> ${after:-?}"
echo "(the server logs: 'conn N: 127.0.0.1:... is a slow consumer (... bytes queued, limit ...): closing 1008')"
[[ "$got" -eq "$LINES" && "${after:-0}" -gt "${before:-0}" ]]
