//! `server::tls` on real 127.0.0.1 sockets: a tiny edge-triggered mio echo loop wired the
//! way `Client` should be (read_from into a shared scratch, send_queued, WRITABLE while
//! bytes or records wait, close_notify before the end), against blocking rustls clients
//! on one thread. It also measures what an idle TLS connection holds on the heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpStream as StdStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use pollcast::server::tls::{self, ReadOutcome, TlsSession};

/// Counts the heap bytes live on the current thread, so the server loop's memory can be
/// measured while the client thread allocates too.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| live.set(live.get() + delta)); // gone during thread exit: ignore
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(p, layout);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LISTENER: Token = Token(usize::MAX);
const CLIENTS: usize = 50;
const BIG: usize = 1 << 20;

/// One echo connection: what `Client` would gain for TLS.
struct Conn {
    sock: TcpStream,    // non-blocking, edge-triggered
    tls: TlsSession,    // the session under test
    out: Vec<u8>,       // plaintext to echo (stands in for the WriteQueue)
    sent: usize,        // bytes of `out` already in the sink
    closing: bool,      // the peer closed: our close_notify is queued
    interest: Interest, // what the poller has
}

impl Conn {
    fn interest(&self) -> Interest {
        if self.sent < self.out.len() || self.tls.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// The flush phase: plaintext into the sink, records to the socket.
    fn flush(&mut self) -> io::Result<()> {
        let (out, sent) = (&self.out, &mut self.sent);
        self.tls.send_queued(&mut self.sock, |sink| match sink.write(&out[*sent..]) {
            Ok(n) => {
                *sent += n;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        })?;
        if self.sent == self.out.len() {
            (self.out, self.sent) = (Vec::new(), 0);
        }
        Ok(())
    }
}

fn pki() -> (tempdir::Dir, rustls::pki_types::CertificateDer<'static>) {
    let dir = tempdir::Dir::new("tls-unit");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path.join("fullchain.pem"), leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.path.join("key.pem"), key.serialize_pem()).unwrap();
    (dir, ca.der().clone())
}

mod tempdir {
    use std::path::PathBuf;

    pub struct Dir {
        pub path: PathBuf, // removed on drop
    }

    impl Dir {
        pub fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("pollcast-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The peer: blocking rustls clients on one thread. Opens `CLIENTS` connections and pings
/// each, reports "idle", waits for "go", echoes a MiB on the first, then closes all.
fn clients(port: u16, ca: rustls::pki_types::CertificateDer<'static>, idle: mpsc::Sender<()>, go: mpsc::Receiver<()>) {
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    let mut streams = Vec::new();
    for i in 0..CLIENTS {
        let conn = ClientConnection::new(Arc::clone(&config), ServerName::try_from("localhost").unwrap()).unwrap();
        let sock = StdStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut stream = StreamOwned::new(conn, sock);
        let ping = format!("ping {i:04}");
        stream.write_all(ping.as_bytes()).unwrap();
        let mut back = vec![0; ping.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, ping.as_bytes());
        streams.push(stream);
    }
    idle.send(()).unwrap();
    go.recv().unwrap();

    let payload: Vec<u8> = (0..BIG).map(|i| (i % 253) as u8).collect();
    let first = &mut streams[0];
    first.write_all(&payload).unwrap();
    let mut back = vec![0; BIG];
    first.read_exact(&mut back).unwrap();
    assert!(back == payload, "the MiB came back intact");

    for mut stream in streams {
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap(); // the server's close_notify ends the stream cleanly
        assert!(rest.is_empty());
    }
}

#[test]
fn echo_over_loopback_and_idle_memory() {
    let (dir, ca) = pki();
    let config = tls::load(&dir.path.join("fullchain.pem"), &dir.path.join("key.pem")).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().unwrap().port();
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).unwrap();
    let (idle_tx, idle_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let peer = thread::spawn(move || clients(port, ca, idle_tx, go_rx));

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut scratch = vec![0; 64 << 10];
    let mut plain = Vec::new();
    let mut events = Events::with_capacity(256);
    let baseline = LIVE.with(Cell::get);
    let mut measured = None;
    let mut closed = 0;
    let deadline = Instant::now() + Duration::from_secs(60); // the watchdog
    while closed < CLIENTS {
        assert!(Instant::now() < deadline, "watchdog: {closed} of {CLIENTS} closed");
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((sock, _)) = listener.accept() {
                    let mut conn = Conn {
                        sock,
                        tls: TlsSession::new(Arc::clone(&config)).unwrap(),
                        out: Vec::new(),
                        sent: 0,
                        closing: false,
                        interest: Interest::READABLE,
                    };
                    poll.registry().register(&mut conn.sock, Token(conns.len()), Interest::READABLE).unwrap();
                    conns.push(Some(conn));
                }
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns[key].as_mut() else { continue };
            if event.is_readable() || event.is_read_closed() {
                let read: ReadOutcome =
                    conn.tls.read_from(&mut conn.sock, &mut scratch, &mut plain, usize::MAX).unwrap();
                conn.out.append(&mut plain);
                if read.peer_closed() && !conn.closing {
                    conn.closing = true;
                    conn.tls.send_close_notify();
                }
            }
            conn.flush().unwrap();
            if conn.closing && !conn.tls.wants_write() && conn.out.is_empty() {
                conns[key] = None; // drop = close; the client saw our close_notify
                closed += 1;
                continue;
            }
            let wanted = conn.interest();
            if wanted != conn.interest {
                poll.registry().reregister(&mut conn.sock, Token(key), wanted).unwrap();
                conn.interest = wanted;
            }
        }
        if measured.is_none() && idle_rx.try_recv().is_ok() {
            let live = conns.iter().flatten().count();
            let slots = conns.capacity() * std::mem::size_of::<Option<Conn>>();
            let per_conn = ((LIVE.with(Cell::get) - baseline) as usize - slots) / live;
            eprintln!(
                "idle TLS connection, server side, after handshake and a ping: {per_conn} heap bytes \
                 beyond its slot; TlsSession itself is {} bytes inline",
                std::mem::size_of::<TlsSession>()
            );
            measured = Some(per_conn);
            go_tx.send(()).unwrap();
        }
    }
    peer.join().unwrap();
    // rustls keeps a 4 KiB record buffer and a few small allocations per idle session.
    let per_conn = measured.unwrap();
    assert!(per_conn < 16 << 10, "{per_conn} bytes per idle connection");
}
