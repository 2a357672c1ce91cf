//! The stamp: the first bytes of every message a bench sender sends.
//!
//! Owns: the layout of those bytes in both encodings and their decoding. Must not touch:
//! sockets, clocks (the send time is passed in), statistics.
//!
//! A receiver learns everything it measures from the stamp alone: who sent the message,
//! its place in that sender's sequence, and when it was sent (nanoseconds since the
//! bench's own start `Instant`, so sender and receiver share one clock). The rest of the
//! payload is filler up to `--size`.
//!
//! ```text
//! binary (24 bytes, little-endian):  "pcb" 0x01 | sender u32 | seq u64 | sent_ns u64
//! text   (44 bytes, ASCII):          "pcbT"     | sender 8 hex | seq 16 hex | sent_ns 16 hex
//! ```
//!
//! The magic tells a bench message from anything else a server may send (a welcome
//! line, a presence notice): those are counted as foreign and otherwise ignored.

use crate::proto::frame::OpCode;

/// Magic of a binary stamp; the 0x01 is the layout version.
const MAGIC_BINARY: [u8; 4] = [b'p', b'c', b'b', 0x01];
/// Magic of a text stamp (text frames must be UTF-8, so the fields are hex).
const MAGIC_TEXT: [u8; 4] = *b"pcbT";
/// Bytes of a binary stamp.
pub const BINARY_LEN: usize = 24;
/// Bytes of a text stamp.
pub const TEXT_LEN: usize = 44;
/// What the payload is padded with after the stamp: ASCII, so valid in text frames too.
pub const FILLER: u8 = b'x';

/// What a message carries after its stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// `FILLER` repeated: the cheapest to make, and far more compressible than any chat.
    Filler,
    /// Chat-like JSON: a `message` envelope whose text is words from a small vocabulary in
    /// a pseudo-random order, so deflate finds what it finds in real chat (about 3×).
    Chat,
}

/// Words for `Payload::Chat`.
const WORDS: [&str; 40] = [
    "the",
    "meeting",
    "is",
    "moved",
    "to",
    "three",
    "o'clock",
    "please",
    "bring",
    "your",
    "notes",
    "and",
    "laptop",
    "we",
    "will",
    "review",
    "release",
    "plan",
    "for",
    "next",
    "week",
    "thanks",
    "everyone",
    "who",
    "helped",
    "with",
    "deploy",
    "yesterday",
    "great",
    "work",
    "on",
    "tests",
    "see",
    "you",
    "at",
    "standup",
    "tomorrow",
    "morning",
    "cheers",
    "ok",
];

impl Payload {
    /// A payload of `size` bytes (its start is overwritten by each message's stamp).
    pub fn template(self, size: usize) -> Vec<u8> {
        match self {
            Payload::Filler => vec![FILLER; size],
            Payload::Chat => {
                let mut text =
                    String::from(r#"{"type":"message","id":4242,"room":"team-chat","from":"casey","text":""#);
                let mut seed: u32 = 0x9e37_79b9;
                while text.len() < size {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223); // an LCG: same text every run
                    text.push_str(WORDS[(seed >> 16) as usize % WORDS.len()]);
                    text.push(' ');
                }
                let mut bytes = text.into_bytes();
                bytes.truncate(size);
                bytes
            }
        }
    }
}

/// How messages are framed and stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Binary frames with a 24-byte binary stamp.
    Binary,
    /// Text frames with a 44-byte hex stamp.
    Text,
}

impl Encoding {
    /// The smallest payload that holds a stamp.
    pub fn stamp_len(self) -> usize {
        match self {
            Encoding::Binary => BINARY_LEN,
            Encoding::Text => TEXT_LEN,
        }
    }

    /// The frame opcode the messages are sent with.
    pub fn opcode(self) -> OpCode {
        match self {
            Encoding::Binary => OpCode::Binary,
            Encoding::Text => OpCode::Text,
        }
    }
}

/// What a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub sender: u32,  // index of the sending connection among the senders
    pub seq: u64,     // 0, 1, 2 ... per sender
    pub sent_ns: u64, // send time, nanoseconds since the bench's start
}

impl Stamp {
    /// Writes the stamp into the start of `out`, which must hold `encoding.stamp_len()`
    /// bytes (the caller sized the payload template; a shorter one is a bug).
    pub fn write(&self, encoding: Encoding, out: &mut [u8]) {
        match encoding {
            Encoding::Binary => {
                out[0..4].copy_from_slice(&MAGIC_BINARY);
                out[4..8].copy_from_slice(&self.sender.to_le_bytes());
                out[8..16].copy_from_slice(&self.seq.to_le_bytes());
                out[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
            }
            Encoding::Text => {
                out[0..4].copy_from_slice(&MAGIC_TEXT);
                write_hex(&mut out[4..12], u64::from(self.sender));
                write_hex(&mut out[12..28], self.seq);
                write_hex(&mut out[28..44], self.sent_ns);
            }
        }
    }

    /// Reads a stamp from the start of a payload; `None` when it is not a bench message.
    #[inline]
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let magic = payload.get(0..4)?;
        if magic == MAGIC_BINARY {
            let bytes: &[u8; BINARY_LEN] = payload.get(..BINARY_LEN)?.try_into().ok()?;
            let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            let u64_at = |at: usize| {
                let mut le = [0u8; 8];
                le.copy_from_slice(&bytes[at..at + 8]);
                u64::from_le_bytes(le)
            };
            return Some(Stamp { sender: u32_at(4), seq: u64_at(8), sent_ns: u64_at(16) });
        }
        if magic == MAGIC_TEXT {
            let bytes = payload.get(..TEXT_LEN)?;
            let sender = u32::try_from(read_hex(&bytes[4..12])?).ok()?;
            return Some(Stamp { sender, seq: read_hex(&bytes[12..28])?, sent_ns: read_hex(&bytes[28..44])? });
        }
        None
    }
}

/// Writes `value` as `out.len()` lowercase hex digits, most significant first.
fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut rest = value;
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
    }
}

/// Reads up to 16 hex digits; `None` on any other character.
fn read_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(nibble))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Stamp = Stamp { sender: 7, seq: 0x0123_4567_89ab_cdef, sent_ns: u64::MAX - 1 };

    #[test]
    fn binary_round_trip_and_layout() {
        let mut payload = vec![FILLER; 64];
        SAMPLE.write(Encoding::Binary, &mut payload);
        assert_eq!(&payload[..8], &[b'p', b'c', b'b', 0x01, 7, 0, 0, 0]);
        assert_eq!(&payload[8..16], &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
        assert_eq!(payload[BINARY_LEN], FILLER);
        assert_eq!(Stamp::read(&payload), Some(SAMPLE));
        assert_eq!(Stamp::read(&payload[..BINARY_LEN]), Some(SAMPLE), "exactly the stamp");
    }

    #[test]
    fn text_round_trip_is_ascii() {
        let mut payload = vec![FILLER; TEXT_LEN];
        SAMPLE.write(Encoding::Text, &mut payload);
        let text = std::str::from_utf8(&payload).unwrap();
        assert_eq!(text, "pcbT000000070123456789abcdeffffffffffffffffe");
        assert_eq!(Stamp::read(&payload), Some(SAMPLE));
    }

    #[test]
    fn foreign_and_truncated_payloads_are_not_stamps() {
        assert_eq!(Stamp::read(b""), None);
        assert_eq!(Stamp::read(b"hello, world"), None);
        assert_eq!(Stamp::read(b"{\"type\":\"welcome\"}"), None);
        let mut payload = vec![0u8; BINARY_LEN];
        SAMPLE.write(Encoding::Binary, &mut payload);
        assert_eq!(Stamp::read(&payload[..BINARY_LEN - 1]), None);
        let mut text = vec![0u8; TEXT_LEN];
        SAMPLE.write(Encoding::Text, &mut text);
        text[20] = b'g';
        assert_eq!(Stamp::read(&text), None, "a non-hex digit");
    }

    #[test]
    fn stamp_lengths_match_the_layouts() {
        assert_eq!(Encoding::Binary.stamp_len(), 4 + 4 + 8 + 8);
        assert_eq!(Encoding::Text.stamp_len(), 4 + 8 + 16 + 16);
    }
}
