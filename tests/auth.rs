//! Identity and permissions over real sockets: the real binary with a JWT key, tokens
//! minted here, every way a token can be wrong, every way into a room, several
//! connections of one user, expiry and refresh, guests, per-address limits and trusted
//! proxies.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::json::{JsonClient, TempDir, TextClient};
use common::*;

/// The shared secret the HS256 servers here verify with.
const SECRET: &str = "a test secret that is long enough for HS256 (32+ bytes)";
/// The RSA key pair of tests/fixtures/jwt.
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/rsa_private.pem");
const RSA_PUBLIC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/rsa_public.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/jwt/rsa_public.pem");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token over `claims` with `secret`.
fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token for `sub` valid for an hour, with extra claims.
fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 3600});
    claims.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    hs256(&claims, SECRET.as_bytes())
}

/// A server with tokens on (HS256 with `SECRET`), plus `args`, logging at debug (so a
/// test can look for tokens in everything it says).
fn auth_server(dir: &TempDir, args: &[&str]) -> Server {
    let secret = dir.file("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap(); // the trailing newline is not part of it
    let mut all = vec!["--jwt-secret-file", secret.as_str()];
    all.extend_from_slice(args);
    Server::start_logging("pollcast=debug", &all)
}

/// The status of a raw upgrade on `path` with extra header lines.
fn upgrade_status(server: &Server, path: &str, extra: &str) -> (u16, String) {
    let response = answer(server, &upgrade_request(path, extra));
    (status_of(&response), response)
}

/// A raw request's whole answer.
fn answer(server: &Server, request: &str) -> String {
    let mut stream = raw_connect(server);
    stream.write_all(request.as_bytes()).unwrap();
    read_to_eof(&mut stream)
}

#[test]
fn every_bad_token_is_refused_401_before_the_upgrade() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-bad");
    let server = auth_server(&dir, &["--jwt-issuer", "https://app.example", "--jwt-audience", "chat"]);
    let good = json!({"iss": "https://app.example", "aud": "chat"});
    let t = now();
    let none_header = BASE64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_claims = BASE64URL
        .encode(json!({"sub": "eve", "exp": t + 3600, "iss": "https://app.example", "aud": "chat"}).to_string());
    let cases: Vec<(&str, String)> = vec![
        ("no token", String::new()),
        ("alg none", format!("{none_header}.{none_claims}.")),
        (
            "wrong secret",
            hs256(
                &json!({"sub": "eve", "exp": t + 3600, "iss": "https://app.example", "aud": "chat"}),
                b"another secret entirely, 32 bytes+",
            ),
        ),
        ("malformed", "not.a.token".to_owned()),
        (
            "expired",
            hs256(
                &json!({"sub": "eve", "exp": t - 120, "iss": "https://app.example", "aud": "chat"}),
                SECRET.as_bytes(),
            ),
        ),
        (
            "not yet valid",
            hs256(
                &json!({"sub": "eve", "exp": t + 3600, "nbf": t + 600, "iss": "https://app.example", "aud": "chat"}),
                SECRET.as_bytes(),
            ),
        ),
        ("no exp", hs256(&json!({"sub": "eve", "iss": "https://app.example", "aud": "chat"}), SECRET.as_bytes())),
        ("wrong issuer", token("eve", json!({"iss": "https://evil.example", "aud": "chat"}))),
        ("wrong audience", token("eve", json!({"iss": "https://app.example", "aud": "other"}))),
    ];
    for (what, bad) in cases {
        let path = if bad.is_empty() { "/".to_owned() } else { format!("/?token={bad}") };
        let (status, response) = upgrade_status(&server, &path, "");
        assert_eq!(status, 401, "{what}: {response:?}");
        assert!(!response.contains(&bad) || bad.is_empty(), "{what}: the token is echoed");
        let (status, _) = upgrade_status(&server, "/", &format!("Authorization: Bearer {bad}\r\n"));
        assert_eq!(status, 401, "{what} as a bearer token");
    }
    let ok = token("eve", good);
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request(&format!("/?token={ok}"), "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "a good token: {head:?}");
    let mut stream = raw_connect(&server);
    let (head, _) =
        raw_handshake(&mut stream, upgrade_request("/", &format!("Authorization: Bearer {ok}\r\n")).as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "a good bearer token: {head:?}");
    assert!(server.wait_for_log("token=REDACTED", Duration::from_secs(5)), "the upgrade is logged, redacted");
    let log = server.log_text();
    assert!(!log.contains(&ok) && !log.contains(SECRET), "a token or the secret reached the log:\n{log}");
}

#[test]
fn a_public_key_admits_its_algorithm_only() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--jwt-public-key-file", RSA_PUBLIC_PATH]);
    let claims = json!({"sub": "rita", "exp": now() + 3600});
    let rs256 =
        encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()).unwrap();
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request(&format!("/?token={rs256}"), "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "RS256 with the right key: {head:?}");
    // Algorithm confusion: HS256 "signed" with the public key's bytes as the secret.
    let confused = hs256(&claims, RSA_PUBLIC);
    assert_eq!(upgrade_status(&server, &format!("/?token={confused}"), "").0, 401);
}

#[test]
fn a_seven_kib_token_in_a_header_is_judged_not_choked_on() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-big");
    let server = auth_server(&dir, &[]);
    let big = token("bigsby", json!({"pad": "p".repeat(5000)}));
    assert!(big.len() > 6 << 10 && big.len() < 7 << 10, "{}", big.len());
    let mut stream = raw_connect(&server);
    let (head, _) =
        raw_handshake(&mut stream, upgrade_request("/", &format!("Authorization: Bearer {big}\r\n")).as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "a valid 7 KiB token: {head:?}");
    let mut tampered = big.into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(upgrade_status(&server, "/", &format!("Authorization: Bearer {tampered}\r\n")).0, 401);
}

#[test]
fn the_php_backends_tokens_work_with_the_claim_flags() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-php");
    let server = auth_server(
        &dir,
        &[
            "--jwt-user-claim",
            "user_id",
            "--jwt-name-claim",
            "username",
            "--jwt-allow-no-exp",
            "--jwt-issuer",
            "https://app.example",
            "--jwt-audience",
            "https://app.example",
        ],
    );
    // What firebase/php-jwt mints in the documents: no exp.
    let t = now();
    let claims = json!({"iss": "https://app.example", "aud": "https://app.example", "iat": t, "nbf": t, "user_id": 42, "username": "pat"});
    let php = hs256(&claims, SECRET.as_bytes());
    let mut pat = JsonClient::open(&server, &format!("/?token={php}"));
    let welcome = pat.expect("welcome");
    assert_eq!(welcome["you"], "pat", "{welcome}");
}

#[test]
fn the_token_names_the_user_and_one_user_may_hold_several_connections() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-multi");
    let server = auth_server(&dir, &[]);
    let alice = token("u1", json!({"name": "Alice"}));
    let mut tab1 = JsonClient::open(&server, &format!("/lobby?token={alice}&name=mallory"));
    assert_eq!(tab1.expect("welcome")["you"], "Alice", "?name= is ignored: the token names the user");
    tab1.expect("joined");
    let mut bob = JsonClient::open(&server, &format!("/lobby?token={}", token("u2", json!({"name": "Bob"}))));
    bob.expect_welcome("lobby");
    bob.expect("joined");
    let (presence, _) = tab1.wait_for(|e| e["type"] == "presence");
    assert_eq!((presence["user"].as_str(), presence["event"].as_str()), (Some("Bob"), Some("join")));
    // Alice's second tab: no second join for Bob, and `who` lists her once.
    let mut tab2 = JsonClient::open(&server, &format!("/lobby?token={alice}"));
    assert_eq!(tab2.expect("welcome")["you"], "Alice");
    let joined = tab2.expect("joined");
    assert_eq!(joined["members"], json!(["Alice", "Bob"]), "{joined}");
    assert!(bob.sync().iter().all(|e| e["type"] != "presence"), "a second connection is no new arrival");
    assert_eq!(bob.who("lobby"), vec!["Alice", "Bob"]);
    // A dm reaches every connection of its recipient.
    bob.send(json!({"type": "dm", "to": "Alice", "text": "to both tabs", "cid": 1}));
    for tab in [&mut tab1, &mut tab2] {
        let (dm, _) = tab.wait_for(|e| e["type"] == "dm");
        assert_eq!(dm["text"], "to both tabs");
    }
    // The name comes from the token: nick is forbidden.
    tab1.send(json!({"type": "nick", "name": "Alicia", "ref": "n"}));
    let (error, _) = tab1.wait_for(|e| e["type"] == "error");
    assert_eq!((error["code"].as_str(), error["ref"].as_str()), (Some("forbidden"), Some("n")));
    // Leaving from one tab is not leaving: presence `leave` comes with the last one.
    tab2.close();
    assert!(bob.sync().iter().all(|e| e["type"] != "presence"), "Alice is still there on tab 1");
    tab1.close();
    let (presence, _) = bob.wait_for(|e| e["type"] == "presence");
    assert_eq!((presence["user"].as_str(), presence["event"].as_str()), (Some("Alice"), Some("leave")));
}

#[test]
fn no_way_into_a_room_the_token_does_not_allow() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-rooms");
    let db = dir.file("history.db");
    let server = auth_server(&dir, &["--db", &db]);
    let limited = token("lim", json!({"name": "lim", "rooms": ["lobby", "team-*"], "publish": ["team-*"]}));
    // The upgrade path and ?history= (raw: 403 before the upgrade).
    assert_eq!(upgrade_status(&server, &format!("/secret?token={limited}"), "").0, 403);
    assert_eq!(upgrade_status(&server, &format!("/secret?token={limited}&history=5"), "").0, 403);
    // Someone allowed says something in `secret`.
    let mut insider = JsonClient::open(&server, &format!("/secret?token={}", token("in", json!({"name": "insider"}))));
    insider.expect_welcome("secret");
    insider.say("secret", "the plans", "c1");
    insider.wait_for(|e| e["type"] == "ack");
    // JSON: join, history, who, send.
    let mut lim = JsonClient::open(&server, &format!("/lobby?token={limited}"));
    lim.expect_welcome("lobby");
    for (request, what) in [
        (json!({"type": "join", "room": "secret", "ref": 1}), "join"),
        (json!({"type": "history", "room": "secret", "ref": 2}), "history"),
        (json!({"type": "who", "room": "secret", "ref": 3}), "who"),
    ] {
        lim.send(request);
        let (reply, skipped) = lim.wait_for(|e| e["type"] == "error");
        assert!(
            reply["code"] == "forbidden" || (what == "history" && reply["code"] == "not_member"),
            "{what}: {reply}"
        );
        assert!(
            skipped.iter().all(|e| e["type"] != "history" && e["type"] != "joined" || e["room"] != "secret"),
            "{what}: {skipped:?}"
        );
    }
    // Read but not publish: lobby. Nothing is delivered.
    let mut watcher = JsonClient::open(&server, &format!("/lobby?token={}", token("w", json!({"name": "watcher"}))));
    watcher.expect_welcome("lobby");
    watcher.sync();
    lim.send(json!({"type": "send", "room": "lobby", "text": "may I?", "cid": "s"}));
    let (reply, _) = lim.wait_for(|e| e["type"] == "error");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(watcher.sync().iter().all(|e| e["type"] != "message"), "a forbidden send delivered something");
    // Raw: /join, /who, and a line in a room it may read but not publish to.
    let mut raw = TextClient::open(&server, &format!("/lobby?token={limited}"));
    assert!(raw.ask("/join secret\n").starts_with("err forbidden "));
    assert!(raw.ask("/who secret\n").starts_with("err forbidden "));
    assert!(raw.ask("hello lobby\n").starts_with("err forbidden "));
    assert!(watcher.sync().iter().all(|e| e["type"] != "message"), "a forbidden line delivered something");
    // And where it may publish, it does.
    assert_eq!(raw.ask("/join team-a\n"), "ok join team-a");
    // The room list shows only rooms it may join.
    let listed = raw.ask("/rooms\n");
    assert!(!listed.contains("secret"), "{listed}");
}

#[test]
fn a_browser_is_told_why_and_can_do_nothing_else() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-browser");
    let server = auth_server(&dir, &["--jwt-leeway", "0s"]);
    let expired = hs256(&json!({"sub": "old", "exp": now() - 5}), SECRET.as_bytes());
    let narrow = token("n", json!({"rooms": ["lobby"]}));
    for (path, code, close) in [
        (format!("/?token={expired}"), "unauthorized", 4401),
        ("/".to_owned(), "unauthorized", 4401),
        (format!("/secret?token={narrow}"), "forbidden", 4403),
    ] {
        let mut stream = raw_connect(&server);
        let request = upgrade_request(&path, "Sec-WebSocket-Protocol: pollcast.v1\r\n");
        let (head, rest) = raw_handshake(&mut stream, request.as_bytes());
        assert!(head.starts_with("HTTP/1.1 101 "), "{path}: {head:?}");
        let mut ws = RawWs::from_parts(stream, rest);
        let frame = ws.read_frame().expect("the error envelope");
        let error: Value = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some(code)), "{path}: {error}");
        // It may say what it likes: nothing is relayed, nothing comes back but the Close.
        ws.send(&masked_frame(true, 0x1, br#"{"type":"send","room":"lobby","text":"x"}"#));
        assert_eq!(ws.read_close_code(), close, "{path}");
    }
}

#[test]
fn an_expired_token_closes_1008_unless_refreshed() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-expiry");
    let server = auth_server(&dir, &["--jwt-leeway", "0s"]);
    let short = |sub: &str| hs256(&json!({"sub": sub, "exp": now() + 2}), SECRET.as_bytes());
    // Refreshed in time: stays, and may go on talking.
    let mut keeper = JsonClient::open(&server, &format!("/?token={}", short("keeper")));
    keeper.expect_welcome("lobby");
    keeper.send(json!({"type": "refresh", "token": token("keeper", json!({}))}));
    let (refreshed, _) = keeper.wait_for(|e| e["type"] == "refreshed");
    assert!(refreshed["exp"].as_u64().unwrap() > now() + 60, "{refreshed}");
    // Someone else's token is no refresh.
    keeper.send(json!({"type": "refresh", "token": token("intruder", json!({})), "ref": "r"}));
    let (error, _) = keeper.wait_for(|e| e["type"] == "error");
    assert_eq!(error["code"], "forbidden", "{error}");
    // Not refreshed: told, then closed 1008 "token expired".
    let mut stream = raw_connect(&server);
    let request = upgrade_request(&format!("/?token={}", short("lapser")), "Sec-WebSocket-Protocol: pollcast.v1\r\n");
    let (head, rest) = raw_handshake(&mut stream, request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    let mut ws = RawWs::from_parts(stream, rest);
    let expired_error = loop {
        let frame = ws.read_frame().expect("frames until the expiry");
        let envelope: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
        if envelope["type"] == "error" {
            break envelope;
        }
    };
    assert_eq!(expired_error["code"], "token_expired", "{expired_error}");
    match ws.read_close() {
        CloseSeen::Frame(code, reason) => assert_eq!((code, reason.as_str()), (1008, "token expired")),
        CloseSeen::Eof => panic!("no Close frame"),
    }
    // The refreshed one is still here, past the first token's expiry.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(keeper.who("lobby"), vec!["keeper"]);
    // A raw client refreshes with /token.
    let mut raw = TextClient::open(&server, &format!("/?token={}", short("rawley")));
    assert!(raw.ask(&format!("/token {}\n", token("rawley", json!({})))).starts_with("ok token "));
}

#[test]
fn guests_come_in_only_where_guests_may() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-guests");
    let server = auth_server(&dir, &["--allow-guests", "--guest-rooms", "lobby,help-*"]);
    let mut guest = JsonClient::open(&server, "/?name=admin");
    let welcome = guest.expect("welcome");
    assert!(welcome["you"].as_str().unwrap().starts_with("guest-"), "{welcome}");
    assert_eq!(upgrade_status(&server, "/staff", "").0, 403);
    let mut raw = TextClient::open(&server, "/help-desk");
    assert_eq!(raw.ask("/join lobby\n"), "ok join lobby");
    assert!(raw.ask("/join staff\n").starts_with("err forbidden "));
}

/// A connection from `source` (a loopback address) to the server.
fn connect_from(server: &Server, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    socket.connect(&server.addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

#[test]
fn one_address_cannot_crowd_out_another() {
    let _dog = watchdog(Duration::from_secs(60));
    pollcast::sys::raise_fd_limit(); // a thousand sockets here, a thousand in the server
    let server = Server::start(&["--max-connections-per-ip", "100", "--max-upgrade-rate", "100000"]);
    let crowd = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let mut stream = connect_from(&server, crowd).expect("connect from 127.0.0.2");
        stream.write_all(upgrade_request("/", "").as_bytes()).unwrap();
        let (head, _) = read_head(&mut stream);
        match status_of(&head) {
            101 => held.push(stream),
            429 => refused += 1,
            other => panic!("unexpected {other}: {head:?}"),
        }
    }
    assert_eq!((held.len(), refused), (100, 900), "the cap holds exactly");
    // Another address is served all the while.
    let mut other = connect_from(&server, Ipv4Addr::LOCALHOST).unwrap();
    let (head, _) = raw_handshake(&mut other, upgrade_request("/", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "127.0.0.1 while 127.0.0.2 is at its cap: {head:?}");
    assert_eq!(server.metric("refused_per_address_total"), 900);
    // A slot freed is a slot again.
    drop(held.pop());
    assert!(wait_until(Duration::from_secs(5), || {
        let mut stream = connect_from(&server, crowd).unwrap();
        stream.write_all(upgrade_request("/", "").as_bytes()).unwrap();
        let ok = status_of(&read_head(&mut stream).0) == 101;
        if ok {
            held.push(stream);
        }
        ok
    }));
}

#[test]
fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    let _dog = watchdog(TEST_LIMIT);
    // Untrusted peer: X-Forwarded-For is ignored, every connection is 127.0.0.1's.
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let mut stream = raw_connect(&server);
        stream.write_all(upgrade_request("/", &format!("X-Forwarded-For: 203.0.113.{i}\r\n")).as_bytes()).unwrap();
        statuses.push(status_of(&read_head(&mut stream).0));
        held.push(stream);
    }
    assert_eq!(statuses, vec![101, 101, 429], "spoofed X-Forwarded-For from an untrusted peer");
    // Trusted proxy: each forwarded client has its own allowance; the right-most
    // untrusted address is the client.
    let server = Server::start(&["--max-connections-per-ip", "1", "--trust-proxy", "127.0.0.1/32"]);
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for xff in ["203.0.113.7", "198.51.100.1, 203.0.113.8", "203.0.113.7", "10.9.9.9, 203.0.113.8"] {
        let mut stream = raw_connect(&server);
        stream.write_all(upgrade_request("/", &format!("X-Forwarded-For: {xff}\r\n")).as_bytes()).unwrap();
        statuses.push(status_of(&read_head(&mut stream).0));
        held.push(stream);
    }
    assert_eq!(statuses, vec![101, 101, 429, 429]);
}

#[test]
fn the_token_subcommand_mints_what_the_server_takes() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("auth-mint");
    let server = auth_server(&dir, &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pollcast"))
        .args(["token", "--sub", "tina", "--name", "Tina", "--rooms", "lobby", "--ttl", "10m"])
        .args(["--jwt-secret-file", &dir.file("secret")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let minted = String::from_utf8(output.stdout).unwrap();
    let mut tina = JsonClient::open(&server, &format!("/?token={}", minted.trim()));
    assert_eq!(tina.expect("welcome")["you"], "Tina");
    assert_eq!(upgrade_status(&server, &format!("/elsewhere?token={}", minted.trim()), "").0, 403);
}
