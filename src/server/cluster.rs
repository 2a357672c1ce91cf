//! The Redis phase: this node's two connections to Redis, on the loop's own `Poll`.
//!
//! Owns: the two sockets (`commands`: pipelined commands and their replies;
//! `subscriptions`: pub/sub), connecting them (the address is resolved once, at start),
//! reading and writing them, the reconnect timers (`redis::Link` decides when), and one
//! log line per change of health. Must not touch: client sockets, what a message means
//! (`chat`), how RESP is spelled (`redis::resp`).
//!
//! Where it sits in the loop: readiness of either socket is handled in **dispatch**
//! (`on_event`: connect completion, reads); the **Redis** phase (`Server::redis_phase`),
//! after commit and before the flush, gives up on what timed out, starts the connects
//! that are due, settles the replies and pushes of this turn, and writes what the turn
//! queued, so a turn's commands leave in one write per link.
//!
//! Interest: both sockets are registered READABLE | WRITABLE once, for their life. With
//! edge-triggered readiness WRITABLE fires only when the kernel buffer drains (or the
//! connect completes), so it costs nothing while idle, and the bytes a turn queues are
//! written directly in the Redis phase without asking first.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::redis::{Backoff, Event, Link, LinkLimits, Phase, RedisUrl, Reply};
use crate::sys::nb::retrying;

/// The first reconnect's delay; later ones double up to `--redis-backoff-max`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// What a reply on the commands link settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// Nothing waits on it (a PUBLISH, a heartbeat): an error reply is logged.
    Quiet(&'static str),
}

/// The Redis settings, from `Config`.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub url: RedisUrl,      // --redis
    pub node: String,       // this node's id (--node-id, else generated)
    pub limits: LinkLimits, // --redis-max-buffer, --redis-timeout, --redis-backoff-max
}

impl ClusterConfig {
    pub fn new(url: RedisUrl, node: String, max_buffer: usize, timeout: Duration, backoff_max: Duration) -> Self {
        let limits = LinkLimits { max_buffer, timeout, backoff: Backoff::new(BACKOFF_MIN, backoff_max) };
        ClusterConfig { url, node, limits }
    }
}

/// One connection: its protocol state, and its socket while there is one.
struct Side {
    name: &'static str,        // "commands" or "subscriptions", for log lines
    token: Token,              // its token on the loop's Poll
    link: Link<Tag>,           // the protocol state (`redis::link`)
    stream: Option<TcpStream>, // None while down
}

/// This node's Redis connections.
pub struct Cluster {
    url: RedisUrl,                   // where Redis is (Display hides the password)
    addr: Option<SocketAddr>,        // resolved at start; None: resolve again at the next attempt
    node: String,                    // this node's id
    commands: Side,                  // commands and replies
    subscriptions: Side,             // pub/sub
    events: Vec<(bool, Event<Tag>)>, // what the links said this turn (true: the subscriptions link)
    down_since: Option<Instant>,     // when the current outage began (either link), for /healthz
}

impl Cluster {
    /// Both links, to connect at once. The host is resolved here, before the loop runs
    /// (a resolver call blocks; never on the loop).
    pub fn new(config: ClusterConfig, tokens: (Token, Token), now: Instant) -> Cluster {
        let addr = resolve(&config.url);
        let side = |name, token, subscriber| Side {
            name,
            token,
            link: Link::new(&config.url, subscriber, config.limits, now),
            stream: None,
        };
        log::info!("redis: node {} joins the cluster at {}", config.node, config.url);
        Cluster {
            addr,
            node: config.node,
            commands: side("commands", tokens.0, false),
            subscriptions: side("subscriptions", tokens.1, true),
            url: config.url,
            events: Vec::new(),
            down_since: Some(now),
        }
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

    /// The nearest deadline of either link (a retry, a timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.commands.link.poll_timeout(), self.subscriptions.link.poll_timeout()].into_iter().flatten().min()
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
        for subscriber in [false, true] {
            let side = if subscriber { &mut self.subscriptions } else { &mut self.commands };
            let mut events = Vec::new();
            side.link.handle_timeout(now, &mut events);
            if side.link.connect_due(now) {
                if self.addr.is_none() {
                    self.addr = resolve(&self.url);
                }
                side.connect(self.addr, registry, now, &mut events);
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
                    log::warn!("redis: {} link down ({}): {reason}; retrying with backoff", side.name, self.url)
                }
                Event::Down { reason, outage_began: false } => {
                    log::debug!("redis: {} link: another attempt failed: {reason}", side.name)
                }
                _ => {}
            }
            if let Event::Down { .. } = event {
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

    /// Queues a command on the subscriptions link (SUBSCRIBE, UNSUBSCRIBE); false when
    /// it is down (it subscribes to everything again when it is back).
    pub fn subscription<A: AsRef<[u8]>>(&mut self, args: &[A], now: Instant) -> bool {
        self.subscriptions.link.send(args, Tag::Quiet("subscription"), now).is_ok()
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
                    self.link.handle_bytes(&scratch[..n], now, events);
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

/// Pushes on the subscriptions link: `message CHANNEL PAYLOAD` (what was published),
/// or a subscribe/unsubscribe confirmation (`None`).
pub fn published(reply: &Reply) -> Option<(&[u8], &[u8])> {
    let Reply::Array(parts) = reply else { return None };
    match parts.as_slice() {
        [Reply::BulkString(kind), Reply::BulkString(channel), Reply::BulkString(payload)] if kind == b"message" => {
            Some((channel, payload))
        }
        _ => None,
    }
}

impl super::Server {
    /// What the Redis phase brought: replies to log, pushes to deliver.
    pub(super) fn on_cluster_events(&mut self, events: Vec<(bool, Event<Tag>)>) {
        for (_subscriber, event) in events {
            match event {
                Event::Reply(Tag::Quiet(what), reply) => {
                    if let Some(error) = crate::redis::resp::error_text(&reply) {
                        log::warn!("redis: {what} failed: {error}");
                    }
                }
                Event::Lost(Tag::Quiet(_)) | Event::Ready | Event::Down { .. } | Event::Push(_) => {}
            }
        }
    }
}
