//! Redis, as pure code over bytes: the `--redis` URL, RESP2 commands and replies, and
//! the state machine of one connection. No sockets, no clock reads, no threads.
//!
//! Owns: what a Redis URL says (`url.rs`), how a command is written and a reply read
//! (`resp.rs`, decoding with the `redis-protocol` crate), and what one connection does
//! from connect to ready, which reply settles which command, and when to try again
//! (`link.rs`). Must not touch: sockets, the loop, the chat. The shell
//! (`server/cluster.rs`) owns the two `mio` sockets (one for commands, one for
//! subscriptions), reads and writes them, and passes `now` in.

pub mod envelope;
pub mod history;
pub mod link;
pub mod presence;
pub mod resp;
pub mod url;

pub use link::{Backoff, Event, Link, LinkLimits, Phase};
pub use resp::Reply;
pub use url::RedisUrl;
