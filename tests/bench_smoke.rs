//! `pollcast bench` against the real server binary: each scenario once, tiny and short,
//! over `ws://` and (with a self-signed certificate made here) over `wss://`.
//!
//! Correctness only (the JSON parses, nothing is lost, something was delivered), never a
//! timing assertion: these are smoke tests, not benchmarks. Every child process is
//! killed by its PID when a test ends, and a watchdog bounds each test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};
use serde_json::Value;

/// The longest one bench run may take before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The server binary, started on a free port and killed (by PID) when dropped.
struct Server {
    child: Child, // the server process
    port: u16,    // the port it reported
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// The server with extra arguments (`--tls-cert ... --tls-key ...`).
    fn start_with(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pollcast"))
            // No history: the relay path alone, and no database file left behind.
            .args(["--listen", "127.0.0.1:0", "--no-history", "--admin-listen", "off"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads the log for the port, then keeps draining it so the server never
        // blocks on a full pipe.
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = listening_port(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not report its port");
            }
        };
        Server { child, port }
    }

    fn url(&self, room: &str) -> String {
        format!("ws://127.0.0.1:{}/{room}", self.port)
    }

    fn wss_url(&self, room: &str) -> String {
        format!("wss://127.0.0.1:{}/{room}", self.port)
    }
}

/// A directory of its own under the system's temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("pollcast-bench-smoke-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("make a temp dir");
        TempDir(path)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on `wss://` with a self-signed certificate for 127.0.0.1 made by rcgen (kept
/// in `dir` as `cert.pem` and `key.pem`, so a test can also trust it with --ca-file).
fn tls_server(dir: &TempDir) -> Server {
    let key = KeyPair::generate().expect("a key pair");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("certificate params");
    let cert = params.self_signed(&key).expect("a self-signed certificate");
    let (cert_path, key_path) = (dir.file("cert.pem"), dir.file("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Server::start_with(&["--tls-cert", &cert_path, "--tls-key", &key_path])
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill(); // by PID: this child only
        let _ = self.child.wait();
    }
}

/// The port of `pollcast listening on ws://127.0.0.1:PORT/` (or `wss://`).
fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("pollcast listening on ").nth(1)?;
    let rest = rest.strip_prefix("ws://").or_else(|| rest.strip_prefix("wss://"))?;
    let host_port = rest.split('/').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// What a bench run left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `pollcast bench ARGS...`, killing it if it outlives `RUN_LIMIT`.
fn bench(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pollcast"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pollcast bench");
    let pid = child.id();
    let deadline = Instant::now() + RUN_LIMIT;
    // The watchdog: the outputs are small, so polling for the exit cannot deadlock on
    // a full pipe (each stays far below the pipe's 64 KiB).
    loop {
        match child.try_wait().expect("wait for pollcast bench") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pollcast bench (pid {pid}) {args:?} ran past {RUN_LIMIT:?}");
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
    let output = child.wait_with_output().expect("collect the output");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a scenario with `--json`, checks it succeeded, and parses its one line.
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let run = bench(&all);
    assert!(run.status.success(), "{args:?} failed: {}\n{}", run.status, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line, got: {}", run.stdout);
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

fn number(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("{field} is not a count in {report}"))
}

#[test]
fn fanout_delivers_everything() {
    let server = Server::start();
    let url = server.url("smoke-fanout");
    let pid = server.child.id().to_string();
    let args = [
        "fanout",
        "--url",
        &url,
        "--receivers",
        "5",
        "--senders",
        "1",
        "--rate",
        "200",
        "--duration",
        "1",
        "--server-pid",
        &pid,
    ];
    let report = bench_json(&args);
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(number(&report, "deliveries_per_message"), 5);
    assert!(number(&report, "sent") > 0);
    assert!(number(&report, "deliveries") > 0);
    assert_eq!(number(&report, "deliveries"), 5 * number(&report, "sent"), "{report}");
    assert_eq!(number(&report, "lost"), 0, "{report}");
    assert_eq!(number(&report, "duplicated"), 0, "{report}");
    assert_eq!(number(&report, "out_of_order"), 0, "{report}");
    assert!(report["latency_us"]["count"].as_u64().unwrap() > 0);
    assert!(report["server_cpu_ns_per_delivery"].is_number(), "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn fanout_closed_loop_with_several_senders() {
    let server = Server::start();
    let url = server.url("smoke-max");
    let args = [
        "fanout",
        "--url",
        &url,
        "--receivers",
        "3",
        "--senders",
        "2",
        "--rate",
        "max",
        "--window",
        "8",
        "--duration",
        "0.5",
        "--encoding",
        "text",
        "--size",
        "100",
    ];
    let report = bench_json(&args);
    assert_eq!(number(&report, "deliveries_per_message"), 4);
    assert!(number(&report, "deliveries") > 0);
    assert_eq!(number(&report, "lost"), 0, "{report}");
    assert_eq!(report["server_cpu_ns_per_delivery"], Value::Null);
}

/// `--busy-poll`: the bench never waits in its poll, so even a slow paced run keeps its
/// core busy (a paced run that sleeps uses about 1% of one), and still loses nothing.
#[test]
fn fanout_with_busy_poll_never_sleeps() {
    let server = Server::start();
    let url = server.url("smoke-busy");
    let args = ["fanout", "--url", &url, "--receivers", "3", "--rate", "100", "--duration", "0.5", "--busy-poll"];
    let report = bench_json(&args);
    assert_eq!(report["params"]["busy_poll"], true, "the report says how it was measured");
    assert!(number(&report, "deliveries") > 0, "{report}");
    assert_eq!(number(&report, "deliveries"), 3 * number(&report, "sent"), "{report}");
    assert_eq!(number(&report, "lost"), 0, "{report}");
    // A floor well under one core: the tests share this machine's cores.
    let share = report["bench_cpu_share"].as_f64().unwrap();
    assert!(share > 0.1, "a busy-polling bench used {share} of a core: {report}");
}

/// A short paced fanout of 300-byte messages to 3 receivers, offering permessage-deflate.
fn deflate_fanout(url: &str) -> Vec<&str> {
    let mut args = vec!["fanout", "--url", url, "--receivers", "3", "--rate", "200", "--duration", "0.5"];
    args.extend(["--size", "300", "--deflate"]);
    args
}

/// `--deflate` against a server that does not speak permessage-deflate (`--deflate off`):
/// the offer is declined, frames stay plain, and everything is delivered as before.
#[test]
fn fanout_with_deflate_offered_but_declined() {
    let server = Server::start_with(&["--deflate", "off"]);
    let report = bench_json(&deflate_fanout(&server.url("smoke-deflate")));
    assert!(number(&report, "deliveries") > 0);
    assert_eq!(number(&report, "deliveries"), 3 * number(&report, "sent"), "{report}");
    assert_eq!(number(&report, "lost"), 0, "{report}");
    assert_eq!(report["params"]["deflate"], true);
    assert!(report["wire_bytes_per_delivery"].as_f64().unwrap() > 300.0, "plain frames: {report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

/// `--deflate` against the server's default (`--deflate on`): accepted, and the 300-byte
/// messages arrive compressed, every one of them.
#[test]
fn fanout_with_deflate_accepted() {
    let server = Server::start();
    let report = bench_json(&deflate_fanout(&server.url("smoke-deflate-on")));
    assert!(number(&report, "deliveries") > 0);
    assert_eq!(number(&report, "deliveries"), 3 * number(&report, "sent"), "{report}");
    assert_eq!(number(&report, "lost"), 0, "{report}");
    assert!(report["wire_bytes_per_delivery"].as_f64().unwrap() < 300.0, "compressed frames: {report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn idle_holds_every_connection() {
    let server = Server::start();
    let url = server.url("smoke-idle");
    let pid = server.child.id().to_string();
    let report = bench_json(&["idle", "--url", &url, "--connections", "50", "--hold", "1", "--server-pid", &pid]);
    assert_eq!(report["scenario"], "idle");
    assert_eq!(number(&report, "connected"), 50, "{report}");
    assert_eq!(number(&report, "held"), 50, "{report}");
    assert!(report["server_rss_after"]["rss_kib"].as_u64().unwrap() > 0);
}

#[test]
fn churn_completes_handshakes() {
    let server = Server::start();
    let url = server.url("smoke-churn");
    let report = bench_json(&["churn", "--url", &url, "--concurrency", "4", "--duration", "1"]);
    assert_eq!(report["scenario"], "churn");
    assert!(number(&report, "handshakes") > 0, "{report}");
    assert!(number(&report, "clean_closes") > 0, "{report}");
}

#[test]
fn fanout_over_wss() {
    let dir = TempDir::new("wss-fanout");
    let server = tls_server(&dir);
    let url = server.wss_url("x");
    let pid = server.child.id().to_string();
    let args = ["fanout", "--url", &url, "--insecure", "--duration", "1", "--receivers", "5", "--server-pid", &pid];
    let report = bench_json(&args);
    assert_eq!(report["url"], url.as_str());
    assert_eq!(number(&report, "deliveries_per_message"), 5);
    assert!(number(&report, "deliveries") > 0, "{report}");
    assert_eq!(number(&report, "deliveries"), 5 * number(&report, "sent"), "{report}");
    assert_eq!(number(&report, "lost"), 0, "{report}");
    assert_eq!(number(&report, "out_of_order"), 0, "{report}");
    assert!(report["server_cpu_ns_per_delivery"].is_number(), "{report}");
    // What the socket delivered: ciphertext, so each 64 B message costs more than its frame.
    assert!(report["wire_bytes_per_delivery"].as_f64().unwrap() > 64.0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn churn_over_wss() {
    let dir = TempDir::new("wss-churn");
    let server = tls_server(&dir);
    let url = server.wss_url("x");
    let report = bench_json(&["churn", "--url", &url, "--insecure", "--concurrency", "4", "--duration", "1"]);
    assert!(number(&report, "handshakes") > 0, "{report}");
    assert!(number(&report, "clean_closes") > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

/// A self-signed server is refused unless the bench is told to trust it: the message
/// names both ways to do so, and --ca-file with the very certificate works.
#[test]
fn wss_with_an_untrusted_certificate_is_refused() {
    let dir = TempDir::new("wss-untrusted");
    let server = tls_server(&dir);
    let url = server.wss_url("x");
    for scenario in [
        vec!["fanout", "--url", &url, "--duration", "1", "--receivers", "2"],
        vec!["churn", "--url", &url, "--duration", "1"],
    ] {
        let run = bench(&scenario);
        assert_eq!(run.status.code(), Some(1), "{scenario:?}: {}", run.stderr);
        assert!(run.stderr.contains("tls_cert_"), "{scenario:?}: {}", run.stderr);
        assert!(run.stderr.contains("--insecure") && run.stderr.contains("--ca-file"), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    let cert = dir.file("cert.pem");
    let report = bench_json(&["fanout", "--url", &url, "--ca-file", &cert, "--duration", "0.5", "--receivers", "2"]);
    assert!(number(&report, "deliveries") > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port just freed by a listener we closed: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/nobody");
    for scenario in [
        vec!["fanout", "--url", &url, "--duration", "1", "--receivers", "2"],
        vec!["idle", "--url", &url, "--connections", "3", "--hold", "0"],
        vec!["churn", "--url", &url, "--duration", "1"],
    ] {
        let run = bench(&scenario);
        assert_eq!(run.status.code(), Some(1), "{scenario:?}: {}", run.stderr);
        assert!(run.stderr.contains("cannot connect"), "{scenario:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{scenario:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn bad_arguments_are_refused_before_connecting() {
    for (args, expected) in [
        (vec!["fanout", "--size", "3"], "--size"),
        (vec!["fanout", "--receivers", "0"], "--receivers"),
        (vec!["fanout", "--url", "ws://127.0.0.1/", "--insecure"], "wss://"),
        (vec!["fanout", "--url", "wss://127.0.0.1/", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (vec!["fanout", "--url", "wss://127.0.0.1/", "--ca-file", "x.pem", "--insecure"], "--insecure"),
        (vec!["fanout", "--url", "http://127.0.0.1/"], "scheme"),
        (vec!["fanout", "--duration", "0"], "--duration"),
        (vec!["idle", "--connections", "200000"], "--connections"),
        (vec!["churn", "--concurrency", "0"], "--concurrency"),
    ] {
        let run = bench(&args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
    let run = bench(&["fanout", "--rate", "fast"]);
    assert_eq!(run.status.code(), Some(2), "clap's own usage error: {}", run.stderr);
    assert!(run.stderr.contains("not a rate"), "{}", run.stderr);
}

#[test]
fn port_is_parsed_from_the_log_line() {
    let line = "[2026-01-01T00:00:00Z INFO  pollcast] pollcast listening on ws://127.0.0.1:41234/";
    assert_eq!(listening_port(line), Some(41234));
    assert_eq!(listening_port(&line.replace("ws://", "wss://")), Some(41234));
    assert_eq!(listening_port("something else"), None);
}
