//! A precise wake-up for the poll loop: a Linux `timerfd` registered with the `Poll`.
//!
//! `epoll_wait` takes its timeout in whole milliseconds (mio rounds up), so a paced
//! sender woken by the poll timeout alone would send each message up to a millisecond
//! late, and that lateness would show up as latency of the server. The timerfd fires
//! at the nanosecond asked for (give or take the kernel's timer slack, ~50 µs) and is
//! just one more readable descriptor on the same loop: no thread, no signal.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::sys::nb::retrying;

/// A one-shot timer that makes its descriptor readable when it expires.
pub struct Timer {
    fd: File, // the timerfd, non-blocking; a `File` only so `read` returns an `io::Result`
}

impl Timer {
    /// A disarmed timer on the monotonic clock (the clock `Instant` uses).
    pub fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new
        // descriptor that we own from here on.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Timer { fd: File::from(unsafe { OwnedFd::from_raw_fd(fd) }) })
    }

    /// Fires once, `after` from now (replacing any earlier arming). A zero duration
    /// would disarm a timerfd, so it is raised to one nanosecond.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long, // < 1e9, fits
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let rc = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes the expiry so the descriptor stops being readable.
    pub fn clear(&self) {
        // timerfd(2): a read takes the expiry count, a u64.
        let mut expirations = [0u8; 8];
        // `Ok(None)` is WouldBlock: not expired (a spurious event), nothing to consume;
        // the next `arm` resets the count anyway. Any other failure leaves nothing to do.
        let _ = retrying(|| (&self.fd).read(&mut expirations));
    }
}

impl Source for Timer {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}
