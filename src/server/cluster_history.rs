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
//!
//! Batches: a turn's room messages go to Redis as one batch script call per room (in
//! the order the chat produced them, at most `BATCH_MAX_MESSAGES` messages and
//! `BATCH_MAX_BYTES` of bodies each), published once; every node splits the batch and
//! handles each message as it would a single one. A reply settles each message of its
//! batch: its own id, or (a failed or lost reply) `store_failed` for every one. Direct
//! messages go one script call each (each has its own recipient's channel).

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::broadcast::{Fetch, Read};
use super::cluster::{room_channel, user_channel, Tag};
use crate::chat::cluster::{Outgoing, RemoteDm, Stored, StoredFileView};
use crate::chat::history_frames;
use crate::chat::record::FileMeta;
use crate::chat::Ack;
use crate::proto::handshake::Status;
use crate::redis::envelope::{self, Envelope, StoredFile, StoredMessage};
use crate::redis::history::{
    self as stream, BatchMessage, FileToStore, ToStore, FETCH_SCRIPT, READ_SCRIPT, STORE_BATCH_SCRIPT,
    STORE_FILE_SCRIPT, STORE_SCRIPT,
};
use crate::redis::resp::error_text;
use crate::redis::Reply;

/// A batch holds at most this many messages (more in one turn for one room make more
/// batches, in order).
pub const BATCH_MAX_MESSAGES: usize = 256;
/// ... and at most this many bytes of messages, each counted as its body, its sender's
/// name and `MESSAGE_OVERHEAD` (or an eighth of `--redis-max-buffer`, if less: every
/// node's subscriptions link must take the published batch whole). A message longer
/// than that is a batch of its own.
pub const BATCH_MAX_BYTES: usize = 256 * 1024;
/// What a message adds to a batch besides its body and name: its fixed envelope fields
/// (23 bytes) and the script's other arguments, rounded up.
const MESSAGE_OVERHEAD: usize = 64;

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
        let max_bytes = BATCH_MAX_BYTES.min(self.config.redis_max_buffer / 8);
        for batch in batches(outgoing, BATCH_MAX_MESSAGES, max_bytes) {
            let (command, tag) = match batch {
                Batch::Dm(message) => {
                    (store_command(&message, cluster.node(), self.config.history_keep, false), Tag::Store(message))
                }
                Batch::Room(messages) => {
                    let command = store_batch_command(&messages, cluster.node(), self.config.history_keep, false);
                    (command, Tag::StoreBatch(messages))
                }
            };
            match cluster.command(&command, tag, self.now) {
                Ok(()) => cluster.figures.sent += 1,
                Err(Tag::Store(message)) => failed.push(*message),
                Err(Tag::StoreBatch(messages)) => failed.extend(messages),
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
        let mut unfetched = Vec::new();
        for fetch in self.router.take_fetches() {
            let command = stream::fetch_command(fetch.id, false);
            if let Err(Tag::Fetch(fetch)) = cluster.command(&command, Tag::Fetch(Box::new(fetch)), self.now) {
                unfetched.push(fetch);
            }
        }
        for fetch in unfetched {
            self.chat.fetch_unavailable(fetch.conn, &fetch.reference, self.router.outbox());
        }
        for message in failed {
            self.not_stored(&message, "the cluster is unreachable (Redis): the message was not stored");
        }
    }

    /// The commands link is (again) ready: the scripts are loaded before any EVALSHA
    /// (one link, in order), so NOSCRIPT only follows a SCRIPT FLUSH.
    pub(super) fn load_scripts(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        for script in [STORE_SCRIPT, STORE_BATCH_SCRIPT, READ_SCRIPT, STORE_FILE_SCRIPT, FETCH_SCRIPT] {
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
            return self.not_confirmed(std::slice::from_ref(&*message), reply.is_some(), error.as_deref());
        };
        self.stored_one(*message, id, heard);
    }

    /// The batch script answered (or failed): each message of the batch is settled as
    /// one stored alone would be, with its own id, in order.
    pub(super) fn on_stored_batch(&mut self, batch: Vec<Outgoing>, reply: Option<Reply>) {
        let stored = reply.as_ref().and_then(|reply| stream::stored_batch(reply, batch.len()));
        let error = reply.as_ref().and_then(error_text).map(str::to_owned);
        if error.as_deref().is_some_and(|e| e.starts_with("NOSCRIPT")) {
            return self.store_batch_again_with_eval(batch);
        }
        let Some((ids, heard)) = stored else {
            return self.not_confirmed(&batch, reply.is_some(), error.as_deref());
        };
        for (message, id) in batch.into_iter().zip(ids) {
            self.stored_one(message, id, heard);
        }
    }

    /// Messages whose store was not confirmed (`replied`: Redis answered, with `error`
    /// or something unexpected; else the reply was lost): each sender is told.
    fn not_confirmed(&mut self, messages: &[Outgoing], replied: bool, error: Option<&str>) {
        let why = match (replied, error) {
            (false, _) => {
                "Redis went away before confirming the message was stored (rejoin with since to see)".to_owned()
            }
            (true, Some(e)) => format!("the store refused the message: {e}"),
            (true, None) => "the store answered something unexpected".to_owned(),
        };
        let conn = messages.first().map_or(0, |m| m.conn);
        log::warn!("redis: {} message(s) (the first from conn {conn}) not confirmed stored: {why}", messages.len());
        if let Some(cluster) = &mut self.cluster {
            cluster.figures.store_failed += messages.len() as u64;
        }
        for message in messages {
            self.not_stored(message, &why);
        }
    }

    /// One message is stored with `id` (`heard`: how many nodes heard its publish): its
    /// sender is answered, a JSON sender's ack kept until its own copy has come.
    fn stored_one(&mut self, message: Outgoing, id: u64, heard: i64) {
        self.stats.stored += 1;
        if message.admin {
            let answer = match (&message.to, heard) {
                (Some(to), 0) => Err((Status::NotFound, "no_such_user", format!("{to} is not connected"))),
                _ => Ok(json!({"id": id})),
            };
            return self.answer_admin_later(message.conn, answer);
        }
        if message.file.is_some() && message.to.is_some() && heard == 0 {
            return self.chat.stored_file_unheard(&message, self.router.outbox());
            // stored, but nobody holds the name
        }
        if let (Some(to), None) = (&message.to, &message.file) {
            let Outgoing { conn, json, cid, from, body, ts, .. } = message;
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

    /// After NOSCRIPT: the same batch with EVAL.
    fn store_batch_again_with_eval(&mut self, batch: Vec<Outgoing>) {
        let Some(cluster) = &mut self.cluster else { return };
        log::warn!("redis: the batch store script was flushed from Redis; sending it again");
        let command = store_batch_command(&batch, cluster.node(), self.config.history_keep, true);
        if let Err(Tag::StoreBatch(batch)) = cluster.command(&command, Tag::StoreBatch(batch), self.now) {
            for message in &batch {
                self.not_stored(message, "the cluster is unreachable (Redis): the message was not stored");
            }
        }
    }

    /// A fetch script answered: the file (or `not_found`) goes to its reader, under the
    /// chat's permission rules; a failure is logged and the reader told `unavailable`.
    pub(super) fn on_fetched(&mut self, fetch: Box<Fetch>, reply: Option<Reply>) {
        let Some(reply) = reply else {
            return self.chat.fetch_unavailable(fetch.conn, &fetch.reference, self.router.outbox());
        };
        if error_text(&reply).is_some_and(|e| e.starts_with("NOSCRIPT")) {
            let command = stream::fetch_command(fetch.id, true);
            if let Some(cluster) = &mut self.cluster {
                if let Err(Tag::Fetch(fetch)) = cluster.command(&command, Tag::Fetch(fetch), self.now) {
                    self.chat.fetch_unavailable(fetch.conn, &fetch.reference, self.router.outbox());
                }
            }
            return;
        }
        match stream::fetched(&reply) {
            Ok(file) => {
                let frames = self.chat.fetch_answer(fetch.conn, fetch.id, &fetch.reference, file.as_ref());
                self.router.outbox().fetched(fetch.conn, frames); // under --max-queue, as on one node
            }
            Err(e) => {
                self.stats.store_errors += 1;
                log::error!("history: fetching file {} from Redis failed: {e}", fetch.id);
                self.chat.fetch_unavailable(fetch.conn, &fetch.reference, self.router.outbox());
            }
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

    /// A stored message the subscription brought (`ID|ENVELOPE`), or a stored batch
    /// (`FIRST|BATCH`, split here: each message in order, with the ids from FIRST on):
    /// rendered for this node's members of its room, or (a DM) for this node's
    /// connections of its recipient. Returns false when the payload was not a stored
    /// message.
    pub(super) fn on_stored_published(&mut self, channel: &str, payload: &[u8]) -> bool {
        let Some((id, envelope)) = stream::split_stored(payload) else { return false };
        let Some(cluster) = &mut self.cluster else { return true };
        cluster.figures.received += 1;
        match envelope::decode(envelope) {
            Ok(Envelope::Stored { node, conn, echo, binary, ts, from, body }) => {
                let Some(room) = channel.strip_prefix("pollcast:room:") else { return true };
                let own = node == cluster.node();
                self.render_stored(room, id, own, StoredMessage { conn, echo, binary, ts, from, body });
                self.route_stored();
            }
            Ok(Envelope::StoredBatch { node, messages }) => {
                let Some(room) = channel.strip_prefix("pollcast:room:") else { return true };
                let own = node == cluster.node();
                for (id, message) in (id..).zip(messages) {
                    self.render_stored(room, id, own, message);
                }
                self.route_stored(); // once per batch: a room's frames for members elsewhere are one chunk
            }
            Ok(Envelope::Dm { from, to, text, ts, .. }) => {
                self.chat.deliver_dm(id, ts, from, to, text, self.router.outbox());
            }
            Ok(Envelope::File(file)) => {
                let own = file.node == cluster.node();
                self.render_stored_file(channel, id, own, file);
                self.route_stored();
            }
            Ok(_) => log::warn!("redis: dropped a stored message of an unexpected kind"),
            Err(why) => log::warn!("redis: dropped a published message: {why}"),
        }
        true
    }

    /// One stored room message (`own`: sent from this node), as it came live: rendered
    /// for this node's members, and its sender's ack queued if it waited for this copy
    /// (`route_stored` then delivers the copies first, the acks after them).
    fn render_stored(&mut self, room: &str, id: u64, own: bool, message: StoredMessage) {
        let Some(cluster) = &mut self.cluster else { return };
        cluster.joins.first_live.entry(room.to_owned()).or_insert(id);
        let StoredMessage { conn, echo, binary, ts, from, body } = message;
        let sender = own.then_some(conn as usize);
        let stored = Stored { id, sender, echo, room, from, binary, body, ts };
        self.chat.render_stored(stored, self.router.outbox());
        let Some(cluster) = &mut self.cluster else { return };
        if own && echo {
            match cluster.acks.waiting.remove(&id) {
                Some(ack) => self.router.outbox().acks.push(ack), // after its copy, in the same route
                None => {
                    cluster.acks.seen.insert(id);
                }
            }
        }
    }

    /// One stored file's notice, as it came live on `channel`: a room's (rendered for
    /// this node's members) or a user's (a direct file, for this node's connections of
    /// that user: its recipient or its sender). The uploader's ack waits for its own copy
    /// as a message's does: the room's, or (a direct file) the one on its own channel.
    fn render_stored_file(&mut self, channel: &str, id: u64, own: bool, file: StoredFile) {
        let meta =
            crate::chat::record::FileMeta { name: file.name.to_owned(), mime: file.mime.to_owned(), size: file.size };
        let room = match file.to {
            Some(_) => crate::chat::record::DM_ROOM,
            None => channel.strip_prefix("pollcast:room:").unwrap_or_default(),
        };
        let sender = own.then_some(file.conn as usize);
        let view = StoredFileView { id, sender, room, from: file.from, meta: &meta, ts: file.ts };
        let own_copy = match (file.to, channel.strip_prefix("pollcast:user:")) {
            (None, _) if !room.is_empty() => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.joins.first_live.entry(room.to_owned()).or_insert(id);
                }
                self.chat.render_stored_file(view, self.router.outbox());
                own
            }
            (Some(to), Some(user)) => {
                self.chat.deliver_stored_file(view, to, user, self.router.outbox());
                own && user == file.from
            }
            _ => return log::warn!("redis: dropped a file notice on an unexpected channel"),
        };
        let Some(cluster) = &mut self.cluster else { return };
        if own_copy {
            match cluster.acks.waiting.remove(&id) {
                Some(ack) => self.router.outbox().acks.push(ack),
                None => {
                    cluster.acks.seen.insert(id);
                }
            }
        }
    }

    /// Routes what `render_stored` produced to this node's members, then the acks that
    /// waited for those copies (a route answers its acks after its outputs). Every node
    /// renders stored messages for itself: nothing is relayed.
    fn route_stored(&mut self) {
        let (clients, chat, history, stats) = (&mut self.clients, &mut self.chat, &mut self.history, &mut self.stats);
        self.router.route_local(clients, chat, history, stats, self.now);
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

/// What one store script call carries: a direct message alone, or a room's batch.
#[derive(Debug, PartialEq)]
enum Batch {
    Dm(Box<Outgoing>),
    Room(Vec<Outgoing>),
}

/// A turn's messages to store, as script calls: one batch per room (a new one when
/// `max_messages` or `max_bytes` (`size`) would be passed; a message larger than
/// `max_bytes` alone), each in the order the chat produced its messages, batches in the
/// order of their first message; each direct message alone, where it came.
fn batches(outgoing: Vec<Outgoing>, max_messages: usize, max_bytes: usize) -> Vec<Batch> {
    let mut batches: Vec<(Batch, usize)> = Vec::new(); // and the bytes of its bodies
    let mut open: HashMap<String, usize> = HashMap::new(); // a room's batch still taking messages
    for message in outgoing {
        if message.to.is_some() || message.file.is_some() {
            open.remove(&message.room); // a room's later messages go after its file, in a new batch
            batches.push((Batch::Dm(Box::new(message)), 0));
            continue;
        }
        let fits = |(batch, bytes): &(Batch, usize)| match batch {
            Batch::Room(messages) => messages.len() < max_messages && bytes + size(&message) <= max_bytes,
            Batch::Dm(_) => false,
        };
        let index = match open.get(&message.room) {
            Some(&index) if fits(&batches[index]) => index,
            _ => {
                open.insert(message.room.clone(), batches.len());
                batches.push((Batch::Room(Vec::new()), 0));
                batches.len() - 1
            }
        };
        let (batch, bytes) = &mut batches[index];
        *bytes += size(&message);
        if let Batch::Room(messages) = batch {
            messages.push(message);
        }
    }
    batches.into_iter().map(|(batch, _)| batch).collect()
}

/// What a message counts for against a batch's bytes.
fn size(message: &Outgoing) -> usize {
    message.body.len() + message.from.len() + MESSAGE_OVERHEAD
}

/// The batch script command for one room's messages (at least one, all of one room).
fn store_batch_command(batch: &[Outgoing], node: &str, keep: usize, eval: bool) -> Vec<Vec<u8>> {
    let room = &batch[0].room;
    let stored: Vec<StoredMessage> = batch
        .iter()
        .map(|m| StoredMessage {
            conn: m.conn as u64,
            echo: m.echo,
            binary: m.binary,
            ts: m.ts,
            from: &m.from,
            body: &m.body,
        })
        .collect();
    let bytes: usize = batch.iter().map(|m| m.body.len() + m.from.len() + 24).sum();
    let mut payload = Vec::with_capacity(bytes + 64);
    envelope::stored_batch(&mut payload, node, &stored);
    let messages: Vec<BatchMessage> =
        batch.iter().map(|m| BatchMessage { from: &m.from, body: &m.body, binary: m.binary, ts: m.ts }).collect();
    stream::store_batch_command(room, &room_channel(room), keep, &messages, &payload, eval)
}

/// The store command for one outgoing message: to its room's stream and channel, or
/// (a DM) to `@dm` and the recipient's channel.
fn store_command(message: &Outgoing, node: &str, keep: usize, eval: bool) -> Vec<Vec<u8>> {
    if let Some(meta) = &message.file {
        return file_command(message, meta, node, keep, eval);
    }
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

/// The file store command for one shared file: to its room's stream and channel, or (a
/// direct file) to `@dm`, published to the recipient's channel and the sender's.
fn file_command(message: &Outgoing, meta: &FileMeta, node: &str, keep: usize, eval: bool) -> Vec<Vec<u8>> {
    let to = message.to.as_deref();
    let (channel, also) = match to {
        Some(to) => (user_channel(to), (to != message.from).then(|| user_channel(&message.from))),
        None => (room_channel(&message.room), None),
    };
    let notice = StoredFile {
        node,
        conn: message.conn as u64,
        ts: message.ts,
        size: meta.size,
        from: &message.from,
        to,
        name: &meta.name,
        mime: &meta.mime,
    };
    let mut payload = Vec::with_capacity(64 + meta.name.len() + meta.mime.len() + message.from.len());
    envelope::file(&mut payload, &notice);
    let file = FileToStore {
        room: &message.room,
        channel: &channel,
        also: also.as_deref(),
        from: &message.from,
        to,
        meta,
        bytes: &message.body,
        ts: message.ts,
        notice: &payload,
        keep,
    };
    stream::file_command(&file, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, to: Option<&str>, body: &str) -> Outgoing {
        Outgoing {
            conn: 1,
            json: true,
            cid: serde_json::Value::Null,
            room: room.to_owned(),
            to: to.map(str::to_owned),
            from: "ann".to_owned(),
            binary: false,
            body: body.as_bytes().to_vec(),
            ts: 5,
            echo: true,
            admin: false,
            file: None,
        }
    }

    fn bodies(batch: &Batch) -> Vec<String> {
        match batch {
            Batch::Dm(m) => vec![format!("dm:{}", String::from_utf8_lossy(&m.body))],
            Batch::Room(ms) => ms.iter().map(|m| format!("{}:{}", m.room, String::from_utf8_lossy(&m.body))).collect(),
        }
    }

    #[test]
    fn a_turn_makes_one_batch_per_room_in_order_and_dms_alone() {
        let outgoing = vec![
            message("tea", None, "1"),
            message("cake", None, "2"),
            message("@dm", Some("bob"), "3"),
            message("tea", None, "4"),
            message("cake", None, "5"),
            message("tea", None, "6"),
        ];
        let got: Vec<Vec<String>> = batches(outgoing, 100, 10_000).iter().map(bodies).collect();
        assert_eq!(got, [vec!["tea:1", "tea:4", "tea:6"], vec!["cake:2", "cake:5"], vec!["dm:3"]]);
    }

    #[test]
    fn a_file_goes_alone_and_the_room_s_later_messages_after_it() {
        let meta = FileMeta { name: "a.png".into(), mime: "image/png".into(), size: 1 };
        let file = Outgoing { file: Some(meta), ..message("tea", None, "F") };
        let outgoing = vec![message("tea", None, "1"), file, message("tea", None, "2")];
        let got: Vec<Vec<String>> = batches(outgoing, 100, 10_000).iter().map(bodies).collect();
        assert_eq!(got, [vec!["tea:1"], vec!["dm:F"], vec!["tea:2"]], "alone, in order");
    }

    #[test]
    fn a_batch_is_capped_by_count_and_by_bytes() {
        let outgoing = (0..5).map(|i| message("tea", None, &i.to_string())).collect();
        let got: Vec<Vec<String>> = batches(outgoing, 2, 10_000).iter().map(bodies).collect();
        assert_eq!(got, [vec!["tea:0", "tea:1"], vec!["tea:2", "tea:3"], vec!["tea:4"]]);
        let outgoing = vec![message("tea", None, "aaaa"), message("tea", None, "bb"), message("tea", None, "cccccc")];
        let cap = 5 + 3 + MESSAGE_OVERHEAD; // "ann" sends each
        let got: Vec<Vec<String>> = batches(outgoing, 100, cap).iter().map(bodies).collect();
        assert_eq!(got, [vec!["tea:aaaa"], vec!["tea:bb"], vec!["tea:cccccc"]], "one over the cap goes alone");
        let outgoing = vec![message("tea", None, "bb"), message("tea", None, "bb"), message("tea", None, "bb")];
        let got: Vec<Vec<String>> = batches(outgoing, 100, 2 * (2 + 3 + MESSAGE_OVERHEAD)).iter().map(bodies).collect();
        assert_eq!(got, [vec!["tea:bb", "tea:bb"], vec!["tea:bb"]], "names and overhead count too");
    }
}
