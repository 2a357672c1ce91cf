//! The admin port: a second listener on the same loop for the operator and the
//! application behind the chat. It serves `/metrics`, `/healthz` and a JSON API:
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/publish {room, text, from?}` | `{"id": N}` once the message is stored; delivered like any message |
//! | `POST /api/dm {to, text, from?}` | `{"id": N}`; every connection of `to` gets it |
//! | `POST /api/disconnect {user, reason?}` | `{"disconnected": N}`: that user's connections closed with 4000 and the reason |
//! | `GET /api/rooms` | `{"rooms": [{room, members}]}` |
//! | `GET /api/rooms/{room}` | `{"room", "members": [...]}` |
//! | `GET /api/rooms/{room}/history?before=&limit=` | a `history` envelope, text messages, oldest first |
//!
//! Errors are `{"error": {"code", "message"}}` with the fitting status. With
//! `--admin-token-file` every request needs `Authorization: Bearer TOKEN`.
//!
//! Owns: parsing admin requests (a head and a bounded body), the routes, and the JSON
//! in and out. Must not touch: what a message means (`chat::api`), how it is stored
//! (`history.rs`). One request per connection, answered and closed, like the public
//! port's plain HTTP. Admin connections share the slab but not `--max-connections`
//! (at most `ADMIN_CONNECTIONS_MAX` at once), so a full public port never locks the
//! operator out.

use serde::Deserialize;
use serde_json::{json, Value};

use super::metrics;
use super::Server;
use crate::chat::api::DEFAULT_AUTHOR;
use crate::chat::record::Query;
use crate::chat::replay::history_json;
use crate::chat::reply::Failure;
use crate::proto::close::CloseCode;
use crate::proto::handshake::{http_response, RequestLimits, Status};

/// Admin connections held at once, at most; more are answered 503.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;
/// The largest request body the API takes (a message is at most `--max-text` anyway).
const MAX_BODY: usize = 64 << 10;
/// A Close reason fits a control frame's 125 bytes with its 2-byte code (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

/// The methods the admin port answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

/// One admin request, whole.
#[derive(Debug, PartialEq, Eq)]
pub struct AdminRequest {
    pub method: Method,                // GET, HEAD or POST
    pub path: String,                  // before `?`
    pub query: String,                 // after `?`, undecoded
    pub authorization: Option<String>, // the Authorization header
    pub body: Vec<u8>,                 // Content-Length bytes after the head
}

/// A refusal: status, code and message.
pub(super) type Refused = (Status, &'static str, String);

/// Parses a request from the start of `input`: `Ok(None)` until the head and the whole
/// body are here (nothing consumed), then the request and the bytes it took.
pub fn parse(input: &[u8], limits: &RequestLimits) -> Result<Option<(AdminRequest, usize)>, Refused> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > limits.max_bytes => {
            return Err((Status::HeadersTooLarge, "too_large", "request head too large".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err((Status::BadRequest, "bad_request", "malformed HTTP request".into())),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => return Err((Status::MethodNotAllowed, "bad_method", "GET, HEAD or POST".into())),
    };
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if header("Transfer-Encoding").is_some() {
        return Err((Status::BadRequest, "bad_request", "send the body with Content-Length".into()));
    }
    let body_len = match header("Content-Length").map(|v| v.trim().parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => {
            return Err((Status::PayloadTooLarge, "too_large", format!("bodies are at most {MAX_BODY} bytes")))
        }
        Some(Err(_)) => return Err((Status::BadRequest, "bad_request", "Content-Length is not a number".into())),
    };
    if input.len() < head_len + body_len {
        return Ok(None);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = AdminRequest {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        authorization: header("Authorization").map(str::to_owned),
        body: input[head_len..head_len + body_len].to_vec(),
    };
    Ok(Some((request, head_len + body_len)))
}

/// Does `authorization` carry exactly `Bearer <token>`? Compared in constant time, so
/// the answer's timing does not tell how much of a guess was right.
pub fn authorized(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|value| value.strip_prefix("Bearer ")) else { return false };
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// A JSON answer.
fn json_response(status: Status, body: &Value) -> Vec<u8> {
    http_response(status, "application/json", format!("{body}\n").as_bytes())
}

/// A JSON error answer: `{"error": {"code", "message"}}`.
fn error_response((status, code, message): Refused) -> Vec<u8> {
    json_response(status, &json!({"error": {"code": code, "message": message}}))
}

/// The status a chat failure is answered with.
fn failure(failure: Failure) -> Refused {
    let status = match failure.code {
        "no_such_user" => Status::NotFound,
        "too_large" => Status::PayloadTooLarge,
        "unavailable" | "unsupported" => Status::ServiceUnavailable, // in a cluster: Redis away, or not there yet
        _ => Status::BadRequest,
    };
    (status, failure.code, failure.message)
}

/// The body of a POST, as `T`.
fn body<T: for<'de> Deserialize<'de>>(request: &AdminRequest) -> Result<T, Refused> {
    serde_json::from_slice(&request.body).map_err(|e| (Status::BadRequest, "bad_json", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    room: String,         // where
    text: String,         // what
    from: Option<String>, // as whom (default "server")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dm {
    to: String,           // to whom (a name)
    text: String,         // what
    from: Option<String>, // as whom (default "server")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: String,           // a name, or a token's user id
    reason: Option<String>, // sent in the Close frame
}

impl Server {
    /// CONNECTING on the admin port: once the request is whole, answer it and close.
    pub(super) fn on_admin_request(&mut self, key: usize, input: &[u8]) -> Option<usize> {
        if self.clients[key].awaiting {
            return Some(input.len()); // one request per connection: its answer is on its way
        }
        let (answer, summary) = match parse(input, &self.config.request_limits()) {
            Ok(None) => return None,
            Ok(Some((request, _))) => {
                let summary = format!("{:?} {}", request.method, request.path);
                match self.admin_later(key, &request) {
                    Some(Ok(())) => {
                        self.clients[key].awaiting = true;
                        log::debug!(target: "pollcast::admin", "admin {summary}: answered once Redis has stored it");
                        return Some(input.len());
                    }
                    Some(Err(refused)) => {
                        let answer = error_response(refused);
                        self.answer_admin(key, answer, &summary);
                        return Some(input.len());
                    }
                    None => {}
                }
                let mut answer = self.admin_answer(&request);
                if request.method == Method::Head {
                    crate::proto::handshake::strip_body(&mut answer);
                }
                (answer, summary)
            }
            Err(refused) => (error_response(refused), "malformed request".to_owned()),
        };
        self.answer_admin(key, answer, &summary);
        Some(input.len())
    }

    /// Sends an admin answer, counted and logged.
    fn answer_admin(&mut self, key: usize, answer: Vec<u8>, summary: &str) {
        self.stats.http_requests += 1;
        let status = String::from_utf8_lossy(answer.get(9..12).unwrap_or_default()).into_owned();
        let client = &mut self.clients[key];
        log::info!(target: "pollcast::admin", "admin {} {summary} {status}", client.addr);
        client.session.respond_http(answer, self.now);
        client.session_output_to(key, self.router.outbox());
    }

    /// In a cluster with history, `publish` and `dm` are answered once Redis has
    /// stored the message: `Some(Ok)` when the request now waits, `Some(Err)` when it is
    /// refused at once, `None` for every other request (and any unauthorized one: the
    /// usual path answers it).
    fn admin_later(&mut self, key: usize, request: &AdminRequest) -> Option<Result<(), Refused>> {
        let authorized = self.admin_token.as_ref().map_or(true, |t| authorized(request.authorization.as_deref(), t));
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        if !self.chat.stores_first() || !authorized || request.method != Method::Post {
            return None;
        }
        let out = self.router.outbox();
        Some(match segments.as_slice() {
            ["api", "publish"] => body::<Publish>(request).and_then(|Publish { room, text, from }| {
                let from = from.as_deref().unwrap_or(DEFAULT_AUTHOR);
                self.chat.publish_stored(key, &room, &text, from, self.now_ms, out).map_err(failure)
            }),
            ["api", "dm"] => body::<Dm>(request).and_then(|Dm { to, text, from }| {
                let from = from.as_deref().unwrap_or(DEFAULT_AUTHOR);
                self.chat.dm_stored(key, &to, &text, from, self.now_ms, out).map_err(failure)
            }),
            _ => return None,
        })
    }

    /// The answer to an admin request that waited for Redis (`admin_later`), if its
    /// connection is still the one that asked.
    pub(super) fn answer_admin_later(&mut self, key: usize, result: Result<Value, Refused>) {
        let Some(client) = self.clients.get_mut(key).filter(|c| c.admin && c.awaiting) else { return };
        client.awaiting = false;
        let answer = match result {
            Ok(body) => json_response(Status::Ok, &body),
            Err(refused) => error_response(refused),
        };
        self.answer_admin(key, answer, "POST (after Redis)");
    }

    /// The answer to one admin request.
    fn admin_answer(&mut self, request: &AdminRequest) -> Vec<u8> {
        if let Some(token) = &self.admin_token {
            if !authorized(request.authorization.as_deref(), token) {
                return error_response((
                    Status::Unauthorized,
                    "unauthorized",
                    "Authorization: Bearer TOKEN required".into(),
                ));
            }
        }
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        let answered = match (request.method, segments.as_slice()) {
            (Method::Get | Method::Head, ["metrics"]) => {
                let cluster = self.cluster.as_ref().map(|cluster| cluster.figures());
                let gauges = metrics::gauges(&self.clients, &self.chat, &self.history);
                let text = metrics::render(&self.stats, gauges, cluster);
                return http_response(
                    Status::Ok,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text.as_bytes(),
                );
            }
            (Method::Get | Method::Head, ["healthz"]) => {
                let degraded = self.cluster.as_ref().and_then(|cluster| cluster.degraded(self.now));
                return super::http::healthz(degraded.as_deref());
            }
            (Method::Post, ["api", "publish"]) => self.api_publish(request),
            (Method::Post, ["api", "dm"]) => self.api_dm(request),
            (Method::Post, ["api", "disconnect"]) => self.api_disconnect(request),
            (Method::Get | Method::Head, ["api", "rooms"]) => Ok(json!({"rooms": self.chat.room_counts()})),
            (Method::Get | Method::Head, ["api", "rooms", room]) => match self.chat.room_members(room) {
                Some(members) => Ok(json!({"room": room, "members": members})),
                None => Err((Status::NotFound, "no_such_room", format!("nobody is in {room}"))),
            },
            (Method::Get | Method::Head, ["api", "rooms", room, "history"]) => self.api_history(room, &request.query),
            (_, ["metrics" | "healthz"] | ["api", "rooms", ..] | ["api", "publish" | "dm" | "disconnect"]) => {
                Err((Status::MethodNotAllowed, "bad_method", "see the admin API table in the README".into()))
            }
            _ => Err((Status::NotFound, "not_found", format!("no admin endpoint {}", request.path))),
        };
        match answered {
            Ok(body) => json_response(Status::Ok, &body),
            Err(refused) => error_response(refused),
        }
    }

    /// `POST /api/publish`: stored (committed now) and delivered, then answered.
    fn api_publish(&mut self, request: &AdminRequest) -> Result<Value, Refused> {
        let Publish { room, text, from } = body(request)?;
        let from = from.as_deref().unwrap_or(DEFAULT_AUTHOR);
        let id = self.chat.publish(&room, &text, from, self.now_ms, self.router.outbox()).map_err(failure)?;
        self.stored_now()?;
        Ok(json!({"id": id}))
    }

    /// `POST /api/dm`.
    fn api_dm(&mut self, request: &AdminRequest) -> Result<Value, Refused> {
        let Dm { to, text, from } = body(request)?;
        let from = from.as_deref().unwrap_or(DEFAULT_AUTHOR);
        let id = self.chat.dm_from(&to, &text, from, self.now_ms, self.router.outbox()).map_err(failure)?;
        self.stored_now()?;
        Ok(json!({"id": id}))
    }

    /// Routes what the chat produced and commits it, so the answer promises the message
    /// is stored (the same rule as a client's `ack`).
    fn stored_now(&mut self) -> Result<(), Refused> {
        self.route();
        self.history.commit(&mut self.stats).map_err(|e| (Status::InternalServerError, "store_failed", e))
    }

    /// `POST /api/disconnect`: every connection of the user closed with 4000.
    fn api_disconnect(&mut self, request: &AdminRequest) -> Result<Value, Refused> {
        let Disconnect { user, reason } = body(request)?;
        let conns = self.chat.connections_of(&user);
        if conns.is_empty() {
            return Err((Status::NotFound, "no_such_user", format!("{user} is not connected")));
        }
        let reason = reason.unwrap_or_else(|| "disconnected by the server".to_owned());
        let reason = truncate_to_char(&reason, MAX_CLOSE_REASON);
        for &key in &conns {
            let Some(client) = self.clients.get_mut(key) else { continue };
            log::info!("conn {key}: {} disconnected through the admin API", client.addr);
            client.session.close(CloseCode::DISCONNECTED, reason, self.now);
            client.session_output_to(key, self.router.outbox());
            self.part(key);
        }
        Ok(json!({"disconnected": conns.len()}))
    }

    /// `GET /api/rooms/{room}/history?before=ID&limit=N`.
    fn api_history(&mut self, room: &str, query: &str) -> Result<Value, Refused> {
        let number = |name| crate::proto::handshake::query_param(query, name).map(str::parse::<u64>);
        let before = match number("before") {
            None => u64::MAX,
            Some(Ok(before)) => before,
            Some(Err(_)) => return Err((Status::BadRequest, "bad_field", "before must be a message id".into())),
        };
        let limit = match number("limit") {
            None => self.config.history_default as u64,
            Some(Ok(limit)) => limit,
            Some(Err(_)) => return Err((Status::BadRequest, "bad_field", "limit must be a count".into())),
        };
        let n = usize::try_from(limit).unwrap_or(usize::MAX).min(self.config.history_max);
        if self.config.history_db().is_none() {
            return Err((Status::NotFound, "no_history", "this server keeps no history".into()));
        }
        match self.history.read(room, Query::Before { before, n }, true, &mut self.stats) {
            Some(page) => serde_json::from_str(&history_json(room, &page))
                .map_err(|e| (Status::InternalServerError, "store_failed", e.to_string())),
            None => Err((Status::InternalServerError, "store_failed", "history could not be read".into())),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character.
fn truncate_to_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits { max_bytes: 8192, max_headers: 64 };

    #[test]
    fn a_request_is_whole_only_with_its_body() {
        let request = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"room\":\"a\"}!";
        for cut in 0..request.len() {
            assert_eq!(parse(&request[..cut], &LIMITS), Ok(None), "cut {cut}");
        }
        let (parsed, used) = parse(request, &LIMITS).unwrap().unwrap();
        assert_eq!(
            (parsed.method, parsed.path.as_str(), parsed.body.len(), used),
            (Method::Post, "/api/publish", 13, request.len())
        );
    }

    #[test]
    fn bounds_and_refusals() {
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(big.as_bytes(), &LIMITS).unwrap_err().0, Status::PayloadTooLarge);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked, &LIMITS).unwrap_err().0, Status::BadRequest);
        assert_eq!(parse(b"DELETE / HTTP/1.1\r\n\r\n", &LIMITS).unwrap_err().0, Status::MethodNotAllowed);
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cretX"), "s3cret"));
        assert!(!authorized(Some("Basic s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate_to_char(&"é".repeat(100), MAX_CLOSE_REASON).len(), 122);
        assert_eq!(truncate_to_char("short", MAX_CLOSE_REASON), "short");
    }
}
