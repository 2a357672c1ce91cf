//! Files and images: a `file` header, then the file's bytes as binary frames, shared as
//! one message; `fetch` for the bytes later.
//!
//! Owns: each connection's upload (`Upload`), the server-wide count of open uploads
//! (`--max-uploads`), the rules for a file's name and media type, and who may fetch a
//! file. Must not touch: sockets, the store (a fetch is an `Output::Fetch`: the shell
//! reads the file and hands it to `fetch_answer`), codecs beyond the replies it asks for.
//!
//! The life of an upload, per connection (one at a time):
//!
//! | state          | input                                  | what happens                                         |
//! |----------------|----------------------------------------|------------------------------------------------------|
//! | none           | `file` header, accepted                | `Receiving` (no bytes yet; a size of 0 is shared at once) |
//! | none           | `file` header, refused                 | `error` with the cid; `Discarding` its `size` bytes   |
//! | none           | binary frame                           | `error` `bad_json` (JSON clients send binary only after a header) |
//! | `Receiving`    | binary frame, still short of `size`    | appended                                             |
//! | `Receiving`    | binary frame reaching `size` exactly   | shared as one record, then none                      |
//! | `Receiving`    | binary frame passing `size`            | `error` `bad_field`, the bytes are dropped, none      |
//! | `Receiving`    | another `file` header                  | `error` `busy`; the open upload goes on              |
//! | `Discarding`   | binary frame                           | skipped silently until `size` bytes have gone by     |
//! | `Discarding`   | `file` header                          | as from none (the skipping ends)                     |
//! | any            | the connection ends                    | the buffer is freed, the upload slot given back      |
//!
//! Why skip a refused upload's bytes: a client may send the header and its bytes without
//! waiting for an answer (the page does), and should get one `error`, not one per frame.
//!
//! Names and types are data. Nothing in pollcast writes a client's file to a file
//! system: the bytes live in memory while they arrive (at most `--max-file` per upload,
//! `--max-uploads` uploads at once) and then only inside a SQLite blob (in a cluster with
//! history, a Redis stream entry: the file becomes an `Outgoing`, stored first). The name is
//! shown, never used as a path; the type is passed along, never acted on (the page
//! decides what it will draw itself). The rules below are belt and braces for the
//! programs that receive them: no control characters (no line breaks into a raw
//! client's `file` line), no path separators, no `.` or `..`.

use serde_json::Value;

use super::json::{Envelope, FileHeader};
use super::outbox::Outbox;
use super::record::{FileMeta, Record, DM_ROOM};
use super::reply::{Failure, FileView, Reply};
use super::text::file_line;
use super::{Ack, Author, Chat, Place, Said};
use crate::proto::frame::{write_frame, OpCode};

/// Longest file name, in bytes (what most file systems allow for one name).
pub const MAX_NAME: usize = 255;
/// Longest media type, in bytes (RFC 6838 §4.2: 127 for each of type and subtype).
pub const MAX_MIME: usize = 255;

/// One connection's upload.
#[derive(Debug)]
pub(super) enum Upload {
    /// An accepted header's bytes are arriving.
    Receiving(Box<Incoming>),
    /// A refused header's bytes are skipped: this many more.
    Discarding { left: u64 },
}

/// An accepted upload, as its bytes arrive.
#[derive(Debug)]
pub(super) struct Incoming {
    target: Target, // where it goes once complete
    meta: FileMeta, // name, type, size from the header
    cid: Value,     // the header's cid (null if none), for `ack` / `error`
    data: Vec<u8>,  // the bytes so far; never more than `meta.size` (≤ --max-file)
}

/// Where a file goes.
#[derive(Debug, Clone)]
enum Target {
    Room(String), // a room the uploader is in
    To(String),   // a user, every connection of the two
}

/// Is `name` acceptable as a file's name? 1-255 bytes, no control characters, no `/` or
/// `\`, not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), Failure> {
    let bad = |why: &str| Err(Failure::new("bad_field", format!("file name {why}")));
    match name {
        "" => bad("is empty"),
        "." | ".." => bad("may not be . or .."),
        _ if name.len() > MAX_NAME => bad(&format!("is over {MAX_NAME} bytes")),
        _ if name.chars().any(char::is_control) => bad("has a control character"),
        _ if name.contains(['/', '\\']) => bad("has a / or \\ (a name, not a path)"),
        _ => Ok(()),
    }
}

/// Is `mime` a media type, `type/subtype`, each an RFC 7230 §3.2.6 token? (No
/// parameters: `text/plain; charset=utf-8` is refused.)
pub fn check_mime(mime: &str) -> Result<(), Failure> {
    let token = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match mime.split_once('/') {
        Some((kind, sub)) if mime.len() <= MAX_MIME && token(kind) && token(sub) => Ok(()),
        _ => Err(Failure::new("bad_field", "mime must be type/subtype, e.g. image/png")),
    }
}

impl Chat {
    /// A `file` header. Refused headers leave the connection skipping their bytes.
    pub(super) fn file_header(
        &mut self,
        conn: usize,
        header: FileHeader,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        if matches!(self.users[&conn].upload, Some(Upload::Receiving(_))) {
            return Err(Failure::new("busy", "one upload at a time per connection: its bytes are still arriving"));
        }
        // Any refusal (Redis away too) skips the header's bytes: one error, not one per frame.
        let checked = self.deliverable().and_then(|()| self.check_upload(conn, &header));
        let target = match checked {
            Ok(target) => target,
            Err(failure) => {
                let skip = (header.size > 0).then_some(Upload::Discarding { left: header.size });
                self.user_mut(conn).upload = skip;
                return Err(failure);
            }
        };
        let FileHeader { name, mime, size, cid, .. } = header;
        let incoming =
            Incoming { target, meta: FileMeta { name, mime, size }, cid: cid.unwrap_or(Value::Null), data: Vec::new() };
        if size == 0 {
            self.user_mut(conn).upload = None;
            return self.share(conn, incoming, now_ms, out);
        }
        self.uploads += 1;
        self.user_mut(conn).upload = Some(Upload::Receiving(Box::new(incoming)));
        Ok(())
    }

    /// A binary frame from a JSON client: the next bytes of its upload. Uploads are not
    /// rate limited frame by frame (their header was); a stray frame is.
    pub(super) fn file_bytes(&mut self, conn: usize, data: &[u8], now_ms: u64, out: &mut Outbox) {
        let Some(user) = self.users.get_mut(&conn) else { return };
        match user.upload.take() {
            None => {
                if self.allowed(conn, now_ms, out).is_some() {
                    let message = "pollcast.v1 takes JSON text frames; binary ones only carry a file after its header";
                    self.fail(conn, Failure::new("bad_json", message), None, out);
                }
            }
            Some(Upload::Discarding { left }) => {
                let left = left.saturating_sub(data.len() as u64);
                user.upload = (left > 0).then_some(Upload::Discarding { left });
            }
            Some(Upload::Receiving(mut incoming)) => {
                let size = incoming.meta.size;
                if incoming.data.len() as u64 + data.len() as u64 > size {
                    self.uploads -= 1;
                    let message = format!("more bytes than the header's size {size}: the upload is dropped");
                    self.fail(conn, Failure::new("bad_field", message), Some(&incoming.cid), out);
                    return;
                }
                if incoming.data.capacity() == 0 {
                    // Exactly the size (at most --max-file), once the first byte arrives: a
                    // header alone holds no memory, a growing Vec never doubles past it.
                    incoming.data.reserve_exact(size as usize);
                }
                incoming.data.extend_from_slice(data);
                if (incoming.data.len() as u64) < size {
                    user.upload = Some(Upload::Receiving(incoming));
                    return;
                }
                self.uploads -= 1;
                let cid = incoming.cid.clone();
                if let Err(failure) = self.share(conn, *incoming, now_ms, out) {
                    self.fail(conn, failure, Some(&cid), out);
                }
            }
        }
    }

    /// A connection is going: its upload (if any) ends, its buffer is freed.
    pub(super) fn end_upload(&mut self, conn: usize) {
        let upload = self.users.get_mut(&conn).and_then(|user| user.upload.take());
        if let Some(Upload::Receiving(_)) = upload {
            self.uploads -= 1;
        }
    }

    /// A `fetch`: the shell reads the file and answers with `fetch_answer`.
    pub(super) fn fetch(
        &mut self,
        conn: usize,
        id: u64,
        reference: Option<&Value>,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        if !self.limits.history {
            return Err(Failure::new("no_history", "this server keeps no history: files are not kept to fetch"));
        }
        out.fetch(conn, id, reference.cloned().unwrap_or(Value::Null));
        Ok(())
    }

    /// The frames answering `conn`'s fetch of file `id` (read from the store: `record`):
    /// `file_data` and one binary frame with the bytes, or an `error`. A room's file may
    /// be fetched by anyone who may read the room (with tokens: `may_join`; without, any
    /// user, member or not); a direct file only by its two users, and to anyone else it
    /// does not exist (`not_found`, so ids do not tell who wrote to whom).
    pub fn fetch_answer(&self, conn: usize, id: u64, reference: &Value, record: Option<&Record>) -> Vec<u8> {
        let mut frames = Vec::new();
        let Some(user) = self.users.get(&conn) else { return frames }; // gone this turn
        let not_found = || Failure::new("not_found", format!("no file {id}"));
        let found = match record.and_then(|record| record.file.as_ref().map(|file| (record, file))) {
            None => Err(not_found()),
            Some((record, file)) if record.room == DM_ROOM => {
                let theirs = user.name == record.from || record.to.as_deref() == Some(user.name.as_str());
                if theirs {
                    Ok((record, file))
                } else {
                    Err(not_found())
                }
            }
            Some((record, file)) => self.may_join(conn, &record.room).map(|()| (record, file)),
        };
        match found {
            Ok((record, file)) => {
                let head = Envelope::FileData { id, name: &file.name, mime: &file.mime, size: file.size };
                write_frame(&mut frames, OpCode::Text, head.to_json().as_bytes());
                write_frame(&mut frames, OpCode::Binary, &record.body);
            }
            Err(failure) => {
                let error = Envelope::Error { code: failure.code, message: &failure.message, reference };
                write_frame(&mut frames, OpCode::Text, error.to_json().as_bytes());
            }
        }
        frames
    }

    // ----- helpers ---------------------------------------------------------------------

    /// The rules a header must pass, in order: name, type, size, target, the server's cap.
    fn check_upload(&self, conn: usize, header: &FileHeader) -> Result<Target, Failure> {
        check_name(&header.name)?;
        check_mime(&header.mime)?;
        if header.size > self.limits.max_file as u64 {
            return Err(Failure::new("too_large", format!("file over {} bytes", self.limits.max_file)));
        }
        let target = match (&header.room, &header.to) {
            (Some(room), None) => {
                self.membership(conn, room)?;
                self.may_publish(conn, room)?;
                Target::Room(room.clone())
            }
            (None, Some(to)) if self.names.contains_key(to) => Target::To(to.clone()),
            // Cluster history: the recipient may be on any node; the store's publish says.
            (None, Some(to)) if self.store_first && super::names::validate(to).is_ok() => Target::To(to.clone()),
            (None, Some(to)) => return Err(Failure::new("no_such_user", format!("{to} is not connected"))),
            _ => return Err(Failure::new("bad_field", "a file goes to a room or to a user: give room or to")),
        };
        if self.uploads >= self.limits.max_uploads {
            let message = format!("the server takes {} uploads at once; try again shortly", self.limits.max_uploads);
            return Err(Failure::new("busy", message));
        }
        Ok(target)
    }

    /// A complete upload becomes one message: a record (stored and committed before
    /// anyone receives it, like any message), the `file` envelope to JSON members and a
    /// `file ...` line to raw ones, encoded once per codec for the whole room; the
    /// sender's copy, then its `ack`. The room or the recipient is checked again: the
    /// bytes took a while, and the sender may have left or the recipient gone.
    fn share(&mut self, conn: usize, incoming: Incoming, now_ms: u64, out: &mut Outbox) -> Result<(), Failure> {
        let Incoming { target, meta, cid, data } = incoming;
        if self.store_first {
            return self.keep_file_first(conn, target, meta, cid, data, now_ms, out);
        }
        let id = match target {
            Target::Room(room) => {
                let room_id = self.membership(conn, &room)?;
                self.may_publish(conn, &room)?;
                let id = self.accept_file(conn, (&room, None), (meta.clone(), data), now_ms, out);
                let from = &self.users[&conn].name;
                let view = view(id, (Some(&room), None), from, &meta, now_ms);
                let envelope = Envelope::file(&view).to_json();
                let deflate = self.deflate_for(room_id, Some(conn));
                out.to_room(
                    room_id,
                    Some(conn),
                    Some((OpCode::Text, file_line(&view).as_bytes())),
                    Some(&envelope),
                    deflate,
                );
                out.send(conn, &envelope);
                id
            }
            Target::To(to) => {
                let Some(mut targets) = self.names.get(&to).cloned() else {
                    return Err(Failure::new("no_such_user", format!("{to} is not connected")));
                };
                let id = self.accept_file(conn, (DM_ROOM, Some(&to)), (meta.clone(), data), now_ms, out);
                let from = &self.users[&conn].name;
                targets.extend(self.names.get(from).into_iter().flatten()); // every connection of both
                targets.sort_unstable();
                targets.dedup();
                let view = view(id, (None, Some(&to)), from, &meta, now_ms);
                for target in targets {
                    self.tell(target, Reply::File(view), out);
                }
                id
            }
        };
        out.acks.push(Ack { conn, cid, id });
        Ok(())
    }

    /// Cluster history: the file goes to the store first (`Outgoing`, alone in its
    /// script call), and every node renders its notice once the subscription brings it
    /// back with its id; the uploader's `ack` follows the store's reply and its own copy.
    #[allow(clippy::too_many_arguments)] // the parts of one upload
    fn keep_file_first(
        &mut self,
        conn: usize,
        target: Target,
        meta: FileMeta,
        cid: Value,
        data: Vec<u8>,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.deliverable()?;
        let (room, to) = match target {
            Target::Room(room) => {
                self.membership(conn, &room)?;
                self.may_publish(conn, &room)?;
                (room, None)
            }
            Target::To(to) => (DM_ROOM.to_owned(), Some(to)),
        };
        self.messages += 1;
        let user = &self.users[&conn];
        let (json, from) = (user.json, user.name.clone());
        let file = Some(meta);
        let (binary, echo, admin, ts, body) = (true, true, false, now_ms, data);
        out.to_store.push(super::cluster::Outgoing {
            conn,
            json,
            cid,
            room,
            to,
            from,
            binary,
            body,
            ts,
            echo,
            admin,
            file,
        });
        Ok(())
    }

    /// `accept` for a file: the next id, the count, and a record that is the file. The
    /// bytes move into the record (no copy).
    fn accept_file(
        &mut self,
        conn: usize,
        (room, to): (&str, Option<&str>),
        (meta, data): (FileMeta, Vec<u8>),
        now_ms: u64,
        out: &mut Outbox,
    ) -> u64 {
        let id = self.accept(Author::Conn(conn), Place::Named(room), to, Said::Binary(&[]), now_ms, out);
        // With history on, `accept` just pushed this message's record (bodiless): make it the file.
        if let Some(record) = out.records.last_mut().filter(|record| record.id == id) {
            record.body = data;
            record.file = Some(meta);
        }
        id
    }

    fn user_mut(&mut self, conn: usize) -> &mut super::User {
        self.users.get_mut(&conn).expect("callers pass connected users")
    }
}

/// A file as its receivers are told of it.
fn view<'a>(
    id: u64,
    (room, to): (Option<&'a str>, Option<&'a str>),
    from: &'a str,
    meta: &'a FileMeta,
    ts: u64,
) -> FileView<'a> {
    FileView { id, room, to, from, name: &meta.name, mime: &meta.mime, size: meta.size, ts }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::tests::{deliveries, expand, lobby, to, LIMITS};
    use super::super::{Arrival, Chat, ChatLimits, Output};
    use super::*;

    fn header(place: (&str, &str), name: &str, mime: &str, size: u64, cid: &str) -> String {
        json!({"type": "file", place.0: place.1, "name": name, "mime": mime, "size": size, "cid": cid}).to_string()
    }

    fn parsed(list: &[String]) -> Vec<Value> {
        list.iter().map(|text| serde_json::from_str(text).unwrap_or_else(|_| json!({"binary": text}))).collect()
    }

    fn json_arrival(conn: usize, name: &str) -> Arrival<'_> {
        crate::chat::tests::arrival(conn, true, name)
    }

    /// `lobby()` with history on: raw `ann` (1), JSON `jay` (2).
    fn lobby_with_history() -> (Chat, Outbox) {
        let (mut chat, out) = lobby();
        chat.limits = ChatLimits { history: true, ..LIMITS };
        (chat, out)
    }

    #[test]
    fn an_upload_is_one_record_framed_once_per_codec() {
        let (mut chat, mut out) = lobby_with_history();
        chat.connect(json_arrival(3, "kim"), 0, &mut out);
        deliveries(&chat, &mut out);
        chat.text(2, &header(("room", "lobby"), "cat pic.png", "image/png", 5, "c1"), 7, &mut out);
        chat.binary(2, b"\x89PN", 8, &mut out);
        assert!(out.is_empty() && out.records.is_empty(), "nothing before the last byte");
        chat.binary(2, b"G!", 9, &mut out);
        assert_eq!(out.records.len(), 1, "one record");
        let record = &out.records[0];
        let meta = FileMeta { name: "cat pic.png".into(), mime: "image/png".into(), size: 5 };
        assert_eq!(
            (record.body.as_slice(), record.file.as_ref(), record.binary),
            (&b"\x89PNG!"[..], Some(&meta), true)
        );
        let outputs = out.take();
        let rooms: Vec<_> = outputs.iter().filter(|o| matches!(o, Output::Room { .. })).collect();
        assert_eq!(rooms.len(), 1, "one room output: one frame per codec, shared by every member");
        let list = expand(&chat, &mut out, outputs);
        let envelope = json!({"type":"file","id":1,"room":"lobby","from":"jay","name":"cat pic.png","mime":"image/png","size":5,"ts":9});
        assert_eq!(to(&list, 1), ["file jay cat pic.png 5 id=1"], "raw: the notice line, never the bytes");
        assert_eq!(parsed(&to(&list, 3)), std::slice::from_ref(&envelope));
        assert_eq!(parsed(&to(&list, 2)), [envelope, json!({"type":"ack","cid":"c1","id":1})], "own copy, then ack");
        assert_eq!(chat.uploads, 0);
    }

    #[test]
    fn too_large_is_refused_on_the_header_and_its_bytes_skipped() {
        let (mut chat, mut out) = lobby_with_history();
        chat.text(2, &header(("room", "lobby"), "big", "a/b", 65, "c2"), 0, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(parsed(&to(&list, 2))[0]["code"], "too_large");
        assert_eq!(parsed(&to(&list, 2))[0]["ref"], "c2");
        assert!(to(&list, 1).is_empty(), "nothing relayed");
        chat.binary(2, &[0; 40], 0, &mut out);
        chat.binary(2, &[0; 25], 0, &mut out);
        assert!(out.is_empty() && out.records.is_empty(), "the refused upload's bytes are skipped silently");
        chat.binary(2, &[0; 1], 0, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(parsed(&to(&list, 2))[0]["code"], "bad_json", "after them, a stray frame is an error");
        assert_eq!(chat.uploads, 0);
    }

    #[test]
    fn names_and_types_are_checked() {
        for name in ["", ".", "..", "../../etc/passwd", "a\\b", "line\nbreak", "tab\there", "nul\0", &"x".repeat(256)] {
            assert_eq!(check_name(name).err().map(|f| f.code), Some("bad_field"), "{name:?}");
        }
        for name in ["<img src=x onerror=alert(1)>", "cat pic.png", "..hidden", "日本.txt", &"x".repeat(255)] {
            assert!(check_name(name).is_ok(), "{name:?}");
        }
        for mime in ["", "image", "image/", "/png", "image/png; charset=x", "a/b/c", "im age/png", "text/<b>"] {
            assert_eq!(check_mime(mime).err().map(|f| f.code), Some("bad_field"), "{mime:?}");
        }
        for mime in ["image/png", "image/svg+xml", "text/html", "application/vnd.ms-excel", "x-custom/a.b_c"] {
            assert!(check_mime(mime).is_ok(), "{mime:?}");
        }
    }

    #[test]
    fn header_refusals() {
        let (mut chat, mut out) = lobby();
        let cases = [
            (header(("room", "games"), "a", "a/b", 1, "r"), "not_member"),
            (header(("to", "nobody"), "a", "a/b", 1, "r"), "no_such_user"),
            (header(("room", "lobby"), "a/b", "a/b", 1, "r"), "bad_field"),
            (header(("room", "lobby"), "a", "ab", 1, "r"), "bad_field"),
            (
                json!({"type":"file","room":"lobby","to":"ann","name":"a","mime":"a/b","size":1,"cid":"r"}).to_string(),
                "bad_field",
            ),
            (json!({"type":"file","name":"a","mime":"a/b","size":1,"cid":"r"}).to_string(), "bad_field"),
        ];
        for (request, code) in cases {
            chat.text(2, &request, 0, &mut out);
            chat.binary(2, b"x", 0, &mut out); // skipped: the refused header's one byte
            let list = deliveries(&chat, &mut out);
            let answers = parsed(&to(&list, 2));
            assert_eq!(answers.len(), 1, "{request}: {answers:?}");
            assert_eq!((answers[0]["code"].as_str(), answers[0]["ref"].as_str()), (Some(code), Some("r")), "{request}");
        }
    }

    #[test]
    fn busy_at_the_server_cap_and_one_upload_per_connection() {
        let (mut chat, mut out) = lobby(); // max_uploads 2
        chat.connect(json_arrival(3, "kim"), 0, &mut out);
        chat.connect(json_arrival(4, "lu"), 0, &mut out);
        deliveries(&chat, &mut out);
        for conn in [2, 3] {
            chat.text(conn, &header(("room", "lobby"), "a", "a/b", 2, "x"), 0, &mut out);
        }
        chat.text(2, &header(("room", "lobby"), "b", "a/b", 2, "again"), 0, &mut out);
        chat.text(4, &header(("room", "lobby"), "c", "a/b", 2, "third"), 0, &mut out);
        let list = deliveries(&chat, &mut out);
        assert_eq!(parsed(&to(&list, 2))[0]["code"], "busy", "one at a time per connection");
        assert_eq!(parsed(&to(&list, 4))[0]["code"], "busy", "the server's cap");
        assert_eq!(chat.uploads, 2);
        chat.binary(2, b"ab", 0, &mut out); // jay's first upload completes: a slot is free
        chat.disconnect(3, &mut out); // kim goes mid-upload: its slot is given back
        assert_eq!(chat.uploads, 0);
        chat.text(4, &header(("room", "lobby"), "c", "a/b", 2, "now"), 0, &mut out);
        assert_eq!(chat.uploads, 1);
        chat.binary(4, b"abc", 0, &mut out);
        let list = deliveries(&chat, &mut out);
        let errors: Vec<Value> = parsed(&to(&list, 4)).into_iter().filter(|e| e["type"] == "error").collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0]["code"].as_str(), errors[0]["ref"].as_str()),
            (Some("bad_field"), Some("now")),
            "too many bytes"
        );
        assert_eq!(chat.uploads, 0);
    }

    #[test]
    fn a_direct_file_reaches_its_two_users_only() {
        let (mut chat, mut out) = lobby_with_history();
        chat.connect(json_arrival(3, "kim"), 0, &mut out);
        deliveries(&chat, &mut out);
        chat.text(2, &header(("to", "ann"), "n.txt", "text/plain", 3, "d"), 5, &mut out);
        chat.binary(2, b"abc", 5, &mut out);
        assert_eq!(out.records[0].to.as_deref(), Some("ann"));
        assert_eq!(out.records[0].room, DM_ROOM);
        let list = deliveries(&chat, &mut out);
        assert_eq!(to(&list, 1), ["file jay n.txt 3 id=1"]);
        let jay = parsed(&to(&list, 2));
        assert_eq!(
            jay[0],
            json!({"type":"file","id":1,"to":"ann","from":"jay","name":"n.txt","mime":"text/plain","size":3,"ts":5})
        );
        assert_eq!(jay[1]["type"], "ack");
        assert!(to(&list, 3).is_empty(), "kim sees nothing");
    }

    #[test]
    fn fetch_permissions() {
        let (mut chat, mut out) = lobby();
        chat.text(2, r#"{"type":"fetch","id":1,"ref":"f"}"#, 0, &mut out);
        assert_eq!(parsed(&to(&deliveries(&chat, &mut out), 2))[0]["code"], "no_history");

        let (mut chat, mut out) = lobby_with_history();
        chat.connect(json_arrival(3, "kim"), 0, &mut out);
        deliveries(&chat, &mut out);
        chat.text(2, r#"{"type":"fetch","id":1,"ref":"f"}"#, 0, &mut out);
        assert_eq!(to(&deliveries(&chat, &mut out), 2), ["fetch 1"], "the shell reads the store here");
        let meta = FileMeta { name: "n".into(), mime: "a/b".into(), size: 2 };
        let dm = Record {
            id: 1,
            room: DM_ROOM.into(),
            from: "jay".into(),
            to: Some("ann".into()),
            binary: true,
            body: b"hi".to_vec(),
            ts: 0,
            file: Some(meta),
        };
        let answer = |conn: usize, record: Option<&Record>| {
            let frames = chat.fetch_answer(conn, 1, &json!("f"), record);
            let mut texts = Vec::new();
            let mut at = 0;
            while at < frames.len() {
                let (header, len) = crate::proto::frame::FrameHeader::parse(&frames[at..]).unwrap().unwrap();
                let end = at + len + header.payload_len as usize;
                texts.push((header.opcode_bits, frames[at + len..end].to_vec()));
                at = end;
            }
            texts
        };
        let jay = answer(2, Some(&dm));
        assert_eq!(jay[0].1, br#"{"type":"file_data","id":1,"name":"n","mime":"a/b","size":2}"#);
        assert_eq!(jay[1], (0x2, b"hi".to_vec()), "one binary frame with the bytes");
        assert_eq!(answer(1, Some(&dm)).len(), 2, "the recipient too");
        let kim = answer(3, Some(&dm));
        assert!(String::from_utf8_lossy(&kim[0].1).contains(r#""code":"not_found""#), "a third user: no such file");
        assert!(String::from_utf8_lossy(&answer(2, None)[0].1).contains(r#""ref":"f""#));
        let message = Record { file: None, ..dm.clone() };
        assert!(String::from_utf8_lossy(&answer(2, Some(&message))[0].1).contains("not_found"), "not a file");
        let in_room = Record { room: "elsewhere".into(), to: None, ..dm };
        assert_eq!(answer(3, Some(&in_room)).len(), 2, "without tokens, any user may fetch a room's file");
    }
}
