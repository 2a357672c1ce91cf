//! The pool's sockets: connecting from a chosen source address, learning how a
//! connect ended, and naming socket errors for the error counts.
//!
//! Owns: socket creation and options. Must not touch: connection state.

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Opens a non-blocking TCP connection to `addr`, from `source` when given.
pub(super) fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // Our writes are whole batches of frames; waiting to coalesce would only add latency.
    socket.set_nodelay(true)?;
    if let Some(ip) = source {
        bind_address_no_port(&socket);
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Linux `IP_BIND_ADDRESS_NO_PORT`: bind only the address now and pick the port at
/// connect time, so the port need only be unique per destination. Without it, `bind`
/// would reserve a port per socket and one address could hold far fewer connections.
fn bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid pointer; failure
    // (an old kernel) only means fewer connections per source address.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// After a readiness event on a connecting socket (mio's recipe): `Ok(true)` connected,
/// `Ok(false)` not yet (a spurious event), `Err(kind)` failed.
pub(super) fn connect_outcome(stream: &TcpStream) -> Result<bool, String> {
    if let Ok(Some(e)) | Err(e) = stream.take_error() {
        return Err(io_kind(&e));
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(io_kind(&e)),
    }
}

/// A stable snake_case name for a socket error, for the error counts.
pub fn io_kind(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::EPIPE) => "broken_pipe",
        Some(libc::ETIMEDOUT) => "timed_out",
        Some(libc::EADDRNOTAVAIL) => "no_source_port",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out_of_fds",
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable",
        _ => return format!("io_{:?}", err.kind()).to_ascii_lowercase(),
    };
    name.to_owned()
}
