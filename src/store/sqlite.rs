//! SQLite history: one file, WAL mode, one transaction per loop turn.
//!
//! Owns: the database connection, the schema and its migrations, the pending inserts of
//! the current turn, and retention. Must not touch: sockets, the clock.
//!
//! The file is opened with an exclusive lock, so a second pollcast on the same file
//! fails at start with a clear message instead of two servers handing out the same ids.
//! `synchronous = NORMAL` in WAL mode makes every commit durable against a crash of the
//! process (`kill -9`); against power loss the last commits may be lost.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Page, Query, StoreError, StoredMessage};

/// Schema migrations, in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: [&str; 1] = [
    // 1: messages keyed by id (the rowid: rows of any size stay cheap to insert), an index
    //    on (room, id) for per-room reads and retention, and how far each room was trimmed.
    //    (A WITHOUT ROWID table clustered on (room, id) was tried: a little faster for
    //    64-byte rows, five times slower for 1 KiB ones, as SQLite's docs warn.)
    "CREATE TABLE messages (
         id        INTEGER PRIMARY KEY,
         room      TEXT    NOT NULL,
         sender    TEXT    NOT NULL,
         recipient TEXT,
         binary    INTEGER NOT NULL,
         body      BLOB    NOT NULL,
         ts        INTEGER NOT NULL
     );
     CREATE INDEX messages_by_room ON messages (room, id);
     CREATE TABLE rooms (
         room            TEXT PRIMARY KEY,
         trimmed_through INTEGER NOT NULL
     );",
];

/// Rows per multi-row INSERT statement (7 parameters each, well under SQLite's limit).
const INSERT_CHUNK: usize = 32;

/// Retention trims a room once it holds this fraction more than `keep` (1/16), so the
/// cost of finding the cut-off is spread over many inserts.
const TRIM_SLACK_DIVISOR: usize = 16;

/// The history database.
pub struct SqliteStore {
    db: Connection,                 // the one connection, held by the loop thread
    keep: usize,                    // messages kept per room (`--history-keep`)
    pending: Vec<StoredMessage>,    // appended this turn, committed before the flush
    counts: HashMap<String, usize>, // rows per room, learnt lazily, to know when to trim
    last_id: u64,                   // highest id stored or pending
}

impl SqliteStore {
    /// Opens or creates the database, takes the exclusive lock, runs migrations. Errors
    /// name the file and say what is wrong (in use, not a database, read-only, ...).
    pub fn open(path: &Path, keep: usize) -> Result<SqliteStore, StoreError> {
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
            db.query_row("SELECT max(id) FROM messages", [], |row| row.get(0)).map_err(describe)?;
        Ok(SqliteStore { db, keep, pending: Vec::new(), counts: HashMap::new(), last_id: last_id.unwrap_or(0) as u64 })
    }

    /// The highest message id ever stored: new ids continue after it.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Queues a message for this turn's commit.
    pub fn append(&mut self, message: StoredMessage) {
        self.last_id = self.last_id.max(message.id);
        self.pending.push(message);
    }

    /// Messages appended but not committed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes every pending message in one transaction, then trims rooms over their
    /// retention. Returns how many were written. On error nothing of this batch is
    /// stored and the batch is dropped (the caller reports it; the relay goes on).
    pub fn commit(&mut self) -> Result<usize, StoreError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let batch = std::mem::take(&mut self.pending);
        let tx = self.db.transaction()?;
        let mut touched: HashMap<&str, usize> = HashMap::new();
        // Rows go in INSERT_CHUNK at a time through one cached multi-row statement (a
        // third of the cost of one statement per row), the rest one by one.
        let mut chunks = batch.chunks_exact(INSERT_CHUNK);
        for chunk in &mut chunks {
            insert_rows(&tx, chunk)?;
        }
        for m in chunks.remainder() {
            insert_rows(&tx, std::slice::from_ref(m))?;
        }
        for m in &batch {
            *touched.entry(m.room.as_str()).or_default() += 1;
        }
        for (room, added) in touched {
            let count = match self.counts.get(room) {
                Some(&known) => known + added,
                None => tx.query_row("SELECT count(*) FROM messages WHERE room = ?1", [room], |row| row.get(0))?,
            };
            let count =
                if count > self.keep + self.keep / TRIM_SLACK_DIVISOR { trim(&tx, room, self.keep)? } else { count };
            self.counts.insert(room.to_owned(), count);
        }
        tx.commit()?;
        Ok(batch.len())
    }

    /// Reads part of a room's history, at most `cap` messages. Callers commit first, so
    /// a reader never misses a message routed earlier in the same turn.
    /// `text_only`: leave binary messages out (for clients that cannot show them).
    pub fn query(&mut self, room: &str, query: Query, cap: usize, text_only: bool) -> Result<Page, StoreError> {
        let cap = cap.max(1);
        let columns = match text_only {
            true => "SELECT id, room, sender, recipient, binary, body, ts FROM messages WHERE binary = 0 AND",
            false => "SELECT id, room, sender, recipient, binary, body, ts FROM messages WHERE",
        };
        // Every query is a range of the (room, id) index.
        let (sql, key, n, newest_first) = match query {
            Query::Last(n) => (format!("{columns} room = ?1 AND id > ?2 ORDER BY id DESC LIMIT ?3"), 0, n, true),
            Query::Before { before, n } => {
                (format!("{columns} room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"), before, n, true)
            }
            Query::Since(since) => {
                (format!("{columns} room = ?1 AND id > ?2 ORDER BY id ASC LIMIT ?3"), since, cap, false)
            }
        };
        let n = n.min(cap);
        let mut statement = self.db.prepare_cached(&sql)?;
        let rows =
            statement.query_map(params![room, key.min(i64::MAX as u64) as i64, (n + 1) as i64], row_to_message)?;
        let mut messages = rows.collect::<Result<Vec<_>, _>>()?;
        let more = messages.len() > n;
        messages.truncate(n);
        if newest_first {
            messages.reverse();
        }
        let recovered = match query {
            Query::Since(since) => Some(!more && self.trimmed_through(room)? <= since),
            _ => None,
        };
        Ok(Page { messages, more, recovered })
    }

    /// The highest id retention has deleted from `room` (0 if none).
    fn trimmed_through(&self, room: &str) -> Result<u64, StoreError> {
        let sql = "SELECT trimmed_through FROM rooms WHERE room = ?1";
        let through: Option<i64> = self.db.query_row(sql, [room], |row| row.get(0)).optional()?;
        Ok(through.unwrap_or(0) as u64)
    }
}

/// Deletes all but the newest `keep` messages of `room` (a range of the (room, id) index),
/// and records the cut so recovery can tell a client it missed something. Returns the
/// rows left: exactly `keep`.
fn trim(tx: &rusqlite::Transaction, room: &str, keep: usize) -> Result<usize, StoreError> {
    let cut_sql = "SELECT id FROM messages WHERE room = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2";
    let cut: Option<i64> =
        tx.prepare_cached(cut_sql)?.query_row(params![room, keep as i64], |row| row.get(0)).optional()?;
    if let Some(cut) = cut {
        tx.prepare_cached("DELETE FROM messages WHERE room = ?1 AND id <= ?2")?.execute(params![room, cut])?;
        tx.prepare_cached(
            "INSERT INTO rooms (room, trimmed_through) VALUES (?1, ?2)
             ON CONFLICT (room) DO UPDATE SET trimmed_through = max(trimmed_through, excluded.trimmed_through)",
        )?
        .execute(params![room, cut])?;
    }
    Ok(keep)
}

/// Inserts `rows` with one cached statement of `rows.len()` value tuples.
fn insert_rows(tx: &rusqlite::Transaction, rows: &[StoredMessage]) -> rusqlite::Result<()> {
    let tuples = vec!["(?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
    let sql = format!("INSERT INTO messages (id, room, sender, recipient, binary, body, ts) VALUES {tuples}");
    let mut insert = tx.prepare_cached(&sql)?;
    let mut at = 1;
    for m in rows {
        insert.raw_bind_parameter(at, m.id as i64)?;
        insert.raw_bind_parameter(at + 1, &m.room)?;
        insert.raw_bind_parameter(at + 2, &m.from)?;
        insert.raw_bind_parameter(at + 3, &m.to)?;
        insert.raw_bind_parameter(at + 4, m.binary)?;
        insert.raw_bind_parameter(at + 5, &m.body)?;
        insert.raw_bind_parameter(at + 6, m.ts as i64)?;
        at += 7;
    }
    insert.raw_execute()?;
    Ok(())
}

fn row_to_message(row: &rusqlite::Row) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get::<_, i64>(0)? as u64,
        room: row.get(1)?,
        from: row.get(2)?,
        to: row.get(3)?,
        binary: row.get(4)?,
        body: row.get(5)?,
        ts: row.get::<_, i64>(6)? as u64,
    })
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
    // them eight times rarer (measured: 8.2 -> 1.9 µs per row at 64 rows per commit).
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
mod tests {
    use super::*;

    fn message(id: u64, room: &str) -> StoredMessage {
        StoredMessage {
            id,
            room: room.into(),
            from: "ann".into(),
            to: None,
            binary: false,
            body: format!("m{id}").into_bytes(),
            ts: id * 10,
        }
    }

    fn temp_db() -> (tempdir::Dir, std::path::PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("history.db");
        (dir, path)
    }

    /// A throwaway directory under the system temp dir, removed on drop.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("pollcast-store-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn commit_query_and_ids_across_reopen() {
        let (_dir, path) = temp_db();
        let mut store = SqliteStore::open(&path, 100).unwrap();
        for id in 1..=10 {
            store.append(message(id, if id % 2 == 0 { "even" } else { "odd" }));
        }
        assert_eq!(store.commit().unwrap(), 10);
        assert_eq!(ids(&store.query("even", Query::Last(3), 500, false).unwrap()), vec![6, 8, 10]);
        let page = store.query("even", Query::Before { before: 6, n: 10 }, 500, false).unwrap();
        assert_eq!((ids(&page), page.more), (vec![2, 4], false));
        let page = store.query("odd", Query::Last(2), 500, false).unwrap();
        assert_eq!((ids(&page), page.more), (vec![7, 9], true));
        drop(store);
        let store = SqliteStore::open(&path, 100).unwrap();
        assert_eq!(store.last_id(), 10, "ids continue after a restart");
    }

    #[test]
    fn retention_keeps_the_newest_and_recovery_reports_gaps() {
        let (_dir, path) = temp_db();
        let mut store = SqliteStore::open(&path, 16).unwrap();
        for id in 1..=100 {
            store.append(message(id, "r"));
            store.commit().unwrap();
        }
        let all = store.query("r", Query::Last(500), 500, false).unwrap();
        assert!(all.messages.len() >= 16 && all.messages.len() <= 17, "{}", all.messages.len());
        assert_eq!(all.messages.last().unwrap().id, 100);
        let recent = store.query("r", Query::Since(95), 500, false).unwrap();
        assert_eq!((ids(&recent), recent.recovered), (vec![96, 97, 98, 99, 100], Some(true)));
        let old = store.query("r", Query::Since(10), 500, false).unwrap();
        assert_eq!(old.recovered, Some(false), "messages after 10 were trimmed");
        let capped = store.query("r", Query::Since(90), 3, false).unwrap();
        assert_eq!((ids(&capped), capped.more, capped.recovered), (vec![91, 92, 93], true, Some(false)));
    }

    #[test]
    fn a_second_process_is_refused() {
        let (_dir, path) = temp_db();
        let _first = SqliteStore::open(&path, 10).unwrap();
        let second = SqliteStore::open(&path, 10);
        let err = second.err().expect("a second open must fail");
        assert!(err.0.contains("in use"), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let (_dir, path) = temp_db();
        std::fs::write(&path, b"this is not a database, just some text padded out to look like one").unwrap();
        let err = SqliteStore::open(&path, 10).err().expect("must fail");
        assert!(err.0.contains("history.db"), "{err}");
    }

    #[test]
    fn binary_and_dm_rows_round_trip() {
        let (_dir, path) = temp_db();
        let mut store = SqliteStore::open(&path, 10).unwrap();
        let mut dm = message(1, super::super::DM_ROOM);
        dm.to = Some("bo".into());
        dm.binary = true;
        dm.body = vec![0, 255];
        store.append(dm.clone());
        store.commit().unwrap();
        assert_eq!(store.query(super::super::DM_ROOM, Query::Last(1), 10, false).unwrap().messages, vec![dm]);
    }
}
