//! `pollcast token`, run as the built binary: the token it prints verifies with the
//! library's `verify` and the same secret file, and its errors say what to fix without
//! printing the secret.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use pollcast::chat::auth::{verify, AuthConfig};

const SECRET: &str = "an integration test secret of 32+ bytes";
/// Seconds of slack between the binary's clock read and ours.
const CLOCK_SLACK: u64 = 60;

/// A secret file unique to this test process and `name`, removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(name: &str, content: &str) -> SecretFile {
        let path = std::env::temp_dir().join(format!("pollcast-token-{}-{name}", std::process::id()));
        fs::write(&path, content).expect("write the secret file");
        SecretFile(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn pollcast(args: &[&str], env_secret: Option<&SecretFile>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pollcast"));
    command.arg("token").args(args).env_remove("POLLCAST_JWT_SECRET_FILE");
    if let Some(file) = env_secret {
        command.env("POLLCAST_JWT_SECRET_FILE", &file.0);
    }
    command.output().expect("run pollcast")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

fn stdout_line(output: &Output) -> String {
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout");
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout:?}");
    stdout.trim_end().to_owned()
}

#[test]
fn minted_token_verifies() {
    let file = SecretFile::new("mint", &format!("{SECRET}\n"));
    let path = file.0.to_str().expect("UTF-8 temp path");
    let args = ["--sub", "alice", "--name", "Alice", "--rooms", "games,team-*", "--ttl", "10m"];
    let output = pollcast(&[&args[..], &["--jwt-secret-file", path]].concat(), None);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let token = stdout_line(&output);

    let config = AuthConfig::from_secret(&fs::read(&file.0).expect("read")).expect("secret");
    let now = now_secs();
    let id = verify(&config, &token, now).expect("the minted token verifies");
    assert_eq!((id.user.as_str(), id.name.as_str()), ("alice", "Alice"));
    assert!(id.may_join("games") && id.may_join("team-blue") && !id.may_join("lobby"));
    let exp = id.exp.expect("an expiry");
    assert!(exp.abs_diff(now + 600) <= CLOCK_SLACK, "exp {exp} is about now + 10m");
}

#[test]
fn secret_file_from_the_environment() {
    let file = SecretFile::new("env", SECRET);
    let output = pollcast(&["--sub", "bob"], Some(&file));
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let config = AuthConfig::from_secret(SECRET.as_bytes()).expect("secret");
    let id = verify(&config, &stdout_line(&output), now_secs()).expect("verifies");
    assert_eq!(id.name, "bob");
    let exp = id.exp.expect("an expiry");
    assert!(exp.abs_diff(now_secs() + 3600) <= CLOCK_SLACK, "the default ttl is 1h");
}

#[test]
fn errors_say_what_to_fix_and_print_no_secret() {
    let missing = std::env::temp_dir().join(format!("pollcast-token-{}-missing", std::process::id()));
    let output = pollcast(&["--sub", "alice", "--jwt-secret-file", missing.to_str().expect("path")], None);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the JWT secret file"));

    let file = SecretFile::new("errors", SECRET);
    let path = file.0.to_str().expect("path");
    for (args, hint) in [
        (&["--sub", "two words"][..], "--sub"),
        (&["--sub", "alice", "--rooms", "bad room"][..], "--rooms"),
        (&["--sub", "alice", "--ttl", "0s"][..], "--ttl"),
    ] {
        let output = pollcast(&[args, &["--jwt-secret-file", path]].concat(), None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
        assert!(!stderr.contains(SECRET), "{args:?}: the secret leaked");
    }

    let output = pollcast(&["--sub", "alice"], None);
    assert!(!output.status.success(), "no secret file given");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--jwt-secret-file"));
}
