//! TLS for `wss://` and `https://`: the certificate pair, and one sans-IO rustls session
//! per connection that the loop drives with the sockets it already has.
//!
//! Owns: loading and reloading the PEM certificate chain and private key (`Certs`), and
//! for each connection the rustls state (`TlsSession`): ciphertext read but not yet
//! decrypted, plaintext accepted but not yet encrypted, and TLS records waiting for the
//! socket. Must not touch: readiness registration (`client.rs` derives interest, adding
//! WRITABLE while `wants_write()`), WebSocket framing and HTTP (`proto/`), other clients,
//! the clock. Every socket call goes through `sys::nb::retrying`, so WouldBlock reaches
//! this module as `Ok(None)` and leaves it as a value (`ReadStop::WouldBlock`,
//! `FlushOutcome::blocked`) or, towards `WriteQueue`, as the one `io::Error` it expects.
//!
//! # Where it sits in the loop
//!
//! ```text
//! read:   socket ──read──▶ scratch (ciphertext) ──TlsSession::read_from──▶ plaintext ──▶ take_input
//! write:  WriteQueue::write_to(tls.sink()) ──encrypt──▶ records ──TlsSession::flush_to──▶ socket
//!                      (or both at once: tls.send_queued(socket, |sink| queue.write_to(sink, pool)))
//! ```
//!
//! * **Read** (dispatch and carry-over phases): `read_from` reads ciphertext into the
//!   loop's shared scratch buffer (one `read` of up to the scratch length, not rustls's own
//!   4 KiB reads), feeds it to rustls, decrypts, and appends plaintext to a buffer the
//!   caller owns (one shared buffer for the whole loop, like the scratch). That plaintext
//!   goes to the existing `take_input` unchanged. The read budget counts ciphertext bytes.
//!   During the handshake a read produces no plaintext but makes rustls queue handshake
//!   records: after every `read_from`, a client whose session `wants_write()` must be
//!   listed for this turn's flush.
//! * **Write** (flush phase): the client's `WriteQueue` writes into `sink()`, which
//!   encrypts as it goes and says WouldBlock once `PENDING_LIMIT` bytes of records are
//!   waiting, so the queue keeps the rest and its byte count, and with it the
//!   slow-consumer limit, still means "not yet sent". `flush_to` then hands the records
//!   to the socket in one vectored write. `send_queued` does the two in turns until the
//!   queue is empty or the socket is full.
//! * **Interest**: READABLE always, WRITABLE while the queue is non-empty *or*
//!   `wants_write()` (records, handshake messages or an alert still pending).
//! * **Close**: `send_close_notify()` after the WebSocket Close is queued, before FIN;
//!   FIN (`shutdown(Write)`) only once the queue is empty and `!wants_write()`.
//!
//! # Records sized to the batch
//!
//! One flush of one client is one `writev` of the queue's chunks (up to 64 of them). The
//! sink passes those slices to rustls in one call, and rustls cuts the *concatenation*
//! into records of at most 16 KiB (`max_fragment_size`, RFC 8446 §5.1), not one record per
//! chunk: a turn's forty small frames to one client become one record, one encryption
//! and 22 bytes of TLS 1.3 overhead (5 header, 16 tag, 1 content type), and a 1 MiB
//! backlog becomes 64 full records. Those records leave in one `writev` (rustls writes up
//! to 64 records per call). So a client costs one TLS write per turn as long as its batch
//! fits `PENDING_LIMIT`; a larger backlog alternates encrypt and write until the socket
//! is full.
//!
//! # Encode once, encrypt per recipient
//!
//! Fan-out shares one encoded chunk (`buffers::Shared`) among every recipient's queue, and
//! that stays true with TLS: the frames are still encoded once and shared up to the TLS
//! record. Encryption is necessarily per connection (each has its own keys and sequence
//! numbers), so a broadcast to N TLS clients costs one encoding and N encryptions; the
//! ciphertext lives only in each session's pending records until the socket takes it.
//!
//! # The handshake and the handshake timeout
//!
//! A new connection's `Session` is CONNECTING until its HTTP request head arrives, and the
//! existing handshake timer runs from accept. With TLS the TLS handshake comes before that
//! head, so the same timer bounds the TLS handshake plus the HTTP request: a client that
//! stalls mid-handshake is closed like one that never sends its head. No change needed.
//!
//! # Certificates and SIGHUP
//!
//! `Certs` holds the current `Arc<ServerConfig>`. Each `TlsSession` holds its own clone of
//! the `Arc` it was accepted with, so `Certs::reload` swaps the pair for new handshakes
//! only; open connections keep theirs, and a failed reload keeps the old pair.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::sys::nb::retrying;

/// The one application protocol offered in ALPN (RFC 7301): WebSocket upgrades and the
/// plain HTTP answers both speak HTTP/1.1 (RFC 6455 §4.1). Browsers offer it for `wss://`.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Bytes of encrypted records (and, before the handshake ends, of plaintext) rustls may
/// hold for one connection before the sink reports WouldBlock. This is the same as rustls's
/// own default, stated here because the slow-consumer rule depends on it: a client's
/// backlog is its `WriteQueue` (counted against `--max-queue`) plus at most this much
/// ciphertext (rustls applies the limit to the plaintext it accepts, so the records can
/// exceed it by their overhead, 22 bytes per 16 KiB record).
/// 64 KiB is four full records: one flush of a typical turn's batch fits in one go.
pub const PENDING_LIMIT: usize = 64 << 10;

/// The certificate chain and key files, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_path: PathBuf, // PEM: the leaf certificate first, then its intermediates (a "fullchain.pem")
    pub key_path: PathBuf,  // PEM: the leaf's private key, PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
}

impl TlsConfig {
    /// Reads both files and builds a rustls configuration; see `load`.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        load(&self.cert_path, &self.key_path)
    }
}

/// Reads a PEM certificate chain and a PEM private key and builds the server's rustls
/// configuration: TLS 1.3 and 1.2 only, the `ring` provider's cipher suites, ALPN
/// `http/1.1`, no client certificates. A client that offers ALPN without `http/1.1` (only
/// `h2`, say) is refused with a `no_application_protocol` alert (RFC 7301 §3.2); one that
/// offers no ALPN at all is served.
///
/// Errors name the file and say what is wrong with it; they never quote key material.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: no usable protocol version: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "TLS certificate {} and key {} cannot be used together: {e}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    let mut config = config;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file, in file order; at least one.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = |e: pem::Error| format!("TLS certificate chain {}: {}", path.display(), describe(e));
    let chain = CertificateDer::pem_file_iter(path).map_err(what)?.collect::<Result<Vec<_>, _>>().map_err(what)?;
    if chain.is_empty() {
        return Err(format!(
            "TLS certificate chain {}: no CERTIFICATE block found (expected PEM, leaf first)",
            path.display()
        ));
    }
    Ok(chain)
}

/// The first private key in a PEM file, whichever of the three encodings it uses.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "TLS private key {}: no private key found (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            path.display()
        ),
        e => format!("TLS private key {}: {}", path.display(), describe(e)),
    })
}

/// A PEM error in words, without the file's contents (`pem::Error`'s variants carry at
/// most a section name or an IO error, never the decoded bytes).
fn describe(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read: {e}"),
        pem::Error::NoItemsFound => "no PEM block of the expected kind".to_string(),
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".to_string(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".to_string(),
        _ => "not a readable PEM file".to_string(),
    }
}

/// The certificate pair in force, reloadable on SIGHUP.
#[derive(Debug)]
pub struct Certs {
    paths: TlsConfig,           // where to read the pair from, again on every reload
    current: Arc<ServerConfig>, // what new handshakes use; sessions hold their own clone
}

impl Certs {
    /// Loads the pair for the first time; a failure here should stop the server from
    /// starting, since it has nothing to serve with.
    pub fn open(paths: TlsConfig) -> Result<Certs, String> {
        let current = paths.load()?;
        Ok(Certs { paths, current })
    }

    /// Reads both files again (SIGHUP after a renewal). On success new handshakes use the
    /// new pair; on failure the old pair stays and the error is returned for the log.
    /// Open connections are unaffected either way: each holds the config it started with.
    pub fn reload(&mut self) -> Result<(), String> {
        self.current = self.paths.load()?;
        Ok(())
    }

    /// The configuration new connections start with.
    pub fn current(&self) -> &Arc<ServerConfig> {
        &self.current
    }

    /// A session for a newly accepted connection, under the current pair.
    pub fn accept(&self) -> Result<TlsSession, TlsError> {
        TlsSession::new(Arc::clone(&self.current))
    }
}

/// Why a TLS session cannot go on. Either way the connection is finished: flush once
/// (`flush_to` sends the alert rustls queued, if any), then close it.
#[derive(Debug)]
pub enum TlsError {
    Io(io::Error),           // the socket failed (reset, broken pipe)
    Protocol(rustls::Error), // the peer broke TLS: garbage, a bad handshake, a bad record
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io(e) => write!(f, "socket error: {e}"),
            TlsError::Protocol(e) => write!(f, "TLS error: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Why `read_from` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStop {
    WouldBlock,  // the socket is drained: edge-triggered, the next READABLE event brings more
    Budget,      // the per-turn budget is spent: carry the client over to the next turn
    CloseNotify, // the peer sent close_notify: no more data will come (a clean TLS close)
    Eof,         // TCP EOF without close_notify (many clients close this way; RFC 8446 §6.1)
}

/// What one `read_from` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    pub ciphertext: usize, // bytes read from the socket (what the read budget counts)
    pub plaintext: usize,  // bytes appended to the caller's plaintext buffer
    pub stop: ReadStop,    // why it stopped
}

impl ReadOutcome {
    /// The peer will send nothing more, cleanly or not.
    pub fn peer_closed(&self) -> bool {
        matches!(self.stop, ReadStop::CloseNotify | ReadStop::Eof)
    }

    /// The socket has nothing more for now.
    pub fn would_block(&self) -> bool {
        self.stop == ReadStop::WouldBlock
    }
}

/// What one `flush_to` (or `send_queued`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushOutcome {
    pub written: usize, // bytes of records the socket took
    pub blocked: bool,  // the socket said WouldBlock with records still pending: ask for WRITABLE
}

/// One connection's TLS state, driven by the loop: no socket inside, only rustls's
/// buffers and the `Arc` of the certificate pair it was accepted under.
pub struct TlsSession {
    conn: ServerConnection, // rustls: handshake state, keys, inbound and outbound buffers
}

impl TlsSession {
    /// A server session under `config`, with outbound buffering bounded by `PENDING_LIMIT`.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, TlsError> {
        let mut conn = ServerConnection::new(config).map_err(TlsError::Protocol)?;
        conn.set_buffer_limit(Some(PENDING_LIMIT));
        Ok(TlsSession { conn })
    }

    /// Reads ciphertext from `sock` into `scratch` until WouldBlock, EOF, close_notify or
    /// `budget` bytes, decrypting as it goes and appending plaintext to `plaintext`.
    ///
    /// `scratch` is the loop's shared read buffer (its length is the most one `read` asks
    /// for); `plaintext` is never cleared here, only appended to. On `Err` the connection
    /// is finished: plaintext appended before the error stays, any alert is pending for
    /// `flush_to`.
    pub fn read_from(
        &mut self,
        sock: &mut impl Read,
        scratch: &mut [u8],
        plaintext: &mut Vec<u8>,
        budget: usize,
    ) -> Result<ReadOutcome, TlsError> {
        let mut outcome = ReadOutcome { ciphertext: 0, plaintext: 0, stop: ReadStop::WouldBlock };
        loop {
            let read = match retrying(|| sock.read(scratch)) {
                Ok(Some(0)) => {
                    outcome.stop = ReadStop::Eof;
                    return Ok(outcome);
                }
                Ok(Some(n)) => n,
                Ok(None) => return Ok(outcome), // drained: the next READABLE event brings more
                Err(e) => return Err(TlsError::Io(e)),
            };
            outcome.ciphertext += read;
            self.take_ciphertext(&scratch[..read], plaintext, &mut outcome)?;
            if outcome.stop == ReadStop::CloseNotify {
                return Ok(outcome); // whatever followed close_notify is ignored
            }
            if outcome.ciphertext >= budget {
                // Fairness, as for plaintext clients: the rest waits for the next turn.
                outcome.stop = ReadStop::Budget;
                return Ok(outcome);
            }
        }
    }

    /// Feeds ciphertext to rustls, processing records as they complete, and moves what
    /// they decrypt to `plaintext`, counting it in `outcome` (and noting close_notify).
    ///
    /// rustls's record buffer takes a few KiB per `read_tls`, so one scratch-full takes
    /// several calls; each is a copy, not a syscall.
    fn take_ciphertext(
        &mut self,
        mut input: &[u8],
        plaintext: &mut Vec<u8>,
        outcome: &mut ReadOutcome,
    ) -> Result<(), TlsError> {
        while !input.is_empty() {
            // `&[u8]` as `Read` never blocks; rustls errors here only when its buffers are
            // full, which draining after every call below prevents.
            let taken = self.conn.read_tls(&mut input).map_err(TlsError::Io)?;
            let state = self.conn.process_new_packets().map_err(TlsError::Protocol)?;
            outcome.plaintext += self.drain_plaintext(state.plaintext_bytes_to_read(), plaintext)?;
            if state.peer_has_closed() {
                outcome.stop = ReadStop::CloseNotify;
                return Ok(());
            }
            if taken == 0 {
                // Not reached: rustls takes input until close_notify. Stop rather than spin.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Moves `available` decrypted bytes out of rustls into `plaintext`.
    fn drain_plaintext(&mut self, available: usize, plaintext: &mut Vec<u8>) -> Result<usize, TlsError> {
        if available == 0 {
            return Ok(0);
        }
        let start = plaintext.len();
        plaintext.resize(start + available, 0);
        // rustls said `available` bytes are ready, so this cannot block or see EOF.
        self.conn.reader().read_exact(&mut plaintext[start..]).map_err(TlsError::Io)?;
        Ok(available)
    }

    /// A `Write` that encrypts into this session: give it to `WriteQueue::write_to`.
    ///
    /// Each `write_vectored` becomes as few records as its total length allows. When
    /// `PENDING_LIMIT` bytes of records are already waiting it returns WouldBlock, so the
    /// queue keeps the rest (and its byte count); `flush_to` makes room.
    pub fn sink(&mut self) -> PlaintextSink<'_> {
        PlaintextSink { conn: &mut self.conn }
    }

    /// Writes pending records to `sock` until none are left or the socket would block.
    /// Each call hands rustls's record list (up to 64 records) to one `write_vectored`.
    pub fn flush_to(&mut self, sock: &mut impl Write) -> io::Result<FlushOutcome> {
        let mut outcome = FlushOutcome { written: 0, blocked: false };
        while self.conn.wants_write() {
            match retrying(|| self.conn.write_tls(sock))? {
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(n) => outcome.written += n,
                None => {
                    outcome.blocked = true; // the kernel buffer is full: WRITABLE will tell us
                    break;
                }
            }
        }
        Ok(outcome)
    }

    /// The flush phase's write for a TLS client: `fill` moves plaintext into the sink
    /// (`|sink| queue.write_to(sink, pool)`), then the records go to `sock`; repeated
    /// while bytes move, so a backlog larger than `PENDING_LIMIT` goes out in the
    /// same turn if the socket takes it. Stops when the socket is full (`blocked`) or
    /// a round moved nothing (the queue is empty and every record is written).
    pub fn send_queued<W, F>(&mut self, sock: &mut W, mut fill: F) -> io::Result<FlushOutcome>
    where
        W: Write,
        F: FnMut(&mut PlaintextSink<'_>) -> io::Result<usize>,
    {
        let mut total = FlushOutcome { written: 0, blocked: false };
        loop {
            let filled = fill(&mut self.sink())?;
            let flushed = self.flush_to(sock)?;
            total.written += flushed.written;
            total.blocked = flushed.blocked;
            // Go on while bytes move: a sink that was full (`filled == 0`) may take more
            // now that the flush emptied it, and with edge-triggered readiness a socket
            // that still has room sends no new WRITABLE event to come back for it.
            if flushed.blocked || (filled == 0 && flushed.written == 0) {
                return Ok(total);
            }
        }
    }

    /// Records (handshake messages, data, an alert) wait for the socket: `Client::interest()`
    /// adds WRITABLE while this is true.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// The handshake is not finished yet (no application data either way).
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Queues a close_notify alert (RFC 8446 §6.1): our side sends nothing after it. Call
    /// after the last WebSocket bytes are in the sink, then flush and send FIN.
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// The negotiated ALPN protocol, once the handshake has got that far.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated protocol version, for the log line of a new connection.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .field("version", &self.protocol_version())
            .field("wants_write", &self.wants_write())
            .finish()
    }
}

/// The plaintext side of a `TlsSession` as a `Write`, for `WriteQueue::write_to`.
pub struct PlaintextSink<'a> {
    conn: &'a mut ServerConnection, // the session being written into
}

impl Write for PlaintextSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// All of `bufs` goes to rustls in one call, so their concatenation is cut into
    /// records (see the module doc). Taking nothing of a non-empty write means rustls's
    /// outbound buffer is at `PENDING_LIMIT`: reported as WouldBlock, which `WriteQueue`
    /// treats as "the socket is full" and keeps the rest.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        if offered == 0 {
            return Ok(0);
        }
        match self.conn.writer().write_vectored(bufs)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    /// Records are written by `flush_to`; this only reports an earlier fatal TLS error.
    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()
    }
}

#[cfg(test)]
mod tests;
