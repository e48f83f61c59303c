//! The persistent log's bytes: the superblock, the two head/tail slots and the record frame,
//! encoded and decoded here and nowhere else (docs/nvm.md has the same layout as a table).
//!
//! Every field is little-endian and every structure starts 8-byte aligned, so each 8-byte
//! field is one aligned store: the unit persistent memory writes atomically.

use crate::format::checksum::checksum;

/// The superblock's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"RSLNVM01";
/// The layout's version; a log of another version is refused, never guessed at.
pub const VERSION: u32 = 1;
/// The superblock: geometry, written once when the log is created.
pub const SUPERBLOCK_LEN: usize = 64;
/// One head/tail slot; two follow the superblock, one cache line each.
pub const SLOT_LEN: usize = 64;
/// File offsets of the two slots.
pub const SLOT_OFFSETS: [usize; 2] = [SUPERBLOCK_LEN, SUPERBLOCK_LEN + SLOT_LEN];
/// File offset of the ring: a page of its own for the header, so that persisting a slot never
/// touches a page of records (msync works on whole pages).
pub const RING_OFFSET: usize = 4096;
/// A record's frame: length, kind, sequence number, CRC.
pub const RECORD_HEADER: usize = 24;
/// Records start 8-byte aligned; the ring's size is a multiple of this.
pub const ALIGN: usize = 8;
/// The smallest ring: room for a few records.
pub const MIN_CAPACITY: u64 = 256;
/// The largest ring: 1 TiB, far past any configured size, small enough that positions never
/// overflow in practice.
pub const MAX_CAPACITY: u64 = 1 << 40;

/// No log writes this many bytes in its life; a larger position is corruption (and the arithmetic
/// on positions never overflows).
pub const MAX_POSITION: u64 = 1 << 62;

/// What a record frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A record the caller appended.
    Data = 1,
    /// Filler to the ring's end: the next record did not fit there and starts the next lap.
    Pad = 2,
}

/// The ring's geometry, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The ring's size in bytes: a multiple of [`ALIGN`] within [`MIN_CAPACITY`,
    /// `MAX_CAPACITY`].
    pub capacity: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.capacity.to_le_bytes());
        b[24..32].copy_from_slice(&(RING_OFFSET as u64).to_le_bytes());
        seal(&mut b);
        b
    }

    /// The geometry in `b`, or what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Superblock, &'static str> {
        let b = &b[..SUPERBLOCK_LEN];
        if b[0..8] != MAGIC {
            return Err("not an RSL persistent log (bad magic)");
        }
        if !sealed(b) {
            return Err("superblock checksum mismatch");
        }
        if u32_at(b, 8) != VERSION {
            return Err("unsupported layout version");
        }
        if u64_at(b, 24) != RING_OFFSET as u64 {
            return Err("unexpected ring offset");
        }
        let capacity = u64_at(b, 16);
        if !valid_capacity(capacity) {
            return Err("ring capacity out of range or unaligned");
        }
        Ok(Superblock { capacity })
    }
}

/// Whether a ring of `capacity` bytes can be laid out.
pub fn valid_capacity(capacity: u64) -> bool {
    (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) && capacity.is_multiple_of(ALIGN as u64)
}

/// Which records are live: `[head, tail)` in logical positions, which only grow; a position's
/// byte is at `RING_OFFSET + position % capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Orders the two slots: the valid one with the higher generation is current.
    pub generation: u64,
    /// The oldest live record's position.
    pub head: u64,
    /// Its sequence number (the next record's, when the log is empty).
    pub head_seq: u64,
    /// Where the next record goes.
    pub tail: u64,
    /// The next record's sequence number.
    pub tail_seq: u64,
}

impl Slot {
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        let fields = [self.generation, self.head, self.head_seq, self.tail, self.tail_seq];
        for (i, v) in fields.into_iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        seal(&mut b);
        b
    }

    /// The slot in `b`, or `None` if its checksum fails (never written, or torn by a crash).
    pub fn decode(b: &[u8]) -> Option<Slot> {
        let b = &b[..SLOT_LEN];
        sealed(b).then(|| Slot {
            generation: u64_at(b, 0),
            head: u64_at(b, 8),
            head_seq: u64_at(b, 16),
            tail: u64_at(b, 24),
            tail_seq: u64_at(b, 32),
        })
    }

    /// What is wrong with a checksummed slot for a ring of `capacity` bytes, if anything.
    pub fn check(&self, capacity: u64) -> Result<(), &'static str> {
        if self.tail > MAX_POSITION || self.tail_seq > MAX_POSITION || self.generation >= MAX_POSITION {
            return Err("slot's tail, sequence or generation is past any log's lifetime");
        }
        if self.head > self.tail || self.tail - self.head > capacity {
            return Err("slot's head and tail are more than the ring apart");
        }
        if self.head_seq > self.tail_seq || self.tail_seq - self.head_seq > self.tail - self.head {
            return Err("slot's sequence numbers disagree with its positions");
        }
        if !self.head.is_multiple_of(ALIGN as u64) || !self.tail.is_multiple_of(ALIGN as u64) {
            return Err("slot's positions are unaligned");
        }
        Ok(())
    }
}

/// A record's frame, before its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The payload's length (for a pad, the bytes skipped after the frame).
    pub len: u32,
    pub kind: Kind,
    pub seq: u64,
    /// CRC-64 (`format::checksum`) of the frame's first 16 bytes, then (for data) the payload.
    pub crc: u64,
}

impl RecordHeader {
    /// The frame of a data record carrying `payload`.
    pub fn data(seq: u64, payload: &[&[u8]]) -> RecordHeader {
        let len = payload.iter().map(|p| p.len()).sum::<usize>();
        let len = u32::try_from(len).expect("the caller bounds record sizes");
        let crc = payload.iter().fold(checksum(&fields(len, Kind::Data, seq)), |crc, part| crate::format::checksum::update(crc, part));
        RecordHeader { len, kind: Kind::Data, seq, crc }
    }

    /// The frame of a pad covering `total` bytes, frame included.
    pub fn pad(seq: u64, total: usize) -> RecordHeader {
        let len = u32::try_from(total - RECORD_HEADER).expect("a pad is shorter than a record");
        RecordHeader { len, kind: Kind::Pad, seq, crc: checksum(&fields(len, Kind::Pad, seq)) }
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER] {
        let mut b = [0u8; RECORD_HEADER];
        b[..16].copy_from_slice(&fields(self.len, self.kind, self.seq));
        b[16..].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// The frame in `b`, or `None` if its kind is unknown (its CRC is checked by the caller,
    /// which has the payload).
    pub fn decode(b: &[u8]) -> Option<RecordHeader> {
        let kind = match u32_at(b, 4) {
            1 => Kind::Data,
            2 => Kind::Pad,
            _ => return None,
        };
        Some(RecordHeader { len: u32_at(b, 0), kind, seq: u64_at(b, 8), crc: u64_at(b, 16) })
    }

    /// Whether the CRC matches the frame and `payload` (empty for a pad).
    pub fn verifies(&self, payload: &[u8]) -> bool {
        let body = fields(self.len, self.kind, self.seq);
        crate::format::checksum::update(checksum(&body), payload) == self.crc
    }
}

/// The bytes a record of `len` payload bytes occupies in the ring, frame and alignment included.
pub fn record_size(len: usize) -> usize {
    RECORD_HEADER + len.next_multiple_of(ALIGN)
}

fn fields(len: u32, kind: Kind, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&len.to_le_bytes());
    b[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Writes the checksum of all but the last 8 bytes into the last 8.
fn seal(b: &mut [u8]) {
    let end = b.len() - 8;
    let crc = checksum(&b[..end]);
    b[end..].copy_from_slice(&crc.to_le_bytes());
}

fn sealed(b: &[u8]) -> bool {
    let end = b.len() - 8;
    checksum(&b[..end]) == u64_at(b, end)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_round_trip() {
        let sb = Superblock { capacity: 1 << 20 };
        assert_eq!(Superblock::decode(&sb.encode()), Ok(sb));
        let slot = Slot { generation: 7, head: 64, head_seq: 3, tail: 128, tail_seq: 5 };
        assert_eq!(Slot::decode(&slot.encode()), Some(slot));
        let h = RecordHeader::data(9, &[b"ab", b"c"]);
        assert_eq!(RecordHeader::decode(&h.encode()), Some(h));
        assert!(h.verifies(b"abc"));
        assert!(!h.verifies(b"abd"));
    }

    #[test]
    fn a_torn_or_blank_slot_is_no_slot() {
        assert_eq!(Slot::decode(&[0u8; SLOT_LEN]), None);
        let mut b = Slot { generation: 2, head: 0, head_seq: 0, tail: 8, tail_seq: 1 }.encode();
        b[8] ^= 1;
        assert_eq!(Slot::decode(&b), None);
    }

    #[test]
    fn the_superblock_is_checked() {
        let mut b = Superblock { capacity: 4096 }.encode();
        b[16] ^= 8;
        assert!(Superblock::decode(&b).is_err());
        assert!(Superblock::decode(&Superblock { capacity: 100 }.encode()).is_err());
        assert!(Superblock::decode(&[0u8; SUPERBLOCK_LEN]).is_err());
    }
}
