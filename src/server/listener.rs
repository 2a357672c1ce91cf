//! The listening socket: PHP's `$master`. Accepting until WouldBlock, and not spinning
//! when the process runs out of file descriptors.
//!
//! Owns: the listening socket, a reserve descriptor, and the accept pause after EMFILE.
//! Must not touch: accepted connections (the loop admits them: `Server::admit`).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::sys::nb::{out_of_fds, retrying};

/// After `accept` fails for lack of file descriptors, wait this long before retrying,
/// so a full fd table cannot make the loop spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one `accept` call gave.
pub enum Accepted {
    /// A new connection.
    Connection(TcpStream, SocketAddr),
    /// The backlog is empty (edge-triggered: the next connection brings a new event),
    /// or accepting is paused or over.
    Drained,
    /// Out of file descriptors: one waiting connection was shed and accepting paused.
    Shed,
}

/// Backlog of a listener bound here (what `mio`'s own `bind` asks for).
const BACKLOG: i32 = 1024;

/// A non-blocking listener with SO_REUSEADDR and SO_REUSEPORT set before `bind`.
fn bind_reusing_port(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// The listening socket and its accept pause.
pub struct Listener {
    socket: Option<TcpListener>,   // None once shutdown has begun
    local_addr: SocketAddr,        // the bound address (the real port when 0 was asked for)
    spare_fd: Option<File>,        // reserve descriptor, given up to shed a connection at EMFILE
    paused_until: Option<Instant>, // set after EMFILE/ENFILE
}

impl Listener {
    /// Binds `addr` and registers it for READABLE with `token`. `reuse_port`
    /// (`--reuse-port`): SO_REUSEPORT, so several processes can bind the same port and
    /// the kernel spreads new connections over them (one pollcast per core).
    pub fn bind(addr: SocketAddr, registry: &Registry, token: Token, reuse_port: bool) -> io::Result<Listener> {
        let mut socket = match reuse_port {
            false => TcpListener::bind(addr)?,
            true => bind_reusing_port(addr)?,
        };
        let local_addr = socket.local_addr()?;
        registry.register(&mut socket, token, Interest::READABLE)?;
        Ok(Listener { socket: Some(socket), local_addr, spare_fd: File::open("/dev/null").ok(), paused_until: None })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// When accepting resumes, if it is paused.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Takes one connection from the backlog.
    pub fn accept(&mut self, now: Instant) -> Accepted {
        let (Some(socket), None) = (&self.socket, self.paused_until) else { return Accepted::Drained };
        loop {
            match retrying(|| socket.accept()) {
                Ok(Some((stream, peer))) => return Accepted::Connection(stream, peer),
                Ok(None) => return Accepted::Drained,
                Err(e) if out_of_fds(&e) => return self.shed_one_connection(&e, now),
                // ECONNABORTED and friends: that one connection is gone, the rest wait.
                Err(e) => log::warn!("accept failed: {e}"),
            }
        }
    }

    /// EMFILE/ENFILE: free the spare descriptor, accept the waiting connection and close
    /// it at once (the client sees a reset rather than a hang), take the spare back, and
    /// pause accepting briefly instead of spinning on an error that will repeat.
    fn shed_one_connection(&mut self, err: &io::Error, now: Instant) -> Accepted {
        log::warn!("accept: {err}; shedding a connection and pausing accepts for {ACCEPT_BACKOFF:?}");
        self.spare_fd = None;
        if let Some(socket) = &self.socket {
            drop(socket.accept());
        }
        self.spare_fd = File::open("/dev/null").ok();
        self.paused_until = Some(now + ACCEPT_BACKOFF);
        Accepted::Shed
    }

    /// Ends a pause that is over. True when it did: the caller accepts what queued up
    /// meanwhile (no new event will announce it).
    pub fn resume_if_due(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
            return true;
        }
        false
    }

    /// Stops listening (shutdown): new connections are refused by the kernel.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut socket) = self.socket.take() {
            let _ = registry.deregister(&mut socket);
        }
    }
}
