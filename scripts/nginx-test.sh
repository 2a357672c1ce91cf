#!/usr/bin/env bash
# End-to-end test of the deploy recipe: nginx, configured from deploy/nginx.conf as shipped
# (only ports, certificate paths and the upstream address rewritten), terminates TLS with a
# self-signed certificate and proxies to the release pollcast, both on free 127.0.0.1 ports.
# Through wss:// two clients of one room exchange a line both ways; /healthz answers over
# https, /metrics is refused, http redirects to https; SIGTERM to pollcast reaches a
# connected wss client as Close 1001. Also `systemd-analyze verify` on
# deploy/pollcast.service when systemd-analyze exists.
# Installs Debian's nginx and openssl (apt-get) and websocat (cargo) if missing; writes
# nothing outside its temp dir otherwise; every wait has a timeout; stops what it started
# by PID.
# usage: scripts/nginx-test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh
usage_if_help "$@"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH:/usr/sbin:/sbin"

# --- what it needs --------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then
  echo "nginx-test: installing nginx and openssl with apt-get..." >&2
  # Debian's postinst would start a system nginx on port 80: a policy-rc.d that says 101
  # (as container images ship) keeps it from doing so.
  made_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx openssl >/dev/null
  [[ -n "$made_policy" ]] && rm -f /usr/sbin/policy-rc.d
fi
scripts/install-websocat.sh >/dev/null
cargo build --release --quiet

with_cleanup
chmod 755 "$DIR" # nginx's workers run as nobody; the private key itself stays 0600

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); echo "nginx-test: ok: $1"; }
fail() { failed=$((failed + 1)); echo "nginx-test: FAILED: $1" >&2; }
# expect WHAT GOT WANT
expect() { if [[ "$2" == "$3" ]]; then ok "$1"; else fail "$1: got '$2', wanted '$3'"; fi; }
# Waits up to $1 tenths of a second for the command after it to succeed.
wait_for() {
  local tenths=$1
  shift
  for _ in $(seq 1 "$tenths"); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
exited() { ! kill -0 "$1" 2>/dev/null; }
# Two distinct free loopback ports (both held while the kernel picks them).
free_ports() {
  python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))'
}

# --- the unit file --------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # A copy whose ExecStart is the binary just built (the shipped path is
  # /usr/local/bin/pollcast, which verify would require to exist).
  sed "s|^ExecStart=/usr/local/bin/pollcast|ExecStart=$PWD/target/release/pollcast|" \
    deploy/pollcast.service >"$DIR/pollcast.service"
  if systemd-analyze verify "$DIR/pollcast.service" 2>"$DIR/verify.txt" && [[ ! -s "$DIR/verify.txt" ]]; then
    ok "systemd-analyze verify deploy/pollcast.service"
  else
    fail "systemd-analyze verify deploy/pollcast.service: $(cat "$DIR/verify.txt")"
  fi
else
  skipped=$((skipped + 1))
  echo "nginx-test: skipped: systemd-analyze verify (no systemd-analyze on this machine)"
fi

# --- pollcast, a certificate, nginx ------------------------------------------------------
target/release/pollcast --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --no-history 2>"$DIR/pollcast.log" &
POLLCAST=$!
PIDS+=("$POLLCAST")
ADDR="$(listening_addr "$DIR/pollcast.log" "$POLLCAST")"
ADMIN="$(admin_addr "$DIR/pollcast.log" "$POLLCAST")"

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$DIR/privkey.pem" -out "$DIR/fullchain.pem" 2>/dev/null
chmod 600 "$DIR/privkey.pem"

read -r TLS_PORT HTTP_PORT < <(free_ports)
sed -e "s|^\( *\)listen 443 ssl;|\1listen 127.0.0.1:$TLS_PORT ssl;|" \
  -e "s|^\( *\)listen 80;|\1listen 127.0.0.1:$HTTP_PORT;|" \
  -e '/^ *listen \[::\]/d' \
  -e "s|/etc/letsencrypt/live/chat.example.com/|$DIR/|" \
  -e "s|http://127\.0\.0\.1:8080;|http://$ADDR;|" \
  deploy/nginx.conf >"$DIR/site.conf"
# Every rewrite must have matched: otherwise the test would not be testing the shipped file.
for want in "listen 127.0.0.1:$TLS_PORT ssl;" "listen 127.0.0.1:$HTTP_PORT;" "$DIR/fullchain.pem" "$DIR/privkey.pem" "http://$ADDR;"; do
  grep -qF -- "$want" "$DIR/site.conf" || { echo "nginx-test: deploy/nginx.conf no longer has what the test rewrites into: $want" >&2; exit 1; }
done
if grep -v '^ *#' "$DIR/site.conf" | grep -qE 'letsencrypt|:8080|listen (80|443)'; then
  echo "nginx-test: deploy/nginx.conf has a listen, certificate or upstream the test did not rewrite" >&2
  exit 1
fi
cat >"$DIR/nginx.conf" <<EOF
worker_processes 1;
events { worker_connections 64; }
http {
    access_log $DIR/access.log;
    client_body_temp_path $DIR/client_body;
    proxy_temp_path $DIR/proxy;
    fastcgi_temp_path $DIR/fastcgi;
    uwsgi_temp_path $DIR/uwsgi;
    scgi_temp_path $DIR/scgi;
    include $DIR/site.conf;
}
EOF
NGINX_ARGS=(-p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" -g "daemon off; pid $DIR/nginx.pid; error_log $DIR/error.log;")
if nginx -t -q "${NGINX_ARGS[@]}" 2>"$DIR/nginx-t.txt"; then
  ok "nginx -t accepts deploy/nginx.conf"
else
  fail "nginx -t: $(cat "$DIR/nginx-t.txt")"
  echo "nginx-test: $passed passed, $failed failed"
  exit 1
fi
nginx "${NGINX_ARGS[@]}" &
NGINX=$!
PIDS+=("$NGINX")
HTTPS="https://127.0.0.1:$TLS_PORT"
WSS="wss://127.0.0.1:$TLS_PORT"
healthz() { [[ "$(curl -sk --max-time 2 "$HTTPS/healthz")" == ok* ]]; }
if ! wait_for 100 healthz; then
  echo "nginx-test: nginx did not serve $HTTPS/healthz within 10 s:" >&2
  cat "$DIR/error.log" >&2
  exit 1
fi

# --- (b) plain HTTP through the proxy ------------------------------------------------------
ok "GET $HTTPS/healthz through nginx answers ok"
expect "GET /metrics through nginx is refused" \
  "$(curl -sk --max-time 5 -o /dev/null -w '%{http_code}' "$HTTPS/metrics")" 403
expect "http:// redirects to https://" \
  "$(curl -s --max-time 5 -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$HTTP_PORT/room?x=1")" \
  "301 https://127.0.0.1/room?x=1"
expect "http:// serves certbot's challenges from the webroot, not a redirect" \
  "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/.well-known/acme-challenge/none")" 404
curl -sk --max-time 5 -o "$DIR/page.html" "$HTTPS/" || true
expect "GET / serves the chat page over https" "$(grep -qi '<html' "$DIR/page.html" && echo html || echo other)" html

# --- (a) two wss clients in one room ----------------------------------------------------------
upgrades() { curl -s --max-time 2 "http://$ADMIN/metrics" | awk '$1 == "pollcast_upgrades_total" {print $2}'; }
upgrades_at_least() { [[ "$(upgrades)" -ge "$1" ]]; }
has_line() { grep -qxF -- "$2" "$1" 2>/dev/null; }
before="$(upgrades)"
mkfifo "$DIR/ann.in" "$DIR/bob.in"
exec 3<>"$DIR/ann.in" 4<>"$DIR/bob.in" # hold the FIFOs open: the clients read them as stdin
timeout 30 websocat -k -t "$WSS/deploytest?name=ann" <"$DIR/ann.in" >"$DIR/ann.out" 2>"$DIR/ann.err" &
PIDS+=($!)
timeout 30 websocat -k -t "$WSS/deploytest?name=bob" <"$DIR/bob.in" >"$DIR/bob.out" 2>"$DIR/bob.err" &
PIDS+=($!)
if wait_for 100 upgrades_at_least $((before + 2)); then
  echo "hello bob, ann here over wss" >&3
  echo "hi ann, bob answering over wss" >&4
  if wait_for 100 has_line "$DIR/bob.out" "hello bob, ann here over wss" &&
    wait_for 100 has_line "$DIR/ann.out" "hi ann, bob answering over wss"; then
    ok "two wss clients in one room exchange a line both ways"
  else
    fail "wss exchange: ann got '$(cat "$DIR/ann.out")', bob got '$(cat "$DIR/bob.out")' $(cat "$DIR/ann.err" "$DIR/bob.err")"
  fi
else
  fail "the two wss clients did not both connect within 10 s: $(cat "$DIR/ann.err" "$DIR/bob.err")"
fi
exec 3>&- 4>&- # their stdin ends: they close and exit

# --- (c) graceful shutdown seen through the proxy -----------------------------------------
# websocat prints no close code, so a small client (Python's standard library only) waits
# for the server's Close frame and prints its code.
cat >"$DIR/close-code.py" <<'EOF'
import base64, os, socket, ssl, struct, sys
host, port, path, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the test's self-signed certificate
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=15), server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
buf = b""
def need(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection ended without a Close frame")
        buf += chunk
while b"\r\n\r\n" not in buf:
    need(len(buf) + 1)
head, buf = buf.split(b"\r\n\r\n", 1)
if head.split(b"\r\n")[0].split(b" ")[1:2] != [b"101"]:
    sys.exit(f"handshake refused: {head.splitlines()[0]!r}")
open(ready, "w").close()
def send(opcode, payload):  # client frames are masked
    mask = os.urandom(4)
    s.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
for _ in range(1000):
    need(2)
    opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
    at = 2
    if n == 126:
        need(4); n = struct.unpack(">H", buf[2:4])[0]; at = 4
    elif n == 127:
        need(10); n = struct.unpack(">Q", buf[2:10])[0]; at = 10
    need(at + n)
    payload, buf = buf[at:at + n], buf[at + n:]
    if opcode == 0x9:
        send(0xA, payload)
    elif opcode == 0x8:
        print(struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else "none")
        send(0x8, payload[:2])
        sys.exit(0)
sys.exit("no Close frame in 1000 frames")
EOF
timeout 30 python3 "$DIR/close-code.py" 127.0.0.1 "$TLS_PORT" "/deploytest?name=cal" "$DIR/cal.ready" \
  >"$DIR/cal.out" 2>"$DIR/cal.err" &
CAL=$!
PIDS+=("$CAL")
if wait_for 100 test -e "$DIR/cal.ready"; then
  kill -TERM "$POLLCAST"
  wait "$CAL" 2>/dev/null || true
  expect "SIGTERM to pollcast: the wss client's close code through nginx" \
    "$(cat "$DIR/cal.out" "$DIR/cal.err")" 1001
  # pollcast exits by itself within --shutdown-timeout (2 s); allow 10.
  if wait_for 100 exited "$POLLCAST"; then
    ok "pollcast exited after SIGTERM"
  else
    fail "pollcast still running 10 s after SIGTERM"
  fi
else
  fail "the close-code client did not connect: $(cat "$DIR/cal.err")"
fi

if [[ "$skipped" -gt 0 ]]; then
  echo "nginx-test: $passed passed, $failed failed, $skipped skipped"
else
  echo "nginx-test: $passed passed, $failed failed"
fi
[[ "$failed" -eq 0 ]]
