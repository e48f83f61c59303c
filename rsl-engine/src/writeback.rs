//! Early writeback of a large file written front to back (RocksDB's `bytes_per_sync`), so that
//! its final `fsync` finds little left to write.
//!
//! Why: a checkpoint of a large state left dirty until its `fsync` is written back all at
//! once, and on ext4 (ordered mode) every other `fdatasync` on the device, the replicas' log
//! syncs included, waits behind it: with 1 GB, Paxos stalled for 100–600 ms. Written back a
//! step at a time, with at most two steps in flight, a log sync waits for a few MB at most.
//! The save itself is paced to the disk; it runs off the protocol thread.
//!
//! Checkpoints this replica writes (`CheckpointWriter`) and downloads (`learn::fetch_checkpoint`)
//! use it. It starts writes early; it promises no durability: the caller still syncs the file.

use crate::faults::{self, CHECKPOINT_FSYNC};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

/// How many bytes are written back at a time.
pub const STEP: u64 = 8 << 20;

/// How far writeback of one file has gone: its ranges, in file offsets.
#[derive(Debug, Default)]
pub struct Writeback {
    /// The range handed to the kernel last, still being written.
    in_flight: Range<u64>,
}

impl Writeback {
    /// Called as the file grows to `written` bytes: once a step has been written past the
    /// last range, waits for that range to reach the disk and starts writing the new one.
    /// Its errors are write errors (the checkpoint point `fsync` injects them).
    pub fn advance(&mut self, file: &File, path: &Path, written: u64) -> io::Result<()> {
        let next = self.in_flight.end..written;
        if next.end < next.start + STEP {
            return Ok(());
        }
        faults::check(CHECKPOINT_FSYNC, path)?;
        finish(file, self.in_flight.clone())?;
        start(file, next.clone())?;
        self.in_flight = next;
        Ok(())
    }
}

/// Hands `range`'s dirty pages to the disk without waiting for them.
#[cfg(target_os = "linux")]
fn start(file: &File, range: Range<u64>) -> io::Result<()> {
    sync_file_range(file, range, libc::SYNC_FILE_RANGE_WRITE)
}

/// Waits until `range`'s pages are written (those started earlier, and any left dirty).
#[cfg(target_os = "linux")]
fn finish(file: &File, range: Range<u64>) -> io::Result<()> {
    let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_file_range(file, range, all)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn sync_file_range(file: &File, range: Range<u64>, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if range.is_empty() {
        return Ok(());
    }
    let offset = libc::off64_t::try_from(range.start).map_err(io::Error::other)?;
    let len = libc::off64_t::try_from(range.end - range.start).map_err(io::Error::other)?;
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is borrowed from a live
    // `File` for the duration of the call, and any offsets and flags are valid to pass.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere nothing starts writeback of a range alone: `finish` syncs the whole file, which
/// bounds the dirty data just the same, only with the writer waiting longer.
#[cfg(not(target_os = "linux"))]
fn start(_: &File, _: Range<u64>) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn finish(file: &File, range: Range<u64>) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn ranges_advance_a_step_at_a_time_and_faults_fail_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = File::create(&path).unwrap();
        let mut wb = Writeback::default();
        let chunk = vec![7u8; (STEP / 2) as usize];
        let mut written = 0;
        let mut ranges = Vec::new();
        for _ in 0..5 {
            file.write_all_at(&chunk, written).unwrap();
            written += chunk.len() as u64;
            wb.advance(&file, &path, written).unwrap();
            ranges.push(wb.in_flight.clone());
        }
        assert_eq!(ranges, [0..0, 0..STEP, 0..STEP, STEP..2 * STEP, STEP..2 * STEP]);

        let _scenario = fail::FailScenario::setup();
        fail::cfg(CHECKPOINT_FSYNC, &format!("return(eio@{})", path.display())).unwrap();
        wb.advance(&file, &path, written + 1).unwrap(); // under a step: no call
        let e = wb.advance(&file, &path, 3 * STEP).unwrap_err();
        assert!(e.to_string().contains(CHECKPOINT_FSYNC), "{e}");
        assert_eq!(wb.in_flight, STEP..2 * STEP, "nothing advanced");
    }
}
