//! Close codes (RFC 6455 §7.4) and the Close frame body: parsing what a peer sends,
//! encoding what we send.
//!
//! Owns: which codes exist, which may appear on the wire, and the rules for a Close
//! payload. Must not touch: sockets or connection state (`session.rs` decides *when*).

use std::fmt;

/// A close status code, as carried in the first two bytes of a Close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, idle timeout).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1007: a message's data was not consistent with its type (invalid UTF-8 text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (slow consumer: its write queue overflowed).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process (over `--max-message`).
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 4000: the application disconnected this user (the admin API); the reason says why.
    pub const DISCONNECTED: CloseCode = CloseCode(4000);
    /// 4401: the token is missing, invalid or expired (4000-4999 are for applications,
    /// RFC 6455 §7.4.2; the last three digits echo HTTP 401 for the page).
    pub const UNAUTHORIZED: CloseCode = CloseCode(4401);
    /// 4403: the token does not allow this room (echoing HTTP 403).
    pub const FORBIDDEN: CloseCode = CloseCode(4403);

    /// RFC 6455 §7.4.1/§7.4.2 and the IANA registry: may this code appear in a Close frame?
    /// 1004-1006 and 1015 are reserved for local use ("MUST NOT be set as a status
    /// code in a Close control frame"), 1016-2999 are reserved for future RFCs, 3000-4999
    /// belong to libraries and applications.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a peer's Close frame body is not acceptable; the answer is a close with `code()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadClose {
    /// A 1-byte body cannot hold a code (RFC 6455 §5.5.1).
    OneByte,
    /// The code is reserved or unassigned (RFC 6455 §7.4).
    InvalidCode(u16),
    /// The reason is not UTF-8 (RFC 6455 §5.5.1: "the body ... MUST be UTF-8").
    ReasonNotUtf8,
}

impl BadClose {
    /// The code we close with in answer.
    pub fn code(self) -> CloseCode {
        match self {
            BadClose::OneByte | BadClose::InvalidCode(_) => CloseCode::PROTOCOL_ERROR,
            BadClose::ReasonNotUtf8 => CloseCode::INVALID_PAYLOAD,
        }
    }

    /// The reason we send with it.
    pub fn reason(self) -> &'static str {
        match self {
            BadClose::OneByte => "close frame with a 1-byte body",
            BadClose::InvalidCode(_) => "invalid close code",
            BadClose::ReasonNotUtf8 => "close reason is not UTF-8",
        }
    }
}

/// Parses a Close frame body: `Ok(None)` for an empty body (no status code given).
pub fn parse_close_body(body: &[u8]) -> Result<Option<(CloseCode, &str)>, BadClose> {
    match body {
        [] => Ok(None),
        [_] => Err(BadClose::OneByte),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(BadClose::InvalidCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| BadClose::ReasonNotUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// The body of a Close frame we send: the code, then as much of `reason` as fits in a
/// control frame (125 bytes, RFC 6455 §5.5), cut on a character boundary.
pub fn close_body(code: CloseCode, reason: &str) -> Vec<u8> {
    let room = super::frame::MAX_CONTROL_PAYLOAD - 2;
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut body = Vec::with_capacity(2 + end);
    body.extend_from_slice(&code.0.to_be_bytes());
    body.extend_from_slice(&reason.as_bytes()[..end]);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_codes_match_autobahn_7_7_and_7_9() {
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
            assert!(CloseCode(code).is_sendable(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn body_rules() {
        assert_eq!(parse_close_body(&[]), Ok(None));
        assert_eq!(parse_close_body(&[0x03]), Err(BadClose::OneByte));
        assert_eq!(parse_close_body(&[0x03, 0xe8]), Ok(Some((CloseCode::NORMAL, ""))));
        assert_eq!(parse_close_body(&[0x03, 0xe8, b'o', b'k']), Ok(Some((CloseCode::NORMAL, "ok"))));
        assert_eq!(parse_close_body(&[0x03, 0xed]), Err(BadClose::InvalidCode(1005)));
        assert_eq!(parse_close_body(&[0x03, 0xe8, 0xff]), Err(BadClose::ReasonNotUtf8));
        assert_eq!(BadClose::ReasonNotUtf8.code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let body = close_body(CloseCode::GOING_AWAY, &reason);
        assert!(body.len() <= 125);
        assert!(std::str::from_utf8(&body[2..]).is_ok());
    }
}
