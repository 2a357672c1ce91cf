//! Every limit and setting of the server in one struct, each with its unit and default.
//!
//! `main.rs` fills it from the command line (clap, with `POLLCAST_*` environment
//! variables); tests build it directly. Nothing here does IO.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::chat::ChatLimits;
use crate::proto::handshake::RequestLimits;
use crate::proto::session::Limits;

/// What the server does with a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Relay each message verbatim to every other client of the same room.
    Relay,
    /// Send each message back to its sender only (for conformance suites).
    Echo,
}

/// The server's settings. Defaults are in `Config::default()`, and `--help` prints them.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,     // where to accept; port 0 picks a free port (default 127.0.0.1:8080)
    pub mode: Mode,             // relay (default) or echo
    pub max_connections: usize, // open client sockets; beyond it new clients get 503 (default 10,000)
    pub max_message: usize,     // bytes in one message, after assembly; 1009 beyond (default 64 KiB)
    pub max_queue: usize,       // unsent bytes queued for one client; 1008 beyond (default 1 MiB)
    pub max_request: usize,     // bytes in an HTTP request head; 431 beyond (default 8 KiB)
    pub max_headers: usize,     // header lines in a request head; 431 beyond (default 64)
    pub handshake_timeout: Duration, // accept → complete request head; 408 after (default 10 s)
    pub ping_interval: Duration, // quiet time before we ping a client (default 25 s)
    pub idle_timeout: Duration, // silence before we close 1001 (default 2 × ping interval)
    pub close_timeout: Duration, // wait for the peer's Close, and linger after ours (default 2 s)
    pub shutdown_timeout: Duration, // on SIGINT/SIGTERM, how long to flush before exiting (default 2 s)
    pub read_budget: usize,     // bytes read from one client per loop turn, so none starves the rest (default 256 KiB)
    pub allow_origins: Vec<String>, // browser Origins allowed to upgrade; empty = any (default empty)
    pub max_rooms_per_client: usize, // rooms one JSON client may be in at once (default 32)
    pub max_text: usize,        // bytes of text in a chat send, dm or /msg; too_large beyond (default 8 KiB)
    pub db: Option<PathBuf>,    // history database; None = no history (default pollcast.db)
    pub history_keep: usize,    // messages kept per room (default 1000)
    pub history_max: usize,     // most messages one replay or page carries (default 500)
    pub history_default: usize, // messages a JSON client gets on joining a room (default 50)
    pub max_rate: u32,          // chat messages per second per client, bursts of 2x; 0 = unlimited (default 0)
}

impl Default for Config {
    fn default() -> Config {
        let ping_interval = Duration::from_secs(25);
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mode: Mode::Relay,
            max_connections: 10_000,
            max_message: 64 << 10,
            max_queue: 1 << 20,
            max_request: 8 << 10,
            max_headers: 64,
            handshake_timeout: Duration::from_secs(10),
            ping_interval,
            idle_timeout: 2 * ping_interval,
            close_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(2),
            read_budget: 256 << 10,
            allow_origins: Vec::new(),
            max_rooms_per_client: 32,
            max_text: 8 << 10,
            db: Some(PathBuf::from("pollcast.db")),
            history_keep: 1000,
            history_max: 500,
            history_default: 50,
            max_rate: 0,
        }
    }
}

impl Config {
    /// The per-connection part, handed to every `Session`.
    pub fn session_limits(&self) -> Limits {
        Limits {
            max_message: self.max_message,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
        }
    }

    /// The chat part.
    pub fn chat_limits(&self) -> ChatLimits {
        ChatLimits {
            max_rooms_per_client: self.max_rooms_per_client,
            max_text: self.max_text,
            history: self.db.is_some(),
            history_default: self.history_default.min(self.history_max),
            history_max: self.history_max,
            max_rate: self.max_rate,
        }
    }

    /// The request-head part, handed to the handshake parser.
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits { max_bytes: self.max_request, max_headers: self.max_headers }
    }

    /// The queue limit actually enforced: never below one maximal message plus its frame
    /// header, or a client could never be sent a message the server accepted.
    pub fn effective_max_queue(&self) -> usize {
        self.max_queue.max(crate::proto::frame::frame_len(self.max_message))
    }

    /// One line that tells an operator what protects them.
    pub fn limits_line(&self) -> String {
        format!(
            "limits: connections={} message={} queue={} request={} headers={} handshake-timeout={:?} \
             ping-interval={:?} idle-timeout={:?} close-timeout={:?} mode={:?} origins={} history={}",
            self.max_connections,
            human_bytes(self.max_message),
            human_bytes(self.effective_max_queue()),
            human_bytes(self.max_request),
            self.max_headers,
            self.handshake_timeout,
            self.ping_interval,
            self.idle_timeout,
            self.close_timeout,
            self.mode,
            if self.allow_origins.is_empty() { "any".to_owned() } else { self.allow_origins.join(",") },
            match &self.db {
                Some(path) => format!("{} (keep {} per room)", path.display(), self.history_keep),
                None => "off".to_owned(),
            },
        )
    }
}

/// Parses a byte size: `65536`, `64KiB`, `64k`, `1MiB`, `1m`, `16MB` (binary units).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().map_err(|_| format!("'{text}' is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit '{other}' (use B, KiB, MiB or GiB)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a duration: `25` (seconds), `25s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration (e.g. 25s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        other => return Err(format!("unknown duration unit '{other}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("'{text}': {e}"))
}

/// `65536` → `64KiB`, for the limits line.
pub fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(human_bytes(65536), "64KiB");
        assert_eq!(human_bytes(1 << 20), "1MiB");
        assert_eq!(human_bytes(1000), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn queue_fits_one_maximal_message() {
        let config = Config { max_message: 16 << 20, ..Config::default() };
        assert!(config.effective_max_queue() >= (16 << 20) + 10);
        assert_eq!(Config::default().effective_max_queue(), 1 << 20);
    }
}
