//! The bench's side of permessage-deflate (`--deflate`): inflating the server's
//! compressed messages back into the frames a scenario expects, and the probes that
//! measured the figures quoted in `proto::deflate`.
//!
//! Owns: one connection's message in the middle of inflation. Must not touch: sockets,
//! the clock, or statistics; the pool feeds it frame pieces and hands the result to the
//! scenario's `Handler` exactly as it would an uncompressed frame, so deliveries are
//! counted the same way with or without compression.
//!
//! The offer ([`DEFLATE_OFFER`](super::wire::DEFLATE_OFFER)) asks both sides to reset
//! their window per message, so between messages a connection holds no inflate state;
//! a server that does not answer with the extension simply gets plain frames.

use crate::bench::wire::{Frame, PREFIX_MAX};
use crate::proto::deflate::{Answer, InflateError, Inflater};

/// RFC 7692 §6: RSV1 on a message's first frame means "compressed".
pub const RSV1: u8 = 0x40;
/// The largest message the bench inflates: above `fanout --size`'s 16 MiB cap, far
/// below what would hurt the bench's memory.
pub const INFLATE_LIMIT: usize = 64 << 20;

/// One connection's permessage-deflate state, present only when the server agreed.
pub struct ClientDeflate {
    answer: Answer,     // what the server's 101 agreed to
    inflater: Inflater, // for the server's messages
    inflated: Vec<u8>,  // the message being inflated (its capacity is reused)
    opcode_bits: u8,    // opcode of the compressed message in progress
    in_message: bool,   // a compressed message has started and not yet ended
    frame_fin: bool,    // the frame whose payload is arriving ends its message
}

impl ClientDeflate {
    /// State for a connection whose server agreed to `answer`.
    pub fn new(answer: Answer) -> ClientDeflate {
        ClientDeflate {
            answer,
            inflater: answer.inflater(),
            inflated: Vec::new(),
            opcode_bits: 0,
            in_message: false,
            frame_fin: false,
        }
    }

    /// May a message of `len` bytes be sent compressed on this connection?
    pub fn may_compress(&self, len: usize) -> bool {
        self.answer.may_compress(len)
    }

    /// Is a compressed message in the middle of arriving?
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// The start of a data frame that is part of a compressed message: the first one
    /// (RSV1 set, text or binary) or a continuation. Returns the whole message once it
    /// is complete, as a frame `Handler::on_data` can read.
    pub fn start(&mut self, frame: &Frame<'_>) -> Result<Option<Frame<'_>>, InflateError> {
        if !self.in_message {
            self.in_message = true;
            self.opcode_bits = frame.opcode_bits;
            self.inflated.clear();
        }
        self.frame_fin = frame.fin;
        self.inflater.push(frame.prefix, &mut self.inflated, INFLATE_LIMIT)?;
        if frame.payload_len > frame.prefix.len() as u64 {
            return Ok(None); // the rest of this payload follows as pieces
        }
        self.frame_done()
    }

    /// More payload of the current frame; `last`: its final bytes.
    pub fn rest(&mut self, bytes: &[u8], last: bool) -> Result<Option<Frame<'_>>, InflateError> {
        self.inflater.push(bytes, &mut self.inflated, INFLATE_LIMIT)?;
        if !last {
            return Ok(None);
        }
        self.frame_done()
    }

    /// The current frame is complete: if it ended the message, inflate the tail.
    fn frame_done(&mut self) -> Result<Option<Frame<'_>>, InflateError> {
        if !self.frame_fin {
            return Ok(None);
        }
        self.in_message = false;
        self.inflater.finish(&mut self.inflated, INFLATE_LIMIT)?;
        Ok(Some(Frame {
            fin: true,
            rsv: 0,
            opcode_bits: self.opcode_bits,
            payload_len: self.inflated.len() as u64,
            prefix: &self.inflated[..self.inflated.len().min(PREFIX_MAX)],
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;
    use std::time::Instant;

    use super::*;
    use crate::bench::stamp::{Encoding, Stamp, FILLER};
    use crate::proto::deflate::{negotiate, parse_answer, Compressor, DeflateConfig, DEFAULT_THRESHOLD};

    /// The answer a pollcast server gives to the bench's offer.
    fn agreed() -> Answer {
        let ours = negotiate(&[crate::bench::wire::DEFLATE_OFFER], &DeflateConfig::default()).unwrap().unwrap();
        parse_answer(&ours.response_header()).unwrap()
    }

    /// A stamped message as `bench fanout` sends it.
    fn stamped(len: usize, seq: u64) -> Vec<u8> {
        let mut payload = vec![FILLER; len];
        Stamp { sender: 3, seq, sent_ns: 123_456 }.write(Encoding::Text, &mut payload);
        payload
    }

    /// The compressed path end to end: our Compressor's bytes, fed as a frame start and
    /// pieces (as the reader cuts them), come back as the stamped frame.
    #[test]
    fn compressed_messages_read_back_as_frames() {
        let mut compressor = Compressor::default();
        let mut deflate = ClientDeflate::new(agreed());
        for (seq, len) in [64usize, 200, 5000, 100_000].into_iter().enumerate() {
            let payload = stamped(len, seq as u64);
            let mut compressed = Vec::new();
            assert!(compressor.compress(&payload, &mut compressed), "len {len}");
            // One frame: the prefix with the start, the rest in 1000-byte pieces.
            let cut = compressed.len().min(PREFIX_MAX);
            let frame = Frame {
                fin: true,
                rsv: RSV1,
                opcode_bits: 0x1,
                payload_len: compressed.len() as u64,
                prefix: &compressed[..cut],
            };
            let mut whole = deflate.start(&frame).unwrap().map(|f| (f.payload_len, f.prefix.to_vec()));
            let pieces: Vec<&[u8]> = compressed[cut..].chunks(1000).collect();
            for (i, piece) in pieces.iter().enumerate() {
                assert!(whole.is_none());
                whole = deflate.rest(piece, i + 1 == pieces.len()).unwrap().map(|f| (f.payload_len, f.prefix.to_vec()));
            }
            let (payload_len, prefix) = whole.expect("the message is complete");
            assert_eq!(payload_len, len as u64);
            assert_eq!(Stamp::read(&prefix), Some(Stamp { sender: 3, seq: seq as u64, sent_ns: 123_456 }));
            assert!(!deflate.in_message());
        }
    }

    #[test]
    fn a_fragmented_compressed_message() {
        let payload = stamped(300, 9);
        let mut compressed = Vec::new();
        assert!(Compressor::default().compress(&payload, &mut compressed));
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut deflate = ClientDeflate::new(agreed());
        let first = Frame { fin: false, rsv: RSV1, opcode_bits: 0x1, payload_len: a.len() as u64, prefix: a };
        assert!(deflate.start(&first).unwrap().is_none());
        assert!(deflate.in_message());
        let second = Frame { fin: true, rsv: 0, opcode_bits: 0x0, payload_len: b.len() as u64, prefix: b };
        let message = deflate.start(&second).unwrap().unwrap();
        assert_eq!((message.opcode_bits, message.payload_len), (0x1, 300));
        assert_eq!(Stamp::read(message.prefix).map(|s| s.seq), Some(9));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut deflate = ClientDeflate::new(agreed());
        let bad = [0xff, 0xff, 0xff];
        let frame = Frame { fin: true, rsv: RSV1, opcode_bits: 0x2, payload_len: 3, prefix: &bad };
        assert_eq!(deflate.start(&frame).err(), Some(InflateError::Invalid));
    }

    /// A pollcast-like JSON envelope of exactly `len` bytes whose text never repeats
    /// itself (words drawn by a fixed xorshift sequence), so the savings measured are
    /// those of chat, not of a repeated sample.
    fn chat(len: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "hello", "the", "deploy", "is", "green", "again", "who", "broke", "staging", "lunch", "at", "noon",
            "tomorrow", "ok", "thanks", "merged",
        ];
        let mut text = String::from(r#"{"type":"message","room":"lobby","from":"alice","text":""#);
        let mut x: u32 = 2_463_534_242;
        while text.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            text.push_str(WORDS[(x % 16) as usize]);
            text.push(' ');
        }
        let mut bytes = text.into_bytes();
        bytes.truncate(len);
        bytes
    }

    /// Where compression starts to pay: bytes saved and CPU per message by size.
    /// `cargo test --release --lib deflate_threshold_probe -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn deflate_threshold_probe() {
        let mut compressor = Compressor::default();
        let mut out = Vec::new();
        println!("payload  compressed  saved  ns/message  ns/byte-saved");
        for len in [16, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 4096, 16384] {
            let payload = chat(len);
            let rounds = 20_000;
            let start = Instant::now();
            for _ in 0..rounds {
                out.clear();
                black_box(compressor.compress(black_box(&payload), &mut out));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
            let size = if out.is_empty() { len } else { out.len() };
            let saved = len - size;
            let per_saved = if saved > 0 { format!("{:.1}", ns / saved as f64) } else { "-".to_owned() };
            println!("{len:>7}  {size:>10}  {saved:>5}  {ns:>10.0}  {per_saved:>13}");
        }
        println!("DEFAULT_THRESHOLD = {DEFAULT_THRESHOLD}");
    }

    /// Resident memory of many inflate states after each inflated a message, per state.
    /// `cargo test --release --lib inflate_state_probe -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn inflate_state_probe() {
        const STATES: usize = 2000;
        let page = 4096; // x86-64 Linux page size, as /proc/self/statm counts
        let rss = || -> usize {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * page
        };
        let payload = chat(40_000); // fills the whole 32 KiB window
        let mut compressed = Vec::new();
        assert!(Compressor::default().compress(&payload, &mut compressed));
        let before = rss();
        let mut keep = Vec::with_capacity(STATES);
        let mut out = Vec::with_capacity(payload.len());
        for _ in 0..STATES {
            let mut inflater = Inflater::new(true); // context takeover: the state stays
            out.clear();
            inflater.push(&compressed, &mut out, payload.len()).unwrap();
            inflater.finish(&mut out, payload.len()).unwrap();
            assert!(inflater.holds_state());
            keep.push(inflater);
        }
        let after = rss();
        println!("{} bytes of RSS per kept inflate state ({STATES} states)", (after - before) / STATES);
        let mut compressors = Vec::new();
        let before = rss();
        for _ in 0..100 {
            let mut c = Compressor::default();
            out.clear();
            c.compress(&payload, &mut out);
            compressors.push(c);
        }
        println!("{} bytes of RSS per compressor (with its scratch)", (rss() - before) / 100);
        black_box((keep, compressors));
    }
}
