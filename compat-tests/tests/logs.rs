//! Log files written by the original (docs/spec/formats.md §13.4): the reader yields the six records and
//! the in-memory decree index, and writing the decoded records again gives the same file;
//! the NVM journal writes the same file, whether drained or written back from its persistent
//! log at start.

use bytes::{Bytes, BytesMut};
use compat_tests::{ballot, id, read, u64_at};
use rsl_engine::format::log::{self, LogContents, Mode};
use rsl_engine::format::{Body, Message, MsgKind, Version};
use rsl_engine::runtime::journal::{Journal, JournalOptions, NvmOptions};
use rsl_engine::runtime::nvm::{self, Persistence};
use std::collections::BTreeMap;

fn check_log(bytes: &Bytes, v: Version) -> LogContents {
    assert_eq!(bytes.len(), 3072);
    let log = LogContents::scan(bytes, Mode::Restore).expect("golden log scans");
    let offsets: Vec<usize> = log.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 512, 1024, 1536, 2048, 2560]);
    assert_eq!(log.decree_index(), BTreeMap::from([(5, 1024), (6, 1536), (7, 2048)]));
    assert_eq!(log.data_len, 3072);

    let kinds: Vec<MsgKind> = log.records.iter().map(|r| r.message.kind()).collect();
    use MsgKind::*;
    assert_eq!(kinds, [Vote, Prepare, Vote, Vote, Vote, ReconfigurationDecision]);
    let summary: Vec<(u64, u32, String)> = log
        .records
        .iter()
        .map(|r| (r.message.header.decree, r.message.header.ballot.id, r.message.header.ballot.member.to_string()))
        .collect();
    let expected = [(5, 2, "1"), (5, 3, "2"), (5, 3, "2"), (6, 3, "2"), (7, 3, "2"), (7, 3, "2")];
    assert_eq!(summary, expected.map(|(d, b, m)| (d, b, m.to_string())));
    for r in &log.records {
        assert_eq!(r.message.header.version, v);
        assert!(!r.message.header.ballot.is_empty(), "replayed records carry a ballot");
    }

    let requests = |i: usize| log.records[i].message.as_vote().unwrap().requests.clone();
    assert_eq!(requests(0), [Bytes::from_static(b"hello")]);
    assert_eq!(requests(2), [Bytes::from_static(b"hello")]);
    assert_eq!(requests(3), [Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")]);
    let reconfig = log.records[4].message.as_vote().unwrap();
    assert!(reconfig.requests.is_empty() && !reconfig.relinquish);
    let set = reconfig.reconfig.as_ref().expect("a reconfiguration vote");
    assert_eq!((set.nodes.len(), &set.cookie[..]), (2, &b"cfg"[..]));
    assert_eq!(log.records[1].message.body, Body::Prepare(Bytes::new()));
    assert_eq!(log.records[5].message.header.sender, id("2"));
    assert_eq!(log.records[5].message.header.ballot, ballot(3, "2"));
    log
}

/// Writing the decoded records as log records reproduces the file byte for byte.
fn check_rewrite(bytes: &Bytes, log: &LogContents) {
    let mut out = BytesMut::new();
    for r in &log.records {
        log::encode_record(&r.message, &mut out).unwrap();
    }
    assert_eq!(out, *bytes);
}

#[test]
fn log_v6() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "log_v6/5.log");
    let log = check_log(&bytes, Version::V6);
    let lens: Vec<usize> = log.records.iter().map(|r| r.raw.len()).collect();
    assert_eq!(lens, [187, 176, 187, 194, 345, 172]);
    let sums: Vec<u64> = log.records.iter().map(|r| u64_at(&r.raw, 6)).collect();
    assert_eq!(
        sums,
        [0x51adc2c3a4ec8675, 0xe6fadb3b9da2397f, 0x4af8d6ff49294171, 0x49eea3e8dd33979f, 0x727a02d71ed8ac5c, 0xd9f2e87793f480e5]
    );
    check_rewrite(&bytes, &log);
}

#[test]
fn log_v3() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "log_v3/5.log");
    let log = check_log(&bytes, Version::V3);
    check_rewrite(&bytes, &log);
}

#[test]
fn flipped_bits_in_the_golden_log() {
    let dir = compat_tests::golden_dir();
    let bytes = read(&dir, "log_v6/5.log");
    // In the last record: a torn tail, 5 of 6 records replay.
    let mut last = bytes.to_vec();
    last[2560 + 100] ^= 0x04;
    let log = LogContents::scan(&Bytes::from(last), Mode::Restore).unwrap();
    assert_eq!((log.records.len(), log.data_len), (5, 2560));
    // In a middle record: replay fails, naming the record.
    let mut middle = bytes.to_vec();
    middle[1024 + 100] ^= 0x04;
    let err = LogContents::scan(&Bytes::from(middle), Mode::Restore).unwrap_err();
    assert_eq!(err.offset, 1024);
}

#[test]
fn log_file_reader_names_the_file() {
    let dir = compat_tests::golden_dir();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("5.log");
    let mut bytes = read(&dir, "log_v6/5.log").to_vec();
    bytes[512 + 30] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = log::read_log_file(&path).unwrap_err().to_string();
    assert!(err.contains("5.log") && err.contains("offset 512"), "{err}");
}

/// The journal's options for `dir`, in the NVM mode with its persistent log at `nvm`.
fn nvm_journal(dir: &std::path::Path, nvm: &std::path::Path) -> JournalOptions {
    let persistence = Persistence::ProcessCrash;
    JournalOptions { nvm: Some(NvmOptions { path: nvm.to_path_buf(), capacity: 1 << 20, persistence }), ..JournalOptions::new(dir) }
}

fn open_journal(opts: JournalOptions) -> (Journal, Vec<Message>) {
    let (journal, replay) = Journal::open(opts, Some(4), |_| {}, |e| panic!("{e}")).expect("journal opens");
    (journal, replay.records.iter().map(|m| (**m).clone()).collect())
}

/// The golden logs' records appended through the NVM journal come out in `5.log` byte for
/// byte as the original wrote them: drained by the journal's writer, and written back at start
/// from a persistent log holding them alone (the process died before the drainer got to
/// them; the persistent log's records carry their file and offset, docs/nvm.md).
#[test]
fn the_nvm_journal_writes_the_originals_log_files() {
    let golden = compat_tests::golden_dir();
    for name in ["log_v3/5.log", "log_v6/5.log"] {
        let bytes = read(&golden, name);
        let records: Vec<Message> = LogContents::scan(&bytes, Mode::Restore).unwrap().records.into_iter().map(|r| r.message).collect();

        let drained = tempfile::tempdir().unwrap();
        let (mut journal, replay) = open_journal(nvm_journal(drained.path(), &drained.path().join("j.nvm")));
        assert!(replay.is_empty());
        journal.defer_writes();
        for (seq, record) in (1..).zip(&records) {
            journal.append(seq, record).unwrap();
        }
        assert_eq!(journal.flush(true).unwrap().unwrap(), records.len() as u64, "durable once in the persistent log");
        journal.close().unwrap();
        assert_eq!(std::fs::read(drained.path().join("5.log")).unwrap(), bytes, "{name}, drained");

        let recovered = tempfile::tempdir().unwrap();
        let nvm_path = recovered.path().join("j.nvm");
        let mut nvm = nvm::create(&nvm_path, 1 << 20, Persistence::ProcessCrash).unwrap();
        for (at, chunk) in (0u64..).step_by(1024).zip(bytes.chunks(1024)) {
            let placed: Vec<u8> = [&5u64.to_le_bytes()[..], &at.to_le_bytes(), chunk].concat();
            nvm.append(&placed).unwrap();
        }
        nvm.persist().unwrap();
        drop(nvm);
        let (journal, replay) = open_journal(nvm_journal(recovered.path(), &nvm_path));
        assert_eq!(replay, records, "{name}: replayed from the files the persistent log completed");
        journal.close().unwrap();
        assert_eq!(std::fs::read(recovered.path().join("5.log")).unwrap(), bytes, "{name}, written back at start");
    }
}
