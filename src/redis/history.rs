//! History in Redis, as pure code: the store-and-publish script that gives a message
//! its id, keeps it in its room's stream and publishes it in one atomic step, the read
//! script, the commands that run them, and what their replies mean in the chat's words
//! (`chat::record`). No sockets: the shell (`server/cluster.rs`) sends the commands and
//! hands the replies back here.
//!
//! Keys: `pollcast:id` (the cluster's last message id, `INCR`ed), one stream per room,
//! `pollcast:history:ROOM` (direct messages: `pollcast:history:@dm`), whose entry ids
//! are `0-ID`, so a stream's order is the ids' order and a range by id is a range of
//! the stream. Fields: `f` from, `b` body, `x` binary (`1`/`0`), `ts`, `to` (a DM's
//! recipient, else empty). `MAXLEN ~ --history-keep` trims each stream as it grows.
//!
//! Why one script: a message must be stored before any client anywhere receives it,
//! and no node may see a message that was not stored. Redis runs a script atomically,
//! so INCR, XADD and PUBLISH happen together or (on an error before PUBLISH) the message
//! is never published. Every node, the sender's included, delivers a message only when
//! the subscription brings it back, with its id in front: `ID|ENVELOPE`.
//!
//! Room messages go in batches (`STORE_BATCH_SCRIPT`): the shell gathers one loop
//! turn's messages for one room into one script call, which takes N ids at once
//! (`INCRBY`), XADDs each message with its own, and PUBLISHes once, `FIRST|BATCH`, a
//! stored-batch envelope (`envelope::stored_batch`) whose messages have the ids FIRST,
//! FIRST+1, ... in order. The same rule holds for each message of a batch: none is
//! published before all of them are stored. Direct messages go one by one
//! (`STORE_SCRIPT`: each has its own channel, the recipient's).
//!
//! Shared files go one by one too (`STORE_FILE_SCRIPT`): a record like any other in
//! the room's (or `@dm`'s) stream, with the same id sequence and trimming, and three
//! more fields: `n` name, `m` type, `s` size (`b` holds the bytes). The script
//! publishes a notice only (`envelope::file`), never the bytes, and writes
//! `pollcast:file:ID` → the file's room (`@dm` for a direct file), so a `fetch` finds
//! the stream (`FETCH_SCRIPT`). That key's lifetime: a fetch checks that the stream
//! still holds the entry (retention may have trimmed it) and deletes the key when it
//! does not; and each file stored in a room deletes the keys of that room's files
//! trimmed since (`pollcast:files:ROOM`, a sorted set of the room's file ids), so the
//! keys never outnumber the files a room keeps plus those trimmed since its last file.
//! Reads (`READ_SCRIPT`) leave a file's bytes out: a page lists files as notices.

use sha1::{Digest, Sha1};

use super::resp::{bytes, Reply};
use crate::chat::record::{FileMeta, Page, Query, Record};

/// INCR the id, XADD to the stream (trimmed), PUBLISH `ID|envelope`; returns
/// `{id, nodes that heard it}`. KEYS: id counter, stream. ARGV: keep, channel, from,
/// body, binary, ts, to, envelope.
pub const STORE_SCRIPT: &str = r#"
local id = redis.call('INCR', KEYS[1])
local sid = string.format('%d', id)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '0-' .. sid,
  'f', ARGV[3], 'b', ARGV[4], 'x', ARGV[5], 'ts', ARGV[6], 'to', ARGV[7])
local heard = redis.call('PUBLISH', ARGV[2], sid .. '|' .. ARGV[8])
return {id, heard}
"#;

/// One room's messages of a loop turn: INCRBY the id by N, XADD each message (trimmed)
/// with its id, PUBLISH `FIRST|envelope` once; returns `{first, last, nodes that heard
/// it}` (the ids are first..=last, in the messages' order). KEYS: id counter, stream.
/// ARGV: keep, channel, N, envelope, then N × (from, body, binary, ts).
pub const STORE_BATCH_SCRIPT: &str = r#"
local n = tonumber(ARGV[3])
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n + 1
for i = 0, n - 1 do
  local a = 5 + i * 4
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '0-' .. string.format('%d', first + i),
    'f', ARGV[a], 'b', ARGV[a + 1], 'x', ARGV[a + 2], 'ts', ARGV[a + 3], 'to', '')
end
local heard = redis.call('PUBLISH', ARGV[2], string.format('%d', first) .. '|' .. ARGV[4])
return {first, last, heard}
"#;

/// One shared file: INCR the id, XADD it (trimmed) with its name, type, size and bytes,
/// map `pollcast:file:ID` to its room, forget the mappings of the room's files trimmed
/// since (see the module's notes), PUBLISH `ID|notice` on the channel (and, a direct
/// file some node heard, on its sender's channel too, when that is another); returns `{id, nodes that
/// heard the first publish}`. KEYS: id counter, stream, the room's file set. ARGV: keep,
/// channel, from, bytes, ts, to, notice, name, mime, size, room, second channel (or '').
pub const STORE_FILE_SCRIPT: &str = r#"
local id = redis.call('INCR', KEYS[1])
local sid = string.format('%d', id)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '0-' .. sid,
  'f', ARGV[3], 'b', ARGV[4], 'x', '1', 'ts', ARGV[5], 'to', ARGV[6], 'n', ARGV[8], 'm', ARGV[9], 's', ARGV[10])
redis.call('SET', 'pollcast:file:' .. sid, ARGV[11])
redis.call('ZADD', KEYS[3], id, sid)
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest > 0 then
  local first = '(' .. string.sub(oldest[1][1], 3)
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', first)) do
    redis.call('DEL', 'pollcast:file:' .. gone)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', first)
end
local heard = redis.call('PUBLISH', ARGV[2], sid .. '|' .. ARGV[7])
if heard > 0 and ARGV[12] ~= '' then redis.call('PUBLISH', ARGV[12], sid .. '|' .. ARGV[7]) end
return {id, heard}
"#;

/// One file with its bytes, for a `fetch`: `{room, entry}`, or nil when there is no
/// such file or retention trimmed it (then its mapping goes too). KEYS: `pollcast:file:ID`.
/// ARGV: `0-ID`.
pub const FETCH_SCRIPT: &str = r#"
local room = redis.call('GET', KEYS[1])
if not room then return false end
local entries = redis.call('XRANGE', 'pollcast:history:' .. room, ARGV[1], ARGV[1])
if #entries == 0 then
  redis.call('DEL', KEYS[1])
  return false
end
return {room, entries[1]}
"#;

/// A range of one stream, and the highest id trimming ever deleted from it (so a
/// `since` recovery can say whether anything after `since` was lost). KEYS: stream.
/// ARGV: XRANGE or XREVRANGE, start, end, count. A file's bytes are left out.
pub const READ_SCRIPT: &str = r#"
local entries = redis.call(ARGV[1], KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
for _, entry in ipairs(entries) do
  local fields, file = entry[2], false
  for i = 1, #fields, 2 do if fields[i] == 'n' then file = true end end
  if file then
    for i = 1, #fields, 2 do if fields[i] == 'b' then fields[i + 1] = '' end end
  end
end
local deleted = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
end
return {entries, deleted}
"#;

/// The key of the id counter.
pub const ID_KEY: &str = "pollcast:id";

/// A room's stream.
pub fn stream_key(room: &str) -> String {
    format!("pollcast:history:{room}")
}

/// The key mapping a file's id to its room.
pub fn file_key(id: u64) -> String {
    format!("pollcast:file:{id}")
}

/// A room's set of file ids (to forget the mappings of trimmed ones).
pub fn files_key(room: &str) -> String {
    format!("pollcast:files:{room}")
}

/// A script's SHA1, in hex, as EVALSHA names it.
pub fn sha(script: &str) -> String {
    Sha1::digest(script.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One message to store, in the store script's terms.
pub struct ToStore<'a> {
    pub room: &'a str,       // the stream's room (or `@dm`)
    pub channel: &'a str,    // where to publish it
    pub from: &'a str,       // sender's name
    pub body: &'a [u8],      // the message
    pub binary: bool,        // binary or text
    pub ts: u64,             // ms since the epoch
    pub to: Option<&'a str>, // a DM's recipient
    pub envelope: &'a [u8],  // what to publish after `ID|`
    pub keep: usize,         // --history-keep
}

/// The EVALSHA (or, with `eval`, EVAL: after NOSCRIPT) command storing one message.
pub fn store_command(message: &ToStore, eval: bool) -> Vec<Vec<u8>> {
    let (verb, script) = match eval {
        true => ("EVAL", STORE_SCRIPT.to_owned()),
        false => ("EVALSHA", sha(STORE_SCRIPT)),
    };
    let binary = if message.binary { "1" } else { "0" };
    [
        verb.as_bytes(),
        script.as_bytes(),
        b"2",
        ID_KEY.as_bytes(),
        stream_key(message.room).as_bytes(),
        message.keep.to_string().as_bytes(),
        message.channel.as_bytes(),
        message.from.as_bytes(),
        message.body,
        binary.as_bytes(),
        message.ts.to_string().as_bytes(),
        message.to.unwrap_or("").as_bytes(),
        message.envelope,
    ]
    .iter()
    .map(|arg| arg.to_vec())
    .collect()
}

/// One shared file to store, in the file script's terms.
pub struct FileToStore<'a> {
    pub room: &'a str,         // the stream's room (or `@dm`)
    pub channel: &'a str,      // where to publish the notice
    pub also: Option<&'a str>, // a second channel (a direct file's sender's)
    pub from: &'a str,         // sender's name
    pub to: Option<&'a str>,   // a direct file's recipient
    pub meta: &'a FileMeta,    // name, type, size
    pub bytes: &'a [u8],       // the file
    pub ts: u64,               // ms since the epoch
    pub notice: &'a [u8],      // what to publish after `ID|` (`envelope::file`)
    pub keep: usize,           // --history-keep
}

/// The EVALSHA (or, with `eval`, EVAL) command storing one file.
pub fn file_command(file: &FileToStore, eval: bool) -> Vec<Vec<u8>> {
    let (verb, script) = match eval {
        true => ("EVAL", STORE_FILE_SCRIPT.to_owned()),
        false => ("EVALSHA", sha(STORE_FILE_SCRIPT)),
    };
    [
        verb.as_bytes(),
        script.as_bytes(),
        b"3",
        ID_KEY.as_bytes(),
        stream_key(file.room).as_bytes(),
        files_key(file.room).as_bytes(),
        file.keep.to_string().as_bytes(),
        file.channel.as_bytes(),
        file.from.as_bytes(),
        file.bytes,
        file.ts.to_string().as_bytes(),
        file.to.unwrap_or("").as_bytes(),
        file.notice,
        file.meta.name.as_bytes(),
        file.meta.mime.as_bytes(),
        file.meta.size.to_string().as_bytes(),
        file.room.as_bytes(),
        file.also.unwrap_or("").as_bytes(),
    ]
    .iter()
    .map(|arg| arg.to_vec())
    .collect()
}

/// The EVALSHA (or EVAL) command reading file `id` with its bytes.
pub fn fetch_command(id: u64, eval: bool) -> Vec<Vec<u8>> {
    let (verb, script) = match eval {
        true => ("EVAL", FETCH_SCRIPT.to_owned()),
        false => ("EVALSHA", sha(FETCH_SCRIPT)),
    };
    [verb, &script, "1", &file_key(id), &format!("0-{id}")].iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// The fetch script's answer: the file (`None`: no such file, or trimmed); an error for
/// anything else.
pub fn fetched(reply: &Reply) -> Result<Option<Record>, String> {
    match reply {
        Reply::Null => Ok(None),
        Reply::Array(parts) => match parts.as_slice() {
            [room, entry] => {
                let room = bytes(room).and_then(|r| std::str::from_utf8(r).ok()).ok_or("a file's room")?;
                let record = record(room, entry)?;
                Ok(record.file.is_some().then_some(record))
            }
            _ => Err("the fetch script's answer".into()),
        },
        _ => Err("the fetch script answered neither a file nor nil".into()),
    }
}

/// One message of a batch, in the batch script's terms.
pub struct BatchMessage<'a> {
    pub from: &'a str,  // sender's name
    pub body: &'a [u8], // the message
    pub binary: bool,   // binary or text
    pub ts: u64,        // ms since the epoch
}

/// The EVALSHA (or, with `eval`, EVAL) command storing one room's batch: `messages` in
/// order into `room`'s stream, published on `channel` as `envelope` (a stored batch of
/// the same messages, in the same order). At least one message.
pub fn store_batch_command(
    room: &str,
    channel: &str,
    keep: usize,
    messages: &[BatchMessage],
    envelope: &[u8],
    eval: bool,
) -> Vec<Vec<u8>> {
    let (verb, script) = match eval {
        true => ("EVAL", STORE_BATCH_SCRIPT.to_owned()),
        false => ("EVALSHA", sha(STORE_BATCH_SCRIPT)),
    };
    let mut args = Vec::with_capacity(8 + messages.len() * 4);
    for arg in [verb, &script, "2", ID_KEY, &stream_key(room), &keep.to_string(), channel] {
        args.push(arg.as_bytes().to_vec());
    }
    args.push(messages.len().to_string().into_bytes());
    args.push(envelope.to_vec());
    for m in messages {
        args.push(m.from.as_bytes().to_vec());
        args.push(m.body.to_vec());
        args.push(if m.binary { b"1".to_vec() } else { b"0".to_vec() });
        args.push(m.ts.to_string().into_bytes());
    }
    args
}

/// The batch script's answer for `n` messages: their ids, in order, and how many nodes
/// heard the publish; `None` for anything else (an error, or a range of another size).
pub fn stored_batch(reply: &Reply, n: usize) -> Option<(Vec<u64>, i64)> {
    let Reply::Array(parts) = reply else { return None };
    let [Reply::Integer(first), Reply::Integer(last), Reply::Integer(heard)] = parts.as_slice() else {
        return None;
    };
    let (first, last) = (u64::try_from(*first).ok()?, u64::try_from(*last).ok()?);
    let count = last.checked_sub(first)?.checked_add(1)?;
    (count == n as u64 && first > 0).then(|| ((first..=last).collect(), *heard))
}

/// The store script's answer: the id, and how many nodes heard the publish.
pub fn stored(reply: &Reply) -> Option<(u64, i64)> {
    match reply {
        Reply::Array(parts) => match parts.as_slice() {
            [Reply::Integer(id), Reply::Integer(heard)] => Some((u64::try_from(*id).ok()?, *heard)),
            _ => None,
        },
        _ => None,
    }
}

/// `ID|ENVELOPE` as published by the store script: the id and the envelope; `None` for
/// a payload without an id in front (a plain envelope).
pub fn split_stored(payload: &[u8]) -> Option<(u64, &[u8])> {
    let bar = payload.iter().take(21).position(|&b| b == b'|')?;
    let id = std::str::from_utf8(&payload[..bar]).ok()?.parse().ok()?;
    Some((id, &payload[bar + 1..]))
}

/// The read command answering `query` for `room`, asking one entry more than `cap`
/// (so the answer knows whether there is more).
pub fn read_command(room: &str, query: Query, cap: usize, eval: bool) -> Vec<Vec<u8>> {
    let (range, start, end, count) = match query {
        Query::Last(n) => ("XREVRANGE", "+".to_owned(), "-".to_owned(), n.min(cap)),
        Query::Before { before: u64::MAX, n } => ("XREVRANGE", "+".to_owned(), "-".to_owned(), n.min(cap)),
        Query::Before { before, n } => ("XREVRANGE", format!("(0-{before}"), "-".to_owned(), n.min(cap)),
        Query::Since(since) => ("XRANGE", format!("(0-{since}"), "+".to_owned(), cap),
    };
    let (verb, script) = match eval {
        true => ("EVAL", READ_SCRIPT.to_owned()),
        false => ("EVALSHA", sha(READ_SCRIPT)),
    };
    let count = (count + 1).to_string();
    [verb, &script, "1", &stream_key(room), range, &start, &end, &count].iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// The page a read script's reply makes, oldest first: at most `n` of `query`'s
/// messages (`cap` for `since`), binary ones left out for JSON readers (`text_only`).
pub fn page(room: &str, query: Query, cap: usize, text_only: bool, reply: &Reply) -> Result<Page, String> {
    let Reply::Array(parts) = reply else { return Err("the read script answered no array".into()) };
    let [Reply::Array(entries), deleted] = parts.as_slice() else { return Err("the read script's answer".into()) };
    let mut messages = entries.iter().map(|entry| record(room, entry)).collect::<Result<Vec<_>, _>>()?;
    let wanted = match query {
        Query::Last(n) | Query::Before { n, .. } => n.min(cap),
        Query::Since(_) => cap,
    };
    let more = messages.len() > wanted;
    messages.truncate(wanted);
    if !matches!(query, Query::Since(_)) {
        messages.reverse(); // XREVRANGE gave newest first
    }
    let recovered = match query {
        Query::Since(since) => {
            let deleted = bytes(deleted).and_then(|id| std::str::from_utf8(id).ok()).and_then(entry_id).unwrap_or(0);
            Some(!more && deleted <= since)
        }
        _ => None,
    };
    if text_only {
        messages.retain(|m| !m.binary || m.file.is_some()); // files are listed as notices
    }
    Ok(Page { messages, more, recovered })
}

/// `0-ID` → ID.
fn entry_id(text: &str) -> Option<u64> {
    text.strip_prefix("0-")?.parse().ok()
}

/// One stream entry, `[id, [field, value, ...]]`, as a record.
fn record(room: &str, entry: &Reply) -> Result<Record, String> {
    let Reply::Array(parts) = entry else { return Err("a stream entry that is no array".into()) };
    let [id, Reply::Array(fields)] = parts.as_slice() else { return Err("a stream entry's shape".into()) };
    let id = bytes(id).and_then(|id| std::str::from_utf8(id).ok()).and_then(entry_id).ok_or("a stream entry id")?;
    let mut record = Record {
        id,
        room: room.to_owned(),
        from: String::new(),
        to: None,
        binary: false,
        body: Vec::new(),
        ts: 0,
        file: None,
    };
    let (mut file_name, mut mime, mut size) = (None, String::new(), 0);
    for pair in fields.chunks(2) {
        let [name, value] = pair else { continue };
        let (Some(name), Some(value)) = (bytes(name), bytes(value)) else { continue };
        match name {
            b"f" => record.from = String::from_utf8_lossy(value).into_owned(),
            b"b" => record.body = value.to_vec(),
            b"x" => record.binary = value == b"1",
            b"ts" => record.ts = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
            b"to" if !value.is_empty() => record.to = Some(String::from_utf8_lossy(value).into_owned()),
            b"n" => file_name = Some(String::from_utf8_lossy(value).into_owned()),
            b"m" => mime = String::from_utf8_lossy(value).into_owned(),
            b"s" => size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    record.file = file_name.map(|name| FileMeta { name, mime, size });
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Reply {
        Reply::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: u64, from: &str, body: &str, binary: bool) -> Reply {
        let fields = ["f", from, "b", body, "x", if binary { "1" } else { "0" }, "ts", "5", "to", ""];
        Reply::Array(vec![bulk(&format!("0-{id}")), Reply::Array(fields.iter().map(|f| bulk(f)).collect())])
    }

    #[test]
    fn a_file_is_read_back_with_its_name_type_and_size_and_listed_in_pages() {
        let fields = ["f", "ann", "b", "", "x", "1", "ts", "5", "to", "", "n", "a b.png", "m", "image/png", "s", "300"];
        let file = Reply::Array(vec![bulk("0-3"), Reply::Array(fields.iter().map(|f| bulk(f)).collect())]);
        let reply = Reply::Array(vec![Reply::Array(vec![file.clone(), entry(2, "bob", "\x00", true)]), bulk("0-0")]);
        let page = page("tea", Query::Last(5), 500, true, &reply).unwrap();
        let meta = FileMeta { name: "a b.png".into(), mime: "image/png".into(), size: 300 };
        assert_eq!(page.messages.len(), 1, "binary messages left out for JSON readers, files kept");
        assert_eq!((page.messages[0].id, page.messages[0].file.as_ref()), (3, Some(&meta)));
        let record = fetched(&Reply::Array(vec![bulk("tea"), file])).unwrap().unwrap();
        assert_eq!((record.room.as_str(), record.file), ("tea", Some(meta)));
        assert_eq!(fetched(&Reply::Null), Ok(None), "no such file, or trimmed");
        let message = Reply::Array(vec![bulk("tea"), entry(4, "ann", "hi", false)]);
        assert_eq!(fetched(&message), Ok(None), "a message is no file");
        assert!(fetched(&Reply::Error("ERR".into())).is_err());
    }

    #[test]
    fn a_file_is_stored_alone_with_its_mapping_keys() {
        let meta = FileMeta { name: "n".into(), mime: "a/b".into(), size: 2 };
        let file = FileToStore {
            room: "@dm",
            channel: "pollcast:user:bob",
            also: Some("pollcast:user:ann"),
            from: "ann",
            to: Some("bob"),
            meta: &meta,
            bytes: b"hi",
            ts: 5,
            notice: b"N",
            keep: 10,
        };
        let command = file_command(&file, false);
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        let rest: [&[u8]; 16] = [
            b"3",
            b"pollcast:id",
            b"pollcast:history:@dm",
            b"pollcast:files:@dm",
            b"10",
            b"pollcast:user:bob",
            b"ann",
            b"hi",
            b"5",
            b"bob",
            b"N",
            b"n",
            b"a/b",
            b"2",
            b"@dm",
            b"pollcast:user:ann",
        ];
        assert_eq!((args[0], args[1]), (b"EVALSHA".as_slice(), sha(STORE_FILE_SCRIPT).as_bytes()));
        assert_eq!(args[2..], rest);
        let fetch = fetch_command(7, false);
        let fetch: Vec<&[u8]> = fetch.iter().map(Vec::as_slice).collect();
        assert_eq!(fetch[2..], [b"1".as_slice(), b"pollcast:file:7", b"0-7"]);
    }

    #[test]
    fn the_scripts_are_named_by_their_sha1() {
        assert_eq!(sha("return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert_eq!(sha(STORE_SCRIPT).len(), 40);
    }

    #[test]
    fn ids_come_in_front_of_the_envelope() {
        assert_eq!(split_stored(b"42|\x01\x02"), Some((42, b"\x01\x02".as_slice())));
        assert_eq!(split_stored(b"\x01\x01n"), None);
        assert_eq!(split_stored(b"x|y"), None);
    }

    #[test]
    fn a_batch_is_one_command_with_its_messages_in_order() {
        let messages = [
            BatchMessage { from: "ann", body: b"one", binary: false, ts: 5 },
            BatchMessage { from: "bob", body: b"\x00", binary: true, ts: 6 },
        ];
        let command = store_batch_command("tea", "pollcast:room:tea", 1000, &messages, b"ENV", false);
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        assert_eq!(args[0], b"EVALSHA");
        assert_eq!(args[1], sha(STORE_BATCH_SCRIPT).as_bytes());
        let rest: [&[u8]; 15] = [
            b"2",
            b"pollcast:id",
            b"pollcast:history:tea",
            b"1000",
            b"pollcast:room:tea",
            b"2",
            b"ENV",
            b"ann",
            b"one",
            b"0",
            b"5",
            b"bob",
            b"\x00",
            b"1",
            b"6",
        ];
        assert_eq!(args[2..], rest);
        let eval = store_batch_command("tea", "c", 1, &messages, b"ENV", true);
        assert_eq!((eval[0].as_slice(), eval[1].as_slice()), (b"EVAL".as_slice(), STORE_BATCH_SCRIPT.as_bytes()));
    }

    #[test]
    fn a_batch_reply_gives_each_message_its_id() {
        let reply =
            |first, last, heard| Reply::Array(vec![first, last, heard].into_iter().map(Reply::Integer).collect());
        assert_eq!(stored_batch(&reply(7, 9, 2), 3), Some((vec![7, 8, 9], 2)));
        assert_eq!(stored_batch(&reply(7, 7, 0), 1), Some((vec![7], 0)));
        assert_eq!(stored_batch(&reply(7, 9, 2), 2), None, "a range of another size");
        assert_eq!(stored_batch(&reply(9, 7, 2), 3), None);
        assert_eq!(stored_batch(&reply(-1, 1, 2), 3), None);
        assert_eq!(stored_batch(&Reply::Error("NOSCRIPT".into()), 1), None);
    }

    #[test]
    fn reads_ask_one_more_than_they_keep() {
        let command = read_command("tea", Query::Before { before: 10, n: 3 }, 500, false);
        let args: Vec<&str> = command.iter().map(|a| std::str::from_utf8(a).unwrap()).collect();
        assert_eq!(args[2..], ["1", "pollcast:history:tea", "XREVRANGE", "(0-10", "-", "4"]);
        let command = read_command("tea", Query::Since(7), 50, true);
        assert_eq!(command[0], b"EVAL");
        assert_eq!(command[5..], [b"(0-7".to_vec(), b"+".to_vec(), b"51".to_vec()]);
    }

    #[test]
    fn pages_are_oldest_first_and_know_whether_there_is_more() {
        let reply = Reply::Array(vec![
            Reply::Array(vec![entry(9, "ann", "c", false), entry(7, "bob", "b", true), entry(3, "ann", "a", false)]),
            bulk("0-0"),
        ]);
        let page = page("tea", Query::Last(2), 500, false, &reply).unwrap();
        assert_eq!(page.messages.iter().map(|m| m.id).collect::<Vec<_>>(), [7, 9]);
        assert!(page.more && page.recovered.is_none());
        assert!(page.messages[0].binary && page.messages[1].body == b"c");
        let page = super::page("tea", Query::Last(5), 500, true, &reply).unwrap();
        assert_eq!(page.messages.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 9], "text only");
    }

    #[test]
    fn since_knows_whether_trimming_took_anything_after_it() {
        let entries = Reply::Array(vec![entry(8, "ann", "x", false)]);
        let reply = |deleted: &str| Reply::Array(vec![entries.clone(), bulk(deleted)]);
        assert_eq!(page("tea", Query::Since(5), 50, false, &reply("0-4")).unwrap().recovered, Some(true));
        assert_eq!(page("tea", Query::Since(5), 50, false, &reply("0-6")).unwrap().recovered, Some(false));
    }
}
