//! Tests of `auth.rs`.

use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

/// A fixed "now" for every test: 2023-11-14T22:13:20Z.
const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
const RSA_PUBLIC: &[u8] = include_bytes!("../../../tests/fixtures/jwt/rsa_public.pem");
const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("../../../tests/fixtures/jwt/rsa_public_pkcs1.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("../../../tests/fixtures/jwt/rsa_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../../tests/fixtures/jwt/ec_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../../tests/fixtures/jwt/ec_private.pem");
const EC384_PUBLIC: &[u8] = include_bytes!("../../../tests/fixtures/jwt/ec384_public.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../../tests/fixtures/jwt/ed25519_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../../tests/fixtures/jwt/ed25519_private.pem");

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
    let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(RSA_PUBLIC)).expect("signs");
    assert_eq!(verify(&config, &token, NOW), Err(AuthError::WrongAlgorithm));
    let config = AuthConfig::from_public_key_pem(EC_PUBLIC).expect("key");
    let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(EC_PUBLIC)).expect("signs");
    assert_eq!(verify(&config, &token, NOW), Err(AuthError::WrongAlgorithm));
}

#[test]
fn wrong_signature_is_refused() {
    let other =
        encode(&Header::new(Algorithm::HS256), &alice(), &EncodingKey::from_secret(b"another secret")).expect("signs");
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
