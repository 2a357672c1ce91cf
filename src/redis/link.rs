//! One connection to Redis as a state machine over bytes and time, in the sans-IO shape
//! of `proto::session`: the shell says when the TCP connection is up (`connected`),
//! hands in what it read (`handle_bytes`), writes what `output` holds, and asks
//! `poll_timeout` when to call `handle_timeout`. Events come out: ready, a reply and the
//! command it settles, a message nobody asked for (pub/sub), the link going down.
//!
//! Commands are pipelined: each is written at once and its tag joins a FIFO, and since
//! Redis answers in order, every reply settles the tag at the front (RESP2 on a link
//! that is not subscribed). On the subscription link, after the handshake, every reply
//! is a push (`subscribe` confirmations and `message`s) and goes out as `Event::Push`.
//!
//! Bounds: `max_buffer` caps both the bytes waiting to be written and those read but not
//! yet a whole reply; passing either drops the link (it reconnects with backoff), which
//! settles every command in flight as `Lost`. `timeout` bounds the TCP connect, the
//! handshake, and how long the oldest command may wait for its reply: a Redis that
//! stops answering is a Redis that is down, never a hang.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::resp::{self, Reply};
use super::url::RedisUrl;

/// Where a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No connection; the next attempt is due at `retry_at`.
    Down { retry_at: Instant },
    /// TCP connect in flight since `since`.
    Connecting { since: Instant },
    /// Connected; AUTH/SELECT sent, their replies awaited since `since`.
    Handshake { since: Instant },
    /// Commands flow.
    Ready,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Down { .. } => "DOWN",
            Phase::Connecting { .. } => "CONNECTING",
            Phase::Handshake { .. } => "HANDSHAKE",
            Phase::Ready => "READY",
        })
    }
}

/// What the link tells the shell.
#[derive(Debug, PartialEq)]
pub enum Event<T> {
    /// The handshake is done: commands may flow. (The shell subscribes again, loads its
    /// scripts, rebuilds what it keeps of Redis's state.)
    Ready,
    /// A command's reply (an error reply too: `Reply::Error`).
    Reply(T, Reply),
    /// A command whose reply will never come: the link dropped before it.
    Lost(T),
    /// A reply nobody waits for: on the subscription link, `subscribe` confirmations and
    /// published messages.
    Push(Reply),
    /// The link failed (`reason` never holds the password); `outage_began` is true for
    /// the first failure after being ready (or of the first attempt), so the shell logs
    /// an outage once, not once per retry.
    Down { reason: String, outage_began: bool },
}

/// The delay before the next connect attempt: doubling from `min` up to `max`, back to
/// `min` once a link is ready.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    min: Duration,  // the first retry's delay
    max: Duration,  // the cap (`--redis-backoff-max`)
    next: Duration, // the delay the next failure waits
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.min(max);
        Backoff { min, max, next: min }
    }

    /// The delay to wait now; the one after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What each reply in the FIFO settles.
#[derive(Debug)]
enum Waiting<T> {
    Handshake,           // AUTH or SELECT: an error fails the link
    Command(T, Instant), // a shell command, and when it was written
}

/// Limits of one link.
#[derive(Clone, Copy, Debug)]
pub struct LinkLimits {
    pub max_buffer: usize, // bytes queued to write, or read and not yet a whole reply (`--redis-max-buffer`)
    pub timeout: Duration, // connect, handshake, and the oldest reply's wait (`--redis-timeout`)
    pub backoff: Backoff,  // reconnect delays
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Link<T> {
    subscriber: bool,              // the subscription link: replies after the handshake are pushes
    auth: Vec<Vec<u8>>,            // the AUTH command's arguments, when the URL has a password
    db: u32,                       // SELECT index (commands link only: pub/sub ignores databases)
    phase: Phase,                  // where it is
    limits: LinkLimits,            // bounds and backoff
    output: Vec<u8>,               // bytes to write, in order
    input: Vec<u8>,                // bytes read, not yet a whole reply
    pending: VecDeque<Waiting<T>>, // what each coming reply settles, oldest first
    in_outage: bool,               // failed since last ready: further failures are the same outage
}

impl<T> Link<T> {
    /// A link that will connect at once (its first attempt is due `now`).
    pub fn new(url: &RedisUrl, subscriber: bool, limits: LinkLimits, now: Instant) -> Link<T> {
        let auth = match (&url.user, &url.password) {
            (Some(user), Some(password)) => vec![b"AUTH".to_vec(), user.clone().into(), password.clone().into()],
            (None, Some(password)) => vec![b"AUTH".to_vec(), password.clone().into()],
            _ => Vec::new(),
        };
        Link {
            subscriber,
            auth,
            db: url.db,
            phase: Phase::Down { retry_at: now },
            limits,
            output: Vec::new(),
            input: Vec::new(),
            pending: VecDeque::new(),
            in_outage: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Is a connect attempt due? The shell then opens a socket and calls `connecting`.
    pub fn connect_due(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Down { retry_at } if now >= retry_at)
    }

    /// An outage is going on: failed since it was last ready (or never ready yet).
    pub fn in_outage(&self) -> bool {
        self.in_outage || !self.is_ready()
    }

    /// The shell started a TCP connect.
    pub fn connecting(&mut self, now: Instant) {
        self.phase = Phase::Connecting { since: now };
    }

    /// The TCP connection is up: the handshake goes out (AUTH when the URL has a
    /// password, SELECT for a database other than 0 on the commands link, else a PING,
    /// so that "ready" always means Redis answered).
    pub fn connected(&mut self, now: Instant) {
        self.output.clear();
        self.input.clear();
        if !self.auth.is_empty() {
            resp::command(&mut self.output, &self.auth);
            self.pending.push_back(Waiting::Handshake);
        }
        if !self.subscriber && self.db != 0 {
            resp::command(&mut self.output, &[b"SELECT".to_vec(), self.db.to_string().into_bytes()]);
            self.pending.push_back(Waiting::Handshake);
        }
        if self.pending.is_empty() {
            resp::command(&mut self.output, &["PING"]);
            self.pending.push_back(Waiting::Handshake);
        }
        self.phase = Phase::Handshake { since: now };
    }

    /// Queues a command when the link is ready and has room; else gives the tag back
    /// (the shell answers the command as failed at once: nothing waits on a dead link).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A], tag: T, now: Instant) -> Result<(), T> {
        if !self.is_ready() || self.output.len() >= self.limits.max_buffer {
            return Err(tag);
        }
        resp::command(&mut self.output, args);
        if !self.subscriber {
            self.pending.push_back(Waiting::Command(tag, now));
        }
        Ok(())
    }

    /// Bytes to write; the shell drains what the socket took.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Commands written whose replies have not come.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Bytes read from the socket: every whole reply settles its command (or is a push).
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant, events: &mut Vec<Event<T>>) {
        if matches!(self.phase, Phase::Down { .. } | Phase::Connecting { .. }) {
            return; // stale bytes of a dropped connection
        }
        if self.input.len() + bytes.len() > self.limits.max_buffer {
            let reason = format!("a reply passed --redis-max-buffer ({} bytes)", self.limits.max_buffer);
            return self.fail(reason, now, events);
        }
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let reply = match resp::next_reply(&self.input[used..]) {
                Ok(Some((reply, n))) => {
                    used += n;
                    reply
                }
                Ok(None) => break, // need more bytes: the next readable event brings them
                Err(e) => return self.fail(e, now, events),
            };
            if let Err(reason) = self.settle(reply, events) {
                return self.fail(reason, now, events);
            }
        }
        self.input.drain(..used);
    }

    /// One whole reply: to the command it answers, or out as a push.
    fn settle(&mut self, reply: Reply, events: &mut Vec<Event<T>>) -> Result<(), String> {
        match self.pending.pop_front() {
            Some(Waiting::Handshake) => {
                if let Some(error) = resp::error_text(&reply) {
                    // Redis's own words (WRONGPASS, NOAUTH, ERR DB index...): never the password.
                    return Err(format!("the handshake was refused: {error}"));
                }
                let handshaking = self.pending.iter().any(|w| matches!(w, Waiting::Handshake));
                if !handshaking {
                    self.phase = Phase::Ready;
                    self.limits.backoff.reset();
                    self.in_outage = false;
                    events.push(Event::Ready);
                }
                Ok(())
            }
            Some(Waiting::Command(tag, _)) => {
                events.push(Event::Reply(tag, reply));
                Ok(())
            }
            None if self.subscriber => {
                events.push(Event::Push(reply));
                Ok(())
            }
            None => Err("Redis answered a command that was never sent".into()),
        }
    }

    /// The connection failed or closed (`reason` as the shell saw it): every command in
    /// flight is lost, and the next attempt waits for the backoff.
    pub fn fail(&mut self, reason: String, now: Instant, events: &mut Vec<Event<T>>) {
        if matches!(self.phase, Phase::Down { .. }) {
            return;
        }
        let delay = self.limits.backoff.next_delay();
        self.phase = Phase::Down { retry_at: now + delay };
        self.output.clear();
        self.input.clear();
        for waiting in self.pending.drain(..) {
            if let Waiting::Command(tag, _) = waiting {
                events.push(Event::Lost(tag));
            }
        }
        let outage_began = !self.in_outage;
        self.in_outage = true;
        events.push(Event::Down { reason, outage_began });
    }

    /// When `handle_timeout` has work: a retry due, a connect or handshake to give up
    /// on, the oldest reply overdue.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Down { retry_at } => Some(retry_at),
            Phase::Connecting { since } | Phase::Handshake { since } => Some(since + self.limits.timeout),
            Phase::Ready => self.oldest_sent().map(|sent| sent + self.limits.timeout),
        }
    }

    fn oldest_sent(&self) -> Option<Instant> {
        self.pending.iter().find_map(|waiting| match waiting {
            Waiting::Command(_, sent) => Some(*sent),
            Waiting::Handshake => None,
        })
    }

    /// Gives up on a connect, a handshake or a reply that took longer than `timeout`.
    pub fn handle_timeout(&mut self, now: Instant, events: &mut Vec<Event<T>>) {
        let overdue = match self.phase {
            Phase::Down { .. } => None,
            Phase::Connecting { since } => Some((since, "connecting")),
            Phase::Handshake { since } => Some((since, "the handshake")),
            Phase::Ready => self.oldest_sent().map(|sent| (sent, "a reply")),
        };
        if let Some((since, what)) = overdue.filter(|(since, _)| now >= *since + self.limits.timeout) {
            let waited = now - since;
            self.fail(format!("{what} took {} ms (--redis-timeout)", waited.as_millis()), now, events);
        }
    }
}
