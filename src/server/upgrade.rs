//! The request head (CONNECTING): a plain HTTP answer, a refusal, or the upgrade: the
//! client's address against its limits, the chat's admission (token, room, name),
//! permessage-deflate, the 101, and the chat. Part of `impl Server`: the loop's state is
//! in `mod.rs`.

use std::time::Duration;

use super::client::Upgraded;
use super::http;
use super::peers::client_addr;
use super::Server;
use crate::chat::admission::{Admission, Refusal};
use crate::chat::auth::redact_token;
use crate::chat::json::Envelope;
use crate::chat::Arrival;
use crate::config::Mode;
use crate::proto::close::CloseCode;
use crate::proto::deflate::{self, Agreed};
use crate::proto::handshake::{self, Rejection, Request, Status, Upgrade, SUBPROTOCOL_JSON};

impl Server {
    /// CONNECTING: tries to parse the request head. Returns the head's length once
    /// complete (the bytes after it are frames), or `None` to wait for more.
    pub(super) fn on_request_head(&mut self, key: usize, input: &[u8]) -> Option<usize> {
        let parsed = handshake::parse_request(input, &self.config.request_limits(), &self.config.allow_origins);
        let answer = match parsed {
            Ok(None) => return None,
            Ok(Some((Request::Upgrade(upgrade), used))) => match self.upgrade(key, &upgrade) {
                Ok(()) => return Some(used),
                Err(rejection) => Err(rejection),
            },
            Ok(Some((Request::Http { path, head }, _))) => Ok((path, head)),
            Err(rejection) => Err(rejection),
        };
        let client = &mut self.clients[key];
        match answer {
            Ok((path, head)) => {
                self.stats.http_requests += 1;
                let degraded = self.cluster.as_ref().and_then(|cluster| cluster.degraded(self.now));
                let mut response = http::answer(&path, degraded.as_deref());
                if head {
                    handshake::strip_body(&mut response); // RFC 9110 §9.3.2: the GET answer's head only
                }
                client.session.respond_http(response, self.now);
            }
            Err(rejection) => {
                self.stats.rejected += 1;
                self.stats.refused(rejection.status.code());
                if rejection.status != Status::TooManyRequests {
                    // (429s are logged at most once a second per address, where they are decided)
                    log::info!(target: "pollcast::access", "refused {} {} {}", client.addr, rejection.status.code(), rejection.why);
                }
                client.session.reject(&rejection, self.now);
            }
        }
        self.clients[key].session_output_to(key, self.router.outbox());
        Some(input.len()) // one request per connection: anything pipelined after it is dropped
    }

    /// A valid upgrade: the client's address (behind a trusted proxy) against its
    /// limits, then the chat judges the token, the room and the name; then the 101, then
    /// the chat. A raw client is refused with an HTTP status (400, 401, 403, 409, 429);
    /// a JSON client refused for its token or room is upgraded, told with one `error`
    /// and closed with 4401 or 4403, because a browser cannot read an HTTP status.
    pub(super) fn upgrade(&mut self, key: usize, upgrade: &Upgrade) -> Result<(), Rejection> {
        let agreed = self.negotiate_deflate(key, upgrade)?;
        let peer = self.clients[key].peer.ip();
        if self.trusted(peer) {
            let (xff, fwd) = (str_refs(&upgrade.forwarded_for), str_refs(&upgrade.forwarded));
            let addr = client_addr(peer, &self.config.trust_proxy, &xff, &fwd).to_canonical();
            self.count_address(addr)?;
            let counted = self.limited(addr).then_some(addr);
            let client = &mut self.clients[key];
            (client.addr, client.counted) = (addr, counted);
        }
        if log::log_enabled!(log::Level::Debug) {
            let target = format!("{}?{}", upgrade.path, upgrade.query);
            log::debug!("conn {key}: {} upgrade {}", self.clients[key].addr, redact_token(&target));
        }
        let json = upgrade.protocol.as_deref() == Some(SUBPROTOCOL_JSON);
        let now_secs = self.now_ms / 1000;
        let admitted = self.chat.admit(&upgrade.path, &upgrade.query, json, upgrade.authorization.as_deref(), now_secs);
        let admission = match admitted {
            Ok(admission) => admission,
            Err(refusal @ (Refusal::Unauthorized(_) | Refusal::Forbidden(_))) if json => {
                self.refuse_after_upgrade(key, upgrade, refusal);
                return Ok(());
            }
            Err(refusal) => {
                self.stats.refused_auth +=
                    u64::from(matches!(refusal, Refusal::Unauthorized(_) | Refusal::Forbidden(_)));
                return Err(rejection(refusal));
            }
        };
        self.stats.upgrades += 1;
        let client = &mut self.clients[key];
        if let Some(agreed) = agreed {
            self.stats.deflate_upgrades += 1;
            client.session.use_deflate(agreed);
        }
        client.session.accept(self.now);
        client.upgraded = Some(Upgraded { at: self.now, json, deflate: agreed.is_some() });
        log::debug!("conn {key}: {} joined room {}", client.addr, admission.room);
        let extensions = agreed.map(|agreed| agreed.response_header());
        self.router.outbox().own(key, handshake::switching_protocols(upgrade, extensions.as_deref()), false);
        if self.config.mode == Mode::Relay {
            let Admission { room, json, name, history, identity } = &admission;
            let (name, identity) = (name.as_deref(), identity.as_ref());
            let rate_limited = self.config.rate_limited(self.clients[key].addr);
            // Broadcasts go compressed to members whose window fits any message (the
            // policy for smaller windows is in chat/outbox.rs).
            let deflate = agreed.is_some_and(|agreed| agreed.may_compress(usize::MAX));
            let history = *history;
            let arrival = Arrival { conn: key, json: *json, name, room, history, identity, rate_limited, deflate };
            self.chat.connect(arrival, self.now_ms, self.router.outbox());
            self.schedule_expiry();
        }
        Ok(())
    }

    /// A JSON client refused for its token or its room: upgraded, told why in one
    /// `error`, closed with 4401 (unauthorized) or 4403 (forbidden). It never joins the
    /// chat, so it receives nothing else, and what it sends is dropped (CLOSING).
    pub(super) fn refuse_after_upgrade(&mut self, key: usize, upgrade: &Upgrade, refusal: Refusal) {
        self.stats.refused_auth += 1;
        let (code, status) = match refusal {
            Refusal::Forbidden(_) => (CloseCode::FORBIDDEN, Status::Forbidden),
            _ => (CloseCode::UNAUTHORIZED, Status::Unauthorized),
        };
        self.stats.refused(status.code());
        let client = &mut self.clients[key];
        log::info!(target: "pollcast::access", "refused {} {} {} (pollcast.v1: error, then close {})", client.addr, status.code(), refusal.reason(), code.0);
        client.session.accept(self.now);
        let out = self.router.outbox();
        // Declines any extension offer: the connection carries one error and a Close.
        out.own(key, handshake::switching_protocols(upgrade, None), false);
        let error =
            Envelope::Error { code: refusal.code(), message: refusal.reason(), reference: &serde_json::Value::Null };
        out.send(key, &error.to_json());
        client.session.close(code, refusal.reason(), self.now);
        client.session_output_to(key, out);
    }

    /// permessage-deflate (RFC 7692) with `--deflate on`: the parameters agreed to, or
    /// `None` (no offer we can honour: nothing is stated in the 101). An offer that breaks
    /// RFC 7692's rules is declined, not refused (`proto/deflate.rs`); only a header that
    /// is not an extension list at all is a 400. With `--deflate off` the headers are not
    /// read, as before the extension existed.
    pub(super) fn negotiate_deflate(&self, key: usize, upgrade: &Upgrade) -> Result<Option<Agreed>, Rejection> {
        let Some(config) = self.config.deflate() else { return Ok(None) };
        deflate::negotiate(&str_refs(&upgrade.extensions), &config).map_err(|bad| {
            log::debug!("conn {key}: {bad}");
            Rejection { status: Status::BadRequest, why: "Sec-WebSocket-Extensions is not an extension list" }
        })
    }

    /// Makes sure the timer sweep runs when the soonest token expires.
    pub(super) fn schedule_expiry(&mut self) {
        if let Some(at) = self.chat.next_expiry() {
            let wait = Duration::from_secs(at).saturating_sub(Duration::from_millis(self.now_ms));
            self.next_sweep = self.next_sweep.min(self.now + wait);
        }
    }
}

/// The HTTP answer to a refusal of the chat's.
fn rejection(refusal: Refusal) -> Rejection {
    let status = match refusal {
        Refusal::Invalid(_) => Status::BadRequest,
        Refusal::Unauthorized(_) => Status::Unauthorized,
        Refusal::Forbidden(_) => Status::Forbidden,
    };
    Rejection { status, why: refusal.reason() }
}

/// `&str`s of a list of header values.
fn str_refs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}
