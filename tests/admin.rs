//! The admin port and what an operator reads: `/metrics` moved off the public port, the
//! JSON API (publish, dm, disconnect, rooms, history), the bearer token, access-log lines
//! in text and JSON, and error messages that say what to fix.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::json::{JsonClient, TempDir, TextClient};
use common::*;

/// The JSON body of an admin answer.
fn body(response: &str) -> Value {
    let text = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"))
}

fn post(server: &Server, path: &str, json: Value) -> (u16, Value) {
    let (status, response) =
        server.admin_request("POST", path, "Content-Type: application/json\r\n", &json.to_string());
    (status, body(&response))
}

#[test]
fn metrics_live_on_the_admin_port_only() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    assert_eq!(server.http_get("/metrics").0, 404, "no metrics on the public port");
    let mut ann = JsonClient::open(&server, "/secret-room?name=ann");
    ann.expect_welcome("secret-room");
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request("/bad%20room", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    ann.close();
    assert!(wait_until(Duration::from_secs(5), || server.metric("connections") <= 1));
    let (status, text) = server.admin_get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        "pollcast_loop_turn_seconds_bucket",
        "pollcast_history_commit_seconds_count",
        "pollcast_closes_total{code=\"1000\"} 1",
        "pollcast_refusals_total{status=\"400\"} 1",
        "pollcast_open_fds ",
        "pollcast_resident_memory_bytes ",
        "pollcast_build_info{version=\"",
        "pollcast_upgrades_total 1",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    assert!(!text.contains("secret-room") && !text.contains("ann"), "client data in a label:\n{text}");
    assert_eq!(server.admin_get("/healthz").0, 200);
    assert_eq!(server.admin_request("HEAD", "/healthz", "", "").1.split("\r\n\r\n").nth(1), Some(""));
}

#[test]
fn the_admin_port_is_not_subject_to_max_connections() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-connections", "2"]);
    let _a = RawWs::open(&server, "/");
    let _b = RawWs::open(&server, "/");
    assert_eq!(server.http_get("/healthz").0, 503, "the public port is full");
    assert_eq!(server.admin_get("/healthz").0, 200, "the admin port still answers");
    assert_eq!(server.metric("connections_refused_total"), 1);
}

#[test]
fn a_token_guards_the_admin_port_and_a_public_one_needs_it() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("admin-token");
    std::fs::write(dir.file("admin.token"), "hunter2-but-longer\n").unwrap();
    let server = Server::start(&["--admin-token-file", &dir.file("admin.token")]);
    let (status, response) = server.admin_get("/metrics");
    assert_eq!(status, 401, "{response}");
    assert_eq!(body(&response)["error"]["code"], "unauthorized");
    let (status, _) = server.admin_request("GET", "/metrics", "Authorization: Bearer wrong\r\n", "");
    assert_eq!(status, 401);
    let (status, _) = server.admin_request("GET", "/metrics", "Authorization: Bearer hunter2-but-longer\r\n", "");
    assert_eq!(status, 200);
    // Reachable from other machines without a token: refuses to start, and says why.
    let output = Command::new(env!("CARGO_BIN_EXE_pollcast"))
        .args(["--listen", "127.0.0.1:0", "--no-history", "--admin-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-token-file"), "{stderr}");
}

#[test]
fn publish_dm_disconnect_rooms_and_history_through_the_api() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("admin-api");
    let db = dir.file("history.db");
    let server = Server::start(&["--db", &db]);
    let mut jay = JsonClient::join(&server, "games", "jay");
    jay.expect("history");
    let mut raw = TextClient::open(&server, "/games?name=rex");
    // Publish: stored before the answer, delivered to both kinds of member.
    let (status, answer) =
        post(&server, "/api/publish", json!({"room": "games", "text": "server says hi", "from": "ops"}));
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_u64().expect("an id");
    let (message, _) = jay.wait_for(|e| e["type"] == "message");
    assert_eq!(
        (message["id"].as_u64(), message["from"].as_str(), message["text"].as_str()),
        (Some(id), Some("ops"), Some("server says hi"))
    );
    assert_eq!(raw.recv(), "server says hi");
    let (status, response) = server.admin_get("/api/rooms/games/history?limit=5");
    assert_eq!(status, 200);
    let history = body(&response);
    assert_eq!(history["messages"][0]["id"].as_u64(), Some(id), "{history}");
    // DM.
    let (status, _) = post(&server, "/api/dm", json!({"to": "jay", "text": "just you"}));
    assert_eq!(status, 200);
    let (dm, _) = jay.wait_for(|e| e["type"] == "dm");
    assert_eq!((dm["from"].as_str(), dm["text"].as_str()), (Some("server"), Some("just you")));
    // Rooms and members.
    assert_eq!(body(&server.admin_get("/api/rooms").1)["rooms"], json!([{"room": "games", "members": 2}]));
    assert_eq!(body(&server.admin_get("/api/rooms/games").1)["members"], json!(["jay", "rex"]));
    // Errors: shapes and statuses.
    let cases = [
        (post(&server, "/api/publish", json!({"room": "games"})), 400, "bad_json"),
        (post(&server, "/api/publish", json!({"room": "bad room", "text": "x"})), 400, "bad_field"),
        (post(&server, "/api/dm", json!({"to": "nobody", "text": "x"})), 404, "no_such_user"),
        (post(&server, "/api/disconnect", json!({"user": "nobody"})), 404, "no_such_user"),
        (post(&server, "/api/nothing", json!({})), 404, "not_found"),
    ];
    for ((status, answer), want_status, code) in cases {
        assert_eq!((status, answer["error"]["code"].as_str()), (want_status, Some(code)), "{answer}");
    }
    let (status, response) = server.admin_get("/api/rooms/nowhere");
    assert_eq!((status, body(&response)["error"]["code"].as_str()), (404, Some("no_such_room")));
    assert_eq!(server.admin_get("/api/publish").0, 405);
    // Disconnect: closed with 4000 and the reason; the room hears the departure.
    let (status, answer) = post(&server, "/api/disconnect", json!({"user": "rex", "reason": "see you"}));
    assert_eq!((status, answer["disconnected"].as_u64()), (200, Some(1)));
    loop {
        match raw.ws.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!((u16::from(frame.code), frame.reason.as_ref()), (4000, "see you"));
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no Close: {e}"),
        }
    }
    let (presence, _) = jay.wait_for(|e| e["type"] == "presence");
    assert_eq!((presence["user"].as_str(), presence["event"].as_str()), (Some("rex"), Some("leave")));
}

#[test]
fn one_access_line_per_connection_end_and_per_refusal() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut ann = TextClient::open(&server, "/games?name=ann");
    let mut bob = TextClient::open(&server, "/games?name=bob");
    ann.type_line("one");
    assert_eq!(bob.recv(), "one");
    ann.ws.close(None).unwrap();
    let _ = ann.ws.read();
    assert_eq!(server.http_get("/x?name=a%20b").0, 404);
    let mut stream = raw_connect(&server);
    let _ = raw_handshake(&mut stream, upgrade_request("/bad%20room", "").as_bytes());
    assert!(
        server.wait_for_log("connection end addr=127.0.0.1 room=games user=ann", Duration::from_secs(5)),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    let end = log.lines().find(|l| l.contains("connection end") && l.contains("user=ann")).unwrap();
    for field in ["protocol=raw", "close=1000", "closed_by=client", "messages_in=1", "messages_out=0", "duration="] {
        assert!(end.contains(field), "{field} in {end}");
    }
    assert!(log.lines().any(|l| l.contains("refused 127.0.0.1 400 invalid room name")), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("pollcast::access")).count(), 2, "nothing per message:\n{log}");
}

#[test]
fn json_log_lines_are_one_object_each() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--log-format", "json"]);
    let mut ann = TextClient::open(&server, "/?name=ann");
    ann.ws.close(None).unwrap();
    let _ = ann.ws.read();
    assert!(server.wait_for_log("\"msg\":\"connection end\"", Duration::from_secs(5)), "{}", server.log_text());
    for line in server.log_text().lines() {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(object["level"].is_string() && object["ts"].is_string(), "{line}");
        if object["msg"] == "connection end" {
            assert_eq!((object["user"].as_str(), object["close"].as_str()), (Some("ann"), Some("1000")), "{line}");
        }
    }
}

#[test]
fn errors_say_what_to_fix() {
    let _dog = watchdog(TEST_LIMIT);
    let bin = env!("CARGO_BIN_EXE_pollcast");
    let output = Command::new(bin).env("POLLCAST_MAX_MESSAGE", "banana").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("POLLCAST_MAX_MESSAGE=banana"), "{stderr}");
    // An address in use names itself, and no database file is made.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("errors");
    let db = dir.file("never.db");
    let output = Command::new(bin).args(["--listen", &addr, "--admin-listen", "off", "--db", &db]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&format!("--listen {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!std::path::Path::new(&db).exists(), "a server that cannot bind made {db}");
    // A raised value is a warning; POLLCAST_NO_HISTORY=1 is true.
    let server = Server::start_logging("pollcast=info", &["--max-queue", "1KiB", "--db", &db]);
    assert!(server.wait_for_log("--max-queue 1KiB raised to", Duration::from_secs(5)));
    drop(server);
    let mut command = Command::new(bin);
    command.env("POLLCAST_NO_HISTORY", "1").args(["--listen", "127.0.0.1:0", "--admin-listen", "off", "--help"]);
    assert!(command.output().unwrap().status.success());
}

#[test]
fn shutdown_ends_json_members_with_the_close_alone() {
    let _dog = watchdog(TEST_LIMIT);
    let mut server = Server::start(&[]);
    let mut a = JsonClient::join(&server, "lobby", "a");
    let mut b = JsonClient::join(&server, "lobby", "b");
    a.expect("presence");
    server.signal(libc::SIGTERM);
    for client in [&mut a, &mut b] {
        loop {
            match client.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let envelope: Value = serde_json::from_str(&text).unwrap();
                    assert_ne!(envelope["type"], "presence", "{envelope}: only the 1001 Close on shutdown");
                }
                Ok(tungstenite::Message::Close(Some(frame))) => {
                    assert_eq!(u16::from(frame.code), 1001);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("no Close: {e}"),
            }
        }
    }
    assert!(server.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
}
