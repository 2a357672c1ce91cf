//! Routing: the chat core's outbox turned into queued chunks, encoded once.
//!
//! Owns: handing each message to the chat core (relay mode) or back to its sender (echo
//! mode), turning every outbox entry into one shared chunk per codec, pushing references
//! to recipients' queues, and the slow-consumer policy. Must not touch: sockets (queues
//! are flushed in `mod.rs`), frame parsing, what a message means (`chat`).
//!
//! All messages decoded from one read of one sender to the same room land in the same
//! outbox entry, framed back to back, and become a single shared chunk: the cost per
//! recipient is a reference-count increment and a queue push, whatever the number or
//! size of the messages.

use std::rc::Rc;

use slab::Slab;

use super::client::Client;
use super::history::History;
use super::http::Stats;
use super::write_queue::{Shared, Spares};
use super::Server;
use crate::chat::{history_frames, Chat, Output};
use crate::config::Mode;
use crate::proto::close::CloseCode;
use crate::proto::message::DataKind;
use crate::store::Query;

impl Server {
    /// A complete message from `sender`.
    pub(super) fn on_message(&mut self, sender: usize, kind: DataKind, payload: &[u8]) {
        self.stats.messages_in += 1;
        match (self.config.mode, kind) {
            (Mode::Echo, _) => self.outbox.send_frame(sender, kind.opcode(), payload),
            (Mode::Relay, DataKind::Binary) => self.chat.binary(sender, payload, self.now_ms, &mut self.outbox),
            (Mode::Relay, DataKind::Text) => {
                // The session validated the UTF-8 already, so this cannot fail.
                let text = std::str::from_utf8(payload).unwrap_or_default();
                self.chat.text(sender, text, self.now_ms, &mut self.outbox);
            }
        }
    }

    /// Delivers everything in the outbox, in order. Called after each read and before
    /// anything else is queued to the sender (a pong, a close), so per-sender order holds.
    pub(super) fn drain_outbox(&mut self) {
        let (stored, acks) = (std::mem::take(&mut self.outbox.stored), std::mem::take(&mut self.outbox.acks));
        self.history.append(stored, acks);
        while !self.outbox.is_empty() {
            let mut slow = Vec::new();
            for output in self.outbox.take() {
                match output {
                    Output::To { conn, frames } => {
                        if !self.queues().0.push(conn, &Rc::new(frames)) {
                            slow.push(conn);
                        }
                    }
                    Output::Room { room, except, raw, json, messages } => {
                        let (raw, json) = (Rc::new(raw), Rc::new(json));
                        let mut recipients = 0;
                        let (mut queues, chat) = self.queues();
                        for member in chat.members(room) {
                            let chunk = if member.json { &json } else { &raw };
                            if Some(member.conn) == except || chunk.is_empty() {
                                continue; // relay never echoes; a codec with nothing to get
                            }
                            match queues.push(member.conn, chunk) {
                                true => recipients += 1,
                                false => slow.push(member.conn),
                            }
                        }
                        for unshared in [raw, json].into_iter().filter_map(|chunk| Rc::try_unwrap(chunk).ok()) {
                            self.outbox.recycle(unshared); // nobody took it (or a codec nobody speaks)
                        }
                        self.stats.deliveries += recipients * messages;
                        if messages > 0 {
                            let name = self.chat.room_name(room);
                            log::trace!("{messages} message(s) for room {name} went to {recipients} queue(s)");
                        }
                    }
                    Output::History { conn, room, query, json } => {
                        let frames = self.read_history(&room, query, json);
                        if !self.queues().0.push(conn, &Rc::new(frames)) {
                            slow.push(conn);
                        }
                    }
                }
            }
            // Dropping a slow consumer tells its rooms (presence), which refills the outbox.
            for key in slow {
                self.drop_slow_consumer(key);
            }
        }
        // Acks follow the outputs they confirm (the sender's own copy comes first).
        self.answer_settled();
    }

    /// Phase 6, first step: commit this turn's messages in one transaction (before any
    /// byte of the turn leaves), then answer the acks settled so far.
    pub(super) fn commit_history(&mut self) {
        self.history.commit(&mut self.stats);
        self.answer_settled();
    }

    /// Answers every settled ack: `ack` if its message is stored, `error` (store_failed)
    /// if not.
    fn answer_settled(&mut self) {
        for (ack, stored) in self.history.take_settled() {
            // An ack is a few bytes: a full queue is noticed by the next broadcast.
            let frame = ack.frame(stored.as_ref().map(|_| ()).map_err(String::as_str));
            self.queues().0.push(ack.conn, &Rc::new(frame));
        }
    }

    /// The write queues, split from the chat so a room's members can be read while
    /// their queues are filled.
    fn queues(&mut self) -> (Queues<'_>, &Chat) {
        let limit = self.config.effective_max_queue();
        let queues = Queues {
            clients: &mut self.clients,
            dirty: &mut self.dirty,
            stats: &mut self.stats,
            spares: &mut self.spares,
            history: &mut self.history,
            limit,
        };
        (queues, &self.chat)
    }

    /// Reads a page of history for a replay or a `history` request. JSON clients get
    /// text messages only: binary rows are left out in the query itself, so a page is
    /// full and paging back always has an id to continue from.
    fn read_history(&mut self, room: &str, query: Query, json: bool) -> Vec<u8> {
        let page = self.history.read(room, query, self.config.history_max, json, &mut self.stats);
        page.map_or_else(Vec::new, |page| history_frames(room, &page, json))
    }

    /// A client whose queue would pass `--max-queue`: it cannot keep up, and holding
    /// more for it would let one reader grow the server without bound. Free its backlog,
    /// close it with 1008, and take it out of the chat; nobody else is affected.
    fn drop_slow_consumer(&mut self, key: usize) {
        let now = self.now;
        let Some(client) = self.clients.get_mut(key).filter(|c| c.session.is_open()) else { return };
        log::warn!(
            "conn {key}: {} is a slow consumer ({} bytes queued, limit {}): closing 1008",
            client.peer,
            client.queue.len(),
            self.config.effective_max_queue()
        );
        self.stats.slow_consumers += 1;
        client.queue.truncate_unstarted(&mut self.spares);
        client.session.close(CloseCode::POLICY, "slow consumer", now);
        self.flush_session(key);
        self.part(key);
    }
}

/// Every client's write queue, with what a push needs besides.
struct Queues<'a> {
    clients: &'a mut Slab<Client>, // the slots
    dirty: &'a mut Vec<usize>,     // clients to flush this turn
    stats: &'a mut Stats,          // bytes written early count as sent
    spares: &'a mut Spares,        // spare rings and chunk buffers
    history: &'a mut History,      // committed before an early write lets bytes out
    limit: usize,                  // the effective --max-queue
}

impl Queues<'_> {
    /// Pushes a chunk to one client's queue. Returns false when the client is a slow
    /// consumer: the chunk would take its queue past the limit even after handing the
    /// kernel what it will take now. Queues are normally flushed at the end of the turn,
    /// and one turn can route more than `--max-queue` to a reader that keeps up, so the
    /// limit is judged on what the socket refuses, not on what the turn produced; and an
    /// empty queue always takes a chunk (one read's messages: at most the scratch buffer
    /// plus one message), so a queue holds at most `--max-queue` plus one such chunk.
    /// A sealed client (its Close is queued) gets nothing more.
    fn push(&mut self, key: usize, chunk: &Shared) -> bool {
        let Some(client) = self.clients.get_mut(key).filter(|c| !c.sealed) else { return true };
        if client.queue.len() + chunk.len() > self.limit {
            // The rare path: one early write. Nothing leaves before it is stored, so commit
            // first. A write error also means "cannot take more"; the close that follows
            // and the next read will tell the rest.
            self.history.commit(self.stats);
            let taken = client.queue.write_to(&mut client.stream, self.spares);
            self.stats.bytes_out += *taken.as_ref().unwrap_or(&0) as u64;
            if taken.is_err() || (!client.queue.is_empty() && client.queue.len() + chunk.len() > self.limit) {
                return false;
            }
        }
        client.queue.push(Rc::clone(chunk), self.spares);
        if !client.dirty {
            client.dirty = true;
            self.dirty.push(key);
        }
        true
    }
}
