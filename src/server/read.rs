//! Reading (dispatch and carry-over phases of `run()`): bytes from a socket, through TLS
//! when there is one, into the client's `Session`; complete messages to the chat (or
//! back, in echo mode); then the outbox is routed. Part of `impl Server`: the loop's
//! state is in `mod.rs`; the request head and the upgrade are `upgrade.rs`.

use std::io::Read;

use super::tls::ReadStop;
use super::Server;
use crate::config::Mode;
use crate::proto::message::Message;
use crate::proto::session::{Event, Phase};
use crate::sys::nb::retrying;

impl Server {
    /// Reads from one client until WouldBlock or its per-turn budget is spent, then
    /// routes what the input produced.
    pub(super) fn read_client(&mut self, key: usize) {
        if self.clients.get(key).is_some_and(|client| client.tls.is_some()) {
            return self.read_tls_client(key);
        }
        let mut budget = self.config.read_budget;
        let mut scratch = std::mem::take(&mut self.scratch);
        // The slot may be vacant: a stale event for a client reaped in an earlier turn.
        while let Some(client) = self.clients.get_mut(key) {
            let read = match retrying(|| client.stream.read(&mut scratch)) {
                Ok(Some(0)) => {
                    self.on_eof(key);
                    break;
                }
                Ok(Some(n)) => n,
                Ok(None) => break, // drained: edge-triggered, the next data brings a new event
                Err(e) => {
                    log::debug!("conn {key}: read error: {e}");
                    self.mark_gone(key);
                    break;
                }
            };
            self.stats.bytes_in += read as u64;
            client.traffic.bytes_in += read as u64;
            log::trace!("conn {key}: read {read} bytes");
            self.take_input(key, &mut scratch[..read]);
            budget = budget.saturating_sub(read);
            if budget == 0 {
                // Fairness: let the other clients have this turn; come back next turn.
                self.unfinished.push(key);
                break;
            }
        }
        self.scratch = scratch;
    }

    /// A TLS client: ciphertext until WouldBlock or the budget, decrypted into the shared
    /// plaintext buffer, which then goes the way a plain client's bytes go. A read can
    /// also make TLS records to send (the handshake): the client is flushed this turn.
    pub(super) fn read_tls_client(&mut self, key: usize) {
        let (mut scratch, mut plaintext) = (std::mem::take(&mut self.scratch), std::mem::take(&mut self.plaintext));
        let client = &mut self.clients[key];
        let Some(tls) = client.tls.as_mut() else { return };
        let result = tls.read_from(&mut client.stream, &mut scratch, &mut plaintext, self.config.read_budget);
        if client.tls_wants_write() {
            self.router.mark_dirty(&mut self.clients, key);
        }
        match result {
            Ok(outcome) => {
                self.stats.bytes_in += outcome.ciphertext as u64;
                self.clients[key].traffic.bytes_in += outcome.ciphertext as u64;
                log::trace!("conn {key}: read {} bytes of TLS, {} of plaintext", outcome.ciphertext, outcome.plaintext);
                if !plaintext.is_empty() {
                    self.take_input(key, &mut plaintext);
                }
                match outcome.stop {
                    ReadStop::Budget => self.unfinished.push(key),
                    ReadStop::CloseNotify | ReadStop::Eof => self.on_eof(key),
                    ReadStop::WouldBlock => {} // edge-triggered: the next data brings a new event
                }
            }
            Err(e) => {
                // Any alert rustls queued goes out in this turn's flush, before the reap.
                log::debug!("conn {key}: TLS: {e}");
                self.mark_gone(key);
            }
        }
        plaintext.clear();
        (self.scratch, self.plaintext) = (scratch, plaintext);
    }

    /// Phase 4: clients that still had input when their budget ran out last turn. (Those
    /// cut short in this turn's dispatch wait for the next turn: that is the fairness.)
    pub(super) fn read_carry_overs(&mut self) {
        let carried = std::mem::take(&mut self.carried);
        if !carried.is_empty() {
            log::trace!("carry-overs: {} client(s) read again", carried.len());
        }
        for key in carried {
            self.read_client(key);
        }
    }

    /// The peer closed its side.
    pub(super) fn on_eof(&mut self, key: usize) {
        let client = &self.clients[key];
        if client.session.is_open() {
            // RFC 6455 §7.1.5: no Close frame seen, so the close code is 1006 (abnormal).
            log::debug!("conn {key}: {} closed the TCP connection without a Close frame (1006)", client.peer);
        }
        self.mark_gone(key);
    }

    /// Feeds freshly read bytes to the client's session, together with any partial head
    /// or frame left from before; keeps whatever is still incomplete; then routes the
    /// outbox (one read's messages to one room become one shared chunk).
    pub(super) fn take_input(&mut self, key: usize, fresh: &mut [u8]) {
        let mut inbox = std::mem::take(&mut self.clients[key].inbox);
        let consumed = if inbox.is_empty() {
            let used = self.consume(key, fresh);
            inbox.extend_from_slice(&fresh[used..]);
            used
        } else {
            inbox.extend_from_slice(fresh);
            let used = self.consume(key, &mut inbox);
            inbox.drain(..used);
            used
        };
        log::trace!("conn {key}: consumed {consumed} bytes, {} kept for later", inbox.len());
        if inbox.is_empty() {
            inbox = Vec::new(); // an idle client holds no read buffer
        }
        if let Some(client) = self.clients.get_mut(key) {
            client.inbox = inbox;
            self.next_sweep = self.next_sweep.min(client.session.poll_timeout());
        }
        self.route();
    }

    /// Runs the session over `input` until it needs more bytes. Returns bytes consumed.
    pub(super) fn consume(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut used = 0;
        let mut frames = 0;
        while used < input.len() {
            let client = &mut self.clients[key];
            match client.session.phase() {
                Phase::Connecting { .. } if client.admin => match self.on_admin_request(key, &input[used..]) {
                    Some(request) => used += request,
                    None => break,
                },
                Phase::Connecting { .. } => match self.on_request_head(key, &input[used..]) {
                    Some(head) => used += head,
                    None => break,
                },
                Phase::Open | Phase::Closing { .. } => {
                    let Some((event, n)) = client.session.next(&mut input[used..], self.now) else { break };
                    used += n;
                    frames += 1;
                    match event {
                        Event::Message(message) => self.on_message(key, &message),
                        // A pong, a Close or nothing: in order after the messages before it.
                        Event::Progress => client.session_output_to(key, self.router.outbox()),
                        Event::Closed => self.on_closed(key),
                    }
                }
                // CLOSED: we only wait for the peer's FIN; whatever else arrives is dropped.
                Phase::Closed { .. } => return input.len(),
            }
        }
        if frames > 0 {
            log::trace!("conn {key}: {frames} frame(s) decoded");
        }
        used
    }

    /// A complete message from `sender`: to the chat (relay mode) or straight back to
    /// its sender (echo mode). Its text is proven UTF-8 already (`proto::message`).
    pub(super) fn on_message(&mut self, sender: usize, message: &Message) {
        self.stats.messages_in += 1;
        self.clients[sender].traffic.messages_in += 1;
        let out = self.router.outbox();
        match (self.config.mode, message) {
            (Mode::Echo, message) => {
                let deflate = self.clients[sender].session.deflate();
                out.echo(sender, message.opcode(), message.as_bytes(), deflate);
            }
            (Mode::Relay, Message::Text(text)) => self.chat.text(sender, text, self.now_ms, out),
            (Mode::Relay, Message::Binary(data)) => self.chat.binary(sender, data, self.now_ms, out),
        }
    }

    /// The session left OPEN on its own (the peer closed, or broke a rule).
    pub(super) fn on_closed(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if let Some(violation) = client.session.violation() {
            self.stats.protocol_errors += 1;
            log::debug!("conn {key}: {} broke the protocol: {violation}", client.peer);
        }
        client.session_output_to(key, self.router.outbox());
        self.part(key);
    }
}
