//! The outbox: everything bound for write queues while one read is handled, in the order
//! it must be delivered, already framed.
//!
//! Owns: the ordered outputs, the records and acks they carry for history, and the pool
//! of reusable buffers new chunks are written into (`buffers::Pool`). Must not touch:
//! sockets, queues, who is in a room (the shell expands a `Room` output to its members
//! when it routes it: `server/broadcast.rs`).
//!
//! Consecutive outputs to the same place are merged, so a burst of relayed messages from
//! one read becomes one chunk per codec: encode once, share with every member.

use crate::buffers::Pool;
use crate::proto::frame::{write_frame, OpCode};

use super::record::{Query, Record};
use super::replay::Ack;
use super::rooms::RoomId;

/// Where framed bytes go.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes a connection's own protocol session produced (a 101, a pong, a Close, an
    /// HTTP answer), added by the shell so they keep their place among the chat's
    /// outputs. Queued whatever the queue limit (they are small and must go); `last`:
    /// these are the connection's last words, and no data frame may follow them
    /// (RFC 6455 §5.5.1).
    Own { conn: usize, bytes: Vec<u8>, last: bool },
    /// Frames for one connection.
    To { conn: usize, frames: Vec<u8> },
    /// Frames for the members of a room but `except`: raw members get `raw`, JSON members
    /// get `json` (either may be empty: that kind of member gets nothing). `messages`
    /// data messages are in them (presence is not counted).
    Room { room: RoomId, except: Option<usize>, raw: Vec<u8>, json: Vec<u8>, messages: u64 },
    /// Part of a room's history for one connection: the shell reads the store here, in
    /// order, and sends `replay::history_frames()` of the page.
    History { conn: usize, room: String, query: Query, json: bool },
    /// A `fetch` of shared file `id` for one connection: the shell reads the file from
    /// the store here, in order, and sends `Chat::fetch_answer()` of it (`reference`: the
    /// request's `ref`, for an `error`).
    Fetch { conn: usize, id: u64, reference: serde_json::Value },
}

/// The outputs of one read, plus what history must keep of them.
#[derive(Debug, Default)]
pub struct Outbox {
    outputs: Vec<Output>,     // in the order they must be delivered
    pub records: Vec<Record>, // messages to append to history (when it is on)
    pub acks: Vec<Ack>,       // acks owed once `records` are committed
    pool: Pool,               // reusable rings and buffers (the one pool of the loop)
}

impl Outbox {
    /// The loop's pool of reusable buffers: write queues give back into it.
    pub fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// Bytes from a connection's own session, in order with everything else.
    pub fn own(&mut self, conn: usize, bytes: Vec<u8>, last: bool) {
        self.outputs.push(Output::Own { conn, bytes, last });
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

    /// Frames a message for a room: `raw` (opcode and payload) for raw members, `json`
    /// text for JSON members. Merged into the previous output when that is for the same
    /// room and the same exception, so one read's burst is one chunk per codec.
    pub fn to_room(&mut self, room: RoomId, except: Option<usize>, raw: Option<(OpCode, &[u8])>, json: Option<&str>) {
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
            reuse(&mut self.pool, raw_frames);
            write_frame(raw_frames, opcode, payload);
        }
        if let Some(text) = json {
            reuse(&mut self.pool, json_frames);
            write_frame(json_frames, OpCode::Text, text.as_bytes());
        }
    }

    /// Asks for part of a room's history to be sent to `conn` at this point.
    pub fn history(&mut self, conn: usize, room: &str, query: Query, json: bool) {
        self.outputs.push(Output::History { conn, room: room.to_owned(), query, json });
    }

    /// Asks for shared file `id` to be sent to `conn` at this point.
    pub fn fetch(&mut self, conn: usize, id: u64, reference: serde_json::Value) {
        self.outputs.push(Output::Fetch { conn, id, reference });
    }

    /// Takes the outputs, leaving the outbox empty.
    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }
}

/// Gives `frames` a pooled buffer to grow into if it has none yet.
fn reuse(pool: &mut Pool, frames: &mut Vec<u8>) {
    if frames.capacity() == 0 {
        *frames = pool.take_buffer();
    }
}
