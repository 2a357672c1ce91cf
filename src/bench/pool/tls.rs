//! One `wss://` connection's TLS state: a sans-IO rustls `ClientConnection` the pool
//! drives with the socket it already has, in the style of the server's `server::tls`.
//!
//! Owns: rustls's buffers for one connection (ciphertext read but not yet processed,
//! plaintext accepted but not yet encrypted, records waiting for the socket). Must not
//! touch: readiness, phases, WebSocket bytes' meaning (`conn.rs`), the clock. Socket
//! calls go through `sys::nb::retrying`, so WouldBlock arrives here as `Ok(None)`.
//!
//! ```text
//! read:  socket ──read──▶ scratch (ciphertext) ──decrypt──▶ plaintext ──▶ take_input (unchanged)
//! write: outbox ──encrypt──▶ records ──write_tls──▶ socket, until WouldBlock or nothing is left
//! ```
//!
//! * **Read**: the pool reads ciphertext into its shared scratch buffer (one `read(2)`, as
//!   for a plain connection), [`ClientTls::decrypt`] feeds it to rustls and appends what
//!   it decrypts to the pool's shared plaintext buffer, which then goes to `take_input`
//!   exactly as a plain connection's bytes do. During the handshake a read decrypts
//!   nothing but leaves handshake records to send (and, once the handshake is done,
//!   the upgrade request rustls held back): after every read, a connection whose session
//!   [`ClientTls::wants_write`] is listed for the next flush.
//! * **Write**: [`ClientTls::send`] moves the connection's outbox into rustls (which cuts
//!   the turn's whole batch into as few records as 16 KiB allows: one encryption per
//!   batch, not per frame) and writes records until none are left or the socket says
//!   WouldBlock; then the pool waits for WRITABLE as for a plain connection. Before the
//!   handshake ends, rustls keeps the plaintext (the upgrade request) and sends it as
//!   soon as it may.
//! * **Close**: our WebSocket Close is followed by a close_notify (RFC 8446 §6.1) once it
//!   is encrypted; the server's close_notify ends the stream as its FIN would.
//!
//! A plain `ws://` connection has no `ClientTls` (`Conn::tls` is `None`): its read and
//! write paths are the ones it had before TLS, behind one `Option` test each.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::bench::tls::error_kind;
use crate::sys::nb::retrying;

/// What one [`ClientTls::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    pub(super) taken: usize,  // outbox bytes rustls accepted (and will encrypt)
    pub(super) blocked: bool, // the socket said WouldBlock with records still pending
}

/// One connection's TLS session.
pub(super) struct ClientTls {
    conn: ClientConnection, // rustls: handshake state, keys, inbound and outbound buffers
    notified: bool,         // our close_notify is queued
}

impl ClientTls {
    /// A new session; its ClientHello is queued at once (`wants_write()`), to go out
    /// when the TCP connect completes.
    pub(super) fn new(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<ClientTls, String> {
        let conn = ClientConnection::new(config, name).map_err(|e| error_kind(&e))?;
        Ok(ClientTls { conn, notified: false })
    }

    /// Feeds one read's ciphertext to rustls and appends what it decrypts to `plain`.
    /// `Ok(true)`: the server sent close_notify (nothing after it is read). `Err`: the
    /// error kind; the connection is finished, and an alert may wait to be sent.
    pub(super) fn decrypt(&mut self, mut ciphertext: &[u8], plain: &mut Vec<u8>) -> Result<bool, String> {
        while !ciphertext.is_empty() {
            // `&[u8]` never blocks; rustls takes a few KiB per call and refuses more only
            // while decrypted plaintext is waiting, which the drain below prevents.
            let taken = self.conn.read_tls(&mut ciphertext).map_err(|e| super::io_kind(&e))?;
            let state = self.conn.process_new_packets().map_err(|e| error_kind(&e))?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = plain.len();
                plain.resize(start + available, 0);
                // rustls said `available` bytes are ready: this neither blocks nor ends.
                self.conn.reader().read_exact(&mut plain[start..]).map_err(|e| super::io_kind(&e))?;
            }
            if state.peer_has_closed() {
                return Ok(true);
            }
            if taken == 0 {
                break; // not reached (rustls takes input until close_notify); no spinning
            }
        }
        Ok(false)
    }

    /// Encrypts as much of `outbox` as rustls's buffer takes and writes records to `sock`
    /// until none are left or it would block; repeated while bytes move, so a backlog
    /// larger than rustls's buffer (64 KiB) leaves in the same turn if the socket takes
    /// it. With `then_close`, a close_notify follows the last of `outbox` (once).
    pub(super) fn send(&mut self, sock: &mut TcpStream, outbox: &[u8], then_close: bool) -> io::Result<Sent> {
        let mut sent = Sent { taken: 0, blocked: false };
        loop {
            let took = if sent.taken < outbox.len() { self.conn.writer().write(&outbox[sent.taken..])? } else { 0 };
            sent.taken += took;
            if then_close && sent.taken == outbox.len() && !self.notified {
                self.conn.send_close_notify();
                self.notified = true;
            }
            let mut wrote = 0;
            while self.conn.wants_write() {
                match retrying(|| self.conn.write_tls(sock))? {
                    Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Some(n) => wrote += n,
                    None => {
                        sent.blocked = true; // the kernel buffer is full: WRITABLE will tell us
                        return Ok(sent);
                    }
                }
            }
            if took == 0 && wrote == 0 {
                return Ok(sent);
            }
        }
    }

    /// Records (handshake messages, data, an alert) wait for the socket.
    pub(super) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }
}
