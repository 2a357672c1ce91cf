//! The report of `bench fanout`: every figure, echoed parameters, and its human form.
//!
//! Owns: turning the run's counters into rates, loss and CPU cost per delivery. Must
//! not touch: the pool or the clock; everything it needs was measured before.

use serde::Serialize;

use super::members::{Fanout, Loss};
use super::senders::Senders;
use super::{FanoutArgs, Interval, Rate};
use crate::bench::report::{self, CpuCost, Latency, OpCost, Summary, Tail};
use crate::bench::stamp::Encoding;
use crate::bench::Bench;

/// The parameters, echoed in the report.
#[derive(Clone, Debug, Serialize)]
struct Params {
    receivers: u32,          // --receivers
    senders: u32,            // --senders
    size: usize,             // --size, bytes
    encoding: Encoding,      // --encoding
    rate: serde_json::Value, // "max" or messages per second
    window: Option<u32>,     // closed loop only
    duration_s: f64,         // --duration
    warmup_s: f64,           // --warmup
    drain_s: f64,            // --drain
    sources: usize,          // source addresses used
    deflate: bool,           // --deflate: permessage-deflate offered
    busy_poll: bool,         // --busy-poll: the bench never slept
}

/// Everything `fanout` measured.
#[derive(Debug, Serialize)]
pub(super) struct FanoutReport {
    scenario: &'static str,       // "fanout"
    url: String,                  // --url
    params: Params,               // the flags, echoed
    connections: u32,             // R + S
    deliveries_per_message: u32,  // R + S − 1: every other member
    measured_s: f64,              // the measured interval
    sent: u64,                    // messages sent, whole run
    deliveries: u64,              // stamped frames received, whole run
    sends_per_sec: f64,           // in the measured interval
    deliveries_per_sec: f64,      // in the measured interval
    latency_us: Latency,          // of messages sent in the measured interval
    send_lag_us: Option<Latency>, // open loop: how late the bench sent (included in latency)
    lost: u64,                    // Σ over members of (expected − distinct received)
    lost_max_per_member: u64,     // the worst member's shortfall
    members_with_loss: u32,       // members that missed anything
    duplicated: u64,              // a (member, sender, seq) seen again
    out_of_order: u64,            // arrived after a higher seq of the same sender
    foreign: u64,                 // data frames without a bench stamp
    drained: bool,                // everything sent arrived before --drain ran out
    members_lost: u32,            // connections that ended early
    deflate_connections: usize,   // connections whose server agreed to permessage-deflate
    wire_bytes_per_delivery: f64, // bytes read from sockets per delivery, measured interval (frame headers included)
    #[serde(flatten)]
    tail: Tail, // CPU per delivery, errors
}

impl FanoutReport {
    /// The report of a finished run.
    pub(super) fn new(
        args: &FanoutArgs,
        bench: &Bench,
        fanout: &Fanout,
        senders: &Senders,
        interval: Interval,
        drained: bool,
    ) -> FanoutReport {
        let members = args.receivers + args.senders; // ≤ 2 × MAX_CONNECTIONS, checked
        let loss = Loss::count(&fanout.tracks, &senders.sent);
        let cost = CpuCost::between(interval.start, interval.end, interval.measured, fanout.measured_deliveries);
        let secs = interval.measured.as_secs_f64().max(1e-9);
        FanoutReport {
            scenario: "fanout",
            url: bench.target.url.clone(),
            params: Params::new(args, bench.sources),
            connections: members,
            deliveries_per_message: members - 1,
            measured_s: report::round3(secs),
            sent: senders.sent.iter().sum(),
            deliveries: fanout.deliveries,
            sends_per_sec: report::round1(senders.measured_sends as f64 / secs),
            deliveries_per_sec: report::round1(fanout.measured_deliveries as f64 / secs),
            latency_us: Latency::of(&fanout.hist),
            send_lag_us: senders.pacer.is_some().then(|| Latency::of(&senders.lag)),
            lost: loss.total,
            lost_max_per_member: loss.max_per_member,
            members_with_loss: loss.members,
            duplicated: fanout.duplicated,
            out_of_order: fanout.out_of_order,
            foreign: fanout.foreign,
            drained,
            members_lost: fanout.members_lost,
            deflate_connections: bench.pool.deflate_count(),
            wire_bytes_per_delivery: report::round1(
                interval.bytes_read as f64 / fanout.measured_deliveries.max(1) as f64,
            ),
            tail: Tail {
                cpu: Some(OpCost { cost, op: "delivery", busy_poll: args.common.busy_poll }),
                errors: bench.pool.errors().clone(),
            },
        }
    }

    /// `sent, delivered, lost (where), duplicated, out of order`.
    fn delivery_line(&self) -> String {
        let lost_at = if self.lost > 0 {
            format!(" (at {} members, at most {} each)", self.members_with_loss, self.lost_max_per_member)
        } else {
            String::new()
        };
        format!(
            "delivery      {} sent, {} delivered, {} lost{lost_at}, {} duplicated, {} out of order{}",
            self.sent,
            self.deliveries,
            self.lost,
            self.duplicated,
            self.out_of_order,
            if self.drained { "" } else { " — not drained in time" }
        )
    }
}

impl FanoutReport {
    /// What became of `--deflate`, for the wire line.
    fn deflate_note(&self) -> String {
        match (self.params.deflate, self.deflate_connections) {
            (false, _) => String::new(),
            (true, 0) => ", permessage-deflate declined by the server".to_owned(),
            (true, n) => format!(", permessage-deflate on {n} of {} connections", self.connections),
        }
    }
}

impl Params {
    fn new(args: &FanoutArgs, sources: usize) -> Params {
        Params {
            receivers: args.receivers,
            senders: args.senders,
            size: args.size,
            encoding: args.encoding,
            rate: match args.rate {
                Rate::Max => serde_json::Value::from("max"),
                Rate::PerSec(n) => serde_json::Value::from(n),
            },
            window: (args.rate == Rate::Max).then_some(args.window),
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            drain_s: args.drain.as_secs_f64(),
            sources,
            deflate: args.common.deflate,
            busy_poll: args.common.busy_poll,
        }
    }
}

impl Summary for FanoutReport {
    fn lines(&self) -> Vec<String> {
        let p = &self.params;
        let rate = match &p.window {
            Some(w) => format!("max (window {w})"),
            None => format!("{}/s", p.rate),
        };
        let mut lines = vec![
            format!(
                "fanout        {} receivers + {} senders on {}, {} B {:?}, rate {rate}, {:.1}s measured",
                p.receivers, p.senders, self.url, p.size, p.encoding, self.measured_s
            ),
            format!(
                "throughput    {} deliveries/s, {} sends/s ({} deliveries per message)",
                report::si(self.deliveries_per_sec),
                report::si(self.sends_per_sec),
                self.deliveries_per_message
            ),
            format!("wire          {:.1} B read per delivery{}", self.wire_bytes_per_delivery, self.deflate_note()),
            format!("latency       {}", self.latency_us.human()),
        ];
        if let Some(lag) = &self.send_lag_us {
            lines.push(format!("send lag      {} (the bench's own lateness, included above)", lag.human()));
        }
        lines.push(self.delivery_line());
        lines
    }

    fn tail(&self) -> &Tail {
        &self.tail
    }
}
