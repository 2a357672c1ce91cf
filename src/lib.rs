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
//! | PHP `socket_select` server              | pollcast                                                              |
//! |-----------------------------------------|-----------------------------------------------------------------------|
//! | `socket_select($read, $write, ...)`     | `Poll::poll` in `Server::wait` (edge-triggered: drain!)                 |
//! | `$master` socket                        | `server::listener::Listener`; `Server::accept_all` until WouldBlock    |
//! | `$clients` array                        | `Slab<Client>`; the slab key is the mio `Token`                        |
//! | `$handshake[$i]` flag                   | [`proto::session::Phase`]: `Connecting` → `Open` → `Closing` → `Closed` |
//! | `socket_recv()` into `$buffer`          | `Server::read_client` into one shared scratch buffer; only an incomplete frame stays in `Client::inbox` |
//! | `unmask($text)`                         | [`proto::frame::apply_mask`], a word at a time                         |
//! | `foreach ($clients) socket_write()`     | `Router::route` pushes one shared chunk to each `WriteQueue`; `Server::flush` writes each queue with one `writev` |
//! | `socket_close($c); unset($clients[$i])` | `Server::mark_gone`, then `Server::reap` after the turn                  |
//!
//! ## 2. Edge-triggered readiness: drain!
//!
//! `select()` is level-triggered: a socket with unread bytes is reported on every call.
//! mio (epoll) is edge-triggered: it reports a socket once when it *becomes* ready. So
//! every read and accept loops until `WouldBlock` ([`sys::nb`] is the one place that
//! turns it into a value); a client left with unread bytes (its per-turn budget ran
//! out) is remembered and read again next turn with a zero timeout. Writes go the other
//! way: we write first, and only when the kernel buffer is full do we ask to be told
//! (WRITABLE) when it drains.
//!
//! ## 3. The life of one frame
//!
//! What happens when a client sends a text frame, from the readiness event to the
//! `writev`, as the functions that do it. Read three files in this order to follow it:
//! this tour, `server/read.rs` (the read path, with the loop's phases one file up in
//! `server/mod.rs`), `server/broadcast.rs` (routing); the calls into `proto` and `chat`
//! are named here so they can be looked up.
//!
//! 1. `Server::wait`: `poll` returns a READABLE event for the client's `Token`.
//! 2. `Server::dispatch` → `Server::read_client`: `read` until WouldBlock (at most
//!    `--read-budget` this turn) into the shared scratch buffer.
//! 3. `Server::take_input` → `Server::consume` → [`proto::session::Session::next`]:
//!    [`proto::frame::FrameHeader::parse`], [`proto::message::Assembler::check_header`]
//!    (judged once, before the payload is buffered), [`proto::frame::apply_mask`],
//!    [`proto::message::Assembler::push`], which validates the UTF-8 once and hands out
//!    `Event::Message(Message::Text(&str))`. (A compressed message, RSV1 set on a
//!    connection whose 101 agreed to permessage-deflate, is first inflated there by
//!    [`proto::deflate::Inflater`], never past `--max-message`.)
//! 4. `Server::on_message` → [`chat::Chat::text`] → `Chat::say` (`chat/actions.rs`) →
//!    `Chat::accept` (the message id, the count, the [`chat::record::Record`] for
//!    history) → [`chat::Outbox::to_room`] frames it once per codec, back to back with
//!    the other messages of this read, and compresses it once per codec when the room
//!    has members that agreed to permessage-deflate ([`proto::deflate::Compressor`]).
//! 5. `Server::route` → `Router::route`: the records go to `History::append`; the room
//!    output becomes one `Rc` chunk per codec (and per form, plain or compressed), and
//!    `Router::push` puts a reference in each member's `WriteQueue`.
//! 6. Later in the same turn, `Server::commit`: `History::commit` commits the turn's
//!    records in one step ([`store::Store::commit`]: one write to the message log)
//!    before any byte leaves.
//! 7. `Server::flush`: `WriteQueue::write_to` hands each recipient's chunks to the
//!    kernel in one `write_vectored` (`writev`) call.
//!
//! ## 4. The pure core: [`proto`]
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
//! ## 5. What messages mean: [`chat`]
//!
//! Names, rooms, `/commands` for raw clients and `pollcast.v1` JSON envelopes, as pure
//! code with time passed in. Actions return reply values that each codec spells; the
//! output is an outbox of framed bytes addressed to a connection or to a room; the
//! shell turns each room entry into one shared chunk per codec, so fan-out stays
//! encode-once. Who may come in is the chat's rule too ([`chat::admission`]).
//!
//! ## 6. History: [`store`]
//!
//! Behind the [`store::Store`] trait; SQLite is the embedded default: one segment row per
//! room per loop turn, committed before that turn's bytes leave, so what any client
//! received survives `kill -9`.
//!
//! ## 7. The shell: [`server`]
//!
//! The loop's phases are listed at the top of `server/mod.rs` and `run()` performs them
//! in that order, one line each. Run with `RUST_LOG=pollcast=trace` to watch every turn
//! narrated, phase by phase.
//!
//! With `--redis`, phase 8 is one more owner, `server/cluster.rs`: two Redis sockets on
//! the same `Poll`, driven by [`redis::Link`] (pure: RESP over bytes, pipelined replies,
//! reconnect backoff). A room output routed here is published once as the frames already
//! built ([`redis::envelope`]); other nodes push those frames to their own members.
//!
//! ## 8. The load generator: [`bench`](mod@bench)
//!
//! `pollcast bench` drives many client connections from one `mio` loop, the same way.

pub mod bench;
pub mod buffers;
pub mod chat;
pub mod config;
pub mod logging;
pub mod proto;
pub mod redis;
pub mod server;
pub mod store;
pub mod sys;
pub mod token;
