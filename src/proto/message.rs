//! Message assembly: the RFC 6455 rules that need more than one frame of context.
//!
//! Owns: whether a frame header is acceptable *now* (masking, RSV bits, opcodes,
//! control-frame limits, fragment order, message size), the buffer a fragmented
//! message is assembled in, incremental UTF-8 validation of text, and, once
//! permessage-deflate is agreed (RFC 7692), inflating compressed messages into that
//! buffer (`deflate::Inflater` does the inflating; the rules of when RSV1 may be set are
//! here). Must not touch: sockets, clocks, close handshakes (`session.rs`).
//!
//! Memory: one buffer per connection, and only while a fragmented message is in flight.
//! Every fragment is appended to it, so a flood of tiny fragments costs no more than one
//! message of the same total size, and the total is capped by `max_message` *before*
//! a byte of the fragment is buffered (the header is enough to judge).
//!
//! A compressed message (RSV1 on its first frame) is inflated fragment by fragment into
//! the same buffer, never past `max_message` (a bomb stops there: 1009). Its wire bytes
//! are judged by the header against a slightly larger bound ([`compressed_limit`]), since
//! an incompressible message grows a little when deflated. The inflate state exists only
//! while a compressed message is arriving (the server always agrees to
//! `client_no_context_takeover`): an idle connection holds none.

use std::borrow::Cow;
use std::fmt;

use super::close::CloseCode;
use super::deflate::{InflateError, Inflater, INFLATE_STATE_BYTES};
use super::frame::{apply_mask, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, RSV1_BIT};

/// The two kinds of data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Text,   // UTF-8, validated before it is delivered
    Binary, // any bytes
}

impl DataKind {
    /// The opcode a message of this kind is sent with.
    pub fn opcode(self) -> OpCode {
        match self {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        }
    }
}

/// A complete data message, its kind proven: a `Text` has been validated as UTF-8 here,
/// once, so no later layer checks it again (the `str` type carries the fact).
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(Cow<'a, str>),    // valid UTF-8
    Binary(Cow<'a, [u8]>), // any bytes
}

impl Message<'_> {
    /// The opcode this message is sent with.
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }

    /// Which kind of data message this is.
    pub fn kind(&self) -> DataKind {
        match self {
            Message::Text(_) => DataKind::Text,
            Message::Binary(_) => DataKind::Binary,
        }
    }

    /// The payload as bytes, whatever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) => data,
        }
    }
}

/// A frame header that `check_header` accepted, with what `push` needs of it. Only
/// `check_header` makes one, so a header is judged once per frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    opcode: OpCode,   // a known opcode, legal at this point of the stream
    fin: bool,        // the frame ends its message
    compressed: bool, // its payload is DEFLATE data (RSV1 on this or the message's first frame)
}

impl Checked {
    pub fn opcode(self) -> OpCode {
        self.opcode
    }
}

/// A broken rule: the connection fails with `code` (RFC 6455 §7.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: CloseCode,      // what we close with
    pub reason: &'static str, // sent as the close reason and logged
}

impl Violation {
    const fn protocol(reason: &'static str) -> Violation {
        Violation { code: CloseCode::PROTOCOL_ERROR, reason }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

const UNMASKED: Violation = Violation::protocol("client frame is not masked");
const RSV_SET: Violation = Violation::protocol("reserved bit set without an extension");
const COMPRESSED_CONTROL: Violation = Violation::protocol("compressed control frame");
const RSV1_CONTINUATION: Violation = Violation::protocol("RSV1 set on a continuation frame");
const BAD_DEFLATE: Violation = Violation { code: CloseCode::INVALID_PAYLOAD, reason: "invalid compressed data" };
const RESERVED_OPCODE: Violation = Violation::protocol("reserved opcode");
const CONTROL_TOO_LONG: Violation = Violation::protocol("control frame over 125 bytes");
const CONTROL_FRAGMENTED: Violation = Violation::protocol("fragmented control frame");
const STRAY_CONTINUATION: Violation = Violation::protocol("continuation frame without a message");
const EXPECTED_CONTINUATION: Violation = Violation::protocol("new message inside a fragmented message");
const TOO_BIG: Violation = Violation { code: CloseCode::TOO_BIG, reason: "message too big" };
const BAD_UTF8: Violation = Violation { code: CloseCode::INVALID_PAYLOAD, reason: "text is not valid UTF-8" };

/// What one complete frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled<'a> {
    /// A whole data message. Borrowed straight from the frame when it came unfragmented,
    /// owned when it was assembled from fragments.
    Message(Message<'a>),
    /// A fragment was taken in; the message is not complete yet.
    Partial,
    /// A control frame, checked but not acted on (the session does that).
    Control(OpCode, &'a [u8]),
}

/// Progress of a fragmented (or compressed) message.
#[derive(Debug, Default)]
struct Fragments {
    kind: Option<DataKind>, // Some while a fragmented message is in flight
    buf: Vec<u8>,           // the payload so far (inflated, when compressed); empty (no allocation) otherwise
    utf8_checked: usize,    // bytes of `buf` known to be valid UTF-8 (text only)
    compressed: bool,       // RSV1 was set on the first frame: fragments are DEFLATE data
    wire: u64,              // compressed bytes received so far (judged against `compressed_limit`)
}

/// How far the text of a frame that has only partly arrived has been checked.
#[derive(Debug, Default)]
struct PartialText {
    started: bool,      // this frame's check has begun (reset when a frame completes)
    checked: usize,     // payload bytes of the frame already checked
    pending: [u8; 4],   // the start of a character split at `checked` (at most 3 bytes)
    pending_len: usize, // how many bytes of `pending` are in use
}

/// Payload bytes unmasked and checked per step of `check_partial` (a stack buffer).
const PARTIAL_CHUNK: usize = 512;

/// The most compressed bytes a message of at most `max_message` inflated bytes may take
/// on the wire. DEFLATE can grow incompressible data: a fixed-Huffman block spends at
/// most 9 bits on a byte (RFC 1951 §3.2.6: literals 144-255), an eighth more, and a
/// stored block adds 5 bytes of header; the extra KiB covers block headers of a
/// fragmented message. Beyond this a message is refused (1009) on its header, unread.
pub fn compressed_limit(max_message: usize) -> u64 {
    const BLOCK_SLACK: u64 = 1 << 10;
    let max = max_message as u64;
    max + max / 8 + BLOCK_SLACK
}

/// Applies the frame rules and assembles fragmented messages.
#[derive(Debug)]
pub struct Assembler {
    max_message: usize,         // largest message accepted, in bytes (`--max-message`), inflated
    allowed_rsv: u8,            // RSV bits an extension has claimed: RSV1 once permessage-deflate is agreed
    inflater: Option<Inflater>, // permessage-deflate agreed: inflates compressed messages (state only mid-message)
    fragments: Fragments,       // the fragmented message in flight, if any
    partial: PartialText,       // fail-fast state of a text frame still arriving
}

impl Assembler {
    pub fn new(max_message: usize) -> Assembler {
        Assembler {
            max_message,
            allowed_rsv: 0,
            inflater: None,
            fragments: Fragments::default(),
            partial: PartialText::default(),
        }
    }

    /// permessage-deflate was agreed (RFC 7692): RSV1 may mark a compressed message from
    /// now on, and `inflater` inflates them. Its inflate state is made on a message's
    /// first compressed fragment and, without context takeover, dropped after its last.
    pub fn use_deflate(&mut self, inflater: Inflater) {
        self.allowed_rsv = RSV1_BIT;
        self.inflater = Some(inflater);
    }

    /// Does the connection hold an inflate state now? (Only mid-message, unless the
    /// client keeps its window.)
    pub fn holds_inflate_state(&self) -> bool {
        self.inflater.as_ref().is_some_and(Inflater::holds_state)
    }

    /// Is a fragmented message in flight?
    pub fn in_message(&self) -> bool {
        self.fragments.kind.is_some()
    }

    /// Bytes held for the message in flight (allocated capacity, plus an inflate state
    /// when one is held, for memory accounting).
    pub fn buffered_capacity(&self) -> usize {
        let inflate = if self.holds_inflate_state() { INFLATE_STATE_BYTES } else { 0 };
        self.fragments.buf.capacity() + inflate
    }

    /// Judges a header before its payload is read, so that an oversized or illegal frame
    /// is refused without buffering it. The `Checked` it returns is what `push` takes.
    pub fn check_header(&self, header: &FrameHeader) -> Result<Checked, Violation> {
        // RFC 6455 §5.1: "The server MUST close the connection upon receiving a frame
        // that is not masked."
        if header.mask.is_none() {
            return Err(UNMASKED);
        }
        // RFC 6455 §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated". Only
        // permessage-deflate is, and it claims RSV1 alone (RFC 7692 §6).
        if header.rsv & !self.allowed_rsv != 0 {
            return Err(RSV_SET);
        }
        // RFC 6455 §5.2: "If an unknown opcode is received, the receiving endpoint MUST
        // _Fail the WebSocket Connection_."
        let opcode = header.opcode().ok_or(RESERVED_OPCODE)?;
        let rsv1 = header.rsv & RSV1_BIT != 0;
        if opcode.is_control() {
            // RFC 7692 §6.1: "An endpoint MUST NOT set the "Per-Message Compressed" bit
            // of control frames".
            if rsv1 {
                return Err(COMPRESSED_CONTROL);
            }
            // RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes
            // or less and MUST NOT be fragmented."
            if header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(CONTROL_TOO_LONG);
            }
            if !header.fin {
                return Err(CONTROL_FRAGMENTED);
            }
            return Ok(Checked { opcode, fin: true, compressed: false });
        }
        // RFC 6455 §5.4: fragments of one message are a start frame then continuations;
        // control frames may be injected between them, data frames may not.
        match (opcode, self.in_message()) {
            (OpCode::Continuation, false) => return Err(STRAY_CONTINUATION),
            (OpCode::Text | OpCode::Binary, true) => return Err(EXPECTED_CONTINUATION),
            // RFC 7692 §6.1: the bit is set "on the first frame of the message" and
            // "An endpoint MUST NOT set the "Per-Message Compressed" bit of ...
            // non-first fragments of a data message".
            (OpCode::Continuation, true) if rsv1 => return Err(RSV1_CONTINUATION),
            _ => {}
        }
        let compressed = rsv1 || (opcode == OpCode::Continuation && self.fragments.compressed);
        if compressed {
            // What it inflates to is judged while inflating (never past `max_message`).
            if self.fragments.wire + header.payload_len > compressed_limit(self.max_message) {
                return Err(TOO_BIG);
            }
        } else if self.fragments.buf.len() as u64 + header.payload_len > self.max_message as u64 {
            return Err(TOO_BIG);
        }
        Ok(Checked { opcode, fin: header.fin, compressed })
    }

    /// Checks the part of a text frame's payload that has arrived so far (`arrived`,
    /// still masked, starting at the payload), so invalid UTF-8 fails the connection as
    /// soon as it is on the wire rather than when the frame is complete. Reads `arrived`
    /// without changing it; resumes where the last call for the same frame stopped.
    pub fn check_partial(&mut self, header: &FrameHeader, arrived: &[u8]) -> Result<(), Violation> {
        let text = match header.opcode() {
            // Compressed bytes are not the text: it is checked as it is inflated.
            _ if header.rsv & RSV1_BIT != 0 => false,
            Some(OpCode::Text) => true,
            Some(OpCode::Continuation) => self.fragments.kind == Some(DataKind::Text) && !self.fragments.compressed,
            _ => false,
        };
        let (Some(mask), true) = (header.mask, text) else { return Ok(()) };
        let partial = &mut self.partial;
        if !partial.started {
            // A continuation may finish a character the previous fragment began.
            let tail = match header.opcode() {
                Some(OpCode::Continuation) => &self.fragments.buf[self.fragments.utf8_checked..],
                _ => &[][..],
            };
            *partial = PartialText { started: true, ..PartialText::default() };
            partial.pending[..tail.len()].copy_from_slice(tail);
            partial.pending_len = tail.len();
        }
        while partial.checked < arrived.len() {
            let chunk = &arrived[partial.checked..arrived.len().min(partial.checked + PARTIAL_CHUNK)];
            let mut buf = [0u8; PARTIAL_CHUNK + 4];
            let held = partial.pending_len;
            buf[..held].copy_from_slice(&partial.pending[..held]);
            buf[held..held + chunk.len()].copy_from_slice(chunk);
            apply_mask(&mut buf[held..held + chunk.len()], mask, partial.checked);
            let bytes = &buf[..held + chunk.len()];
            partial.pending_len = match std::str::from_utf8(bytes) {
                Ok(_) => 0,
                Err(e) if e.error_len().is_none() => bytes.len() - e.valid_up_to(),
                Err(_) => return Err(BAD_UTF8),
            };
            let keep = &bytes[bytes.len() - partial.pending_len..];
            partial.pending[..keep.len()].copy_from_slice(keep);
            partial.checked += chunk.len();
        }
        Ok(())
    }

    /// Takes one complete, already unmasked frame whose header passed `check_header`
    /// (nothing can change the verdict between the two: the frame is the same).
    pub fn push<'a>(&mut self, checked: Checked, payload: &'a [u8]) -> Result<Assembled<'a>, Violation> {
        self.partial.started = false; // the next partial check is about a new frame
        let Checked { opcode, fin, compressed } = checked;
        match (opcode, fin, compressed) {
            // A control frame: checked above, acted on by the session.
            (OpCode::Close | OpCode::Ping | OpCode::Pong, ..) => Ok(Assembled::Control(opcode, payload)),
            // The common case: a whole message in one frame. No copy; validate in one go.
            (OpCode::Text, true, false) => match std::str::from_utf8(payload) {
                Ok(text) => Ok(Assembled::Message(Message::Text(Cow::Borrowed(text)))),
                Err(_) => Err(BAD_UTF8),
            },
            (OpCode::Binary, true, false) => Ok(Assembled::Message(Message::Binary(Cow::Borrowed(payload)))),
            // The first fragment of a message, or a whole compressed message (inflated
            // into the fragment buffer like the fragments of one).
            (OpCode::Text | OpCode::Binary, ..) => {
                let kind = if opcode == OpCode::Text { DataKind::Text } else { DataKind::Binary };
                self.fragments.kind = Some(kind);
                self.fragments.compressed = compressed;
                self.append(payload, fin)?;
                Ok(if fin { self.take_message() } else { Assembled::Partial })
            }
            // A middle fragment.
            (OpCode::Continuation, false, _) => {
                self.append(payload, false)?;
                Ok(Assembled::Partial)
            }
            // The last fragment: hand the buffer over and start afresh with no allocation.
            (OpCode::Continuation, true, _) => {
                self.append(payload, true)?;
                Ok(self.take_message())
            }
        }
    }

    /// The message whose last fragment `append` just took: the buffer is handed over.
    fn take_message(&mut self) -> Assembled<'static> {
        let fragments = std::mem::take(&mut self.fragments);
        // `push` sets the kind on a message's first frame, and `check_header` admits a
        // continuation only mid-message: a finished message always has one.
        let kind = fragments.kind.unwrap_or(DataKind::Binary);
        Assembled::Message(match kind {
            DataKind::Text => Message::Text(Cow::Owned(proven_text(fragments.buf))),
            DataKind::Binary => Message::Binary(Cow::Owned(fragments.buf)),
        })
    }

    /// Appends a fragment (inflated first, when the message is compressed) and validates
    /// the text so far, failing fast: invalid UTF-8 is reported as soon as the offending
    /// bytes arrive, not at the end of the message.
    fn append(&mut self, payload: &[u8], last: bool) -> Result<(), Violation> {
        if self.fragments.compressed {
            self.inflate(payload, last)?;
        } else {
            self.fragments.buf.extend_from_slice(payload);
        }
        let fragments = &mut self.fragments;
        if fragments.kind != Some(DataKind::Text) {
            return Ok(());
        }
        match std::str::from_utf8(&fragments.buf[fragments.utf8_checked..]) {
            Ok(_) => fragments.utf8_checked = fragments.buf.len(),
            // `error_len() == None`: the bytes so far are the start of a valid character
            // that the next fragment may complete; only the final fragment must be whole.
            Err(e) if e.error_len().is_none() && !last => fragments.utf8_checked += e.valid_up_to(),
            Err(_) => return Err(BAD_UTF8),
        }
        Ok(())
    }

    /// Inflates a fragment of a compressed message onto the buffer, at most up to
    /// `max_message` bytes in all (RFC 6455 §10.4: the limit applies to what the
    /// message *is*, not to its size on the wire). On an error the buffer is freed now:
    /// the connection is failing.
    fn inflate(&mut self, payload: &[u8], last: bool) -> Result<(), Violation> {
        // `check_header` marks a frame compressed only when RSV1 is allowed, which
        // `use_deflate` sets together with the inflater.
        let Some(inflater) = self.inflater.as_mut() else { return Err(RSV_SET) };
        let (buf, limit) = (&mut self.fragments.buf, self.max_message);
        self.fragments.wire += payload.len() as u64;
        let mut result = inflater.push(payload, buf, limit);
        if last && result.is_ok() {
            result = inflater.finish(buf, limit); // RFC 7692 §7.2.2: the tail is put back
        }
        result.map_err(|error| {
            self.fragments = Fragments::default();
            match error {
                InflateError::TooBig => TOO_BIG,
                InflateError::Invalid => BAD_DEFLATE,
            }
        })
    }
}

/// The assembled text of a fragmented message as a `String`, without validating it a
/// second time.
fn proven_text(buf: Vec<u8>) -> String {
    debug_assert!(std::str::from_utf8(&buf).is_ok());
    // SAFETY: `append` validated every byte of `buf` as it arrived (inflated, when the
    // message was compressed), and with `last` set it accepts only a buffer that ends on a
    // whole character: `buf` is valid UTF-8.
    unsafe { String::from_utf8_unchecked(buf) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fin: bool, opcode_bits: u8, len: usize) -> FrameHeader {
        FrameHeader { fin, rsv: 0, opcode_bits, mask: Some([0; 4]), payload_len: len as u64 }
    }

    fn push<'a>(a: &mut Assembler, fin: bool, opcode_bits: u8, payload: &'a [u8]) -> Result<Assembled<'a>, Violation> {
        let checked = a.check_header(&header(fin, opcode_bits, payload.len()))?;
        a.push(checked, payload)
    }

    #[test]
    fn single_frame_text_is_borrowed() {
        let mut a = Assembler::new(100);
        match push(&mut a, true, 0x1, b"hi").unwrap() {
            Assembled::Message(Message::Text(Cow::Borrowed(b))) => assert_eq!(b, "hi"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut a = Assembler::new(100);
        assert_eq!(push(&mut a, false, 0x1, b"Hel").unwrap(), Assembled::Partial);
        assert_eq!(push(&mut a, true, 0x9, b"p").unwrap(), Assembled::Control(OpCode::Ping, b"p"));
        assert_eq!(push(&mut a, false, 0x0, b"l").unwrap(), Assembled::Partial);
        let msg = push(&mut a, true, 0x0, b"o").unwrap();
        assert_eq!(msg, Assembled::Message(Message::Text(Cow::Owned("Hello".to_owned()))));
        assert!(!a.in_message());
        assert_eq!(a.buffered_capacity(), 0, "buffer is handed over, not kept");
    }

    #[test]
    fn every_header_rule() {
        let a = Assembler::new(10);
        let mut h = header(true, 0x1, 1);
        h.mask = None;
        assert_eq!(a.check_header(&h), Err(UNMASKED));
        let mut h = header(true, 0x1, 1);
        h.rsv = 0x40;
        assert_eq!(a.check_header(&h), Err(RSV_SET));
        assert_eq!(a.check_header(&header(true, 0x3, 0)), Err(RESERVED_OPCODE));
        assert_eq!(a.check_header(&header(true, 0xB, 0)), Err(RESERVED_OPCODE));
        assert_eq!(a.check_header(&header(true, 0x9, 126)), Err(CONTROL_TOO_LONG));
        assert_eq!(a.check_header(&header(false, 0x9, 1)), Err(CONTROL_FRAGMENTED));
        assert_eq!(a.check_header(&header(true, 0x0, 1)), Err(STRAY_CONTINUATION));
        assert_eq!(a.check_header(&header(true, 0x2, 11)), Err(TOO_BIG));
        assert_eq!(a.check_header(&header(true, 0x2, 10)).map(Checked::opcode), Ok(OpCode::Binary));
        assert_eq!(a.check_header(&header(true, 0x9, 125)).map(Checked::opcode), Ok(OpCode::Ping));
    }

    #[test]
    fn new_message_inside_fragmented_one() {
        let mut a = Assembler::new(10);
        push(&mut a, false, 0x2, b"ab").unwrap();
        assert_eq!(push(&mut a, true, 0x1, b"c"), Err(EXPECTED_CONTINUATION));
    }

    #[test]
    fn size_counts_all_fragments() {
        let mut a = Assembler::new(5);
        push(&mut a, false, 0x2, b"abc").unwrap();
        assert_eq!(push(&mut a, true, 0x0, b"def"), Err(TOO_BIG));
    }

    #[test]
    fn many_tiny_fragments_reach_the_limit_and_no_further() {
        let limit = 4 << 20;
        let mut a = Assembler::new(limit);
        let chunk = [b'x'; 64];
        push(&mut a, false, 0x1, &chunk).unwrap();
        for _ in 1..(limit / 64 - 1) {
            assert_eq!(push(&mut a, false, 0x0, &chunk).unwrap(), Assembled::Partial);
        }
        match push(&mut a, true, 0x0, &chunk).unwrap() {
            Assembled::Message(Message::Text(m)) => assert_eq!(m.len(), limit),
            other => panic!("{other:?}"),
        }
        push(&mut a, false, 0x2, &[0; 64]).unwrap();
        for _ in 1..(limit / 64) {
            push(&mut a, false, 0x0, &chunk).unwrap();
        }
        assert_eq!(push(&mut a, false, 0x0, b"y"), Err(TOO_BIG));
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted() {
        let text = "κόσμε".as_bytes();
        for cut in 0..=text.len() {
            let mut a = Assembler::new(100);
            push(&mut a, false, 0x1, &text[..cut]).unwrap();
            let msg = push(&mut a, true, 0x0, &text[cut..]).unwrap();
            let expected = Message::Text(Cow::Owned(String::from_utf8(text.to_vec()).unwrap()));
            assert_eq!(msg, Assembled::Message(expected), "cut {cut}");
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_in_the_first_fragment() {
        let mut a = Assembler::new(100);
        // 0xce 0xba is "κ"; 0xed 0xa0 0x80 is a UTF-16 surrogate, never valid.
        assert_eq!(push(&mut a, false, 0x1, &[0xce, 0xba, 0xed, 0xa0, 0x80]), Err(BAD_UTF8));
    }

    #[test]
    fn truncated_utf8_at_the_end_is_invalid() {
        let mut a = Assembler::new(100);
        push(&mut a, false, 0x1, &[0xce]).unwrap();
        assert_eq!(push(&mut a, true, 0x0, &[]), Err(BAD_UTF8));
        let mut a = Assembler::new(100);
        assert_eq!(push(&mut a, true, 0x1, &[0xce]), Err(BAD_UTF8));
    }

    /// A masked frame's bytes: header, then payload.
    fn masked(fin: bool, opcode_bits: u8, payload: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut frame = Vec::new();
        crate::proto::frame::write_masked_frame(&mut frame, fin, opcode_bits, payload, [9, 8, 7, 6]);
        let (header, len) = FrameHeader::parse(&frame).unwrap().unwrap();
        (header, frame[len..].to_vec())
    }

    #[test]
    fn partial_text_fails_fast_at_every_arrival_point() {
        // Valid text, then a surrogate: the error is seen once its first bytes arrive.
        let mut text = "κόσμε ".repeat(200).into_bytes();
        let bad_at = text.len();
        text.extend_from_slice(&[0xed, 0xa0, 0x80]);
        text.extend_from_slice(b"never read");
        let (header, payload) = masked(true, 0x1, &text);
        for step in [1, 7, 512, 1000] {
            let mut a = Assembler::new(1 << 20);
            let mut arrived = 0;
            let failed_at = loop {
                arrived = (arrived + step).min(payload.len());
                if a.check_partial(&header, &payload[..arrived]).is_err() {
                    break arrived;
                }
                assert!(arrived < payload.len(), "step {step}: never failed");
            };
            assert!(failed_at > bad_at && failed_at <= bad_at + step + 2, "step {step}: failed at {failed_at}");
        }
    }

    #[test]
    fn partial_text_accepts_valid_text_split_anywhere_and_across_fragments() {
        let text = "héllo wörld κόσμε".as_bytes();
        for cut in 0..text.len() {
            let mut a = Assembler::new(100);
            push(&mut a, false, 0x1, &text[..cut]).unwrap();
            let (header, payload) = masked(true, 0x0, &text[cut..]);
            for arrived in 0..=payload.len() {
                assert_eq!(a.check_partial(&header, &payload[..arrived]), Ok(()), "cut {cut} arrived {arrived}");
            }
        }
        let (header, payload) = masked(true, 0x2, &[0xff, 0xfe]);
        assert_eq!(Assembler::new(10).check_partial(&header, &payload), Ok(()), "binary is not text");
    }

    // ----- permessage-deflate ---------------------------------------------------------

    use crate::proto::deflate::Compressor;

    /// An assembler whose connection agreed to permessage-deflate without context takeover.
    fn deflating(max_message: usize) -> Assembler {
        let mut a = Assembler::new(max_message);
        a.use_deflate(Inflater::new(false));
        a
    }

    fn rsv_header(fin: bool, rsv: u8, opcode_bits: u8, len: usize) -> FrameHeader {
        FrameHeader { rsv, ..header(fin, opcode_bits, len) }
    }

    fn push_rsv<'a>(
        a: &mut Assembler,
        fin: bool,
        rsv: u8,
        opcode_bits: u8,
        payload: &'a [u8],
    ) -> Result<Assembled<'a>, Violation> {
        let checked = a.check_header(&rsv_header(fin, rsv, opcode_bits, payload.len()))?;
        a.push(checked, payload)
    }

    fn compress(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(Compressor::default().compress(payload, &mut out), "the sample must shrink");
        out
    }

    /// Text that compresses well, with multi-byte characters to split.
    fn sample_text(len: usize) -> String {
        "κόσμε, hello wörld; ".chars().cycle().take(len).collect()
    }

    #[test]
    fn rsv1_rules() {
        // Without agreement every RSV bit fails (RFC 6455 §5.2).
        let plain = Assembler::new(100);
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(plain.check_header(&rsv_header(true, rsv, 0x1, 1)), Err(RSV_SET), "rsv {rsv:#x}");
        }
        let mut a = deflating(100);
        // RSV1 on the first frame of a text or binary message: a compressed message.
        assert!(a.check_header(&rsv_header(true, 0x40, 0x1, 1)).is_ok());
        assert!(a.check_header(&rsv_header(false, 0x40, 0x2, 1)).is_ok());
        // RSV2 and RSV3 stay reserved (RFC 7692 claims RSV1 only).
        assert_eq!(a.check_header(&rsv_header(true, 0x20, 0x1, 1)), Err(RSV_SET));
        assert_eq!(a.check_header(&rsv_header(true, 0x50, 0x1, 1)), Err(RSV_SET));
        // Never on a control frame (RFC 7692 §6.1).
        for control in [0x8, 0x9, 0xA] {
            assert_eq!(a.check_header(&rsv_header(true, 0x40, control, 0)), Err(COMPRESSED_CONTROL));
        }
        // Never on a continuation (RFC 7692 §6.1), compressed message or not.
        push(&mut a, false, 0x1, b"plain ").unwrap();
        assert_eq!(a.check_header(&rsv_header(true, 0x40, 0x0, 1)), Err(RSV1_CONTINUATION));
        let mut a = deflating(100);
        push_rsv(&mut a, false, 0x40, 0x1, &compress(sample_text(60).as_bytes())[..3]).unwrap();
        assert_eq!(a.check_header(&rsv_header(false, 0x40, 0x0, 1)), Err(RSV1_CONTINUATION));
        // A stray RSV1 continuation is a stray continuation first.
        assert_eq!(deflating(100).check_header(&rsv_header(true, 0x40, 0x0, 1)), Err(STRAY_CONTINUATION));
    }

    #[test]
    fn a_compressed_message_inflates_and_its_text_is_proven() {
        let text = sample_text(500);
        let compressed = compress(text.as_bytes());
        let mut a = deflating(1000);
        match push_rsv(&mut a, true, 0x40, 0x1, &compressed).unwrap() {
            Assembled::Message(Message::Text(Cow::Owned(got))) => assert_eq!(got, text),
            other => panic!("{other:?}"),
        }
        assert!(!a.holds_inflate_state(), "no inflate state between messages");
        assert_eq!(a.buffered_capacity(), 0, "the buffer was handed over");
        // Binary too; and a plain message still comes borrowed, RSV1 or not agreed.
        let binary = compress(&[7u8; 300]);
        assert_eq!(
            push_rsv(&mut a, true, 0x40, 0x2, &binary).unwrap(),
            Assembled::Message(Message::Binary(Cow::Owned(vec![7u8; 300])))
        );
        assert!(matches!(
            push(&mut a, true, 0x1, b"hi").unwrap(),
            Assembled::Message(Message::Text(Cow::Borrowed("hi")))
        ));
    }

    #[test]
    fn inflated_text_must_be_utf8() {
        let mut bad = sample_text(200).into_bytes();
        bad[150] = 0xff;
        let mut a = deflating(1000);
        assert_eq!(push_rsv(&mut a, true, 0x40, 0x1, &compress(&bad)), Err(BAD_UTF8));
        // Fragmented: it fails in the fragment whose inflated bytes hold the error.
        let compressed = compress(&bad);
        let mut a = deflating(1000);
        let (first, rest) = compressed.split_at(compressed.len() / 2);
        let result = push_rsv(&mut a, false, 0x40, 0x1, first).and_then(|_| push(&mut a, true, 0x0, rest));
        assert_eq!(result, Err(BAD_UTF8));
    }

    #[test]
    fn compressed_fragments_split_at_every_byte() {
        let text = sample_text(400);
        let compressed = compress(text.as_bytes());
        for cut in 0..=compressed.len() {
            let mut a = deflating(text.len());
            let (first, second) = compressed.split_at(cut);
            assert_eq!(push_rsv(&mut a, false, 0x40, 0x1, first).unwrap(), Assembled::Partial, "cut {cut}");
            assert!(a.holds_inflate_state(), "state lives while the message arrives");
            match push(&mut a, true, 0x0, second).unwrap() {
                Assembled::Message(Message::Text(got)) => assert_eq!(got, text, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
            assert!(!a.holds_inflate_state() && a.buffered_capacity() == 0, "cut {cut}");
        }
        // One byte per fragment, with a ping in the middle.
        let mut a = deflating(text.len());
        push_rsv(&mut a, false, 0x40, 0x1, &compressed[..1]).unwrap();
        for (i, byte) in compressed[1..].iter().enumerate() {
            if i == 5 {
                assert_eq!(push(&mut a, true, 0x9, b"p").unwrap(), Assembled::Control(OpCode::Ping, b"p"));
            }
            let last = i == compressed.len() - 2;
            let got = push(&mut a, last, 0x0, std::slice::from_ref(byte)).unwrap();
            if last {
                assert_eq!(got, Assembled::Message(Message::Text(Cow::Owned(text.clone()))));
            }
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let limit = 64 << 10;
        let mut bomb = Vec::new();
        assert!(Compressor::new(9).compress(&vec![b'a'; 100 * limit], &mut bomb));
        assert!(bomb.len() < limit / 8, "{} bytes inflate to 100 × the limit", bomb.len());
        // In one frame: 1009, and the buffer is freed at once.
        let mut a = deflating(limit);
        assert_eq!(push_rsv(&mut a, true, 0x40, 0x2, &bomb), Err(TOO_BIG));
        assert_eq!(a.buffered_capacity(), 0);
        // In fragments: the buffer never holds more than the limit (+1 byte, to see it
        // crossed) before the 1009.
        let mut a = deflating(limit);
        let mut chunks = bomb.chunks(64);
        push_rsv(&mut a, false, 0x40, 0x2, chunks.next().unwrap()).unwrap();
        let mut result = Ok(Assembled::Partial);
        for chunk in chunks {
            result = push(&mut a, false, 0x0, chunk);
            assert!(a.buffered_capacity() <= limit + 1 + INFLATE_STATE_BYTES, "{}", a.buffered_capacity());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TOO_BIG));
        // Exactly at the limit is fine.
        let exact = compress(&vec![b'a'; limit]);
        assert!(deflating(limit).check_header(&rsv_header(true, 0x40, 0x2, exact.len())).is_ok());
        let mut a = deflating(limit);
        assert!(
            matches!(push_rsv(&mut a, true, 0x40, 0x2, &exact), Ok(Assembled::Message(m)) if m.as_bytes().len() == limit)
        );
    }

    #[test]
    fn compressed_bytes_on_the_wire_are_bounded_too() {
        let a = deflating(1000);
        let most = compressed_limit(1000) as usize;
        assert!(a.check_header(&rsv_header(true, 0x40, 0x2, most)).is_ok());
        assert_eq!(a.check_header(&rsv_header(true, 0x40, 0x2, most + 1)), Err(TOO_BIG));
    }

    #[test]
    fn invalid_deflate_data_is_1007() {
        let mut a = deflating(100);
        // BTYPE = 11 is reserved (RFC 1951 §3.2.3).
        let result = push_rsv(&mut a, true, 0x40, 0x1, &[0xff, 0xff, 0xff]);
        assert_eq!(result, Err(BAD_DEFLATE));
        assert_eq!(BAD_DEFLATE.code, CloseCode::INVALID_PAYLOAD);
        assert!(!a.holds_inflate_state());
    }

    #[test]
    fn fail_fast_utf8_does_not_read_compressed_bytes() {
        // Compressed text is not UTF-8 on the wire: the partial check must leave it alone.
        let compressed = compress(sample_text(300).as_bytes());
        assert!(std::str::from_utf8(&compressed).is_err(), "the sample must look invalid");
        let mut frame = Vec::new();
        crate::proto::frame::write_masked_frame(&mut frame, false, 0x1, &compressed, [9, 8, 7, 6]);
        frame[0] |= RSV1_BIT;
        let (header, len) = FrameHeader::parse(&frame).unwrap().unwrap();
        let mut a = deflating(1000);
        for arrived in 0..=compressed.len() {
            assert_eq!(a.check_partial(&header, &frame[len..len + arrived]), Ok(()), "arrived {arrived}");
        }
        // Nor on the continuations of a compressed message.
        let mut payload = frame[len..].to_vec();
        apply_mask(&mut payload, [9, 8, 7, 6], 0);
        let checked = a.check_header(&header).unwrap();
        a.push(checked, &payload).unwrap();
        let (cont, cont_payload) = masked(true, 0x0, &[0xff, 0xfe, 0xfd]);
        assert_eq!(a.check_partial(&cont, &cont_payload), Ok(()));
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let mut a = Assembler::new(100);
        push(&mut a, false, 0x2, &[0xff]).unwrap();
        assert!(matches!(push(&mut a, true, 0x0, &[0xfe]).unwrap(), Assembled::Message(Message::Binary(_))));
    }
}
