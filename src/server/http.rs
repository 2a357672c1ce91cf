//! Plain HTTP answers on the public port: the page, `/healthz`, 404. (`/metrics` and the
//! API are the admin port's: `admin.rs`.)
//!
//! Owns: which path gets which body. Must not touch: sockets (it returns response bytes).

use crate::proto::handshake::{http_response, Status};

/// The page served on `GET /`, embedded in the binary.
const INDEX_HTML: &str = include_str!("../web/index.html");

/// The response to a plain `GET path` on the public port; `degraded`: why the node is
/// not fully serving (its Redis links are down), which `/healthz` answers 503.
pub fn answer(path: &str, degraded: Option<&str>) -> Vec<u8> {
    match path {
        "/" | "/index.html" => http_response(Status::Ok, "text/html; charset=utf-8", INDEX_HTML.as_bytes()),
        "/healthz" => healthz(degraded),
        _ => http_response(Status::NotFound, "text/plain; charset=utf-8", b"404 Not Found\n"),
    }
}

/// `/healthz` on either port: `200 ok`, or `503` with the reason the node is degraded.
pub fn healthz(degraded: Option<&str>) -> Vec<u8> {
    match degraded {
        None => http_response(Status::Ok, "text/plain; charset=utf-8", b"ok\n"),
        Some(why) => {
            http_response(Status::ServiceUnavailable, "text/plain; charset=utf-8", format!("{why}\n").as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let text = |path| String::from_utf8(answer(path, None)).unwrap();
        assert!(text("/healthz").starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text("/healthz").ends_with("\r\n\r\nok\n"));
        assert!(text("/").contains("pollcast"));
        assert!(text("/metrics").starts_with("HTTP/1.1 404 Not Found\r\n"), "metrics are the admin port's");
        assert!(text("/nope").starts_with("HTTP/1.1 404 Not Found\r\n"));
        let degraded = String::from_utf8(answer("/healthz", Some("degraded: redis down"))).unwrap();
        assert!(degraded.starts_with("HTTP/1.1 503 ") && degraded.ends_with("\r\n\r\ndegraded: redis down\n"));
    }
}
