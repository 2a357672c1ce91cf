//! The RFC 6455 §5 frame codec: header parse and encode, masking.
//!
//! Owns: the bytes of one frame header, the masking transform, and the encoding of
//! server frames. Must not touch: sockets, clocks, or what a frame *means* (fragment
//! assembly and close-code rules live in `message.rs` and `session.rs`).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Parsing follows the `TryParse` convention: `Ok(None)` means "need more bytes" and
//! consumes nothing, so the caller may simply retry with a longer slice.

use std::fmt;

/// FIN bit: this is the final fragment of a message (RFC 6455 §5.2).
const FIN_BIT: u8 = 0x80;
/// RSV1..RSV3: reserved for extensions (RFC 6455 §5.2).
const RSV_BITS: u8 = 0x70;
/// RSV1, the "Per-Message Compressed" bit once permessage-deflate is agreed (RFC 7692 §6).
pub const RSV1_BIT: u8 = 0x40;
/// The low nibble of the first byte.
const OPCODE_BITS: u8 = 0x0f;
/// MASK bit of the second byte.
const MASK_BIT: u8 = 0x80;
/// The 7-bit payload length field of the second byte.
const LEN7_BITS: u8 = 0x7f;
/// A 7-bit length of 126 means "the next 2 bytes hold the length".
const LEN7_U16: u8 = 126;
/// A 7-bit length of 127 means "the next 8 bytes hold the length".
const LEN7_U64: u8 = 127;
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest possible header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// The frame types of RFC 6455 §5.2 (`%x3-7` and `%xB-F` are reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation, // %x0: continues a fragmented message
    Text,         // %x1: UTF-8 text
    Binary,       // %x2: arbitrary bytes
    Close,        // %x8: closing handshake
    Ping,         // %x9: must be answered by a Pong
    Pong,         // %xA: answer to a Ping, or unsolicited heartbeat
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for the reserved values.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// RFC 6455 §5.5: control frames have the high bit of the opcode set.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// Why a header could not be parsed at all. Rule violations that need context (was a
/// fragmented message in progress?) are judged by `message.rs`, not here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// RFC 6455 §5.2: "the most significant bit MUST be 0" in a 64-bit length.
    LengthHighBit,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::LengthHighBit => f.write_str("64-bit payload length has its top bit set"),
        }
    }
}

/// One parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,             // final fragment of its message
    pub rsv: u8,               // RSV1..3 as the 3 high bits of 0x70, unshifted
    pub opcode_bits: u8,       // raw 4-bit opcode, kept raw so reserved values can be reported
    pub mask: Option<[u8; 4]>, // masking key, present on every client-to-server frame
    pub payload_len: u64,      // length of the payload that follows the header
}

impl FrameHeader {
    /// The opcode, or `None` if it is one of the reserved values.
    pub fn opcode(&self) -> Option<OpCode> {
        OpCode::from_bits(self.opcode_bits)
    }

    /// Parses a header from the start of `input`.
    ///
    /// Returns `Ok(Some((header, header_len)))`, or `Ok(None)` when `input` does not
    /// yet hold a whole header (nothing is consumed).
    pub fn parse(input: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
        let [b0, b1, ..] = *input else {
            return Ok(None);
        };
        let len7 = b1 & LEN7_BITS;
        let len_bytes = match len7 {
            LEN7_U16 => 2,
            LEN7_U64 => 8,
            _ => 0,
        };
        let masked = b1 & MASK_BIT != 0;
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if input.len() < header_len {
            return Ok(None);
        }
        let payload_len = match len7 {
            LEN7_U16 => u64::from(u16::from_be_bytes([input[2], input[3]])),
            LEN7_U64 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&input[2..10]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(HeaderError::LengthHighBit);
                }
                len
            }
            short => u64::from(short),
        };
        let mask = masked.then(|| {
            let at = 2 + len_bytes;
            [input[at], input[at + 1], input[at + 2], input[at + 3]]
        });
        let header = FrameHeader {
            fin: b0 & FIN_BIT != 0,
            rsv: b0 & RSV_BITS,
            opcode_bits: b0 & OPCODE_BITS,
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }
}

/// Appends the header of an unmasked frame (server to client, RFC 6455 §5.1: "A server
/// MUST NOT mask any frames that it sends to the client").
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload_len: usize) {
    write_header_raw(out, fin, opcode.bits(), payload_len, None);
}

/// Appends the header of an unmasked frame with RSV1 set: the first frame of a message
/// compressed by permessage-deflate (RFC 7692 §6: "the "Per-Message Compressed" bit ...
/// RSV1"). Only `deflate.rs` calls this, and only on a connection that agreed to it.
pub fn write_header_rsv1(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload_len: usize) {
    let at = out.len();
    write_header(out, fin, opcode, payload_len);
    out[at] |= RSV1_BIT;
}

/// Appends a whole unmasked frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    write_header(out, true, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a whole masked frame, as a client sends it (used by tests and the bench).
/// `opcode_bits` is raw so tests can send reserved opcodes (RSV bits are always 0 here).
pub fn write_masked_frame(out: &mut Vec<u8>, fin: bool, opcode_bits: u8, payload: &[u8], mask: [u8; 4]) {
    write_header_raw(out, fin, opcode_bits, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// The one header encoder behind the helpers above.
fn write_header_raw(out: &mut Vec<u8>, fin: bool, opcode_bits: u8, payload_len: usize, mask: Option<[u8; 4]>) {
    let b0 = if fin { FIN_BIT } else { 0 } | (opcode_bits & OPCODE_BITS);
    let mask_bit = if mask.is_some() { MASK_BIT } else { 0 };
    out.push(b0);
    // RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length".
    if payload_len < usize::from(LEN7_U16) {
        out.push(mask_bit | payload_len as u8); // fits: checked just above
    } else if let Ok(len16) = u16::try_from(payload_len) {
        out.push(mask_bit | LEN7_U16);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | LEN7_U64);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// The encoded length of an unmasked frame with `payload_len` payload bytes.
pub fn frame_len(payload_len: usize) -> usize {
    let ext = if payload_len < usize::from(LEN7_U16) {
        0
    } else if payload_len <= usize::from(u16::MAX) {
        2
    } else {
        8
    };
    2 + ext + payload_len
}

/// XORs `data` with the masking key (RFC 6455 §5.3), where `data` starts `offset` bytes
/// into the masked payload. The same call masks and unmasks.
///
/// Works a machine word at a time: the key is rotated to line up with `offset`, repeated
/// into a `u64`, and applied to 8-byte chunks; only the ragged tail goes byte by byte.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let shift = offset % 4;
    let key = [mask[shift], mask[(shift + 1) % 4], mask[(shift + 2) % 4], mask[(shift + 3) % 4]];
    let word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Each chunk is 8 bytes (a multiple of 4), so the key phase is unchanged for the tail.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §5.7: a single-frame unmasked text message "Hello".
    const HELLO_UNMASKED: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    /// RFC 6455 §5.7: a single-frame masked text message "Hello".
    const HELLO_MASKED: [u8; 11] = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];

    #[test]
    fn rfc_unmasked_hello() {
        let (h, n) = FrameHeader::parse(&HELLO_UNMASKED).unwrap().unwrap();
        assert_eq!(n, 2);
        assert!(h.fin);
        assert_eq!(h.opcode(), Some(OpCode::Text));
        assert_eq!(h.mask, None);
        assert_eq!(&HELLO_UNMASKED[n..], b"Hello");
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Text, b"Hello");
        assert_eq!(out, HELLO_UNMASKED);
    }

    #[test]
    fn rfc_masked_hello() {
        let (h, n) = FrameHeader::parse(&HELLO_MASKED).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut payload = HELLO_MASKED[n..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
        let mut out = Vec::new();
        write_masked_frame(&mut out, true, 0x1, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(out, HELLO_MASKED);
    }

    #[test]
    fn rfc_fragmented_hello() {
        // RFC 6455 §5.7: "Hel" then "lo" as two unmasked frames.
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let second = [0x80, 0x02, 0x6c, 0x6f];
        let (h1, _) = FrameHeader::parse(&first).unwrap().unwrap();
        let (h2, _) = FrameHeader::parse(&second).unwrap().unwrap();
        assert!(!h1.fin && h1.opcode() == Some(OpCode::Text));
        assert!(h2.fin && h2.opcode() == Some(OpCode::Continuation));
    }

    #[test]
    fn rfc_ping_and_masked_pong() {
        // RFC 6455 §5.7: unmasked Ping "Hello", masked Pong "Hello".
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let pong = [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(FrameHeader::parse(&ping).unwrap().unwrap().0.opcode(), Some(OpCode::Ping));
        let (h, n) = FrameHeader::parse(&pong).unwrap().unwrap();
        assert_eq!(h.opcode(), Some(OpCode::Pong));
        let mut payload = pong[n..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
    }

    #[test]
    fn rfc_length_encodings() {
        // RFC 6455 §5.7: 256 bytes binary in one unmasked frame: 0x82 0x7E 0x0100.
        let mut out = Vec::new();
        write_header(&mut out, true, OpCode::Binary, 256);
        assert_eq!(out, [0x82, 0x7e, 0x01, 0x00]);
        // 64 KiB binary: 0x82 0x7F 0x0000000000010000.
        out.clear();
        write_header(&mut out, true, OpCode::Binary, 65536);
        assert_eq!(out, [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            out.clear();
            write_header(&mut out, true, OpCode::Binary, len);
            assert_eq!(out.len(), header, "len {len}");
            assert_eq!(frame_len(len), header + len);
            let (h, n) = FrameHeader::parse(&out).unwrap().unwrap();
            assert_eq!((h.payload_len, n), (len as u64, header));
        }
    }

    #[test]
    fn length_top_bit_is_an_error() {
        let bytes = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(FrameHeader::parse(&bytes), Err(HeaderError::LengthHighBit));
    }

    #[test]
    fn every_split_needs_more_bytes_until_complete() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536] {
            let mut frame = Vec::new();
            write_masked_frame(&mut frame, true, 0x2, &vec![7u8; len], [1, 2, 3, 4]);
            let header_len = frame.len() - len;
            for cut in 0..header_len {
                assert_eq!(FrameHeader::parse(&frame[..cut]), Ok(None), "len {len} cut {cut}");
            }
            let (h, n) = FrameHeader::parse(&frame[..header_len]).unwrap().unwrap();
            assert_eq!((h.payload_len as usize, n), (len, header_len));
        }
    }

    #[test]
    fn reserved_bits_and_opcodes_are_reported_raw() {
        let (h, _) = FrameHeader::parse(&[0xf3, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0x70);
        assert_eq!(h.opcode_bits, 0x3);
        assert_eq!(h.opcode(), None);
        for bits in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(OpCode::from_bits(bits), None);
        }
    }

    #[test]
    fn mask_matches_bytewise_at_every_offset() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for offset in 0..8 {
            for len in [0, 1, 3, 7, 8, 9, 31, 1000] {
                let mut fast = data[..len].to_vec();
                apply_mask(&mut fast, mask, offset);
                let slow: Vec<u8> = data[..len].iter().enumerate().map(|(i, b)| b ^ mask[(i + offset) % 4]).collect();
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }
}
