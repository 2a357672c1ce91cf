//! What one node publishes for the others, in a pub/sub message's payload: a binary,
//! versioned envelope. Pure code over bytes.
//!
//! Two kinds:
//! - **room frames** (channel `pollcast:room:ROOM`): the WebSocket frames a room output
//!   carries, already encoded by the sending node, one chunk for raw members and one for
//!   pollcast.v1 members. Every other node pushes them, shared, to its own members of
//!   the room: encoded once in the cluster, not once per node or per member.
//! - **direct message** (channel `pollcast:user:NAME`): the fields of a `dm`; the node
//!   that holds the recipient spells it in each of its connections' codec.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! version:u8 = 1 | kind:u8 | node_len:u8 | node
//! kind 1 (room frames): messages:u32 | raw_len:u32 | raw | json_len:u32 | json
//! kind 2 (dm):          id:u64 | ts:u64 | from_len:u8 | from | to_len:u8 | to | text_len:u32 | text
//! kind 3 (stored):      conn:u64 | echo:u8 | binary:u8 | ts:u64 | from_len:u8 | from | body_len:u32 | body
//! kind 4 (stored batch): count:u32 | count × (the fields of kind 3 after the node)
//! kind 5 (stored file): conn:u64 | ts:u64 | size:u64 | from_len:u8 | from | to_len:u8 | to | name_len:u8 | name | mime_len:u8 | mime
//! ```
//!
//! A stored file's envelope is its notice only: the bytes stay in the stream (a
//! `fetch` reads them), so every node's subscription carries a few hundred bytes per
//! file, never the file. `to` is empty for a room's file.
//!
//! A stored batch is what the batch store script publishes: one loop turn's messages
//! for one room, from one node, in order; their ids are consecutive from the one in
//! front of the envelope (`history::split_stored`). A node that knows only kinds 1-3
//! refuses kind 4 as an unknown kind: it never misreads it.
//!
//! A node reading a version it does not know drops the message and counts it, so nodes
//! of two versions can share one Redis during a rolling upgrade without misreading.

/// The layout above.
pub const VERSION: u8 = 1;
const ROOM_FRAMES: u8 = 1;
const DIRECT: u8 = 2;
const STORED: u8 = 3;
const STORED_BATCH: u8 = 4;
const STORED_FILE: u8 = 5;

/// A decoded envelope, borrowing the payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// Frames for a room's members (the room is the channel's).
    Room { node: &'a str, messages: u32, raw: &'a [u8], json: &'a [u8] },
    /// A direct message for the user the channel names.
    Dm { node: &'a str, id: u64, ts: u64, from: &'a str, to: &'a str, text: &'a str },
    /// A room message as the store script published it (its id is in front of the
    /// envelope: `history::split_stored`). `conn`: the sender's connection on `node`.
    Stored { node: &'a str, conn: u64, echo: bool, binary: bool, ts: u64, from: &'a str, body: &'a [u8] },
    /// Room messages as the batch store script published them, in order (the first
    /// one's id is in front of the envelope; the others follow it one by one).
    StoredBatch { node: &'a str, messages: Vec<StoredMessage<'a>> },
    /// A shared file's notice as the file store script published it (its id in front;
    /// its bytes are in the stream only). `to`: a direct file's recipient.
    File(StoredFile<'a>),
}

/// A stored file's notice: who shared what, where (`node`: where its sender is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredFile<'a> {
    pub node: &'a str,       // the sender's node
    pub conn: u64,           // the sender's connection there
    pub ts: u64,             // ms since the epoch
    pub size: u64,           // the file's bytes
    pub from: &'a str,       // the sender's name
    pub to: Option<&'a str>, // a direct file's recipient (None: the channel's room)
    pub name: &'a str,       // the file's name (≤ 255 bytes: `chat::files::MAX_NAME`)
    pub mime: &'a str,       // its type (≤ 255 bytes)
}

/// One message of a stored batch (the fields of `Envelope::Stored` but the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredMessage<'a> {
    pub conn: u64,      // the sender's connection on the batch's node
    pub echo: bool,     // the sender gets its own copy
    pub binary: bool,   // a binary message
    pub ts: u64,        // ms since the epoch
    pub from: &'a str,  // the sender's name
    pub body: &'a [u8], // the message
}

/// Appends a room-frames envelope to `out`.
pub fn room(out: &mut Vec<u8>, node: &str, messages: u32, raw: &[u8], json: &[u8]) {
    head(out, ROOM_FRAMES, node);
    out.extend_from_slice(&messages.to_be_bytes());
    long(out, raw);
    long(out, json);
}

/// Appends a direct-message envelope to `out`. Names are at most 255 bytes (the
/// chat's are far shorter); `text` at most 4 GiB (the chat's at most `--max-text`).
pub fn dm(out: &mut Vec<u8>, node: &str, id: u64, ts: u64, from: &str, to: &str, text: &str) {
    head(out, DIRECT, node);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    short(out, from.as_bytes());
    short(out, to.as_bytes());
    long(out, text.as_bytes());
}

/// Appends a stored-message envelope to `out` (the store script puts the id in front).
#[allow(clippy::too_many_arguments)] // the fields of one message
pub fn stored(out: &mut Vec<u8>, node: &str, conn: u64, echo: bool, binary: bool, ts: u64, from: &str, body: &[u8]) {
    head(out, STORED, node);
    stored_fields(out, conn, echo, binary, ts, from, body);
}

/// Appends a stored-batch envelope to `out`: `messages` in order (at most `u32::MAX`;
/// the shell caps a batch far below).
pub fn stored_batch(out: &mut Vec<u8>, node: &str, messages: &[StoredMessage]) {
    head(out, STORED_BATCH, node);
    let count = u32::try_from(messages.len()).expect("a batch is capped far below 4G messages");
    out.extend_from_slice(&count.to_be_bytes());
    for m in messages {
        stored_fields(out, m.conn, m.echo, m.binary, m.ts, m.from, m.body);
    }
}

/// Appends a stored-file envelope to `out` (the file store script puts the id in front).
pub fn file(out: &mut Vec<u8>, file: &StoredFile) {
    head(out, STORED_FILE, file.node);
    out.extend_from_slice(&file.conn.to_be_bytes());
    out.extend_from_slice(&file.ts.to_be_bytes());
    out.extend_from_slice(&file.size.to_be_bytes());
    short(out, file.from.as_bytes());
    short(out, file.to.unwrap_or("").as_bytes());
    short(out, file.name.as_bytes());
    short(out, file.mime.as_bytes());
}

fn stored_fields(out: &mut Vec<u8>, conn: u64, echo: bool, binary: bool, ts: u64, from: &str, body: &[u8]) {
    out.extend_from_slice(&conn.to_be_bytes());
    out.push(u8::from(echo));
    out.push(u8::from(binary));
    out.extend_from_slice(&ts.to_be_bytes());
    short(out, from.as_bytes());
    long(out, body);
}

/// Reads an envelope; an error says what was wrong (an unknown version or kind, a
/// truncated or overlong field), never echoing the bytes.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, &'static str> {
    let mut input = Input(payload);
    if input.u8()? != VERSION {
        return Err("an envelope version this node does not know");
    }
    let kind = input.u8()?;
    let node = input.str_short()?;
    let envelope = match kind {
        ROOM_FRAMES => {
            let messages = input.u32()?;
            let raw = input.long()?;
            let json = input.long()?;
            Envelope::Room { node, messages, raw, json }
        }
        DIRECT => {
            let (id, ts) = (input.u64()?, input.u64()?);
            let (from, to) = (input.str_short()?, input.str_short()?);
            let text = std::str::from_utf8(input.long()?).map_err(|_| "a text that is not UTF-8")?;
            Envelope::Dm { node, id, ts, from, to, text }
        }
        STORED => {
            let StoredMessage { conn, echo, binary, ts, from, body } = input.stored()?;
            Envelope::Stored { node, conn, echo, binary, ts, from, body }
        }
        STORED_BATCH => {
            let count = input.u32()? as usize;
            // Each message takes at least 23 bytes: a count beyond what is left is a lie,
            // refused before anything is allocated for it.
            if count > input.0.len() / 23 {
                return Err("a batch count beyond its bytes");
            }
            let mut messages = Vec::with_capacity(count);
            for _ in 0..count {
                messages.push(input.stored()?);
            }
            Envelope::StoredBatch { node, messages }
        }
        STORED_FILE => {
            let (conn, ts, size) = (input.u64()?, input.u64()?, input.u64()?);
            let (from, to) = (input.str_short()?, input.str_short()?);
            let (name, mime) = (input.str_short()?, input.str_short()?);
            let to = (!to.is_empty()).then_some(to);
            Envelope::File(StoredFile { node, conn, ts, size, from, to, name, mime })
        }
        _ => return Err("an envelope kind this node does not know"),
    };
    match input.0.is_empty() {
        true => Ok(envelope),
        false => Err("bytes after the envelope"),
    }
}

fn head(out: &mut Vec<u8>, kind: u8, node: &str) {
    out.push(VERSION);
    out.push(kind);
    short(out, node.as_bytes());
}

/// A field of at most 255 bytes (longer is cut: callers pass names, bounded far below).
fn short(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(u8::MAX as usize)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn long(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("fields are bounded by --max-message, far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What is left to read.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a truncated envelope");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    fn long(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// The fields of one stored message.
    fn stored(&mut self) -> Result<StoredMessage<'a>, &'static str> {
        let conn = self.u64()?;
        let (echo, binary) = (self.u8()? != 0, self.u8()? != 0);
        let ts = self.u64()?;
        let from = self.str_short()?;
        let body = self.long()?;
        Ok(StoredMessage { conn, echo, binary, ts, from, body })
    }

    fn str_short(&mut self) -> Result<&'a str, &'static str> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a name that is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_frames_round_trip() {
        let mut out = Vec::new();
        room(&mut out, "n1", 2, b"\x81\x02hi", b"\x81\x02{}");
        assert_eq!(&out[..5], [VERSION, ROOM_FRAMES, 2, b'n', b'1']);
        let envelope = decode(&out).unwrap();
        assert_eq!(envelope, Envelope::Room { node: "n1", messages: 2, raw: b"\x81\x02hi", json: b"\x81\x02{}" });
    }

    #[test]
    fn direct_messages_round_trip() {
        let mut out = Vec::new();
        dm(&mut out, "n2", 7, 1_700_000_000_000, "ann", "bob", "hé");
        let envelope = decode(&out).unwrap();
        assert_eq!(
            envelope,
            Envelope::Dm { node: "n2", id: 7, ts: 1_700_000_000_000, from: "ann", to: "bob", text: "hé" }
        );
    }

    #[test]
    fn stored_files_round_trip_without_their_bytes() {
        for to in [None, Some("bob")] {
            let file = StoredFile {
                node: "n3",
                conn: 4,
                ts: 9,
                size: 1 << 20,
                from: "ann",
                to,
                name: "cat pic.png",
                mime: "image/png",
            };
            let mut out = Vec::new();
            super::file(&mut out, &file);
            assert!(out.len() < 64, "a notice, not the file");
            assert_eq!(decode(&out), Ok(Envelope::File(file)));
            assert_eq!(decode(&out[..out.len() - 1]), Err("a truncated envelope"));
        }
    }

    #[test]
    fn stored_messages_round_trip() {
        let mut out = Vec::new();
        stored(&mut out, "n3", 12, true, false, 99, "ann", b"hello");
        let envelope = decode(&out).unwrap();
        let expected =
            Envelope::Stored { node: "n3", conn: 12, echo: true, binary: false, ts: 99, from: "ann", body: b"hello" };
        assert_eq!(envelope, expected);
    }

    #[test]
    fn stored_batches_round_trip_in_order() {
        let messages = [
            StoredMessage { conn: 3, echo: true, binary: false, ts: 10, from: "ann", body: b"one" },
            StoredMessage { conn: 4, echo: false, binary: true, ts: 11, from: "bob", body: b"\x00\xff" },
            StoredMessage { conn: 3, echo: true, binary: false, ts: 12, from: "ann", body: b"" },
        ];
        let mut out = Vec::new();
        stored_batch(&mut out, "n4", &messages);
        assert_eq!(&out[..2], [VERSION, STORED_BATCH]);
        assert_eq!(decode(&out).unwrap(), Envelope::StoredBatch { node: "n4", messages: messages.to_vec() });
        let mut empty = Vec::new();
        stored_batch(&mut empty, "n4", &[]);
        assert_eq!(decode(&empty).unwrap(), Envelope::StoredBatch { node: "n4", messages: Vec::new() });
    }

    #[test]
    fn damaged_batches_are_refused() {
        let one = StoredMessage { conn: 1, echo: true, binary: false, ts: 2, from: "ann", body: b"hi" };
        let mut good = Vec::new();
        stored_batch(&mut good, "n", &[one, one]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err("bytes after the envelope"));
        let mut lying = good.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_be_bytes()); // count, after version, kind and "n"
        assert_eq!(decode(&lying), Err("a batch count beyond its bytes"));
        let mut fewer = good.clone();
        fewer[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(decode(&fewer), Err("bytes after the envelope"));
        let mut future = good;
        future[0] = VERSION + 1;
        assert_eq!(decode(&future), Err("an envelope version this node does not know"));
    }

    #[test]
    fn damaged_envelopes_are_refused() {
        let mut good = Vec::new();
        room(&mut good, "n1", 1, b"abc", b"");
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err("bytes after the envelope"));
        let mut future = good.clone();
        future[0] = 2;
        assert_eq!(decode(&future), Err("an envelope version this node does not know"));
        let mut strange = good;
        strange[1] = 9;
        assert!(decode(&strange).is_err());
        let mut bad_text = Vec::new();
        dm(&mut bad_text, "n", 1, 1, "a", "b", "x");
        *bad_text.last_mut().unwrap() = 0xff;
        assert_eq!(decode(&bad_text), Err("a text that is not UTF-8"));
    }
}
