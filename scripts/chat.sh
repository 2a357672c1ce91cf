#!/usr/bin/env bash
# Interactive chat in a room: every line you type goes to the room, every line from the
# others is printed. Lines starting with / are commands (/help lists them).
# usage: scripts/chat.sh [ROOM] [NAME] [SERVER]     e.g. scripts/chat.sh games ann
#        SERVER defaults to 127.0.0.1:8080
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage_if_help "$@"
ROOM="${1:-lobby}"
NAME="${2:-}"
SERVER="${3:-127.0.0.1:8080}"
need_websocat
URL="ws://$SERVER/$ROOM"
[[ -n "$NAME" ]] && URL="$URL?name=$NAME"
echo "chat.sh: $URL (Ctrl-D or Ctrl-C to leave, /help for commands)" >&2
# -E (--exit-on-eof): end when the server closes. Without it websocat notices a closed
# connection only when the next line is typed, and says nothing until then.
exec websocat -E "$URL"
