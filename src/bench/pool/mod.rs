//! The bench's IO shell: one `mio::Poll` driving many client connections, the mirror
//! image of the server's loop.
//!
//! Owns: sockets (connect from several source addresses, read, write), each
//! connection's phase, the client half of the protocol (masking, answering pings,
//! the closing handshake), timeouts, and error counts by kind. Must not touch: what a
//! scenario measures; data frames go to a [`Handler`] the scenario supplies.
//!
//! This file runs a little past 500 lines: it is the pool's one loop (`Pool` and its
//! turn), kept whole so the read and write paths read side by side; the per-connection
//! codec is `conn.rs`, sockets `socket.rs`, TLS `tls.rs`.
//!
//! A scenario drives the pool one turn at a time, in this order:
//!
//! 1. **Queue**: the scenario queues its messages ([`Pool::send`]) and opens or closes
//!    connections.
//! 2. **Flush**: [`Pool::flush`] gives every connection with queued bytes one write
//!    (more only while the kernel takes everything), so a sender's whole batch for the
//!    turn leaves in one `write(2)`. WRITABLE interest is registered once, at connect:
//!    edge-triggered, it only reports a socket whose earlier write hit WouldBlock.
//! 3. **Reap**: connections that ended are deregistered and dropped, after their last
//!    bytes (a Close answer) had their flush.
//! 4. **Poll**: [`Pool::poll`] waits for readiness, reads every ready socket into one
//!    shared scratch buffer, parses frames in place ([`FrameReader`]), hands data
//!    frames to the handler, answers pings, and expires connections past a deadline.
//!
//! Per data frame the pool does a header parse and one call; the clock is read once
//! per `read(2)`, not per frame (every frame of one read arrived at the same moment).
//!
//! `wss://` connections carry a sans-IO rustls session (`tls`): the same reads and
//! writes, with ciphertext decrypted into a second shared buffer before `take_input`
//! and the outbox encrypted on its way to the socket. Plain connections only test that
//! the session is absent. `bytes_read` counts what the socket delivered (ciphertext).

mod conn;
mod socket;
mod tls;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use slab::Slab;

use super::deflate::RSV1;
use super::sys::SplitMix;
use super::timer::Timer;
use super::url::Target;
use super::wire::{Frame, FrameReader, Handshake};
use crate::proto::deflate::{Compressor, DEFAULT_THRESHOLD};
use crate::proto::frame::{write_masked_frame, OpCode};
use crate::sys::nb::retrying;
use conn::{decrypt_read, mark_dirty, queue_close, set_phase, take_input, Census, Conn, Phase, CLOSE_NORMAL};
pub use socket::io_kind;
use socket::{connect, connect_outcome};
use tls::ClientTls;

/// The wake-up timer's token; connection tokens are slab keys, far below it.
const TIMER: Token = Token(usize::MAX);
/// Bytes of the shared read buffer: one `read(2)` takes up to this much.
const SCRATCH_LEN: usize = 256 << 10;
/// Readiness events taken from one `poll` call: few enough that a turn stays short
/// (a few hundred microseconds even at one frame per read), so a paced send is not
/// held up behind a thousand reads. Events not taken stay on epoll's ready list for
/// the next call. (Measured at R=1000, 1000 msgs/s: send lag p99 ≈ 1.2 ms with 64,
/// ≈ 5 ms with 256, with no change in deliveries/s at --rate max.)
const EVENTS_PER_TURN: usize = 64;
/// Bytes read from one connection per turn before the others get theirs.
const READ_BUDGET: usize = 1 << 20;
/// How often deadlines (handshake, close) are checked while any are pending.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// What a scenario learns from the pool, called in the middle of its turn.
pub trait Handler {
    /// The start of a text or binary frame arrived at connection `tag` at `now_ns`.
    fn on_data(&mut self, tag: u32, frame: &Frame<'_>, now_ns: u64);

    /// Connection `tag`'s upgrade succeeded; it was opened at `opened_ns`.
    fn on_open(&mut self, _tag: u32, _opened_ns: u64, _now_ns: u64) {}

    /// Connection `tag` is finished (the pool has already counted any error).
    fn on_end(&mut self, _tag: u32, _end: &End) {}
}

/// How a connection finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Our Close was answered with a Close or with the end of the stream.
    Clean,
    /// Anything else, by kind (`refused`, `http_503`, `server_close_1008`, ...).
    Failed(String),
}

/// What to do once the upgrade succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterOpen {
    /// Keep the connection open (fanout, idle).
    Hold,
    /// Start the closing handshake at once (churn).
    Close,
}

/// Settings fixed for the pool's life.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub target: Target,               // where to connect
    pub sources: Vec<Option<IpAddr>>, // source addresses, used in turn (None: the kernel's choice)
    pub handshake_timeout: Duration,  // connect + upgrade, per connection
    pub close_timeout: Duration,      // our Close to the server's answer
    pub deflate: bool,                // offer permessage-deflate (--deflate)
    pub busy_poll: bool,              // never wait in `poll` (--busy-poll)
    pub tls: Option<TlsTarget>,       // wss://: how every connection speaks TLS
}

/// What every `wss://` connection of a run shares.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>, // trust, versions, ALPN (see `bench::tls`)
    pub name: ServerName<'static>, // SNI and the name the certificate must carry
}

/// Many client connections on one poll loop.
pub struct Pool {
    config: PoolConfig,     // fixed settings
    poll: Poll,             // the readiness queue
    events: Events,         // reused across turns
    conns: Slab<Conn>,      // every connection; key = Token
    scratch: Vec<u8>,       // the one read buffer all connections share
    plain: Vec<u8>,         // wss://: what one read decrypted (shared like `scratch`)
    dirty: Vec<usize>,      // connections with bytes to write this turn
    done: Vec<usize>,       // connections to drop after the next flush
    unfinished: Vec<usize>, // connections whose read budget ran out with input left
    census: Census,         // connections per phase
    next_source: usize,     // round-robin index into `config.sources`
    rng: SplitMix,          // masking keys and nonces
    start: Instant,         // the bench clock's origin: every `_ns` is since this
    next_sweep_ns: u64,     // when deadlines are next checked
    errors: Errors,         // failures by kind
    timer: Timer,           // precise wake-ups for paced sending
    timer_at_ns: u64,       // when the timer is armed to fire (u64::MAX: disarmed or fired)
    bytes_read: u64,        // bytes read from every socket so far (the wire cost of deliveries)
    compressor: Compressor, // --deflate: compresses what we send (no context takeover: one for all)
    compressed: Vec<u8>,    // --deflate: the message being sent, compressed (reused)
}

/// How a connection in `phase` ends when the server's stream ends (FIN, or close_notify).
fn end_of_stream(phase: &Phase) -> End {
    match phase {
        Phase::Closing { .. } => End::Clean, // the server closed after our Close: done
        Phase::Handshaking { .. } => End::Failed("eof_before_101".to_owned()),
        _ => End::Failed("eof".to_owned()),
    }
}

/// Failure counts by kind, in a stable order for reports.
pub type Errors = BTreeMap<String, u64>;

impl Pool {
    /// An empty pool; `start` is the origin of every timestamp.
    pub fn new(config: PoolConfig, start: Instant) -> io::Result<Pool> {
        let poll = Poll::new()?;
        let mut timer = Timer::new()?;
        poll.registry().register(&mut timer, TIMER, Interest::READABLE)?;
        Ok(Pool {
            config,
            poll,
            events: Events::with_capacity(EVENTS_PER_TURN),
            conns: Slab::new(),
            scratch: vec![0; SCRATCH_LEN],
            plain: Vec::new(),
            dirty: Vec::new(),
            done: Vec::new(),
            unfinished: Vec::new(),
            census: Census::default(),
            next_source: 0,
            rng: SplitMix::from_entropy(),
            start,
            next_sweep_ns: 0,
            errors: Errors::new(),
            timer,
            timer_at_ns: u64::MAX,
            bytes_read: 0,
            compressor: Compressor::default(),
            compressed: Vec::new(),
        })
    }

    /// Makes the next [`Pool::poll`] return by `at_ns` (bench time) at the latest, to
    /// within the kernel's timer slack rather than epoll's whole milliseconds.
    pub fn wake_at(&mut self, at_ns: u64) -> io::Result<()> {
        if at_ns == self.timer_at_ns {
            return Ok(()); // already armed for then: spare the syscall
        }
        let now_ns = self.now_ns();
        self.timer.arm(Duration::from_nanos(at_ns.saturating_sub(now_ns)))?;
        self.timer_at_ns = at_ns;
        Ok(())
    }

    /// Nanoseconds since the bench started.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Connections still in the slab, in any phase.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Is the pool empty?
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections connecting or waiting for their `101`.
    pub fn pending(&self) -> usize {
        self.census.connecting + self.census.handshaking
    }

    /// Connections in OPEN.
    pub fn open_count(&self) -> usize {
        self.census.open
    }

    /// Failures so far, by kind.
    pub fn errors(&self) -> &Errors {
        &self.errors
    }

    /// Bytes read from all sockets so far: response heads and frames, as on the wire.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Connections whose server agreed to permessage-deflate.
    pub fn deflate_count(&self) -> usize {
        self.census.deflate
    }

    /// Starts a connection named `tag`. Its upgrade request is queued and goes out once
    /// TCP connects. Returns the key, or the error kind (already counted) when the
    /// socket could not even be created (out of descriptors or source ports).
    pub fn open(&mut self, tag: u32, after_open: AfterOpen) -> Result<usize, String> {
        let source = self.config.sources[self.next_source % self.config.sources.len()];
        self.next_source = self.next_source.wrapping_add(1);
        let mut stream = match connect(self.config.target.addr, source) {
            Ok(stream) => stream,
            Err(e) => return Err(self.count_error(io_kind(&e))),
        };
        let tls = match &self.config.tls {
            None => None,
            Some(t) => match ClientTls::new(Arc::clone(&t.config), t.name.clone()) {
                Ok(tls) => Some(Box::new(tls)),
                Err(kind) => return Err(self.count_error(kind)),
            },
        };
        let now_ns = self.now_ns();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // Both interests at once: edge-triggered WRITABLE fires when the connect
        // completes and afterwards only when a blocked socket drains.
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            return Err(self.count_error(io_kind(&e)));
        }
        let handshake = Handshake::new(&self.config.target, self.rng.nonce(), self.config.deflate);
        let mut conn = Conn {
            stream,
            tls,
            phase: Phase::Done,
            reader: FrameReader::default(),
            outbox: handshake.request,
            written: 0,
            mask: self.rng.mask(),
            accept: handshake.accept,
            offered_deflate: self.config.deflate,
            deflate: None,
            tag,
            after_open,
            opened_ns: now_ns,
            deadline_ns: now_ns + self.config.handshake_timeout.as_nanos() as u64,
            dirty: false,
            blocked: false,
        };
        set_phase(&mut self.census, &mut conn, Phase::Connecting);
        entry.insert(conn);
        Ok(key)
    }

    /// Queues a masked data frame on an open connection; `false` if it is not open.
    /// Where permessage-deflate was agreed, a message of [`DEFAULT_THRESHOLD`] bytes or
    /// more goes compressed (RSV1 set, RFC 7692 §6) when that makes it shorter.
    #[inline]
    pub fn send(&mut self, key: usize, opcode: OpCode, payload: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if !matches!(conn.phase, Phase::Open) {
            return false;
        }
        let squeeze =
            conn.deflate.as_ref().is_some_and(|d| payload.len() >= DEFAULT_THRESHOLD && d.may_compress(payload.len()));
        self.compressed.clear();
        if squeeze && self.compressor.compress(payload, &mut self.compressed) {
            let at = conn.outbox.len();
            write_masked_frame(&mut conn.outbox, true, opcode.bits(), &self.compressed, conn.mask);
            conn.outbox[at] |= RSV1;
        } else {
            write_masked_frame(&mut conn.outbox, true, opcode.bits(), payload, conn.mask);
        }
        mark_dirty(&mut self.dirty, key, conn);
        true
    }

    /// Bytes queued on a connection and not yet written.
    pub fn unsent(&self, key: usize) -> usize {
        self.conns.get(key).map_or(0, |c| c.outbox.len() - c.written)
    }

    /// Starts the closing handshake on every open connection; connections still
    /// connecting are dropped (and count as `aborted`).
    pub fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key);
        }
    }

    /// RFC 6455 §7.1.2: start the closing handshake on an open connection; an
    /// unfinished one is simply dropped.
    pub fn close(&mut self, key: usize) {
        let deadline_ns = self.now_ns() + self.config.close_timeout.as_nanos() as u64;
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.phase {
            Phase::Open => {
                queue_close(conn, &CLOSE_NORMAL);
                set_phase(&mut self.census, conn, Phase::Closing { deadline_ns, answered: false });
                mark_dirty(&mut self.dirty, key, conn);
            }
            Phase::Connecting | Phase::Handshaking { .. } => {
                set_phase(&mut self.census, conn, Phase::Done);
                self.done.push(key);
                *self.errors.entry("aborted".to_owned()).or_default() += 1;
            }
            Phase::Closing { .. } | Phase::Done => {}
        }
    }

    /// Phase 2: one write per connection with queued bytes (repeated only while the
    /// kernel takes everything offered).
    pub fn flush<H: Handler>(&mut self, handler: &mut H) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.dirty = false;
            if conn.blocked || matches!(conn.phase, Phase::Connecting) {
                continue; // WRITABLE (or the connect completing) will list it again
            }
            let mut failure = None;
            if let Some(tls) = conn.tls.as_deref_mut() {
                // wss://: encrypt the outbox, then write records until WouldBlock.
                let then_close = matches!(conn.phase, Phase::Closing { .. });
                match tls.send(&mut conn.stream, &conn.outbox[conn.written..], then_close) {
                    Ok(sent) => {
                        conn.written += sent.taken;
                        conn.blocked = sent.blocked;
                    }
                    Err(e) => failure = Some(io_kind(&e)),
                }
            } else {
                while conn.written < conn.outbox.len() {
                    match retrying(|| conn.stream.write(&conn.outbox[conn.written..])) {
                        Ok(Some(0)) | Ok(None) => {
                            conn.blocked = true; // the kernel buffer is full: WRITABLE will tell us
                            break;
                        }
                        Ok(Some(n)) => conn.written += n,
                        Err(e) => {
                            failure = Some(io_kind(&e));
                            break;
                        }
                    }
                }
            }
            if conn.written == conn.outbox.len() {
                conn.outbox.clear();
                conn.written = 0;
            } else if conn.written > conn.outbox.len() / 2 {
                conn.outbox.drain(..conn.written); // keep a blocked sender's buffer from creeping
                conn.written = 0;
            }
            if let Some(kind) = failure {
                self.end(key, End::Failed(kind), handler);
            }
        }
    }

    /// Phase 3: drops the connections that finished.
    pub fn reap(&mut self) {
        for key in std::mem::take(&mut self.done) {
            if self.conns.get(key).is_some_and(|c| matches!(c.phase, Phase::Done)) {
                let mut conn = self.conns.remove(key);
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// Phase 4: waits up to `timeout` for readiness, then reads and dispatches.
    pub fn poll<H: Handler>(&mut self, handler: &mut H, timeout: Duration) -> io::Result<()> {
        let mut timeout = timeout;
        if !self.unfinished.is_empty() || self.config.busy_poll {
            timeout = Duration::ZERO; // input is waiting that no new event will announce, or --busy-poll
        } else if self.pending() + self.census.closing > 0 {
            timeout = timeout.min(SWEEP_EVERY);
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            // Not `nb::retrying`: that would wait the whole timeout again. A signal ends
            // this turn with no events, as a timeout would; the caller's loop polls again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // The events are taken out so the dispatch below may borrow the pool mutably.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            if event.token() == TIMER {
                self.timer.clear();
                self.timer_at_ns = u64::MAX;
                continue;
            }
            let key = event.token().0;
            if event.is_writable() || event.is_error() {
                self.on_writable(key, handler);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read(key, event.is_read_closed() || event.is_error(), handler);
            }
        }
        self.events = events;
        for key in std::mem::take(&mut self.unfinished) {
            self.read(key, true, handler);
        }
        self.sweep(handler);
        Ok(())
    }

    /// WRITABLE: the connect finished (or failed), or a blocked socket drained.
    fn on_writable<H: Handler>(&mut self, key: usize, handler: &mut H) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if matches!(conn.phase, Phase::Connecting) {
            match connect_outcome(&conn.stream) {
                Ok(true) => {
                    set_phase(&mut self.census, conn, Phase::Handshaking { response: Vec::new() });
                }
                Ok(false) => return, // spurious wakeup: still connecting
                Err(kind) => return self.end(key, End::Failed(kind), handler),
            }
        }
        conn.blocked = false;
        // A wss:// connection may have records pending with an empty outbox: its
        // ClientHello once the connect completes, or the rest of a blocked flush.
        if conn.written < conn.outbox.len() || conn.tls.as_ref().is_some_and(|t| t.wants_write()) {
            mark_dirty(&mut self.dirty, key, conn);
        }
    }

    /// Reads one connection until the kernel has nothing more (or its budget is spent).
    /// `to_the_end`: the event reported the peer's FIN (or an error), which no later
    /// edge will repeat, so read until WouldBlock or EOF even after a short read.
    fn read<H: Handler>(&mut self, key: usize, to_the_end: bool, handler: &mut H) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if matches!(conn.phase, Phase::Connecting) {
                // An error or hang-up before the connect completed.
                if let Err(kind) = connect_outcome(&conn.stream) {
                    self.end(key, End::Failed(kind), handler);
                }
                return;
            }
            if matches!(conn.phase, Phase::Done) {
                return;
            }
            let answered = matches!(conn.phase, Phase::Closing { answered: true, .. });
            let n = match retrying(|| conn.stream.read(&mut self.scratch)) {
                Ok(Some(0)) => {
                    let end = end_of_stream(&conn.phase);
                    return self.end(key, end, handler);
                }
                Ok(Some(n)) => n,
                Ok(None) => return, // drained: edge-triggered, new data brings a new event
                Err(_) if answered => return self.end(key, End::Clean, handler), // reset after the close handshake
                Err(e) => return self.end(key, End::Failed(io_kind(&e)), handler),
            };
            self.bytes_read += n as u64;
            if answered {
                continue; // RFC 6455 §5.5.1: nothing may follow the server's Close; drop it
            }
            let now_ns = self.start.elapsed().as_nanos() as u64;
            let mut peer_closed = false; // wss://: the server's close_notify came in this read
            let input = match conn.tls.is_some() {
                false => &self.scratch[..n],
                true => match decrypt_read(conn, key, &self.scratch[..n], &mut self.plain, &mut self.dirty) {
                    Ok(closed) => {
                        peer_closed = closed;
                        &self.plain[..]
                    }
                    Err(kind) => return self.end(key, End::Failed(kind), handler),
                },
            };
            if !input.is_empty() {
                let close_timeout_ns = self.config.close_timeout.as_nanos() as u64;
                let outcome = take_input(conn, input, now_ns, close_timeout_ns, &mut self.census, handler);
                if outcome.wrote {
                    mark_dirty(&mut self.dirty, key, conn);
                }
                if let Some(end) = outcome.end {
                    return self.end(key, end, handler);
                }
            }
            if peer_closed {
                // close_notify: the server sends nothing more, as with its FIN.
                let end = end_of_stream(&conn.phase);
                return self.end(key, end, handler);
            }
            if n < self.scratch.len() && !to_the_end {
                // A short read from a TCP socket took everything queued; data (or a
                // FIN) arriving later raises a new edge. Saves one read per wakeup.
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.unfinished.push(key); // fairness: the others get this turn
                return;
            }
        }
    }

    /// Expires connections past their handshake or close deadline.
    fn sweep<H: Handler>(&mut self, handler: &mut H) {
        if self.pending() + self.census.closing == 0 {
            return;
        }
        let now_ns = self.now_ns();
        if now_ns < self.next_sweep_ns {
            return;
        }
        self.next_sweep_ns = now_ns + SWEEP_EVERY.as_nanos() as u64;
        let mut expired = Vec::new();
        for (key, conn) in &self.conns {
            match conn.phase {
                Phase::Connecting | Phase::Handshaking { .. } if now_ns >= conn.deadline_ns => {
                    expired.push((key, Some("handshake_timeout")));
                }
                // Answered but the server kept TCP open: the close itself succeeded.
                Phase::Closing { deadline_ns, answered: true } if now_ns >= deadline_ns => expired.push((key, None)),
                Phase::Closing { deadline_ns, answered: false } if now_ns >= deadline_ns => {
                    expired.push((key, Some("close_timeout")));
                }
                _ => {}
            }
        }
        for (key, failure) in expired {
            let end = failure.map_or(End::Clean, |kind| End::Failed(kind.to_owned()));
            self.end(key, end, handler);
        }
    }

    /// Marks a connection finished: counts a failure, tells the handler, and lists it
    /// for reaping after the next flush (so a Close answer still goes out).
    fn end<H: Handler>(&mut self, key: usize, end: End, handler: &mut H) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if matches!(conn.phase, Phase::Done) {
            return;
        }
        set_phase(&mut self.census, conn, Phase::Done);
        let tag = conn.tag;
        self.done.push(key);
        if let End::Failed(kind) = &end {
            self.count_error(kind.clone());
        }
        handler.on_end(tag, &end);
    }

    fn count_error(&mut self, kind: String) -> String {
        *self.errors.entry(kind.clone()).or_default() += 1;
        kind
    }
}
