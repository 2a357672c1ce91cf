//! What happens by the clock or the operating system: the timer phase of `run()`
//! (handshake, ping, idle and close deadlines; token expiry) and signals (SIGHUP reloads
//! the TLS pair; SIGINT/SIGTERM shut down gracefully). Part of `impl Server`: the loop's
//! state is in `mod.rs`.

use super::Server;
use super::{QUIET_WAKE, TIMER_RESOLUTION};
use crate::proto::close::CloseCode;
use crate::proto::session::Phase;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

impl Server {
    /// Phase 6: every session acts on its passed deadlines; the next sweep is set to the
    /// nearest deadline left, no sooner than the timer resolution.
    pub(super) fn sweep_timers(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        log::trace!("timers: sweeping {} client(s)", self.clients.len());
        let now = self.now;
        let mut nearest = now + QUIET_WAKE;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            let was_open = client.session.is_open();
            client.session.handle_timeout(now);
            if was_open && !client.session.is_open() {
                self.stats.idle_timeouts += 1;
            }
            if client.expired(now) {
                log::debug!("conn {key}: linger time over, dropping");
                self.mark_gone(key);
                continue;
            }
            nearest = nearest.min(client.session.poll_timeout());
            client.session_output_to(key, self.router.outbox());
            self.part_unless_open(key);
        }
        self.expire_tokens();
        self.next_sweep = nearest.max(now + TIMER_RESOLUTION);
        self.schedule_expiry();
    }

    /// Closes with 1008 every connection whose token expired and was not refreshed (the
    /// chat has told each `token_expired`).
    pub(super) fn expire_tokens(&mut self) {
        for key in self.chat.expire(self.now_ms / 1000, self.router.outbox()) {
            let Some(client) = self.clients.get_mut(key) else { continue };
            log::info!("conn {key}: {} token expired, closing 1008", client.addr);
            client.session.close(CloseCode::POLICY, "token expired", self.now);
            client.session_output_to(key, self.router.outbox());
            self.part(key);
        }
    }

    /// SIGHUP reloads the TLS pair; SIGINT/SIGTERM shut down.
    pub(super) fn on_signals(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.contains(&SIGHUP) {
            self.reload();
        }
        if signals.iter().any(|&signal| signal == SIGINT || signal == SIGTERM) {
            self.shut_down(&signals);
        }
    }

    /// SIGHUP: new TLS handshakes use the certificate pair as it is on disk now; open
    /// connections keep theirs. A pair that fails to load is logged, and the old one
    /// stays in service.
    pub(super) fn reload(&mut self) {
        match &mut self.certs {
            None => log::info!("SIGHUP: nothing to reload (no --tls-cert)"),
            Some(certs) => match certs.reload() {
                Ok(()) => log::info!("SIGHUP: TLS certificate reloaded; new connections use it"),
                Err(e) => log::error!("SIGHUP: TLS certificate not reloaded, the old one stays in service: {e}"),
            },
        }
    }

    /// SIGINT/SIGTERM: stop accepting, close every open client with 1001, and give the
    /// closes `--shutdown-timeout` to go out.
    pub(super) fn shut_down(&mut self, signals: &[i32]) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        log::info!("signal {signals:?}: shutting down, closing {} client(s)", self.clients.len());
        self.listener.close(self.poll.registry());
        if let Some(admin) = &mut self.admin {
            admin.close(self.poll.registry());
        }
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout);
        let now = self.now;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        // Every Close is queued before anyone parts, so every queue is sealed before the
        // presence of the departures is routed: clients see the 1001 Close and nothing
        // about the others leaving (they all are).
        for &key in &keys {
            let client = &mut self.clients[key];
            match client.session.phase() {
                Phase::Open => client.session.close(CloseCode::GOING_AWAY, "server shutting down", now),
                Phase::Connecting { .. } => self.gone.push(key),
                Phase::Closing { .. } | Phase::Closed { .. } => {}
            }
            self.clients[key].session_output_to(key, self.router.outbox());
        }
        for key in keys {
            self.part(key);
        }
    }
}
