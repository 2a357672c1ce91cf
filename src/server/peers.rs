//! Per-address bookkeeping: which address a connection really comes from, and whether
//! that address may open another one.
//!
//! Owns: trusted-proxy ranges ([`Cidr`]), reading the client address out of
//! `X-Forwarded-For` / `Forwarded` ([`client_addr`]), and the per-address limits
//! ([`PeerLimits`]: open connections, new connections per second, and how often a refusal
//! is logged). Must not touch: sockets, the clock (`now` is passed in), or what a refusal
//! looks like on the wire (the caller answers with its HTTP status and closes).
//!
//! Where it sits in the loop: on each accepted connection the shell asks
//! [`PeerLimits::admit`] with the peer address (a refusal costs one short answer, no
//! upgrade); behind a reverse proxy it asks again with [`client_addr`] once the request
//! head is parsed. It calls [`PeerLimits::release`] when a counted slot is reaped, and may
//! call [`PeerLimits::sweep`] from a periodic timer to return memory sooner.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A burst may be this many seconds' worth of `--max-upgrade-rate` (bursts of 2N).
const BURST_SECONDS: u64 = 2;
/// Bucket arithmetic is in billionths of a connection, so a refill from a `Duration` in
/// nanoseconds is exact and needs no floating point.
const NANOS_PER_TOKEN: u64 = 1_000_000_000;
/// A refused address is logged at most once per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(1);
/// The map is never swept automatically below this many entries (a sweep is O(entries)).
const MIN_SWEEP_LEN: usize = 1024;
/// Bits in an IPv4 / IPv6 address.
const V4_BITS: u8 = 32;
const V6_BITS: u8 = 128;
/// The IPv4-mapped IPv6 range is `::ffff:0:0/96` (RFC 4291 §2.5.5.2): its last 32 bits
/// are the IPv4 address.
const V4_MAPPED_PREFIX: u8 = 96;

/// An address range such as `10.0.0.0/8` or `::1/128` (a bare address is its own /32 or
/// /128). An IPv4-mapped IPv6 range of /96 or longer is stored as the IPv4 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr, // the first address of the range (host bits cleared)
    prefix: u8,      // leading bits that must match: 0..=32 for IPv4, 0..=128 for IPv6
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or `ADDR`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("'{text}' is not an address or ADDR/PREFIX range"))?;
        let max = if addr.is_ipv4() { V4_BITS } else { V6_BITS };
        let prefix = match prefix {
            None => max,
            Some(bits) => match bits.parse::<u8>() {
                Ok(bits) if bits <= max => bits,
                _ => return Err(format!("'{text}': the prefix length must be 0 to {max}")),
            },
        };
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= V4_MAPPED_PREFIX => (IpAddr::V4(v4), prefix - V4_MAPPED_PREFIX),
                _ => (addr, prefix),
            },
            IpAddr::V4(_) => (addr, prefix),
        };
        Ok(Cidr { network: mask(addr, prefix), prefix })
    }

    /// Is `ip` in the range? An IPv4-mapped IPv6 address counts as its IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(_), ip @ IpAddr::V4(_)) | (IpAddr::V6(_), ip @ IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        Cidr::parse(text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip` with all but its first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            // A shift by the full width is `None`: a /0 keeps no bits.
            let keep = u32::MAX.checked_shl(u32::from(V4_BITS - prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(u32::from(V6_BITS - prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// The address a connection is from, for limits and logs.
///
/// Forwarding headers are only believed from a trusted proxy: when `peer` is not in
/// `trusted`, the answer is `peer` whatever the headers say (anyone can send them).
/// Otherwise the hops come from `X-Forwarded-For` (every header line, joined, a comma
/// list oldest first), or, when it has no usable entry, from the `for=` parameters of
/// `Forwarded` (RFC 7239 §4, §5.2). Each proxy appends the address it saw, so the
/// right-most hop that is not itself a trusted proxy is the first address no proxy of
/// ours can vouch past: that is the client. Entries to its left were written by the
/// client and are ignored. If every hop is trusted, the left-most is taken; with no
/// usable hop, `peer`. Garbage, `unknown` and obfuscated (`_name`) entries are skipped.
/// The answer is in canonical form (IPv4-mapped IPv6 becomes IPv4).
pub fn client_addr(peer: IpAddr, trusted: &[Cidr], x_forwarded_for: &[&str], forwarded: &[&str]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|cidr| cidr.contains(*ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> =
        x_forwarded_for.iter().flat_map(|line| line.split(',')).filter_map(parse_node).collect();
    if hops.is_empty() {
        hops = forwarded_for(forwarded);
    }
    hops.iter().rev().find(|ip| !is_trusted(ip)).or(hops.first()).copied().unwrap_or(peer)
}

/// The `for=` addresses of `Forwarded` header lines, oldest first (RFC 7239 §4:
/// `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"`).
fn forwarded_for(lines: &[&str]) -> Vec<IpAddr> {
    let mut hops = Vec::new();
    for line in lines {
        for element in split_unquoted(line, ',') {
            for pair in split_unquoted(element, ';') {
                let Some((name, value)) = pair.split_once('=') else { continue };
                // RFC 7239 §4: parameter names are case-insensitive.
                if name.trim().eq_ignore_ascii_case("for") {
                    hops.extend(parse_node(value));
                }
            }
        }
    }
    hops
}

/// `text` split at every `separator` that is not inside a quoted string.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// One hop: `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::17`, `[2001:db8::17]:4711`,
/// optionally quoted (RFC 7239 §6). `None` for `unknown` (§6.2), obfuscated identifiers
/// (§6.3, `_hidden`) and anything else that is not an address.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text).trim();
    let ip = if let Some(bracketed) = text.strip_prefix('[') {
        let (v6, _port) = bracketed.split_once(']')?;
        IpAddr::V6(v6.parse().ok()?)
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else {
        let (v4, port) = text.split_once(':')?;
        port.parse::<u16>().ok()?;
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(ip.to_canonical())
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections { limit: u32 }, // the address already holds `--max-connections-per-ip`
    TooFast { rate: u32 },             // the address is over `--max-upgrade-rate` new connections/s
}

impl Refusal {
    /// Which limit, for logs and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyConnections { .. } => "too many connections from this address",
            Refusal::TooFast { .. } => "too many new connections from this address",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyConnections { limit } => write!(f, "{} (limit {limit})", self.reason()),
            Refusal::TooFast { rate } => write!(f, "{} (limit {rate}/s)", self.reason()),
        }
    }
}

/// A token bucket of new connections: `rate` a second, up to `BURST_SECONDS × rate`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    nanotokens: u64,   // tokens × NANOS_PER_TOKEN
    refilled: Instant, // when `nanotokens` was last brought up to date
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Bucket {
        Bucket { nanotokens: capacity(rate), refilled: now }
    }

    /// The tokens there would be at `now` (no more than the capacity).
    fn level(&self, rate: u32, now: Instant) -> u64 {
        let gained = now.saturating_duration_since(self.refilled).as_nanos().saturating_mul(u128::from(rate));
        let level = u128::from(self.nanotokens).saturating_add(gained).min(u128::from(capacity(rate)));
        // The capacity is a u64, so the minimum is one too.
        u64::try_from(level).unwrap_or(u64::MAX)
    }

    /// Takes one token if there is one.
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.nanotokens = self.level(rate, now);
        self.refilled = now;
        match self.nanotokens >= NANOS_PER_TOKEN {
            true => {
                self.nanotokens -= NANOS_PER_TOKEN;
                true
            }
            false => false,
        }
    }

    fn is_full(&self, rate: u32, now: Instant) -> bool {
        self.level(rate, now) >= capacity(rate)
    }
}

/// Bucket capacity in nanotokens: BURST_SECONDS × rate tokens. At most 2 × u32::MAX ×
/// 10^9 ≈ 8.6 × 10^18, under u64::MAX.
fn capacity(rate: u32) -> u64 {
    BURST_SECONDS * u64::from(rate) * NANOS_PER_TOKEN
}

/// What is known about one address.
#[derive(Clone, Copy, Debug)]
struct Entry {
    open: u32,               // admitted connections not yet released
    bucket: Bucket,          // allowance of new connections (unused when the rate is off)
    logged: Option<Instant>, // when a refusal of this address was last logged
}

/// The per-address limits, `--max-connections-per-ip` and `--max-upgrade-rate`.
///
/// Memory: an address has an entry while it holds an admitted connection or its bucket
/// is refilling (up to `BURST_SECONDS` after its last new connection). Other entries are
/// dropped on `release` (when the rate limit is off) or by `sweep`, which `admit` runs by
/// itself whenever the map has doubled since the last sweep (and is at least
/// `MIN_SWEEP_LEN`). So the map holds at most max(MIN_SWEEP_LEN, 2 × the addresses with
/// an open connection or a connection in the last `BURST_SECONDS`), and sweeping costs
/// O(1) amortized per admit. With both limits off nothing is stored.
#[derive(Debug)]
pub struct PeerLimits {
    max_per_ip: u32,                 // open connections per address; 0 = no limit
    rate: u32,                       // new connections per second per address (bursts of 2×); 0 = no limit
    entries: HashMap<IpAddr, Entry>, // by canonical address
    sweep_at: usize,                 // `admit` sweeps when the map reaches this size
}

impl PeerLimits {
    pub fn new(max_per_ip: u32, rate: u32) -> PeerLimits {
        PeerLimits { max_per_ip, rate, entries: HashMap::new(), sweep_at: MIN_SWEEP_LEN }
    }

    /// Both limits off: nothing to count.
    fn off(&self) -> bool {
        self.max_per_ip == 0 && self.rate == 0
    }

    /// May `ip` open a connection now? On `Ok` the connection is counted: call
    /// [`release`](PeerLimits::release) once when it ends. A refusal counts nothing.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.off() {
            return Ok(());
        }
        if self.entries.len() >= self.sweep_at {
            self.sweep(now);
        }
        let rate = self.rate;
        let entry = self.entries.entry(ip.to_canonical()).or_insert_with(|| Entry {
            open: 0,
            bucket: Bucket::full(rate, now),
            logged: None,
        });
        // The count first, so a refused connection does not also spend the allowance.
        if self.max_per_ip > 0 && entry.open >= self.max_per_ip {
            return Err(Refusal::TooManyConnections { limit: self.max_per_ip });
        }
        if rate > 0 && !entry.bucket.take(rate, now) {
            return Err(Refusal::TooFast { rate });
        }
        entry.open += 1;
        Ok(())
    }

    /// A connection `admit` counted has ended. The entry goes when it holds no
    /// connection and its bucket was full when last looked at (always, with the rate
    /// off); otherwise `sweep` removes it once the bucket has refilled.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let Some(entry) = self.entries.get_mut(&ip) else { return };
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0 && (self.rate == 0 || entry.bucket.is_full(self.rate, entry.bucket.refilled)) {
            self.entries.remove(&ip);
        }
    }

    /// Should a refusal of `ip` be logged now? At most once per `LOG_INTERVAL` per
    /// address, so a flood from one address costs one log line a second. An address
    /// with no entry (it was not refused) is always worth a line.
    pub fn should_log(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&ip.to_canonical()) else { return true };
        match entry.logged {
            Some(last) if now.saturating_duration_since(last) < LOG_INTERVAL => false,
            _ => {
                entry.logged = Some(now);
                true
            }
        }
    }

    /// Drops the entries that hold no connection and whose bucket is full at `now`:
    /// they are indistinguishable from an address never seen.
    pub fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.entries.retain(|_, entry| entry.open > 0 || (rate > 0 && !entry.bucket.is_full(rate, now)));
        self.sweep_at = (2 * self.entries.len()).max(MIN_SWEEP_LEN);
    }

    /// Connections `ip` holds.
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.entries.get(&ip.to_canonical()).map_or(0, |entry| entry.open)
    }

    /// Addresses tracked (for `/metrics` and tests).
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests;
