//! History on a real SQLite file in a temporary directory: replay (raw `?history=N`,
//! JSON `history` after `joined`), paging, retention and recovery with `since`, ids
//! across a restart, the exclusive lock, `--no-history`, and a SIGKILL in mid-stream
//! that must lose nothing anyone saw or was acked.
//!
//! Barriers (`sync()`) make "the server has handled (and committed) this" explicit; no
//! test sleeps for correctness or asserts on timing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use common::json::*;
use common::*;

/// `pollcast --db DIR/x.db EXTRA...`
fn start(dir: &TempDir, extra: &[&str]) -> Server {
    let db = dir.file("x.db");
    let mut args = vec!["--db", db.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A raw client types `lines` into its room; returns once the server has handled (so
/// committed) them all.
fn type_lines(client: &mut TextClient, lines: impl IntoIterator<Item = String>) {
    for line in lines {
        client.ws.write(Message::text(line)).expect("write");
    }
    client.ws.flush().expect("flush");
    let replies = client.sync();
    assert!(replies.iter().all(|r| !r.starts_with("err ")), "{replies:?}");
}

/// `m0`, `m1`, ... `m{n-1}`
fn numbered(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("m{i}"))
}

/// A `history` answer's (id, from, text) list and `more` flag.
fn page_of(envelope: &Value) -> (Vec<(u64, String, String)>, bool) {
    assert_eq!(envelope["type"], "history", "{envelope}");
    let list = envelope["messages"].as_array().unwrap_or_else(|| panic!("no messages in {envelope}"));
    assert!(list.iter().all(|m| m["type"] == "message" && m["room"] == envelope["room"]), "{envelope}");
    (messages(list), envelope["more"].as_bool().unwrap_or_else(|| panic!("no more flag in {envelope}")))
}

/// Asks for one page of `room`'s history.
fn page(client: &mut JsonClient, room: &str, before: Option<u64>, limit: usize) -> (Vec<(u64, String, String)>, bool) {
    let mut request = json!({"type": "history", "room": room, "limit": limit});
    if let Some(before) = before {
        request["before"] = json!(before);
    }
    client.send(request);
    let (answer, _) = client.wait_for(|e| e["type"] == "history" || e["type"] == "error");
    assert_eq!(answer["room"], room, "{answer}");
    page_of(&answer)
}

/// The whole of `room`'s history, oldest first, paging back `limit` at a time.
fn whole_history(client: &mut JsonClient, room: &str, limit: usize) -> Vec<(u64, String, String)> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let (mut older, more) = page(client, room, before, limit);
        assert!(older.len() <= limit, "a page of {} for limit {limit}", older.len());
        if !more {
            older.append(&mut all);
            return older;
        }
        let Some(first) = older.first() else {
            panic!("stuck: an empty page with more: true (before {before:?}), nothing to page back from");
        };
        before = Some(first.0);
        older.append(&mut all);
        all = older;
    }
}

fn texts(list: &[(u64, String, String)]) -> Vec<String> {
    list.iter().map(|(_, _, text)| text.clone()).collect()
}

/// `m{a}` ... `m{b-1}`
fn ms(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

fn assert_ids_increase(list: &[(u64, String, String)]) {
    assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "ids not strictly increasing: {list:?}");
}

// ----- replay --------------------------------------------------------------------------

#[test]
fn raw_history_replays_the_last_n_oldest_first() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("raw-replay");
    let server = start(&dir, &["--history-max", "25"]);
    let mut ann = TextClient::open(&server, "/h?name=ann");
    type_lines(&mut ann, numbered(30));

    let mut late = TextClient::open(&server, "/h?history=10");
    let replay: Vec<String> = (0..10).map(|_| late.recv()).collect();
    assert_eq!(replay, ms(20..30));
    assert!(late.sync().is_empty(), "exactly 10");

    let mut capped = TextClient::open(&server, "/h?history=1000");
    let replay: Vec<String> = (0..25).map(|_| capped.recv()).collect();
    assert_eq!(replay, ms(5..30), "capped at --history-max");
    assert!(capped.sync().is_empty());

    let mut none = TextClient::open(&server, "/h?history=0");
    assert!(none.sync().is_empty());
    let mut elsewhere = TextClient::open(&server, "/empty?history=5");
    assert!(elsewhere.sync().is_empty(), "another room's history is not replayed");

    // Binary messages are replayed as binary, in their place.
    ann.ws.send(Message::binary(vec![0u8, 1, 255])).unwrap();
    type_lines(&mut ann, ["last".to_owned()]);
    let mut mixed = TextClient::open(&server, "/h?history=3");
    assert_eq!(mixed.recv_data(), Ok("m29".to_owned()));
    assert_eq!(mixed.recv_data(), Err(vec![0u8, 1, 255]));
    assert_eq!(mixed.recv_data(), Ok("last".to_owned()));
    assert!(mixed.sync().is_empty());

    // The replay came first; live traffic follows it.
    let mut live = TextClient::open(&server, "/h?history=1");
    type_lines(&mut ann, ["live".to_owned()]);
    assert_eq!(live.recv(), "last");
    assert_eq!(live.recv(), "live");

    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request("/h?history=lots", "").as_bytes());
    assert_eq!(status_of(&head), 400, "{head}");
}

#[test]
fn json_history_follows_joined() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("json-replay");
    let server = start(&dir, &["--history-default", "7"]);
    let mut ann = TextClient::open(&server, "/h?name=ann");
    type_lines(&mut ann, numbered(20));

    // No count asked: --history-default.
    let mut jay = JsonClient::join(&server, "h", "jay");
    let (got, more) = page_of(&jay.expect("history"));
    assert_eq!(texts(&got), ms(13..20));
    assert!(more, "older messages exist");
    assert!(got.iter().all(|(_, from, _)| from == "ann"));
    assert_ids_increase(&got);

    let mut kim = JsonClient::open(&server, "/h?name=kim&history=3");
    kim.expect_welcome("h");
    kim.expect("joined");
    let (three, more) = page_of(&kim.expect("history"));
    assert_eq!((texts(&three), more), (ms(17..20), true));
    assert_eq!(three[..], got[4..], "same ids and texts for everyone");

    let mut all = JsonClient::open(&server, "/h?name=al&history=50");
    all.expect_welcome("h");
    all.expect("joined");
    let (everything, more) = page_of(&all.expect("history"));
    assert_eq!((everything.len(), more), (20, false));
    assert_eq!(texts(&everything), ms(0..20));

    // A `join` request: joined, then that room's history.
    let _ = kim.sync(); // al's arrival
    kim.send(json!({"type": "join", "room": "h2", "history": 2}));
    assert_eq!(kim.expect("joined")["room"], "h2");
    let history = kim.expect("history");
    assert_eq!(history["room"], "h2");
    assert_eq!(page_of(&history), (vec![], false));
    kim.send(json!({"type": "join", "room": "h3"}));
    let _ = kim.expect("joined");
    assert_eq!(page_of(&kim.expect("history")), (vec![], false));
    kim.expect_quiet();
}

#[test]
fn paging_back_with_before_and_limit() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("paging");
    let server = start(&dir, &["--history-max", "12"]);
    let mut jay = JsonClient::join(&server, "p", "jay");
    assert_eq!(page_of(&jay.expect("history")), (vec![], false));
    for seq in 0..25 {
        jay.say("p", &format!("m{seq}"), seq);
    }
    let mut acked = Vec::new();
    while acked.len() < 25 {
        let envelope = jay.recv();
        if envelope["type"] == "ack" {
            assert_eq!(envelope["cid"], acked.len(), "{envelope}");
            acked.push(envelope["id"].as_u64().unwrap());
        }
    }

    let mut kim = JsonClient::join(&server, "p", "kim");
    let _ = kim.expect("history");
    let (newest, more) = page(&mut kim, "p", None, 10);
    assert_eq!((texts(&newest), more), (ms(15..25), true));
    let (middle, more) = page(&mut kim, "p", Some(newest[0].0), 10);
    assert_eq!((texts(&middle), more), (ms(5..15), true));
    let (oldest, more) = page(&mut kim, "p", Some(middle[0].0), 10);
    assert_eq!((texts(&oldest), more), (ms(0..5), false));
    let (nothing, more) = page(&mut kim, "p", Some(oldest[0].0), 10);
    assert_eq!((nothing.len(), more), (0, false));

    let ids: Vec<u64> = oldest.iter().chain(&middle).chain(&newest).map(|m| m.0).collect();
    assert_eq!(ids, acked, "the pages hold exactly the acked messages, oldest first");
    let (capped, more) = page(&mut kim, "p", None, 100);
    assert_eq!((capped.len(), more), (12, true), "a page is capped at --history-max");
    let (before_mid, _) = page(&mut kim, "p", Some(acked[10]), 3);
    assert_eq!(texts(&before_mid), vec!["m7", "m8", "m9"], "before is exclusive");
    assert_eq!(whole_history(&mut kim, "p", 4).iter().map(|m| m.0).collect::<Vec<_>>(), acked);
}

/// Binary messages from raw clients are not part of a JSON history page (text only), but
/// they must not stop a JSON client paging back through the text around them: a page
/// that says `more` must give the client an id to continue from.
#[test]
fn json_paging_gets_past_binary_messages() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("binary-paging");
    let server = start(&dir, &[]);
    let mut ann = TextClient::open(&server, "/b?name=ann");
    type_lines(&mut ann, numbered(3));
    for i in 0..10u8 {
        ann.ws.write(Message::binary(vec![i])).unwrap();
    }
    type_lines(&mut ann, ["last".to_owned()]);
    let mut raw = TextClient::open(&server, "/b?history=14");
    let replay: Vec<Result<String, Vec<u8>>> = (0..14).map(|_| raw.recv_data()).collect();
    assert_eq!(replay.iter().filter(|m| m.is_err()).count(), 10, "raw replay has the binary messages");

    let mut jay = JsonClient::open(&server, "/b?name=jay&history=0");
    jay.expect_welcome("b");
    jay.expect("joined");
    let text: Vec<String> = whole_history(&mut jay, "b", 4).into_iter().map(|m| m.2).collect();
    assert_eq!(text, vec!["m0", "m1", "m2", "last"]);
}

/// What a JSON member saw live is what history says, for a JSON `send` and for a raw
/// line typed with its newline (websocat).
#[test]
fn history_envelopes_match_the_live_ones() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("same");
    let server = start(&dir, &[]);
    let mut jay = JsonClient::join(&server, "s", "jay");
    let _ = jay.expect("history");
    let mut ann = TextClient::open(&server, "/s?name=ann");
    ann.type_line("typed in websocat\n");
    let from_raw = jay.wait_for(|e| e["type"] == "message").0;
    jay.say("s", "sent as JSON", 1);
    let from_json = jay.wait_for(|e| e["type"] == "message").0;
    let _ = jay.sync();
    jay.send(json!({"type": "history", "room": "s", "limit": 2}));
    let history = jay.expect("history");
    assert_eq!(history["messages"], json!([from_raw, from_json]), "history differs from what was seen live");
}

// ----- retention and recovery ----------------------------------------------------------

#[test]
fn retention_keeps_the_newest_and_since_recovers_or_says_it_cannot() {
    const KEEP: usize = 20;
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("retention");
    let server = start(&dir, &["--history-keep", "20", "--history-max", "10"]);
    let mut ann = TextClient::open(&server, "/r?name=ann");
    let mut ids = Vec::new(); // (id, text) of every message, learnt from a watcher
    let mut watcher = JsonClient::join(&server, "r", "watcher");
    let _ = watcher.expect("history");
    for round in 0..5 {
        type_lines(&mut ann, (round * 20..round * 20 + 20).map(|i| format!("m{i}")));
        ids.extend(messages(&watcher.sync()).into_iter().map(|(id, _, text)| (id, text)));
        let kept = whole_history(&mut watcher, "r", 10);
        assert!(
            (KEEP..=KEEP + KEEP / 16).contains(&kept.len()),
            "after {} messages {} are kept",
            round * 20 + 20,
            kept.len()
        );
        let newest: Vec<(u64, String)> = kept.iter().map(|(id, _, text)| (*id, text.clone())).collect();
        assert_eq!(newest[..], ids[ids.len() - kept.len()..], "the newest, in order, without gaps");
    }
    assert_eq!(ids.len(), 100);

    // Recovery after a reconnect: a recent `since` gets exactly what came after it.
    let mut back = JsonClient::join(&server, "elsewhere", "back");
    let _ = back.expect("history");
    back.send(json!({"type": "join", "room": "r", "since": ids[94].0}));
    assert_eq!(back.expect("joined")["room"], "r");
    let answer = back.expect("history");
    assert_eq!(answer["recovered"], true, "{answer}");
    let (after, more) = page_of(&answer);
    assert_eq!(texts(&after), vec!["m95", "m96", "m97", "m98", "m99"]);
    assert!(!more);
    assert_eq!(after.iter().map(|m| m.0).collect::<Vec<_>>(), ids[95..].iter().map(|m| m.0).collect::<Vec<_>>());

    // More missed than one answer carries (--history-max 10): the first 10, and not
    // recovered, so the client knows to reload.
    let mut behind = JsonClient::join(&server, "elsewhere", "behind");
    let _ = behind.expect("history");
    behind.send(json!({"type": "join", "room": "r", "since": ids[84].0}));
    behind.expect("joined");
    let answer = behind.expect("history");
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(
        page_of(&answer),
        (ids[85..95].iter().map(|(id, text)| (*id, "ann".to_owned(), text.clone())).collect(), true)
    );

    // Up to date: nothing, recovered.
    let mut current = JsonClient::join(&server, "elsewhere", "current");
    let _ = current.expect("history");
    current.send(json!({"type": "join", "room": "r", "since": ids[99].0}));
    current.expect("joined");
    let answer = current.expect("history");
    assert_eq!((answer["recovered"].clone(), page_of(&answer)), (json!(true), (vec![], false)));

    // Older than retention: told it cannot be recovered.
    let mut stale = JsonClient::join(&server, "elsewhere", "stale");
    let _ = stale.expect("history");
    stale.send(json!({"type": "join", "room": "r", "since": ids[10].0}));
    stale.expect("joined");
    let answer = stale.expect("history");
    assert_eq!(answer["recovered"], false, "messages after m10 were trimmed: {answer}");

    // Another room is not trimmed by this one's traffic.
    let mut bo = TextClient::open(&server, "/quiet?name=bo");
    type_lines(&mut bo, numbered(5));
    type_lines(&mut ann, numbered(30));
    let mut late = TextClient::open(&server, "/quiet?history=10");
    assert_eq!((0..5).map(|_| late.recv()).collect::<Vec<_>>(), ms(0..5));
    assert!(late.sync().is_empty());
}

// ----- restarts and the lock -----------------------------------------------------------

#[test]
fn ids_keep_increasing_across_a_restart() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("restart");
    let mut server = start(&dir, &[]);
    let mut jay = JsonClient::join(&server, "x", "jay");
    let _ = jay.expect("history");
    jay.say("x", "before", "b");
    let (ack, _) = jay.wait_for(|e| e["type"] == "ack");
    let old_id = ack["id"].as_u64().unwrap();
    // The newest message before the restart is a direct message (not in any room).
    let kim = JsonClient::join(&server, "y", "kim");
    jay.send(json!({"type": "dm", "to": "kim", "text": "psst", "cid": "d"}));
    let (ack, _) = jay.wait_for(|e| e["type"] == "ack");
    let dm_id = ack["id"].as_u64().unwrap();
    assert!(dm_id > old_id);
    drop((jay, kim));
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10)).expect("still running 10 s after SIGTERM");
    assert!(status.success(), "{status}");

    let server = start(&dir, &[]);
    let mut jay = JsonClient::join(&server, "x", "jay");
    let (kept, _) = page_of(&jay.expect("history"));
    assert_eq!(kept, vec![(old_id, "jay".to_owned(), "before".to_owned())]);
    jay.say("x", "after", "a");
    let (message, _) = jay.wait_for(|e| e["type"] == "message");
    let (ack, _) = jay.wait_for(|e| e["type"] == "ack");
    let new_id = ack["id"].as_u64().unwrap();
    assert_eq!(message["id"], new_id);
    assert!(new_id > dm_id, "id {new_id} after a restart, {dm_id} before");
    // A raw line's id too.
    let mut ann = TextClient::open(&server, "/x?name=ann");
    type_lines(&mut ann, ["raw after".to_owned()]);
    let (raw, _) = jay.wait_for(|e| e["type"] == "message");
    assert!(raw["id"].as_u64().unwrap() > new_id);
}

/// `--history-index-every N`: the SQLite index catches up every N commits with no read to
/// ask for it, so after `kill -9` the database itself has the rows; with the default (64),
/// three commits are left to the next start's scan of the log. Either way nothing is lost.
#[test]
fn history_index_every_sets_how_far_the_index_may_fall_behind() {
    let _dog = watchdog(TEST_LIMIT);
    for (every, indexed) in [("1", true), ("64", false)] {
        let dir = TempDir::new("index-every");
        let mut server = start(&dir, &["--history-index-every", every]);
        let mut ann = TextClient::open(&server, "/x?name=ann");
        type_lines(&mut ann, numbered(3));
        server.signal(libc::SIGKILL);
        server.wait_exit(Duration::from_secs(10)).expect("still running 10 s after SIGKILL");
        let db = rusqlite::Connection::open(dir.file("x.db")).unwrap();
        let rows: i64 = db.query_row("SELECT count(*) FROM segments", [], |row| row.get(0)).unwrap();
        assert_eq!(rows > 0, indexed, "--history-index-every {every}: {rows} rows in the index");
        drop(db);
        let server = start(&dir, &[]);
        let mut late = TextClient::open(&server, "/x?history=10");
        let replay: Vec<String> = (0..3).map(|_| late.recv()).collect();
        assert_eq!(replay, ms(0..3), "--history-index-every {every}");
        assert!(late.sync().is_empty());
    }
}

/// A database whose index cannot catch up (a trigger refuses every row): the log runs
/// ahead four files, then commits are refused. The room still gets every message, each
/// refusal is counted in /metrics, and the log says so once per ten seconds, not once
/// per turn; and the log holds no more than those four files and the one being written.
#[test]
fn an_index_that_cannot_catch_up_stops_the_log_and_says_so_once() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("stuck-index");
    let mut server = start(&dir, &[]); // creates the schema
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(10)).expect("still running 10 s after SIGTERM");
    let db = rusqlite::Connection::open(dir.file("x.db")).unwrap();
    db.execute_batch("CREATE TRIGGER stuck BEFORE INSERT ON segments BEGIN SELECT RAISE(ABORT, 'stuck'); END;")
        .unwrap();
    drop(db);

    let server = start(&dir, &["--history-log-file-size", "4KiB", "--history-index-every", "4"]);
    let mut ann = TextClient::open(&server, "/x?name=ann");
    let mut bob = TextClient::open(&server, "/x?name=bob");
    let line = |i: usize| format!("{i:04}{}", "x".repeat(1020));
    for i in 0..100 {
        ann.type_line(&line(i));
        assert_eq!(bob.recv(), line(i), "the relay goes on");
    }
    let refused = server.metric("history_errors_total");
    assert!(refused > 50, "{refused} commits refused of 100");
    let behind = server.metric("history_index_behind_bytes");
    assert!(behind >= 8 * 2048, "{behind} bytes behind: /metrics shows how far");
    let log = server.log_text();
    assert_eq!(log.matches("commit of").count(), 1, "one line per 10 s:\n{log}");
    assert!(log.contains("behind the log"), "{log}");
    let log_dir = std::path::PathBuf::from(format!("{}-log", dir.file("x.db")));
    let bytes: u64 = std::fs::read_dir(log_dir).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
    assert!(bytes <= 5 * 4096 + 2048, "{bytes} bytes of log behind a stuck index");
}

#[test]
fn a_second_server_on_the_same_file_fails_to_start_with_a_clear_error() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("locked");
    let db = dir.file("x.db");
    let server = start(&dir, &[]);
    let mut second = Command::new(env!("CARGO_BIN_EXE_pollcast"))
        .args(["--listen", "127.0.0.1:0", "--db", &db])
        .env("RUST_LOG", "pollcast=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second pollcast");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second pollcast on {db} is still running after 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    second.stderr.take().expect("stderr").read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "the second server exited {status}; stderr:\n{stderr}");
    assert!(stderr.contains(&db), "the error does not name the file:\n{stderr}");
    assert!(stderr.contains("in use"), "the error does not say the file is in use:\n{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");

    // The first one is unaffected.
    let mut jay = JsonClient::join(&server, "x", "jay");
    let _ = jay.expect("history");
    jay.say("x", "still fine", 1);
    let (ack, _) = jay.wait_for(|e| e["type"] == "ack" || e["type"] == "error");
    assert_eq!(ack["type"], "ack", "{ack}");
}

#[test]
fn no_history_stores_and_replays_nothing() {
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("off");
    let server = start(&dir, &["--no-history"]);
    let mut ann = TextClient::open(&server, "/h?name=ann");
    type_lines(&mut ann, numbered(10));

    let mut late = TextClient::open(&server, "/h?history=5");
    assert!(late.sync().is_empty(), "no replay");
    let mut jay = JsonClient::open(&server, "/h?name=jay&history=5");
    jay.expect_welcome("h");
    jay.expect("joined");
    jay.expect_quiet();
    jay.send(json!({"type": "join", "room": "h2", "since": 1}));
    jay.expect("joined");
    jay.expect_quiet();
    jay.send(json!({"type": "history", "room": "h", "ref": "q"}));
    let error = jay.expect("error");
    assert_eq!((error["code"].as_str(), error["ref"].as_str()), (Some("no_history"), Some("q")), "{error}");
    // Acks still come, without a store.
    jay.say("h", "unstored", 1);
    let (ack, _) = jay.wait_for(|e| e["type"] == "ack");
    assert_eq!(ack["cid"], 1);
    assert!(!dir.path().join("x.db").exists(), "--no-history created the database file");
}

// ----- the crash test ------------------------------------------------------------------

/// What one client saw before the server died.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<(u64, String, String)>, // message envelopes (id, from, text), as received
    acks: Vec<(u64, u64)>,                // (cid, id)
    texts: Vec<String>,                   // plain text frames (raw clients)
    sent: usize,                          // messages written before the connection failed
}

/// Sends one message every `PERIOD` until the connection fails or `stop`, and records
/// everything received meanwhile (reading with a short timeout between sends).
fn steady_sender(mut ws: tungstenite::WebSocket<std::net::TcpStream>, json: bool, stop: Arc<AtomicBool>) -> Seen {
    const PERIOD: Duration = Duration::from_millis(2);
    let mut seen = Seen::default();
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut next_send = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if Instant::now() >= next_send {
            let text = match json {
                true => json!({"type": "send", "room": "crash", "text": format!("js-{}", seen.sent), "cid": seen.sent})
                    .to_string(),
                false => format!("rs-{}", seen.sent),
            };
            if ws.send(Message::text(text)).is_err() {
                break; // the server is gone
            }
            seen.sent += 1;
            next_send += PERIOD;
        }
        match ws.read() {
            Ok(Message::Text(text)) if json => {
                let envelope: Value = serde_json::from_str(&text).expect("JSON");
                match envelope["type"].as_str() {
                    Some("message") => seen.messages.push(message_fields(&envelope)),
                    Some("ack") => {
                        seen.acks.push((envelope["cid"].as_u64().unwrap(), envelope["id"].as_u64().unwrap()))
                    }
                    Some("presence") => {}
                    _ => panic!("sender: unexpected {envelope}"),
                }
            }
            Ok(Message::Text(text)) => seen.texts.push(text),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break, // the server is gone
        }
    }
    seen
}

/// A JSON sender and a raw sender write at a steady rate while a JSON receiver records
/// everything; the server is SIGKILLed in mid-stream and restarted on the same file.
/// Every message anyone received and every acked id must be in the history, in order;
/// each sender's stored messages are a prefix of what it sent; new ids go on upwards.
#[test]
fn a_sigkill_in_mid_stream_loses_nothing_anyone_saw() {
    let _dog = watchdog(Duration::from_secs(60));
    let dir = TempDir::new("crash");
    let args = ["--history-keep", "1000000", "--history-max", "500"];
    let mut server = start(&dir, &args);
    let mut receiver = JsonClient::join(&server, "crash", "rx");
    assert_eq!(page_of(&receiver.expect("history")), (vec![], false));
    let mut js = JsonClient::join(&server, "crash", "js");
    let _ = js.expect("history");
    let rs = TextClient::open(&server, "/crash?name=rs");
    let _ = receiver.sync();
    let _ = js.sync();

    let stop = Arc::new(AtomicBool::new(false));
    let receiving = thread::spawn(move || {
        let mut seen = Seen::default();
        while let Some(envelope) = receiver.try_recv() {
            match envelope["type"].as_str() {
                Some("message") => seen.messages.push(message_fields(&envelope)),
                Some("presence") => {}
                _ => panic!("receiver: unexpected {envelope}"),
            }
        }
        seen
    });
    let json_sending = thread::spawn({
        let stop = Arc::clone(&stop);
        move || steady_sender(js.ws, true, stop)
    });
    let raw_sending = thread::spawn({
        let stop = Arc::clone(&stop);
        move || steady_sender(rs.ws, false, stop)
    });

    thread::sleep(Duration::from_secs(1));
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).expect("SIGKILLed server still running");
    // The senders stop on their own when their connections fail; this is a backstop.
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let received = receiving.join().expect("receiver thread");
    let json_seen = json_sending.join().expect("JSON sender thread");
    let raw_seen = raw_sending.join().expect("raw sender thread");
    drop(server);

    let server = start(&dir, &args);
    let mut auditor = JsonClient::open(&server, "/crash?name=auditor&history=0");
    auditor.expect_welcome("crash");
    auditor.expect("joined");
    let history = whole_history(&mut auditor, "crash", 500);
    assert_ids_increase(&history);
    let summary = format!(
        "history {} (first {:?}, last {:?}); receiver got {}, JSON sender sent {} got {} acks, raw sender sent {} got {}",
        history.len(),
        history.first(),
        history.last(),
        received.messages.len(),
        json_seen.sent,
        json_seen.acks.len(),
        raw_seen.sent,
        raw_seen.texts.len()
    );
    eprintln!("{summary}");
    assert!(!received.messages.is_empty() && !json_seen.acks.is_empty(), "no traffic before the kill: {summary}");

    let stored: std::collections::HashMap<u64, (&str, &str)> =
        history.iter().map(|(id, from, text)| (*id, (from.as_str(), text.as_str()))).collect();
    // Everything the receiver and the JSON sender got live is stored, same id and text,
    // and they got it in history order.
    for (who, seen) in [("receiver", &received), ("JSON sender", &json_seen)] {
        assert_ids_increase(&seen.messages);
        for (id, from, text) in &seen.messages {
            assert_eq!(
                stored.get(id),
                Some(&(from.as_str(), text.as_str())),
                "{who} saw {id} {from} {text:?}; {summary}"
            );
        }
    }
    // Every acked id is stored, as the message its cid names.
    for (cid, id) in &json_seen.acks {
        assert_eq!(stored.get(id), Some(&("js", format!("js-{cid}").as_str())), "ack {cid} → {id}; {summary}");
    }
    // The raw sender got the JSON sender's messages as plain text: all stored.
    let json_texts: Vec<&str> = history.iter().filter(|m| m.1 == "js").map(|m| m.2.as_str()).collect();
    for text in &raw_seen.texts {
        assert!(json_texts.contains(&text.as_str()), "raw sender saw {text:?}, not in history; {summary}");
    }
    // Each sender's stored messages are exactly its first N, in order: nothing in the
    // middle went missing.
    for (name, prefix, sent) in [("js", "js", json_seen.sent), ("rs", "rs", raw_seen.sent)] {
        let mine: Vec<&str> = history.iter().filter(|m| m.1 == name).map(|m| m.2.as_str()).collect();
        let want: Vec<String> = (0..mine.len()).map(|i| format!("{prefix}-{i}")).collect();
        assert_eq!(mine, want, "{name}'s stored messages are not a prefix of what it sent; {summary}");
        assert!(mine.len() <= sent);
    }

    // Ids go on upwards after the crash.
    let last = history.last().map_or(0, |m| m.0);
    auditor.say("crash", "after the crash", "z");
    let (ack, _) = auditor.wait_for(|e| e["type"] == "ack");
    assert!(ack["id"].as_u64().unwrap() > last, "id {} after the crash, {last} before", ack["id"]);
}

/// Sustained traffic does not grow the disk: the message log keeps about twice the live
/// messages plus two files and a spare (`--history-log-file-size`), and the WAL stays
/// under SQLite's checkpoint size, while retention goes on answering the newest.
#[test]
fn the_message_log_and_the_wal_stay_bounded_under_sustained_traffic() {
    const FILE: u64 = 16 << 10;
    let _dog = watchdog(TEST_LIMIT);
    let dir = TempDir::new("bounded");
    let server = start(&dir, &["--history-keep", "10", "--history-log-file-size", "16KiB", "--max-text", "2KiB"]);
    let mut ann = TextClient::open(&server, "/r?name=ann");
    let mut quiet = TextClient::open(&server, "/quiet?name=bob");
    type_lines(&mut quiet, ["pinned".to_owned()]); // a room that keeps one old message
    let body = "x".repeat(1000);
    for round in 0..40 {
        type_lines(&mut ann, (0..25).map(|i| format!("{}{round}-{i}", body)));
    }
    let log = std::path::PathBuf::from(format!("{}-log", dir.file("x.db")));
    let files: Vec<u64> = std::fs::read_dir(&log).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
    let total: u64 = files.iter().sum();
    // Live: at most 10 + 10/16 messages of ~1 KiB in `r`, one in `quiet`: about 11 KiB.
    assert!(
        total <= 2 * 11 * 1024 + 3 * (FILE + 26 * 1024),
        "{} files, {total} bytes, after ~1 MB written",
        files.len()
    );
    let wal = std::fs::metadata(format!("{}-wal", dir.file("x.db"))).map_or(0, |m| m.len());
    assert!(wal <= 40 << 20, "WAL {wal} bytes");
    let mut watcher = JsonClient::join(&server, "quiet", "watcher");
    let history = watcher.expect("history");
    assert_eq!(texts(&page_of(&history).0), ["pinned"], "the quiet room's message survived compaction");
    let mut reader = JsonClient::join(&server, "r", "reader");
    let _ = reader.expect("history");
    let kept = whole_history(&mut reader, "r", 10);
    assert_eq!(kept.len(), 10);
    assert!(kept.last().unwrap().2.ends_with("39-24"));
}
