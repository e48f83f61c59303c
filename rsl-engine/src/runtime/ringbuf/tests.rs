//! Tests of the ring protocol: a property test against a model that catches overwrites of
//! unread bytes, every wrap offset, hostile words, sessions, and two processes over a shm file.

use bytes::BytesMut;
use std::cell::RefCell;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use proptest::collection::vec;
use proptest::prelude::*;

use super::memory::Words;
use super::*;

/// Session epochs.
fn epoch(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("nonzero")
}

/// The `i`th message, `len` bytes: distinct per index so a duplicate or a swap shows.
fn message(i: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|j| (i.wrapping_mul(0x9E37_79B9) ^ j.wrapping_mul(131)) as u8).collect()
}

/// In-process memory that also models which data words hold unread bytes: a write over one, or a
/// read of one that holds none, panics.
struct Checked {
    mem: InProcess,
    unread: Rc<RefCell<Vec<bool>>>,
    /// Remote writes made through this handle (records and doorbells).
    writes: usize,
}

impl Checked {
    /// A writer's and a reader's handle on a fresh ring.
    fn pair(capacity: u64) -> (Checked, Checked) {
        let (w, r) = InProcess::pair(capacity).expect("capacity");
        let unread = Rc::new(RefCell::new(vec![false; capacity as usize / 8]));
        (Checked { mem: w, unread: Rc::clone(&unread), writes: 0 }, Checked { mem: r, unread, writes: 0 })
    }

    /// Marks the words covering `len` bytes from `offset` as read.
    fn consume(&self, offset: usize, len: usize) {
        for word in offset / 8..(offset + len).div_ceil(8) {
            let was = std::mem::replace(&mut self.unread.borrow_mut()[word], false);
            assert!(was, "read data word {word} that holds no unread bytes");
        }
    }
}

impl RemoteMemory for Checked {
    fn capacity(&self) -> usize {
        RemoteMemory::capacity(&self.mem)
    }

    fn write_record(&mut self, offset: usize, header: u64, payload: &[u8]) {
        for word in offset / 8..offset / 8 + 1 + payload.len().div_ceil(8) {
            let was = std::mem::replace(&mut self.unread.borrow_mut()[word], true);
            assert!(!was, "overwrote unread data word {word}");
        }
        self.writes += 1;
        self.mem.write_record(offset, header, payload);
    }

    fn ring_doorbell(&mut self, word: u64) {
        self.writes += 1;
        self.mem.ring_doorbell(word);
    }

    fn credits(&self) -> u64 {
        self.mem.credits()
    }
}

impl LocalMemory for Checked {
    fn capacity(&self) -> usize {
        LocalMemory::capacity(&self.mem)
    }

    fn doorbell(&self) -> u64 {
        self.mem.doorbell()
    }

    fn read_word(&self, offset: usize) -> u64 {
        self.consume(offset, 8);
        self.mem.read_word(offset)
    }

    fn read_payload(&self, offset: usize, len: usize, out: &mut bytes::BytesMut) {
        self.consume(offset, len);
        self.mem.read_payload(offset, len, out);
    }

    fn return_credits(&mut self, word: u64) {
        self.mem.return_credits(word);
    }
}

/// A ring's two ends over the checking model.
fn checked_ring(capacity: u64, credit_batch: u64) -> (RingWriter<Checked>, RingReader<Checked>) {
    let (w, r) = Checked::pair(capacity);
    (RingWriter::new(w, epoch(1)), RingReader::open(r, epoch(1), credit_batch))
}

/// A capacity and message sizes for it, biased to 0 and near-capacity.
fn capacity_and_sizes() -> impl Strategy<Value = (u64, Vec<usize>)> {
    (2u64..=48).prop_flat_map(|words| {
        let capacity = words * 8;
        let max = capacity as usize - 8;
        let size = prop_oneof![Just(0), Just(max), max.saturating_sub(16)..=max, 0..=max];
        (Just(capacity), vec(size, 1..200))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Writer and a slow reader interleave at random (sends, reads, early credit flushes, credit
    /// batches from one word to more than the ring): every message arrives once, in order, intact,
    /// the model never sees an unread word overwritten, and no send makes more remote writes
    /// than [`MAX_WRITES_PER_SEND`] (what an RDMA writer reserves send-queue slots for).
    #[test]
    fn every_message_arrives_once_in_order_intact(
        (capacity, sizes) in capacity_and_sizes(),
        credit_batch in 1u64..1200,
        ops in vec(0u8..8, 0..600),
    ) {
        let (mut writer, mut reader) = checked_ring(capacity, credit_batch);
        let (mut sent, mut received, mut buf) = (0usize, 0usize, BytesMut::new());
        let send = |writer: &mut RingWriter<Checked>, sent: &mut usize| {
            let Some(&len) = sizes.get(*sent) else { return false };
            let before = writer.memory().writes;
            let sent_now = writer.try_send(&message(*sent as u64, len));
            assert!(writer.memory().writes - before <= MAX_WRITES_PER_SEND, "one send made {} writes", writer.memory().writes - before);
            match sent_now {
                Ok(()) => { *sent += 1; true }
                Err(SendError::WouldBlock) => false,
                Err(e) => panic!("send {sent}: {e}"),
            }
        };
        let mut recv = |reader: &mut RingReader<Checked>, received: &mut usize| {
            if !reader.try_recv(&mut buf).expect("recv") { return false }
            assert_eq!(buf, message(*received as u64, sizes[*received]), "message {received}");
            *received += 1;
            true
        };
        for op in ops {
            match op {
                0..=3 => { send(&mut writer, &mut sent); }
                4..=6 => { recv(&mut reader, &mut received); }
                _ => reader.flush_credits(),
            }
        }
        // A round may only return credits, and the next only write a wrap marker for the
        // reader to pass: two idle rounds in a row are progress, three are a stall.
        let mut idle_rounds = 0;
        while received < sizes.len() {
            let before = (sent, received);
            while send(&mut writer, &mut sent) {}
            while recv(&mut reader, &mut received) {}
            idle_rounds = if (sent, received) == before { idle_rounds + 1 } else { 0 };
            prop_assert!(idle_rounds < 3, "stalled at {} sent, {} received", sent, received);
        }
        prop_assert_eq!(sent, sizes.len());
        prop_assert!(!reader.try_recv(&mut buf).expect("recv"), "a message beyond the last");
    }
}

/// Reader memory whose failure the test decides, as an RDMA queue pair's error would.
pub(crate) struct Failing {
    pub mem: InProcess,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LocalMemory for Failing {
    fn capacity(&self) -> usize {
        LocalMemory::capacity(&self.mem)
    }

    fn doorbell(&self) -> u64 {
        self.mem.doorbell()
    }

    fn read_word(&self, offset: usize) -> u64 {
        self.mem.read_word(offset)
    }

    fn read_payload(&self, offset: usize, len: usize, out: &mut bytes::BytesMut) {
        self.mem.read_payload(offset, len, out);
    }

    fn return_credits(&mut self, word: u64) {
        self.mem.return_credits(word);
    }

    fn failed(&mut self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn a_failed_memory_ends_the_reading_even_with_records_waiting() {
    let (w, r) = InProcess::pair(64).expect("capacity");
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reader = RingReader::open(Failing { mem: r, failed: failed.clone() }, epoch(1), 1);
    let mut writer = RingWriter::new(w, epoch(1));
    let mut buf = bytes::BytesMut::new();
    writer.try_send(b"one").expect("send");
    assert!(reader.try_recv(&mut buf).expect("recv"));
    writer.try_send(b"two").expect("send");
    failed.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reader.try_recv(&mut buf), Err(RecvError::MemoryFailed));
    assert_eq!(&buf[..], b"one", "nothing read after the failure");
}

/// A record of every length starting at every data offset, in a small ring.
#[test]
fn every_length_at_every_offset() {
    const CAPACITY: u64 = 64;
    let mut buf = BytesMut::new();
    for start in (0..CAPACITY).step_by(8) {
        for len in 0..=CAPACITY as usize - 8 {
            let (mut writer, mut reader) = checked_ring(CAPACITY, 1);
            if start > 0 {
                writer.try_send(&message(0, start as usize - 8)).expect("filler");
                assert!(reader.try_recv(&mut buf).expect("filler"));
            }
            if writer.try_send(&message(1, len)) == Err(SendError::WouldBlock) {
                // Only a wrap marker went out; once the reader passes it the record fits.
                assert!(!reader.try_recv(&mut buf).expect("marker"), "start {start} len {len}");
                writer.try_send(&message(1, len)).expect("send after the marker");
            }
            assert!(reader.try_recv(&mut buf).expect("recv"));
            assert_eq!(buf, message(1, len), "start {start} len {len}");
            writer.try_send(&message(2, 3)).expect("follow-up");
            assert!(reader.try_recv(&mut buf).expect("recv"));
            assert_eq!(buf, message(2, 3), "start {start} len {len}");
        }
    }
}

#[test]
fn too_large_is_refused_and_a_full_ring_would_block() {
    let (mut writer, mut reader) = checked_ring(64, 1);
    assert_eq!(writer.try_send(&[0; 57]), Err(SendError::TooLarge { len: 57, max: 56 }));
    writer.try_send(&[1; 56]).expect("a whole ring");
    assert_eq!(writer.try_send(&[]), Err(SendError::WouldBlock));
    let mut buf = BytesMut::new();
    assert!(reader.try_recv(&mut buf).expect("recv"));
    assert_eq!(buf[..], [1; 56]);
    writer.try_send(&[]).expect("credit returned");
    assert!(reader.try_recv(&mut buf).expect("recv"));
    assert!(buf.is_empty());
}

#[test]
fn the_writer_waits_for_the_reader_to_open_the_session() {
    let (w, r) = Checked::pair(64);
    let mut writer = RingWriter::new(w, epoch(3));
    assert_eq!(writer.try_send(b"early"), Err(SendError::WouldBlock));
    let mut reader = RingReader::open(r, epoch(3), 8);
    writer.try_send(b"now").expect("opened");
    let mut buf = BytesMut::new();
    assert!(reader.try_recv(&mut buf).expect("recv"));
    assert_eq!(buf[..], b"now"[..]);
}

/// A reconnection reuses the memory under a new epoch: the old session's unread records and
/// doorbell are never read as new, and its writer learns it is superseded.
#[test]
fn a_new_session_never_reads_the_old_ones_data() {
    let (w, r) = InProcess::pair(128).expect("capacity");
    let writer_mem = w.share();
    let mut old = RingWriter::new(w, epoch(1));
    let reader = RingReader::open(r, epoch(1), 8);
    old.try_send(b"old one").expect("send");
    old.try_send(b"old two").expect("send");

    let mut reader = RingReader::open(reader.into_memory(), epoch(2), 8);
    let mut buf = BytesMut::new();
    assert!(!reader.try_recv(&mut buf).expect("old doorbell ignored"));
    assert!(matches!(old.try_send(b"old three"), Err(SendError::Superseded { mine: 1, current: 2 })));

    let mut new = RingWriter::new(writer_mem, epoch(2));
    new.try_send(b"new").expect("send");
    assert!(reader.try_recv(&mut buf).expect("recv"));
    assert_eq!(buf[..], b"new"[..]);
    assert!(!reader.try_recv(&mut buf).expect("recv"));
}

/// Hostile or corrupt words are typed errors naming the offset, never panics or over-reads.
#[test]
fn corrupt_words_are_typed_errors() {
    let corrupt = |word: usize, value: u64| {
        let (w, r) = InProcess::pair(64).expect("capacity");
        let mut writer = RingWriter::new(w, epoch(1));
        let mut reader = RingReader::open(r, epoch(1), 8);
        writer.try_send(&[7; 9]).expect("send"); // header at offset 0, 24 bytes
        writer.try_send(&[8; 1]).expect("send"); // header at offset 24
        reader.memory().words()[word].store(value, Ordering::Relaxed);
        reader.try_recv(&mut BytesMut::new())
    };
    let tag1 = 1u64 << 32;
    assert_eq!(corrupt(DATA_WORD, tag1 | 57), Err(RecvError::BadLength { offset: 0, len: 57 }));
    assert_eq!(corrupt(DATA_WORD, tag1 | 40), Err(RecvError::BadLength { offset: 0, len: 40 }));
    let huge = tag1 | u64::from(u32::MAX);
    assert_eq!(corrupt(DATA_WORD, huge), Err(RecvError::BadLength { offset: 0, len: u32::MAX }));
    assert_eq!(corrupt(DATA_WORD, 9 | (2 << 32)), Err(RecvError::StaleRecord { offset: 0, epoch: 2 }));
    let kind = tag1 | (5 << 48) | 9;
    assert_eq!(corrupt(DATA_WORD, kind), Err(RecvError::BadKind { offset: 0, kind: 5, len: 9 }));
    let wrap_at_zero = tag1 | (1 << 48);
    assert_eq!(corrupt(DATA_WORD, wrap_at_zero), Err(RecvError::BadKind { offset: 0, kind: 1, len: 0 }));
    let far = (1 << 48) | 65;
    assert_eq!(corrupt(DOORBELL_WORD, far), Err(RecvError::TailOutOfRange { word: far, head: 0 }));
    let behind = (1 << 48) | ((1 << 48) - 8);
    assert_eq!(corrupt(DOORBELL_WORD, behind), Err(RecvError::TailOutOfRange { word: behind, head: 0 }));
}

#[test]
fn a_credit_beyond_the_tail_is_a_typed_error() {
    let (w, r) = InProcess::pair(64).expect("capacity");
    let mut writer = RingWriter::new(w, epoch(1));
    let reader = RingReader::open(r, epoch(1), 8);
    writer.try_send(&[0; 56]).expect("send");
    let lie = (1 << 48) | 72;
    reader.memory().words()[CREDIT_WORD].store(lie, Ordering::Relaxed);
    assert_eq!(writer.try_send(&[]), Err(SendError::BadCredit { word: lie, tail: 64, consumed: 0 }));
}

/// The model itself: a write over unread bytes is caught.
#[test]
#[should_panic(expected = "overwrote unread data word 0")]
fn the_model_catches_an_overwrite() {
    let (mut w, _r) = Checked::pair(64);
    w.write_record(0, 0, b"first");
    w.write_record(0, 0, b"second");
}

#[cfg(target_os = "linux")]
mod shm_tests {
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::runtime::ringbuf::shm::{ShmError, ShmRing};

    /// Names the ring file when this test binary runs as the writer child.
    const CHILD_ENV: &str = "RSL_RINGBUF_SHM_CHILD";
    const MESSAGES: u64 = 100_000;
    const EPOCH: u16 = 7;

    /// The size of message `i` in the two-process test: 0 up to a quarter of the ring.
    fn size(i: u64) -> usize {
        (i * 37 % 1031) as usize
    }

    /// The writer child: a no-op unless started by `two_processes_pass_100k_messages`.
    #[test]
    fn shm_child_writer() {
        let Some(path) = std::env::var_os(CHILD_ENV) else { return };
        let ring = ShmRing::open(path.as_ref()).expect("open ring file");
        let mut writer = RingWriter::new(ring, epoch(EPOCH));
        let parent = std::os::unix::process::parent_id();
        for i in 0..MESSAGES {
            let msg = message(i, size(i));
            for blocked in 1u64.. {
                match writer.try_send(&msg) {
                    Ok(()) => break,
                    Err(SendError::WouldBlock) => std::thread::yield_now(),
                    Err(e) => panic!("send {i}: {e}"),
                }
                // A reader killed outright would leave this process spinning.
                let orphaned = blocked % 4096 == 0 && std::os::unix::process::parent_id() != parent;
                assert!(!orphaned, "the reader process is gone");
            }
        }
    }

    /// Kills the writer child if the reader's test fails first.
    struct Reap(Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    #[test]
    fn two_processes_pass_100k_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ring");
        let ring = ShmRing::create(&path, 4096).expect("create");
        let mut reader = RingReader::open(ring, epoch(EPOCH), 1024);
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "runtime::ringbuf::tests::shm_tests::shm_child_writer"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let mut child = Reap(child);
        let (mut received, mut buf, mut idle, mut exited) = (0u64, BytesMut::new(), 0u32, None);
        // A stalled protocol fails the test instead of hanging it (the child is reaped on drop).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while received < MESSAGES {
            assert!(std::time::Instant::now() < deadline, "stalled after {received} of {MESSAGES} messages");
            if reader.try_recv(&mut buf).expect("recv") {
                assert_eq!(buf, message(received, size(received)), "message {received}");
                received += 1;
                continue;
            }
            if exited.is_some() {
                break; // Drained after the writer finished: nothing more can come.
            }
            idle += 1;
            if idle % 1024 == 0 {
                exited = child.0.try_wait().expect("wait");
            }
            std::thread::yield_now();
        }
        let status = match exited {
            Some(status) => status,
            None => child.0.wait().expect("wait"),
        };
        assert!(status.success(), "writer child failed: {status}");
        assert_eq!(received, MESSAGES);
        assert!(!reader.try_recv(&mut buf).expect("recv"), "a message beyond the last");
    }

    #[test]
    fn the_set_up_nonce_is_random_and_seen_by_the_mapping_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ring");
        let reader = ShmRing::create(&path, 256).expect("create");
        let nonces: Vec<u64> = (0..4).map(|_| crate::runtime::ringbuf::shm::random_nonce().expect("getrandom")).collect();
        assert!(nonces.windows(2).all(|w| w[0] != w[1]), "{nonces:x?}");
        assert_eq!(ShmRing::open(&path).expect("open").nonce(), 0, "none before the reader sets it");
        reader.set_nonce(nonces[0]);
        assert_eq!(ShmRing::open(&path).expect("open").nonce(), nonces[0]);
    }

    #[test]
    fn opening_checks_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ring");
        std::fs::write(&path, [0u8; 4096]).expect("write");
        // Readable by others (the umask's 0644): refused before anything is read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(ShmRing::open(&path), Err(ShmError::NotPrivate(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(ShmRing::open(&path), Err(ShmError::BadMagic(0))));
        let good = dir.path().join("good");
        drop(ShmRing::create(&good, 256).expect("create"));
        assert!(matches!(ShmRing::create(&good, 256), Err(ShmError::Io(_))));
        let file = std::fs::OpenOptions::new().write(true).open(&good).expect("open");
        file.set_len(region_bytes(256) as u64 + 8).expect("grow");
        assert!(matches!(ShmRing::open(&good), Err(ShmError::WrongSize { .. })));
        assert!(matches!(ShmRing::create(&dir.path().join("odd"), 100), Err(ShmError::Capacity(_))));
        assert!(!dir.path().join("odd").exists(), "a failed create leaves no file");
        // A link planted under the name the peer gives is not followed; a second name is refused.
        let ring = dir.path().join("ring2");
        drop(ShmRing::create(&ring, 256).expect("create"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ring, &link).expect("symlink");
        assert!(matches!(ShmRing::open(&link), Err(ShmError::Io(_))), "a symbolic link is not followed");
        std::fs::hard_link(&ring, dir.path().join("hard")).expect("hard link");
        assert!(matches!(ShmRing::open(&ring), Err(ShmError::NotPrivate(_))), "a file with two names");
    }
}
