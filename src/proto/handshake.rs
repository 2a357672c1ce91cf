//! The opening handshake (RFC 6455 §4): parse an HTTP/1.1 request, decide between an
//! upgrade, a plain HTTP answer or an error status, and write the response bytes.
//!
//! Owns: request parsing (httparse), every header check, `Sec-WebSocket-Accept`,
//! subprotocol choice, and the bytes of every HTTP response we send.
//! Must not touch: sockets, clocks, how many clients are connected, or what the plain
//! HTTP endpoints contain (the shell supplies bodies such as `/metrics`).

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: the GUID appended to the client's key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// RFC 6455 §4.1: "The nonce MUST be a randomly selected 16-byte value".
const KEY_NONCE_LEN: usize = 16;
/// The only version RFC 6455 defines (§4.1: "The value of this header field MUST be 13").
pub const WS_VERSION: &str = "13";
/// The JSON chat subprotocol.
pub const SUBPROTOCOL_JSON: &str = "pollcast.v1";

/// Limits on a request, from `Config`.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    pub max_bytes: usize,   // request line + headers, in bytes (431 beyond)
    pub max_headers: usize, // header lines (431 beyond)
}

/// An HTTP status we answer with, plus any header it requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,                  // 200
    BadRequest,          // 400: malformed request or WebSocket headers (or a bad room name, judged by chat)
    Unauthorized,        // 401: no token, or a token that does not verify (judged by chat::auth)
    Forbidden,           // 403: Origin not allowed, or a room the token does not allow
    NotFound,            // 404: no such endpoint
    MethodNotAllowed,    // 405: not GET (sent with `Allow: GET`)
    RequestTimeout,      // 408: the request did not arrive within the handshake timeout
    Conflict,            // 409: a raw client asked for a name someone holds
    PayloadTooLarge,     // 413: an admin request body over its bound
    UpgradeRequired,     // 426: wrong WebSocket version (sent with `Sec-WebSocket-Version: 13`)
    TooManyRequests,     // 429: an address over --max-connections-per-ip or --max-upgrade-rate
    HeadersTooLarge,     // 431: request head over its byte or header-count limit
    InternalServerError, // 500: the store failed an admin request
    ServiceUnavailable,  // 503: over `--max-connections`
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::Conflict => 409,
            Status::PayloadTooLarge => 413,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::HeadersTooLarge => 431,
            Status::InternalServerError => 500,
            Status::ServiceUnavailable => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::Conflict => "Conflict",
            Status::PayloadTooLarge => "Content Too Large",
            Status::UpgradeRequired => "Upgrade Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// Headers this status must carry.
    fn extra_headers(self) -> &'static str {
        match self {
            Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
            // RFC 9110 §15.5.2: a 401 "MUST send a WWW-Authenticate header field".
            Status::Unauthorized => "WWW-Authenticate: Bearer\r\n",
            // RFC 6585 §4: "MAY include a Retry-After header".
            Status::TooManyRequests => "Retry-After: 1\r\n",
            // RFC 6455 §4.4: answer an unsupported version with the versions we speak.
            Status::UpgradeRequired => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            _ => "",
        }
    }
}

/// A refused request: the status and a one-line explanation for the body and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: Status,
    pub why: &'static str,
}

impl Rejection {
    fn new(status: Status, why: &'static str) -> Rejection {
        Rejection { status, why }
    }
}

/// A parsed and checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade.
    Upgrade(Upgrade),
    /// A plain `GET` (or `HEAD`: `head` is true, answer without the body) for an HTTP
    /// endpoint; the path without its query.
    Http { path: String, head: bool },
}

/// What a valid upgrade asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,                  // the request target before `?` (which room it names is chat's rule)
    pub query: String,                 // after `?`, undecoded ("" when absent)
    pub accept: String,                // our Sec-WebSocket-Accept value
    pub protocol: Option<String>,      // the subprotocol we choose, if the client offered one we speak
    pub origin: Option<String>,        // the Origin header, if any (browsers send it)
    pub authorization: Option<String>, // the Authorization header, if any (a bearer token)
    pub forwarded_for: Vec<String>,    // every X-Forwarded-For line (believed only from a trusted proxy)
    pub forwarded: Vec<String>,        // every Forwarded line (RFC 7239), likewise
    pub extensions: Vec<String>, // every Sec-WebSocket-Extensions line, in order (the shell negotiates: `deflate::negotiate`)
}

impl Upgrade {
    /// The value of query parameter `name`, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        query_param(&self.query, name)
    }
}

/// The value of `name` in a query string `a=1&b=2`, undecoded.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Parses and checks a request from the start of `input`.
///
/// `Ok(None)`: the head is not complete yet (nothing consumed; call again with more).
/// `Ok(Some((request, used)))`: `used` bytes were the request head; anything after it
/// is the client's first frames. `Err`: answer with the rejection and close.
pub fn parse_request(
    input: &[u8],
    limits: &RequestLimits,
    allowed_origins: &[String],
) -> Result<Option<(Request, usize)>, Rejection> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if input.len() > limits.max_bytes => {
            return Err(Rejection::new(Status::HeadersTooLarge, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(Status::HeadersTooLarge, "too many header fields"));
        }
        Err(_) => return Err(Rejection::new(Status::BadRequest, "malformed HTTP request")),
    };
    if used > limits.max_bytes {
        return Err(Rejection::new(Status::HeadersTooLarge, "request head too large"));
    }
    let request = check_request(&req, allowed_origins)?;
    Ok(Some((request, used)))
}

/// Applies RFC 6455 §4.2.1 to a complete request head.
fn check_request(req: &httparse::Request, allowed_origins: &[String]) -> Result<Request, Rejection> {
    let bad = |why| Err(Rejection::new(Status::BadRequest, why));
    // RFC 6455 §4.2.1: "An HTTP/1.1 or higher GET request". RFC 9110 §9.3.2: HEAD is GET
    // without the body, so plain endpoints answer it too (an upgrade needs GET).
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Err(Rejection::new(Status::MethodNotAllowed, "only GET and HEAD are served")),
    };
    if req.version != Some(1) {
        return bad("only HTTP/1.1 is served");
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);

    let upgrade = header("Upgrade");
    let key = header("Sec-WebSocket-Key");
    let version = header("Sec-WebSocket-Version");
    if upgrade.is_none() && key.is_none() && version.is_none() {
        return Ok(Request::Http { path: path.to_owned(), head });
    }
    if head {
        return Err(Rejection::new(Status::MethodNotAllowed, "an upgrade must be a GET"));
    }

    // RFC 6455 §4.2.1 items 2-6, in order.
    if header("Host").is_none() {
        return bad("missing Host header");
    }
    if !upgrade.is_some_and(|v| has_token(v, "websocket")) {
        return bad("Upgrade header must be websocket");
    }
    if !req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("Connection") && has_token(h.value, "upgrade")) {
        return bad("Connection header must include Upgrade");
    }
    let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()).map(str::trim) else {
        return bad("missing Sec-WebSocket-Key");
    };
    if !BASE64.decode(key).is_ok_and(|nonce| nonce.len() == KEY_NONCE_LEN) {
        return bad("Sec-WebSocket-Key must be 16 bytes in base64");
    }
    if version.map(|v| v.trim_ascii()) != Some(WS_VERSION.as_bytes()) {
        return Err(Rejection::new(Status::UpgradeRequired, "Sec-WebSocket-Version must be 13"));
    }
    let text = |value: &[u8]| std::str::from_utf8(value).ok().map(str::to_owned);
    let origin = header("Origin").and_then(text);
    // RFC 6455 §10.2: Origin protects browsers from pages on other sites. Only browsers
    // are bound to send it truthfully (any other program can write any Origin), so a
    // request without one is not a browser's and is not refused for it.
    if !allowed_origins.is_empty() && origin.as_ref().is_some_and(|o| !allowed_origins.iter().any(|a| a == o)) {
        return Err(Rejection::new(Status::Forbidden, "Origin not allowed"));
    }
    let all = |name: &str| -> Vec<String> {
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).filter_map(|h| text(h.value)).collect()
    };
    let offered = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"));
    let protocol =
        offered.into_iter().any(|h| has_token(h.value, SUBPROTOCOL_JSON)).then(|| SUBPROTOCOL_JSON.to_owned());
    Ok(Request::Upgrade(Upgrade {
        path: path.to_owned(),
        query: query.to_owned(),
        accept: accept_key(key),
        protocol,
        origin,
        authorization: header("Authorization").and_then(text),
        forwarded_for: all("X-Forwarded-For"),
        forwarded: all("Forwarded"),
        extensions: all("Sec-WebSocket-Extensions"),
    }))
}

/// Does a comma-separated header value contain `token` (ASCII case-insensitive)?
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The `101 Switching Protocols` answer to a valid upgrade; `extensions`: the
/// `Sec-WebSocket-Extensions` value agreed on (RFC 6455 §9.1), if any was.
pub fn switching_protocols(upgrade: &Upgrade, extensions: Option<&str>) -> Vec<u8> {
    let mut out = String::with_capacity(160);
    out.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    let _ = write!(out, "Sec-WebSocket-Accept: {}\r\n", upgrade.accept);
    if let Some(protocol) = &upgrade.protocol {
        let _ = write!(out, "Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    if let Some(extensions) = extensions {
        let _ = write!(out, "Sec-WebSocket-Extensions: {extensions}\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn http_response(status: Status, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n{}Content-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        status.code(),
        status.reason(),
        status.extra_headers(),
        content_type,
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Cuts a response down to its head (the answer to `HEAD`): status and headers, with
/// the `Content-Length` the body would have had, and no body.
pub fn strip_body(response: &mut Vec<u8>) {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
}

/// The plain-text error page for a rejection.
pub fn rejection_response(rejection: &Rejection) -> Vec<u8> {
    let body = format!("{} {}: {}\n", rejection.status.code(), rejection.status.reason(), rejection.why);
    http_response(rejection.status, "text/plain; charset=utf-8", body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits { max_bytes: 8192, max_headers: 64 };
    const GOOD: &str =
        "GET /games?history=5 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(req: &str) -> Result<Option<(Request, usize)>, Rejection> {
        parse_request(req.as_bytes(), &LIMITS, &[])
    }

    fn status_of(req: &str) -> Status {
        parse(req).unwrap_err().status
    }

    #[test]
    fn rfc_sample_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn good_upgrade() {
        let (req, used) = parse(GOOD).unwrap().unwrap();
        assert_eq!(used, GOOD.len());
        let Request::Upgrade(up) = req else { panic!() };
        assert_eq!(up.path, "/games");
        assert_eq!(up.query_param("history"), Some("5"));
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.protocol, None);
        let resp = String::from_utf8(switching_protocols(&up, None)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn split_at_every_byte_and_trailing_frames_kept() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        for cut in 0..GOOD.len() {
            assert_eq!(parse_request(&bytes[..cut], &LIMITS, &[]), Ok(None), "cut {cut}");
        }
        let (_, used) = parse_request(&bytes, &LIMITS, &[]).unwrap().unwrap();
        assert_eq!(&bytes[used..], &[0x81, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn subprotocol_is_chosen_when_offered() {
        let req = GOOD.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat, pollcast.v1\r\n\r\n");
        let Some((Request::Upgrade(up), _)) = parse(&req).unwrap() else { panic!() };
        assert_eq!(up.protocol.as_deref(), Some("pollcast.v1"));
        assert!(String::from_utf8(switching_protocols(&up, None))
            .unwrap()
            .contains("Sec-WebSocket-Protocol: pollcast.v1\r\n"));
        let req = GOOD.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
        let Some((Request::Upgrade(up), _)) = parse(&req).unwrap() else { panic!() };
        assert_eq!(up.protocol, None);
    }

    #[test]
    fn every_extension_offer_is_handed_out_and_the_answer_written() {
        let offers = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
                      sec-websocket-extensions: x-foo, permessage-deflate\r\n";
        let req = GOOD.replace("Host: x\r\n", &format!("Host: x\r\n{offers}"));
        let Some((Request::Upgrade(up), _)) = parse(&req).unwrap() else { panic!() };
        assert_eq!(up.extensions, vec!["permessage-deflate; client_max_window_bits", "x-foo, permessage-deflate"]);
        let answer = "permessage-deflate; server_no_context_takeover";
        let resp = String::from_utf8(switching_protocols(&up, Some(answer))).unwrap();
        assert!(resp.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"));
        assert!(!String::from_utf8(switching_protocols(&up, None)).unwrap().contains("Extensions"));
        let Some((Request::Upgrade(none), _)) = parse(GOOD).unwrap() else { panic!() };
        assert!(none.extensions.is_empty());
    }

    #[test]
    fn plain_http_paths() {
        let req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(req).unwrap().unwrap().0, Request::Http { path: "/healthz".into(), head: false });
        let head = "HEAD /?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(head).unwrap().unwrap().0, Request::Http { path: "/".into(), head: true });
        assert_eq!(status_of(&GOOD.replace("GET", "HEAD")), Status::MethodNotAllowed, "an upgrade is a GET");
    }

    #[test]
    fn credentials_and_forwarding_headers_are_handed_out_raw() {
        let extra =
            "Authorization: Bearer abc.def.ghi\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\n\
                     Forwarded: for=10.0.0.1\r\n";
        let req = GOOD.replace("Host: x\r\n", &format!("Host: x\r\n{extra}"));
        let Request::Upgrade(up) = parse(&req).unwrap().unwrap().0 else { panic!() };
        assert_eq!(up.authorization.as_deref(), Some("Bearer abc.def.ghi"));
        assert_eq!(up.forwarded_for, vec!["1.2.3.4", "5.6.7.8, 9.9.9.9"]);
        assert_eq!(up.forwarded, vec!["for=10.0.0.1"]);
    }

    #[test]
    fn rejections() {
        assert_eq!(status_of(&GOOD.replace("GET", "POST")), Status::MethodNotAllowed);
        assert_eq!(status_of(&GOOD.replace("HTTP/1.1", "HTTP/1.0")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("Upgrade: websocket", "Upgrade: h2c")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("keep-alive, Upgrade", "keep-alive")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("Host: x\r\n", "")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")), Status::BadRequest);
        assert_eq!(status_of(&GOOD.replace("Version: 13", "Version: 8")), Status::UpgradeRequired);
        assert_eq!(status_of("GET / HTTP/1.1\r\nHost\r\n\r\n"), Status::BadRequest);
    }

    #[test]
    fn upgrade_required_names_the_version() {
        let resp = rejection_response(&Rejection::new(Status::UpgradeRequired, "x"));
        assert!(String::from_utf8(resp).unwrap().contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn size_limits() {
        let big = GOOD.replace("Host: x", &format!("Host: {}", "x".repeat(9000)));
        assert_eq!(status_of(&big), Status::HeadersTooLarge);
        assert_eq!(parse_request(&big.as_bytes()[..8193], &LIMITS, &[]).unwrap_err().status, Status::HeadersTooLarge);
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status_of(&GOOD.replace("Host: x\r\n", &format!("Host: x\r\n{many}"))), Status::HeadersTooLarge);
    }

    #[test]
    fn origin_allow_list() {
        let allowed = vec!["https://good.example".to_owned()];
        let with = |origin: &str| GOOD.replace("Host: x\r\n", &format!("Host: x\r\nOrigin: {origin}\r\n"));
        assert!(parse_request(with("https://good.example").as_bytes(), &LIMITS, &allowed).is_ok());
        let err = parse_request(with("https://evil.example").as_bytes(), &LIMITS, &allowed).unwrap_err();
        assert_eq!(err.status, Status::Forbidden);
        assert!(parse_request(GOOD.as_bytes(), &LIMITS, &allowed).is_ok(), "no Origin: not a browser, not refused");
        assert!(parse_request(GOOD.as_bytes(), &LIMITS, &[]).is_ok(), "no list: every origin");
    }
}
