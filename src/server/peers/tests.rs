//! Tests of `peers.rs`.

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test address")
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|text| Cidr::parse(text).expect("a test range")).collect()
}

// ---- Cidr ----

#[test]
fn cidr_parsing() {
    assert_eq!(Cidr::parse("10.1.2.3/8").map(|c| c.to_string()), Ok("10.0.0.0/8".to_owned()));
    assert_eq!(Cidr::parse("127.0.0.1").map(|c| c.to_string()), Ok("127.0.0.1/32".to_owned()));
    assert_eq!(Cidr::parse("::1/128").map(|c| c.to_string()), Ok("::1/128".to_owned()));
    assert_eq!(Cidr::parse(" fd00::/8 ").map(|c| c.to_string()), Ok("fd00::/8".to_owned()));
    assert_eq!(Cidr::parse("::ffff:10.0.0.0/104").map(|c| c.to_string()), Ok("10.0.0.0/8".to_owned()));
    assert_eq!(Cidr::parse("0.0.0.0/0").map(|c| c.to_string()), Ok("0.0.0.0/0".to_owned()));
    for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/-1", "host/8", "1.2.3.4/8/8"] {
        assert!(Cidr::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!("10.0.0.0/8".parse::<Cidr>(), Cidr::parse("10.0.0.0/8"));
}

#[test]
fn cidr_membership() {
    let ten = Cidr::parse("10.0.0.0/8").expect("range");
    assert!(ten.contains(ip("10.255.0.1")));
    assert!(!ten.contains(ip("11.0.0.1")));
    assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped counts as IPv4");
    assert!(!ten.contains(ip("::1")));
    let loopback6 = Cidr::parse("::1/128").expect("range");
    assert!(loopback6.contains(ip("::1")) && !loopback6.contains(ip("::2")));
    assert!(!loopback6.contains(ip("127.0.0.1")));
    let everything = Cidr::parse("0.0.0.0/0").expect("range");
    assert!(everything.contains(ip("203.0.113.9")) && !everything.contains(ip("2001:db8::1")));
    let net = Cidr::parse("2001:db8::/32").expect("range");
    assert!(net.contains(ip("2001:db8:ffff::1")) && !net.contains(ip("2001:db9::1")));
}

// ---- client_addr ----

const PROXY: &str = "10.0.0.2";

#[test]
fn headers_from_an_untrusted_peer_are_ignored() {
    let trusted = cidrs(&["10.0.0.0/8"]);
    let peer = ip("203.0.113.7");
    assert_eq!(client_addr(peer, &trusted, &["1.2.3.4"], &["for=5.6.7.8"]), peer);
    assert_eq!(client_addr(peer, &[], &["1.2.3.4"], &[]), peer);
}

#[test]
fn right_most_untrusted_hop_is_the_client() {
    let trusted = cidrs(&["10.0.0.0/8", "::1"]);
    let proxy = ip(PROXY);
    // The client claims to be 1.1.1.1; our proxy appended what it saw, 198.51.100.4.
    assert_eq!(client_addr(proxy, &trusted, &["1.1.1.1, 198.51.100.4"], &[]), ip("198.51.100.4"));
    // Through two of our proxies.
    assert_eq!(client_addr(proxy, &trusted, &["1.1.1.1, 198.51.100.4, 10.0.0.9"], &[]), ip("198.51.100.4"));
    // Several header lines form one list.
    assert_eq!(client_addr(proxy, &trusted, &["1.1.1.1", "198.51.100.4", "10.0.0.9"], &[]), ip("198.51.100.4"));
    // Garbage and ports are handled; garbage is skipped.
    let xff = ["nonsense, 198.51.100.4:5000 , , 10.0.0.9, ;;;"];
    assert_eq!(client_addr(proxy, &trusted, &xff, &[]), ip("198.51.100.4"));
    assert_eq!(client_addr(proxy, &trusted, &["[2001:db8::7]:443"], &[]), ip("2001:db8::7"));
    // Every hop trusted: the left-most.
    assert_eq!(client_addr(proxy, &trusted, &["10.0.0.5, 10.0.0.9"], &[]), ip("10.0.0.5"));
    // No usable hop: the peer.
    assert_eq!(client_addr(proxy, &trusted, &["unknown, garbage"], &[]), proxy);
    assert_eq!(client_addr(proxy, &trusted, &[], &[]), proxy);
    // An IPv4-mapped peer is trusted as its IPv4 form, and answers are canonical.
    assert_eq!(client_addr(ip("::ffff:10.0.0.2"), &trusted, &["::ffff:198.51.100.4"], &[]), ip("198.51.100.4"));
}

#[test]
fn forwarded_header() {
    let trusted = cidrs(&["10.0.0.0/8"]);
    let proxy = ip(PROXY);
    // RFC 7239 §4's examples.
    let lines = ["for=\"_gazonk\"", "For=\"[2001:db8:cafe::17]:4711\"", "for=192.0.2.60;proto=http;by=203.0.113.43"];
    assert_eq!(client_addr(proxy, &trusted, &[], &lines), ip("192.0.2.60"));
    let lines = ["for=192.0.2.43, for=198.51.100.17;by=10.0.0.1, for=unknown"];
    assert_eq!(client_addr(proxy, &trusted, &[], &lines), ip("198.51.100.17"));
    assert_eq!(client_addr(proxy, &trusted, &[], &["for=\"[2001:db8:cafe::17]:4711\""]), ip("2001:db8:cafe::17"));
    assert_eq!(client_addr(proxy, &trusted, &[], &["for=192.0.2.60:8080"]), ip("192.0.2.60"));
    // A quoted value may hold separators.
    assert_eq!(client_addr(proxy, &trusted, &[], &["by=\"a,b;c\";for=192.0.2.60"]), ip("192.0.2.60"));
    // Obfuscated and unknown only: the peer.
    assert_eq!(client_addr(proxy, &trusted, &[], &["for=_hidden, for=unknown"]), proxy);
    // X-Forwarded-For wins when it has a usable entry.
    assert_eq!(client_addr(proxy, &trusted, &["198.51.100.1"], &["for=192.0.2.60"]), ip("198.51.100.1"));
    assert_eq!(client_addr(proxy, &trusted, &["garbage"], &["for=192.0.2.60"]), ip("192.0.2.60"));
}

// ---- PeerLimits ----

#[test]
fn connection_cap_per_address() {
    let now = Instant::now();
    let mut limits = PeerLimits::new(10, 0);
    let (flood, other) = (ip("198.51.100.4"), ip("198.51.100.5"));
    let admitted = (0..1000).filter(|_| limits.admit(flood, now).is_ok()).count();
    assert_eq!(admitted, 10);
    assert_eq!(limits.admit(flood, now), Err(Refusal::TooManyConnections { limit: 10 }));
    assert_eq!(limits.open(flood), 10, "refusals count nothing");
    assert_eq!(limits.admit(other, now), Ok(()), "another address is unaffected");
    limits.release(flood);
    assert_eq!(limits.admit(flood, now), Ok(()), "a released slot is free again");
    // The same address written as IPv4-mapped IPv6 is the same address.
    assert!(limits.admit(ip("::ffff:198.51.100.4"), now).is_err());
}

#[test]
fn entries_go_when_released_so_memory_follows_active_addresses() {
    let now = Instant::now();
    let mut limits = PeerLimits::new(3, 0);
    for i in 0..=255u8 {
        limits.admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), now).expect("admitted");
    }
    assert_eq!(limits.tracked(), 256);
    for i in 0..=255u8 {
        limits.release(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)));
    }
    assert_eq!(limits.tracked(), 0);
    limits.release(ip("192.0.2.1")); // an extra release is harmless
    assert_eq!(limits.open(ip("192.0.2.1")), 0);
}

#[test]
fn rate_bucket_bursts_then_refills() {
    let start = Instant::now();
    let mut limits = PeerLimits::new(0, 5);
    let client = ip("198.51.100.4");
    let burst = (0..100).filter(|_| limits.admit(client, start).is_ok()).count();
    assert_eq!(burst, 10, "bursts of 2 × rate");
    assert_eq!(limits.admit(client, start), Err(Refusal::TooFast { rate: 5 }));
    assert_eq!(limits.admit(client, start + Duration::from_millis(199)), Err(Refusal::TooFast { rate: 5 }));
    assert_eq!(limits.admit(client, start + Duration::from_millis(200)), Ok(()), "one token per 1/rate s");
    let later = start + Duration::from_secs(10);
    assert_eq!((0..100).filter(|_| limits.admit(client, later).is_ok()).count(), 10, "refilled, to the cap");
    assert_eq!(limits.admit(ip("198.51.100.5"), later), Ok(()), "another address has its own bucket");
}

#[test]
fn sweep_drops_idle_entries_once_their_bucket_is_full() {
    let start = Instant::now();
    let mut limits = PeerLimits::new(0, 1);
    let client = ip("198.51.100.4");
    limits.admit(client, start).expect("admitted");
    limits.release(client);
    assert_eq!(limits.tracked(), 1, "the bucket is still refilling");
    limits.sweep(start + Duration::from_millis(500));
    assert_eq!(limits.tracked(), 1);
    limits.sweep(start + Duration::from_secs(1));
    assert_eq!(limits.tracked(), 0);
    // An address still holding a connection is never swept.
    limits.admit(client, start).expect("admitted");
    limits.sweep(start + Duration::from_secs(3600));
    assert_eq!(limits.open(client), 1);
}

#[test]
fn the_map_stays_bounded_under_churn_from_many_addresses() {
    let start = Instant::now();
    let mut limits = PeerLimits::new(4, 1);
    let mut most = 0;
    for i in 0..20_000u32 {
        // One connection per address, 1 ms apart: a wide churn.
        let now = start + Duration::from_millis(u64::from(i));
        let addr = IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i)); // 198.51.0.0 + i
        limits.admit(addr, now).expect("a fresh address is admitted");
        limits.release(addr);
        most = most.max(limits.tracked());
    }
    // An entry lives until its bucket refills: 1 s at rate 1 after one connection, so
    // about 1,000 are live at a time and the map never reaches twice that.
    assert!(most <= 2 * 1001, "{most}");
    assert!(most >= MIN_SWEEP_LEN, "sweeps start at MIN_SWEEP_LEN: {most}");
    limits.sweep(start + Duration::from_secs(30));
    assert_eq!(limits.tracked(), 0);
}

#[test]
fn both_limits_off_stores_nothing() {
    let now = Instant::now();
    let mut limits = PeerLimits::new(0, 0);
    for _ in 0..1000 {
        assert_eq!(limits.admit(ip("198.51.100.4"), now), Ok(()));
    }
    assert_eq!(limits.tracked(), 0);
}

#[test]
fn refusals_are_logged_once_a_second_per_address() {
    let start = Instant::now();
    let mut limits = PeerLimits::new(1, 0);
    let (a, b) = (ip("198.51.100.4"), ip("198.51.100.5"));
    limits.admit(a, start).expect("admitted");
    limits.admit(b, start).expect("admitted");
    assert!(limits.should_log(a, start));
    assert!(!limits.should_log(a, start + Duration::from_millis(999)));
    assert!(limits.should_log(b, start + Duration::from_millis(500)), "per address");
    assert!(limits.should_log(a, start + Duration::from_secs(1)));
    assert!(!limits.should_log(a, start + Duration::from_millis(1500)));
}

#[test]
fn refusal_reasons() {
    assert_eq!(
        Refusal::TooManyConnections { limit: 4 }.to_string(),
        "too many connections from this address (limit 4)"
    );
    assert_eq!(Refusal::TooFast { rate: 5 }.to_string(), "too many new connections from this address (limit 5/s)");
}
