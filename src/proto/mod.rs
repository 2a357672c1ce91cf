//! The pure WebSocket core: bytes and `Instant` values in, bytes and events out.
//!
//! Nothing in here may use sockets (`mio`, `std::net`), read the clock, know about other
//! connections or the slab; `tests/purity.rs` checks that by scanning these files.
//! Reading order: `frame` (the wire format), `close`, `message` (rules across frames),
//! `handshake` (the HTTP upgrade), `deflate` (permessage-deflate, RFC 7692), `session` (one connection's state machine).

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod session;
