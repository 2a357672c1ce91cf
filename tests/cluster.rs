//! Nodes joined by a real Redis (`--redis`): the links, their outages and recovery,
//! secrets, and (later sections) rooms, DMs, presence and history across nodes.
//!
//! Every Redis here is a real `redis-server` on a free loopback port
//! (`common::redis`), every node the real binary; both are stopped by PID.

mod common;

use std::time::Duration;

use common::json::{JsonClient, TextClient};
use common::redis::Redis;
use common::{watchdog, Server, TEST_LIMIT};
use serde_json::json;

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

/// Waits until `n` nodes subscribe to `channel` (subscribing is asynchronous: a node
/// hears a room from the moment Redis confirms it, not from the join).
fn subscribers(redis: &Redis, channel: &str, n: usize) {
    let wanted = format!("${}\r\n{channel}\r\n:{n}\r\n", channel.len());
    let done = common::wait_until(NOTICE, || redis.raw(&format!("PUBSUB NUMSUB {channel}")).contains(&wanted));
    assert!(done, "{channel} never had {n} subscriber(s): {:?}", redis.raw(&format!("PUBSUB NUMSUB {channel}")));
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
    assert_eq!(server.metric("redis_up"), 1);
    let mut client = JsonClient::join(&server, "lobby", "ann");

    redis.kill();
    let degraded = common::wait_until(NOTICE, || server.admin_get("/healthz").0 == 503);
    assert!(degraded, "healthz never said degraded:\n{}", server.log_text());
    let (status, body) = health(&server);
    assert!(status == 503 && body.starts_with("degraded: redis"), "{status} {body}");
    assert_eq!(server.http_get("/healthz").0, 503, "the public port's healthz too");
    assert_eq!(server.metric("redis_up"), 0);
    assert_eq!(server.metric("redis_outages_total"), 2, "one per link");
    // Several reconnect attempts fail meanwhile (100ms, 200ms, 400ms, 500ms...), and
    // the outage is logged once per link, not once per attempt.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lines_with(&server, "link down"), 2, "{}", server.log_text());
    // Clients already connected stay connected and are answered.
    assert_eq!(client.who("lobby"), vec!["ann"]);

    redis.restart();
    let healthy = common::wait_until(NOTICE, || server.admin_get("/healthz").0 == 200);
    assert!(healthy, "the node did not recover:\n{}", server.log_text());
    // (The log is read by another thread: wait for the line rather than race it.)
    let logged = common::wait_until(NOTICE, || lines_with(&server, "ready (both links up") == 2);
    assert!(logged, "ready once at start, once after the outage:\n{}", server.log_text());
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
    let (_, metrics) = server.admin_get("/metrics");
    assert!(!metrics.contains("redis"), "no redis_* series on a single node");
}

// ----- rooms and direct messages across nodes -----------------------------------------

#[test]
fn a_room_spread_over_two_nodes_gets_every_message_once_and_in_order() {
    room_spread_over_two_nodes(false);
}

#[test]
fn with_history_in_redis_too_every_message_arrives_once_and_in_order() {
    room_spread_over_two_nodes(true);
}

/// Two JSON members and one raw member on two nodes, two senders (one on each node,
/// one of them raw): everyone hears both, in each sender's order, once. `history`: the
/// nodes keep history in Redis, so every message goes through the store script first.
fn room_spread_over_two_nodes(history: bool) {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, history);
    let mut ann = JsonClient::join(&a, "lobby", "ann"); // on A
    let mut bob = JsonClient::join(&b, "lobby", "bob"); // on B
    let mut carl = TextClient::open(&b, "/lobby?name=carl"); // raw, on B
    let mut dave = JsonClient::join(&a, "lobby", "dave"); // on A, beside the sender
    subscribers(&redis, "pollcast:room:lobby", 2);

    const N: usize = 200;
    for i in 0..N {
        ann.say("lobby", &format!("a{i}"), i);
        if i % 2 == 0 {
            carl.type_line(&format!("c{i}"));
        }
    }
    // What a JSON member heard, by sender: every message from ann and from carl.
    let texts = |client: &mut JsonClient| {
        let (mut ann, mut carl) = (Vec::new(), Vec::new());
        while ann.len() < N || carl.len() < N / 2 {
            let envelope = client.recv();
            let text = envelope["text"].as_str().unwrap_or_default().to_owned();
            match (envelope["type"].as_str(), envelope["from"].as_str()) {
                (Some("message"), Some("ann")) => ann.push(text),
                (Some("message"), Some("carl")) => carl.push(text),
                _ => {}
            }
        }
        (ann, carl)
    };
    let from_ann: Vec<String> = (0..N).map(|i| format!("a{i}")).collect();
    let from_carl: Vec<String> = (0..N).step_by(2).map(|i| format!("c{i}")).collect();
    let both = (from_ann.clone(), from_carl.clone());
    assert_eq!(texts(&mut bob), both, "bob (B) hears ann (A) and carl (B), each in order");
    assert_eq!(texts(&mut dave), both, "dave (A) likewise");
    assert_eq!(texts(&mut ann), both, "ann (A) hears her own copies and carl (B)");
    let mut heard = Vec::new();
    while heard.len() < N {
        let line = carl.recv();
        if line.starts_with('a') {
            heard.push(line);
        }
    }
    assert_eq!(heard, from_ann, "carl (raw, B) hears ann's text verbatim, in order");
    // Exactly once: nothing more is waiting for anyone (barriers, not sleeps).
    for client in [&mut bob, &mut dave, &mut ann] {
        let extra: Vec<_> = client.sync().into_iter().filter(|e| e["type"] == "message").collect();
        assert!(extra.is_empty(), "duplicates: {extra:?}");
    }
    assert!(b.metric("redis_received_total") > 0 && b.metric("redis_sent_total") > 0);
    let rest: Vec<String> = carl.sync().into_iter().filter(|l| l.starts_with('a')).collect();
    assert!(rest.is_empty(), "duplicates: {rest:?}");
}

#[test]
fn presence_crosses_nodes_and_the_last_local_member_unsubscribes() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = (node(&redis, "pollcast=info", &[]), node(&redis, "pollcast=info", &[]));
    let mut ann = JsonClient::join(&a, "tea", "ann");
    subscribers(&redis, "pollcast:room:tea", 1);
    let bob = JsonClient::join(&b, "tea", "bob");
    let (joined, _) = ann.wait_for(|e| e["type"] == "presence");
    assert_eq!((joined["user"].as_str(), joined["event"].as_str()), (Some("bob"), Some("join")), "{joined}");
    subscribers(&redis, "pollcast:room:tea", 2);
    bob.close();
    let (left, _) = ann.wait_for(|e| e["type"] == "presence");
    assert_eq!((left["user"].as_str(), left["event"].as_str()), (Some("bob"), Some("leave")), "{left}");
    subscribers(&redis, "pollcast:room:tea", 1); // B has nobody in tea any more
}

#[test]
fn a_direct_message_crosses_nodes() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = (node(&redis, "pollcast=info", &[]), node(&redis, "pollcast=info", &[]));
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    let mut bob = JsonClient::join(&b, "other", "bob");
    let mut carl = TextClient::open(&b, "/other?name=carl");
    subscribers(&redis, "pollcast:user:bob", 1);
    subscribers(&redis, "pollcast:user:carl", 1);

    ann.send(json!({"type": "dm", "to": "bob", "text": "psst", "cid": 7}));
    let (dm, _) = bob.wait_for(|e| e["type"] == "dm");
    assert_eq!((dm["from"].as_str(), dm["text"].as_str()), (Some("ann"), Some("psst")), "{dm}");
    let (copy, _) = ann.wait_for(|e| e["type"] == "dm");
    assert_eq!((copy["to"].as_str(), copy["id"].as_u64()), (Some("bob"), dm["id"].as_u64()), "{copy}");
    let (ack, _) = ann.wait_for(|e| e["type"] == "ack");
    assert_eq!((ack["cid"].as_u64(), ack["id"].as_u64()), (Some(7), dm["id"].as_u64()), "{ack}");

    ann.send(json!({"type": "dm", "to": "carl", "text": "hi carl"}));
    assert_eq!(carl.recv(), "dm ann hi carl");

    ann.send(json!({"type": "dm", "to": "nobody", "text": "hello?", "cid": 8}));
    let (error, _) = ann.wait_for(|e| e["type"] == "error");
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("no_such_user"), Some(8)), "{error}");
    assert!(bob.sync().iter().all(|e| e["type"] != "dm"), "bob got it once");
}

// ----- Redis away and back --------------------------------------------------------------

#[test]
fn while_redis_is_away_messages_are_refused_and_after_it_they_cross_again() {
    let _dog = watchdog(TEST_LIMIT);
    let mut redis = Redis::start();
    let (a, b) = (node(&redis, "pollcast=info", &[]), node(&redis, "pollcast=info", &[]));
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    let mut dave = JsonClient::join(&a, "lobby", "dave");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    let mut carl = TextClient::open(&a, "/lobby?name=carl");
    subscribers(&redis, "pollcast:room:lobby", 2);

    redis.kill();
    assert!(common::wait_until(NOTICE, || health(&a).0 == 503));
    ann.say("lobby", "lost?", "c1");
    let (error, _) = ann.wait_for(|e| e["type"] == "error");
    assert_eq!((error["code"].as_str(), error["ref"].as_str()), (Some("unavailable"), Some("c1")), "{error}");
    carl.type_line("me too?");
    assert!(carl.recv().starts_with("err unavailable "), "raw clients are told too");
    ann.send(json!({"type": "dm", "to": "dave", "text": "local dm?", "cid": "c2"}));
    let (error, _) = ann.wait_for(|e| e["type"] == "error");
    assert_eq!(error["code"], "unavailable", "{error}");
    let (status, _) = a.admin_request("POST", "/api/publish", "", r#"{"room":"lobby","text":"ops"}"#);
    assert_eq!(status, 503, "the admin API refuses too");
    // Nobody received any of it, and the clients are all still here, answered.
    assert!(dave.sync().iter().all(|e| e["type"] != "message" && e["type"] != "dm"));
    assert_eq!(dave.who("lobby"), vec!["ann", "carl", "dave"]);

    redis.restart();
    assert!(common::wait_until(NOTICE, || health(&a).0 == 200 && health(&b).0 == 200));
    subscribers(&redis, "pollcast:room:lobby", 2); // both nodes subscribed again by themselves
    ann.say("lobby", "back", "c3");
    let (message, _) = bob.wait_for(|e| e["type"] == "message");
    assert_eq!((message["from"].as_str(), message["text"].as_str()), (Some("ann"), Some("back")), "{message}");
    let (ack, _) = ann.wait_for(|e| e["type"] == "ack");
    assert_eq!(ack["cid"], "c3");
}

// ----- history in Redis streams ---------------------------------------------------------

/// A node keeping history in Redis (`--db` is not used with `--redis`; the harness
/// would otherwise turn history off).
fn history_node(redis: &Redis, extra: &[&str]) -> Server {
    let mut args = vec!["--db", "unused-with-redis.db"];
    args.extend_from_slice(extra);
    node(redis, "pollcast=info", &args)
}

/// Two nodes on `redis`: keeping history in Redis, or none.
fn two_nodes(redis: &Redis, history: bool) -> (Server, Server) {
    let start = || if history { history_node(redis, &[]) } else { node(redis, "pollcast=info", &[]) };
    (start(), start())
}

/// Sends `text` to `room` and returns the id its ack carries (the sender's own copy
/// comes first, with the same id).
fn say_acked(client: &mut JsonClient, room: &str, text: &str) -> u64 {
    let cid = format!("{text}-cid");
    client.say(room, text, cid.as_str());
    let (copy, _) = client.wait_for(|e| e["type"] == "message" && e["text"] == text);
    let (ack, skipped) = client.wait_for(|e| e["type"] == "ack" && e["cid"] == cid.as_str());
    assert!(skipped.iter().all(|e| e["text"] != text), "one copy");
    assert_eq!(copy["id"], ack["id"], "the copy and the ack name the same id");
    ack["id"].as_u64().expect("ack id")
}

fn page_ids(history: &serde_json::Value) -> Vec<u64> {
    history["messages"].as_array().expect("messages").iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

#[test]
fn ids_increase_across_nodes_and_a_page_reads_from_the_node_that_did_not_store_it() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.expect("history");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    bob.expect("history");
    subscribers(&redis, "pollcast:room:lobby", 2);

    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(say_acked(&mut ann, "lobby", &format!("from-a-{i}")));
        ids.push(say_acked(&mut bob, "lobby", &format!("from-b-{i}")));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase across the cluster: {ids:?}");
    assert!(redis.raw("XLEN pollcast:history:lobby").starts_with(":20"), "every message is in the stream");

    // A newcomer on B gets the last 5 of them, whichever node stored them.
    let mut cy = JsonClient::open(&b, "/lobby?name=cy&history=5");
    cy.expect_welcome("lobby");
    cy.expect("joined");
    let (history, _) = cy.wait_for(|e| e["type"] == "history");
    assert_eq!(page_ids(&history), ids[15..].to_vec(), "{history}");
    assert_eq!(history["more"], true);
    // Paging back, read on B: the 5 before those.
    cy.send(json!({"type": "history", "room": "lobby", "before": ids[15], "limit": 5}));
    let (older, _) = cy.wait_for(|e| e["type"] == "history");
    assert_eq!(page_ids(&older), ids[10..15].to_vec(), "{older}");
    let texts: Vec<&str> = older["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["from-a-5", "from-b-5", "from-a-6", "from-b-6", "from-a-7"]);
}

#[test]
fn since_recovers_after_moving_to_another_node() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut ann = JsonClient::join(&a, "tea", "ann");
    ann.expect("history");
    let mut bob = JsonClient::join(&b, "tea", "bob");
    bob.expect("history");
    subscribers(&redis, "pollcast:room:tea", 2);
    let seen = say_acked(&mut bob, "tea", "before");
    let (message, _) = ann.wait_for(|e| e["type"] == "message");
    assert_eq!(message["id"].as_u64(), Some(seen));
    ann.close(); // ann's node goes away for her; she comes back through B

    let missed: Vec<u64> = (0..4).map(|i| say_acked(&mut bob, "tea", &format!("missed-{i}"))).collect();
    let mut back = JsonClient::open(&b, "/lobby?name=ann");
    back.expect_welcome("lobby");
    back.send(json!({"type": "join", "room": "tea", "since": seen}));
    let (history, _) = back.wait_for(|e| e["type"] == "history" && e["room"] == "tea");
    assert_eq!(page_ids(&history), missed, "{history}");
    assert_eq!(history["recovered"], true, "{history}");
}

#[test]
fn a_direct_message_is_stored_and_acked_across_nodes() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    subscribers(&redis, "pollcast:user:bob", 1);
    ann.send(json!({"type": "dm", "to": "bob", "text": "kept", "cid": 1}));
    let (dm, _) = bob.wait_for(|e| e["type"] == "dm");
    let (ack, _) = ann.wait_for(|e| e["type"] == "ack");
    assert_eq!((dm["text"].as_str(), dm["id"].as_u64()), (Some("kept"), ack["id"].as_u64()), "{dm} {ack}");
    assert!(redis.raw("XLEN pollcast:history:@dm").starts_with(":1"));
}

// ----- crashes under load -----------------------------------------------------------------

/// What one JSON client saw until its connection ended or it saw `until`: the ids of
/// room messages, and (for a sender) the ids its acks named and the errors it got.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<u64>,  // ids of `message` envelopes, in arrival order
    acked: Vec<u64>,     // ids of `ack`s
    errors: Vec<String>, // codes of `error`s
    until_seen: bool,    // `until` arrived
}

fn watch_until(mut client: JsonClient, until: Option<&'static str>) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        while let Some(envelope) = client.try_recv() {
            match envelope["type"].as_str() {
                Some("message") => seen.messages.push(envelope["id"].as_u64().unwrap()),
                Some("ack") => seen.acked.push(envelope["id"].as_u64().unwrap()),
                Some("error") => seen.errors.push(envelope["code"].as_str().unwrap_or("").to_owned()),
                _ => {}
            }
            if until.is_some() && envelope["text"].as_str() == until {
                seen.until_seen = true;
                break;
            }
        }
        seen
    })
}

/// Sends `n` messages as fast as the socket takes them (stopping if the node is gone),
/// then watches like `watch_until` for their acks.
fn burst(
    mut client: JsonClient,
    room: &'static str,
    label: &'static str,
    n: usize,
) -> std::thread::JoinHandle<(Seen, JsonClient)> {
    std::thread::spawn(move || {
        for i in 0..n {
            let envelope = json!({"type": "send", "room": room, "text": format!("{label}-{i}"), "cid": i});
            if client.ws.send(tungstenite::Message::text(envelope.to_string())).is_err() {
                break; // the node is gone
            }
        }
        let mut seen = Seen::default();
        while let Some(envelope) = client.try_recv() {
            match envelope["type"].as_str() {
                Some("message") => seen.messages.push(envelope["id"].as_u64().unwrap()),
                Some("ack") => seen.acked.push(envelope["id"].as_u64().unwrap()),
                Some("error") => seen.errors.push(envelope["code"].as_str().unwrap_or("").to_owned()),
                _ => {}
            }
            if seen.acked.len() + seen.errors.len() == n {
                break;
            }
        }
        (seen, client)
    })
}

/// Every id the room's stream holds, read through a fresh client on `server` (`since 0`).
fn stored_ids(server: &Server, room: &str) -> Vec<u64> {
    let mut reader = JsonClient::open(server, "/lobby?name=auditor");
    reader.expect_welcome("lobby");
    reader.send(json!({"type": "join", "room": room, "since": 0}));
    let (history, _) = reader.wait_for(|e| e["type"] == "history" && e["room"] == room);
    assert_eq!(history["recovered"], true, "the audit read everything: {}", history["more"]);
    page_ids(&history)
}

/// XLEN of a room's stream.
fn stream_len(redis: &Redis, room: &str) -> usize {
    let reply = redis.raw(&format!("XLEN pollcast:history:{room}"));
    reply.trim_start_matches(':').trim().parse().unwrap_or(0)
}

fn is_subset(part: &[u64], whole: &[u64]) -> Vec<u64> {
    part.iter().copied().filter(|id| !whole.contains(id)).collect()
}

#[test]
fn a_node_killed_under_load_loses_nothing_anyone_saw_or_was_acked() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let extra = ["--history-max", "10000", "--history-keep", "100000"];
    let (a, b) = (history_node(&redis, &extra), history_node(&redis, &extra));
    let join = |server: &Server, name: &str| {
        let mut client = JsonClient::open(server, &format!("/load?name={name}&history=0"));
        client.expect_welcome("load");
        client.expect("joined");
        client
    };
    let (s1, o1) = (join(&a, "s1"), join(&a, "o1")); // on the node that dies
    let (s2, o2) = (join(&b, "s2"), join(&b, "o2"));
    subscribers(&redis, "pollcast:room:load", 2);

    const N: usize = 2000;
    let (o1, o2) = (watch_until(o1, None), watch_until(o2, Some("the-end")));
    let (sent1, sent2) = (burst(s1, "load", "a", N), burst(s2, "load", "b", N));
    // Kill A while the bursts are in flight: once some messages are stored, not all.
    let mut a = a;
    assert!(common::wait_until(NOTICE, || stream_len(&redis, "load") >= 200));
    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(NOTICE).is_some());
    let ((sent1, _), (sent2, mut s2)) = (sent1.join().unwrap(), sent2.join().unwrap());
    // After A's death, one last message from B: B's observer reads up to it, so it has
    // had everything published before (Redis keeps one publisher's order, and A
    // published nothing after it died).
    say_acked(&mut s2, "load", "the-end");
    let (seen1, seen2) = (o1.join().unwrap(), o2.join().unwrap());
    assert!(seen2.until_seen);

    let stored = stored_ids(&b, "load");
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert_eq!(sent2.acked.len(), N, "B's sender had every message acked: {:?}", sent2.errors);
    for (what, ids) in [("acked to A's sender", &sent1.acked), ("acked to B's sender", &sent2.acked)] {
        assert!(is_subset(ids, &stored).is_empty(), "{what} but not stored: {:?}", is_subset(ids, &stored));
    }
    for (what, ids) in [("seen on A", &seen1.messages), ("seen on B", &seen2.messages)] {
        assert!(is_subset(ids, &stored).is_empty(), "{what} but not stored: {:?}", is_subset(ids, &stored));
    }
    assert_eq!(seen2.messages, stored, "B's observer saw every stored message once, in order");
    eprintln!("A's sender: {} acked before the kill; {} stored in all", sent1.acked.len(), stored.len());
}

#[test]
fn redis_killed_and_restarted_mid_stream_answers_every_send_and_keeps_every_ack() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = common::json::TempDir::new("redis-aof");
    let mut redis = Redis::start_durable(&dir.file(""));
    let extra = ["--history-max", "10000", "--history-keep", "100000"];
    let (a, b) = (history_node(&redis, &extra), history_node(&redis, &extra));
    let join = |server: &Server, name: &str| {
        let mut client = JsonClient::open(server, &format!("/load?name={name}&history=0"));
        client.expect_welcome("load");
        client.expect("joined");
        client
    };
    let (s1, o2) = (join(&a, "s1"), join(&b, "o2"));
    subscribers(&redis, "pollcast:room:load", 2);

    const N: usize = 2000;
    let o2 = watch_until(o2, Some("after-restart"));
    let sent = burst(s1, "load", "a", N);
    // Mid-stream: once some of the burst is stored, not all of it.
    assert!(common::wait_until(NOTICE, || stream_len(&redis, "load") >= 100));
    redis.restart(); // kill -9, then the same port and the same append-only file
    let (sent, mut s1) = sent.join().unwrap();
    // Every send was answered exactly once: acked (stored), or refused while Redis was
    // away (unavailable), or not confirmed when it died (store_failed). None hangs.
    assert_eq!(sent.acked.len() + sent.errors.len(), N, "{:?}", sent.errors);
    assert!(sent.errors.iter().all(|code| code == "unavailable" || code == "store_failed"), "{:?}", sent.errors);

    assert!(common::wait_until(NOTICE, || health(&a).0 == 200 && health(&b).0 == 200));
    subscribers(&redis, "pollcast:room:load", 2);
    let last = say_acked(&mut s1, "load", "after-restart");
    let seen = o2.join().unwrap();
    assert!(seen.until_seen, "the room works across nodes again");

    let stored = stored_ids(&b, "load");
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "ids go on increasing after the restart");
    assert_eq!(stored.last(), Some(&last));
    let lost = is_subset(&sent.acked, &stored);
    assert!(lost.is_empty(), "acked but not stored: {lost:?}");
    let unstored = is_subset(&seen.messages, &stored);
    assert!(unstored.is_empty(), "seen on the other node but not stored: {unstored:?}");
    eprintln!("{} acked, {} refused, {} stored", sent.acked.len(), sent.errors.len(), stored.len());
}

// ----- names and heartbeats ---------------------------------------------------------------

/// Opens a JSON connection asking for `name` in `room`; returns it and the name the
/// welcome gave (before any correction from the cluster).
fn open_as(server: &Server, room: &str, name: &str) -> (JsonClient, String) {
    let mut client = JsonClient::open(server, &format!("/{room}?name={name}&history=0"));
    client.expect_welcome(room);
    let given = client.name.clone();
    (client, given)
}

#[test]
fn a_name_held_on_another_node_is_not_given_twice() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let a = node(&redis, "pollcast=info", &["--node-id", "node-a"]);
    let b = node(&redis, "pollcast=info", &["--node-id", "node-b"]);
    let mut bob = JsonClient::join(&a, "lobby", "bob");
    let held = || redis.raw("GET pollcast:name:bob").contains("node-a");
    assert!(common::wait_until(NOTICE, held), "A claimed bob: {}", redis.raw("GET pollcast:name:bob"));

    let (mut other, _) = open_as(&b, "lobby", "bob");
    let (error, _) = other.wait_for(|e| e["type"] == "error");
    assert_eq!(error["code"], "name_taken", "{error}");
    let (nick, _) = other.wait_for(|e| e["type"] == "nick");
    let renamed = nick["you"].as_str().expect("the new name").to_owned();
    assert!(renamed.starts_with("guest-"), "{nick}");
    let both = vec!["bob", renamed.as_str()];
    assert_eq!(other.who("lobby"), both, "one bob in the cluster, and the renamed user");
    assert!(redis.raw("GET pollcast:name:bob").contains("node-a"), "A still holds bob");
    assert!(common::wait_until(NOTICE, || bob.who("lobby") == both), "A sees the same");
}

#[test]
fn a_node_killed_with_9_drops_out_and_frees_its_names_within_its_ttl() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let mut a = node(&redis, "pollcast=info", &["--node-id", "node-a", "--node-ttl", "1s"]);
    let b = node(&redis, "pollcast=info", &["--node-id", "node-b", "--node-ttl", "1s"]);
    let _ann = JsonClient::join(&a, "lobby", "ann");
    assert!(common::wait_until(NOTICE, || redis.raw("GET pollcast:name:ann").contains("node-a")));

    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(NOTICE).is_some());
    // The heartbeat is the bound: it never has more than --node-ttl to live.
    let pttl: i64 = redis.raw("PTTL pollcast:node:node-a").trim_start_matches(':').trim().parse().unwrap();
    assert!((0..=1000).contains(&pttl), "node-a's heartbeat has {pttl} ms left");
    assert!(common::wait_until(NOTICE, || redis.raw("EXISTS pollcast:node:node-a").starts_with(":0")));

    // A is dead to the cluster: B's `who` no longer counts ann ...
    let mut carl = JsonClient::join(&b, "lobby", "carl");
    assert_eq!(carl.who("lobby"), vec!["carl"], "A's members went with its heartbeat");
    // ... and ann may have her name back, on B.
    let (mut back, given) = open_as(&b, "lobby", "ann");
    assert_eq!(given, "ann");
    back.expect("joined");
    assert!(common::wait_until(NOTICE, || redis.raw("GET pollcast:name:ann").contains("node-b")));
    assert!(back.sync().iter().all(|e| e["type"] != "error"), "no name_taken");
    assert_eq!(back.who("lobby"), vec!["ann", "carl"]);
}

#[test]
fn who_and_rooms_answer_for_the_whole_cluster() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = (node(&redis, "pollcast=info", &[]), node(&redis, "pollcast=info", &[]));
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.send(json!({"type": "join", "room": "tea"}));
    ann.expect("joined");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    let mut carl = TextClient::open(&b, "/lobby?name=carl");
    assert_eq!(bob.who("lobby"), vec!["ann", "bob", "carl"], "B's who counts A's members");
    assert_eq!(ann.who("tea"), vec!["ann"]);
    assert_eq!(carl.ask("/who lobby"), "who lobby ann bob carl", "raw clients too");
    bob.send(json!({"type": "rooms"}));
    let (rooms, _) = bob.wait_for(|e| e["type"] == "rooms");
    assert_eq!(rooms["rooms"], json!([{"room": "lobby", "members": 3}, {"room": "tea", "members": 1}]), "{rooms}");

    ann.close();
    let gone = || bob.who("lobby") == vec!["bob", "carl"];
    assert!(common::wait_until(NOTICE, gone), "ann left the cluster's lobby");
    bob.send(json!({"type": "rooms"}));
    let (rooms, _) = bob.wait_for(|e| e["type"] == "rooms");
    assert_eq!(rooms["rooms"], json!([{"room": "lobby", "members": 2}]), "{rooms}");
}

#[test]
fn while_redis_is_away_a_history_request_is_answered_unavailable() {
    let _dog = watchdog(TEST_LIMIT);
    let mut redis = Redis::start();
    let a = history_node(&redis, &[]);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.expect("history");
    redis.kill();
    assert!(common::wait_until(NOTICE, || health(&a).0 == 503));
    ann.send(json!({"type": "history", "room": "lobby", "ref": "h1"}));
    let (error, _) = ann.wait_for(|e| e["type"] == "error");
    assert_eq!(error["code"], "unavailable", "{error}");
}

// ----- rediss:// -------------------------------------------------------------------------

#[test]
fn rediss_speaks_tls_to_redis_with_a_password_and_a_room_crosses_nodes() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = common::json::TempDir::new("redis-tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.file("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.file("key.pem"), key.serialize_pem()).unwrap();
    let redis = Redis::start_tls(&dir.file("cert.pem"), &dir.file("key.pem"), Some("tls-secret-77"));
    let url = redis.tls_url(0);
    let ca = dir.file("cert.pem");
    let args = ["--redis", url.as_str(), "--redis-ca-file", ca.as_str(), "--db", "unused-with-redis.db"];
    let start = || {
        let server = Server::start_logging("pollcast=debug", &args);
        assert!(server.wait_for_log("ready (both links up", NOTICE), "{}", server.log_text());
        server
    };
    let (a, b) = (start(), start());
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.expect("history");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    bob.expect("history");
    subscribers(&redis, "pollcast:room:lobby", 2);
    let id = say_acked(&mut ann, "lobby", "over tls");
    let (message, _) = bob.wait_for(|e| e["type"] == "message");
    assert_eq!((message["text"].as_str(), message["id"].as_u64()), (Some("over tls"), Some(id)));
    for server in [&a, &b] {
        let log = server.log_text();
        assert!(log.contains("rediss://:***@127.0.0.1") && !log.contains("tls-secret-77"), "{log}");
    }

    // A certificate it does not trust: the link never comes up, and says why.
    let untrusted = Server::start_logging("pollcast=info", &["--redis", url.as_str(), "--no-history"]);
    assert!(untrusted.wait_for_log("link down", NOTICE), "{}", untrusted.log_text());
    assert!(untrusted.log_text().contains("TLS"), "{}", untrusted.log_text());
    assert_eq!(health(&untrusted).0, 503);
}

#[test]
fn the_admin_api_posts_into_the_cluster_and_answers_once_stored() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    bob.expect("history");
    subscribers(&redis, "pollcast:room:lobby", 1);
    subscribers(&redis, "pollcast:user:bob", 1);

    let (status, response) =
        a.admin_request("POST", "/api/publish", "", r#"{"room":"lobby","text":"maintenance","from":"ops"}"#);
    assert_eq!(status, 200, "{response}");
    let body: serde_json::Value = serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
    let (message, _) = bob.wait_for(|e| e["type"] == "message");
    assert_eq!((message["from"].as_str(), message["id"].as_u64()), (Some("ops"), body["id"].as_u64()), "{message}");
    assert!(redis.raw("XLEN pollcast:history:lobby").starts_with(":1"), "stored before the answer");

    let (status, _) = a.admin_request("POST", "/api/dm", "", r#"{"to":"bob","text":"psst"}"#);
    assert_eq!(status, 200);
    let (dm, _) = bob.wait_for(|e| e["type"] == "dm");
    assert_eq!(dm["text"], "psst");
    let (status, _) = a.admin_request("POST", "/api/dm", "", r#"{"to":"nobody","text":"hello?"}"#);
    assert_eq!(status, 404);
}

#[test]
fn a_room_s_first_member_on_a_node_joining_mid_stream_gets_every_message_once() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let extra = ["--history-max", "10000", "--history-keep", "100000"];
    let (a, b) = (history_node(&redis, &extra), history_node(&redis, &extra));
    let mut sender = JsonClient::open(&a, "/load?name=s&history=0");
    sender.expect_welcome("load");
    sender.expect("joined");
    subscribers(&redis, "pollcast:room:load", 1);

    const N: usize = 2000;
    let sent = burst(sender, "load", "m", N);
    assert!(common::wait_until(NOTICE, || stream_len(&redis, "load") >= 200));
    // B has no member in the room: this join makes B subscribe, mid-stream.
    let mut late = JsonClient::open(&b, "/lobby?name=late&history=0");
    late.expect_welcome("lobby");
    late.send(json!({"type": "join", "room": "load", "history": 10000}));
    let (_, mut sender) = sent.join().unwrap();
    let end = say_acked(&mut sender, "load", "the-end");

    let (mut page, mut live) = (Vec::new(), Vec::new());
    loop {
        let envelope = late.recv();
        match envelope["type"].as_str() {
            Some("history") if envelope["room"] == "load" => page = page_ids(&envelope),
            Some("message") => live.push(envelope["id"].as_u64().unwrap()),
            _ => {}
        }
        if live.last() == Some(&end) && !page.is_empty() {
            break;
        }
    }
    let mut all: Vec<u64> = page.iter().chain(&live).copied().collect();
    all.sort_unstable();
    let len = all.len();
    all.dedup();
    assert_eq!(all.len(), len, "a message came twice (page and live)");
    assert_eq!(all, stored_ids(&b, "load"), "every stored message, in the page or live");
}

/// Many frames in one write from one sender on each node: each node stores a turn's
/// messages for the room in one batch (one script call, one publish), and every member
/// on both nodes still hears each message once, in the sender's order, with increasing
/// ids; the JSON sender gets its own copy and then one ack per message, with its id.
#[test]
fn a_burst_in_one_flush_is_stored_as_batches_and_reaches_everyone_once_in_order() {
    burst_in_one_flush(true);
}

/// The same without history: each node publishes a turn's consecutive outputs for the
/// room once (a JSON sender's too, whose own copies come between its outputs).
#[test]
fn without_history_a_burst_in_one_flush_is_published_once_and_reaches_everyone_once_in_order() {
    burst_in_one_flush(false);
}

fn burst_in_one_flush(history: bool) {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, history);
    let mut ann = JsonClient::join(&a, "lobby", "ann"); // the JSON sender, on A
    let mut dave = JsonClient::join(&a, "lobby", "dave"); // beside her, on A
    let mut bob = JsonClient::join(&b, "lobby", "bob"); // on B
    let mut carl = TextClient::open(&b, "/lobby?name=carl"); // raw, on B: the other sender
    subscribers(&redis, "pollcast:room:lobby", 2);
    for client in [&mut ann, &mut dave, &mut bob] {
        client.sync();
    }
    carl.sync();
    let sent_before = (a.metric("redis_sent_total"), b.metric("redis_sent_total"));

    const N: usize = 60;
    for i in 0..N {
        let envelope = json!({"type": "send", "room": "lobby", "text": format!("a{i}"), "cid": i});
        ann.ws.write(tungstenite::Message::text(envelope.to_string())).expect("queue a frame");
        carl.ws.write(tungstenite::Message::text(format!("c{i}"))).expect("queue a frame");
    }
    ann.ws.flush().expect("one flush");
    carl.ws.flush().expect("one flush");

    // What a JSON member heard, by sender: (id, text) in arrival order; and ann's acks.
    let hear = |client: &mut JsonClient| {
        let (mut from_ann, mut from_carl, mut acks) = (Vec::new(), Vec::new(), Vec::new());
        let is_ann = client.name == "ann";
        while from_ann.len() < N || from_carl.len() < N || (is_ann && acks.len() < N) {
            let envelope = client.recv();
            let id = envelope["id"].as_u64();
            let text = envelope["text"].as_str().unwrap_or_default().to_owned();
            match (envelope["type"].as_str(), envelope["from"].as_str()) {
                (Some("message"), Some("ann")) => from_ann.push((id.expect("an id"), text)),
                (Some("message"), Some("carl")) => from_carl.push((id.expect("an id"), text)),
                (Some("ack"), _) => {
                    let copy = from_ann.iter().find(|(copy, _)| Some(*copy) == id);
                    assert!(copy.is_some(), "ann's ack {envelope} came after her own copy");
                    acks.push((envelope["cid"].as_u64().expect("cid"), id.expect("ack id")));
                }
                _ => {}
            }
        }
        (from_ann, from_carl, acks)
    };
    let (ann_heard, carl_heard, acks) = hear(&mut ann);
    let texts = |heard: &[(u64, String)]| heard.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    let ids = |heard: &[(u64, String)]| heard.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    assert_eq!(texts(&ann_heard), (0..N).map(|i| format!("a{i}")).collect::<Vec<_>>(), "ann's, in order");
    assert_eq!(texts(&carl_heard), (0..N).map(|i| format!("c{i}")).collect::<Vec<_>>(), "carl's, in order");
    for heard in [&ann_heard, &carl_heard] {
        assert!(ids(heard).windows(2).all(|w| w[0] < w[1]), "ids increase in each sender's order: {heard:?}");
    }
    let expected_acks: Vec<(u64, u64)> = (0..N as u64).zip(ids(&ann_heard)).collect();
    assert_eq!(acks, expected_acks, "one ack per message, in order, with its copy's id");
    for member in [&mut dave, &mut bob] {
        let (from_ann, from_carl, _) = hear(member);
        assert_eq!(from_ann, ann_heard, "{} hears ann's as she did: same ids, same order", member.name);
        assert_eq!(from_carl, carl_heard, "{} hears carl's likewise", member.name);
    }
    let mut heard = Vec::new();
    while heard.len() < N {
        let line = carl.recv();
        if line.starts_with('a') {
            heard.push(line);
        }
    }
    assert_eq!(heard, texts(&ann_heard), "carl (raw) hears ann's text verbatim, in order");
    // Exactly once: nothing more is waiting for anyone (barriers, not sleeps).
    for client in [&mut ann, &mut dave, &mut bob] {
        let extra: Vec<_> =
            client.sync().into_iter().filter(|e| e["type"] == "message" || e["type"] == "ack").collect();
        assert!(extra.is_empty(), "{}: duplicates: {extra:?}", client.name);
    }
    let rest: Vec<String> = carl.sync().into_iter().filter(|l| l.starts_with('a') || l.starts_with('c')).collect();
    assert!(rest.is_empty(), "carl: duplicates: {rest:?}");
    // Batched: fewer store script calls (or publishes) than messages on each node (one
    // write of N frames is read in a turn or a few).
    let sent = (a.metric("redis_sent_total") - sent_before.0, b.metric("redis_sent_total") - sent_before.1);
    eprintln!("store calls or publishes for {N} messages on each node (A, B): {sent:?}");
    assert!(sent.0 < N as u64 && sent.1 < N as u64, "calls (A, B) for {N} messages each: {sent:?}");
    if history {
        assert_eq!(stream_len(&redis, "lobby"), 2 * N, "every message stored once");
    }
}

/// After SCRIPT FLUSH, the next batch meets NOSCRIPT and is sent again with EVAL: every
/// message of it is still stored, delivered once and acked (and a direct message, one
/// script call alone, likewise).
#[test]
fn after_a_script_flush_a_batch_is_sent_again_with_eval() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    subscribers(&redis, "pollcast:room:lobby", 2);
    subscribers(&redis, "pollcast:user:bob", 1);
    say_acked(&mut ann, "lobby", "before");
    assert!(redis.raw("SCRIPT FLUSH").starts_with("+OK"));

    const N: usize = 20;
    for i in 0..N {
        let envelope = json!({"type": "send", "room": "lobby", "text": format!("m{i}"), "cid": i});
        ann.ws.write(tungstenite::Message::text(envelope.to_string())).expect("queue a frame");
    }
    ann.ws.flush().expect("one flush");
    let (mut copies, mut acks) = (Vec::new(), Vec::new());
    while acks.len() < N {
        let envelope = ann.recv();
        match envelope["type"].as_str() {
            Some("message") if envelope["text"] != "before" => copies.push(envelope["id"].as_u64().unwrap()),
            Some("ack") => acks.push(envelope["id"].as_u64().unwrap()),
            Some("error") => panic!("{envelope}"),
            _ => {}
        }
    }
    assert_eq!(acks, copies, "each message acked once, after its copy, with its id");
    let mut heard = Vec::new();
    while heard.len() < N {
        let envelope = bob.recv();
        if envelope["type"] == "message" && envelope["text"] != "before" {
            heard.push(envelope["id"].as_u64().unwrap());
        }
    }
    assert_eq!(heard, copies, "bob (B) hears them all, once, in order");
    assert!(a.log_text().contains("the batch store script was flushed from Redis"));
    assert_eq!(stream_len(&redis, "lobby"), N + 1);

    redis.raw("SCRIPT FLUSH");
    ann.send(json!({"type": "dm", "to": "bob", "text": "psst", "cid": "dm"}));
    let (dm, _) = bob.wait_for(|e| e["type"] == "dm");
    assert_eq!(dm["text"], "psst");
    let (ack, _) = ann.wait_for(|e| e["type"] == "ack" && e["cid"] == "dm");
    assert_eq!(ack["id"], dm["id"]);
}

// ----- shared files ---------------------------------------------------------------------

/// A JSON client's next data frame: an envelope (`Ok`) or binary bytes (`Err`),
/// `presence` skipped.
fn next_frame(client: &mut JsonClient) -> Result<serde_json::Value, Vec<u8>> {
    use tungstenite::Message;
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let envelope: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if envelope["type"] != "presence" {
                    return Ok(envelope);
                }
            }
            Ok(Message::Binary(bytes)) => return Err(bytes),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("{}: expected a data frame, got {other:?}", client.name),
        }
    }
}

/// Sends a `file` header to `place` and its bytes in frames of at most 60 KiB.
fn upload(client: &mut JsonClient, place: (&str, &str), name: &str, bytes: &[u8], cid: &str) {
    let size = bytes.len();
    client.send(json!({"type": "file", place.0: place.1, "name": name, "mime": "image/png", "size": size, "cid": cid}));
    for chunk in bytes.chunks(60 << 10) {
        client.ws.write(tungstenite::Message::binary(chunk.to_vec())).expect("write");
    }
    client.ws.flush().expect("flush");
}

/// `fetch {id}`: the `file_data` envelope and the bytes, or the `error`'s code.
fn fetch(client: &mut JsonClient, id: u64) -> Result<(serde_json::Value, Vec<u8>), String> {
    client.send(json!({"type": "fetch", "id": id, "ref": "f"}));
    let head = next_frame(client).expect("an envelope before any bytes");
    if head["type"] == "error" {
        assert_eq!(head["ref"], "f", "{head}");
        return Err(head["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(head["type"], "file_data", "{head}");
    Ok((head, next_frame(client).expect_err("the bytes")))
}

#[test]
fn a_room_file_from_one_node_reaches_every_member_once_and_is_fetched_and_paged_from_another() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.expect("history");
    let mut kim = JsonClient::join(&a, "lobby", "kim");
    kim.expect("history");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    bob.expect("history");
    let mut bo = TextClient::open(&b, "/lobby?name=bo");
    assert!(bo.sync().is_empty());
    subscribers(&redis, "pollcast:room:lobby", 2);

    let said = say_acked(&mut ann, "lobby", "look");
    let body: Vec<u8> = (0..300_000).map(|i: usize| (i * 7 + i / 251) as u8).collect();
    upload(&mut ann, ("room", "lobby"), "cat pic.png", &body, "c1");
    let (ack, seen) = ann.wait_for(|e| e["type"] == "ack" && e["cid"] == "c1");
    let own: Vec<_> = seen.iter().filter(|e| e["type"] != "presence").collect();
    assert_eq!(own.len(), 1, "its own copy, then the ack: {seen:?}");
    let own = own[0].clone();
    let id = ack["id"].as_u64().unwrap();
    assert_eq!(
        own,
        json!({"type": "file", "id": id, "room": "lobby", "from": "ann", "name": "cat pic.png",
               "mime": "image/png", "size": 300_000, "ts": own["ts"]})
    );
    assert!(id > said);
    for client in [&mut kim, &mut bob] {
        let (file, skipped) = client.wait_for(|e| e["type"] == "file");
        assert_eq!(file, own, "the same notice on both nodes, no bytes");
        let texts: Vec<&serde_json::Value> = skipped.iter().filter(|e| e["type"] == "message").collect();
        assert_eq!(texts.len(), 1, "the message first, in order: {skipped:?}");
        assert!(client.sync().iter().all(|e| e["type"] != "file"), "once");
    }
    assert_eq!(bo.recv(), "look");
    assert_eq!(bo.recv(), format!("file ann cat pic.png 300000 id={id}"), "raw: the notice line");
    assert!(bo.sync().is_empty());
    assert!(redis.raw("XLEN pollcast:history:lobby").starts_with(":2"), "a record in the room's stream");

    // Fetched on B, by a member and by anyone else (no tokens: room files are public).
    let (head, bytes) = fetch(&mut bob, id).expect("bob fetches on B");
    assert_eq!(
        head,
        json!({"type": "file_data", "id": id, "name": "cat pic.png", "mime": "image/png", "size": 300_000})
    );
    assert!(bytes == body, "the bytes come back unchanged");
    let mut out = JsonClient::join(&b, "elsewhere", "out");
    out.expect("history");
    assert!(fetch(&mut out, id).expect("a non-member fetches").1 == body);
    assert_eq!(fetch(&mut out, said), Err("not_found".into()), "a message is no file");

    // A page on B lists it as a notice, in order with the message.
    let mut lu = JsonClient::open(&b, "/lobby?name=lu&history=5");
    lu.expect_welcome("lobby");
    let (history, _) = lu.wait_for(|e| e["type"] == "history");
    let kinds: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "file"], "{history}");
    assert_eq!(history["messages"][1], own);
    let mut late = TextClient::open(&b, "/lobby?history=2");
    assert_eq!(late.recv(), "look");
    assert_eq!(late.recv(), format!("file ann cat pic.png 300000 id={id}"));

    // Retention took it (here by hand): not found, and its mapping goes with it.
    assert!(redis.raw(&format!("EXISTS pollcast:file:{id}")).starts_with(":1"));
    assert!(redis.raw(&format!("XDEL pollcast:history:lobby 0-{id}")).starts_with(":1"));
    assert_eq!(fetch(&mut bob, id), Err("not_found".into()));
    assert!(redis.raw(&format!("EXISTS pollcast:file:{id}")).starts_with(":0"), "the mapping is gone");
}

#[test]
fn a_direct_file_crosses_nodes_to_its_two_users_only() {
    let _dog = watchdog(TEST_LIMIT);
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, true);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.expect("history");
    let mut bob = JsonClient::join(&b, "lobby", "bob");
    bob.expect("history");
    let mut cy = JsonClient::join(&b, "lobby", "cy");
    cy.expect("history");
    subscribers(&redis, "pollcast:user:bob", 1);
    subscribers(&redis, "pollcast:user:ann", 1);

    upload(&mut ann, ("to", "bob"), "note.txt", b"for bob only", "d1");
    let (ack, seen) = ann.wait_for(|e| e["type"] == "ack" && e["cid"] == "d1");
    let own: Vec<_> = seen.iter().filter(|e| e["type"] == "file").collect();
    assert_eq!(own.len(), 1, "the sender's own copy, then the ack: {seen:?}");
    let own = own[0].clone();
    let id = ack["id"].as_u64().unwrap();
    assert_eq!((own["id"].as_u64(), own["to"].as_str(), own["from"].as_str()), (Some(id), Some("bob"), Some("ann")));
    assert!(own.get("room").is_none(), "{own}");
    let (file, _) = bob.wait_for(|e| e["type"] == "file");
    assert_eq!(file, own);
    assert!(bob.sync().iter().all(|e| e["type"] != "file"), "once");
    cy.expect_quiet();
    assert!(redis.raw("XLEN pollcast:history:@dm").starts_with(":1"));

    assert_eq!(fetch(&mut bob, id).expect("bob fetches on B").1, b"for bob only");
    assert_eq!(fetch(&mut ann, id).expect("ann fetches on A").1, b"for bob only");
    assert_eq!(fetch(&mut cy, id), Err("not_found".into()), "to anyone else a direct file does not exist");

    // Nobody anywhere holds the name: the sender is told, and sees no copy.
    upload(&mut ann, ("to", "nobody"), "n.txt", b"x", "d2");
    let (error, seen) = ann.wait_for(|e| e["type"] == "error");
    assert_eq!((error["code"].as_str(), error["ref"].as_str()), (Some("no_such_user"), Some("d2")), "{error}");
    assert!(seen.iter().all(|e| e["type"] != "file"), "{seen:?}");
}

#[test]
fn a_fetch_of_an_unknown_file_is_not_found_and_uploads_wait_for_redis() {
    let _dog = watchdog(TEST_LIMIT);
    let mut redis = Redis::start();
    let a = history_node(&redis, &[]);
    let mut ann = JsonClient::join(&a, "lobby", "ann");
    ann.expect("history");
    assert_eq!(fetch(&mut ann, 999_999), Err("not_found".into()));
    assert_eq!(fetch(&mut ann, 0), Err("not_found".into()));

    redis.kill();
    assert!(common::wait_until(NOTICE, || health(&a).0 == 503));
    upload(&mut ann, ("room", "lobby"), "a.png", b"abc", "z");
    let (error, _) = ann.wait_for(|e| e["type"] == "error");
    assert_eq!((error["code"].as_str(), error["ref"].as_str()), (Some("unavailable"), Some("z")), "{error}");
    ann.expect_quiet(); // its bytes were skipped, not answered one by one
}
