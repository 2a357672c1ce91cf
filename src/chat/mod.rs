//! What a message means: users, names, rooms, commands and envelopes. Pure code.
//!
//! Owns: who is connected under which name, who is in which room, message ids, and what
//! each action produces. Must not touch: sockets, the clock (`now_ms` is passed in),
//! write queues, the store (it says what to keep in its own words: `record.rs`). Its
//! output is an `Outbox` of already framed bytes addressed to one connection or to a
//! room; the shell (`server/broadcast.rs`) turns each room output into one shared chunk
//! per codec and pushes a reference to every member's queue.
//!
//! One chat core, two codecs: a connection that negotiated `pollcast.v1` speaks JSON
//! envelopes (`json.rs`); any other is a raw client whose text and binary messages are
//! relayed verbatim, except text lines starting with `/`, which are commands (`text.rs`).
//! Both kinds share rooms: a raw line reaches JSON members as a `message` envelope, a
//! JSON `send` reaches raw members as its plain text. The actions (`actions.rs`) decide
//! what happens and return `Reply` values (`reply.rs`); `tell` has them spelled by the
//! connection's codec, the one place that asks which codec a user speaks.
//!
//! Files: `actions.rs` (join, send, dm, ...), `outbox.rs` (where output goes),
//! `reply.rs` (what a connection is told), `json.rs` and `text.rs` (the two codecs),
//! `rooms.rs` (membership and room names), `names.rs`, `rate.rs` (`--max-rate`),
//! `record.rs` (what history keeps), `replay.rs` (acks and history pages), `files.rs`
//! (uploads, shared files and fetches).

mod actions;
pub mod admission;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod files;
pub mod json;
pub mod names;
pub mod outbox;
pub mod rate;
pub mod record;
pub mod replay;
pub mod reply;
pub mod rooms;
#[cfg(test)]
mod tests;
pub mod text;

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

pub use outbox::{Deflate, Outbox, Output};
pub use replay::{history_frames, Ack};

use admission::Access;
use auth::Identity;
use files::Upload;
use json::BadRequest;
use names::NameError;
use rate::Bucket;
use reply::{Failure, Reply};
use rooms::{Member, RoomId, Rooms, Seat};
use text::Line;

/// A connection joining the chat, as its upgrade request described it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub conn: usize,                    // the shell's slab key
    pub json: bool,                     // negotiated pollcast.v1
    pub name: Option<&'a str>,          // `?name=`, decoded
    pub room: &'a str,                  // from the URL path (`rooms::room_from_path`)
    pub history: Option<usize>,         // `?history=N`
    pub identity: Option<&'a Identity>, // with tokens: who it is (an empty user id: a guest)
    pub rate_limited: bool,             // `--max-rate` applies to it
    pub deflate: bool,                  // takes compressed broadcasts (permessage-deflate agreed, full window)
}

/// Limits of the chat layer, from `Config`.
#[derive(Clone, Debug)]
pub struct ChatLimits {
    pub max_rooms_per_client: usize, // rooms one JSON client may be in at once
    pub max_text: usize,             // bytes of text in a JSON send/dm or a /msg
    pub history: bool,               // messages are stored: record them, answer history requests
    pub history_default: usize,      // messages a JSON client is sent on joining a room
    pub history_max: usize,          // most messages one history answer carries
    pub max_rate: u32,               // messages per second per client (bursts of twice that); 0 = no limit
    pub max_file: usize,             // bytes of one shared file (`file` upload)
    pub max_uploads: usize,          // uploads open at once across the server
}

/// One connection of a user (with tokens, one user may hold several: two tabs, a phone).
#[derive(Debug)]
struct User {
    name: String,                    // unique among users; shared by one user's connections
    json: bool,                      // speaks pollcast.v1
    seats: Vec<Seat>,                // rooms it is in; a raw user has at most one, its current room
    bucket: Bucket,                  // what is left of its message allowance (`max_rate`)
    rate_limited: bool,              // `max_rate` applies (the shell exempts loopback by default)
    identity: Option<Box<Identity>>, // with tokens: user id, expiry, rooms (boxed: an anonymous user stays small)
    upload: Option<Upload>,          // a file arriving (or a refused one's bytes being skipped): `files.rs`
    deflate: bool,                   // takes compressed broadcasts (the shell's judgement at the upgrade)
}

/// A message body as the chat received it: text is already proven UTF-8 by `proto`.
#[derive(Debug, Clone, Copy)]
enum Said<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Who a message is from: a connected user, or the application behind the chat (the
/// admin API), under a name it gives.
#[derive(Debug, Clone, Copy)]
enum Author<'a> {
    Conn(usize),
    Named(&'a str),
}

/// Where a message goes, for its record: a room by id (the relay's hot path, so no name
/// is copied unless history keeps it), or by name (a request's room, `DM_ROOM`).
#[derive(Debug, Clone, Copy)]
enum Place<'a> {
    Room(RoomId),
    Named(&'a str),
}

/// The chat state of the whole server.
#[derive(Debug)]
pub struct Chat {
    limits: ChatLimits,                 // from Config
    access: Access,                     // tokens, guests: who may come in (`admission.rs`)
    users: HashMap<usize, User>,        // by connection
    names: HashMap<String, Vec<usize>>, // name → its connections (several only with tokens)
    rooms: Rooms,                       // membership
    expiries: BTreeSet<(u64, usize)>,   // (token `exp` in Unix seconds, connection), soonest first
    last_id: u64,                       // the last message id given out
    messages: u64,                      // messages accepted since start
    guests: u64,                        // counter behind generated names
    uploads: usize,                     // uploads receiving bytes now (at most `max_uploads`)
    cluster: bool,                      // part of a cluster: keep `watch`, DM names held elsewhere
    watch: Vec<cluster::Watch>,         // rooms and names gained or lost here, for the shell
    closed: HashMap<RoomId, String>,    // rooms emptied since the last `take_watch` (cluster only)
    cluster_down: bool,                 // Redis is unreachable: messages are refused
    store_first: bool,                  // cluster history: messages are `Outgoing`, rendered once stored
    guest_tag: String,                  // in a cluster: `.TAG` after guest names, unique per node
}

impl Chat {
    pub fn new(limits: ChatLimits) -> Chat {
        Chat {
            limits,
            access: Access::open(),
            users: HashMap::new(),
            names: HashMap::new(),
            rooms: Rooms::default(),
            expiries: BTreeSet::new(),
            last_id: 0,
            messages: 0,
            guests: 0,
            uploads: 0,
            cluster: false,
            watch: Vec::new(),
            closed: HashMap::new(),
            cluster_down: false,
            store_first: false,
            guest_tag: String::new(),
        }
    }

    /// Who may come in (tokens, guests); without this, anyone, by name.
    pub fn with_access(mut self, access: Access) -> Chat {
        self.access = access;
        self
    }

    /// Message ids continue after `last_id` (the store's highest id at start).
    pub fn set_last_id(&mut self, last_id: u64) {
        self.last_id = self.last_id.max(last_id);
    }

    /// Can a new user take this name?
    pub fn name_available(&self, name: &str) -> Result<(), NameError> {
        names::validate(name)?;
        match self.names.contains_key(name) {
            true => Err(NameError::Taken),
            false => Ok(()),
        }
    }

    /// The members of a room, for the fan-out.
    pub fn members(&self, room: RoomId) -> &[Member] {
        self.rooms.members(room)
    }

    /// The name of a room, for log lines.
    pub fn room_name(&self, room: RoomId) -> &str {
        match self.rooms.name(room) {
            "" => self.closed.get(&room).map_or("", String::as_str), // a room just emptied, in a cluster
            name => name,
        }
    }

    /// Rooms with members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Is this connection a chat user?
    pub fn has(&self, conn: usize) -> bool {
        self.users.contains_key(&conn)
    }

    /// A new connection after its upgrade: it gets the name it asked for if that is free
    /// (else an `error` / `err` line saying why, first thing, and a generated name), joins
    /// its room, and is sent the history it asked for (`?history=N`; JSON clients get the
    /// default count otherwise).
    pub fn connect(&mut self, arrival: Arrival, now_ms: u64, out: &mut Outbox) {
        let Arrival { conn, json, name, room, history, identity, rate_limited, deflate } = arrival;
        let refused = name.and_then(|n| self.name_available(n).err());
        let name = match (identity, name, refused) {
            (Some(identity), _, _) => self.name_for(identity),
            (None, Some(name), None) => name.to_owned(),
            (None, _, _) => self.guest_name(),
        };
        let identity = identity.cloned().map(|mut identity| {
            if identity.user.is_empty() {
                (identity.user, identity.name) = (name.clone(), name.clone()); // a guest
            }
            identity
        });
        if let Some(exp) = identity.as_ref().and_then(|identity| identity.exp) {
            self.expiries.insert((exp, conn));
        }
        let conns = self.names.entry(name.clone()).or_default();
        conns.push(conn);
        if conns.len() == 1 {
            self.watch(cluster::Watch::User(name.clone(), true));
        }
        let bucket = Bucket::full(self.limits.max_rate, now_ms);
        let seats = Vec::new();
        let identity = identity.map(Box::new);
        self.users.insert(conn, User { name, json, seats, bucket, rate_limited, identity, upload: None, deflate });
        if let Some(e) = refused {
            // Before anything else, so a raw client (which gets no `welcome`) reads why.
            let message =
                format!("{}; you are {} (/nick or nick to choose another)", e.message(), self.users[&conn].name);
            self.fail(conn, Failure::new(e.code(), message), None, out);
        }
        self.tell(conn, Reply::Welcome { you: &self.users[&conn].name, rooms: vec![room] }, out);
        // A raw client is sent nothing it did not ask for: no reply to this first join.
        if let Err(failure) = self.join(conn, room, json, out) {
            self.fail(conn, failure, None, out);
            return;
        }
        let wanted = if json { history.or(Some(self.limits.history_default)) } else { history };
        self.replay(conn, room, wanted.map(record::Query::Last), json, out);
    }

    /// A connection is gone, however it went: it leaves every room (members are told)
    /// and its name is free again.
    pub fn disconnect(&mut self, conn: usize, out: &mut Outbox) {
        let Some(user) = self.users.get(&conn) else { return };
        let seats = user.seats.clone();
        self.end_upload(conn);
        for seat in seats.into_iter().rev() {
            self.leave_seat(conn, seat, out);
        }
        if let Some(user) = self.users.remove(&conn) {
            self.release_name(&user.name, conn);
            if let Some(exp) = user.identity.and_then(|identity| identity.exp) {
                self.expiries.remove(&(exp, conn));
            }
        }
    }

    /// Who `conn` is and where, for the access log: its user id with tokens, else its
    /// name; and its (first) room, `-` when in none.
    pub fn describe(&self, conn: usize) -> Option<(String, String)> {
        let user = self.users.get(&conn)?;
        let who = user.identity.as_ref().map_or(&user.name, |identity| &identity.user).clone();
        let room = user.seats.first().map_or("-", |seat| self.rooms.name(seat.room)).to_owned();
        Some((who, room))
    }

    /// The soonest token expiry among connected users (Unix seconds), for the shell's
    /// timer: `expire` has work to do then (plus the leeway).
    pub fn next_expiry(&self) -> Option<u64> {
        let leeway = self.access.auth.as_ref().map_or(0, |auth| auth.leeway_secs);
        self.expiries.first().map(|&(exp, _)| exp.saturating_add(leeway))
    }

    /// The connections whose token expired (with the leeway) by `now_secs` and was not
    /// refreshed: each is told `token_expired`; the shell closes them with 1008 (their
    /// rooms hear they left when they part).
    pub fn expire(&mut self, now_secs: u64, out: &mut Outbox) -> Vec<usize> {
        let mut expired = Vec::new();
        while let Some(at) = self.next_expiry().filter(|&at| at <= now_secs) {
            let Some((_, conn)) = self.expiries.pop_first() else { break };
            log::debug!("conn {conn}: token expired at {at}");
            self.fail(conn, Failure::new("token_expired", "token expired"), None, out);
            expired.push(conn);
        }
        expired
    }

    /// A text message from a connection (`proto` proved it UTF-8): a JSON request, a
    /// raw `/command`, or a raw line for the current room.
    pub fn text(&mut self, conn: usize, text: &str, now_ms: u64, out: &mut Outbox) {
        let Some(json) = self.allowed(conn, now_ms, out) else { return };
        if json {
            let (reference, request) = json::parse(text);
            let result = request.map_err(|BadRequest { code, message }| Failure { code, message });
            if let Err(failure) =
                result.and_then(|request| self.request(conn, request, reference.as_ref(), now_ms, out))
            {
                self.fail(conn, failure, reference.as_ref(), out);
            }
            return;
        }
        let result = match text::parse(text) {
            Line::Say(words) => self.say(conn, Said::Text(words), now_ms, out),
            Line::Command(command) => self.command(conn, command, now_ms, out),
            Line::Bad(code, message) => Err(Failure::new(code, message)),
        };
        if let Err(failure) = result {
            self.fail(conn, failure, None, out);
        }
    }

    /// A binary message: relayed by raw clients; from a JSON client, the bytes of the
    /// file it is uploading (`files.rs`), else refused.
    pub fn binary(&mut self, conn: usize, data: &[u8], now_ms: u64, out: &mut Outbox) {
        if self.users.get(&conn).is_some_and(|user| user.json) {
            return self.file_bytes(conn, data, now_ms, out);
        }
        if self.allowed(conn, now_ms, out).is_none() {
            return;
        }
        if let Err(failure) = self.say(conn, Said::Binary(data), now_ms, out) {
            self.fail(conn, failure, None, out);
        }
    }

    // ----- helpers ---------------------------------------------------------------------

    /// Accepts a message: the next id, one more in the count, and a record for history
    /// (when it is on). Every message a client sends passes here exactly once.
    fn accept(&mut self, author: Author, place: Place, to: Option<&str>, body: Said, ts: u64, out: &mut Outbox) -> u64 {
        self.last_id += 1;
        self.messages += 1;
        if self.limits.history {
            let room = match place {
                Place::Room(id) => self.rooms.name(id),
                Place::Named(name) => name,
            };
            let (binary, body) = match body {
                Said::Text(text) => (false, text.as_bytes()),
                Said::Binary(data) => (true, data),
            };
            let from = match author {
                Author::Conn(conn) => &self.users[&conn].name,
                Author::Named(name) => name,
            };
            out.keep(self.last_id, room, from, to, binary, body, ts);
        }
        self.last_id
    }

    /// Rate limiting (`--max-rate`): a message over the allowance is dropped and answered
    /// `rate_limited`; the connection stays open. `Some(json)`: go on, and whether the
    /// user speaks JSON (so the caller needs no second lookup on the relay's hot path).
    fn allowed(&mut self, conn: usize, now_ms: u64, out: &mut Outbox) -> Option<bool> {
        let rate = self.limits.max_rate;
        let user = self.users.get_mut(&conn)?;
        if rate == 0 || !user.rate_limited || user.bucket.take(rate, now_ms) {
            return Some(user.json);
        }
        let message = format!("over {rate} messages per second; this one was dropped");
        self.fail(conn, Failure::new("rate_limited", message), None, out);
        None
    }

    /// Which codecs of `room`'s members but `except` take compressed frames: a message is
    /// compressed only for them (never for a room without such members, nor for a sender
    /// that is the only one).
    fn deflate_for(&self, room: RoomId, except: Option<usize>) -> Deflate {
        let mut count = self.rooms.deflaters(room);
        if count.raw == 0 && count.json == 0 {
            return Deflate { raw: false, json: false }; // the plain relay's case: no user lookup
        }
        let sender = except.and_then(|conn| self.users.get(&conn));
        if let Some(sender) = sender.filter(|u| u.deflate && u.seats.iter().any(|s| s.room == room)) {
            let slot = if sender.json { &mut count.json } else { &mut count.raw };
            *slot = slot.saturating_sub(1);
        }
        Deflate { raw: count.raw > 0, json: count.json > 0 }
    }

    /// The id of `room` if `conn` is a member of it.
    fn membership(&self, conn: usize, room: &str) -> Result<RoomId, Failure> {
        let user = &self.users[&conn];
        let id = self.rooms.find(room).filter(|id| user.seats.iter().any(|s| s.room == *id));
        id.ok_or_else(|| Failure::new("not_member", format!("you are not in {room} (join it first)")))
    }

    fn check_text(&self, text: &str) -> Result<(), Failure> {
        match text.len() > self.limits.max_text {
            true => Err(Failure::new("too_large", format!("text over {} bytes", self.limits.max_text))),
            false => Ok(()),
        }
    }

    /// Has a reply spelled in the codec `conn` speaks, and queued for it. The one place
    /// that asks which codec a user speaks.
    fn tell(&self, conn: usize, reply: Reply, out: &mut Outbox) {
        let Some(user) = self.users.get(&conn) else { return };
        let emit = |text: &str| out.send(conn, text);
        match user.json {
            true => json::render(&reply, emit),
            false => text::render(&reply, emit),
        }
    }

    /// Tells `conn` that its request failed.
    fn fail(&self, conn: usize, failure: Failure, reference: Option<&Value>, out: &mut Outbox) {
        let reply = Reply::Failure { code: failure.code, message: &failure.message, reference };
        self.tell(conn, reply, out);
    }

    /// The names of a room's members, sorted, each once (one user may be there on
    /// several connections).
    fn member_names(&self, room: RoomId) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.rooms.members(room).iter().filter_map(|m| self.users.get(&m.conn)).map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Does the user of `conn` have another connection in `room`? (Then it is still
    /// there for the room: no presence for this one coming or going.)
    fn present_elsewhere(&self, conn: usize, room: RoomId) -> bool {
        let Some(user) = self.users.get(&conn) else { return false };
        let others = self.names.get(&user.name).into_iter().flatten().filter(|&&c| c != conn);
        others.filter_map(|c| self.users.get(c)).any(|other| other.seats.iter().any(|s| s.room == room))
    }

    /// With tokens: may `conn` join (and read) `room`? Without tokens, always.
    fn may_join(&self, conn: usize, room: &str) -> Result<(), Failure> {
        match self.users[&conn].identity.as_ref() {
            Some(identity) if !identity.may_join(room) => {
                Err(Failure::new("forbidden", format!("you may not join or read {room}")))
            }
            _ => Ok(()),
        }
    }

    /// With tokens: may `conn` send to `room`? Without tokens, always.
    fn may_publish(&self, conn: usize, room: &str) -> Result<(), Failure> {
        match self.users[&conn].identity.as_ref() {
            Some(identity) if !identity.may_publish(room) => {
                Err(Failure::new("forbidden", format!("you may not send to {room}")))
            }
            _ => Ok(()),
        }
    }

    /// The name a token's user goes by: its `name`, else its user id, if free or already
    /// its own (its other connections); else the user id with a number.
    fn name_for(&mut self, identity: &Identity) -> String {
        if identity.user.is_empty() {
            return self.guest_name();
        }
        let free_or_own = |chat: &Chat, name: &str| match chat.names.get(name).and_then(|conns| conns.first()) {
            None => true,
            Some(conn) => chat.users[conn].identity.as_ref().is_some_and(|other| other.user == identity.user),
        };
        for name in [&identity.name, &identity.user] {
            if free_or_own(self, name) {
                return name.clone();
            }
        }
        (2..).map(|n| format!("{}-{n}", identity.user)).find(|name| free_or_own(self, name)).unwrap_or_default()
    }

    /// `conn` no longer goes by `name`.
    fn release_name(&mut self, name: &str, conn: usize) {
        if let Some(conns) = self.names.get_mut(name) {
            conns.retain(|&c| c != conn);
            if conns.is_empty() {
                self.names.remove(name);
                self.watch(cluster::Watch::User(name.to_owned(), false));
            }
        }
    }

    /// `guest-N`, skipping names someone already chose.
    fn guest_name(&mut self) -> String {
        loop {
            self.guests += 1;
            let name = format!("guest-{}{}", self.guests, self.guest_tag);
            if !self.names.contains_key(&name) {
                return name;
            }
        }
    }
}

#[cfg(test)]
mod size {
    /// Every connection has a `User`: it must stay small (tokens and uploads are boxed).
    #[test]
    fn a_user_stays_small() {
        let size = std::mem::size_of::<super::User>();
        eprintln!("User: {size} bytes");
        assert!(size <= 128, "User grew to {size} bytes");
    }
}
