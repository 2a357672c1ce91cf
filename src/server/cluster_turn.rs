//! The Redis phase, the server's side (phase 8 of `mod.rs`, with `--redis` only): what
//! this turn produced goes to Redis, and what Redis brought is acted on.
//!
//! Owns: publishing the turn's room outputs (one per room) and direct messages to
//! other nodes, the turn's subscriptions, claims and member writes (from the chat's
//! change log), `who`/`rooms` questions for the cluster, and what each reply and each
//! published message means for the chat and the queues. Must not touch: the sockets,
//! reconnects and RESP (`cluster.rs`, `redis::`), history in Redis (`cluster_history.rs`).

use super::broadcast::Relayed;
use super::cluster::{room_channel, user_channel, Tag};
use super::cluster_history::BATCH_MAX_BYTES;
use crate::chat::cluster::Ask;
use crate::redis::envelope::{self, Envelope};
use crate::redis::presence;
use crate::redis::resp::error_text;
use crate::redis::{Event, Reply};

impl super::Server {
    /// The Redis phase's work for the server: what this turn produced goes out (room
    /// outputs published once per room, direct messages to other nodes, subscriptions
    /// for rooms and names gained or lost), the links do their turn, and what they
    /// brought is acted on (replies settle senders, published frames reach members).
    pub(super) fn cluster_turn(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        let now = self.now;
        let relayed = self.router.take_relayed();
        let max_bytes = BATCH_MAX_BYTES.min(self.config.redis_max_buffer / 8);
        for run in runs(&relayed, max_bytes) {
            let run = &relayed[run];
            let messages: u64 = run.iter().map(|r| r.messages).sum();
            let joined: (Vec<u8>, Vec<u8>);
            let (raw, json): (&[u8], &[u8]) = match run {
                [one] => (&one.raw, &one.json),
                _ => {
                    let raw: Vec<&[u8]> = run.iter().map(|r| r.raw.as_slice()).collect();
                    let json: Vec<&[u8]> = run.iter().map(|r| r.json.as_slice()).collect();
                    joined = (raw.concat(), json.concat());
                    (&joined.0, &joined.1)
                }
            };
            let mut payload = Vec::with_capacity(raw.len() + json.len() + 64);
            envelope::room(&mut payload, cluster.node(), u32::try_from(messages).unwrap_or(u32::MAX), raw, json);
            let channel = room_channel(&run[0].room);
            let tag = Tag::Relay { messages };
            match cluster.command(&[b"PUBLISH".as_slice(), channel.as_bytes(), &payload], tag, now) {
                Ok(()) => cluster.figures.sent += 1,
                Err(_) => cluster.count_unrelayed(messages),
            }
        }
        let dms = std::mem::take(&mut self.router.outbox().remote_dms);
        let mut failed = Vec::new();
        for dm in dms {
            let mut payload = Vec::with_capacity(dm.text.len() + 64);
            envelope::dm(&mut payload, cluster.node(), dm.id, dm.ts, &dm.from, &dm.to, &dm.text);
            let channel = user_channel(&dm.to);
            if let Err(Tag::Dm(dm)) =
                cluster.command(&[b"PUBLISH".as_slice(), channel.as_bytes(), &payload], Tag::Dm(Box::new(dm)), now)
            {
                failed.push(dm);
            }
        }
        cluster.heartbeat(now, self.now_ms, false);
        cluster.watch(self.chat.take_watch(), now);
        for ask in std::mem::take(&mut self.router.outbox().asks) {
            let (command, tag) = match ask {
                Ask::Who { conn, room } => (presence::who(&room), Tag::Who { conn, room }),
                Ask::Rooms { conn } => (presence::rooms(), Tag::Rooms { conn }),
            };
            match cluster.command(&command, tag, now) {
                Ok(()) => {}
                Err(Tag::Who { conn, room }) => self.chat.answer_who(conn, &room, None, self.router.outbox()),
                Err(Tag::Rooms { conn }) => self.chat.answer_rooms(conn, None, self.router.outbox()),
                Err(_) => {}
            }
        }
        self.store_and_read();
        let Some(cluster) = &mut self.cluster else { return };
        let events = cluster.turn(self.poll.registry(), now);
        self.chat.set_cluster_down(!cluster.is_ready());
        for dm in failed {
            self.chat.remote_dm_failed(&dm, None, self.router.outbox());
        }
        self.on_cluster_events(events);
        self.route();
        if let Some(cluster) = &mut self.cluster {
            cluster.write_out(now);
        }
    }

    /// Replies settle what waits on them; pushes are what other nodes published.
    fn on_cluster_events(&mut self, events: Vec<(bool, Event<Tag>)>) {
        for (subscriber, event) in events {
            match event {
                // Up again: everything this node holds is claimed and subscribed to again
                // (both idempotent); the commands link first says this node is alive.
                Event::Ready => {
                    if !subscriber {
                        if let Some(cluster) = &mut self.cluster {
                            cluster.heartbeat(self.now, self.now_ms, true);
                            let _ = cluster.command(
                                &presence::reset(cluster.node()),
                                Tag::Quiet("reset members"),
                                self.now,
                            );
                        }
                        self.load_scripts();
                    }
                    let watching = self.chat.watching();
                    if let Some(cluster) = &mut self.cluster {
                        cluster.watch(watching, self.now);
                    }
                }
                Event::Reply(Tag::Claim(name), Reply::Integer(0)) => {
                    log::info!("redis: the name {name} is held on another node: its user here is renamed");
                    self.chat.name_lost(&name, self.router.outbox());
                }
                Event::Reply(Tag::Claim(name), reply) => {
                    if let Some(error) = error_text(&reply) {
                        log::warn!("redis: claiming the name {name} failed: {error}");
                    }
                }
                Event::Lost(Tag::Claim(_)) => {} // claimed again when the link is back
                Event::Reply(Tag::Who { conn, room }, reply) => {
                    let names = presence::names(&reply);
                    self.chat.answer_who(conn, &room, names, self.router.outbox());
                }
                Event::Lost(Tag::Who { conn, room }) => self.chat.answer_who(conn, &room, None, self.router.outbox()),
                Event::Reply(Tag::Rooms { conn }, reply) => {
                    let counts = presence::room_counts(&reply);
                    self.chat.answer_rooms(conn, counts, self.router.outbox());
                }
                Event::Lost(Tag::Rooms { conn }) => self.chat.answer_rooms(conn, None, self.router.outbox()),
                Event::Down { .. } => {
                    self.release_acks();
                    if subscriber {
                        self.subscribed(None); // nothing will be confirmed on this connection
                    }
                }
                Event::Reply(Tag::Store(message), reply) => self.on_stored(message, Some(reply)),
                Event::Lost(Tag::Store(message)) => self.on_stored(message, None),
                Event::Reply(Tag::StoreBatch(batch), reply) => self.on_stored_batch(batch, Some(reply)),
                Event::Lost(Tag::StoreBatch(batch)) => self.on_stored_batch(batch, None),
                Event::Reply(Tag::Read(read), reply) => self.on_read(read, Some(reply)),
                Event::Lost(Tag::Read(read)) => self.on_read(read, None),
                Event::Reply(Tag::Fetch(fetch), reply) => self.on_fetched(fetch, Some(reply)),
                Event::Lost(Tag::Fetch(fetch)) => self.on_fetched(fetch, None),
                Event::Push(reply) => self.on_published(&reply),
                Event::Reply(Tag::Dm(dm), Reply::Integer(heard)) if heard > 0 => {
                    self.chat.remote_dm_sent(&dm, self.router.outbox())
                }
                Event::Reply(Tag::Dm(dm), Reply::Integer(_)) => {
                    self.chat.remote_dm_failed(&dm, Some(false), self.router.outbox())
                }
                Event::Reply(Tag::Dm(dm), _) | Event::Lost(Tag::Dm(dm)) => {
                    self.chat.remote_dm_failed(&dm, None, self.router.outbox())
                }
                Event::Reply(Tag::Relay { messages }, reply) if error_text(&reply).is_some() => {
                    log::warn!("redis: a publish failed: {}", error_text(&reply).unwrap_or_default());
                    self.unrelayed(messages);
                }
                Event::Lost(Tag::Relay { messages }) => self.unrelayed(messages),
                Event::Reply(Tag::Quiet(what), reply) => {
                    if let Some(error) = error_text(&reply) {
                        log::warn!("redis: {what} failed: {error}");
                    }
                }
                Event::Reply(Tag::Relay { .. }, _) | Event::Lost(Tag::Quiet(_)) => {}
            }
        }
    }

    fn unrelayed(&mut self, messages: u64) {
        if let Some(cluster) = &mut self.cluster {
            cluster.count_unrelayed(messages);
        }
    }

    /// A message on a channel this node subscribed to: frames for a room's local
    /// members, or a direct message for a local user. Its own room publishes come back
    /// too, and are skipped: its members had them when they were routed.
    fn on_published(&mut self, reply: &Reply) {
        if let Some(room) = confirmed(reply).and_then(|channel| channel.strip_prefix(b"pollcast:room:")) {
            return self.subscribed(Some(&String::from_utf8_lossy(room)));
        }
        let Some((channel, payload)) = published(reply) else { return }; // another confirmation
        if self.on_stored_published(&String::from_utf8_lossy(channel), payload) {
            return; // cluster history: a stored message, `ID|ENVELOPE`
        }
        let Some(cluster) = &self.cluster else { return };
        let envelope = match envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(why) => return log::warn!("redis: dropped a published message: {why}"),
        };
        let channel = String::from_utf8_lossy(channel);
        match envelope {
            Envelope::Stored { .. } | Envelope::StoredBatch { .. } | Envelope::File(_) => {} // never without an id in front: handled above
            Envelope::Room { node, .. } if node == cluster.node() => {}
            Envelope::Room { messages, raw, json, .. } => {
                let Some(room) = channel.strip_prefix("pollcast:room:").and_then(|room| self.chat.local_room(room))
                else {
                    return; // its last member left since: the unsubscribe is on its way
                };
                if let Some(cluster) = &mut self.cluster {
                    cluster.figures.received += 1;
                }
                let frames = (raw, json, u64::from(messages));
                let (clients, chat, history, stats) =
                    (&mut self.clients, &mut self.chat, &mut self.history, &mut self.stats);
                self.router.deliver_remote(room, frames, clients, chat, history, stats, self.now);
            }
            Envelope::Dm { id, ts, from, to, text, .. } => {
                self.chat.deliver_dm(id, ts, from, to, text, self.router.outbox());
            }
        }
    }
}

/// The turn's room outputs to publish, as runs: consecutive outputs of one room go in
/// one publish (their frames one after the other, so the other nodes push the same
/// bytes in the same order), up to `max_bytes` of frames (an output larger than that
/// alone). A JSON sender's burst is one output per message (its own copy comes between
/// them), so this is what makes it one publish per turn, as a raw sender's already was.
fn runs(relayed: &[Relayed], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
    for (i, output) in relayed.iter().enumerate() {
        let bytes = output.raw.len() + output.json.len();
        match runs.last_mut() {
            Some((run, total)) if relayed[run.start].room == output.room && *total + bytes <= max_bytes => {
                run.end = i + 1;
                *total += bytes;
            }
            _ => runs.push((i..i + 1, bytes)),
        }
    }
    runs.into_iter().map(|(run, _)| run).collect()
}

/// `subscribe CHANNEL COUNT`: Redis confirms a subscription, from which on every
/// message published on CHANNEL comes to this node.
fn confirmed(reply: &Reply) -> Option<&[u8]> {
    let Reply::Array(parts) = reply else { return None };
    match parts.as_slice() {
        [Reply::BulkString(kind), Reply::BulkString(channel), Reply::Integer(_)] if kind == b"subscribe" => {
            Some(channel)
        }
        _ => None,
    }
}

/// Pushes on the subscriptions link: `message CHANNEL PAYLOAD` (what was published),
/// or a subscribe/unsubscribe confirmation (`None`).
pub fn published(reply: &Reply) -> Option<(&[u8], &[u8])> {
    let Reply::Array(parts) = reply else { return None };
    match parts.as_slice() {
        [Reply::BulkString(kind), Reply::BulkString(channel), Reply::BulkString(payload)] if kind == b"message" => {
            Some((channel, payload))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    fn output(room: &str, bytes: usize) -> Relayed {
        Relayed { room: room.to_owned(), messages: 1, raw: Rc::new(vec![0; bytes]), json: Rc::new(Vec::new()) }
    }

    #[test]
    fn consecutive_outputs_of_a_room_are_one_publish_up_to_the_cap() {
        let relayed = [output("tea", 2), output("tea", 2), output("cake", 2), output("tea", 2), output("tea", 2)];
        assert_eq!(runs(&relayed, 100), [0..2, 2..3, 3..5], "order kept: only neighbours join");
        assert_eq!(runs(&relayed, 4), [0..2, 2..3, 3..5]);
        assert_eq!(runs(&relayed, 3), [0..1, 1..2, 2..3, 3..4, 4..5], "over the cap: alone");
        assert!(runs(&[], 100).is_empty());
    }
}
