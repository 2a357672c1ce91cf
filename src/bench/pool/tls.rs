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
    pub(super) fn send(&mut self, sock: &mut impl Write, outbox: &[u8], then_close: bool) -> io::Result<Sent> {
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

#[cfg(test)]
mod tests {
    //! `ClientTls` against a rustls server over in-memory buffers: no sockets, no threads.

    use std::io::Read;

    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, ServerConnection};

    use super::*;
    use crate::bench::tls::{client_config, server_name, Trust};

    /// A server for 127.0.0.1 with a fresh self-signed certificate named `label` (returned
    /// as PEM).
    fn server(label: &str) -> (ServerConnection, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, label);
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], der)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (ServerConnection::new(Arc::new(config)).unwrap(), cert.pem())
    }

    fn client(trust: Trust<'_>) -> ClientTls {
        ClientTls::new(client_config(trust).unwrap(), server_name("127.0.0.1").unwrap()).unwrap()
    }

    /// Sends `outbox` through the client; the server takes the records. Returns what the
    /// client's send did, the ciphertext, and what the server decrypted.
    fn to_server(
        tls: &mut ClientTls,
        outbox: &[u8],
        close: bool,
        server: &mut ServerConnection,
    ) -> (Sent, usize, Vec<u8>) {
        let mut wire = Vec::new();
        let sent = tls.send(&mut wire, outbox, close).unwrap();
        let mut records = &wire[..];
        while !records.is_empty() {
            server.read_tls(&mut records).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut plain = Vec::new();
        let _ = server.reader().read_to_end(&mut plain); // WouldBlock at the end unless closed
        (sent, wire.len(), plain)
    }

    /// The server's pending records, decrypted by the client.
    fn to_client(server: &mut ServerConnection, tls: &mut ClientTls) -> (Result<bool, String>, Vec<u8>) {
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut plain = Vec::new();
        (tls.decrypt(&wire, &mut plain), plain)
    }

    #[test]
    fn handshake_then_the_request_the_response_and_a_clean_close() {
        let (mut server, _) = server("one");
        let mut tls = client(Trust::Anything);
        assert!(tls.wants_write(), "the ClientHello waits for the connect");
        // The upgrade request is queued at once; rustls holds it until the handshake ends.
        let request = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let (sent, _, plain) = to_server(&mut tls, request, false, &mut server);
        assert_eq!((sent.taken, sent.blocked), (request.len(), false));
        assert!(plain.is_empty() && !tls.wants_write());
        let (read, plain) = to_client(&mut server, &mut tls);
        assert_eq!((read, plain.len()), (Ok(false), 0));
        assert!(tls.wants_write(), "Finished, and the request released by the end of the handshake");
        let (_, _, plain) = to_server(&mut tls, &[], false, &mut server);
        assert_eq!(plain, request);
        // The response and a frame in one record, decrypted into the caller's buffer.
        server.writer().write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x82\x01!").unwrap();
        let (read, plain) = to_client(&mut server, &mut tls);
        assert_eq!(read, Ok(false));
        assert!(plain.ends_with(b"\r\n\r\n\x82\x01!"));
        // A turn's batch of forty frames: one record, 22 bytes of TLS 1.3 overhead.
        let batch = [0x82u8, 0x86, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].repeat(40);
        let (sent, ciphertext, plain) = to_server(&mut tls, &batch, false, &mut server);
        assert_eq!((sent.taken, ciphertext, plain.len()), (batch.len(), batch.len() + 22, batch.len()));
        // Our Close, then close_notify; the server's close_notify ends the stream.
        let (_, _, plain) = to_server(&mut tls, &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8], true, &mut server);
        assert_eq!(plain.len(), 8);
        assert!(server.process_new_packets().unwrap().peer_has_closed());
        server.send_close_notify();
        assert_eq!(to_client(&mut server, &mut tls).0, Ok(true));
    }

    /// A socket that takes `room` bytes, then says WouldBlock.
    struct Choked {
        wire: Vec<u8>,
        room: usize,
    }

    impl Write for Choked {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.wire.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_socket_blocks_and_a_backlog_goes_out_later() {
        let (mut server, _) = server("one");
        let mut tls = client(Trust::Anything);
        to_server(&mut tls, &[], false, &mut server);
        to_client(&mut server, &mut tls).0.unwrap();
        to_server(&mut tls, &[], false, &mut server);
        assert!(!tls.wants_write());
        // 1 MiB against a socket with room for 100 KiB: rustls takes what its buffer
        // holds, the socket what it has room for, and the rest waits.
        let outbox: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
        let mut sock = Choked { wire: Vec::new(), room: 100 << 10 };
        let sent = tls.send(&mut sock, &outbox, false).unwrap();
        assert!(sent.blocked && sent.taken < outbox.len(), "{sent:?}");
        assert!(tls.wants_write(), "records still pending");
        let mut taken = sent.taken;
        sock.room = usize::MAX; // WRITABLE: the socket drained
        while taken < outbox.len() || tls.wants_write() {
            let sent = tls.send(&mut sock, &outbox[taken..], false).unwrap();
            assert!(!sent.blocked);
            taken += sent.taken;
        }
        let mut records = &sock.wire[..];
        let mut plain = Vec::new();
        while !records.is_empty() {
            server.read_tls(&mut records).unwrap();
            server.process_new_packets().unwrap();
            let _ = server.reader().read_to_end(&mut plain);
        }
        assert!(plain == outbox, "every byte, in order");
    }

    #[test]
    fn refusals_are_named() {
        // Not TLS at all: a plain HTTP server's answer.
        let mut tls = client(Trust::Anything);
        let mut plain = Vec::new();
        assert_eq!(tls.decrypt(b"HTTP/1.1 400 Bad Request\r\n\r\n", &mut plain), Err("tls_not_tls".to_owned()));
        // A certificate nobody vouches for: trust only another self-signed one.
        let (mut server, _) = server("one");
        let (_, other_pem) = self::server("another");
        let dir = std::env::temp_dir().join(format!("pollcast-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("other.pem");
        std::fs::write(&ca, other_pem).unwrap();
        let mut tls = client(Trust::CaFile(&ca));
        std::fs::remove_dir_all(&dir).unwrap();
        to_server(&mut tls, &[], false, &mut server);
        let (read, _) = to_client(&mut server, &mut tls);
        assert_eq!(read, Err("tls_cert_unknown_issuer".to_owned()));
        assert!(tls.wants_write(), "an alert for the server");
    }
}
