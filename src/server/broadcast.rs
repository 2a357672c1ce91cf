//! Routing: where a complete inbound message goes, encoded once.
//!
//! Owns: the encode-once batch, the choice of recipients (the other members of the
//! sender's room in relay mode, the sender itself in echo mode), and the slow-consumer
//! policy. Must not touch: sockets (queues are flushed in `mod.rs`), frame parsing.
//!
//! All messages decoded from one read of one sender are framed back to back into a
//! single buffer, which becomes one shared chunk: every recipient's queue gets a
//! reference to it, so the per-recipient cost is a reference-count increment and a
//! queue push, whatever the number or size of the messages.

use std::rc::Rc;

use super::Server;
use crate::config::Mode;
use crate::proto::close::CloseCode;
use crate::proto::frame;
use crate::proto::message::DataKind;

impl Server {
    /// A complete message from `sender`: frame it into the batch (server frames are
    /// unmasked, so the bytes are the same for every recipient).
    pub(super) fn on_message(&mut self, _sender: usize, kind: DataKind, payload: &[u8]) {
        self.stats.messages_in += 1;
        frame::write_header(&mut self.batch, true, kind.opcode(), payload.len());
        self.batch.extend_from_slice(payload);
    }

    /// Hands the batch of `sender`'s messages to its recipients as one shared chunk.
    /// Called after each read and before anything else is queued to or changes for the
    /// sender, so per-sender order is kept.
    pub(super) fn route_batch(&mut self, sender: usize) {
        if self.batch.is_empty() {
            return;
        }
        let chunk = Rc::new(std::mem::take(&mut self.batch));
        let limit = self.config.effective_max_queue();
        let mut slow = Vec::new();
        let mut delivered = 0;
        let seat = self.clients.get(sender).and_then(|c| c.seat);
        let recipients: &[usize] = match (self.config.mode, seat) {
            (Mode::Echo, _) => std::slice::from_ref(&sender),
            (Mode::Relay, Some(seat)) => self.rooms.members(seat.room),
            (Mode::Relay, None) => &[], // cannot happen: a sender leaves its room only after routing
        };
        for &member in recipients {
            if member == sender && self.config.mode == Mode::Relay {
                continue; // relay never echoes to the sender
            }
            let Some(client) = self.clients.get_mut(member) else { continue };
            if client.queue.len() + chunk.len() > limit {
                slow.push(member);
                continue;
            }
            client.queue.push(Rc::clone(&chunk));
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(member);
            }
            delivered += 1;
        }
        self.stats.deliveries += delivered;
        if log::log_enabled!(log::Level::Trace) {
            let room = seat.map_or("-", |seat| self.rooms.name(seat.room));
            log::trace!("conn {sender}: {} bytes of frames went to {delivered} queue(s) in room {room}", chunk.len());
        }
        for member in slow {
            self.drop_slow_consumer(member);
        }
    }

    /// A client whose queue would pass `--max-queue`: it cannot keep up, and holding
    /// more for it would let one reader grow the server without bound. Free its backlog,
    /// close it with 1008, and take it out of its room; nobody else is affected.
    fn drop_slow_consumer(&mut self, key: usize) {
        let now = self.now;
        let client = &mut self.clients[key];
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
        self.leave_room(key);
    }
}
