//! This node's two connections to Redis, on the loop's own `Poll`: the links of the
//! Redis phase (phase 8; what the phase does with them is `cluster_turn.rs`, history in
//! Redis `cluster_history.rs`, TLS `cluster_tls.rs`).
//!
//! Owns: the two sockets (`commands`: pipelined commands and their replies;
//! `subscriptions`: pub/sub), connecting them (the address is resolved at start, and
//! again only if that failed), reading and writing them, the reconnect timers
//! (`redis::Link` decides when), the heartbeat, subscriptions and name claims as the
//! chat's change log asks, and one log line per change of health. Must not touch:
//! client sockets, what a message means (`chat`), how RESP is spelled (`redis::resp`).
//!
//! Where it sits in the loop: readiness of either socket is handled in **dispatch**
//! (`on_event`: connect completion, reads); in the **Redis** phase (`turn`, after
//! commit and before the flush) the links give up on what timed out, start the
//! connects that are due, and write what the turn queued, so a turn's commands leave
//! in one write per link.
//!
//! ## How nodes hear each other
//!
//! - **Rooms.** A node subscribes to `pollcast:room:ROOM` when the room gets its first
//!   local member and unsubscribes when the last leaves (`chat::cluster::Watch`). With
//!   history, every message goes through the store script first and every node renders
//!   it from its subscription (`cluster_history.rs`; a turn's messages for a room are one
//!   batch: one script call, one publish). Without history, and for presence always, each
//!   room output this node routes (already framed, one chunk per codec; neighbouring
//!   outputs of one room joined) is published once, as one envelope (`redis::envelope`);
//!   every other subscribed node pushes those chunks, shared, to its own members
//!   (`Router::deliver_remote`), and the publishing node skips its own. One commands
//!   link publishes in the order the loop routed, and Redis delivers one connection's
//!   publishes in order, so each member sees one sender's messages once and in order.
//! - **Direct messages.** A node subscribes to `pollcast:user:NAME` for each name it
//!   holds. A DM to a name held elsewhere is published there; PUBLISH answers how many
//!   nodes heard it, so the sender gets its copy and `ack` (one or more) or
//!   `no_such_user` (none) once Redis replies.
//! - **Liveness, names, members.** A heartbeat key per node (`--node-ttl`), names
//!   claimed atomically, members per room: `redis::presence`.
//! - **Redis away.** The node is degraded (`/healthz` 503 with the reason), and the chat
//!   refuses messages with `unavailable` rather than delivering them to this node's
//!   members only (`Chat::set_cluster_down`); clients stay connected; the links
//!   reconnect with backoff and subscribe, claim and write members again.
//!
//! Interest: both sockets are registered READABLE | WRITABLE once, for their life. With
//! edge-triggered readiness WRITABLE fires only when the kernel buffer drains (or the
//! connect completes), so it costs nothing while idle, and the bytes a turn queues are
//! written directly in the Redis phase without asking first.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ClientConfig;

use super::broadcast::{Fetch, Read as HistoryRead};
use super::cluster_history::{AckOrder, JoinOrder};
use super::cluster_tls::{self, LinkTls};
use super::metrics::ClusterFigures;
use crate::chat::cluster::{Outgoing, RemoteDm, Watch};
use crate::redis::presence;
use crate::redis::{Backoff, Event, Link, LinkLimits, Phase, RedisUrl};
use crate::sys::nb::retrying;

/// Channels named in one SUBSCRIBE or UNSUBSCRIBE (a reconnect resubscribes to every
/// room and name the node holds: tens of thousands, in commands of this many).
const CHANNELS_PER_COMMAND: usize = 1000;
/// The first reconnect's delay; later ones double up to `--redis-backoff-max`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// What a reply on the commands link settles.
#[derive(Debug, PartialEq)]
pub enum Tag {
    /// Nothing waits on it: an error reply is logged.
    Quiet(&'static str),
    /// A room output published for the other nodes (`messages` data messages in it).
    Relay { messages: u64 },
    /// A direct message published to a user's channel: its sender waits for the count
    /// of nodes that heard it.
    Dm(Box<RemoteDm>),
    /// A claim of a name this node's user took: 0 means another live node holds it.
    Claim(String),
    /// A `who` for the whole cluster: `conn` waits for the names.
    Who { conn: usize, room: String },
    /// A `rooms` for the whole cluster: `conn` waits for the counts.
    Rooms { conn: usize },
    /// A message run through the store script (cluster history): its sender waits.
    Store(Box<Outgoing>),
    /// One room's messages of a turn run through the batch store script (cluster
    /// history), in order: each sender waits.
    StoreBatch(Vec<Outgoing>),
    /// A history read (cluster history): its reader waits for the page.
    Read(Box<HistoryRead>),
    /// A file fetch (cluster history): its reader waits for the bytes.
    Fetch(Box<Fetch>),
}

/// The channel of a room: every node with members in it subscribes.
pub fn room_channel(room: &str) -> String {
    format!("pollcast:room:{room}")
}

/// The channel of a user name: the node holding the name subscribes.
pub fn user_channel(name: &str) -> String {
    format!("pollcast:user:{name}")
}

/// The Redis settings, from `Config`.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub url: RedisUrl,            // --redis
    pub node: String,             // this node's id (--node-id, else generated)
    pub ttl: Duration,            // --node-ttl: the heartbeat's life
    pub limits: LinkLimits,       // --redis-max-buffer, --redis-timeout, --redis-backoff-max
    pub ca_file: Option<PathBuf>, // --redis-ca-file, for rediss://
}

impl ClusterConfig {
    /// `limits`: --redis-max-buffer, --redis-timeout, --redis-backoff-max.
    pub fn new(url: RedisUrl, node: String, ttl: Duration, limits: (usize, Duration, Duration)) -> Self {
        let (max_buffer, timeout, backoff_max) = limits;
        let limits = LinkLimits { max_buffer, timeout, backoff: Backoff::new(BACKOFF_MIN, backoff_max) };
        ClusterConfig { url, node, ttl, limits, ca_file: None }
    }
}

/// One connection: its protocol state, and its socket while there is one.
struct Side {
    name: &'static str,        // "commands" or "subscriptions", for log lines
    token: Token,              // its token on the loop's Poll
    link: Link<Tag>,           // the protocol state (`redis::link`)
    stream: Option<TcpStream>, // None while down
    tls: Option<LinkTls>,      // with rediss://: this connection's TLS session
}

/// This node's Redis connections.
pub struct Cluster {
    url: RedisUrl,                      // where Redis is (Display hides the password)
    addr: Option<SocketAddr>,           // resolved at start; None: resolve again at the next attempt
    node: String,                       // this node's id
    commands: Side,                     // commands and replies
    subscriptions: Side,                // pub/sub
    events: Vec<(bool, Event<Tag>)>,    // what the links said this turn (true: the subscriptions link)
    down_since: Option<Instant>,        // when the current outage began (either link), for /healthz
    unrelayed: u64,                     // messages not published this outage (reset when healthy)
    pub(super) acks: AckOrder,          // cluster history: each sender's ack after its own copy
    pub(super) joins: JoinOrder,        // cluster history: a room's first member's read waits for its SUBSCRIBE
    ttl: Duration,                      // --node-ttl
    next_heartbeat: Option<Instant>,    // when the heartbeat is refreshed next (None: the commands link is down)
    tls: Option<Arc<ClientConfig>>,     // with rediss://: the TLS configuration both links use
    pub(super) figures: ClusterFigures, // counters for /metrics
}

impl Cluster {
    /// Both links, to connect at once. The host is resolved here, before the loop runs
    /// (a resolver call blocks; never on the loop). With rediss://, the TLS
    /// configuration is built here (reading `--redis-ca-file`): an error stops the start.
    pub fn new(config: ClusterConfig, tokens: (Token, Token), now: Instant) -> Result<Cluster, String> {
        let addr = resolve(&config.url);
        let tls = match config.url.tls {
            true => Some(cluster_tls::config(config.ca_file.as_deref())?),
            false => None,
        };
        let side = |name, token, subscriber| Side {
            name,
            token,
            link: Link::new(&config.url, subscriber, config.limits, now),
            stream: None,
            tls: None,
        };
        log::info!("redis: node {} joins the cluster at {}", config.node, config.url);
        Ok(Cluster {
            tls,
            addr,
            node: config.node,
            commands: side("commands", tokens.0, false),
            subscriptions: side("subscriptions", tokens.1, true),
            url: config.url,
            events: Vec::new(),
            down_since: Some(now),
            unrelayed: 0,
            acks: AckOrder::default(),
            joins: JoinOrder::default(),
            ttl: config.ttl,
            next_heartbeat: None,
            figures: ClusterFigures::default(),
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Why the node is degraded, for `/healthz`; `None` when both links are ready.
    pub fn degraded(&self, now: Instant) -> Option<String> {
        let since = self.down_since?;
        let down: Vec<&str> =
            [&self.commands, &self.subscriptions].iter().filter(|s| !s.link.is_ready()).map(|s| s.name).collect();
        Some(format!(
            "degraded: redis {} link{} down for {} ms",
            down.join(" and "),
            if down.len() > 1 { "s" } else { "" },
            now.saturating_duration_since(since).as_millis()
        ))
    }

    /// The nearest deadline of either link (a retry, a timeout) or of the heartbeat.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = [self.commands.link.poll_timeout(), self.subscriptions.link.poll_timeout()];
        links.into_iter().chain([self.next_heartbeat]).flatten().min()
    }

    /// Refreshes this node's heartbeat when it is due (every ttl/3), or at once with
    /// `now_due` (the commands link just came up: before any claim, so other nodes see
    /// this one alive when it claims names).
    pub fn heartbeat(&mut self, now: Instant, now_ms: u64, now_due: bool) {
        if !self.commands.link.is_ready() {
            self.next_heartbeat = None;
            return;
        }
        if !now_due && self.next_heartbeat.is_some_and(|at| now < at) {
            return;
        }
        let command = presence::heartbeat(&self.node, now_ms, self.ttl.as_millis() as u64);
        let _ = self.commands.link.send(&command, Tag::Quiet("heartbeat"), now); // a failure is the link's: it reconnects
        self.next_heartbeat = Some(now + self.ttl / 3);
    }

    /// Is this token one of ours?
    pub fn owns(&self, token: Token) -> bool {
        token == self.commands.token || token == self.subscriptions.token
    }

    /// Dispatch: readiness of one of the two sockets. A connect completes, bytes are
    /// read (until WouldBlock: each link's input is bounded by `--redis-max-buffer`, and
    /// passing it drops the link), or the connection is found closed.
    pub fn on_event(&mut self, token: Token, scratch: &mut [u8], now: Instant) {
        let subscriber = token == self.subscriptions.token;
        let side = if subscriber { &mut self.subscriptions } else { &mut self.commands };
        let mut events = Vec::new();
        side.on_ready(scratch, now, &mut events);
        self.events.extend(events.into_iter().map(|event| (subscriber, event)));
    }

    /// The Redis phase: timeouts, connects that are due, then what this turn queued is
    /// written. Returns the events of this turn for the server to act on (replies,
    /// pushes, ready, down), in order.
    pub fn turn(&mut self, registry: &Registry, now: Instant) -> Vec<(bool, Event<Tag>)> {
        // The subscriptions link writes first: a SUBSCRIBE for a room a member just joined
        // then leaves before the history read of the same turn, which narrows (on one
        // host, closes in practice) the window in which a message stored elsewhere is in
        // neither the page nor the subscription. Two connections give no guarantee.
        for subscriber in [true, false] {
            let side = if subscriber { &mut self.subscriptions } else { &mut self.commands };
            let mut events = Vec::new();
            side.link.handle_timeout(now, &mut events);
            if side.link.connect_due(now) {
                if self.addr.is_none() {
                    self.addr = resolve(&self.url);
                }
                side.connect(self.addr, registry, now, &mut events);
                if let Some(config) = self.tls.as_ref().filter(|_| side.stream.is_some()) {
                    match LinkTls::new(config, &self.url.host) {
                        Ok(tls) => side.tls = Some(tls),
                        Err(e) => side.link.fail(e, now, &mut events),
                    }
                }
            }
            side.write(now, &mut events);
            self.events.extend(events.into_iter().map(|event| (subscriber, event)));
        }
        let events = std::mem::take(&mut self.events);
        for (subscriber, event) in &events {
            let side = if *subscriber { &mut self.subscriptions } else { &mut self.commands };
            match event {
                Event::Ready => log::info!("redis: {} link up ({})", side.name, self.url),
                Event::Down { reason, outage_began: true } => {
                    self.figures.outages += 1;
                    log::warn!("redis: {} link down ({}): {reason}; retrying with backoff", side.name, self.url)
                }
                Event::Down { reason, outage_began: false } => {
                    log::debug!("redis: {} link: another attempt failed: {reason}", side.name)
                }
                _ => {}
            }
            if let Event::Down { .. } = event {
                side.tls = None;
                if let Some(mut stream) = side.stream.take() {
                    let _ = registry.deregister(&mut stream); // closing it would deregister too
                }
            }
        }
        let healthy = self.commands.link.is_ready() && self.subscriptions.link.is_ready();
        match (healthy, self.down_since) {
            (true, Some(since)) => {
                let ms = now.saturating_duration_since(since).as_millis();
                log::info!("redis: node {} ready (both links up after {ms} ms)", self.node);
                if self.unrelayed > 0 {
                    log::warn!(
                        "redis: {} message(s) reached this node's members only during the outage",
                        self.unrelayed
                    );
                    self.unrelayed = 0;
                }
                self.down_since = None;
            }
            (false, None) => self.down_since = Some(now),
            _ => {}
        }
        events
    }

    /// Queues a command on the commands link; the tag comes back when it cannot be
    /// sent (the link is down or full): the caller answers that at once.
    pub fn command<A: AsRef<[u8]>>(&mut self, args: &[A], tag: Tag, now: Instant) -> Result<(), Tag> {
        self.commands.link.send(args, tag, now)
    }

    /// Subscribes to the channels of rooms and names gained, unsubscribes from those
    /// lost: one SUBSCRIBE and one UNSUBSCRIBE at most, each channel by its last change
    /// (both commands are idempotent in Redis). While the link is down nothing is sent:
    /// it subscribes to all the chat watches when it is back.
    pub fn watch(&mut self, changes: Vec<Watch>, now: Instant) {
        if changes.is_empty() {
            return;
        }
        // Names and members: claimed, released, written on the commands link, in order.
        if self.commands.link.is_ready() {
            for change in &changes {
                let (command, tag) = match change {
                    Watch::User(name, true) => (presence::claim(name, &self.node), Tag::Claim(name.clone())),
                    Watch::User(name, false) => (presence::release(name, &self.node), Tag::Quiet("release a name")),
                    Watch::Member(room, name, on) => {
                        (presence::member(room, name, &self.node, *on), Tag::Quiet("write a member"))
                    }
                    Watch::Room(..) => continue,
                };
                let _ = self.commands.link.send(&command, tag, now); // a full or down link: written again when back
            }
        }
        if !self.subscriptions.link.is_ready() {
            return;
        }
        let mut last: Vec<(String, bool)> = Vec::with_capacity(changes.len());
        for change in changes {
            let (channel, on) = match change {
                Watch::Room(room, on) => (room_channel(&room), on),
                Watch::User(name, on) => (user_channel(&name), on),
                Watch::Member(..) => continue,
            };
            last.retain(|(c, _)| *c != channel);
            last.push((channel, on));
        }
        for (channel, on) in &last {
            if let Some(room) = channel.strip_prefix("pollcast:room:") {
                match on {
                    true => self.joins.subscribing(room),
                    false => self.joins.unsubscribed(room),
                }
            }
        }
        for (verb, on) in [("SUBSCRIBE", true), ("UNSUBSCRIBE", false)] {
            let channels: Vec<&[u8]> = last.iter().filter(|(_, o)| *o == on).map(|(c, _)| c.as_bytes()).collect();
            // In batches, so that a node holding many rooms and names after a reconnect
            // never builds one command larger than --redis-max-buffer.
            for batch in channels.chunks(CHANNELS_PER_COMMAND) {
                let args: Vec<&[u8]> = std::iter::once(verb.as_bytes()).chain(batch.iter().copied()).collect();
                if self.subscriptions.link.send(&args, Tag::Quiet("subscribe"), now).is_err() {
                    // Full: the link is far behind, so drop it and start again from the
                    // chat's whole state (which it subscribes to when it is back).
                    let mut events = Vec::new();
                    let reason = format!("{verb} did not fit in --redis-max-buffer");
                    self.subscriptions.link.fail(reason, now, &mut events);
                    self.events.extend(events.into_iter().map(|event| (true, event)));
                    return;
                }
            }
        }
    }

    /// Messages that other nodes will not see (Redis was down or refused the publish):
    /// counted, and logged once per outage.
    pub fn count_unrelayed(&mut self, messages: u64) {
        if self.unrelayed == 0 {
            log::warn!("redis: messages are reaching this node's members only until Redis is back");
        }
        self.unrelayed += messages.max(1);
        self.figures.unrelayed += messages.max(1);
    }

    /// Writes what the links hold (the Redis phase's last step: what acting on this
    /// turn's events queued leaves in the same turn).
    pub fn write_out(&mut self, now: Instant) {
        for subscriber in [true, false] {
            let side = if subscriber { &mut self.subscriptions } else { &mut self.commands };
            let mut events = Vec::new();
            side.write(now, &mut events);
            self.events.extend(events.into_iter().map(|event| (subscriber, event)));
            // seen next turn
        }
    }

    /// The figures for /metrics, with `up` sampled now.
    pub fn figures(&self) -> ClusterFigures {
        ClusterFigures { up: self.is_ready(), ..self.figures }
    }

    /// Are both links ready?
    pub fn is_ready(&self) -> bool {
        self.commands.link.is_ready() && self.subscriptions.link.is_ready()
    }
}

impl Side {
    /// Starts a non-blocking connect; its completion is a WRITABLE event.
    fn connect(&mut self, addr: Option<SocketAddr>, registry: &Registry, now: Instant, events: &mut Vec<Event<Tag>>) {
        self.link.connecting(now);
        let Some(addr) = addr else {
            return self.link.fail("the host did not resolve".into(), now, events);
        };
        log::debug!("redis: {} link connecting to {addr}", self.name);
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => return self.link.fail(format!("connect: {e}"), now, events),
        };
        if let Err(e) = registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE) {
            return self.link.fail(format!("register: {e}"), now, events);
        }
        let _ = stream.set_nodelay(true); // commands are small and pipelined: no Nagle delay
        self.stream = Some(stream);
    }

    /// One readiness event: completes a connect, or reads until WouldBlock.
    fn on_ready(&mut self, scratch: &mut [u8], now: Instant, events: &mut Vec<Event<Tag>>) {
        let Some(stream) = &mut self.stream else { return }; // a stale event of a closed socket
        if let Phase::Connecting { .. } = self.link.phase() {
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.link.fail(format!("connect: {e}"), now, events),
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => self.link.connected(now),
                // Not connected yet (a spurious wake-up): the next WRITABLE event tells.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.link.fail(format!("connect: {e}"), now, events),
            }
        }
        loop {
            match retrying(|| stream.read(scratch)) {
                Ok(Some(0)) => return self.link.fail("Redis closed the connection".into(), now, events),
                Ok(Some(n)) => {
                    match &mut self.tls {
                        None => self.link.handle_bytes(&scratch[..n], now, events),
                        Some(tls) => {
                            let mut plain = Vec::new();
                            if let Err(e) = tls.decrypt(&scratch[..n], &mut plain) {
                                return self.link.fail(e, now, events);
                            }
                            self.link.handle_bytes(&plain, now, events);
                        }
                    }
                    if matches!(self.link.phase(), Phase::Down { .. }) {
                        return;
                    }
                }
                Ok(None) => return, // drained: edge-triggered, the next READABLE event brings more
                Err(e) => return self.link.fail(format!("read: {e}"), now, events),
            }
        }
    }

    /// Writes what the link holds, until done or WouldBlock (the WRITABLE event then
    /// resumes it: `on_ready` is followed by this phase every turn).
    fn write(&mut self, now: Instant, events: &mut Vec<Event<Tag>>) {
        let Some(stream) = &mut self.stream else { return };
        if matches!(self.link.phase(), Phase::Connecting { .. } | Phase::Down { .. }) {
            return;
        }
        if let Some(tls) = &mut self.tls {
            // TLS: rustls takes the plaintext (holding it until its handshake is done)
            // and writes records until the socket would block.
            let output = self.link.output();
            match tls.send(stream, output) {
                Ok(taken) => drop(output.drain(..taken)),
                Err(e) => self.link.fail(format!("TLS write: {e}"), now, events),
            }
            return;
        }
        loop {
            let output = self.link.output();
            if output.is_empty() {
                return;
            }
            match retrying(|| stream.write(output)) {
                Ok(Some(0)) => return self.link.fail("write: wrote nothing".into(), now, events),
                Ok(Some(n)) => {
                    output.drain(..n);
                }
                Ok(None) => return, // the kernel buffer is full: WRITABLE will wake us
                Err(e) => return self.link.fail(format!("write: {e}"), now, events),
            }
        }
    }
}

/// The URL's host and port as one address (the first the resolver gives), or `None`
/// (logged; the next attempt resolves again).
fn resolve(url: &RedisUrl) -> Option<SocketAddr> {
    match url.authority().to_socket_addrs() {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            log::warn!("redis: cannot resolve {}: {e}", url.host);
            None
        }
    }
}
