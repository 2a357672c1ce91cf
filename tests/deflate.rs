//! permessage-deflate (RFC 7692) over real sockets: what the 101 answers to each offer,
//! compressed broadcasts to a mixed room (encoded once per codec), the limits on what a
//! client sends compressed, and the memory an idle compressing connection holds.
//!
//! The server's compressed frames are inflated here with `flate2` directly, not with
//! the server's own `Inflater`, so the two sides are checked against each other.

mod common;

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;

use common::*;

/// What `pollcast` answers to an offer when it accepts with no parameters of the
/// client's: both windows reset per message.
const BOTH_RESET: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// RSV1, the "Per-Message Compressed" bit (RFC 7692 §6).
const RSV1: u8 = 0x40;
/// RFC 7692 §7.2.1: the tail a sync flush ends with, removed by the sender.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// A line comfortably over the default threshold (128 bytes) that compresses well.
const LONG: &str = "the quick brown fox jumps over the lazy dog, again and again and again; \
                    the quick brown fox jumps over the lazy dog, again and again and again";

// ----- helpers -------------------------------------------------------------------------

/// Upgrades to `path` with `extra` header lines; returns the response head and, for a
/// 101, the connection.
fn handshake(server: &Server, path: &str, extra: &str) -> (String, Option<RawWs>) {
    let mut stream = raw_connect(server);
    let (head, rest) = raw_handshake(&mut stream, upgrade_request(path, extra).as_bytes());
    let upgraded = head.starts_with("HTTP/1.1 101 ");
    (head, upgraded.then(|| RawWs::from_parts(stream, rest)))
}

/// A connection to `path` that offered permessage-deflate and had it accepted.
fn open_deflate(server: &Server, path: &str, extra: &str) -> RawWs {
    let (head, ws) = handshake(server, path, &format!("Sec-WebSocket-Extensions: permessage-deflate\r\n{extra}"));
    assert_eq!(extension_answer(&head).as_deref(), Some(BOTH_RESET), "{head}");
    ws.expect("101")
}

/// A plain connection to `path` (no extension offered).
fn open_plain(server: &Server, path: &str, extra: &str) -> RawWs {
    let (head, ws) = handshake(server, path, extra);
    assert_eq!(extension_answer(&head), None, "{head}");
    ws.expect("101")
}

/// The `Sec-WebSocket-Extensions` value of a response head, if it has one.
fn extension_answer(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("Sec-WebSocket-Extensions").then(|| value.trim().to_owned())
    })
}

/// A message compressed as RFC 7692 §7.2.1 says: raw DEFLATE, sync flush, tail removed.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress.compress_vec(payload, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// RFC 7692 §7.2.2: append the tail and inflate.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false).decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

/// One masked client frame with RSV1 set: the first frame of a compressed message.
fn compressed_frame(fin: bool, opcode_bits: u8, compressed: &[u8]) -> Vec<u8> {
    let mut frame = masked_frame(fin, opcode_bits, compressed);
    frame[0] |= RSV1;
    frame
}

/// The next data message: whether its frame was compressed, and its text (inflated).
fn read_text(ws: &mut RawWs) -> (bool, String) {
    loop {
        let (rsv, frame) = ws.read_frame_rsv().expect("a frame before EOF");
        match frame.opcode {
            0x9 | 0xA => continue,
            0x1 => {
                assert!(frame.fin, "the server sends whole messages");
                let compressed = rsv == RSV1;
                assert!(rsv == 0 || compressed, "RSV bits {rsv:#x}");
                let payload = if compressed { inflate(&frame.payload) } else { frame.payload };
                return (compressed, String::from_utf8(payload).expect("text is UTF-8"));
            }
            other => panic!("expected a text frame, got opcode {other:#x}"),
        }
    }
}

/// Reads text messages until one satisfies `wanted` (JSON clients first get their
/// welcome, joined and presence envelopes).
fn read_until(ws: &mut RawWs, wanted: impl Fn(&str) -> bool) -> (bool, String) {
    for _ in 0..50 {
        let got = read_text(ws);
        if wanted(&got.1) {
            return got;
        }
    }
    panic!("the awaited message never came");
}

fn json_message_text(envelope: &str) -> Option<String> {
    let value: Value = serde_json::from_str(envelope).ok()?;
    (value["type"] == "message").then(|| value["text"].as_str().unwrap_or_default().to_owned())
}

const JSON: &str = "Sec-WebSocket-Protocol: pollcast.v1\r\n";

/// `RssAnon` of a process in KiB: its heap (and stacks), what connections cost.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("RssAnon value")
}

// ----- negotiation ---------------------------------------------------------------------

#[test]
fn each_offer_gets_its_exact_answer() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    // (header lines offered, the answer: Some(value), None = declined, or Err(status))
    let table: &[(&str, Result<Option<&str>, u16>)] = &[
        ("", Ok(None)),
        // Firefox offers no parameter; Chrome adds client_max_window_bits, which needs no answer.
        ("Sec-WebSocket-Extensions: permessage-deflate\r\n", Ok(Some(BOTH_RESET))),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            Ok(Some(BOTH_RESET)),
        ),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n",
            Ok(Some(BOTH_RESET)),
        ),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
            Ok(Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            )),
        ),
        // Over two header lines, after an extension we do not know.
        (
            "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12\r\n",
            Ok(Some(BOTH_RESET)),
        ),
        // Declined (RFC 7692 §7: unknown parameter, bad value, duplicate), not refused.
        ("Sec-WebSocket-Extensions: permessage-deflate; foo\r\n", Ok(None)),
        ("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16\r\n", Ok(None)),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_no_context_takeover\r\n",
            Ok(None),
        ),
        ("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n", Ok(None)),
        // Not an extension list at all: 400.
        ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=\"10\r\n", Err(400)),
        ("Sec-WebSocket-Extensions: permessage deflate\r\n", Err(400)),
        ("Sec-WebSocket-Extensions: permessage-deflate, ; x\r\n", Err(400)),
    ];
    for (offer, expected) in table {
        let (head, _) = handshake(&server, "/", offer);
        match expected {
            Ok(answer) => {
                assert_eq!(status_of(&head), 101, "{offer:?}: {head}");
                assert_eq!(extension_answer(&head).as_deref(), *answer, "{offer:?}: {head}");
            }
            Err(status) => assert_eq!(status_of(&head), *status, "{offer:?}: {head}"),
        }
    }
    assert_eq!(server.metric("deflate_upgrades_total"), 5);
}

#[test]
fn with_deflate_off_no_offer_is_read() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--deflate", "off"]);
    for offer in ["permessage-deflate", "permessage deflate"] {
        let (head, _) = handshake(&server, "/", &format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        assert_eq!(status_of(&head), 101, "{head}");
        assert_eq!(extension_answer(&head), None, "{head}");
    }
    // And RSV1 stays a protocol error.
    let mut ws = open_plain(&server, "/", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    ws.send(&compressed_frame(true, 0x1, &deflate(LONG.as_bytes())));
    assert_eq!(ws.read_close_code(), 1002);
}

// ----- sending: encode once ------------------------------------------------------------

#[test]
fn a_mixed_room_gets_each_form_and_each_is_compressed_once() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start_logging("pollcast=trace", &[]);
    let mut raw_plain = open_plain(&server, "/mixed?name=rp", "");
    let mut raw_z = [open_deflate(&server, "/mixed?name=rz1", ""), open_deflate(&server, "/mixed?name=rz2", "")];
    let mut json_plain = open_plain(&server, "/mixed?name=jp", JSON);
    let mut json_z = [open_deflate(&server, "/mixed?name=jz1", JSON), open_deflate(&server, "/mixed?name=jz2", JSON)];
    let mut sender = open_plain(&server, "/mixed?name=sender", "");
    let before = server.metric("deflate_compressed_total");

    sender.send(&masked_frame(true, 0x1, LONG.as_bytes()));
    assert_eq!(read_text(&mut raw_plain), (false, LONG.to_owned()));
    for ws in &mut raw_z {
        assert_eq!(read_text(ws), (true, LONG.to_owned()), "raw members that agreed get it compressed");
    }
    let (compressed, envelope) = read_until(&mut json_plain, |t| json_message_text(t).is_some());
    assert!(!compressed);
    assert_eq!(json_message_text(&envelope).as_deref(), Some(LONG));
    for ws in &mut json_z {
        let (compressed, envelope) = read_until(ws, |t| json_message_text(t).is_some());
        assert!(compressed, "JSON members that agreed get the envelope compressed");
        assert_eq!(json_message_text(&envelope).as_deref(), Some(LONG));
    }
    // Once per codec (raw and JSON), not once per member (four of them).
    assert_eq!(server.metric("deflate_compressed_total") - before, 2);
    let log = server.log_text();
    let lines = log.lines().filter(|l| l.contains(&format!("deflate: {} bytes compressed once", LONG.len())));
    assert_eq!(lines.count(), 1, "the raw line, once:\n{log}");

    // A short line is not worth compressing: plain to everyone, nothing compressed.
    sender.send(&masked_frame(true, 0x1, b"hi"));
    assert_eq!(read_text(&mut raw_z[0]), (false, "hi".to_owned()));
    let (compressed, _) = read_until(&mut json_z[0], |t| json_message_text(t).as_deref() == Some("hi"));
    assert!(!compressed);
    assert_eq!(server.metric("deflate_compressed_total") - before, 2);
}

#[test]
fn a_room_without_deflate_members_never_compresses() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut a = open_plain(&server, "/quiet?name=a", "");
    let mut b = open_deflate(&server, "/quiet?name=b", ""); // the only one: it is the sender
    b.send(&compressed_frame(true, 0x1, &deflate(LONG.as_bytes())));
    assert_eq!(read_text(&mut a), (false, LONG.to_owned()));
    a.send(&masked_frame(true, 0x1, LONG.as_bytes()));
    assert_eq!(read_text(&mut b), (true, LONG.to_owned()));
    assert_eq!(server.metric("deflate_compressed_total"), 1, "only for b, never for a room of plain a");
}

#[test]
fn the_json_chat_works_compressed() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut ann = open_deflate(&server, "/lobby?name=ann", JSON);
    let mut bob = open_deflate(&server, "/lobby?name=bob", JSON);
    read_until(&mut ann, |t| t.contains("\"joined\""));
    let send = serde_json::json!({"type": "send", "room": "lobby", "text": LONG, "cid": 7}).to_string();
    ann.send(&compressed_frame(true, 0x1, &deflate(send.as_bytes())));
    let (compressed, envelope) = read_until(&mut bob, |t| json_message_text(t).is_some());
    assert!(compressed);
    let message: Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!((message["from"].as_str(), message["text"].as_str()), (Some("ann"), Some(LONG)));
    // The sender's own copy (a direct reply: uncompressed), then the ack.
    let (_, own) = read_until(&mut ann, |t| json_message_text(t).is_some());
    assert_eq!(json_message_text(&own).as_deref(), Some(LONG));
    let (_, ack) = read_until(&mut ann, |t| t.contains("\"ack\""));
    assert_eq!(serde_json::from_str::<Value>(&ack).unwrap()["cid"], 7);
    // A fragmented compressed send, a byte of DEFLATE per frame.
    let compressed = deflate(send.replace("\"cid\":7", "\"cid\":8").as_bytes());
    let mut frames = compressed_frame(false, 0x1, &compressed[..1]);
    for (i, byte) in compressed[1..].iter().enumerate() {
        frames.extend_from_slice(&masked_frame(i == compressed.len() - 2, 0x0, std::slice::from_ref(byte)));
    }
    ann.send(&frames);
    let (_, envelope) = read_until(&mut bob, |t| json_message_text(t).is_some());
    assert_eq!(json_message_text(&envelope).as_deref(), Some(LONG));
}

#[test]
fn echo_mode_echoes_compressed_to_a_client_that_agreed() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--mode", "echo"]);
    let mut z = open_deflate(&server, "/", "");
    z.send(&compressed_frame(true, 0x1, &deflate(LONG.as_bytes())));
    assert_eq!(read_text(&mut z), (true, LONG.to_owned()));
    z.send(&masked_frame(true, 0x1, LONG.as_bytes()));
    assert_eq!(read_text(&mut z), (true, LONG.to_owned()), "whatever form it came in");
    // A client whose window is 2^8 gets messages longer than 256 bytes plain.
    let mut small = open_plain(&server, "/", "");
    let long = LONG.repeat(3);
    small.send(&masked_frame(true, 0x1, long.as_bytes()));
    assert_eq!(read_text(&mut small), (false, long.clone()));
    let (head, ws) =
        handshake(&server, "/", "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n");
    assert!(extension_answer(&head).unwrap().ends_with("server_max_window_bits=8"), "{head}");
    let mut narrow = ws.unwrap();
    narrow.send(&masked_frame(true, 0x1, long.as_bytes()));
    assert_eq!(read_text(&mut narrow), (false, long));
    narrow.send(&masked_frame(true, 0x1, LONG.as_bytes()));
    assert_eq!(read_text(&mut narrow), (true, LONG.to_owned()), "fits the window");
}

// ----- receiving: the limits -----------------------------------------------------------

#[test]
fn a_decompression_bomb_is_closed_1009() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-message", "64KiB"]);
    let bomb = deflate(&vec![0u8; 100 << 16]); // 6.4 MB of zeros
    assert!(bomb.len() < 64 << 10, "{} bytes on the wire", bomb.len());
    // A compressed message first: the first one touches what any deflate connection
    // uses (the read path's pages, inflate's code and state), a megabyte or two of a
    // debug binary that moves with code layout; the bomb is judged on what it adds.
    let mut warm = open_deflate(&server, "/", "");
    warm.send(&compressed_frame(true, 0x1, &deflate(b"warm up")));
    assert!(wait_until(Duration::from_secs(5), || server.metric("messages_received_total") == 1));
    let rss_before = server.rss_kib();
    let mut ws = open_deflate(&server, "/", "");
    ws.send(&compressed_frame(true, 0x2, &bomb));
    assert_eq!(ws.read_close_code(), 1009);
    assert!(server.rss_kib() < rss_before + 2048, "the bomb was not inflated into memory");
    // Fragmented, the same.
    let mut ws = open_deflate(&server, "/", "");
    let mut frames = compressed_frame(false, 0x2, &bomb[..bomb.len() / 2]);
    frames.extend_from_slice(&masked_frame(true, 0x0, &bomb[bomb.len() / 2..]));
    ws.send(&frames);
    assert_eq!(ws.read_close_code(), 1009);
    // The server is fine and holds nothing for them.
    let mut other = open_deflate(&server, "/", "");
    other.send(&compressed_frame(true, 0x1, &deflate(b"still here")));
    assert!(wait_until(Duration::from_secs(5), || server.metric("buffered_bytes") == 0));
    let _ = &mut other;
}

#[test]
fn every_deflate_rule_gets_its_close_code() {
    let _watchdog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let hello = deflate(b"Hello");
    let cases: &[(&str, Vec<u8>, u16)] = &[
        // BTYPE = 11 (reserved, RFC 1951 §3.2.3): not DEFLATE.
        ("invalid data", compressed_frame(true, 0x1, &[0xff, 0xff, 0xff]), 1007),
        // Valid DEFLATE whose text is not UTF-8.
        ("inflated text not UTF-8", compressed_frame(true, 0x1, &deflate(&[b'a', 0xff, b'b'])), 1007),
        ("compressed ping", compressed_frame(true, 0x9, &hello), 1002),
        ("compressed close", compressed_frame(true, 0x8, &[0x03, 0xe8]), 1002),
        (
            "RSV1 on a continuation",
            {
                let mut frames = masked_frame(false, 0x1, b"Hel");
                frames.extend_from_slice(&compressed_frame(true, 0x0, b"lo"));
                frames
            },
            1002,
        ),
        (
            "RSV2",
            {
                let mut frame = masked_frame(true, 0x1, b"x");
                frame[0] |= 0x20;
                frame
            },
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut ws = open_deflate(&server, "/", "");
        ws.send(bytes);
        assert_eq!(ws.read_close_code(), *code, "{what}");
    }
}

// ----- memory --------------------------------------------------------------------------

#[test]
fn idle_compressing_connections_hold_no_inflate_state() {
    let _watchdog = watchdog(Duration::from_secs(60));
    const CONNECTIONS: usize = 300;
    let server = Server::start(&["--mode", "echo"]);
    let message = LONG.repeat(20); // 3 KB, compresses well
    let compressed = deflate(message.as_bytes());
    // Warm up: the first connections' allocations (the compressor, pools) are not what an
    // idle connection costs.
    let mut warm = open_deflate(&server, "/", "");
    warm.send(&compressed_frame(true, 0x1, &compressed));
    assert_eq!(read_text(&mut warm).1, message);
    let before = rss_anon_kib(server.pid());
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut ws = open_deflate(&server, "/", "");
        ws.send(&compressed_frame(true, 0x1, &compressed));
        assert_eq!(read_text(&mut ws), (true, message.clone()), "inflated, echoed compressed");
        clients.push(ws);
    }
    let after = rss_anon_kib(server.pid());
    let per_connection = (after.saturating_sub(before)) as f64 * 1024.0 / CONNECTIONS as f64;
    eprintln!("RssAnon {before} → {after} KiB: {per_connection:.0} bytes per idle compressing connection");
    assert_eq!(server.metric("buffered_bytes"), 0, "no inflate state, no fragment buffer");
    // An inflate state is 43 KiB (proto::deflate::INFLATE_STATE_BYTES); had each kept one,
    // this would be 300 × 43 KiB ≈ 13 MB.
    assert!(per_connection < 8192.0, "{per_connection:.0} bytes per idle connection");
    drop(clients);
}
