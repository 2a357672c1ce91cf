//! The IO shell: one `mio::Poll` loop over the listener, the signal pipe and every
//! client socket. Everything that touches a socket or the clock lives under `server/`.
//!
//! One turn of the loop, in the order `run()` performs it (libuv-style phases), each
//! phase one method and one line of `run()`:
//!
//! 1. **Wait** (`wait`): `poll(timeout)`, where the timeout is the nearest deadline (a
//!    timer sweep, the end of an accept pause, the shutdown deadline), or zero when a
//!    client still has unread input from the last turn.
//! 2. **Now** (`tick`): read the clock once; every deadline this turn is judged against
//!    it. The clients whose read budget ran out last turn become this turn's carry-overs.
//! 3. **Dispatch** (`dispatch`) each event: the listener accepts until WouldBlock
//!    (`accept_all`); a signal starts the graceful shutdown; a client reads until
//!    WouldBlock or its budget is spent (`read_client`), feeds its `Session`, hands
//!    complete messages to the chat, and routes the outbox into queues
//!    (`broadcast.rs`). A WRITABLE event only marks the client for the flush.
//! 4. **Carry-overs** (`read_carry_overs`): the clients cut short last turn read again.
//! 5. **Accept pause** (`resume_accepting`): after EMFILE, accepting resumes when the
//!    pause is over.
//! 6. **Timers** (`sweep_timers`): when the sweep is due, every session handles its
//!    deadlines (handshake timeout, ping, idle timeout, close grace).
//! 7. **Commit** (`commit`): what timers, departures and shutdown produced is routed, then
//!    this turn's records are committed to history in one transaction, before any byte
//!    of the turn leaves; acks follow.
//! 8. **Flush** (`flush`): every client with queued bytes gets one vectored write (or a
//!    few); WRITABLE interest is registered only where bytes remain.
//! 9. **Reap** (`reap`): clients marked gone during the turn are removed from the slab,
//!    never mid-dispatch, so a stale event for a reused token cannot hit the wrong client.
//!
//! This file is longer than the others (about 600 lines) on purpose: it is the loop and
//! the read path, kept together so a reader follows a turn top to bottom in one place.
//! Routing (`broadcast.rs`), the listener, the history commit and the write queues are
//! parts with their own data beside it.

mod admin;
mod broadcast;
mod client;
mod history;
pub mod http;
mod listener;
pub mod metrics;
pub mod peers;
pub mod tls;
mod write_queue;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::chat::admission::{Admission, Refusal};
use crate::chat::auth::redact_token;
use crate::chat::json::Envelope;
use crate::chat::{Arrival, Chat};
use crate::config::{Config, Mode};
use crate::proto::close::CloseCode;
use crate::proto::deflate::{self, Agreed};
use crate::proto::handshake::{self, Rejection, Request, Status, Upgrade, SUBPROTOCOL_JSON};
use crate::proto::message::Message;
use crate::proto::session::{Event, Phase, Session};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::sys::nb::retrying;
use broadcast::Router;
use client::{Client, Upgraded};
use history::History;
use listener::{Accepted, Listener};
use metrics::Stats;
use peers::{client_addr, PeerLimits};
use tls::{Certs, ReadStop, TlsSession};

/// The listening socket's token; client tokens are slab keys, far below it.
const LISTENER: Token = Token(usize::MAX - 1);
/// The signal pipe's token.
const SIGNALS: Token = Token(usize::MAX - 2);
/// The admin port's listening socket.
const ADMIN_LISTENER: Token = Token(usize::MAX - 3);
/// Events taken from one `poll` call.
const EVENTS_PER_TURN: usize = 1024;
/// Bytes read per `read` call into the shared scratch buffer.
const SCRATCH_LEN: usize = 64 << 10;
/// Timers are swept at most this often: one pass over all clients costs O(clients), so
/// deadlines are coalesced to this resolution instead of waking once per deadline.
const TIMER_RESOLUTION: Duration = Duration::from_millis(100);
/// With no deadline anywhere (no clients), the loop still wakes this often.
const QUIET_WAKE: Duration = Duration::from_secs(3600);

/// A running server, before or inside `run()`.
pub struct Server {
    config: Config,                     // every limit, fixed at start
    poll: Poll,                         // the readiness queue: PHP's socket_select(), edge-triggered
    listener: Listener,                 // PHP's $master socket, and the accept pause after EMFILE
    admin: Option<Listener>,            // the admin port (--admin-listen), unless off
    admin_token: Option<String>,        // with --admin-token-file: the bearer token every admin request needs
    admin_clients: usize,               // admin connections in the slab (not counted in --max-connections)
    signals: Signals,                   // SIGINT/SIGTERM (shut down), SIGHUP (reload), through a pipe on the same Poll
    certs: Option<Certs>,               // with --tls-cert: the pair new TLS handshakes use
    clients: Slab<Client>,              // PHP's $clients array; key = Token
    chat: Chat,                         // users, names, rooms: what messages mean
    router: Router,                     // the outbox, routed into queues (encode once, share)
    history: History,                   // the store, the commit, and the acks waiting on it
    scratch: Vec<u8>,                   // one read buffer shared by all clients
    plaintext: Vec<u8>,                 // what TLS decrypted from one client's read, shared likewise
    carried: Vec<usize>,                // clients cut short last turn: read in the carry-over phase
    unfinished: Vec<usize>,             // clients cut short this turn: carried over to the next
    gone: Vec<usize>,                   // clients to remove after this turn
    now: Instant,                       // the loop's notion of now, read once per turn
    now_ms: u64,                        // the same instant as ms since the epoch, for timestamps
    turn: u64,                          // turns so far, for trace lines
    next_sweep: Instant,                // when timers are next checked
    shutdown_deadline: Option<Instant>, // set by SIGINT/SIGTERM
    peers: PeerLimits,                  // open connections and upgrade rate per client address
    loopback_exempt: bool,              // per-address limits spare loopback (neither flag given)
    stats: Stats,                       // counters for /metrics
}

impl Server {
    /// Opens the history store, binds the listener and registers it and the signal pipe.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let listener = Listener::bind(config.listen, poll.registry(), LISTENER)
            .map_err(|e| bind_error(e, "--listen", config.listen))?;
        let (admin, admin_token) = match config.admin().map_err(io::Error::other)? {
            Some((addr, token)) => {
                let admin = Listener::bind(addr, poll.registry(), ADMIN_LISTENER)
                    .map_err(|e| bind_error(e, "--admin-listen", addr))?;
                (Some(admin), token)
            }
            None => (None, None),
        };
        let certs = match config.tls() {
            Some(paths) => Some(Certs::open(paths).map_err(io::Error::other)?),
            None => None,
        };
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let store: Option<Box<dyn Store>> = match config.history_db() {
            Some(path) => Some(Box::new(SqliteStore::open(path, config.history_keep).map_err(io::Error::other)?)),
            None => None,
        };
        let history = History::new(store, config.history_max);
        let access = config.access().map_err(io::Error::other)?;
        if access.auth.as_ref().is_some_and(|auth| auth.short_secret()) {
            log::warn!("the JWT secret is shorter than 32 bytes (RFC 7518 §3.2): use a longer one");
        }
        let mut chat = Chat::new(config.chat_limits()).with_access(access);
        let (per_ip, upgrade_rate, loopback_exempt) = config.peer_limits();
        chat.set_last_id(history.last_id());
        let now = Instant::now();
        Ok(Server {
            chat,
            history,
            router: Router::new(config.effective_max_queue(), config.deflate_threshold),
            config,
            poll,
            listener,
            admin,
            admin_token,
            admin_clients: 0,
            signals,
            certs,
            clients: Slab::new(),
            scratch: vec![0; SCRATCH_LEN],
            plaintext: Vec::new(),
            carried: Vec::new(),
            unfinished: Vec::new(),
            gone: Vec::new(),
            now,
            now_ms: wall_clock_ms(),
            turn: 0,
            next_sweep: now + TIMER_RESOLUTION,
            shutdown_deadline: None,
            peers: PeerLimits::new(per_ip, upgrade_rate),
            loopback_exempt,
            stats: Stats::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The admin port's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Listener::local_addr)
    }

    /// `wss` with TLS, else `ws`: for the listening log line.
    pub fn scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "wss"
        } else {
            "ws"
        }
    }

    /// The loop: the phases of the module doc, in order. Returns after a graceful
    /// shutdown.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_TURN);
        while !self.finished() {
            self.wait(&mut events)?; // 1
            self.tick(); // 2
            self.dispatch(&events); // 3
            self.read_carry_overs(); // 4
            self.resume_accepting(); // 5
            self.sweep_timers(); // 6
            self.commit(); // 7
            self.flush(); // 8
            self.reap(); // 9
        }
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
            Some(deadline) => self.clients.is_empty() || self.now >= deadline,
            None => false,
        }
    }

    /// Phase 1: sleeps in `poll` until a socket is ready or the nearest deadline.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let before_sleep = Instant::now(); // the turn's end: for /metrics, and to size the sleep
        if self.turn > 0 {
            self.stats.turn_took(before_sleep - self.now);
        }
        let timeout = self.poll_timeout(before_sleep);
        match self.poll.poll(events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(), // the signal pipe will report it
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        self.turn += 1;
        log::trace!("turn {}: wait: woke, timeout was {}", self.turn, Ms(timeout));
        Ok(())
    }

    /// How long `poll` may sleep: until the nearest deadline.
    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.unfinished.is_empty() {
            return Duration::ZERO; // input is waiting that no new event will announce
        }
        let deadlines = [Some(self.next_sweep), self.listener.paused_until(), self.shutdown_deadline];
        let wake = deadlines.into_iter().flatten().min().unwrap_or(self.next_sweep);
        wake.saturating_duration_since(now)
    }

    /// Phase 2: the clock, read once for the whole turn; last turn's cut-short clients
    /// become this turn's carry-overs.
    fn tick(&mut self) {
        let last = self.now;
        self.now = Instant::now();
        log::trace!("now: {} since the last turn's", Ms(self.now - last));
        self.now_ms = wall_clock_ms();
        self.carried = std::mem::take(&mut self.unfinished);
    }

    /// Phase 3: one handler per event.
    fn dispatch(&mut self, events: &Events) {
        log::trace!("dispatch: {} event(s)", events.iter().count());
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(),
                ADMIN_LISTENER => self.accept_admin(),
                SIGNALS => self.on_signals(),
                Token(key) => {
                    log::trace!(
                        "conn {key}: woke{}{}{}",
                        if event.is_readable() { " readable" } else { "" },
                        if event.is_writable() { " writable" } else { "" },
                        if event.is_read_closed() || event.is_error() { " closed/error" } else { "" },
                    );
                    if event.is_writable() {
                        self.router.mark_dirty(&mut self.clients, key);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_client(key);
                    }
                }
            }
        }
    }

    // ----- accepting ---------------------------------------------------------------

    /// Accepts until WouldBlock (edge-triggered: a connection left in the backlog would
    /// get no second event).
    fn accept_all(&mut self) {
        log::trace!("listener woke: accepting until WouldBlock");
        loop {
            match self.listener.accept(self.now) {
                Accepted::Connection(stream, peer) => self.admit(stream, peer),
                Accepted::Drained => return,
                Accepted::Shed => return self.stats.accept_fd_errors += 1,
            }
        }
    }

    /// Takes an accepted connection into the slab, or answers 503 when full, or 429 when
    /// its address is over its limits (judged here unless it is a trusted proxy, whose
    /// clients are judged once their address is known, at the request head).
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.accepted += 1;
        let refusal = if self.clients.len() - self.admin_clients >= self.config.max_connections {
            self.stats.refused_full += 1;
            Some(Rejection { status: Status::ServiceUnavailable, why: "server is at --max-connections" })
        } else if self.trusted(peer.ip()) {
            None
        } else {
            self.count_address(peer.ip().to_canonical()).err()
        };
        if let Some(refusal) = refusal {
            self.stats.refused(refusal.status.code());
            // Best effort: a fresh socket's send buffer takes this small answer whole. A
            // TLS client could not read it before a handshake, so it is simply closed.
            if self.certs.is_none() {
                let _ = stream.write(&handshake::rejection_response(&refusal));
            }
            log::debug!("refused {peer}: {}", refusal.why);
            return;
        }
        let tls = match self.certs.as_ref().map(Certs::accept) {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => return log::warn!("cannot start TLS for {peer}: {e}"),
        };
        let counted = (!self.trusted(peer.ip())).then(|| peer.ip().to_canonical()).filter(|&ip| self.limited(ip));
        let _ = stream.set_nodelay(true); // frames are written whole; do not wait to coalesce
        if let Some(client) = self.insert(stream, peer, tls) {
            client.counted = counted;
        }
    }

    /// Registers a new connection and gives it a slot (PHP's `$clients[] = $socket`), in
    /// CONNECTING with its handshake deadline. Its request may already be here;
    /// edge-triggered readiness will report it either way.
    fn insert(&mut self, mut stream: TcpStream, peer: SocketAddr, tls: Option<TlsSession>) -> Option<&mut Client> {
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            log::warn!("cannot register {peer}: {e}");
            return None;
        }
        let session = Session::new(key, self.config.session_limits(), self.now);
        self.next_sweep = self.next_sweep.min(session.poll_timeout());
        log::trace!("conn {key}: accepted from {peer}");
        Some(entry.insert(Client::new(stream, peer, session, tls)))
    }

    /// The admin port: accepts until WouldBlock, each connection into the slab beside the
    /// public ones but outside `--max-connections` (at most `ADMIN_CONNECTIONS_MAX`).
    fn accept_admin(&mut self) {
        loop {
            let Some(admin) = self.admin.as_mut() else { return };
            let (mut stream, peer) = match admin.accept(self.now) {
                Accepted::Connection(stream, peer) => (stream, peer),
                Accepted::Drained => return,
                Accepted::Shed => return self.stats.accept_fd_errors += 1,
            };
            if self.admin_clients >= admin::ADMIN_CONNECTIONS_MAX {
                let refusal = Rejection { status: Status::ServiceUnavailable, why: "too many admin connections" };
                let _ = stream.write(&handshake::rejection_response(&refusal));
                continue;
            }
            if let Some(client) = self.insert(stream, peer, None) {
                client.admin = true;
                self.admin_clients += 1;
            }
        }
    }

    /// Is `ip` a reverse proxy whose forwarding headers we believe (`--trust-proxy`)?
    fn trusted(&self, ip: IpAddr) -> bool {
        self.config.trust_proxy.iter().any(|range| range.contains(ip))
    }

    /// Do the per-address limits apply to `ip`? (Loopback is exempt by default.)
    fn limited(&self, ip: IpAddr) -> bool {
        !(self.loopback_exempt && ip.is_loopback())
    }

    /// Counts a new connection from client address `ip` against its limits, or refuses
    /// it with 429 (logged at most once a second per address).
    fn count_address(&mut self, ip: IpAddr) -> Result<(), Rejection> {
        if !self.limited(ip) {
            return Ok(());
        }
        let Err(refusal) = self.peers.admit(ip, self.now) else { return Ok(()) };
        self.stats.refused_per_address += 1;
        if self.peers.should_log(ip, self.now) {
            log::warn!("refused {ip}: {refusal} (429)");
        }
        Err(Rejection { status: Status::TooManyRequests, why: refusal.reason() })
    }

    /// Phase 5: ends an accept pause once it is over, draining what queued up meanwhile.
    fn resume_accepting(&mut self) {
        if self.listener.resume_if_due(self.now) {
            log::trace!("accept pause: over, accepting");
            self.accept_all();
        }
    }

    // ----- reading -------------------------------------------------------------------

    /// Reads from one client until WouldBlock or its per-turn budget is spent, then
    /// routes what the input produced.
    fn read_client(&mut self, key: usize) {
        if self.clients.get(key).is_some_and(|client| client.tls.is_some()) {
            return self.read_tls_client(key);
        }
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
            client.traffic.bytes_in += read as u64;
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

    /// A TLS client: ciphertext until WouldBlock or the budget, decrypted into the shared
    /// plaintext buffer, which then goes the way a plain client's bytes go. A read can
    /// also make TLS records to send (the handshake): the client is flushed this turn.
    fn read_tls_client(&mut self, key: usize) {
        let (mut scratch, mut plaintext) = (std::mem::take(&mut self.scratch), std::mem::take(&mut self.plaintext));
        let client = &mut self.clients[key];
        let Some(tls) = client.tls.as_mut() else { return };
        let result = tls.read_from(&mut client.stream, &mut scratch, &mut plaintext, self.config.read_budget);
        if client.tls_wants_write() {
            self.router.mark_dirty(&mut self.clients, key);
        }
        match result {
            Ok(outcome) => {
                self.stats.bytes_in += outcome.ciphertext as u64;
                self.clients[key].traffic.bytes_in += outcome.ciphertext as u64;
                log::trace!("conn {key}: read {} bytes of TLS, {} of plaintext", outcome.ciphertext, outcome.plaintext);
                if !plaintext.is_empty() {
                    self.take_input(key, &mut plaintext);
                }
                match outcome.stop {
                    ReadStop::Budget => self.unfinished.push(key),
                    ReadStop::CloseNotify | ReadStop::Eof => self.on_eof(key),
                    ReadStop::WouldBlock => {} // edge-triggered: the next data brings a new event
                }
            }
            Err(e) => {
                // Any alert rustls queued goes out in this turn's flush, before the reap.
                log::debug!("conn {key}: TLS: {e}");
                self.mark_gone(key);
            }
        }
        plaintext.clear();
        (self.scratch, self.plaintext) = (scratch, plaintext);
    }

    /// Phase 4: clients that still had input when their budget ran out last turn. (Those
    /// cut short in this turn's dispatch wait for the next turn: that is the fairness.)
    fn read_carry_overs(&mut self) {
        let carried = std::mem::take(&mut self.carried);
        if !carried.is_empty() {
            log::trace!("carry-overs: {} client(s) read again", carried.len());
        }
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
    /// or frame left from before; keeps whatever is still incomplete; then routes the
    /// outbox (one read's messages to one room become one shared chunk).
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
        self.route();
    }

    /// Runs the session over `input` until it needs more bytes. Returns bytes consumed.
    fn consume(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut used = 0;
        let mut frames = 0;
        while used < input.len() {
            let client = &mut self.clients[key];
            match client.session.phase() {
                Phase::Connecting { .. } if client.admin => match self.on_admin_request(key, &input[used..]) {
                    Some(request) => used += request,
                    None => break,
                },
                Phase::Connecting { .. } => match self.on_request_head(key, &input[used..]) {
                    Some(head) => used += head,
                    None => break,
                },
                Phase::Open | Phase::Closing { .. } => {
                    let Some((event, n)) = client.session.next(&mut input[used..], self.now) else { break };
                    used += n;
                    frames += 1;
                    match event {
                        Event::Message(message) => self.on_message(key, &message),
                        // A pong, a Close or nothing: in order after the messages before it.
                        Event::Progress => client.session_output_to(key, self.router.outbox()),
                        Event::Closed => self.on_closed(key),
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
    fn on_request_head(&mut self, key: usize, input: &[u8]) -> Option<usize> {
        let parsed = handshake::parse_request(input, &self.config.request_limits(), &self.config.allow_origins);
        let answer = match parsed {
            Ok(None) => return None,
            Ok(Some((Request::Upgrade(upgrade), used))) => match self.upgrade(key, &upgrade) {
                Ok(()) => return Some(used),
                Err(rejection) => Err(rejection),
            },
            Ok(Some((Request::Http { path, head }, _))) => Ok((path, head)),
            Err(rejection) => Err(rejection),
        };
        let client = &mut self.clients[key];
        match answer {
            Ok((path, head)) => {
                self.stats.http_requests += 1;
                let mut response = http::answer(&path);
                if head {
                    handshake::strip_body(&mut response); // RFC 9110 §9.3.2: the GET answer's head only
                }
                client.session.respond_http(response, self.now);
            }
            Err(rejection) => {
                self.stats.rejected += 1;
                self.stats.refused(rejection.status.code());
                if rejection.status != Status::TooManyRequests {
                    // (429s are logged at most once a second per address, where they are decided)
                    log::info!(target: "pollcast::access", "refused {} {} {}", client.addr, rejection.status.code(), rejection.why);
                }
                client.session.reject(&rejection, self.now);
            }
        }
        self.clients[key].session_output_to(key, self.router.outbox());
        Some(input.len()) // one request per connection: anything pipelined after it is dropped
    }

    /// A valid upgrade: the client's address (behind a trusted proxy) against its
    /// limits, then the chat judges the token, the room and the name; then the 101, then
    /// the chat. A raw client is refused with an HTTP status (400, 401, 403, 409, 429);
    /// a JSON client refused for its token or room is upgraded, told with one `error`
    /// and closed with 4401 or 4403, because a browser cannot read an HTTP status.
    fn upgrade(&mut self, key: usize, upgrade: &Upgrade) -> Result<(), Rejection> {
        let agreed = self.negotiate_deflate(key, upgrade)?;
        let peer = self.clients[key].peer.ip();
        if self.trusted(peer) {
            let (xff, fwd) = (str_refs(&upgrade.forwarded_for), str_refs(&upgrade.forwarded));
            let addr = client_addr(peer, &self.config.trust_proxy, &xff, &fwd).to_canonical();
            self.count_address(addr)?;
            let counted = self.limited(addr).then_some(addr);
            let client = &mut self.clients[key];
            (client.addr, client.counted) = (addr, counted);
        }
        if log::log_enabled!(log::Level::Debug) {
            let target = format!("{}?{}", upgrade.path, upgrade.query);
            log::debug!("conn {key}: {} upgrade {}", self.clients[key].addr, redact_token(&target));
        }
        let json = upgrade.protocol.as_deref() == Some(SUBPROTOCOL_JSON);
        let now_secs = self.now_ms / 1000;
        let admitted = self.chat.admit(&upgrade.path, &upgrade.query, json, upgrade.authorization.as_deref(), now_secs);
        let admission = match admitted {
            Ok(admission) => admission,
            Err(refusal @ (Refusal::Unauthorized(_) | Refusal::Forbidden(_))) if json => {
                self.refuse_after_upgrade(key, upgrade, refusal);
                return Ok(());
            }
            Err(refusal) => {
                self.stats.refused_auth +=
                    u64::from(matches!(refusal, Refusal::Unauthorized(_) | Refusal::Forbidden(_)));
                return Err(rejection(refusal));
            }
        };
        self.stats.upgrades += 1;
        let client = &mut self.clients[key];
        if let Some(agreed) = agreed {
            self.stats.deflate_upgrades += 1;
            client.session.use_deflate(agreed);
        }
        client.session.accept(self.now);
        let user = admission.identity.as_ref().map(|identity| identity.user.clone());
        let user = user.or_else(|| admission.name.clone()).unwrap_or_default();
        let deflate = agreed.is_some();
        client.upgraded = Some(Upgraded { at: self.now, room: admission.room.clone(), user, json, deflate });
        log::debug!("conn {key}: {} joined room {}", client.addr, admission.room);
        let extensions = agreed.map(|agreed| agreed.response_header());
        self.router.outbox().own(key, handshake::switching_protocols(upgrade, extensions.as_deref()), false);
        if self.config.mode == Mode::Relay {
            let Admission { room, json, name, history, identity } = &admission;
            let (name, identity) = (name.as_deref(), identity.as_ref());
            let rate_limited = self.config.rate_limited(self.clients[key].addr);
            // Broadcasts go compressed to members whose window fits any message (the
            // policy for smaller windows is in chat/outbox.rs).
            let deflate = agreed.is_some_and(|agreed| agreed.may_compress(usize::MAX));
            let history = *history;
            let arrival = Arrival { conn: key, json: *json, name, room, history, identity, rate_limited, deflate };
            self.chat.connect(arrival, self.now_ms, self.router.outbox());
            self.schedule_expiry();
        }
        Ok(())
    }

    /// A JSON client refused for its token or its room: upgraded, told why in one
    /// `error`, closed with 4401 (unauthorized) or 4403 (forbidden). It never joins the
    /// chat, so it receives nothing else, and what it sends is dropped (CLOSING).
    fn refuse_after_upgrade(&mut self, key: usize, upgrade: &Upgrade, refusal: Refusal) {
        self.stats.refused_auth += 1;
        let (code, status) = match refusal {
            Refusal::Forbidden(_) => (CloseCode::FORBIDDEN, Status::Forbidden),
            _ => (CloseCode::UNAUTHORIZED, Status::Unauthorized),
        };
        self.stats.refused(status.code());
        let client = &mut self.clients[key];
        log::info!(target: "pollcast::access", "refused {} {} {} (pollcast.v1: error, then close {})", client.addr, status.code(), refusal.reason(), code.0);
        client.session.accept(self.now);
        let out = self.router.outbox();
        // Declines any extension offer: the connection carries one error and a Close.
        out.own(key, handshake::switching_protocols(upgrade, None), false);
        let error =
            Envelope::Error { code: refusal.code(), message: refusal.reason(), reference: &serde_json::Value::Null };
        out.send(key, &error.to_json());
        client.session.close(code, refusal.reason(), self.now);
        client.session_output_to(key, out);
    }

    /// permessage-deflate (RFC 7692) with `--deflate on`: the parameters agreed to, or
    /// `None` (no offer we can honour: nothing is stated in the 101). An offer that breaks
    /// RFC 7692's rules is declined, not refused (`proto/deflate.rs`); only a header that
    /// is not an extension list at all is a 400. With `--deflate off` the headers are not
    /// read, as before the extension existed.
    fn negotiate_deflate(&self, key: usize, upgrade: &Upgrade) -> Result<Option<Agreed>, Rejection> {
        let Some(config) = self.config.deflate() else { return Ok(None) };
        deflate::negotiate(&str_refs(&upgrade.extensions), &config).map_err(|bad| {
            log::debug!("conn {key}: {bad}");
            Rejection { status: Status::BadRequest, why: "Sec-WebSocket-Extensions is not an extension list" }
        })
    }

    /// Makes sure the timer sweep runs when the soonest token expires.
    fn schedule_expiry(&mut self) {
        if let Some(at) = self.chat.next_expiry() {
            let wait = Duration::from_secs(at).saturating_sub(Duration::from_millis(self.now_ms));
            self.next_sweep = self.next_sweep.min(self.now + wait);
        }
    }

    /// A complete message from `sender`: to the chat (relay mode) or straight back to
    /// its sender (echo mode). Its text is proven UTF-8 already (`proto::message`).
    fn on_message(&mut self, sender: usize, message: &Message) {
        self.stats.messages_in += 1;
        self.clients[sender].traffic.messages_in += 1;
        let out = self.router.outbox();
        match (self.config.mode, message) {
            (Mode::Echo, message) => {
                let deflate = self.clients[sender].session.deflate();
                out.echo(sender, message.opcode(), message.as_bytes(), deflate);
            }
            (Mode::Relay, Message::Text(text)) => self.chat.text(sender, text, self.now_ms, out),
            (Mode::Relay, Message::Binary(data)) => self.chat.binary(sender, data, self.now_ms, out),
        }
    }

    /// The session left OPEN on its own (the peer closed, or broke a rule).
    fn on_closed(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if let Some(violation) = client.session.violation() {
            self.stats.protocol_errors += 1;
            log::debug!("conn {key}: {} broke the protocol: {violation}", client.peer);
        }
        client.session_output_to(key, self.router.outbox());
        self.part(key);
    }

    /// Routes the outbox into queues (`broadcast.rs`).
    fn route(&mut self) {
        self.router.route(&mut self.clients, &mut self.chat, &mut self.history, &mut self.stats, self.now);
    }

    // ----- timers, commit, flush, reap ---------------------------------------------

    /// Phase 6: every session acts on its passed deadlines; the next sweep is set to the
    /// nearest deadline left, no sooner than the timer resolution.
    fn sweep_timers(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        log::trace!("timers: sweeping {} client(s)", self.clients.len());
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
            client.session_output_to(key, self.router.outbox());
            self.part_unless_open(key);
        }
        self.expire_tokens();
        self.next_sweep = nearest.max(now + TIMER_RESOLUTION);
        self.schedule_expiry();
    }

    /// Closes with 1008 every connection whose token expired and was not refreshed (the
    /// chat has told each `token_expired`).
    fn expire_tokens(&mut self) {
        for key in self.chat.expire(self.now_ms / 1000, self.router.outbox()) {
            let Some(client) = self.clients.get_mut(key) else { continue };
            log::info!("conn {key}: {} token expired, closing 1008", client.addr);
            client.session.close(CloseCode::POLICY, "token expired", self.now);
            client.session_output_to(key, self.router.outbox());
            self.part(key);
        }
    }

    /// Phase 7: routes what timers, departures and shutdown produced, then commits this
    /// turn's records in one transaction, before any byte of the turn leaves, and
    /// answers the acks it settles.
    fn commit(&mut self) {
        self.route();
        let started = log::log_enabled!(log::Level::Trace).then(Instant::now);
        let _ = self.history.commit(&mut self.stats); // a failure is logged, counted and answered to the acks
        self.router.answer_acks(&mut self.clients, &mut self.history, &mut self.stats);
        if let Some(started) = started {
            log::trace!("commit: done in {}", Ms(started.elapsed()));
        }
    }

    /// Phase 8: one flush per dirty client, then interest derived from what is left.
    fn flush(&mut self) {
        let dirty = self.router.take_dirty();
        log::trace!("flush: {} client(s)", dirty.len());
        for key in dirty {
            let Some(client) = self.clients.get_mut(key) else { continue };
            client.dirty = false;
            match client.write_out(self.router.outbox().pool()) {
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
    }

    /// Phase 9: remove the clients marked gone this turn.
    fn reap(&mut self) {
        if !self.gone.is_empty() {
            log::trace!("reap: {} client(s)", self.gone.len());
        }
        for key in std::mem::take(&mut self.gone) {
            if !self.clients.contains(key) {
                continue; // marked twice
            }
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.stream);
            self.admin_clients -= usize::from(client.admin);
            self.log_end(&client);
            if let Some(ip) = client.counted {
                self.peers.release(ip);
            }
            log::trace!("conn {key}: reaped ({})", client.peer);
        }
    }

    /// The access log line of a connection that was upgraded, and its close code counted
    /// for /metrics: one line per connection end, nothing per message.
    fn log_end(&mut self, client: &Client) {
        let Some(upgraded) = &client.upgraded else { return };
        let code = client.session.close_code().map_or(1006, |code| code.0); // 1006: no Close either way
        self.stats.closed(code);
        let by = match (client.session.close_code(), client.session.peer_closed_first()) {
            (None, _) => "nobody",
            (Some(_), true) => "client",
            (Some(_), false) => "server",
        };
        let t = client.traffic;
        let fields: [(&str, String); 12] = [
            ("addr", client.addr.to_string()),
            ("room", upgraded.room.clone()),
            ("user", upgraded.user.clone()),
            ("protocol", if upgraded.json { SUBPROTOCOL_JSON } else { "raw" }.to_owned()),
            ("deflate", if upgraded.deflate { "on" } else { "off" }.to_owned()),
            ("close", code.to_string()),
            ("closed_by", by.to_owned()),
            ("duration", format!("{:.3}s", (self.now - upgraded.at).as_secs_f64())),
            ("messages_in", t.messages_in.to_string()),
            ("bytes_in", t.bytes_in.to_string()),
            ("messages_out", t.messages_out.to_string()),
            ("bytes_out", t.bytes_out.to_string()),
        ];
        crate::logging::access("connection end", &fields);
    }

    // ----- shutdown and departures ---------------------------------------------------

    /// SIGHUP reloads the TLS pair; SIGINT/SIGTERM shut down.
    fn on_signals(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.contains(&SIGHUP) {
            self.reload();
        }
        if signals.iter().any(|&signal| signal == SIGINT || signal == SIGTERM) {
            self.shut_down(&signals);
        }
    }

    /// SIGHUP: new TLS handshakes use the certificate pair as it is on disk now; open
    /// connections keep theirs. A pair that fails to load is logged, and the old one
    /// stays in service.
    fn reload(&mut self) {
        match &mut self.certs {
            None => log::info!("SIGHUP: nothing to reload (no --tls-cert)"),
            Some(certs) => match certs.reload() {
                Ok(()) => log::info!("SIGHUP: TLS certificate reloaded; new connections use it"),
                Err(e) => log::error!("SIGHUP: TLS certificate not reloaded, the old one stays in service: {e}"),
            },
        }
    }

    /// SIGINT/SIGTERM: stop accepting, close every open client with 1001, and give the
    /// closes `--shutdown-timeout` to go out.
    fn shut_down(&mut self, signals: &[i32]) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        log::info!("signal {signals:?}: shutting down, closing {} client(s)", self.clients.len());
        self.listener.close(self.poll.registry());
        if let Some(admin) = &mut self.admin {
            admin.close(self.poll.registry());
        }
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout);
        let now = self.now;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        // Every Close is queued before anyone parts, so every queue is sealed before the
        // presence of the departures is routed: clients see the 1001 Close and nothing
        // about the others leaving (they all are).
        for &key in &keys {
            let client = &mut self.clients[key];
            match client.session.phase() {
                Phase::Open => client.session.close(CloseCode::GOING_AWAY, "server shutting down", now),
                Phase::Connecting { .. } => self.gone.push(key),
                Phase::Closing { .. } | Phase::Closed { .. } => {}
            }
            self.clients[key].session_output_to(key, self.router.outbox());
        }
        for key in keys {
            self.part(key);
        }
    }

    /// Marks a client for removal after this turn; it leaves the chat now, so its rooms
    /// hear of it in this turn's commit phase.
    fn mark_gone(&mut self, key: usize) {
        self.part(key);
        self.gone.push(key);
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
            self.chat.disconnect(key, self.router.outbox());
        }
    }
}

/// The HTTP answer to a refusal of the chat's.
fn rejection(refusal: Refusal) -> Rejection {
    let status = match refusal {
        Refusal::Invalid(_) => Status::BadRequest,
        Refusal::Unauthorized(_) => Status::Unauthorized,
        Refusal::Forbidden(_) => Status::Forbidden,
    };
    Rejection { status, why: refusal.reason() }
}

/// A bind failure that names the flag and the address, and what to do about the usual one.
fn bind_error(e: io::Error, flag: &str, addr: SocketAddr) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (another server has it: stop that one, or choose another",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE: choose another",
        _ => " (check",
    };
    io::Error::new(e.kind(), format!("cannot listen on {flag} {addr}: {e}{hint} {flag})"))
}

/// `&str`s of a list of header values.
fn str_refs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A duration in trace lines: `12.3ms`, or `3.5s` from a second up.
struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_secs_f64() {
            secs if secs >= 1.0 => write!(f, "{secs:.1}s"),
            secs => write!(f, "{:.1}ms", secs * 1000.0),
        }
    }
}
