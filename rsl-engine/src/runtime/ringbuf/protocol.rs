//! The writer and reader ends of a ring: framing, wrap-around, credits and sessions.
//!
//! Positions are byte counts since the session began; a position's data offset is it modulo the
//! capacity `C`. A record is a header word (`len` in bits 0..32, the session epoch in 32..48, the
//! kind in 48..64) and `len` payload bytes padded to 8, and never straddles the end of the data:
//! when it would, the writer fills the rest with a wrap marker (a header of kind [`KIND_WRAP`]),
//! published on its own as soon as that space is free, and the record starts at offset 0. So a
//! message of up to `C - 8` bytes always fits eventually. The writer keeps `tail - consumed <= C`, where
//! `consumed` is what the reader's credit word last said, so it never overwrites unread bytes.
//! Control words carry `epoch << 48 | position mod 2^48`; positions are rebuilt relative to the
//! last known one, which is unambiguous because they never move more than `C <= 2^40` apart.

use bytes::BytesMut;
use std::num::NonZeroU16;

use super::{LocalMemory, RemoteMemory};

/// A record carrying a message.
const KIND_RECORD: u16 = 0;
/// A wrap marker: the rest of the data up to the end is padding.
const KIND_WRAP: u16 = 1;
/// Position bits of a control word.
const POS_MASK: u64 = (1 << 48) - 1;
/// Remote writes one [`RingWriter::try_send`] makes at most: a wrap marker and its doorbell, then
/// the record and its doorbell. An RDMA writer needs this many free send-queue slots before a send.
pub const MAX_WRITES_PER_SEND: usize = 4;

/// A control word: the session epoch above a position.
fn tag(epoch: NonZeroU16, position: u64) -> u64 {
    (u64::from(epoch.get()) << 48) | (position & POS_MASK)
}

/// The epoch of a control word.
fn tag_epoch(word: u64) -> u16 {
    (word >> 48) as u16
}

/// A record header.
fn header(len: u32, epoch: NonZeroU16, kind: u16) -> u64 {
    u64::from(len) | (u64::from(epoch.get()) << 32) | (u64::from(kind) << 48)
}

/// Bytes a record of a `len`-byte message occupies.
fn record_size(len: u64) -> u64 {
    8 + len.next_multiple_of(8)
}

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message can never fit; the caller must split it or use another path.
    #[error("message of {len} bytes exceeds the ring's largest {max}")]
    TooLarge {
        /// The message's length in bytes.
        len: usize,
        /// The largest message the ring takes.
        max: usize,
    },
    /// Not enough credit now; retry once the reader returns some.
    #[error("ring full: waiting for the reader's credits")]
    WouldBlock,
    /// The reader opened a newer session: this writer is stale and must reconnect.
    #[error("the reader moved to session {current}; this writer's session {mine} is over")]
    Superseded {
        /// This writer's session epoch.
        mine: u16,
        /// The reader's current epoch.
        current: u16,
    },
    /// The reader's credit word claims it consumed bytes never written, or went backwards.
    #[error("credit word {word:#x} is inconsistent with tail {tail} and consumed {consumed}")]
    BadCredit {
        /// The credit word as read.
        word: u64,
        /// Bytes this writer has published.
        tail: u64,
        /// Bytes the reader had returned before.
        consumed: u64,
    },
    /// The memory under the ring failed (an RDMA work request did not complete): the session is
    /// over. Reported by the memory's owner, never by `try_send`.
    #[error("the memory under the ring failed; the session is over")]
    MemoryFailed,
}

/// Why the ring cannot be read; the ring is unusable and the session must be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The doorbell names a tail behind the head or more than a capacity ahead.
    #[error("doorbell word {word:#x} is out of range for head {head}")]
    TailOutOfRange {
        /// The doorbell word as read.
        word: u64,
        /// The reader's head.
        head: u64,
    },
    /// A record's length runs past the end of the data or past the published tail.
    #[error("record at data offset {offset} has bad length {len}")]
    BadLength {
        /// The record's offset in the ring's data.
        offset: usize,
        /// The length its header claims.
        len: u32,
    },
    /// A header carries another session's epoch.
    #[error("record at data offset {offset} belongs to session {epoch}")]
    StaleRecord {
        /// The record's offset in the ring's data.
        offset: usize,
        /// The epoch its header carries.
        epoch: u16,
    },
    /// A header of unknown kind, or a wrap marker that wraps nothing.
    #[error("record at data offset {offset} has bad kind {kind} or length {len}")]
    BadKind {
        /// The record's offset in the ring's data.
        offset: usize,
        /// The kind its header carries.
        kind: u16,
        /// The length its header carries.
        len: u32,
    },
    /// The memory under the ring failed (an RDMA work request did not complete): the session is
    /// over ([`LocalMemory::failed`]).
    #[error("the memory under the ring failed; the session is over")]
    MemoryFailed,
}

/// The writing end: appends messages to the peer's ring.
#[derive(Debug)]
pub struct RingWriter<M> {
    mem: M,
    epoch: NonZeroU16,
    capacity: u64,
    /// Position after the last record written.
    tail: u64,
    /// The reader's consumed position, from its last credit word of this session.
    consumed: u64,
    /// Whether the reader has opened this session (written a credit word with its epoch).
    open: bool,
}

impl<M: RemoteMemory> RingWriter<M> {
    /// A writer for session `epoch`; it writes nothing until the reader opens that session.
    pub fn new(mem: M, epoch: NonZeroU16) -> Self {
        let capacity = mem.capacity() as u64;
        RingWriter { mem, epoch, capacity, tail: 0, consumed: 0, open: false }
    }

    /// The largest message a record can carry: a whole ring less its header.
    pub fn max_message(&self) -> usize {
        (self.capacity - 8).min(u64::from(u32::MAX)) as usize
    }

    /// Appends `message` as one record and rings the doorbell.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), SendError> {
        let max = self.max_message();
        let len =
            u32::try_from(message.len()).ok().filter(|&len| len as usize <= max).ok_or(SendError::TooLarge { len: message.len(), max })?;
        let size = record_size(u64::from(len));
        let offset = self.tail % self.capacity;
        let skip = if offset + size > self.capacity { self.capacity - offset } else { 0 };
        debug_assert!(skip.is_multiple_of(8) && size <= self.capacity, "records are whole words in the ring");
        self.refresh_credits()?;
        if !self.open {
            return Err(SendError::WouldBlock);
        }
        if skip > 0 {
            // The marker goes out on its own: needing room for it and the record at once could
            // exceed the ring, and a record of a whole ring could then never be sent.
            if self.free() < skip {
                return Err(SendError::WouldBlock);
            }
            self.mem.write_record(offset as usize, header(0, self.epoch, KIND_WRAP), &[]);
            self.tail += skip;
            self.mem.ring_doorbell(tag(self.epoch, self.tail));
        }
        if self.free() < size {
            return Err(SendError::WouldBlock);
        }
        let offset = (self.tail % self.capacity) as usize;
        self.mem.write_record(offset, header(len, self.epoch, KIND_RECORD), message);
        self.tail += size;
        self.mem.ring_doorbell(tag(self.epoch, self.tail));
        debug_assert!(self.tail - self.consumed <= self.capacity, "overran unread bytes");
        Ok(())
    }

    /// Bytes the writer may write without overwriting unread ones.
    fn free(&self) -> u64 {
        self.capacity - (self.tail - self.consumed)
    }

    /// Reads the credit word: moves `consumed` forward, or finds the session over or the word bad.
    fn refresh_credits(&mut self) -> Result<(), SendError> {
        let word = self.mem.credits();
        let epoch = tag_epoch(word);
        if epoch != self.epoch.get() {
            // Before the reader opens this session the word still holds an older epoch (or 0).
            if self.open {
                return Err(SendError::Superseded { mine: self.epoch.get(), current: epoch });
            }
            return Ok(());
        }
        let behind = self.tail.wrapping_sub(word) & POS_MASK;
        if behind > self.tail - self.consumed {
            return Err(SendError::BadCredit { word, tail: self.tail, consumed: self.consumed });
        }
        self.consumed = self.tail - behind;
        self.open = true;
        Ok(())
    }

    /// The memory, e.g. to tear the connection down.
    pub fn into_memory(self) -> M {
        self.mem
    }

    /// The memory, read-only (e.g. to wake a parked reader).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The memory, for its upkeep between sends (e.g. polling an RDMA completion queue); the ring
    /// itself is written only through [`Self::try_send`].
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }
}

/// The reading end: takes messages from its own ring in order and returns credits in batches.
#[derive(Debug)]
pub struct RingReader<M> {
    mem: M,
    epoch: NonZeroU16,
    capacity: u64,
    /// Position of the next record to read.
    head: u64,
    /// The position last written to the credit word.
    credited: u64,
    /// Consumed bytes that trigger a credit return.
    credit_batch: u64,
}

impl<M: LocalMemory> RingReader<M> {
    /// Opens session `epoch` on `mem`: from now on only records of this session are read, and the
    /// credit word tells the session's writer it may start. Credits go back once `credit_batch`
    /// bytes are consumed or the ring is found empty; a batch above the capacity therefore means
    /// "only when drained". Whatever the memory held before (an older session's bytes, its
    /// doorbell) is never read as new, because every control word and header carries the epoch.
    pub fn open(mut mem: M, epoch: NonZeroU16, credit_batch: u64) -> Self {
        let capacity = mem.capacity() as u64;
        mem.return_credits(tag(epoch, 0));
        RingReader { mem, epoch, capacity, head: 0, credited: 0, credit_batch }
    }

    /// Takes the next message into `out` (replacing its contents; its spare room is reused):
    /// `Ok(false)` when there is none.
    pub fn try_recv(&mut self, out: &mut BytesMut) -> Result<bool, RecvError> {
        if self.mem.failed() {
            return Err(RecvError::MemoryFailed);
        }
        loop {
            let word = self.mem.doorbell();
            if tag_epoch(word) != self.epoch.get() {
                return Ok(false); // The writer has published nothing in this session yet.
            }
            let ahead = word.wrapping_sub(self.head) & POS_MASK;
            if ahead > self.capacity {
                return Err(RecvError::TailOutOfRange { word, head: self.head });
            }
            if ahead == 0 {
                self.flush_credits();
                return Ok(false);
            }
            if self.take_record(ahead, out)? {
                return Ok(true);
            }
        }
    }

    /// Reads the record at the head, `ahead` bytes of which are published: `Ok(true)` for a
    /// message, `Ok(false)` for a wrap marker skipped.
    fn take_record(&mut self, ahead: u64, out: &mut BytesMut) -> Result<bool, RecvError> {
        let offset = (self.head % self.capacity) as usize;
        let word = self.mem.read_word(offset);
        let (len, epoch, kind) = (word as u32, (word >> 32) as u16, (word >> 48) as u16);
        if epoch != self.epoch.get() {
            return Err(RecvError::StaleRecord { offset, epoch });
        }
        let room = self.capacity - offset as u64;
        let size = match kind {
            KIND_WRAP if len == 0 && offset != 0 && room <= ahead => room,
            KIND_RECORD => {
                let size = record_size(u64::from(len));
                if size > room || size > ahead {
                    return Err(RecvError::BadLength { offset, len });
                }
                out.clear();
                self.mem.read_payload(offset + 8, len as usize, out);
                size
            }
            _ => return Err(RecvError::BadKind { offset, kind, len }),
        };
        self.head += size;
        if self.head - self.credited >= self.credit_batch {
            self.flush_credits();
        }
        Ok(kind == KIND_RECORD)
    }

    /// Returns every credit not yet returned.
    pub fn flush_credits(&mut self) {
        if self.head != self.credited {
            self.mem.return_credits(tag(self.epoch, self.head));
            self.credited = self.head;
        }
    }

    /// The memory, e.g. to open a new session on it.
    pub fn into_memory(self) -> M {
        self.mem
    }

    /// The memory, read-only.
    pub fn memory(&self) -> &M {
        &self.mem
    }
}
