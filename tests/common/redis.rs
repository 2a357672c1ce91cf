//! A real `redis-server` for the cluster tests, on a free port of 127.0.0.1, with no
//! persistence and no config file. `scripts/redis.sh` (run by the test command)
//! installs Debian's package when the binary is missing; here it is only found.
//!
//! Stopped by PID on drop (SIGKILL); `kill` and `restart` (same port) are what the
//! outage tests do to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{wait_until, CHILDREN, IO_TIMEOUT};

/// How long a redis-server gets to answer PING after it starts.
const REDIS_START: Duration = Duration::from_secs(10);

/// One redis-server process.
pub struct Redis {
    child: Option<Child>,               // None while killed
    pub port: u16,                      // where it listens (kept across restarts)
    password: Option<String>,           // requirepass, when a test wants one
    aof_dir: Option<String>,            // appendonly + appendfsync always here, kept across restarts
    tls: Option<(u16, String, String)>, // a TLS port too, with this certificate and key (PEM files)
}

impl Redis {
    /// A Redis on a free port.
    pub fn start() -> Redis {
        Redis::start_with_password(None)
    }

    /// A Redis whose clients must AUTH with `password`.
    pub fn start_with_password(password: Option<&str>) -> Redis {
        let port = free_port();
        let mut redis = Redis { child: None, port, password: password.map(str::to_owned), aof_dir: None, tls: None };
        redis.spawn();
        redis
    }

    /// A Redis that fsyncs every write to an append-only file in `dir` before answering
    /// (`appendonly yes`, `appendfsync always`): a restart keeps what it acknowledged.
    pub fn start_durable(dir: &str) -> Redis {
        let mut redis =
            Redis { child: None, port: free_port(), password: None, aof_dir: Some(dir.to_owned()), tls: None };
        redis.spawn();
        redis
    }

    /// A Redis with a TLS port as well as its plain one, serving the certificate and key
    /// in these PEM files (no client certificates asked).
    pub fn start_tls(cert: &str, key: &str, password: Option<&str>) -> Redis {
        let tls = Some((free_port(), cert.to_owned(), key.to_owned()));
        let password = password.map(str::to_owned);
        let mut redis = Redis { child: None, port: free_port(), password, aof_dir: None, tls };
        redis.spawn();
        redis
    }

    /// `rediss://[:PASSWORD@]127.0.0.1:TLS_PORT/DB` (a Redis started with `start_tls`).
    pub fn tls_url(&self, db: u32) -> String {
        let (port, _, _) = self.tls.as_ref().expect("a Redis with TLS");
        match &self.password {
            Some(password) => format!("rediss://:{password}@127.0.0.1:{port}/{db}"),
            None => format!("rediss://127.0.0.1:{port}/{db}"),
        }
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT/DB`
    pub fn url(&self, db: u32) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    /// SIGKILL: Redis is gone at once (what a crash looks like to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            CHILDREN.lock().unwrap().retain(|&pid| pid != child.id());
        }
    }

    /// A fresh, empty Redis on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One command through a plain blocking connection (the tests' view of Redis),
    /// returning the raw reply bytes of one read.
    pub fn raw(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        if let Some(password) = &self.password {
            write!(stream, "AUTH {password}\r\n").unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
        }
        write!(stream, "{command}\r\n").unwrap();
        let mut buf = vec![0; 64 << 10];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""]);
        match &self.aof_dir {
            Some(dir) => command.args(["--appendonly", "yes", "--appendfsync", "always", "--dir", dir]),
            None => command.args(["--appendonly", "no"]),
        };
        command.args(["--protected-mode", "no", "--loglevel", "warning"]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if let Some((port, cert, key)) = &self.tls {
            let port = port.to_string();
            command.args(["--tls-port", &port, "--tls-cert-file", cert, "--tls-key-file", key]);
            command.args(["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: the test command (scripts/test.sh) installs it via scripts/redis.sh");
        CHILDREN.lock().unwrap().push(child.id());
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let up = wait_until(REDIS_START, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0; 64];
                s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
            })
        });
        assert!(up, "redis-server did not answer on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on now (the kernel's pick for port 0; another process could
/// take it before redis-server binds it, which would fail the start loudly).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}
