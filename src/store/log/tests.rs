//! Tests of `log.rs`, on real files in a throwaway directory.

use super::*;

fn temp_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pollcast-log-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Appends as the store does: asks for the file first (which may start a new one).
fn put(log: &mut MessageLog, parts: &[IoSlice]) -> Place {
    log.next_file().unwrap();
    log.append(parts).unwrap()
}

#[test]
fn appends_read_back_where_they_were_put() {
    let dir = temp_dir();
    let mut log = MessageLog::open(&dir, DEFAULT_FILE_SIZE, BTreeMap::new(), u64::MAX).unwrap();
    let a = put(&mut log, &[IoSlice::new(b"head"), IoSlice::new(b"body")]);
    let b = put(&mut log, &[IoSlice::new(b"second")]);
    assert_eq!((a.file, a.offset, b.file, b.offset), (1, 0, 1, 8));
    assert_eq!(log.read(a, 8).unwrap(), b"headbody");
    assert_eq!(log.read(b, 6).unwrap(), b"second");
    assert!(log.read(b, 7).is_err(), "reading past the end is an error, not zeros");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_parts_than_one_writev_takes_are_all_written_in_order() {
    let dir = temp_dir();
    let mut log = MessageLog::open(&dir, DEFAULT_FILE_SIZE, BTreeMap::new(), u64::MAX).unwrap();
    let bytes: Vec<[u8; 3]> = (0..3000u32).map(|i| [(i % 251) as u8, (i / 251) as u8, 7]).collect();
    let parts: Vec<IoSlice> = bytes.iter().map(|b| IoSlice::new(b)).collect();
    let place = put(&mut log, &parts);
    assert_eq!(log.read(place, 9000).unwrap(), bytes.concat());
    assert_eq!(log.disk_bytes(), 9000);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_rotate_a_dead_one_is_written_over_and_more_are_deleted() {
    let dir = temp_dir();
    let mut log = MessageLog::open(&dir, 10, BTreeMap::new(), u64::MAX).unwrap();
    let first = put(&mut log, &[IoSlice::new(&[1; 12])]); // fills file 1 past its size
    log.add_live(first.file, 12);
    let second = put(&mut log, &[IoSlice::new(&[2; 12])]);
    log.add_live(second.file, 12);
    assert_eq!((first.file, second.file), (1, 2));
    assert_eq!(names(&dir), ["00000001.log", "00000002.log"]);
    assert_eq!(log.collect().unwrap(), 0, "both files are referenced");
    log.remove_live(1, 12);
    assert_eq!(log.collect().unwrap(), 1);
    assert_eq!(names(&dir), ["00000001.log", "00000002.log"], "file 1 is kept as the spare");
    // File 3 is file 1 renamed and written over from its start: its old bytes stay
    // after what is written, unreferenced.
    let third = put(&mut log, &[IoSlice::new(&[3; 4])]);
    log.add_live(third.file, 4);
    assert_eq!(third, Place { file: 3, offset: 0 });
    assert_eq!(names(&dir), ["00000002.log", "00000003.log"]);
    assert_eq!(log.read(third, 4).unwrap(), [3; 4]);
    assert_eq!(log.read(second, 12).unwrap(), [2; 12]);
    let fourth = put(&mut log, &[IoSlice::new(&[4; 12])]); // file 3 had room left
    let fifth = put(&mut log, &[IoSlice::new(&[5; 1])]);
    assert_eq!((fourth.file, fifth.file), (3, 4));
    log.remove_live(2, 12);
    log.remove_live(3, 4);
    assert_eq!(log.collect().unwrap(), 2);
    assert_eq!(names(&dir).len(), 2, "one dead file is the spare, the other is deleted: {:?}", names(&dir));
    assert_eq!(log.disk_bytes(), 1, "a spare does not count");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reopening_keeps_referenced_files_drops_the_rest_and_starts_a_new_file() {
    let dir = temp_dir();
    let mut log = MessageLog::open(&dir, 4, BTreeMap::new(), u64::MAX).unwrap();
    let kept = put(&mut log, &[IoSlice::new(b"kept")]);
    put(&mut log, &[IoSlice::new(b"lost")]); // file 2: a crash before its commit
    drop(log);
    fs::write(dir.join("notes.txt"), b"not ours").unwrap();
    let mut log = MessageLog::open(&dir, 4, BTreeMap::from([(kept.file, 4)]), u64::MAX).unwrap();
    // File 2 (unreferenced) is gone, and its number starts afresh, empty.
    assert_eq!(names(&dir), ["00000001.log", "00000002.log", "notes.txt"]);
    assert_eq!(log.read(kept, 4).unwrap(), b"kept");
    assert_eq!(put(&mut log, &[IoSlice::new(b"new")]), Place { file: 2, offset: 0 });
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compaction_is_asked_for_only_when_dead_bytes_outweigh_live_ones_and_a_file() {
    let dir = temp_dir();
    let mut log = MessageLog::open(&dir, 100, BTreeMap::new(), u64::MAX).unwrap();
    let old = put(&mut log, &[IoSlice::new(&[0; 100])]); // file 1: one live byte in it
    log.add_live(old.file, 1);
    assert_eq!(log.compaction_source(), None, "99 dead bytes: not more than one file");
    for _ in 0..2 {
        let p = put(&mut log, &[IoSlice::new(&[0; 100])]);
        log.add_live(p.file, 100);
    }
    assert_eq!(log.compaction_source(), None, "dead 99 < live 201");
    log.remove_live(2, 100);
    log.collect().unwrap();
    let p = put(&mut log, &[IoSlice::new(&[0; 150])]); // rotates to file 4
    assert_eq!(p.file, 4);
    assert_eq!(log.compaction_source(), Some(1), "dead 249 > live 101 and > 100: the oldest live file");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_log_file_names_are_numbers() {
    assert_eq!(file_number("00000042.log"), Some(42));
    assert_eq!(file_number("42.log"), Some(42));
    for name in [".log", "x.log", "42.log.tmp", "-1.log", "42", "99999999999999999999999.log"] {
        assert_eq!(file_number(name), None, "{name}");
    }
}

#[test]
fn after_a_torn_write_the_next_append_starts_a_new_file() {
    let dir = temp_dir();
    let mut log = MessageLog::open(&dir, DEFAULT_FILE_SIZE, BTreeMap::new(), u64::MAX).unwrap();
    put(&mut log, &[IoSlice::new(b"whole")]);
    log.torn = true; // as when a write fails part way
    assert_eq!(put(&mut log, &[IoSlice::new(b"next")]), Place { file: 2, offset: 0 });
    assert_eq!(put(&mut log, &[IoSlice::new(b"more")]), Place { file: 2, offset: 4 });
}

#[test]
fn frames_are_found_in_order_up_to_the_first_that_is_not_whole() {
    let mut data = b"before".to_vec();
    for (room, records) in [("a", &b"12345"[..]), ("élan", &b""[..])] {
        frame_head(FrameKind::New, 3, room, 1, records.len() as u64, &mut data);
        data.extend_from_slice(records);
    }
    let found = frames(&data, 3, 6);
    let rooms: Vec<(&str, u64)> = found.iter().map(|f| (f.room.as_str(), f.length)).collect();
    assert_eq!(rooms, [("a", 5), ("élan", 0)]);
    assert_eq!(&data[found[0].records.offset as usize..][..5], b"12345");
    assert!(frames(&data, 4, 6).is_empty(), "a frame of another file number ends the scan");
    let mut flipped = data.clone();
    flipped[6 + 13] ^= 1; // a bit of the first head's record count
    assert!(frames(&flipped, 3, 6).is_empty(), "a head that fails its CRC ends the scan");
    let mut moved = b"before".to_vec();
    frame_head(FrameKind::Moved, 3, "a", 1, 2, &mut moved);
    assert_eq!(frames(&moved, 3, 6).len(), 0, "a frame whose records are cut short is not whole");
    moved.extend_from_slice(b"xy");
    assert_eq!(frames(&moved, 3, 6)[0].kind, FrameKind::Moved);
}
