//! Shared harness for the loopback tests: the real `pollcast` binary on `127.0.0.1:0`,
//! clients (tungstenite and raw sockets), raw frame helpers, and a watchdog.
//!
//! Every blocking call made through these helpers has a timeout, and every test holds a
//! `Watchdog`, so a server that hangs makes a test fail instead of blocking the suite.

// Each integration-test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pollcast::proto::frame::{write_masked_frame, FrameHeader};
use tungstenite::WebSocket;

pub mod json;
pub mod redis;

/// Read and write timeout on every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The watchdog limit most tests use.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);
/// The key of RFC 6455 §1.3's sample handshake.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The masking key of every frame these helpers build.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// PIDs of the servers alive in this process, so the watchdog can kill them before it
/// aborts (an abort skips `Drop`).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

// ----- watchdog ------------------------------------------------------------------------

/// Aborts the test process if it is still alive after its limit: a hang fails loudly.
/// Dropping it (the test finished) disarms it.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
}

pub fn watchdog(limit: Duration) -> Watchdog {
    let name = thread::current().name().unwrap_or("test").to_owned();
    let (disarm, armed) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
            eprintln!("WATCHDOG: {name} still running after {limit:?}; killing servers and aborting");
            for pid in CHILDREN.lock().map(|c| c.clone()).unwrap_or_default() {
                // SAFETY: kill(2) with a PID we spawned and have not reaped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            std::process::abort();
        }
    });
    Watchdog { disarm: Some(disarm) }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(disarm) = self.disarm.take() {
            let _ = disarm.send(());
        }
    }
}

// ----- the server process --------------------------------------------------------------

/// The real binary, listening on a free port of 127.0.0.1. Killed on drop.
pub struct Server {
    child: Child,                  // the process
    pub addr: SocketAddr,          // where it listens
    pub admin: Option<SocketAddr>, // where its admin port listens (tests get a free port), unless off
    log: Arc<Mutex<Vec<String>>>,  // every stderr line so far
    exit: Option<ExitStatus>,      // set once reaped
}

impl Server {
    /// `pollcast --listen 127.0.0.1:0 ARGS...`
    pub fn start(args: &[&str]) -> Server {
        Server::start_wrapped(&[], args)
    }

    /// Like `start`, logging at `filter` (e.g. `pollcast=debug`) instead of info.
    pub fn start_logging(filter: &str, args: &[&str]) -> Server {
        Server::spawn(&[], args, filter)
    }

    /// Like `start`, with a command in front (e.g. `prlimit --nofile=64:64`), which must
    /// exec the server in the same process so the PID is the server's.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Server {
        Server::spawn(wrapper, args, "pollcast=info")
    }

    fn spawn(wrapper: &[&str], args: &[&str], log_filter: &str) -> Server {
        let bin = env!("CARGO_BIN_EXE_pollcast");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        // A free admin port too (the default 8081 would clash between parallel servers).
        if !args.contains(&"--admin-listen") {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        // History is opt-in here: tests that want it pass their own `--db` file, so
        // servers running in parallel never share (and lock) one database.
        if !args.iter().any(|a| *a == "--db" || *a == "--no-history") {
            command.arg("--no-history");
        }
        command.env("RUST_LOG", log_filter).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn pollcast");
        CHILDREN.lock().unwrap().push(child.id());
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Drain stderr for the whole life of the process, so the pipe never fills.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                if let Some(port) = listening_port(&line, "pollcast listening on ") {
                    let _ = port_tx.send((false, port));
                }
                if let Some(port) = listening_port(&line, "admin listening on ") {
                    let _ = port_tx.send((true, port));
                }
            }
        });
        let mut server = Server { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), admin: None, log, exit: None };
        let admin_off = args.windows(2).any(|pair| pair == ["--admin-listen", "off"]);
        // The public port's line comes first, then the admin port's (unless it is off).
        for _ in 0..if admin_off { 1 } else { 2 } {
            match port_rx.recv_timeout(START_TIMEOUT) {
                Ok((false, port)) => server.addr.set_port(port),
                Ok((true, port)) => server.admin = Some(SocketAddr::from(([127, 0, 0, 1], port))),
                Err(_) => panic!("pollcast did not report its ports; stderr:\n{}", server.log_text()),
            }
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to `limit` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log.lock().unwrap().iter().any(|l| l.contains(needle)))
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the PID of a child we have not reaped (it may be a zombie).
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while self.exit.is_none() && Instant::now() < deadline {
            self.exit = self.child.try_wait().expect("try_wait");
            if self.exit.is_none() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit.is_none()
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS value")
    }

    /// The soft open-file limit in force (`Max open files` of /proc/PID/limits).
    pub fn open_files_limit(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).expect("read /proc limits");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files line");
        line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).expect("soft limit value")
    }

    /// CPU time used so far (user + system), from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc stat");
        // Fields after the command name, which is in parentheses and may contain spaces:
        // state(3) ... utime(14) stime(15), i.e. indexes 11 and 12 after the ')'.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// A plain `GET path` on a fresh connection: (status, whole response text).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = raw_connect(self);
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("write GET");
        let response = read_to_eof(&mut stream);
        (status_of(&response), response)
    }

    /// A request to the admin port (`method`, `path`, extra header lines, a body), and its
    /// whole answer: status and text.
    pub fn admin_request(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let admin = self.admin.expect("the admin port is on");
        let mut stream = TcpStream::connect_timeout(&admin, IO_TIMEOUT).expect("connect to the admin port");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("write admin request");
        let response = read_to_eof(&mut stream);
        (status_of(&response), response)
    }

    /// `GET path` on the admin port.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_request("GET", path, "", "")
    }

    /// The value of counter or gauge `pollcast_{name}` from the admin port's `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (status, text) = self.admin_get("/metrics");
        assert_eq!(status, 200, "GET /metrics:\n{text}");
        let prefix = format!("pollcast_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric pollcast_{name} in:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill(); // SIGKILL
            let _ = self.child.wait();
        }
        if let Ok(mut children) = CHILDREN.lock() {
            children.retain(|&pid| pid != self.child.id());
        }
    }
}

/// `... {what}ws://127.0.0.1:PORT/` (or `wss://`, `http://`) → PORT.
fn listening_port(line: &str, what: &str) -> Option<u16> {
    let rest = line.split(what).nth(1)?.split("://127.0.0.1:").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// Polls `done` every 20 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ----- clients -------------------------------------------------------------------------

/// A TCP connection with read and write timeouts and Nagle off.
pub fn raw_connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect");
    configure(&stream);
    stream
}

fn configure(stream: &TcpStream) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
}

/// A TCP connection whose receive buffer is made as small as the kernel allows before
/// connecting, so a client that never reads backs up quickly.
pub fn raw_connect_tiny_rcvbuf(server: &Server) -> TcpStream {
    // SAFETY: plain socket syscalls on a descriptor we own; on success ownership passes
    // to the TcpStream, on failure we close it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let size: libc::c_int = 4096;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "setsockopt SO_RCVBUF: {}", io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: server.addr.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let err = io::Error::last_os_error();
            libc::close(fd);
            panic!("connect: {err}");
        }
        let stream = TcpStream::from_raw_fd(fd);
        configure(&stream);
        stream
    }
}

/// A tungstenite client in room `path` (e.g. `/`, `/a`), handshake done.
pub fn ws_connect(server: &Server, path: &str) -> WebSocket<TcpStream> {
    let stream = raw_connect(server);
    match tungstenite::client(server.url(path), stream) {
        Ok((ws, _response)) => ws,
        Err(e) => panic!("WebSocket handshake to {path} failed: {e}"),
    }
}

/// Reads the next data message (text or binary) as bytes, answering pings on the way.
pub fn ws_read_data(ws: &mut WebSocket<TcpStream>) -> Vec<u8> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) => return text.into_bytes(),
            Ok(tungstenite::Message::Binary(bytes)) => return bytes,
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a data message, got {other:?}"),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// A valid upgrade request for `path`, with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` and reads the response head (up to and including the blank line).
/// Returns the head and whatever bytes came after it.
pub fn raw_handshake(stream: &mut TcpStream, request: &[u8]) -> (String, Vec<u8>) {
    stream.write_all(request).expect("write request");
    read_head(stream)
}

/// Reads until the end of an HTTP response head.
pub fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(end + 4);
            return (String::from_utf8_lossy(&got).into_owned(), rest);
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("EOF before the end of the response head: {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading response head: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

/// Reads everything until the server closes the connection. A reset after some bytes
/// counts as the end too (the answer is what matters).
pub fn read_to_eof(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !got.is_empty() => break,
            Err(e) => panic!("reading response: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The status code of an HTTP response (`HTTP/1.1 404 ...` → 404).
pub fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {response:?}"))
}

// ----- raw frames ----------------------------------------------------------------------

/// One masked client frame; `opcode_bits` is raw so reserved opcodes can be sent.
pub fn masked_frame(fin: bool, opcode_bits: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    write_masked_frame(&mut out, fin, opcode_bits, payload, MASK);
    out
}

/// A Close frame body: the code, big-endian, then the reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

/// A frame the server sent (unmasked).
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// How a raw connection ended its close.
#[derive(Debug, PartialEq, Eq)]
pub enum CloseSeen {
    Frame(u16, String), // a Close frame: code (1005 when the body is empty) and reason
    Eof,                // the TCP connection ended without a Close frame
}

/// A raw WebSocket client over a plain socket: sends whatever bytes a test builds and
/// decodes what the server sends.
pub struct RawWs {
    pub stream: TcpStream, // the socket, with timeouts
    buf: Vec<u8>,          // bytes read but not yet decoded
}

impl RawWs {
    /// Connects and upgrades to `path`, asserting a 101.
    pub fn open(server: &Server, path: &str) -> RawWs {
        RawWs::open_on(raw_connect(server), path)
    }

    pub fn open_on(mut stream: TcpStream, path: &str) -> RawWs {
        let (head, rest) = raw_handshake(&mut stream, upgrade_request(path, "").as_bytes());
        assert!(head.starts_with("HTTP/1.1 101 "), "expected 101, got {head:?}");
        RawWs { stream, buf: rest }
    }

    /// Wraps a stream whose handshake the caller did, with bytes already read past it.
    pub fn from_parts(stream: TcpStream, buf: Vec<u8>) -> RawWs {
        RawWs { stream, buf }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write frame");
    }

    /// Reads one server frame; `None` at EOF.
    pub fn read_frame(&mut self) -> Option<ServerFrame> {
        let (rsv, frame) = self.read_frame_rsv()?;
        assert_eq!(rsv, 0, "server frame with RSV bits");
        Some(frame)
    }

    /// Reads one server frame and its RSV bits (RSV1: compressed, on a connection that
    /// agreed to permessage-deflate); `None` at EOF.
    pub fn read_frame_rsv(&mut self) -> Option<(u8, ServerFrame)> {
        loop {
            if let Some((header, header_len)) = FrameHeader::parse(&self.buf).expect("server frame header") {
                assert!(header.mask.is_none(), "RFC 6455 §5.1: server frames must not be masked");
                let end = header_len + header.payload_len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[header_len..end].to_vec();
                    self.buf.drain(..end);
                    return Some((header.rsv, ServerFrame { fin: header.fin, opcode: header.opcode_bits, payload }));
                }
            }
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "EOF inside a frame ({} bytes left)", self.buf.len());
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading a frame: {e}"),
            }
        }
    }

    /// Reads frames until a Close frame or EOF, skipping anything else (pings, data).
    pub fn read_close(&mut self) -> CloseSeen {
        loop {
            let Some(frame) = self.read_frame() else { return CloseSeen::Eof };
            if frame.opcode != 0x8 {
                continue;
            }
            return match frame.payload.as_slice() {
                [] => CloseSeen::Frame(1005, String::new()),
                [hi, lo, reason @ ..] => {
                    let reason = String::from_utf8(reason.to_vec()).expect("close reason must be UTF-8");
                    CloseSeen::Frame(u16::from_be_bytes([*hi, *lo]), reason)
                }
                [_] => panic!("server sent a Close with a 1-byte body"),
            };
        }
    }

    /// Reads a Close frame and returns its code; panics if the connection ended first.
    pub fn read_close_code(&mut self) -> u16 {
        match self.read_close() {
            CloseSeen::Frame(code, _) => code,
            CloseSeen::Eof => panic!("connection ended without a Close frame"),
        }
    }

    /// Asserts the server ends the TCP stream next (read returns 0), with nothing else.
    pub fn expect_eof(&mut self) {
        if let Some(frame) = self.read_frame() {
            panic!("expected EOF, got another frame {frame:?}");
        }
    }
}
