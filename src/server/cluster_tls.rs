//! `rediss://`: TLS on a Redis link, as a sans-IO rustls `ClientConnection` driven by
//! the link's own socket on the loop (the way `server::tls` serves clients and the
//! bench's pool speaks `wss://`). No thread, no blocking.
//!
//! Owns: one link's TLS session and its buffers. Must not touch: what the bytes mean
//! (`redis::Link`), readiness, reconnects (`cluster.rs`). Socket calls go through
//! `sys::nb::retrying`, so WouldBlock arrives here as `Ok(None)`.
//!
//! ```text
//! read:  socket ──read──▶ ciphertext ──decrypt──▶ plaintext ──▶ Link::handle_bytes
//! write: Link::output ──encrypt──▶ records ──write_tls──▶ socket, until WouldBlock
//! ```
//!
//! The handshake needs no state of ours: the ClientHello is queued when the session is
//! made, rustls holds the link's first commands (AUTH, SELECT or PING) until the
//! handshake is done, and every read is followed by a write in the same turn (the
//! Redis phase writes both links), which sends the handshake's next flight.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::bench::tls::{roots, SYSTEM_CA_FILE};
use crate::sys::nb::retrying;

/// The client configuration both links share: TLS 1.3 and 1.2, the CAs of `ca_file`
/// (`--redis-ca-file`), else the system's bundle.
pub fn config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: no usable protocol version: {e}"))?;
    let roots = match ca_file {
        Some(path) => roots(path, "--redis-ca-file")?,
        None => roots(Path::new(SYSTEM_CA_FILE), "")
            .map_err(|e| format!("rediss:// trusts the system CA bundle unless --redis-ca-file PEM is given: {e}"))?,
    };
    Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
}

/// One link's TLS session.
pub struct LinkTls {
    conn: ClientConnection, // rustls: handshake state, keys, inbound and outbound buffers
}

impl LinkTls {
    /// A session to `host`; its ClientHello goes out when the TCP connect completes.
    pub fn new(config: &Arc<ClientConfig>, host: &str) -> Result<LinkTls, String> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("'{host}' is no TLS server name: {e}"))?;
        let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| format!("TLS: {e}"))?;
        Ok(LinkTls { conn })
    }

    /// Feeds ciphertext to rustls and appends what it decrypts to `plain`. An error (a
    /// bad certificate, a broken record, Redis's close_notify) ends the link.
    pub fn decrypt(&mut self, mut ciphertext: &[u8], plain: &mut Vec<u8>) -> Result<(), String> {
        while !ciphertext.is_empty() {
            let taken = self.conn.read_tls(&mut ciphertext).map_err(|e| format!("TLS read: {e}"))?;
            let state = self.conn.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = plain.len();
                plain.resize(start + available, 0);
                // rustls said `available` bytes are ready: this neither blocks nor ends.
                self.conn.reader().read_exact(&mut plain[start..]).map_err(|e| format!("TLS read: {e}"))?;
            }
            if state.peer_has_closed() {
                return Err("Redis closed the TLS session".into());
            }
            if taken == 0 {
                break; // rustls takes input until close_notify: not reached, no spinning
            }
        }
        Ok(())
    }

    /// Encrypts what of `plain` rustls takes and writes records to `sock` until none
    /// are left or it would block; returns how many bytes of `plain` were taken.
    pub fn send(&mut self, sock: &mut impl Write, plain: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            let took = if taken < plain.len() { self.conn.writer().write(&plain[taken..])? } else { 0 };
            taken += took;
            let mut wrote = 0;
            while self.conn.wants_write() {
                match retrying(|| self.conn.write_tls(sock))? {
                    Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Some(n) => wrote += n,
                    None => return Ok(taken), // the kernel buffer is full: WRITABLE will tell us
                }
            }
            if took == 0 && wrote == 0 {
                return Ok(taken);
            }
        }
    }
}
