//! A log file's bytes mapped read-only for a restart's scan: no copy of the file is made, and
//! the kernel's read-ahead overlaps the disk with the decoding.

#![allow(unsafe_code)]

use bytes::Bytes;
use memmap2::{Advice, Mmap};
use std::fs::File;
use std::io;

/// The whole of `file`, mapped and shared (`Bytes` slices of it keep the mapping alive).
pub(super) fn read_only(file: &File) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new()); // a mapping cannot be empty
    }
    // SAFETY: the mapping is read-only and private to this process's view of a log file the
    // journal owns, mapped only by its own restart (the read-only Replay reads instead): the
    // scan is done before the writer opens the log, and the writer then writes or cuts only
    // past the last record scanned (zeros written ahead, a torn tail), which no record
    // refers to. Another process truncating a replica's own log under it would fault the
    // reader; the data directory is the replica's alone (docs/security.md).
    let map = unsafe { Mmap::map(file)? };
    // Read-ahead in large steps; a hint only, so a refusal changes nothing.
    let _ = map.advise(Advice::Sequential);
    Ok(Bytes::from_owner(map))
}
