//! The log's behaviour and its crash consistency, over the simulated persistent memory.
//!
//! The property test crashes a random workload at a random memory operation and checks what
//! recovery finds. `NVM_CRASH_CASES` sets how many crash points it tries (default 2000):
//! `NVM_CRASH_CASES=100000 nice -n 10 cargo test --release -p rsl-engine --lib runtime::nvm`.

use super::layout::{record_size, RECORD_HEADER, RING_OFFSET};
use super::sim::SimPmem;
use super::{AppendError, NvmError, PersistentMemory, PmemLog};
use proptest::prelude::*;

/// One step of a workload.
#[derive(Clone, Debug)]
enum Op {
    /// Appends a record whose payload is `len` bytes derived from its sequence number.
    Append(usize),
    Persist,
    /// Releases up to the `n`th durable record (0: none).
    Release(usize),
}

/// A record's payload: its sequence number spelled out, so a record in the wrong place shows.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)).collect()
}

/// What the workload did, as the caller saw it.
#[derive(Default)]
struct Seen {
    /// Every payload an append took, by sequence number.
    appended: Vec<Vec<u8>>,
    /// Records before this are acknowledged: a persist (or head advance) covering them returned.
    acknowledged: u64,
    /// The head a returned advance made durable, and the furthest one asked for.
    head_durable: u64,
    head_asked: u64,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.appended.iter().map(Vec::len).collect();
        f.debug_struct("Seen")
            .field("appended_lens", &lens)
            .field("acknowledged", &self.acknowledged)
            .field("head_durable", &self.head_durable)
            .field("head_asked", &self.head_asked)
            .finish()
    }
}

/// Runs `ops` on a log over `mem` until the memory crashes (a fence fails).
fn run(mut log: PmemLog<SimPmem>, ops: &[Op], seen: &mut Seen) -> PmemLog<SimPmem> {
    for op in ops {
        let done = match *op {
            Op::Append(len) => {
                let len = len.min(log.max_record() - RECORD_HEADER);
                let seq = log.next_seq();
                match log.append(&payload(seq, len)) {
                    Ok(a) => {
                        assert_eq!(a.seq, seq);
                        seen.appended.push(payload(seq, len));
                    }
                    Err(AppendError::Full { needed, free }) => assert!(needed > free),
                    Err(e @ AppendError::TooLarge { .. }) => panic!("{e}"),
                }
                Ok(())
            }
            Op::Persist => log.persist(),
            Op::Release(n) => {
                let Some(to) = log.records().take(n).last().map(|r| r.unwrap().end) else { continue };
                seen.head_asked = to.seq();
                log.advance_head(to).inspect(|()| seen.head_durable = to.seq())
            }
        };
        if done.is_err() {
            return log;
        }
        if matches!(op, Op::Persist | Op::Release(_)) {
            seen.acknowledged = seen.appended.len() as u64;
        }
    }
    log
}

/// Recovers `image` and checks it holds the acknowledged records, in order, perhaps followed by
/// unacknowledged ones, each exactly as appended; then that the recovered log goes on working.
fn check_recovery(image: Vec<u8>, seen: &Seen) {
    let mut log = PmemLog::recover(SimPmem::from_image(image)).unwrap_or_else(|e| panic!("recovery failed: {e}"));
    let (head, tail) = (log.head().seq(), log.durable_tail().seq());
    assert!((seen.head_durable..=seen.head_asked.max(seen.head_durable)).contains(&head), "head {head}, {seen:?}");
    assert!((seen.acknowledged..=seen.appended.len() as u64).contains(&tail), "tail {tail}, {seen:?}");
    let mut expected = head;
    for record in log.records() {
        let record = record.unwrap_or_else(|e| panic!("recovered log unreadable: {e}"));
        assert_eq!(record.seq, expected, "hole or reordering");
        assert_eq!(record.payload, seen.appended[record.seq as usize], "record {} not as written", record.seq);
        expected += 1;
    }
    assert_eq!(expected, tail);
    // It takes a new record after the recovered ones, and a restart keeps it.
    let next = log.records().last().map(|r| r.unwrap().end);
    if let Some(end) = next {
        log.advance_head(end).unwrap();
    }
    assert_eq!(log.append(b"after").map(|a| a.seq), Ok(tail));
    log.persist().unwrap();
    let image = log.memory().bytes().to_vec();
    let log = PmemLog::recover(SimPmem::from_image(image)).unwrap();
    let last = log.records().last().unwrap().unwrap();
    assert_eq!((last.seq, last.payload), (tail, &b"after"[..]));
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..200).prop_map(Op::Append),
        1 => (200usize..500).prop_map(Op::Append),
        3 => Just(Op::Persist),
        2 => (0usize..6).prop_map(Op::Release),
    ]
}

fn crash_cases() -> u32 {
    std::env::var("NVM_CRASH_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crash_cases(), ..ProptestConfig::default() })]

    /// Crashes a random workload (appends of random sizes, persists, head advances; small
    /// rings, so it wraps) before a random memory operation, keeping a random subset of the
    /// stores not yet flushed and fenced.
    #[test]
    fn recovery_after_any_crash_yields_the_acknowledged_records(
        words in 32u64..256,
        ops in prop::collection::vec(op(), 1..80),
        crash_point in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let capacity = words * 8;
        // A dry run counts the memory operations, so the crash can fall before any of them.
        let formatted = fresh(capacity as usize).memory().bytes().to_vec();
        let dry = PmemLog::recover(SimPmem::from_image(formatted.clone())).unwrap();
        let total = run(dry, &ops, &mut Seen::default()).memory().ops();
        let crash_at = (total as f64 * crash_point) as u64;
        let mem = SimPmem::from_image(formatted).crash_before(crash_at, seed);
        let mut seen = Seen::default();
        let mut log = run(PmemLog::recover(mem).unwrap(), &ops, &mut seen);
        check_recovery(log.memory_mut().crash_image(), &seen);
    }
}

/// A log over simulated memory with a ring of `capacity` bytes.
fn fresh(capacity: usize) -> PmemLog<SimPmem> {
    PmemLog::format(SimPmem::new(RING_OFFSET + capacity)).unwrap()
}

/// The log after a restart with every store kept (a process crash, or a clean stop).
fn restarted(log: &PmemLog<SimPmem>) -> PmemLog<SimPmem> {
    PmemLog::recover(SimPmem::from_image(log.memory().bytes().to_vec())).unwrap()
}

fn seqs(log: &PmemLog<SimPmem>) -> Vec<u64> {
    log.records().map(|r| r.unwrap().seq).collect()
}

#[test]
fn unpersisted_appends_are_cut_and_their_sequence_numbers_reused() {
    let mut log = fresh(1024);
    for seq in 0..3 {
        log.append(&payload(seq, 40)).unwrap();
    }
    log.persist().unwrap();
    log.append(&payload(3, 40)).unwrap();
    let log = restarted(&log);
    assert_eq!(seqs(&log), [0, 1, 2]);
    assert_eq!(log.next_seq(), 3);
}

#[test]
fn a_full_log_refuses_until_the_head_advances() {
    let mut log = fresh(256);
    let mut ends = Vec::new();
    let full = loop {
        match log.append(&[7; 40]) {
            Ok(a) => ends.push(a.end),
            Err(e) => break e,
        }
    };
    assert_eq!(full, AppendError::Full { needed: 64, free: 256 - 64 * 4 });
    log.persist().unwrap();
    assert_eq!(seqs(&restarted(&log)), [0, 1, 2, 3]);
    log.advance_head(ends[0]).unwrap();
    assert_eq!(log.append(&[8; 40]).map(|a| a.seq), Ok(4));
    log.persist().unwrap();
    assert_eq!(seqs(&restarted(&log)), [1, 2, 3, 4]);
}

#[test]
fn a_record_larger_than_half_the_ring_is_refused() {
    let mut log = fresh(512);
    assert_eq!(log.append(&[0; 233]), Err(AppendError::TooLarge { len: 233, max: 232 }));
    assert_eq!(record_size(232), 256);
    assert!(log.append(&[0; 232]).is_ok());
}

#[test]
fn records_wrap_after_a_pad_or_a_gap_too_short_for_one() {
    let mut log = fresh(256);
    // Ten empty records fill 240 bytes: the 16 left are too short for a frame, skipped unmarked.
    let ends: Vec<_> = (0..10).map(|_| log.append(&[]).unwrap().end).collect();
    log.persist().unwrap();
    log.advance_head(ends[9]).unwrap();
    assert_eq!(log.append(b"first lap two").unwrap().seq, 10); // 40 bytes at ring offset 0
    let a = log.append(&[5; 60]).unwrap(); // 88 bytes at 40
    log.append(&[6; 60]).unwrap(); // 88 bytes at 128
    log.persist().unwrap();
    log.advance_head(a.end).unwrap();
    log.append(&[7; 30]).unwrap(); // 56 bytes: at 0 again, after a pad of the 40 left at 216
    log.persist().unwrap();
    let pad_kind = RING_OFFSET + 216 + 4;
    assert_eq!(log.memory().bytes()[pad_kind..pad_kind + 4], 2u32.to_le_bytes());
    let log = restarted(&log);
    let records: Vec<_> = log.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [12, 13]);
    assert_eq!(records[1].payload, &[7; 30]);
    assert_eq!(log.durable_tail(), records[1].end);
}

#[test]
fn a_bad_record_before_the_tail_is_corruption_at_its_offset() {
    let mut log = fresh(1024);
    for seq in 0..4 {
        log.append(&payload(seq, 30)).unwrap();
    }
    log.persist().unwrap();
    let mut image = log.memory().bytes().to_vec();
    let second = RING_OFFSET + record_size(30);
    image[second + 30] ^= 0x40;
    match PmemLog::recover(SimPmem::from_image(image)) {
        Err(NvmError::Corrupt { offset, what, path }) => {
            assert_eq!(offset, second as u64);
            assert_eq!(what, "record checksum mismatch");
            assert_eq!(path, std::path::Path::new("simulated-pmem"));
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_torn_slot_falls_back_to_the_other_and_two_bad_slots_are_corruption() {
    let mut log = fresh(1024);
    log.append(b"one").unwrap();
    log.persist().unwrap(); // generation 2, in slot 1
    log.append(b"two").unwrap();
    log.persist().unwrap(); // generation 3, in slot 0
    let mut image = log.memory().bytes().to_vec();
    image[super::layout::SLOT_OFFSETS[0] + 24] ^= 1;
    let older = PmemLog::recover(SimPmem::from_image(image.clone())).unwrap();
    assert_eq!(seqs(&older), [0]);
    image[super::layout::SLOT_OFFSETS[1] + 24] ^= 1;
    let err = PmemLog::recover(SimPmem::from_image(image)).err().unwrap();
    assert!(matches!(err, NvmError::Corrupt { offset: 64, .. }), "{err}");
}

#[test]
#[should_panic(expected = "not a record of this log")]
fn releasing_past_the_durable_tail_is_a_bug() {
    let mut log = fresh(1024);
    let end = log.append(b"pending").unwrap().end;
    log.advance_head(end).unwrap();
}

/// Regression (a proptest case): a record followed by a pad ends where the pad starts, a valid
/// place for the head.
#[test]
fn the_head_can_stop_at_a_pad() {
    let mut log = fresh(256);
    let a = log.append(&[1; 100]).unwrap(); // 128 bytes at 0
    let b = log.append(&[2; 80]).unwrap(); // 104 bytes at 128: 24 left
    log.persist().unwrap();
    log.advance_head(a.end).unwrap();
    log.append(&[3; 40]).unwrap(); // a pad of 24, then 64 bytes at 0
    log.persist().unwrap();
    log.advance_head(b.end).unwrap();
    assert_eq!(seqs(&restarted(&log)), [2]);
}
