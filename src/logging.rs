//! Log lines an operator can use: `--log-format text|json`, and the access log.
//!
//! Owns: the output format of every log line (env_logger's formatter) and the one
//! function that writes an access-log line from named fields. Must not touch: what is
//! logged where (the shell decides), secrets (callers never hand a token here: the only
//! URL logged is redacted first, `chat::auth::redact_token`).
//!
//! The access log is the `pollcast::access` target at `info`: one line per connection
//! end and one per refused request, nothing per message. In text it reads
//! `connection end addr=203.0.113.7 room=games user=ann ...`; in JSON every line is one
//! object, and an access line carries its fields as keys.

use std::io::Write;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, for people.
    Text,
    /// One JSON object per line (`ts`, `level`, `target`, `msg`, and an access line's fields).
    Json,
}

/// The format chosen at start (text until `init`).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Starts logging at `RUST_LOG` (default `info`) in `format`.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let mut line = Map::new();
            line.insert("ts".into(), json!(out.timestamp_millis().to_string()));
            line.insert("level".into(), json!(record.level().as_str()));
            line.insert("target".into(), json!(record.target()));
            let message = record.args().to_string();
            // An access line arrives as a JSON object already: merge its fields in.
            match serde_json::from_str::<Map<String, Value>>(&message) {
                Ok(fields) if record.target() == ACCESS => line.extend(fields),
                _ => {
                    line.insert("msg".into(), json!(message));
                }
            }
            writeln!(out, "{}", Value::Object(line))
        });
    }
    builder.init();
}

/// The access log's target.
const ACCESS: &str = "pollcast::access";

/// One access-log line: `event` and its fields, as `key=value` pairs (text) or keys of the
/// line's JSON object.
pub fn access(event: &str, fields: &[(&str, String)]) {
    if !log::log_enabled!(target: ACCESS, log::Level::Info) {
        return;
    }
    match FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => {
            let mut line = event.to_owned();
            for (key, value) in fields {
                line.push(' ');
                line.push_str(key);
                line.push('=');
                line.push_str(&quoted(value));
            }
            log::info!(target: ACCESS, "{line}");
        }
        LogFormat::Json => {
            let mut object = Map::new();
            object.insert("msg".into(), json!(event));
            for (key, value) in fields {
                object.insert((*key).to_owned(), json!(value));
            }
            log::info!(target: ACCESS, "{}", Value::Object(object));
        }
    }
}

/// A value as it stands in a text line: bare when it is one plain word, else quoted
/// (names and rooms come from clients: a space or a quote must not forge a field).
fn quoted(value: &str) -> String {
    let plain = !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=');
    if plain {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_data_cannot_forge_fields() {
        assert_eq!(quoted("ann"), "ann");
        assert_eq!(quoted("a b"), r#""a b""#);
        assert_eq!(quoted("x room=admin"), r#""x room=admin""#);
        assert_eq!(quoted(""), r#""""#);
    }
}
