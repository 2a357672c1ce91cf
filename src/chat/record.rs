//! The chat's words for history: what a kept message is, and which part of a room's
//! history a client asked for. The chat fills them in; the shell hands them to whichever
//! store is configured (`store::Store`), which keeps and reads them back in these terms.
//!
//! Owns: the vocabulary only. Must not touch: any store, sockets, codecs.

/// The pseudo-room direct messages are kept under: not a valid room name, so no client
/// can join it or read it as a room.
pub const DM_ROOM: &str = "@dm";

/// One relayed message, as history keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub id: u64,                // server-wide, strictly increasing, survives restarts
    pub room: String,           // the room, or DM_ROOM for a direct message
    pub from: String,           // sender's display name at the time
    pub to: Option<String>,     // recipient of a direct message
    pub binary: bool,           // opcode: binary (true) or text; a file is binary
    pub body: Vec<u8>,          // the message as relayed; a file's bytes (empty when read without them)
    pub ts: u64,                // ms since the Unix epoch
    pub file: Option<FileMeta>, // a shared file (`file` upload): its name and type
}

/// What history keeps about a shared file besides its bytes. The name and the type are
/// the client's words, kept as data: they are shown, never used as a path or as markup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub name: String, // as the uploader gave it (validated: `chat::files::check_name`)
    pub mime: String, // `type/subtype`, as given
    pub size: u64,    // bytes; known even when a record is read without its bytes
}

/// What part of a room's history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The newest `n` messages.
    Last(usize),
    /// Up to `n` messages older than id `before` (paging back).
    Before { before: u64, n: usize },
    /// Everything after id `since`, for recovery after a reconnect (capped).
    Since(u64),
}

/// The answer to a query, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<Record>,   // oldest first
    pub more: bool,              // more messages exist beyond this page
    pub recovered: Option<bool>, // for `Since`: true when nothing after `since` was lost
}
