//! A simulated persistent memory that crashes: the model the log's crash consistency is tested
//! against (issue 15, item 4).
//!
//! It keeps two images: what the CPU sees, and what is durable. A store is durable once a flush
//! has covered it and a fence has followed. At a crash every other store since its word was
//! last durable may survive or be lost, each aligned 8-byte word on its own: stores tear at
//! 8-byte granularity, in any combination. (A word stored twice between fences crashes to one
//! of its last durable and newest values; the log never stores a word twice between fences.)

use super::PersistentMemory;
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::Path;

const WORD: usize = 8;

pub struct SimPmem {
    cpu: Vec<u8>,
    durable: Vec<u8>,
    /// Words stored since last durable, and whether a flush has covered them since.
    pending: BTreeMap<usize, bool>,
    /// Memory operations (stores, flushes, fences) so far.
    ops: u64,
    /// The operation before which the machine crashes.
    crash_at: Option<u64>,
    /// What survived the crash, once it happened.
    crashed: Option<Vec<u8>>,
    /// Chooses which pending words survive (splitmix64).
    rng: u64,
}

impl SimPmem {
    /// `len` zero bytes, all durable, that never crash.
    pub fn new(len: usize) -> SimPmem {
        SimPmem::from_image(vec![0; len])
    }

    /// Memory holding `image`, all durable: a machine restarted after a crash.
    pub fn from_image(image: Vec<u8>) -> SimPmem {
        SimPmem { cpu: image.clone(), durable: image, pending: BTreeMap::new(), ops: 0, crash_at: None, crashed: None, rng: 0 }
    }

    /// Crashes before operation `op` (counting from 0), keeping pending words as `seed` picks.
    /// After the crash stores are ignored and fences fail, as if the machine had stopped.
    pub fn crash_before(mut self, op: u64, seed: u64) -> SimPmem {
        self.crash_at = Some(op);
        self.rng = seed;
        self
    }

    /// Operations done so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// What the memory holds after the crash; crashes now if it has not yet.
    pub fn crash_image(&mut self) -> Vec<u8> {
        if self.crashed.is_none() {
            self.crash();
        }
        self.crashed.clone().expect("crashed just above")
    }

    fn crash(&mut self) {
        let mut image = self.durable.clone();
        let words: Vec<usize> = self.pending.keys().copied().collect();
        for w in words {
            if self.next_random() & 1 == 1 {
                let range = w * WORD..((w + 1) * WORD).min(image.len());
                image[range.clone()].copy_from_slice(&self.cpu[range]);
            }
        }
        self.crashed = Some(image);
    }

    /// Counts an operation; false once the machine has crashed.
    fn tick(&mut self) -> bool {
        if self.crashed.is_none() && self.crash_at == Some(self.ops) {
            self.crash();
        }
        self.ops += 1;
        self.crashed.is_none()
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl PersistentMemory for SimPmem {
    fn bytes(&self) -> &[u8] {
        &self.cpu
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        if !self.tick() || data.is_empty() {
            return;
        }
        self.cpu[offset..offset + data.len()].copy_from_slice(data);
        for w in offset / WORD..=(offset + data.len() - 1) / WORD {
            self.pending.insert(w, false);
        }
    }

    fn flush(&mut self, range: Range<usize>) {
        if !self.tick() || range.is_empty() {
            return;
        }
        for (_, flushed) in self.pending.range_mut(range.start / WORD..=(range.end - 1) / WORD) {
            *flushed = true;
        }
    }

    fn fence(&mut self) -> io::Result<()> {
        if !self.tick() {
            return Err(io::Error::other("simulated crash"));
        }
        let cpu = &self.cpu;
        let durable = &mut self.durable;
        self.pending.retain(|&w, flushed| {
            if *flushed {
                let range = w * WORD..((w + 1) * WORD).min(cpu.len());
                durable[range.clone()].copy_from_slice(&cpu[range]);
            }
            !*flushed
        });
        Ok(())
    }

    fn path(&self) -> &Path {
        Path::new("simulated-pmem")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flushed_and_fenced_stores_are_sure_to_survive() {
        for seed in 0..64 {
            let mut mem = SimPmem::new(64).crash_before(5, seed);
            mem.write(0, &[1; 16]); // op 0
            mem.flush(0..16); // op 1
            mem.fence().unwrap(); // op 2: words 0 and 1 durable
            mem.write(16, &[2; 8]); // op 3: flushed, never fenced
            mem.flush(16..24); // op 4
            mem.write(24, &[3; 12]); // op 5: the crash comes first
            assert!(mem.fence().is_err());
            let image = mem.crash_image();
            assert_eq!(image[..16], [1; 16]);
            assert!(image[16..24] == [2; 8] || image[16..24] == [0; 8], "{image:?}");
            assert_eq!(image[24..], [0; 40]);
        }
    }

    #[test]
    fn pending_words_survive_in_every_combination() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut mem = SimPmem::new(32).crash_before(10, seed);
            mem.write(0, &[9; 24]);
            let image = mem.crash_image();
            seen.insert([image[0], image[8], image[16]]);
            for word in image[..24].chunks(8) {
                assert!(word == [9; 8] || word == [0; 8], "torn inside a word: {word:?}");
            }
        }
        assert_eq!(seen.len(), 8, "each of the 3 words survives or not on its own");
    }
}
