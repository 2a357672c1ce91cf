//! What `/metrics` on the admin port says: the loop's counters, a few gauges sampled when
//! asked, two latency histograms, and the process's own figures, in the Prometheus /
//! OpenMetrics text format (`prometheus-client` does the exposition and the histograms).
//!
//! Owns: the counters (`Stats`, plain integers bumped on the hot path: no atomics, no
//! allocation), the histograms of the loop turn and the history commit, closes by code
//! and refusals by HTTP status. Must not touch: sockets. No label value ever comes from a
//! client (no room names, no user ids): labels are close codes, statuses and the version.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use slab::Slab;

use super::client::Client;
use super::history::History;
use crate::chat::Chat;

/// The loop-turn histogram's buckets: 10 µs doubling to ~330 ms.
const TURN_BUCKETS: (f64, f64, u16) = (10e-6, 2.0, 16);
/// The history-commit histogram's buckets: 20 µs doubling to ~330 ms.
const COMMIT_BUCKETS: (f64, f64, u16) = (20e-6, 2.0, 15);

/// Counters since start, for `/metrics` and the shutdown log line.
#[derive(Debug)]
pub struct Stats {
    pub accepted: u64,                // TCP connections accepted
    pub refused_full: u64,            // answered 503 because of --max-connections
    pub accept_fd_errors: u64,        // accept() failures for lack of file descriptors
    pub upgrades: u64,                // successful WebSocket handshakes
    pub rejected: u64,                // handshakes answered with an HTTP error
    pub http_requests: u64,           // plain HTTP requests served (both ports)
    pub messages_in: u64,             // complete data messages received
    pub deliveries: u64,              // messages queued to a recipient (one per recipient)
    pub bytes_in: u64,                // bytes read from sockets
    pub bytes_out: u64,               // bytes written to sockets
    pub slow_consumers: u64,          // clients dropped because their queue overflowed
    pub protocol_errors: u64,         // connections failed for breaking RFC 6455
    pub idle_timeouts: u64,           // connections closed for silence
    pub stored: u64,                  // messages committed to history
    pub commits: u64,                 // history transactions committed (at most one per loop turn)
    pub store_errors: u64,            // failed history commits or reads
    pub refused_per_address: u64,     // answered 429: an address over its connection or upgrade-rate limit
    pub refused_auth: u64,            // refused for a missing or bad token, or a room it does not allow
    pub deflate_upgrades: u64,        // upgrades that agreed to permessage-deflate
    pub compressed: u64,              // messages compressed (once per codec, however many members got them)
    pub closes: BTreeMap<u16, u64>, // connections ended, by the close code sent (1006: none, the TCP connection ended)
    pub refusals: BTreeMap<u16, u64>, // requests refused, by HTTP status
    pub turn: Histogram,            // seconds from waking up to going back to sleep, per loop turn
    pub commit: Histogram,          // seconds per history commit that wrote something
}

impl Default for Stats {
    fn default() -> Stats {
        let histogram = |(start, factor, len): (f64, f64, u16)| Histogram::new(exponential_buckets(start, factor, len));
        Stats {
            accepted: 0,
            refused_full: 0,
            accept_fd_errors: 0,
            upgrades: 0,
            rejected: 0,
            http_requests: 0,
            messages_in: 0,
            deliveries: 0,
            bytes_in: 0,
            bytes_out: 0,
            slow_consumers: 0,
            protocol_errors: 0,
            idle_timeouts: 0,
            stored: 0,
            commits: 0,
            store_errors: 0,
            refused_per_address: 0,
            refused_auth: 0,
            deflate_upgrades: 0,
            compressed: 0,
            closes: BTreeMap::new(),
            refusals: BTreeMap::new(),
            turn: histogram(TURN_BUCKETS),
            commit: histogram(COMMIT_BUCKETS),
        }
    }
}

impl Stats {
    /// A request refused with `status`.
    pub fn refused(&mut self, status: u16) {
        *self.refusals.entry(status).or_default() += 1;
    }

    /// A connection ended with close code `code`.
    pub fn closed(&mut self, code: u16) {
        *self.closes.entry(code).or_default() += 1;
    }

    /// One loop turn took `took`.
    pub fn turn_took(&self, took: Duration) {
        self.turn.observe(took.as_secs_f64());
    }
}

/// Gauges sampled when `/metrics` is asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub connections: usize,    // slab entries (public and admin)
    pub open: usize,           // sessions in OPEN
    pub rooms: usize,          // rooms with members
    pub queued_bytes: usize,   // unsent bytes over all write queues
    pub buffered_bytes: usize, // partial input and fragment buffers over all clients
    pub index_behind: u64,     // history bytes committed that the index has not caught up with
}

/// The gauges, sampled now.
pub fn gauges(clients: &Slab<Client>, chat: &Chat, history: &History) -> Gauges {
    let (connections, rooms, index_behind) = (clients.len(), chat.room_count(), history.behind());
    let mut gauges = Gauges { connections, rooms, index_behind, ..Gauges::default() };
    for (_, client) in clients {
        gauges.open += usize::from(client.session.is_open());
        gauges.queued_bytes += client.queue.len();
        gauges.buffered_bytes += client.buffered_bytes();
    }
    gauges
}

/// With `--redis`: the cluster's figures (`cluster.rs` keeps them). Without it, none of
/// these series exist, so a single node's `/metrics` is what it always was.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterFigures {
    pub up: bool,          // both Redis links ready (gauge)
    pub sent: u64,         // publishes and store scripts sent to Redis
    pub received: u64,     // envelopes from the cluster delivered here
    pub store_failed: u64, // messages answered store_failed (Redis refused, or went away first)
    pub unrelayed: u64,    // messages that reached this node's members only (no history, Redis lost)
    pub outages: u64,      // times a Redis link went down
}

/// The OpenMetrics text of everything above, plus open file descriptors, resident
/// memory and `pollcast_build_info{version}`; with `cluster`, the `redis_*` series.
pub fn render(stats: &Stats, gauges: Gauges, cluster: Option<ClusterFigures>) -> String {
    let mut registry = Registry::with_prefix("pollcast");
    if let Some(cluster) = cluster {
        let counters = [
            ("redis_sent", "Publishes and store scripts sent to Redis.", cluster.sent),
            ("redis_received", "Messages from the cluster delivered on this node.", cluster.received),
            ("redis_store_failed", "Messages answered store_failed.", cluster.store_failed),
            ("redis_unrelayed", "Messages that reached this node's members only.", cluster.unrelayed),
            ("redis_outages", "Times a Redis link went down.", cluster.outages),
        ];
        for (name, help, value) in counters {
            let counter: Counter = Counter::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        }
        let up: Gauge = Gauge::default();
        up.set(i64::from(cluster.up));
        registry.register("redis_up", "1 when both Redis links are ready.", up);
    }
    let counters: [(&str, &str, u64); 20] = [
        ("connections_accepted", "TCP connections accepted.", stats.accepted),
        ("connections_refused", "Connections answered 503 at --max-connections.", stats.refused_full),
        ("accept_fd_errors", "accept() failures for lack of file descriptors.", stats.accept_fd_errors),
        ("upgrades", "Successful WebSocket handshakes.", stats.upgrades),
        ("handshakes_rejected", "Upgrade requests answered with an HTTP error.", stats.rejected),
        ("http_requests", "Plain HTTP requests served.", stats.http_requests),
        ("messages_received", "Complete data messages received.", stats.messages_in),
        ("deliveries", "Messages queued to a recipient.", stats.deliveries),
        ("bytes_received", "Bytes read from client sockets.", stats.bytes_in),
        ("bytes_sent", "Bytes written to client sockets.", stats.bytes_out),
        ("slow_consumers", "Clients closed 1008 for overflowing --max-queue.", stats.slow_consumers),
        ("protocol_errors", "Connections failed for breaking RFC 6455.", stats.protocol_errors),
        ("idle_timeouts", "Connections closed for silence.", stats.idle_timeouts),
        ("history_stored", "Messages committed to history.", stats.stored),
        ("history_commits", "History commits: one log write per loop turn that stored messages.", stats.commits),
        ("history_errors", "Failed history commits or reads.", stats.store_errors),
        ("refused_per_address", "Connections answered 429 (per-address limits).", stats.refused_per_address),
        ("refused_auth", "Upgrades refused for their token or room.", stats.refused_auth),
        ("deflate_upgrades", "Upgrades that agreed to permessage-deflate.", stats.deflate_upgrades),
        ("deflate_compressed", "Messages compressed, once per codec however many members got them.", stats.compressed),
    ];
    for (name, help, value) in counters {
        let counter: Counter = Counter::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    let (fds, rss) = process_figures();
    let gauge_values: [(&str, &str, usize); 8] = [
        ("connections", "Client sockets held.", gauges.connections),
        ("open_sessions", "WebSocket sessions in OPEN.", gauges.open),
        ("rooms", "Rooms with members.", gauges.rooms),
        ("queued_bytes", "Unsent bytes in all write queues.", gauges.queued_bytes),
        ("buffered_bytes", "Partial input and fragment buffers.", gauges.buffered_bytes),
        (
            "history_index_behind_bytes",
            "Message log bytes the history index has not caught up with.",
            gauges.index_behind as usize,
        ),
        ("open_fds", "Open file descriptors of the process.", fds),
        ("resident_memory_bytes", "Resident memory of the process.", rss),
    ];
    for (name, help, value) in gauge_values {
        let gauge: Gauge = Gauge::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, gauge);
    }
    register_family(
        &mut registry,
        "closes",
        "Connections ended, by the close code sent (1006: none).",
        "code",
        &stats.closes,
    );
    register_family(&mut registry, "refusals", "Requests refused, by HTTP status.", "status", &stats.refusals);
    registry.register("loop_turn_seconds", "Time from waking up to sleeping again, per loop turn.", stats.turn.clone());
    registry.register("history_commit_seconds", "Time per history commit that wrote something.", stats.commit.clone());
    registry.register("build", "The running version.", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
    let mut text = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// A counter family with one label, from a map of label value → count.
fn register_family(registry: &mut Registry, name: &str, help: &str, label: &str, counts: &BTreeMap<u16, u64>) {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    for (value, count) in counts {
        family.get_or_create(&vec![(label.to_owned(), value.to_string())]).inc_by(*count);
    }
    registry.register(name, help, family);
}

/// Open file descriptors (`/proc/self/fd`) and resident memory (`/proc/self/statm`), or
/// 0 where `/proc` cannot tell.
fn process_figures() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1).and_then(|rss| rss.parse::<usize>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    (fds, pages * page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_histograms() {
        let mut stats = Stats { deliveries: 7, ..Stats::default() };
        stats.closed(1000);
        stats.closed(1000);
        stats.refused(429);
        stats.turn_took(Duration::from_micros(15));
        let text = render(&stats, Gauges { rooms: 2, index_behind: 4096, ..Gauges::default() }, None);
        for line in [
            "pollcast_deliveries_total 7",
            "pollcast_rooms 2",
            "pollcast_history_index_behind_bytes 4096",
            "pollcast_closes_total{code=\"1000\"} 2",
            "pollcast_refusals_total{status=\"429\"} 1",
            "pollcast_loop_turn_seconds_count 1",
            "pollcast_build_info{version=\"",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("pollcast_open_fds "), "{text}");
    }

    #[test]
    fn redis_series_exist_only_in_a_cluster() {
        let stats = Stats::default();
        assert!(!render(&stats, Gauges::default(), None).contains("redis"));
        let figures = ClusterFigures { up: true, sent: 3, received: 2, ..ClusterFigures::default() };
        let text = render(&stats, Gauges::default(), Some(figures));
        for line in ["pollcast_redis_up 1", "pollcast_redis_sent_total 3", "pollcast_redis_received_total 2"] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
