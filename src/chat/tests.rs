//! The chat core's rules, tested without sockets: every action through both codecs.

use serde_json::Value;

use super::*;
use crate::chat::record::{FileMeta, Record};
use crate::proto::frame::FrameHeader;

/// Small limits for tests (shared with the other chat modules' tests).
pub(super) const LIMITS: ChatLimits = ChatLimits {
    max_rooms_per_client: 2,
    max_text: 16,
    history: false,
    history_default: 50,
    history_max: 500,
    max_rate: 0,
    max_file: 64,
    max_uploads: 2,
};

/// The payloads of the server frames in `bytes`, as text.
fn texts(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (header, len) = FrameHeader::parse(&bytes[at..]).unwrap().unwrap();
        let end = at + len + header.payload_len as usize;
        out.push(String::from_utf8_lossy(&bytes[at + len..end]).into_owned());
        at = end;
    }
    out
}

/// Every output flattened to `(recipient, text)`, rooms expanded to their members.
pub(super) fn deliveries(chat: &Chat, out: &mut Outbox) -> Vec<(usize, String)> {
    let outputs = out.take();
    expand(chat, out, outputs)
}

/// `deliveries` of outputs already taken from `out` (then its acks).
pub(super) fn expand(chat: &Chat, out: &mut Outbox, outputs: Vec<Output>) -> Vec<(usize, String)> {
    let mut list = Vec::new();
    for output in outputs {
        match output {
            Output::To { conn, frames } => list.extend(texts(&frames).into_iter().map(|t| (conn, t))),
            Output::Room { room, except, raw, json, .. } => {
                for m in chat.members(room).iter().filter(|m| Some(m.conn) != except) {
                    let frames = if m.json { &json } else { &raw };
                    list.extend(texts(frames).into_iter().map(|t| (m.conn, t)));
                }
            }
            Output::History { conn, room, query, .. } => list.push((conn, format!("history {room} {query:?}"))),
            Output::Own { .. } => unreachable!("only the shell adds session bytes"),
            Output::Fetch { conn, id, .. } => list.push((conn, format!("fetch {id}"))),
            Output::Fetched { conn, frames } => list.push((conn, format!("fetched {} bytes", frames.len()))),
        }
    }
    for ack in std::mem::take(&mut out.acks) {
        list.extend(texts(&ack.frame(Ok(()))).into_iter().map(|t| (ack.conn, t)));
    }
    out.records.clear();
    list
}

pub(super) fn to(list: &[(usize, String)], conn: usize) -> Vec<String> {
    list.iter().filter(|(c, _)| *c == conn).map(|(_, t)| t.clone()).collect()
}

pub(super) fn arrival(conn: usize, json: bool, name: &str) -> Arrival<'_> {
    Arrival {
        conn,
        json,
        name: Some(name),
        room: "lobby",
        history: None,
        identity: None,
        rate_limited: true,
        deflate: false,
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// A chat with raw `ann` (1) and JSON `jay` (2) in `lobby`; the outbox is emptied.
pub(super) fn lobby() -> (Chat, Outbox) {
    let mut chat = Chat::new(LIMITS);
    let mut out = Outbox::default();
    chat.connect(arrival(1, false, "ann"), 0, &mut out);
    chat.connect(arrival(2, true, "jay"), 0, &mut out);
    out.take();
    (chat, out)
}

#[test]
fn json_connect_gets_welcome_then_joined_and_others_presence() {
    let (mut chat, mut out) = lobby();
    chat.connect(arrival(3, true, "kim"), 0, &mut out);
    let list = deliveries(&chat, &mut out);
    let kim = to(&list, 3);
    assert_eq!(json(&kim[0]), serde_json::json!({"type":"welcome","you":"kim","rooms":["lobby"]}));
    assert_eq!(json(&kim[1]), serde_json::json!({"type":"joined","room":"lobby","members":["ann","jay","kim"]}));
    assert_eq!(json(&to(&list, 2)[0])["event"], "join");
    assert!(to(&list, 1).is_empty(), "raw clients get nothing unasked");
}

#[test]
fn raw_line_reaches_raw_verbatim_and_json_as_envelope() {
    let (mut chat, mut out) = lobby();
    chat.connect(arrival(3, false, "bo"), 0, &mut out);
    assert!(to(&deliveries(&chat, &mut out), 3).is_empty(), "a raw client's join is not answered");
    chat.text(1, "hi all\n", 42, &mut out);
    let list = deliveries(&chat, &mut out);
    assert_eq!(to(&list, 3), vec!["hi all\n"]);
    let envelope = json(&to(&list, 2)[0]);
    assert_eq!(
        envelope,
        serde_json::json!({"type":"message","id":1,"room":"lobby","from":"ann","text":"hi all","ts":42})
    );
    assert!(to(&list, 1).is_empty(), "never back to the sender");
}

#[test]
fn burst_of_raw_lines_is_one_output() {
    let (mut chat, mut out) = lobby();
    for i in 0..5 {
        chat.text(1, &format!("line {i}"), 0, &mut out);
    }
    let outputs = out.take();
    assert_eq!(outputs.len(), 1);
    let Output::Room { messages, raw, json, .. } = &outputs[0] else { panic!() };
    assert_eq!((*messages, texts(raw).len(), texts(json).len()), (5, 5, 5));
}

#[test]
fn room_outputs_are_written_into_recycled_buffers() {
    let (mut chat, mut out) = lobby();
    out.pool().give_buffer(vec![0; 64]); // too small to be worth keeping
    out.pool().give_buffer(vec![0; 1 << 20]); // an outlier: not held
    out.pool().give_buffer(Vec::with_capacity(64 << 10));
    out.pool().give_buffer(Vec::with_capacity(32 << 10));
    assert_eq!(out.pool().buffers(), 2);
    chat.text(1, "hello", 0, &mut out);
    let outputs = out.take();
    let Output::Room { raw, json, .. } = &outputs[0] else { panic!() };
    assert_eq!(texts(raw), ["hello"], "a reused buffer starts empty");
    let mut capacities = [raw.capacity(), json.capacity()];
    capacities.sort_unstable();
    assert_eq!(capacities, [32 << 10, 64 << 10], "both codecs' frames went into spares");
    assert_eq!(out.pool().buffers(), 0);
}

#[test]
fn json_send_acks_and_reaches_raw_as_text() {
    let (mut chat, mut out) = lobby();
    chat.text(2, r#"{"type":"send","room":"lobby","text":"yo","cid":"c1"}"#, 7, &mut out);
    let list = deliveries(&chat, &mut out);
    assert_eq!(to(&list, 1), vec!["yo"]);
    let jay = to(&list, 2);
    assert_eq!(json(&jay[0])["type"], "message");
    assert_eq!(json(&jay[1]), serde_json::json!({"type":"ack","cid":"c1","id":1}));
}

#[test]
fn every_json_error_code() {
    let (mut chat, mut out) = lobby();
    let cases = [
        ("{", "bad_json"),
        (r#"{"type":"fly"}"#, "unknown_type"),
        (r#"{"type":"send","room":"lobby"}"#, "bad_field"),
        (r#"{"type":"send","room":"elsewhere","text":"x","ref":9}"#, "not_member"),
        (r#"{"type":"send","room":"lobby","text":"this text is far too long"}"#, "too_large"),
        (r#"{"type":"dm","to":"nobody","text":"x"}"#, "no_such_user"),
        (r#"{"type":"nick","name":"ann"}"#, "name_taken"),
        (r#"{"type":"nick","name":"a b"}"#, "bad_field"),
        (r#"{"type":"join","room":"bad room"}"#, "bad_field"),
        (r#"{"type":"leave","room":"elsewhere"}"#, "not_member"),
    ];
    for (request, code) in cases {
        chat.text(2, request, 0, &mut out);
        let reply = json(&to(&deliveries(&chat, &mut out), 2)[0]);
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{request}");
    }
    chat.text(2, r#"{"type":"send","room":"elsewhere","text":"x","ref":9}"#, 0, &mut out);
    assert_eq!(json(&to(&deliveries(&chat, &mut out), 2)[0])["ref"], 9);
    chat.binary(2, b"\x00", 0, &mut out);
    assert_eq!(json(&to(&deliveries(&chat, &mut out), 2)[0])["code"], "bad_json");
}

#[test]
fn too_many_rooms() {
    let (mut chat, mut out) = lobby();
    chat.text(2, r#"{"type":"join","room":"b"}"#, 0, &mut out);
    chat.text(2, r#"{"type":"join","room":"c"}"#, 0, &mut out);
    let jay = to(&deliveries(&chat, &mut out), 2);
    assert_eq!(json(&jay[0])["type"], "joined");
    assert_eq!(json(&jay[1])["code"], "too_many_rooms");
}

#[test]
fn dm_between_codecs_both_sides_see_it() {
    let (mut chat, mut out) = lobby();
    chat.text(2, r#"{"type":"dm","to":"ann","text":"psst","cid":5}"#, 1, &mut out);
    let list = deliveries(&chat, &mut out);
    assert_eq!(to(&list, 1), vec!["dm jay psst"]);
    let jay = to(&list, 2);
    assert_eq!(json(&jay[0]), serde_json::json!({"type":"dm","id":1,"from":"jay","to":"ann","text":"psst","ts":1}));
    assert_eq!(json(&jay[1]), serde_json::json!({"type":"ack","cid":5,"id":1}));
    chat.text(1, "/msg jay back at you\n", 2, &mut out);
    let list = deliveries(&chat, &mut out);
    assert_eq!(json(&to(&list, 2)[0])["text"], "back at you");
    assert_eq!(to(&list, 1), vec!["ok msg jay 2"]);
}

#[test]
fn raw_commands() {
    let (mut chat, mut out) = lobby();
    let mut ask = |chat: &mut Chat, line: &str| {
        chat.text(1, line, 0, &mut out);
        to(&deliveries(chat, &mut out), 1)
    };
    assert_eq!(ask(&mut chat, "/who"), vec!["who lobby ann jay"]);
    assert_eq!(ask(&mut chat, "/rooms"), vec!["rooms lobby:2"]);
    assert_eq!(ask(&mut chat, "/stats"), vec!["stats users=2 rooms=1 messages=0"]);
    assert_eq!(ask(&mut chat, "/nick annie"), vec!["ok nick annie"]);
    assert_eq!(ask(&mut chat, "/join games"), vec!["ok join games"]);
    assert_eq!(ask(&mut chat, "/rooms"), vec!["rooms games:1 lobby:1"], "a raw client has one current room");
    assert_eq!(ask(&mut chat, "/leave"), vec!["ok leave games"]);
    assert_eq!(ask(&mut chat, "hello?"), vec!["err not_member you are in no room (try /join ROOM)"]);
    assert_eq!(ask(&mut chat, "/help").len(), text::HELP.len());
    assert!(ask(&mut chat, "/nope")[0].starts_with("err unknown_command"));
}

#[test]
fn rename_and_departure_are_announced() {
    let (mut chat, mut out) = lobby();
    chat.text(1, "/nick annie", 0, &mut out);
    let presence = json(&to(&deliveries(&chat, &mut out), 2)[0]);
    assert_eq!(
        presence,
        serde_json::json!({"type":"presence","room":"lobby","user":"annie","event":"rename","old":"ann"})
    );
    chat.disconnect(1, &mut out);
    let presence = json(&to(&deliveries(&chat, &mut out), 2)[0]);
    assert_eq!(presence, serde_json::json!({"type":"presence","room":"lobby","user":"annie","event":"leave"}));
    assert_eq!(chat.name_available("annie"), Ok(()), "the name is free again");
    assert!(!chat.has(1));
}

#[test]
fn taken_name_on_json_connect_gets_error_and_a_guest_name() {
    let (mut chat, mut out) = lobby();
    chat.connect(arrival(3, true, "ann"), 0, &mut out);
    let kim = to(&deliveries(&chat, &mut out), 3);
    assert_eq!(json(&kim[0])["code"], "name_taken");
    assert_eq!(json(&kim[1])["you"], "guest-1");
}

#[test]
fn rate_limit_drops_and_answers_then_refills() {
    let mut chat = Chat::new(ChatLimits { max_rate: 2, ..LIMITS });
    let mut out = Outbox::default();
    chat.connect(arrival(1, false, "ann"), 0, &mut out);
    chat.connect(arrival(2, true, "jay"), 0, &mut out);
    out.take();
    // A burst of twice the rate passes, the next message is refused, without a disconnect.
    for i in 0..4 {
        chat.text(1, &format!("m{i}"), 0, &mut out);
    }
    chat.text(1, "one too many", 0, &mut out);
    let list = deliveries(&chat, &mut out);
    assert_eq!(to(&list, 1), vec!["err rate_limited over 2 messages per second; this one was dropped"]);
    assert_eq!(to(&list, 2).len(), 4);
    // Half a second later one token is back.
    chat.text(1, "later", 500, &mut out);
    let list = deliveries(&chat, &mut out);
    assert!(to(&list, 1).is_empty());
    for _ in 0..5 {
        chat.text(2, r#"{"type":"stats"}"#, 500, &mut out); // jay has an allowance of its own
    }
    let jay = to(&deliveries(&chat, &mut out), 2);
    assert_eq!((json(&jay[3])["type"].as_str(), json(&jay[4])["code"].as_str()), (Some("stats"), Some("rate_limited")));
}

#[test]
fn ids_increase_across_rooms_and_dms() {
    let (mut chat, mut out) = lobby();
    chat.set_last_id(100);
    chat.text(1, "a", 0, &mut out);
    chat.text(2, r#"{"type":"dm","to":"ann","text":"b"}"#, 0, &mut out);
    chat.text(2, r#"{"type":"send","room":"lobby","text":"c"}"#, 0, &mut out);
    let ids: Vec<u64> = to(&deliveries(&chat, &mut out), 2)
        .iter()
        .map(|t| json(t))
        .filter(|v| v["type"] == "message" || v["type"] == "dm")
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![101, 102, 103]);
}

/// The payloads of the frames in `bytes`, inflated where RSV1 marks them compressed.
fn inflated_texts(bytes: &[u8]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (header, len) = FrameHeader::parse(&bytes[at..]).unwrap().unwrap();
        let end = at + len + header.payload_len as usize;
        let payload = &bytes[at + len..end];
        let compressed = header.rsv == crate::proto::frame::RSV1_BIT;
        let text = match compressed {
            true => {
                let mut inflater = crate::proto::deflate::Inflater::new(false);
                let mut text = Vec::new();
                inflater.push(payload, &mut text, 1 << 20).unwrap();
                inflater.finish(&mut text, 1 << 20).unwrap();
                text
            }
            false => payload.to_vec(),
        };
        out.push((compressed, String::from_utf8(text).unwrap()));
        at = end;
    }
    out
}

fn deflating(conn: usize, json: bool, name: &str) -> Arrival<'_> {
    Arrival { deflate: true, ..arrival(conn, json, name) }
}

#[test]
fn a_broadcast_is_compressed_once_per_codec_for_deflate_members_only() {
    let (mut chat, mut out) = lobby(); // plain raw ann (1), plain JSON jay (2)
    chat.connect(deflating(3, false, "zed"), 0, &mut out);
    chat.connect(deflating(4, true, "zoe"), 0, &mut out);
    chat.connect(deflating(5, true, "zia"), 0, &mut out);
    out.take();
    out.take_compressed();
    let long = "a line long enough to be worth compressing, ".repeat(4);
    chat.text(1, "short", 0, &mut out); // below the threshold: plain in every chunk
    chat.text(1, &long, 0, &mut out);
    chat.text(1, "short again", 0, &mut out);
    let outputs = out.take();
    assert_eq!(outputs.len(), 1, "one read's burst is one output");
    let Output::Room { raw, json, raw_deflate: Some(raw_z), json_deflate: Some(json_z), messages, .. } = &outputs[0]
    else {
        panic!("both compressed chunks are built: {outputs:?}")
    };
    assert_eq!(*messages, 3);
    assert_eq!(out.take_compressed(), 2, "the long line once per codec, not per member");
    let raw_got = inflated_texts(raw_z);
    assert_eq!(raw_got.iter().map(|(z, _)| *z).collect::<Vec<_>>(), [false, true, false]);
    assert_eq!(raw_got.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), texts(raw), "same messages, same order");
    let json_got = inflated_texts(json_z);
    assert_eq!(json_got.iter().map(|(z, _)| *z).collect::<Vec<_>>(), [false, true, false]);
    assert_eq!(json_got.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), texts(json));
    assert!(raw_z.len() < raw.len() && json_z.len() < json.len());
}

#[test]
fn nothing_is_compressed_without_a_deflate_recipient() {
    let long = "a line long enough to be worth compressing, ".repeat(4);
    // Plain members only.
    let (mut chat, mut out) = lobby();
    chat.text(1, &long, 0, &mut out);
    let outputs = out.take();
    assert!(matches!(&outputs[0], Output::Room { raw_deflate: None, json_deflate: None, .. }));
    // The sender is the room's only deflate member: nobody to compress for.
    chat.connect(deflating(3, false, "zed"), 0, &mut out);
    out.take();
    chat.text(3, &long, 0, &mut out);
    let outputs = out.take();
    assert!(matches!(&outputs[0], Output::Room { raw_deflate: None, json_deflate: None, .. }), "{outputs:?}");
    // A deflate JSON member: only the JSON form is compressed.
    chat.connect(deflating(4, true, "zoe"), 0, &mut out);
    out.take();
    chat.text(3, &long, 0, &mut out);
    let outputs = out.take();
    assert!(matches!(&outputs[0], Output::Room { raw_deflate: None, json_deflate: Some(_), .. }), "{outputs:?}");
    assert_eq!(out.take_compressed(), 1);
}

#[test]
fn spent_records_are_filled_again_with_nothing_left_of_their_old_fields() {
    let mut out = Outbox::default();
    out.keep(1, "a", "ann", Some("bob"), true, &[7; 100], 10);
    let mut spent = std::mem::take(&mut out.records);
    spent[0].file = Some(FileMeta { name: "x".into(), mime: "text/plain".into(), size: 1 });
    let body = spent[0].body.as_ptr();
    out.recycle(spent);
    out.keep(2, "room", "cy", None, false, b"hi", 20);
    let record = &out.records[0];
    let expected = Record {
        id: 2,
        room: "room".into(),
        from: "cy".into(),
        to: None,
        binary: false,
        body: b"hi".to_vec(),
        ts: 20,
        file: None,
    };
    assert_eq!(*record, expected);
    assert_eq!(record.body.as_ptr(), body, "the spent record's buffer was filled again");
    // What spent bodies hold together is bounded (4 MiB): of three of 2 MiB, two are kept.
    out.records.clear();
    out.recycle((0..3).map(|_| Record { body: Vec::with_capacity(2 << 20), ..Record::default() }).collect());
    (3..6).for_each(|id| out.keep(id, "r", "d", None, false, b"x", 30));
    let big: Vec<bool> = out.records.iter().map(|r| r.body.capacity() >= 2 << 20).collect();
    assert_eq!(big, [true, true, false]);
}
