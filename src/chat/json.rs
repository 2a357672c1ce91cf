//! The `pollcast.v1` codec: JSON envelopes in text frames.
//!
//! Owns: the shape of every client → server request and server → client envelope, and
//! the mapping of malformed input to stable error codes. Must not touch: rooms, users,
//! sockets (`Chat` decides what a request does).
//!
//! Every envelope is an object with a `"type"`. A request may carry `"ref"` (any JSON
//! value); an `error` about that request echoes it (or the request's `cid`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reply::{DmView, FileView, Reply};

/// A client → server request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Join a room. `since`: the last message id the client saw there (recovery after
    /// a reconnect); `history`: how many past messages to replay. Both serve history.
    Join {
        room: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        history: Option<usize>,
    },
    /// Leave a room.
    Leave { room: String },
    /// Page back through a room's history: up to `limit` messages older than `before`.
    History {
        room: String,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Say something in a room the client has joined.
    Send {
        room: String,
        text: String,
        #[serde(default)]
        cid: Option<Value>,
    },
    /// A direct message to one user.
    Dm {
        to: String,
        text: String,
        #[serde(default)]
        cid: Option<Value>,
    },
    /// Who is in a room.
    Who { room: String },
    /// Every room with its member count.
    Rooms {},
    /// Change display name.
    Nick { name: String },
    /// Server counters.
    Stats {},
    /// A fresh token for the same user, before the current one expires.
    Refresh { token: String },
    /// Share a file: this header, then its bytes as binary frames (`chat/files.rs`).
    File(FileHeader),
    /// The bytes of a shared file: a `file_data` envelope, then one binary frame.
    Fetch { id: u64 },
}

/// A `file` request: where the file goes (`room` or `to`, one of them), what it is, and
/// how many bytes follow it in binary frames.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeader {
    #[serde(default)]
    pub room: Option<String>, // a room the sender is in
    #[serde(default)]
    pub to: Option<String>, // or a user, for a direct file
    pub name: String, // shown to people; data, never a path (`files::check_name`)
    pub mime: String, // `type/subtype` (`files::check_mime`)
    pub size: u64,    // bytes that follow, exactly
    #[serde(default)]
    pub cid: Option<Value>, // the sender's id for the request, echoed in `ack` / `error`
}

/// The request types, for telling `unknown_type` from `bad_field`.
const TYPES: [&str; 12] =
    ["join", "leave", "history", "send", "dm", "who", "rooms", "nick", "stats", "refresh", "file", "fetch"];

/// A request that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub code: &'static str, // bad_json | unknown_type | bad_field
    pub message: String,    // what was wrong, for people
}

/// Parses one text frame. Returns the request's `ref` (or `cid`), for error replies,
/// alongside the request or what was wrong with it.
pub fn parse(text: &str) -> (Option<Value>, Result<Request, BadRequest>) {
    let mut value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return (None, Err(BadRequest { code: "bad_json", message: format!("not JSON: {e}") })),
    };
    let Value::Object(fields) = &mut value else {
        return (None, Err(BadRequest { code: "bad_json", message: "expected a JSON object".into() }));
    };
    // `ref` belongs to every request and is echoed, never interpreted: take it out here.
    let reference = fields.remove("ref").or_else(|| fields.get("cid").cloned());
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return (reference, Err(BadRequest { code: "bad_field", message: "type must be a string".into() })),
        None => return (reference, Err(BadRequest { code: "unknown_type", message: "missing type".into() })),
    };
    if !TYPES.contains(&kind.as_str()) {
        let message = format!("unknown type '{kind}'");
        return (reference, Err(BadRequest { code: "unknown_type", message }));
    }
    let request = Request::deserialize(value).map_err(|e| BadRequest { code: "bad_field", message: e.to_string() });
    (reference, request)
}

/// A room and its member count, in a `rooms` reply.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoomCount<'a> {
    pub room: &'a str,
    pub members: usize,
}

/// A server → client envelope. Serialised once per message, whatever the fan-out.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Envelope<'a> {
    /// First envelope on a connection: the name the user has, and its rooms.
    Welcome { you: &'a str, rooms: Vec<&'a str> },
    /// The user is now in `room`, with these members (itself included).
    Joined { room: &'a str, members: Vec<&'a str> },
    /// The user left `room`.
    Left { room: &'a str },
    /// A room message.
    Message { id: u64, room: &'a str, from: &'a str, text: &'a str, ts: u64 },
    /// A direct message (both sides get it).
    Dm { id: u64, from: &'a str, to: &'a str, text: &'a str, ts: u64 },
    /// Someone joined, left or was renamed in a room the user is in.
    Presence {
        room: &'a str,
        user: &'a str,
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        old: Option<&'a str>,
    },
    /// A `send` or `dm` was accepted as message `id`.
    Ack { cid: &'a Value, id: u64 },
    /// The members of a room.
    Who { room: &'a str, members: Vec<&'a str> },
    /// Every room with its member count.
    Rooms { rooms: Vec<RoomCount<'a>> },
    /// The user's name changed.
    Nick { old: &'a str, you: &'a str },
    /// Server counters.
    Stats { users: usize, rooms: usize, messages: u64 },
    /// A `refresh` was taken: the connection now lives until `exp` (null: no expiry).
    Refreshed { exp: Option<u64> },
    /// Part of a room's history, oldest first. `more`: older (or, after `since`, newer)
    /// messages exist beyond this page; `recovered` (answer to `join` with `since`):
    /// false when retention already dropped some of the messages after `since`.
    History {
        room: &'a str,
        messages: Vec<Envelope<'a>>,
        more: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// A shared file (no bytes: `fetch` asks for them). `room` for a room's file, `to`
    /// for a direct one.
    File {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<&'a str>,
        from: &'a str,
        name: &'a str,
        mime: &'a str,
        size: u64,
        ts: u64,
    },
    /// The answer to a `fetch`: one binary frame with the file's bytes follows.
    #[serde(rename = "file_data")]
    FileData { id: u64, name: &'a str, mime: &'a str, size: u64 },
    /// A request failed; the connection stays open.
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref")]
        reference: &'a Value,
    },
}

impl<'a> Envelope<'a> {
    /// The `file` envelope of a shared file.
    pub fn file(view: &FileView<'a>) -> Envelope<'a> {
        let FileView { id, room, to, from, name, mime, size, ts } = *view;
        Envelope::File { id, room, to, from, name, mime, size, ts }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every key is a string, no map has non-string keys.
        serde_json::to_string(self).expect("envelopes always serialise")
    }
}

/// Spells a reply as its envelope (at most one; a JSON client hears nothing of `Help`).
pub fn render(reply: &Reply, mut emit: impl FnMut(&str)) {
    let dm = |dm: &DmView| Envelope::Dm { id: dm.id, from: dm.from, to: dm.to, text: dm.text, ts: dm.ts }.to_json();
    let text = match reply {
        Reply::Welcome { you, rooms } => Envelope::Welcome { you, rooms: rooms.clone() }.to_json(),
        Reply::Joined { room, members } => Envelope::Joined { room, members: members.clone() }.to_json(),
        Reply::Left { room } => Envelope::Left { room }.to_json(),
        Reply::Who { room, members } => Envelope::Who { room, members: members.clone() }.to_json(),
        Reply::Rooms { rooms } => Envelope::Rooms { rooms: rooms.clone() }.to_json(),
        Reply::Nick { old, you } => Envelope::Nick { old, you }.to_json(),
        Reply::Stats { users, rooms, messages } => {
            Envelope::Stats { users: *users, rooms: *rooms, messages: *messages }.to_json()
        }
        Reply::Dm(view) => dm(view),
        Reply::Refreshed { exp } => Envelope::Refreshed { exp: *exp }.to_json(),
        Reply::File(view) => Envelope::file(view).to_json(),
        Reply::DmSent { to_self: true, .. } | Reply::Help => return,
        Reply::DmSent { dm: view, to_self: false } => dm(view),
        Reply::Failure { code, message, reference } => {
            Envelope::Error { code, message, reference: reference.unwrap_or(&Value::Null) }.to_json()
        }
    };
    emit(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse(text).1.unwrap_err().code
    }

    #[test]
    fn every_request() {
        let cases = [
            (r#"{"type":"join","room":"a"}"#, Request::Join { room: "a".into(), since: None, history: None }),
            (r#"{"type":"leave","room":"a"}"#, Request::Leave { room: "a".into() }),
            (
                r#"{"type":"send","room":"a","text":"hi","cid":7}"#,
                Request::Send { room: "a".into(), text: "hi".into(), cid: Some(7.into()) },
            ),
            (
                r#"{"type":"dm","to":"bo","text":"psst"}"#,
                Request::Dm { to: "bo".into(), text: "psst".into(), cid: None },
            ),
            (r#"{"type":"who","room":"a"}"#, Request::Who { room: "a".into() }),
            (r#"{"type":"rooms"}"#, Request::Rooms {}),
            (
                r#"{"type":"history","room":"a","before":9,"limit":5}"#,
                Request::History { room: "a".into(), before: Some(9), limit: Some(5) },
            ),
            (r#"{"type":"nick","name":"x"}"#, Request::Nick { name: "x".into() }),
            (r#"{"type":"stats","ref":"r1"}"#, Request::Stats {}),
            (
                r#"{"type":"file","room":"a","name":"x.png","mime":"image/png","size":3,"cid":"c"}"#,
                Request::File(FileHeader {
                    room: Some("a".into()),
                    to: None,
                    name: "x.png".into(),
                    mime: "image/png".into(),
                    size: 3,
                    cid: Some("c".into()),
                }),
            ),
            (r#"{"type":"fetch","id":7,"ref":"f"}"#, Request::Fetch { id: 7 }),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).1.unwrap(), want, "{text}");
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("{"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_json");
        assert_eq!(code(r#"{"room":"a"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"shout"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":7}"#), "bad_field");
        assert_eq!(code(r#"{"type":"join"}"#), "bad_field");
        assert_eq!(code(r#"{"type":"join","room":5}"#), "bad_field");
        assert_eq!(code(r#"{"type":"send","room":"a"}"#), "bad_field");
        assert_eq!(code(r#"{"type":"rooms","extra":1}"#), "bad_field");
        assert_eq!(code(r#"{"type":"file","room":"a","name":"x","mime":"a/b","size":-1}"#), "bad_field");
        assert_eq!(code(r#"{"type":"file","room":"a","name":"x","mime":"a/b"}"#), "bad_field");
        assert_eq!(code(r#"{"type":"file","room":"a","name":"x","mime":"a/b","size":1,"path":"/"}"#), "bad_field");
        assert_eq!(code(r#"{"type":"fetch","id":"7"}"#), "bad_field");
    }

    #[test]
    fn ref_falls_back_to_cid() {
        assert_eq!(parse(r#"{"type":"nope","ref":"r"}"#).0, Some("r".into()));
        assert_eq!(parse(r#"{"type":"send","cid":3}"#).0, Some(3.into()));
        assert_eq!(parse("{").0, None);
    }

    #[test]
    fn envelopes() {
        let message = Envelope::Message { id: 1, room: "a", from: "ann", text: "hi \"you\"", ts: 5 };
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","id":1,"room":"a","from":"ann","text":"hi \"you\"","ts":5}"#
        );
        let presence = Envelope::Presence { room: "a", user: "bo", event: "join", old: None };
        assert_eq!(presence.to_json(), r#"{"type":"presence","room":"a","user":"bo","event":"join"}"#);
        let error = Envelope::Error { code: "not_member", message: "m", reference: &Value::Null };
        assert_eq!(error.to_json(), r#"{"type":"error","code":"not_member","message":"m","ref":null}"#);
        let view = FileView {
            id: 3,
            room: Some("a"),
            to: None,
            from: "ann",
            name: "<b>.png",
            mime: "image/png",
            size: 9,
            ts: 5,
        };
        assert_eq!(
            Envelope::file(&view).to_json(),
            r#"{"type":"file","id":3,"room":"a","from":"ann","name":"<b>.png","mime":"image/png","size":9,"ts":5}"#
        );
        let data = Envelope::FileData { id: 3, name: "x", mime: "a/b", size: 9 };
        assert_eq!(data.to_json(), r#"{"type":"file_data","id":3,"name":"x","mime":"a/b","size":9}"#);
    }
}
