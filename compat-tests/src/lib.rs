//! Helpers for the compatibility tests: where the original's golden files are.

use std::path::PathBuf;

/// The original's files, kept in the repository (`compat-tests/golden/`, see its README).
pub fn golden_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/golden"));
    assert!(dir.is_dir(), "golden directory {} is missing from the checkout", dir.display());
    dir
}

use bytes::Bytes;
use rsl_engine::format::{Ballot, MemberId};

/// The bytes of one golden file, by its path inside the golden directory.
pub fn read(dir: &std::path::Path, name: &str) -> Bytes {
    let path = dir.join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A member id from a string known to be valid.
pub fn id(s: &str) -> MemberId {
    MemberId::new(s).expect("valid member id")
}

pub fn ballot(n: u32, member: &str) -> Ballot {
    Ballot::new(n, id(member))
}

/// The u64 stored little-endian at `at`.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
