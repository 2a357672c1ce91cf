//! Every limit and setting of the server in one struct, each with its unit and default.
//!
//! Each field's clap attributes are its flag, its environment variable, its default and
//! its help: `main.rs` parses the command line into this struct, tests start from
//! `Config::default()`. The one IO here is `access()`, which reads the key file a flag
//! names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::chat::admission::Access;
use crate::chat::auth::{AuthConfig, Patterns};
use crate::chat::ChatLimits;
use crate::proto::deflate::{DeflateConfig, DEFAULT_THRESHOLD};
use crate::proto::handshake::RequestLimits;
use crate::proto::session::Limits;
use crate::redis::RedisUrl;
use crate::server::cluster::ClusterConfig;
use crate::server::peers::Cidr;

/// What the server does with a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Relay each message verbatim to every other client of the same room.
    Relay,
    /// Send each message back to its sender only (for conformance suites).
    Echo,
}

/// The server's settings: the command line (clap reads each field's attributes, and
/// every flag has a `POLLCAST_*` environment variable) and the only place any default is
/// written. `Config::default()` is the command line with no flags.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (logged).
    #[arg(long, env = "POLLCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Let several processes listen on the same --listen address (SO_REUSEPORT): the
    /// kernel spreads new connections over them. For N nodes of one cluster on one box.
    #[arg(long, env = "POLLCAST_REUSE_PORT", value_parser = clap::builder::BoolishValueParser::new())]
    pub reuse_port: bool,

    /// relay: each message goes to every other client of its room; echo: back to its sender.
    #[arg(long, env = "POLLCAST_MODE", value_enum, default_value = "relay")]
    pub mode: Mode,

    /// Most client connections held at once; more are answered 503.
    #[arg(long, env = "POLLCAST_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: usize,

    /// Largest message accepted (after reassembly); larger ones close the sender with 1009.
    #[arg(long, env = "POLLCAST_MAX_MESSAGE", default_value = "64KiB", value_parser = parse_size)]
    pub max_message: usize,

    /// Unsent bytes held per client; a client past it is a slow consumer, closed with 1008.
    /// Never below one maximal message (raised, with a warning).
    #[arg(long, env = "POLLCAST_MAX_QUEUE", default_value = "1MiB", value_parser = parse_size)]
    pub max_queue: usize,

    /// Largest HTTP request head; larger ones are answered 431.
    #[arg(long, env = "POLLCAST_MAX_REQUEST", default_value = "8KiB", value_parser = parse_size)]
    pub max_request: usize,

    /// Most header lines in a request head; more are answered 431.
    #[arg(long, env = "POLLCAST_MAX_HEADERS", default_value = "64")]
    pub max_headers: usize,

    /// Time from accept to a complete request head; slower clients get 408.
    #[arg(long, env = "POLLCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Quiet time after which the server pings a client.
    #[arg(long, env = "POLLCAST_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Silence after which a client is closed with 1001 [default: 2 × ping interval].
    #[arg(long = "idle-timeout", env = "POLLCAST_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout_flag: Option<Duration>,

    /// How long to wait for a client's Close answer, and to linger after ours.
    #[arg(long, env = "POLLCAST_CLOSE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to flush the 1001 closes before exiting.
    #[arg(long, env = "POLLCAST_SHUTDOWN_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Bytes read from one client per loop turn before the others get their turn.
    #[arg(long, env = "POLLCAST_READ_BUDGET", default_value = "256KiB", value_parser = parse_nonzero_size)]
    pub read_budget: usize,

    /// Browser Origin allowed to upgrade (repeatable, or comma-separated in the env var);
    /// when given, others get 403.
    #[arg(long = "allow-origin", env = "POLLCAST_ALLOW_ORIGIN", value_delimiter = ',')]
    pub allow_origins: Vec<String>,

    /// Rooms one pollcast.v1 client may be in at once.
    #[arg(long, env = "POLLCAST_MAX_ROOMS_PER_CLIENT", default_value = "32", value_parser = at_least_one)]
    pub max_rooms_per_client: usize,

    /// Longest text in a chat send, dm or /msg; longer ones get error too_large.
    #[arg(long, env = "POLLCAST_MAX_TEXT", default_value = "8KiB", value_parser = parse_size)]
    pub max_text: usize,

    /// Largest shared file (`file` upload), judged on its header before a byte is kept;
    /// larger ones get error too_large. Each upload holds at most this much in memory.
    #[arg(long, env = "POLLCAST_MAX_FILE", default_value = "1MiB", value_parser = parse_size)]
    pub max_file: usize,

    /// Uploads open at once across the server (each buffers up to --max-file); a `file`
    /// header beyond it gets error busy. 0: no uploads.
    #[arg(long, env = "POLLCAST_MAX_UPLOADS", default_value = "16")]
    pub max_uploads: usize,

    /// SQLite file indexing message history (created if missing; WAL mode). The messages'
    /// bytes go to the directory beside it named after it with `-log` (pollcast.db-log/).
    /// Not used with --redis: a cluster keeps its history in Redis streams.
    #[arg(long, env = "POLLCAST_DB", default_value = "pollcast.db")]
    pub db: PathBuf,

    /// Keep no history: nothing is stored, no replay. (The variable takes 1/0,
    /// true/false, yes/no, on/off.)
    #[arg(long, env = "POLLCAST_NO_HISTORY", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_history: bool,

    /// Messages kept per room; older ones are trimmed.
    #[arg(long, env = "POLLCAST_HISTORY_KEEP", default_value = "1000", value_parser = at_least_one)]
    pub history_keep: usize,

    /// Size at which the message log (`<db>-log/`) starts a new file. The log holds about
    /// twice the live messages plus two files at most; the SQLite index catches up at
    /// least every half file written (and every --history-index-every commits).
    #[arg(long, env = "POLLCAST_HISTORY_LOG_FILE_SIZE", default_value = "64MiB", value_parser = parse_nonzero_size)]
    pub history_log_file_size: usize,

    /// Commits (loop turns that stored messages) after which the SQLite index catches up
    /// with the message log; it also does every half log file and before any history
    /// read. Fewer leave less for a start to scan after a crash, at more index work per
    /// message. A commit is durable either way: the log is the truth.
    #[arg(long, env = "POLLCAST_HISTORY_INDEX_EVERY", default_value_t = crate::store::sqlite::INDEX_EVERY, value_parser = at_least_one)]
    pub history_index_every: usize,

    /// Most messages one replay (?history=N, join) or history page carries.
    #[arg(long, env = "POLLCAST_HISTORY_MAX", default_value = "500", value_parser = at_least_one)]
    pub history_max: usize,

    /// Messages a pollcast.v1 client is sent when it joins a room without asking for a
    /// count (at most --history-max).
    #[arg(long, env = "POLLCAST_HISTORY_DEFAULT", default_value = "50")]
    pub history_default: usize,

    /// Messages per second one client may send (bursts of twice that); more are dropped
    /// and answered rate_limited; 0: no limit. Clients on loopback are exempt unless
    /// this is given (local tools and load tests) [default: 100].
    #[arg(long, env = "POLLCAST_MAX_RATE")]
    pub max_rate: Option<u32>,

    /// Open connections one client address may hold; more are answered 429. Loopback
    /// addresses are exempt unless this or --max-upgrade-rate is given [default: 256].
    #[arg(long, env = "POLLCAST_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<u32>,

    /// New connections per second one client address may open (bursts of twice that);
    /// more are answered 429. Loopback is exempt as above [default: 20].
    #[arg(long, env = "POLLCAST_MAX_UPGRADE_RATE")]
    pub max_upgrade_rate: Option<u32>,

    /// A reverse proxy's address or range (repeatable, or comma-separated in the env var):
    /// only from these peers is the client address taken from X-Forwarded-For/Forwarded.
    #[arg(long = "trust-proxy", env = "POLLCAST_TRUST_PROXY", value_delimiter = ',', value_parser = Cidr::parse)]
    pub trust_proxy: Vec<Cidr>,

    /// Turns on tokens: an HS256 shared secret in this file (one trailing newline is not
    /// part of it). Every upgrade then needs a valid JWT.
    #[arg(long, env = "POLLCAST_JWT_SECRET_FILE", conflicts_with = "jwt_public_key_file")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Turns on tokens: a PEM public key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA).
    #[arg(long, env = "POLLCAST_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Clock skew tolerated on a token's exp and nbf.
    #[arg(long, env = "POLLCAST_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// When given, a token's iss must be exactly this.
    #[arg(long, env = "POLLCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When given, a token's aud must be (or contain) this.
    #[arg(long, env = "POLLCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Accept tokens without exp (they never expire), as some backends mint them.
    #[arg(long, env = "POLLCAST_JWT_ALLOW_NO_EXP", value_parser = clap::builder::BoolishValueParser::new())]
    pub jwt_allow_no_exp: bool,

    /// The claim holding the user id (e.g. user_id for tokens minted by a PHP backend).
    #[arg(long, env = "POLLCAST_JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,

    /// The claim holding the display name (falls back to the user id).
    #[arg(long, env = "POLLCAST_JWT_NAME_CLAIM", default_value = "name")]
    pub jwt_name_claim: String,

    /// With tokens on: let clients without a token in, as guest-N, into --guest-rooms only.
    #[arg(long, env = "POLLCAST_ALLOW_GUESTS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_guests: bool,

    /// Log lines as text (for people) or JSON (one object per line, for collectors).
    #[arg(long, env = "POLLCAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,

    /// The admin port: /metrics, /healthz and the JSON API (publish, dm, disconnect, rooms,
    /// history); `off` disables it. Never subject to --max-connections. A non-loopback
    /// address needs --admin-token-file.
    #[arg(long, env = "POLLCAST_ADMIN_LISTEN", default_value = "127.0.0.1:8081", value_parser = parse_admin_listen)]
    pub admin_listen: AdminListen,

    /// A file holding the admin bearer token: every admin request must carry
    /// `Authorization: Bearer TOKEN` (one trailing newline is not part of it).
    #[arg(long, env = "POLLCAST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// PEM certificate chain (leaf first): serve wss:// and https:// (with --tls-key).
    /// SIGHUP reloads the pair.
    #[arg(long, env = "POLLCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) for --tls-cert.
    #[arg(long, env = "POLLCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// permessage-deflate (RFC 7692): on: accept a client's offer (browsers make one), so
    /// messages of at least --deflate-threshold go compressed to clients that agreed,
    /// compressed once per broadcast; off: decline every offer.
    #[arg(long, env = "POLLCAST_DEFLATE", value_enum, default_value = "on")]
    pub deflate: Switch,

    /// Messages shorter than this are sent uncompressed: below it compressing costs more
    /// time than the bytes it saves are worth (measured: see proto/deflate.rs).
    #[arg(long, env = "POLLCAST_DEFLATE_THRESHOLD", default_value_t = DEFAULT_THRESHOLD, value_parser = parse_size)]
    pub deflate_threshold: usize,

    /// Join a cluster of nodes through Redis: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`
    /// (the password is never logged). Without it the node stands alone, as always.
    #[arg(long, env = "POLLCAST_REDIS", value_name = "URL")]
    pub redis: Option<SecretUrl>,

    /// With rediss://: trust the CAs in this PEM file (or Redis's self-signed certificate
    /// itself) instead of the system's bundle.
    #[arg(long, env = "POLLCAST_REDIS_CA_FILE", requires = "redis")]
    pub redis_ca_file: Option<PathBuf>,

    /// This node's id in the cluster (letters, digits, - _ .) [default: generated at start].
    #[arg(long, env = "POLLCAST_NODE_ID", requires = "redis")]
    pub node_id: Option<String>,

    /// A node's heartbeat in Redis lives this long and is refreshed every third of it: a
    /// node killed with -9 drops out (its names are free again) within this time.
    #[arg(long, env = "POLLCAST_NODE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub node_ttl: Duration,

    /// Longest wait on Redis: a connect, the handshake, and the oldest command's reply.
    /// Past it the link is dropped and reconnects (so a stuck Redis is never a hang).
    #[arg(long, env = "POLLCAST_REDIS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Longest delay between reconnect attempts (they start at 100ms and double).
    #[arg(long, env = "POLLCAST_REDIS_BACKOFF_MAX", default_value = "5s", value_parser = parse_duration)]
    pub redis_backoff_max: Duration,

    /// Bytes one Redis link may hold: queued to write, or read and not yet a whole reply.
    /// Past it the command is refused (or the link dropped and reconnected). With history,
    /// at least two files of --max-file and 64 KiB (a file crosses the link whole).
    #[arg(long, env = "POLLCAST_REDIS_MAX_BUFFER", default_value = "16MiB", value_parser = parse_size)]
    pub redis_max_buffer: usize,

    /// Rooms guests may join and send to (repeatable; names, prefixes ending in *, or *).
    #[arg(long = "guest-rooms", env = "POLLCAST_GUEST_ROOMS", value_delimiter = ',', default_value = "lobby")]
    pub guest_rooms: Vec<String>,
}

/// A URL that may hold a password (`--redis`): taken as given (a clap parse error would
/// print the value), parsed by `Config::cluster`, and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub String);

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<SecretUrl, Self::Err> {
        Ok(SecretUrl(text.to_owned()))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match RedisUrl::parse(&self.0) {
            Ok(url) => write!(f, "{url}"),
            Err(_) => f.write_str("(an unparsable URL)"),
        }
    }
}

/// A feature switch: `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `--admin-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminListen {
    At(SocketAddr), // serve the admin port here
    Off,            // no admin port
}

/// Parses `--admin-listen`: `off` or an address.
pub fn parse_admin_listen(text: &str) -> Result<AdminListen, String> {
    match text.trim() {
        "off" | "none" => Ok(AdminListen::Off),
        addr => addr.parse().map(AdminListen::At).map_err(|_| format!("'{text}' is not an address (or off)")),
    }
}

/// Per-address limits when their flags are not given: enough for a household or an
/// office behind one address, far below --max-connections, so one address cannot take
/// every slot; loopback (local tools, load tests, a proxy on the same box) is exempt.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 256;
/// Messages per second per client by default (bursts of twice that): far above what a
/// person types or a well-behaved bot sends, far below a flood.
pub const DEFAULT_MAX_RATE: u32 = 100;
/// New connections per second per address by default (bursts of twice that): a page
/// reload storm passes, a connect loop from one address does not.
pub const DEFAULT_MAX_UPGRADE_RATE: u32 = 20;

impl Default for Config {
    /// The command line with no flags and no environment: every clap default.
    fn default() -> Config {
        use clap::{Args, FromArgMatches};
        let command = Config::augment_args(clap::Command::new("pollcast")).mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["pollcast"]);
        Config::from_arg_matches(&matches).expect("the built-in defaults parse")
    }
}

/// What a file's store command or fetch reply adds to its bytes at most: the script,
/// the names, the notice, RESP framing (far less in practice).
const FILE_FRAMING: usize = 64 << 10;

impl Config {
    /// Silence before a client is closed: `--idle-timeout`, else twice the ping interval.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout_flag.unwrap_or(2 * self.ping_interval)
    }

    /// The cluster settings with `--redis`, else `None`; an error (without the
    /// password) when the URL or the node id is bad.
    pub fn cluster(&self) -> Result<Option<ClusterConfig>, String> {
        let Some(SecretUrl(text)) = &self.redis else { return Ok(None) };
        let url = RedisUrl::parse(text).map_err(|e| format!("--redis: {e}"))?;
        let node = match &self.node_id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                id.clone()
            }
            Some(_) => return Err("--node-id: 1-64 of letters, digits, - _ .".into()),
            None => generated_node_id(),
        };
        if self.node_ttl < Duration::from_millis(300) {
            return Err("--node-ttl: at least 300ms (the heartbeat is refreshed every third of it)".into());
        }
        // A shared file crosses the commands link whole, both ways (its store command,
        // a fetch's reply): room for two, and their RESP framing, in one link buffer.
        if !self.no_history && self.max_file.saturating_mul(2).saturating_add(FILE_FRAMING) > self.redis_max_buffer {
            return Err(format!(
                "--redis-max-buffer ({}) must hold two files of --max-file ({}) and {FILE_FRAMING} bytes more",
                self.redis_max_buffer, self.max_file
            ));
        }
        let limits = (self.redis_max_buffer, self.redis_timeout, self.redis_backoff_max);
        let mut cluster = ClusterConfig::new(url, node, self.node_ttl, limits);
        cluster.ca_file = self.redis_ca_file.clone();
        Ok(Some(cluster))
    }

    /// The history database, or `None` with `--no-history`.
    pub fn history_db(&self) -> Option<&Path> {
        (!self.no_history).then_some(self.db.as_path())
    }

    /// Warnings about values the server will not use as given (logged at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.effective_max_queue() > self.max_queue {
            warnings.push(format!(
                "--max-queue {} raised to {}: a queue must hold one maximal message (--max-message {})",
                human_bytes(self.max_queue),
                human_bytes(self.effective_max_queue()),
                human_bytes(self.max_message)
            ));
        }

        if self.history_default > self.history_max {
            warnings.push(format!(
                "--history-default {} lowered to --history-max {}",
                self.history_default, self.history_max
            ));
        }
        warnings
    }

    /// Who may come in: the JWT key (read from its file) and its rules, and the guests.
    /// Errors name the file and what is wrong, never the key.
    pub fn access(&self) -> Result<Access, String> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
        let auth = match (&self.jwt_secret_file, &self.jwt_public_key_file) {
            (Some(path), _) => {
                Some(AuthConfig::from_secret(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?)
            }
            (None, Some(path)) => {
                Some(AuthConfig::from_public_key_pem(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?)
            }
            (None, None) => None,
        };
        let auth = auth.map(|mut auth| {
            auth.leeway_secs = self.jwt_leeway.as_secs();
            auth.issuer = self.jwt_issuer.clone();
            auth.audience = self.jwt_audience.clone();
            auth.allow_no_exp = self.jwt_allow_no_exp;
            auth.user_claim = self.jwt_user_claim.clone();
            auth.name_claim = self.jwt_name_claim.clone();
            auth
        });
        if auth.is_none() && self.allow_guests {
            return Err("--allow-guests needs --jwt-secret-file or --jwt-public-key-file".to_owned());
        }
        let guest_rooms = Patterns::from_items(&self.guest_rooms).map_err(|e| format!("--guest-rooms: {e}"))?;
        Ok(Access { auth, allow_guests: self.allow_guests, guest_rooms })
    }

    /// The admin port's address and bearer token (read from its file), or `None` when it
    /// is off. Refuses a non-loopback address without a token: the API can post as
    /// anyone and disconnect anyone.
    pub fn admin(&self) -> Result<Option<(SocketAddr, Option<String>)>, String> {
        let AdminListen::At(addr) = self.admin_listen else { return Ok(None) };
        let token = match &self.admin_token_file {
            Some(path) => {
                let file = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let token = file.strip_suffix('\n').map_or(file.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                if token.is_empty() {
                    return Err(format!("{}: the admin token file is empty", path.display()));
                }
                Some(token.to_owned())
            }
            None => None,
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(format!(
                "--admin-listen {addr} is reachable from other machines: give --admin-token-file too (or keep it on 127.0.0.1)"
            ));
        }
        Ok(Some((addr, token)))
    }

    /// The certificate pair, when TLS is on.
    pub fn tls(&self) -> Option<crate::server::tls::TlsConfig> {
        let (cert_path, key_path) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(crate::server::tls::TlsConfig { cert_path, key_path })
    }

    /// Per-address limits in force: (connections, new connections per second, whether
    /// loopback addresses are exempt because neither flag was given).
    pub fn peer_limits(&self) -> (u32, u32, bool) {
        (
            self.max_connections_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            self.max_upgrade_rate.unwrap_or(DEFAULT_MAX_UPGRADE_RATE),
            self.max_connections_per_ip.is_none() && self.max_upgrade_rate.is_none(),
        )
    }

    /// Does `--max-rate` apply to a client at `addr`? Loopback is exempt unless the flag
    /// was given.
    pub fn rate_limited(&self, addr: std::net::IpAddr) -> bool {
        self.max_rate.is_some() || !addr.is_loopback()
    }

    /// The per-connection part, handed to every `Session`.
    pub fn session_limits(&self) -> Limits {
        Limits {
            max_message: self.max_message,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout(),
            close_timeout: self.close_timeout,
        }
    }

    /// The chat part.
    pub fn chat_limits(&self) -> ChatLimits {
        ChatLimits {
            max_rooms_per_client: self.max_rooms_per_client,
            max_text: self.max_text,
            history: !self.no_history,
            history_default: self.history_default.min(self.history_max),
            history_max: self.history_max,
            max_rate: self.max_rate.unwrap_or(DEFAULT_MAX_RATE),
            max_file: self.max_file,
            max_uploads: self.max_uploads,
        }
    }

    /// What the server agrees to in permessage-deflate, or `None` with `--deflate off`.
    pub fn deflate(&self) -> Option<DeflateConfig> {
        (self.deflate == Switch::On).then(DeflateConfig::default)
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
             ping-interval={:?} idle-timeout={:?} close-timeout={:?} mode={:?} origins={} history={} \
             per-ip={} auth={} tls={} deflate={}",
            self.max_connections,
            human_bytes(self.max_message),
            human_bytes(self.effective_max_queue()),
            human_bytes(self.max_request),
            self.max_headers,
            self.handshake_timeout,
            self.ping_interval,
            self.idle_timeout(),
            self.close_timeout,
            self.mode,
            if self.allow_origins.is_empty() { "any".to_owned() } else { self.allow_origins.join(",") },
            match (self.history_db(), &self.redis) {
                (Some(_), Some(_)) => format!("redis-streams (keep ~{} per room)", self.history_keep),
                (Some(path), None) => format!("{} (keep {} per room)", path.display(), self.history_keep),
                (None, _) => "off".to_owned(),
            },
            {
                let (conns, rate, exempt) = self.peer_limits();
                format!("{conns}conn,{rate}/s{}", if exempt { ",loopback-exempt" } else { "" })
            },
            match (&self.jwt_secret_file, &self.jwt_public_key_file, self.allow_guests) {
                (None, None, _) => "off",
                (_, _, true) => "jwt+guests",
                _ => "jwt",
            },
            if self.tls_cert.is_some() { "on" } else { "off" },
            match self.deflate() {
                Some(_) => format!("on(threshold={})", human_bytes(self.deflate_threshold)),
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

/// A size of at least one byte.
pub fn parse_nonzero_size(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        0 => Err("must be at least 1 byte".to_owned()),
        n => Ok(n),
    }
}

/// A count of at least one.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a count")),
    }
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

/// A node id unique enough for a cluster: this process's id and the start time's
/// nanoseconds, in hex (`--node-id` names one instead).
fn generated_node_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("n{:x}-{nanos:x}", std::process::id())
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
    fn defaults_come_from_the_flags() {
        let config = Config::default();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!((config.max_connections, config.max_message, config.max_queue), (10_000, 64 << 10, 1 << 20));
        assert_eq!(config.idle_timeout(), Duration::from_secs(50), "twice the ping interval");
        assert_eq!(config.history_db(), Some(Path::new("pollcast.db")));
        assert_eq!((config.max_file, config.max_uploads), (1 << 20, 16));
        assert_eq!(config.history_index_every, 64);
        assert!(config.warnings().is_empty());
        assert!(at_least_one("0").is_err() && parse_nonzero_size("0").is_err());
        assert_eq!((config.deflate, config.deflate_threshold), (Switch::On, DEFAULT_THRESHOLD));
        assert!(config.deflate().is_some());
    }

    #[test]
    fn queue_fits_one_maximal_message() {
        let config = Config { max_message: 16 << 20, ..Config::default() };
        assert!(config.effective_max_queue() >= (16 << 20) + 10);
        assert_eq!(config.warnings().len(), 1, "the raise is said");
        assert_eq!(Config::default().effective_max_queue(), 1 << 20);
    }

    #[test]
    fn a_cluster_s_link_buffers_hold_a_file() {
        let redis = Some(SecretUrl("redis://127.0.0.1:6379".into()));
        let config = Config { redis: redis.clone(), ..Config::default() };
        assert!(config.cluster().is_ok(), "1 MiB files in 16 MiB buffers");
        let config = Config { redis: redis.clone(), max_file: 8 << 20, ..Config::default() };
        assert!(config.cluster().unwrap_err().contains("--max-file"));
        let config = Config { redis, max_file: 8 << 20, no_history: true, ..Config::default() };
        assert!(config.cluster().is_ok(), "without history no file crosses Redis");
    }
}
