//! Checkpoints written by the original (docs/spec/formats.md §9, §13.5, §13.6): headers, data, `Size()`
//! and block checksums; and our writer reproduces each file byte for byte.

use bytes::Bytes;
use compat_tests::{ballot, id, read, u64_at};
use rsl_engine::format::checkpoint::{
    header_region_len, CheckpointError, CheckpointHeader, CheckpointReader, CheckpointWriter, DEFAULT_BLOCK_SIZE,
};
use rsl_engine::format::{Body, Header, Message, Version, VoteBody};
use std::path::Path;

fn read_all(r: &mut CheckpointReader) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        match r.get_data_pointer(1 << 20) {
            Ok(p) => out.extend_from_slice(p),
            Err(CheckpointError::Eof) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Writes `data` under the decoded header with our writer and compares with the original file.
fn rewrite_matches(golden: &Path, header: &CheckpointHeader, data: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("copy.codex");
    let mut w = CheckpointWriter::create(&path, header.clone()).unwrap();
    for piece in data.chunks(1_000_003) {
        w.write(piece).unwrap();
    }
    let written = w.close().unwrap();
    assert_eq!(written.size, header.size);
    assert!(std::fs::read(&path).unwrap() == std::fs::read(golden).unwrap(), "{} differs when rewritten", golden.display());
}

fn empty_vote(v: Version, member: &str, ballot_member: &str) -> Message {
    Message::new(Header::new(v, id(member), 5, 1, ballot(1, ballot_member)), Body::Vote(VoteBody::default()))
}

#[test]
fn checkpoint_utility_files() {
    let dir = compat_tests::golden_dir();
    for (v, len) in [(Version::V2, 528), (Version::V3, 1040), (Version::V4, 1048), (Version::V6, 1048)] {
        let name = format!("cp_util_v{}/4.codex", v.get());
        let path = dir.join(&name);
        let bytes = read(&dir, &name);
        assert_eq!(bytes.len(), len, "{name}");
        let mut r = CheckpointReader::open(&path).unwrap();
        let h = r.header().clone();
        assert_eq!((h.version, h.last_executed, h.size), (v, 4, len as u64), "{name}");
        assert_eq!(r.size(), 16);
        assert_eq!(read_all(&mut r), b"hello checkpoint");
        if v == Version::V2 {
            // v1/v2: the header is the vote; member ids of the utility's vote are empty.
            assert_eq!(h.next_vote, empty_vote(v, "", ""));
            assert_eq!(h.max_ballot, ballot(1, ""));
        } else {
            assert_eq!(h.next_vote, empty_vote(v, "1", "1"));
            assert_eq!((h.member, h.max_ballot), (id("1"), ballot(1, "1")));
            assert_eq!((h.config.number, h.config.initial_decree, h.config.members.nodes.len()), (1, 4, 3));
            assert!(h.state_saved);
        }
        if v.has_string_ids() {
            assert_eq!(h.block_size, DEFAULT_BLOCK_SIZE);
            assert_eq!(u64_at(&bytes, len - 8), 0x2c9220572d26c787, "fingerprint(\"hello checkpoint\")");
            let blocks = r.blocks().unwrap();
            assert_eq!(blocks.len(), 1);
            assert!(blocks[0].ok());
        }
        let region = header_region_len(&bytes).unwrap();
        assert_eq!(h.encode().unwrap(), bytes.slice(..region), "{name} header re-encodes");
        rewrite_matches(&path, &h, b"hello checkpoint");
    }
}

#[test]
fn checkpoint_saved_like_a_replica() {
    let dir = compat_tests::golden_dir();
    let path = dir.join("cp_legislator_v6/4.codex");
    let bytes = read(&dir, "cp_legislator_v6/4.codex");
    assert_eq!(bytes.len(), 1037);
    let mut r = CheckpointReader::open(&path).unwrap();
    let h = r.header().clone();
    assert_eq!((h.version, h.member, h.last_executed, h.max_ballot), (Version::V6, id("1"), 4, ballot(2, "1")));
    assert_eq!((h.config.number, h.config.initial_decree, h.config.members.nodes.len()), (1, 1, 3));
    assert!(h.config.members.cookie.is_empty());
    assert_eq!(h.config.encoded_len(Version::V6), 255);
    assert_eq!((h.state_saved, h.size, h.block_size), (true, 1037, DEFAULT_BLOCK_SIZE));
    let vote = Message::new(
        Header::new(Version::V6, id("1"), 5, 1, ballot(2, "1")),
        Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"hello")], ..Default::default() }),
    );
    assert_eq!(h.next_vote, vote);
    assert_eq!(bytes[0x199], 1, "stateSaved at 409");
    assert_eq!(u64_at(&bytes, 422 + 6), 0x51adc2c3a4ec8675, "the vote at H = 422");
    assert_eq!(u64_at(&bytes, 1029), 0x2E68EB152273854B, "block checksum after `hello`");
    assert_eq!(r.size(), 5);
    assert_eq!(read_all(&mut r), b"hello");
    assert_eq!(h.encode().unwrap(), bytes.slice(..1024));
    rewrite_matches(&path, &h, b"hello");
}

#[test]
fn multi_block_checkpoint() {
    let dir = compat_tests::golden_dir();
    let path = dir.join("cp_multiblock_v4/100.codex");
    let data: Vec<u8> = (0..4_194_306usize).map(|i| ((7 * i + (i >> 8)) % 256) as u8).collect();
    let mut r = CheckpointReader::open(&path).unwrap();
    let h = r.header().clone();
    assert_eq!((h.version, h.last_executed, h.size), (Version::V4, 100, 4_195_346));
    assert_eq!(r.size(), 4_194_306);
    // GetDataPointer never crosses a block boundary.
    assert_eq!(r.get_data_pointer(usize::MAX).unwrap().len(), 4_194_296);
    r.seek(0).unwrap();
    assert!(read_all(&mut r) == data);
    let blocks = r.blocks().unwrap();
    let found: Vec<(u64, u64, u64)> = blocks.iter().map(|b| (b.offset, b.data_len, b.stored)).collect();
    assert_eq!(found, [(1024, 4_194_296, 0x701389DF80497F16), (1024 + 4_194_304, 10, 0x38AB5D06357BEA40)]);
    assert!(blocks.iter().all(|b| b.ok()));
    // Seek into the second block, then skip to the end.
    r.seek(4_194_300).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(r.get_data(&mut buf).unwrap(), 4);
    assert_eq!(&buf, &data[4_194_300..4_194_304]);
    r.skip(2).unwrap();
    assert!(matches!(r.get_data_pointer(1), Err(CheckpointError::Eof)));
    rewrite_matches(&path, &h, &data);
}
