#!/usr/bin/env bash
# Side-by-side benchmark: pollcast against peer relays from ../shared/peers, every server
# pinned to CPU 0 and `pollcast bench` to CPU 1, each scenario on a freshly started server.
# Prints a Markdown table (and keeps every JSON result in the work directory).
#
# usage: scripts/bench.sh [SERVER...]
#   SERVER: pollcast (no history), pollcast-history (SQLite on), pollcast-auth (no history,
#           JWT tokens on: every bench connection carries one), tt (tokio-tungstenite,
#           1 worker), node (Node ws). Default: pollcast pollcast-history tt node
#           Over TLS (wss://, a self-signed P-256 certificate made once in the work
#           directory, the bench run with --insecure): pollcast-tls (pollcast, no history,
#           --tls-cert/--tls-key), tt-tls (bench/peers/tt-tls: tokio-tungstenite over
#           tokio-rustls, 1 worker). Compare pollcast with pollcast-tls and tt with tt-tls.
#           With Redis (redis-server and the nodes all on CPU 0, history in Redis):
#           pollcast-redis (one node), pollcast-cluster (two nodes sharing the port with
#           --reuse-port, so a room's members are spread over both). The server CPU is
#           the sum of every process of the cluster.
# env:    BENCH_WORK   where peers are built and results kept (default /tmp/pollcast-bench)
#         SCENARIOS    space-separated subset of: fanout100 fanout1000 paced1000 tenbyten
#                      tenbyten256 idle churn, and the compression rows chat100 chat100z
#                      chat1000 chat1000z idlez (the default set leaves those out)
#         DURATION     seconds per throughput scenario (default 5)
#         REPEAT       runs per scenario and server, each on a fresh server; the table shows
#                      the median run (default 3: figures on a shared VM move ±15%)
#         BUSY_POLL    1: the bench runs with --busy-poll (never sleeps, so no server pays to
#                      wake it on loopback); the peers' published figures are without it
# Needs: taskset, python3; cargo (tt, tt-tls), node/npm (node), openssl (the TLS servers),
#        redis-server (the cluster servers; scripts/redis.sh installs it).
# Stops every process by its PID.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
WORK="${BENCH_WORK:-/tmp/pollcast-bench}"
DURATION="${DURATION:-5}"
REPEAT="${REPEAT:-3}"
BUSY_FLAGS=()
[[ "${BUSY_POLL:-}" != 1 ]] || BUSY_FLAGS=(--busy-poll)
SCENARIOS="${SCENARIOS:-fanout100 fanout1000 paced1000 tenbyten tenbyten256 idle churn}"
SERVERS=("$@")
[[ ${#SERVERS[@]} -gt 0 ]] || SERVERS=(pollcast pollcast-history tt node)
PORT=9690
mkdir -p "$WORK"
BIN="$ROOT/target/release/pollcast"
CERT="$WORK/tls/cert.pem"
KEY="$WORK/tls/key.pem"

echo "bench: building pollcast" >&2
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

build_peer() {
  case "$1" in
    tt)
      if [[ ! -x "$WORK/tt-target/release/tt-peer" ]]; then
        echo "bench: building tokio-tungstenite peer in $WORK" >&2
        rm -rf "$WORK/tokio-tungstenite" && cp -r "$PEERS_SRC/tokio-tungstenite" "$WORK/"
        CARGO_TARGET_DIR="$WORK/tt-target" cargo build --release --quiet --manifest-path "$WORK/tokio-tungstenite/Cargo.toml"
      fi ;;
    tt-tls) # our own peer's source, copied out of the tree and built in the work directory
      local bin="$WORK/tt-tls-target/release/tt-tls-peer"
      if [[ ! -x "$bin" || -n "$(find "$ROOT/bench/peers/tt-tls" -newer "$bin" -type f)" ]]; then
        echo "bench: building tokio-tungstenite TLS peer in $WORK" >&2
        rm -rf "$WORK/tt-tls" && cp -r "$ROOT/bench/peers/tt-tls" "$WORK/tt-tls"
        CARGO_TARGET_DIR="$WORK/tt-tls-target" cargo build --release --quiet --manifest-path "$WORK/tt-tls/Cargo.toml"
      fi ;;
    node | node-deflate)
      if [[ ! -d "$WORK/node/node_modules" ]]; then
        echo "bench: installing Node ws peer in $WORK" >&2
        rm -rf "$WORK/node" && cp -r "$PEERS_SRC/node" "$WORK/"
        (cd "$WORK/node" && npm ci --no-audit --no-fund --loglevel=error)
      fi ;;
  esac
}

SERVER_PID=""   # what the bench's --server-pid gets: one pid, or a cluster's, comma-separated
SERVER_PIDS=()  # every process start_server started
# A cluster on the server core: redis-server and N nodes sharing $PORT (--reuse-port, so the
# kernel spreads the bench's connections over them), history in Redis. Redis appends
# every write to its AOF without fsync (`appendfsync no`): like pollcast's own history, a
# message survives the crash of any process, not a power loss.
start_cluster() { # NAME N
  local name=$1 n=$2 redis_port=$((PORT + 5000)) i
  rm -rf "$WORK/redis" && mkdir -p "$WORK/redis"
  taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
    --appendonly yes --appendfsync no --loglevel warning >"$WORK/$name.redis.log" 2>&1 &
  SERVER_PIDS+=($!)
  for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for i in $(seq 1 "$n"); do
    taskset -c 0 "$BIN" --listen "127.0.0.1:$PORT" --reuse-port --admin-listen off \
      --redis "redis://127.0.0.1:$redis_port/0" --node-id "node$i" 2>"$WORK/$name.node$i.log" &
    SERVER_PIDS+=($!)
  done
  for _ in $(seq 1 100); do
    [[ "$(grep -l 'ready (both links up' "$WORK/$name".node*.log 2>/dev/null | wc -l)" -eq "$n" ]] && break
    sleep 0.1
  done
  cat "$WORK/$name".node*.log > "$WORK/$name.log"
}

start_server() { # NAME: starts it on $PORT pinned to CPU 0, sets SERVER_PID
  local name=$1
  ulimit -n "$(ulimit -Hn)"
  SERVER_PIDS=()
  case "$name" in
    pollcast-redis) start_cluster "$name" 1 ;;
    pollcast-cluster) start_cluster "$name" 2 ;;
    pollcast) taskset -c 0 "$BIN" --listen "127.0.0.1:$PORT" --admin-listen off --no-history 2>"$WORK/$name.log" & ;;
    pollcast-auth)
      taskset -c 0 "$BIN" --listen "127.0.0.1:$PORT" --admin-listen off --no-history --jwt-secret-file "$WORK/jwt-secret" 2>"$WORK/$name.log" & ;;
    pollcast-history)
      rm -rf "$WORK"/history.db*
      taskset -c 0 "$BIN" --listen "127.0.0.1:$PORT" --admin-listen off --db "$WORK/history.db" 2>"$WORK/$name.log" & ;;
    pollcast-tls)
      taskset -c 0 "$BIN" --listen "127.0.0.1:$PORT" --admin-listen off --no-history --tls-cert "$CERT" --tls-key "$KEY" 2>"$WORK/$name.log" & ;;
    tt) taskset -c 0 "$WORK/tt-target/release/tt-peer" "$PORT" --threads 1 >"$WORK/$name.log" 2>&1 & ;;
    tt-tls) taskset -c 0 "$WORK/tt-tls-target/release/tt-tls-peer" "$PORT" "$CERT" "$KEY" --threads 1 >"$WORK/$name.log" 2>&1 & ;;
    node) (cd "$WORK/node" && exec taskset -c 0 node server.js "$PORT") >"$WORK/$name.log" 2>&1 & ;;
    node-deflate) (cd "$WORK/node" && exec taskset -c 0 node server.js "$PORT" --compress) >"$WORK/$name.log" 2>&1 & ;;
    *) echo "bench: unknown server $name" >&2; exit 2 ;;
  esac
  [[ ${#SERVER_PIDS[@]} -gt 0 ]] || SERVER_PIDS=($!)
  SERVER_PID="$(IFS=,; echo "${SERVER_PIDS[*]}")"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: $name did not start; log:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SERVER_PID=""
  SERVER_PIDS=()
  PORT=$((PORT + 1)) # a fresh port: no TIME_WAIT surprises between runs
}
trap stop_server EXIT

scenario_args() {
  case "$1" in
    fanout100) echo "fanout --receivers 100 --senders 1 --size 64 --rate max --window 256 --duration $DURATION" ;;
    fanout1000) echo "fanout --receivers 1000 --senders 1 --size 64 --rate max --window 256 --duration $DURATION" ;;
    paced1000) echo "fanout --receivers 1000 --senders 1 --size 64 --rate 1000 --duration $DURATION" ;;
    # W=64 keeps what each member may have in flight (10 senders x 64 x 1 KiB) under the
    # server's default 1 MiB queue limit; W=256, the bench's default, relies on kernel
    # socket buffers to absorb the rest, and shows how much batching moves the ratio.
    tenbyten) echo "fanout --receivers 10 --senders 10 --size 1024 --rate max --window 64 --duration $DURATION" ;;
    tenbyten256) echo "fanout --receivers 10 --senders 10 --size 1024 --rate max --window 256 --duration $DURATION" ;;
    idle) echo "idle --connections 10000 --hold 2" ;;
    # Compression (issue 13): 1 KiB of chat-like JSON text, paced so every server is
    # offered the same 100k deliveries/s and CPU per delivery compares like with like;
    # the -z rows offer permessage-deflate, and wire bytes per delivery say what it saved.
    chat100) echo "fanout --receivers 100 --senders 1 --size 1024 --encoding text --payload chat --rate 1000 --duration $DURATION" ;;
    chat100z) echo "$(scenario_args chat100) --deflate" ;;
    chat1000) echo "fanout --receivers 1000 --senders 1 --size 1024 --encoding text --payload chat --rate 100 --duration $DURATION" ;;
    chat1000z) echo "$(scenario_args chat1000) --deflate" ;;
    idlez) echo "idle --connections 10000 --hold 2 --deflate" ;;
    churn) echo "churn --concurrency 32 --duration $DURATION" ;;
  esac
}

# pollcast-auth: a secret, and a token every bench connection presents (?token=).
if [[ " ${SERVERS[*]} " == *" pollcast-auth "* ]]; then
  head -c 48 /dev/urandom | base64 > "$WORK/jwt-secret"
  TOKEN="$("$BIN" token --sub bench --ttl 2h --jwt-secret-file "$WORK/jwt-secret")"
fi

# The TLS servers: one self-signed certificate for 127.0.0.1, made once (the bench does
# not check it: --insecure; CA:FALSE so --ca-file would accept it too).
if [[ " ${SERVERS[*]} " == *-tls\ * && ! -s "$CERT" ]]; then
  mkdir -p "$WORK/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$KEY" -out "$CERT" -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
    2>"$WORK/tls/openssl.log" || { cat "$WORK/tls/openssl.log" >&2; exit 1; }
fi

for server in "${SERVERS[@]}"; do build_peer "$server"; done
[[ " ${SERVERS[*]} " != *" pollcast-redis "* && " ${SERVERS[*]} " != *" pollcast-cluster "* ]] || "$ROOT/scripts/redis.sh" >/dev/null

# Runs are interleaved (each scenario's run 1 on every server, then run 2, ...), so a drift
# of the machine during the benchmark touches every column alike.
for scenario in $SCENARIOS; do
  for run in $(seq 1 "$REPEAT"); do
    for server in "${SERVERS[@]}"; do
      QUERY=""
      [[ "$server" != pollcast-auth ]] || QUERY="?token=$TOKEN"
      SCHEME=ws
      TLS_FLAGS=()
      [[ "$server" != *-tls ]] || { SCHEME=wss; TLS_FLAGS=(--insecure); }
      start_server "$server"
      sleep 0.3
      echo "bench: $server $scenario (run $run of $REPEAT)" >&2
      out="$WORK/$server.$scenario.$run.json"
      # shellcheck disable=SC2046
      taskset -c 1 "$BIN" bench $(scenario_args "$scenario") --url "$SCHEME://127.0.0.1:$PORT/bench$QUERY" \
        "${TLS_FLAGS[@]}" "${BUSY_FLAGS[@]}" --server-pid "$SERVER_PID" --json > "$out" || echo '{"error":"bench failed"}' > "$out"
      stop_server
    done
  done
done

python3 - "$WORK" "$SCENARIOS" "$REPEAT" "${SERVERS[@]}" <<'PY'
import json, os, sys
work, scenarios, repeat, servers = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4:]
KEY = {"idle": "server_anon_kib_per_conn", "idlez": "server_anon_kib_per_conn", "churn": "handshakes_per_sec"}

def load(server, scenario):
    """The median run of the scenario by its headline figure (None if every run failed)."""
    runs = []
    for run in range(1, repeat + 1):
        try:
            r = json.load(open(os.path.join(work, f"{server}.{scenario}.{run}.json")))
        except Exception:
            continue
        if "scenario" in r:
            runs.append(r)
    if not runs:
        return None
    runs.sort(key=lambda r: r[KEY.get(scenario, "deliveries_per_sec")])
    return runs[len(runs) // 2]

def cell(r, scenario):
    if r is None or "error" in r and isinstance(r["error"], str):
        return "failed"
    if scenario in ("idle", "idlez"):
        return f"{r['server_anon_kib_per_conn']:.2f} KiB/conn ({r['held']} held)"
    if scenario == "churn":
        return (f"{r['handshakes_per_sec']/1e3:.1f}k/s, server {r['server_cpu_ns_per_handshake']/1e3:.1f} µs/hs "
                f"({r['server_cpu_share']*100:.0f}% busy), bench {r['bench_cpu_share']*100:.0f}%")
    lat = r["latency_us"]
    lost = f", lost {r['lost']}" if r["lost"] else ""
    wire = f", {r['wire_bytes_per_delivery']:.0f} B/dlv on the wire" if scenario.startswith("chat") else ""
    return (f"{r['deliveries_per_sec']/1e6:.2f}M/s, p99 {lat['p99']/1e3:.1f} ms, p99.9 {lat['p999']/1e3:.1f} ms, server {r['server_cpu_ns_per_delivery']:.0f} ns/dlv "
            f"({r['server_cpu_share']*100:.0f}% busy), bench {r['bench_cpu_share']*100:.0f}%{wire}{lost}")

names = {"fanout100": "fanout R=100 S=1 64 B max (W=256)", "fanout1000": "fanout R=1000 S=1 64 B max (W=256)",
         "paced1000": "fanout R=1000 at 1000 msg/s", "tenbyten": "fanout 10×10 1 KiB max (W=64)",
         "tenbyten256": "fanout 10×10 1 KiB max (W=256)",
         "idle": "idle 10,000 connections (RssAnon)", "churn": "churn, 32 at a time",
         "chat100": "chat R=100 1 KiB at 1000 msg/s, plain", "chat100z": "chat R=100 1 KiB at 1000 msg/s, deflate offered",
         "chat1000": "chat R=1000 1 KiB at 100 msg/s, plain", "chat1000z": "chat R=1000 1 KiB at 100 msg/s, deflate offered",
         "idlez": "idle 10,000 connections, deflate negotiated (RssAnon)"}
print(f"(median of {repeat} runs per cell)")
print()
print("| scenario | " + " | ".join(servers) + " |")
print("|---" * (len(servers) + 1) + "|")
for s in scenarios:
    print(f"| {names.get(s, s)} | " + " | ".join(cell(load(srv, s), s) for srv in servers) + " |")

# What history costs (issue 15's goal: within 10% of deliveries/s, p99.9 at most 2x).
if "pollcast" in servers and "pollcast-history" in servers:
    rows = []
    for s in scenarios:
        off, on = load("pollcast", s), load("pollcast-history", s)
        if s in ("idle", "idlez", "churn") or not off or not on or "latency_us" not in off or "latency_us" not in on:
            continue
        ratio = on["deliveries_per_sec"] / off["deliveries_per_sec"] - 1
        tail = on["latency_us"]["p999"] / max(off["latency_us"]["p999"], 1)
        rows.append(f"| {names.get(s, s)} | {ratio*100:+.1f}% | {tail:.2f}× |")
    if rows:
        print()
        print("| history on against off | deliveries/s | p99.9 |")
        print("|---|---|---|")
        print("\n".join(rows))
PY
echo "bench: JSON results in $WORK" >&2
