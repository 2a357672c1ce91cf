//! The pure-core rule, checked: nothing under `src/proto/` or `src/chat/` may name
//! sockets, the clock, or the slab, and the chat names neither the shell nor the store.
//!
//! Why: `proto/` is the WebSocket protocol as plain code over bytes, with time passed in
//! as `Instant` values (sans-IO, like quinn-proto and httparse). That is what lets its
//! tests feed a frame split at every byte, or jump a session 50 seconds ahead, without a
//! socket or a sleep; what lets the loop (`server/`) own every read, write, accept and
//! clock read in one place; and what would let the same core run under another loop.
//! One `mio` import, `TcpStream`, `Instant::now()` or slab key inside `proto/` and all of
//! that quietly stops being true, so the rule is enforced by scanning the source: cheap,
//! explicit, and a reminder to whoever edits the core.
//!
//! Comment lines (`//`, `///`, `//!`) and trailing `// ...` comments are ignored, so the
//! rule itself can be explained in the code it governs.

use std::fs;
use std::path::{Path, PathBuf};

/// What the core must not mention, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("mio", "the poll loop belongs to server/"),
    ("std::net", "sockets belong to server/"),
    ("TcpStream", "sockets belong to server/"),
    ("TcpListener", "sockets belong to server/"),
    ("UdpSocket", "sockets belong to server/"),
    ("Instant::now", "time is passed in as a value"),
    ("SystemTime::now", "time is passed in as a value"),
    ("Slab", "connection slots belong to server/"),
    ("slab::", "connection slots belong to server/"),
];

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).collect();
    entries.sort_by_key(|e| e.as_ref().map(|e| e.path()).ok());
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The code part of a line: empty for a comment line, cut before a trailing `//` comment
/// (one that is not inside a string literal, judged by counting quotes before it).
fn code_part(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    let mut search = 0;
    while let Some(found) = line[search..].find("//") {
        let at = search + found;
        if line[..at].matches('"').count() % 2 == 0 {
            return &line[..at];
        }
        search = at + 2;
    }
    line
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Does `code` mention `word` as a whole path or identifier (so `mio` matches `use mio::`
/// and `::mio::Poll`, but not `premio` or `mios`)?
fn mentions(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let starts_clean = !word.starts_with(is_ident) || !before.is_some_and(is_ident);
        let ends_clean = !word.ends_with(is_ident) || !after.is_some_and(is_ident);
        starts_clean && ends_clean
    })
}

/// What the chat core must not mention besides: it says what to store and what to send
/// in its own words (`chat::record`, `chat::Outbox`), and the shell does the rest.
const FORBIDDEN_IN_CHAT: &[(&str, &str)] = &[
    ("crate::server", "the chat returns values; the shell acts on them"),
    ("crate::store", "the chat speaks its own types (chat::record); only the shell talks to a store"),
];

/// Every violation in one file's text, as `file:line: code  (forbidden: why)`.
fn violations(name: &str, text: &str) -> Vec<String> {
    violations_of(name, text, FORBIDDEN)
}

/// Every mention in `text` of a word in `forbidden`.
fn violations_of(name: &str, text: &str, forbidden: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = code_part(line);
        for (word, why) in forbidden {
            if mentions(code, word) {
                found.push(format!("{name}:{}: {}  (`{word}`: {why})", number + 1, line.trim()));
            }
        }
    }
    found
}

/// Every violation under `src/{dir}`, of `FORBIDDEN` and of `extra`.
fn scan(dir: &str, at_least: usize, extra: &[(&str, &str)]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let files = rust_files(&root);
    assert!(files.len() >= at_least, "expected the modules under {}, found {files:?}", root.display());
    let mut found = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(file).display().to_string();
        found.extend(violations(&name, &text));
        found.extend(violations_of(&name, &text, extra));
    }
    found
}

#[test]
fn the_core_uses_no_sockets_no_clock_and_no_slab() {
    let found = scan("proto", 5, &[]);
    assert!(found.is_empty(), "src/proto/ must stay pure (see tests/purity.rs):\n{}", found.join("\n"));
}

#[test]
fn the_chat_uses_no_sockets_no_clock_no_shell_and_no_store() {
    let found = scan("chat", 10, FORBIDDEN_IN_CHAT);
    assert!(found.is_empty(), "src/chat/ must stay pure (see tests/purity.rs):\n{}", found.join("\n"));
}

/// The Redis protocol is pure too: the shell (`server/cluster.rs`) owns its sockets.
#[test]
fn the_redis_protocol_uses_no_sockets_no_clock_and_no_shell() {
    let found = scan("redis", 3, &[("crate::server", "the shell drives the link; the link never calls it")]);
    assert!(found.is_empty(), "src/redis/ must stay pure (see tests/purity.rs):\n{}", found.join("\n"));
}

/// The scanner itself: it must catch what it is meant to, and only that.
#[test]
fn the_scanner_catches_each_forbidden_name() {
    let bad = [
        "use mio::net::TcpStream;",
        "    let now = std::time::Instant::now();",
        "let clock = Instant::now();",
        "use std::net::SocketAddr;",
        "fn f(slots: &mut Slab<Client>) {}",
        "let s = slab::Slab::new();",
        "let t = SystemTime::now();",
        "let x = ::mio::Poll::new();",
        "let stream: TcpListener = todo!(); // a trailing comment",
    ];
    for line in bad {
        assert!(!violations("x.rs", line).is_empty(), "missed: {line}");
    }
    for line in ["use crate::store::Query;", "use crate::server::http::Stats;"] {
        assert!(!violations_of("x.rs", line, FORBIDDEN_IN_CHAT).is_empty(), "missed: {line}");
    }
    let fine = [
        "// a comment about mio and Instant::now()",
        "    /// the shell owns the TcpStream",
        "//! Nothing in here may use sockets (`mio`, `std::net`)",
        "let premio = 1; // mio is not used here",
        "let deadline = now + timeout;",
        "let url = \"ws://example/\"; // not mio: the // in the string is not a comment",
        "pub fn next(&mut self, input: &mut [u8], now: Instant) {}",
    ];
    for line in fine {
        assert_eq!(violations("x.rs", line), Vec::<String>::new(), "false alarm: {line}");
    }
}
