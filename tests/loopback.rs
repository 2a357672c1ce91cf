//! The real binary on `127.0.0.1:0`, driven over real sockets: relay, rooms, load,
//! fragmentation, every handshake and frame rejection, slow consumers, timers, signals,
//! and running out of file descriptors.
//!
//! Assertions are about order, counts and codes; timing bounds are generous (a loaded
//! 2-core box must pass). Each test holds a watchdog, and every socket has timeouts.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::{Message, WebSocket};

use common::*;

// ----- relay and rooms -----------------------------------------------------------------

#[test]
fn relay_goes_to_the_others_but_not_to_the_sender() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut a = ws_connect(&server, "/r");
    let mut b = ws_connect(&server, "/r");
    let mut c = ws_connect(&server, "/r");

    a.send(Message::text("from a")).unwrap();
    assert_eq!(ws_read_data(&mut b), b"from a");
    assert_eq!(ws_read_data(&mut c), b"from a");
    // b speaks after a's message was routed: if a had been sent its own message, it
    // would arrive before b's.
    b.send(Message::binary(vec![0xde, 0xad])).unwrap();
    assert_eq!(ws_read_data(&mut a), [0xde, 0xad]);
    assert_eq!(ws_read_data(&mut c), [0xde, 0xad]);
    c.send(Message::text("from c")).unwrap();
    assert_eq!(ws_read_data(&mut a), b"from c");
    assert_eq!(ws_read_data(&mut b), b"from c");
}

#[test]
fn rooms_are_isolated_and_slash_is_the_lobby() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut a1 = ws_connect(&server, "/a");
    let mut a2 = ws_connect(&server, "/a");
    let mut b1 = ws_connect(&server, "/b");
    let mut b2 = ws_connect(&server, "/b");
    let mut root = ws_connect(&server, "/");
    let mut lobby = ws_connect(&server, "/lobby");

    a1.send(Message::text("for room a")).unwrap();
    assert_eq!(ws_read_data(&mut a2), b"for room a");
    // Sentinels: a message sent later in each other room must be the first thing its
    // members see; had room a's message leaked, it would have arrived before.
    b2.send(Message::text("for room b")).unwrap();
    assert_eq!(ws_read_data(&mut b1), b"for room b");
    root.send(Message::text("from / to the lobby")).unwrap();
    assert_eq!(ws_read_data(&mut lobby), b"from / to the lobby", "/ and /lobby are the same room");
    lobby.send(Message::text("from /lobby")).unwrap();
    assert_eq!(ws_read_data(&mut root), b"from /lobby");
    a2.send(Message::text("a again")).unwrap();
    assert_eq!(ws_read_data(&mut a1), b"a again", "room b and lobby traffic stays out of room a");
}

#[test]
fn echo_mode_sends_the_message_back_to_its_sender_only() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--mode", "echo"]);
    let mut a = ws_connect(&server, "/e");
    let mut b = ws_connect(&server, "/e");
    a.send(Message::text("hello me")).unwrap();
    assert_eq!(ws_read_data(&mut a), b"hello me");
    a.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(ws_read_data(&mut a), [1, 2, 3]);
    b.send(Message::text("b's own")).unwrap();
    assert_eq!(ws_read_data(&mut b), b"b's own", "b never got a's messages");
}

#[test]
fn thirty_clients_times_a_hundred_messages_arrive_once_in_order() {
    const CLIENTS: usize = 30;
    const MESSAGES: usize = 100;
    let _dog = watchdog(Duration::from_secs(45));
    let server = Server::start(&[]);
    let url = server.url("/load");
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let stream = raw_connect(&server);
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let (mut ws, _) = tungstenite::client(url, stream).expect("handshake");
                // Everyone has joined the room before anyone speaks.
                barrier.wait();
                for seq in 0..MESSAGES {
                    ws.write(Message::text(format!("{me}:{seq}"))).unwrap();
                }
                ws.flush().unwrap();
                let mut next_seq = vec![0usize; CLIENTS];
                for _ in 0..(CLIENTS - 1) * MESSAGES {
                    let data = String::from_utf8(ws_read_data(&mut ws)).unwrap();
                    let (from, seq) = data.split_once(':').unwrap();
                    let (from, seq): (usize, usize) = (from.parse().unwrap(), seq.parse().unwrap());
                    assert_ne!(from, me, "client {me} got its own message back");
                    assert_eq!(seq, next_seq[from], "client {me}: sender {from} out of order or duplicated");
                    next_seq[from] += 1;
                }
                next_seq
            })
        })
        .collect();
    for (me, worker) in workers.into_iter().enumerate() {
        let counts = worker.join().expect("client thread panicked");
        for (from, &count) in counts.iter().enumerate() {
            let expected = if from == me { 0 } else { MESSAGES };
            assert_eq!(count, expected, "client {me} got {count} messages from {from}");
        }
    }
}

// ----- message size --------------------------------------------------------------------

/// A recognisable byte pattern, so a shuffled or shortened payload shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_one_mebibyte_message_in_64k_fragments_arrives_intact() {
    const TOTAL: usize = 1 << 20;
    const FRAGMENT: usize = 64 << 10;
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-message", "2MiB"]);
    let mut receiver = ws_connect(&server, "/big");
    let mut sender = RawWs::open(&server, "/big");
    let payload = pattern(TOTAL);
    let frames: Vec<u8> = payload
        .chunks(FRAGMENT)
        .enumerate()
        .flat_map(|(i, chunk)| {
            let opcode = if i == 0 { 0x2 } else { 0x0 };
            masked_frame((i + 1) * FRAGMENT >= TOTAL, opcode, chunk)
        })
        .collect();
    let writer = thread::spawn(move || {
        sender.send(&frames);
        sender
    });
    let got = ws_read_data(&mut receiver);
    assert_eq!(got.len(), TOTAL);
    assert!(got == payload, "payload differs");
    let _sender = writer.join().unwrap();
}

#[test]
fn a_frame_over_max_message_gets_1009() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]); // default --max-message 64KiB
    let mut ws = RawWs::open(&server, "/");
    ws.send(&masked_frame(true, 0x2, &pattern((64 << 10) + 1)));
    assert_eq!(ws.read_close_code(), 1009);
    ws.expect_eof();
}

#[test]
fn fragments_adding_up_to_more_than_max_message_get_1009() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-message", "2MiB"]);
    let mut ws = RawWs::open(&server, "/");
    let fragment = pattern(64 << 10);
    let mut frames = masked_frame(false, 0x2, &fragment);
    for _ in 1..32 {
        frames.extend(masked_frame(false, 0x0, &fragment)); // 2 MiB so far: still allowed
    }
    frames.extend(masked_frame(true, 0x0, b"x")); // one byte over
                                                  // The server may stop reading once it has failed us; the close is what we check.
    let _ = ws.stream.write_all(&frames);
    assert_eq!(ws.read_close_code(), 1009);
}

// ----- handshakes ----------------------------------------------------------------------

/// Sends `request` on a fresh connection and returns the whole answer.
fn answer(server: &Server, request: &str) -> String {
    let mut stream = raw_connect(server);
    stream.write_all(request.as_bytes()).expect("write request");
    read_to_eof(&mut stream)
}

#[test]
fn every_bad_handshake_gets_its_status() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let good = upgrade_request("/room", "");
    let many_headers: String = (0..70).map(|i| format!("X-Filler-{i}: y\r\n")).collect();
    let cases: Vec<(&str, String, u16)> = vec![
        ("POST", good.replacen("GET", "POST", 1), 405),
        ("HTTP/1.0", good.replacen("HTTP/1.1", "HTTP/1.0", 1), 400),
        ("no Upgrade", good.replace("Upgrade: websocket\r\n", ""), 400),
        ("Upgrade not websocket", good.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
        ("no Connection", good.replace("Connection: Upgrade\r\n", ""), 400),
        ("Connection without upgrade", good.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
        ("no key", good.replace(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n"), ""), 400),
        ("key of 5 bytes", good.replace(SAMPLE_KEY, "c2hvcnQ="), 400),
        ("key not base64", good.replace(SAMPLE_KEY, "!!!!!!!!!!!!!!!!!!!!!!!="), 400),
        ("version 8", good.replace("Version: 13", "Version: 8"), 426),
        ("head over 8 KiB", upgrade_request("/room", &format!("X-Big: {}\r\n", "b".repeat(9000))), 431),
        ("more than 64 headers", upgrade_request("/room", &many_headers), 431),
        ("space in room", good.replacen("/room", "/bad room", 1), 400),
        ("escaped space in room", good.replacen("/room", "/bad%20room", 1), 400),
        ("room of 65 chars", good.replacen("/room", &format!("/{}", "r".repeat(65)), 1), 400),
        ("nested path", good.replacen("/room", "/a/b", 1), 400),
    ];
    for (what, request, status) in cases {
        let response = answer(&server, &request);
        assert_eq!(status_of(&response), status, "{what}: {response:?}");
        if status == 426 {
            assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{what}: {response:?}");
        }
        if status == 405 {
            assert!(response.contains("\r\nAllow: GET, HEAD\r\n"), "{what}: {response:?}");
        }
    }
    // The limits are exact: 64 characters is a valid room name.
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, good.replacen("/room", &format!("/{}", "r".repeat(64)), 1).as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "room of 64 chars: {head:?}");
    assert_eq!(server.http_get("/healthz").0, 200, "server still serves");
}

#[test]
fn the_101_carries_the_rfc_accept_key() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut stream = raw_connect(&server);
    let (head, rest) = raw_handshake(&mut stream, upgrade_request("/", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    // RFC 6455 §1.3.
    assert!(head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head:?}");
    assert!(rest.is_empty(), "nothing follows the 101 unasked");
}

#[test]
fn origin_allow_list() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--allow-origin", "https://good.example"]);
    let response = answer(&server, &upgrade_request("/", "Origin: https://evil.example\r\n"));
    assert_eq!(status_of(&response), 403, "{response:?}");
    // A program that sends no Origin is not a browser; it could send any Origin it liked,
    // so refusing a missing one would protect nothing: it is let in.
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request("/", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "no Origin at all: {head:?}");
    let mut stream = raw_connect(&server);
    let (head, _) = raw_handshake(&mut stream, upgrade_request("/", "Origin: https://good.example\r\n").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "allowed origin: {head:?}");
}

#[test]
fn plain_http_endpoints() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let (status, response) = server.http_get("/healthz");
    assert_eq!(status, 200, "{response:?}");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    assert_eq!(body.trim(), "ok");
    let (status, response) = server.http_get("/");
    assert_eq!(status, 200, "{response:?}");
    assert!(response.to_ascii_lowercase().contains("content-type: text/html"), "{response:?}");
    assert!(response.to_ascii_lowercase().contains("<html"), "{response:?}");
    let (status, response) = server.http_get("/nope");
    assert_eq!(status, 404, "{response:?}");
}

#[test]
fn a_half_sent_request_is_answered_408_at_the_handshake_timeout() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--handshake-timeout", "1s"]);
    let mut stream = raw_connect(&server);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = upgrade_request("/", "");
    let started = Instant::now();
    stream.write_all(&request.as_bytes()[..request.len() / 2]).unwrap();
    let response = read_to_eof(&mut stream);
    assert_eq!(status_of(&response), 408, "{response:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "answered before the timeout");
}

#[test]
fn over_max_connections_a_client_gets_503() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--max-connections", "2"]);
    let _a = ws_connect(&server, "/");
    let _b = ws_connect(&server, "/");
    // Send nothing: the server answers as soon as it accepts, and closing a socket with
    // our unread request in it would turn its answer into a reset.
    let mut third = raw_connect(&server);
    let response = read_to_eof(&mut third);
    assert_eq!(status_of(&response), 503, "{response:?}");
}

#[test]
fn a_request_split_byte_by_byte_still_upgrades() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--mode", "echo"]);
    let mut stream = raw_connect(&server);
    for byte in upgrade_request("/", "").as_bytes() {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        thread::sleep(Duration::from_millis(1)); // separate segments, separate reads
    }
    let (head, rest) = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    let mut ws = RawWs::from_parts(stream, rest);
    ws.send(&masked_frame(true, 0x1, b"after a slow start"));
    let frame = ws.read_frame().expect("echo");
    assert_eq!((frame.opcode, frame.payload.as_slice()), (0x1, &b"after a slow start"[..]));
}

#[test]
fn frames_in_the_same_write_as_the_request_are_processed() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut receiver = ws_connect(&server, "/eager");
    let mut bytes = upgrade_request("/eager", "").into_bytes();
    bytes.extend(masked_frame(true, 0x1, b"right behind the head"));
    bytes.extend(masked_frame(true, 0x9, b"are you there"));
    let mut stream = raw_connect(&server);
    let (head, rest) = raw_handshake(&mut stream, &bytes);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    assert_eq!(ws_read_data(&mut receiver), b"right behind the head");
    let mut ws = RawWs::from_parts(stream, rest);
    let pong = ws.read_frame().expect("pong");
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"are you there"[..]));
}

// ----- frame rules ---------------------------------------------------------------------

/// Opens a raw client, sends `bytes`, and returns the close code the server answers with;
/// also checks the server then ends the TCP connection.
fn close_code_for(server: &Server, bytes: &[u8]) -> u16 {
    let mut ws = RawWs::open(server, "/");
    ws.send(bytes);
    let code = ws.read_close_code();
    ws.expect_eof();
    code
}

/// A message that arrives in the same read as a protocol error was accepted before the
/// error: it is still delivered (echoed, relayed) ahead of the Close, and nothing after.
#[test]
fn a_message_before_a_bad_frame_in_the_same_read_still_goes_out_first() {
    let _dog = watchdog(TEST_LIMIT);
    let mut unmasked = Vec::new();
    pollcast::proto::frame::write_frame(&mut unmasked, pollcast::proto::frame::OpCode::Text, b"no mask");
    let mut bytes = masked_frame(true, 0x1, b"accepted first");
    bytes.extend_from_slice(&unmasked);

    let echo = Server::start(&["--mode", "echo"]);
    let mut ws = RawWs::open(&echo, "/");
    ws.send(&bytes);
    let first = ws.read_frame().expect("the echo");
    assert_eq!((first.opcode, first.payload.as_slice()), (0x1, &b"accepted first"[..]));
    assert_eq!(ws.read_close_code(), 1002);

    let relay = Server::start(&[]);
    let mut reader = ws_connect(&relay, "/r");
    let mut sender = RawWs::open(&relay, "/r");
    sender.send(&bytes);
    assert_eq!(ws_read_data(&mut reader), b"accepted first");
    assert_eq!(sender.read_close_code(), 1002);
}

#[test]
fn every_bad_frame_gets_its_close_code() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut unmasked = Vec::new();
    pollcast::proto::frame::write_frame(&mut unmasked, pollcast::proto::frame::OpCode::Text, b"plain");
    let mut rsv1 = masked_frame(true, 0x1, b"rsv");
    rsv1[0] |= 0x40;
    let mut rsv3 = masked_frame(true, 0x2, b"rsv");
    rsv3[0] |= 0x10;
    let mut unfinished_text = masked_frame(false, 0x1, b"start");
    unfinished_text.extend(masked_frame(true, 0x1, b"new message inside"));
    let mut bad_utf8_fragments = masked_frame(false, 0x1, &[0xce]);
    bad_utf8_fragments.extend(masked_frame(true, 0x0, &[0x28]));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("RSV1 set", rsv1, 1002),
        ("RSV3 set", rsv3, 1002),
        ("reserved data opcode 0x3", masked_frame(true, 0x3, b""), 1002),
        ("reserved control opcode 0xB", masked_frame(true, 0xB, b""), 1002),
        ("ping of 126 bytes", masked_frame(true, 0x9, &[b'p'; 126]), 1002),
        ("fragmented ping", masked_frame(false, 0x9, b"p"), 1002),
        ("continuation without a start", masked_frame(true, 0x0, b"orphan"), 1002),
        ("new data frame inside a fragmented message", unfinished_text, 1002),
        ("invalid UTF-8 text", masked_frame(true, 0x1, &[0xff, 0xfe]), 1007),
        ("invalid UTF-8 across fragments", bad_utf8_fragments, 1007),
        ("close with a 1-byte body", masked_frame(true, 0x8, &[0x03]), 1002),
        ("close code 1005", masked_frame(true, 0x8, &close_payload(1005, b"")), 1002),
        ("close code 999", masked_frame(true, 0x8, &close_payload(999, b"")), 1002),
        ("close code 1015", masked_frame(true, 0x8, &close_payload(1015, b"")), 1002),
        ("close code 5000", masked_frame(true, 0x8, &close_payload(5000, b"")), 1002),
        ("close reason not UTF-8", masked_frame(true, 0x8, &close_payload(1000, &[0xff])), 1007),
    ];
    for (what, bytes, code) in cases {
        assert_eq!(close_code_for(&server, &bytes), code, "{what}");
    }
    assert_eq!(server.http_get("/healthz").0, 200, "server still serves");
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut ws = RawWs::open(&server, "/");
    for payload in [&b""[..], b"hello", &[0xab; 125]] {
        ws.send(&masked_frame(true, 0x9, payload));
        let pong = ws.read_frame().expect("pong");
        assert!(pong.fin);
        assert_eq!(pong.opcode, 0xA);
        assert_eq!(pong.payload, payload);
    }
}

#[test]
fn a_ping_between_fragments_is_answered_and_the_message_delivered() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--mode", "echo"]);
    let mut ws = RawWs::open(&server, "/");
    let mut bytes = masked_frame(false, 0x1, "κό".as_bytes());
    bytes.extend(masked_frame(true, 0x9, b"mid"));
    bytes.extend(masked_frame(false, 0x0, &"σμε".as_bytes()[..1])); // a character split in two
    bytes.extend(masked_frame(true, 0x0, &"σμε".as_bytes()[1..]));
    ws.send(&bytes);
    let pong = ws.read_frame().expect("pong");
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"mid"[..]));
    let echo = ws.read_frame().expect("echo");
    assert_eq!((echo.opcode, echo.payload.as_slice()), (0x1, "κόσμε".as_bytes()));
}

#[test]
fn a_normal_close_is_echoed_then_the_server_closes_tcp() {
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&[]);
    let mut ws = RawWs::open(&server, "/");
    ws.send(&masked_frame(true, 0x8, &close_payload(1000, b"bye")));
    assert_eq!(ws.read_close(), CloseSeen::Frame(1000, String::new()));
    ws.expect_eof();

    // An empty Close is answered with an empty Close.
    let mut ws = RawWs::open(&server, "/");
    ws.send(&masked_frame(true, 0x8, b""));
    assert_eq!(ws.read_close(), CloseSeen::Frame(1005, String::new()), "empty body echoed");
    ws.expect_eof();

    // A tungstenite client sees a clean close.
    let mut client = ws_connect(&server, "/");
    client.close(None).unwrap();
    loop {
        match client.read() {
            Ok(Message::Close(_)) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("not a clean close: {e}"),
        }
    }
}

// ----- slow consumers ------------------------------------------------------------------

/// One client never reads (a raw socket with a tiny receive buffer), one reads everything,
/// one sends 16 MiB in 16 KiB messages with `--max-queue 256KiB`. The reader must get
/// every message in order, the stalled client must be dropped as a slow consumer, and the
/// server's memory must stay bounded by the queue limit, not by what was sent.
///
/// The sender stays at most `WINDOW` messages ahead of the reader (well under the queue
/// limit), so the reader is never slow by any definition: an unthrottled sender on a
/// loaded box can outrun any reader, and dropping that reader would be right.
#[test]
fn a_slow_consumer_is_dropped_while_the_others_keep_receiving() {
    const MESSAGES: usize = 1024;
    const SIZE: usize = 16 << 10; // 16 MiB in all, far beyond what kernel buffers hold
    const WINDOW: usize = 8; // 128 KiB in flight at most, half of --max-queue
    let _dog = watchdog(Duration::from_secs(45));
    let server = Server::start(&["--max-queue", "256KiB"]);
    let mut stalled = raw_connect_tiny_rcvbuf(&server);
    let (head, _) = raw_handshake(&mut stalled, upgrade_request("/slow", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    let mut reader = ws_connect(&server, "/slow");
    let mut sender = ws_connect(&server, "/slow");
    let rss_before = server.rss_kib();

    let received = Arc::new(AtomicUsize::new(0));
    let reading = thread::spawn({
        let received = Arc::clone(&received);
        move || -> Result<(), String> {
            for seq in 0..MESSAGES {
                let data = match reader.read() {
                    Ok(Message::Binary(data)) => data,
                    Ok(other) => return Err(format!("the normal reader got {other:?} instead of message {seq}")),
                    Err(e) => return Err(format!("the normal reader failed before message {seq}: {e}")),
                };
                if data.len() != SIZE || data[..8] != (seq as u64).to_be_bytes() {
                    return Err(format!("message {seq} is wrong or out of order"));
                }
                received.store(seq + 1, Ordering::Release);
            }
            Ok(())
        }
    });
    let mut rss_max = rss_before;
    for seq in 0..MESSAGES {
        let waiting = Instant::now();
        while seq - received.load(Ordering::Acquire).min(seq) >= WINDOW && !reading.is_finished() {
            assert!(waiting.elapsed() < Duration::from_secs(10), "reader stuck before message {seq}");
            thread::sleep(Duration::from_micros(200));
        }
        if reading.is_finished() {
            break; // the reader failed; its error is reported below
        }
        let mut payload = vec![0x5a; SIZE];
        payload[..8].copy_from_slice(&(seq as u64).to_be_bytes());
        if let Err(e) = sender.send(Message::binary(payload)) {
            panic!("sender failed at message {seq}: {e}\nserver log:\n{}", server.log_text());
        }
        if seq % 64 == 0 {
            rss_max = rss_max.max(server.rss_kib());
        }
    }
    if let Err(why) = reading.join().expect("reader thread") {
        panic!("{why}\nserver log:\n{}", server.log_text());
    }
    rss_max = rss_max.max(server.rss_kib());

    // The reader got everything and the sender is sent nothing, so a drop is the stalled one.
    assert!(
        server.wait_for_log("slow consumer", Duration::from_secs(10)),
        "no slow-consumer drop logged:\n{}",
        server.log_text()
    );
    assert!(server.metric("slow_consumers_total") >= 1);
    let growth_kib = rss_max.saturating_sub(rss_before);
    assert!(growth_kib < 64 << 10, "RSS grew by {growth_kib} KiB while 16 MiB went through");
    drop(stalled);
}

/// A reader whose queue and socket are empty is not slow, even when one sender's burst
/// (several messages in one TCP segment, read in one `read`) is larger than `--max-queue`:
/// the kernel takes it all at the next flush.
#[test]
fn a_reader_that_keeps_up_survives_a_burst_larger_than_max_queue() {
    const BURST: usize = 8;
    let _dog = watchdog(TEST_LIMIT);
    // The smallest queue the server allows: one maximal message (4 KiB + header).
    let server = Server::start(&["--max-message", "4KiB", "--max-queue", "4KiB"]);
    let mut reader = ws_connect(&server, "/burst");
    let mut sender = RawWs::open(&server, "/burst");
    let burst: Vec<u8> = (0..BURST).flat_map(|i| masked_frame(true, 0x2, &[i as u8; 1024])).collect();
    sender.send(&burst); // 8 KiB in one write: one segment on loopback
    for i in 0..BURST {
        match reader.read() {
            Ok(Message::Binary(data)) => assert_eq!(data, [i as u8; 1024], "message {i}"),
            other => panic!("message {i}: got {other:?}\nserver log:\n{}", server.log_text()),
        }
    }
    assert_eq!(server.metric("slow_consumers_total"), 0);
}

// ----- timers --------------------------------------------------------------------------

#[test]
fn quiet_clients_are_pinged_and_silent_ones_closed() {
    const WATCH: Duration = Duration::from_secs(5);
    let _dog = watchdog(TEST_LIMIT);
    let server = Server::start(&["--mode", "echo", "--ping-interval", "1s", "--idle-timeout", "2s"]);
    let mut silent = RawWs::open(&server, "/");
    let opened = Instant::now();

    // The answering client: tungstenite answers each ping on its next read, so it reads
    // all the time, in its own thread, and must still be connected at the end.
    let mut answering = ws_connect(&server, "/");
    answering.get_mut().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let answering = thread::spawn(move || {
        let mut pings = 0;
        while opened.elapsed() < WATCH {
            match answering.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(other) => panic!("answering client: unexpected {other:?}"),
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("answering client lost: {e}"),
            }
        }
        (answering, pings)
    });

    // The silent client: a ping first, then (never answering) a Close 1001 or the end.
    let ping = silent.read_frame().expect("a ping before anything else");
    let pinged_after = opened.elapsed();
    assert_eq!(ping.opcode, 0x9, "first frame should be a ping, got {ping:?}");
    assert!(pinged_after >= Duration::from_millis(500), "pinged after only {pinged_after:?}");
    assert!(pinged_after < Duration::from_secs(4), "ping came after {pinged_after:?}");
    match silent.read_close() {
        CloseSeen::Frame(code, _) => assert_eq!(code, 1001),
        CloseSeen::Eof => {}
    }
    let closed_after = opened.elapsed();
    assert!(closed_after < Duration::from_secs(8), "idle close came after {closed_after:?}");

    let (mut answering, pings) = answering.join().expect("answering client");
    assert!(pings >= 2, "expected a ping about every second for {WATCH:?}, got {pings}");
    answering.get_mut().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    answering.send(Message::text("still here")).unwrap();
    assert_eq!(ws_read_data(&mut answering), b"still here");
    assert_eq!(server.metric("idle_timeouts_total"), 1, "only the silent client timed out");
}

// ----- shutdown ------------------------------------------------------------------------

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let _dog = watchdog(TEST_LIMIT);
    let mut server = Server::start(&[]);
    let mut clients: Vec<WebSocket<TcpStream>> =
        ["/", "/a", "/a", "/b"].iter().map(|p| ws_connect(&server, p)).collect();
    let mut raw = RawWs::open(&server, "/b");
    server.signal(libc::SIGTERM);
    for (i, client) in clients.iter_mut().enumerate() {
        match ws_read_until_close(client) {
            Some(code) => assert_eq!(code, WsCloseCode::Away, "client {i}"),
            None => panic!("client {i}: close frame without a code"),
        }
        let _ = client.flush(); // send tungstenite's queued Close answer
    }
    assert_eq!(raw.read_close_code(), 1001);
    raw.send(&masked_frame(true, 0x8, &close_payload(1001, b"")));
    let status = server.wait_exit(Duration::from_secs(10)).expect("server still running 10 s after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// Reads until a Close frame and returns its code.
fn ws_read_until_close(ws: &mut WebSocket<TcpStream>) -> Option<WsCloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a close, got {other:?}"),
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

// ----- file descriptors ----------------------------------------------------------------

#[test]
fn out_of_file_descriptors_neither_spins_nor_dies() {
    const CONNECTIONS: usize = 100;
    let _dog = watchdog(Duration::from_secs(45));
    let wrapper: Vec<&str> = if std::path::Path::new("/usr/bin/prlimit").exists() {
        vec!["/usr/bin/prlimit", "--nofile=64:64"]
    } else {
        // `exec` keeps the PID; $0 is the binary, "$@" its arguments.
        vec!["sh", "-c", "ulimit -n 64 && exec \"$0\" \"$@\""]
    };
    let mut server = Server::start_wrapped(&wrapper, &[]);
    assert_eq!(server.open_files_limit(), 64, "the limit is not in force");

    let connections: Vec<TcpStream> = (0..CONNECTIONS).map(|_| raw_connect(&server)).collect();
    // Give the server time to fill its table and hit EMFILE, then measure a saturated span.
    assert!(
        server.wait_for_log("os error 24", Duration::from_secs(10)), // EMFILE, as logged by accept
        "never ran out of descriptors:\n{}",
        server.log_text()
    );
    let cpu_before = server.cpu_time();
    let wall = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let cpu_used = server.cpu_time().saturating_sub(cpu_before);
    let wall_used = wall.elapsed();
    assert!(server.is_running(), "server died at EMFILE:\n{}", server.log_text());
    assert!(cpu_used < Duration::from_secs(1), "busy loop: {cpu_used:?} of CPU in {wall_used:?} while saturated");

    drop(connections);
    let mut healthy = false;
    let recovered = wait_until(Duration::from_secs(15), || {
        // A connection may still be shed while the backlog drains; try again.
        let Ok(mut stream) = TcpStream::connect(server.addr) else { return false };
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
            return false;
        }
        let mut response = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut response);
        healthy = response.starts_with(b"HTTP/1.1 200 ") && response.ends_with(b"ok\n");
        healthy
    });
    assert!(recovered && healthy, "no healthy answer after the connections closed:\n{}", server.log_text());
    assert!(server.metric("accept_fd_errors_total") >= 1);
    assert!(server.is_running());
}
