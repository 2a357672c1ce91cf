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

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::names::percent_decode;
use super::rooms::valid_room_name;

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

/// RFC 5280 §4.1.2.7: a SubjectPublicKeyInfo names its key's algorithm by OID. These are
/// the DER encodings (tag 0x06, length, value) of the ones we accept.
/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017 appendix C).
const OID_RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 (P-256), 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1): the curve ES256 uses.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// id-Ed25519, 1.3.101.112 (RFC 8410 §3).
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER tag of a SEQUENCE (X.690 §8.9).
const DER_SEQUENCE: u8 = 0x30;

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

/// The kinds of public key we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PublicKeyKind {
    Rsa,     // for RS256
    EcP256,  // for ES256
    Ed25519, // for EdDSA
}

/// The kind of a PEM public key, from its label and (for SubjectPublicKeyInfo) its
/// algorithm OID. Errors describe the PEM's shape, never its content.
fn public_key_kind(pem: &[u8]) -> Result<PublicKeyKind, String> {
    let (label, der) = pem_block(pem)?;
    match label {
        // PKCS #1 RSAPublicKey (RFC 8017 appendix A.1.1).
        "RSA PUBLIC KEY" => Ok(PublicKeyKind::Rsa),
        "PUBLIC KEY" => spki_kind(&der),
        label if label.contains("PRIVATE KEY") => {
            Err("this is a private key; give the server the public key (openssl pkey -pubout)".to_owned())
        }
        _ => Err("the PEM is not a public key (expected -----BEGIN PUBLIC KEY-----)".to_owned()),
    }
}

/// The first PEM block (RFC 7468 §2): its label and its base64-decoded body.
fn pem_block(pem: &[u8]) -> Result<(&str, Vec<u8>), String> {
    const NOT_PEM: &str = "not a PEM file (expected -----BEGIN PUBLIC KEY-----)";
    let text = std::str::from_utf8(pem).map_err(|_| NOT_PEM.to_owned())?;
    let mut lines = text.lines().map(str::trim).skip_while(|line| !line.starts_with("-----BEGIN "));
    let begin = lines.next().ok_or(NOT_PEM)?;
    let label = begin.strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")).ok_or(NOT_PEM)?;
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines {
        if line == end {
            let der = BASE64.decode(body).map_err(|_| format!("the {label} PEM body is not valid base64"))?;
            return Ok((label, der));
        }
        body.push_str(line);
    }
    Err(format!("the {label} PEM has no END line"))
}

/// The algorithm of a SubjectPublicKeyInfo (RFC 5280 §4.1):
/// `SEQUENCE { SEQUENCE { algorithm OID, parameters }, BIT STRING }`.
fn spki_kind(der: &[u8]) -> Result<PublicKeyKind, String> {
    const NOT_SPKI: &str = "the PUBLIC KEY PEM is not a SubjectPublicKeyInfo";
    let (spki, _) = der_sequence(der).ok_or(NOT_SPKI)?;
    let (algorithm_identifier, _) = der_sequence(spki).ok_or(NOT_SPKI)?;
    if algorithm_identifier.starts_with(OID_RSA_ENCRYPTION) {
        Ok(PublicKeyKind::Rsa)
    } else if algorithm_identifier.starts_with(OID_ED25519) {
        Ok(PublicKeyKind::Ed25519)
    } else if let Some(curve) = algorithm_identifier.strip_prefix(OID_EC_PUBLIC_KEY) {
        // RFC 5480 §2.1.1: the parameters name the curve; ES256 is P-256 only (RFC 7518 §3.4).
        match curve.starts_with(OID_P256) {
            true => Ok(PublicKeyKind::EcP256),
            false => Err("the EC public key is not on curve P-256 (the only one ES256 uses)".to_owned()),
        }
    } else {
        Err("unsupported public key type (use RSA, EC P-256 or Ed25519)".to_owned())
    }
}

/// The contents of the DER SEQUENCE at the start of `der` (X.690 §8.1: tag, length in
/// short or long form, contents) and the bytes after it.
fn der_sequence(der: &[u8]) -> Option<(&[u8], &[u8])> {
    /// X.690 §8.1.3.5: bit 8 set means the low bits count the length octets that follow.
    const LONG_FORM: u8 = 0x80;
    let (&tag, rest) = der.split_first()?;
    if tag != DER_SEQUENCE {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first & LONG_FORM == 0 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & !LONG_FORM);
        if count == 0 || count > std::mem::size_of::<usize>() || rest.len() < count {
            return None;
        }
        let (octets, rest) = rest.split_at(count);
        (octets.iter().fold(0usize, |len, &octet| (len << 8) | usize::from(octet)), rest)
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    /// A fixed "now" for every test: 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa_public.pem");
    const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa_public_pkcs1.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec_private.pem");
    const EC384_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec384_public.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/ed25519_public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/ed25519_private.pem");

    // ---- fixtures ----

    fn hs_config() -> AuthConfig {
        AuthConfig::from_secret(SECRET).expect("a non-empty secret")
    }

    fn mint_hs(claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).expect("HS256 signs")
    }

    /// Claims valid at `NOW` for user alice.
    fn alice() -> Value {
        json!({ "sub": "alice", "exp": NOW + 3600, "iat": NOW })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().expect("claims are an object").remove(key);
        claims
    }

    fn b64(json: &str) -> String {
        BASE64URL.encode(json)
    }

    // ---- acceptance ----

    #[test]
    fn hs256_token_gives_the_identity() {
        let token = mint_hs(with(alice(), "name", json!("Alice")));
        let id = verify(&hs_config(), &token, NOW).expect("valid");
        assert_eq!(id.user, "alice");
        assert_eq!(id.name, "Alice");
        assert_eq!(id.exp, Some(NOW + 3600));
        assert!(id.rooms.is_any() && id.publish.is_any(), "no rooms claim: every room");
    }

    #[test]
    fn name_falls_back_to_the_user_id_and_numbers_are_ids() {
        let id = verify(&hs_config(), &mint_hs(with(alice(), "sub", json!(42))), NOW).expect("valid");
        assert_eq!((id.user.as_str(), id.name.as_str()), ("42", "42"));
    }

    #[test]
    fn rs256_es256_eddsa_public_keys() {
        let cases = [
            (RSA_PUBLIC, KeyAlgorithm::Rs256, Algorithm::RS256, EncodingKey::from_rsa_pem(RSA_PRIVATE)),
            (RSA_PUBLIC_PKCS1, KeyAlgorithm::Rs256, Algorithm::RS256, EncodingKey::from_rsa_pem(RSA_PRIVATE)),
            (EC_PUBLIC, KeyAlgorithm::Es256, Algorithm::ES256, EncodingKey::from_ec_pem(EC_PRIVATE)),
            (ED_PUBLIC, KeyAlgorithm::EdDsa, Algorithm::EdDSA, EncodingKey::from_ed_pem(ED_PRIVATE)),
        ];
        for (public, kind, alg, private) in cases {
            let config = AuthConfig::from_public_key_pem(public).expect("a supported public key");
            assert_eq!(config.algorithm(), kind);
            let token = encode(&Header::new(alg), &alice(), &private.expect("fixture key")).expect("signs");
            assert_eq!(verify(&config, &token, NOW).map(|id| id.user), Ok("alice".to_owned()), "{kind}");
            // The same claims under the HS256 secret are the wrong algorithm for this key.
            assert_eq!(verify(&config, &mint_hs(alice()), NOW), Err(AuthError::WrongAlgorithm), "{kind}");
        }
    }

    /// A PHP app's token (firebase/php-jwt style): its own claim names, `iss`, `aud`,
    /// `iat`, `nbf`, and no `exp`.
    #[test]
    fn php_style_token() {
        let claims = json!({
            "user_id": 1234, "username": "zoë", "iss": "https://app.example", "aud": "pollcast",
            "iat": NOW - 10, "nbf": NOW - 10,
        });
        let token = mint_hs(claims);
        let mut config = hs_config();
        assert_eq!(verify(&config, &token, NOW), Err(AuthError::MissingExp));
        config.user_claim = "user_id".to_owned();
        config.name_claim = "username".to_owned();
        config.allow_no_exp = true;
        config.issuer = Some("https://app.example".to_owned());
        config.audience = Some("pollcast".to_owned());
        let id = verify(&config, &token, NOW).expect("valid");
        assert_eq!((id.user.as_str(), id.name.as_str(), id.exp), ("1234", "zoë", None));
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let config = hs_config();
        let token = mint_hs(with(alice(), "exp", json!(NOW)));
        assert!(verify(&config, &token, NOW + DEFAULT_LEEWAY_SECS - 1).is_ok());
        assert_eq!(verify(&config, &token, NOW + DEFAULT_LEEWAY_SECS), Err(AuthError::Expired));
        let token = mint_hs(with(alice(), "nbf", json!(NOW + 100)));
        assert!(verify(&config, &token, NOW + 100 - DEFAULT_LEEWAY_SECS).is_ok());
        assert_eq!(verify(&config, &token, NOW + 100 - DEFAULT_LEEWAY_SECS - 1), Err(AuthError::NotYetValid));
        // A fractional NumericDate (RFC 7519 §2) is read too.
        assert!(verify(&config, &mint_hs(with(alice(), "exp", json!(NOW as f64 + 60.5))), NOW).is_ok());
    }

    #[test]
    fn audience_may_be_an_array() {
        let mut config = hs_config();
        config.audience = Some("pollcast".to_owned());
        assert!(verify(&config, &mint_hs(with(alice(), "aud", json!(["web", "pollcast"]))), NOW).is_ok());
        assert_eq!(verify(&config, &mint_hs(with(alice(), "aud", json!(["web"]))), NOW), Err(AuthError::WrongAudience));
    }

    // ---- refusals ----

    #[test]
    fn alg_none_is_refused() {
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&alice().to_string()));
        assert_eq!(verify(&hs_config(), &unsigned, NOW), Err(AuthError::WrongAlgorithm));
        let rsa = AuthConfig::from_public_key_pem(RSA_PUBLIC).expect("key");
        assert_eq!(verify(&rsa, &unsigned, NOW), Err(AuthError::WrongAlgorithm));
        // Spelled differently, or with a stolen signature attached: still refused.
        let real = mint_hs(alice());
        let signature = real.rsplit('.').next().expect("three parts");
        let forged = format!("{}.{}.{signature}", b64(r#"{"alg":"None"}"#), b64(&alice().to_string()));
        assert_eq!(verify(&hs_config(), &forged, NOW), Err(AuthError::WrongAlgorithm));
    }

    /// RFC 8725 §2.1: an HS256 token "signed" with the server's public key as the secret
    /// must not verify against that public key.
    #[test]
    fn algorithm_confusion_is_refused() {
        let config = AuthConfig::from_public_key_pem(RSA_PUBLIC).expect("key");
        let claims = alice();
        let token =
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(RSA_PUBLIC)).expect("signs");
        assert_eq!(verify(&config, &token, NOW), Err(AuthError::WrongAlgorithm));
        let config = AuthConfig::from_public_key_pem(EC_PUBLIC).expect("key");
        let token =
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(EC_PUBLIC)).expect("signs");
        assert_eq!(verify(&config, &token, NOW), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn wrong_signature_is_refused() {
        let other = encode(&Header::new(Algorithm::HS256), &alice(), &EncodingKey::from_secret(b"another secret"))
            .expect("signs");
        assert_eq!(verify(&hs_config(), &other, NOW), Err(AuthError::BadSignature));
        // Changed claims under the original signature.
        let token = mint_hs(alice());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(&with(alice(), "sub", json!("root")).to_string()), parts[2]);
        assert_eq!(verify(&hs_config(), &tampered, NOW), Err(AuthError::BadSignature));
        // An EdDSA signature with one bit changed: the first base64url character of the
        // signature (A = 0, B = 1 in its first bits) so the length stays valid.
        let config = AuthConfig::from_public_key_pem(ED_PUBLIC).expect("key");
        let key = EncodingKey::from_ed_pem(ED_PRIVATE).expect("key");
        let token = encode(&Header::new(Algorithm::EdDSA), &alice(), &key).expect("signs");
        let (signed, signature) = token.rsplit_once('.').expect("three parts");
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert_eq!(verify(&config, &forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let config = hs_config();
        let good = mint_hs(alice());
        let parts: Vec<&str> = good.split('.').collect();
        let signed = |header: &str, payload: &str| {
            let message = format!("{}.{}", b64(header), b64(payload));
            let key = EncodingKey::from_secret(SECRET);
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("signs");
            format!("{message}.{signature}")
        };
        let not_json = signed(r#"{"alg":"HS256"}"#, "not json");
        let crit = format!("{}.{}.{}", b64(r#"{"alg":"HS256","crit":["exp"]}"#), parts[1], parts[2]);
        let no_alg = format!("{}.{}.{}", b64(r#"{"typ":"JWT"}"#), parts[1], parts[2]);
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", &no_alg, &crit, &not_json] {
            assert_eq!(verify(&config, token, NOW), Err(AuthError::Malformed), "{token:?}");
        }
        // Claims that are JSON but not an object, correctly signed: still malformed.
        assert_eq!(verify(&config, &signed(r#"{"alg":"HS256"}"#, "[1,2]"), NOW), Err(AuthError::Malformed));
        // jsonwebtoken pre-reads `sub`, `iss` and `aud` and fails on an array where it
        // expects a string (it stops mid-value): refused, as malformed.
        let array_sub = mint_hs(with(alice(), "sub", json!(["alice"])));
        assert_eq!(verify(&config, &array_sub, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn time_refusals() {
        let config = hs_config();
        let expired = mint_hs(with(alice(), "exp", json!(NOW - 3600)));
        assert_eq!(verify(&config, &expired, NOW), Err(AuthError::Expired));
        let early = mint_hs(with(alice(), "nbf", json!(NOW + 3600)));
        assert_eq!(verify(&config, &early, NOW), Err(AuthError::NotYetValid));
        let no_exp = mint_hs(without(alice(), "exp"));
        assert_eq!(verify(&config, &no_exp, NOW), Err(AuthError::MissingExp));
        let text_exp = mint_hs(with(alice(), "exp", json!("tomorrow")));
        assert!(matches!(verify(&config, &text_exp, NOW), Err(AuthError::BadClaims(_))));
        let mut lenient = hs_config();
        lenient.allow_no_exp = true;
        assert!(verify(&lenient, &no_exp, NOW).is_ok());
        assert_eq!(verify(&lenient, &expired, NOW), Err(AuthError::Expired), "allow_no_exp still checks exp");
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let mut config = hs_config();
        config.issuer = Some("https://app.example".to_owned());
        config.audience = Some("pollcast".to_owned());
        let good = with(with(alice(), "iss", json!("https://app.example")), "aud", json!("pollcast"));
        assert!(verify(&config, &mint_hs(good.clone()), NOW).is_ok());
        let cases = [
            (with(good.clone(), "iss", json!("https://evil.example")), AuthError::WrongIssuer),
            (without(good.clone(), "iss"), AuthError::WrongIssuer),
            (with(good.clone(), "aud", json!("other")), AuthError::WrongAudience),
            (without(good.clone(), "aud"), AuthError::WrongAudience),
        ];
        for (claims, error) in cases {
            assert_eq!(verify(&config, &mint_hs(claims), NOW), Err(error));
        }
        // Not configured: not checked.
        assert!(verify(&hs_config(), &mint_hs(with(alice(), "aud", json!("anyone"))), NOW).is_ok());
    }

    #[test]
    fn bad_user_and_name_claims() {
        let config = hs_config();
        let bad = [
            without(alice(), "sub"),
            with(alice(), "sub", json!("")),
            with(alice(), "sub", json!("two words")),
            with(alice(), "sub", json!("x".repeat(65))),
            with(alice(), "sub", json!(1.5)),
            with(alice(), "name", json!("tab\there")),
            with(alice(), "name", json!("bell\u{7}")),
            with(alice(), "name", json!(7)),
            with(alice(), "rooms", json!(7)),
            with(alice(), "rooms", json!(["ok", 7])),
            with(alice(), "rooms", json!("bad room")),
            with(alice(), "publish", json!("a*b")),
        ];
        for claims in bad {
            let result = verify(&config, &mint_hs(claims.clone()), NOW);
            assert!(matches!(result, Err(AuthError::BadClaims(_))), "{claims}: {result:?}");
        }
        assert!(verify(&config, &mint_hs(with(alice(), "sub", json!("é".repeat(64)))), NOW).is_ok());
        // A user claim of our own naming that is not a string or integer.
        let mut config = hs_config();
        config.user_claim = "uid".to_owned();
        let result = verify(&config, &mint_hs(with(alice(), "uid", json!({ "id": "alice" }))), NOW);
        assert!(matches!(result, Err(AuthError::BadClaims(_))), "{result:?}");
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let token = mint_hs(with(alice(), "exp", json!(NOW - 3600)));
        let error = verify(&hs_config(), &token, NOW).expect_err("expired");
        assert_eq!(error.to_string(), "token expired");
        assert!(!format!("{error:?}").contains(&token[..20]));
        let config = format!("{:?}", hs_config());
        assert!(!config.contains("thirty-two"), "the Debug output shows no key: {config}");
    }

    // ---- keys ----

    #[test]
    fn key_kinds_are_detected_and_bad_keys_explained() {
        assert!(AuthConfig::from_public_key_pem(EC384_PUBLIC).expect_err("P-384").contains("P-256"));
        assert!(AuthConfig::from_public_key_pem(RSA_PRIVATE).expect_err("private").contains("private key"));
        assert!(AuthConfig::from_public_key_pem(b"hello").expect_err("not PEM").contains("not a PEM"));
        let truncated = &RSA_PUBLIC[..RSA_PUBLIC.len() / 2];
        let error = AuthConfig::from_public_key_pem(truncated).expect_err("truncated");
        assert!(error.contains("END"), "{error}");
        let cert = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(AuthConfig::from_public_key_pem(cert).expect_err("certificate").contains("not a public key"));
        let garbage = b"-----BEGIN PUBLIC KEY-----\nMAMCAQE=\n-----END PUBLIC KEY-----\n";
        assert!(AuthConfig::from_public_key_pem(garbage).is_err());
        // No error carries a line of the key.
        let body_line = std::str::from_utf8(RSA_PUBLIC).expect("ascii").lines().nth(1).expect("a body line");
        for bad in [truncated, RSA_PRIVATE] {
            assert!(!AuthConfig::from_public_key_pem(bad).expect_err("bad").contains(&body_line[..16]));
        }
    }

    #[test]
    fn secret_file_trimming() {
        assert_eq!(secret_from_file(b"s3cret\n"), Ok(&b"s3cret"[..]));
        assert_eq!(secret_from_file(b"s3cret\r\n"), Ok(&b"s3cret"[..]));
        assert_eq!(secret_from_file(b"s3cret\n\n"), Ok(&b"s3cret\n"[..]), "only one line end");
        assert_eq!(secret_from_file(b" s3cret "), Ok(&b" s3cret "[..]), "spaces are part of it");
        assert!(secret_from_file(b"\n").is_err());
        assert!(secret_from_file(b"").is_err());
        assert!(AuthConfig::from_secret(b"short\n").expect("accepted").short_secret());
        assert!(!hs_config().short_secret());
        assert!(!AuthConfig::from_public_key_pem(ED_PUBLIC).expect("key").short_secret());
        // A token signed with the trimmed secret verifies against the file with its newline.
        let file = [SECRET, b"\n"].concat();
        assert!(verify(&AuthConfig::from_secret(&file).expect("secret"), &mint_hs(alice()), NOW).is_ok());
    }

    // ---- rooms ----

    #[test]
    fn patterns_match_exact_prefix_and_any() {
        let patterns = Patterns::parse("games, team-*").expect("valid");
        assert!(patterns.allows("games"));
        assert!(!patterns.allows("games2"));
        assert!(patterns.allows("team-red"));
        assert!(patterns.allows("team-"));
        assert!(!patterns.allows("team"));
        assert!(!patterns.allows("lobby"));
        assert_eq!(patterns.to_string(), "games,team-*");
        assert!(Patterns::any().allows("anything") && Patterns::any().is_any());
        assert!(Patterns::parse("*").expect("valid").is_any());
        assert!(!Patterns::none().allows("lobby"));
        assert_eq!(Patterns::parse(""), Ok(Patterns::none()));
        assert_eq!(Patterns::parse(" , "), Ok(Patterns::none()));
        assert_eq!(Patterns::parse("lobby").map(|p| p.allows("lobby")), Ok(true));
        for bad in ["a*b", "**", "*x", "a b", "x/y", "team-**"] {
            assert!(Patterns::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rooms_and_publish_claims() {
        let config = hs_config();
        let claims = with(with(alice(), "rooms", json!(["games", "team-*"])), "publish", json!("team-*,lobby"));
        let id = verify(&config, &mint_hs(claims), NOW).expect("valid");
        assert!(id.may_join("games") && id.may_join("team-red") && !id.may_join("lobby"));
        assert!(id.may_publish("team-red"));
        assert!(!id.may_publish("games"), "not in publish");
        assert!(!id.may_publish("lobby"), "publish never widens rooms");
        // Absent publish: same as rooms.
        let id = verify(&config, &mint_hs(with(alice(), "rooms", json!("games"))), NOW).expect("valid");
        assert!(id.may_publish("games") && !id.may_publish("team-red"));
        // An empty list: nowhere.
        let id = verify(&config, &mint_hs(with(alice(), "rooms", json!([]))), NOW).expect("valid");
        assert!(!id.may_join("lobby"));
    }

    // ---- requests and logs ----

    #[test]
    fn tokens_from_header_or_query() {
        assert_eq!(token_from_request(None, Some("Bearer abc.def.ghi")).as_deref(), Some("abc.def.ghi"));
        assert_eq!(token_from_request(None, Some("bearer  abc ")).as_deref(), Some("abc"));
        assert_eq!(token_from_request(None, Some("BEARER\tabc")).as_deref(), Some("abc"));
        assert_eq!(token_from_request(None, Some("Basic dXNlcjpwdw==")), None);
        assert_eq!(token_from_request(None, Some("Bearer")), None);
        assert_eq!(token_from_request(None, Some("Bearer ")), None);
        assert_eq!(token_from_request(Some("a.b%2Ec"), None).as_deref(), Some("a.b.c"));
        assert_eq!(token_from_request(Some("%zz"), None), None);
        assert_eq!(token_from_request(Some(""), None), None);
        assert_eq!(token_from_request(Some("query"), Some("Bearer header")).as_deref(), Some("header"));
        assert_eq!(token_from_request(Some("query"), Some("Basic x")).as_deref(), Some("query"));
        assert_eq!(token_from_request(None, None), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_token("/games?token=abc.def&name=ann"), "/games?token=REDACTED&name=ann");
        assert_eq!(redact_token("/?name=ann&token=x&token=y"), "/?name=ann&token=REDACTED&token=REDACTED");
        assert_eq!(redact_token("/?token="), "/?token=REDACTED");
        assert_eq!(redact_token("/?mytoken=x&token"), "/?mytoken=x&token");
        assert_eq!(redact_token("/lobby"), "/lobby");
        assert_eq!(redact_token("/lobby?"), "/lobby?");
    }
}
