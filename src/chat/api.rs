//! What the application behind the chat may do through the admin port: post into a room,
//! send a direct message, find a user's connections, list rooms and members. The shell's
//! `server/admin.rs` speaks HTTP and JSON; this is the chat's side, pure like the rest.
//!
//! Owns: the rules for messages that come from the application rather than a client (a
//! name it gives, no membership needed). Must not touch: HTTP, sockets, the store.

use super::json::{Envelope, RoomCount};
use super::names;
use super::outbox::Outbox;
use super::record::DM_ROOM;
use super::reply::{DmView, Failure, Reply};
use super::rooms::valid_room_name;
use super::{Author, Chat, Place, Said};
use crate::proto::frame::OpCode;

/// The name the application posts under when it gives none.
pub const DEFAULT_AUTHOR: &str = "server";

impl Chat {
    /// A message into `room` from the application, as `from`: stored and delivered to
    /// every member like a client's `send` (raw members get the text, JSON members a
    /// `message` envelope). A room with no members gets it in its history only.
    pub fn publish(
        &mut self,
        room: &str,
        text: &str,
        from: &str,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<u64, Failure> {
        if !valid_room_name(room) {
            return Err(Failure::new("bad_field", "room names are 1-64 of A-Z a-z 0-9 _ . -"));
        }
        names::validate(from)
            .map_err(|_| Failure::new("bad_field", "from must be 1-32 printable characters, no spaces"))?;
        self.check_text(text)?;
        self.deliverable()?;
        self.answers_at_once()?;
        let id = self.accept(Author::Named(from), Place::Named(room), None, Said::Text(text), now_ms, out);
        if let Some(room_id) = self.rooms.find(room) {
            let envelope = Envelope::Message { id, room, from, text, ts: now_ms }.to_json();
            out.to_room(
                room_id,
                None,
                Some((OpCode::Text, text.as_bytes())),
                Some(&envelope),
                self.deflate_for(room_id, None),
            );
        }
        Ok(id)
    }

    /// A direct message from the application, as `from`, to every connection of `to`.
    pub fn dm_from(&mut self, to: &str, text: &str, from: &str, now_ms: u64, out: &mut Outbox) -> Result<u64, Failure> {
        names::validate(from)
            .map_err(|_| Failure::new("bad_field", "from must be 1-32 printable characters, no spaces"))?;
        let Some(targets) = self.names.get(to).cloned() else {
            return Err(Failure::new("no_such_user", format!("{to} is not connected")));
        };
        self.check_text(text)?;
        self.deliverable()?;
        self.answers_at_once()?;
        let id = self.accept(Author::Named(from), Place::Named(DM_ROOM), Some(to), Said::Text(text), now_ms, out);
        for target in targets {
            self.tell(target, Reply::Dm(DmView { id, from, to, text, ts: now_ms }), out);
        }
        Ok(id)
    }

    /// The admin API answers these with the stored id at once; with the cluster's
    /// history the shell calls `publish_stored` / `dm_stored` instead (answered later).
    fn answers_at_once(&self) -> Result<(), Failure> {
        match self.store_first {
            true => Err(Failure::new("unsupported", "in a cluster with history, use publish_stored / dm_stored")),
            false => Ok(()),
        }
    }

    /// What `publish` and `dm_from` check of a message from the application: a valid
    /// room (when there is one), a valid author, a text within bounds, a reachable
    /// cluster.
    pub(super) fn check_application_message(&self, room: Option<&str>, from: &str, text: &str) -> Result<(), Failure> {
        if room.is_some_and(|room| !valid_room_name(room)) {
            return Err(Failure::new("bad_field", "room names are 1-64 of A-Z a-z 0-9 _ . -"));
        }
        names::validate(from)
            .map_err(|_| Failure::new("bad_field", "from must be 1-32 printable characters, no spaces"))?;
        self.check_text(text)?;
        self.deliverable()
    }

    /// The connections of `user`: by name, or (with tokens) by the token's user id.
    pub fn connections_of(&self, user: &str) -> Vec<usize> {
        if let Some(conns) = self.names.get(user) {
            return conns.clone();
        }
        let by_id = self.users.iter().filter(|(_, u)| u.identity.as_ref().is_some_and(|id| id.user == user));
        let mut conns: Vec<usize> = by_id.map(|(&conn, _)| conn).collect();
        conns.sort_unstable();
        conns
    }

    /// Every room with members, and how many.
    pub fn room_counts(&self) -> Vec<RoomCount<'_>> {
        self.rooms.list().map(|(room, members)| RoomCount { room, members }).collect()
    }

    /// The members of `room` (each name once), or `None` when nobody is in it.
    pub fn room_members(&self, room: &str) -> Option<Vec<&str>> {
        self.rooms.find(room).map(|id| self.member_names(id))
    }
}

#[cfg(test)]
mod tests {
    use crate::chat::tests::{deliveries, lobby, to};

    #[test]
    fn the_application_posts_and_dms_under_its_own_name() {
        let (mut chat, mut out) = lobby();
        let id = chat.publish("lobby", "at 10: upgrade", "ops", 5, &mut out).unwrap();
        let list = deliveries(&chat, &mut out);
        assert_eq!(to(&list, 1), vec!["at 10: upgrade"], "raw members get the text");
        assert!(to(&list, 2)[0].contains(r#""from":"ops""#) && to(&list, 2)[0].contains(&format!(r#""id":{id}"#)));
        assert!(chat.publish("empty-room", "kept", "ops", 5, &mut out).is_ok(), "no members: history only");
        assert_eq!(chat.publish("bad room", "x", "ops", 5, &mut out).unwrap_err().code, "bad_field");
        assert_eq!(chat.publish("lobby", "x", "two words", 5, &mut out).unwrap_err().code, "bad_field");
        chat.dm_from("jay", "psst", "ops", 6, &mut out).unwrap();
        assert!(to(&deliveries(&chat, &mut out), 2)[0].contains(r#""type":"dm""#));
        assert_eq!(chat.dm_from("nobody", "x", "ops", 6, &mut out).unwrap_err().code, "no_such_user");
        assert_eq!(chat.connections_of("ann"), vec![1]);
        assert_eq!(chat.room_members("lobby"), Some(vec!["ann", "jay"]));
        assert_eq!(chat.room_counts().len(), 1);
    }
}
