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
//!
//! ## Compressed broadcasts (permessage-deflate, RFC 7692)
//!
//! The server compresses every message with an empty window (`server_no_context_takeover`,
//! `proto::deflate`), so a message's compressed frame depends on the message alone and
//! is shared like the plain one: a room output carries up to four chunks, raw and JSON,
//! each plain and compressed. A message is compressed once per codec, and only when the
//! room has a member of that codec, other than the sender, that takes compressed frames
//! (`rooms::Deflaters`), the message is at least `--deflate-threshold` bytes, and it
//! shrinks. The compressed chunk starts at the first message that compressed, as a copy
//! of the plain frames before it; after that, messages that are not compressed go into it
//! as their plain frames (RSV1 clear, always legal: RFC 7692 §6). Members of a codec
//! whose compressed chunk was not built take the plain one.
//!
//! Which members take compressed broadcasts is the shell's call when they join: those
//! whose window fits every message (`Agreed::may_compress` of any length, i.e. no
//! `server_max_window_bits` below 15). A client that asked for a smaller window gets
//! broadcasts plain: one compressed chunk per window size would multiply the work for a
//! parameter no browser sends (Chrome and Firefox offer none). Its echoes and everything
//! it sends still use deflate.
//!
//! Direct outputs (`To`: replies, errors, acks, history pages) and a session's own bytes
//! (pongs, Closes) go uncompressed: RFC 7692 §6 lets any message go with RSV1 clear, and
//! they are short or (history) sent once. Echo mode is the exception (`echo`): it is what
//! conformance suites check, and a compressed echo round-trips the compressor.

use crate::buffers::Pool;
use crate::proto::deflate::{Agreed, Compressor, DEFAULT_THRESHOLD};
use crate::proto::frame::{write_frame, write_header_rsv1, OpCode};

use super::cluster::{Ask, Outgoing, RemoteDm};
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
    /// get `json` (either may be empty: that kind of member gets nothing). Members that
    /// take compressed frames get `raw_deflate` / `json_deflate` instead when they were
    /// built (module doc). `messages` data messages are in them (presence is not counted).
    Room {
        room: RoomId,
        except: Option<usize>,
        raw: Vec<u8>,
        json: Vec<u8>,
        raw_deflate: Option<Vec<u8>>,
        json_deflate: Option<Vec<u8>>,
        messages: u64,
    },
    /// Part of a room's history for one connection: the shell reads the store here, in
    /// order, and sends `replay::history_frames()` of the page.
    History { conn: usize, room: String, query: Query, json: bool },
    /// A `fetch` of shared file `id` for one connection: the shell reads the file from
    /// the store here, in order, and sends `Chat::fetch_answer()` of it (`reference`: the
    /// request's `ref`, for an `error`).
    Fetch { conn: usize, id: u64, reference: serde_json::Value },
    /// A fetch answered elsewhere (cluster history: read from Redis), for one connection:
    /// queued as any data is, under `--max-queue` (a reader that is behind is dropped).
    Fetched { conn: usize, frames: Vec<u8> },
}

/// Which codecs of a room output have recipients that take compressed frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deflate {
    pub raw: bool,  // some raw recipient takes compressed frames
    pub json: bool, // some pollcast.v1 recipient does
}

/// Most spent records the outbox keeps to fill again (`Outbox::recycle`).
const SPARE_RECORDS: usize = 4096;

/// Most bytes the spent records' bodies may hold together (4096 bodies of 1 KiB).
const SPARE_BYTES: usize = 4 << 20;

/// The outputs of one read, plus what history must keep of them.
#[derive(Debug, Default)]
pub struct Outbox {
    outputs: Vec<Output>,          // in the order they must be delivered
    pub records: Vec<Record>,      // messages to append to history (when it is on)
    pub acks: Vec<Ack>,            // acks owed once `records` are committed
    pub remote_dms: Vec<RemoteDm>, // direct messages for users on other nodes (cluster only)
    pub to_store: Vec<Outgoing>,   // messages to store in the cluster before delivery (cluster history only)
    pub asks: Vec<Ask>,            // who/rooms questions for the whole cluster (cluster only)
    pool: Pool,                    // reusable rings and buffers (the one pool of the loop)
    spare: Vec<Record>,            // records history is done with, to be filled again (`keep`)
    spare_bytes: usize,            // their bodies' capacity, together (at most `SPARE_BYTES`)
    shrink: Shrink,                // the one compressor of the loop, and when to use it
}

/// The server's compressor for outgoing messages, made on first use: it is ≈ 312 KiB of
/// tables, which a server whose clients never agree to permessage-deflate never pays.
struct Shrink {
    compressor: Option<Box<Compressor>>, // None until a message is first worth compressing
    threshold: usize,                    // `--deflate-threshold`: shorter messages go plain
    compressed: u64,                     // messages compressed since the last `take_compressed`
}

impl Default for Shrink {
    fn default() -> Shrink {
        Shrink { compressor: None, threshold: DEFAULT_THRESHOLD, compressed: 0 }
    }
}

impl std::fmt::Debug for Shrink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shrink")
            .field("compressor", &self.compressor.is_some())
            .field("threshold", &self.threshold)
            .field("compressed", &self.compressed)
            .finish()
    }
}

impl Shrink {
    /// The compressed payload of `payload`, when it is long enough and shrinks.
    fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        if payload.len() < self.threshold {
            return None;
        }
        let compressor = self.compressor.get_or_insert_with(Box::default);
        let compressed = compressor.compress_to_scratch(payload)?;
        self.compressed += 1;
        log::trace!("deflate: {} bytes compressed once, to {}", payload.len(), compressed.len());
        Some(compressed)
    }

    /// Adds the message just framed at `plain[start..]` to a compressed chunk: compressed
    /// when `message` is given (some recipient takes compressed frames) and it is worth
    /// it, else as that plain frame (if the chunk exists yet).
    fn add(
        &mut self,
        chunk: &mut Option<Vec<u8>>,
        plain: &[u8],
        start: usize,
        message: Option<(OpCode, &[u8])>,
        pool: &mut Pool,
    ) {
        if let Some(compressed) = message.and_then(|(_, payload)| self.compress(payload)) {
            let opcode = message.map_or(OpCode::Text, |(opcode, _)| opcode);
            let chunk = chunk.get_or_insert_with(|| {
                let mut chunk = pool.take_buffer();
                chunk.extend_from_slice(&plain[..start]); // the plain frames before it
                chunk
            });
            write_header_rsv1(chunk, true, opcode, compressed.len());
            chunk.extend_from_slice(compressed);
        } else if let Some(chunk) = chunk {
            chunk.extend_from_slice(&plain[start..]);
        }
    }
}

impl Outbox {
    /// Messages shorter than `threshold` bytes are never compressed (`--deflate-threshold`).
    pub fn set_deflate_threshold(&mut self, threshold: usize) {
        self.shrink.threshold = threshold;
    }

    /// Adds a record for history, filling a spent one when there is one: with history on,
    /// each message would otherwise cost three allocations (room, sender, body) and their
    /// frees, as much as a tenth of the relay's time with 1 KiB messages.
    #[allow(clippy::too_many_arguments)] // a record's fields, by reference
    pub fn keep(&mut self, id: u64, room: &str, from: &str, to: Option<&str>, binary: bool, body: &[u8], ts: u64) {
        let mut record = self.spare.pop().unwrap_or_default();
        self.spare_bytes -= record.body.capacity();
        record.id = id;
        record.room.clear();
        record.room.push_str(room);
        record.from.clear();
        record.from.push_str(from);
        record.to = to.map(str::to_owned);
        record.binary = binary;
        record.body.clear();
        record.body.extend_from_slice(body);
        record.ts = ts;
        record.file = None;
        self.records.push(record);
    }

    /// Takes back records history has committed, to be filled again by `keep`: at most
    /// `SPARE_RECORDS`, holding at most `SPARE_BYTES` of bodies (what a burst of big
    /// messages grew is freed, not kept for the life of the process).
    pub fn recycle(&mut self, spent: Vec<Record>) {
        for record in spent {
            let bytes = record.body.capacity();
            if self.spare.len() < SPARE_RECORDS && self.spare_bytes + bytes <= SPARE_BYTES {
                self.spare_bytes += bytes;
                self.spare.push(record);
            }
        }
    }

    /// How many messages were compressed since the last call (for /metrics): once per
    /// codec per message, however many members received it.
    pub fn take_compressed(&mut self) -> u64 {
        std::mem::take(&mut self.shrink.compressed)
    }

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

    /// Echo mode: a message back to its sender, compressed when the connection agreed to
    /// permessage-deflate, the message is long enough for its window and the threshold,
    /// and it shrinks; plain otherwise.
    pub fn echo(&mut self, conn: usize, opcode: OpCode, payload: &[u8], deflate: Option<Agreed>) {
        let fits = deflate.is_some_and(|agreed| agreed.may_compress(payload.len()));
        let compressed = if fits { self.shrink.compress(payload) } else { None };
        match compressed {
            Some(compressed) => {
                let outputs = &mut self.outputs;
                append_to(outputs, conn, |frames| {
                    write_header_rsv1(frames, true, opcode, compressed.len());
                    frames.extend_from_slice(compressed);
                });
            }
            None => self.send_frame(conn, opcode, payload),
        }
    }

    /// A text frame for one connection.
    pub fn send(&mut self, conn: usize, text: &str) {
        self.append_to(conn, |frames| write_frame(frames, OpCode::Text, text.as_bytes()));
    }

    /// Appends to the last output if it is for `conn`, else starts a new one.
    fn append_to(&mut self, conn: usize, write: impl FnOnce(&mut Vec<u8>)) {
        append_to(&mut self.outputs, conn, write);
    }

    /// Frames a message for a room: `raw` (opcode and payload) for raw members, `json`
    /// text for JSON members; and compressed for the codecs `deflate` names (module
    /// doc). Merged into the previous output when that is for the same room and the same
    /// exception, so one read's burst is one chunk per codec.
    pub fn to_room(
        &mut self,
        room: RoomId,
        except: Option<usize>,
        raw: Option<(OpCode, &[u8])>,
        json: Option<&str>,
        deflate: Deflate,
    ) {
        let merge =
            matches!(self.outputs.last(), Some(Output::Room { room: r, except: e, .. }) if *r == room && *e == except);
        if !merge {
            self.outputs.push(Output::Room {
                room,
                except,
                raw: Vec::new(),
                json: Vec::new(),
                raw_deflate: None,
                json_deflate: None,
                messages: 0,
            });
        }
        let Some(Output::Room { raw: raw_frames, json: json_frames, raw_deflate, json_deflate, messages, .. }) =
            self.outputs.last_mut()
        else {
            unreachable!("the last output is this room's")
        };
        if let Some((opcode, payload)) = raw {
            *messages += 1; // data messages always have a raw form; presence does not count
            reuse(&mut self.pool, raw_frames);
            let start = raw_frames.len();
            write_frame(raw_frames, opcode, payload);
            let message = Some((opcode, payload)).filter(|_| deflate.raw);
            self.shrink.add(raw_deflate, raw_frames, start, message, &mut self.pool);
        }
        if let Some(text) = json {
            reuse(&mut self.pool, json_frames);
            let start = json_frames.len();
            write_frame(json_frames, OpCode::Text, text.as_bytes());
            let message = Some((OpCode::Text, text.as_bytes())).filter(|_| deflate.json);
            self.shrink.add(json_deflate, json_frames, start, message, &mut self.pool);
        }
    }

    /// Asks for part of a room's history to be sent to `conn` at this point.
    pub fn history(&mut self, conn: usize, room: &str, query: Query, json: bool) {
        self.outputs.push(Output::History { conn, room: room.to_owned(), query, json });
    }

    /// A fetch's answer, read elsewhere (`Output::Fetched`).
    pub fn fetched(&mut self, conn: usize, frames: Vec<u8>) {
        self.outputs.push(Output::Fetched { conn, frames });
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

/// Appends to the last output if it is for `conn`, else starts a new one.
fn append_to(outputs: &mut Vec<Output>, conn: usize, write: impl FnOnce(&mut Vec<u8>)) {
    match outputs.last_mut() {
        Some(Output::To { conn: last, frames }) if *last == conn => write(frames),
        _ => {
            let mut frames = Vec::new();
            write(&mut frames);
            outputs.push(Output::To { conn, frames });
        }
    }
}

/// Gives `frames` a pooled buffer to grow into if it has none yet.
fn reuse(pool: &mut Pool, frames: &mut Vec<u8>) {
    if frames.capacity() == 0 {
        *frames = pool.take_buffer();
    }
}
