//! One slot of the slab: a client socket and everything the loop keeps for it.
//!
//! Owns: the socket, its protocol `Session`, unconsumed input, the write queue, and the
//! readiness interest derived from those. Must not touch: other clients (routing is
//! `broadcast.rs`), rooms and names (`chat`), the poll loop's order of phases (`mod.rs`).

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::tls::TlsSession;
use super::write_queue::WriteQueue;
use crate::buffers::Pool;
use crate::chat::Outbox;
use crate::proto::session::{Phase, Session};

/// A connected client: the Rust form of one entry of PHP's `$clients` array plus its
/// `$handshake[$i]` flag (now `session.phase()`) and read buffer.
pub struct Client {
    pub stream: TcpStream,               // the non-blocking socket, registered with Token(slab key)
    pub tls: Option<Box<TlsSession>>, // `wss://`: the TLS state between the socket and the rest (boxed: a plain slot stays small)
    pub peer: SocketAddr,             // the TCP peer (a reverse proxy, when there is one)
    pub addr: IpAddr,                 // the client's address: the peer's, or the one a trusted proxy forwarded
    pub counted: Option<IpAddr>,      // the address this connection counts against in the per-address limits
    pub session: Session,             // protocol state: phase, assembly, timers
    pub inbox: Vec<u8>, // bytes read but not consumed (a partial head or frame); empty, unallocated, otherwise
    pub queue: WriteQueue, // encoded frames waiting to be written, shared with other queues
    pub dirty: bool,    // already listed for this turn's flush
    pub write_shut: bool, // we sent FIN (shutdown(Write)) after the last queued byte
    pub sealed: bool,   // a Close (or a final HTTP answer) is queued: no data frame may follow it
    pub registered: Interest, // the interest the poller currently has for this socket
    pub admin: bool,    // came in on the admin port: HTTP requests only
    pub awaiting: bool, // an admin request whose answer waits for Redis (cluster history)
    pub upgraded: Option<Upgraded>, // what the access log line says of it, once upgraded
    pub farewell: Option<Box<Farewell>>, // who and where it was, taken from the chat as it leaves
    pub traffic: Traffic, // messages and bytes each way, for the access log
}

/// What an upgraded connection was, for its access log line. No strings: an idle
/// connection pays for what it is, not for the line it will be logged with.
#[derive(Debug, Clone, Copy)]
pub struct Upgraded {
    pub at: Instant,   // when the 101 was sent
    pub json: bool,    // spoke pollcast.v1
    pub deflate: bool, // agreed to permessage-deflate
}

/// Who a connection was and where, taken from the chat when it leaves (the chat forgets
/// it then), for the access log line written when its slot is reaped.
#[derive(Debug)]
pub struct Farewell {
    pub user: String, // its name (with tokens, the token's user id)
    pub room: String, // the room it was in (its first, for a JSON client in several)
}

/// Messages and bytes each way over a connection's life.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub messages_in: u64,  // data messages received
    pub bytes_in: u64,     // bytes read from the socket
    pub messages_out: u64, // data messages queued to it
    pub bytes_out: u64,    // bytes written to the socket
}

impl Client {
    pub fn new(stream: TcpStream, peer: SocketAddr, session: Session, tls: Option<Box<TlsSession>>) -> Client {
        Client {
            stream,
            tls,
            peer,
            addr: peer.ip().to_canonical(),
            counted: None,
            session,
            inbox: Vec::new(),
            queue: WriteQueue::default(),
            dirty: false,
            write_shut: false,
            sealed: false,
            registered: Interest::READABLE,
            admin: false,
            awaiting: false,
            upgraded: None,
            farewell: None,
            traffic: Traffic::default(),
        }
    }

    /// What to be woken for, derived from state alone: always READABLE (to see data, a
    /// Close or EOF), WRITABLE only while queued bytes (or TLS records) wait for kernel
    /// buffer space.
    pub fn interest(&self) -> Interest {
        if self.queue.is_empty() && !self.tls_wants_write() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// TLS records (handshake messages, data, an alert) wait for the socket.
    pub fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes what is queued as far as the socket takes it: one `writev` of the queue's
    /// chunks, or through TLS (the chunks encrypted as one batch of records, then one
    /// `writev` of the records). Returns the bytes the socket took.
    pub fn write_out(&mut self, pool: &mut Pool) -> io::Result<usize> {
        let written = match &mut self.tls {
            None => self.queue.write_to(&mut self.stream, pool)?,
            Some(tls) => {
                let queue = &mut self.queue;
                tls.send_queued(&mut self.stream, |sink| queue.write_to(sink, pool))?.written
            }
        };
        self.traffic.bytes_out += written as u64;
        Ok(written)
    }

    /// Moves what the session must send (a 101 is queued by the shell; this is a pong, a
    /// Close, an HTTP answer) into the outbox, in order with everything else bound for
    /// queues. Once the session is CLOSING or CLOSED these are its last words, and the
    /// queue is sealed behind them when they are routed.
    pub fn session_output_to(&mut self, key: usize, outbox: &mut Outbox) {
        let last = matches!(self.session.phase(), Phase::Closing { .. } | Phase::Closed { .. });
        match self.session.take_outbound() {
            Some(bytes) => outbox.own(key, bytes, last),
            None if last && !self.sealed => outbox.own(key, Vec::new(), true),
            None => {}
        }
    }

    /// Tells the poller about a changed interest; a no-op when it is unchanged, so the
    /// common case costs no syscall.
    pub fn sync_interest(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        let wanted = self.interest();
        if wanted != self.registered {
            registry.reregister(&mut self.stream, token, wanted)?;
            self.registered = wanted;
        }
        Ok(())
    }

    /// Once CLOSED and fully flushed, send FIN so the peer sees the end of the stream
    /// (RFC 6455 §7.1.1: the server closes the TCP connection first). We keep reading
    /// until the peer's FIN or the linger deadline, so our last bytes are not lost to an
    /// RST caused by unread input.
    /// With TLS, a close_notify alert (RFC 8446 §6.1) goes first, and FIN waits until it
    /// has left (WRITABLE brings us back, `interest()` says so).
    pub fn shut_write_if_done(&mut self) {
        if !self.session.is_closed() || !self.queue.is_empty() || self.write_shut {
            return;
        }
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify(); // idempotent
            let _ = tls.flush_to(&mut self.stream); // an error: the peer is gone, FIN anyway
            if tls.wants_write() {
                return;
            }
        }
        self.write_shut = true;
        let _ = self.stream.shutdown(Shutdown::Write); // ENOTCONN: the peer is gone already
    }

    /// Bytes this client holds in user space beyond its fixed slot (for /metrics).
    pub fn buffered_bytes(&self) -> usize {
        self.inbox.capacity() + self.session.buffered_capacity()
    }

    /// Whether the linger after CLOSED is over.
    pub fn expired(&self, now: Instant) -> bool {
        self.session.is_expired(now)
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection costs its slab slot and little else (no read buffer, no queue
    /// ring, no TLS state unless it speaks TLS): the slot must stay small, so what a new
    /// feature adds to every connection is a choice made here, not by accident.
    #[test]
    fn a_client_slot_stays_small() {
        let size = std::mem::size_of::<super::Client>();
        eprintln!("Client slot: {size} bytes");
        assert!(size <= 640, "Client grew to {size} bytes: box what an idle connection does not need");
    }
}
