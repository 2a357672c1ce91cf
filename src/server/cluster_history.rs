//! History in Redis (with `--redis` and history on): the Redis phase's side of storing a
//! message before anyone receives it, and of reading pages. Part of the Redis phase
//! (`cluster.rs` owns the links; this file what the store and read commands mean to
//! the server).
//!
//! Owns: turning the chat's `Outgoing` messages into store-script commands, rendering
//! what the subscription brings back (every node, the sender's included, delivers a
//! message only then, with the id the store gave it), the sender's `ack` after its own
//! copy, history reads sent to Redis and their pages sent to the reader. Must not touch:
//! sockets, RESP (`redis::history` spells the commands and reads the replies).
//!
//! The durability rule across nodes: the store script INCRs the id, XADDs to the room's
//! stream and PUBLISHes in one atomic step, so no node can receive a message that was
//! not stored; the sender's `ack` is sent only after the script's reply (and after the
//! sender's own copy, when the subscription has brought it). A reply that never comes
//! (Redis went away) is answered `store_failed`: not acked, and not delivered unless it
//! was in fact stored, in which case `since` recovers it like any other.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::broadcast::Read;
use super::cluster::{room_channel, user_channel, Tag};
use crate::chat::cluster::{Outgoing, RemoteDm, Stored};
use crate::chat::history_frames;
use crate::chat::Ack;
use crate::proto::handshake::Status;
use crate::redis::envelope::{self, Envelope};
use crate::redis::history::{self as stream, ToStore, READ_SCRIPT, STORE_SCRIPT};
use crate::redis::resp::error_text;
use crate::redis::Reply;

/// Acks waiting for their sender's own copy, and copies that came before their ack: a
/// JSON sender hears its message, then the `ack`, whichever of the two links answers
/// first. Both sets are bounded by the commands in flight, and emptied when a link
/// drops.
#[derive(Debug, Default)]
pub struct AckOrder {
    waiting: HashMap<u64, Ack>, // stored (the script answered), own copy not seen yet
    seen: HashSet<u64>,         // own copy delivered, the script's answer not read yet
}

/// The first member of a room on this node must miss nothing: its history read waits
/// until Redis confirms the node's SUBSCRIBE to the room, so every message is either in
/// the page (stored before the read) or arrives live (published after the
/// confirmation). The store script publishes in id order, so what arrives live after
/// the confirmation is every id from the first one on: the page leaves those out, and
/// each message reaches the member once.
#[derive(Debug, Default)]
pub struct JoinOrder {
    waiting: HashMap<String, Vec<Read>>, // rooms whose SUBSCRIBE is not confirmed yet, and the reads parked on them
    first_live: HashMap<String, u64>,    // per room: the first id delivered live since its SUBSCRIBE was confirmed
}

impl JoinOrder {
    /// A SUBSCRIBE to `room` was sent: its reads wait for the confirmation.
    pub fn subscribing(&mut self, room: &str) {
        self.waiting.entry(room.to_owned()).or_default();
        self.first_live.remove(room);
    }

    /// The room has no member here any more: nothing waits on it.
    pub fn unsubscribed(&mut self, room: &str) {
        self.waiting.remove(room);
        self.first_live.remove(room);
    }
}

impl super::Server {
    /// Redis confirmed the SUBSCRIBE to `room` (or, `None`, the subscriptions link went
    /// down: then every parked read goes, with nothing live to leave out): the reads that
    /// waited on it are sent.
    pub(super) fn subscribed(&mut self, room: Option<&str>) {
        let Some(cluster) = &mut self.cluster else { return };
        let parked: Vec<Read> = match room {
            Some(room) => cluster.joins.waiting.remove(room).unwrap_or_default(),
            None => cluster.joins.waiting.drain().flat_map(|(_, reads)| reads).collect(),
        };
        let mut unread = Vec::new();
        for mut read in parked {
            read.after_subscribe = room.is_some();
            let command = stream::read_command(&read.room, read.query, self.config.history_max, false);
            if let Err(Tag::Read(read)) = cluster.command(&command, Tag::Read(Box::new(read)), self.now) {
                unread.push(read);
            }
        }
        for read in unread {
            self.chat.history_unavailable(read.conn, &read.room, self.router.outbox());
        }
    }

    /// This turn's messages to store and pages to read, as commands on the commands link.
    pub(super) fn store_and_read(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        let outgoing = std::mem::take(&mut self.router.outbox().to_store);
        let mut failed = Vec::new();
        for message in outgoing {
            let command = store_command(&message, cluster.node(), self.config.history_keep, false);
            match cluster.command(&command, Tag::Store(Box::new(message)), self.now) {
                Ok(()) => cluster.figures.sent += 1,
                Err(Tag::Store(message)) => failed.push(message),
                Err(_) => {}
            }
        }
        let mut unread = Vec::new();
        for read in self.router.take_reads() {
            if let Some(parked) = cluster.joins.waiting.get_mut(&read.room) {
                parked.push(read); // the room's SUBSCRIBE is not confirmed yet: `subscribed` sends it
                continue;
            }
            let command = stream::read_command(&read.room, read.query, self.config.history_max, false);
            if let Err(Tag::Read(read)) = cluster.command(&command, Tag::Read(Box::new(read)), self.now) {
                unread.push(read);
            }
        }
        for read in unread {
            self.chat.history_unavailable(read.conn, &read.room, self.router.outbox());
        }
        for message in failed {
            self.not_stored(&message, "the cluster is unreachable (Redis): the message was not stored");
        }
    }

    /// The commands link is (again) ready: the scripts are loaded before any EVALSHA
    /// (one link, in order), so NOSCRIPT only follows a SCRIPT FLUSH.
    pub(super) fn load_scripts(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        for script in [STORE_SCRIPT, READ_SCRIPT] {
            let _ = cluster.command(&["SCRIPT", "LOAD", script], Tag::Quiet("SCRIPT LOAD"), self.now);
        }
    }

    /// The store script answered (or failed): the sender hears how it went.
    pub(super) fn on_stored(&mut self, message: Box<Outgoing>, reply: Option<Reply>) {
        let stored = reply.as_ref().and_then(stream::stored);
        let error = reply.as_ref().and_then(error_text).map(str::to_owned);
        if error.as_deref().is_some_and(|e| e.starts_with("NOSCRIPT")) {
            return self.store_again_with_eval(message);
        }
        let Some((id, heard)) = stored else {
            let why = match (&reply, &error) {
                (None, _) => {
                    "Redis went away before confirming the message was stored (rejoin with since to see)".to_owned()
                }
                (Some(_), Some(e)) => format!("the store refused the message: {e}"),
                (Some(_), None) => "the store answered something unexpected".to_owned(),
            };
            log::warn!("redis: a message from conn {} was not confirmed stored: {why}", message.conn);
            if let Some(cluster) = &mut self.cluster {
                cluster.figures.store_failed += 1;
            }
            return self.not_stored(&message, &why);
        };
        self.stats.stored += 1;
        if message.admin {
            let answer = match (&message.to, heard) {
                (Some(to), 0) => Err((Status::NotFound, "no_such_user", format!("{to} is not connected"))),
                _ => Ok(json!({"id": id})),
            };
            return self.answer_admin_later(message.conn, answer);
        }
        if let Some(to) = &message.to {
            let Outgoing { conn, json, cid, from, body, ts, .. } = *message;
            let text = String::from_utf8(body).unwrap_or_default();
            let dm = RemoteDm { conn, cid, json, id, from, to: to.clone(), text, ts };
            match heard > 0 {
                true => self.chat.remote_dm_sent(&dm, self.router.outbox()),
                false => self.chat.remote_dm_failed(&dm, Some(false), self.router.outbox()),
            }
            return;
        }
        let Some(ack) = self.chat.stored_ack(&message, id) else { return };
        let Some(cluster) = &mut self.cluster else { return };
        let ready = cluster.is_ready();
        if cluster.acks.seen.remove(&id) || !message.echo || !ready {
            self.router.outbox().acks.push(ack); // its copy came first (or will not come)
        } else {
            cluster.acks.waiting.insert(id, ack);
        }
    }

    /// A message that was not (or not surely) stored: its sender is told, a client with
    /// `store_failed`, the admin API with a 503.
    fn not_stored(&mut self, message: &Outgoing, why: &str) {
        match message.admin {
            true => {
                self.answer_admin_later(message.conn, Err((Status::ServiceUnavailable, "store_failed", why.to_owned())))
            }
            false => self.chat.store_failed(message, why, self.router.outbox()),
        }
    }

    /// After NOSCRIPT (a SCRIPT FLUSH since this link loaded it): the same message with
    /// EVAL, which also caches the script again.
    fn store_again_with_eval(&mut self, message: Box<Outgoing>) {
        let Some(cluster) = &mut self.cluster else { return };
        log::warn!("redis: the store script was flushed from Redis; sending it again");
        let command = store_command(&message, cluster.node(), self.config.history_keep, true);
        if let Err(Tag::Store(message)) = cluster.command(&command, Tag::Store(message), self.now) {
            self.not_stored(&message, "the cluster is unreachable (Redis): the message was not stored");
        }
    }

    /// A read script answered: the page goes to its reader; a failure is logged and
    /// the reader told `unavailable`.
    pub(super) fn on_read(&mut self, read: Box<Read>, reply: Option<Reply>) {
        let Some(reply) = reply else {
            return self.chat.history_unavailable(read.conn, &read.room, self.router.outbox());
        };
        if error_text(&reply).is_some_and(|e| e.starts_with("NOSCRIPT")) {
            let command = stream::read_command(&read.room, read.query, self.config.history_max, true);
            if let Some(cluster) = &mut self.cluster {
                let _ = cluster.command(&command, Tag::Read(read), self.now);
            }
            return;
        }
        match stream::page(&read.room, read.query, self.config.history_max, read.json, &reply) {
            Ok(mut page) => {
                let first_live = self.cluster.as_ref().and_then(|cluster| cluster.joins.first_live.get(&read.room));
                if let Some(&first_live) = first_live.filter(|_| read.after_subscribe) {
                    page.messages.retain(|m| m.id < first_live); // those came live, after the confirmation
                }
                let frames = history_frames(&read.room, &page, read.json);
                self.router.page_to(read.conn, frames);
            }
            Err(e) => {
                self.stats.store_errors += 1;
                log::error!("history: reading {} from Redis failed: {e}", read.room);
                self.chat.history_unavailable(read.conn, &read.room, self.router.outbox());
            }
        }
    }

    /// A stored message the subscription brought (`ID|ENVELOPE`): rendered for this
    /// node's members of its room, or (a DM) for this node's connections of its
    /// recipient. Returns false when the payload was not a stored message.
    pub(super) fn on_stored_published(&mut self, channel: &str, payload: &[u8]) -> bool {
        let Some((id, envelope)) = stream::split_stored(payload) else { return false };
        let Some(cluster) = &mut self.cluster else { return true };
        cluster.figures.received += 1;
        match envelope::decode(envelope) {
            Ok(Envelope::Stored { node, conn, echo, binary, ts, from, body }) => {
                let Some(room) = channel.strip_prefix("pollcast:room:") else { return true };
                cluster.joins.first_live.entry(room.to_owned()).or_insert(id);
                let own = node == cluster.node();
                let sender = own.then_some(conn as usize);
                let stored = Stored { id, sender, echo, room, from, binary, body, ts };
                self.chat.render_stored(stored, self.router.outbox());
                let (clients, chat, history, stats) =
                    (&mut self.clients, &mut self.chat, &mut self.history, &mut self.stats);
                self.router.route_local(clients, chat, history, stats, self.now); // every node renders it: no relay
                let Some(cluster) = &mut self.cluster else { return true };
                if own && echo {
                    match cluster.acks.waiting.remove(&id) {
                        Some(ack) => self.router.outbox().acks.push(ack), // after its copy, in the same route
                        None => {
                            cluster.acks.seen.insert(id);
                        }
                    }
                }
            }
            Ok(Envelope::Dm { from, to, text, ts, .. }) => {
                self.chat.deliver_dm(id, ts, from, to, text, self.router.outbox());
            }
            Ok(_) => log::warn!("redis: dropped a stored message of an unexpected kind"),
            Err(why) => log::warn!("redis: dropped a published message: {why}"),
        }
        true
    }

    /// A link dropped: the order kept between acks and copies is over. Acks waiting for
    /// a copy are sent (the message is stored: the script said so); copies seen will get
    /// no answer on this link.
    pub(super) fn release_acks(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        cluster.acks.seen.clear();
        let waiting: Vec<Ack> = cluster.acks.waiting.drain().map(|(_, ack)| ack).collect();
        self.router.outbox().acks.extend(waiting);
    }
}

/// The store command for one outgoing message: to its room's stream and channel, or
/// (a DM) to `@dm` and the recipient's channel.
fn store_command(message: &Outgoing, node: &str, keep: usize, eval: bool) -> Vec<Vec<u8>> {
    let mut payload = Vec::with_capacity(message.body.len() + 64);
    let channel = match &message.to {
        Some(to) => {
            let text = std::str::from_utf8(&message.body).unwrap_or_default();
            envelope::dm(&mut payload, node, 0, message.ts, &message.from, to, text);
            user_channel(to)
        }
        None => {
            let (conn, echo) = (message.conn as u64, message.echo);
            envelope::stored(&mut payload, node, conn, echo, message.binary, message.ts, &message.from, &message.body);
            room_channel(&message.room)
        }
    };
    let to_store = ToStore {
        room: &message.room,
        channel: &channel,
        from: &message.from,
        body: &message.body,
        binary: message.binary,
        ts: message.ts,
        to: message.to.as_deref(),
        envelope: &payload,
        keep,
    };
    stream::store_command(&to_store, eval)
}
