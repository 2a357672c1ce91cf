//! The message log: the bytes of stored messages, appended to numbered files beside the
//! database, written once.
//!
//! Owns: the files of the `<db>-log/` directory, where each commit's messages go (one
//! vectored write per commit, straight from the records: no copy in user space), reading
//! a segment back, and reclaiming files. Must not touch: SQLite, sockets, the clock.
//!
//! Why it exists: a message kept in a SQLite blob was copied four times on the loop's
//! thread (into the blob, into pages, into the WAL with a checksum, and again by the
//! checkpoint, which also fsynced tens of MiB and stalled the loop). Here its bytes reach
//! the page cache once; SQLite keeps only where they are (`sqlite.rs`, a small row per
//! room per turn), so its WAL and its checkpoints stay small.
//!
//! Durability: the same as SQLite's `synchronous = NORMAL` that the index uses. A write
//! is in the page cache when `append` returns, so `kill -9` loses nothing once the
//! commit is done; the index row is written after the bytes, so a crash between the two
//! leaves unreferenced bytes, never a row without its message. Power loss may lose the
//! last seconds: a segment whose bytes never reached the disk reads back as zeros, which
//! the reader (`sqlite.rs`) detects by its ids and skips.
//!
//! Space: a file is retired once no index row points into it (deleted, or kept as the
//! spare the next file is written over). A room that keeps old
//! messages pins the file they are in, so when dead bytes outweigh live ones (and one
//! file), `compaction_source` names the oldest file, whose live segments the store copies
//! to the newest file, a bounded amount per commit, until it is free. The directory thus
//! holds at most about twice the live messages plus two files.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Default size at which the log starts a new file (`--history-log-file-size`).
pub const DEFAULT_FILE_SIZE: u64 = 64 << 20;

/// Where a segment's bytes are: file number and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: u64,
    pub offset: u64,
}

/// The log directory and the accounting of what in it is still referenced.
pub struct MessageLog {
    dir: PathBuf,
    file_size: u64,               // a new file is started once the current one reaches this
    current: File,                // the file appends go to (opened for append)
    current_no: u64,              // its number
    sizes: BTreeMap<u64, u64>,    // every file's length, by number
    live: BTreeMap<u64, u64>,     // bytes still referenced by the index, by file number
    readers: BTreeMap<u64, File>, // files opened for reading, kept open until deleted
    spares: Vec<u64>,             // dead files kept to be written over (`SPARES`), by number
}

impl MessageLog {
    /// Opens (creating) the directory. `live` is what the index references, by file;
    /// files it does not reference are deleted now. Appends go to a new file, so bytes a
    /// crash left after the last commit are never followed by live ones.
    pub fn open(dir: &Path, file_size: u64, live: BTreeMap<u64, u64>) -> io::Result<MessageLog> {
        fs::create_dir_all(dir)?;
        let mut sizes = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(no) = file_number(&entry.file_name().to_string_lossy()) else { continue };
            match live.get(&no) {
                Some(_) => {
                    sizes.insert(no, entry.metadata()?.len());
                }
                None => fs::remove_file(entry.path())?,
            }
        }
        let current_no = sizes.keys().chain(live.keys()).max().map_or(1, |no| no + 1);
        let current = create(dir, current_no)?;
        sizes.insert(current_no, 0);
        let live = live.into_iter().filter(|(_, bytes)| *bytes > 0).collect();
        Ok(MessageLog {
            dir: dir.to_owned(),
            file_size: file_size.max(1),
            current,
            current_no,
            sizes,
            live,
            readers: BTreeMap::new(),
            spares: Vec::new(),
        })
    }

    /// Appends `parts` back to back (one vectored write, repeated on a short write) and
    /// returns where the first byte went. The bytes count as dead until `add_live`.
    pub fn append(&mut self, parts: &[IoSlice]) -> io::Result<Place> {
        if self.sizes[&self.current_no] >= self.file_size {
            self.rotate()?;
        }
        let offset = self.sizes[&self.current_no];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0;
        let mut start = 0; // first part not yet fully written
        let mut skip = 0; // bytes of it already written
        while written < total {
            let mut batch: Vec<IoSlice> = Vec::with_capacity(IOV_MAX.min(parts.len() - start));
            batch.push(IoSlice::new(&parts[start][skip..]));
            batch.extend(parts[start + 1..].iter().take(IOV_MAX - 1).copied());
            let n = match self.current.write_vectored(&batch) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "history log: write returned 0")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.note_written(written);
                    return Err(e);
                }
            };
            written += n;
            let mut n = n + skip;
            while start < parts.len() && n >= parts[start].len() {
                n -= parts[start].len();
                start += 1;
            }
            skip = n;
        }
        self.note_written(total);
        Ok(Place { file: self.current_no, offset })
    }

    fn note_written(&mut self, n: usize) {
        *self.sizes.get_mut(&self.current_no).expect("the current file is sized") += n as u64;
    }

    /// Starts the next file: a spare renamed, written over from its start, or a new one.
    fn rotate(&mut self) -> io::Result<()> {
        let no = self.current_no + 1;
        self.current = match self.spares.pop() {
            Some(spare) => {
                fs::rename(path_of(&self.dir, spare), path_of(&self.dir, no))?;
                OpenOptions::new().write(true).open(path_of(&self.dir, no))?
            }
            None => create(&self.dir, no)?,
        };
        self.current_no = no;
        self.sizes.insert(no, 0);
        Ok(())
    }

    /// Reads `len` bytes at `place`.
    pub fn read(&mut self, place: Place, len: usize) -> io::Result<Vec<u8>> {
        let reader = match self.readers.entry(place.file) {
            std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(File::open(path_of(&self.dir, place.file))?)
            }
        };
        let mut bytes = vec![0; len];
        reader.read_exact_at(&mut bytes, place.offset)?;
        Ok(bytes)
    }

    /// `bytes` of file `file` are now referenced by the index.
    pub fn add_live(&mut self, file: u64, bytes: u64) {
        *self.live.entry(file).or_default() += bytes;
    }

    /// `bytes` of file `file` are no longer referenced (retention deleted their rows,
    /// or compaction moved them).
    pub fn remove_live(&mut self, file: u64, bytes: u64) {
        if let Some(live) = self.live.get_mut(&file) {
            *live = live.saturating_sub(bytes);
            if *live == 0 {
                self.live.remove(&file);
            }
        }
    }

    /// Retires every file but the current one that nothing references any more: up to
    /// `SPARES` are kept to be written over by the next files, the others are deleted.
    /// Returns how many were retired. Call after the index change that freed them is
    /// committed.
    pub fn collect(&mut self) -> io::Result<usize> {
        let dead: Vec<u64> =
            self.sizes.keys().copied().filter(|no| *no != self.current_no && !self.live.contains_key(no)).collect();
        for no in &dead {
            self.readers.remove(no);
            self.sizes.remove(no);
            if self.spares.len() < SPARES {
                self.spares.push(*no);
                continue;
            }
            match fs::remove_file(path_of(&self.dir, *no)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(dead.len())
    }

    /// The oldest file whose live segments should move to the newest file: when the
    /// dead bytes in the directory outweigh both the live ones and one file. `None` when
    /// the space is in proportion.
    pub fn compaction_source(&self) -> Option<u64> {
        let (disk, live) = (self.disk_bytes(), self.live_bytes());
        let dead = disk.saturating_sub(live);
        if dead <= live.max(self.file_size) {
            return None;
        }
        self.live.keys().copied().find(|no| *no != self.current_no)
    }

    /// Bytes in the log's files.
    pub fn disk_bytes(&self) -> u64 {
        self.sizes.values().sum()
    }

    /// Bytes the index references.
    pub fn live_bytes(&self) -> u64 {
        self.live.values().sum()
    }

    /// How many files the directory holds.
    pub fn files(&self) -> usize {
        self.sizes.len()
    }
}

/// Dead files kept to be written over rather than deleted. Deleting a 64 MiB file frees
/// its 16,384 cached pages and the next file allocates as many again: 2% of the loop's
/// time at 200 MB/s of messages, and a third of the cost of writing them. Written over,
/// a recently freed file's pages are found in the cache and reused. (Not counted in
/// `disk_bytes`: the directory holds up to this many files more.)
const SPARES: usize = 1;

/// Most buffers one `writev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// `00000042.log` for file 42.
fn path_of(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:08}.log"))
}

/// The number in a log file's name, `None` for any other name.
fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// A new file, written from its start (not in append mode, so a spare file written over
/// works the same way).
fn create(dir: &Path, no: u64) -> io::Result<File> {
    OpenOptions::new().create(true).truncate(true).write(true).open(path_of(dir, no))
}

#[cfg(test)]
mod tests;
