//! Tests of `sqlite.rs`.

use super::*;

fn message(id: u64, room: &str) -> Record {
    Record {
        id,
        room: room.into(),
        from: "ann".into(),
        to: None,
        binary: false,
        body: format!("m{id}").into_bytes(),
        ts: id * 10,
        file: None,
    }
}

fn shared_file(id: u64, room: &str, bytes: &[u8]) -> Record {
    let file = FileMeta { name: "a b.png".into(), mime: "image/png".into(), size: bytes.len() as u64 };
    Record { binary: true, body: bytes.to_vec(), file: Some(file), ..message(id, room) }
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
fn big_commits_are_trimmed_exactly_even_inside_a_segment() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 10).unwrap();
    // 7 + 7 messages in two commits (segments), then 3 more: 17 > 10 + 10/16, so
    // trimming drops the first segment whole and the front of the second.
    for range in [1..=7, 8..=14, 15..=17] {
        range.for_each(|id| store.append(message(id, "r")));
        store.commit().unwrap();
    }
    let page = store.query("r", Query::Last(100), 100, false).unwrap();
    assert_eq!(ids(&page), (8..=17).collect::<Vec<_>>());
    assert_eq!(store.query("r", Query::Since(7), 100, false).unwrap().recovered, Some(true));
    assert_eq!(store.query("r", Query::Since(6), 100, false).unwrap().recovered, Some(false));
}

#[test]
fn one_commit_many_rooms_and_paging_inside_segments() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 1000).unwrap();
    for id in 1..=40 {
        let mut m = message(id, if id % 3 == 0 { "b" } else { "a" });
        m.binary = id % 5 == 0;
        store.append(m);
    }
    store.commit().unwrap();
    let b: Vec<u64> = (1..=40).filter(|id| id % 3 == 0).collect();
    assert_eq!(ids(&store.query("b", Query::Last(100), 100, false).unwrap()), b);
    // Paging back through text-only history, 4 at a time, finds every text message once.
    let text: Vec<u64> = (1..=40).filter(|id| id % 3 != 0 && id % 5 != 0).collect();
    let (mut seen, mut before) = (Vec::new(), u64::MAX);
    loop {
        let page = store.query("a", Query::Before { before, n: 4 }, 100, true).unwrap();
        let got = ids(&page);
        seen.splice(0..0, got.iter().copied());
        match (got.first(), page.more) {
            (Some(&oldest), true) => before = oldest,
            _ => break,
        }
    }
    assert_eq!(seen, text);
    let since = store.query("a", Query::Since(30), 3, false).unwrap();
    assert_eq!((ids(&since), since.more), (vec![31, 32, 34], true));
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
    let mut dm = message(1, crate::chat::record::DM_ROOM);
    dm.to = Some("bo".into());
    dm.binary = true;
    dm.body = vec![0, 255];
    store.append(dm.clone());
    store.commit().unwrap();
    assert_eq!(store.query(crate::chat::record::DM_ROOM, Query::Last(1), 10, false).unwrap().messages, vec![dm]);
}

#[test]
fn files_are_read_by_id_with_their_bytes_and_listed_without() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 10).unwrap();
    let file = shared_file(2, "a", &[0x89, b'P', b'N', b'G', 0, 1, 2]);
    for record in [message(1, "a"), file.clone(), message(3, "b"), message(4, "a")] {
        store.append(record);
    }
    store.commit().unwrap();
    assert_eq!(store.file(2).unwrap(), Some(file.clone()));
    assert_eq!(store.file(1).unwrap(), None, "a message is not a file");
    assert_eq!(store.file(99).unwrap(), None);
    assert_eq!(store.file(u64::MAX).unwrap(), None);
    // A page lists the file (also for text-only readers), without its bytes.
    let page = store.query("a", Query::Last(10), 10, true).unwrap();
    assert_eq!(ids(&page), [1, 2, 4]);
    let listed = &page.messages[1];
    assert_eq!((listed.body.len(), listed.file.as_ref().map(|f| f.size)), (0, Some(7)));
    // Still there after a reopen (the index is in the file).
    drop(store);
    let mut store = SqliteStore::open(&path, 10).unwrap();
    assert_eq!(store.file(2).unwrap(), Some(file));
}

#[test]
fn retention_takes_files_and_their_index_entries() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 2).unwrap();
    store.append(shared_file(1, "a", b"old"));
    store.commit().unwrap();
    for id in 2..=6 {
        store.append(message(id, "a"));
        store.commit().unwrap();
    }
    assert_eq!(store.file(1).unwrap(), None, "trimmed");
    let left: i64 = store.db.query_row("SELECT count(*) FROM files", [], |row| row.get(0)).unwrap();
    assert_eq!(left, 0, "the index entry went with its segment");
}

#[test]
fn a_version_1_file_is_migrated_and_its_rows_still_read() {
    let (_dir, path) = temp_db();
    {
        // A database as the version before files left it: schema 1, one segment.
        let db = Connection::open(&path).unwrap();
        db.execute_batch(&format!("BEGIN; {}; PRAGMA user_version = 1; COMMIT;", MIGRATIONS[0])).unwrap();
        let mut data = Vec::new();
        for m in [message(1, "a"), Record { binary: true, body: vec![1, 2], ..message(2, "a") }] {
            encode_head(&m, &mut data);
            data.extend_from_slice(&m.body);
        }
        db.execute("INSERT INTO segments (first_id, room, last_id, count, data) VALUES (1, 'a', 2, 2, ?1)", [&data])
            .unwrap();
    }
    let mut store = SqliteStore::open(&path, 10).unwrap();
    let version: usize = store.db.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len());
    let page = store.query("a", Query::Last(10), 10, false).unwrap();
    assert_eq!(page.messages, [message(1, "a"), Record { binary: true, body: vec![1, 2], ..message(2, "a") }]);
    assert_eq!(store.last_id(), 2);
    store.append(shared_file(3, "a", b"new"));
    store.commit().unwrap();
    assert_eq!(store.file(3).unwrap().map(|f| f.body), Some(b"new".to_vec()));
}

/// Files in the message log directory beside `path`.
fn log_files(path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(log_dir(path)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Rows in the index.
fn rows(store: &SqliteStore) -> i64 {
    store.db.query_row("SELECT count(*) FROM segments", [], |row| row.get(0)).unwrap()
}

#[test]
fn the_log_write_is_the_commit_and_rows_only_say_where() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 100).unwrap();
    store.append(message(1, "a"));
    store.append(shared_file(2, "a", b"png bytes"));
    store.commit().unwrap();
    let written = std::fs::metadata(log_dir(&path).join("00000001.log")).unwrap().len();
    assert!(written > 0, "the commit wrote the log");
    assert_eq!(rows(&store), 0, "the index catches up later");
    assert_eq!(ids(&store.query("a", Query::Last(10), 10, false).unwrap()), [1, 2], "a read brings it up first");
    let (data, file, length): (Vec<u8>, i64, i64) = store
        .db
        .query_row("SELECT data, log_file, log_length FROM segments", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap();
    assert!(data.is_empty(), "the row keeps no bytes");
    assert_eq!(file, 1);
    let mut head = Vec::new();
    frame_head(FrameKind::New, 1, "a", 2, length as u64, &mut head);
    assert_eq!(written, head.len() as u64 + length as u64, "one frame: its head, then the records");
    drop(store);
    let mut store = SqliteStore::open(&path, 100).unwrap();
    assert_eq!(ids(&store.query("a", Query::Last(10), 10, false).unwrap()), [1, 2]);
    assert_eq!(store.file(2).unwrap().map(|f| f.body), Some(b"png bytes".to_vec()));
}

/// An index that cannot catch up does not let the log (and what waits for the index in
/// memory) grow without bound: four log files ahead, commits fail and write nothing, and
/// once it catches up every message committed before is there.
#[test]
fn commits_fail_once_the_log_is_far_ahead_of_an_index_that_cannot_catch_up() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open_with(&path, 1000, 4096).unwrap();
    let stuck = "CREATE TRIGGER stuck BEFORE INSERT ON segments BEGIN SELECT RAISE(ABORT, 'stuck'); END;";
    store.db.execute_batch(stuck).unwrap();
    let busy = |id: u64| Record { body: vec![b'x'; 200], ..message(id, "a") };
    let (mut committed, mut failed) = (Vec::new(), 0);
    for id in 1..=200 {
        store.append(busy(id));
        match store.commit() {
            Ok(_) => committed.push(id),
            Err(e) => {
                assert!(e.to_string().contains("behind the log"), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 100, "{} committed, {failed} refused", committed.len());
    let log_bytes: u64 = std::fs::read_dir(log_dir(&path)).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
    assert!(log_bytes <= 5 * 4096, "{log_bytes} bytes of log for an index four files behind");

    store.db.execute_batch("DROP TRIGGER stuck").unwrap();
    assert_eq!(ids(&store.query("a", Query::Last(1000), 1000, false).unwrap()), committed, "a read catches up");
    store.append(busy(201));
    store.commit().unwrap();
    committed.push(201);
    assert_eq!(ids(&store.query("a", Query::Last(1000), 1000, false).unwrap()), committed);

    // Without a read, the refused commits themselves bring the retry (one in `index_every`).
    store.set_index_every(4);
    store.db.execute_batch(stuck).unwrap();
    let mut refused = 0;
    for id in 202..=400 {
        store.append(busy(id));
        match store.commit() {
            Ok(_) => committed.push(id),
            Err(_) => refused += 1,
        }
        if refused == 10 {
            store.db.execute_batch("DROP TRIGGER stuck").unwrap();
        }
    }
    assert!(refused >= 10, "{refused}");
    assert!(refused < 10 + 4, "{refused} refused: the retry comes within `index_every` commits");
    assert_eq!(ids(&store.query("a", Query::Last(1000), 1000, false).unwrap()), committed);
}

#[test]
fn retention_frees_log_files_and_compaction_moves_what_a_quiet_room_pins() {
    let (_dir, path) = temp_db();
    // Files of 4 KiB; 10 kept per room; each busy message about 230 bytes.
    let mut store = SqliteStore::open_with(&path, 10, 4096).unwrap();
    store.append(message(1, "quiet"));
    store.commit().unwrap();
    let busy = |id: u64| Record { body: vec![b'x'; 200], ..message(id, "busy") };
    for id in 2..2000 {
        store.append(busy(id));
        if id % 5 == 0 {
            store.commit().unwrap();
        }
    }
    store.commit().unwrap();
    // Before the index catches up, the log holds at most `INDEX_EVERY` commits more
    // (64 x 5 x ~270 bytes, 21 files of 4 KiB) than what is live.
    let files = log_files(&path);
    assert!(files.len() <= 4 + 21, "{files:?}");
    assert_eq!(ids(&store.query("quiet", Query::Last(10), 10, false).unwrap()), [1]);
    // Live: 10 (+ slack) busy messages and the quiet one, a few KiB: a handful of files,
    // not the ~110 KiB written.
    let files = log_files(&path);
    assert!(files.len() <= 4, "{files:?}");
    assert!(!files.contains(&"00000001.log".to_owned()), "the quiet room's message moved out of file 1");
    assert_eq!(ids(&store.query("busy", Query::Last(3), 10, false).unwrap()), [1997, 1998, 1999]);
    drop(store);
    let mut store = SqliteStore::open_with(&path, 10, 4096).unwrap();
    assert_eq!(ids(&store.query("quiet", Query::Last(10), 10, false).unwrap()), [1], "moves survive a reopen");
}

#[test]
fn a_segment_the_log_lost_is_skipped_and_recovery_says_so() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 100).unwrap();
    for id in 1..=3 {
        store.append(message(id, "a"));
        store.commit().unwrap();
    }
    drop(store);
    // As after a power failure: the log file's last bytes never reached the disk.
    let file = log_dir(&path).join("00000001.log");
    let len = std::fs::metadata(&file).unwrap().len();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, [&bytes[..(len as usize - 24)], &[0u8; 24][..]].concat()).unwrap();
    let mut store = SqliteStore::open(&path, 100).unwrap();
    assert_eq!(ids(&store.query("a", Query::Last(10), 10, false).unwrap()), [1, 2]);
    let page = store.query("a", Query::Since(0), 10, false).unwrap();
    assert_eq!((ids(&page), page.recovered), (vec![1, 2], Some(false)));
    store.append(message(4, "a"));
    store.commit().unwrap();
    assert_eq!(ids(&store.query("a", Query::Last(10), 10, false).unwrap()), [1, 2, 4]);
}

#[test]
fn id_runs_list_a_segments_ids_compactly() {
    let id_runs = |ids: &mut dyn Iterator<Item = u64>| {
        let mut runs = Vec::new();
        ids.for_each(|id| push_id(&mut runs, id));
        encode_runs(&runs)
    };
    let runs = id_runs(&mut [5, 6, 7, 9, 12, 13].into_iter());
    assert_eq!(runs.len(), 3 * 16);
    let listed: Vec<Option<u64>> = (0..7).map(|i| nth_id(&runs, i)).collect();
    assert_eq!(listed, [Some(5), Some(6), Some(7), Some(9), Some(12), Some(13), None]);
    assert_eq!(id_runs(&mut (100..400)).len(), 16, "one room's burst is one run");
    assert_eq!(nth_id(&runs[..20], 3), None, "a malformed value finds nothing");
}

/// Drops the store as a crash would: what the index has not caught up with stays in
/// the log only.
fn crash(mut store: SqliteStore) {
    store.unindexed.clear();
    drop(store);
}

#[test]
fn a_crash_before_the_index_catches_up_loses_nothing_committed() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 100).unwrap();
    for id in 1..=100 {
        match id {
            50 => store.append(shared_file(50, "files", b"file bytes")),
            _ => store.append(message(id, if id % 2 == 0 { "even" } else { "odd" })),
        }
        if id % 10 == 0 {
            store.commit().unwrap();
        }
    }
    store.append(message(101, "odd")); // appended, never committed: not stored
    assert!(store.unindexed_commits > 0 && rows(&store) == 0);
    crash(store);
    let mut store = SqliteStore::open(&path, 100).unwrap();
    assert_eq!(store.last_id(), 100, "ids go on after the highest one found");
    let even: Vec<u64> = (2..=100).step_by(2).filter(|id| *id != 50).collect();
    assert_eq!(ids(&store.query("even", Query::Last(100), 100, false).unwrap()), even);
    let odd = store.query("odd", Query::Since(0), 100, false).unwrap();
    assert_eq!(odd.messages.len(), 50);
    assert_eq!(odd.recovered, Some(true));
    assert_eq!(store.file(50).unwrap().map(|f| f.body), Some(b"file bytes".to_vec()));
    // Found once: the mark moved past them, so a second start scans nothing.
    drop(store);
    let mut store = SqliteStore::open(&path, 100).unwrap();
    assert_eq!(ids(&store.query("even", Query::Last(100), 100, false).unwrap()), even);
    // A row takes a room's frames (5 messages each) until it holds an eighth of keep (12):
    // 15 + 15 + 15 + 5 messages per room, and one for the file's room.
    assert_eq!(rows(&store), 9);
}

#[test]
fn a_torn_frame_and_an_older_files_frame_end_the_scan() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open(&path, 100).unwrap();
    for id in 1..=3 {
        store.append(message(id, "a"));
        store.commit().unwrap();
    }
    crash(store);
    let file = log_dir(&path).join("00000001.log");
    let mut bytes = std::fs::read(&file).unwrap();
    let whole = bytes.len();
    // A frame of file 7 (a spare written over keeps frames of its old number), then a
    // frame of this file whose records were cut short by the crash.
    let mut old = Vec::new();
    frame_head(FrameKind::New, 7, "a", 1, 0, &mut old);
    let mut torn = Vec::new();
    frame_head(FrameKind::New, 1, "a", 1, 64, &mut torn);
    for tail in [old, torn] {
        bytes.truncate(whole);
        bytes.extend(&tail);
        std::fs::write(&file, &bytes).unwrap();
        let mut store = SqliteStore::open(&path, 100).unwrap();
        assert_eq!(ids(&store.query("a", Query::Last(10), 10, false).unwrap()), [1, 2, 3]);
        crash_after_rewind(store, &path);
    }
}

/// Closes the store and sets the mark back to the log's start, so the next open scans
/// file 1 again, as if the index had never caught up.
fn crash_after_rewind(store: SqliteStore, path: &std::path::Path) {
    drop(store);
    let db = Connection::open(path).unwrap();
    db.execute("DELETE FROM segments", []).unwrap();
    set_mark(&db, Place { file: 1, offset: 0 }).unwrap();
}

/// Busy traffic in room `busy` (~230 bytes a message, a commit every 5) until `last`,
/// then a read, so the index and compaction have caught up.
fn busy_traffic(store: &mut SqliteStore, ids: std::ops::Range<u64>) {
    for id in ids {
        store.append(Record { body: vec![b'x'; 200], ..message(id, "busy") });
        if id % 5 == 0 {
            store.commit().unwrap();
        }
    }
    store.commit().unwrap();
    store.query("busy", Query::Last(1), 1, false).unwrap();
}

#[test]
fn compaction_keeps_what_a_power_failure_spared_in_a_row() {
    let (_dir, path) = temp_db();
    // 16 kept per room: a row takes two messages (an eighth), and the busy room's few
    // KiB live let compaction empty file 1.
    let mut store = SqliteStore::open_with(&path, 16, 4096).unwrap();
    for id in 1..=2 {
        store.append(message(id, "quiet"));
        store.commit().unwrap();
    }
    assert_eq!(ids(&store.query("quiet", Query::Last(10), 10, false).unwrap()), [1, 2]);
    let extents: Vec<u8> =
        store.db.query_row("SELECT log_extents FROM segments WHERE room = 'quiet'", [], |row| row.get(0)).unwrap();
    let extents = decode_extents(&extents);
    assert_eq!(extents.len(), 2, "one row, a frame of each commit");
    // As after a power failure: the second frame's records read back as zeros.
    let lost = extents[1];
    let file = std::fs::OpenOptions::new().write(true).open(log_dir(&path).join("00000001.log")).unwrap();
    std::os::unix::fs::FileExt::write_at(&file, &vec![0; lost.length as usize], lost.place.offset).unwrap();
    assert_eq!(ids(&store.query("quiet", Query::Last(10), 10, false).unwrap()), [1]);
    busy_traffic(&mut store, 3..2000);
    assert!(!log_files(&path).contains(&"00000001.log".to_owned()), "the quiet row moved out of file 1");
    let page = store.query("quiet", Query::Since(0), 10, false).unwrap();
    assert_eq!((ids(&page), page.recovered), (vec![1], Some(false)), "the readable frame moved, the lost one is said");
}

#[test]
fn a_log_file_the_disk_lost_does_not_stop_compaction() {
    let (_dir, path) = temp_db();
    let mut store = SqliteStore::open_with(&path, 10, 4096).unwrap();
    store.append(message(1, "quiet"));
    store.commit().unwrap();
    drop(store);
    std::fs::File::create(log_dir(&path).join("00000001.log")).unwrap(); // emptied, as by a power failure
    let mut store = SqliteStore::open_with(&path, 10, 4096).unwrap();
    busy_traffic(&mut store, 2..2000);
    let files = log_files(&path);
    assert!(files.len() <= 4, "compaction went on past the lost file: {files:?}");
    let page = store.query("quiet", Query::Since(0), 10, false).unwrap();
    assert_eq!((ids(&page), page.recovered), (vec![], Some(false)));
}
