//! The chat's side of a cluster (`--redis`): what it must tell the shell so that other
//! nodes can reach its users, and what it does with what they send. Pure like the rest:
//! it speaks of rooms and names, never of Redis.
//!
//! Owns: the change log of local rooms and names (a room gets its first local member or
//! loses its last; a name gets its first local connection or loses its last), which the
//! shell turns into SUBSCRIBE/UNSUBSCRIBE; direct messages to users on other nodes
//! (`RemoteDm`), and their outcome; a direct message from another node, spelled for each
//! local connection of its recipient; a stored file's notice, rendered for local members
//! (or, a direct file, for the local connections of its two users). Must not touch:
//! sockets, Redis, the clock.
//!
//! Off (the single-node default) it costs one `false` check where rooms and names change.

use serde_json::Value;

use super::json::Envelope;
use super::outbox::Outbox;
use super::record::FileMeta;
use super::reply::{DmView, Failure, FileView, Reply};
use super::rooms::RoomId;
use super::text::{file_line, line_text};
use super::{Ack, Chat};
use crate::proto::frame::OpCode;

/// A change of what this node must hear from the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// A room got its first local member (`true`) or lost its last.
    Room(String, bool),
    /// A name got its first local connection (`true`) or lost its last.
    User(String, bool),
    /// A name is now in a room through this node (`true`: on one of its connections or
    /// more), or no longer: the cluster's `who` and `rooms` are made of these.
    Member(String, String, bool),
}

/// A question only the whole cluster can answer (`who`, `rooms`): the shell asks Redis
/// and hands the answer back (`answer_who`, `answer_rooms`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    Who { conn: usize, room: String },
    Rooms { conn: usize },
}

/// A direct message to a user who is not on this node: the shell publishes it to the
/// user's channel, and answers the sender from how many nodes heard it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteDm {
    pub conn: usize,  // the sender's connection
    pub cid: Value,   // the sender's id for the request (null if none)
    pub json: bool,   // the sender speaks pollcast.v1 (gets an ack)
    pub id: u64,      // the message id
    pub from: String, // the sender's name
    pub to: String,   // the recipient's name
    pub text: String, // the message
    pub ts: u64,      // ms since the epoch
}

/// A message to be stored in the cluster's history before anyone anywhere receives it
/// (with `--redis` and history on): the shell runs the store-and-publish script, and
/// every node, this one included, renders it from what the subscription brings back
/// (`render_stored`), with the id the store gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub conn: usize,            // the sender's connection
    pub json: bool,             // the sender speaks pollcast.v1: it is owed an ack
    pub cid: Value,             // the sender's id for the request (null if none)
    pub room: String,           // the room (or `record::DM_ROOM` for a direct message)
    pub to: Option<String>,     // a direct message's recipient
    pub from: String,           // the sender's name
    pub binary: bool,           // a binary message (raw clients only)
    pub body: Vec<u8>,          // the message as relayed
    pub ts: u64,                // ms since the epoch
    pub echo: bool,             // a JSON `send`: the sender gets its own copy (a raw line: never)
    pub admin: bool,            // the admin API asked (`conn` is its HTTP connection): answered with the id
    pub file: Option<FileMeta>, // a shared file (`body` its bytes): stored alone, published as a notice
}

impl Outgoing {
    /// A text the admin API posts (`conn` is its HTTP connection, answered with the id).
    fn admin(conn: usize, room: &str, to: Option<&str>, from: &str, text: &str, ts: u64) -> Outgoing {
        Outgoing {
            conn,
            json: false,
            cid: Value::Null,
            room: room.to_owned(),
            to: to.map(str::to_owned),
            from: from.to_owned(),
            binary: false,
            body: text.as_bytes().to_vec(),
            ts,
            echo: false,
            admin: true,
            file: None,
        }
    }
}

/// A stored message as the subscription brings it back to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored<'a> {
    pub id: u64,               // the id the store gave it (cluster-wide, increasing)
    pub sender: Option<usize>, // the sender's connection when it is on this node
    pub echo: bool,            // as `Outgoing::echo`
    pub room: &'a str,         // the room
    pub from: &'a str,         // the sender's name
    pub binary: bool,          // a binary message
    pub body: &'a [u8],        // the message as relayed
    pub ts: u64,               // ms since the epoch
}

/// A stored file's notice as the subscription brings it back to a node.
#[derive(Clone, Copy, Debug)]
pub struct StoredFileView<'a> {
    pub id: u64,               // the id the store gave it
    pub sender: Option<usize>, // the uploader's connection when it is on this node
    pub room: &'a str,         // the room (a direct file: `record::DM_ROOM`)
    pub from: &'a str,         // the uploader's name
    pub meta: &'a FileMeta,    // name, type, size
    pub ts: u64,               // ms since the epoch
}

impl Chat {
    /// This node is part of a cluster: log room and name changes, send direct messages
    /// to names it does not hold to the cluster. `store_first`: history is the
    /// cluster's (Redis streams): messages become `Outgoing` and are rendered only once
    /// stored (`render_stored`).
    pub fn join_cluster(&mut self, store_first: bool, guest_tag: &str) {
        self.cluster = true;
        self.store_first = store_first;
        self.guest_tag = format!(".{guest_tag}");
    }

    /// Another live node holds `name` (its claim came first): every local connection
    /// that goes by it is told `name_taken` and renamed, as if it had asked for a name
    /// that was taken here (its rooms hear a `rename`).
    pub fn name_lost(&mut self, name: &str, out: &mut Outbox) {
        let Some(conns) = self.names.get(name).cloned() else { return };
        let fresh = self.guest_name();
        for &conn in &conns {
            let message = format!("{name} is taken on another node; you are {fresh} (/nick or nick to choose another)");
            self.fail(conn, Failure::new("name_taken", message), None, out);
        }
        for conn in conns {
            let _ = self.rename(conn, &fresh, out);
        }
    }

    /// Does a message become an `Outgoing` (cluster history), to be answered later?
    pub fn stores_first(&self) -> bool {
        self.store_first
    }

    /// `POST /api/publish` in a cluster with history: checked like `publish`, then kept
    /// first; the shell answers the HTTP request `conn` with the id once Redis has it.
    pub fn publish_stored(
        &mut self,
        conn: usize,
        room: &str,
        text: &str,
        from: &str,
        ts: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.check_application_message(Some(room), from, text)?;
        out.to_store.push(Outgoing::admin(conn, room, None, from, text, ts));
        Ok(())
    }

    /// `POST /api/dm` in a cluster with history: like `publish_stored`, to `to`'s
    /// channel; the answer is `no_such_user` when no node holds the name.
    pub fn dm_stored(
        &mut self,
        conn: usize,
        to: &str,
        text: &str,
        from: &str,
        ts: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.check_application_message(None, from, text)?;
        out.to_store.push(Outgoing::admin(conn, super::record::DM_ROOM, Some(to), from, text, ts));
        Ok(())
    }

    /// A stored message for a room with members here: framed once per codec for them
    /// (the local sender excepted: a JSON sender gets its own copy, a raw one nothing).
    pub fn render_stored(&mut self, stored: Stored, out: &mut Outbox) {
        let Some(room) = self.rooms.find(stored.room) else { return };
        let sender = stored.sender.filter(|&conn| self.is_sender(conn, stored.from));
        let text = (!stored.binary).then(|| std::str::from_utf8(stored.body).ok()).flatten();
        let envelope = text.map(|text| {
            let text = if stored.echo { text } else { line_text(text) };
            Envelope::Message { id: stored.id, room: stored.room, from: stored.from, text, ts: stored.ts }.to_json()
        });
        let opcode = if stored.binary { OpCode::Binary } else { OpCode::Text };
        let deflate = self.deflate_for(room, sender);
        out.to_room(room, sender, Some((opcode, stored.body)), envelope.as_deref(), deflate);
        if let (Some(conn), true, Some(envelope)) = (sender, stored.echo, &envelope) {
            out.send(conn, envelope);
        }
    }

    /// A stored file for a room with members here (`sender`: its uploader's connection,
    /// when on this node): every member gets the `file` notice (raw members the `file`
    /// line), the uploader its own copy, as on one node.
    pub fn render_stored_file(&mut self, file: StoredFileView, out: &mut Outbox) {
        let StoredFileView { id, sender, room, from, meta, ts } = file;
        let Some(room_id) = self.rooms.find(room) else { return };
        let sender = sender.filter(|&conn| self.is_sender(conn, from));
        let view =
            FileView { id, room: Some(room), to: None, from, name: &meta.name, mime: &meta.mime, size: meta.size, ts };
        let envelope = Envelope::file(&view).to_json();
        let deflate = self.deflate_for(room_id, sender);
        out.to_room(room_id, sender, Some((OpCode::Text, file_line(&view).as_bytes())), Some(&envelope), deflate);
        if let Some(conn) = sender {
            out.send(conn, &envelope);
        }
    }

    /// A stored direct file, for every local connection of `user` (its recipient or its
    /// sender: the store publishes it to both).
    pub fn deliver_stored_file(&mut self, file: StoredFileView, to: &str, user: &str, out: &mut Outbox) {
        let Some(targets) = self.names.get(user).cloned() else { return };
        let StoredFileView { id, from, meta, ts, .. } = file;
        let view =
            FileView { id, room: None, to: Some(to), from, name: &meta.name, mime: &meta.mime, size: meta.size, ts };
        for target in targets {
            self.tell(target, Reply::File(view), out);
        }
    }

    /// A fetch could not be answered (Redis is away or failed it): the reader is told.
    pub fn fetch_unavailable(&self, conn: usize, reference: &Value, out: &mut Outbox) {
        let message = "the file store is unreachable (Redis): try again when the server is healthy";
        let reference = (!reference.is_null()).then_some(reference);
        self.fail(conn, Failure::new("unavailable", message), reference, out);
    }

    /// A direct file was stored but no node holds its recipient: the sender is told.
    pub fn stored_file_unheard(&self, outgoing: &Outgoing, out: &mut Outbox) {
        let Some(to) = outgoing.to.as_deref().filter(|_| self.is_sender(outgoing.conn, &outgoing.from)) else {
            return;
        };
        let reference = (!outgoing.cid.is_null()).then_some(&outgoing.cid);
        self.fail(outgoing.conn, Failure::new("no_such_user", format!("{to} is not connected")), reference, out);
    }

    /// A message is stored: its sender's ack (the shell sends it after the sender's own
    /// copy, when there is one).
    pub fn stored_ack(&self, outgoing: &Outgoing, id: u64) -> Option<Ack> {
        let sender = outgoing.json && self.is_sender(outgoing.conn, &outgoing.from);
        sender.then(|| Ack { conn: outgoing.conn, cid: outgoing.cid.clone(), id })
    }

    /// A history read could not be answered (Redis is away or failed it): the reader is
    /// told, rather than left waiting for a page.
    pub fn history_unavailable(&self, conn: usize, room: &str, out: &mut Outbox) {
        let message = format!("the history of {room} is unreachable (Redis): try again when the server is healthy");
        self.fail(conn, Failure::new("unavailable", message), None, out);
    }

    /// A message could not be stored (Redis refused it, or went away before answering):
    /// its sender is told; nobody received it.
    pub fn store_failed(&self, outgoing: &Outgoing, why: &str, out: &mut Outbox) {
        if !self.is_sender(outgoing.conn, &outgoing.from) {
            return;
        }
        let reference = (!outgoing.cid.is_null()).then_some(&outgoing.cid);
        self.fail(outgoing.conn, Failure::new("store_failed", why), reference, out);
    }

    /// The changes since the last call, in order. (The names of rooms emptied since
    /// are forgotten now: their last outputs are routed.)
    pub fn take_watch(&mut self) -> Vec<Watch> {
        self.closed.clear();
        std::mem::take(&mut self.watch)
    }

    /// Everything this node must hear and claim now (after (re)connecting): its rooms,
    /// its names, and who is in which room through it.
    pub fn watching(&self) -> Vec<Watch> {
        let rooms = self.rooms.list().map(|(room, _)| Watch::Room(room.to_owned(), true));
        let names = self.names.keys().map(|name| Watch::User(name.clone(), true));
        let mut members: Vec<Watch> = Vec::new();
        for (room, _) in self.rooms.list() {
            let Some(id) = self.rooms.find(room) else { continue };
            members
                .extend(self.member_names(id).into_iter().map(|n| Watch::Member(room.to_owned(), n.to_owned(), true)));
        }
        rooms.chain(names).chain(members).collect()
    }

    /// Is `who`/`rooms` the cluster's to answer? (Not while Redis is away: then this
    /// node answers for itself.)
    pub(super) fn asks_cluster(&self) -> bool {
        self.cluster && !self.cluster_down
    }

    /// The cluster's members of `room` (from Redis; `None`: it could not say), with this
    /// node's own, each name once, sorted.
    pub fn answer_who(&mut self, conn: usize, room: &str, cluster: Option<Vec<String>>, out: &mut Outbox) {
        let local = self.rooms.find(room).map(|id| self.member_names(id)).unwrap_or_default();
        let mut members: Vec<&str> = local;
        if let Some(cluster) = &cluster {
            members.extend(cluster.iter().map(String::as_str));
        }
        members.sort_unstable();
        members.dedup();
        self.tell(conn, Reply::Who { room, members }, out);
    }

    /// The cluster's rooms with their member counts (from Redis; `None`: this node's
    /// only), those the user may join.
    pub fn answer_rooms(&mut self, conn: usize, cluster: Option<Vec<(String, usize)>>, out: &mut Outbox) {
        let Some(user) = self.users.get(&conn) else { return };
        let identity = user.identity.as_ref();
        let visible = |room: &str| identity.map_or(true, |identity| identity.may_join(room));
        let mut counts: std::collections::BTreeMap<&str, usize> = self.rooms.list().collect();
        for (room, members) in cluster.iter().flatten() {
            let count = counts.entry(room.as_str()).or_default();
            *count = (*count).max(*members);
        }
        let rooms = counts.into_iter().filter(|(room, _)| visible(room));
        let rooms = rooms.map(|(room, members)| super::json::RoomCount { room, members }).collect();
        self.tell(conn, Reply::Rooms { rooms }, out);
    }

    /// Redis is unreachable (`true`) or back: while it is away, messages are refused
    /// (`unavailable`) rather than delivered to this node's members only; everything
    /// that needs no other node (who, rooms, join, leave, history) goes on.
    pub fn set_cluster_down(&mut self, down: bool) {
        self.cluster_down = down;
    }

    /// A message may go out only while the cluster is reachable.
    pub(super) fn deliverable(&self) -> Result<(), Failure> {
        match self.cluster_down {
            true => Err(Failure::new(
                "unavailable",
                "the cluster is unreachable (Redis is down): messages are refused until it is back",
            )),
            false => Ok(()),
        }
    }

    /// The id of a room with local members, for frames from another node.
    pub fn local_room(&self, room: &str) -> Option<RoomId> {
        self.rooms.find(room)
    }

    pub(super) fn watch(&mut self, change: Watch) {
        if self.cluster {
            self.watch.push(change);
        }
    }

    /// Another node heard the direct message: the sender is told as if it were local
    /// (its copy, then an ack).
    pub fn remote_dm_sent(&mut self, dm: &RemoteDm, out: &mut Outbox) {
        if !self.is_sender(dm.conn, &dm.from) {
            return;
        }
        let view = DmView { id: dm.id, from: &dm.from, to: &dm.to, text: &dm.text, ts: dm.ts };
        self.tell(dm.conn, Reply::DmSent { dm: view, to_self: false }, out);
        if dm.json {
            out.acks.push(Ack { conn: dm.conn, cid: dm.cid.clone(), id: dm.id });
        }
    }

    /// The direct message reached nobody (`heard` false: no node holds the name) or
    /// could not be published: the sender is told why.
    pub fn remote_dm_failed(&mut self, dm: &RemoteDm, heard: Option<bool>, out: &mut Outbox) {
        if !self.is_sender(dm.conn, &dm.from) {
            return;
        }
        let failure = match heard {
            Some(false) => Failure::new("no_such_user", format!("{} is not connected", dm.to)),
            _ => Failure::new("unavailable", "the cluster is unreachable (Redis): the message was not sent"),
        };
        let reference = (!dm.cid.is_null()).then_some(&dm.cid);
        self.fail(dm.conn, failure, reference, out);
    }

    /// Is `conn` still the connection that sent as `name`? An answer comes a Redis round
    /// trip after the request: by then the sender may be gone and its slot reused by
    /// another connection, which must not get the sender's copy, ack or error.
    fn is_sender(&self, conn: usize, name: &str) -> bool {
        self.users.get(&conn).is_some_and(|user| user.name == name)
    }

    /// A direct message from another node, to every local connection of `to`.
    pub fn deliver_dm(&mut self, id: u64, ts: u64, from: &str, to: &str, text: &str, out: &mut Outbox) {
        let Some(targets) = self.names.get(to) else { return };
        for &target in targets {
            self.tell(target, Reply::Dm(DmView { id, from, to, text, ts }), out);
        }
    }
}
