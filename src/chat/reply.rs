//! What the chat tells one connection, in the chat's own words. The actions decide
//! *what* to say; `json.rs` and `text.rs` each spell every reply for their codec, so no
//! action branches on the codec.
//!
//! Owns: the reply values. Must not touch: framing, sockets, users.

use serde_json::Value;

use super::json::RoomCount;

/// A direct message, as both of its sides are told of it.
#[derive(Debug, Clone, Copy)]
pub struct DmView<'a> {
    pub id: u64,       // the message id
    pub from: &'a str, // sender's name
    pub to: &'a str,   // recipient's name
    pub text: &'a str, // the text
    pub ts: u64,       // ms since the Unix epoch
}

/// A shared file, as the people it is for are told of it (never its bytes).
#[derive(Debug, Clone, Copy)]
pub struct FileView<'a> {
    pub id: u64,               // the message id (what `fetch` asks for)
    pub room: Option<&'a str>, // a room's file
    pub to: Option<&'a str>,   // or a direct file's recipient
    pub from: &'a str,         // uploader's name
    pub name: &'a str,         // the uploader's name for it (data, never a path)
    pub mime: &'a str,         // `type/subtype`, as given
    pub size: u64,             // bytes
    pub ts: u64,               // ms since the Unix epoch
}

/// One reply to one connection.
#[derive(Debug)]
pub enum Reply<'a> {
    /// First words on a connection: the user's name and rooms (JSON only).
    Welcome { you: &'a str, rooms: Vec<&'a str> },
    /// The user is in `room` now (or already was), with these members.
    Joined { room: &'a str, members: Vec<&'a str> },
    /// The user left `room`.
    Left { room: &'a str },
    /// The members of a room.
    Who { room: &'a str, members: Vec<&'a str> },
    /// Every room with its member count.
    Rooms { rooms: Vec<RoomCount<'a>> },
    /// The user is now called `you` (it was `old`).
    Nick { old: &'a str, you: &'a str },
    /// Server counters.
    Stats { users: usize, rooms: usize, messages: u64 },
    /// A direct message, to its recipient.
    Dm(DmView<'a>),
    /// A direct message, to its sender: JSON clients get their copy (unless they wrote to
    /// themselves, when the recipient's copy is theirs), raw clients `ok msg`.
    DmSent { dm: DmView<'a>, to_self: bool },
    /// The command list (raw clients; JSON has no command for it).
    Help,
    /// A direct file, to each connection of its two users.
    File(FileView<'a>),
    /// A fresh token was taken; it expires at `exp` (Unix seconds), if ever.
    Refreshed { exp: Option<u64> },
    /// A request failed; `reference` is the request's `ref` (JSON only).
    Failure { code: &'a str, message: &'a str, reference: Option<&'a Value> },
}

/// A failed request, before it is spelled: a stable code and a message for people.
#[derive(Debug)]
pub struct Failure {
    pub code: &'static str, // e.g. not_member, too_large
    pub message: String,    // what was wrong
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }
}

impl From<super::names::NameError> for Failure {
    fn from(e: super::names::NameError) -> Failure {
        Failure::new(e.code(), e.message())
    }
}
