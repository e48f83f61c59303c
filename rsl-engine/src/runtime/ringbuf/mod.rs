//! The ring-buffer protocol a writer uses to put packet frames straight into a peer's memory
//! (issue 16): framing, wrap-around, credits, ordering and sessions, written once against the
//! small "remote memory" interface below so that RDMA verbs and the shared-memory emulation
//! ([`shm`]) differ only in how bytes and words reach the peer. The Paxos port carries packets
//! over it (`runtime/shm_link.rs`); the design is in docs/rdma.md.
//!
//! A ring is one direction of one peer pair. Its memory is a sequence of 64-bit words:
//!
//! | words     | owner  | content                                                         |
//! |-----------|--------|-----------------------------------------------------------------|
//! | 0         | reader | [`MAGIC`]                                                       |
//! | 1         | reader | data capacity `C` in bytes                                      |
//! | 2         | reader | set-up nonce (emulation): the writer echoes it over TCP         |
//! | 8         | writer | doorbell: `epoch << 48 \| tail mod 2^48`                        |
//! | 16        | reader | credit word: `epoch << 48 \| consumed mod 2^48`                 |
//! | 17        | reader | parked flag (emulation: the reader sleeps on the doorbell)      |
//! | 24 ..     | writer | `C` bytes of ring data                                          |
//!
//! Each control word has a cache line to itself. With RDMA the credit word lives in the writer's
//! registered memory (the reader RDMA-WRITEs it back); in the emulation one file holds all.

mod memory;
mod protocol;
#[cfg(target_os = "linux")]
pub mod shm;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(all(feature = "rdma", target_os = "linux"))]
pub mod verbs;

pub use memory::InProcess;
pub use protocol::{RecvError, RingReader, RingWriter, SendError, MAX_WRITES_PER_SEND};

/// Identifies a ring's memory ("RSLRING1").
pub const MAGIC: u64 = u64::from_le_bytes(*b"RSLRING1");
/// Word index of the magic number.
const MAGIC_WORD: usize = 0;
/// Word index of the data capacity.
const CAPACITY_WORD: usize = 1;
/// Word index of the set-up nonce (emulation only): a random word the reader writes into the
/// file it made and the writer echoes over TCP, which only a process that mapped the file can.
const NONCE_WORD: usize = 2;
/// Word index of the doorbell (the published tail).
const DOORBELL_WORD: usize = 8;
/// Word index of the credit word (the reader's consumed position).
const CREDIT_WORD: usize = 16;
/// Word index of the reader's "parked" flag (emulation only): nonzero while the reader sleeps
/// on the doorbell, so the writer knows to wake it. In the reader's cache line.
const PARKED_WORD: usize = 17;
/// Word index where ring data starts.
const DATA_WORD: usize = 24;
/// The smallest data capacity: one empty record plus a wrap marker.
pub const MIN_CAPACITY: usize = 16;
/// The largest data capacity: far below the 2^48 positions the control words carry, so that
/// "how far ahead" is never ambiguous.
pub const MAX_CAPACITY: usize = 1 << 40;

/// A data capacity that is not a multiple of 8 in [`MIN_CAPACITY`], [`MAX_CAPACITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring capacity {0} is not a multiple of 8 in [{MIN_CAPACITY}, {MAX_CAPACITY}]")]
pub struct BadCapacity(pub u64);

/// Checks a data capacity, from configuration or from a mapped file's header.
pub fn check_capacity(capacity: u64) -> Result<usize, BadCapacity> {
    let ok = capacity.is_multiple_of(8) && (MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&capacity);
    if ok {
        Ok(capacity as usize)
    } else {
        Err(BadCapacity(capacity))
    }
}

/// Bytes of memory a ring of `capacity` data bytes needs, control words included.
pub fn region_bytes(capacity: usize) -> usize {
    DATA_WORD * 8 + capacity
}

/// What a writer can do to the peer's registered ring memory: one-sided writes that the peer's
/// CPU does not see until the doorbell, and a look at the credit word the peer writes back.
pub trait RemoteMemory {
    /// The ring's data capacity in bytes (a checked capacity).
    fn capacity(&self) -> usize;
    /// Writes one record at data byte `offset` (8-aligned): `header` as one word, then `payload`
    /// zero-padded to a whole word; the caller keeps it within the capacity. RDMA: one WRITE
    /// with two scatter-gather entries, unsignalled. Invisible to the reader until the doorbell.
    fn write_record(&mut self, offset: usize, header: u64, payload: &[u8]);
    /// Publishes the doorbell word, ordered after every earlier write (release): a reader that
    /// sees it sees the records before it. RDMA: a WRITE of the tail word on the same queue pair
    /// (or write-with-immediate).
    fn ring_doorbell(&mut self, word: u64);
    /// The credit word the reader last wrote back (acquire).
    fn credits(&self) -> u64;
}

/// What the reader sees: its own memory, which the writer fills, and a way to hand credits back.
pub trait LocalMemory {
    /// The ring's data capacity in bytes (a checked capacity).
    fn capacity(&self) -> usize;
    /// The doorbell word (acquire): records before the tail it names are complete.
    fn doorbell(&self) -> u64;
    /// The data word at byte `offset` (8-aligned, within the capacity).
    fn read_word(&self, offset: usize) -> u64;
    /// Appends `len` data bytes from byte `offset` to `out` (8-aligned; the caller keeps the
    /// padded length within the capacity).
    fn read_payload(&self, offset: usize, len: usize, out: &mut bytes::BytesMut);
    /// Writes the credit word (release), ordered after every earlier read. RDMA: a WRITE into
    /// the writer's memory.
    fn return_credits(&mut self, word: u64);
    /// Whether the memory under the ring has failed, so the session is over; called before each
    /// read, it may do the memory's upkeep first (RDMA: polls the completion queue and posts a
    /// credit return that found the send queue full). Memory that cannot fail says no.
    fn failed(&mut self) -> bool {
        false
    }
}
