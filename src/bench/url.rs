//! `--url`: where the bench connects and what it asks for.
//!
//! Owns: parsing `ws://HOST[:PORT][/PATH]` and `wss://HOST[:PORT][/PATH]` and resolving
//! the host once, at start. For `wss://` it also keeps the host as written, without
//! brackets, which the pool turns into the TLS server name (SNI, and the name the
//! certificate must carry; an IP address is checked against the certificate's IP names).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// RFC 6455 §3: the default port of `ws://`.
const WS_DEFAULT_PORT: u16 = 80;
/// RFC 6455 §3: the default port of `wss://`.
const WSS_DEFAULT_PORT: u16 = 443;

/// A resolved WebSocket endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,         // as given, for reports
    pub addr: SocketAddr,    // the first address the host resolved to
    pub host_header: String, // the `Host` header: host[:port] as written in the URL
    pub path: String,        // the request target: path and query, at least "/"
    pub tls: bool,           // wss://: TLS first, then the upgrade through it
    pub host: String,        // the host as written, without brackets: the TLS server name
}

impl Target {
    /// Parses and resolves a `ws://` or `wss://` URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("ws", rest)) => (false, rest),
            Some(("wss", rest)) => (true, rest),
            Some((scheme, _)) => return Err(format!("{url}: unsupported scheme '{scheme}' (use ws:// or wss://)")),
            None => return Err(format!("{url}: not a URL (expected ws://HOST[:PORT]/PATH or wss://...)")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        if authority.is_empty() {
            return Err(format!("{url}: missing host"));
        }
        if authority.contains('@') {
            return Err(format!("{url}: user info in the URL is not supported"));
        }
        let default_port = if tls { WSS_DEFAULT_PORT } else { WS_DEFAULT_PORT };
        let (host, port) =
            split_host_port(authority, default_port).ok_or_else(|| format!("{url}: bad host or port"))?;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve '{host}': {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: '{host}' resolved to no address"))?;
        Ok(Target { url: url.to_owned(), addr, host_header: authority.to_owned(), path, tls, host: host.to_owned() })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets, port).
fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = match after {
            "" => default_port,
            _ => after.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.split_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let t = Target::parse("ws://127.0.0.1:9100/x?y=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:9100");
        assert_eq!(t.path, "/x?y=1");
    }

    #[test]
    fn defaults_and_forms() {
        let t = Target::parse("ws://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        assert_eq!(Target::parse("ws://127.0.0.1:1?a").unwrap().path, "/?a");
        let t = Target::parse("ws://[::1]:8080/room").unwrap();
        assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
        assert_eq!(t.host_header, "[::1]:8080");
        assert!(Target::parse("ws://localhost:8080/").unwrap().addr.ip().is_loopback());
        assert!(!t.tls);
    }

    #[test]
    fn wss() {
        let t = Target::parse("wss://127.0.0.1/x").unwrap();
        assert_eq!((t.addr.port(), t.tls, t.host.as_str(), t.path.as_str()), (443, true, "127.0.0.1", "/x"));
        assert_eq!(t.host_header, "127.0.0.1");
        let t = Target::parse("wss://[::1]:9443").unwrap();
        assert_eq!((t.addr.port(), t.host.as_str(), t.path.as_str()), (9443, "::1", "/"));
        assert_eq!(Target::parse("wss://localhost:1/").unwrap().host, "localhost");
    }

    #[test]
    fn refusals() {
        for bad in
            ["https://127.0.0.1/", "http://127.0.0.1/", "127.0.0.1:80", "ws:///x", "ws://h:99999/", "wss://:443/"]
        {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse("http://x/").unwrap_err().contains("wss://"));
    }
}
