//! Files and images over real sockets: a `file` header and its bytes in binary frames,
//! delivery to JSON members (an envelope) and raw ones (a notice line), a late joiner who
//! finds the file in history and fetches it, the size bound, hostile names and types, a
//! direct file, the upload cap, `--no-history`, and who may fetch with tokens.
//!
//! Barriers (`sync()`) make "the server has handled this" explicit; no test sleeps.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;

use common::json::{JsonClient, TempDir, TextClient};
use common::*;

/// What a JSON client can receive: envelopes, and the bytes of a fetch.
#[derive(Debug, PartialEq)]
enum Got {
    Json(Value),
    Bytes(Vec<u8>),
}

/// The next data frame, answering pings on the way.
fn next(client: &mut JsonClient) -> Got {
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => return Got::Json(serde_json::from_str(&text).expect("JSON")),
            Ok(Message::Binary(bytes)) => return Got::Bytes(bytes),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("{}: expected a data frame, got {other:?}", client.name),
        }
    }
}

/// The next envelope but `presence` (others come and go), of type `kind`.
fn expect(client: &mut JsonClient, kind: &str) -> Value {
    loop {
        match next(client) {
            Got::Json(envelope) if envelope["type"] == "presence" => continue,
            Got::Json(envelope) if envelope["type"] == kind => return envelope,
            other => panic!("{}: expected {kind}, got {other:?}", client.name),
        }
    }
}

/// A JSON client `name` in `room`, past everything the server sent on arrival (with
/// history on, a `history` page).
fn join(server: &Server, room: &str, name: &str) -> JsonClient {
    let mut client = JsonClient::join(server, room, name);
    client.sync();
    client
}

/// Sends a `file` header to `place` (`("room", R)` or `("to", USER)`) and the bytes in
/// frames of at most `chunk` bytes, without waiting for any answer (as the page does).
fn upload(client: &mut JsonClient, place: (&str, &str), name: &str, mime: &str, bytes: &[u8], cid: &str) {
    let size = bytes.len();
    client.send(json!({"type": "file", place.0: place.1, "name": name, "mime": mime, "size": size, "cid": cid}));
    for chunk in bytes.chunks(60 << 10) {
        client.ws.write(Message::binary(chunk.to_vec())).expect("write");
    }
    client.ws.flush().expect("flush");
}

/// `fetch {id}`: the `file_data` envelope and the bytes, or the `error`.
fn fetch(client: &mut JsonClient, id: u64) -> Result<(Value, Vec<u8>), Value> {
    client.send(json!({"type": "fetch", "id": id, "ref": "f"}));
    let head = loop {
        match next(client) {
            Got::Json(head) if head["type"] == "presence" => continue,
            Got::Json(head) => break head,
            other => panic!("expected file_data or error, got {other:?}"),
        }
    };
    if head["type"] == "error" {
        assert_eq!(head["ref"], "f", "{head}");
        return Err(head);
    }
    assert_eq!(head["type"], "file_data", "{head}");
    match next(client) {
        Got::Bytes(bytes) => Ok((head, bytes)),
        other => panic!("expected the bytes, got {other:?}"),
    }
}

/// A fetch's error code.
fn fetch_refused(client: &mut JsonClient, id: u64) -> String {
    match fetch(client, id) {
        Err(error) => error["code"].as_str().unwrap().to_owned(),
        Ok((head, _)) => panic!("{}: fetch of {id} answered {head}", client.name),
    }
}

/// Bytes that look like nothing in particular (every value, in a long cycle).
fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// `pollcast --db DIR/x.db EXTRA...`
fn start(dir: &TempDir, extra: &[&str]) -> Server {
    let db = dir.file("x.db");
    let mut args = vec!["--db", db.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn a_file_reaches_every_member_and_a_late_joiner_fetches_it() {
    let _watchdog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("files-share");
    let server = start(&dir, &[]);
    let mut ann = join(&server, "lobby", "ann");
    let mut kim = join(&server, "lobby", "kim");
    let mut bo = TextClient::open(&server, "/lobby?name=bo");
    ann.say("lobby", "look at this", "m1");
    let body = bytes(150_000); // three frames of 60 KiB at most
    upload(&mut ann, ("room", "lobby"), "cat pic.png", "image/png", &body, "c1");

    // Own copies and acks, in order (one read may carry both requests: copies, then acks).
    let (_, seen) = ann.wait_for(|e| e["type"] == "ack" && e["cid"] == "c1");
    let kinds: Vec<&Value> = seen.iter().map(|e| &e["type"]).filter(|t| *t != "presence").collect();
    assert!(kinds == ["message", "ack", "file"] || kinds == ["message", "file", "ack"], "{seen:?}");
    let sent = seen.iter().find(|e| e["type"] == "message").unwrap().clone();
    let own = seen.iter().find(|e| e["type"] == "file").unwrap().clone();
    let id = own["id"].as_u64().unwrap();
    assert_eq!(
        own,
        json!({"type": "file", "id": id, "room": "lobby", "from": "ann", "name": "cat pic.png",
               "mime": "image/png", "size": 150_000, "ts": own["ts"]})
    );
    assert!(id > sent["id"].as_u64().unwrap());
    let (seen, _) = kim.wait_for(|e| e["type"] == "file");
    assert_eq!(seen, own, "members get the same envelope, no bytes");
    assert_eq!(bo.recv(), "look at this");
    assert_eq!(bo.recv(), format!("file ann cat pic.png 150000 id={id}"), "raw: one notice line, no binary noise");
    assert!(bo.sync().is_empty());

    // A late joiner sees it in history, in order with the message, and fetches the bytes.
    let mut lu = JsonClient::join(&server, "lobby", "lu");
    let history = expect(&mut lu, "history");
    let kinds: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "file"], "{history}");
    assert_eq!(history["messages"][1], own);
    let (head, fetched) = fetch(&mut lu, id).expect("fetch");
    assert_eq!(
        head,
        json!({"type": "file_data", "id": id, "name": "cat pic.png", "mime": "image/png", "size": 150_000})
    );
    assert!(fetched == body, "the bytes come back unchanged");
    // Raw replay: the notice line in its place.
    let mut late = TextClient::open(&server, "/lobby?history=2");
    assert_eq!(late.recv(), "look at this");
    assert_eq!(late.recv(), format!("file ann cat pic.png 150000 id={id}"));
    // A message is not a file; an unknown id is no file.
    assert_eq!(fetch_refused(&mut lu, sent["id"].as_u64().unwrap()), "not_found");
    assert_eq!(fetch_refused(&mut lu, 999_999), "not_found");
    // Fetched again after a restart: it is in the database.
    drop((ann, kim, bo, lu, late));
    drop(server);
    let server = start(&dir, &[]);
    let mut again = join(&server, "elsewhere", "again");
    assert!(fetch(&mut again, id).expect("fetch after restart").1 == body, "non-members may fetch room files");
}

#[test]
fn too_large_is_refused_before_anything_is_stored_or_relayed() {
    let _watchdog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("files-large");
    let server = start(&dir, &["--max-file", "1KiB"]);
    let mut ann = join(&server, "lobby", "ann");
    let mut kim = join(&server, "lobby", "kim");
    upload(&mut ann, ("room", "lobby"), "big.bin", "application/octet-stream", &bytes(2000), "big");
    let refused = expect(&mut ann, "error");
    assert_eq!((refused["code"].as_str(), refused["ref"].as_str()), (Some("too_large"), Some("big")), "{refused}");
    assert!(
        ann.sync().iter().all(|e| e["type"] == "presence"),
        "the refused upload's bytes were skipped without a word"
    );
    kim.expect_quiet();
    assert_eq!(server.metric("history_stored_total"), 0, "nothing stored");
    // Exactly the limit is fine, and the connection works as before.
    upload(&mut ann, ("room", "lobby"), "ok.bin", "application/octet-stream", &bytes(1024), "ok");
    expect(&mut ann, "file");
    assert_eq!(expect(&mut ann, "ack")["cid"], "ok");
    let mut lu = JsonClient::join(&server, "lobby", "lu");
    let history = expect(&mut lu, "history");
    assert_eq!(history["messages"].as_array().unwrap().len(), 1, "only the file that fit: {history}");
    assert_eq!(history["messages"][0]["name"], "ok.bin");
}

#[test]
fn hostile_names_and_types_are_data() {
    let _watchdog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("files-hostile");
    let server = start(&dir, &[]);
    let mut ann = join(&server, "lobby", "ann");
    let mut kim = join(&server, "lobby", "kim");
    // Refused: a path, a line break, a type that is not type/subtype. Nothing reaches kim.
    for (name, mime) in [
        ("../../etc/passwd", "text/plain"),
        ("..\\..\\boot.ini", "text/plain"),
        ("two\nlines", "text/plain"),
        ("..", "text/plain"),
        ("x.html", "text/html; charset=utf-8"),
        ("x.html", "<script>"),
    ] {
        upload(&mut ann, ("room", "lobby"), name, mime, b"<script>alert(1)</script>", "h");
        let error = expect(&mut ann, "error");
        assert_eq!(
            (error["code"].as_str(), error["ref"].as_str()),
            (Some("bad_field"), Some("h")),
            "{name:?} {mime:?}"
        );
    }
    assert!(ann.sync().iter().all(|e| e["type"] == "presence"));
    kim.expect_quiet();
    // Accepted as data, unchanged: markup in a name, SVG and HTML types.
    let cases = [
        ("<img src=x onerror=alert(1)>.png", "image/png"),
        ("drawing.svg", "image/svg+xml"),
        ("page.html", "text/html"),
    ];
    let payload = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>";
    for (name, mime) in cases {
        upload(&mut ann, ("room", "lobby"), name, mime, payload, name);
        let (seen, _) = kim.wait_for(|e| e["type"] == "file");
        assert_eq!((seen["name"].as_str(), seen["mime"].as_str()), (Some(name), Some(mime)));
        let (head, fetched) = fetch(&mut kim, seen["id"].as_u64().unwrap()).expect("fetch");
        assert_eq!((head["name"].as_str(), head["mime"].as_str()), (Some(name), Some(mime)));
        assert_eq!(fetched, payload);
    }
    // Nothing but the database was written next to it: no file of any client's name.
    let mut files: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert!(files.iter().all(|f| f.starts_with("x.db")), "{files:?}");
}

#[test]
fn a_direct_file_reaches_its_two_users_on_every_connection_and_no_one_else() {
    let _watchdog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("files-dm");
    let server = auth_server(&dir);
    let mut alice = token_client(&server, "lobby", "alice", json!({}));
    let mut alice_phone = token_client(&server, "lobby", "alice", json!({}));
    let mut bob = token_client(&server, "lobby", "bob", json!({}));
    let mut bob_tab = token_client(&server, "games", "bob", json!({}));
    let mut carol = token_client(&server, "lobby", "carol", json!({}));
    upload(&mut alice, ("to", "bob"), "note.txt", "text/plain", b"for bob only", "d1");
    let own = expect(&mut alice, "file");
    let id = own["id"].as_u64().unwrap();
    assert_eq!(own["to"], "bob");
    assert!(own.get("room").is_none(), "{own}");
    assert_eq!(expect(&mut alice, "ack")["id"], id);
    for (who, client) in [("alice's phone", &mut alice_phone), ("bob", &mut bob), ("bob's tab", &mut bob_tab)] {
        let (seen, _) = client.wait_for(|e| e["type"] == "file");
        assert_eq!(seen, own, "{who}");
    }
    carol.expect_quiet();
    assert_eq!(fetch(&mut bob_tab, id).expect("bob fetches").1, b"for bob only");
    assert_eq!(fetch(&mut alice_phone, id).expect("alice fetches").1, b"for bob only");
    assert_eq!(fetch_refused(&mut carol, id), "not_found", "to anyone else a direct file does not exist");
    // A raw recipient gets the notice line.
    let mut raw = TextClient::open(&server, &format!("/lobby?token={}", token("dan", json!({}))));
    upload(&mut alice, ("to", "dan"), "n.txt", "text/plain", b"x", "d2");
    let line = raw.recv();
    assert!(line.starts_with("file alice n.txt 1 id="), "{line}");
    assert_eq!(upload_refusal(&mut alice, ("to", "nobody")), "no_such_user");
}

#[test]
fn busy_at_the_upload_cap() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-uploads", "1"]); // --no-history: files still relayed
    let mut ann = join(&server, "lobby", "ann");
    let mut kim = join(&server, "lobby", "kim");
    let body = bytes(100);
    ann.send(json!({"type": "file", "room": "lobby", "name": "a", "mime": "a/b", "size": 100, "cid": "a"}));
    ann.ws.send(Message::binary(body[..50].to_vec())).unwrap();
    assert!(ann.sync().iter().all(|e| e["type"] == "presence"), "half an upload: nothing yet");
    // The server's one upload slot is taken: kim is told busy (its bytes are skipped).
    upload(&mut kim, ("room", "lobby"), "b", "a/b", &body, "k");
    let busy = expect(&mut kim, "error");
    assert_eq!((busy["code"].as_str(), busy["ref"].as_str()), (Some("busy"), Some("k")), "{busy}");
    assert!(kim.sync().iter().all(|e| e["type"] == "presence"));
    // One upload at a time per connection, too (a binary frame now would be the open
    // upload's: the second header is refused, the first upload goes on).
    ann.send(json!({"type": "file", "room": "lobby", "name": "b", "mime": "a/b", "size": 1, "cid": "second"}));
    let busy = expect(&mut ann, "error");
    assert_eq!((busy["code"].as_str(), busy["ref"].as_str()), (Some("busy"), Some("second")), "{busy}");
    ann.ws.send(Message::binary(body[50..].to_vec())).unwrap();
    assert_eq!(expect(&mut ann, "file")["size"], 100);
    assert_eq!(expect(&mut ann, "ack")["cid"], "a");
    let (seen, _) = kim.wait_for(|e| e["type"] == "file");
    // The slot is free again; without history there is nothing to fetch.
    upload(&mut kim, ("room", "lobby"), "b", "a/b", &body, "k2");
    expect(&mut kim, "file");
    assert_eq!(expect(&mut kim, "ack")["cid"], "k2");
    assert_eq!(fetch_refused(&mut kim, seen["id"].as_u64().unwrap()), "no_history");
    // A connection that ends mid-upload gives its slot back.
    ann.send(json!({"type": "file", "room": "lobby", "name": "a", "mime": "a/b", "size": 100, "cid": "gone"}));
    ann.sync();
    ann.close();
    upload(&mut kim, ("room", "lobby"), "c", "a/b", &body, "k3");
    let (_, _) = kim.wait_for(|e| e["type"] == "ack" && e["cid"] == "k3");
}

#[test]
fn tokens_decide_who_may_share_and_fetch() {
    let _watchdog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("files-tokens");
    let server = auth_server(&dir);
    let mut alice = token_client(&server, "secret", "alice", json!({}));
    let mut reader =
        token_client(&server, "secret", "rita", json!({"rooms": ["secret", "lobby"], "publish": ["lobby"]}));
    let mut outsider = token_client(&server, "lobby", "otto", json!({"rooms": ["lobby"]}));
    let mut visitor = token_client(&server, "lobby", "vic", json!({"rooms": ["lobby", "secret"]}));
    upload(&mut alice, ("room", "secret"), "plan.pdf", "application/pdf", b"%PDF-1.7", "s");
    let id = expect(&mut alice, "file")["id"].as_u64().unwrap();
    expect(&mut alice, "ack");
    reader.wait_for(|e| e["type"] == "file");
    // May read the room: may fetch, member or not. May not: forbidden.
    assert_eq!(fetch(&mut reader, id).expect("member").1, b"%PDF-1.7");
    assert_eq!(fetch(&mut visitor, id).expect("may read, not a member").1, b"%PDF-1.7");
    assert_eq!(fetch_refused(&mut outsider, id), "forbidden");
    // Sharing takes the same permission as send.
    assert_eq!(upload_refusal(&mut reader, ("room", "secret")), "forbidden");
    assert_eq!(upload_refusal(&mut outsider, ("room", "secret")), "not_member");
    reader.expect_quiet();
}

// ----- helpers for the token tests -------------------------------------------------------

/// The shared secret of the servers with tokens here.
const SECRET: &str = "a test secret that is long enough for HS256 (32+ bytes)";

/// A server with tokens on, history in `dir`.
fn auth_server(dir: &TempDir) -> Server {
    let secret = dir.file("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let db = dir.file("x.db");
    Server::start(&["--jwt-secret-file", &secret, "--db", &db])
}

/// A token for `sub` valid for an hour, with extra claims.
fn token(sub: &str, extra: Value) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let mut claims = json!({"sub": sub, "exp": exp});
    claims.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A JSON client of `sub` in `room`, past `welcome`, `joined` and the history page.
fn token_client(server: &Server, room: &str, sub: &str, claims: Value) -> JsonClient {
    let mut client = JsonClient::open(server, &format!("/{room}?token={}", token(sub, claims)));
    client.expect_welcome(room);
    expect(&mut client, "joined");
    expect(&mut client, "history");
    client
}

/// A one-byte upload that must be refused: its error code.
fn upload_refusal(client: &mut JsonClient, place: (&str, &str)) -> String {
    upload(client, place, "x", "a/b", b"x", "refused");
    let (error, _) = client.wait_for(|e| e["type"] == "error" && e["ref"] == "refused");
    error["code"].as_str().unwrap().to_owned()
}
