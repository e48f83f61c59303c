//! Ring memory as a slice of atomic words: the one implementation of both memory traits that the
//! in-process ring and the shared-memory emulation share. Every access is an atomic word access,
//! so even a misbehaving peer process writing concurrently yields only wrong values (which the
//! protocol validates), never undefined behaviour.

use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{
    check_capacity, region_bytes, BadCapacity, LocalMemory, RemoteMemory, CAPACITY_WORD, CREDIT_WORD, DATA_WORD, DOORBELL_WORD, MAGIC,
    MAGIC_WORD,
};

/// Memory laid out as in the module table, seen as words.
pub(super) trait Words {
    /// The whole region: control words then data.
    fn words(&self) -> &[AtomicU64];
    /// The data capacity, checked when the region was made or opened.
    fn data_capacity(&self) -> usize;
}

/// Writes the header words of a fresh, zeroed region.
pub(super) fn format(words: &[AtomicU64], capacity: usize) {
    // The capacity first, the magic published after it: a peer that sees the magic (Acquire)
    // sees the capacity too.
    words[CAPACITY_WORD].store(capacity as u64, Ordering::Relaxed);
    words[MAGIC_WORD].store(MAGIC, Ordering::Release);
}

impl<T: Words> RemoteMemory for T {
    fn capacity(&self) -> usize {
        self.data_capacity()
    }

    fn write_record(&mut self, offset: usize, header: u64, payload: &[u8]) {
        let first = DATA_WORD + offset / 8;
        let words = &self.words()[first..first + 1 + payload.len().div_ceil(8)];
        words[0].store(header, Ordering::Relaxed);
        let mut chunks = payload.chunks_exact(8);
        for (word, chunk) in words[1..].iter().zip(&mut chunks) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            words[words.len() - 1].store(u64::from_le_bytes(last), Ordering::Relaxed);
        }
    }

    fn ring_doorbell(&mut self, word: u64) {
        self.words()[DOORBELL_WORD].store(word, Ordering::Release);
    }

    fn credits(&self) -> u64 {
        self.words()[CREDIT_WORD].load(Ordering::Acquire)
    }
}

impl<T: Words> LocalMemory for T {
    fn capacity(&self) -> usize {
        self.data_capacity()
    }

    fn doorbell(&self) -> u64 {
        self.words()[DOORBELL_WORD].load(Ordering::Acquire)
    }

    fn read_word(&self, offset: usize) -> u64 {
        self.words()[DATA_WORD + offset / 8].load(Ordering::Relaxed)
    }

    fn read_payload(&self, offset: usize, len: usize, out: &mut BytesMut) {
        append_payload(&self.words()[DATA_WORD + offset / 8..], len, out);
    }

    fn return_credits(&mut self, word: u64) {
        self.words()[CREDIT_WORD].store(word, Ordering::Release);
    }
}

/// Appends the first `len` bytes of `words` (little-endian) to `out`: straight into its spare
/// room, never zero-filled first.
pub(super) fn append_payload(words: &[AtomicU64], len: usize, out: &mut BytesMut) {
    out.reserve(len);
    for (i, word) in words[..len.div_ceil(8)].iter().enumerate() {
        let bytes = word.load(Ordering::Relaxed).to_le_bytes();
        out.extend_from_slice(&bytes[..(len - i * 8).min(8)]);
    }
}

/// Ring memory on the heap, shared by a writer and a reader in one process (tests, and peers
/// that share an address space).
#[derive(Debug)]
pub struct InProcess {
    words: Arc<[AtomicU64]>,
    capacity: usize,
}

impl InProcess {
    /// A fresh ring of `capacity` data bytes: one handle for the writer, one for the reader.
    pub fn pair(capacity: u64) -> Result<(InProcess, InProcess), BadCapacity> {
        let capacity = check_capacity(capacity)?;
        let words: Arc<[AtomicU64]> = (0..region_bytes(capacity) / 8).map(|_| AtomicU64::new(0)).collect();
        format(&words, capacity);
        let writer = InProcess { words: Arc::clone(&words), capacity };
        Ok((writer, InProcess { words, capacity }))
    }

    /// Another handle on the same memory, as a writer reconnecting to the ring would get.
    pub fn share(&self) -> InProcess {
        InProcess { words: Arc::clone(&self.words), capacity: self.capacity }
    }
}

impl Words for InProcess {
    fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    fn data_capacity(&self) -> usize {
        self.capacity
    }
}
