//! Room membership: which open clients share a room, as slab keys.
//!
//! Owns: room names, member lists, and each member's index in its list, so joining and
//! leaving are O(1). Must not touch: sockets or queues (`broadcast.rs` fans out).

use std::collections::HashMap;

use slab::Slab;

/// Where a client sits: its room and its index in that room's member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat {
    pub room: usize,  // key in `Rooms::rooms`
    pub index: usize, // position in that room's `members`
}

/// One room.
#[derive(Debug)]
pub struct Room {
    pub name: String,        // as in the URL path
    pub members: Vec<usize>, // client slab keys, in no particular order
}

/// Every non-empty room.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: Slab<Room>,               // the rooms, keyed by a stable id
    by_name: HashMap<String, usize>, // name → id
}

impl Rooms {
    /// Adds `client` to room `name`, creating the room if needed.
    pub fn join(&mut self, name: &str, client: usize) -> Seat {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = self.rooms.insert(Room { name: name.to_owned(), members: Vec::new() });
                self.by_name.insert(name.to_owned(), id);
                id
            }
        };
        let members = &mut self.rooms[id].members;
        members.push(client);
        Seat { room: id, index: members.len() - 1 }
    }

    /// Removes the member at `seat`. Returns the client that moved into its index (its
    /// seat must be updated by the caller), if any. An emptied room is dropped.
    pub fn leave(&mut self, seat: Seat) -> Option<usize> {
        let room = &mut self.rooms[seat.room];
        room.members.swap_remove(seat.index);
        let moved = room.members.get(seat.index).copied();
        if room.members.is_empty() {
            let room = self.rooms.remove(seat.room);
            self.by_name.remove(&room.name);
        }
        moved
    }

    /// The members of a room.
    pub fn members(&self, room: usize) -> &[usize] {
        &self.rooms[room].members
    }

    /// The name of a room.
    pub fn name(&self, room: usize) -> &str {
        &self.rooms[room].name
    }

    /// How many rooms have members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_keeps_indexes_right() {
        let mut rooms = Rooms::default();
        let a = rooms.join("lobby", 10);
        let b = rooms.join("lobby", 11);
        let c = rooms.join("lobby", 12);
        assert_eq!((a.room, b.room, c.room), (a.room, a.room, a.room));
        assert_eq!(rooms.leave(a), Some(12), "the last member moves into the gap");
        assert_eq!(rooms.members(a.room), &[12, 11]);
        assert_eq!(rooms.leave(Seat { room: a.room, index: 1 }), None);
        assert_eq!(rooms.leave(Seat { room: a.room, index: 0 }), None);
        assert_eq!(rooms.len(), 0);
    }

    #[test]
    fn rooms_are_separate() {
        let mut rooms = Rooms::default();
        let a = rooms.join("a", 1);
        let b = rooms.join("b", 2);
        assert_ne!(a.room, b.room);
        assert_eq!(rooms.name(b.room), "b");
        assert_eq!(rooms.len(), 2);
    }
}
