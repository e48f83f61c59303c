//! Helpers for the compatibility tests: where the original's golden files are.

use std::path::PathBuf;

/// The golden directory: `$RSL_GOLDEN_DIR`, or `../shared/rsl-golden` beside the checkout.
/// `None` when it is missing outside CI; under `CI=true` a missing directory is a failure.
pub fn golden_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RSL_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rsl-golden"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("golden directory {} is missing (set RSL_GOLDEN_DIR); CI requires it", dir.display());
    }
    eprintln!("skipping: golden directory {} not found (set RSL_GOLDEN_DIR)", dir.display());
    None
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

/// Binds the golden directory or returns from the test (outside CI only).
#[macro_export]
macro_rules! golden_or_skip {
    () => {
        match $crate::golden_dir() {
            Some(dir) => dir,
            None => return,
        }
    };
}
