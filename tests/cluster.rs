//! Nodes joined by a real Redis (`--redis`): the links, their outages and recovery,
//! secrets, and (later sections) rooms, DMs, presence and history across nodes.
//!
//! Every Redis here is a real `redis-server` on a free loopback port
//! (`common::redis`), every node the real binary; both are stopped by PID.

mod common;

use std::time::Duration;

use common::json::JsonClient;
use common::redis::Redis;
use common::{watchdog, Server, TEST_LIMIT};

/// How long a node may take to notice Redis come or go (backoff capped at 500ms here).
const NOTICE: Duration = Duration::from_secs(10);

/// A node of the cluster on `redis`, logging at `filter`.
fn node(redis: &Redis, filter: &str, extra: &[&str]) -> Server {
    let url = redis.url(0);
    let mut args = vec!["--redis", url.as_str(), "--redis-backoff-max", "500ms"];
    args.extend_from_slice(extra);
    let server = Server::start_logging(filter, &args);
    assert!(server.wait_for_log("ready (both links up", NOTICE), "the node never got ready:\n{}", server.log_text());
    server
}

/// `/healthz` on the admin port: the status and the body.
fn health(server: &Server) -> (u16, String) {
    let (status, response) = server.admin_get("/healthz");
    (status, response.split_once("\r\n\r\n").map_or(response.clone(), |(_, body)| body.to_owned()))
}

fn lines_with(server: &Server, needle: &str) -> usize {
    server.log_text().lines().filter(|line| line.contains(needle)).count()
}

// ----- the links -----------------------------------------------------------------------

#[test]
fn healthz_says_degraded_while_redis_is_away_and_the_node_recovers_by_itself() {
    let _dog = watchdog(TEST_LIMIT);
    let mut redis = Redis::start();
    let server = node(&redis, "pollcast=info", &[]);
    assert_eq!(health(&server), (200, "ok\n".to_owned()));
    assert_eq!(server.http_get("/healthz").0, 200);
    let mut client = JsonClient::join(&server, "lobby", "ann");

    redis.kill();
    let degraded = common::wait_until(NOTICE, || server.admin_get("/healthz").0 == 503);
    assert!(degraded, "healthz never said degraded:\n{}", server.log_text());
    let (status, body) = health(&server);
    assert!(status == 503 && body.starts_with("degraded: redis"), "{status} {body}");
    assert_eq!(server.http_get("/healthz").0, 503, "the public port's healthz too");
    // Several reconnect attempts fail meanwhile (100ms, 200ms, 400ms, 500ms...), and
    // the outage is logged once per link, not once per attempt.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lines_with(&server, "link down"), 2, "{}", server.log_text());
    // Clients already connected stay connected and are answered.
    assert_eq!(client.who("lobby"), vec!["ann"]);

    redis.restart();
    let healthy = common::wait_until(NOTICE, || server.admin_get("/healthz").0 == 200);
    assert!(healthy, "the node did not recover:\n{}", server.log_text());
    assert_eq!(lines_with(&server, "ready (both links up"), 2);
    assert_eq!(client.who("lobby"), vec!["ann"]);
}

#[test]
fn the_password_never_reaches_a_log_line() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start_with_password(Some("hunter2-sekrit"));
    let server = node(&redis, "pollcast=trace", &[]);
    assert_eq!(server.admin_get("/healthz").0, 200);
    let log = server.log_text();
    assert!(log.contains(":***@127.0.0.1"), "the URL is logged, redacted:\n{log}");
    assert!(!log.contains("hunter2-sekrit"));

    // A wrong password: Redis refuses the handshake, the node says why (Redis's own
    // words), is degraded, and keeps trying; still no password anywhere.
    let wrong = format!("redis://:wrong-pass-42@127.0.0.1:{}/0", redis.port);
    let server = Server::start_logging("pollcast=debug", &["--redis", &wrong, "--redis-backoff-max", "200ms"]);
    assert!(server.wait_for_log("link down", NOTICE), "{}", server.log_text());
    std::thread::sleep(Duration::from_millis(600)); // more attempts
    let log = server.log_text();
    assert!(log.contains("WRONGPASS") || log.contains("invalid password"), "{log}");
    assert!(!log.contains("wrong-pass-42"), "{log}");
    assert_eq!(server.admin_get("/healthz").0, 503);
}

#[test]
fn a_bad_url_is_refused_at_start_without_the_password() {
    let _dog = watchdog(TEST_LIMIT);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pollcast"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off", "--no-history"])
        .args(["--redis", "redis://:topsecret99@127.0.0.1:notaport/0"])
        .output()
        .expect("run pollcast");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--redis") && !stderr.contains("topsecret99"), "{stderr}");
}

#[test]
fn without_redis_nothing_changes() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start_logging("pollcast=debug", &[]);
    let mut ann = JsonClient::join(&server, "lobby", "ann");
    let mut bob = JsonClient::join(&server, "lobby", "bob");
    ann.say("lobby", "hello", 1);
    let (message, _) = bob.wait_for(|v| v["type"] == "message");
    assert_eq!(message["text"], "hello");
    assert_eq!(health(&server), (200, "ok\n".to_owned()));
    assert!(!server.log_text().contains("redis"), "{}", server.log_text());
}
