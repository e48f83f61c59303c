//! The runtime: drives the sans-IO core against real disks, sockets and threads.

use std::path::PathBuf;

/// A byte range of a file, `[start, end)`: what the learn port streams for a FetchVotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRange {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
}

pub mod checkpoints;
pub mod journal;
pub mod learn;
pub mod transport;
