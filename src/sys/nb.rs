//! The one seam where `WouldBlock` is turned into a value.
//!
//! Every non-blocking call in the shell goes through `no_block`, so the rest of the code
//! sees `Ok(Some(n))` (progress), `Ok(None)` (the kernel has nothing for us now; with
//! edge-triggered readiness the *next* event will tell us when it has) or a real error.

use std::io;

/// `WouldBlock` → `Ok(None)`; everything else passes through.
pub fn no_block<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `op` again while it fails with `Interrupted` (a signal arrived mid-call), then
/// passes the outcome through `no_block`.
pub fn retrying<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<Option<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return no_block(other),
        }
    }
}

/// Is this `accept` error the process or system running out of file descriptors?
pub fn out_of_fds(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
