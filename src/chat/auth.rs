//! Who a connection is: JSON Web Token verification (RFC 7519) and room permissions.
//!
//! Owns: the verification key and the one algorithm it implies, every rule a token must
//! pass (signature, `exp`/`nbf` against a `now` passed in, `iss`, `aud`), the mapping of
//! claims to an [`Identity`], room patterns ([`Patterns`]), finding a token in an upgrade
//! request ([`token_from_request`]) and keeping it out of logs ([`redact_token`]).
//! Must not touch: sockets, the clock, files, or what happens to a refused connection
//! (the shell picks the HTTP status and logs the [`AuthError::reason`]). It is pure, like
//! `proto/`: the time is an argument, so tests can mint a token and jump past its expiry.
//!
//! Where it sits in the loop: the shell calls [`verify`] once per upgrade request, with the
//! loop's `now` as Unix seconds, before the connection joins the chat; the chat core then
//! asks the [`Identity`] before each join and each publish.
//!
//! The cryptography is `jsonwebtoken`'s; this module only decides what is acceptable.
//! Its own time checks are switched off (it would read the system clock), and so are its
//! `iss`/`aud` checks, so each refusal here has one distinct [`AuthError`].

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::names::percent_decode;
use super::rooms::valid_room_name;
use keys::{public_key_kind, PublicKeyKind};

/// Seconds of clock skew tolerated on `exp` and `nbf` by default (RFC 7519 §4.1.4:
/// "Implementers MAY provide for some small leeway, usually no more than a few minutes").
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The claim holding the user id by default (RFC 7519 §4.1.2, "sub").
pub const DEFAULT_USER_CLAIM: &str = "sub";
/// The claim holding the display name by default (OpenID Connect Core §5.1, "name").
pub const DEFAULT_NAME_CLAIM: &str = "name";
/// Longest user id or name accepted from a token, in characters.
pub const MAX_IDENTITY_CHARS: usize = 64;
/// RFC 7518 §3.2: "A key of the same size as the hash output (for instance, 256 bits for
/// "HS256") or larger MUST be used". Shorter secrets are accepted (existing deployments
/// have them) but the shell should warn; see [`AuthConfig::short_secret`].
pub const MIN_SECRET_BYTES: usize = 32;
/// What [`redact_token`] puts in place of a token.
pub const REDACTED: &str = "REDACTED";
/// The query parameter that carries a token (browsers cannot set headers on a WebSocket).
pub const TOKEN_PARAM: &str = "token";

/// The one signature algorithm a server accepts, implied by its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Hs256, // HMAC SHA-256 with a shared secret (RFC 7518 §3.2)
    Rs256, // RSASSA-PKCS1-v1_5 SHA-256 with an RSA public key (RFC 7518 §3.3)
    Es256, // ECDSA P-256 SHA-256 with an EC public key (RFC 7518 §3.4)
    EdDsa, // Ed25519 with an Ed25519 public key (RFC 8037 §3.1)
}

impl KeyAlgorithm {
    /// The `alg` header value (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::Hs256 => "HS256",
            KeyAlgorithm::Rs256 => "RS256",
            KeyAlgorithm::Es256 => "ES256",
            KeyAlgorithm::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::Hs256 => Algorithm::HS256,
            KeyAlgorithm::Rs256 => Algorithm::RS256,
            KeyAlgorithm::Es256 => Algorithm::ES256,
            KeyAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How tokens are verified (`--jwt-secret-file` or `--jwt-public-key` and friends).
///
/// The key and its algorithm are set together by a constructor and cannot be changed
/// apart, so a token can never be checked with a key of another kind (algorithm
/// confusion, RFC 8725 §2.1). The other fields are plain settings.
#[derive(Clone)]
pub struct AuthConfig {
    key: DecodingKey,             // verifies signatures; never printed (see the Debug impl)
    algorithm: KeyAlgorithm,      // the only `alg` accepted, implied by `key`
    secret_len: Option<usize>,    // bytes of an HS256 secret (None for a public key), for the warning
    pub leeway_secs: u64,         // clock skew allowed on `exp` and `nbf`, in seconds (default 30)
    pub issuer: Option<String>,   // when set, `iss` must equal it (RFC 7519 §4.1.1)
    pub audience: Option<String>, // when set, `aud` must be or contain it (RFC 7519 §4.1.3)
    pub allow_no_exp: bool,       // accept tokens without `exp` (they never expire); default false
    pub user_claim: String,       // claim holding the user id (default "sub")
    pub name_claim: String,       // claim holding the display name (default "name"; else the user id)
}

impl AuthConfig {
    /// HS256 with a shared secret: the contents of a secret file, see [`secret_from_file`].
    pub fn from_secret(file: &[u8]) -> Result<AuthConfig, String> {
        let secret = secret_from_file(file)?;
        let key = DecodingKey::from_secret(secret);
        Ok(AuthConfig::with_key(key, KeyAlgorithm::Hs256, Some(secret.len())))
    }

    /// A PEM public key; its kind implies the algorithm: RSA → RS256, EC P-256 → ES256,
    /// Ed25519 → EdDSA. The kind is read from the PEM label and, for `PUBLIC KEY`
    /// (SubjectPublicKeyInfo, RFC 5280 §4.1), from the algorithm OID inside it.
    /// Private keys are refused: the server only needs, and should only hold, the public
    /// half. The error names what is wrong, never the key's bytes.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<AuthConfig, String> {
        let (key, algorithm) = match public_key_kind(pem)? {
            PublicKeyKind::Rsa => (DecodingKey::from_rsa_pem(pem), KeyAlgorithm::Rs256),
            PublicKeyKind::EcP256 => (DecodingKey::from_ec_pem(pem), KeyAlgorithm::Es256),
            PublicKeyKind::Ed25519 => (DecodingKey::from_ed_pem(pem), KeyAlgorithm::EdDsa),
        };
        let key = key.map_err(|_| format!("the {algorithm} public key could not be read (is the PEM complete?)"))?;
        Ok(AuthConfig::with_key(key, algorithm, None))
    }

    fn with_key(key: DecodingKey, algorithm: KeyAlgorithm, secret_len: Option<usize>) -> AuthConfig {
        AuthConfig {
            key,
            algorithm,
            secret_len,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            issuer: None,
            audience: None,
            allow_no_exp: false,
            user_claim: DEFAULT_USER_CLAIM.to_owned(),
            name_claim: DEFAULT_NAME_CLAIM.to_owned(),
        }
    }

    /// The only algorithm tokens may be signed with.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// An HS256 secret shorter than RFC 7518 §3.2 requires (worth a warning at startup).
    pub fn short_secret(&self) -> bool {
        self.secret_len.is_some_and(|len| len < MIN_SECRET_BYTES)
    }
}

impl fmt::Debug for AuthConfig {
    /// Everything but the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("leeway_secs", &self.leeway_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("allow_no_exp", &self.allow_no_exp)
            .field("user_claim", &self.user_claim)
            .field("name_claim", &self.name_claim)
            .finish_non_exhaustive()
    }
}

/// The secret in a secret file: its bytes with one trailing line end (`\n` or `\r\n`)
/// removed, as `echo secret > file` or an editor leaves it. Anything else is kept, so a
/// secret may contain any byte. Shared by the server and `pollcast token`, so both sign
/// and verify with the same bytes. An empty secret is refused.
pub fn secret_from_file(file: &[u8]) -> Result<&[u8], String> {
    let secret = file.strip_suffix(b"\r\n").or_else(|| file.strip_suffix(b"\n")).unwrap_or(file);
    if secret.is_empty() {
        return Err("the JWT secret file is empty; put the shared secret in it".to_owned());
    }
    Ok(secret)
}

/// Why a token was refused. [`reason`](AuthError::reason) is short, safe to log and to
/// send, and never contains the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Malformed,               // not three base64url parts of JSON objects (RFC 7515 §7.1), or a `crit` header
    WrongAlgorithm,          // `alg` is not the configured one: `none`, or HS256 against a public key
    BadSignature,            // the signature does not verify with the configured key
    Expired,                 // `exp` is past, beyond the leeway (RFC 7519 §4.1.4)
    NotYetValid,             // `nbf` is ahead, beyond the leeway (RFC 7519 §4.1.5)
    MissingExp,              // no `exp` and `allow_no_exp` is off
    WrongIssuer,             // `iss` missing or not the configured issuer
    WrongAudience,           // `aud` missing or not naming the configured audience
    BadClaims(&'static str), // a claim this server reads is missing or unusable; which one
}

impl AuthError {
    /// A short human reason, e.g. `"token expired"`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed token",
            AuthError::WrongAlgorithm => "token algorithm not allowed",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::MissingExp => "token has no expiry",
            AuthError::WrongIssuer => "wrong token issuer",
            AuthError::WrongAudience => "wrong token audience",
            AuthError::BadClaims(which) => which,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// Who a verified token says the connection is, and where it may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,      // the user id (the `user_claim`), 1-64 printable characters
    pub name: String,      // the display name (the `name_claim`, else the user id)
    pub exp: Option<u64>,  // when the token expires, Unix seconds (None: allowed without)
    pub rooms: Patterns,   // rooms it may join (claim `rooms`; absent: every room)
    pub publish: Patterns, // rooms it may send to (claim `publish`; absent: same as `rooms`)
}

impl Identity {
    /// May this identity join `room`?
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.allows(room)
    }

    /// May this identity send to `room`? Only where it may also join: `publish` narrows
    /// `rooms`, it never widens it.
    pub fn may_publish(&self, room: &str) -> bool {
        self.rooms.allows(room) && self.publish.allows(room)
    }
}

/// Verifies `token` and maps its claims to an [`Identity`]. `now_secs` is the current
/// Unix time in seconds, read by the caller.
///
/// The checks, in order: the header's `alg` is the configured one; the signature (by
/// `jsonwebtoken`, before any claim is read); `exp` and `nbf` with the leeway; `iss` and
/// `aud` when configured; the user id, name, `rooms` and `publish` claims.
pub fn verify(config: &AuthConfig, token: &str, now_secs: u64) -> Result<Identity, AuthError> {
    check_header(token, config.algorithm)?;
    let claims = decode_claims(config, token)?;
    check_times(config, &claims, now_secs)?;
    check_issuer_and_audience(config, &claims)?;
    identity(config, &claims)
}

/// `exp` (required unless `allow_no_exp`) and `nbf`, against `now_secs` with the leeway.
fn check_times(config: &AuthConfig, claims: &Map<String, Value>, now_secs: u64) -> Result<(), AuthError> {
    match claims.get("exp") {
        None if config.allow_no_exp => {}
        None => return Err(AuthError::MissingExp),
        // RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time".
        Some(exp) => {
            let exp = numeric_date(exp).ok_or(AuthError::BadClaims("exp is not a NumericDate"))?;
            if now_secs >= exp.saturating_add(config.leeway_secs) {
                return Err(AuthError::Expired);
            }
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        // RFC 7519 §4.1.5: "the current date/time MUST be after or equal to the not-before date/time".
        let nbf = numeric_date(nbf).ok_or(AuthError::BadClaims("nbf is not a NumericDate"))?;
        if now_secs.saturating_add(config.leeway_secs) < nbf {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(())
}

/// `iss` and `aud`, when the server names them.
fn check_issuer_and_audience(config: &AuthConfig, claims: &Map<String, Value>) -> Result<(), AuthError> {
    if let Some(issuer) = &config.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
    }
    if let Some(audience) = &config.audience {
        // RFC 7519 §4.1.3: `aud` is one string or an array of strings; we must be in it.
        let named = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience.as_str())),
            _ => false,
        };
        if !named {
            return Err(AuthError::WrongAudience);
        }
    }
    Ok(())
}

/// The identity the claims describe: user id, name, expiry and room patterns.
fn identity(config: &AuthConfig, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
    let user = match claims.get(&config.user_claim) {
        Some(Value::String(user)) => user.clone(),
        Some(Value::Number(id)) if id.is_i64() || id.is_u64() => id.to_string(),
        _ => return Err(AuthError::BadClaims("user id claim missing or not a string or integer")),
    };
    if !valid_identity_text(&user) {
        return Err(AuthError::BadClaims("user id must be 1-64 printable characters without spaces"));
    }
    let name = match claims.get(&config.name_claim) {
        None | Some(Value::Null) => user.clone(),
        Some(Value::String(name)) if valid_identity_text(name) => name.clone(),
        Some(_) => return Err(AuthError::BadClaims("name must be 1-64 printable characters without spaces")),
    };
    let rooms = match claims.get("rooms") {
        None => Patterns::any(),
        Some(list) => claim_patterns(list).ok_or(AuthError::BadClaims("rooms is not a list of room patterns"))?,
    };
    let publish = match claims.get("publish") {
        None => rooms.clone(),
        Some(list) => claim_patterns(list).ok_or(AuthError::BadClaims("publish is not a list of room patterns"))?,
    };
    let exp = claims.get("exp").and_then(numeric_date);
    Ok(Identity { user, name, exp, rooms, publish })
}

/// Checks the JOSE header before anything else: `alg` must be exactly the configured
/// algorithm (RFC 8725 §3.1: "libraries MUST enable the caller to specify a supported
/// set of algorithms and MUST NOT use any other algorithms"), which refuses `none` and
/// algorithm confusion with a distinct error.
fn check_header(token: &str, algorithm: KeyAlgorithm) -> Result<(), AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    let header = BASE64URL.decode(header).map_err(|_| AuthError::Malformed)?;
    let header: Map<String, Value> = serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` that are not understood MUST be
    // refused; we understand none.
    if header.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    match header.get("alg").and_then(Value::as_str) {
        None => Err(AuthError::Malformed),
        Some(alg) if alg == algorithm.name() => Ok(()),
        Some(_) => Err(AuthError::WrongAlgorithm),
    }
}

/// The signature check and the claims as a JSON object, by `jsonwebtoken` with every
/// check of its own that reads the clock, or that we do ourselves, switched off.
fn decode_claims(config: &AuthConfig, token: &str) -> Result<Map<String, Value>, AuthError> {
    let mut validation = Validation::new(config.algorithm.jwt());
    validation.validate_exp = false; // it would read SystemTime; we compare with `now_secs`
    validation.validate_nbf = false; // likewise
    validation.validate_aud = false; // checked in `verify`, so a refusal names the claim
    validation.required_spec_claims.clear(); // `exp` is required or not by `allow_no_exp`
    match jsonwebtoken::decode::<Map<String, Value>>(token, &config.key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
            _ => AuthError::Malformed,
        }),
    }
}

/// RFC 7519 §2: a NumericDate is seconds since the epoch, possibly with a fraction.
fn numeric_date(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(secs) = number.as_u64() {
        return Some(secs);
    }
    let secs = number.as_f64()?;
    // Dropping the fraction: a date is "before" `exp` for the whole second.
    (secs.is_finite() && secs >= 0.0 && secs < u64::MAX as f64).then_some(secs as u64)
}

/// A user id or name: 1-64 characters, none of them control or white-space characters
/// (the chat core separates fields with spaces).
fn valid_identity_text(text: &str) -> bool {
    let printable = |c: char| !c.is_control() && !c.is_whitespace();
    (1..=MAX_IDENTITY_CHARS).contains(&text.chars().count()) && text.chars().all(printable)
}

/// A `rooms` or `publish` claim: an array of strings or one comma-separated string.
fn claim_patterns(value: &Value) -> Option<Patterns> {
    match value {
        Value::String(list) => Patterns::parse(list).ok(),
        Value::Array(items) => {
            let items: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            Patterns::from_items(items?).ok()
        }
        _ => None,
    }
}

/// One room pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),  // `games`: that room only
    Prefix(String), // `team-*`: rooms starting with `team-`; `*` alone is the empty prefix
}

/// A set of room patterns: exact names, a name with one trailing `*` (a prefix), or `*`
/// alone (every room). Used for a token's `rooms` and `publish` and for guests' rooms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patterns {
    items: Vec<Pattern>, // allowed if any matches; empty allows nothing
}

impl Patterns {
    /// Every room (`*`).
    pub fn any() -> Patterns {
        Patterns { items: vec![Pattern::Prefix(String::new())] }
    }

    /// No room at all.
    pub fn none() -> Patterns {
        Patterns { items: Vec::new() }
    }

    /// A comma-separated list (`games,team-*`); blanks around items and empty items are
    /// skipped, so `""` allows nothing. The error names the bad item.
    pub fn parse(list: &str) -> Result<Patterns, String> {
        Patterns::from_items(list.split(','))
    }

    /// One pattern per item, as in a JSON array; blank items are skipped.
    pub fn from_items<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Result<Patterns, String> {
        let mut patterns = Vec::new();
        for item in items {
            let item = item.as_ref().trim();
            let pattern = match item.strip_suffix('*') {
                _ if item.is_empty() => continue,
                Some("") => Pattern::Prefix(String::new()),
                Some(prefix) if valid_room_name(prefix) => Pattern::Prefix(prefix.to_owned()),
                None if valid_room_name(item) => Pattern::Exact(item.to_owned()),
                _ => {
                    return Err(format!(
                        "'{item}' is not a room pattern (a room name, a room name prefix ending in *, or *)"
                    ))
                }
            };
            patterns.push(pattern);
        }
        Ok(Patterns { items: patterns })
    }

    /// Does some pattern match `room`?
    pub fn allows(&self, room: &str) -> bool {
        self.items.iter().any(|pattern| match pattern {
            Pattern::Exact(name) => name == room,
            Pattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        })
    }

    /// Does it allow every room?
    pub fn is_any(&self) -> bool {
        self.items.iter().any(|pattern| matches!(pattern, Pattern::Prefix(prefix) if prefix.is_empty()))
    }
}

impl fmt::Display for Patterns {
    /// As `parse` reads it: `games,team-*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pattern) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match pattern {
                Pattern::Exact(name) => f.write_str(name)?,
                Pattern::Prefix(prefix) => write!(f, "{prefix}*")?,
            }
        }
        Ok(())
    }
}

/// The token an upgrade request carries, if any: the `Authorization: Bearer` header
/// (RFC 6750 §2.1; the scheme is case-insensitive, RFC 7235 §2.1) or else the `token`
/// query parameter, percent-decoded (RFC 6750 §2.3; browsers cannot set headers on a
/// WebSocket, so this is how the built-in page sends it).
///
/// The header wins when both are present: it is the channel RFC 6750 prefers, and it
/// stays out of access logs. `query_token` is the raw value of `token=` (as
/// `proto::handshake::query_param` returns it); a bad escape or an empty value counts
/// as no token.
pub fn token_from_request(query_token: Option<&str>, authorization: Option<&str>) -> Option<String> {
    let bearer = authorization.and_then(|value| {
        let (scheme, credentials) = value.trim().split_once([' ', '\t'])?;
        let credentials = credentials.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then(|| credentials.to_owned())
    });
    bearer.or_else(|| query_token.and_then(percent_decode).filter(|token| !token.is_empty()))
}

/// `path_and_query` with the value of every `token` query parameter replaced by
/// `REDACTED`, for log lines. Parameters are matched as `query_param` matches them
/// (the undecoded name, exactly), so whatever the server would read as a token is hidden.
pub fn redact_token(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((TOKEN_PARAM, _)) => {
                out.push_str(TOKEN_PARAM);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out
}

mod keys;
#[cfg(test)]
mod tests;
