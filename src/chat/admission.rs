//! Who may come in, and as whom: the chat's rules for an upgrade request, judged before
//! the `101` so that a raw client (which cannot read an `error` envelope before it is
//! upgraded) is told with an HTTP status.
//!
//! Owns: which room a path names, the `?name=`, `?history=` and `?token=` parameters (or
//! `Authorization: Bearer`), the token check (`auth::verify`) and the room permission at
//! the door, and which refusals exist. Must not touch: HTTP (the shell turns a `Refusal`
//! into a status, or for a JSON client into an `error` and a 4xxx close), sockets, the
//! clock (`now_secs` is passed in).

use super::auth::{token_from_request, verify, AuthConfig, Identity, Patterns};
use super::names::percent_decode;
use super::rooms::room_from_path;
use super::Chat;
use crate::proto::handshake::query_param;

/// Who may come in: with a key, every upgrade needs a valid token; without, the chat is
/// anonymous (names from `?name=`), as it always was.
#[derive(Clone, Debug)]
pub struct Access {
    pub auth: Option<AuthConfig>, // the JWT key and rules; None: no tokens, anyone may come in
    pub allow_guests: bool,       // with a key: clients without a token come in as guest-N
    pub guest_rooms: Patterns,    // the rooms guests may join and send to (default `lobby`)
}

impl Access {
    /// No tokens: anyone may come in, under the name they ask for.
    pub fn open() -> Access {
        Access { auth: None, allow_guests: false, guest_rooms: Patterns::none() }
    }
}

/// An upgrade the chat will take: where it goes and what it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub room: String,               // from the path: `/` is `lobby`
    pub json: bool,                 // negotiated pollcast.v1
    pub name: Option<String>,       // `?name=`, percent-decoded (ignored when tokens name users)
    pub history: Option<usize>,     // `?history=N`
    pub identity: Option<Identity>, // with tokens: who the token says, or a guest's rights
}

/// Why an upgrade is refused, with a one-line reason for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request names something invalid (a room, a name, a count): HTTP 400.
    Invalid(&'static str),
    /// No token where one is needed, or one that does not verify: HTTP 401.
    Unauthorized(&'static str),
    /// The token does not allow this room: HTTP 403.
    Forbidden(&'static str),
}

impl Refusal {
    /// The `error` code a JSON client is told (the page shows it to the person).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "bad_field",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
        }
    }

    /// The one-line reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Invalid(why) | Refusal::Unauthorized(why) | Refusal::Forbidden(why) => why,
        }
    }
}

impl Chat {
    /// Judges an upgrade on `path` with `query` (undecoded) and the `Authorization`
    /// header. A client with a bad or taken name is admitted (it will be told, and get a
    /// guest name). With tokens, the token names the user and `?name=` is ignored.
    pub fn admit(
        &self,
        path: &str,
        query: &str,
        json: bool,
        authorization: Option<&str>,
        now_secs: u64,
    ) -> Result<Admission, Refusal> {
        let room = room_from_path(path).ok_or(Refusal::Invalid("invalid room name"))?;
        let history = match query_param(query, "history").map(str::parse::<usize>) {
            Some(Err(_)) => return Err(Refusal::Invalid("history must be a count")),
            Some(Ok(n)) => Some(n),
            None => None,
        };
        let identity = match &self.access.auth {
            None => None,
            Some(config) => Some(self.identify(config, query, authorization, now_secs)?),
        };
        if identity.as_ref().is_some_and(|identity| !identity.may_join(room)) {
            return Err(Refusal::Forbidden("this token does not allow that room"));
        }
        let name = match (&identity, query_param(query, "name").map(percent_decode)) {
            (Some(_), _) | (None, None) => None,
            (None, Some(None)) => return Err(Refusal::Invalid("name is not valid percent-encoding")),
            (None, Some(Some(name))) => Some(name),
        };
        // A bad or taken name is no reason to refuse: the client comes in as a guest and its
        // first line says why (`err name_taken ...`), which websocat shows and a 409 is not.
        Ok(Admission { room: room.to_owned(), json, name, history, identity })
    }

    /// The identity a request's token proves, or a guest's (an empty user id: the chat
    /// names it guest-N when it connects) when guests are allowed and it has none.
    fn identify(
        &self,
        config: &AuthConfig,
        query: &str,
        authorization: Option<&str>,
        now_secs: u64,
    ) -> Result<Identity, Refusal> {
        match token_from_request(query_param(query, "token"), authorization) {
            Some(token) => verify(config, &token, now_secs).map_err(|e| Refusal::Unauthorized(e.reason())),
            None if self.access.allow_guests => Ok(Identity {
                user: String::new(),
                name: String::new(),
                exp: None,
                rooms: self.access.guest_rooms.clone(),
                publish: self.access.guest_rooms.clone(),
            }),
            None => Err(Refusal::Unauthorized("a token is required (?token= or Authorization: Bearer)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tests::LIMITS;
    use crate::chat::{Arrival, Outbox};

    fn chat_with_ann() -> Chat {
        let mut chat = Chat::new(LIMITS);
        let arrival = Arrival {
            conn: 1,
            json: false,
            name: Some("ann"),
            room: "lobby",
            history: None,
            identity: None,
            rate_limited: true,
            deflate: false,
        };
        chat.connect(arrival, 0, &mut Outbox::default());
        chat
    }

    #[test]
    fn rooms_names_and_history_counts() {
        let chat = chat_with_ann();
        let admitted = chat.admit("/games", "name=b%C3%B6&history=5", false, None, 0).unwrap();
        let expected =
            Admission { room: "games".into(), json: false, name: Some("bö".into()), history: Some(5), identity: None };
        assert_eq!(admitted, expected);
        assert_eq!(chat.admit("/", "", false, None, 0).unwrap().room, "lobby");
        assert_eq!(chat.admit("/a/b", "", false, None, 0), Err(Refusal::Invalid("invalid room name")));
        assert_eq!(chat.admit("/", "history=lots", false, None, 0), Err(Refusal::Invalid("history must be a count")));
        let bad_name = chat.admit("/", "name=%zz", false, None, 0);
        assert_eq!(bad_name, Err(Refusal::Invalid("name is not valid percent-encoding")));
    }

    #[test]
    fn a_taken_or_bad_name_is_told_after_the_upgrade() {
        let chat = chat_with_ann();
        for json in [false, true] {
            assert!(chat.admit("/", "name=ann", json, None, 0).is_ok());
            assert!(chat.admit("/", "name=a%20b", json, None, 0).is_ok());
        }
    }
}
