//! Message history behind one small interface: SQLite is the embedded default.
//!
//! Owns: what a stored message is, the queries history answers, and (in `sqlite.rs`)
//! the database. Must not touch: sockets, rooms, codecs.
//!
//! Durability contract with the loop: messages routed during a turn are `append`ed, and
//! the turn's `commit` runs in one transaction *before* the turn's queues are flushed.
//! So any message a client has received is already committed, and a JSON sender's `ack`
//! (sent only after the commit) promises the message is stored.

pub mod sqlite;

use std::fmt;

/// The pseudo-room direct messages are stored under: not a valid room name, so no
/// client can join it or read it as a room.
pub const DM_ROOM: &str = "@dm";

/// One relayed message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: u64,            // server-wide, strictly increasing, survives restarts
    pub room: String,       // the room, or DM_ROOM for a direct message
    pub from: String,       // sender's display name at the time
    pub to: Option<String>, // recipient of a direct message
    pub binary: bool,       // opcode: binary (true) or text
    pub body: Vec<u8>,      // the message as relayed
    pub ts: u64,            // ms since the Unix epoch
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
    pub messages: Vec<StoredMessage>, // oldest first
    pub more: bool,                   // more messages exist beyond this page
    pub recovered: Option<bool>,      // for `Since`: true when nothing after `since` was lost
}

/// A storage failure, with SQLite's words.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> StoreError {
        StoreError(format!("history: unexpected column type: {e}"))
    }
}
