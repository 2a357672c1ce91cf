//! The message log: the bytes of stored messages, appended to numbered files beside the
//! database, written once. It is the truth; SQLite is its index (`sqlite.rs`).
//!
//! Owns: the files of the `<db>-log/` directory, where each commit's messages go (one
//! vectored write per commit, straight from the records: no copy in user space), the
//! *frame* that wraps one room's messages of one commit (`frame_head`, `frames`),
//! reading bytes back, and reclaiming files. Must not touch: SQLite, sockets, the clock.
//!
//! Why it exists: a message kept in a SQLite blob was copied four times on the loop's
//! thread (into the blob, into pages, into the WAL with a checksum, and again by the
//! checkpoint, which also fsynced tens of MiB and stalled the loop). Here its bytes reach
//! the page cache once, and SQLite keeps only where they are, updated every few turns.
//!
//! Durability: the same as SQLite's `synchronous = NORMAL` that the index uses. A write
//! is in the page cache when `append` returns, so `kill -9` loses nothing once the
//! commit is done: a start scans the frames past the index's mark and indexes them. A
//! frame's head carries its file's number and a CRC, so the scan stops at the end of
//! what was written, at a torn write, or at an older frame in a spare file written over.
//! Power loss may lose the last seconds: bytes that never reached the disk read back as
//! zeros, which the reader (`sqlite.rs`) detects by their ids and skips.
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
    torn: bool,                   // a write failed part way: the next append starts a new file
}

impl MessageLog {
    /// Opens (creating) the directory. `live` is what the index references, by file;
    /// files it does not reference are deleted now, except those numbered from
    /// `unindexed_from` on, which may hold frames the index has not caught up with
    /// (`frames` finds them). Appends go to a new file, so bytes a crash left after the
    /// last commit are never followed by live ones.
    pub fn open(dir: &Path, file_size: u64, live: BTreeMap<u64, u64>, unindexed_from: u64) -> io::Result<MessageLog> {
        fs::create_dir_all(dir)?;
        let mut sizes = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(no) = file_number(&entry.file_name().to_string_lossy()) else { continue };
            match live.contains_key(&no) || no >= unindexed_from {
                true => {
                    sizes.insert(no, entry.metadata()?.len());
                }
                false => fs::remove_file(entry.path())?,
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
            torn: false,
        })
    }

    /// The number of the file the next `append` goes to, starting a new file first if the
    /// current one is full, or a write to it failed part way (a start's scan of a file
    /// stops at the torn frame, so nothing may follow it). A frame's head names its file,
    /// so it is asked before writing.
    pub fn next_file(&mut self) -> io::Result<u64> {
        if self.torn || self.sizes[&self.current_no] >= self.file_size {
            self.rotate()?;
            self.torn = false;
        }
        Ok(self.current_no)
    }

    /// Appends `parts` back to back (one vectored write, repeated on a short write) to
    /// the current file (see `next_file`) and returns where the first byte went. The
    /// bytes count as dead until `add_live`.
    pub fn append(&mut self, parts: &[IoSlice]) -> io::Result<Place> {
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
                Ok(0) => Err(io::Error::new(io::ErrorKind::WriteZero, "history log: write returned 0")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => result,
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.note_written(written);
                    self.torn = written > 0;
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

    /// Reads `len` bytes at `place`; past the end of what the file holds is
    /// `UnexpectedEof`, checked before anything is allocated.
    pub fn read(&mut self, place: Place, len: usize) -> io::Result<Vec<u8>> {
        let size = self.sizes.get(&place.file).copied();
        if size.is_some_and(|size| place.offset.saturating_add(len as u64) > size) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "history log: past the end of the file"));
        }
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

    /// The whole of file `file`, for `frames` (at start, never on a busy loop).
    pub fn read_file(&self, file: u64) -> io::Result<Vec<u8>> {
        fs::read(path_of(&self.dir, file))
    }

    /// The files numbered `from` on, but the current one: those `frames` may find
    /// unindexed commits in.
    pub fn files_from(&self, from: u64) -> Vec<u64> {
        self.sizes.range(from..).map(|(no, _)| *no).filter(|no| *no != self.current_no).collect()
    }

    /// Where the next append goes, as the index's mark: everything before it is indexed
    /// once the index has caught up.
    pub fn end(&self) -> Place {
        Place { file: self.current_no, offset: self.sizes[&self.current_no] }
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

/// What a frame's records are to the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Messages of one room committed in one turn: the truth the index is rebuilt from.
    New = 1,
    /// Records compaction copied: the index points at them once its move is committed,
    /// and a scan steps over them.
    Moved = 2,
}

/// A frame `frames` found: the head's fields, and where its records are.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub room: String,
    pub count: u32,     // records in it
    pub records: Place, // where they start (just after the head)
    pub length: u64,    // how many bytes they take
}

/// A frame head's first bytes.
const MAGIC: &[u8; 4] = b"pcF1";

/// Appends a frame head to `out`: `MAGIC`, kind u8, the number of the file it is written
/// to u64, record count u32, records' length u64, room (u16 length + bytes), then a
/// CRC-32 of all that; little-endian. The records follow it. The file number tells a
/// frame from an older one left in a spare file that is written over; the CRC tells a
/// head from bytes that never reached the disk.
pub fn frame_head(kind: FrameKind, file: u64, room: &str, count: u32, length: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&file.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    let room = &room.as_bytes()[..room.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(room.len() as u16).to_le_bytes());
    out.extend_from_slice(room);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The frames in `data`, the bytes of file `file`, from `offset` on, in order, up to the
/// first that is not a whole, valid frame of this file (the end of what was written).
pub fn frames(data: &[u8], file: u64, offset: usize) -> Vec<Frame> {
    let mut found = Vec::new();
    let mut at = offset;
    while let Some((frame, next)) = frame_at(data, file, at) {
        found.push(frame);
        at = next;
    }
    found
}

/// The frame whose head starts at `at`, and where the next one would start.
fn frame_at(data: &[u8], file: u64, at: usize) -> Option<(Frame, usize)> {
    const FIXED: usize = 4 + 1 + 8 + 4 + 8 + 2; // the head up to the room's bytes
    let head = data.get(at..at.checked_add(FIXED)?)?;
    let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
    let room_len = usize::from(u16::from_le_bytes([head[FIXED - 2], head[FIXED - 1]]));
    let end = at + FIXED + room_len;
    let crc = data.get(end..end + 4)?;
    let kind = match head[4] {
        1 => FrameKind::New,
        2 => FrameKind::Moved,
        _ => return None,
    };
    let valid = &head[..4] == MAGIC
        && u64_at(5) == file
        && crc32(&data[at..end]).to_le_bytes() == crc
        && std::str::from_utf8(&data[at + FIXED..end]).is_ok();
    let count = u32::from_le_bytes(head[13..17].try_into().expect("4 bytes"));
    let length = u64_at(17);
    let next = (end as u64 + 4).checked_add(length)?;
    if !valid || next > data.len() as u64 {
        return None;
    }
    let room = String::from_utf8_lossy(&data[at + FIXED..end]).into_owned();
    let records = Place { file, offset: end as u64 + 4 };
    Some((Frame { kind, room, count, records, length }, next as usize))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
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
