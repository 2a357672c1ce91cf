//! The loop's side of message history: the store, and the acks that wait on it.
//!
//! Owns: the commit (`commit()`, the one function that makes records durable), which
//! acks each commit settles, and reads of history pages. Must not touch: sockets or
//! queues (`broadcast.rs` sends the acks it settles), what is recorded (`chat`), how
//! (`store`: any `impl Store`).
//!
//! The rule it keeps: no byte of a message is written to a socket before the message is
//! committed. The commit phase of every turn runs before the flush; the early write a
//! full queue forces mid-turn (`broadcast.rs`) commits first; and a history read commits
//! first, so a page includes what was routed earlier in the same turn.

use super::metrics::Stats;
use crate::chat::record::{Page, Query, Record};
use crate::chat::Ack;
use crate::store::{Store, StoreError};
use std::time::{Duration, Instant};

/// While commits keep failing, one error line per this long at most (with how many
/// failed since the last), not one per loop turn.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The store (if history is on) and the acks in flight.
pub struct History {
    store: Option<Box<dyn Store>>,           // None with --no-history
    page_cap: usize,                         // most records one page carries (--history-max)
    waiting: Vec<Ack>,                       // acks for records appended but not committed
    settled: Vec<(Ack, Result<(), String>)>, // acks whose commit is done, to be answered
    failing: Option<(Instant, u64)>,         // since the last commit that worked: last error line, failures since
}

impl History {
    pub fn new(store: Option<Box<dyn Store>>, page_cap: usize) -> History {
        History { store, page_cap, waiting: Vec::new(), settled: Vec::new(), failing: None }
    }

    /// Bytes committed that the store's index has not caught up with (for /metrics).
    pub fn behind(&self) -> u64 {
        self.store.as_ref().map_or(0, |store| store.behind())
    }

    /// The highest id the store has seen (0 without history).
    pub fn last_id(&self) -> u64 {
        self.store.as_ref().map_or(0, |store| store.last_id())
    }

    /// Records the chat accepted, and the acks they earn. Without a store there is
    /// nothing to wait for: the acks are settled at once.
    /// `records` is left empty, its capacity kept for the next ones.
    pub fn append(&mut self, records: &mut Vec<Record>, acks: Vec<Ack>) {
        match &mut self.store {
            Some(store) => {
                records.drain(..).for_each(|record| store.append(record));
                self.waiting.extend(acks);
            }
            None => {
                records.clear();
                self.settled.extend(acks.into_iter().map(|ack| (ack, Ok(()))));
            }
        }
    }

    /// Commits what is pending in one step and settles the acks waiting on it.
    /// A failure is logged and counted (and answered to the acks); the relay goes on.
    pub fn commit(&mut self, stats: &mut Stats) -> Result<(), String> {
        let Some(store) = &mut self.store else { return Ok(()) };
        let pending = store.pending();
        let started = (pending > 0).then(std::time::Instant::now); // timing, for /metrics only
        let result = store.commit().map_err(|e| e.to_string());
        if let Some(started) = started {
            stats.commit.observe(started.elapsed().as_secs_f64());
        }
        match &result {
            Ok(0) => {}
            Ok(n) => {
                stats.stored += *n as u64;
                stats.commits += 1;
                if self.failing.take().is_some() {
                    log::info!("history: commits work again");
                }
                log::trace!("history: committed {n} message(s)");
            }
            Err(e) => {
                stats.store_errors += 1;
                let now = Instant::now();
                match &mut self.failing {
                    Some((logged, unlogged)) if now.duration_since(*logged) < ERROR_LOG_EVERY => *unlogged += 1,
                    failing => {
                        let more = failing.map_or(0, |(_, unlogged)| unlogged);
                        let more =
                            if more > 0 { format!(" ({more} more failed since the last report)") } else { "".into() };
                        log::error!("history: commit of {pending} message(s) failed: {e}{more}");
                        *failing = Some((now, 0));
                    }
                }
            }
        }
        let outcome = result.map(|_| ());
        self.settled.extend(self.waiting.drain(..).map(|ack| (ack, outcome.clone())));
        outcome
    }

    /// The records the last commit wrote, for the chat to fill again.
    pub fn spent(&mut self) -> Vec<Record> {
        self.store.as_mut().map_or_else(Vec::new, |store| store.spent())
    }

    /// The acks ready to be answered.
    pub fn take_settled(&mut self) -> Vec<(Ack, Result<(), String>)> {
        std::mem::take(&mut self.settled)
    }

    /// Reads a page (at most `--history-max` records), after committing what is
    /// pending. JSON clients get text records only: binary ones are left out in the query
    /// itself, so a page is full and paging back always has an id to continue from.
    /// `None` without history, or when the read failed (logged and counted).
    pub fn read(&mut self, room: &str, query: Query, text_only: bool, stats: &mut Stats) -> Option<Page> {
        let _ = self.commit(stats); // a failure is logged, counted and answered inside

        let store = self.store.as_mut()?;
        match store.query(room, query, self.page_cap, text_only) {
            Ok(page) => Some(page),
            Err(StoreError(e)) => {
                stats.store_errors += 1;
                log::error!("history: reading {room} failed: {e}");
                None
            }
        }
    }

    /// Reads one shared file with its bytes (for a `fetch`), after committing what is
    /// pending (a file shared earlier in this turn is fetchable). `None` without history,
    /// when there is no such file, or when the read failed (logged and counted).
    pub fn file(&mut self, id: u64, stats: &mut Stats) -> Option<Record> {
        let _ = self.commit(stats); // a failure is logged, counted and answered inside
        let store = self.store.as_mut()?;
        match store.file(id) {
            Ok(file) => file,
            Err(StoreError(e)) => {
                stats.store_errors += 1;
                log::error!("history: reading file {id} failed: {e}");
                None
            }
        }
    }
}
