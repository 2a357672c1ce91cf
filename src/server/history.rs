//! The loop's side of message history: the store, and the acks that wait on it.
//!
//! Owns: when messages are committed (before any byte that could carry them leaves) and
//! which acks each commit settles. Must not touch: sockets or queues (the acks it settles
//! are sent by `broadcast.rs`), what is stored (`chat`), how (`store`).
//!
//! The rule it keeps: no byte of a message is written to a socket before the message is
//! committed. The end-of-turn flush commits first; so does the early write a full queue
//! makes mid-turn (`broadcast.rs`), through `commit()` here.

use super::http::Stats;
use crate::chat::Ack;
use crate::store::sqlite::SqliteStore;
use crate::store::{Page, Query, StoreError, StoredMessage};

/// The store (if history is on) and the acks in flight.
pub struct History {
    store: Option<SqliteStore>,              // None with --no-history
    waiting: Vec<Ack>,                       // acks for messages appended but not committed
    settled: Vec<(Ack, Result<(), String>)>, // acks whose commit is done, to be answered
}

impl History {
    pub fn new(store: Option<SqliteStore>) -> History {
        History { store, waiting: Vec::new(), settled: Vec::new() }
    }

    /// The highest id the store has seen (0 without history).
    pub fn last_id(&self) -> u64 {
        self.store.as_ref().map_or(0, SqliteStore::last_id)
    }

    /// Messages the chat accepted, and the acks they earn. Without a store there is
    /// nothing to wait for: the acks are settled at once.
    pub fn append(&mut self, stored: Vec<StoredMessage>, acks: Vec<Ack>) {
        match &mut self.store {
            Some(store) => {
                stored.into_iter().for_each(|m| store.append(m));
                self.waiting.extend(acks);
            }
            None => self.settled.extend(acks.into_iter().map(|ack| (ack, Ok(())))),
        }
    }

    /// Commits what is pending in one transaction and settles the acks waiting on it.
    /// A failure is logged and counted; the relay goes on.
    pub fn commit(&mut self, stats: &mut Stats) {
        let Some(store) = &mut self.store else { return };
        let pending = store.pending();
        let result = store.commit().map_err(|e| e.to_string());
        match &result {
            Ok(0) => {}
            Ok(n) => {
                stats.stored += *n as u64;
                stats.commits += 1;
                log::trace!("history: committed {n} message(s)");
            }
            Err(e) => {
                stats.store_errors += 1;
                log::error!("history: commit of {pending} message(s) failed: {e}");
            }
        }
        let outcome = result.map(|_| ());
        self.settled.extend(self.waiting.drain(..).map(|ack| (ack, outcome.clone())));
    }

    /// The acks ready to be answered.
    pub fn take_settled(&mut self) -> Vec<(Ack, Result<(), String>)> {
        std::mem::take(&mut self.settled)
    }

    /// Reads a page, after committing what is pending (so a message routed earlier in
    /// this turn is not missed). `None` without history.
    pub fn read(&mut self, room: &str, query: Query, cap: usize, text_only: bool, stats: &mut Stats) -> Option<Page> {
        self.commit(stats);
        let store = self.store.as_mut()?;
        match store.query(room, query, cap, text_only) {
            Ok(page) => Some(page),
            Err(StoreError(e)) => {
                stats.store_errors += 1;
                log::error!("history: reading {room} failed: {e}");
                None
            }
        }
    }
}
