//! CheckpointReader on arbitrary files: the input is written to one fixed temp file per
//! process, opened, its blocks listed, all data read with get_data_pointer until Eof or an
//! error, and seek/skip tried. Reads after a seek must agree with the sequential read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rsl_engine::format::{CheckpointError, CheckpointReader};
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("rsl-fuzz-checkpoint-{}.codex", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("write the temp checkpoint");
    let Ok(mut r) = CheckpointReader::open(path()) else { return };
    let size = r.size();
    assert!(size <= data.len() as u64);
    if let Ok(blocks) = r.blocks() {
        if blocks.iter().all(|b| b.ok()) && !blocks.is_empty() {
            assert_eq!(blocks.iter().map(|b| b.data_len).sum::<u64>(), size);
        }
    }

    // Sequential read, in pieces of varying size.
    let mut all = Vec::new();
    let mut complete = false;
    for n in [1usize, 7, 500, 4096, usize::MAX].into_iter().cycle() {
        match r.get_data_pointer(n) {
            Ok(p) => {
                assert!(!p.is_empty() && p.len() <= n);
                all.extend_from_slice(p);
            }
            Err(CheckpointError::Eof) => {
                complete = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert_eq!(r.position(), all.len() as u64);
    if complete {
        assert_eq!(all.len() as u64, size);
    }

    // Random access agrees with the sequential read.
    for at in [0, size / 3, size / 2, size.saturating_sub(1)] {
        r.seek(at).expect("seek inside the data");
        if let Ok(p) = r.get_data_pointer(16) {
            let from = at as usize;
            if from + p.len() <= all.len() {
                assert_eq!(p, &all[from..from + p.len()]);
            }
        }
    }
    assert!(matches!(r.seek(size + 1), Err(CheckpointError::InvalidPosition(_))));
    r.seek(size).unwrap();
    assert!(matches!(r.get_data_pointer(1), Err(CheckpointError::Eof)));
    r.seek(0).unwrap();
    if r.skip(size).is_ok() {
        assert_eq!(r.position(), size);
    }
    r.seek(size / 2).unwrap();
    let _ = r.skip(u64::MAX);
});
