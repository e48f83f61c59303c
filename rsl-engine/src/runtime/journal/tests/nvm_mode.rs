//! The NVM journal: acknowledged from the persistent log, drained into byte-identical log
//! files, completed from the persistent log at start, bounded by its size.

use super::*;
use crate::runtime::nvm::{self as pmem, Persistence, RING_OFFSET};

fn nvm_options(dir: &Path, capacity: u64) -> JournalOptions {
    let nvm = NvmOptions { path: dir.join("journal.nvm"), capacity, persistence: Persistence::ProcessCrash };
    JournalOptions { max_log_len: 2048, log_len_randomize_pct: 0, nvm: Some(nvm), ..options(dir) }
}

/// A mix that rolls the log over several times (files of 2 KiB, records of 512 B and more).
fn records() -> Vec<Message> {
    let mut records: Vec<Message> = (1..=30).map(|d| vote(d, 2)).collect();
    records.insert(7, prepare(7, 3));
    records.insert(20, msg(20, 3, Body::Vote(VoteBody { requests: vec![Bytes::from(vec![7u8; 3000])], ..Default::default() })));
    records
}

/// Appends `records` (persist numbers from `first`), flushing every `per_flush`, as the
/// protocol thread does at the end of its turns; each flush reports them durable at once.
fn append_flushing(j: &mut Opened, records: &[Message], first: u64, per_flush: usize) {
    for (i, chunk) in records.chunks(per_flush).enumerate() {
        for (k, r) in chunk.iter().enumerate() {
            j.journal.append(first + (i * per_flush + k) as u64, r).unwrap();
        }
        let last = first + (i * per_flush + chunk.len()) as u64 - 1;
        assert_eq!(j.journal.flush(false).unwrap().unwrap(), last, "durable when persisted, not when drained");
    }
}

fn file_bytes(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    list_logs(dir).unwrap().into_iter().map(|(d, p)| (d, fs::read(p).unwrap())).collect()
}

/// A 64 KiB persistent log holding six records that never reached the log files (the drain
/// held), its journal dropped as a crash would leave it.
fn six_records_only_in_the_persistent_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(nvm_options(dir.path(), 64 << 10), None).unwrap();
    j.journal.defer_writes();
    j.journal.hold_writer();
    append_flushing(&mut j, &records()[..6], 1, 2);
    drop(j);
    dir
}

#[test]
fn the_nvm_mode_writes_the_same_log_files_as_the_file_mode() {
    let (file_dir, nvm_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let records = records();
    let file_opts = JournalOptions { nvm: None, ..nvm_options(file_dir.path(), 0) };
    let mut j = open(file_opts, None).unwrap();
    write_all(&mut j, &records);
    j.journal.close().unwrap();

    let mut j = open(nvm_options(nvm_dir.path(), 64 << 10), None).unwrap();
    j.journal.defer_writes();
    append_flushing(&mut j, &records, 1, 4);
    j.journal.close().unwrap();
    let expected = file_bytes(file_dir.path());
    assert!(expected.len() > 3, "the records roll the log over");
    assert_eq!(file_bytes(nvm_dir.path()), expected, "byte for byte, file by file");
    let log = pmem::open(&nvm_dir.path().join("journal.nvm"), Persistence::ProcessCrash).unwrap();
    assert_eq!(log.records().count(), 0, "a clean close leaves the persistent log empty");
    drop(log);
    let j = open(nvm_options(nvm_dir.path(), 64 << 10), None).unwrap();
    assert_eq!(j.replay.iter().map(|m| (**m).clone()).collect::<Vec<_>>(), records);
}

#[test]
fn records_acknowledged_but_not_in_the_files_are_written_there_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let records = records();
    let mut j = open(nvm_options(dir.path(), 64 << 10), None).unwrap();
    j.journal.defer_writes();
    append_flushing(&mut j, &records[..10], 1, 5);
    while j.journal.readable(10) < 10 {
        j.durable.recv().unwrap();
    }
    // The drainer stops (as if the process died before it got to them); the persistent log
    // still acknowledges.
    j.journal.hold_writer();
    append_flushing(&mut j, &records[10..], 11, 3);
    let last = records.len() as u64;
    assert_eq!(j.journal.readable(last), 10, "durable, but not to be read from the files before they hold it");
    drop(j);
    let before = logs_in(dir.path());
    let j = open(nvm_options(dir.path(), 64 << 10), None).unwrap();
    assert_eq!(j.replay.iter().map(|m| (**m).clone()).collect::<Vec<_>>(), records, "every acknowledged record, in order");
    assert!(logs_in(dir.path()).len() > before.len(), "the rolled files were created from the persistent log");
    drop(j);

    // The same files as a journal that never stopped.
    let clean = tempfile::tempdir().unwrap();
    let mut j = open(JournalOptions { nvm: None, ..nvm_options(clean.path(), 0) }, None).unwrap();
    write_all(&mut j, &records);
    j.journal.close().unwrap();
    assert_eq!(file_bytes(dir.path()), file_bytes(clean.path()));
}

#[test]
fn a_full_persistent_log_waits_for_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Message> = (1..=200).map(|d| vote(d, 2)).collect();
    // 4 KiB: seven 512-byte records at most; every few flushes wait for the drainer.
    let mut j = open(nvm_options(dir.path(), 4096), None).unwrap();
    j.journal.defer_writes();
    append_flushing(&mut j, &records[..100], 1, 3);
    let small = j.journal.shared.full_waits.load(Ordering::Relaxed);
    assert!(small > 0, "small batches filled the log");
    // A batch larger than the whole log goes in chunks, waiting between them.
    append_flushing(&mut j, &records[100..], 101, 100);
    let large = j.journal.shared.full_waits.load(Ordering::Relaxed) - small;
    // Each wait frees at most the whole ring.
    assert!(large >= 100 * 512 / 4096, "{large} waits for 50 KiB through a 4 KiB log");
    j.journal.close().unwrap();
    let j = open(nvm_options(dir.path(), 4096), None).unwrap();
    assert_eq!(j.replay.len(), 200);
}

#[test]
fn a_bad_record_in_the_persistent_log_is_an_error_naming_file_and_offset() {
    let dir = six_records_only_in_the_persistent_log();
    let path = dir.path().join("journal.nvm");
    let mut bytes = fs::read(&path).unwrap();
    // Inside the second record's payload (the first batch is two 512-byte records).
    let at = RING_OFFSET + 24 + 16 + 512 + 24 + 100;
    bytes[at] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = open(nvm_options(dir.path(), 64 << 10), None).err().unwrap();
    assert!(err.to_string().contains("journal.nvm") && err.to_string().contains("offset"), "{err}");
    assert!(matches!(err, JournalError::Nvm(pmem::NvmError::Corrupt { .. })), "{err}");
}

#[test]
fn a_resized_persistent_log_takes_its_new_size_once_drained() {
    let dir = six_records_only_in_the_persistent_log();
    let j = open(nvm_options(dir.path(), 8 << 10), None).unwrap();
    assert_eq!(j.replay.len(), 6);
    drop(j);
    let log = pmem::open(&dir.path().join("journal.nvm"), Persistence::ProcessCrash).unwrap();
    assert_eq!(log.capacity(), 8 << 10);
}

#[test]
fn bytes_past_the_persistent_logs_tail_are_cut_not_written() {
    let dir = six_records_only_in_the_persistent_log();
    // Garbage where the next records would go (appended, never published, torn by a crash).
    let path = dir.path().join("journal.nvm");
    let mut bytes = fs::read(&path).unwrap();
    let free = RING_OFFSET + (32 << 10);
    bytes[free..free + 4096].fill(0xa5);
    fs::write(&path, &bytes).unwrap();
    let j = open(nvm_options(dir.path(), 64 << 10), None).unwrap();
    assert_eq!(j.replay.iter().map(|m| (**m).clone()).collect::<Vec<_>>(), records()[..6]);
}

#[test]
fn a_record_placed_where_the_files_cannot_hold_it_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.nvm");
    let mut log = pmem::create(&path, 64 << 10, Persistence::ProcessCrash).unwrap();
    // Bytes for offset 512 of 7.log, which does not exist: not the files this log drained into.
    let placed: Vec<u8> = [&7u64.to_le_bytes()[..], &512u64.to_le_bytes(), &[0u8; 512]].concat();
    log.append(&placed).unwrap();
    log.persist().unwrap();
    drop(log);
    let err = open(nvm_options(dir.path(), 64 << 10), None).err().unwrap();
    let at = RING_OFFSET as u64;
    assert!(matches!(&err, JournalError::NvmRecord { path: p, seq: 0, offset, .. } if *p == path && *offset == at), "{err}");
    assert!(err.to_string().contains("journal.nvm") && err.to_string().contains("7.log"), "{err}");
    assert!(!dir.path().join("7.log").exists(), "nothing written for it");
}

/// A persistent log holding one record of `data` for `offset` in `<file>.log`.
fn log_with_record(path: &Path, file: u64, offset: u64, data: &[u8]) {
    let mut log = pmem::create(path, 64 << 10, Persistence::ProcessCrash).unwrap();
    log.append(&[&file.to_le_bytes()[..], &offset.to_le_bytes(), data].concat()).unwrap();
    log.persist().unwrap();
}

#[test]
fn a_record_not_of_whole_pages_is_an_error_naming_its_place_in_the_persistent_log() {
    for (offset, len) in [(100, 512), (512, 300)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.nvm");
        log_with_record(&path, 1, offset, &vec![0u8; len]);
        let err = open(nvm_options(dir.path(), 64 << 10), None).err().unwrap();
        let at = RING_OFFSET as u64;
        assert!(matches!(&err, JournalError::NvmRecord { seq: 0, offset, .. } if *offset == at), "{err}");
        assert!(err.to_string().contains(&format!("at offset {at}")) && err.to_string().contains("whole 512-byte pages"), "{err}");
    }
}

#[test]
fn recovery_syncs_a_file_that_already_holds_the_records_bytes() {
    // The drainer wrote the bytes and was killed before its fdatasync: they compare equal in
    // the page cache, yet must be synced before the persistent log lets them go.
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(JournalOptions { nvm: None, ..nvm_options(dir.path(), 0) }, None).unwrap();
    write_all(&mut j, &records()[..3]);
    j.journal.close().unwrap();
    let (file, bytes) = file_bytes(dir.path()).pop().unwrap();
    let path = dir.path().join("journal.nvm");
    log_with_record(&path, file, 0, &bytes);
    let log = pmem::open(&path, Persistence::ProcessCrash).unwrap();
    let placed = nvm::place_records(dir.path(), &log, &path).unwrap();
    assert_eq!(placed, nvm::Placed { records: 1, written: 0, synced: 1 }, "verified, not written, and synced");
}

#[test]
fn a_chunk_placed_where_it_would_not_land_stops_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(nvm_options(dir.path(), 64 << 10), None).unwrap();
    j.journal.defer_writes();
    append_flushing(&mut j, &records()[..2], 1, 2);
    while j.journal.readable(2) < 2 {
        j.durable.recv().unwrap();
    }
    // A bookkeeping bug: the journal believes the file a page longer than it is.
    j.journal.file_len += 512;
    j.journal.append(3, &records()[2]).unwrap();
    j.journal.flush(false).unwrap().unwrap();
    let err = j.errors.recv().unwrap().to_string();
    assert!(err.contains("0.log") && err.contains("for offset 1536") && err.contains("written at 1024"), "{err}");
    assert_eq!(j.journal.readable(3), 2, "the misplaced chunk never reaches the file");
}

#[test]
fn two_journals_cannot_share_one_persistent_log() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = open(nvm_options(a.path(), 64 << 10), None).unwrap();
    let shared = NvmOptions { path: a.path().join("journal.nvm"), ..nvm_options(b.path(), 64 << 10).nvm.unwrap() };
    let err = open(JournalOptions { nvm: Some(shared.clone()), ..nvm_options(b.path(), 64 << 10) }, None).err().unwrap();
    assert!(matches!(&err, JournalError::Nvm(pmem::NvmError::Locked { path }) if *path == shared.path), "{err}");
    first.journal.close().unwrap();
}

#[test]
fn the_writer_copies_records_from_the_persistent_log_not_from_memory() {
    // The journal keeps no copy of what waits to be drained: a byte changed in the persistent
    // log after the flush is the byte the file gets.
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(nvm_options(dir.path(), 64 << 10), None).unwrap();
    j.journal.defer_writes();
    j.journal.hold_writer();
    append_flushing(&mut j, &records()[..2], 1, 2);
    let at = (RING_OFFSET + 24 + 16 + 100) as u64;
    let nvm = fs::File::options().write(true).open(dir.path().join("journal.nvm")).unwrap();
    nvm.write_all_at(&[0xee], at).unwrap();
    j.journal.release_writer();
    while j.journal.readable(2) < 2 {
        j.durable.recv().unwrap();
    }
    assert_eq!(file_bytes(dir.path())[0].1[100], 0xee);
}
