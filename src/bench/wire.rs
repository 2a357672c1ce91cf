//! The client's side of RFC 6455, as pure code: the upgrade request, the check of the
//! server's `101`, and an incremental reader of server frames.
//!
//! Owns: bytes in, frames out. Must not touch: sockets, clocks, statistics.
//!
//! The reader is built for the receive hot path of `bench fanout`: it hands each frame
//! to a callback as a borrowed view of the caller's read buffer, copies nothing when a
//! frame's start lies within one read, and never allocates. Of each payload it hands on
//! at most [`PREFIX_MAX`] bytes, which is the whole of any control frame (RFC 6455 §5.5)
//! and more than a data frame's stamp; the rest of a long payload is skipped, even when
//! it spans many reads, unless the caller asks for it with [`FrameReader::feed_pieces`]
//! (a compressed message must be inflated whole, RFC 7692 §7.2.2).

use std::fmt;
use std::ops::ControlFlow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::url::Target;
use crate::proto::deflate::{parse_answer, Answer};
use crate::proto::frame::{FrameHeader, HeaderError, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::proto::handshake::{accept_key, WS_VERSION};

/// Payload bytes handed to the callback, at most: all of a control frame.
pub const PREFIX_MAX: usize = MAX_CONTROL_PAYLOAD;
/// The most bytes a frame's header and prefix can take.
const HEAD_MAX: usize = MAX_HEADER_LEN + PREFIX_MAX;
/// The longest `101` response head we wait for.
pub const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// Header lines parsed in a response.
const MAX_RESPONSE_HEADERS: usize = 32;
/// RFC 6455 §4.1: the key is "a randomly selected 16-byte value ... base64-encoded".
const KEY_NONCE_LEN: usize = 16;
/// What `--deflate` offers: both sides reset their window per message, so neither keeps
/// an inflate state between messages (RFC 7692 §7.1.1.1, §7.1.1.2).
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// The start of one server frame, borrowed from the reader's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,        // final fragment of its message
    pub rsv: u8,          // RSV1..3 as the bits 0x70, unshifted (RSV1: compressed, RFC 7692 §6)
    pub opcode_bits: u8,  // raw opcode (reserved values are the caller's to judge)
    pub payload_len: u64, // the full payload length
    pub prefix: &'a [u8], // the first min(payload_len, PREFIX_MAX) payload bytes
}

/// What [`FrameReader::feed_pieces`] hands on: a frame's start, then (for a payload
/// longer than the prefix) the rest of its payload in the pieces the reads brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Start(Frame<'a>),                     // header and prefix, as `feed` reports them
    Rest { bytes: &'a [u8], last: bool }, // more payload of the last `Start`; `last`: its final bytes
}

/// Why the server's bytes are not a valid frame stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// RFC 6455 §5.1: "A client MUST close a connection if it detects a masked frame."
    Masked,
    /// The header itself is malformed.
    Header(HeaderError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Masked => f.write_str("the server sent a masked frame"),
            FrameError::Header(e) => write!(f, "bad frame header: {e}"),
        }
    }
}

/// Incremental frame reader for one connection.
///
/// Between reads it holds at most one incomplete header-plus-prefix (inline, so an idle
/// connection costs no heap) and a count of payload bytes still to skip.
#[derive(Clone)]
pub struct FrameReader {
    head: [u8; HEAD_MAX], // an incomplete header + prefix carried over from the last read
    head_len: u8,         // bytes of `head` in use (0: nothing carried over)
    skip: u64,            // payload bytes of an already reported frame still to come
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader { head: [0; HEAD_MAX], head_len: 0, skip: 0 }
    }
}

impl FrameReader {
    /// Feeds the next bytes of the stream; `on_frame` sees every frame whose header and
    /// prefix are now complete, in order, and may stop the reader by returning `Break`
    /// (after a Close frame, nothing more is read). Bytes of a frame that is not yet
    /// complete are kept for the next call.
    #[inline]
    pub fn feed<F>(&mut self, input: &[u8], mut on_frame: F) -> Result<(), FrameError>
    where
        F: FnMut(Frame<'_>) -> ControlFlow<()>,
    {
        self.feed_pieces(input, |piece| match piece {
            Piece::Start(frame) => on_frame(frame),
            Piece::Rest { .. } => ControlFlow::Continue(()), // skipped
        })
    }

    /// As [`FrameReader::feed`], but the payload beyond the prefix is handed on too, as
    /// [`Piece::Rest`], instead of skipped (still without copying).
    #[inline]
    pub fn feed_pieces<F>(&mut self, mut input: &[u8], mut on_piece: F) -> Result<(), FrameError>
    where
        F: FnMut(Piece<'_>) -> ControlFlow<()>,
    {
        if self.head_len > 0 && self.finish_carried(&mut input, &mut on_piece)?.is_break() {
            return Ok(());
        }
        self.feed_fresh(input, on_piece)
    }

    /// Completes the frame started in an earlier read, one step at a time, so exactly
    /// its own bytes are taken from `input`, and hands it on. `Break`: stop reading
    /// (input exhausted, or the callback said so).
    fn finish_carried<F>(&mut self, input: &mut &[u8], on_piece: &mut F) -> Result<ControlFlow<()>, FrameError>
    where
        F: FnMut(Piece<'_>) -> ControlFlow<()>,
    {
        loop {
            let want = self.head_want()?;
            let have = usize::from(self.head_len);
            if have >= want {
                break;
            }
            let take = (want - have).min(input.len());
            self.head[have..have + take].copy_from_slice(&input[..take]);
            self.head_len += take as u8; // ≤ HEAD_MAX = 139, fits a u8
            *input = &input[take..];
            if take < want - have {
                return Ok(ControlFlow::Break(())); // input exhausted: wait for the next read
            }
        }
        // head_want() has parsed this header already, so `None` cannot happen here.
        let parsed = FrameHeader::parse(&self.head[..usize::from(self.head_len)]).map_err(FrameError::Header)?;
        let Some((header, header_len)) = parsed else { return Ok(ControlFlow::Break(())) };
        let prefix_len = prefix_len(header.payload_len);
        self.head_len = 0;
        self.skip = header.payload_len - prefix_len as u64;
        let frame = Frame {
            fin: header.fin,
            rsv: header.rsv,
            opcode_bits: header.opcode_bits,
            payload_len: header.payload_len,
            prefix: &self.head[header_len..header_len + prefix_len],
        };
        Ok(on_piece(Piece::Start(frame)))
    }

    /// Reads frames that start in `input` (after skipping the rest of a long payload);
    /// the hot path. A frame start cut off by the end of `input` is kept in `head`.
    #[inline]
    fn feed_fresh<F>(&mut self, mut input: &[u8], mut on_piece: F) -> Result<(), FrameError>
    where
        F: FnMut(Piece<'_>) -> ControlFlow<()>,
    {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(input.len() as u64);
                let (rest, after) = input.split_at(n as usize);
                self.skip -= n;
                if on_piece(Piece::Rest { bytes: rest, last: self.skip == 0 }).is_break() {
                    return Ok(());
                }
                input = after;
                if self.skip > 0 {
                    return Ok(()); // this read ended inside a long payload
                }
            }
            if input.is_empty() {
                return Ok(());
            }
            // The hot path: the header and the prefix are both in this read.
            if let Some((header, header_len)) = FrameHeader::parse(input).map_err(FrameError::Header)? {
                if header.mask.is_some() {
                    return Err(FrameError::Masked);
                }
                let prefix_len = prefix_len(header.payload_len);
                if input.len() >= header_len + prefix_len {
                    let frame = Frame {
                        fin: header.fin,
                        rsv: header.rsv,
                        opcode_bits: header.opcode_bits,
                        payload_len: header.payload_len,
                        prefix: &input[header_len..header_len + prefix_len],
                    };
                    if on_piece(Piece::Start(frame)).is_break() {
                        return Ok(());
                    }
                    let rest = header.payload_len - prefix_len as u64;
                    input = &input[header_len + prefix_len..];
                    self.skip = rest;
                    continue;
                }
            }
            // Incomplete: fewer than header + prefix bytes remain, so they fit `head`.
            self.head[..input.len()].copy_from_slice(input);
            self.head_len = input.len() as u8; // < HEAD_MAX, see above
            return Ok(());
        }
    }

    /// Bytes the carried-over frame start needs in `head`: 2 until the length byte is
    /// known, then the whole header, then header + prefix.
    fn head_want(&self) -> Result<usize, FrameError> {
        let have = &self.head[..usize::from(self.head_len)];
        if have.len() < 2 {
            return Ok(2);
        }
        match FrameHeader::parse(have).map_err(FrameError::Header)? {
            None => Ok(header_len_from(have[1])),
            Some((header, _)) if header.mask.is_some() => Err(FrameError::Masked),
            Some((header, header_len)) => Ok(header_len + prefix_len(header.payload_len)),
        }
    }

    /// Bytes held between reads (for tests and accounting).
    pub fn carried(&self) -> usize {
        usize::from(self.head_len)
    }
}

/// The payload bytes handed on for a payload of `payload_len`.
#[inline]
fn prefix_len(payload_len: u64) -> usize {
    payload_len.min(PREFIX_MAX as u64) as usize // ≤ 125
}

/// A header's length from its second byte (RFC 6455 §5.2: 7-bit length 126 and 127
/// announce 2 and 8 more length bytes; the MASK bit announces a 4-byte key).
fn header_len_from(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// One connection's opening handshake: the request to send and the accept value the
/// server must answer with.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub request: Vec<u8>, // the complete HTTP request
    pub accept: String,   // the Sec-WebSocket-Accept value a valid 101 carries
}

impl Handshake {
    /// Builds the upgrade request for `target` with the 16 nonce bytes `nonce`; with
    /// `deflate`, it offers [`DEFLATE_OFFER`].
    pub fn new(target: &Target, nonce: [u8; KEY_NONCE_LEN], deflate: bool) -> Handshake {
        let key = BASE64.encode(nonce);
        let extensions = if deflate { format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n") } else { String::new() };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {WS_VERSION}\r\n{extensions}\r\n",
            target.path, target.host_header
        );
        Handshake { request: request.into_bytes(), accept: accept_key(&key) }
    }
}

/// Why an upgrade did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered with another status (503 when full, 404 for a bad path...).
    Status(u16),
    /// A 101 without the right `Sec-WebSocket-Accept` (RFC 6455 §4.1: the client "MUST
    /// _Fail the WebSocket Connection_").
    BadAccept,
    /// A 101 without `Upgrade: websocket` / `Connection: Upgrade`.
    NotWebSocket,
    /// Not an HTTP response, or a head longer than [`MAX_RESPONSE_HEAD`].
    Malformed,
    /// An extension we did not offer, or a `permessage-deflate` answer we cannot accept
    /// (RFC 6455 §9.1, RFC 7692 §7.1: the client MUST _Fail the WebSocket Connection_).
    BadExtension,
}

impl HandshakeError {
    /// A stable snake_case name for error counts.
    pub fn kind(&self) -> String {
        match self {
            HandshakeError::Status(code) => format!("http_{code}"),
            HandshakeError::BadAccept => "bad_accept".to_owned(),
            HandshakeError::NotWebSocket => "not_websocket".to_owned(),
            HandshakeError::Malformed => "bad_response".to_owned(),
            HandshakeError::BadExtension => "bad_extension".to_owned(),
        }
    }
}

/// A valid `101`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub used: usize,             // bytes of the response head; frames follow
    pub deflate: Option<Answer>, // permessage-deflate, if the server accepted our offer
}

/// Checks the server's answer; `offered_deflate`: the request offered [`DEFLATE_OFFER`].
/// `Ok(None)`: the head is incomplete (call again with more); `Ok(Some(_))`: a valid 101.
pub fn parse_response(input: &[u8], accept: &str, offered_deflate: bool) -> Result<Option<Upgraded>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if input.len() > MAX_RESPONSE_HEAD => return Err(HandshakeError::Malformed),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let code = response.code.unwrap_or(0);
    // RFC 6455 §4.1: "If the status code received from the server is not 101, the client
    // handles the response per HTTP procedures" — for a load generator, an error.
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let header = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_token = |value: &[u8], token: &str| {
        value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if !header("Upgrade").is_some_and(|v| has_token(v, "websocket"))
        || !header("Connection").is_some_and(|v| has_token(v, "upgrade"))
    {
        return Err(HandshakeError::NotWebSocket);
    }
    if header("Sec-WebSocket-Accept").map(<[u8]>::trim_ascii) != Some(accept.as_bytes()) {
        return Err(HandshakeError::BadAccept);
    }
    let mut answers = response.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Extensions"));
    let deflate = match (answers.next(), answers.next()) {
        (None, _) => None, // declined, or not supported: plain frames
        (Some(answer), None) if offered_deflate => {
            let text = std::str::from_utf8(answer.value).map_err(|_| HandshakeError::BadExtension)?;
            Some(parse_answer(text).ok_or(HandshakeError::BadExtension)?)
        }
        _ => return Err(HandshakeError::BadExtension), // unasked-for, or more than one
    };
    Ok(Some(Upgraded { used, deflate }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{write_frame, write_header, OpCode};

    /// Frames as the reader reports them, with owned prefixes.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        fin: bool,
        opcode_bits: u8,
        payload_len: u64,
        prefix: Vec<u8>,
    }

    fn collect(reader: &mut FrameReader, input: &[u8], out: &mut Vec<Seen>) -> Result<(), FrameError> {
        reader.feed(input, |f| {
            out.push(Seen {
                fin: f.fin,
                opcode_bits: f.opcode_bits,
                payload_len: f.payload_len,
                prefix: f.prefix.to_vec(),
            });
            ControlFlow::Continue(())
        })
    }

    /// A stream with every length encoding, control frames and a fragmented message.
    fn sample_stream() -> (Vec<u8>, Vec<Seen>) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for len in [0usize, 1, 24, 64, 125, 126, 127, 300, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            write_frame(&mut bytes, OpCode::Binary, &payload);
            let shown = payload[..len.min(PREFIX_MAX)].to_vec();
            expected.push(Seen { fin: true, opcode_bits: 0x2, payload_len: len as u64, prefix: shown });
        }
        write_frame(&mut bytes, OpCode::Ping, b"are you there?");
        expected.push(Seen { fin: true, opcode_bits: 0x9, payload_len: 14, prefix: b"are you there?".to_vec() });
        write_header(&mut bytes, false, OpCode::Text, 3);
        bytes.extend_from_slice(b"Hel");
        expected.push(Seen { fin: false, opcode_bits: 0x1, payload_len: 3, prefix: b"Hel".to_vec() });
        write_header(&mut bytes, true, OpCode::Continuation, 2);
        bytes.extend_from_slice(b"lo");
        expected.push(Seen { fin: true, opcode_bits: 0x0, payload_len: 2, prefix: b"lo".to_vec() });
        write_frame(&mut bytes, OpCode::Close, &[0x03, 0xe8]);
        expected.push(Seen { fin: true, opcode_bits: 0x8, payload_len: 2, prefix: vec![0x03, 0xe8] });
        (bytes, expected)
    }

    #[test]
    fn whole_stream_in_one_read() {
        let (bytes, expected) = sample_stream();
        let mut reader = FrameReader::default();
        let mut seen = Vec::new();
        collect(&mut reader, &bytes, &mut seen).unwrap();
        assert_eq!(seen, expected);
        assert_eq!(reader.carried(), 0);
    }

    #[test]
    fn split_in_two_at_every_byte() {
        let (bytes, expected) = sample_stream();
        // Every cut in the small frames, and a stride through the big ones.
        let cuts = (0..bytes.len()).filter(|&c| c < 700 || c % 997 == 0 || bytes.len() - c < 300);
        for cut in cuts {
            let mut reader = FrameReader::default();
            let mut seen = Vec::new();
            collect(&mut reader, &bytes[..cut], &mut seen).unwrap();
            collect(&mut reader, &bytes[cut..], &mut seen).unwrap();
            assert_eq!(seen, expected, "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let (bytes, expected) = sample_stream();
        let mut reader = FrameReader::default();
        let mut seen = Vec::new();
        for byte in bytes.chunks(1) {
            collect(&mut reader, byte, &mut seen).unwrap();
        }
        assert_eq!(seen, expected);
    }

    #[test]
    fn uneven_chunks() {
        let (bytes, expected) = sample_stream();
        for step in [2, 3, 5, 13, 64, 139, 140, 1000, 4096] {
            let mut reader = FrameReader::default();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(step) {
                collect(&mut reader, chunk, &mut seen).unwrap();
            }
            assert_eq!(seen, expected, "chunks of {step}");
        }
    }

    #[test]
    fn break_stops_reading() {
        let (bytes, _) = sample_stream();
        let mut reader = FrameReader::default();
        let mut count = 0;
        reader
            .feed(&bytes, |_| {
                count += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn masked_server_frames_are_refused() {
        let mut bytes = Vec::new();
        crate::proto::frame::write_masked_frame(&mut bytes, true, 0x1, b"Hello", [1, 2, 3, 4]);
        let mut reader = FrameReader::default();
        assert_eq!(reader.feed(&bytes, |_| ControlFlow::Continue(())), Err(FrameError::Masked));
        let mut split = FrameReader::default();
        split.feed(&bytes[..1], |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(split.feed(&bytes[1..], |_| ControlFlow::Continue(())), Err(FrameError::Masked));
    }

    fn target() -> Target {
        Target::parse("ws://127.0.0.1:9000/room?x=1").unwrap()
    }

    #[test]
    fn request_and_rfc_sample_accept() {
        // RFC 6455 §1.3: nonce "the sample nonce" ↔ key dGhlIHNhbXBsZSBub25jZQ==.
        let hs = Handshake::new(&target(), *b"the sample nonce", false);
        let request = String::from_utf8(hs.request.clone()).unwrap();
        assert!(request.starts_with("GET /room?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"));
        assert!(request.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(request.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
        assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    const GOOD_101: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn response_accepted_with_trailing_frames() {
        let mut bytes = GOOD_101.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x82, 0x00]);
        for cut in 0..GOOD_101.len() {
            assert_eq!(parse_response(&bytes[..cut], ACCEPT, false), Ok(None), "cut {cut}");
        }
        assert_eq!(parse_response(&bytes, ACCEPT, false), Ok(Some(Upgraded { used: GOOD_101.len(), deflate: None })));
    }

    #[test]
    fn response_rejections() {
        let full = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(full.as_bytes(), ACCEPT, false), Err(HandshakeError::Status(503)));
        assert_eq!(parse_response(GOOD_101.as_bytes(), "other", false), Err(HandshakeError::BadAccept));
        let plain = GOOD_101.replace("Upgrade: websocket\r\n", "");
        assert_eq!(parse_response(plain.as_bytes(), ACCEPT, false), Err(HandshakeError::NotWebSocket));
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", ACCEPT, false), Err(HandshakeError::Malformed));
        let endless = format!("HTTP/1.1 101 OK\r\nX: {}", "y".repeat(MAX_RESPONSE_HEAD + 1));
        assert_eq!(parse_response(endless.as_bytes(), ACCEPT, false), Err(HandshakeError::Malformed));
        assert_eq!(HandshakeError::Status(503).kind(), "http_503");
    }

    #[test]
    fn deflate_offer_and_answers() {
        let hs = Handshake::new(&target(), *b"the sample nonce", true);
        let request = String::from_utf8(hs.request).unwrap();
        assert!(request.ends_with(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n\r\n")));
        let with = |ext: &str| GOOD_101.replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n"));
        let accepted = with("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        let upgraded = parse_response(accepted.as_bytes(), ACCEPT, true).unwrap().unwrap();
        assert_eq!(upgraded.used, accepted.len());
        let answer = upgraded.deflate.unwrap();
        assert!(answer.server_no_context_takeover && answer.client_no_context_takeover);
        // Declined (a server without deflate): plain frames.
        assert_eq!(parse_response(GOOD_101.as_bytes(), ACCEPT, true).unwrap().unwrap().deflate, None);
        // Not offered, unknown, or not a valid answer: fail the connection.
        assert_eq!(parse_response(accepted.as_bytes(), ACCEPT, false), Err(HandshakeError::BadExtension));
        let unknown = with("x-webkit-deflate-frame");
        assert_eq!(parse_response(unknown.as_bytes(), ACCEPT, true), Err(HandshakeError::BadExtension));
        let bad = with("permessage-deflate; client_max_window_bits");
        assert_eq!(parse_response(bad.as_bytes(), ACCEPT, true), Err(HandshakeError::BadExtension));
    }

    /// Every payload byte arrives exactly once through `feed_pieces`, however the
    /// stream is cut.
    #[test]
    fn pieces_carry_whole_payloads() {
        let (bytes, expected) = sample_stream();
        let mut payloads = Vec::new();
        for len in [0usize, 1, 24, 64, 125, 126, 127, 300, 65535, 65536, 70_000] {
            payloads.push((0..len).map(|i| (i * 7 + len) as u8).collect::<Vec<u8>>());
        }
        for step in [1, 7, 139, 140, 4096, bytes.len()] {
            let mut reader = FrameReader::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut lasts = 0;
            for chunk in bytes.chunks(step) {
                reader
                    .feed_pieces(chunk, |piece| {
                        match piece {
                            Piece::Start(frame) => got.push(frame.prefix.to_vec()),
                            Piece::Rest { bytes, last } => {
                                got.last_mut().unwrap().extend_from_slice(bytes);
                                lasts += usize::from(last);
                            }
                        }
                        ControlFlow::Continue(())
                    })
                    .unwrap();
            }
            assert_eq!(got.len(), expected.len(), "step {step}");
            assert_eq!(got[..payloads.len()], payloads[..], "step {step}");
            assert_eq!(lasts, 6, "one last piece per payload over {PREFIX_MAX} bytes (step {step})");
        }
    }
}
