//! The circular log itself: appends records at the tail, publishes the tail and head through the
//! two alternating slots, and recovers the live records after a crash.
//!
//! The one ordering rule everything rests on: a slot is written only after a fence has made
//! durable every record it names, and a record is written over released space only after a
//! fence has made durable the slot that released it (docs/nvm.md, "Why it is crash-consistent").

use super::layout::{
    record_size, valid_capacity, Kind, RecordHeader, Slot, Superblock, ALIGN, RECORD_HEADER, RING_OFFSET, SLOT_LEN, SLOT_OFFSETS,
    SUPERBLOCK_LEN,
};
use super::{NvmError, PersistentMemory};
use std::io;

/// A place in the log: where a record starts (or the tail), with that record's sequence number.
/// Only the log makes them; hand one back to [`PmemLog::advance_head`] to release what precedes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    offset: u64,
    seq: u64,
}

impl Position {
    /// The sequence number of the record starting here.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A record taken into the log (durable at the next [`PmemLog::persist`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number, consecutive from the log's first.
    pub seq: u64,
    /// Where the payload starts in the log's memory (its file's offset): it stays there, unchanged,
    /// until the head passes `end`.
    pub payload_at: u64,
    /// Just past the record: release up to here once it is durable elsewhere.
    pub end: Position,
}

/// Why a record was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// No room until the head advances: wait for the drainer, then retry.
    #[error("persistent log full: {needed} bytes needed, {free} free")]
    Full {
        /// Bytes the record needs, framing included.
        needed: u64,
        /// Bytes free now.
        free: u64,
    },
    /// Larger than the log ever takes (half its ring, so an empty log takes any record).
    #[error("record of {len} bytes exceeds the persistent log's limit of {max}")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload the log takes.
        max: usize,
    },
}

/// A durable record, read back from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// Where the record's frame starts in the log's file (for errors naming it).
    pub offset: u64,
    /// The payload, borrowed from the log's memory.
    pub payload: &'a [u8],
    /// Just past the record.
    pub end: Position,
}

/// A circular log of checksummed records in persistent memory `M`.
pub struct PmemLog<M> {
    mem: M,
    capacity: u64,
    /// The slot last made durable: what recovery would find.
    durable: Slot,
    /// Which of the two slots holds it.
    current: usize,
    /// Where the next record goes: past `durable.tail` while appends await `persist`.
    tail: u64,
    next_seq: u64,
}

/// One step of a walk through the ring.
enum Step<'a> {
    Record(Record<'a>),
    /// A pad or the few bytes before the ring's end, too short for a frame: on to the next lap.
    Skip(u64),
}

impl<M: PersistentMemory> PmemLog<M> {
    /// Lays an empty log over all of `mem` (its ring is everything past the header page) and
    /// makes it durable. Not crash-atomic: [`super::create`] formats a temporary file it renames.
    pub fn format(mut mem: M) -> Result<PmemLog<M>, NvmError> {
        let capacity = mem.bytes().len().saturating_sub(RING_OFFSET) as u64;
        if !valid_capacity(capacity) {
            let what = format!("ring of {capacity} bytes is not a multiple of 8 between 256 B and 1 TiB");
            return Err(NvmError::Geometry { path: mem.path().to_path_buf(), what });
        }
        let empty = Slot { generation: 1, head: 0, head_seq: 0, tail: 0, tail_seq: 0 };
        mem.write(0, &Superblock { capacity }.encode());
        mem.write(SLOT_OFFSETS[0], &empty.encode());
        mem.write(SLOT_OFFSETS[1], &[0; SLOT_LEN]);
        mem.flush(0..SUPERBLOCK_LEN + 2 * SLOT_LEN);
        mem.fence().map_err(|e| NvmError::io(mem.path(), e))?;
        Ok(PmemLog { mem, capacity, durable: empty, current: 0, tail: 0, next_seq: 0 })
    }

    /// Opens the log in `mem` after a stop or a crash: takes the newer valid slot and checks
    /// every record it names. Records past its tail (appended, never persisted, perhaps torn)
    /// are cut. A bad record before it cannot be a crash's doing: that is corruption, an error
    /// naming the file offset.
    pub fn recover(mem: M) -> Result<PmemLog<M>, NvmError> {
        let corrupt = |offset: usize, what| NvmError::Corrupt { path: mem.path().to_path_buf(), offset: offset as u64, what };
        let bytes = mem.bytes();
        if bytes.len() < RING_OFFSET {
            return Err(corrupt(0, "shorter than the log's header"));
        }
        let capacity = Superblock::decode(bytes).map_err(|what| corrupt(0, what))?.capacity;
        if bytes.len() as u64 != RING_OFFSET as u64 + capacity {
            return Err(corrupt(0, "file size disagrees with the ring's capacity"));
        }
        let mut newest: Option<(usize, Slot)> = None;
        for (i, &at) in SLOT_OFFSETS.iter().enumerate() {
            let Some(slot) = Slot::decode(&bytes[at..]) else { continue };
            slot.check(capacity).map_err(|what| corrupt(at, what))?;
            match newest {
                Some((_, n)) if n.generation == slot.generation => return Err(corrupt(at, "both slots have one generation")),
                Some((_, n)) if n.generation > slot.generation => {}
                _ => newest = Some((i, slot)),
            }
        }
        let (current, durable) = newest.ok_or_else(|| corrupt(SLOT_OFFSETS[0], "neither head/tail slot is valid"))?;
        let log = PmemLog { mem, capacity, durable, current, tail: durable.tail, next_seq: durable.tail_seq };
        for record in log.records() {
            record?;
        }
        Ok(log)
    }

    /// Writes a record at the tail and starts flushing it; it is durable, and may be
    /// acknowledged, once [`persist`](Self::persist) returns. Never overwrites a record the
    /// head has not released: without room it returns [`AppendError::Full`].
    pub fn append(&mut self, payload: &[u8]) -> Result<Appended, AppendError> {
        self.append_parts(&[payload])
    }

    /// [`append`](Self::append) of one record whose payload is `parts` one after another
    /// (no copy to join them first).
    pub fn append_parts(&mut self, parts: &[&[u8]]) -> Result<Appended, AppendError> {
        let max = self.max_record() - RECORD_HEADER;
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        if len > max {
            return Err(AppendError::TooLarge { len, max });
        }
        let size = record_size(len) as u64;
        let remaining = self.capacity - self.tail % self.capacity;
        // A record never straddles the ring's end: it starts the next lap, after a pad.
        let pad = if size > remaining { remaining } else { 0 };
        let free = self.capacity - (self.tail - self.durable.head);
        if pad + size > free {
            return Err(AppendError::Full { needed: pad + size, free });
        }
        if pad >= RECORD_HEADER as u64 {
            let frame = RecordHeader::pad(self.next_seq, pad as usize).encode();
            self.store(self.tail, &[&frame]);
        }
        self.tail += pad;
        let seq = self.next_seq;
        let frame = RecordHeader::data(seq, parts).encode();
        let mut framed = [&frame[..]; 4];
        assert!(parts.len() < framed.len(), "a record of at most {} parts", framed.len() - 1);
        framed[1..=parts.len()].copy_from_slice(parts);
        self.store(self.tail, &framed[..=parts.len()]);
        let payload_at = (RING_OFFSET + RECORD_HEADER) as u64 + self.tail % self.capacity;
        self.tail += size;
        self.next_seq += 1;
        Ok(Appended { seq, payload_at, end: self.tail_position() })
    }

    /// Makes every record appended so far durable: fences them, then publishes the new tail.
    /// An error leaves the durable state unknown: drop the log and recover it.
    pub fn persist(&mut self) -> io::Result<()> {
        self.publish(self.durable.head, self.durable.head_seq)
    }

    /// Releases the records before `to` (made durable elsewhere by the drainer), so their space
    /// can be reused; durable when it returns. It persists pending appends too. A position at
    /// or before the head is already released.
    ///
    /// # Panics
    /// If `to` is past the durable tail, or not a record's start: it must come from this log.
    pub fn advance_head(&mut self, to: Position) -> io::Result<()> {
        let to = if to.offset <= self.durable.head {
            self.head()
        } else {
            let at_tail = to == self.durable_tail();
            // A record's end is the next record's start, or a pad's before it.
            let at_record = to.offset < self.durable.tail && self.step(to.offset, to.seq).is_ok();
            assert!(at_tail || at_record, "{to:?} is not a record of this log before its durable tail");
            to
        };
        self.publish(to.offset, to.seq)
    }

    /// The durable records, oldest first; each is checked again (checksum, sequence) as read.
    pub fn records(&self) -> Records<'_, M> {
        Records { log: self, at: self.durable.head, seq: self.durable.head_seq }
    }

    /// The oldest live record's position.
    pub fn head(&self) -> Position {
        Position { offset: self.durable.head, seq: self.durable.head_seq }
    }

    /// Just past the newest durable record.
    pub fn durable_tail(&self) -> Position {
        Position { offset: self.durable.tail, seq: self.durable.tail_seq }
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest record, frame included, the log takes.
    pub fn max_record(&self) -> usize {
        (self.capacity / 2) as usize / ALIGN * ALIGN
    }

    /// The memory the log lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    #[cfg(test)]
    pub(super) fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    fn tail_position(&self) -> Position {
        Position { offset: self.tail, seq: self.next_seq }
    }

    /// Fences the records written since the last publish, then writes the other slot and fences
    /// it: at every instant one of the two slots is valid and names only durable records.
    fn publish(&mut self, head: u64, head_seq: u64) -> io::Result<()> {
        if head == self.durable.head && self.tail == self.durable.tail {
            return Ok(());
        }
        self.mem.fence()?;
        let slot = Slot { generation: self.durable.generation + 1, head, head_seq, tail: self.tail, tail_seq: self.next_seq };
        let next = 1 - self.current;
        let at = SLOT_OFFSETS[next];
        self.mem.write(at, &slot.encode());
        self.mem.flush(at..at + SLOT_LEN);
        self.mem.fence()?;
        self.durable = slot;
        self.current = next;
        Ok(())
    }

    /// Writes `parts` one after another at logical position `at` and flushes them.
    fn store(&mut self, at: u64, parts: &[&[u8]]) {
        let start = RING_OFFSET + (at % self.capacity) as usize;
        let mut end = start;
        for part in parts {
            self.mem.write(end, part);
            end += part.len();
        }
        self.mem.flush(start..end);
    }

    /// Reads what starts at `at`, which must be record `seq`: the checks recovery and readers share.
    fn step(&self, at: u64, seq: u64) -> Result<Step<'_>, &'static str> {
        let phys = at % self.capacity;
        let remaining = self.capacity - phys;
        if remaining < RECORD_HEADER as u64 {
            return Ok(Step::Skip(at + remaining));
        }
        let start = RING_OFFSET + phys as usize;
        let bytes = self.mem.bytes();
        let header = RecordHeader::decode(&bytes[start..]).ok_or("unknown record kind")?;
        let body = match header.kind {
            Kind::Pad if header.len as u64 + RECORD_HEADER as u64 != remaining => return Err("pad does not reach the ring's end"),
            Kind::Pad => &[][..],
            Kind::Data if record_size(header.len as usize) as u64 > remaining => return Err("record overruns the ring's end"),
            Kind::Data => &bytes[start + RECORD_HEADER..start + RECORD_HEADER + header.len as usize],
        };
        if !header.verifies(body) {
            return Err("record checksum mismatch");
        }
        if header.seq != seq {
            return Err("record's sequence number breaks the sequence");
        }
        Ok(match header.kind {
            Kind::Pad => Step::Skip(at + remaining),
            Kind::Data => {
                let end = Position { offset: at + record_size(body.len()) as u64, seq: seq + 1 };
                Step::Record(Record { seq, offset: start as u64, payload: body, end })
            }
        })
    }
}

/// The durable records of a [`PmemLog`], oldest first.
pub struct Records<'a, M> {
    log: &'a PmemLog<M>,
    at: u64,
    seq: u64,
}

impl<'a, M: PersistentMemory> Iterator for Records<'a, M> {
    type Item = Result<Record<'a>, NvmError>;

    fn next(&mut self) -> Option<Self::Item> {
        let tail = self.log.durable.tail;
        while self.at < tail {
            let step = self.log.step(self.at, self.seq).and_then(|step| match step {
                Step::Record(r) if r.end.offset > tail => Err("record overruns the log's tail"),
                Step::Skip(to) if to > tail => Err("pad overruns the log's tail"),
                step => Ok(step),
            });
            match step {
                Ok(Step::Skip(to)) => self.at = to,
                Ok(Step::Record(record)) => {
                    self.at = record.end.offset;
                    self.seq = record.end.seq;
                    return Some(Ok(record));
                }
                Err(what) => {
                    let offset = RING_OFFSET as u64 + self.at % self.log.capacity;
                    // One error ends the walk.
                    (self.at, self.seq) = (tail, self.log.durable.tail_seq);
                    return Some(Err(NvmError::Corrupt { path: self.log.mem.path().to_path_buf(), offset, what }));
                }
            }
        }
        if self.at == tail && self.seq != self.log.durable.tail_seq {
            let offset = RING_OFFSET as u64 + tail % self.log.capacity;
            self.seq = self.log.durable.tail_seq;
            return Some(Err(NvmError::Corrupt {
                path: self.log.mem.path().to_path_buf(),
                offset,
                what: "record count disagrees with the tail's sequence number",
            }));
        }
        None
    }
}
