//! `redis::Link`, one connection's state machine, driven with virtual time and byte
//! fixtures, grouped by phase (DOWN, CONNECTING, HANDSHAKE, READY): no socket, no Redis.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pollcast::redis::{Backoff, Event, Link, LinkLimits, Phase, RedisUrl, Reply};

/// The start of virtual time (one real `Instant`, taken once; only offsets matter).
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

const MS: Duration = Duration::from_millis(1);

fn limits() -> LinkLimits {
    LinkLimits { max_buffer: 1024, timeout: 1000 * MS, backoff: Backoff::new(100 * MS, 400 * MS) }
}

fn url(text: &str) -> RedisUrl {
    RedisUrl::parse(text).unwrap()
}

/// A commands link that is READY.
fn ready(t0: Instant) -> Link<u32> {
    let mut link = Link::new(&url("redis://h"), false, limits(), t0);
    link.connecting(t0);
    link.connected(t0);
    link.output().clear();
    let mut events = Vec::new();
    link.handle_bytes(b"+PONG\r\n", t0, &mut events);
    assert_eq!(events, vec![Event::Ready]);
    link
}

// ----- DOWN and CONNECTING ---------------------------------------------------------

#[test]
fn the_first_attempt_is_due_at_once() {
    let t0 = t0();
    let link: Link<u32> = Link::new(&url("redis://h"), false, limits(), t0);
    assert!(link.connect_due(t0));
    assert_eq!(link.poll_timeout(), Some(t0));
}

#[test]
fn retries_back_off_and_the_outage_is_reported_once() {
    let t0 = t0();
    let mut link: Link<u32> = Link::new(&url("redis://h"), false, limits(), t0);
    let mut delays = Vec::new();
    let mut reported = Vec::new();
    let mut now = t0;
    for _ in 0..5 {
        link.connecting(now);
        let mut events = Vec::new();
        link.fail("refused".into(), now, &mut events);
        let Some(Event::Down { outage_began, .. }) = events.pop() else { panic!("down") };
        reported.push(outage_began);
        let Phase::Down { retry_at } = link.phase() else { panic!("down") };
        delays.push((retry_at - now).as_millis());
        assert!(!link.connect_due(retry_at - MS) && link.connect_due(retry_at));
        now = retry_at;
    }
    assert_eq!(delays, [100, 200, 400, 400, 400]);
    assert_eq!(reported, [true, false, false, false, false]);
}

#[test]
fn a_connect_that_hangs_times_out() {
    let t0 = t0();
    let mut link: Link<u32> = Link::new(&url("redis://h"), false, limits(), t0);
    link.connecting(t0);
    assert_eq!(link.poll_timeout(), Some(t0 + 1000 * MS));
    let mut events = Vec::new();
    link.handle_timeout(t0 + 999 * MS, &mut events);
    assert!(events.is_empty());
    link.handle_timeout(t0 + 1000 * MS, &mut events);
    assert!(matches!(&events[..], [Event::Down { reason, .. }] if reason.contains("connecting")));
}

// ----- HANDSHAKE -------------------------------------------------------------------

#[test]
fn auth_and_select_then_ready() {
    let t0 = t0();
    let mut link: Link<u32> = Link::new(&url("redis://:pw@h/3"), false, limits(), t0);
    link.connecting(t0);
    link.connected(t0);
    assert_eq!(
        link.output().as_slice(),
        b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n".as_slice()
    );
    let mut events = Vec::new();
    link.handle_bytes(b"+OK\r\n", t0, &mut events);
    assert!(events.is_empty() && !link.is_ready());
    link.handle_bytes(b"+OK\r\n", t0, &mut events);
    assert_eq!(events, vec![Event::Ready]);
}

#[test]
fn a_refused_password_is_down_without_the_password() {
    let t0 = t0();
    let mut link: Link<u32> = Link::new(&url("redis://:hunter2@h"), true, limits(), t0);
    link.connecting(t0);
    link.connected(t0);
    let mut events = Vec::new();
    link.handle_bytes(b"-WRONGPASS invalid username-password pair\r\n", t0, &mut events);
    let [Event::Down { reason, outage_began: true }] = &events[..] else { panic!("{events:?}") };
    assert!(reason.contains("WRONGPASS") && !reason.contains("hunter2"));
}

#[test]
fn commands_wait_for_ready() {
    let t0 = t0();
    let mut link: Link<u32> = Link::new(&url("redis://h"), false, limits(), t0);
    assert_eq!(link.send(&["PING"], 7, t0), Err(7));
}

// ----- READY -----------------------------------------------------------------------

#[test]
fn pipelined_replies_settle_in_order_across_reads() {
    let t0 = t0();
    let mut link = ready(t0);
    link.send(&["INCR", "a"], 1, t0).unwrap();
    link.send(&["GET", "b"], 2, t0).unwrap();
    let mut events = Vec::new();
    link.handle_bytes(b":5\r\n$3\r\nab", t0, &mut events);
    assert_eq!(events, vec![Event::Reply(1, Reply::Integer(5))]);
    link.handle_bytes(b"c\r\n", t0, &mut events);
    assert_eq!(events[1], Event::Reply(2, Reply::BulkString(b"abc".to_vec())));
    assert_eq!(link.in_flight(), 0);
}

#[test]
fn a_drop_loses_what_is_in_flight_and_ready_resets_the_backoff() {
    let t0 = t0();
    let mut link = ready(t0);
    link.send(&["INCR", "a"], 1, t0).unwrap();
    link.send(&["INCR", "a"], 2, t0).unwrap();
    let mut events = Vec::new();
    link.fail("reset by peer".into(), t0, &mut events);
    assert_eq!(events[..2], [Event::Lost(1), Event::Lost(2)]);
    assert!(matches!(events[2], Event::Down { outage_began: true, .. }));
    assert!(link.output().is_empty());
    let Phase::Down { retry_at } = link.phase() else { panic!("down") };
    assert_eq!(retry_at - t0, 100 * MS);
}

#[test]
fn a_reply_that_never_comes_is_an_outage() {
    let t0 = t0();
    let mut link = ready(t0);
    link.send(&["PING"], 1, t0).unwrap();
    assert_eq!(link.poll_timeout(), Some(t0 + 1000 * MS));
    let mut events = Vec::new();
    link.handle_timeout(t0 + 1000 * MS, &mut events);
    assert_eq!(events[0], Event::Lost(1));
}

#[test]
fn bounds_drop_the_link() {
    let t0 = t0();
    let mut link = ready(t0);
    let big = vec![b'x'; 2000];
    assert_eq!(link.send(&[big.as_slice()], 1, t0), Ok(())); // an empty buffer takes one
    assert_eq!(link.send(&["PING"], 2, t0), Err(2)); // then it is full
    let mut events = Vec::new();
    link.handle_bytes(&vec![b'$'; 2000], t0, &mut events);
    assert!(matches!(events.last(), Some(Event::Down { reason, .. }) if reason.contains("--redis-max-buffer")));
}

#[test]
fn garbage_drops_the_link() {
    let t0 = t0();
    let mut link = ready(t0);
    let mut events = Vec::new();
    link.handle_bytes(b"?\r\n", t0, &mut events);
    assert!(matches!(events[..], [Event::Down { .. }]));
}

#[test]
fn the_subscription_link_pushes() {
    let t0 = t0();
    let mut link: Link<u32> = Link::new(&url("redis://h/5"), true, limits(), t0);
    link.connecting(t0);
    link.connected(t0);
    assert_eq!(link.output().as_slice(), b"*1\r\n$4\r\nPING\r\n".as_slice()); // no SELECT on pub/sub
    let mut events = Vec::new();
    link.handle_bytes(b"+PONG\r\n", t0, &mut events);
    link.send(&["SUBSCRIBE", "c"], 0, t0).unwrap();
    assert_eq!(link.in_flight(), 0);
    link.handle_bytes(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n", t0, &mut events);
    assert!(matches!(&events[..], [Event::Ready, Event::Push(Reply::Array(_))]));
}
