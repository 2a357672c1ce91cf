//! The `--redis` URL: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for
//! TLS. The password is a secret: `Display` shows the URL with it replaced by `***`,
//! and no error message repeats it.

use std::fmt;

/// Redis's well-known port.
pub const DEFAULT_PORT: u16 = 6379;
/// Databases a default Redis has (`databases 16`); a higher index is refused here
/// rather than by Redis on every connect.
const MAX_DB: u32 = 15;

/// A parsed `--redis` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub tls: bool,                // rediss://
    pub host: String,             // a name or an address (IPv6 without brackets)
    pub port: u16,                // 6379 unless given
    pub db: u32,                  // SELECT index, 0 unless given
    pub user: Option<String>,     // ACL user (Redis 6+), with a password only
    pub password: Option<String>, // AUTH; never printed
}

impl RedisUrl {
    /// Parses a URL; the error never contains the password.
    pub fn parse(input: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = if let Some(rest) = input.strip_prefix("redis://") {
            (false, rest)
        } else if let Some(rest) = input.strip_prefix("rediss://") {
            (true, rest)
        } else {
            return Err("a Redis URL starts with redis:// or rediss://".into());
        };
        // The credentials end at the last '@' (a password may contain '@' unencoded).
        let (credentials, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (authority, db) = match rest.split_once('/') {
            Some((authority, "")) => (authority, 0),
            Some((authority, db)) => {
                let db = db.parse::<u32>().ok().filter(|&db| db <= MAX_DB);
                (authority, db.ok_or_else(|| format!("the database after / is a number 0-{MAX_DB}"))?)
            }
            None => (rest, 0),
        };
        let (host, port) = split_host_port(authority)?;
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = match credentials.split_once(':') {
                    Some((user, password)) => (user, password),
                    None => ("", credentials), // redis://secret@host: a password alone
                };
                let password = percent_decode(password).ok_or("the password has a bad %-escape")?;
                let user = percent_decode(user).ok_or("the user name has a bad %-escape")?;
                ((!user.is_empty()).then_some(user), (!password.is_empty()).then_some(password))
            }
        };
        Ok(RedisUrl { tls, host, port, db, user, password })
    }

    /// `host:port` for the resolver.
    pub fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Shows the URL with the password as `***`: what log lines and errors print.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://")?;
        match (&self.user, &self.password) {
            (Some(user), _) => write!(f, "{user}:***@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.authority(), self.db)
    }
}

/// Debug is Display: a `{:?}` of a config must not leak the password either.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 host needs its closing ]")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the Redis URL names no host".into());
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(port) => port.parse().map_err(|_| "the port is a number 1-65535".to_owned())?,
    };
    Ok((host.to_owned(), port))
}

/// RFC 3986 §2.1 percent-decoding of a userinfo part; `None` on a bad escape or bytes
/// that are not UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_db() {
        let url = RedisUrl::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((url.tls, url.host.as_str(), url.port, url.db), (false, "127.0.0.1", 6380, 2));
        assert_eq!((url.user, url.password), (None, None));
        let url = RedisUrl::parse("redis://localhost").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.db), ("localhost", DEFAULT_PORT, 0));
        let url = RedisUrl::parse("rediss://[::1]:7000/").unwrap();
        assert_eq!((url.tls, url.host.as_str(), url.port, url.authority()), (true, "::1", 7000, "[::1]:7000".into()));
    }

    #[test]
    fn credentials() {
        let url = RedisUrl::parse("redis://:s3cr%40t@h:1/0").unwrap();
        assert_eq!((url.user, url.password.as_deref()), (None, Some("s3cr@t")));
        let url = RedisUrl::parse("redis://alice:p@ss@h").unwrap();
        assert_eq!((url.user.as_deref(), url.password.as_deref()), (Some("alice"), Some("p@ss")));
        let url = RedisUrl::parse("redis://justapassword@h").unwrap();
        assert_eq!((url.user, url.password.as_deref()), (None, Some("justapassword")));
    }

    #[test]
    fn the_password_never_prints() {
        for input in ["redis://:hunter2@h:1/3", "redis://bob:hunter2@h", "rediss://hunter2@h"] {
            let url = RedisUrl::parse(input).unwrap();
            assert!(!url.to_string().contains("hunter2"), "{url}");
            assert!(!format!("{url:?}").contains("hunter2"));
            assert!(url.to_string().contains("***"));
        }
        assert_eq!(RedisUrl::parse("redis://bob:hunter2@h").unwrap().to_string(), "redis://bob:***@h:6379/0");
        for bad in ["redis://:hunter2@h:port", "redis://:hunter2@h/99", "redis://:hunter2%zz@h", "http://:hunter2@h"] {
            let error = RedisUrl::parse(bad).unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn refusals() {
        assert!(RedisUrl::parse("redis://").is_err());
        assert!(RedisUrl::parse("redis://:pw@/0").is_err());
        assert!(RedisUrl::parse("redis://[::1:6379").is_err());
        assert!(RedisUrl::parse("redis://h:70000").is_err());
    }
}
