//! Plain HTTP answers on the WebSocket port: the page, `/healthz`, `/metrics`, 404.
//!
//! Owns: the counters the loop keeps and their Prometheus rendering, and which path gets
//! which body. Must not touch: sockets (it returns response bytes).

use std::fmt::Write as _;

use slab::Slab;

use super::client::Client;
use crate::chat::Chat;
use crate::proto::handshake::{http_response, Status};

/// The page served on `GET /`, embedded in the binary.
const INDEX_HTML: &str = include_str!("../web/index.html");

/// Counters since start, for `/metrics` and the shutdown log line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub accepted: u64,            // TCP connections accepted
    pub refused_full: u64,        // answered 503 because of --max-connections
    pub accept_fd_errors: u64,    // accept() failures for lack of file descriptors
    pub upgrades: u64,            // successful WebSocket handshakes
    pub rejected: u64,            // handshakes answered with an HTTP error
    pub http_requests: u64,       // plain HTTP requests served
    pub messages_in: u64,         // complete data messages received
    pub deliveries: u64,          // messages queued to a recipient (one per recipient)
    pub bytes_in: u64,            // bytes read from sockets
    pub bytes_out: u64,           // bytes written to sockets
    pub slow_consumers: u64,      // clients dropped because their queue overflowed
    pub protocol_errors: u64,     // connections failed for breaking RFC 6455
    pub idle_timeouts: u64,       // connections closed for silence
    pub stored: u64,              // messages committed to history
    pub commits: u64,             // history transactions committed (at most one per loop turn)
    pub store_errors: u64,        // failed history commits or reads
    pub refused_per_address: u64, // answered 429: an address over its connection or upgrade-rate limit
    pub refused_auth: u64,        // refused for a missing or bad token, or a room it does not allow
}

/// Gauges sampled when `/metrics` is asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub connections: usize,    // slab entries
    pub open: usize,           // sessions in OPEN
    pub rooms: usize,          // rooms with members
    pub queued_bytes: usize,   // unsent bytes over all write queues
    pub buffered_bytes: usize, // partial input and fragment buffers over all clients
}

/// Gauges for /metrics, sampled when asked for.
pub fn gauges(clients: &Slab<Client>, chat: &Chat) -> Gauges {
    let mut gauges = Gauges { connections: clients.len(), rooms: chat.room_count(), ..Gauges::default() };
    for (_, client) in clients {
        gauges.open += usize::from(client.session.is_open());
        gauges.queued_bytes += client.queue.len();
        gauges.buffered_bytes += client.buffered_bytes();
    }
    gauges
}

/// The response to a plain `GET path`.
pub fn answer(path: &str, stats: &Stats, gauges: Gauges) -> Vec<u8> {
    match path {
        "/" | "/index.html" => http_response(Status::Ok, "text/html; charset=utf-8", INDEX_HTML.as_bytes()),
        "/healthz" => http_response(Status::Ok, "text/plain; charset=utf-8", b"ok\n"),
        "/metrics" => http_response(Status::Ok, "text/plain; version=0.0.4", metrics(stats, gauges).as_bytes()),
        _ => http_response(Status::NotFound, "text/plain; charset=utf-8", b"404 Not Found\n"),
    }
}

/// Prometheus text exposition format.
pub fn metrics(stats: &Stats, gauges: Gauges) -> String {
    let mut out = String::with_capacity(2048);
    let mut line = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP pollcast_{name} {help}\n# TYPE pollcast_{name} {kind}\npollcast_{name} {value}");
    };
    line("connections_accepted_total", "counter", "TCP connections accepted.", stats.accepted);
    line("connections_refused_total", "counter", "Connections answered 503 at --max-connections.", stats.refused_full);
    line(
        "accept_fd_errors_total",
        "counter",
        "accept() failures for lack of file descriptors.",
        stats.accept_fd_errors,
    );
    line("upgrades_total", "counter", "Successful WebSocket handshakes.", stats.upgrades);
    line("handshakes_rejected_total", "counter", "Upgrade requests answered with an HTTP error.", stats.rejected);
    line("http_requests_total", "counter", "Plain HTTP requests served.", stats.http_requests);
    line("messages_received_total", "counter", "Complete data messages received.", stats.messages_in);
    line("deliveries_total", "counter", "Messages queued to a recipient.", stats.deliveries);
    line("bytes_received_total", "counter", "Bytes read from client sockets.", stats.bytes_in);
    line("bytes_sent_total", "counter", "Bytes written to client sockets.", stats.bytes_out);
    line("slow_consumers_total", "counter", "Clients closed 1008 for overflowing --max-queue.", stats.slow_consumers);
    line("protocol_errors_total", "counter", "Connections failed for breaking RFC 6455.", stats.protocol_errors);
    line("idle_timeouts_total", "counter", "Connections closed for silence.", stats.idle_timeouts);
    line("history_stored_total", "counter", "Messages committed to history.", stats.stored);
    line("history_commits_total", "counter", "History transactions committed.", stats.commits);
    line("history_errors_total", "counter", "Failed history commits or reads.", stats.store_errors);
    line(
        "refused_per_address_total",
        "counter",
        "Connections answered 429 (per-address limits).",
        stats.refused_per_address,
    );
    line("refused_auth_total", "counter", "Upgrades refused for their token or room.", stats.refused_auth);
    line("connections", "gauge", "Client sockets held.", gauges.connections as u64);
    line("open_sessions", "gauge", "WebSocket sessions in OPEN.", gauges.open as u64);
    line("rooms", "gauge", "Rooms with members.", gauges.rooms as u64);
    line("queued_bytes", "gauge", "Unsent bytes in all write queues.", gauges.queued_bytes as u64);
    line("buffered_bytes", "gauge", "Partial input and fragment buffers.", gauges.buffered_bytes as u64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let stats = Stats::default();
        let text = |path| String::from_utf8(answer(path, &stats, Gauges::default())).unwrap();
        assert!(text("/healthz").starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text("/healthz").ends_with("\r\n\r\nok\n"));
        assert!(text("/").contains("pollcast"));
        assert!(text("/metrics").contains("pollcast_deliveries_total 0"));
        assert!(text("/nope").starts_with("HTTP/1.1 404 Not Found\r\n"));
    }
}
