//! One client connection of the pool: its phase, its buffers, and the pure half of its
//! input handling (the upgrade response, then frames: pings answered, the closing
//! handshake followed).
//!
//! Owns: a connection's state and what its bytes mean. Must not touch: sockets (the
//! pool reads and writes them) or the clock (`now_ns` is passed in).

use std::ops::ControlFlow;

use mio::net::TcpStream;

use super::tls::ClientTls;
use super::{AfterOpen, End, Handler};
use crate::bench::deflate::{ClientDeflate, RSV1};
use crate::bench::wire::{parse_response, Frame, FrameReader, Piece};
use crate::proto::deflate::{Answer, InflateError};
use crate::proto::frame::{write_masked_frame, OpCode, MAX_CONTROL_PAYLOAD};

/// RFC 6455 §7.4.1: 1000, normal closure.
pub(super) const CLOSE_NORMAL: [u8; 2] = [0x03, 0xe8];
/// RFC 6455 §7.4.1: 1005, "no status code was actually present" (never sent).
const CLOSE_NO_STATUS: u16 = 1005;

/// A connection's place in its life (RFC 6455 §4 and §7 states, client side).
#[derive(Debug)]
pub(super) enum Phase {
    /// TCP connect in progress; the upgrade request waits in the outbox.
    Connecting,
    /// Request sent; collecting the response head (only when split across reads).
    Handshaking { response: Vec<u8> },
    /// OPEN: frames flow both ways.
    Open,
    /// CLOSING: our Close is sent. RFC 6455 §7.1.1: the server answers with a Close
    /// (`answered`) and then "SHOULD close the TCP connection first", so we wait for the
    /// end of the stream until the deadline; that way TIME_WAIT stays on the server's
    /// side instead of using up our ephemeral ports.
    Closing { deadline_ns: u64, answered: bool },
    /// CLOSED: finished; the socket is dropped after this turn's flush.
    Done,
}

/// How many connections are in each phase, kept by [`set_phase`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Census {
    pub(super) connecting: usize,  // Phase::Connecting
    pub(super) handshaking: usize, // Phase::Handshaking
    pub(super) open: usize,        // Phase::Open
    pub(super) closing: usize,     // Phase::Closing
    pub(super) deflate: usize,     // upgrades whose server agreed to permessage-deflate (not a phase)
}

impl Census {
    fn slot(&mut self, phase: &Phase) -> Option<&mut usize> {
        match phase {
            Phase::Connecting => Some(&mut self.connecting),
            Phase::Handshaking { .. } => Some(&mut self.handshaking),
            Phase::Open => Some(&mut self.open),
            Phase::Closing { .. } => Some(&mut self.closing),
            Phase::Done => None,
        }
    }
}

/// One client connection.
pub(super) struct Conn {
    pub(super) stream: TcpStream,                   // the non-blocking socket
    pub(super) tls: Option<Box<ClientTls>>,         // wss://: the TLS session (boxed: a plain connection pays 8 bytes)
    pub(super) phase: Phase,                        // see `Phase`
    pub(super) reader: FrameReader,                 // carries an incomplete frame between reads
    pub(super) outbox: Vec<u8>,                     // bytes queued for the server
    pub(super) written: usize,                      // bytes at the front of `outbox` already written
    pub(super) mask: [u8; 4],                       // this connection's masking key (RFC 6455 §5.3)
    pub(super) accept: String,                      // the Sec-WebSocket-Accept value the server must send
    pub(super) offered_deflate: bool,               // the request offered permessage-deflate
    pub(super) deflate: Option<Box<ClientDeflate>>, // agreed: inflates the server's messages (boxed: most runs have none)
    pub(super) tag: u32,                            // the scenario's name for this connection
    pub(super) after_open: AfterOpen,               // hold or close once upgraded
    pub(super) opened_ns: u64,                      // when the connect started
    pub(super) deadline_ns: u64,                    // connect + upgrade must be done by then
    pub(super) dirty: bool,                         // listed in `Pool::dirty`
    pub(super) blocked: bool,                       // the last write hit WouldBlock: wait for WRITABLE
}

/// What one read did to a connection.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) wrote: bool,      // bytes were queued (a pong, a close): flush this connection
    pub(super) end: Option<End>, // the connection is finished
}

/// Feeds freshly read bytes to one connection: the upgrade response first, then frames.
pub(super) fn take_input<H: Handler>(
    conn: &mut Conn,
    bytes: &[u8],
    now_ns: u64,
    close_timeout_ns: u64,
    census: &mut Census,
    handler: &mut H,
) -> Outcome {
    let mut outcome = Outcome::default();
    let carried: Vec<u8>; // frames that followed a split response head
    let mut frames = bytes;
    if let Phase::Handshaking { response } = &mut conn.phase {
        let deflate = match take_head(response, bytes, &conn.accept, conn.offered_deflate) {
            Head::Incomplete => return outcome,
            Head::Refused(kind) => {
                outcome.end = Some(End::Failed(kind));
                return outcome;
            }
            Head::InThisRead(used, deflate) => {
                frames = &bytes[used..];
                deflate
            }
            Head::Split(rest, deflate) => {
                carried = rest;
                frames = &carried;
                deflate
            }
        };
        if let Some(answer) = deflate {
            conn.deflate = Some(Box::new(ClientDeflate::new(answer)));
            census.deflate += 1;
        }
        outcome.wrote = upgraded(conn, now_ns, close_timeout_ns, census, handler);
    }
    if frames.is_empty() {
        return outcome;
    }
    take_frames(conn, frames, now_ns, handler, &mut outcome);
    // A Close or an error ends the connection: `Pool::end` moves it to Done.
    outcome
}

/// How far the `101` response head has come.
enum Head {
    /// Not complete yet; what arrived is kept in `Phase::Handshaking`.
    Incomplete,
    /// Not an acceptable `101`: the error kind.
    Refused(String),
    /// Complete within this read; frames start this many bytes into it. With the
    /// permessage-deflate answer, if the server agreed.
    InThisRead(usize, Option<Answer>),
    /// Completed across reads; these bytes followed it (frames, possibly none).
    Split(Vec<u8>, Option<Answer>),
}

/// Adds one read's bytes to the response head collected so far and parses it.
fn take_head(response: &mut Vec<u8>, bytes: &[u8], accept: &str, offered_deflate: bool) -> Head {
    // Usually the whole head is in one read and is parsed in place.
    if response.is_empty() {
        return match parse_response(bytes, accept, offered_deflate) {
            Ok(None) => {
                response.extend_from_slice(bytes);
                Head::Incomplete
            }
            Ok(Some(up)) => Head::InThisRead(up.used, up.deflate),
            Err(e) => Head::Refused(e.kind()),
        };
    }
    response.extend_from_slice(bytes);
    match parse_response(response, accept, offered_deflate) {
        Ok(None) => Head::Incomplete,
        Ok(Some(up)) => Head::Split(response.split_off(up.used), up.deflate),
        Err(e) => Head::Refused(e.kind()),
    }
}

/// The upgrade succeeded: OPEN, tell the handler, and with [`AfterOpen::Close`] start
/// the closing handshake at once. `true` if bytes were queued.
fn upgraded<H: Handler>(
    conn: &mut Conn,
    now_ns: u64,
    close_timeout_ns: u64,
    census: &mut Census,
    handler: &mut H,
) -> bool {
    set_phase(census, conn, Phase::Open);
    conn.accept = String::new();
    handler.on_open(conn.tag, conn.opened_ns, now_ns);
    if conn.after_open != AfterOpen::Close {
        return false;
    }
    queue_close(conn, &CLOSE_NORMAL);
    set_phase(census, conn, Phase::Closing { deadline_ns: now_ns + close_timeout_ns, answered: false });
    true
}

/// Reads the frames of an open (or closing) connection: data to the handler, control
/// frames answered here.
fn take_frames<H: Handler>(conn: &mut Conn, frames: &[u8], now_ns: u64, handler: &mut H, outcome: &mut Outcome) {
    let Conn { reader, outbox, mask, phase, tag, deflate, .. } = conn;
    let tag = *tag;
    let Some(deflate) = deflate else {
        let fed = reader.feed(frames, |frame| match (frame.opcode_bits, frame.rsv) {
            // RFC 6455 §5.2: a nonzero RSV bit without an extension that defines it fails
            // the connection.
            (_, 1..) => fail(outcome, "protocol_error"),
            // Text, Binary: the hot path.
            (0x1 | 0x2, _) => {
                handler.on_data(tag, &frame, now_ns);
                ControlFlow::Continue(())
            }
            // Continuation: the stamp came with the message's first fragment.
            (0x0, _) => ControlFlow::Continue(()),
            _ => on_control(&frame, phase, outbox, *mask, outcome),
        });
        if fed.is_err() {
            outcome.end = Some(End::Failed("protocol_error".to_owned()));
        }
        return;
    };
    // permessage-deflate agreed: compressed messages are inflated whole, then handed on
    // as the frame they stand for, so the scenario counts them as any other.
    let fed = reader.feed_pieces(frames, |piece| {
        let inflated = match piece {
            Piece::Start(frame) => match (frame.opcode_bits, frame.rsv) {
                // RFC 7692 §6.1: RSV1 only on a message's first frame; RSV2/3 never.
                (0x1 | 0x2, RSV1) if !deflate.in_message() => deflate.start(&frame),
                (0x0, 0) if deflate.in_message() => deflate.start(&frame),
                (_, 1..) => return fail(outcome, "protocol_error"),
                (0x1 | 0x2, _) if deflate.in_message() => return fail(outcome, "protocol_error"),
                (0x1 | 0x2, _) => {
                    handler.on_data(tag, &frame, now_ns);
                    return ControlFlow::Continue(());
                }
                (0x0, _) => return ControlFlow::Continue(()),
                _ => return on_control(&frame, phase, outbox, *mask, outcome),
            },
            Piece::Rest { bytes, last } if deflate.in_message() => deflate.rest(bytes, last),
            Piece::Rest { .. } => return ControlFlow::Continue(()), // an uncompressed payload: skipped
        };
        match inflated {
            Ok(Some(message)) => handler.on_data(tag, &message, now_ns),
            Ok(None) => {}
            Err(InflateError::TooBig) => return fail(outcome, "inflate_too_big"),
            Err(InflateError::Invalid) => return fail(outcome, "inflate_invalid"),
        }
        ControlFlow::Continue(())
    });
    if fed.is_err() {
        outcome.end = Some(End::Failed("protocol_error".to_owned()));
    }
}

/// Ends the connection as failed with `kind` and stops reading it.
fn fail(outcome: &mut Outcome, kind: &str) -> ControlFlow<()> {
    outcome.end = Some(End::Failed(kind.to_owned()));
    ControlFlow::Break(())
}

/// A control frame (or a reserved opcode); `Break` stops reading this connection.
fn on_control(
    frame: &Frame<'_>,
    phase: &mut Phase,
    outbox: &mut Vec<u8>,
    mask: [u8; 4],
    outcome: &mut Outcome,
) -> ControlFlow<()> {
    match frame.opcode_bits {
        // RFC 6455 §5.5: control frames are ≤ 125 bytes and never fragmented.
        0x8..=0xA if frame.payload_len > MAX_CONTROL_PAYLOAD as u64 || !frame.fin => {
            outcome.end = Some(End::Failed("protocol_error".to_owned()));
            ControlFlow::Break(())
        }
        // RFC 6455 §5.5.2: a Ping is answered with a Pong carrying its payload.
        0x9 => {
            write_masked_frame(outbox, true, OpCode::Pong.bits(), frame.prefix, mask);
            outcome.wrote = true;
            ControlFlow::Continue(())
        }
        // An unsolicited Pong needs no answer (RFC 6455 §5.5.3).
        0xA => ControlFlow::Continue(()),
        // Close: RFC 6455 §5.5.1, the answer to our Close ends the handshake; a Close of
        // the server's own must be answered with a Close, then we are done.
        0x8 => {
            match phase {
                Phase::Closing { answered, .. } => *answered = true, // now wait for the TCP close
                _ => answer_close(frame.prefix, outbox, mask, outcome),
            }
            ControlFlow::Break(())
        }
        // RFC 6455 §5.2: a reserved opcode fails the connection.
        _ => {
            outcome.end = Some(End::Failed("protocol_error".to_owned()));
            ControlFlow::Break(())
        }
    }
}

/// The server closed first: echo its status code in our Close, and end the connection
/// as failed with that code.
fn answer_close(payload: &[u8], outbox: &mut Vec<u8>, mask: [u8; 4], outcome: &mut Outcome) {
    let code = match payload {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => CLOSE_NO_STATUS,
    };
    let echo = if payload.len() >= 2 { &payload[..2] } else { &[][..] };
    write_masked_frame(outbox, true, OpCode::Close.bits(), echo, mask);
    outcome.wrote = true;
    outcome.end = Some(End::Failed(format!("server_close_{code}")));
}

/// The one place a connection's phase changes, keeping the census in step.
pub(super) fn set_phase(census: &mut Census, conn: &mut Conn, phase: Phase) {
    if let Some(count) = census.slot(&conn.phase) {
        *count = count.saturating_sub(1);
    }
    if let Some(count) = census.slot(&phase) {
        *count += 1;
    }
    conn.phase = phase;
}

/// Lists a connection for the next flush (once).
#[inline]
/// `wss://`: decrypts one read's ciphertext into `plain`, listing the connection for the
/// flush when TLS has records to send (handshake messages, the upgrade request released
/// by the end of the handshake, or an alert for an error). Returns whether the server's
/// close_notify came, or the error's kind.
pub(super) fn decrypt_read(
    conn: &mut Conn,
    key: usize,
    ciphertext: &[u8],
    plain: &mut Vec<u8>,
    dirty: &mut Vec<usize>,
) -> Result<bool, String> {
    let Some(tls) = conn.tls.as_deref_mut() else { return Ok(false) };
    plain.clear();
    let decrypted = tls.decrypt(ciphertext, plain);
    if tls.wants_write() {
        mark_dirty(dirty, key, conn);
    }
    decrypted
}

pub(super) fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Conn) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

/// Queues our Close frame with `payload` (a status code).
pub(super) fn queue_close(conn: &mut Conn, payload: &[u8]) {
    write_masked_frame(&mut conn.outbox, true, OpCode::Close.bits(), payload, conn.mask);
}
