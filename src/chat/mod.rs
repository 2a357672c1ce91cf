//! What a message means: users, names, rooms, commands and envelopes. Pure code.
//!
//! Owns: who is connected under which name, who is in which room, message ids, and the
//! frames each action produces. Must not touch: sockets, the clock (`now_ms` is passed
//! in), write queues. Its output is an `Outbox` of already framed bytes addressed to one
//! connection or to a room; the shell (`server/broadcast.rs`) turns each room output into
//! one shared chunk per codec and pushes a reference to every member's queue.
//!
//! One chat core, two codecs: a connection that negotiated `pollcast.v1` speaks JSON
//! envelopes (`json.rs`); any other is a raw client whose text and binary messages are
//! relayed verbatim, except text lines starting with `/`, which are commands (`text.rs`).
//! Both kinds share rooms: a raw line reaches JSON members as a `message` envelope, a
//! JSON `send` reaches raw members as its plain text.

pub mod auth;
pub mod json;
pub mod names;
pub mod rooms;
pub mod text;

use std::collections::HashMap;

use serde_json::Value;

use crate::proto::frame::{write_frame, OpCode};
use crate::proto::handshake::valid_room_name;
use crate::store::{Page, Query, StoredMessage, DM_ROOM};
use json::{BadRequest, Envelope, Request, RoomCount};
use names::NameError;
use rooms::{Member, RoomId, Rooms, Seat};
use text::{Command, Line};

/// A connection joining the chat, as its upgrade request described it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub conn: usize,            // the shell's slab key
    pub json: bool,             // negotiated pollcast.v1
    pub name: Option<&'a str>,  // `?name=`, decoded
    pub room: &'a str,          // from the URL path
    pub history: Option<usize>, // `?history=N`
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
}

/// Where framed bytes go.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Frames for one connection.
    To { conn: usize, frames: Vec<u8> },
    /// Frames for the members of a room but `except`: raw members get `raw`, JSON members
    /// get `json` (either may be empty: that kind of member gets nothing).
    Room { room: RoomId, except: Option<usize>, raw: Vec<u8>, json: Vec<u8>, messages: u64 },
    /// Part of a room's history for one connection: the shell reads the store here, in
    /// order, and sends `history_frames()` of the page.
    History { conn: usize, room: String, query: Query, json: bool },
}

/// A JSON `send` or `dm` accepted as message `id`: the shell sends the `ack` once the
/// message is committed to history (or an `error` if the commit failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub conn: usize, // the sender
    pub cid: Value,  // the sender's id for the request (null if it gave none)
    pub id: u64,     // the message id
}

impl Ack {
    /// The frame telling the sender how it went.
    pub fn frame(&self, stored: Result<(), &str>) -> Vec<u8> {
        let text = match stored {
            Ok(()) => Envelope::Ack { cid: &self.cid, id: self.id }.to_json(),
            Err(why) => {
                error_envelope("store_failed", &format!("message {} not stored: {why}", self.id), Some(&self.cid))
            }
        };
        let mut frame = Vec::with_capacity(text.len() + 4);
        write_frame(&mut frame, OpCode::Text, text.as_bytes());
        frame
    }
}

/// The frames answering a history query: raw clients get each message as its own frame
/// (as it was relayed), JSON clients one `history` envelope (text messages only).
pub fn history_frames(room: &str, page: &Page, json: bool) -> Vec<u8> {
    let mut frames = Vec::new();
    if !json {
        for m in &page.messages {
            write_frame(&mut frames, if m.binary { OpCode::Binary } else { OpCode::Text }, &m.body);
        }
        return frames;
    }
    let messages = page
        .messages
        .iter()
        .filter(|m| !m.binary)
        .map(|m| {
            let text = line_text(std::str::from_utf8(&m.body).unwrap_or_default());
            Envelope::Message { id: m.id, room, from: &m.from, text, ts: m.ts }
        })
        .collect();
    let envelope = Envelope::History { room, messages, more: page.more, recovered: page.recovered };
    write_frame(&mut frames, OpCode::Text, envelope.to_json().as_bytes());
    frames
}

/// The frames produced while handling input, in order. Consecutive outputs to the same
/// place are merged, so a burst of relayed messages becomes one chunk per codec.
#[derive(Debug, Default)]
pub struct Outbox {
    outputs: Vec<Output>,           // in the order they must be delivered
    pub stored: Vec<StoredMessage>, // messages to append to history (when it is on)
    pub acks: Vec<Ack>,             // acks owed once `stored` is committed
    spare: Vec<Vec<u8>>,            // empty buffers with capacity, for the next outputs' frames
}

/// Spare buffers the outbox keeps at most, and the capacities worth keeping: a smaller
/// buffer saves little, a larger one is an outlier (a huge message) not worth holding.
const SPARE_BUFFERS: usize = 16;
const SPARE_CAPACITY: std::ops::RangeInclusive<usize> = (4 << 10)..=(256 << 10);

/// Gives `frames` a spare buffer to grow into if it has none yet.
fn reuse(spare: &mut Vec<Vec<u8>>, frames: &mut Vec<u8>) {
    if frames.capacity() == 0 {
        if let Some(buffer) = spare.pop() {
            *frames = buffer;
        }
    }
}

impl Outbox {
    /// Whether a buffer of this capacity is worth recycling.
    pub fn worth_keeping(capacity: usize) -> bool {
        SPARE_CAPACITY.contains(&capacity)
    }

    /// Keeps a buffer whose frames have all been sent, to write later outputs into, so a
    /// busy server reuses a few warm buffers instead of allocating one per read.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && Outbox::worth_keeping(buffer.capacity()) {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    /// A frame of any data opcode for one connection (echo mode).
    pub fn send_frame(&mut self, conn: usize, opcode: OpCode, payload: &[u8]) {
        self.append_to(conn, |frames| write_frame(frames, opcode, payload));
    }

    /// A text frame for one connection.
    pub fn send(&mut self, conn: usize, text: &str) {
        self.append_to(conn, |frames| write_frame(frames, OpCode::Text, text.as_bytes()));
    }

    /// Appends to the last output if it is for `conn`, else starts a new one.
    fn append_to(&mut self, conn: usize, write: impl FnOnce(&mut Vec<u8>)) {
        match self.outputs.last_mut() {
            Some(Output::To { conn: last, frames }) if *last == conn => write(frames),
            _ => {
                let mut frames = Vec::new();
                write(&mut frames);
                self.outputs.push(Output::To { conn, frames });
            }
        }
    }

    /// A message for a room: `raw` (opcode and payload) for raw members, `json` text for
    /// JSON members.
    pub fn broadcast(&mut self, room: RoomId, except: Option<usize>, raw: Option<(OpCode, &[u8])>, json: Option<&str>) {
        let merge =
            matches!(self.outputs.last(), Some(Output::Room { room: r, except: e, .. }) if *r == room && *e == except);
        if !merge {
            self.outputs.push(Output::Room { room, except, raw: Vec::new(), json: Vec::new(), messages: 0 });
        }
        let Some(Output::Room { raw: raw_frames, json: json_frames, messages, .. }) = self.outputs.last_mut() else {
            unreachable!("the last output is this room's")
        };
        if let Some((opcode, payload)) = raw {
            *messages += 1; // data messages always have a raw form; presence does not count
            reuse(&mut self.spare, raw_frames);
            write_frame(raw_frames, opcode, payload);
        }
        if let Some(text) = json {
            reuse(&mut self.spare, json_frames);
            write_frame(json_frames, OpCode::Text, text.as_bytes());
        }
    }

    /// Asks for part of a room's history to be sent to `conn` at this point.
    pub fn history(&mut self, conn: usize, room: &str, query: Query, json: bool) {
        self.outputs.push(Output::History { conn, room: room.to_owned(), query, json });
    }

    /// Takes the outputs, leaving the outbox empty.
    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }
}

/// One connected user.
#[derive(Debug)]
struct User {
    name: String,     // unique among connected users
    json: bool,       // speaks pollcast.v1
    seats: Vec<Seat>, // rooms it is in; a raw user has at most one, its current room
    bucket: Bucket,   // what is left of its message allowance (`max_rate`)
}

/// A token bucket: `rate` tokens a second, up to `2 × rate`; a message takes one.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens_milli: u64, // tokens × 1000, so refills need no floating point
    last_ms: u64,      // when it was last refilled
}

impl Bucket {
    fn full(rate: u32, now_ms: u64) -> Bucket {
        Bucket { tokens_milli: 2000 * u64::from(rate), last_ms: now_ms }
    }

    /// Takes a token if there is one; `rate` 0 means unlimited.
    fn take(&mut self, rate: u32, now_ms: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let cap = 2000 * u64::from(rate);
        self.tokens_milli = (self.tokens_milli + elapsed * u64::from(rate)).min(cap);
        self.last_ms = now_ms;
        match self.tokens_milli >= 1000 {
            true => {
                self.tokens_milli -= 1000;
                true
            }
            false => false,
        }
    }
}

/// The chat state of the whole server.
#[derive(Debug)]
pub struct Chat {
    limits: ChatLimits,            // from Config
    users: HashMap<usize, User>,   // by connection
    names: HashMap<String, usize>, // name → connection
    rooms: Rooms,                  // membership
    last_id: u64,                  // the last message id given out
    messages: u64,                 // messages accepted since start
    guests: u64,                   // counter behind generated names
}

/// A failed request: code, message, and the request's `ref` for JSON clients.
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }
}

impl From<NameError> for Failure {
    fn from(e: NameError) -> Failure {
        Failure::new(e.code(), e.message())
    }
}

impl Chat {
    pub fn new(limits: ChatLimits) -> Chat {
        Chat {
            limits,
            users: HashMap::new(),
            names: HashMap::new(),
            rooms: Rooms::default(),
            last_id: 0,
            messages: 0,
            guests: 0,
        }
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
        self.rooms.name(room)
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
    /// (a raw client's name was checked before the upgrade; a JSON client with a bad or
    /// taken name gets an `error` and a generated name), joins its room, and is sent the
    /// history it asked for (`?history=N`; JSON clients get the default count otherwise).
    pub fn connect(&mut self, arrival: Arrival, now_ms: u64, out: &mut Outbox) {
        let Arrival { conn, json, name, room, history } = arrival;
        let name = match name.map(|n| (n, self.name_available(n))) {
            Some((name, Ok(()))) => name.to_owned(),
            Some((_, Err(e))) => {
                if json {
                    out.send(conn, &error_envelope(e.code(), e.message(), None));
                }
                self.guest_name()
            }
            None => self.guest_name(),
        };
        self.names.insert(name.clone(), conn);
        let bucket = Bucket::full(self.limits.max_rate, now_ms);
        self.users.insert(conn, User { name, json, seats: Vec::new(), bucket });
        if json {
            let user = &self.users[&conn];
            out.send(conn, &Envelope::Welcome { you: &user.name, rooms: vec![room] }.to_json());
        }
        // A raw client is sent nothing it did not ask for: no reply to this first join.
        if let Err(failure) = self.join(conn, room, json, out) {
            self.reply_failure(conn, failure, None, out);
            return;
        }
        let wanted = if json { history.or(Some(self.limits.history_default)) } else { history };
        self.replay(conn, room, wanted.map(Query::Last), json, out);
    }

    /// Queues a history answer, if history is on and something was asked for.
    fn replay(&self, conn: usize, room: &str, query: Option<Query>, json: bool, out: &mut Outbox) {
        let query = match query {
            Some(Query::Last(n)) => Query::Last(n.min(self.limits.history_max)),
            Some(Query::Before { before, n }) => Query::Before { before, n: n.min(self.limits.history_max) },
            Some(since @ Query::Since(_)) => since,
            None => return,
        };
        if self.limits.history && query != Query::Last(0) {
            out.history(conn, room, query, json);
        }
    }

    /// A connection is gone, however it went: it leaves every room (members are told)
    /// and its name is free again.
    pub fn disconnect(&mut self, conn: usize, out: &mut Outbox) {
        let Some(user) = self.users.get(&conn) else { return };
        for seat in user.seats.clone().into_iter().rev() {
            self.leave_seat(conn, seat, out);
        }
        if let Some(user) = self.users.remove(&conn) {
            self.names.remove(&user.name);
        }
    }

    /// A text message from a connection.
    pub fn text(&mut self, conn: usize, text: &str, now_ms: u64, out: &mut Outbox) {
        if !self.allowed(conn, now_ms, out) {
            return;
        }
        let Some(user) = self.users.get(&conn) else { return };
        if user.json {
            let (reference, request) = json::parse(text);
            let result = request.map_err(|BadRequest { code, message }| Failure { code, message });
            if let Err(failure) = result.and_then(|request| self.request(conn, request, now_ms, out)) {
                self.reply_failure(conn, failure, reference.as_ref(), out);
            }
            return;
        }
        let result = match text::parse(text) {
            Line::Say(words) => self.say(conn, OpCode::Text, words.as_bytes(), now_ms, out),
            Line::Command(command) => self.command(conn, command, now_ms, out),
            Line::Bad(code, message) => Err(Failure::new(code, message)),
        };
        if let Err(failure) = result {
            self.reply_failure(conn, failure, None, out);
        }
    }

    /// A binary message: relayed by raw clients, refused from JSON clients.
    pub fn binary(&mut self, conn: usize, data: &[u8], now_ms: u64, out: &mut Outbox) {
        if !self.allowed(conn, now_ms, out) {
            return;
        }
        let Some(user) = self.users.get(&conn) else { return };
        let result = match user.json {
            true => Err(Failure::new("bad_json", "pollcast.v1 takes JSON text frames, not binary")),
            false => self.say(conn, OpCode::Binary, data, now_ms, out),
        };
        if let Err(failure) = result {
            self.reply_failure(conn, failure, None, out);
        }
    }

    // ----- actions ---------------------------------------------------------------------

    /// A raw client's message for its current room: verbatim to raw members, as an
    /// envelope to JSON members (text only), never back to the sender.
    fn say(
        &mut self,
        conn: usize,
        opcode: OpCode,
        payload: &[u8],
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        let user = &self.users[&conn];
        let Some(seat) = user.seats.first() else {
            return Err(Failure::new("not_member", "you are in no room (try /join ROOM)"));
        };
        self.last_id += 1;
        self.messages += 1;
        let json = match (opcode, self.rooms.has_json_members(seat.room)) {
            (OpCode::Text, true) => {
                // Text came through UTF-8 validation in the session, so this cannot fail.
                let text = line_text(std::str::from_utf8(payload).unwrap_or_default());
                let room = self.rooms.name(seat.room);
                Some(Envelope::Message { id: self.last_id, room, from: &user.name, text, ts: now_ms }.to_json())
            }
            _ => None,
        };
        out.broadcast(seat.room, Some(conn), Some((opcode, payload)), json.as_deref());
        if self.limits.history {
            let room = self.rooms.name(seat.room).to_owned();
            out.stored.push(StoredMessage {
                id: self.last_id,
                room,
                from: user.name.clone(),
                to: None,
                binary: opcode == OpCode::Binary,
                body: payload.to_vec(),
                ts: now_ms,
            });
        }
        Ok(())
    }

    /// A JSON request.
    fn request(&mut self, conn: usize, request: Request, now_ms: u64, out: &mut Outbox) -> Result<(), Failure> {
        match request {
            Request::Join { room, since, history } => {
                self.join(conn, &room, true, out)?;
                let query = match (since, history) {
                    (Some(since), _) => Query::Since(since),
                    (None, n) => Query::Last(n.unwrap_or(self.limits.history_default)),
                };
                self.replay(conn, &room, Some(query), true, out);
                Ok(())
            }
            Request::History { room, before, limit } => {
                self.membership(conn, &room)?;
                let query = Query::Before {
                    before: before.unwrap_or(u64::MAX),
                    n: limit.unwrap_or(self.limits.history_default),
                };
                self.replay(conn, &room, Some(query), true, out);
                if !self.limits.history {
                    return Err(Failure::new("no_history", "this server keeps no history"));
                }
                Ok(())
            }
            Request::Leave { room } => self.leave(conn, &room, out),
            Request::Send { room, text, cid } => self.send(conn, &room, &text, cid, now_ms, out),
            Request::Dm { to, text, cid } => self.dm(conn, &to, &text, cid, now_ms, out),
            Request::Who { room } => self.who(conn, &room, out),
            Request::Rooms {} => self.list_rooms(conn, out),
            Request::Nick { name } => self.nick(conn, &name, out),
            Request::Stats {} => self.stats(conn, out),
        }
    }

    /// A raw client's command.
    fn command(&mut self, conn: usize, command: Command, now_ms: u64, out: &mut Outbox) -> Result<(), Failure> {
        let current = self.users[&conn].seats.first().map(|seat| self.rooms.name(seat.room).to_owned());
        match command {
            Command::Nick(name) => self.nick(conn, name, out),
            Command::Join(room) => self.join(conn, room, true, out),
            Command::Leave(room) => match room.map(str::to_owned).or(current) {
                Some(room) => self.leave(conn, &room, out),
                None => Err(Failure::new("not_member", "you are in no room")),
            },
            Command::Msg(to, text) => self.dm(conn, to, text, None, now_ms, out),
            Command::Who(room) => match room.map(str::to_owned).or(current) {
                Some(room) => self.who(conn, &room, out),
                None => Err(Failure::new("not_member", "you are in no room (try /who ROOM)")),
            },
            Command::Rooms => self.list_rooms(conn, out),
            Command::Stats => self.stats(conn, out),
            Command::Help => {
                for line in text::HELP {
                    out.send(conn, line);
                }
                Ok(())
            }
        }
    }

    /// Joins a room. A raw client moves (it has one current room); a JSON client adds
    /// the room to its set, up to `max_rooms_per_client`. `reply`: confirm to the user.
    fn join(&mut self, conn: usize, room: &str, reply: bool, out: &mut Outbox) -> Result<(), Failure> {
        if !valid_room_name(room) {
            return Err(Failure::new("bad_field", "room names are 1-64 of A-Z a-z 0-9 _ . -"));
        }
        let user = &self.users[&conn];
        let json = user.json;
        let already = self.rooms.find(room).filter(|id| user.seats.iter().any(|s| s.room == *id));
        match (already, json) {
            (Some(_), false) => {
                out.send(conn, &format!("ok join {room}"));
                return Ok(());
            }
            (Some(id), true) => {
                out.send(conn, &self.joined_envelope(id));
                return Ok(());
            }
            (None, true) if user.seats.len() >= self.limits.max_rooms_per_client => {
                let message = format!("at most {} rooms per client", self.limits.max_rooms_per_client);
                return Err(Failure::new("too_many_rooms", message));
            }
            (None, _) => {}
        }
        if !json {
            if let Some(&seat) = user.seats.first() {
                self.leave_seat(conn, seat, out);
            }
        }
        let seat = self.rooms.join(room, Member { conn, json });
        let user = self.users.get_mut(&conn).expect("checked above");
        user.seats.push(seat);
        let presence = Envelope::Presence { room, user: &user.name, event: "join", old: None }.to_json();
        out.broadcast(seat.room, Some(conn), None, Some(&presence));
        match (reply, json) {
            (false, _) => {}
            (true, true) => out.send(conn, &self.joined_envelope(seat.room)),
            (true, false) => out.send(conn, &format!("ok join {room}")),
        }
        Ok(())
    }

    /// Leaves a room the user is in.
    fn leave(&mut self, conn: usize, room: &str, out: &mut Outbox) -> Result<(), Failure> {
        let id = self.rooms.find(room);
        let user = &self.users[&conn];
        let Some(&seat) = user.seats.iter().find(|s| Some(s.room) == id) else {
            return Err(Failure::new("not_member", format!("you are not in {room}")));
        };
        let json = user.json;
        self.leave_seat(conn, seat, out);
        match json {
            true => out.send(conn, &Envelope::Left { room }.to_json()),
            false => out.send(conn, &format!("ok leave {room}")),
        }
        Ok(())
    }

    /// Takes one membership away, keeps the moved member's seat right, tells the room.
    fn leave_seat(&mut self, conn: usize, seat: Seat, out: &mut Outbox) {
        let room_name = self.rooms.name(seat.room).to_owned();
        if let Some(moved) = self.rooms.leave(seat) {
            if let Some(other) = self.users.get_mut(&moved.conn) {
                if let Some(s) = other.seats.iter_mut().find(|s| s.room == seat.room) {
                    s.index = seat.index;
                }
            }
        }
        let Some(user) = self.users.get_mut(&conn) else { return };
        user.seats.retain(|s| s.room != seat.room);
        if self.rooms.has_json_members(seat.room) {
            let presence = Envelope::Presence { room: &room_name, user: &user.name, event: "leave", old: None };
            out.broadcast(seat.room, Some(conn), None, Some(&presence.to_json()));
        }
    }

    /// A JSON `send`: to every member (the sender gets its own copy as the confirmation
    /// of order, then an `ack`).
    fn send(
        &mut self,
        conn: usize,
        room: &str,
        text: &str,
        cid: Option<Value>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        let room_id = self.membership(conn, room)?;
        self.check_text(text)?;
        let user = &self.users[&conn];
        self.last_id += 1;
        self.messages += 1;
        let id = self.last_id;
        let envelope = Envelope::Message { id, room, from: &user.name, text, ts: now_ms }.to_json();
        out.broadcast(room_id, Some(conn), Some((OpCode::Text, text.as_bytes())), Some(&envelope));
        out.send(conn, &envelope);
        self.record(id, room, None, conn, text, now_ms, out);
        out.acks.push(Ack { conn, cid: cid.unwrap_or(Value::Null), id });
        Ok(())
    }

    /// A direct message: the recipient and the sender both get it (JSON: a `dm`
    /// envelope, raw: a `dm FROM TEXT` line), then the sender an `ack` (raw: `ok msg`).
    fn dm(
        &mut self,
        conn: usize,
        to: &str,
        text: &str,
        cid: Option<Value>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        let Some(&target) = self.names.get(to) else {
            return Err(Failure::new("no_such_user", format!("{to} is not connected")));
        };
        self.check_text(text)?;
        self.last_id += 1;
        self.messages += 1;
        let id = self.last_id;
        let sender = &self.users[&conn];
        let envelope = Envelope::Dm { id, from: &sender.name, to, text, ts: now_ms }.to_json();
        match self.users[&target].json {
            true => out.send(target, &envelope),
            false => out.send(target, &format!("dm {} {text}", sender.name)),
        }
        match sender.json {
            true => {
                if target != conn {
                    out.send(conn, &envelope);
                }
                out.acks.push(Ack { conn, cid: cid.unwrap_or(Value::Null), id });
            }
            false => out.send(conn, &format!("ok msg {to} {id}")),
        }
        self.record(id, DM_ROOM, Some(to), conn, text, now_ms, out);
        Ok(())
    }

    fn who(&mut self, conn: usize, room: &str, out: &mut Outbox) -> Result<(), Failure> {
        let members = self.rooms.find(room).map(|id| self.member_names(id)).unwrap_or_default();
        match self.users[&conn].json {
            true => out.send(conn, &Envelope::Who { room, members }.to_json()),
            false => out.send(conn, format!("who {room} {}", members.join(" ")).trim_end()),
        }
        Ok(())
    }

    fn list_rooms(&mut self, conn: usize, out: &mut Outbox) -> Result<(), Failure> {
        match self.users[&conn].json {
            true => {
                let rooms = self.rooms.list().map(|(room, members)| RoomCount { room, members }).collect();
                out.send(conn, &Envelope::Rooms { rooms }.to_json());
            }
            false => {
                let list: Vec<String> = self.rooms.list().map(|(room, n)| format!("{room}:{n}")).collect();
                out.send(conn, format!("rooms {}", list.join(" ")).trim_end());
            }
        }
        Ok(())
    }

    /// Renames a user; every room it is in hears a `presence` with event `rename`.
    fn nick(&mut self, conn: usize, name: &str, out: &mut Outbox) -> Result<(), Failure> {
        if self.users[&conn].name == name {
            return self.reply_nick(conn, name, out);
        }
        self.name_available(name)?;
        let user = self.users.get_mut(&conn).expect("callers pass connected users");
        let old = std::mem::replace(&mut user.name, name.to_owned());
        self.names.remove(&old);
        self.names.insert(name.to_owned(), conn);
        for seat in &self.users[&conn].seats {
            let room = self.rooms.name(seat.room);
            let presence = Envelope::Presence { room, user: name, event: "rename", old: Some(&old) }.to_json();
            out.broadcast(seat.room, Some(conn), None, Some(&presence));
        }
        self.reply_nick(conn, &old, out)
    }

    fn reply_nick(&self, conn: usize, old: &str, out: &mut Outbox) -> Result<(), Failure> {
        let user = &self.users[&conn];
        match user.json {
            true => out.send(conn, &Envelope::Nick { old, you: &user.name }.to_json()),
            false => out.send(conn, &format!("ok nick {}", user.name)),
        }
        Ok(())
    }

    fn stats(&mut self, conn: usize, out: &mut Outbox) -> Result<(), Failure> {
        let (users, rooms, messages) = (self.users.len(), self.rooms.len(), self.messages);
        match self.users[&conn].json {
            true => out.send(conn, &Envelope::Stats { users, rooms, messages }.to_json()),
            false => out.send(conn, &format!("stats users={users} rooms={rooms} messages={messages}")),
        }
        Ok(())
    }

    // ----- helpers ---------------------------------------------------------------------

    /// Rate limiting (`--max-rate`): a message over the allowance is dropped and answered
    /// `rate_limited`; the connection stays open.
    fn allowed(&mut self, conn: usize, now_ms: u64, out: &mut Outbox) -> bool {
        let rate = self.limits.max_rate;
        if rate == 0 {
            return true; // no limit: no lookup on the relay's hot path
        }
        let Some(user) = self.users.get_mut(&conn) else { return false };
        if user.bucket.take(rate, now_ms) {
            return true;
        }
        let message = format!("over {rate} messages per second; this one was dropped");
        self.reply_failure(conn, Failure::new("rate_limited", message), None, out);
        false
    }

    /// The id of `room` if `conn` is a member of it.
    fn membership(&self, conn: usize, room: &str) -> Result<RoomId, Failure> {
        let user = &self.users[&conn];
        let id = self.rooms.find(room).filter(|id| user.seats.iter().any(|s| s.room == *id));
        id.ok_or_else(|| Failure::new("not_member", format!("you are not in {room} (join it first)")))
    }

    /// Keeps a text message for history, when history is on.
    #[allow(clippy::too_many_arguments)] // one row's worth of fields, each from a different place
    fn record(&self, id: u64, room: &str, to: Option<&str>, conn: usize, text: &str, ts: u64, out: &mut Outbox) {
        if self.limits.history {
            out.stored.push(StoredMessage {
                id,
                room: room.to_owned(),
                from: self.users[&conn].name.clone(),
                to: to.map(str::to_owned),
                binary: false,
                body: text.as_bytes().to_vec(),
                ts,
            });
        }
    }

    fn check_text(&self, text: &str) -> Result<(), Failure> {
        match text.len() > self.limits.max_text {
            true => Err(Failure::new("too_large", format!("text over {} bytes", self.limits.max_text))),
            false => Ok(()),
        }
    }

    fn reply_failure(&self, conn: usize, failure: Failure, reference: Option<&Value>, out: &mut Outbox) {
        match self.users.get(&conn).is_some_and(|u| u.json) {
            true => out.send(conn, &error_envelope(failure.code, &failure.message, reference)),
            false => out.send(conn, &text::err(failure.code, &failure.message)),
        }
    }

    fn joined_envelope(&self, room: RoomId) -> String {
        Envelope::Joined { room: self.rooms.name(room), members: self.member_names(room) }.to_json()
    }

    fn member_names(&self, room: RoomId) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.rooms.members(room).iter().filter_map(|m| self.users.get(&m.conn)).map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// `guest-N`, skipping names someone already chose.
    fn guest_name(&mut self) -> String {
        loop {
            self.guests += 1;
            let name = format!("guest-{}", self.guests);
            if !self.names.contains_key(&name) {
                return name;
            }
        }
    }
}

/// A raw client's text as JSON clients see it: websocat sends each line with its
/// newline, the envelope carries the line. (Raw members get the bytes unchanged.)
fn line_text(text: &str) -> &str {
    text.strip_suffix('\n').map_or(text, |t| t.strip_suffix('\r').unwrap_or(t))
}

fn error_envelope(code: &str, message: &str, reference: Option<&Value>) -> String {
    Envelope::Error { code, message, reference: reference.unwrap_or(&Value::Null) }.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameHeader;

    const LIMITS: ChatLimits = ChatLimits {
        max_rooms_per_client: 2,
        max_text: 16,
        history: false,
        history_default: 50,
        history_max: 500,
        max_rate: 0,
    };

    /// The payloads of the server frames in `bytes`, as text.
    fn texts(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (header, len) = FrameHeader::parse(&bytes[at..]).unwrap().unwrap();
            let end = at + len + header.payload_len as usize;
            out.push(String::from_utf8_lossy(&bytes[at + len..end]).into_owned());
            at = end;
        }
        out
    }

    /// Every output flattened to `(recipient, text)`, rooms expanded to their members.
    fn deliveries(chat: &Chat, out: &mut Outbox) -> Vec<(usize, String)> {
        let mut list = Vec::new();
        for output in out.take() {
            match output {
                Output::To { conn, frames } => list.extend(texts(&frames).into_iter().map(|t| (conn, t))),
                Output::Room { room, except, raw, json, .. } => {
                    for m in chat.members(room).iter().filter(|m| Some(m.conn) != except) {
                        let frames = if m.json { &json } else { &raw };
                        list.extend(texts(frames).into_iter().map(|t| (m.conn, t)));
                    }
                }
                Output::History { conn, room, query, .. } => list.push((conn, format!("history {room} {query:?}"))),
            }
        }
        for ack in std::mem::take(&mut out.acks) {
            list.extend(texts(&ack.frame(Ok(()))).into_iter().map(|t| (ack.conn, t)));
        }
        out.stored.clear();
        list
    }

    fn to(list: &[(usize, String)], conn: usize) -> Vec<String> {
        list.iter().filter(|(c, _)| *c == conn).map(|(_, t)| t.clone()).collect()
    }

    fn arrival(conn: usize, json: bool, name: &str) -> Arrival<'_> {
        Arrival { conn, json, name: Some(name), room: "lobby", history: None }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// A chat with raw `ann` (1) and JSON `jay` (2) in `lobby`; the outbox is emptied.
    fn lobby() -> (Chat, Outbox) {
        let mut chat = Chat::new(LIMITS);
        let mut out = Outbox::default();
        chat.connect(arrival(1, false, "ann"), 0, &mut out);
        chat.connect(arrival(2, true, "jay"), 0, &mut out);
        out.take();
        (chat, out)
    }

    #[test]
    fn json_connect_gets_welcome_then_joined_and_others_presence() {
        let (mut chat, mut out) = lobby();
        chat.connect(arrival(3, true, "kim"), 0, &mut out);
        let list = deliveries(&chat, &mut out);
        let kim = to(&list, 3);
        assert_eq!(json(&kim[0]), serde_json::json!({"type":"welcome","you":"kim","rooms":["lobby"]}));
        assert_eq!(json(&kim[1]), serde_json::json!({"type":"joined","room":"lobby","members":["ann","jay","kim"]}));
        assert_eq!(json(&to(&list, 2)[0])["event"], "join");
        assert!(to(&list, 1).is_empty(), "raw clients get nothing unasked");
    }

    #[test]
    fn raw_line_reaches_raw_verbatim_and_json_as_envelope() {
        let (mut chat, mut out) = lobby();
        chat.connect(arrival(3, false, "bo"), 0, &mut out);
        assert!(to(&deliveries(&chat, &mut out), 3).is_empty(), "a raw client's join is not answered");
        chat.text(1, "hi all\n", 42, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(to(&list, 3), vec!["hi all\n"]);
        let envelope = json(&to(&list, 2)[0]);
        assert_eq!(
            envelope,
            serde_json::json!({"type":"message","id":1,"room":"lobby","from":"ann","text":"hi all","ts":42})
        );
        assert!(to(&list, 1).is_empty(), "never back to the sender");
    }

    #[test]
    fn burst_of_raw_lines_is_one_output() {
        let (mut chat, mut out) = lobby();
        for i in 0..5 {
            chat.text(1, &format!("line {i}"), 0, &mut out);
        }
        let outputs = out.take();
        assert_eq!(outputs.len(), 1);
        let Output::Room { messages, raw, json, .. } = &outputs[0] else { panic!() };
        assert_eq!((*messages, texts(raw).len(), texts(json).len()), (5, 5, 5));
    }

    #[test]
    fn room_outputs_are_written_into_recycled_buffers() {
        let (mut chat, mut out) = lobby();
        out.recycle(vec![0; 64]); // too small to be worth keeping
        out.recycle(vec![0; 1 << 20]); // an outlier: not held
        out.recycle(Vec::with_capacity(64 << 10));
        out.recycle(Vec::with_capacity(32 << 10));
        assert_eq!(out.spare.len(), 2);
        chat.text(1, "hello", 0, &mut out);
        let outputs = out.take();
        let Output::Room { raw, json, .. } = &outputs[0] else { panic!() };
        assert_eq!(texts(raw), ["hello"], "a reused buffer starts empty");
        let mut capacities = [raw.capacity(), json.capacity()];
        capacities.sort_unstable();
        assert_eq!(capacities, [32 << 10, 64 << 10], "both codecs' frames went into spares");
        assert!(out.spare.is_empty());
    }

    #[test]
    fn json_send_acks_and_reaches_raw_as_text() {
        let (mut chat, mut out) = lobby();
        chat.text(2, r#"{"type":"send","room":"lobby","text":"yo","cid":"c1"}"#, 7, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(to(&list, 1), vec!["yo"]);
        let jay = to(&list, 2);
        assert_eq!(json(&jay[0])["type"], "message");
        assert_eq!(json(&jay[1]), serde_json::json!({"type":"ack","cid":"c1","id":1}));
    }

    #[test]
    fn every_json_error_code() {
        let (mut chat, mut out) = lobby();
        let cases = [
            ("{", "bad_json"),
            (r#"{"type":"fly"}"#, "unknown_type"),
            (r#"{"type":"send","room":"lobby"}"#, "bad_field"),
            (r#"{"type":"send","room":"elsewhere","text":"x","ref":9}"#, "not_member"),
            (r#"{"type":"send","room":"lobby","text":"this text is far too long"}"#, "too_large"),
            (r#"{"type":"dm","to":"nobody","text":"x"}"#, "no_such_user"),
            (r#"{"type":"nick","name":"ann"}"#, "name_taken"),
            (r#"{"type":"nick","name":"a b"}"#, "bad_field"),
            (r#"{"type":"join","room":"bad room"}"#, "bad_field"),
            (r#"{"type":"leave","room":"elsewhere"}"#, "not_member"),
        ];
        for (request, code) in cases {
            chat.text(2, request, 0, &mut out);
            let reply = json(&to(&deliveries(&chat, &mut out), 2)[0]);
            assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{request}");
        }
        chat.text(2, r#"{"type":"send","room":"elsewhere","text":"x","ref":9}"#, 0, &mut out);
        assert_eq!(json(&to(&deliveries(&chat, &mut out), 2)[0])["ref"], 9);
        chat.binary(2, b"\x00", 0, &mut out);
        assert_eq!(json(&to(&deliveries(&chat, &mut out), 2)[0])["code"], "bad_json");
    }

    #[test]
    fn too_many_rooms() {
        let (mut chat, mut out) = lobby();
        chat.text(2, r#"{"type":"join","room":"b"}"#, 0, &mut out);
        chat.text(2, r#"{"type":"join","room":"c"}"#, 0, &mut out);
        let jay = to(&deliveries(&chat, &mut out), 2);
        assert_eq!(json(&jay[0])["type"], "joined");
        assert_eq!(json(&jay[1])["code"], "too_many_rooms");
    }

    #[test]
    fn dm_between_codecs_both_sides_see_it() {
        let (mut chat, mut out) = lobby();
        chat.text(2, r#"{"type":"dm","to":"ann","text":"psst","cid":5}"#, 1, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(to(&list, 1), vec!["dm jay psst"]);
        let jay = to(&list, 2);
        assert_eq!(json(&jay[0]), serde_json::json!({"type":"dm","id":1,"from":"jay","to":"ann","text":"psst","ts":1}));
        assert_eq!(json(&jay[1]), serde_json::json!({"type":"ack","cid":5,"id":1}));
        chat.text(1, "/msg jay back at you\n", 2, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(json(&to(&list, 2)[0])["text"], "back at you");
        assert_eq!(to(&list, 1), vec!["ok msg jay 2"]);
    }

    #[test]
    fn raw_commands() {
        let (mut chat, mut out) = lobby();
        let mut ask = |chat: &mut Chat, line: &str| {
            chat.text(1, line, 0, &mut out);
            to(&deliveries(chat, &mut out), 1)
        };
        assert_eq!(ask(&mut chat, "/who"), vec!["who lobby ann jay"]);
        assert_eq!(ask(&mut chat, "/rooms"), vec!["rooms lobby:2"]);
        assert_eq!(ask(&mut chat, "/stats"), vec!["stats users=2 rooms=1 messages=0"]);
        assert_eq!(ask(&mut chat, "/nick annie"), vec!["ok nick annie"]);
        assert_eq!(ask(&mut chat, "/join games"), vec!["ok join games"]);
        assert_eq!(ask(&mut chat, "/rooms"), vec!["rooms games:1 lobby:1"], "a raw client has one current room");
        assert_eq!(ask(&mut chat, "/leave"), vec!["ok leave games"]);
        assert_eq!(ask(&mut chat, "hello?"), vec!["err not_member you are in no room (try /join ROOM)"]);
        assert_eq!(ask(&mut chat, "/help").len(), text::HELP.len());
        assert!(ask(&mut chat, "/nope")[0].starts_with("err unknown_command"));
    }

    #[test]
    fn rename_and_departure_are_announced() {
        let (mut chat, mut out) = lobby();
        chat.text(1, "/nick annie", 0, &mut out);
        let presence = json(&to(&deliveries(&chat, &mut out), 2)[0]);
        assert_eq!(
            presence,
            serde_json::json!({"type":"presence","room":"lobby","user":"annie","event":"rename","old":"ann"})
        );
        chat.disconnect(1, &mut out);
        let presence = json(&to(&deliveries(&chat, &mut out), 2)[0]);
        assert_eq!(presence, serde_json::json!({"type":"presence","room":"lobby","user":"annie","event":"leave"}));
        assert_eq!(chat.name_available("annie"), Ok(()), "the name is free again");
        assert!(!chat.has(1));
    }

    #[test]
    fn taken_name_on_json_connect_gets_error_and_a_guest_name() {
        let (mut chat, mut out) = lobby();
        chat.connect(arrival(3, true, "ann"), 0, &mut out);
        let kim = to(&deliveries(&chat, &mut out), 3);
        assert_eq!(json(&kim[0])["code"], "name_taken");
        assert_eq!(json(&kim[1])["you"], "guest-1");
    }

    #[test]
    fn rate_limit_drops_and_answers_then_refills() {
        let mut chat = Chat::new(ChatLimits { max_rate: 2, ..LIMITS });
        let mut out = Outbox::default();
        chat.connect(arrival(1, false, "ann"), 0, &mut out);
        chat.connect(arrival(2, true, "jay"), 0, &mut out);
        out.take();
        // A burst of twice the rate passes, the next message is refused, without a disconnect.
        for i in 0..4 {
            chat.text(1, &format!("m{i}"), 0, &mut out);
        }
        chat.text(1, "one too many", 0, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(to(&list, 1), vec!["err rate_limited over 2 messages per second; this one was dropped"]);
        assert_eq!(to(&list, 2).len(), 4);
        // Half a second later one token is back.
        chat.text(1, "later", 500, &mut out);
        let list = deliveries(&chat, &mut out);
        assert!(to(&list, 1).is_empty());
        for _ in 0..5 {
            chat.text(2, r#"{"type":"stats"}"#, 500, &mut out); // jay has an allowance of its own
        }
        let jay = to(&deliveries(&chat, &mut out), 2);
        assert_eq!(
            (json(&jay[3])["type"].as_str(), json(&jay[4])["code"].as_str()),
            (Some("stats"), Some("rate_limited"))
        );
    }

    #[test]
    fn ids_increase_across_rooms_and_dms() {
        let (mut chat, mut out) = lobby();
        chat.set_last_id(100);
        chat.text(1, "a", 0, &mut out);
        chat.text(2, r#"{"type":"dm","to":"ann","text":"b"}"#, 0, &mut out);
        chat.text(2, r#"{"type":"send","room":"lobby","text":"c"}"#, 0, &mut out);
        let ids: Vec<u64> = to(&deliveries(&chat, &mut out), 2)
            .iter()
            .map(|t| json(t))
            .filter(|v| v["type"] == "message" || v["type"] == "dm")
            .map(|v| v["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![101, 102, 103]);
    }
}
