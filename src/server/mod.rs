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
//!    this turn's records are committed to history in one step, before any byte
//!    of the turn leaves; acks follow.
//! 8. **Redis** (`redis`, with `--redis` only: `cluster.rs`): links that timed out are
//!    dropped, reconnects that are due start, this turn's replies and published
//!    messages are acted on, and the commands the turn queued are written.
//! 9. **Flush** (`flush`): every client with queued bytes gets one vectored write (or a
//!    few); WRITABLE interest is registered only where bytes remain.
//! 10. **Reap** (`reap`): clients marked gone during the turn are removed from the
//!     slab, never mid-dispatch, so a stale event for a reused token cannot hit the
//!     wrong client.
//!
//! Where each phase lives: `mod.rs` holds the loop's state and the phases that are a
//! few lines (wait, now, dispatch, commit, flush, reap); `accept.rs` new connections
//! and the accept pause; `read.rs` the reading of a client; `cluster.rs` the Redis links and `cluster_turn.rs` what the Redis phase does with them; `upgrade.rs` the request
//! head and the upgrade; `timers.rs` the timers and signals; `broadcast.rs` routing.

mod accept;
mod admin;
mod broadcast;
mod client;
pub mod cluster;
mod cluster_history;
mod cluster_tls;
mod cluster_turn;
mod history;
pub mod http;
mod listener;
pub mod metrics;
pub mod peers;
mod read;
mod timers;
pub mod tls;
mod upgrade;
mod write_queue;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::chat::Chat;
use crate::config::Config;
use crate::proto::handshake::SUBPROTOCOL_JSON;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use broadcast::Router;
use client::{Client, Farewell};
use cluster::Cluster;
use history::History;
use listener::Listener;
use metrics::Stats;
use peers::PeerLimits;
use tls::Certs;

/// The listening socket's token; client tokens are slab keys, far below it.
const LISTENER: Token = Token(usize::MAX - 1);
/// The signal pipe's token.
const SIGNALS: Token = Token(usize::MAX - 2);
/// The admin port's listening socket.
const ADMIN_LISTENER: Token = Token(usize::MAX - 3);
/// The Redis commands link (`cluster.rs`, with `--redis`).
const REDIS_COMMANDS: Token = Token(usize::MAX - 4);
/// The Redis subscriptions link.
const REDIS_SUBSCRIPTIONS: Token = Token(usize::MAX - 5);
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
    cluster: Option<Cluster>,           // with --redis: this node's Redis links (`cluster.rs`)
}

impl Server {
    /// Opens the history store, binds the listener and registers it and the signal pipe.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let listener = Listener::bind(config.listen, poll.registry(), LISTENER, config.reuse_port)
            .map_err(|e| bind_error(e, "--listen", config.listen))?;
        let (admin, admin_token) = match config.admin().map_err(io::Error::other)? {
            Some((addr, token)) => {
                let admin = Listener::bind(addr, poll.registry(), ADMIN_LISTENER, false)
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
        // With --redis, history is the cluster's (Redis streams, read and written by
        // `cluster_history.rs`); SQLite is the single node's.
        let cluster_history = config.redis.is_some() && config.history_db().is_some();
        let store: Option<Box<dyn Store>> = match config.history_db().filter(|_| !cluster_history) {
            Some(path) => {
                let mut store = SqliteStore::open_with(path, config.history_keep, config.history_log_file_size as u64)
                    .map_err(io::Error::other)?;
                store.set_index_every(config.history_index_every);
                Some(Box::new(store))
            }
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
        let cluster = config
            .cluster()
            .map_err(io::Error::other)?
            .map(|cluster| Cluster::new(cluster, (REDIS_COMMANDS, REDIS_SUBSCRIPTIONS), now))
            .transpose()
            .map_err(io::Error::other)?;
        let mut router = Router::new(config.effective_max_queue(), config.deflate_threshold);
        if let Some(cluster) = &cluster {
            chat.join_cluster(cluster_history, &guest_tag(cluster.node()));
            router.relay_rooms();
        }
        if cluster_history {
            router.read_elsewhere();
        }
        Ok(Server {
            cluster,
            chat,
            history,
            router,
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
            self.redis(); // 8
            self.flush(); // 9
            self.reap(); // 10
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
        let redis = self.cluster.as_ref().and_then(Cluster::poll_timeout);
        let deadlines = [Some(self.next_sweep), self.listener.paused_until(), self.shutdown_deadline, redis];
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
                REDIS_COMMANDS | REDIS_SUBSCRIPTIONS => {
                    if let Some(cluster) = &mut self.cluster {
                        cluster.on_event(event.token(), &mut self.scratch, self.now);
                    }
                }
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

    /// Routes the outbox into queues (`broadcast.rs`).
    fn route(&mut self) {
        self.router.route(&mut self.clients, &mut self.chat, &mut self.history, &mut self.stats, self.now);
    }

    // ----- commit, flush, reap -------------------------------------------------------

    /// Phase 7: routes what timers, departures and shutdown produced, then commits this
    /// turn's records in one step, before any byte of the turn leaves, and
    /// answers the acks it settles.
    fn commit(&mut self) {
        self.route();
        let started = log::log_enabled!(log::Level::Trace).then(Instant::now);
        let _ = self.history.commit(&mut self.stats); // a failure is logged, counted and answered to the acks
        self.router.recycle(self.history.spent());
        self.router.answer_acks(&mut self.clients, &mut self.history, &mut self.stats);
        if let Some(started) = started {
            log::trace!("commit: done in {}", Ms(started.elapsed()));
        }
    }

    /// Phase 8: the Redis links (`cluster.rs`); nothing without `--redis`.
    fn redis(&mut self) {
        if self.cluster.is_some() {
            self.cluster_turn();
        }
    }

    /// Phase 9: one flush per dirty client, then interest derived from what is left.
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

    /// Phase 10: remove the clients marked gone this turn.
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
            ("room", client.farewell.as_ref().map_or("-", |f| f.room.as_str()).to_owned()),
            ("user", client.farewell.as_ref().map_or("-", |f| f.user.as_str()).to_owned()),
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

    // ----- departures ------------------------------------------------------------------

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
        if !self.chat.has(key) {
            return;
        }
        if let Some(client) = self.clients.get_mut(key).filter(|c| c.farewell.is_none()) {
            client.farewell = self.chat.describe(key).map(|(user, room)| Box::new(Farewell { user, room }));
        }
        self.chat.disconnect(key, self.router.outbox());
    }
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

/// A short tag for this node's guest names (`guest-3.4f2a`): four hex digits of a hash of
/// the node id, so two nodes' guests rarely collide (a collision is caught by the name's
/// claim in Redis, like any other).
fn guest_tag(node: &str) -> String {
    let hash = node.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)); // FNV-1a
    format!("{:04x}", hash & 0xffff)
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
