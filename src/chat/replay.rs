//! What follows a commit or a store read: `ack`s for JSON senders, and history pages
//! framed for the codec that asked.
//!
//! Owns: the frames of an ack (or its `store_failed` error) and of a history answer.
//! Must not touch: the store (the shell reads it and hands the page here), sockets.

use serde_json::Value;

use crate::proto::frame::{write_frame, OpCode};

use super::json::Envelope;
use super::record::{FileMeta, Page, Record};
use super::reply::FileView;
use super::text::{file_line, line_text};

/// A JSON `send` or `dm` accepted as message `id`: the shell sends the `ack` once the
/// message is committed to history (or an `error` if the commit failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub conn: usize, // the sender
    pub cid: Value,  // the sender's id for the request (null if it gave none)
    pub id: u64,     // the message id
}

impl Ack {
    /// The frame telling the sender how it went.
    pub fn frame(&self, stored: Result<(), &str>) -> Vec<u8> {
        let text = match stored {
            Ok(()) => Envelope::Ack { cid: &self.cid, id: self.id }.to_json(),
            Err(why) => {
                let message = format!("message {} not stored: {why}", self.id);
                Envelope::Error { code: "store_failed", message: &message, reference: &self.cid }.to_json()
            }
        };
        let mut frame = Vec::with_capacity(text.len() + 4);
        write_frame(&mut frame, OpCode::Text, text.as_bytes());
        frame
    }
}

/// The frames answering a history query: raw clients get each message as its own frame
/// (as it was relayed: a file as its `file ...` line), JSON clients one `history`
/// envelope (text messages and files).
pub fn history_frames(room: &str, page: &Page, json: bool) -> Vec<u8> {
    let mut frames = Vec::new();
    if !json {
        for m in &page.messages {
            match &m.file {
                Some(file) => write_frame(&mut frames, OpCode::Text, file_line(&file_view(room, m, file)).as_bytes()),
                None => write_frame(&mut frames, if m.binary { OpCode::Binary } else { OpCode::Text }, &m.body),
            }
        }
        return frames;
    }
    write_frame(&mut frames, OpCode::Text, history_json(room, page).as_bytes());
    frames
}

/// A page as one `history` envelope (text messages, and files as `file` envelopes without
/// their bytes): what a JSON client is sent, and what the admin API answers.
pub fn history_json(room: &str, page: &Page) -> String {
    let messages = page
        .messages
        .iter()
        .filter(|m| !m.binary || m.file.is_some())
        .map(|m| match &m.file {
            Some(file) => Envelope::file(&file_view(room, m, file)),
            None => {
                // Text records were valid UTF-8 when relayed; a damaged one shows as empty.
                let text = line_text(std::str::from_utf8(&m.body).unwrap_or_default());
                Envelope::Message { id: m.id, room, from: &m.from, text, ts: m.ts }
            }
        })
        .collect();
    Envelope::History { room, messages, more: page.more, recovered: page.recovered }.to_json()
}

/// A stored file of `room` as a history page shows it.
fn file_view<'a>(room: &'a str, m: &'a Record, file: &'a FileMeta) -> FileView<'a> {
    let (name, mime, size) = (file.name.as_str(), file.mime.as_str(), file.size);
    FileView { id: m.id, room: Some(room), to: None, from: &m.from, name, mime, size, ts: m.ts }
}
