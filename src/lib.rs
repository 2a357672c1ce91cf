//! # pollcast: a WebSocket chat and broadcast server on one `mio` poll loop
//!
//! A guided tour, in reading order.
//!
//! ## 1. The idea: a select() server
//!
//! The classic PHP chat server keeps a master socket and an array of client sockets,
//! calls `socket_select()` to sleep until any of them is ready, accepts new clients,
//! reads what arrived, performs the WebSocket handshake once per client (a `$handshake`
//! flag), unmasks frames and writes each message to every other client. pollcast is that
//! program, kept to the same single thread, with the parts that make it safe to run:
//!
//! | PHP `socket_select` server          | pollcast                                                     |
//! |-------------------------------------|--------------------------------------------------------------|
//! | `socket_select($read, $write, ...)` | `Poll::poll(&mut events, timeout)` in [`server`]             |
//! | `$clients` array                    | `Slab<Client>`; the slab key is the mio `Token`              |
//! | `$handshake[$i]` flag               | [`proto::session::Phase`] `Connecting` → `Open`               |
//! | `socket_recv()` into a buffer       | read until WouldBlock into a shared scratch buffer           |
//! | `unmask()`                          | [`proto::frame::apply_mask`], a word at a time               |
//! | `foreach ($clients) socket_write()` | one shared encoded chunk pushed to each recipient's queue    |
//! | `socket_close()`                    | mark gone, reap after the turn                               |
//!
//! ## 2. Edge-triggered readiness: drain!
//!
//! `select()` is level-triggered: a socket with unread bytes is reported on every call.
//! mio (epoll) is edge-triggered: it reports a socket once when it *becomes* ready. So
//! every read and accept loops until `WouldBlock`; a client left with unread bytes (its
//! per-turn budget ran out) is remembered and read again next turn with a zero timeout.
//! Writes go the other way: we write first, and only when the kernel buffer is full do
//! we ask to be told (WRITABLE) when it drains.
//!
//! ## 3. The pure core: [`proto`]
//!
//! Frames ([`proto::frame`]), close codes ([`proto::close`]), the rules across frames
//! ([`proto::message`]), the HTTP upgrade ([`proto::handshake`]) and one connection's
//! state machine ([`proto::session`]) are plain code over byte slices with time passed
//! in. They know nothing of sockets, so they are tested byte for byte.
//!
//! ```
//! use pollcast::proto::handshake::accept_key;
//! // RFC 6455 §1.3's sample handshake.
//! assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
//! ```
//!
//! ## 4. What messages mean: [`chat`]
//!
//! Names, rooms, `/commands` for raw clients and `pollcast.v1` JSON envelopes, as pure
//! code with time passed in. Its output is an outbox of framed bytes addressed to a
//! connection or to a room; the shell turns each room entry into one shared chunk per
//! codec, so fan-out stays encode-once.
//!
//! ## 5. History: [`store`]
//!
//! SQLite, one segment row per room per loop turn, committed before that turn's bytes
//! leave, so what any client received survives `kill -9`.
//!
//! ## 6. The shell: [`server`]
//!
//! The loop's phases are listed at the top of `server/mod.rs` and `run()` performs them
//! in that order. Run with `RUST_LOG=pollcast=trace` to watch every turn narrated.
//!
//! ## 7. The load generator: [`bench`]
//!
//! `pollcast bench` drives many client connections from one `mio` loop, the same way.

pub mod bench;
pub mod buffers;
pub mod chat;
pub mod config;
pub mod proto;
pub mod server;
pub mod store;
pub mod sys;
pub mod token;
