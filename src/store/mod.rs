//! Message history behind one small interface, `Store`: SQLite (`sqlite.rs`) is the
//! embedded default; another engine (Redis, for several nodes) is one more `impl Store`.
//!
//! Owns: how records are kept and read back. Must not touch: sockets, rooms, codecs, or
//! when to commit (the loop decides that: `server/history.rs`). It speaks the chat's
//! vocabulary (`chat::record`): what a record is and what a query asks is the chat's.
//!
//! Durability contract with the loop: records routed during a turn are `append`ed, and
//! the turn's `commit` makes them durable in one step *before* the turn's queues are
//! flushed (SQLite: one write to its message log; Redis: one script per room).
//! So any message a client has received is already committed, and a JSON sender's `ack`
//! (sent only after the commit) promises the message is stored.

pub mod log;
pub mod sqlite;

use std::fmt;

use crate::chat::record::{Page, Query, Record};

/// A history engine, as the loop uses it: appends are buffered until `commit`, which
/// makes them durable in one step; reads see everything committed.
pub trait Store {
    /// The highest id ever stored (0 when empty), so ids go on increasing after a restart.
    fn last_id(&self) -> u64;
    /// Buffers a record for the next commit.
    fn append(&mut self, record: Record);
    /// How many records wait for the next commit.
    fn pending(&self) -> usize;
    /// Makes every buffered record durable in one step; returns how many there were.
    fn commit(&mut self) -> Result<usize, StoreError>;
    /// Reads part of a room's history, oldest first, at most `cap` records; `text_only`
    /// leaves binary records out in the query itself (so a page is full); shared files
    /// are in every page, without their bytes (`Record::file` says what they are).
    fn query(&mut self, room: &str, query: Query, cap: usize, text_only: bool) -> Result<Page, StoreError>;
    /// One shared file with its bytes, for a `fetch`: `None` when `id` is not a file
    /// (never was, or retention has taken it). Sees everything committed.
    fn file(&mut self, id: u64) -> Result<Option<Record>, StoreError>;
    /// The records the last `commit` wrote, for the chat to fill again (their buffers
    /// are what is wanted); none from an engine that keeps them.
    fn spent(&mut self) -> Vec<Record> {
        Vec::new()
    }
    /// Bytes committed that the engine's index has not caught up with (0 for an engine
    /// without one): for /metrics, so a stuck index shows before commits are refused.
    fn behind(&self) -> u64 {
        0
    }
}

/// A storage failure, in the engine's words (never with message bodies).
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}
