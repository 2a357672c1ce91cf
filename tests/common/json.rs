//! Chat clients for the integration tests: `JsonClient` speaks `pollcast.v1` envelopes,
//! `TextClient` is a raw (no subprotocol) client typing lines as websocat would.
//!
//! Both have a `sync()` barrier: a request only this client can have sent, whose answer
//! is unique (an error naming a one-off token). Replies to one connection keep their
//! order, so everything the server queued for this client before it handled the barrier
//! comes back first, and nothing is lost to a read timeout.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

use super::{raw_connect, Server};

/// The subprotocol of the JSON codec.
pub const SUBPROTOCOL: &str = "pollcast.v1";

/// Source of one-off barrier tokens.
static SYNC: AtomicU64 = AtomicU64::new(0);

fn token() -> String {
    format!("sync-{}", SYNC.fetch_add(1, Ordering::Relaxed))
}

// ----- JSON ----------------------------------------------------------------------------

/// A `pollcast.v1` client over tungstenite.
pub struct JsonClient {
    pub ws: WebSocket<TcpStream>, // the connection, with the harness's timeouts
    pub name: String,             // the name the server gave (from `welcome`), once known
}

impl JsonClient {
    /// Connects to `path` (e.g. `/room?name=ann&history=5`) offering `pollcast.v1`, and
    /// checks the server chose it. Reads nothing after the 101.
    pub fn open(server: &Server, path: &str) -> JsonClient {
        let mut request = server.url(path).into_client_request().expect("request");
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        let (ws, response) = match tungstenite::client(request, raw_connect(server)) {
            Ok(done) => done,
            Err(e) => panic!("pollcast.v1 handshake to {path} failed: {e}"),
        };
        let chosen = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
        assert_eq!(chosen, Some(SUBPROTOCOL), "server did not choose pollcast.v1 for {path}");
        JsonClient { ws, name: String::new() }
    }

    /// Connects as `name` to `room` and reads `welcome` and `joined` (nothing after:
    /// with history on, a `history` envelope follows).
    pub fn join(server: &Server, room: &str, name: &str) -> JsonClient {
        let mut client = JsonClient::open(server, &format!("/{room}?name={name}"));
        client.expect_welcome(room);
        assert_eq!(client.name, name, "{name} was given another name");
        let joined = client.expect("joined");
        assert_eq!(joined["room"], room);
        client
    }

    /// Reads `welcome` for `room` and learns the client's name from it.
    pub fn expect_welcome(&mut self, room: &str) -> Value {
        let welcome = self.expect("welcome");
        assert_eq!(welcome["rooms"], json!([room]), "{welcome}");
        self.name = welcome["you"].as_str().expect("welcome.you").to_owned();
        welcome
    }

    /// Sends one envelope.
    pub fn send(&mut self, envelope: Value) {
        self.send_text(&envelope.to_string());
    }

    /// Sends a text frame as is (for malformed input).
    pub fn send_text(&mut self, text: &str) {
        if let Err(e) = self.ws.send(Message::text(text)) {
            panic!("{}: send failed: {e}", self.name);
        }
    }

    /// `send {room, text, cid}`
    pub fn say(&mut self, room: &str, text: &str, cid: impl Into<Value>) {
        self.send(json!({"type": "send", "room": room, "text": text, "cid": cid.into()}));
    }

    /// The next envelope, answering pings on the way; `None` when the connection ends
    /// (a Close frame, EOF or reset).
    pub fn try_recv(&mut self) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}")))
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => return None,
                Ok(other) => panic!("{}: pollcast.v1 sends JSON text only, got {other:?}", self.name),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return None
                }
                Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    return None
                }
                Err(e) => panic!("{}: read failed: {e}", self.name),
            }
        }
    }

    /// The next envelope.
    pub fn recv(&mut self) -> Value {
        match self.try_recv() {
            Some(envelope) => envelope,
            None => panic!("{}: connection ended while waiting for an envelope", self.name),
        }
    }

    /// The next envelope, which must be of type `kind`.
    pub fn expect(&mut self, kind: &str) -> Value {
        let envelope = self.recv();
        assert_eq!(envelope["type"], kind, "{}: expected {kind}, got {envelope}", self.name);
        envelope
    }

    /// Reads until an envelope matching `wanted`, returning it; the ones skipped on the
    /// way are returned too.
    pub fn wait_for(&mut self, mut wanted: impl FnMut(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let envelope = self.recv();
            if wanted(&envelope) {
                return (envelope, skipped);
            }
            skipped.push(envelope);
        }
    }

    /// The barrier: everything the server queued for this client before it handled the
    /// barrier request, in order.
    pub fn sync(&mut self) -> Vec<Value> {
        let token = token();
        self.send(json!({"type": token, "ref": token}));
        let (reply, before) = self.wait_for(|e| e["type"] == "error" && e["ref"] == token.as_str());
        assert_eq!(reply["code"], "unknown_type", "{reply}");
        before
    }

    /// Asserts nothing but `presence` envelopes are waiting (a barrier, so no guessing).
    pub fn expect_quiet(&mut self) {
        let waiting: Vec<Value> = self.sync().into_iter().filter(|e| e["type"] != "presence").collect();
        assert!(waiting.is_empty(), "{}: unexpected envelopes: {waiting:?}", self.name);
    }

    /// Members of `room` by a `who` request.
    pub fn who(&mut self, room: &str) -> Vec<String> {
        self.send(json!({"type": "who", "room": room}));
        let (reply, _) = self.wait_for(|e| e["type"] == "who");
        assert_eq!(reply["room"], room, "{reply}");
        members(&reply["members"])
    }

    /// A normal close: sends Close and reads until the server's answer.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        while self.try_recv().is_some() {}
    }
}

/// A JSON array of names as strings.
pub fn members(list: &Value) -> Vec<String> {
    let list = list.as_array().unwrap_or_else(|| panic!("expected a list of names, got {list}"));
    list.iter().map(|n| n.as_str().expect("a name").to_owned()).collect()
}

/// `message` envelopes' (id, from, text).
pub fn messages(envelopes: &[Value]) -> Vec<(u64, String, String)> {
    envelopes.iter().filter(|e| e["type"] == "message").map(message_fields).collect()
}

/// A `message` envelope's (id, from, text).
pub fn message_fields(m: &Value) -> (u64, String, String) {
    (
        m["id"].as_u64().unwrap_or_else(|| panic!("no id in {m}")),
        m["from"].as_str().unwrap_or_else(|| panic!("no from in {m}")).to_owned(),
        m["text"].as_str().unwrap_or_else(|| panic!("no text in {m}")).to_owned(),
    )
}

// ----- raw text lines ------------------------------------------------------------------

/// A raw client (no subprotocol): data frames relayed verbatim, `/commands` answered
/// with single tagged lines.
pub struct TextClient {
    pub ws: WebSocket<TcpStream>,
}

impl TextClient {
    /// Connects to `path` (e.g. `/room?name=bo`) without a subprotocol.
    pub fn open(server: &Server, path: &str) -> TextClient {
        match tungstenite::client(server.url(path), raw_connect(server)) {
            Ok((ws, response)) => {
                assert!(response.headers().get("Sec-WebSocket-Protocol").is_none(), "no subprotocol was offered");
                TextClient { ws }
            }
            Err(e) => panic!("raw handshake to {path} failed: {e}"),
        }
    }

    /// Sends a text message (a line, a command).
    pub fn type_line(&mut self, line: &str) {
        self.ws.send(Message::text(line)).unwrap_or_else(|e| panic!("send {line:?}: {e}"));
    }

    /// The next data message; text as a string, binary marked `Err`.
    pub fn recv_data(&mut self) -> Result<String, Vec<u8>> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return Ok(text),
                Ok(Message::Binary(bytes)) => return Err(bytes),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("raw client: expected data, got {other:?}"),
                Err(e) => panic!("raw client: read failed: {e}"),
            }
        }
    }

    /// The next text message.
    pub fn recv(&mut self) -> String {
        match self.recv_data() {
            Ok(text) => text,
            Err(bytes) => panic!("raw client: expected text, got binary {bytes:?}"),
        }
    }

    /// Sends `line` and returns the next text message (the reply to a command).
    pub fn ask(&mut self, line: &str) -> String {
        self.type_line(line);
        self.recv()
    }

    /// The barrier: every text message queued for this client before the server handled
    /// a one-off unknown command, in order.
    pub fn sync(&mut self) -> Vec<String> {
        let token = token();
        self.type_line(&format!("/{token}\n"));
        let mut before = Vec::new();
        loop {
            let text = self.recv();
            if text.starts_with(&format!("err unknown_command unknown command /{token} ")) {
                return before;
            }
            before.push(text);
        }
    }
}

// ----- temporary directories -----------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pollcast-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `DIR/name` as a string, for a command line.
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("UTF-8 temp path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
