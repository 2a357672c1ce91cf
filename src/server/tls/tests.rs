//! `TlsSession` against a real rustls client over in-memory pipes: no sockets, no threads.
//! The server side reads from a `Pipe` (WouldBlock when empty) and writes into a `Trickle`
//! (a few KiB per call, then WouldBlock), the shapes a non-blocking socket has.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, SupportedProtocolVersion};

use super::*;
use crate::buffers::Pool;
use crate::server::write_queue::sink::Trickle;
use crate::server::write_queue::WriteQueue;

const SCRATCH_LEN: usize = 64 << 10;

// ----- fixtures ----------------------------------------------------------------------

/// A temporary directory with a CA, a leaf for localhost/127.0.0.1 signed by it, and the
/// PEM files the server reads: `fullchain.pem` (leaf, then CA) and `key.pem` (PKCS#8).
struct Pki {
    dir: PathBuf,           // removed on drop
    ca: rcgen::Certificate, // the client trusts this
    ca_key: KeyPair,        // signs further leaves (the renewal in the reload tests)
    leaf_der: Vec<u8>,      // the leaf currently in the files
    paths: TlsConfig,       // the two files
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("pollcast-tls-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let paths = TlsConfig { cert_path: dir.join("fullchain.pem"), key_path: dir.join("key.pem") };
        let mut pki = Pki { dir, ca, ca_key, leaf_der: Vec::new(), paths };
        pki.renew();
        pki
    }

    /// A new leaf key and certificate, written over the files (what certbot does).
    fn renew(&mut self) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        fs::write(&self.paths.cert_path, leaf.pem() + &self.ca.pem()).unwrap();
        fs::write(&self.paths.key_path, key.serialize_pem()).unwrap();
        self.leaf_der = leaf.der().to_vec();
    }

    fn client(&self, versions: &[&'static SupportedProtocolVersion]) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), ALPN_HTTP11.to_vec()];
        let mut client = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
        client.set_buffer_limit(None); // the test client may queue a whole MiB
        client
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The server's view of the socket's read side: what the client sent, WouldBlock when
/// there is nothing, EOF once `eof` is set and it is drained.
#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>, // sent by the client, not yet read by the server
    eof: bool,           // the client closed its side
    reads: usize,        // read calls that returned data, to count syscalls
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bytes.is_empty() {
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        self.reads += 1;
        self.bytes.make_contiguous(); // a socket read is not cut short by a ring's wrap
        self.bytes.read(buf)
    }
}

/// One connection: a rustls client, our session, and the two directions between them.
struct Link {
    client: ClientConnection, // the peer
    server: TlsSession,       // under test
    up: Pipe,                 // client → server
    down: Trickle,            // server → client
    scratch: Vec<u8>,         // the loop's shared read buffer
    plain: Vec<u8>,           // plaintext the server has read
}

impl Link {
    fn new(client: ClientConnection, server: TlsSession) -> Link {
        Link {
            client,
            server,
            up: Pipe::default(),
            down: Trickle::open(),
            scratch: vec![0; SCRATCH_LEN],
            plain: Vec::new(),
        }
    }

    /// Client → wire: everything the client has to send.
    fn client_sends(&mut self) {
        let mut out = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut out).unwrap();
        }
        self.up.bytes.extend(out);
    }

    /// Wire → client: everything the server wrote, processed; returns the plaintext.
    fn client_receives(&mut self) -> Vec<u8> {
        let wire = std::mem::take(&mut self.down.got);
        let mut input = &wire[..];
        let mut plain = Vec::new();
        while !input.is_empty() {
            self.client.read_tls(&mut input).unwrap();
            let state = self.client.process_new_packets().unwrap();
            let mut chunk = vec![0; state.plaintext_bytes_to_read()];
            self.client.reader().read_exact(&mut chunk).unwrap();
            plain.extend_from_slice(&chunk);
        }
        plain
    }

    /// Wire → server with an unlimited budget.
    fn server_reads(&mut self) -> Result<ReadOutcome, TlsError> {
        self.server.read_from(&mut self.up, &mut self.scratch, &mut self.plain, usize::MAX)
    }

    /// Runs both sides until no byte moves; panics if the handshake does not finish.
    fn handshake(&mut self) {
        for _ in 0..10 {
            self.client_sends();
            self.server_reads().unwrap();
            self.server.flush_to(&mut self.down).unwrap();
            let moved = !self.down.got.is_empty();
            self.client_receives();
            if !moved && !self.client.is_handshaking() && !self.server.is_handshaking() {
                return;
            }
        }
        panic!("handshake did not finish: {:?}", self.server);
    }
}

/// A session under `config` with a finished handshake.
fn connected(pki: &Pki, versions: &[&'static SupportedProtocolVersion]) -> Link {
    let config = pki.paths.load().unwrap();
    let mut link = Link::new(pki.client(versions), TlsSession::new(config).unwrap());
    link.handshake();
    link
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// TLS record headers in `wire` (RFC 8446 §5.1: type, legacy version, 2-byte length).
fn records(wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        out.push((wire[at], len));
        at += 5 + len;
    }
    assert_eq!(at, wire.len(), "whole records");
    out
}

// ----- handshake ---------------------------------------------------------------------

#[test]
fn tls13_handshake_negotiates_http11() {
    let pki = Pki::new("tls13");
    let link = connected(&pki, &[&rustls::version::TLS13]);
    assert_eq!(link.server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(link.server.alpn_protocol(), Some(ALPN_HTTP11), "h2 is offered first but not served");
    assert_eq!(link.client.alpn_protocol(), Some(ALPN_HTTP11));
    assert_eq!(link.client.peer_certificates().unwrap().len(), 2, "the full chain is sent");
    assert!(!link.server.wants_write(), "nothing left over once the handshake is flushed");
}

#[test]
fn tls12_handshake_works_too() {
    let pki = Pki::new("tls12");
    let mut link = connected(&pki, &[&rustls::version::TLS12]);
    assert_eq!(link.server.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(link.server.alpn_protocol(), Some(ALPN_HTTP11));
    link.client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    link.client_sends();
    link.server_reads().unwrap();
    assert_eq!(link.plain, b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn handshake_records_need_writable_interest() {
    let pki = Pki::new("interest");
    let mut link =
        Link::new(pki.client(&[&rustls::version::TLS13]), TlsSession::new(pki.paths.load().unwrap()).unwrap());
    link.client_sends();
    let read = link.server_reads().unwrap();
    assert_eq!((read.plaintext, read.stop), (0, ReadStop::WouldBlock));
    assert!(link.server.is_handshaking());
    assert!(link.server.wants_write(), "ServerHello..Finished wait for the socket");
    link.down.calls = 0;
    let out = link.server.flush_to(&mut link.down).unwrap();
    assert_eq!(out, FlushOutcome { written: 0, blocked: true });
    assert!(link.server.wants_write(), "still pending: the client must ask for WRITABLE");
}

#[test]
fn plain_http_on_the_tls_port_is_an_error_not_a_panic() {
    let pki = Pki::new("garbage");
    let mut server = TlsSession::new(pki.paths.load().unwrap()).unwrap();
    let mut up = Pipe::default();
    up.bytes.extend(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut plain = Vec::new();
    let err = server.read_from(&mut up, &mut [0; 1024], &mut plain, usize::MAX).unwrap_err();
    assert!(matches!(err, TlsError::Protocol(_)), "{err}");
    assert!(plain.is_empty());
    let mut down = Trickle::open();
    server.flush_to(&mut down).unwrap();
    assert_eq!(records(&down.got).first().map(|r| r.0), Some(0x15), "an alert record goes out");
}

#[test]
fn a_malformed_client_hello_is_an_error() {
    let pki = Pki::new("badhello");
    let mut server = TlsSession::new(pki.paths.load().unwrap()).unwrap();
    let mut up = Pipe::default();
    // A handshake record (0x16) holding a ClientHello (0x01) whose body is nonsense.
    up.bytes.extend([0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]);
    let err = server.read_from(&mut up, &mut [0; 1024], &mut Vec::new(), usize::MAX).unwrap_err();
    assert!(matches!(err, TlsError::Protocol(_)), "{err}");
}

// ----- data --------------------------------------------------------------------------

#[test]
fn plaintext_both_ways() {
    let pki = Pki::new("both");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    link.client.writer().write_all(b"hello server").unwrap();
    link.client_sends();
    let read = link.server_reads().unwrap();
    assert_eq!((read.plaintext, read.stop), (12, ReadStop::WouldBlock));
    assert_eq!(link.plain, b"hello server");

    link.server.sink().write_all(b"hello client").unwrap();
    link.server.flush_to(&mut link.down).unwrap();
    assert_eq!(link.client_receives(), b"hello client");
}

#[test]
fn a_mebibyte_through_a_write_queue_and_a_trickling_socket() {
    let pki = Pki::new("mib-down");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    let payload = pattern(1 << 20);
    let (mut queue, mut pool) = (WriteQueue::default(), Pool::default());
    for chunk in payload.chunks(3000) {
        queue.push(Rc::new(chunk.to_vec()), &mut pool);
    }
    let mut got = Vec::new();
    let mut turns = 0;
    while !queue.is_empty() || link.server.wants_write() {
        turns += 1;
        assert!(turns < 1000, "no progress");
        link.down.room = 5000; // a few KiB per write call ...
        link.down.calls = 4; // ... and a few calls per turn before the kernel buffer is full
        let out = link.server.send_queued(&mut link.down, |sink| queue.write_to(sink, &mut pool)).unwrap();
        assert!(out.blocked || (queue.is_empty() && !link.server.wants_write()));
        // The slow-consumer bound: what left the queue but not the socket is rustls's
        // pending records, at most PENDING_LIMIT bytes of plaintext.
        let in_flight = payload.len() - queue.len() - got.len() - link.down.got.len();
        assert!(in_flight <= PENDING_LIMIT, "{in_flight} bytes held in rustls");
        got.extend(link.client_receives());
    }
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "same bytes, same order");
}

#[test]
fn a_blocked_socket_leaves_the_backlog_in_the_queue() {
    let pki = Pki::new("blocked");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    let (mut queue, mut pool) = (WriteQueue::default(), Pool::default());
    for _ in 0..64 {
        queue.push(Rc::new(vec![b'x'; 16 << 10]), &mut pool);
    }
    link.down.calls = 0;
    let out = link.server.send_queued(&mut link.down, |sink| queue.write_to(sink, &mut pool)).unwrap();
    assert_eq!(out, FlushOutcome { written: 0, blocked: true });
    let encrypted = (1 << 20) - queue.len();
    assert!(encrypted <= PENDING_LIMIT, "{encrypted} bytes left the queue");
    assert!(encrypted > 0);
}

#[test]
fn one_batch_of_small_frames_becomes_one_record() {
    let pki = Pki::new("records");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    let (mut queue, mut pool) = (WriteQueue::default(), Pool::default());
    for i in 0..40u8 {
        queue.push(Rc::new(vec![i; 100]), &mut pool);
    }
    link.down.writes = 0; // count from here, not the handshake
    let out = link.server.send_queued(&mut link.down, |sink| queue.write_to(sink, &mut pool)).unwrap();
    assert_eq!(link.down.writes, 1, "one TLS write for the turn");
    // TLS 1.3 application data: 4000 bytes + 1 content type + 16 tag, behind a 0x17 header.
    assert_eq!(records(&link.down.got), vec![(0x17, 4017)]);
    assert_eq!(out.written, 5 + 4017);
    assert_eq!(link.client_receives().len(), 4000);
}

#[test]
fn a_large_batch_is_cut_into_full_records() {
    let pki = Pki::new("fullrecords");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    link.server.sink().write_all(&pattern(48 << 10)).unwrap();
    link.server.flush_to(&mut link.down).unwrap();
    let sizes: Vec<usize> = records(&link.down.got).iter().map(|r| r.1).collect();
    assert_eq!(sizes, vec![(16 << 10) + 17; 3]);
}

#[test]
fn a_mebibyte_upload_is_read_in_budgeted_turns_of_few_syscalls() {
    let pki = Pki::new("mib-up");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    let payload = pattern(1 << 20);
    link.client.writer().write_all(&payload).unwrap();
    link.client_sends();
    link.up.reads = 0; // count from here, not the handshake
    let wire = link.up.bytes.len();
    let budget = 256 << 10;
    let mut turns = 0;
    loop {
        turns += 1;
        let read = link.server.read_from(&mut link.up, &mut link.scratch, &mut link.plain, budget).unwrap();
        assert!(read.ciphertext < budget + SCRATCH_LEN);
        if read.stop == ReadStop::WouldBlock {
            break;
        }
        assert_eq!(read.stop, ReadStop::Budget);
    }
    assert!(link.plain == payload);
    assert_eq!(turns, wire.div_ceil(budget), "a budget's worth per turn");
    assert_eq!(link.up.reads, wire.div_ceil(SCRATCH_LEN), "one read per scratch-full, not per 4 KiB");
}

// ----- closing -----------------------------------------------------------------------

#[test]
fn close_notify_from_the_peer_is_reported() {
    let pki = Pki::new("closenotify");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    link.client.writer().write_all(b"bye").unwrap();
    link.client.send_close_notify();
    link.client_sends();
    let read = link.server_reads().unwrap();
    assert_eq!((read.plaintext, read.stop), (3, ReadStop::CloseNotify));
    assert!(read.peer_closed());
}

#[test]
fn eof_without_close_notify_is_reported() {
    let pki = Pki::new("eof");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    link.up.eof = true;
    let read = link.server_reads().unwrap();
    assert_eq!(read.stop, ReadStop::Eof);
    assert!(read.peer_closed());
}

#[test]
fn our_close_notify_reaches_the_client() {
    let pki = Pki::new("ourclose");
    let mut link = connected(&pki, &[&rustls::version::TLS13]);
    link.server.sink().write_all(b"last words").unwrap();
    link.server.send_close_notify();
    assert!(link.server.wants_write());
    link.server.flush_to(&mut link.down).unwrap();
    assert_eq!(link.client_receives(), b"last words");
    let mut rest = [0; 1];
    assert_eq!(link.client.reader().read(&mut rest).unwrap(), 0, "a clean end of stream");
}

// ----- certificates ------------------------------------------------------------------

#[test]
fn reload_serves_the_new_pair_to_new_handshakes_only() {
    let mut pki = Pki::new("reload");
    let mut certs = Certs::open(pki.paths.clone()).unwrap();
    let first_leaf = pki.leaf_der.clone();
    let mut old = Link::new(pki.client(&[&rustls::version::TLS13]), certs.accept().unwrap());
    old.handshake();

    pki.renew();
    certs.reload().unwrap();
    let mut new = Link::new(pki.client(&[&rustls::version::TLS13]), certs.accept().unwrap());
    new.handshake();
    assert_eq!(new.client.peer_certificates().unwrap()[0].as_ref(), &pki.leaf_der[..]);
    assert_eq!(old.client.peer_certificates().unwrap()[0].as_ref(), &first_leaf[..]);
    assert_ne!(first_leaf, pki.leaf_der);

    old.client.writer().write_all(b"still here").unwrap();
    old.client_sends();
    old.server_reads().unwrap();
    assert_eq!(old.plain, b"still here");
    old.server.sink().write_all(b"so am I").unwrap();
    old.server.flush_to(&mut old.down).unwrap();
    assert_eq!(old.client_receives(), b"so am I");
}

#[test]
fn a_broken_key_on_reload_keeps_the_old_pair() {
    let pki = Pki::new("brokenkey");
    let mut certs = Certs::open(pki.paths.clone()).unwrap();
    let before = Arc::clone(certs.current());
    fs::write(&pki.paths.key_path, "-----BEGIN PRIVATE KEY-----\nnot*base64\n-----END PRIVATE KEY-----\n").unwrap();
    let err = certs.reload().unwrap_err();
    assert!(err.contains(&pki.paths.key_path.display().to_string()), "{err}");
    assert!(Arc::ptr_eq(&before, certs.current()), "the old pair stays");
    let mut link = Link::new(pki.client(&[&rustls::version::TLS13]), certs.accept().unwrap());
    link.handshake();
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let pki = Pki::new("mismatch");
    let other = KeyPair::generate().unwrap();
    fs::write(&pki.paths.key_path, other.serialize_pem()).unwrap();
    let err = pki.paths.load().unwrap_err();
    assert!(err.contains("cannot be used together"), "{err}");
    assert!(!err.contains(&other.serialize_pem()[30..60]), "no key material in messages");
}

#[test]
fn a_missing_file_is_named() {
    let pki = Pki::new("missing");
    let gone = pki.dir.join("nope.pem");
    let err = load(&gone, &pki.paths.key_path).unwrap_err();
    assert!(err.contains(&gone.display().to_string()) && err.contains("certificate chain"), "{err}");
    let err = load(&pki.paths.cert_path, &gone).unwrap_err();
    assert!(err.contains(&gone.display().to_string()) && err.contains("private key"), "{err}");
}

#[test]
fn files_without_the_expected_blocks_say_so() {
    let pki = Pki::new("swapped");
    let err = load(&pki.paths.key_path, &pki.paths.key_path).unwrap_err();
    assert!(err.contains("no CERTIFICATE block"), "{err}");
    let err = load(&pki.paths.cert_path, &pki.paths.cert_path).unwrap_err();
    assert!(err.contains("no private key found"), "{err}");
}

#[test]
fn a_sec1_ec_key_loads() {
    let pki = Pki::new("sec1");
    let key = pki_renewed_key(&pki);
    fs::write(&pki.paths.key_path, pem_block("EC PRIVATE KEY", &inner_key_of_pkcs8(key.serialized_der()))).unwrap();
    let mut link =
        Link::new(pki.client(&[&rustls::version::TLS13]), TlsSession::new(pki.paths.load().unwrap()).unwrap());
    link.handshake();
}

#[test]
fn a_pkcs1_rsa_key_loads() {
    let pki = Pki::new("pkcs1");
    let key = KeyPair::from_pem(RSA_TEST_KEY_PKCS8).unwrap();
    let leaf =
        CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    fs::write(&pki.paths.cert_path, leaf.pem()).unwrap();
    fs::write(&pki.paths.key_path, pem_block("RSA PRIVATE KEY", &inner_key_of_pkcs8(key.serialized_der()))).unwrap();
    let mut link =
        Link::new(pki.client(&[&rustls::version::TLS12]), TlsSession::new(pki.paths.load().unwrap()).unwrap());
    link.handshake();
    assert_eq!(link.client.peer_certificates().unwrap()[0].as_ref(), leaf.der().as_ref());
}

/// Renews the leaf in place and returns its key (for re-encoding it).
fn pki_renewed_key(pki: &Pki) -> KeyPair {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf = params.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    fs::write(&pki.paths.cert_path, leaf.pem()).unwrap();
    key
}

/// The algorithm's own key encoding inside a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5:
/// SEQUENCE { version, algorithm, privateKey OCTET STRING }): the octets are the SEC1
/// `ECPrivateKey` for EC keys and the PKCS#1 `RSAPrivateKey` for RSA keys.
fn inner_key_of_pkcs8(der: &[u8]) -> Vec<u8> {
    let (_, body) = der_tlv(der); // the outer SEQUENCE
    let (rest, _version) = der_tlv(body);
    let (rest, _algorithm) = der_tlv(rest);
    assert_eq!(rest[0], 0x04, "privateKey is an OCTET STRING");
    der_tlv(rest).1.to_vec()
}

/// Splits one DER TLV off `input`: (what follows it, its contents).
fn der_tlv(input: &[u8]) -> (&[u8], &[u8]) {
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(input[2]), 3),
        0x82 => (usize::from(u16::from_be_bytes([input[2], input[3]])), 4),
        n => panic!("DER length form {n:#x} not expected in a test key"),
    };
    (&input[header + len..], &input[header..header + len])
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A 2048-bit RSA key for `a_pkcs1_rsa_key_loads` only (the `ring` provider cannot generate
/// RSA keys, so rcgen cannot make one at test time). Made with `openssl genpkey -algorithm
/// RSA`; it protects nothing and signs nothing outside this test.
const RSA_TEST_KEY_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQClwgselkSccO4A
IcRWps+xx5mXjh3OyQp3nb7HQbdZlhvtN6//KPjWwpcKNnoflCsLBUn/3S8NCm39
QAPnu4lCuGRfK6M1O92sT9FdBAKHdqr3qsmQTn7eULo4X9AE4h552miOuK9w7vYE
zYaWKQ8EAAVu3CFlJj6Bw1ONHsD/P2wgYUI2gjdsRcoJoPEU21k43+PH8nECv7KK
YP4/2KlGUThUc03fkSSRc3a2FOzlcUQqk0uDvTYdT3PXDamgTS4+6Qhd7KQ+HvD5
aqM3KHUAt3oERQYHDQJXZdtbsG1g22J+YPE2wyYdRRybpscrA2/fqgZwHWRk4w0J
8nJG9VYLAgMBAAECggEAA1TXjrP8HrLMWGyqpV0xPm73C3Xmlncxl9Qv9zw/DZ9i
jKLPuDlKwFzlK+Y1ZSNqtrbSqmr3x54mi25OcHQInwfVXe5NbO6jlr4nRI8l591p
iT8W/FNU4cNN7X/LeVWmwXyIw8Q6znJsYmNTvvqF8Twjintadnh4Is6Ert49Mxll
xeqLEprIqXDsjXXwxqeDjsgEo7+B9a2y5yRWJjkWfHZzrF70yYoNXJSgckYYPxmI
59P7HqjbAeHMpjxroEBOCKQNvLKxgKo2p/Ouk1Ypf2ms+v8wBRN6ptfeQMh71GfY
yoGNPBh8AWDTDWkZDaIlJR9HFhc4BgRV7oey/VxzXQKBgQDP1eDajU2WH1l7OQKK
6m9U9/9wkWyCoGsrwgW+GcVxkx08KDhnNwqlacO94eQryu6SBg4sCTVqMz7BdC+z
Grk9UEAUM/1T5joIFtn9TDHhyGYCNHahI6anbsahu5XAb2iMvaU25UlHNj+Vf3PJ
j5Tg6cYys4AGoE7k0MWOjcEM3wKBgQDMK9x/7UIeU0FfW415+L1pKg645yHcqVYx
8c4XUoEV54/TEYNlzP+ZoGJUl7SGLPwJwmRaBHaxb4dQIc8OhhwQn3meiIC35e1E
+lclSFZ1HNDCimuwqyJA7ovFTlTMc08qKiM1UT02OkWMotOiJlu3bpFpars10G3x
kgkfxJXwVQKBgQCAZfnMC4/rNuLpJYdUmxC8xZmhybXn3YNYPT2e+/zm9aQSDicK
XQ7OslCjdnKoO26399W5jtbZDV+v1D/DvrbCEloEITpYItunM7borbIDcvLSWecQ
Fh5XQjCkqmcRw8IrcN4o0+45eGI/0cWOuI2ZhdNUb2Cgt1kGM5RZRWoGsQKBgQCN
uIhnGBaEHEBNY6xxlNJNVE9B09YyaCyXoIPwtmk5/jFcTlTJ7iEhzy1SELfTRxhv
4cpsnZqSEZt4aO9j4n1KoJf4DkJi5CvtbGPfUjYJNsZFs3WK/U9aiPrmKzg7bnLu
Dq+/y7NUl+A8/a0vabbSPeKbrOVkNliKjVbeAUQevQKBgDEaos4oLVImudon6wnd
0YaSligGS1mUDgcvuOMV0Q+qE8+zN492xWyWLRMIZe/22EITkhJkuet6KERPNznZ
1oXaP+IJNItZIjLJBsRUeUM3LToSyrcnjnLpMA4elTSfTB/UJuiDe5qS4lWotqAi
0UNHJlnrIl5nEeAerFIjkL4t
-----END PRIVATE KEY-----
";
