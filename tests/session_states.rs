//! `Session`, the per-connection state machine, driven with virtual time: every `Instant`
//! is `t0()` plus an offset, so no test sleeps and every deadline is exact.
//!
//! Grouped by phase (CONNECTING, OPEN, CLOSING, CLOSED), smoltcp style: each group starts
//! from a fixture constructor that puts a session in that phase, then feeds it one input.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pollcast::proto::close::{close_body, CloseCode};
use pollcast::proto::frame::{write_frame, write_masked_frame, OpCode};
use pollcast::proto::handshake::{Rejection, Status};
use pollcast::proto::message::DataKind;
use pollcast::proto::session::{Event, Limits, Phase, Session};

// ----- fixtures ------------------------------------------------------------------------

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_secs(25);
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_MESSAGE: usize = 1024;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn limits() -> Limits {
    Limits {
        max_message: MAX_MESSAGE,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ping_interval: PING_INTERVAL,
        idle_timeout: IDLE_TIMEOUT,
        close_timeout: CLOSE_TIMEOUT,
    }
}

/// The start of virtual time (one real `Instant`, taken once; only offsets matter).
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// `t0() + secs` seconds.
fn at(secs: f64) -> Instant {
    t0() + Duration::from_secs_f64(secs)
}

/// CONNECTING, accepted at t0.
fn connecting_session() -> Session {
    Session::new(7, limits(), t0())
}

/// OPEN since t0, nothing sent yet.
fn open_session() -> Session {
    let mut session = connecting_session();
    session.accept(t0());
    assert_eq!(session.phase(), Phase::Open);
    assert_eq!(session.take_outbound(), None);
    session
}

/// CLOSING: we sent a Close 1001 at t0 and wait for the peer's.
fn closing_session() -> Session {
    let mut session = open_session();
    session.close(CloseCode::GOING_AWAY, "bye", t0());
    assert_eq!(session.phase(), Phase::Closing { deadline: t0() + CLOSE_TIMEOUT });
    assert_eq!(session.take_outbound(), Some(server_close(1001, "bye")));
    session
}

/// CLOSED: the peer closed normally at t0 and we echoed it.
fn closed_session() -> Session {
    let mut session = open_session();
    let (event, _) = feed(&mut session, &masked(true, 0x8, &1000u16.to_be_bytes()), t0()).expect("close frame");
    assert_eq!(event, Closed);
    assert!(session.is_closed());
    assert_eq!(session.take_outbound(), Some(server_close(1000, "")));
    session
}

/// A masked client frame.
fn masked(fin: bool, opcode_bits: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_masked_frame(&mut out, fin, opcode_bits, payload, MASK);
    out
}

/// An unmasked server frame, as the session should produce it.
fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, opcode, payload);
    out
}

fn server_close(code: u16, reason: &str) -> Vec<u8> {
    server_frame(OpCode::Close, &close_body(CloseCode(code), reason))
}

/// What `next()` produced, owned, so a test can hold it past the input buffer.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Message(DataKind, Vec<u8>),
    Progress,
    Closed,
}
use Got::{Closed, Progress};

/// Feeds `bytes` (copied: `next` unmasks in place) and returns one event and its length.
fn feed(session: &mut Session, bytes: &[u8], now: Instant) -> Option<(Got, usize)> {
    let mut input = bytes.to_vec();
    let (event, used) = session.next(&mut input, now)?;
    Some((got(event), used))
}

/// An event as an owned `Got`.
fn got(event: Event) -> Got {
    match event {
        Event::Message(message) => Got::Message(message.kind(), message.as_bytes().to_vec()),
        Event::Progress => Progress,
        Event::Closed => Closed,
    }
}

/// Feeds `bytes` frame by frame until they are all consumed; returns every event.
fn feed_all(session: &mut Session, bytes: &[u8], now: Instant) -> Vec<Got> {
    let mut input = bytes.to_vec();
    let mut used = 0;
    let mut events = Vec::new();
    while used < input.len() {
        let Some((event, n)) = session.next(&mut input[used..], now) else {
            panic!("frames left incomplete at byte {used}");
        };
        events.push(got(event));
        used += n;
    }
    events
}

fn text(s: &str) -> Got {
    Got::Message(DataKind::Text, s.as_bytes().to_vec())
}

/// Asserts that `bytes` fails an OPEN session with close `code`: the session is CLOSED at
/// once (nothing after the bad frame is decoded), and a Close with that code is queued.
fn assert_fails_with(bytes: &[u8], code: u16) {
    let mut session = open_session();
    let mut input = bytes.to_vec();
    input.extend_from_slice(&masked(true, 0x1, b"never read")); // what follows is discarded
    let (event, used) = feed(&mut session, &input, at(1.0)).expect("a whole frame");
    assert_eq!(event, Closed, "{bytes:02x?}");
    assert!(used > 0 && used <= input.len());
    let mut rest = input[used.min(input.len())..].to_vec();
    assert!(session.next(&mut rest, at(1.0)).is_none(), "nothing is decoded after a failure");
    assert_eq!(session.phase(), Phase::Closed { deadline: at(1.0) + CLOSE_TIMEOUT });
    assert_eq!(session.close_code(), Some(CloseCode(code)));
    assert_eq!(session.violation().map(|v| v.code), Some(CloseCode(code)), "the failure is recorded");
    let out = session.take_outbound().expect("a Close frame");
    assert_eq!(out[0], 0x88, "a final Close frame");
    assert_eq!(u16::from_be_bytes([out[2], out[3]]), code, "{bytes:02x?}");
    assert_eq!(session.take_outbound(), None, "taken once");
}

// ----- CONNECTING ----------------------------------------------------------------------

mod connecting {
    use super::*;

    #[test]
    fn starts_with_the_handshake_deadline() {
        let session = connecting_session();
        assert_eq!(session.phase(), Phase::Connecting { deadline: t0() + HANDSHAKE_TIMEOUT });
        assert_eq!(session.poll_timeout(), t0() + HANDSHAKE_TIMEOUT);
        assert!(!session.is_open() && !session.is_closed());
        assert_eq!(session.phase().to_string(), "CONNECTING");
    }

    #[test]
    fn frames_are_not_decoded_before_the_upgrade() {
        let mut session = connecting_session();
        assert_eq!(feed(&mut session, &masked(true, 0x1, b"early"), at(1.0)), None);
        assert_eq!(session.take_outbound(), None);
    }

    #[test]
    fn accept_opens() {
        let mut session = connecting_session();
        session.accept(at(3.0));
        assert_eq!(session.phase(), Phase::Open);
        assert!(session.is_open());
        assert_eq!(session.take_outbound(), None, "the shell sends the 101 itself");
        // The ping interval counts from the upgrade, not from the accept.
        assert_eq!(session.poll_timeout(), at(3.0) + PING_INTERVAL);
    }

    #[test]
    fn handshake_timeout_answers_408_and_closes() {
        let mut session = connecting_session();
        session.handle_timeout(t0() + HANDSHAKE_TIMEOUT - Duration::from_millis(1));
        assert!(matches!(session.phase(), Phase::Connecting { .. }), "not yet");
        assert_eq!(session.take_outbound(), None);

        let deadline = t0() + HANDSHAKE_TIMEOUT;
        session.handle_timeout(deadline);
        assert_eq!(session.phase(), Phase::Closed { deadline: deadline + CLOSE_TIMEOUT });
        let response = String::from_utf8(session.take_outbound().expect("a response")).unwrap();
        assert!(response.starts_with("HTTP/1.1 408 "), "{response:?}");
        assert!(response.contains("Connection: close\r\n"), "{response:?}");

        session.handle_timeout(deadline);
        assert_eq!(session.take_outbound(), None, "handle_timeout is idempotent");
    }

    #[test]
    fn reject_answers_and_closes() {
        let mut session = connecting_session();
        session.reject(&Rejection { status: Status::Forbidden, why: "Origin not allowed" }, at(1.0));
        assert_eq!(session.phase(), Phase::Closed { deadline: at(1.0) + CLOSE_TIMEOUT });
        let response = String::from_utf8(session.take_outbound().unwrap()).unwrap();
        assert!(response.starts_with("HTTP/1.1 403 "), "{response:?}");
        session.accept(at(1.5));
        assert!(session.is_closed(), "a rejected connection never opens");
    }

    #[test]
    fn respond_http_sends_the_answer_and_closes() {
        let mut session = connecting_session();
        session.respond_http(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), at(1.0));
        assert!(session.is_closed());
        assert_eq!(session.take_outbound().unwrap(), b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn close_is_a_no_op() {
        let mut session = connecting_session();
        session.close(CloseCode::GOING_AWAY, "shutdown", at(1.0));
        assert!(matches!(session.phase(), Phase::Connecting { .. }));
        assert_eq!(session.take_outbound(), None, "no Close frame before the upgrade");
    }
}

// ----- OPEN ----------------------------------------------------------------------------

mod open {
    use super::*;

    #[test]
    fn a_text_frame_is_a_message() {
        let mut session = open_session();
        let frame = masked(true, 0x1, b"hello");
        assert_eq!(feed(&mut session, &frame, at(1.0)), Some((text("hello"), frame.len())));
        assert_eq!(session.take_outbound(), None);
        assert_eq!(session.phase().to_string(), "OPEN");
    }

    #[test]
    fn a_binary_frame_is_a_message() {
        let mut session = open_session();
        let frame = masked(true, 0x2, &[0, 0xff, 7]);
        assert_eq!(feed(&mut session, &frame, at(1.0)), Some((Got::Message(DataKind::Binary, vec![0, 0xff, 7]), 9)));
    }

    #[test]
    fn only_the_first_frame_is_consumed() {
        let mut session = open_session();
        let mut input = masked(true, 0x1, b"one");
        let first = input.len();
        input.extend(masked(true, 0x1, b"two"));
        assert_eq!(feed(&mut session, &input, at(1.0)), Some((text("one"), first)));
    }

    #[test]
    fn next_needs_a_whole_frame_and_consumes_nothing_before() {
        for len in [0usize, 5, 125, 126, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let frame = masked(true, 0x1, &payload);
            for cut in 0..frame.len() {
                let mut session = open_session();
                let mut input = frame[..cut].to_vec();
                assert!(session.next(&mut input, at(1.0)).is_none(), "len {len} cut {cut}");
                assert_eq!(input, frame[..cut], "len {len} cut {cut}: the input was changed");
                assert_eq!(session.phase(), Phase::Open);
                assert_eq!(session.take_outbound(), None);
                // Nothing was taken in: the full frame still decodes to the message.
                let expected = Got::Message(DataKind::Text, payload.clone());
                assert_eq!(feed(&mut session, &frame, at(1.0)), Some((expected, frame.len())), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn a_partial_frame_does_not_count_as_hearing_from_the_peer() {
        let frame = masked(true, 0x1, b"late");
        let mut session = open_session();
        let mut input = frame[..frame.len() - 1].to_vec();
        assert!(session.next(&mut input, at(30.0)).is_none());
        assert_eq!(session.poll_timeout(), t0() + PING_INTERVAL, "last heard is still t0");
    }

    #[test]
    fn fragments_with_an_interleaved_ping() {
        let mut session = open_session();
        let mut bytes = masked(false, 0x1, b"Hel");
        bytes.extend(masked(true, 0x9, b"ping!"));
        bytes.extend(masked(false, 0x0, b"l"));
        bytes.extend(masked(true, 0x0, b"o"));
        assert_eq!(feed_all(&mut session, &bytes, at(1.0)), [Progress, Progress, Progress, text("Hello")]);
        assert_eq!(session.take_outbound(), Some(server_frame(OpCode::Pong, b"ping!")));
        assert_eq!(session.buffered_capacity(), 0, "no buffer kept after the message");
    }

    #[test]
    fn ping_is_answered_with_a_pong_of_the_same_payload() {
        for payload in [&b""[..], b"x", &[0xab; 125]] {
            let mut session = open_session();
            assert_eq!(feed(&mut session, &masked(true, 0x9, payload), at(1.0)).unwrap().0, Progress);
            assert_eq!(session.take_outbound(), Some(server_frame(OpCode::Pong, payload)));
            assert!(session.is_open());
        }
    }

    #[test]
    fn two_pings_get_two_pongs_in_order() {
        let mut session = open_session();
        let mut bytes = masked(true, 0x9, b"1");
        bytes.extend(masked(true, 0x9, b"2"));
        feed_all(&mut session, &bytes, at(1.0));
        let mut expected = server_frame(OpCode::Pong, b"1");
        expected.extend(server_frame(OpCode::Pong, b"2"));
        assert_eq!(session.take_outbound(), Some(expected));
    }

    #[test]
    fn a_pong_is_taken_quietly() {
        let mut session = open_session();
        assert_eq!(feed(&mut session, &masked(true, 0xA, b"unsolicited"), at(1.0)).unwrap().0, Progress);
        assert_eq!(session.take_outbound(), None);
    }

    #[test]
    fn a_close_is_echoed_with_its_code_and_the_session_closes() {
        let mut session = open_session();
        let frame = masked(true, 0x8, &close_body(CloseCode(4000), "app done"));
        assert_eq!(feed(&mut session, &frame, at(1.0)), Some((Closed, frame.len())));
        assert_eq!(session.phase(), Phase::Closed { deadline: at(1.0) + CLOSE_TIMEOUT });
        assert_eq!(session.take_outbound(), Some(server_close(4000, "")));
        assert_eq!(session.close_code(), Some(CloseCode(4000)));
        assert_eq!(session.violation(), None, "echoing a peer's close is not a protocol error");
    }

    #[test]
    fn an_empty_close_is_echoed_empty() {
        let mut session = open_session();
        assert_eq!(feed(&mut session, &masked(true, 0x8, b""), at(1.0)).unwrap().0, Closed);
        assert_eq!(session.take_outbound(), Some(server_frame(OpCode::Close, b"")));
        assert_eq!(session.close_code(), Some(CloseCode::NORMAL));
    }

    #[test]
    fn close_starts_the_closing_handshake() {
        let mut session = open_session();
        session.close(CloseCode::POLICY, "slow consumer", at(4.0));
        assert_eq!(session.phase(), Phase::Closing { deadline: at(4.0) + CLOSE_TIMEOUT });
        assert_eq!(session.poll_timeout(), at(4.0) + CLOSE_TIMEOUT);
        assert_eq!(session.take_outbound(), Some(server_close(1008, "slow consumer")));
        assert_eq!(session.close_code(), Some(CloseCode::POLICY));
    }

    #[test]
    fn every_rule_broken_fails_with_its_code() {
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, OpCode::Text, b"plain");
        let mut rsv = masked(true, 0x1, b"x");
        rsv[0] |= 0x40;
        let top_bit_length = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        let cases: [(&str, Vec<u8>, u16); 15] = [
            ("unmasked", unmasked, 1002),
            ("RSV1", rsv, 1002),
            ("reserved opcode 0x3", masked(true, 0x3, b""), 1002),
            ("reserved opcode 0xF", masked(true, 0xF, b""), 1002),
            ("ping of 126 bytes", masked(true, 0x9, &[0; 126]), 1002),
            ("fragmented ping", masked(false, 0x9, b""), 1002),
            ("continuation without start", masked(true, 0x0, b"x"), 1002),
            ("64-bit length with the top bit", top_bit_length.to_vec(), 1002),
            ("invalid UTF-8", masked(true, 0x1, &[0xc3, 0x28]), 1007),
            ("over max message", masked(true, 0x2, &[0; MAX_MESSAGE + 1]), 1009),
            ("close with 1 byte", masked(true, 0x8, &[0x03]), 1002),
            ("close code 1005", masked(true, 0x8, &1005u16.to_be_bytes()), 1002),
            ("close code 999", masked(true, 0x8, &999u16.to_be_bytes()), 1002),
            ("close code 2999", masked(true, 0x8, &2999u16.to_be_bytes()), 1002),
            ("close reason not UTF-8", masked(true, 0x8, &[0x03, 0xe8, 0xff]), 1007),
        ];
        for (what, bytes, code) in cases {
            eprintln!("case: {what}"); // shown when a case fails
            assert_fails_with(&bytes, code);
        }
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_fails_1002() {
        let mut session = open_session();
        assert_eq!(feed(&mut session, &masked(false, 0x1, b"a"), at(1.0)).unwrap().0, Progress);
        let frame = masked(true, 0x2, b"b");
        assert_eq!(feed(&mut session, &frame, at(1.0)), Some((Closed, frame.len())));
        assert_eq!(session.close_code(), Some(CloseCode::PROTOCOL_ERROR));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let mut session = open_session();
        let frame = masked(true, 0x2, &[0; MAX_MESSAGE + 1]);
        let header_only = &frame[..8]; // 2 + 2 (length) + 4 (mask)
        let (event, _) = feed(&mut session, header_only, at(1.0)).expect("judged without the payload");
        assert_eq!(event, Closed);
        assert_eq!(session.close_code(), Some(CloseCode::TOO_BIG));
    }

    #[test]
    fn a_ping_is_sent_after_the_ping_interval() {
        let mut session = open_session();
        assert_eq!(session.poll_timeout(), t0() + PING_INTERVAL);
        session.handle_timeout(t0() + PING_INTERVAL - Duration::from_millis(1));
        assert_eq!(session.take_outbound(), None, "not yet");

        let first = t0() + PING_INTERVAL;
        session.handle_timeout(first);
        assert_eq!(session.take_outbound(), Some(server_frame(OpCode::Ping, b"")));
        session.handle_timeout(first);
        assert_eq!(session.take_outbound(), None, "idempotent at the same instant");
        assert!(session.is_open());
        // Still silent: the next ping one interval later, unless the idle timeout comes first.
        assert_eq!(session.poll_timeout(), (first + PING_INTERVAL).min(t0() + IDLE_TIMEOUT));
    }

    #[test]
    fn hearing_from_the_peer_postpones_the_ping_and_the_idle_close() {
        let mut session = open_session();
        feed(&mut session, &masked(true, 0xA, b""), at(20.0)).unwrap();
        session.handle_timeout(t0() + PING_INTERVAL);
        assert_eq!(session.take_outbound(), None, "heard at 20 s: no ping at 25 s");
        assert_eq!(session.poll_timeout(), at(20.0) + PING_INTERVAL);
        session.handle_timeout(t0() + IDLE_TIMEOUT);
        assert!(session.is_open(), "heard at 20 s: not idle at 50 s");
    }

    #[test]
    fn silence_for_the_idle_timeout_closes_with_1001() {
        let mut session = open_session();
        session.handle_timeout(t0() + PING_INTERVAL);
        assert_eq!(session.take_outbound(), Some(server_frame(OpCode::Ping, b"")));
        let idle = t0() + IDLE_TIMEOUT;
        session.handle_timeout(idle - Duration::from_millis(1));
        assert!(session.is_open());
        session.handle_timeout(idle);
        assert_eq!(session.phase(), Phase::Closing { deadline: idle + CLOSE_TIMEOUT });
        assert_eq!(session.close_code(), Some(CloseCode::GOING_AWAY));
        let out = session.take_outbound().expect("a Close");
        assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xe9], "Close 1001");
        session.handle_timeout(idle);
        assert_eq!(session.take_outbound(), None, "idempotent");
    }
}

// ----- CLOSING -------------------------------------------------------------------------

mod closing {
    use super::*;

    #[test]
    fn data_from_the_peer_is_dropped() {
        let mut session = closing_session();
        let frame = masked(true, 0x1, b"in flight");
        assert_eq!(feed(&mut session, &frame, at(0.5)), Some((Progress, frame.len())));
        let mut fragments = masked(false, 0x2, b"a");
        fragments.extend(masked(true, 0x0, b"b"));
        assert_eq!(feed_all(&mut session, &fragments, at(0.5)), [Progress, Progress]);
        assert_eq!(session.take_outbound(), None);
        assert!(matches!(session.phase(), Phase::Closing { .. }));
    }

    #[test]
    fn a_ping_gets_no_pong_after_our_close() {
        let mut session = closing_session();
        assert_eq!(feed(&mut session, &masked(true, 0x9, b"hi"), at(0.5)).unwrap().0, Progress);
        assert_eq!(session.take_outbound(), None, "RFC 6455 §5.5.1: nothing after a Close");
    }

    #[test]
    fn the_peers_close_completes_the_handshake_without_a_second_close() {
        let mut session = closing_session();
        let frame = masked(true, 0x8, &1001u16.to_be_bytes());
        assert_eq!(feed(&mut session, &frame, at(0.5)), Some((Closed, frame.len())));
        assert_eq!(session.phase(), Phase::Closed { deadline: at(0.5) + CLOSE_TIMEOUT });
        assert_eq!(session.take_outbound(), None);
        assert_eq!(session.close_code(), Some(CloseCode::GOING_AWAY), "still the code we sent");
    }

    #[test]
    fn a_broken_rule_closes_without_a_second_close() {
        let mut session = closing_session();
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, OpCode::Text, b"x");
        assert_eq!(feed(&mut session, &unmasked, at(0.5)).unwrap().0, Closed);
        assert!(session.is_closed());
        assert_eq!(session.take_outbound(), None);
    }

    #[test]
    fn the_deadline_gives_up_on_a_clean_close() {
        let mut session = closing_session();
        let deadline = t0() + CLOSE_TIMEOUT;
        session.handle_timeout(deadline - Duration::from_millis(1));
        assert!(matches!(session.phase(), Phase::Closing { .. }));
        assert!(!session.is_expired(deadline - Duration::from_millis(1)));
        session.handle_timeout(deadline);
        assert_eq!(session.phase(), Phase::Closed { deadline });
        assert!(session.is_expired(deadline), "no second linger after a close that timed out");
        assert_eq!(session.take_outbound(), None);
    }

    #[test]
    fn closing_again_is_a_no_op() {
        let mut session = closing_session();
        session.close(CloseCode::NORMAL, "again", at(1.0));
        assert_eq!(session.phase(), Phase::Closing { deadline: t0() + CLOSE_TIMEOUT });
        assert_eq!(session.take_outbound(), None);
        assert_eq!(session.phase().to_string(), "CLOSING");
    }
}

// ----- CLOSED --------------------------------------------------------------------------

mod closed {
    use super::*;

    #[test]
    fn nothing_is_decoded() {
        let mut session = closed_session();
        let mut input = masked(true, 0x1, b"late");
        let copy = input.clone();
        assert!(session.next(&mut input, at(0.5)).is_none());
        assert_eq!(input, copy, "input untouched");
        assert_eq!(session.take_outbound(), None);
        assert_eq!(session.phase().to_string(), "CLOSED");
    }

    #[test]
    fn expires_at_the_linger_deadline() {
        let session = closed_session();
        let deadline = t0() + CLOSE_TIMEOUT;
        assert_eq!(session.poll_timeout(), deadline);
        assert!(!session.is_expired(deadline - Duration::from_millis(1)));
        assert!(session.is_expired(deadline));
        assert!(session.is_expired(deadline + Duration::from_secs(60)));
    }

    #[test]
    fn timers_and_commands_change_nothing() {
        let mut session = closed_session();
        for secs in [1.0, 30.0, 100.0] {
            session.handle_timeout(at(secs));
        }
        session.accept(at(1.0));
        session.close(CloseCode::GOING_AWAY, "shutdown", at(1.0));
        session.respond_http(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), at(1.0));
        assert_eq!(session.phase(), Phase::Closed { deadline: t0() + CLOSE_TIMEOUT });
        assert_eq!(session.take_outbound(), None, "no pings, no second close, no HTTP");
        assert_eq!(session.close_code(), Some(CloseCode::NORMAL));
    }

    #[test]
    fn an_open_session_never_expires() {
        let session = open_session();
        assert!(!session.is_expired(at(1e6)));
    }
}
