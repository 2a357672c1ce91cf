//! The IO shell: one `mio::Poll` loop over the listener, the signal pipe and every
//! client socket. Everything that touches a socket or the clock lives under `server/`.
//!
//! One turn of the loop, in the order `run()` performs it (libuv-style phases):
//!
//! 1. **Wait**: `poll(timeout)`, where the timeout is the nearest deadline (a timer
//!    sweep, an accept pause, the shutdown deadline), or zero when a client still has
//!    unread input from the last turn.
//! 2. **Now**: read the clock once; every deadline this turn is judged against it.
//! 3. **Dispatch** each event: the listener accepts until WouldBlock; a signal starts
//!    the graceful shutdown; a client reads until WouldBlock (capped per turn), feeds
//!    its `Session`, and routes complete messages (`broadcast.rs`). A WRITABLE event
//!    only marks the client for the flush.
//! 4. **Carry-overs**: clients whose read budget ran out last turn read again.
//! 5. **Timers**: when the sweep is due, every session handles its deadlines (handshake
//!    timeout, ping, idle timeout, close grace).
//! 6. **Flush**: every client with queued bytes gets one vectored write (or a few);
//!    WRITABLE interest is registered only where bytes remain.
//! 7. **Reap**: clients marked gone during the turn are removed from the slab, never
//!    mid-dispatch, so a stale event for a reused token cannot hit the wrong client.

mod broadcast;
mod client;
mod history;
pub mod http;
mod nb;
pub mod peers;
mod write_queue;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::chat::names::{percent_decode, NameError};
use crate::chat::{Arrival, Chat, Outbox};
use crate::config::{Config, Mode};
use crate::proto::close::CloseCode;
use crate::proto::handshake::{self, Rejection, Request, Status, Upgrade, SUBPROTOCOL_JSON};
use crate::proto::session::{Event, Phase, Session};
use crate::store::sqlite::SqliteStore;
use client::Client;
use history::History;
use http::{Gauges, Stats};
use nb::{out_of_fds, retrying};
use write_queue::{Shared, Spares};

/// The listening socket's token; client tokens are slab keys, far below it.
const LISTENER: Token = Token(usize::MAX - 1);
/// The signal pipe's token.
const SIGNALS: Token = Token(usize::MAX - 2);
/// Events taken from one `poll` call.
const EVENTS_PER_TURN: usize = 1024;
/// Bytes read per `read` call into the shared scratch buffer.
const SCRATCH_LEN: usize = 64 << 10;
/// Timers are swept at most this often: one pass over all clients costs O(clients), so
/// deadlines are coalesced to this resolution instead of waking once per deadline.
const TIMER_RESOLUTION: Duration = Duration::from_millis(100);
/// With no deadline anywhere (no clients), the loop still wakes this often.
const QUIET_WAKE: Duration = Duration::from_secs(3600);
/// After `accept` fails for lack of file descriptors, wait this long before retrying,
/// so a full fd table cannot make the loop spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running server, before or inside `run()`.
pub struct Server {
    config: Config,                       // every limit, fixed at start
    poll: Poll,                           // the readiness queue: PHP's socket_select(), edge-triggered
    listener: Option<TcpListener>,        // None once shutdown has begun
    local_addr: SocketAddr,               // the bound address (the real port when 0 was asked for)
    signals: Signals,                     // SIGINT/SIGTERM, delivered through a pipe on the same Poll
    clients: Slab<Client>,                // every client socket; key = Token
    chat: Chat,                           // users, names, rooms: what messages mean
    outbox: Outbox,                       // frames the chat produced this read, not yet queued
    history: History,                     // the store and the acks waiting on its commit
    scratch: Vec<u8>,                     // one read buffer shared by all clients
    spares: Spares,                       // empty queue rings and sent chunks' buffers, reused
    dirty: Vec<usize>,                    // clients with bytes to flush this turn
    unfinished: Vec<usize>,               // clients whose read budget ran out before WouldBlock
    gone: Vec<usize>,                     // clients to remove after this turn
    spare_fd: Option<File>,               // reserve descriptor, given up to shed a connection at EMFILE
    now: Instant,                         // the loop's notion of now, read once per turn
    now_ms: u64,                          // the same instant as ms since the epoch, for timestamps
    next_sweep: Instant,                  // when timers are next checked
    accept_paused_until: Option<Instant>, // set after EMFILE/ENFILE
    shutdown_deadline: Option<Instant>,   // set by SIGINT/SIGTERM
    stats: Stats,                         // counters for /metrics
}

impl Server {
    /// Binds the listener and registers it and the signal pipe.
    pub fn bind(config: Config) -> io::Result<Server> {
        let store = match &config.db {
            Some(path) => Some(SqliteStore::open(path, config.history_keep).map_err(io::Error::other)?),
            None => None,
        };
        let history = History::new(store);
        let mut chat = Chat::new(config.chat_limits());
        chat.set_last_id(history.last_id());
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let now = Instant::now();
        Ok(Server {
            chat,
            history,
            config,
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            clients: Slab::new(),
            outbox: Outbox::default(),
            scratch: vec![0; SCRATCH_LEN],
            spares: Spares::default(),
            dirty: Vec::new(),
            unfinished: Vec::new(),
            gone: Vec::new(),
            spare_fd: File::open("/dev/null").ok(),
            now,
            now_ms: wall_clock_ms(),
            next_sweep: now + TIMER_RESOLUTION,
            accept_paused_until: None,
            shutdown_deadline: None,
            stats: Stats::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The loop. Returns after a graceful shutdown.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_TURN);
        let mut turn: u64 = 0;
        while !self.finished() {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue; // a signal arrived; the signal pipe will report it
                }
                return Err(e);
            }
            self.now = Instant::now();
            self.now_ms = wall_clock_ms();
            let carried = std::mem::take(&mut self.unfinished); // last turn's, not this turn's
            turn += 1;
            log::trace!("turn {turn}: {} event(s) after waiting up to {timeout:?}", events.iter().count());
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        log::trace!("listener woke: accepting until WouldBlock");
                        self.accept_all();
                    }
                    SIGNALS => self.on_signals(),
                    Token(key) => {
                        log::trace!(
                            "conn {key}: woke{}{}{}",
                            if event.is_readable() { " readable" } else { "" },
                            if event.is_writable() { " writable" } else { "" },
                            if event.is_read_closed() || event.is_error() { " closed/error" } else { "" },
                        );
                        if event.is_writable() {
                            self.mark_dirty(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_client(key);
                        }
                    }
                }
            }
            self.read_unfinished(carried);
            self.resume_accepting();
            self.sweep_timers();
            self.flush_dirty();
            self.reap();
        }
        self.commit_history();
        log::info!(
            "stopped: {} accepted, {} messages in, {} deliveries, {} slow consumers dropped",
            self.stats.accepted,
            self.stats.messages_in,
            self.stats.deliveries,
            self.stats.slow_consumers
        );
        Ok(())
    }

    /// Done when shutting down and every client is gone, or the flush time is up.
    fn finished(&self) -> bool {
        match self.shutdown_deadline {
            Some(deadline) => self.clients.is_empty() || Instant::now() >= deadline,
            None => false,
        }
    }

    /// Phase 1: how long `poll` may sleep.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unfinished.is_empty() {
            return Some(Duration::ZERO); // input is waiting that no new event will announce
        }
        let mut wake = self.next_sweep;
        if let Some(at) = self.accept_paused_until {
            wake = wake.min(at);
        }
        if let Some(at) = self.shutdown_deadline {
            wake = wake.min(at);
        }
        Some(wake.saturating_duration_since(Instant::now()))
    }

    // ----- accepting ---------------------------------------------------------------

    /// Accepts until WouldBlock (edge-triggered: a connection left in the backlog would
    /// get no second event).
    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return; // resume_accepting() retries when the pause ends
        }
        loop {
            let Some(listener) = &self.listener else { return };
            match retrying(|| listener.accept()) {
                Ok(Some((stream, peer))) => self.admit(stream, peer),
                Ok(None) => return, // backlog empty: the next connection brings a new event
                Err(e) if out_of_fds(&e) => return self.shed_one_connection(&e),
                // ECONNABORTED and friends: that one connection is gone, the rest wait.
                Err(e) => log::warn!("accept failed: {e}"),
            }
        }
    }

    /// Takes an accepted connection into the slab, or answers 503 when full.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.accepted += 1;
        if self.clients.len() >= self.config.max_connections {
            self.stats.refused_full += 1;
            let refusal = Rejection { status: Status::ServiceUnavailable, why: "server is at --max-connections" };
            // Best effort: a fresh socket's send buffer takes this small answer whole.
            let _ = stream.write(&handshake::rejection_response(&refusal));
            log::debug!("refused {peer}: at max connections ({})", self.config.max_connections);
            return;
        }
        let _ = stream.set_nodelay(true); // frames are written whole; do not wait to coalesce
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            log::warn!("cannot register {peer}: {e}");
            return;
        }
        let session = Session::new(key, self.config.session_limits(), self.now);
        self.next_sweep = self.next_sweep.min(session.poll_timeout());
        entry.insert(Client::new(stream, peer, session));
        log::trace!("conn {key}: accepted from {peer}");
        // Its request may already be here; edge-triggered readiness will report it either way.
    }

    /// EMFILE/ENFILE: free the spare descriptor, accept the waiting connection and close
    /// it at once (the client sees a reset rather than a hang), take the spare back, and
    /// pause accepting briefly instead of spinning on an error that will repeat.
    fn shed_one_connection(&mut self, err: &io::Error) {
        self.stats.accept_fd_errors += 1;
        log::warn!("accept: {err}; shedding a connection and pausing accepts for {ACCEPT_BACKOFF:?}");
        self.spare_fd = None;
        if let Some(listener) = &self.listener {
            drop(listener.accept());
        }
        self.spare_fd = File::open("/dev/null").ok();
        self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
    }

    /// Ends an accept pause once it is over, draining what queued up meanwhile.
    fn resume_accepting(&mut self) {
        if self.accept_paused_until.is_some_and(|until| self.now >= until) {
            self.accept_paused_until = None;
            self.accept_all();
        }
    }

    // ----- reading -------------------------------------------------------------------

    /// Reads from one client until WouldBlock or its per-turn budget is spent.
    fn read_client(&mut self, key: usize) {
        let mut budget = self.config.read_budget;
        let mut scratch = std::mem::take(&mut self.scratch);
        // The slot may be vacant: a stale event for a client reaped in an earlier turn.
        while let Some(client) = self.clients.get_mut(key) {
            let read = match retrying(|| client.stream.read(&mut scratch)) {
                Ok(Some(0)) => {
                    self.on_eof(key);
                    break;
                }
                Ok(Some(n)) => n,
                Ok(None) => break, // drained: edge-triggered, the next data brings a new event
                Err(e) => {
                    log::debug!("conn {key}: read error: {e}");
                    self.mark_gone(key);
                    break;
                }
            };
            self.stats.bytes_in += read as u64;
            log::trace!("conn {key}: read {read} bytes");
            self.take_input(key, &mut scratch[..read]);
            budget = budget.saturating_sub(read);
            if budget == 0 {
                // Fairness: let the other clients have this turn; come back next turn.
                self.unfinished.push(key);
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Phase 4: clients that still had input when their budget ran out last turn. (Those
    /// cut short in this turn's dispatch wait for the next turn: that is the fairness.)
    fn read_unfinished(&mut self, carried: Vec<usize>) {
        for key in carried {
            self.read_client(key);
        }
    }

    /// The peer closed its side.
    fn on_eof(&mut self, key: usize) {
        let client = &self.clients[key];
        if client.session.is_open() {
            // RFC 6455 §7.1.5: no Close frame seen, so the close code is 1006 (abnormal).
            log::debug!("conn {key}: {} closed the TCP connection without a Close frame (1006)", client.peer);
        }
        self.mark_gone(key);
    }

    /// Feeds freshly read bytes to the client's session, together with any partial head
    /// or frame left from before; keeps whatever is still incomplete.
    fn take_input(&mut self, key: usize, fresh: &mut [u8]) {
        let mut inbox = std::mem::take(&mut self.clients[key].inbox);
        let consumed = if inbox.is_empty() {
            let used = self.consume(key, fresh);
            inbox.extend_from_slice(&fresh[used..]);
            used
        } else {
            inbox.extend_from_slice(fresh);
            let used = self.consume(key, &mut inbox);
            inbox.drain(..used);
            used
        };
        log::trace!("conn {key}: consumed {consumed} bytes, {} kept for later", inbox.len());
        if inbox.is_empty() {
            inbox = Vec::new(); // an idle client holds no read buffer
        }
        if let Some(client) = self.clients.get_mut(key) {
            client.inbox = inbox;
            self.next_sweep = self.next_sweep.min(client.session.poll_timeout());
        }
        self.drain_outbox();
    }

    /// Runs the session over `input` until it needs more bytes. Returns bytes consumed.
    fn consume(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut used = 0;
        let mut frames = 0;
        while used < input.len() {
            let client = &mut self.clients[key];
            match client.session.phase() {
                Phase::Connecting { .. } => match self.handshake(key, &input[used..]) {
                    Some(head) => used += head,
                    None => break,
                },
                Phase::Open | Phase::Closing { .. } => {
                    let Some((event, n)) = client.session.next(&mut input[used..], self.now) else { break };
                    used += n;
                    frames += 1;
                    if let Event::Message(kind, payload) = event {
                        self.on_message(key, kind, &payload);
                        continue;
                    }
                    // A control answer (pong, close) or a state change: messages routed
                    // before it go first, so the sender's own stream stays in order.
                    self.drain_outbox();
                    self.flush_session(key);
                    if event == Event::Closed {
                        self.on_closed(key);
                    }
                }
                // CLOSED: we only wait for the peer's FIN; whatever else arrives is dropped.
                Phase::Closed { .. } => return input.len(),
            }
        }
        if frames > 0 {
            log::trace!("conn {key}: {frames} frame(s) decoded");
        }
        used
    }

    /// CONNECTING: tries to parse the request head. Returns the head's length once
    /// complete (the bytes after it are frames), or `None` to wait for more.
    fn handshake(&mut self, key: usize, input: &[u8]) -> Option<usize> {
        let parsed = handshake::parse_request(input, &self.config.request_limits(), &self.config.allow_origins);
        let client = &mut self.clients[key];
        let now = self.now;
        match parsed {
            Ok(None) => None,
            Err(rejection) => {
                self.stats.rejected += 1;
                client.session.reject(&rejection, now);
                self.flush_session(key);
                Some(input.len())
            }
            Ok(Some((Request::Http { path }, _))) => {
                self.stats.http_requests += 1;
                let response = http::answer(&path, &self.stats, self.gauges());
                let client = &mut self.clients[key];
                client.session.respond_http(response, now);
                self.flush_session(key);
                Some(input.len()) // one request per connection: anything pipelined after it is dropped
            }
            Ok(Some((Request::Upgrade(upgrade), used))) => {
                if let Err(rejection) = self.admit_user(key, &upgrade) {
                    self.stats.rejected += 1;
                    self.clients[key].session.reject(&rejection, now);
                    self.flush_session(key);
                    return Some(input.len());
                }
                Some(used)
            }
        }
    }

    /// A valid upgrade: check the requested name, send the 101, and join the chat.
    /// Raw clients learn of a bad or taken name before the upgrade (400, 409); JSON
    /// clients are upgraded and told with an `error` envelope.
    fn admit_user(&mut self, key: usize, upgrade: &Upgrade) -> Result<(), Rejection> {
        let json = upgrade.protocol.as_deref() == Some(SUBPROTOCOL_JSON);
        let history = match upgrade.query_param("history").map(str::parse::<usize>) {
            Some(Err(_)) => return Err(Rejection { status: Status::BadRequest, why: "history must be a count" }),
            Some(Ok(n)) => Some(n),
            None => None,
        };
        let name = match upgrade.query_param("name").map(percent_decode) {
            Some(None) => {
                return Err(Rejection { status: Status::BadRequest, why: "name is not valid percent-encoding" })
            }
            Some(Some(name)) => Some(name),
            None => None,
        };
        if let (Some(name), false) = (&name, json) {
            match self.chat.name_available(name) {
                Err(NameError::Invalid) => return Err(Rejection { status: Status::BadRequest, why: "invalid name" }),
                Err(NameError::Taken) => return Err(Rejection { status: Status::Conflict, why: "name taken" }),
                Ok(()) => {}
            }
        }
        self.stats.upgrades += 1;
        let client = &mut self.clients[key];
        client.session.accept(self.now);
        log::debug!("conn {key}: {} joined room {}", client.peer, upgrade.room);
        self.send_own(key, handshake::switching_protocols(upgrade));
        if self.config.mode == Mode::Relay {
            let arrival = Arrival { conn: key, json, name: name.as_deref(), room: &upgrade.room, history };
            self.chat.connect(arrival, self.now_ms, &mut self.outbox);
        }
        Ok(())
    }

    /// The session left OPEN on its own (the peer closed, or broke a rule).
    fn on_closed(&mut self, key: usize) {
        let client = &self.clients[key];
        if let Some(violation) = client.session.violation() {
            self.stats.protocol_errors += 1;
            log::debug!("conn {key}: {} broke the protocol: {violation}", client.peer);
        }
        self.part(key);
    }

    // ----- sending -------------------------------------------------------------------

    /// Queues bytes meant for this client alone (a 101, a pong, a close).
    fn send_own(&mut self, key: usize, bytes: Vec<u8>) {
        self.clients[key].queue.push(Shared::new(bytes), &mut self.spares);
        self.mark_dirty(key);
    }

    /// Moves the session's outbound bytes to the queue.
    /// Moves the session's outbound bytes to the queue. Once they include the session's
    /// last words (a Close, an HTTP answer) the queue is sealed: RFC 6455 §5.5.1 allows
    /// no data frame after a Close. Data routed *before* it (a message that preceded a
    /// protocol error in the same read) still goes out first.
    fn flush_session(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let bytes = client.session.take_outbound();
        client.sealed |= matches!(client.session.phase(), Phase::Closing { .. } | Phase::Closed { .. });
        if let Some(bytes) = bytes {
            self.send_own(key, bytes);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Phase 6: one flush per dirty client, then interest derived from what is left.
    fn flush_dirty(&mut self) {
        self.drain_outbox(); // presence from timeouts, shutdown and departures
        self.commit_history(); // before any byte of this turn leaves: what anyone receives is stored
        for key in std::mem::take(&mut self.dirty) {
            let Some(client) = self.clients.get_mut(key) else { continue };
            client.dirty = false;
            match client.queue.write_to(&mut client.stream, &mut self.spares) {
                Ok(written) => {
                    self.stats.bytes_out += written as u64;
                    log::trace!("conn {key}: flushed {written} bytes, {} left", client.queue.len());
                }
                Err(e) => {
                    log::debug!("conn {key}: write error: {e}");
                    self.mark_gone(key);
                    continue;
                }
            }
            client.shut_write_if_done();
            if let Err(e) = client.sync_interest(self.poll.registry(), Token(key)) {
                log::debug!("conn {key}: reregister failed: {e}");
                self.mark_gone(key);
            }
        }
        for buffer in self.spares.take_buffers() {
            self.outbox.recycle(buffer); // the next turn's chunks are written into these
        }
    }

    // ----- timers, shutdown, reaping -----------------------------------------------

    /// Phase 5: every session acts on its passed deadlines; the next sweep is set to the
    /// nearest deadline left, no sooner than the timer resolution.
    fn sweep_timers(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        let now = self.now;
        let mut nearest = now + QUIET_WAKE;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            let was_open = client.session.is_open();
            client.session.handle_timeout(now);
            if was_open && !client.session.is_open() {
                self.stats.idle_timeouts += 1;
            }
            if client.expired(now) {
                log::debug!("conn {key}: linger time over, dropping");
                self.mark_gone(key);
                continue;
            }
            nearest = nearest.min(client.session.poll_timeout());
            self.flush_session(key);
            self.part_unless_open(key);
        }
        self.next_sweep = nearest.max(now + TIMER_RESOLUTION);
    }

    /// SIGINT/SIGTERM: stop accepting, close every open client with 1001, and give the
    /// closes `--shutdown-timeout` to go out.
    fn on_signals(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() || self.shutdown_deadline.is_some() {
            return;
        }
        log::info!("signal {signals:?}: shutting down, closing {} client(s)", self.clients.len());
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout);
        let now = self.now;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            match client.session.phase() {
                Phase::Open => client.session.close(CloseCode::GOING_AWAY, "server shutting down", now),
                Phase::Connecting { .. } => self.mark_gone(key),
                Phase::Closing { .. } | Phase::Closed { .. } => {}
            }
            self.flush_session(key);
            self.part_unless_open(key);
        }
    }

    /// Marks a client for removal after this turn; it leaves the chat now, so its rooms
    /// hear of it in this turn's flush.
    fn mark_gone(&mut self, key: usize) {
        self.part(key);
        self.gone.push(key);
    }

    /// Phase 7: remove the clients marked gone this turn.
    fn reap(&mut self) {
        for key in std::mem::take(&mut self.gone) {
            if !self.clients.contains(key) {
                continue; // marked twice
            }
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.stream);
            log::trace!("conn {key}: reaped ({})", client.peer);
        }
    }

    fn part_unless_open(&mut self, key: usize) {
        if self.clients.get(key).is_some_and(|c| !c.session.is_open()) {
            self.part(key);
        }
    }

    /// Takes the client out of the chat, however it is leaving (Close, reset, slow
    /// consumer, timeout, shutdown): its rooms are told, its name is free, it gets no
    /// more messages. Idempotent.
    fn part(&mut self, key: usize) {
        if self.chat.has(key) {
            self.chat.disconnect(key, &mut self.outbox);
        }
    }

    /// Gauges for /metrics.
    fn gauges(&self) -> Gauges {
        let mut gauges = Gauges { connections: self.clients.len(), rooms: self.chat.room_count(), ..Gauges::default() };
        for (_, client) in &self.clients {
            gauges.open += usize::from(client.session.is_open());
            gauges.queued_bytes += client.queue.len();
            gauges.buffered_bytes += client.buffered_bytes();
        }
        gauges
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Raises the open-file soft limit to the hard limit, so `--max-connections` is not cut
/// short by a default of 1024. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
