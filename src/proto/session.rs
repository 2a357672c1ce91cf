//! One WebSocket connection as a state machine over bytes and time (sans-IO).
//!
//! Owns: the connection's `Phase`, its frame decoding and message assembly, the control
//! frames it must answer (pong, close echo), and its deadlines (handshake, ping, idle,
//! close grace). Must not touch: sockets, the clock (`now` is always passed in), other
//! connections, or what a message means.
//!
//! Input goes in through `next()` (one frame at a time, `None` = need more bytes) and
//! `handle_timeout()`; bytes that must go to this peer come out of `take_outbound()`;
//! the next deadline comes out of `poll_timeout()`. The shell calls `next()` when bytes
//! arrive, `handle_timeout()` when a deadline it learned from `poll_timeout()` is due,
//! and `take_outbound()` after either.

use std::fmt;
use std::time::{Duration, Instant};

use super::close::{close_body, parse_close_body, CloseCode};
use super::deflate::Agreed;
use super::frame::{apply_mask, write_frame, FrameHeader, OpCode};
use super::handshake::{rejection_response, Rejection, Status};
use super::message::{Assembled, Assembler, Message, Violation};

/// The per-connection limits and timeouts, from `Config`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message: usize,          // largest message accepted, in bytes (1009 beyond)
    pub handshake_timeout: Duration, // from accept to a complete request head (408 after)
    pub ping_interval: Duration,     // quiet time after which we send a Ping
    pub idle_timeout: Duration,      // silence after which we close with 1001
    pub close_timeout: Duration,     // how long we wait for the peer's Close, and linger after ours
}

/// The connection states, named as in RFC 6455 §4.1 and §7 (and the browser's
/// `readyState`). Each carries the deadline that applies in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// CONNECTING: reading the HTTP request head.
    Connecting { deadline: Instant },
    /// OPEN: data flows both ways.
    Open,
    /// CLOSING: we sent a Close and wait for the peer's (RFC 6455 §7.1.2).
    Closing { deadline: Instant },
    /// CLOSED: nothing more will be sent but what is queued. The shell flushes it, shuts
    /// down its write side and drops the socket at EOF or at the deadline.
    Closed { deadline: Instant },
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connecting { .. } => "CONNECTING",
            Phase::Open => "OPEN",
            Phase::Closing { .. } => "CLOSING",
            Phase::Closed { .. } => "CLOSED",
        })
    }
}

/// What one call to `next()` produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message from the peer (text already proven UTF-8).
    Message(Message<'a>),
    /// A frame was taken in that needs nothing from the shell but sending `take_outbound()`
    /// (a fragment, a ping, a pong, data arriving while we wait for a Close).
    Progress,
    /// The connection just became CLOSED: the peer closed, or broke the protocol.
    Closed,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    id: usize,                     // for log lines only (the shell's slot number)
    phase: Phase,                  // where we are; changed only by `set_phase`
    limits: Limits,                // timeouts and sizes
    assembler: Assembler,          // frame rules and the fragmented message in flight
    last_heard: Instant,           // when the peer last sent us anything
    last_ping: Option<Instant>,    // when we last pinged, if since `last_heard`
    outbound: Vec<u8>,             // control frames and HTTP answers to send to this peer
    close_code: Option<CloseCode>, // the code of the Close we sent or echoed, for logs and tests
    peer_closed_first: bool,       // the peer's Close came before ours (we echoed it)
    violation: Option<Violation>,  // the rule the peer broke, if that is why the connection failed
    deflate: Option<Agreed>,       // permessage-deflate parameters, when the handshake agreed them
}

impl Session {
    /// A freshly accepted connection, waiting for its request head.
    pub fn new(id: usize, limits: Limits, now: Instant) -> Session {
        Session {
            id,
            phase: Phase::Connecting { deadline: now + limits.handshake_timeout },
            assembler: Assembler::new(limits.max_message),
            limits,
            last_heard: now,
            last_ping: None,
            outbound: Vec::new(),
            close_code: None,
            peer_closed_first: false,
            violation: None,
            deflate: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed { .. })
    }

    /// The code of the Close frame we sent, if we sent one.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.close_code
    }

    /// Did the peer start the closing handshake? (False when we did, or nobody did.)
    pub fn peer_closed_first(&self) -> bool {
        self.peer_closed_first
    }

    /// The rule the peer broke, if the connection failed for that (RFC 6455 §7.1.7).
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Bytes held for a message in flight: its fragments, and an inflate state while a
    /// compressed one arrives (for memory accounting).
    pub fn buffered_capacity(&self) -> usize {
        self.assembler.buffered_capacity()
    }

    /// The handshake agreed on permessage-deflate (RFC 7692) with these parameters: the
    /// peer may compress its messages from now on, and the shell may compress ours.
    /// Call it before `accept`, as the 101 that states them is sent.
    pub fn use_deflate(&mut self, agreed: Agreed) {
        self.assembler.use_deflate(agreed.inflater());
        self.deflate = Some(agreed);
    }

    /// The permessage-deflate parameters in force, if any were agreed.
    pub fn deflate(&self) -> Option<Agreed> {
        self.deflate
    }

    /// The one place the phase changes, so every transition is logged.
    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            log::debug!("conn {}: {}=>{}", self.id, self.phase, phase);
            self.phase = phase;
        }
    }

    /// The request head was valid and the shell accepted it: CONNECTING → OPEN.
    /// The shell sends the 101 response itself (it is built by `handshake`).
    pub fn accept(&mut self, now: Instant) {
        if let Phase::Connecting { .. } = self.phase {
            self.last_heard = now;
            self.set_phase(Phase::Open);
        }
    }

    /// Answer a request with a plain HTTP response and close: CONNECTING → CLOSED.
    pub fn respond_http(&mut self, response: Vec<u8>, now: Instant) {
        if let Phase::Connecting { .. } = self.phase {
            self.outbound = response;
            self.set_phase(Phase::Closed { deadline: now + self.limits.close_timeout });
        }
    }

    /// Reject a request with an error status and close.
    pub fn reject(&mut self, rejection: &Rejection, now: Instant) {
        log::debug!("conn {}: rejected {}: {}", self.id, rejection.status.code(), rejection.why);
        self.respond_http(rejection_response(rejection), now);
    }

    /// Start the closing handshake (RFC 6455 §7.1.2): send a Close and wait for the peer's
    /// until the close timeout. Only an OPEN connection sends one; otherwise a no-op.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if self.phase == Phase::Open {
            self.send_close(code, reason);
            self.set_phase(Phase::Closing { deadline: now + self.limits.close_timeout });
        }
    }

    /// _Fail the WebSocket Connection_ (RFC 6455 §7.1.7): send a Close if we have not yet,
    /// then go straight to CLOSED without waiting for an answer.
    fn fail(&mut self, violation: Violation, now: Instant) -> Event<'static> {
        log::debug!("conn {}: failing: {violation}", self.id);
        self.violation = Some(violation);
        if self.phase == Phase::Open {
            self.send_close(violation.code, violation.reason);
        }
        self.set_phase(Phase::Closed { deadline: now + self.limits.close_timeout });
        Event::Closed
    }

    fn send_close(&mut self, code: CloseCode, reason: &str) {
        self.close_code = Some(code);
        write_frame(&mut self.outbound, OpCode::Close, &close_body(code, reason));
    }

    /// Bytes that must be sent to this peer (pong, close, an HTTP answer), if any.
    pub fn take_outbound(&mut self) -> Option<Vec<u8>> {
        (!self.outbound.is_empty()).then(|| std::mem::take(&mut self.outbound))
    }

    /// Decodes one frame from the start of `input` (already past the request head).
    ///
    /// Returns the event and how many bytes it consumed, or `None` when `input` does not
    /// hold a whole frame yet; nothing is consumed then. Payloads are unmasked in place,
    /// so a single-frame message is handed out without a copy.
    pub fn next<'a>(&mut self, input: &'a mut [u8], now: Instant) -> Option<(Event<'a>, usize)> {
        if !matches!(self.phase, Phase::Open | Phase::Closing { .. }) {
            return None;
        }
        let everything = input.len();
        let (header, header_len) = match FrameHeader::parse(input) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return None,
            Err(_) => return Some((self.fail(LENGTH_HIGH_BIT, now), everything)),
        };
        // Judge the header before waiting for the payload, so an oversized frame is refused
        // at once instead of being buffered.
        let checked = match self.assembler.check_header(&header) {
            Ok(checked) => checked,
            Err(violation) => return Some((self.fail(violation, now), everything)),
        };
        let frame_len = header_len as u64 + header.payload_len;
        if (input.len() as u64) < frame_len {
            // Not all here yet; but text that is already invalid fails now (fail fast).
            if let Err(violation) = self.assembler.check_partial(&header, &input[header_len..]) {
                return Some((self.fail(violation, now), everything));
            }
            return None;
        }
        let frame_len = frame_len as usize; // fits: not more than input.len()
        self.last_heard = now;
        self.last_ping = None;
        let payload = &mut input[header_len..frame_len];
        if let Some(mask) = header.mask {
            apply_mask(payload, mask, 0);
        }
        let event = match self.assembler.push(checked, payload) {
            Err(violation) => self.fail(violation, now),
            Ok(assembled) => self.on_assembled(assembled, now),
        };
        Some((event, frame_len))
    }

    /// What a checked frame means in the current phase.
    fn on_assembled<'a>(&mut self, assembled: Assembled<'a>, now: Instant) -> Event<'a> {
        let closing = matches!(self.phase, Phase::Closing { .. });
        match (assembled, closing) {
            // OPEN: a message for the shell to route.
            (Assembled::Message(message), false) => Event::Message(message),
            // CLOSING: we said goodbye; data still in flight from the peer is dropped.
            (Assembled::Message(..), true) => Event::Progress,
            (Assembled::Partial, _) => Event::Progress,
            // RFC 6455 §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
            // frame in response ... [with] identical Application data". Not once we sent a
            // Close (§5.5.1: no frames after Close).
            (Assembled::Control(OpCode::Ping, payload), false) => {
                write_frame(&mut self.outbound, OpCode::Pong, payload);
                Event::Progress
            }
            (Assembled::Control(OpCode::Close, body), _) => self.on_close(body, now),
            // A Pong (solicited or not), or a Ping while CLOSING: the frame counted as
            // "heard from the peer" in `next()`, nothing else to do.
            (Assembled::Control(..), _) => Event::Progress,
        }
    }

    /// The peer's Close frame.
    fn on_close(&mut self, body: &[u8], now: Instant) -> Event<'static> {
        let parsed = match parse_close_body(body) {
            Ok(parsed) => parsed,
            Err(bad) => return self.fail(Violation { code: bad.code(), reason: bad.reason() }, now),
        };
        if self.phase == Phase::Open {
            self.peer_closed_first = true;
            // RFC 6455 §5.5.1: "the endpoint MUST send a Close frame in response ...
            // typically echoing the status code it received".
            match parsed {
                Some((code, _)) => self.send_close(code, ""),
                None => {
                    self.close_code = Some(CloseCode::NORMAL);
                    write_frame(&mut self.outbound, OpCode::Close, &[]);
                }
            }
        }
        // RFC 6455 §7.1.1: the server should close the TCP connection first, once the
        // Close has gone out; the shell flushes, shuts down and lingers until the deadline.
        self.set_phase(Phase::Closed { deadline: now + self.limits.close_timeout });
        Event::Closed
    }

    /// The next instant `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Instant {
        match self.phase {
            Phase::Connecting { deadline } | Phase::Closing { deadline } | Phase::Closed { deadline } => deadline,
            Phase::Open => self.next_ping().min(self.last_heard + self.limits.idle_timeout),
        }
    }

    /// When a quiet peer gets its next Ping: an interval after we last heard from it or
    /// last pinged it, whichever is later.
    fn next_ping(&self) -> Instant {
        self.last_ping.unwrap_or(self.last_heard).max(self.last_heard) + self.limits.ping_interval
    }

    /// Acts on every deadline that has passed. Idempotent: calling it again at the same
    /// `now` does nothing more.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            // The request head never completed: answer 408 and close.
            Phase::Connecting { deadline } if now >= deadline => {
                let why = "request not received within the handshake timeout";
                self.reject(&Rejection { status: Status::RequestTimeout, why }, now);
            }
            // Nothing heard for the idle timeout (pings went unanswered): close 1001.
            Phase::Open if now >= self.last_heard + self.limits.idle_timeout => {
                log::info!("conn {}: idle for {:?}, closing", self.id, self.limits.idle_timeout);
                self.close(CloseCode::GOING_AWAY, "idle timeout", now);
            }
            // Quiet for a ping interval: ask the peer to prove it is there.
            Phase::Open if now >= self.next_ping() => {
                write_frame(&mut self.outbound, OpCode::Ping, &[]);
                self.last_ping = Some(now);
            }
            // The peer did not answer our Close in time: give up on a clean close.
            Phase::Closing { deadline } if now >= deadline => self.set_phase(Phase::Closed { deadline: now }),
            _ => {}
        }
    }

    /// CLOSED and past the linger deadline: the shell should drop the socket now, even if
    /// bytes are still queued (the peer stopped reading).
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Closed { deadline } if now >= deadline)
    }
}

/// A 64-bit length with its top bit set (RFC 6455 §5.2).
const LENGTH_HIGH_BIT: Violation = Violation { code: CloseCode::PROTOCOL_ERROR, reason: "invalid payload length" };
