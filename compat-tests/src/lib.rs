//! Helpers for the compatibility tests: where the original's golden files are.

use std::path::PathBuf;

/// The golden directory: `$RSL_GOLDEN_DIR`, or `../shared/rsl-golden` beside the checkout.
/// `None` when it is missing outside CI; under `CI=true` a missing directory is a failure.
pub fn golden_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RSL_GOLDEN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rsl-golden")
    });
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("golden directory {} is missing (set RSL_GOLDEN_DIR); CI requires it", dir.display());
    }
    eprintln!("skipping: golden directory {} not found (set RSL_GOLDEN_DIR)", dir.display());
    None
}
