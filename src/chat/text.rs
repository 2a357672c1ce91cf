//! The text-line codec for people with websocat: `/commands` in, tagged lines out.
//!
//! Owns: command syntax and the reply line formats. Must not touch: rooms, users,
//! sockets (`Chat` decides what a command does).
//!
//! A text message that starts with `/` is a command; `//` sends a literal `/`; anything
//! else is relayed verbatim. Every reply is one line whose first word is a fixed tag:
//! `ok`, `err`, `who`, `rooms`, `dm`, `stats`, `help`, so `grep` and `awk` can sort them.

use super::reply::{FileView, Reply};

/// A parsed text line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Plain text for the current room (with a leading `//` reduced to `/`).
    Say(&'a str),
    /// A command.
    Command(Command<'a>),
    /// A `/`-line that is not a valid command: the error code and a message.
    Bad(&'static str, String),
}

/// The commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Nick(&'a str),          // /nick NAME
    Join(&'a str),          // /join ROOM
    Leave(Option<&'a str>), // /leave [ROOM] (default: the current room)
    Msg(&'a str, &'a str),  // /msg NAME TEXT
    Who(Option<&'a str>),   // /who [ROOM] (default: the current room)
    Rooms,                  // /rooms
    Stats,                  // /stats
    Token(&'a str),         // /token TOKEN: a fresh token for the same user
    Help,                   // /help
}

/// What `/help` prints, one line each.
pub const HELP: [&str; 10] = [
    "help /nick NAME        change your name",
    "help /join ROOM        move to ROOM (leaving your current room)",
    "help /leave [ROOM]     leave ROOM (default: your current room)",
    "help /msg NAME TEXT    direct message to NAME (they get: dm YOURNAME TEXT)",
    "help /who [ROOM]       list a room's members (reply: who ROOM a b c)",
    "help /rooms            list rooms (reply: rooms lobby:3 games:1)",
    "help /stats            server counters (reply: stats users=N rooms=N messages=N)",
    "help /token TOKEN      a fresh token before yours expires (servers with tokens)",
    "help //TEXT            send TEXT starting with a literal /",
    "help replies start with ok, err CODE, who, rooms, dm, stats or help",
];

/// Parses one text message from a raw client.
pub fn parse(text: &str) -> Line<'_> {
    if text.starts_with("//") {
        return Line::Say(&text[1..]); // keep one slash: "//etc" says "/etc"
    }
    let Some(command) = text.strip_prefix('/') else {
        return Line::Say(text);
    };
    let command = command.trim_end_matches(['\r', '\n']);
    let (word, rest) = command.split_once(' ').unwrap_or((command, ""));
    let rest = rest.trim();
    let one_arg = |usage: &str| -> Result<&str, String> {
        match rest {
            "" => Err(format!("usage: {usage}")),
            arg if arg.contains(' ') => Err(format!("usage: {usage}")),
            arg => Ok(arg),
        }
    };
    let optional = (!rest.is_empty()).then_some(rest);
    let parsed = match word {
        "nick" => one_arg("/nick NAME").map(Command::Nick),
        "join" => one_arg("/join ROOM").map(Command::Join),
        "leave" => Ok(Command::Leave(optional)),
        "who" => Ok(Command::Who(optional)),
        "msg" => match rest.split_once(' ') {
            Some((name, text)) if !text.trim().is_empty() => Ok(Command::Msg(name, text.trim_start())),
            _ => Err("usage: /msg NAME TEXT".to_owned()),
        },
        "rooms" => Ok(Command::Rooms),
        "stats" => Ok(Command::Stats),
        "token" => one_arg("/token TOKEN").map(Command::Token),
        "help" => Ok(Command::Help),
        _ => return Line::Bad("unknown_command", format!("unknown command /{word} (try /help)")),
    };
    match parsed {
        Ok(command) => Line::Command(command),
        Err(usage) => Line::Bad("bad_field", usage),
    }
}

/// `err CODE message`
pub fn err(code: &str, message: &str) -> String {
    format!("err {code} {message}")
}

/// Spells a reply as tagged lines (none for what a raw client is not told unasked).
pub fn render(reply: &Reply, mut emit: impl FnMut(&str)) {
    let line = match reply {
        Reply::Welcome { .. } => return, // a raw client is sent nothing it did not ask for
        Reply::Joined { room, .. } => format!("ok join {room}"),
        Reply::Left { room } => format!("ok leave {room}"),
        Reply::Who { room, members } => format!("who {room} {}", members.join(" ")).trim_end().to_owned(),
        Reply::Rooms { rooms } => {
            let list: Vec<String> = rooms.iter().map(|r| format!("{}:{}", r.room, r.members)).collect();
            format!("rooms {}", list.join(" ")).trim_end().to_owned()
        }
        Reply::Nick { you, .. } => format!("ok nick {you}"),
        Reply::Stats { users, rooms, messages } => format!("stats users={users} rooms={rooms} messages={messages}"),
        Reply::Dm(dm) => format!("dm {} {}", dm.from, dm.text),
        Reply::DmSent { dm, .. } => format!("ok msg {} {}", dm.to, dm.id),
        Reply::Help => return HELP.iter().for_each(|line| emit(line)),
        Reply::Refreshed { exp: Some(exp) } => format!("ok token {exp}"),
        Reply::Refreshed { exp: None } => "ok token".to_owned(),
        Reply::Failure { code, message, .. } => err(code, message),
        Reply::File(view) => file_line(view),
    };
    emit(&line);
}

/// `file FROM NAME SIZE id=ID`: a shared file as a terminal sees it (never its bytes). The
/// name may hold spaces (never a control character, so never a line break): its words are
/// the ones between the sender and the last two fields.
pub fn file_line(view: &FileView) -> String {
    format!("file {} {} {} id={}", view.from, view.name, view.size, view.id)
}

/// A raw client's text as JSON clients see it: websocat sends each line with its
/// newline, the envelope carries the line. (Raw members get the bytes unchanged.)
pub fn line_text(text: &str) -> &str {
    text.strip_suffix('\n').map_or(text, |t| t.strip_suffix('\r').unwrap_or(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_literal_slash() {
        assert_eq!(parse("hello"), Line::Say("hello"));
        assert_eq!(parse("//join is a command"), Line::Say("/join is a command"));
        assert_eq!(parse("//"), Line::Say("/"));
        assert_eq!(parse(""), Line::Say(""));
    }

    #[test]
    fn commands() {
        assert_eq!(parse("/nick ann"), Line::Command(Command::Nick("ann")));
        assert_eq!(parse("/join games\n"), Line::Command(Command::Join("games")));
        assert_eq!(parse("/leave"), Line::Command(Command::Leave(None)));
        assert_eq!(parse("/leave games"), Line::Command(Command::Leave(Some("games"))));
        assert_eq!(parse("/msg bo hi there"), Line::Command(Command::Msg("bo", "hi there")));
        assert_eq!(parse("/who"), Line::Command(Command::Who(None)));
        assert_eq!(parse("/who lobby"), Line::Command(Command::Who(Some("lobby"))));
        assert_eq!(parse("/rooms"), Line::Command(Command::Rooms));
        assert_eq!(parse("/stats"), Line::Command(Command::Stats));
        assert_eq!(parse("/help"), Line::Command(Command::Help));
    }

    #[test]
    fn bad_commands() {
        assert!(matches!(parse("/frobnicate"), Line::Bad("unknown_command", _)));
        assert!(matches!(parse("/nick"), Line::Bad("bad_field", _)));
        assert!(matches!(parse("/nick a b"), Line::Bad("bad_field", _)));
        assert!(matches!(parse("/msg bo"), Line::Bad("bad_field", _)));
        assert!(matches!(parse("/join"), Line::Bad("bad_field", _)));
    }
}
