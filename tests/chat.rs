//! The chat layer over real sockets: `pollcast.v1` JSON clients and raw clients sharing
//! rooms, every JSON error code on the wire, direct messages across codecs, `/commands`
//! as a websocat user types them, and presence under every way of leaving.
//!
//! Assertions are about order, counts and codes, never timing. Barriers (`sync()`) stand
//! in for sleeps: a one-off request whose answer marks "everything before it is here".

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use common::json::*;
use common::*;

// ----- fan-out across codecs -----------------------------------------------------------

/// `json_n` JSON clients (`j0`, `j1`, ...) and `raw_n` raw clients (`r0`, ...) in one
/// room; once all have joined, each sends `messages` messages (`NAME:SEQ`; raw ones end
/// their lines with "\n" as websocat does). Every client must get every other client's
/// messages exactly once and in per-sender order; raw clients get plain text (JSON
/// senders' text as is, raw senders' lines verbatim), JSON clients get `message`
/// envelopes from the sender's name, in strictly increasing id order, their own
/// messages included, and an `ack` per `send` naming their own message's id.
fn mixed_room(args: &[&str], json_n: usize, raw_n: usize, messages: usize) {
    const ROOM: &str = "mix";
    let server = Server::start(args);
    let names: Vec<String> = (0..json_n).map(|i| format!("j{i}")).chain((0..raw_n).map(|i| format!("r{i}"))).collect();
    let everyone = names.len();
    let start = Arc::new(Barrier::new(everyone));
    let done = Arc::new(Barrier::new(everyone));
    // Alternate the kinds while joining, so neither kind is all early or all late.
    let mut order = Vec::new();
    for i in 0..json_n.max(raw_n) {
        if i < json_n {
            order.push(i);
        }
        if i < raw_n {
            order.push(json_n + i);
        }
    }
    let mut workers = Vec::new();
    for &k in &order {
        let me = names[k].clone();
        let (start, done) = (Arc::clone(&start), Arc::clone(&done));
        let worker = if k < json_n {
            let client = JsonClient::join(&server, ROOM, &me);
            thread::spawn(move || json_member(client, ROOM, everyone, messages, start, done))
        } else {
            let client = TextClient::open(&server, &format!("/{ROOM}?name={me}"));
            thread::spawn(move || raw_member(client, &me, everyone, messages, start, done))
        };
        workers.push((names[k].clone(), worker));
    }
    for (name, worker) in workers {
        if worker.join().is_err() {
            panic!("client {name} failed (see its panic above); server log:\n{}", server.log_text());
        }
    }
}

/// One JSON member of `mixed_room`.
fn json_member(
    mut client: JsonClient,
    room: &str,
    everyone: usize,
    messages: usize,
    start: Arc<Barrier>,
    done: Arc<Barrier>,
) {
    let me = client.name.clone();
    start.wait();
    for seq in 0..messages {
        let send = json!({"type": "send", "room": room, "text": format!("{me}:{seq}"), "cid": seq});
        client.ws.write(Message::text(send.to_string())).expect("write");
    }
    client.ws.flush().expect("flush");
    let mut next_seq: HashMap<String, usize> = HashMap::new();
    let mut own_ids = Vec::new();
    let mut acks: Vec<(u64, u64)> = Vec::new(); // (cid, id)
    let mut last_id = 0;
    let mut received = 0;
    while received < everyone * messages || acks.len() < messages {
        let envelope = client.recv();
        match envelope["type"].as_str() {
            Some("message") => {
                assert_eq!(envelope["room"], room, "{me}: {envelope}");
                assert!(envelope["ts"].as_u64().is_some_and(|ts| ts > 0), "{me}: {envelope}");
                let (id, from, text) = message_fields(&envelope);
                assert!(id > last_id, "{me}: id {id} after {last_id}: ids must increase strictly");
                last_id = id;
                let next = next_seq.entry(from.clone()).or_default();
                assert_eq!(text, format!("{from}:{next}"), "{me}: message from {from} out of order or duplicated");
                *next += 1;
                if from == me {
                    own_ids.push(id);
                }
                received += 1;
            }
            Some("ack") => acks.push((envelope["cid"].as_u64().expect("cid"), envelope["id"].as_u64().expect("id"))),
            Some("presence" | "history") => {}
            _ => panic!("{me}: unexpected {envelope}"),
        }
    }
    assert_eq!(next_seq.len(), everyone, "{me}: heard from {:?}", next_seq.keys());
    assert!(next_seq.values().all(|&n| n == messages), "{me}: counts {next_seq:?}");
    let want: Vec<(u64, u64)> = own_ids.iter().enumerate().map(|(seq, &id)| (seq as u64, id)).collect();
    assert_eq!(acks, want, "{me}: one ack per send, in order, naming its own message's id");
    done.wait();
    let extra: Vec<Value> =
        client.sync().into_iter().filter(|e| e["type"] == "message" || e["type"] == "ack").collect();
    assert!(extra.is_empty(), "{me}: more than expected: {extra:?}");
}

/// One raw member of `mixed_room`.
fn raw_member(
    mut client: TextClient,
    me: &str,
    everyone: usize,
    messages: usize,
    start: Arc<Barrier>,
    done: Arc<Barrier>,
) {
    start.wait();
    for seq in 0..messages {
        client.ws.write(Message::text(format!("{me}:{seq}\n"))).expect("write");
    }
    client.ws.flush().expect("flush");
    let mut next_seq: HashMap<String, usize> = HashMap::new();
    for _ in 0..(everyone - 1) * messages {
        let text = client.recv();
        let (line, from_raw) = match text.strip_suffix('\n') {
            Some(line) => (line, true),
            None => (text.as_str(), false),
        };
        let (from, seq) = line.split_once(':').unwrap_or_else(|| panic!("{me}: unexpected {text:?}"));
        assert_ne!(from, me, "{me}: got its own message back");
        assert_eq!(from.starts_with('r'), from_raw, "{me}: {text:?}: raw lines verbatim, JSON text as is");
        let next = next_seq.entry(from.to_owned()).or_default();
        assert_eq!(seq, next.to_string(), "{me}: message from {from} out of order or duplicated");
        *next += 1;
    }
    done.wait();
    let extra = client.sync();
    assert!(extra.is_empty(), "{me}: more than expected: {extra:?}");
}

#[test]
fn two_json_clients_share_a_room() {
    let _dog = watchdog(TEST_LIMIT);
    mixed_room(&[], 2, 0, 50);
}

#[test]
fn a_json_and_a_raw_client_share_a_room() {
    let _dog = watchdog(TEST_LIMIT);
    mixed_room(&[], 1, 1, 50);
}

#[test]
fn fifty_json_and_raw_clients_share_a_room() {
    let _dog = watchdog(Duration::from_secs(90));
    mixed_room(&[], 35, 15, 20);
}

#[test]
fn fifty_json_and_raw_clients_share_a_room_with_history_on() {
    let _dog = watchdog(Duration::from_secs(90));
    let dir = TempDir::new("chat-fanout");
    let db = dir.file("x.db");
    mixed_room(&["--db", &db], 35, 15, 20);
}

/// README: `send` → `message` to every member, the sender included, *then* `ack`; `dm`
/// → `dm` to both sides, then `ack`.
fn own_copy_comes_before_the_ack(args: &[&str]) {
    let server = Server::start(args);
    let mut jay = JsonClient::join(&server, "order", "jay");
    let mut kim = JsonClient::join(&server, "order", "kim");
    let _ = jay.sync();
    let _ = kim.sync();
    for round in 0..5 {
        jay.say("order", &format!("hi {round}"), format!("c{round}"));
        let message = jay.expect("message");
        let ack = jay.expect("ack");
        assert_eq!((ack["cid"].clone(), ack["id"].clone()), (json!(format!("c{round}")), message["id"].clone()));
        jay.send(json!({"type": "dm", "to": "kim", "text": format!("psst {round}"), "cid": round}));
        let dm = jay.expect("dm");
        let ack = jay.expect("ack");
        assert_eq!((ack["cid"].clone(), ack["id"].clone()), (json!(round), dm["id"].clone()));
    }
    let got = kim.sync();
    assert_eq!(got.iter().filter(|e| e["type"] == "message").count(), 5);
    assert_eq!(got.iter().filter(|e| e["type"] == "dm").count(), 5);
}

#[test]
fn own_copy_comes_before_the_ack_without_history() {
    let _dog = watchdog(TEST_LIMIT);
    own_copy_comes_before_the_ack(&[]);
}

#[test]
fn own_copy_comes_before_the_ack_with_history() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("chat-ack");
    let db = dir.file("x.db");
    own_copy_comes_before_the_ack(&["--db", &db]);
}

// ----- errors --------------------------------------------------------------------------

/// Every error code a JSON client can provoke, on one connection that stays usable.
#[test]
fn every_json_error_code_arrives_without_a_disconnect() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-rooms-per-client", "2", "--max-text", "16"]);
    let mut jay = JsonClient::join(&server, "lobby", "jay");
    let mut ann = JsonClient::join(&server, "lobby", "ann");
    let _ = jay.sync(); // ann's arrival
    let long = "this text is far too long";
    let cases: Vec<(String, &str, Value)> = vec![
        ("{".into(), "bad_json", Value::Null),
        ("[1,2]".into(), "bad_json", Value::Null),
        ("not json at all".into(), "bad_json", Value::Null),
        (json!({"type": "fly", "ref": 1}).to_string(), "unknown_type", json!(1)),
        (json!({"room": "lobby", "ref": "r"}).to_string(), "unknown_type", json!("r")),
        (json!({"type": "send", "room": "lobby", "ref": "r2"}).to_string(), "bad_field", json!("r2")),
        (json!({"type": "send", "room": 5, "text": "x"}).to_string(), "bad_field", Value::Null),
        (json!({"type": "rooms", "extra": 1, "ref": 3}).to_string(), "bad_field", json!(3)),
        (json!({"type": "join", "room": "bad room", "ref": 4}).to_string(), "bad_field", json!(4)),
        (json!({"type": "nick", "name": "a b", "ref": 5}).to_string(), "bad_field", json!(5)),
        (json!({"type": "send", "room": "elsewhere", "text": "x", "cid": "c6"}).to_string(), "not_member", json!("c6")),
        (json!({"type": "leave", "room": "elsewhere", "ref": 7}).to_string(), "not_member", json!(7)),
        (json!({"type": "history", "room": "elsewhere", "ref": 8}).to_string(), "not_member", json!(8)),
        (json!({"type": "dm", "to": "nobody", "text": "x", "ref": 9}).to_string(), "no_such_user", json!(9)),
        (json!({"type": "send", "room": "lobby", "text": long, "cid": 10}).to_string(), "too_large", json!(10)),
        (json!({"type": "dm", "to": "ann", "text": long, "cid": 11}).to_string(), "too_large", json!(11)),
        (json!({"type": "nick", "name": "ann", "ref": 12}).to_string(), "name_taken", json!(12)),
        (json!({"type": "history", "room": "lobby", "ref": 13}).to_string(), "no_history", json!(13)),
    ];
    for (request, code, reference) in cases {
        jay.send_text(&request);
        let reply = jay.recv();
        assert_eq!(reply["type"], "error", "{request} → {reply}");
        assert_eq!(reply["code"], code, "{request} → {reply}");
        assert_eq!(reply["ref"], reference, "{request} → {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    }
    // Binary frames are not pollcast.v1.
    jay.ws.send(Message::binary(vec![0u8, 1, 2])).unwrap();
    assert_eq!(jay.expect("error")["code"], "bad_json");
    // Two rooms at most: lobby and one more.
    jay.send(json!({"type": "join", "room": "second"}));
    assert_eq!(jay.expect("joined")["room"], "second");
    jay.send(json!({"type": "join", "room": "third", "ref": "t"}));
    let reply = jay.expect("error");
    assert_eq!((reply["code"].as_str(), reply["ref"].as_str()), (Some("too_many_rooms"), Some("t")), "{reply}");
    // A name taken at connect time: an error, then a generated name.
    let mut twin = JsonClient::open(&server, "/lobby?name=ann");
    assert_eq!(twin.expect("error")["code"], "name_taken");
    twin.expect_welcome("lobby");
    assert_ne!(twin.name, "ann");
    twin.expect("joined");
    let twin_name = twin.name.clone();
    // An invalid name: an error, then a generated name.
    let mut odd = JsonClient::open(&server, "/other?name=a%20b");
    assert_eq!(odd.expect("error")["code"], "bad_field");
    odd.expect_welcome("other");
    assert!(!odd.name.is_empty() && odd.name != "a b", "{}", odd.name);
    odd.expect("joined");
    let _ = jay.sync(); // twin's arrival

    // Still connected, still in lobby, and nobody got anything from the failures.
    jay.say("lobby", "still here", "last");
    let (own, ack) = copy_and_ack(&mut jay, "message");
    assert_eq!(own["text"], "still here");
    assert_eq!((&ack["cid"], &ack["id"]), (&json!("last"), &own["id"]));
    let got = ann.sync();
    let relayed = messages(&got);
    assert_eq!(relayed, vec![(own["id"].as_u64().unwrap(), "jay".to_owned(), "still here".to_owned())]);
    let others: Vec<&Value> = got.iter().filter(|e| e["type"] != "message").collect();
    assert!(
        others.iter().all(|e| e["type"] == "presence" && e["event"] == "join" && e["user"] == twin_name.as_str()),
        "ann got {others:?}"
    );
    let mut everyone = vec!["ann", "jay", twin_name.as_str()];
    everyone.sort_unstable();
    assert_eq!(jay.who("lobby"), everyone);
}

// ----- direct messages -----------------------------------------------------------------

/// A `dm` envelope's (id, from, to, text).
fn dm_fields(dm: &Value) -> (u64, &str, &str, &str) {
    assert_eq!(dm["type"], "dm", "{dm}");
    assert!(dm["ts"].as_u64().is_some(), "{dm}");
    (dm["id"].as_u64().unwrap(), dm["from"].as_str().unwrap(), dm["to"].as_str().unwrap(), dm["text"].as_str().unwrap())
}

/// The sender's own copy of a `send`/`dm` (`kind`) and its `ack`, in whichever order
/// they come (the order has its own test: `own_copy_comes_before_the_ack_*`).
fn copy_and_ack(client: &mut JsonClient, kind: &str) -> (Value, Value) {
    let (first, second) = (client.recv(), client.recv());
    let (copy, ack) = if first["type"] == "ack" { (second, first) } else { (first, second) };
    assert_eq!((copy["type"].as_str(), ack["type"].as_str()), (Some(kind), Some("ack")), "{copy} {ack}");
    (copy, ack)
}

#[test]
fn direct_messages_cross_codecs_and_rooms() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut jay = JsonClient::join(&server, "a", "jay");
    let mut kim = JsonClient::join(&server, "b", "kim");
    let mut ann = TextClient::open(&server, "/c?name=ann");
    let mut bo = TextClient::open(&server, "/d?name=bo");

    // JSON → raw.
    jay.send(json!({"type": "dm", "to": "ann", "text": "psst ann", "cid": 1}));
    assert_eq!(ann.recv(), "dm jay psst ann");
    let (dm, ack) = copy_and_ack(&mut jay, "dm");
    let (id1, from, to, text) = dm_fields(&dm);
    assert_eq!((from, to, text), ("jay", "ann", "psst ann"));
    assert_eq!(ack, json!({"type": "ack", "cid": 1, "id": id1}));

    // Raw → JSON, typed as a websocat line.
    ann.type_line("/msg jay back at you\n");
    let dm = jay.expect("dm");
    let (id2, from, to, text) = dm_fields(&dm);
    assert_eq!((from, to, text), ("ann", "jay", "back at you"));
    assert_eq!(ann.recv(), format!("ok msg jay {id2}"));
    assert!(id2 > id1);

    // JSON → JSON: both sides get the same envelope, the sender an ack too.
    jay.send(json!({"type": "dm", "to": "kim", "text": "hi kim", "cid": "k"}));
    let at_kim = kim.recv();
    let (at_jay, ack) = copy_and_ack(&mut jay, "dm");
    assert_eq!(at_kim, at_jay, "both sides' views agree");
    let (id3, from, to, text) = dm_fields(&at_kim);
    assert_eq!((from, to, text), ("jay", "kim", "hi kim"));
    assert_eq!(ack, json!({"type": "ack", "cid": "k", "id": id3}));
    assert!(id3 > id2);

    // Raw → raw.
    assert_eq!(ann.ask("/msg bo hi bo\n"), format!("ok msg bo {}", id3 + 1));
    assert_eq!(bo.recv(), "dm ann hi bo");
    // Raw → nobody.
    assert_eq!(ann.ask("/msg nobody hello\n"), "err no_such_user nobody is not connected");

    // Nobody got anything else: dms go to one user, not to rooms.
    assert!(ann.sync().is_empty());
    assert!(bo.sync().is_empty());
    jay.expect_quiet();
    kim.expect_quiet();
}

// ----- /commands -----------------------------------------------------------------------

/// A websocat session: every line ends with "\n"; every reply is one tagged line.
#[test]
fn commands_typed_as_websocat_lines() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut ann = TextClient::open(&server, "/lobby?name=ann");
    let mut bo = TextClient::open(&server, "/lobby?name=bo");
    let mut jay = JsonClient::join(&server, "lobby", "jay");

    assert_eq!(ann.ask("/who\n"), "who lobby ann bo jay");
    assert_eq!(ann.ask("/rooms\n"), "rooms lobby:3");
    assert_eq!(ann.ask("/stats\n"), "stats users=3 rooms=1 messages=0");

    // Plain lines go verbatim to raw members and as envelopes (newline dropped) to JSON.
    ann.type_line("hello all\n");
    assert_eq!(bo.recv(), "hello all\n");
    let (_, from, text) = message_fields(&jay.expect("message"));
    assert_eq!((from.as_str(), text.as_str()), ("ann", "hello all"));
    ann.type_line("//slash is literal\n");
    assert_eq!(bo.recv(), "/slash is literal\n");
    assert_eq!(jay.expect("message")["text"], "/slash is literal");

    assert_eq!(ann.ask("/nick annie\n"), "ok nick annie");
    assert_eq!(
        jay.expect("presence"),
        json!({"type": "presence", "room": "lobby", "user": "annie", "event": "rename", "old": "ann"})
    );
    assert_eq!(ann.ask("/nick bo\n"), "err name_taken that name is taken");
    assert!(ann.ask("/nick\n").starts_with("err bad_field "));
    assert!(ann.ask("/nick a b\n").starts_with("err bad_field "));
    assert!(ann.ask("/msg bo\n").starts_with("err bad_field "));
    assert!(ann.ask("/frobnicate\n").starts_with("err unknown_command "));
    assert!(ann.ask("/join bad room!\n").starts_with("err bad_field "));

    // One current room: /join moves.
    assert_eq!(ann.ask("/join games\n"), "ok join games");
    assert_eq!(jay.expect("presence"), json!({"type": "presence", "room": "lobby", "user": "annie", "event": "leave"}));
    assert_eq!(ann.ask("/who\n"), "who games annie");
    assert_eq!(ann.ask("/who lobby\n"), "who lobby bo jay");
    assert_eq!(ann.ask("/rooms\n"), "rooms games:1 lobby:2");
    assert_eq!(ann.ask("/join games\n"), "ok join games", "joining the current room again is fine");

    ann.type_line("/help\n");
    let help: Vec<String> = (0..10).map(|_| ann.recv()).collect();
    assert!(help.iter().all(|l| l.starts_with("help ")), "{help:?}");
    for command in ["/nick", "/join", "/leave", "/msg", "/who", "/rooms", "/stats", "/token", "//"] {
        assert!(help.iter().any(|l| l.contains(command)), "/help does not mention {command}: {help:?}");
    }

    assert_eq!(ann.ask("/leave\n"), "ok leave games");
    assert!(ann.ask("hello?\n").starts_with("err not_member "));
    assert!(ann.ask("/leave\n").starts_with("err not_member "));
    assert_eq!(ann.ask("/rooms\n"), "rooms lobby:2");
    assert_eq!(ann.ask("/join lobby\n"), "ok join lobby");
    assert_eq!(jay.expect("presence"), json!({"type": "presence", "room": "lobby", "user": "annie", "event": "join"}));
    assert_eq!(ann.ask("/stats\n"), "stats users=3 rooms=1 messages=2");
    // After the rename the old name is free and the new one taken.
    let mut new = TextClient::open(&server, "/x?name=annie");
    assert!(new.recv().starts_with("err name_taken "), "the new name is taken");
    drop(new);
    let mut old = TextClient::open(&server, "/x?name=ann");
    assert_eq!(old.ask("/stats\n"), "stats users=4 rooms=2 messages=2", "the old name is free: no err first");
    drop(old);

    // bo saw the relayed lines and nothing of ann's commands or their replies.
    assert_eq!(bo.sync(), Vec::<String>::new());
    assert!(ann.sync().is_empty());
    jay.expect_quiet();
}

/// A raw client refused a name comes in as a guest, and its first line says why (a 409
/// before the upgrade is something websocat shows as a bare status): taken →
/// `err name_taken`, invalid → `err bad_field`. Only a malformed request is refused.
#[test]
fn a_raw_client_refused_a_name_is_told_why() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let _bo = TextClient::open(&server, "/lobby?name=bo");
    let _jay = JsonClient::join(&server, "other", "jay");
    let first_line = |path: &str| {
        let mut client = TextClient::open(&server, path);
        let line = client.ask("/stats\n");
        if line.starts_with("stats ") {
            return "ok".to_owned(); // nothing came before the answer
        }
        line
    };
    for (path, code, why) in [
        ("/lobby?name=bo", "err name_taken ", "taken in the same room"),
        ("/elsewhere?name=bo", "err name_taken ", "names are per server, not per room"),
        ("/elsewhere?name=jay", "err name_taken ", "taken by a JSON client"),
        ("/lobby?name=a%20b", "err bad_field ", "white space"),
        ("/lobby?name=a%07", "err bad_field ", "control character"),
        ("/lobby?name=", "err bad_field ", "empty"),
    ] {
        let line = first_line(path);
        assert!(line.starts_with(code) && line.contains("you are guest-"), "{why}: {line}");
    }
    let line = first_line(&format!("/lobby?name={}", "x".repeat(33)));
    assert!(line.starts_with("err bad_field "), "33 characters: {line}");
    assert_eq!(first_line(&format!("/lobby?name={}", "x".repeat(32))), "ok", "32 characters");
    assert_eq!(first_line("/lobby?name=Zo%C3%AB"), "ok", "percent-encoded UTF-8");
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request("/lobby?name=%zz", "").as_bytes());
    assert_eq!(status_of(&head), 400, "bad percent-encoding is a malformed request");
}

// ----- presence: every way of leaving --------------------------------------------------

/// `observer` (in `room`) hears `name` leave; `who` no longer lists it; and a new client
/// can take the name.
fn assert_gone(server: &Server, observer: &mut JsonClient, room: &str, name: &str) {
    let (presence, _) = observer.wait_for(|e| e["type"] == "presence" && e["user"] == name && e["event"] != "join");
    assert_eq!(presence, json!({"type": "presence", "room": room, "user": name, "event": "leave"}));
    assert!(!observer.who(room).iter().any(|m| m == name), "who still lists {name}");
    assert_name_free(server, observer, room, name);
}

/// A new raw client can take `name` (no `err name_taken`), and is then listed.
fn assert_name_free(server: &Server, observer: &mut JsonClient, room: &str, name: &str) {
    let again = TextClient::open(server, &format!("/{room}?name={name}"));
    assert!(observer.who(room).iter().any(|m| m == name), "the new {name} is not listed");
    drop(again);
    let (presence, _) = observer.wait_for(|e| e["type"] == "presence" && e["user"] == name && e["event"] == "leave");
    assert_eq!(presence["room"], room);
}

#[test]
fn presence_on_leave_requests() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut observer = JsonClient::join(&server, "p", "observer");
    let mut lea = JsonClient::join(&server, "p", "lea");
    let mut rex = TextClient::open(&server, "/p?name=rex");
    assert_eq!(observer.who("p"), vec!["lea", "observer", "rex"]);
    let _ = lea.sync(); // rex's arrival

    lea.send(json!({"type": "leave", "room": "p"}));
    assert_eq!(lea.expect("left"), json!({"type": "left", "room": "p"}));
    let (presence, _) = observer.wait_for(|e| e["type"] == "presence" && e["event"] == "leave");
    assert_eq!(presence, json!({"type": "presence", "room": "p", "user": "lea", "event": "leave"}));
    assert_eq!(observer.who("p"), vec!["observer", "rex"]);

    assert_eq!(rex.ask("/leave\n"), "ok leave p");
    let (presence, _) = observer.wait_for(|e| e["type"] == "presence" && e["event"] == "leave");
    assert_eq!(presence, json!({"type": "presence", "room": "p", "user": "rex", "event": "leave"}));
    assert_eq!(observer.who("p"), vec!["observer"]);

    // Both are still connected (and keep their names); room traffic no longer reaches them.
    observer.say("p", "after", 1);
    assert_eq!(lea.who("p"), vec!["observer"]);
    assert_eq!(rex.ask("/who p\n"), "who p observer");
    lea.expect_quiet();
    assert!(rex.sync().is_empty());
    let mut twin = TextClient::open(&server, "/p?name=lea");
    assert!(twin.recv().starts_with("err name_taken "), "lea is still connected");
}

#[test]
fn presence_on_close_frames_and_eof() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut observer = JsonClient::join(&server, "p", "observer");

    let jo = JsonClient::join(&server, "p", "jo");
    jo.close();
    assert_gone(&server, &mut observer, "p", "jo");

    let mut rae = TextClient::open(&server, "/p?name=rae");
    rae.ws.close(None).unwrap();
    loop {
        match rae.ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert_gone(&server, &mut observer, "p", "rae");

    // A TCP close without a Close frame.
    let eve = JsonClient::join(&server, "p", "eve");
    drop(eve);
    assert_gone(&server, &mut observer, "p", "eve");
    assert_eq!(observer.who("p"), vec!["observer"]);
}

/// Sets SO_LINGER 0, so dropping the socket sends a RST, not a FIN.
fn linger_zero(stream: &std::net::TcpStream) {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
}

#[test]
fn presence_on_tcp_reset() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut observer = JsonClient::join(&server, "p", "observer");

    let ray = TextClient::open(&server, "/p?name=ray");
    linger_zero(ray.ws.get_ref());
    drop(ray);
    assert_gone(&server, &mut observer, "p", "ray");

    let mut jed = JsonClient::join(&server, "p", "jed");
    jed.send(json!({"type": "join", "room": "q"}));
    jed.expect("joined");
    let mut q_observer = JsonClient::join(&server, "q", "qo");
    let _ = jed.sync();
    linger_zero(jed.ws.get_ref());
    drop(jed);
    assert_gone(&server, &mut observer, "p", "jed");
    let (presence, _) = q_observer.wait_for(|e| e["type"] == "presence" && e["event"] == "leave");
    assert_eq!(
        presence,
        json!({"type": "presence", "room": "q", "user": "jed", "event": "leave"}),
        "every room hears it"
    );
    assert_eq!(q_observer.who("q"), vec!["qo"]);
}

/// The upgrade request header that selects the JSON codec (or none for a raw client).
fn codec_header(json: bool) -> &'static str {
    if json {
        "Sec-WebSocket-Protocol: pollcast.v1\r\n"
    } else {
        ""
    }
}

/// Upgrades `stream` to `path` as a raw or JSON client, asserting a 101.
fn upgrade(mut stream: std::net::TcpStream, path: &str, json: bool) -> RawWs {
    let (head, rest) = raw_handshake(&mut stream, upgrade_request(path, codec_header(json)).as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    assert_eq!(head.contains("pollcast.v1"), json, "{head:?}");
    RawWs::from_parts(stream, rest)
}

/// A client with a tiny receive buffer never reads while a raw sender floods the room:
/// it is dropped as a slow consumer, and the room hears it leave. The observer (which
/// gets the flood too) reads all the time, and the sender stays a few messages ahead of
/// it, so the observer is never slow itself.
fn presence_on_slow_consumer_drop(json: bool) {
    const SIZE: usize = 4 << 10;
    const WINDOW: usize = 3; // 12 KiB ahead at most, well under --max-queue
    const MAX_MESSAGES: usize = 16 << 10; // 64 MiB: far past any kernel buffer
    let server = Server::start(&["--max-message", "16KiB", "--max-queue", "32KiB"]);
    let observer = JsonClient::join(&server, "flood", "observer");
    let slowpoke = upgrade(raw_connect_tiny_rcvbuf(&server), "/flood?name=slowpoke", json);
    let mut flooder = TextClient::open(&server, "/flood?name=flooder");

    let seen = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicBool::new(false));
    let watching = thread::spawn({
        let (seen, gone) = (Arc::clone(&seen), Arc::clone(&gone));
        let mut observer = observer;
        move || {
            let (presence, _) = observer.wait_for(|e| {
                if e["type"] == "message" {
                    seen.fetch_add(1, Ordering::Release);
                }
                e["type"] == "presence" && e["event"] == "leave"
            });
            gone.store(true, Ordering::Release);
            (observer, presence)
        }
    });
    let line = "x".repeat(SIZE);
    let mut sent = 0;
    while !gone.load(Ordering::Acquire) && !watching.is_finished() {
        assert!(sent < MAX_MESSAGES, "slowpoke was never dropped:\n{}", server.log_text());
        let waiting = Instant::now();
        while sent - seen.load(Ordering::Acquire).min(sent) >= WINDOW && !gone.load(Ordering::Acquire) {
            assert!(waiting.elapsed() < Duration::from_secs(10), "observer stuck at {sent}");
            thread::sleep(Duration::from_micros(200));
        }
        flooder.type_line(&line);
        sent += 1;
    }
    let (mut observer, presence) = watching.join().expect("observer");
    assert_eq!(presence, json!({"type": "presence", "room": "flood", "user": "slowpoke", "event": "leave"}));
    assert!(server.wait_for_log("slow consumer", Duration::from_secs(5)), "{}", server.log_text());
    assert_eq!(server.metric("slow_consumers_total"), 1, "only slowpoke was slow");
    assert_eq!(observer.who("flood"), vec!["flooder", "observer"]);
    assert_name_free(&server, &mut observer, "flood", "slowpoke");
    drop(slowpoke);
}

#[test]
fn presence_on_slow_consumer_drop_of_a_raw_client() {
    let _dog = watchdog(Duration::from_secs(60));
    presence_on_slow_consumer_drop(false);
}

#[test]
fn presence_on_slow_consumer_drop_of_a_json_client() {
    let _dog = watchdog(Duration::from_secs(60));
    presence_on_slow_consumer_drop(true);
}

/// A client that never answers pings is closed at the idle timeout; the room hears it
/// leave. The observer answers pings (tungstenite does, on each read) and stays.
fn presence_on_idle_timeout(json: bool) {
    let server = Server::start(&["--ping-interval", "1s", "--idle-timeout", "2s"]);
    let mut observer = JsonClient::join(&server, "idle", "observer");
    let sleepy = upgrade(raw_connect(&server), "/idle?name=sleepy", json);
    let (presence, _) = observer.wait_for(|e| e["type"] == "presence" && e["event"] == "leave");
    assert_eq!(presence, json!({"type": "presence", "room": "idle", "user": "sleepy", "event": "leave"}));
    assert_eq!(server.metric("idle_timeouts_total"), 1, "only sleepy timed out");
    assert_eq!(observer.who("idle"), vec!["observer"]);
    assert_name_free(&server, &mut observer, "idle", "sleepy");
    drop(sleepy);
}

#[test]
fn presence_on_idle_timeout_of_a_raw_client() {
    let _dog = watchdog(TEST_LIMIT);
    presence_on_idle_timeout(false);
}

#[test]
fn presence_on_idle_timeout_of_a_json_client() {
    let _dog = watchdog(TEST_LIMIT);
    presence_on_idle_timeout(true);
}
