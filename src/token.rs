//! `pollcast token`: mint an HS256 token (RFC 7519) with the server's shared secret, for
//! trying authentication out, for scripts, and for tests.
//!
//! Owns: the subcommand's flags, reading the secret file, the claims it writes and the
//! one line it prints. Must not touch: the server. The secret is read and trimmed by
//! `chat::auth::secret_from_file`, the same function the server uses, and every token is
//! checked with `chat::auth::verify` before it is printed, so a token the server would
//! refuse (bad user id, bad room pattern) is never printed.
//!
//! Unlike the pure core this module reads a file and the system clock: it is a command
//! line tool, run once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use crate::chat::auth::{secret_from_file, verify, AuthConfig, AuthError, Patterns, MIN_SECRET_BYTES};
use crate::config::parse_duration;

/// Seconds in an hour, for `--ttl 1h`.
const SECS_PER_HOUR: f64 = 3600.0;

/// Arguments of `pollcast token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The user id (the `sub` claim): 1-64 printable characters without spaces.
    #[arg(long)]
    pub sub: String,

    /// Display name (the `name` claim) [default: the user id].
    #[arg(long)]
    pub name: Option<String>,

    /// Rooms the token may join, comma-separated: names, prefixes ending in `*`, or `*`
    /// [default: every room].
    #[arg(long)]
    pub rooms: Option<String>,

    /// Rooms the token may send to, same form [default: the same as --rooms].
    #[arg(long)]
    pub publish: Option<String>,

    /// Lifetime: the token expires this long after now (h, m, s or ms).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// File holding the shared secret the server verifies with (one trailing newline
    /// is not part of the secret).
    #[arg(long, env = "POLLCAST_JWT_SECRET_FILE")]
    pub jwt_secret_file: PathBuf,
}

/// Runs the subcommand: the token on stdout, one line; or what to fix on stderr.
pub fn run(args: TokenArgs) -> ExitCode {
    let file = match std::fs::read(&args.jwt_secret_file) {
        Ok(file) => file,
        Err(e) => {
            // The io::Error names the problem (not found, permission), never the content.
            eprintln!("pollcast token: cannot read the JWT secret file {}: {e}", args.jwt_secret_file.display());
            return ExitCode::FAILURE;
        }
    };
    let now_secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs(),
        Err(_) => {
            eprintln!("pollcast token: the system clock is before 1970; fix the clock");
            return ExitCode::FAILURE;
        }
    };
    match mint(&args, &file, now_secs) {
        Ok(token) => {
            if secret_from_file(&file).is_ok_and(|secret| secret.len() < MIN_SECRET_BYTES) {
                eprintln!(
                    "pollcast token: warning: the secret is shorter than {MIN_SECRET_BYTES} bytes \
                     (RFC 7518 §3.2 requires at least 256 bits for HS256); use a longer one"
                );
            }
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("pollcast token: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The token for `args`, signed with the secret in `secret_file` (the file's bytes),
/// issued at `now_secs`. Errors name the flag to fix and never contain the secret.
pub fn mint(args: &TokenArgs, secret_file: &[u8], now_secs: u64) -> Result<String, String> {
    let config = AuthConfig::from_secret(secret_file).map_err(|why| format!("{why} (--jwt-secret-file)"))?;
    let secret = secret_from_file(secret_file)?;
    let ttl = args.ttl.as_secs();
    if ttl == 0 {
        return Err("--ttl must be at least 1s".to_owned());
    }

    let mut claims = Map::new();
    claims.insert("sub".to_owned(), json!(args.sub));
    if let Some(name) = &args.name {
        claims.insert("name".to_owned(), json!(name));
    }
    claims.insert("iat".to_owned(), json!(now_secs));
    claims.insert("exp".to_owned(), json!(now_secs.saturating_add(ttl)));
    for (claim, flag, list) in [("rooms", "--rooms", &args.rooms), ("publish", "--publish", &args.publish)] {
        let Some(list) = list else { continue };
        let patterns = Patterns::parse(list).map_err(|why| format!("{flag}: {why}"))?;
        claims.insert(claim.to_owned(), pattern_array(&patterns));
    }

    let key = EncodingKey::from_secret(secret);
    let token = encode(&Header::new(Algorithm::HS256), &Value::Object(claims), &key)
        .map_err(|e| format!("could not sign the token: {e}"))?;
    // The server's own check, so only a token it would accept is printed.
    match verify(&config, &token, now_secs) {
        Ok(_) => Ok(token),
        // Rooms were checked above, so a claim problem is the user id's or the name's.
        Err(AuthError::BadClaims(why)) if why.starts_with("user id") => Err(format!("--sub: {why}")),
        Err(AuthError::BadClaims(why)) => Err(format!("--name: {why}")),
        Err(e) => Err(format!("the minted token does not verify: {e}")),
    }
}

/// `games,team-*` as the JSON array `["games", "team-*"]`.
fn pattern_array(patterns: &Patterns) -> Value {
    let text = patterns.to_string();
    Value::Array(text.split(',').filter(|item| !item.is_empty()).map(|item| json!(item)).collect())
}

/// `--ttl`: what `config::parse_duration` reads (ms, s, m), plus hours (`1h`, `0.5h`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let Some(hours) = text.trim().strip_suffix('h') else {
        return parse_duration(text);
    };
    let hours: f64 = hours.trim().parse().map_err(|_| format!("'{text}' is not a duration (e.g. 1h, 30m, 90s)"))?;
    Duration::try_from_secs_f64(hours * SECS_PER_HOUR).map_err(|e| format!("'{text}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const SECRET_FILE: &[u8] = b"a token test secret, thirty-two bytes or more\n";

    fn args(sub: &str) -> TokenArgs {
        TokenArgs {
            sub: sub.to_owned(),
            name: None,
            rooms: None,
            publish: None,
            ttl: Duration::from_secs(3600),
            jwt_secret_file: PathBuf::from("unused"),
        }
    }

    fn config() -> AuthConfig {
        AuthConfig::from_secret(SECRET_FILE).expect("secret")
    }

    #[test]
    fn minted_tokens_verify_with_their_claims() {
        let args = TokenArgs {
            name: Some("Alice".to_owned()),
            rooms: Some("games, team-*".to_owned()),
            publish: Some("team-*".to_owned()),
            ..args("alice")
        };
        let token = mint(&args, SECRET_FILE, NOW).expect("minted");
        let id = verify(&config(), &token, NOW).expect("valid");
        assert_eq!((id.user.as_str(), id.name.as_str(), id.exp), ("alice", "Alice", Some(NOW + 3600)));
        assert!(id.may_join("games") && id.may_join("team-red") && !id.may_join("lobby"));
        assert!(id.may_publish("team-red") && !id.may_publish("games"));
        assert_eq!(verify(&config(), &token, NOW + 3600 + 60), Err(AuthError::Expired));
    }

    #[test]
    fn defaults_give_every_room_and_the_id_as_name() {
        let id = verify(&config(), &mint(&args("bob"), SECRET_FILE, NOW).expect("minted"), NOW).expect("valid");
        assert_eq!(id.name, "bob");
        assert!(id.rooms.is_any() && id.publish.is_any());
    }

    #[test]
    fn errors_name_the_flag_and_not_the_secret() {
        let bad_rooms = TokenArgs { rooms: Some("a b".to_owned()), ..args("alice") };
        assert!(mint(&bad_rooms, SECRET_FILE, NOW).expect_err("bad rooms").starts_with("--rooms"));
        let bad_publish = TokenArgs { publish: Some("x*y".to_owned()), ..args("alice") };
        assert!(mint(&bad_publish, SECRET_FILE, NOW).expect_err("bad publish").starts_with("--publish"));
        let error = mint(&args("two words"), SECRET_FILE, NOW).expect_err("bad sub");
        assert!(error.starts_with("--sub"), "{error}");
        let bad_name = TokenArgs { name: Some("\u{7}".to_owned()), ..args("alice") };
        assert!(mint(&bad_name, SECRET_FILE, NOW).expect_err("bad name").starts_with("--name"));
        let no_ttl = TokenArgs { ttl: Duration::from_millis(500), ..args("alice") };
        assert!(mint(&no_ttl, SECRET_FILE, NOW).expect_err("ttl").contains("--ttl"));
        let error = mint(&args("alice"), b"\n", NOW).expect_err("empty secret");
        assert!(error.contains("empty") && error.contains("--jwt-secret-file"), "{error}");
        for error in [mint(&bad_rooms, SECRET_FILE, NOW), mint(&args("two words"), SECRET_FILE, NOW)] {
            assert!(!error.expect_err("refused").contains("thirty-two"));
        }
    }

    #[test]
    fn ttl_takes_hours_too() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("0.5h"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("1mh").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("-1h").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
