//! The NVM journal's foundation: a crash-consistent circular log of checksummed records in
//! persistent memory (or a memory-mapped file standing in for it), and the ways to make its
//! stores durable. docs/nvm.md has the layout, the order of stores and fences, and the recovery
//! argument.
//!
//! The log ([`PmemLog`]) is written against [`PersistentMemory`]: bytes, stores, cache-line
//! flushes and a fence. Three implementations map a file ([`mapped`]): real persistent memory
//! on a DAX file system ([`Persistence::CacheFlush`]), and two emulations on any file system
//! ([`Persistence::ProcessCrash`], [`Persistence::Msync`]). A fourth, in the tests, models a
//! crash that loses or tears any store not yet flushed and fenced.
//!
//! The journal's NVM mode, which writes this log and drains it into the RSL-format log files,
//! is `runtime/journal/nvm.rs`.

mod layout;
mod log;
pub mod mapped;
mod pmem;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use layout::{record_size, RECORD_HEADER, RING_OFFSET};
pub use log::{AppendError, Appended, PmemLog, Position, Record, Records};
pub use mapped::{create, open, FileMemory, Persistence};

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Memory whose stores become durable only once flushed and fenced: persistent memory, or a
/// mapped file emulating it.
///
/// The contract the log relies on, and the crash model of the tests: after `fence` returns,
/// every byte in a range passed to `flush` before it is durable (as of the store that preceded
/// the flush); a store not yet flushed and fenced may, at a crash, be lost or survive, each
/// aligned 8-byte word independently.
pub trait PersistentMemory {
    /// The memory as the CPU sees it (stores included, durable or not).
    fn bytes(&self) -> &[u8];
    /// Stores `data` at `offset`; not durable until flushed and fenced.
    fn write(&mut self, offset: usize, data: &[u8]);
    /// Starts writing `range` back to the durable medium; done at the next [`fence`](Self::fence).
    fn flush(&mut self, range: Range<usize>);
    /// Waits until everything flushed so far is durable.
    fn fence(&mut self) -> io::Result<()>;
    /// The file behind the memory, for errors.
    fn path(&self) -> &Path;
}

impl<M: PersistentMemory + ?Sized> PersistentMemory for Box<M> {
    fn bytes(&self) -> &[u8] {
        (**self).bytes()
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        (**self).write(offset, data)
    }
    fn flush(&mut self, range: Range<usize>) {
        (**self).flush(range)
    }
    fn fence(&mut self) -> io::Result<()> {
        (**self).fence()
    }
    fn path(&self) -> &Path {
        (**self).path()
    }
}

/// Why a persistent log could not be created, opened or recovered.
#[derive(Debug, thiserror::Error)]
pub enum NvmError {
    /// The log's file could not be created, mapped, locked or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The log's file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Bytes that cannot be a crash's leftovers: a damaged medium or not a log at all.
    #[error("{}: corrupt persistent log at file offset {offset}: {what}", path.display())]
    Corrupt {
        /// The log's file.
        path: PathBuf,
        /// Where the bad bytes are.
        offset: u64,
        /// What is wrong there.
        what: &'static str,
    },
    /// Another journal (in this process or another) has the log open: two writers would
    /// overwrite each other's records.
    #[error("{}: the persistent log is in use by another journal (its lock is held)", path.display())]
    Locked {
        /// The log's file.
        path: PathBuf,
    },
    /// A size the layout cannot hold.
    #[error("{}: {what}", path.display())]
    Geometry {
        /// The log's file.
        path: PathBuf,
        /// What the layout cannot hold.
        what: String,
    },
}

impl NvmError {
    fn io(path: &Path, source: io::Error) -> NvmError {
        NvmError::Io { path: path.to_path_buf(), source }
    }
}
