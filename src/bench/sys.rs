//! What the bench asks of the operating system besides sockets: CPU time (its own via
//! `getrusage`, the server's via `/proc/PID/stat`), the server's memory
//! (`/proc/PID/status`), the ephemeral port range, and a cheap random source.
//!
//! Linux-only, like the rest of the bench's measurements.

use std::fs;
use std::time::Duration;

/// Ephemeral ports one source address can use, assumed when
/// `/proc/sys/net/ipv4/ip_local_port_range` cannot be read (Linux's default range).
const DEFAULT_PORT_RANGE: u32 = 60999 - 32768 + 1;
/// Ports of the range left unused per source address, for other programs.
const PORT_MARGIN: u32 = 1000;

/// This process's CPU time so far, user + system.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass; all-zero is a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Another process's CPU time so far (utime + stime of `/proc/PID/stat`), at the
/// kernel's tick resolution (usually 10 ms).
pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("process {pid}: {e}"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| format!("process {pid}: unreadable /proc/{pid}/stat"))?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_sec = if per_sec > 0 { per_sec as u64 } else { 100 };
    Ok(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_sec))
}

/// utime + stime in ticks: fields 14 and 15 of `/proc/PID/stat`, counted after the
/// command name, which is in parentheses and may itself hold spaces and parentheses.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards, so utime (14) is the 12th of these.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rss {
    pub rss_kib: u64,  // VmRSS: all resident pages
    pub anon_kib: u64, // RssAnon: the heap and stacks, what connections cost
}

/// Reads `VmRSS` and `RssAnon` of a process.
pub fn process_rss(pid: u32) -> Result<Rss, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("process {pid}: {e}"))?;
    parse_status_rss(&status).ok_or_else(|| format!("process {pid}: no VmRSS/RssAnon in /proc/{pid}/status"))
}

fn parse_status_rss(status: &str) -> Option<Rss> {
    let field = |name: &str| {
        status.lines().find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some(Rss { rss_kib: field("VmRSS:")?, anon_kib: field("RssAnon:")? })
}

/// How many connections to one destination one source address can hold: the size of
/// the ephemeral port range, less a margin.
pub fn ports_per_source() -> u32 {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(DEFAULT_PORT_RANGE);
    range.saturating_sub(PORT_MARGIN).max(1)
}

fn parse_port_range(text: &str) -> Option<u32> {
    let mut bounds = text.split_ascii_whitespace().map(|n| n.parse::<u32>());
    let (low, high) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

/// splitmix64: a tiny, fast generator for masking keys and handshake nonces. These
/// need to be unpredictable to an attacker only in browsers (RFC 6455 §10.3); for a
/// load generator, varied is enough.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> SplitMix {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        SplitMix(now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A masking key (RFC 6455 §5.3).
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    /// A handshake nonce (RFC 6455 §4.1: 16 bytes).
    pub fn nonce(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_tricky_command_name() {
        let stat = "4242 (my (odd) srv) S 1 4242 4242 0 -1 4194560 300 0 0 0 1234 567 0 0 20 0 1 0 99 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tpollcast\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nRssAnon:\t    1024 kB\n";
        assert_eq!(parse_status_rss(status), Some(Rss { rss_kib: 5120, anon_kib: 1024 }));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28232));
        assert_eq!(parse_port_range("10 5"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(process_rss(pid).unwrap().rss_kib > 0);
        process_cpu(pid).unwrap();
        assert!(process_cpu(u32::MAX).is_err());
        let _ = own_cpu();
    }
}
