//! What the process asks of the operating system besides sockets, shared by the server
//! and the bench: the open-file limit, and (`nb`) the one seam where `WouldBlock` and
//! `Interrupted` become values.
//!
//! Owns: process-wide settings made once at start. Must not touch: sockets, the loop.

pub mod nb;

/// Raises the open-file soft limit to the hard limit, so `--max-connections` is not cut
/// short by a default of 1024. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Starts writing a file's dirty pages to disk and returns at once (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: no wait for the write, no fsync). A later
/// fsync of the file then has little left to wait for. Errors are the caller's to ignore.
pub fn start_writeback(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the call reads no memory of ours; the descriptor is open for `file`'s life.
    match unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
