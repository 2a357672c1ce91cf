//! Routing: the outbox turned into queued chunks, encoded once, and the slow-consumer
//! policy.
//!
//! Owns: the `Outbox` (and through it the loop's buffer pool), the list of clients with
//! bytes to flush this turn, pushing references to recipients' queues, acks once their
//! commit is settled, and dropping slow consumers. Must not touch: sockets (queues are
//! flushed by `Server::flush` in `mod.rs`, except the one early write below), frame
//! parsing, what a message means (`chat`).
//!
//! All messages decoded from one read of one sender to the same room land in the same
//! outbox entry, framed back to back, and become a single shared chunk: the cost per
//! recipient is a reference-count increment and a queue push, whatever the number or
//! size of the messages. With permessage-deflate the same holds per form: each message
//! is compressed at most once per codec (`chat/outbox.rs`), and a member that agreed to
//! it is pushed the compressed chunk of its codec, or the plain one when none was built.
//!
//! ## What a slow consumer sees
//!
//! A client that reads more slowly than its rooms talk first lets the kernel's socket
//! buffers fill; then its queue here grows. Once one more chunk would take the queue
//! past `--max-queue` even after an early write has handed the kernel what it will take,
//! the client's backlog is dropped (a partly written frame is finished, so the stream
//! stays well framed), it is sent a Close with code 1008 and reason "slow consumer", its
//! rooms hear that it left, and after the close grace its TCP connection ends. From the
//! client's side: every message up to some point arrives whole and in order, then the
//! 1008 Close; nothing after it. Nobody else notices anything.

use std::rc::Rc;
use std::time::Instant;

use slab::Slab;

use super::client::Client;
use super::history::History;
use super::metrics::Stats;
use crate::buffers::Shared;
use crate::chat::record::{Query, Record};
use crate::chat::rooms::RoomId;
use crate::chat::{history_frames, Chat, Outbox, Output};
use crate::proto::close::CloseCode;

/// What became of a chunk pushed to one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushed {
    /// In the queue, to be flushed this turn.
    Queued,
    /// Not queued, by rule: the client is gone, or its last words (a Close) are queued.
    Refused,
    /// Not queued: the client cannot keep up. It must be dropped.
    Slow,
}

/// A room output that other nodes must hear (with `--redis`): the chunks this node
/// delivered, shared, not copied; the Redis phase publishes them once per room.
#[derive(Debug)]
pub struct Relayed {
    pub room: String,  // the room's name (its channel's)
    pub messages: u64, // data messages in the chunks (presence is not counted)
    pub raw: Shared,   // frames for raw members
    pub json: Shared,  // frames for pollcast.v1 members
}

/// The outbox and what routing it needs besides.
pub struct Router {
    outbox: Outbox,              // what the chat and the sessions produced, not yet in queues
    dirty: Vec<usize>,           // clients with bytes queued this turn, for the flush
    queue_limit: usize,          // the effective --max-queue
    relay: Option<Vec<Relayed>>, // with --redis: room outputs to publish this turn
    reads: Option<Vec<Read>>,    // with cluster history: history reads for the Redis phase
    fetches: Vec<Fetch>,         // with cluster history: file fetches for the Redis phase
}

/// A file fetch the Redis phase answers (cluster history): the file goes to `conn`
/// when Redis replies.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    pub conn: usize,                  // who asked
    pub id: u64,                      // which file
    pub reference: serde_json::Value, // the request's ref (null if none)
}

/// A history read the Redis phase answers (cluster history): the page goes to `conn`
/// when Redis replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub conn: usize,           // who asked
    pub room: String,          // which room
    pub query: Query,          // which part
    pub json: bool,            // a pollcast.v1 reader (text records only)
    pub after_subscribe: bool, // sent once its room's SUBSCRIBE was confirmed: what came live is left out of the page
}

impl Router {
    /// `deflate_threshold`: messages shorter than this are broadcast uncompressed.
    pub fn new(queue_limit: usize, deflate_threshold: usize) -> Router {
        let mut outbox = Outbox::default();
        outbox.set_deflate_threshold(deflate_threshold);
        Router { outbox, dirty: Vec::new(), queue_limit, relay: None, reads: None, fetches: Vec::new() }
    }

    /// In a cluster: every room output is also kept for the Redis phase to publish.
    pub fn relay_rooms(&mut self) {
        self.relay = Some(Vec::new());
    }

    /// Cluster history: history reads are answered by the Redis phase, not the store.
    pub fn read_elsewhere(&mut self) {
        self.reads = Some(Vec::new());
    }

    /// The history reads of this turn (cluster history).
    pub fn take_reads(&mut self) -> Vec<Read> {
        self.reads.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The file fetches of this turn (cluster history).
    pub fn take_fetches(&mut self) -> Vec<Fetch> {
        std::mem::take(&mut self.fetches)
    }

    /// A history page read from Redis, for `conn`.
    pub fn page_to(&mut self, conn: usize, frames: Vec<u8>) {
        self.outbox.own(conn, frames, false);
    }

    /// The room outputs of this turn that other nodes must hear.
    pub fn take_relayed(&mut self) -> Vec<Relayed> {
        self.relay.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Where the chat and the sessions put their output.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// The clients to flush this turn (each once), leaving the list empty.
    pub fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// Lists a client for this turn's flush (a WRITABLE event: the kernel has room again).
    pub fn mark_dirty(&mut self, clients: &mut Slab<Client>, key: usize) {
        if let Some(client) = clients.get_mut(key) {
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Records history has committed, for the chat to fill again (`Outbox::keep`).
    pub fn recycle(&mut self, spent: Vec<Record>) {
        self.outbox.recycle(spent);
    }

    /// Delivers everything in the outbox, in order: the records go to history first,
    /// then each output to its queues. Dropping a slow consumer tells its rooms, which
    /// refills the outbox, so this runs until it stays empty.
    pub fn route(
        &mut self,
        clients: &mut Slab<Client>,
        chat: &mut Chat,
        history: &mut History,
        stats: &mut Stats,
        now: Instant,
    ) {
        history.append(&mut self.outbox.records, std::mem::take(&mut self.outbox.acks));
        stats.compressed += self.outbox.take_compressed();
        while !self.outbox.is_empty() {
            let mut slow = Vec::new();
            for output in self.outbox.take() {
                self.deliver(output, clients, chat, history, stats, &mut slow);
            }
            self.drop_slow(slow, clients, chat, stats, now);
        }
        // Acks follow the outputs they confirm (the sender's own copy comes first).
        self.answer_acks(clients, history, stats);
    }

    /// Routes what is in the outbox without relaying it to other nodes: messages the
    /// cluster's store brought back, which every node renders for itself.
    pub fn route_local(
        &mut self,
        clients: &mut Slab<Client>,
        chat: &mut Chat,
        history: &mut History,
        stats: &mut Stats,
        now: Instant,
    ) {
        let relay = self.relay.take();
        self.route(clients, chat, history, stats, now);
        self.relay = relay;
    }

    /// Frames another node published for a room with local members: pushed, shared, to
    /// every member (plain frames: RFC 7692 §6 lets any message go with RSV1 clear), and
    /// not relayed again. Slow consumers found on the way are dropped as usual; the
    /// presence that produces is routed (and relayed) like any other output.
    #[allow(clippy::too_many_arguments)] // the same state `route` takes, plus the frames
    pub fn deliver_remote(
        &mut self,
        room: RoomId,
        (raw, json, messages): (&[u8], &[u8], u64),
        clients: &mut Slab<Client>,
        chat: &mut Chat,
        history: &mut History,
        stats: &mut Stats,
        now: Instant,
    ) {
        let pool = self.outbox.pool();
        let (mut raw_chunk, mut json_chunk) = (pool.take_buffer(), pool.take_buffer());
        raw_chunk.extend_from_slice(raw);
        json_chunk.extend_from_slice(json);
        let output = Output::Room {
            room,
            except: None,
            raw: raw_chunk,
            json: json_chunk,
            raw_deflate: None,
            json_deflate: None,
            messages,
        };
        let relay = self.relay.take(); // what came from the cluster does not go back to it
        let mut slow = Vec::new();
        self.deliver(output, clients, chat, history, stats, &mut slow);
        self.relay = relay;
        self.drop_slow(slow, clients, chat, stats, now);
        self.route(clients, chat, history, stats, now);
    }

    /// Drops the clients found slow (their rooms hear it, through the outbox).
    fn drop_slow(
        &mut self,
        slow: Vec<(usize, usize)>,
        clients: &mut Slab<Client>,
        chat: &mut Chat,
        stats: &mut Stats,
        now: Instant,
    ) {
        for (key, refused) in slow {
            if drop_slow_consumer(clients, chat, &mut self.outbox, (key, refused), self.queue_limit, now) {
                stats.slow_consumers += 1;
            }
        }
    }

    /// Sends every settled ack: `ack` if its message is stored, `error` (store_failed)
    /// if not.
    pub fn answer_acks(&mut self, clients: &mut Slab<Client>, history: &mut History, stats: &mut Stats) {
        for (ack, stored) in history.take_settled() {
            // An ack is a few bytes: a full queue is noticed by the next broadcast.
            let frame = ack.frame(stored.as_ref().map(|_| ()).map_err(String::as_str));
            self.push(clients, history, stats, ack.conn, &Rc::new(frame), 0);
        }
    }

    /// One output into the queues it is for; clients found slow are added to `slow`.
    fn deliver(
        &mut self,
        output: Output,
        clients: &mut Slab<Client>,
        chat: &Chat,
        history: &mut History,
        stats: &mut Stats,
        slow: &mut Vec<(usize, usize)>,
    ) {
        match output {
            Output::Own { conn, bytes, last } => self.push_own(clients, conn, bytes, last),
            // Replies, errors, echoes: to one connection, plain unless `Outbox::echo`
            // compressed them (RFC 7692 §6: RSV1 clear is always legal).
            Output::To { conn, frames } => {
                let chunk = Rc::new(frames);
                if self.push(clients, history, stats, conn, &chunk, 1) == Pushed::Slow {
                    slow.push((conn, chunk.len()));
                }
            }
            Output::Room { room, except, raw, json, raw_deflate, json_deflate, messages } => {
                let (raw, json) = (Rc::new(raw), Rc::new(json));
                let (raw_deflate, json_deflate) = (raw_deflate.map(Rc::new), json_deflate.map(Rc::new));
                let mut recipients = 0;
                for member in chat.members(room) {
                    let chunk = match (member.json, member.deflate) {
                        (false, false) => &raw,
                        (true, false) => &json,
                        (false, true) => raw_deflate.as_ref().unwrap_or(&raw),
                        (true, true) => json_deflate.as_ref().unwrap_or(&json),
                    };
                    if Some(member.conn) == except || chunk.is_empty() {
                        continue; // relay never echoes; a codec with nothing to get
                    }
                    match self.push(clients, history, stats, member.conn, chunk, messages) {
                        Pushed::Queued => recipients += 1,
                        Pushed::Refused => {}
                        Pushed::Slow => slow.push((member.conn, chunk.len())),
                    }
                }
                if let Some(relay) = self.relay.as_mut().filter(|_| !raw.is_empty() || !json.is_empty()) {
                    let (raw, json) = (Rc::clone(&raw), Rc::clone(&json));
                    relay.push(Relayed { room: chat.room_name(room).to_owned(), messages, raw, json });
                }
                let all = [Some(raw), Some(json), raw_deflate, json_deflate];
                for unshared in all.into_iter().flatten().filter_map(|chunk| Rc::try_unwrap(chunk).ok()) {
                    self.outbox.pool().give_buffer(unshared); // nobody took it (or a codec nobody speaks)
                }
                stats.deliveries += recipients * messages;
                if messages > 0 {
                    log::trace!(
                        "{messages} message(s) for room {} went to {recipients} queue(s)",
                        chat.room_name(room)
                    );
                }
            }
            Output::History { conn, room, query, json } if self.reads.is_some() => {
                self.reads.get_or_insert_with(Vec::new).push(Read { conn, room, query, json, after_subscribe: false });
            }
            Output::History { conn, room, query, json } => {
                let page = history.read(&room, query, json, stats);
                let chunk = Rc::new(page.map_or_else(Vec::new, |page| history_frames(&room, &page, json)));
                if self.push(clients, history, stats, conn, &chunk, 0) == Pushed::Slow {
                    slow.push((conn, chunk.len()));
                }
            }
            Output::Fetch { conn, id, reference } if self.reads.is_some() => {
                self.fetches.push(Fetch { conn, id, reference });
            }
            Output::Fetched { conn, frames } => {
                let chunk = Rc::new(frames);
                if self.push(clients, history, stats, conn, &chunk, 0) == Pushed::Slow {
                    slow.push((conn, chunk.len()));
                }
            }
            Output::Fetch { conn, id, reference } => {
                let file = history.file(id, stats);
                let chunk = Rc::new(chat.fetch_answer(conn, id, &reference, file.as_ref()));
                if self.push(clients, history, stats, conn, &chunk, 0) == Pushed::Slow {
                    slow.push((conn, chunk.len()));
                }
            }
        }
    }

    /// Queues a session's own bytes whatever the limit (a pong, a Close, an HTTP answer:
    /// small, and they must go). After its last words a client's queue is sealed: RFC
    /// 6455 §5.5.1 allows no data frame after a Close. Data routed *before* them (a
    /// message that preceded a protocol error in the same read) still goes out first.
    fn push_own(&mut self, clients: &mut Slab<Client>, key: usize, bytes: Vec<u8>, last: bool) {
        let Some(client) = clients.get_mut(key) else { return };
        client.queue.push(Rc::new(bytes), self.outbox.pool());
        client.sealed |= last;
        if !client.dirty {
            client.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Pushes a chunk to one client's queue. Queues are normally flushed at the end of
    /// the turn, and one turn can route more than `--max-queue` to a reader that keeps
    /// up, so the limit is judged on what the socket refuses, not on what the turn
    /// produced: a chunk that would pass the limit first triggers an early write. An
    /// empty queue always takes a chunk (one read's messages: at most the scratch buffer
    /// plus one message), so a queue holds at most `--max-queue` plus one such chunk.
    fn push(
        &mut self,
        clients: &mut Slab<Client>,
        history: &mut History,
        stats: &mut Stats,
        key: usize,
        chunk: &Shared,
        messages: u64,
    ) -> Pushed {
        let Some(client) = clients.get_mut(key).filter(|c| !c.sealed) else { return Pushed::Refused };
        if client.queue.len() + chunk.len() > self.queue_limit {
            // The rare path: one early write. Nothing leaves before it is stored, so commit
            // first. A write error also means "cannot take more"; the close that follows
            // and the next read will tell the rest.
            let _ = history.commit(stats); // a failure is logged, counted and answered inside
            let taken = client.write_out(self.outbox.pool());
            stats.bytes_out += *taken.as_ref().unwrap_or(&0) as u64;
            if taken.is_err() || (!client.queue.is_empty() && client.queue.len() + chunk.len() > self.queue_limit) {
                return Pushed::Slow;
            }
        }
        client.queue.push(Rc::clone(chunk), self.outbox.pool());
        client.traffic.messages_out += messages;
        if !client.dirty {
            client.dirty = true;
            self.dirty.push(key);
        }
        Pushed::Queued
    }
}

/// A client whose queue would pass `--max-queue`: it cannot keep up, and holding more
/// for it would let one reader grow the server without bound. Free its backlog, close it
/// with 1008, and take it out of the chat; nobody else is affected. False when it was
/// already leaving (found slow twice in one turn, or closing anyway). `refused` is the
/// size of the chunk that would have taken it over, for the log line.
fn drop_slow_consumer(
    clients: &mut Slab<Client>,
    chat: &mut Chat,
    outbox: &mut Outbox,
    (key, refused): (usize, usize),
    limit: usize,
    now: Instant,
) -> bool {
    let Some(client) = clients.get_mut(key).filter(|c| c.session.is_open()) else { return false };
    log::warn!(
        "conn {key}: {} is a slow consumer ({} bytes queued + {refused} more > --max-queue {limit}): closing 1008",
        client.addr,
        client.queue.len()
    );
    client.queue.truncate_unstarted(outbox.pool());
    client.session.close(CloseCode::POLICY, "slow consumer", now);
    client.session_output_to(key, outbox);
    chat.disconnect(key, outbox);
    true
}
