//! `wss://` and `https://` from the real binary: a certificate the test makes, a chat
//! exchange, plain HTTP over TLS, TLS 1.2 and 1.3, the handshake timeout, and SIGHUP
//! reloading the pair (a broken pair keeps the old one in service).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::{Message, WebSocket};

use common::json::TempDir;
use common::*;

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM into `dir`
/// (`cert.pem`, `key.pem`); returns its DER for clients to trust.
fn make_cert(dir: &TempDir, label: &str) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, label);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.file("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.file("key.pem"), key.serialize_pem()).unwrap();
    cert.der().clone()
}

fn tls_server(dir: &TempDir, args: &[&str]) -> Server {
    let (cert, key) = (dir.file("cert.pem"), dir.file("key.pem"));
    let mut all = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A client config trusting `cert`, speaking the given TLS versions.
fn client_config(
    cert: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to the server, handshake done.
fn tls_connect(server: &Server, config: Arc<ClientConfig>) -> Tls {
    let tcp = raw_connect(server);
    let conn = ClientConnection::new(config, ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// A `wss://` WebSocket on `path`.
fn wss(server: &Server, config: Arc<ClientConfig>, path: &str) -> WebSocket<Tls> {
    let tls = tls_connect(server, config);
    let url = format!("wss://127.0.0.1:{}{path}", server.addr.port());
    tungstenite::client(url, tls).expect("wss handshake").0
}

fn read_text(ws: &mut WebSocket<Tls>) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(text) => return text,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The subject common name the server presents to a new handshake.
fn presented_cert(server: &Server, trusted: &CertificateDer<'static>) -> Result<Vec<u8>, String> {
    let tcp = raw_connect(server);
    let conn =
        ClientConnection::new(client_config(trusted, rustls::ALL_VERSIONS), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
    }
    Ok(tls.conn.peer_certificates().unwrap()[0].to_vec())
}

#[test]
fn a_chat_over_wss_and_a_page_over_https() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("tls-chat");
    let cert = make_cert(&dir, "one");
    let server = tls_server(&dir, &[]);
    assert!(server.wait_for_log("listening on wss://", Duration::from_secs(5)), "{}", server.log_text());
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let config = client_config(&cert, versions);
        let mut ann = wss(&server, Arc::clone(&config), "/games");
        let mut bob = wss(&server, Arc::clone(&config), "/games");
        ann.send(Message::text("hello over tls")).unwrap();
        assert_eq!(read_text(&mut bob), "hello over tls");
        let big = "x".repeat(60 << 10);
        bob.send(Message::text(big.clone())).unwrap();
        assert_eq!(read_text(&mut ann), big, "a large message crosses several records");
        assert_eq!(ann.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
    // https: the page and /healthz.
    let mut tls = tls_connect(&server, client_config(&cert, rustls::ALL_VERSIONS));
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("ok\n"), "{response:?}");
}

#[test]
fn the_tls_handshake_counts_against_the_handshake_timeout() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("tls-timeout");
    make_cert(&dir, "one");
    let server = tls_server(&dir, &["--handshake-timeout", "1s"]);
    let mut silent = raw_connect(&server);
    let started = std::time::Instant::now();
    let mut said = Vec::new();
    let _ = silent.read_to_end(&mut said); // at most a TLS alert record, then the end
    assert!(said.len() < 64 && said.first().is_none_or(|&kind| kind == 0x15), "only an alert: {said:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "dropped at the timeout: {waited:?}"
    );
}

#[test]
fn sighup_reloads_the_pair_and_a_broken_one_keeps_the_old() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("tls-reload");
    let first = make_cert(&dir, "first");
    let server = tls_server(&dir, &[]);
    let mut open = wss(&server, client_config(&first, rustls::ALL_VERSIONS), "/r");
    // A new pair on disk, then SIGHUP: new handshakes get it, the open connection goes on.
    let second = make_cert(&dir, "second");
    server.signal(libc::SIGHUP);
    assert!(server.wait_for_log("TLS certificate reloaded", Duration::from_secs(5)), "{}", server.log_text());
    assert_eq!(presented_cert(&server, &second).unwrap(), second.to_vec());
    let mut peer = wss(&server, client_config(&second, rustls::ALL_VERSIONS), "/r");
    peer.send(Message::text("after the reload")).unwrap();
    assert_eq!(read_text(&mut open), "after the reload", "the old connection keeps working");
    // A broken key: logged, and the second pair stays in service.
    std::fs::write(dir.file("key.pem"), "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(server.wait_for_log("not reloaded, the old one stays", Duration::from_secs(5)), "{}", server.log_text());
    assert_eq!(presented_cert(&server, &second).unwrap(), second.to_vec());
}

#[test]
fn graceful_shutdown_closes_wss_clients_1001() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("tls-shutdown");
    let cert = make_cert(&dir, "one");
    let mut server = tls_server(&dir, &[]);
    let mut ws = wss(&server, client_config(&cert, rustls::ALL_VERSIONS), "/");
    server.signal(libc::SIGTERM);
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no Close before the end: {e}"),
        }
    }
    assert!(server.wait_exit(Duration::from_secs(5)).is_some_and(|status| status.success()));
}
