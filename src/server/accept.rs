//! New connections (dispatch, and the accept-pause phase of `run()`): the listener
//! accepts until WouldBlock, each connection is judged (`--max-connections`, the
//! per-address limits) and given a slot; the admin port's connections likewise, outside
//! `--max-connections`. Part of `impl Server`: the loop's state is in `mod.rs`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::admin;
use super::client::Client;
use super::listener::Accepted;
use super::tls::{Certs, TlsSession};
use super::Server;
use crate::proto::handshake::{self, Rejection, Status};
use crate::proto::session::Session;

impl Server {
    /// Accepts until WouldBlock (edge-triggered: a connection left in the backlog would
    /// get no second event).
    pub(super) fn accept_all(&mut self) {
        log::trace!("listener woke: accepting until WouldBlock");
        loop {
            match self.listener.accept(self.now) {
                Accepted::Connection(stream, peer) => self.admit(stream, peer),
                Accepted::Drained => return,
                Accepted::Shed => return self.stats.accept_fd_errors += 1,
            }
        }
    }

    /// Takes an accepted connection into the slab, or answers 503 when full, or 429 when
    /// its address is over its limits (judged here unless it is a trusted proxy, whose
    /// clients are judged once their address is known, at the request head).
    pub(super) fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.accepted += 1;
        let refusal = if self.clients.len() - self.admin_clients >= self.config.max_connections {
            self.stats.refused_full += 1;
            Some(Rejection { status: Status::ServiceUnavailable, why: "server is at --max-connections" })
        } else if self.trusted(peer.ip()) {
            None
        } else {
            self.count_address(peer.ip().to_canonical()).err()
        };
        if let Some(refusal) = refusal {
            self.stats.refused(refusal.status.code());
            // Best effort: a fresh socket's send buffer takes this small answer whole. A
            // TLS client could not read it before a handshake, so it is simply closed.
            if self.certs.is_none() {
                let _ = stream.write(&handshake::rejection_response(&refusal));
            }
            log::debug!("refused {peer}: {}", refusal.why);
            return;
        }
        let tls = match self.certs.as_ref().map(Certs::accept) {
            None => None,
            Some(Ok(session)) => Some(Box::new(session)),
            Some(Err(e)) => return log::warn!("cannot start TLS for {peer}: {e}"),
        };
        let counted = (!self.trusted(peer.ip())).then(|| peer.ip().to_canonical()).filter(|&ip| self.limited(ip));
        let _ = stream.set_nodelay(true); // frames are written whole; do not wait to coalesce
        if let Some(client) = self.insert(stream, peer, tls) {
            client.counted = counted;
        }
    }

    /// Registers a new connection and gives it a slot (PHP's `$clients[] = $socket`), in
    /// CONNECTING with its handshake deadline. Its request may already be here;
    /// edge-triggered readiness will report it either way.
    pub(super) fn insert(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<TlsSession>>,
    ) -> Option<&mut Client> {
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            log::warn!("cannot register {peer}: {e}");
            return None;
        }
        let session = Session::new(key, self.config.session_limits(), self.now);
        self.next_sweep = self.next_sweep.min(session.poll_timeout());
        log::trace!("conn {key}: accepted from {peer}");
        Some(entry.insert(Client::new(stream, peer, session, tls)))
    }

    /// The admin port: accepts until WouldBlock, each connection into the slab beside the
    /// public ones but outside `--max-connections` (at most `ADMIN_CONNECTIONS_MAX`).
    pub(super) fn accept_admin(&mut self) {
        loop {
            let Some(admin) = self.admin.as_mut() else { return };
            let (mut stream, peer) = match admin.accept(self.now) {
                Accepted::Connection(stream, peer) => (stream, peer),
                Accepted::Drained => return,
                Accepted::Shed => return self.stats.accept_fd_errors += 1,
            };
            if self.admin_clients >= admin::ADMIN_CONNECTIONS_MAX {
                let refusal = Rejection { status: Status::ServiceUnavailable, why: "too many admin connections" };
                let _ = stream.write(&handshake::rejection_response(&refusal));
                continue;
            }
            if let Some(client) = self.insert(stream, peer, None) {
                client.admin = true;
                self.admin_clients += 1;
            }
        }
    }

    /// Is `ip` a reverse proxy whose forwarding headers we believe (`--trust-proxy`)?
    pub(super) fn trusted(&self, ip: IpAddr) -> bool {
        self.config.trust_proxy.iter().any(|range| range.contains(ip))
    }

    /// Do the per-address limits apply to `ip`? (Loopback is exempt by default.)
    pub(super) fn limited(&self, ip: IpAddr) -> bool {
        !(self.loopback_exempt && ip.is_loopback())
    }

    /// Counts a new connection from client address `ip` against its limits, or refuses
    /// it with 429 (logged at most once a second per address).
    pub(super) fn count_address(&mut self, ip: IpAddr) -> Result<(), Rejection> {
        if !self.limited(ip) {
            return Ok(());
        }
        let Err(refusal) = self.peers.admit(ip, self.now) else { return Ok(()) };
        self.stats.refused_per_address += 1;
        if self.peers.should_log(ip, self.now) {
            log::warn!("refused {ip}: {refusal} (429)");
        }
        Err(Rejection { status: Status::TooManyRequests, why: refusal.reason() })
    }

    /// Phase 5: ends an accept pause once it is over, draining what queued up meanwhile.
    pub(super) fn resume_accepting(&mut self) {
        if self.listener.resume_if_due(self.now) {
            log::trace!("accept pause: over, accepting");
            self.accept_all();
        }
    }
}
