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
use super::write_queue::Shared;
use super::Server;
use crate::chat::Output;
use crate::config::Mode;
use crate::proto::close::CloseCode;
use crate::proto::message::DataKind;

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
        let limit = self.config.effective_max_queue();
        while !self.outbox.is_empty() {
            let mut slow = Vec::new();
            for output in self.outbox.take() {
                match output {
                    Output::To { conn, frames } => {
                        if !enqueue(&mut self.clients, &mut self.dirty, conn, &Rc::new(frames), limit) {
                            slow.push(conn);
                        }
                    }
                    Output::Room { room, except, raw, json, messages } => {
                        let (raw, json) = (Rc::new(raw), Rc::new(json));
                        let mut recipients = 0;
                        for member in self.chat.members(room) {
                            let chunk = if member.json { &json } else { &raw };
                            if Some(member.conn) == except || chunk.is_empty() {
                                continue; // relay never echoes; a codec with nothing to get
                            }
                            match enqueue(&mut self.clients, &mut self.dirty, member.conn, chunk, limit) {
                                true => recipients += 1,
                                false => slow.push(member.conn),
                            }
                        }
                        self.stats.deliveries += recipients * messages;
                        log::trace!("{messages} message(s) to room {room} went to {recipients} queue(s)");
                    }
                }
            }
            // Dropping a slow consumer tells its rooms (presence), which refills the outbox.
            for key in slow {
                self.drop_slow_consumer(key);
            }
        }
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
        client.queue.truncate_unstarted();
        client.session.close(CloseCode::POLICY, "slow consumer", now);
        self.flush_session(key);
        self.part(key);
    }
}

/// Pushes a chunk to one client's queue. Returns false when the client is over its
/// queue limit (a slow consumer). Clients no longer OPEN get nothing: after a Close no
/// data frame may follow (RFC 6455 §5.5.1).
fn enqueue(clients: &mut Slab<Client>, dirty: &mut Vec<usize>, key: usize, chunk: &Shared, limit: usize) -> bool {
    let Some(client) = clients.get_mut(key).filter(|c| c.session.is_open()) else { return true };
    if client.queue.len() + chunk.len() > limit {
        return false;
    }
    client.queue.push(Rc::clone(chunk));
    if !client.dirty {
        client.dirty = true;
        dirty.push(key);
    }
    true
}
