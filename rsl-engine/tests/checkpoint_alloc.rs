//! A checkpoint header claiming huge blocks must not make the reader allocate them. In its own
//! test binary: the check reads this process's peak virtual memory, which other tests' threads
//! (each with its own stack and allocator arena) would raise.

use rsl_engine::format::{CheckpointError, CheckpointReader};

/// The peak virtual memory of this process, in bytes (Linux only).
fn vm_peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPeak:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[test]
fn block_size_does_not_drive_an_allocation() {
    // Found by the `checkpoint_reader` fuzz target (run with -malloc_limit_mb=64): a 1048-byte
    // v6 checkpoint whose header claims huge blocks made `blocks()` allocate one whole block
    // up front. These are the fuzzer's bytes with every byte it does not need zeroed, except
    // that it claimed 128 MiB blocks (00 00 00 08) and this claims 4 GiB - 512.
    let mut file = vec![0u8; 1048];
    let runs: [(usize, &[u8]); 14] = [
        (0, &[6, 0, 0, 4]),        // v6, header region 1024
        (86, &[1, 0, 0, 0, b'1']), // max ballot (1, "1")
        (166, &[3]),               // three members with 5-byte host names
        (168, b"1"),               // their ids (a set of empty ids is refused)
        (247, b"2"),
        (326, b"3"),
        (240, &[5]),
        (319, &[5]),
        (398, &[5]),
        (410, &[0x18, 0x04]),             // size 1048
        (418, &[0x00, 0xFE, 0xFF, 0xFF]), // block size 0xFFFFFE00
        // The next vote: v6, 178 bytes, its checksum, magic, type 1, member "1", decree 5,
        // configuration 1, ballot (1, "1").
        (422, &[6, 0, 0xB2, 0, 0, 0, 0xF5, 0x2F, 0xAB, 0x91, 0xEE, 0xDD, 0x91, 0xC2, 0xCE, 0xFA, 0x0D, 0xF0, 1, 0, b'1']),
        (506, &[5]),
        (514, &[1, 0, 0, 0, 1, 0, 0, 0, b'1']),
    ];
    for (at, bytes) in runs {
        file[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("4.codex");
    std::fs::write(&path, &file).unwrap();
    let mut r = CheckpointReader::open(&path).unwrap();
    assert_eq!((r.header().block_size, r.size()), (0xFFFF_FE00, 16));

    let before = vm_peak();
    let blocks = r.blocks().unwrap();
    // Allocating the claimed block would raise the peak by 4 GiB (it is never touched, so
    // only the virtual size shows it).
    if let (Some(before), Some(after)) = (before, vm_peak()) {
        assert!(after - before < 1 << 31, "blocks() reserved {} bytes", after - before);
    }
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].offset, blocks[0].data_len, blocks[0].ok()), (1024, 16, false));
    assert!(matches!(r.get_data_pointer(100), Err(CheckpointError::BlockChecksum { block: 0, .. })));
}
