//! SQLite history: the index of the message log, WAL mode, brought up to the log every
//! few turns.
//!
//! Owns: the database connection, the schema and its migrations, the pending messages
//! of the current turn, their encoding, the message log (`log.rs`) as its byte store, and
//! retention. Must not touch: sockets, the clock.
//!
//! A turn's commit is one vectored write to the message log: per room, a *frame* (a head
//! naming the room, then its messages encoded back to back, straight from the records).
//! Once that write returns the messages are committed: a crash of the process cannot
//! lose them, because the log is the truth. The index (SQLite) catches up every 64
//! commits (`--history-index-every`), or half a log file, or before any read: one row per
//! room (room, first and last id, count, its ids as runs, the *extents* where its frames'
//! records are), all in one transaction that also moves the *mark*, where a start's scan
//! of the log begins. A start finds the frames past the mark (those a crash kept from the
//! index) and indexes them. So a turn costs one write and no transaction, and a message's
//! bytes are copied once, into the page cache.
//!
//! Reads walk a room's rows newest or oldest first through the `(room, last_id)` index.
//! Retention deletes whole rows and hides the older part of the one its cut falls in
//! (found from the row's id runs); a row takes at most an eighth of `keep`, so little is
//! kept past the cut. Rows from before the log (migration 3) keep their bytes in `data`,
//! rows from before the mark (migration 4) have one extent; both read as before.
//!
//! Measured with `commit_cost_probe` below (64-byte messages, --history-keep 1000): 219 ns
//! per message at 64 per commit, 197 ns at 256, the records' making included (with a
//! transaction per commit it was 537 ns and 263 ns; with the bytes in SQLite blobs,
//! 1.2-1.6 µs and 0.6 µs; one row per message, 1.9 µs). Spread over 1,000 rooms (256 per
//! commit): 630 ns per message, and the slowest commit, one that updates the index, takes
//! 6-6.5 ms (`ROOMS=1000 BATCH=256`; 835 ns and 7.5 ms when a commit's frames and an
//! update's rooms were found by scanning a list, not by name); a build that updated the index at every commit instead
//! (an experiment, not kept) took 5.3 µs per message and up to 21 ms (a room's rows are
//! then one message each, and retention walks many more of them).
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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::log::{frame_head, frames, FrameKind, MessageLog, Place, DEFAULT_FILE_SIZE};
use super::{Store, StoreError};
use crate::chat::record::{FileMeta, Page, Query, Record};

/// Schema migrations, in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: [&str; 4] = [
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
    // 4: the log is the truth and the index catches up every few turns. A row may gather
    //    one room's frames of several commits: `log_extents` lists where each is (file,
    //    offset, length), and `log_file` is then the lowest file. `log_mark` is where a
    //    start's scan for frames the index has not caught up with begins.
    "ALTER TABLE segments ADD COLUMN log_extents BLOB;
     CREATE TABLE log_mark (
         id     INTEGER PRIMARY KEY CHECK (id = 1),
         file   INTEGER NOT NULL,
         offset INTEGER NOT NULL
     );",
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
    db: Connection,                          // the one connection, held by the loop thread
    keep: usize,                             // messages kept per room (`--history-keep`)
    pending: Vec<Record>,                    // appended this turn, committed before the flush
    counts: HashMap<String, usize>,          // messages stored per room, learnt lazily, to know when to trim
    cuts: HashMap<String, u64>,              // per room, the last id retention made invisible (cache of `rooms`)
    last_id: u64,                            // highest id stored or pending
    log: MessageLog,                         // where the messages' bytes are (`<db>-log/`)
    wal: Option<std::fs::File>,              // the WAL, opened to start its writeback early (`start_writeback`)
    commits: u64,                            // index updates since the WAL's writeback was last started
    heads: Vec<u8>,                          // the heads of one commit's frames and records, reused
    spent: Vec<Record>,                      // the last commit's records, for `Store::spent`
    unindexed: Vec<Unindexed>,               // committed rows the index does not have yet
    unindexed_rooms: HashMap<String, usize>, // each room's row that takes more, in `unindexed`
    unindexed_commits: usize,                // commits since the index last caught up
    unindexed_bytes: u64,                    // bytes they wrote to the log
    index_bytes: u64,                        // the index catches up once they reach this (half a log file)
    index_every: usize,                      // ... or once this many commits wait (`--history-index-every`)
    behind: u64,                             // log bytes written since the index last caught up
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
        let mark = mark(&db).map_err(describe)?;
        let log_dir = log_dir(path);
        let log = MessageLog::open(&log_dir, log_file_size, live, mark.map_or(u64::MAX, |m| m.file))
            .map_err(|e| StoreError(format!("{}: {e}", log_dir.display())))?;
        let mut store = SqliteStore {
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
            spent: Vec::new(),
            unindexed: Vec::new(),
            unindexed_rooms: HashMap::new(),
            unindexed_commits: 0,
            unindexed_bytes: 0,
            index_bytes: (log_file_size / 2).max(1),
            index_every: INDEX_EVERY,
            behind: 0,
        };
        let found = store.recover(mark).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        if found > 0 {
            log::info!("history: {found} message(s) committed after the index's last update found in the log");
        }
        Ok(store)
    }

    /// Commits after which the index catches up (`--history-index-every`, at least 1):
    /// fewer leave less for a start to scan after a crash, and cost more index work per
    /// message.
    pub fn set_index_every(&mut self, commits: usize) {
        self.index_every = commits.max(1);
    }
}

impl Drop for SqliteStore {
    /// Brings the index up to the log, so the next start has nothing to scan.
    fn drop(&mut self) {
        if let Err(e) = self.index() {
            log::warn!("history: updating the index at close failed (the next start reads the log): {e}");
        }
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

    /// Log bytes written since the index last caught up.
    fn behind(&self) -> u64 {
        self.behind
    }

    /// The records the last commit wrote.
    fn spent(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.spent)
    }

    /// Messages appended but not committed.
    fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes every pending message to the message log in one vectored write: a frame
    /// per room (its head, then its records), straight from the records. That write is
    /// the commit: once it returns, the messages survive a crash of the process (the
    /// next start finds them past the index's mark). The index learns of them in
    /// `index`, every `index_every` commits or half a log file, whichever comes first
    /// (and before any read). Returns how many messages were written. On error nothing
    /// of this batch is stored and the batch is dropped (the caller reports it; the
    /// relay goes on).
    fn commit(&mut self) -> Result<usize, StoreError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        // An index that keeps failing must not leave ever more of the log, and of memory,
        // waiting for it: once it is `MAX_BEHIND` half files behind, commits fail (and
        // the relay goes on) until it catches up. Refused commits pace its retries as
        // written ones do: one every `index_every`, not one per turn.
        if self.behind >= MAX_BEHIND * self.index_bytes {
            self.unindexed_commits += 1;
            let why = match self.unindexed_commits >= self.index_every {
                true => self.index().err().map(|e| e.to_string()), // `index` restarts the count
                false => Some("it tries again later".to_owned()),
            };
            if let Some(why) = why {
                self.pending.clear();
                let behind = self.behind;
                return Err(StoreError(format!("history index {behind} bytes behind the log, cannot catch up: {why}")));
            }
        }
        // The next turn's are likely as many: room for them now, not by doubling.
        let next = Vec::with_capacity(self.pending.len());
        let batch = std::mem::replace(&mut self.pending, next);
        // One frame per room, messages in the order they were routed. A run of one room's
        // messages needs no lookup; many rooms are found by name, not by a scan.
        let mut segments: Vec<Segment> = Vec::new();
        let mut by_room: HashMap<&str, usize> = HashMap::new();
        for m in &batch {
            if let Some(last) = segments.last_mut().filter(|s| s.room == m.room) {
                last.records.push(m);
                continue;
            }
            let next = segments.len();
            match by_room.entry(&m.room) {
                Entry::Occupied(at) => segments[*at.get()].records.push(m),
                Entry::Vacant(slot) => {
                    slot.insert(next);
                    segments.push(Segment { room: &m.room, records: vec![m], offset: 0, length: 0 });
                }
            }
        }
        let file = self.log.next_file().map_err(|e| StoreError(format!("history log: {e}")))?;
        // Record heads, then each frame's head (which needs their length), go into
        // `heads`; bodies are written from the records themselves.
        self.heads.clear();
        let mut spans = Vec::with_capacity(batch.len()); // each record's head
        let mut frames = Vec::with_capacity(segments.len()); // each frame's head
        for s in &mut segments {
            for m in &s.records {
                let start = self.heads.len();
                encode_head(m, &mut self.heads);
                spans.push(start..self.heads.len());
                s.length += (self.heads.len() - start + m.body.len()) as u64;
            }
            let start = self.heads.len();
            frame_head(FrameKind::New, file, s.room, s.records.len() as u32, s.length, &mut self.heads);
            frames.push(start..self.heads.len());
        }
        let mut parts = Vec::with_capacity(2 * batch.len() + segments.len());
        let mut spans = spans.into_iter();
        let mut offset = 0;
        for (s, frame) in segments.iter_mut().zip(frames) {
            s.offset = offset + frame.len() as u64;
            parts.push(IoSlice::new(&self.heads[frame]));
            for m in &s.records {
                parts.push(IoSlice::new(&self.heads[spans.next().expect("one span per record")]));
                if !m.body.is_empty() {
                    parts.push(IoSlice::new(&m.body));
                }
            }
            offset = s.offset + s.length;
        }
        let place = self.log.append(&parts).map_err(|e| StoreError(format!("history log: {e}")))?;
        drop(parts);
        for s in &segments {
            let extent =
                Extent { place: Place { file: place.file, offset: place.offset + s.offset }, length: s.length };
            self.note(s.room, s.records.iter().map(|m| (m.id, m.file.is_some())), extent);
        }
        let written = batch.len();
        self.spent = batch;
        self.unindexed_commits += 1;
        self.unindexed_bytes += offset;
        self.behind += offset;
        if self.unindexed_commits >= self.index_every || self.unindexed_bytes >= self.index_bytes {
            // The messages are committed; an index that cannot catch up now tries again
            // `index_every` commits later or at the next read (a restart finds them in
            // the log).
            if let Err(e) = self.index() {
                log::error!("history: updating the index failed (the messages are in the log): {e}");
            }
        }
        Ok(written)
    }

    /// Reads part of a room's history, at most `cap` messages, oldest first. Callers
    /// commit first, so a reader never misses a message routed earlier in the same turn.
    /// `text_only`: leave binary messages out (for clients that cannot show them), and
    /// count only what is returned.
    fn query(&mut self, room: &str, query: Query, cap: usize, text_only: bool) -> Result<Page, StoreError> {
        self.index()?;
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
            let Loaded { records: mut decoded, lost: gone } =
                load(log, StoredSegment::of(row, 0)?, room, FileBytes::Left)?;
            lost |= gone;
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
        self.index()?;
        let Ok(key) = i64::try_from(id) else { return Ok(None) };
        let sql = "SELECT s.room, s.first_id, s.last_id, s.data, s.log_file, s.log_offset, s.log_length, s.log_extents
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
        let decoded = load(&mut self.log, segment?, &room, FileBytes::Of(id))?;
        Ok(decoded.records.into_iter().find(|m| m.id == id && m.file.is_some()))
    }
}

impl SqliteStore {
    /// Adds one committed frame to its room's unindexed row: a row gathers a room's
    /// frames until it holds an eighth of what retention keeps, so the index costs a few
    /// small inserts per busy room every `index_every` turns, and retention (which
    /// deletes whole rows) still keeps no more than about 1/8 over `keep`.
    fn note(&mut self, room: &str, ids: impl Iterator<Item = (u64, bool)>, extent: Extent) {
        let cap = (self.keep / 8).max(1);
        let open = self.unindexed_rooms.get(room).copied().filter(|&i| self.unindexed[i].count < cap);
        let row = match open {
            Some(i) => &mut self.unindexed[i],
            None => {
                self.unindexed_rooms.insert(room.to_owned(), self.unindexed.len());
                self.unindexed.push(Unindexed { room: room.to_owned(), ..Unindexed::default() });
                self.unindexed.last_mut().expect("just pushed")
            }
        };
        for (id, is_file) in ids {
            if row.count == 0 {
                row.first_id = id;
            }
            row.last_id = id;
            row.count += 1;
            push_id(&mut row.runs, id);
            if is_file {
                row.files.push(id);
            }
        }
        row.extents.push(extent);
    }

    /// Brings the index up to the log: a row for each `Unindexed`, retention for the
    /// rooms they are in, and the mark (where a restart's scan of the log starts)
    /// moved to the log's end, in one transaction. Then reclaims log space. On error the
    /// rows stay unindexed, to be tried again.
    fn index(&mut self) -> Result<(), StoreError> {
        (self.unindexed_commits, self.unindexed_bytes) = (0, 0);
        if self.unindexed.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO segments (first_id, room, last_id, count, data, log_file, log_offset, log_length, id_runs, log_extents)
                 VALUES (?1, ?2, ?3, ?4, x'', ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut file = tx.prepare_cached("INSERT INTO files (id, segment) VALUES (?1, ?2)")?;
            for row in &self.unindexed {
                let lowest = row.extents.iter().map(|e| e.place.file).min().expect("a row has an extent");
                let length: u64 = row.extents.iter().map(|e| e.length).sum();
                let extents = (row.extents.len() > 1).then(|| encode_extents(&row.extents));
                let ids = (row.first_id as i64, row.last_id as i64, row.count as i64);
                let at = (lowest as i64, row.extents[0].place.offset as i64, length as i64);
                let runs = encode_runs(&row.runs);
                insert.execute(params![ids.0, row.room, ids.1, ids.2, at.0, at.1, at.2, runs, extents])?;
                for id in &row.files {
                    file.execute(params![*id as i64, ids.0])?;
                }
            }
        }
        // Messages added per room, in the order rooms first appear.
        let mut added: Vec<(&str, usize)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for row in &self.unindexed {
            match at.entry(&row.room) {
                Entry::Occupied(i) => added[*i.get()].1 += row.count,
                Entry::Vacant(slot) => {
                    slot.insert(added.len());
                    added.push((&row.room, row.count));
                }
            }
        }
        let mut counts = Vec::new();
        let mut cuts = Vec::new();
        let mut freed = Vec::new();
        for (room, n) in added {
            let count = match self.counts.get(room) {
                Some(&known) => known + n,
                None => tx.query_row("SELECT coalesce(sum(count), 0) FROM segments WHERE room = ?1", [room], |r| {
                    r.get::<_, i64>(0) // the rows just inserted included
                })? as usize,
            };
            // `count` is what is stored, visible or not; trimming starts once that passes
            // keep + keep/16, so visible messages never exceed it either.
            let count = match count > self.keep + self.keep / TRIM_SLACK_DIVISOR {
                true => {
                    let trimmed = trim(&tx, &mut self.log, room, count, self.keep)?;
                    cuts.push((room, trimmed.cut));
                    freed.extend(trimmed.freed);
                    trimmed.stored
                }
                false => count,
            };
            counts.push((room, count));
        }
        set_mark(&tx, self.log.end())?;
        tx.commit()?;
        self.behind = 0;
        for (room, count) in counts {
            self.counts.insert(room.to_owned(), count);
        }
        for (room, cut) in cuts {
            let through = self.cuts.entry(room.to_owned()).or_default();
            *through = (*through).max(cut);
        }
        for extent in self.unindexed.iter().flat_map(|row| &row.extents) {
            self.log.add_live(extent.place.file, extent.length);
        }
        for (file, bytes) in freed {
            self.log.remove_live(file, bytes);
        }
        self.unindexed.clear();
        self.unindexed_rooms.clear();
        self.start_wal_writeback();
        // The index is done: what follows only reclaims space, and a failure there is
        // reported, not the index's.
        if let Err(e) = self.log.collect() {
            log::warn!("history: removing an unused log file failed: {e}");
        }
        if let Err(e) = self.compact() {
            log::warn!("history: compacting the message log failed: {e}");
        }
        Ok(())
    }

    /// At start: finds the frames committed after the index's mark (a crash came before
    /// the index caught up), checks that their records decode, as many as the head says,
    /// with ids that increase and are above every id the index has, and indexes them. A file's scan stops at the first frame that is not
    /// whole (the end of what was written). Then the mark moves to the new file appends
    /// go to. Returns how many messages were found.
    fn recover(&mut self, mark: Option<Place>) -> Result<usize, StoreError> {
        let mut found = 0;
        let floor = self.last_id + 1; // a commit's frames interleave ids, all above the index's
        if let Some(mark) = mark {
            for no in self.log.files_from(mark.file) {
                let data = self.log.read_file(no).map_err(|e| StoreError(format!("history log: {e}")))?;
                let start = if no == mark.file { mark.offset as usize } else { 0 };
                for frame in frames(&data, no, start) {
                    if frame.kind == FrameKind::Moved {
                        continue; // compaction's copy: the index has the row, wherever it points
                    }
                    let at = frame.records.offset as usize;
                    let records = &data[at..at + frame.length as usize];
                    let Ok(records) = decode(records, &frame.room, FileBytes::Left) else { break };
                    if records.len() != frame.count as usize || !ascending(&records, floor, u64::MAX) {
                        break;
                    }
                    self.last_id = self.last_id.max(records.last().map_or(0, |m| m.id));
                    found += records.len();
                    let extent = Extent { place: frame.records, length: frame.length };
                    self.note(&frame.room, records.iter().map(|m| (m.id, m.file.is_some())), extent);
                }
            }
        }
        match self.unindexed.is_empty() {
            true => set_mark(&self.db, self.log.end())?,
            false => self.index()?,
        }
        Ok(found)
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

    /// Moves rows out of the oldest log file when dead bytes outweigh live ones
    /// (`MessageLog::compaction_source`): a row's readable extents go, back to back, into
    /// one `Moved` frame in the newest file, at most `COMPACTION_BYTES` per index update,
    /// so the turn it runs in stays short; the file goes once nothing points into it. An
    /// extent the log lost (a power failure) is not copied: the row keeps it as
    /// `LOST_FILE`, so reads still skip it and say so, and its file no longer counts it.
    /// Runs only when the index has caught up, so the mark can move past what it writes.
    fn compact(&mut self) -> Result<(), StoreError> {
        let Some(source) = self.log.compaction_source() else { return Ok(()) };
        let sql = format!("SELECT room, {SEGMENT} FROM segments WHERE log_file = ?1 ORDER BY first_id");
        let io = |e: std::io::Error| StoreError(format!("history log: {e}"));
        let mut moving: Vec<Moving> = Vec::new();
        let mut bytes = 0;
        {
            let mut statement = self.db.prepare_cached(&sql)?;
            let mut rows = statement.query([source as i64])?;
            while bytes < COMPACTION_BYTES {
                let Some(row) = rows.next()? else { break };
                let room: String = row.get(0)?;
                let segment = StoredSegment::of(row, 1)?;
                let SegmentBytes::Logged(extents) = segment.bytes else { continue };
                let mut data = Vec::with_capacity(extents.len());
                let mut floor = segment.first_id;
                for extent in &extents {
                    let read = read_extent(&mut self.log, *extent, &room, FileBytes::Left, floor, segment.last_id)?;
                    floor = read.as_ref().and_then(|(_, records)| records.last()).map_or(floor, |m| m.id + 1);
                    bytes += read.as_ref().map_or(0, |(bytes, _)| bytes.len());
                    data.push(read.map(|(bytes, _)| bytes));
                }
                moving.push(Moving { room, first_id: segment.first_id, old: extents, data, new: Vec::new() });
            }
        }
        if moving.is_empty() {
            return Ok(());
        }
        let file = self.log.next_file().map_err(io)?;
        let mut heads = Vec::new();
        let mut spans = Vec::new();
        for m in &moving {
            let start = heads.len();
            let length = m.data.iter().flatten().map(|d| d.len() as u64).sum();
            frame_head(FrameKind::Moved, file, &m.room, 0, length, &mut heads); // a scan steps over it: no count
            spans.push(start..heads.len());
        }
        let mut parts = Vec::new();
        for (m, span) in moving.iter().zip(&spans) {
            parts.push(IoSlice::new(&heads[span.clone()]));
            parts.extend(m.data.iter().flatten().map(|d| IoSlice::new(d)));
        }
        let place = self.log.append(&parts).map_err(io)?;
        drop(parts);
        let mut offset = place.offset;
        for (m, span) in moving.iter_mut().zip(&spans) {
            offset += span.len() as u64;
            for data in &m.data {
                m.new.push(match data {
                    Some(data) => Extent { place: Place { file: place.file, offset }, length: data.len() as u64 },
                    None => Extent { place: Place { file: LOST_FILE, offset: 0 }, length: 0 },
                });
                offset += data.as_ref().map_or(0, |d| d.len() as u64);
            }
        }
        let tx = self.db.transaction()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE segments SET log_file = ?1, log_offset = ?2, log_length = ?3, log_extents = ?4
                 WHERE first_id = ?5 AND log_file = ?6",
            )?;
            for m in &moving {
                // The file its readable extents moved to (`LOST_FILE` if none was readable).
                let file = m.new.iter().map(|e| e.place.file).max().expect("a row has an extent");
                let length: u64 = m.new.iter().map(|e| e.length).sum();
                let extents = (m.new.len() > 1).then(|| encode_extents(&m.new));
                let at = (file as i64, m.new[0].place.offset as i64, length as i64);
                update.execute(params![at.0, at.1, at.2, extents, m.first_id as i64, source as i64])?;
            }
        }
        set_mark(&tx, self.log.end())?;
        tx.commit()?;
        for m in &moving {
            m.new.iter().filter(|e| e.place.file != LOST_FILE).for_each(|e| self.log.add_live(e.place.file, e.length));
            m.old.iter().for_each(|e| self.log.remove_live(e.place.file, e.length));
        }
        log::debug!("history: compaction moved {} row(s), {bytes} bytes, out of log file {source}", moving.len());
        self.log.collect().map_err(io)?;
        Ok(())
    }
}

/// A row compaction moves: where its extents were, their bytes (`None`: lost), and where
/// they are now.
struct Moving {
    room: String,
    first_id: u64,
    old: Vec<Extent>,
    data: Vec<Option<Vec<u8>>>,
    new: Vec<Extent>,
}

/// The file number of an extent the log lost, as compaction leaves it in its row (log
/// files are numbered from 1): reads skip it as lost, nothing counts its bytes.
const LOST_FILE: u64 = 0;

/// Commits between two updates of the index, by default (`--history-index-every`), and
/// so a restart's most to scan: the index then costs one insert per busy room every this
/// many turns, instead of a transaction (~50 µs) every turn.
pub const INDEX_EVERY: usize = 64;

/// How far the log may run ahead of an index that cannot catch up before commits fail
/// too, in half log files: four files (256 MiB with the default --history-log-file-size).
const MAX_BEHIND: u64 = 8;

/// Index updates between two starts of the WAL's writeback (each adds a few pages).
const WRITEBACK_EVERY: u64 = 32;

/// Most bytes one commit's compaction step copies (a few ms of the loop's time).
const COMPACTION_BYTES: usize = 4 << 20;

/// The columns `StoredSegment::of` reads, in order.
const SEGMENT: &str = "first_id, last_id, data, log_file, log_offset, log_length, log_extents";

/// A segment's row: its ids, and where its bytes are.
struct StoredSegment {
    first_id: u64,
    last_id: u64,
    bytes: SegmentBytes,
}

enum SegmentBytes {
    Inline(Vec<u8>),     // a row written before the message log: the bytes are in `data`
    Logged(Vec<Extent>), // in the message log: one frame's records, or several
}

/// Where one frame's records are in the message log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    place: Place,
    length: u64,
}

impl StoredSegment {
    /// Reads the `SEGMENT` columns, starting at column `at`.
    fn of(row: &rusqlite::Row, at: usize) -> rusqlite::Result<StoredSegment> {
        let (first_id, last_id): (i64, i64) = (row.get(at)?, row.get(at + 1)?);
        let file: Option<i64> = row.get(at + 3)?;
        let extents: Option<Vec<u8>> = row.get(at + 6)?;
        let bytes = match (file, extents) {
            (None, _) => SegmentBytes::Inline(row.get(at + 2)?),
            (Some(_), Some(extents)) => SegmentBytes::Logged(decode_extents(&extents)),
            (Some(file), None) => {
                let (offset, length): (i64, i64) = (row.get(at + 4)?, row.get(at + 5)?);
                let place = Place { file: file as u64, offset: offset as u64 };
                SegmentBytes::Logged(vec![Extent { place, length: length as u64 }])
            }
        };
        Ok(StoredSegment { first_id: first_id as u64, last_id: last_id as u64, bytes })
    }
}

/// A row's records as decoded, and whether any of its extents was missing.
struct Loaded {
    records: Vec<Record>,
    lost: bool,
}

/// Decodes a segment, reading its bytes from the log if they are there. An extent the
/// log does not hold (missing, short, or not ids of this row in order: bytes a power
/// loss kept from reaching the disk) is logged and skipped, and `lost` says so.
fn load(log: &mut MessageLog, segment: StoredSegment, room: &str, file_bytes: FileBytes) -> Result<Loaded, StoreError> {
    let extents = match segment.bytes {
        SegmentBytes::Inline(data) => return Ok(Loaded { records: decode(&data, room, file_bytes)?, lost: false }),
        SegmentBytes::Logged(extents) => extents,
    };
    let mut loaded = Loaded { records: Vec::new(), lost: false };
    for extent in extents {
        let floor = loaded.records.last().map_or(segment.first_id, |m| m.id + 1);
        match read_extent(log, extent, room, file_bytes, floor, segment.last_id)? {
            Some((_, records)) => loaded.records.extend(records),
            None => {
                loaded.lost = true;
                log::warn!(
                    "history: messages of a room among {}..={} are missing from log file {} (lost in a power failure?); skipped",
                    segment.first_id,
                    segment.last_id,
                    extent.place.file
                );
            }
        }
    }
    Ok(loaded)
}

/// An extent as read: its bytes and its records.
type ReadExtent = (Vec<u8>, Vec<Record>);

/// One extent's bytes and records, when the log holds them whole: `None` when they are
/// missing, short, or not ids of the row in order (from `floor` to `ceiling`).
fn read_extent(
    log: &mut MessageLog,
    extent: Extent,
    room: &str,
    file_bytes: FileBytes,
    floor: u64,
    ceiling: u64,
) -> Result<Option<ReadExtent>, StoreError> {
    if extent.place.file == LOST_FILE {
        return Ok(None);
    }
    let data = match log.read(extent.place, extent.length as usize) {
        Ok(data) => data,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof) => {
            return Ok(None)
        }
        Err(e) => return Err(StoreError(format!("history log: {e}"))),
    };
    Ok(decode(&data, room, file_bytes).ok().filter(|records| ascending(records, floor, ceiling)).map(|r| (data, r)))
}

/// Whether `records` is not empty and its ids increase, from at least `floor` to at
/// most `ceiling`.
fn ascending(records: &[Record], floor: u64, ceiling: u64) -> bool {
    let mut next = floor;
    for m in records {
        if m.id < next || m.id > ceiling {
            return false;
        }
        next = m.id.saturating_add(1);
    }
    !records.is_empty()
}

/// Extents as stored in `log_extents`: (file, offset, length) triples of little-endian u64.
fn encode_extents(extents: &[Extent]) -> Vec<u8> {
    let fields = extents.iter().flat_map(|e| [e.place.file, e.place.offset, e.length]);
    fields.flat_map(u64::to_le_bytes).collect()
}

/// The extents `encode_extents` wrote (a malformed tail is left out).
fn decode_extents(bytes: &[u8]) -> Vec<Extent> {
    let field = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let extent =
        |e: &[u8]| Extent { place: Place { file: field(&e[..8]), offset: field(&e[8..16]) }, length: field(&e[16..]) };
    bytes.chunks_exact(24).map(extent).collect()
}

/// Where a restart's scan for unindexed frames starts; `None` in a file from before
/// the mark (its rows were all indexed as they were committed).
fn mark(db: &Connection) -> rusqlite::Result<Option<Place>> {
    let sql = "SELECT file, offset FROM log_mark WHERE id = 1";
    let place =
        |row: &rusqlite::Row| Ok(Place { file: row.get::<_, i64>(0)? as u64, offset: row.get::<_, i64>(1)? as u64 });
    db.query_row(sql, [], place).optional()
}

/// Records that the index has every frame before `place`.
fn set_mark(db: &Connection, place: Place) -> rusqlite::Result<()> {
    let sql = "INSERT INTO log_mark (id, file, offset) VALUES (1, ?1, ?2)
               ON CONFLICT (id) DO UPDATE SET file = excluded.file, offset = excluded.offset";
    db.prepare_cached(sql)?.execute(params![place.file as i64, place.offset as i64])?;
    Ok(())
}

/// Adds `id` to `runs` (ids come in increasing order).
fn push_id(runs: &mut Vec<(u64, u64)>, id: u64) {
    match runs.last_mut() {
        Some((first, n)) if *first + *n == id => *n += 1,
        _ => runs.push((id, 1)),
    }
}

/// A segment's ids as stored in `id_runs`: runs of consecutive ids, (first id, how
/// many) pairs of little-endian u64. One room's burst is one run: 16 bytes.
fn encode_runs(runs: &[(u64, u64)]) -> Vec<u8> {
    runs.iter().flat_map(|(first, n)| first.to_le_bytes().into_iter().chain(n.to_le_bytes())).collect()
}

/// The `index`th id (from 0) in `id_runs`; `None` past the end or on a malformed value.
fn nth_id(runs: &[u8], mut index: usize) -> Option<u64> {
    for run in runs.chunks_exact(16) {
        let first = u64::from_le_bytes(run[..8].try_into().ok()?);
        let n = u64::from_le_bytes(run[8..].try_into().ok()?);
        match (index as u64) < n {
            true => return first.checked_add(index as u64),
            false => index -= n as usize,
        }
    }
    None
}

/// A segment's bytes (a logged one's extents back to back); `None` when the log no
/// longer has them (see `load`).
fn segment_bytes(log: &mut MessageLog, segment: &StoredSegment) -> Result<Option<Vec<u8>>, StoreError> {
    let extents = match &segment.bytes {
        SegmentBytes::Inline(data) => return Ok(Some(data.clone())),
        SegmentBytes::Logged(extents) => extents,
    };
    let mut data = Vec::new();
    for extent in extents {
        match log.read(extent.place, extent.length as usize) {
            Ok(bytes) => data.extend(bytes),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof) => {
                return Ok(None)
            }
            Err(e) => return Err(StoreError(format!("history log: {e}"))),
        }
    }
    Ok(Some(data))
}

/// Bytes of the message log each file holds that rows point to.
fn live_log_bytes(db: &Connection) -> rusqlite::Result<BTreeMap<u64, u64>> {
    let mut live = BTreeMap::new();
    let sql = "SELECT log_file, sum(log_length) FROM segments WHERE log_file IS NOT NULL AND log_extents IS NULL GROUP BY log_file";
    let mut statement = db.prepare(sql)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        *live.entry(row.get::<_, i64>(0)? as u64).or_default() += row.get::<_, i64>(1)? as u64;
    }
    let mut statement = db.prepare("SELECT log_extents FROM segments WHERE log_extents IS NOT NULL")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        for extent in decode_extents(&row.get::<_, Vec<u8>>(0)?) {
            *live.entry(extent.place.file).or_default() += extent.length;
        }
    }
    Ok(live)
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

/// The messages of one room in one commit: one frame in the log, their bytes back to
/// back after its head.
struct Segment<'a> {
    room: &'a str,            // the room they share
    records: Vec<&'a Record>, // in the order they were routed
    offset: u64,              // where their bytes start, from the start of the commit's write
    length: u64,              // how many bytes they take
}

/// One room's frames committed since the index last caught up: one index row to be.
#[derive(Default)]
struct Unindexed {
    room: String,
    first_id: u64,         // the row's key
    last_id: u64,          // for reads newest first
    count: usize,          // messages in it
    runs: Vec<(u64, u64)>, // their ids (`id_runs`)
    extents: Vec<Extent>,  // where each frame's records are, in the order written
    files: Vec<u64>,       // the ids of shared files among them (`files` table)
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
                whole.push(segment);
            }
        }
    }
    let mut delete = tx.prepare_cached("DELETE FROM segments WHERE first_id = ?1")?;
    let mut delete_files = tx.prepare_cached("DELETE FROM files WHERE segment = ?1")?;
    for segment in whole {
        delete.execute([segment.first_id as i64])?;
        delete_files.execute([segment.first_id as i64])?;
        if let SegmentBytes::Logged(extents) = segment.bytes {
            trimmed.freed.extend(extents.iter().map(|e| (e.place.file, e.length)));
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
/// (`ROOMS=N` spreads each commit's messages over N rooms, round robin; the slowest
/// commit, one that brings the index up, is printed too)
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
        let rooms: u64 = std::env::var("ROOMS").map_or(1, |v| v.parse().unwrap());
        let mut store = super::SqliteStore::open(&dir.join("p.db"), keep).unwrap();
        let t = std::time::Instant::now();
        let mut id = 0;
        let mut slowest = std::time::Duration::ZERO;
        for _ in 0..(128000 / batch) {
            for _ in 0..batch {
                id += 1;
                store.append(super::Record {
                    id,
                    room: format!("room-{}", id % rooms),
                    from: "guest-1".into(),
                    to: None,
                    binary: true,
                    body: vec![7; 64],
                    ts: 1,
                    file: None,
                });
            }
            let commit = std::time::Instant::now();
            store.commit().unwrap();
            slowest = slowest.max(commit.elapsed());
        }
        let e = t.elapsed();
        eprintln!(
            "batch {batch} keep {keep} rooms {rooms}: {id} messages in {e:?}: {:?} each; slowest commit {slowest:?}",
            e / id as u32
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
