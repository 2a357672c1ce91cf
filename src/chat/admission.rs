//! Who may come in, and as whom: the chat's rules for an upgrade request, judged before
//! the `101` so that a raw client (which cannot read an `error` envelope before it is
//! upgraded) is told with an HTTP status.
//!
//! Owns: which room a path names, the `?name=` and `?history=` parameters, and which
//! refusals exist. Must not touch: HTTP (the shell turns a `Refusal` into a status),
//! sockets, the clock.

use super::names::{percent_decode, NameError};
use super::rooms::room_from_path;
use super::Chat;
use crate::proto::handshake::query_param;

/// An upgrade the chat will take: where it goes and what it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub room: String,           // from the path: `/` is `lobby`
    pub json: bool,             // negotiated pollcast.v1
    pub name: Option<String>,   // `?name=`, percent-decoded
    pub history: Option<usize>, // `?history=N`
}

/// Why an upgrade is refused, with a one-line reason for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request names something invalid (a room, a name, a count): HTTP 400.
    Invalid(&'static str),
    /// A raw client asked for a name someone holds: HTTP 409.
    NameTaken,
}

impl Chat {
    /// Judges an upgrade on `path` with `query` (undecoded). A JSON client with a bad or
    /// taken name is admitted (it will get an `error` and a guest name); a raw one is not.
    pub fn admit(&self, path: &str, query: &str, json: bool) -> Result<Admission, Refusal> {
        let room = room_from_path(path).ok_or(Refusal::Invalid("invalid room name"))?;
        let history = match query_param(query, "history").map(str::parse::<usize>) {
            Some(Err(_)) => return Err(Refusal::Invalid("history must be a count")),
            Some(Ok(n)) => Some(n),
            None => None,
        };
        let name = match query_param(query, "name").map(percent_decode) {
            Some(None) => return Err(Refusal::Invalid("name is not valid percent-encoding")),
            Some(Some(name)) => Some(name),
            None => None,
        };
        if let (Some(name), false) = (&name, json) {
            match self.name_available(name) {
                Err(NameError::Invalid) => return Err(Refusal::Invalid("invalid name")),
                Err(NameError::Taken) => return Err(Refusal::NameTaken),
                Ok(()) => {}
            }
        }
        Ok(Admission { room: room.to_owned(), json, name, history })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tests::LIMITS;
    use crate::chat::{Arrival, Outbox};

    fn chat_with_ann() -> Chat {
        let mut chat = Chat::new(LIMITS);
        let arrival = Arrival { conn: 1, json: false, name: Some("ann"), room: "lobby", history: None };
        chat.connect(arrival, 0, &mut Outbox::default());
        chat
    }

    #[test]
    fn rooms_names_and_history_counts() {
        let chat = chat_with_ann();
        let admitted = chat.admit("/games", "name=b%C3%B6&history=5", false).unwrap();
        assert_eq!(
            admitted,
            Admission { room: "games".into(), json: false, name: Some("bö".into()), history: Some(5) }
        );
        assert_eq!(chat.admit("/", "", false).unwrap().room, "lobby");
        assert_eq!(chat.admit("/a/b", "", false), Err(Refusal::Invalid("invalid room name")));
        assert_eq!(chat.admit("/", "history=lots", false), Err(Refusal::Invalid("history must be a count")));
        assert_eq!(chat.admit("/", "name=%zz", false), Err(Refusal::Invalid("name is not valid percent-encoding")));
    }

    #[test]
    fn a_taken_name_refuses_raw_clients_only() {
        let chat = chat_with_ann();
        assert_eq!(chat.admit("/", "name=ann", false), Err(Refusal::NameTaken));
        assert_eq!(chat.admit("/", "name=a%20b", false), Err(Refusal::Invalid("invalid name")));
        assert!(chat.admit("/", "name=ann", true).is_ok(), "JSON clients are told after the upgrade");
    }
}
