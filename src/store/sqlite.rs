//! SQLite history: the index of the message log, WAL mode, one transaction per loop turn.
//!
//! Owns: the database connection, the schema and its migrations, the pending messages
//! of the current turn, their encoding, the message log (`log.rs`) as its byte store, and
//! retention. Must not touch: sockets, the clock.
//!
//! Messages are stored in *segments*: all the messages of one room committed in one
//! turn, encoded back to back. The bytes of every segment of a commit go to the message
//! log in one vectored write, straight from the records; then each segment gets one row
//! (room, first and last id, count, its ids as runs, where its bytes are) in one
//! transaction. A busy turn costs one small B-tree insert per room, and a message's bytes
//! are copied once, into the page cache. Reads walk a room's segments newest or oldest
//! first through the `(room, last_id)` index. Retention deletes whole segments and hides
//! the older part of the one its cut falls in (found from the row's id runs). Rows from
//! before the log (migration 3) keep their bytes in `data` and read as before.
//!
//! Measured with `commit_cost_probe` below (64-byte messages, --history-keep 1000): 537 ns
//! per message at 64 per commit, 263 ns at 256 (with the bytes in SQLite blobs it was
//! 1.2-1.6 µs and 0.6 µs; one row per message, 1.9 µs).
//!
//! Shared files (`file` uploads) are records like any other, in the same segments under the
//! same retention, with flag bit 4 and their name and type in front of their bytes. A side
//! table (`files`, migration 2) maps a file's id to its segment, so a `fetch` is one
//! indexed lookup instead of a scan. Rows written before files existed never have bit 4
//! set, and decode as before; an older pollcast reading a newer file sees a file as a
//! binary message (its name and type inside the body), not as corruption.
//!
//! The file is opened with an exclusive lock, so a second pollcast on the same file
//! fails at start with a clear message instead of two servers handing out the same ids.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::log::{MessageLog, Place, DEFAULT_FILE_SIZE};
use super::{Store, StoreError};
use crate::chat::record::{FileMeta, Page, Query, Record};

/// Schema migrations, in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: [&str; 3] = [
    // 1: segments of messages keyed by their first id, an index for per-room reads
    //    (newest or oldest first), and how far retention has trimmed each room.
    "CREATE TABLE segments (
         first_id INTEGER PRIMARY KEY,
         room     TEXT    NOT NULL,
         last_id  INTEGER NOT NULL,
         count    INTEGER NOT NULL,
         data     BLOB    NOT NULL
     );
     CREATE INDEX segments_by_room ON segments (room, last_id);
     CREATE TABLE rooms (
         room            TEXT PRIMARY KEY,
         trimmed_through INTEGER NOT NULL
     );",
    // 2: shared files: which segment holds each one (`Store::file`), so a fetch reads one
    //    row by key. Retention deletes a segment's entries with the segment.
    "CREATE TABLE files (
         id      INTEGER PRIMARY KEY,
         segment INTEGER NOT NULL
     );
     CREATE INDEX files_by_segment ON files (segment);",
    // 3: messages' bytes move to the message log (`log.rs`): a row says where its
    //    segment is (file, offset, length) and keeps `data` empty. Rows written before
    //    keep their bytes in `data` and read as before. `id_runs` lists the segment's ids
    //    (runs of consecutive ids), so retention finds its cut without reading the log.
    //    The index finds the rows of one log file, for compaction.
    "ALTER TABLE segments ADD COLUMN log_file INTEGER;
     ALTER TABLE segments ADD COLUMN log_offset INTEGER;
     ALTER TABLE segments ADD COLUMN log_length INTEGER;
     ALTER TABLE segments ADD COLUMN id_runs BLOB;
     CREATE INDEX segments_by_log_file ON segments (log_file, first_id) WHERE log_file IS NOT NULL;",
];

/// Segment flag bits of one message.
const FLAG_BINARY: u8 = 1; // a binary message (files too)
const FLAG_TO: u8 = 2; // has a recipient (a direct message)
const FLAG_FILE: u8 = 4; // a shared file: its name and type precede its bytes in the body

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> StoreError {
        StoreError(format!("history: unexpected column type: {e}"))
    }
}

/// Retention trims a room once it holds this fraction more than `keep` (1/16), so the
/// cost of trimming is spread over many commits.
const TRIM_SLACK_DIVISOR: usize = 16;

/// The history database.
pub struct SqliteStore {
    db: Connection,                 // the one connection, held by the loop thread
    keep: usize,                    // messages kept per room (`--history-keep`)
    pending: Vec<Record>,           // appended this turn, committed before the flush
    counts: HashMap<String, usize>, // messages stored per room, learnt lazily, to know when to trim
    cuts: HashMap<String, u64>,     // per room, the last id retention made invisible (cache of `rooms`)
    last_id: u64,                   // highest id stored or pending
    log: MessageLog,                // where the messages' bytes are (`<db>-log/`)
    wal: Option<std::fs::File>,     // the WAL, opened to start its writeback early (`start_writeback`)
    commits: u64,                   // commits since the WAL's writeback was last started
    heads: Vec<u8>,                 // the heads of one commit's records, reused
}

impl SqliteStore {
    /// Opens or creates the database, takes the exclusive lock, runs migrations. Errors
    /// name the file and say what is wrong (in use, not a database, read-only, ...).
    pub fn open(path: &Path, keep: usize) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, keep, DEFAULT_FILE_SIZE)
    }

    /// `open`, with the size at which the message log starts a new file
    /// (`--history-log-file-size`).
    pub fn open_with(path: &Path, keep: usize, log_file_size: u64) -> Result<SqliteStore, StoreError> {
        let describe = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError(format!("{} is in use by another process (another pollcast?)", path.display()))
            }
            _ => StoreError(format!("{}: {e}", path.display())),
        };
        let db = Connection::open(path).map_err(describe)?;
        let mode = setup(&db).map_err(describe)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError(format!("{}: cannot switch to WAL mode (got {mode})", path.display())));
        }
        let last_id: Option<i64> =
            db.query_row("SELECT max(last_id) FROM segments", [], |row| row.get(0)).map_err(describe)?;
        let live = live_log_bytes(&db).map_err(describe)?;
        let log_dir = log_dir(path);
        let log = MessageLog::open(&log_dir, log_file_size, live)
            .map_err(|e| StoreError(format!("{}: {e}", log_dir.display())))?;
        Ok(SqliteStore {
            db,
            keep,
            pending: Vec::new(),
            counts: HashMap::new(),
            cuts: HashMap::new(),
            last_id: last_id.unwrap_or(0) as u64,
            log,
            wal: std::fs::File::open(wal_path(path)).ok(),
            commits: 0,
            heads: Vec::new(),
        })
    }
}

impl Store for SqliteStore {
    /// The highest message id ever stored: new ids continue after it.
    fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Queues a message for this turn's commit.
    fn append(&mut self, message: Record) {
        self.last_id = self.last_id.max(message.id);
        self.pending.push(message);
    }

    /// Messages appended but not committed.
    fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes every pending message: their bytes to the message log in one vectored
    /// write, then one index row per room in one transaction, then trims rooms over their
    /// retention. Returns how many messages were written. On error nothing of this batch
    /// is stored (bytes already in the log stay unreferenced) and the batch is dropped
    /// (the caller reports it; the relay goes on).
    fn commit(&mut self) -> Result<usize, StoreError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let batch = std::mem::take(&mut self.pending);
        // One segment per room, messages in the order they were routed.
        let mut segments: Vec<Segment> = Vec::new();
        for m in &batch {
            match segments.iter_mut().find(|s| s.room == m.room) {
                Some(segment) => segment.records.push(m),
                None => segments.push(Segment { room: &m.room, records: vec![m], offset: 0, length: 0 }),
            }
        }
        // Each record's head goes into `heads`; its body is written from the record itself.
        self.heads.clear();
        let mut spans = Vec::with_capacity(batch.len());
        for s in &segments {
            for m in &s.records {
                let start = self.heads.len();
                encode_head(m, &mut self.heads);
                spans.push(start..self.heads.len());
            }
        }
        let mut parts = Vec::with_capacity(2 * batch.len());
        let mut spans = spans.into_iter();
        let mut offset = 0;
        for s in &mut segments {
            s.offset = offset;
            for m in &s.records {
                let head = &self.heads[spans.next().expect("one span per record")];
                parts.push(IoSlice::new(head));
                if !m.body.is_empty() {
                    parts.push(IoSlice::new(&m.body));
                }
                s.length += (head.len() + m.body.len()) as u64;
            }
            offset += s.length;
        }
        let place = self.log.append(&parts).map_err(|e| StoreError(format!("history log: {e}")))?;
        drop(parts);

        let tx = self.db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO segments (first_id, room, last_id, count, data, log_file, log_offset, log_length, id_runs)
                 VALUES (?1, ?2, ?3, ?4, x'', ?5, ?6, ?7, ?8)",
            )?;
            let mut file = tx.prepare_cached("INSERT INTO files (id, segment) VALUES (?1, ?2)")?;
            for s in &segments {
                let at = (place.file as i64, (place.offset + s.offset) as i64, s.length as i64);
                let runs = id_runs(s.records.iter().map(|m| m.id));
                let row = (s.first_id() as i64, s.last_id() as i64, s.records.len() as i64);
                insert.execute(params![row.0, s.room, row.1, row.2, at.0, at.1, at.2, runs])?;
                for m in s.records.iter().filter(|m| m.file.is_some()) {
                    file.execute(params![m.id as i64, s.first_id() as i64])?;
                }
            }
        }
        let mut cuts = Vec::new();
        let mut freed = Vec::new();
        for s in &segments {
            let count = match self.counts.get(s.room) {
                Some(&known) => known + s.records.len(),
                None => {
                    tx.query_row("SELECT coalesce(sum(count), 0) FROM segments WHERE room = ?1", [s.room], |row| {
                        row.get::<_, i64>(0)
                    })? as usize
                }
            };
            // `count` is what is stored, visible or not; trimming starts once that passes
            // keep + keep/16, so visible messages never exceed it either.
            let over = count > self.keep + self.keep / TRIM_SLACK_DIVISOR;
            let count = match over {
                true => {
                    let trimmed = trim(&tx, &mut self.log, s.room, count, self.keep)?;
                    cuts.push((s.room, trimmed.cut));
                    freed.extend(trimmed.freed);
                    trimmed.stored
                }
                false => count,
            };
            self.counts.insert(s.room.to_owned(), count);
        }
        tx.commit()?;
        self.log.add_live(place.file, offset);
        for (file, bytes) in freed {
            self.log.remove_live(file, bytes);
        }
        for (room, cut) in cuts {
            let through = self.cuts.entry(room.to_owned()).or_default();
            *through = (*through).max(cut);
        }
        self.start_wal_writeback();
        // The commit is done: what follows only reclaims space, and a failure there is
        // reported, not the commit's.
        if let Err(e) = self.log.collect() {
            log::warn!("history: removing an unused log file failed: {e}");
        }
        if let Err(e) = self.compact() {
            log::warn!("history: compacting the message log failed: {e}");
        }
        Ok(batch.len())
    }

    /// Reads part of a room's history, at most `cap` messages, oldest first. Callers
    /// commit first, so a reader never misses a message routed earlier in the same turn.
    /// `text_only`: leave binary messages out (for clients that cannot show them), and
    /// count only what is returned.
    fn query(&mut self, room: &str, query: Query, cap: usize, text_only: bool) -> Result<Page, StoreError> {
        let cap = cap.max(1);
        let floor = self.trimmed_through(room)?; // retention: nothing at or below is visible
        let (sql, key, n, newest_first) = match query {
            Query::Last(n) => ("room = ?1 AND last_id > ?2 ORDER BY last_id DESC", floor, n, true),
            Query::Before { before, n } => ("room = ?1 AND first_id < ?2 ORDER BY last_id DESC", before, n, true),
            Query::Since(since) => ("room = ?1 AND last_id > ?2 ORDER BY last_id ASC", since, cap, false),
        };
        let n = n.min(cap);
        let wanted = |m: &Record| {
            !(text_only && m.binary && m.file.is_none()) // files are shown to everyone, as notices
                && m.id > floor
                && match query {
                    Query::Last(_) => true,
                    Query::Before { before, .. } => m.id < before,
                    Query::Since(since) => m.id > since,
                }
        };
        // Walk segments in the query's direction until one more message than asked for
        // is found (that one only tells `more`).
        let SqliteStore { db, log, .. } = self;
        let mut statement = db.prepare_cached(&format!("SELECT {SEGMENT} FROM segments WHERE {sql}"))?;
        let mut rows = statement.query(params![room, key.min(i64::MAX as u64) as i64])?;
        let mut messages = Vec::new();
        let mut lost = false; // a segment the log no longer has (power loss)
        while messages.len() <= n {
            let Some(row) = rows.next()? else { break };
            let Some(mut decoded) = load(log, StoredSegment::of(row, 0)?, room, FileBytes::Left)? else {
                lost = true;
                continue;
            };
            if newest_first {
                decoded.reverse();
            }
            messages.extend(decoded.into_iter().filter(|m| wanted(m)));
        }
        let more = messages.len() > n;
        messages.truncate(n);
        if newest_first {
            messages.reverse();
        }
        let recovered = match query {
            Query::Since(since) => Some(!more && !lost && floor <= since),
            _ => None,
        };
        Ok(Page { messages, more, recovered })
    }

    /// A shared file with its bytes, through the `files` index: one row by key. `None`
    /// when there is no such file, the id is not a file, or retention has taken it.
    fn file(&mut self, id: u64) -> Result<Option<Record>, StoreError> {
        let Ok(key) = i64::try_from(id) else { return Ok(None) };
        let sql = "SELECT s.room, s.first_id, s.last_id, s.data, s.log_file, s.log_offset, s.log_length
                   FROM files f JOIN segments s ON s.first_id = f.segment WHERE f.id = ?1";
        let row = self
            .db
            .prepare_cached(sql)?
            .query_row([key], |row| Ok((row.get::<_, String>(0)?, StoredSegment::of(row, 1))))
            .optional()?;
        let Some((room, segment)) = row else { return Ok(None) };
        if id <= self.trimmed_through(&room)? {
            return Ok(None); // hidden by retention, even if its segment is not deleted yet
        }
        let Some(decoded) = load(&mut self.log, segment?, &room, FileBytes::Of(id))? else { return Ok(None) };
        Ok(decoded.into_iter().find(|m| m.id == id && m.file.is_some()))
    }
}

impl SqliteStore {
    /// The highest id retention has taken from `room` (0 if none).
    fn trimmed_through(&mut self, room: &str) -> Result<u64, StoreError> {
        if let Some(&through) = self.cuts.get(room) {
            return Ok(through);
        }
        let sql = "SELECT trimmed_through FROM rooms WHERE room = ?1";
        let through: Option<i64> = self.db.prepare_cached(sql)?.query_row([room], |row| row.get(0)).optional()?;
        let through = through.unwrap_or(0) as u64;
        self.cuts.insert(room.to_owned(), through);
        Ok(through)
    }
}

impl SqliteStore {
    /// Every `WRITEBACK_EVERY` commits, starts writing the WAL's new pages to disk without
    /// waiting. A checkpoint (every `wal_autocheckpoint` pages, on the loop's thread)
    /// fsyncs the WAL first; with its pages already on their way, that fsync waits for a
    /// few commits' worth instead of 32 MiB, which stalled the loop for 20-40 ms.
    fn start_wal_writeback(&mut self) {
        self.commits += 1;
        if self.commits < WRITEBACK_EVERY {
            return;
        }
        self.commits = 0;
        if let Some(wal) = &self.wal {
            let _ = crate::sys::start_writeback(wal); // only an optimisation: a failure changes nothing
        }
    }

    /// Moves live segments out of the oldest log file when dead bytes outweigh live
    /// ones (`MessageLog::compaction_source`): at most `COMPACTION_BYTES` per commit, so
    /// the turn it runs in stays short; the file goes once nothing points into it.
    fn compact(&mut self) -> Result<(), StoreError> {
        let Some(source) = self.log.compaction_source() else { return Ok(()) };
        let sql = "SELECT first_id, log_offset, log_length FROM segments WHERE log_file = ?1 ORDER BY first_id";
        let mut moving: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        {
            let mut statement = self.db.prepare_cached(sql)?;
            let mut rows = statement.query([source as i64])?;
            while bytes < COMPACTION_BYTES {
                let Some(row) = rows.next()? else { break };
                let (first, offset, length): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
                let place = Place { file: source, offset: offset as u64 };
                let data =
                    self.log.read(place, length as usize).map_err(|e| StoreError(format!("history log: {e}")))?;
                bytes += data.len();
                moving.push((first, data));
            }
        }
        if moving.is_empty() {
            return Ok(());
        }
        let parts: Vec<IoSlice> = moving.iter().map(|(_, data)| IoSlice::new(data)).collect();
        let place = self.log.append(&parts).map_err(|e| StoreError(format!("history log: {e}")))?;
        let tx = self.db.transaction()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE segments SET log_file = ?1, log_offset = ?2 WHERE first_id = ?3 AND log_file = ?4",
            )?;
            let mut offset = place.offset;
            for (first, data) in &moving {
                update.execute(params![place.file as i64, offset as i64, first, source as i64])?;
                offset += data.len() as u64;
            }
        }
        tx.commit()?;
        self.log.add_live(place.file, bytes as u64);
        self.log.remove_live(source, bytes as u64);
        log::debug!("history: compaction moved {} segment(s), {bytes} bytes, out of log file {source}", moving.len());
        self.log.collect().map_err(|e| StoreError(format!("history log: {e}")))?;
        Ok(())
    }
}

/// Commits between two starts of the WAL's writeback (a commit adds a page or two).
const WRITEBACK_EVERY: u64 = 32;

/// Most bytes one commit's compaction step copies (a few ms of the loop's time).
const COMPACTION_BYTES: usize = 4 << 20;

/// The columns `StoredSegment::of` reads, in order.
const SEGMENT: &str = "first_id, last_id, data, log_file, log_offset, log_length";

/// A segment's row: its ids, and where its bytes are.
struct StoredSegment {
    first_id: u64,
    last_id: u64,
    bytes: SegmentBytes,
}

enum SegmentBytes {
    Inline(Vec<u8>),      // a row written before the message log: the bytes are in `data`
    Logged(Place, usize), // in the message log, this long
}

impl StoredSegment {
    /// Reads the `SEGMENT` columns, starting at column `at`.
    fn of(row: &rusqlite::Row, at: usize) -> rusqlite::Result<StoredSegment> {
        let (first_id, last_id): (i64, i64) = (row.get(at)?, row.get(at + 1)?);
        let file: Option<i64> = row.get(at + 3)?;
        let bytes = match file {
            None => SegmentBytes::Inline(row.get(at + 2)?),
            Some(file) => {
                let (offset, length): (i64, i64) = (row.get(at + 4)?, row.get(at + 5)?);
                SegmentBytes::Logged(Place { file: file as u64, offset: offset as u64 }, length as usize)
            }
        };
        Ok(StoredSegment { first_id: first_id as u64, last_id: last_id as u64, bytes })
    }
}

/// Decodes a segment, reading its bytes from the log if they are there. `None` when the
/// log does not hold what the row says (missing, short, or not these ids: bytes a power
/// loss kept from reaching the disk): logged, and the segment is skipped.
fn load(
    log: &mut MessageLog,
    segment: StoredSegment,
    room: &str,
    file_bytes: FileBytes,
) -> Result<Option<Vec<Record>>, StoreError> {
    let place = match segment.bytes {
        SegmentBytes::Inline(data) => return decode(&data, room, file_bytes).map(Some),
        SegmentBytes::Logged(place, _) => place,
    };
    let decoded = match segment_bytes(log, &segment)? {
        Some(data) => decode(&data, room, file_bytes),
        None => Err(truncated()),
    };
    match decoded {
        Ok(records)
            if records.first().map(|m| m.id) == Some(segment.first_id)
                && records.last().map(|m| m.id) == Some(segment.last_id) =>
        {
            Ok(Some(records))
        }
        _ => {
            log::warn!(
                "history: messages {}..={} of a room are missing from log file {} (lost in a power failure?); skipped",
                segment.first_id,
                segment.last_id,
                place.file
            );
            Ok(None)
        }
    }
}

/// A segment's ids as runs of consecutive ids: (first id, how many) pairs of
/// little-endian u64. One room's burst is one run: 16 bytes.
fn id_runs(ids: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == id => *n += 1,
            _ => runs.push((id, 1)),
        }
    }
    runs.iter().flat_map(|(first, n)| first.to_le_bytes().into_iter().chain(n.to_le_bytes())).collect()
}

/// The `index`th id (from 0) in `id_runs`; `None` past the end or on a malformed value.
fn nth_id(runs: &[u8], mut index: usize) -> Option<u64> {
    for run in runs.chunks_exact(16) {
        let first = u64::from_le_bytes(run[..8].try_into().ok()?);
        let n = u64::from_le_bytes(run[8..].try_into().ok()?);
        match (index as u64) < n {
            true => return Some(first + index as u64),
            false => index -= n as usize,
        }
    }
    None
}

/// A logged segment's bytes; `None` when the log no longer has them (see `load`).
/// An inline segment's bytes are its own.
fn segment_bytes(log: &mut MessageLog, segment: &StoredSegment) -> Result<Option<Vec<u8>>, StoreError> {
    let (place, length) = match &segment.bytes {
        SegmentBytes::Inline(data) => return Ok(Some(data.clone())),
        SegmentBytes::Logged(place, length) => (*place, *length),
    };
    match log.read(place, length) {
        Ok(data) => Ok(Some(data)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof) => Ok(None),
        Err(e) => Err(StoreError(format!("history log: {e}"))),
    }
}

/// Bytes of the message log each file holds that rows point to.
fn live_log_bytes(db: &Connection) -> rusqlite::Result<BTreeMap<u64, u64>> {
    let sql = "SELECT log_file, sum(log_length) FROM segments WHERE log_file IS NOT NULL GROUP BY log_file";
    let mut statement = db.prepare(sql)?;
    let rows = statement.query_map([], |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// SQLite's WAL beside `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// `history.db` keeps its messages' bytes in `history.db-log/`.
fn log_dir(db: &Path) -> PathBuf {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-log");
    PathBuf::from(dir)
}

/// The messages of one room in one commit: one index row, their bytes back to back in
/// the log.
struct Segment<'a> {
    room: &'a str,            // the room they share
    records: Vec<&'a Record>, // in the order they were routed
    offset: u64,              // where their bytes start, from the start of the commit's write
    length: u64,              // how many bytes they take
}

impl Segment<'_> {
    /// The row's key.
    fn first_id(&self) -> u64 {
        self.records[0].id
    }

    /// For reads newest first and for recovery.
    fn last_id(&self) -> u64 {
        self.records[self.records.len() - 1].id
    }
}

/// Encodes one message but its body, which follows it: id u64, ts u64, flags u8
/// (`FLAG_BINARY`, `FLAG_TO`, `FLAG_FILE`), sender (u16 length + bytes), recipient if any
/// (likewise), body length u32; all little-endian. A file's body is its name and its type
/// (u16 length + bytes each) and then its bytes: inside the body's length, so a reader
/// that does not know `FLAG_FILE` still walks the segment right. The name and type are
/// part of the head here; the bytes after them are the record's body.
fn encode_head(m: &Record, data: &mut Vec<u8>) {
    data.extend_from_slice(&m.id.to_le_bytes());
    data.extend_from_slice(&m.ts.to_le_bytes());
    let mut flags = if m.binary { FLAG_BINARY } else { 0 };
    flags |= if m.to.is_some() { FLAG_TO } else { 0 };
    flags |= if m.file.is_some() { FLAG_FILE | FLAG_BINARY } else { 0 };
    data.push(flags);
    put_short(data, m.from.as_bytes());
    if let Some(to) = &m.to {
        put_short(data, to.as_bytes());
    }
    match &m.file {
        Some(file) => {
            let len = 2 + file.name.len().min(u16::MAX as usize) + 2 + file.mime.len().min(u16::MAX as usize);
            data.extend_from_slice(&((len + m.body.len()) as u32).to_le_bytes());
            put_short(data, file.name.as_bytes());
            put_short(data, file.mime.as_bytes());
        }
        None => data.extend_from_slice(&(m.body.len() as u32).to_le_bytes()),
    }
}

/// A name: u16 length, then the bytes (names are at most 32 characters).
fn put_short(data: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(u16::MAX as usize);
    data.extend_from_slice(&(len as u16).to_le_bytes());
    data.extend_from_slice(&bytes[..len]);
}

fn truncated() -> StoreError {
    StoreError("history: a stored segment is truncated (corrupt database?)".into())
}

/// The first `n` bytes of `data`, advancing it past them.
fn take<'d>(data: &mut &'d [u8], n: usize) -> Result<&'d [u8], StoreError> {
    if data.len() < n {
        return Err(truncated());
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

/// Walks past `n` messages of a segment without decoding them: returns the byte offset
/// of the next message and the id of the last one skipped.
fn skip_messages(segment: &[u8], n: usize) -> Result<(usize, u64), StoreError> {
    let mut data = segment;
    let mut last_id = 0;
    for _ in 0..n {
        last_id = u64::from_le_bytes(take(&mut data, 8)?.try_into().expect("take returned 8 bytes"));
        take(&mut data, 8)?; // ts
        let flags = take(&mut data, 1)?[0];
        let names = if flags & FLAG_TO != 0 { 2 } else { 1 }; // sender, and recipient if any
        for _ in 0..names {
            let len = u16::from_le_bytes(take(&mut data, 2)?.try_into().expect("2 bytes"));
            take(&mut data, usize::from(len))?;
        }
        let len = u32::from_le_bytes(take(&mut data, 4)?.try_into().expect("4 bytes"));
        take(&mut data, len as usize)?;
    }
    Ok((segment.len() - data.len(), last_id))
}

/// Which shared files' bytes a decode copies out: a page of history needs none of them
/// (files are listed, not sent), a fetch needs one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileBytes {
    Left,    // no file's bytes (the record's `body` stays empty; `FileMeta::size` tells)
    Of(u64), // the bytes of the file with this id only
}

/// Decodes a segment written by `Segment::push`.
fn decode(mut data: &[u8], room: &str, file_bytes: FileBytes) -> Result<Vec<Record>, StoreError> {
    fn text(bytes: &[u8]) -> Result<String, StoreError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| StoreError("history: a stored name is not UTF-8".into()))
    }
    let u64_at = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("take returned 8 bytes"));
    let mut messages = Vec::new();
    while !data.is_empty() {
        let id = u64_at(take(&mut data, 8)?);
        let ts = u64_at(take(&mut data, 8)?);
        let flags = take(&mut data, 1)?[0];
        let len = u16::from_le_bytes(take(&mut data, 2)?.try_into().expect("2 bytes")) as usize;
        let from = text(take(&mut data, len)?)?;
        let to = match flags & FLAG_TO {
            0 => None,
            _ => {
                let len = u16::from_le_bytes(take(&mut data, 2)?.try_into().expect("2 bytes")) as usize;
                Some(text(take(&mut data, len)?)?)
            }
        };
        let len = u32::from_le_bytes(take(&mut data, 4)?.try_into().expect("4 bytes")) as usize;
        let mut body = take(&mut data, len)?;
        let file = match flags & FLAG_FILE {
            0 => None,
            _ => {
                let len = u16::from_le_bytes(take(&mut body, 2)?.try_into().expect("2 bytes")) as usize;
                let name = text(take(&mut body, len)?)?;
                let len = u16::from_le_bytes(take(&mut body, 2)?.try_into().expect("2 bytes")) as usize;
                let mime = text(take(&mut body, len)?)?;
                Some(FileMeta { name, mime, size: body.len() as u64 })
            }
        };
        let body = match (&file, file_bytes) {
            (Some(_), FileBytes::Of(wanted)) if wanted == id => body.to_vec(),
            (Some(_), _) => Vec::new(),
            (None, _) => body.to_vec(),
        };
        let binary = flags & FLAG_BINARY != 0;
        messages.push(Record { id, room: room.to_owned(), from, to, binary, body, ts, file });
    }
    Ok(messages)
}

/// Retention: makes only the newest `keep` messages of `room` visible. Whole segments
/// older than the cut are deleted; the cut itself (the last invisible id) is recorded as
/// the room's `trimmed_through`, which every read honours and recovery reports. Returns
/// the messages still stored (`keep`, plus the invisible front of one segment) and the cut.
fn trim(
    tx: &rusqlite::Transaction,
    log: &mut MessageLog,
    room: &str,
    count: usize,
    keep: usize,
) -> Result<Trimmed, StoreError> {
    let mut excess = count.saturating_sub(keep);
    let mut trimmed = Trimmed { stored: count, cut: 0, freed: Vec::new() };
    // Only the ids, counts and places are read (the index and the row heads); the bytes
    // are read for the one boundary segment.
    let oldest = format!("SELECT count, id_runs, {SEGMENT} FROM segments WHERE room = ?1 ORDER BY last_id ASC");
    let mut whole = Vec::new(); // segments to delete
    let mut boundary = None; // the segment the cut falls inside
    {
        let mut statement = tx.prepare_cached(&oldest)?;
        let mut rows = statement.query([room])?;
        while excess > 0 && boundary.is_none() {
            let Some(row) = rows.next()? else { break };
            let n = row.get::<_, i64>(0)? as usize;
            let runs: Option<Vec<u8>> = row.get(1)?;
            let segment = StoredSegment::of(row, 2)?;
            if n <= excess {
                excess -= n;
                trimmed.stored -= n;
                trimmed.cut = segment.last_id;
                whole.push(segment);
            } else {
                boundary = Some((segment, runs));
            }
        }
    }
    if let Some((segment, runs)) = boundary {
        // The cut falls inside this segment: its older messages become invisible (reads
        // skip ids up to `trimmed_through`) and go when the whole segment does, so the
        // segment is never rewritten. Its id runs tell the cut; a segment written before
        // them is read. One the log lost is deleted whole.
        let (first_id, last_id) = (segment.first_id, segment.last_id);
        let skipped = match runs {
            Some(runs) => nth_id(&runs, excess - 1),
            None => match segment_bytes(log, &segment)? {
                Some(data) => skip_messages(&data, excess).ok().map(|(_, id)| id),
                None => None,
            },
        };
        match skipped.filter(|id| (first_id..last_id).contains(id)) {
            Some(id) => trimmed.cut = id,
            None => {
                let n = tx.query_row("SELECT count FROM segments WHERE first_id = ?1", [first_id as i64], |row| {
                    row.get::<_, i64>(0)
                })? as usize;
                trimmed.stored -= n;
                trimmed.cut = last_id;
                whole.push(StoredSegment { first_id, last_id, bytes: SegmentBytes::Inline(Vec::new()) });
            }
        }
    }
    let mut delete = tx.prepare_cached("DELETE FROM segments WHERE first_id = ?1")?;
    let mut delete_files = tx.prepare_cached("DELETE FROM files WHERE segment = ?1")?;
    for segment in whole {
        delete.execute([segment.first_id as i64])?;
        delete_files.execute([segment.first_id as i64])?;
        if let SegmentBytes::Logged(place, length) = segment.bytes {
            trimmed.freed.push((place.file, length as u64));
        }
    }
    if trimmed.cut > 0 {
        tx.prepare_cached(
            "INSERT INTO rooms (room, trimmed_through) VALUES (?1, ?2)
             ON CONFLICT (room) DO UPDATE SET trimmed_through = max(trimmed_through, excluded.trimmed_through)",
        )?
        .execute(params![room, trimmed.cut as i64])?;
    }
    Ok(trimmed)
}

/// What `trim` did to a room.
struct Trimmed {
    stored: usize,          // messages still stored, visible or not
    cut: u64,               // the last id now invisible (0: none)
    freed: Vec<(u64, u64)>, // log bytes no row points to any more: (file, bytes)
}

/// WAL mode, durability level, the exclusive lock, then migrations. Returns the
/// journal mode SQLite actually chose.
fn setup(db: &Connection) -> rusqlite::Result<String> {
    // Fail at once rather than wait if another process holds the lock.
    db.busy_timeout(std::time::Duration::ZERO)?;
    let mode: String = db.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    // NORMAL: commits are not fsynced (a process crash loses nothing, WAL stays consistent
    // on power loss). Checkpoints are: at SQLite's default of 1000 pages they came every
    // few hundred turns and stalled the loop on fsync; 8192 pages (32 MiB of WAL) makes
    // them eight times rarer.
    db.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 8192; PRAGMA locking_mode = EXCLUSIVE;",
    )?;
    // The first write takes the exclusive lock and keeps it until the connection closes.
    db.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
    migrate(db)?;
    Ok(mode)
}

/// Runs the migrations the file has not seen yet, each in its own transaction.
fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let done: usize = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        db.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
        log::info!("history: schema migrated to version {}", i + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
/// Not a test: how the figures in the module doc were measured.
/// `BATCH=64 KEEP=1000 cargo test --release --lib commit_cost_probe -- --ignored --nocapture`
#[cfg(test)]
mod timing_probe {
    use crate::store::Store;

    #[test]
    #[ignore]
    fn commit_cost_probe() {
        let dir = std::env::temp_dir().join(format!("probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let batch: usize = std::env::var("BATCH").map_or(64, |v| v.parse().unwrap());
        let keep: usize = std::env::var("KEEP").map_or(1000, |v| v.parse().unwrap());
        let mut store = super::SqliteStore::open(&dir.join("p.db"), keep).unwrap();
        let t = std::time::Instant::now();
        let mut id = 0;
        for _ in 0..(128000 / batch) {
            for _ in 0..batch {
                id += 1;
                store.append(super::Record {
                    id,
                    room: "x".into(),
                    from: "guest-1".into(),
                    to: None,
                    binary: true,
                    body: vec![7; 64],
                    ts: 1,
                    file: None,
                });
            }
            store.commit().unwrap();
        }
        let e = t.elapsed();
        eprintln!("batch {batch} keep {keep}: {} rows in {:?}: {:?}/row", id, e, e / id as u32);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
