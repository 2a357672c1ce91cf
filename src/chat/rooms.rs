//! Room membership: which users share a room.
//!
//! Owns: what a valid room name is and which room a URL path names, room ids, member
//! lists, and each membership's index in its list, so joining and leaving are O(1).
//! Must not touch: sockets, queues, message content.
//!
//! Room ids are never reused (a counter, not a slab key), so an id held in an outbox
//! cannot come to mean another room after its room emptied.

use std::collections::{BTreeMap, HashMap};

/// The room a client joins when it upgrades on `/`.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest room name (`[A-Za-z0-9_.-]{1,64}`).
const MAX_ROOM_LEN: usize = 64;

/// `/` → `lobby`; `/{room}` → `room` when it is a valid room name.
pub fn room_from_path(path: &str) -> Option<&str> {
    let name = path.strip_prefix('/')?;
    if name.is_empty() {
        return Some(DEFAULT_ROOM);
    }
    valid_room_name(name).then_some(name)
}

/// Room names match `[A-Za-z0-9_.-]{1,64}`: safe in a URL path, a log line and a key.
pub fn valid_room_name(name: &str) -> bool {
    let valid_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-');
    (1..=MAX_ROOM_LEN).contains(&name.len()) && name.bytes().all(valid_char)
}

/// A room's id, unique for the life of the server.
pub type RoomId = u64;

/// One member of a room, with what the fan-out needs to know about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub conn: usize,   // the connection (the shell's slab key)
    pub json: bool,    // speaks pollcast.v1 (gets envelopes) rather than raw text
    pub deflate: bool, // takes the compressed form of broadcasts (permessage-deflate, full window)
}

/// Where a user sits: its room and its index in that room's member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat {
    pub room: RoomId, // the room
    pub index: usize, // position in that room's `members`
}

/// One room.
#[derive(Debug)]
struct Room {
    name: String,         // as in the URL path or the join request
    members: Vec<Member>, // in no particular order
    json_members: usize,  // how many members speak JSON (0: skip building envelopes)
    deflate: Deflaters,   // how many members of each codec take compressed frames (0: never compress)
}

/// How many members of a room take the compressed form of each codec's frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deflaters {
    pub raw: usize,  // raw members with permessage-deflate
    pub json: usize, // pollcast.v1 members with permessage-deflate
}

impl Deflaters {
    /// `member` counted in (it `joins`) or out.
    fn count(&mut self, member: Member, joins: bool) {
        let slot = if member.json { &mut self.json } else { &mut self.raw };
        match (member.deflate, joins) {
            (false, _) => {}
            (true, true) => *slot += 1,
            (true, false) => *slot -= 1,
        }
    }
}

/// Every non-empty room.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<RoomId, Room>,      // the rooms by id
    by_name: BTreeMap<String, RoomId>, // name → id, sorted for listings
    next_id: RoomId,                   // the id the next new room gets
}

impl Rooms {
    /// Adds `member` to room `name`, creating the room if needed.
    pub fn join(&mut self, name: &str, member: Member) -> Seat {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                self.next_id += 1;
                let id = self.next_id;
                let room =
                    Room { name: name.to_owned(), members: Vec::new(), json_members: 0, deflate: Deflaters::default() };
                self.rooms.insert(id, room);
                self.by_name.insert(name.to_owned(), id);
                id
            }
        };
        let room = self.rooms.get_mut(&id).expect("by_name and rooms hold the same ids");
        room.members.push(member);
        room.json_members += usize::from(member.json);
        room.deflate.count(member, true);
        Seat { room: id, index: room.members.len() - 1 }
    }

    /// Removes the membership at `seat`. Returns the member that moved into its index
    /// (whose seat the caller must update), if any. An emptied room is dropped.
    pub fn leave(&mut self, seat: Seat) -> Option<Member> {
        let room = self.rooms.get_mut(&seat.room)?;
        let gone = room.members.swap_remove(seat.index);
        room.json_members -= usize::from(gone.json);
        room.deflate.count(gone, false);
        let moved = room.members.get(seat.index).copied();
        if room.members.is_empty() {
            let name = std::mem::take(&mut room.name);
            self.rooms.remove(&seat.room);
            self.by_name.remove(&name);
        }
        moved
    }

    /// The id of room `name`, if it has members.
    pub fn find(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    /// The members of a room (empty for an unknown id).
    pub fn members(&self, room: RoomId) -> &[Member] {
        self.rooms.get(&room).map_or(&[], |r| &r.members)
    }

    /// Does the room have members that speak JSON?
    pub fn has_json_members(&self, room: RoomId) -> bool {
        self.rooms.get(&room).is_some_and(|r| r.json_members > 0)
    }

    /// How many members of each codec take compressed frames (a room without such
    /// members never compresses).
    pub fn deflaters(&self, room: RoomId) -> Deflaters {
        self.rooms.get(&room).map_or(Deflaters::default(), |r| r.deflate)
    }

    /// The name of a room.
    pub fn name(&self, room: RoomId) -> &str {
        self.rooms.get(&room).map_or("", |r| &r.name)
    }

    /// Every room with its member count, sorted by name.
    pub fn list(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_name.iter().map(|(name, id)| (name.as_str(), self.rooms[id].members.len()))
    }

    /// How many rooms have members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(conn: usize) -> Member {
        Member { conn, json: false, deflate: false }
    }

    #[test]
    fn rooms_from_paths() {
        assert_eq!(room_from_path("/"), Some("lobby"));
        assert_eq!(room_from_path("/a.b_c-9"), Some("a.b_c-9"));
        assert_eq!(room_from_path("/a/b"), None);
        assert_eq!(room_from_path(""), None);
        assert_eq!(room_from_path("/bad%20room"), None);
        assert_eq!(room_from_path(&format!("/{}", "r".repeat(65))), None);
        assert_eq!(room_from_path(&format!("/{}", "r".repeat(64))).map(str::len), Some(64));
    }

    #[test]
    fn join_leave_keeps_indexes_right() {
        let mut rooms = Rooms::default();
        let a = rooms.join("lobby", raw(10));
        let _ = rooms.join("lobby", raw(11));
        let json = Member { conn: 12, json: true, deflate: false };
        let _ = rooms.join("lobby", json);
        assert!(rooms.has_json_members(a.room));
        assert_eq!(rooms.leave(a), Some(json), "the last member moves into the gap");
        assert_eq!(rooms.members(a.room), &[json, raw(11)]);
        assert_eq!(rooms.leave(Seat { room: a.room, index: 0 }), Some(raw(11)));
        assert!(!rooms.has_json_members(a.room));
        assert_eq!(rooms.leave(Seat { room: a.room, index: 0 }), None);
        assert!(rooms.is_empty());
        assert_eq!(rooms.find("lobby"), None);
    }

    #[test]
    fn deflate_members_are_counted_per_codec() {
        let mut rooms = Rooms::default();
        let plain = rooms.join("lobby", raw(1));
        assert_eq!(rooms.deflaters(plain.room), Deflaters::default(), "nobody to compress for");
        let raw_z = rooms.join("lobby", Member { conn: 2, json: false, deflate: true });
        let json_z = rooms.join("lobby", Member { conn: 3, json: true, deflate: true });
        rooms.join("lobby", Member { conn: 4, json: true, deflate: true });
        assert_eq!(rooms.deflaters(plain.room), Deflaters { raw: 1, json: 2 });
        rooms.leave(raw_z);
        assert_eq!(rooms.deflaters(plain.room), Deflaters { raw: 0, json: 2 });
        // conn 4 moved into index 1 when conn 2 left; conn 3 is still at index 2.
        rooms.leave(json_z);
        assert_eq!(rooms.deflaters(plain.room), Deflaters { raw: 0, json: 1 });
    }

    #[test]
    fn ids_are_not_reused() {
        let mut rooms = Rooms::default();
        let a = rooms.join("a", raw(1));
        rooms.leave(a);
        let b = rooms.join("b", raw(1));
        assert_ne!(a.room, b.room);
        assert!(rooms.members(a.room).is_empty());
    }

    #[test]
    fn listing_is_sorted() {
        let mut rooms = Rooms::default();
        rooms.join("zeta", raw(1));
        rooms.join("alpha", raw(2));
        rooms.join("alpha", raw(3));
        assert_eq!(rooms.list().collect::<Vec<_>>(), vec![("alpha", 2), ("zeta", 1)]);
        assert_eq!(rooms.len(), 2);
    }
}
