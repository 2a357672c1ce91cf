//! permessage-deflate (RFC 7692): what to answer to a client's offer, and the compressor
//! and bounded inflater that the agreed parameters call for.
//!
//! Owns: parsing `Sec-WebSocket-Extensions` offers and choosing one (RFC 7692 §5, §7.1),
//! the exact answer for the `101`, compressing one whole message without context
//! takeover (§7.2.1), and inflating a client's message, fragment by fragment, without
//! ever holding more than the message limit (§7.2.2). Must not touch: sockets, clocks,
//! frame *rules* (whether RSV1 is legal on this frame is `message.rs`'s to judge once
//! the session knows what was agreed), or who receives a broadcast.
//!
//! # Policy (why the server always resets its own window)
//!
//! Every message we send is compressed with an empty LZ77 window: we always state
//! `server_no_context_takeover` (RFC 7692 §7.1.1.1 lets a server add it unasked). The
//! compressed bytes of a message then depend only on the message, so a broadcast
//! compresses once and shares the frame with every member that agreed, like the plain
//! frame today. Context takeover would give each connection its own compressor state
//! (≈ 312 KiB each with miniz_oxide) and an encoding per member.
//!
//! What clients send is inflated per connection. By default we also state
//! `client_no_context_takeover` (§7.1.1.2: "A server MAY include the
//! client_no_context_takeover extension parameter in an extension negotiation
//! response", offered or not), so no inflate state lives between messages: it is
//! created on a message's first compressed fragment and dropped after its last. With
//! [`DeflateConfig::client_context_takeover`] a client that did not offer
//! `client_no_context_takeover` may keep its window; we then hold its inflate state for
//! the connection's whole life (see *Memory*).
//!
//! # Window bits (what the default flate2 backend can and cannot do)
//!
//! `flate2` is used with its default pure-Rust backend (miniz_oxide): no C toolchain and
//! no system zlib. It has no window-size setting: it compresses with a 32 KiB window and
//! inflates with one. So:
//!
//! - `client_max_window_bits` (with or without a value) is accepted and never stated in
//!   the answer (§7.1.2.2: the server "MAY include" it). We can inflate any window up to
//!   2^15, and stating a smaller one would save us nothing (the inflate state is 32 KiB
//!   of window whatever the client uses).
//! - `server_max_window_bits=N` is accepted for every legal N (8..=15) and stated back
//!   unchanged (§7.1.2.1: "the same or smaller value"). Because the compressor starts
//!   every message with an empty window, a back-reference in a message of `len` bytes
//!   reaches at most `len − 1` bytes back; a message of at most 2^N bytes therefore
//!   never needs more than the client's window. Longer messages go to such a client
//!   uncompressed (RSV1 clear, always legal: §6). [`Agreed::may_compress`] says which.
//!   (zlib could not do better for N = 8 anyway: it refuses a raw 256-byte window and
//!   uses 512, whose distances it keeps below 250.)
//!
//! # What a malformed offer gets
//!
//! RFC 7692 §7: "A server MUST decline an extension negotiation offer for this
//! extension if" it has a parameter not defined for offers, a parameter with an invalid
//! value, or the same parameter twice. Such a `permessage-deflate` offer is therefore
//! *declined* (we try the next one), not refused. Only a header that is not an
//! extension list at all (RFC 6455 §9.1 grammar: an unterminated quote, an empty
//! name, a character outside a token) is [`BadOffer`], which the shell answers with 400
//! (RFC 6455 §4.2.1: a request that does not match the description gets "an appropriate
//! error code (such as 400 Bad Request)").
//!
//! # Threshold
//!
//! Compressing a message costs a fixed ≈ 7 µs (miniz_oxide zeroes ≈ 300 KiB of match
//! tables on every reset, and without context takeover every message starts with one)
//! plus the work per byte, and a short message barely shrinks. Measured with
//! `CARGO_BUILD_JOBS=1 cargo test --release --lib deflate_threshold_probe -- --ignored
//! --nocapture` (`src/bench/deflate.rs`; non-repeating chat JSON, level 6, one core of
//! the 2-core dev box, 20 000 rounds each):
//!
//! ```text
//! payload  compressed  saved  ns/message
//!      48          48      0        7685   (does not shrink: sent plain)
//!      64          62      2        7786
//!      96          79     17        8143
//!     128          97     31        8579
//!     256         142    114       10539
//!    1024         325    699       16706
//!    4096         924   3172       51570
//! ```
//!
//! Below 128 bytes a message saves under a fifth of its size for the full fixed cost,
//! so [`DEFAULT_THRESHOLD`] is 128. A broadcast pays the CPU once and the savings once
//! per member, so a server with large rooms could go lower; a server of 1:1 chats higher.
//!
//! # Memory
//!
//! - One [`Compressor`] per server (shared by every connection): ≈ 312 KiB of tables
//!   (measured), plus a scratch buffer as large as the largest message compressed.
//! - Per connection with `client_no_context_takeover` agreed (the default): nothing
//!   between messages; one inflate state while a compressed message is arriving.
//! - Per connection with client context takeover: one inflate state for the
//!   connection's life: 43 704 bytes of RSS each (2000 states that each inflated a
//!   40 KB message; `inflate_state_probe` in `src/bench/deflate.rs`), i.e. 32 KiB of
//!   window plus ≈ 10 KiB of Huffman tables: 427 MB for 10 000 idle clients. That is
//!   why [`DeflateConfig::client_context_takeover`] is off by default.

use std::borrow::Cow;
use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{frame_len, write_header, write_header_rsv1, OpCode};

/// The extension's name in `Sec-WebSocket-Extensions` (RFC 7692 §7).
pub const EXTENSION_NAME: &str = "permessage-deflate";
/// RFC 7692 §7.2.1: a sync flush ends with an empty stored block, `00 00 ff ff`, which
/// the sender removes and the receiver appends again (§7.2.2).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// RFC 7692 §7.1.2.1/§7.1.2.2: window bits are "between 8 to 15, inclusive".
const MIN_WINDOW_BITS: u8 = 8;
/// The largest window, 2^15 = 32 KiB: also what miniz_oxide always uses.
const MAX_WINDOW_BITS: u8 = 15;
/// The parameter names of RFC 7692 §7.1.
const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";
/// Messages shorter than this are best sent uncompressed: below it the fixed ≈ 7 µs of a
/// compressor reset buys under a fifth of the size. Measured, see the module doc. (The
/// caller applies it; [`Compressor::compress`] itself only refuses what does not shrink.)
pub const DEFAULT_THRESHOLD: usize = 128;
/// The zlib level the compressor uses: 6, zlib's default balance of speed and size.
pub const DEFAULT_LEVEL: u32 = 6;
/// Memory held by one inflate state (miniz_oxide's `InflateState`: the 32 KiB window plus
/// decoding tables): 43 704 bytes of RSS measured by the `#[ignore]` probe
/// `inflate_state_probe` in `src/bench/deflate.rs`, rounded here.
pub const INFLATE_STATE_BYTES: usize = 43 << 10;
/// Output grows by at least this much per step while inflating (then doubling), so a
/// long message is not copied once per few kilobytes.
const INFLATE_MIN_STEP: usize = 4 << 10;

/// What the server is willing to agree to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateConfig {
    pub client_context_takeover: bool, // let a client that did not offer client_no_context_takeover keep its window (costs INFLATE_STATE_BYTES per connection); false: always state client_no_context_takeover
}

/// The parameters in force on one connection, as stated in our answer.
///
/// The server never uses context takeover (always `server_no_context_takeover`), so that
/// is not a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    pub client_no_context_takeover: bool, // the client resets its window per message: no inflate state between messages
    pub server_max_window_bits: Option<u8>, // the client's window for our messages, when it named one (8..=15)
}

/// The `Sec-WebSocket-Extensions` header is not an extension list (RFC 6455 §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadOffer {
    pub why: &'static str, // for the 400 body and the log
}

impl fmt::Display for BadOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad Sec-WebSocket-Extensions: {}", self.why)
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (the shell closes with 1009, RFC 6455 §7.4.1).
    TooBig,
    /// It is not valid DEFLATE data (the shell closes with 1007, RFC 6455 §7.4.1).
    Invalid,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::TooBig => f.write_str("message inflates beyond the limit"),
            InflateError::Invalid => f.write_str("invalid DEFLATE data"),
        }
    }
}

/// Chooses what to answer to the client's offers.
///
/// `offers` holds the value of every `Sec-WebSocket-Extensions` header line, in order;
/// each may list several extensions, separated by commas, in the client's order of
/// preference (RFC 7692 §5: "An element preceding another element has higher
/// preference"). The first `permessage-deflate` offer we can honour is accepted;
/// every other extension and offer is declined by leaving it out of the answer.
///
/// `Ok(None)`: nothing accepted (no `Sec-WebSocket-Extensions` in the 101).
/// `Err`: a header is not an extension list at all (answer 400).
pub fn negotiate(offers: &[&str], config: &DeflateConfig) -> Result<Option<Agreed>, BadOffer> {
    let mut chosen = None;
    for line in offers {
        for extension in split_outside_quotes(line, b',')? {
            let extension = extension.trim();
            if extension.is_empty() {
                continue; // RFC 7230 §7: empty list elements are allowed and ignored
            }
            let (name, params) = parse_extension(extension)?;
            // Parse every offer even after choosing, so a broken header is always a 400.
            if chosen.is_none() && name.eq_ignore_ascii_case(EXTENSION_NAME) {
                chosen = judge(&params, config);
            }
        }
    }
    Ok(chosen)
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value for the 101: exactly the parameters in force.
    pub fn response_header(&self) -> String {
        // RFC 7692 §7.1.1.1: a server MAY state server_no_context_takeover unasked.
        let mut header = format!("{EXTENSION_NAME}; {SERVER_NO_CONTEXT_TAKEOVER}");
        if self.client_no_context_takeover {
            header.push_str("; ");
            header.push_str(CLIENT_NO_CONTEXT_TAKEOVER);
        }
        if let Some(bits) = self.server_max_window_bits {
            // RFC 7692 §7.1.2.1: accepting this parameter means stating it back.
            header.push_str(&format!("; {SERVER_MAX_WINDOW_BITS}={bits}"));
        }
        header
    }

    /// May a message of `len` bytes go to this client compressed? Our compressor starts
    /// every message with an empty window, so its back-references stay within the
    /// message: a message no longer than the client's window fits it (module doc).
    pub fn may_compress(&self, len: usize) -> bool {
        match self.server_max_window_bits {
            None | Some(MAX_WINDOW_BITS) => true,
            Some(bits) => len <= 1 << bits,
        }
    }

    /// The inflater this connection needs for the client's messages.
    pub fn inflater(&self) -> Inflater {
        Inflater::new(!self.client_no_context_takeover)
    }
}

/// What a server's answer agreed to, as a client (the bench) reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub server_no_context_takeover: bool, // the server resets its window: inflate each message afresh
    pub client_no_context_takeover: bool, // we must reset ours (a Compressor always does)
    pub client_max_window_bits: Option<u8>, // our window must stay within 2^bits
}

impl Answer {
    /// May we send a message of `len` bytes compressed? As [`Agreed::may_compress`],
    /// from the client's side.
    pub fn may_compress(&self, len: usize) -> bool {
        match self.client_max_window_bits {
            None | Some(MAX_WINDOW_BITS) => true,
            Some(bits) => len <= 1 << bits,
        }
    }

    /// The inflater for the server's messages.
    pub fn inflater(&self) -> Inflater {
        Inflater::new(!self.server_no_context_takeover)
    }
}

/// Reads a server's `Sec-WebSocket-Extensions` answer to a `permessage-deflate` offer:
/// `None` unless it is exactly one valid `permessage-deflate` with legal parameters
/// (RFC 7692 §7.1: otherwise the client MUST _Fail the WebSocket Connection_).
pub fn parse_answer(header: &str) -> Option<Answer> {
    let extensions = split_outside_quotes(header, b',').ok()?;
    let [extension] = extensions.as_slice() else { return None };
    let (name, params) = parse_extension(extension.trim()).ok()?;
    if !name.eq_ignore_ascii_case(EXTENSION_NAME) {
        return None;
    }
    let offer = parse_offer(&params)?;
    // §7.1.2.2: in an answer, client_max_window_bits always has a value.
    let client_max_window_bits = match offer.client_max_window_bits {
        Some(None) => return None,
        other => other.flatten(),
    };
    // server_max_window_bits needs nothing of us: we inflate with the largest window.
    Some(Answer {
        server_no_context_takeover: offer.server_no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover,
        client_max_window_bits,
    })
}

/// The parameters of one offer, as parsed (RFC 7692 §7.1).
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,           // the client asks us to reset our window
    client_no_context_takeover: bool,           // the client will reset its window
    server_max_window_bits: Option<u8>,         // the largest window the client will inflate with
    client_max_window_bits: Option<Option<u8>>, // the client can limit its window (to this)
}

/// One `permessage-deflate` offer: `Some` if we can honour it, `None` to decline it.
fn judge(params: &[(&str, Option<Cow<'_, str>>)], config: &DeflateConfig) -> Option<Agreed> {
    let offer = parse_offer(params)?;
    // Our own window is reset per message whatever was asked (§7.1.1.1), and
    // `client_max_window_bits` needs no answer (§7.1.2.2), so neither can make us decline.
    let _ = (offer.server_no_context_takeover, offer.client_max_window_bits);
    Some(Agreed {
        // §7.1.1.2: stated when offered (the client resets anyway) or when we want it.
        client_no_context_takeover: offer.client_no_context_takeover || !config.client_context_takeover,
        server_max_window_bits: offer.server_max_window_bits,
    })
}

/// The parameters of an offer, or `None` when RFC 7692 §7 says to decline it.
fn parse_offer(params: &[(&str, Option<Cow<'_, str>>)]) -> Option<Offer> {
    let mut offer = Offer::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let value = value.as_deref();
        let slot = match name.to_ascii_lowercase().as_str() {
            SERVER_NO_CONTEXT_TAKEOVER => 0,
            CLIENT_NO_CONTEXT_TAKEOVER => 1,
            SERVER_MAX_WINDOW_BITS => 2,
            CLIENT_MAX_WINDOW_BITS => 3,
            // §7: "an extension parameter not defined for use in an offer": decline.
            _ => return None,
        };
        // §7: "multiple extension parameters with the same name": decline.
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match (slot, value) {
            // §7.1.1.1, §7.1.1.2: "This extension parameter has no value."
            (0, None) => offer.server_no_context_takeover = true,
            (1, None) => offer.client_no_context_takeover = true,
            (0 | 1, Some(_)) => return None,
            // §7.1.2.1: server_max_window_bits always has a value.
            (2, Some(bits)) => offer.server_max_window_bits = Some(window_bits(bits)?),
            (2, None) => return None,
            // §7.1.2.2: client_max_window_bits "has no value or a decimal integer value".
            (_, None) => offer.client_max_window_bits = Some(None),
            (_, Some(bits)) => offer.client_max_window_bits = Some(Some(window_bits(bits)?)),
        }
    }
    Some(offer)
}

/// RFC 7692 §7.1.2.1: "a decimal integer value without leading zeroes between 8 to 15,
/// inclusive"; anything else is an invalid value.
fn window_bits(text: &str) -> Option<u8> {
    if text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = text.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&bits).then_some(bits)
}

/// An extension parameter: its name and its value, unquoted.
type Param<'a> = (&'a str, Option<Cow<'a, str>>);

/// Parses `name; param; param=value` (RFC 6455 §9.1).
fn parse_extension(text: &str) -> Result<(&str, Vec<Param<'_>>), BadOffer> {
    let mut parts = split_outside_quotes(text, b';')?.into_iter();
    let name = parts.next().unwrap_or("").trim();
    if !is_token(name) {
        return Err(BadOffer { why: "extension name is not a token" });
    }
    let mut params = Vec::new();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key.trim(), Some(param_value(value.trim())?)),
            None => (part.trim(), None),
        };
        if !is_token(key) {
            return Err(BadOffer { why: "extension parameter name is not a token" });
        }
        params.push((key, value));
    }
    Ok((name, params))
}

/// A parameter value: a token, or a quoted string that is a token once unquoted (RFC
/// 6455 §9.1: "the value ... MUST conform to the 'token' ABNF").
fn param_value(text: &str) -> Result<Cow<'_, str>, BadOffer> {
    let value = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if text.len() >= 2 => unquote(inner),
        _ => Cow::Borrowed(text),
    };
    if !is_token(&value) {
        return Err(BadOffer { why: "extension parameter value is not a token" });
    }
    Ok(value)
}

/// The content of a quoted string with its `\x` quoted-pairs resolved (RFC 7230 §3.2.6).
fn unquote(inner: &str) -> Cow<'_, str> {
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    Cow::Owned(out)
}

/// Splits `text` at every `sep` that is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: u8) -> Result<Vec<&str>, BadOffer> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(BadOffer { why: "unterminated quoted string" });
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// RFC 7230 §3.2.6: `token = 1*tchar`.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Compresses whole messages, each with an empty window (no context takeover), so the
/// bytes of a message depend on nothing else and may be shared by every recipient.
pub struct Compressor {
    deflate: Compress, // raw DEFLATE (no zlib header), reset after every message
    scratch: Vec<u8>,  // the last compressed message, reused (holds the largest seen)
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor::new(DEFAULT_LEVEL)
    }
}

impl Compressor {
    /// A compressor at zlib `level` (0 = store only ..= 9 = smallest).
    pub fn new(level: u32) -> Compressor {
        Compressor { deflate: Compress::new(Compression::new(level), false), scratch: Vec::new() }
    }

    /// Appends the compressed form of `payload` to `out`, without the trailing
    /// `00 00 ff ff` (RFC 7692 §7.2.1), and returns `true`; or appends nothing and
    /// returns `false` when the result would not be shorter than `payload` (then send it
    /// uncompressed: RFC 7692 §6 lets any message go with RSV1 clear).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let done = self.compress_raw(payload, out);
        self.deflate.reset(); // no context takeover: the next message starts empty
                              // RFC 7692 §7.2.1: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail
                              // end." A sync flush always ends with them; anything else is our bug, not worth
                              // a panic: the message simply goes uncompressed.
        if !done || !out[start..].ends_with(&DEFLATE_TAIL) || out.len() - start - DEFLATE_TAIL.len() >= payload.len() {
            out.truncate(start);
            return false;
        }
        out.truncate(out.len() - DEFLATE_TAIL.len());
        true
    }

    /// RFC 7692 §7.2.1: "Compress all the octets of the payload of the message using
    /// DEFLATE", then flush to a byte boundary with an empty stored block (a sync
    /// flush). `false` if the compressor failed (it cannot on a valid stream).
    fn compress_raw(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        // Room for the worst case up front (stored blocks cost 5 bytes per 64 KiB, plus
        // the flush), so one call nearly always does it; the loop covers the rest.
        out.reserve(payload.len() + payload.len() / 64 + 64);
        let mut input = payload;
        loop {
            let before = self.deflate.total_in();
            if self.deflate.compress_vec(input, out, FlushCompress::Sync).is_err() {
                return false;
            }
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return true; // the flush completed with room to spare
            }
            out.reserve(out.capacity().max(64)); // output full: give it more and go on
        }
    }

    /// Compresses `payload` into the scratch buffer and returns it, or `None` when it
    /// does not shrink. The slice lives until the next call.
    pub fn compress_to_scratch(&mut self, payload: &[u8]) -> Option<&[u8]> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let compressed = self.compress(payload, &mut scratch);
        self.scratch = scratch;
        compressed.then_some(&self.scratch[..])
    }
}

/// Appends one whole server frame for a data message: compressed with RSV1 set when that
/// makes it shorter (RFC 7692 §6: RSV1 marks a compressed message's first frame), plain
/// otherwise. Returns `true` if the frame is compressed.
pub fn write_compressed_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], compressor: &mut Compressor) -> bool {
    match compressor.compress_to_scratch(payload) {
        Some(compressed) => {
            out.reserve(frame_len(compressed.len()));
            write_header_rsv1(out, true, opcode, compressed.len());
            out.extend_from_slice(compressed);
            true
        }
        None => {
            write_header(out, true, opcode, payload.len());
            out.extend_from_slice(payload);
            false
        }
    }
}

/// Inflates one connection's compressed messages, bounded by a size limit.
///
/// Feed the payload of each frame of a compressed message to [`Inflater::push`] (already
/// unmasked), then call [`Inflater::finish`] after its last frame. The output is checked
/// against the limit while it is produced: at most `limit` + 1 bytes of a message are
/// ever written, and `out` grows by no more than that.
pub struct Inflater {
    context_takeover: bool,    // the client keeps its window between messages: keep our state too
    state: Option<Decompress>, // raw DEFLATE; None while idle without context takeover
    produced: usize,           // bytes inflated so far for the current message
    ended: bool,               // a final block (BFINAL = 1) ended the stream in this message
}

impl fmt::Debug for Inflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflater")
            .field("context_takeover", &self.context_takeover)
            .field("holds_state", &self.holds_state())
            .field("produced", &self.produced)
            .finish()
    }
}

impl Inflater {
    /// An inflater; `context_takeover`: the client did not agree to reset its window.
    pub fn new(context_takeover: bool) -> Inflater {
        Inflater { context_takeover, state: None, produced: 0, ended: false }
    }

    /// Does this inflater hold an inflate state now (≈ [`INFLATE_STATE_BYTES`])?
    pub fn holds_state(&self) -> bool {
        self.state.is_some()
    }

    /// Inflates the next fragment of the current message into `out`; the message so far
    /// may inflate to at most `limit` bytes. After an error the message is abandoned and
    /// the state dropped (the connection is closing anyway).
    pub fn push(&mut self, fragment: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let result = self.inflate(fragment, out, limit, FlushDecompress::None);
        if result.is_err() {
            self.end_message(true);
        }
        result
    }

    /// Ends the current message: RFC 7692 §7.2.2, "Append 4 octets of 0x00 0x00 0xff
    /// 0xff to the tail end of the payload of the message", and inflate what is left.
    /// Without context takeover the inflate state is dropped here.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let result = self.inflate(&DEFLATE_TAIL, out, limit, FlushDecompress::Sync);
        self.end_message(result.is_err());
        result
    }

    /// Forgets the current message; drops the inflate state unless the client's window
    /// must be kept. A final block ends the DEFLATE stream, so the next message starts a
    /// new one, with an empty window (miniz_oxide cannot carry one into a new stream).
    fn end_message(&mut self, failed: bool) {
        if !self.context_takeover || self.ended || failed {
            self.state = None;
        }
        self.produced = 0;
        self.ended = false;
    }

    /// The one inflate loop: grow `out` within the limit, inflate, check, repeat.
    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        flush: FlushDecompress,
    ) -> Result<(), InflateError> {
        if self.ended {
            return Ok(()); // bytes after a final block belong to no block: ignored
        }
        let state = self.state.get_or_insert_with(|| Decompress::new(false));
        loop {
            if out.len() == out.capacity() {
                // Double, but never past the limit (+1 byte, to see it being crossed).
                let room = limit.saturating_sub(self.produced) + 1;
                out.reserve_exact(out.len().max(INFLATE_MIN_STEP).min(room));
            }
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let status = state.decompress_vec(input, out, flush).map_err(|_| InflateError::Invalid)?;
            let used = (state.total_in() - in_before) as usize;
            let made = (state.total_out() - out_before) as usize;
            input = &input[used..];
            self.produced += made;
            if self.produced > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                self.ended = true;
                return Ok(());
            }
            let full = out.len() == out.capacity();
            if !full && (input.is_empty() || used == 0) {
                return Ok(()); // all taken (or it wants more input than this fragment has)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameHeader;

    const DEFAULT: DeflateConfig = DeflateConfig { client_context_takeover: false };
    const TAKEOVER: DeflateConfig = DeflateConfig { client_context_takeover: true };
    /// RFC 7692 §7.2.3.1: "Hello" compressed, without the tail.
    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    /// RFC 7692 §7.2.3.2 (a stored, "no compression" block): "Hello".
    const HELLO_STORED: [u8; 10] = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    /// RFC 7692 §7.2.3.3: "Hello" in a block with BFINAL set.
    const HELLO_FINAL: [u8; 7] = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    /// RFC 7692 §7.2.3.2: the second "Hello" with context takeover, a back-reference.
    const HELLO_AGAIN: [u8; 5] = [0xf2, 0x00, 0x11, 0x00, 0x00];

    fn answer(offers: &[&str], config: &DeflateConfig) -> Option<String> {
        negotiate(offers, config).unwrap().map(|a| a.response_header())
    }

    #[test]
    fn accepted_offers_and_exact_answers() {
        let table: &[(&[&str], DeflateConfig, &str)] = &[
            // Firefox: no parameters; we reset both windows.
            (
                &["permessage-deflate"],
                DEFAULT,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            // Chrome: client_max_window_bits without a value needs no answer (§7.1.2.2).
            (
                &["permessage-deflate; client_max_window_bits"],
                DEFAULT,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                &["permessage-deflate; client_max_window_bits"],
                TAKEOVER,
                "permessage-deflate; server_no_context_takeover",
            ),
            (
                &["permessage-deflate; client_no_context_takeover"],
                TAKEOVER,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            // What `pollcast bench --deflate` offers.
            (
                &["permessage-deflate; client_no_context_takeover; server_no_context_takeover"],
                DEFAULT,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                &["permessage-deflate; server_max_window_bits=10"],
                DEFAULT,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            ),
            // Quoted values, odd case and spacing are the same offer (RFC 6455 §9.1).
            (
                &["Permessage-Deflate ;SERVER_MAX_WINDOW_BITS = \"8\" ; client_max_window_bits=\"15\""],
                TAKEOVER,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
            ),
            // Other extensions are declined; the first deflate offer we can honour wins.
            (
                &["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=15, permessage-deflate"],
                TAKEOVER,
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15",
            ),
            // Offers over several header lines keep their order.
            (
                &["foo; bar=\"baz\"", "permessage-deflate; client_no_context_takeover", "permessage-deflate"],
                TAKEOVER,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
        ];
        for (offers, config, expected) in table {
            assert_eq!(answer(offers, config).as_deref(), Some(*expected), "{offers:?}");
        }
    }

    #[test]
    fn agreed_parameters() {
        let agreed = negotiate(&["permessage-deflate; server_max_window_bits=9"], &TAKEOVER).unwrap().unwrap();
        assert_eq!(agreed, Agreed { client_no_context_takeover: false, server_max_window_bits: Some(9) });
        assert!(agreed.may_compress(512) && !agreed.may_compress(513));
        assert!(!agreed.inflater().holds_state(), "state is made on the first compressed fragment");
        let full = negotiate(&["permessage-deflate; server_max_window_bits=15"], &DEFAULT).unwrap().unwrap();
        assert!(full.may_compress(16 << 20));
    }

    #[test]
    fn declined_offers() {
        let declined: &[&str] = &[
            "",
            " , ,",
            "x-webkit-deflate-frame",
            "permessage-deflate-x",
            // RFC 7692 §7: unknown parameter, duplicate, a value where none is allowed,
            // a missing or invalid window size: every one of these is declined.
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=ten",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=99999999999999999999",
        ];
        for offer in declined {
            assert_eq!(negotiate(&[offer], &DEFAULT), Ok(None), "{offer:?}");
        }
        // A declined offer does not stop the next one from being accepted.
        let next = answer(&["permessage-deflate; foo, permessage-deflate; server_max_window_bits=12"], &TAKEOVER);
        assert_eq!(next.as_deref(), Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12"));
    }

    #[test]
    fn malformed_headers_are_bad_requests() {
        let malformed: &[&str] = &[
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; =10",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; a b",
            "; client_no_context_takeover",
            "permessage deflate",
            "permessage-deflate; client_max_window_bits=\"1 0\"",
            "permessage-deflate, foo;;",
            // Quoted, but not a token once unquoted (the comma does not split the list).
            "permessage-deflate, foo; bar=\"a,b\"",
        ];
        for header in malformed {
            assert!(negotiate(&[header], &DEFAULT).is_err(), "{header:?}");
        }
        // Even after an acceptable offer: the header as a whole is broken.
        assert!(negotiate(&["permessage-deflate", "x; \"unterminated"], &DEFAULT).is_err());
    }

    #[test]
    fn answers_read_by_a_client() {
        let ours = Agreed { client_no_context_takeover: true, server_max_window_bits: Some(10) };
        let answer = parse_answer(&ours.response_header()).unwrap();
        assert!(answer.server_no_context_takeover && answer.client_no_context_takeover);
        assert!(answer.may_compress(1 << 20), "server_max_window_bits limits the server, not us");
        let limited = parse_answer("permessage-deflate; client_max_window_bits=9").unwrap();
        assert!(limited.may_compress(512) && !limited.may_compress(513));
        assert!(limited.inflater().context_takeover);
        for bad in [
            "",
            "permessage-deflate, permessage-deflate",
            "x-foo",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; foo=1",
            "permessage-deflate; \"x",
        ] {
            assert_eq!(parse_answer(bad), None, "{bad:?}");
        }
    }

    /// Inflates one message given as fragments, without context takeover.
    fn inflate_message(fragments: &[&[u8]], limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut inflater = Inflater::new(false);
        let mut out = Vec::new();
        for fragment in fragments {
            inflater.push(fragment, &mut out, limit)?;
        }
        inflater.finish(&mut out, limit)?;
        assert!(!inflater.holds_state());
        Ok(out)
    }

    #[test]
    fn rfc_examples_inflate() {
        assert_eq!(inflate_message(&[&HELLO], 100).unwrap(), b"Hello");
        assert_eq!(inflate_message(&[&HELLO_STORED], 100).unwrap(), b"Hello");
        assert_eq!(inflate_message(&[&HELLO_FINAL], 100).unwrap(), b"Hello");
        // RFC 7692 §7.2.3.1: the same message fragmented into 0xf2 0x48 0xcd / 0xc9 0xc9 0x07 0x00.
        assert_eq!(inflate_message(&[&HELLO[..3], &HELLO[3..]], 100).unwrap(), b"Hello");
    }

    #[test]
    fn rfc_hello_compresses_byte_for_byte() {
        let mut compressor = Compressor::default();
        let mut out = vec![0xaa]; // appended after what is there
                                  // 5 bytes do not shrink: the compressor declines, leaving `out` as it was.
        assert!(!compressor.compress(b"Hello", &mut out));
        assert_eq!(out, [0xaa]);
        let mut raw = Vec::new();
        assert!(compressor.compress_raw(b"Hello", &mut raw));
        compressor.deflate.reset();
        assert_eq!(raw[..raw.len() - 4], HELLO, "RFC 7692 §7.2.3.1");
        assert_eq!(raw[raw.len() - 4..], DEFLATE_TAIL);
    }

    #[test]
    fn rfc_context_takeover_shares_the_window() {
        // RFC 7692 §7.2.3.2: with context takeover the second "Hello" is a back-reference.
        let mut inflater = Inflater::new(true);
        let mut out = Vec::new();
        inflater.push(&HELLO, &mut out, 100).unwrap();
        inflater.finish(&mut out, 100).unwrap();
        assert!(inflater.holds_state(), "context takeover keeps the window");
        inflater.push(&HELLO_AGAIN, &mut out, 100).unwrap();
        inflater.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"HelloHello");
        // Without it the back-reference points before the message. zlib would call that
        // invalid ("distance too far back"); miniz_oxide reads its zeroed window instead.
        // Garbage, not a memory error: a text message then fails UTF-8 checks (or not).
        assert_eq!(inflate_message(&[&HELLO_AGAIN], 100), Ok(b"H\0\0\0\0".to_vec()));
    }

    /// A chat-like payload that compresses well.
    fn sample(len: usize) -> Vec<u8> {
        let text = r#"{"type":"message","room":"lobby","from":"alice","text":"hello everyone, how are you today?"}"#;
        text.bytes().cycle().take(len).collect()
    }

    #[test]
    fn round_trips() {
        let mut compressor = Compressor::default();
        for len in [0, 1, 64, 200, 4096, 70_000, 1 << 20] {
            let payload: Vec<u8> = if len == 70_000 {
                (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect()
            // does not shrink
            } else {
                sample(len)
            };
            let mut compressed = Vec::new();
            if !compressor.compress(&payload, &mut compressed) {
                assert!(len < 64 || len == 70_000, "len {len} should shrink");
                continue;
            }
            assert!(compressed.len() < payload.len());
            assert_eq!(inflate_message(&[&compressed], len).unwrap(), payload, "len {len}");
            assert_eq!(inflate_message(&[&compressed], len - 1), Err(InflateError::TooBig), "len {len}");
        }
    }

    #[test]
    fn compressed_frame_has_rsv1() {
        let mut compressor = Compressor::default();
        let payload = sample(1000);
        let mut out = Vec::new();
        assert!(write_compressed_frame(&mut out, OpCode::Text, &payload, &mut compressor));
        let (header, n) = FrameHeader::parse(&out).unwrap().unwrap();
        assert_eq!((header.fin, header.rsv, header.opcode()), (true, 0x40, Some(OpCode::Text)));
        assert_eq!(header.payload_len as usize, out.len() - n);
        assert_eq!(inflate_message(&[&out[n..]], 1000).unwrap(), payload);
        // The same message compresses to the same bytes every time: shareable.
        let mut again = Vec::new();
        write_compressed_frame(&mut again, OpCode::Text, &payload, &mut compressor);
        assert_eq!(out, again);
        // Too short to shrink: a plain frame.
        out.clear();
        assert!(!write_compressed_frame(&mut out, OpCode::Binary, b"hi", &mut compressor));
        assert_eq!(out, [0x82, 0x02, b'h', b'i']);
    }

    #[test]
    fn fragments_split_at_every_byte() {
        let payload = sample(3000);
        let mut compressed = Vec::new();
        assert!(Compressor::default().compress(&payload, &mut compressed));
        for cut in 0..=compressed.len() {
            let (a, b) = compressed.split_at(cut);
            assert_eq!(inflate_message(&[a, b], 3000).unwrap(), payload, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = compressed.chunks(1).collect();
        assert_eq!(inflate_message(&bytes, 3000).unwrap(), payload);
        // And the RFC's "Hello" at every cut, with empty fragments too.
        for cut in 0..=HELLO.len() {
            let (a, b) = HELLO.split_at(cut);
            assert_eq!(inflate_message(&[a, &[], b], 5).unwrap(), b"Hello");
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let limit = 64 << 10;
        let bomb_len = 100 * limit;
        let mut bomb = Vec::new();
        assert!(Compressor::new(9).compress(&vec![0u8; bomb_len], &mut bomb));
        assert!(bomb.len() < bomb_len / 500, "{} bytes", bomb.len());
        for fragments in [vec![&bomb[..]], bomb.chunks(100).collect::<Vec<_>>()] {
            let mut inflater = Inflater::new(false);
            let mut out = Vec::new();
            let mut result = Ok(());
            for fragment in &fragments {
                result = inflater.push(fragment, &mut out, limit);
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(InflateError::TooBig));
            assert!(out.capacity() <= limit + 1, "capacity {} for a limit of {limit}", out.capacity());
            assert!(out.len() <= limit + 1);
        }
        // Exactly at the limit is fine.
        let mut exact = Vec::new();
        Compressor::default().compress(&vec![0u8; limit], &mut exact);
        assert_eq!(inflate_message(&[&exact], limit).unwrap().len(), limit);
    }

    #[test]
    fn invalid_data() {
        // BTYPE = 11 is reserved (RFC 1951 §3.2.3): an error.
        assert_eq!(inflate_message(&[&[0xff, 0xff, 0xff]], 100), Err(InflateError::Invalid));
        // A stored block whose length check (NLEN) does not match LEN.
        assert_eq!(inflate_message(&[&[0x00, 0x05, 0x00, 0x00, 0x00, b'H']], 100), Err(InflateError::Invalid));
        // After an error the next message starts clean.
        let mut inflater = Inflater::new(true);
        let mut out = Vec::new();
        let bad = inflater.push(&[0xff, 0xff], &mut out, 100).and_then(|()| inflater.finish(&mut out, 100));
        assert_eq!(bad, Err(InflateError::Invalid));
        assert!(!inflater.holds_state());
    }

    #[test]
    fn context_takeover_across_many_messages() {
        // A client that keeps its window: compress a stream of messages with one
        // Compress that is never reset, inflate with one Inflater that keeps its state.
        let mut client = Compress::new(Compression::default(), false);
        let mut inflater = Inflater::new(true);
        for round in 0..20 {
            let payload = sample(100 + round * 37);
            let mut compressed = Vec::with_capacity(payload.len() + 64);
            client.compress_vec(&payload, &mut compressed, FlushCompress::Sync).unwrap();
            assert!(compressed.ends_with(&DEFLATE_TAIL));
            compressed.truncate(compressed.len() - 4);
            let mut out = Vec::new();
            for fragment in compressed.chunks(7) {
                inflater.push(fragment, &mut out, 10_000).unwrap();
            }
            inflater.finish(&mut out, 10_000).unwrap();
            assert_eq!(out, payload, "round {round}");
        }
    }
}
