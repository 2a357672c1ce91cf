//! A `wss://` relay for comparing TLS costs with pollcast: tokio-tungstenite over
//! tokio-rustls, relaying each text or binary message to every *other* client, batched
//! the way the plain tokio-tungstenite peer batches (a writer task per client feeds every
//! message its queue holds, then flushes once), so the two peers differ only by TLS.
//!
//! TLS is set up like pollcast's server: rustls on the `ring` provider, TLS 1.3 and 1.2,
//! ALPN `http/1.1`, default session tickets, default 64 KiB outbound buffer.
//!
//! Usage: tt-tls-peer PORT CERT.pem KEY.pem [--threads N | --current-thread]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Every connected client's queue, by id.
#[derive(Clone, Default)]
struct Room(Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>);

impl Room {
    fn join(&self, id: u64) -> UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.lock().unwrap().insert(id, tx);
        rx
    }

    fn leave(&self, id: u64) {
        self.0.lock().unwrap().remove(&id);
    }

    /// Queues `message` for everyone but `from`.
    fn relay(&self, from: u64, message: &Message) {
        for (id, queue) in self.0.lock().unwrap().iter() {
            if *id != from {
                let _ = queue.send(message.clone());
            }
        }
    }
}

/// TLS handshake, WebSocket upgrade, then relay until either direction ends.
async fn serve_client(acceptor: TlsAcceptor, room: Room, tcp: TcpStream, id: u64) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else { return };
    let Ok(ws) = tokio_tungstenite::accept_async(tls).await else { return };
    let queue = room.join(id);
    let (sink, mut source) = ws.split();
    let inbound = async {
        while let Some(Ok(message)) = source.next().await {
            if message.is_text() || message.is_binary() {
                room.relay(id, &message);
            }
            // Close and pings: tungstenite answers them itself on the next poll.
        }
    };
    tokio::select! {
        _ = write_batches(sink, queue) => {}
        _ = inbound => {}
    }
    room.leave(id);
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>, Message>;

/// Waits for a message, feeds it and whatever else is already queued, then flushes:
/// one flush (so a few TLS records) per batch, not per message.
async fn write_batches(mut sink: Sink, mut queue: UnboundedReceiver<Message>) {
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(message) = next {
            if sink.feed(message).await.is_err() {
                return;
            }
            next = queue.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The server's TLS configuration from a PEM chain and key.
fn tls_config(cert: &str, key: &str) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| panic!("{cert}: {e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{cert}: {e}"));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn listen(port: u16, acceptor: TlsAcceptor) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    eprintln!("tokio-tungstenite TLS peer listening on wss://127.0.0.1:{port}/");
    let room = Room::default();
    for id in 1u64.. {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        tokio::spawn(serve_client(acceptor.clone(), room.clone(), tcp, id));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: tt-tls-peer PORT CERT.pem KEY.pem [--threads N | --current-thread]");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("PORT");
    let acceptor = TlsAcceptor::from(tls_config(&args[2], &args[3]));
    let flag = |name: &str| args.iter().position(|a| a == name);
    let runtime = if flag("--current-thread").is_some() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(at) = flag("--threads") {
            builder.worker_threads(args.get(at + 1).and_then(|n| n.parse().ok()).expect("--threads N"));
        }
        builder.enable_all().build()
    }
    .expect("a tokio runtime");
    runtime.block_on(listen(port, acceptor));
}
