//! The chat's actions, one function each: what a request or a command does to users and
//! rooms, and which `Reply` it earns. No action spells a reply or asks for a codec: that
//! is `Chat::tell`'s job.

use serde_json::Value;

use super::auth::verify;
use super::cluster::Outgoing;
use super::cluster::{Ask, RemoteDm, Watch};
use super::json::{Envelope, Request, RoomCount};
use super::names;
use super::outbox::Outbox;
use super::record::{Query, DM_ROOM};
use super::reply::{DmView, Failure, Reply};
use super::rooms::{valid_room_name, Member, Seat};
use super::text::{line_text, Command};
use super::{Ack, Author, Chat, Place, Said};
use crate::proto::frame::OpCode;

impl Chat {
    /// A raw client's message for its current room: verbatim to raw members, as an
    /// envelope to JSON members (text only), never back to the sender.
    pub(super) fn say(&mut self, conn: usize, said: Said, now_ms: u64, out: &mut Outbox) -> Result<(), Failure> {
        let Some(&seat) = self.users[&conn].seats.first() else {
            return Err(Failure::new("not_member", "you are in no room (try /join ROOM)"));
        };
        self.may_publish(conn, self.rooms.name(seat.room))?;
        self.deliverable()?;
        if self.store_first {
            let (binary, body) = match said {
                Said::Text(text) => (false, text.as_bytes()),
                Said::Binary(data) => (true, data),
            };
            let room = self.rooms.name(seat.room).to_owned();
            return self.keep_first(conn, room, None, binary, body, now_ms, None, out);
        }
        let id = self.accept(Author::Conn(conn), Place::Room(seat.room), None, said, now_ms, out);
        let (raw, json) = match said {
            // In a cluster, JSON members elsewhere may need the envelope.
            Said::Text(text) if self.cluster || self.rooms.has_json_members(seat.room) => {
                let (room, from) = (self.rooms.name(seat.room), &self.users[&conn].name);
                let envelope = Envelope::Message { id, room, from, text: line_text(text), ts: now_ms };
                ((OpCode::Text, text.as_bytes()), Some(envelope.to_json()))
            }
            Said::Text(text) => ((OpCode::Text, text.as_bytes()), None),
            Said::Binary(data) => ((OpCode::Binary, data), None),
        };
        out.to_room(seat.room, Some(conn), Some(raw), json.as_deref(), self.deflate_for(seat.room, Some(conn)));
        Ok(())
    }

    /// A JSON request; `reference` is its `ref` (or `cid`), for answers the shell gives later.
    pub(super) fn request(
        &mut self,
        conn: usize,
        request: Request,
        reference: Option<&Value>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
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
            Request::History { room, before, limit } => self.history(conn, &room, before, limit, out),
            Request::Leave { room } => self.leave(conn, &room, out),
            Request::Send { room, text, cid } => self.send(conn, &room, &text, cid, now_ms, out),
            Request::Dm { to, text, cid } => self.dm(conn, &to, &text, cid, now_ms, out),
            Request::Who { room } => self.who(conn, &room, out),
            Request::Rooms {} => self.list_rooms(conn, out),
            Request::Nick { name } => self.nick(conn, &name, out),
            Request::Stats {} => self.stats(conn, out),
            Request::Refresh { token } => self.refresh(conn, &token, now_ms, out),
            Request::File(header) => self.file_header(conn, header, now_ms, out),
            Request::Fetch { id } => self.fetch(conn, id, reference, out),
        }
    }

    /// A raw client's command.
    pub(super) fn command(
        &mut self,
        conn: usize,
        command: Command,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
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
            Command::Token(token) => self.refresh(conn, token, now_ms, out),
            Command::Help => {
                self.tell(conn, Reply::Help, out);
                Ok(())
            }
        }
    }

    /// Joins a room. A raw client moves (it has one current room); a JSON client adds
    /// the room to its set, up to `max_rooms_per_client`. `reply`: confirm to the user.
    pub(super) fn join(&mut self, conn: usize, room: &str, reply: bool, out: &mut Outbox) -> Result<(), Failure> {
        if !valid_room_name(room) {
            return Err(Failure::new("bad_field", "room names are 1-64 of A-Z a-z 0-9 _ . -"));
        }
        self.may_join(conn, room)?;
        let user = &self.users[&conn];
        let (json, deflate) = (user.json, user.deflate);
        if let Some(id) = self.rooms.find(room).filter(|id| user.seats.iter().any(|s| s.room == *id)) {
            self.tell(conn, Reply::Joined { room, members: self.member_names(id) }, out);
            return Ok(());
        }
        if json && user.seats.len() >= self.limits.max_rooms_per_client {
            let message = format!("at most {} rooms per client", self.limits.max_rooms_per_client);
            return Err(Failure::new("too_many_rooms", message));
        }
        if let (false, Some(&seat)) = (json, user.seats.first()) {
            self.leave_seat(conn, seat, out); // a raw client has one current room: it moves
        }
        let seat = self.rooms.join(room, Member { conn, json, deflate });
        if self.rooms.members(seat.room).len() == 1 {
            self.watch(Watch::Room(room.to_owned(), true));
        }
        let already_there = self.present_elsewhere(conn, seat.room); // this user, on another connection
        let user = self.users.get_mut(&conn).expect("callers pass connected users");
        user.seats.push(seat);
        if !already_there {
            let name = user.name.clone();
            self.watch(Watch::Member(room.to_owned(), name, true));
            let user = &self.users[&conn];
            let presence = Envelope::Presence { room, user: &user.name, event: "join", old: None }.to_json();
            out.to_room(seat.room, Some(conn), None, Some(&presence), self.deflate_for(seat.room, Some(conn)));
        }
        if reply {
            self.tell(conn, Reply::Joined { room, members: self.member_names(seat.room) }, out);
        }
        Ok(())
    }

    /// Leaves a room the user is in.
    fn leave(&mut self, conn: usize, room: &str, out: &mut Outbox) -> Result<(), Failure> {
        let id = self.rooms.find(room);
        let Some(&seat) = self.users[&conn].seats.iter().find(|s| Some(s.room) == id) else {
            return Err(Failure::new("not_member", format!("you are not in {room}")));
        };
        self.leave_seat(conn, seat, out);
        self.tell(conn, Reply::Left { room }, out);
        Ok(())
    }

    /// Takes one membership away, keeps the moved member's seat right, tells the room.
    pub(super) fn leave_seat(&mut self, conn: usize, seat: Seat, out: &mut Outbox) {
        let room_name = self.rooms.name(seat.room).to_owned();
        if let Some(moved) = self.rooms.leave(seat) {
            if let Some(other) = self.users.get_mut(&moved.conn) {
                if let Some(s) = other.seats.iter_mut().find(|s| s.room == seat.room) {
                    s.index = seat.index;
                }
            }
        }
        if self.rooms.find(&room_name).is_none() && self.cluster {
            self.closed.insert(seat.room, room_name.clone()); // its last words still need its name
            self.watch(Watch::Room(room_name.clone(), false));
        }
        let Some(user) = self.users.get_mut(&conn) else { return };
        user.seats.retain(|s| s.room != seat.room);
        let told = self.cluster || self.rooms.has_json_members(seat.room); // members elsewhere, in a cluster
        if self.cluster && !self.present_elsewhere(conn, seat.room) {
            self.watch(Watch::Member(room_name.clone(), self.users[&conn].name.clone(), false));
        }
        let user = &self.users[&conn];
        if told && !self.present_elsewhere(conn, seat.room) {
            let presence = Envelope::Presence { room: &room_name, user: &user.name, event: "leave", old: None };
            let deflate = self.deflate_for(seat.room, Some(conn));
            out.to_room(seat.room, Some(conn), None, Some(&presence.to_json()), deflate);
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
        self.may_publish(conn, room)?;
        self.check_text(text)?;
        self.deliverable()?;
        if self.store_first {
            let cid = Some(cid.unwrap_or(Value::Null));
            return self.keep_first(conn, room.to_owned(), None, false, text.as_bytes(), now_ms, cid, out);
        }
        let id = self.accept(Author::Conn(conn), Place::Named(room), None, Said::Text(text), now_ms, out);
        let envelope = Envelope::Message { id, room, from: &self.users[&conn].name, text, ts: now_ms }.to_json();
        let deflate = self.deflate_for(room_id, Some(conn));
        out.to_room(room_id, Some(conn), Some((OpCode::Text, text.as_bytes())), Some(&envelope), deflate);
        out.send(conn, &envelope);
        out.acks.push(Ack { conn, cid: cid.unwrap_or(Value::Null), id });
        Ok(())
    }

    /// A direct message: the recipient and the sender are both told (JSON: a `dm`
    /// envelope, raw: a `dm FROM TEXT` line to the recipient, `ok msg` to the sender),
    /// then a JSON sender gets its `ack` once the message is stored.
    fn dm(
        &mut self,
        conn: usize,
        to: &str,
        text: &str,
        cid: Option<Value>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.deliverable()?;
        let targets = self.names.get(to).cloned().filter(|_| !self.store_first); // stored first: every DM goes through the store
        let Some(targets) = targets else {
            if self.cluster && names::validate(to).is_ok() {
                return self.dm_elsewhere(conn, to, text, cid, now_ms, out);
            }
            return Err(Failure::new("no_such_user", format!("{to} is not connected")));
        };
        self.check_text(text)?;
        let id = self.accept(Author::Conn(conn), Place::Named(DM_ROOM), Some(to), Said::Text(text), now_ms, out);
        let sender = &self.users[&conn];
        let dm = DmView { id, from: &sender.name, to, text, ts: now_ms };
        for &target in &targets {
            self.tell(target, Reply::Dm(dm), out); // every connection of the recipient
        }
        self.tell(conn, Reply::DmSent { dm, to_self: targets.contains(&conn) }, out);
        if sender.json {
            out.acks.push(Ack { conn, cid: cid.unwrap_or(Value::Null), id });
        }
        Ok(())
    }

    /// A direct message to a name this node does not hold, in a cluster: the shell
    /// publishes it to the name's channel; the sender hears how it went once Redis
    /// answers (`cluster.rs`: `remote_dm_sent`, `remote_dm_failed`).
    fn dm_elsewhere(
        &mut self,
        conn: usize,
        to: &str,
        text: &str,
        cid: Option<Value>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.check_text(text)?;
        if self.store_first {
            let (room, to, body) = (DM_ROOM.to_owned(), Some(to.to_owned()), text.as_bytes());
            let cid = Some(cid.unwrap_or(Value::Null));
            return self.keep_first(conn, room, to, false, body, now_ms, cid, out);
        }
        let id = self.accept(Author::Conn(conn), Place::Named(DM_ROOM), Some(to), Said::Text(text), now_ms, out);
        let sender = &self.users[&conn];
        let (json, from) = (sender.json, sender.name.clone());
        let cid = cid.unwrap_or(Value::Null);
        let (to, text) = (to.to_owned(), text.to_owned());
        out.remote_dms.push(RemoteDm { conn, cid, json, id, from, to, text, ts: now_ms });
        Ok(())
    }

    /// Cluster history: the message goes to the store first (`Outgoing`), and is
    /// rendered on every node once the subscription brings it back with its id.
    #[allow(clippy::too_many_arguments)] // the fields of one Outgoing
    fn keep_first(
        &mut self,
        conn: usize,
        room: String,
        to: Option<String>,
        binary: bool,
        body: &[u8],
        ts: u64,
        cid: Option<Value>,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.messages += 1;
        let user = &self.users[&conn];
        let (json, from, echo) = (user.json, user.name.clone(), cid.is_some() && to.is_none());
        let cid = cid.unwrap_or(Value::Null);
        let body = body.to_vec();
        out.to_store.push(Outgoing {
            conn,
            json,
            cid,
            room,
            to,
            from,
            binary,
            body,
            ts,
            echo,
            admin: false,
            file: None,
        });
        Ok(())
    }

    /// A JSON `history` request: a page of a room the user is in, older than `before`.
    fn history(
        &mut self,
        conn: usize,
        room: &str,
        before: Option<u64>,
        limit: Option<usize>,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.membership(conn, room)?;
        self.may_join(conn, room)?;
        if !self.limits.history {
            return Err(Failure::new("no_history", "this server keeps no history"));
        }
        let n = limit.unwrap_or(self.limits.history_default);
        self.replay(conn, room, Some(Query::Before { before: before.unwrap_or(u64::MAX), n }), true, out);
        Ok(())
    }

    /// Queues a history answer, if history is on and something was asked for.
    pub(super) fn replay(&self, conn: usize, room: &str, query: Option<Query>, json: bool, out: &mut Outbox) {
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

    fn who(&mut self, conn: usize, room: &str, out: &mut Outbox) -> Result<(), Failure> {
        self.may_join(conn, room)?;
        if self.asks_cluster() {
            out.asks.push(Ask::Who { conn, room: room.to_owned() });
            return Ok(());
        }
        let members = self.rooms.find(room).map(|id| self.member_names(id)).unwrap_or_default();
        self.tell(conn, Reply::Who { room, members }, out);
        Ok(())
    }

    fn list_rooms(&mut self, conn: usize, out: &mut Outbox) -> Result<(), Failure> {
        if self.asks_cluster() {
            out.asks.push(Ask::Rooms { conn });
            return Ok(());
        }
        let identity = self.users[&conn].identity.as_ref();
        let visible = |room: &str| identity.map_or(true, |identity| identity.may_join(room));
        let rooms =
            self.rooms.list().filter(|(room, _)| visible(room)).map(|(room, members)| RoomCount { room, members });
        let rooms = rooms.collect();
        self.tell(conn, Reply::Rooms { rooms }, out);
        Ok(())
    }

    /// Renames a user; every room it is in hears a `presence` with event `rename`.
    fn nick(&mut self, conn: usize, name: &str, out: &mut Outbox) -> Result<(), Failure> {
        if self.access.auth.is_some() {
            return Err(Failure::new("forbidden", "names come from the token here"));
        }
        if self.users[&conn].name == name {
            self.tell(conn, Reply::Nick { old: name, you: name }, out);
            return Ok(());
        }
        self.name_available(name)?;
        self.rename(conn, name, out)
    }

    /// Gives `conn` the name `name` (free: the caller checked); every room it is in
    /// hears a `presence` with event `rename`, and it is told.
    pub(super) fn rename(&mut self, conn: usize, name: &str, out: &mut Outbox) -> Result<(), Failure> {
        let user = self.users.get_mut(&conn).expect("callers pass connected users");
        let old = std::mem::replace(&mut user.name, name.to_owned());
        self.release_name(&old, conn);
        self.names.entry(name.to_owned()).or_default().push(conn);
        if self.names[name].len() == 1 {
            self.watch(Watch::User(name.to_owned(), true));
        }
        let seats = self.users[&conn].seats.clone();
        for seat in &seats {
            let room = self.rooms.name(seat.room).to_owned();
            self.watch(Watch::Member(room.clone(), old.clone(), false));
            self.watch(Watch::Member(room, name.to_owned(), true));
        }
        for seat in &self.users[&conn].seats {
            let room = self.rooms.name(seat.room);
            let presence = Envelope::Presence { room, user: name, event: "rename", old: Some(&old) }.to_json();
            out.to_room(seat.room, Some(conn), None, Some(&presence), self.deflate_for(seat.room, Some(conn)));
        }
        self.tell(conn, Reply::Nick { old: &old, you: name }, out);
        Ok(())
    }

    /// A fresh token for the same user, before the old one expires: its expiry and its
    /// `rooms` claim apply from now on, and rooms it no longer allows are left.
    fn refresh(&mut self, conn: usize, token: &str, now_ms: u64, out: &mut Outbox) -> Result<(), Failure> {
        let Some(config) = &self.access.auth else {
            return Err(Failure::new("bad_field", "this server does not use tokens"));
        };
        let fresh = verify(config, token, now_ms / 1000).map_err(|e| Failure::new("unauthorized", e.reason()))?;
        let old = self.users[&conn].identity.clone();
        if old.as_ref().map_or(true, |old| old.user != fresh.user) {
            return Err(Failure::new("forbidden", "the token is for another user"));
        }
        if let Some(exp) = old.and_then(|old| old.exp) {
            self.expiries.remove(&(exp, conn));
        }
        if let Some(exp) = fresh.exp {
            self.expiries.insert((exp, conn));
        }
        let exp = fresh.exp;
        let user = self.users.get_mut(&conn).expect("callers pass connected users");
        user.identity = Some(Box::new(fresh));
        let seats = self.users[&conn].seats.clone();
        let lost: Vec<Seat> =
            seats.into_iter().filter(|s| self.may_join(conn, self.rooms.name(s.room)).is_err()).collect();
        for seat in lost {
            let room = self.rooms.name(seat.room).to_owned();
            self.leave_seat(conn, seat, out);
            self.tell(conn, Reply::Left { room: &room }, out);
        }
        self.tell(conn, Reply::Refreshed { exp }, out);
        Ok(())
    }

    fn stats(&mut self, conn: usize, out: &mut Outbox) -> Result<(), Failure> {
        let (users, rooms, messages) = (self.users.len(), self.rooms.len(), self.messages);
        self.tell(conn, Reply::Stats { users, rooms, messages }, out);
        Ok(())
    }
}
