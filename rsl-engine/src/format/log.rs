//! Log (journal) files: 512-byte-aligned records, the record scanner with RSL's torn-tail
//! rules, a whole-file reader that builds the decree index, and a plain appending writer
//! (docs/spec/formats.md §8).

use super::codec::{round_up_512, DecodeError, EncodeError, PAGE};
use super::message::{self, Checksum, Message, MsgKind, Prefix, CHECKSUM_END, MAGIC, MSG_ID_OFFSET};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// How strictly to treat a bad record (docs/spec/formats.md §8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Startup replay: a torn or corrupt *last* record ends the log cleanly.
    Restore,
    /// Learn-port streams: any bad record is an error.
    Strict,
}

/// One record: where it starts, its message bytes (without padding) and the decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's byte offset in the log file.
    pub offset: usize,
    /// The message's bytes, without the padding to the next 512-byte page.
    pub raw: Bytes,
    /// The decoded message.
    pub message: Message,
}

impl Record {
    /// The bytes the record occupies on disk, padding included.
    pub fn disk_len(&self) -> usize {
        round_up_512(self.raw.len())
    }
}

/// What the scanner found at an offset. (Records are returned once each, so the size of the
/// variant does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A good record.
    Record(Record),
    /// The log ends here; in restore mode any torn record from here on is discarded.
    End,
    /// (Strict mode on a stream still arriving) at least this many bytes are needed in all.
    NeedMore(usize),
}

/// A bad record that is not a torn tail: corruption the caller must not paper over.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("corrupt log record at offset {offset}: {error}")]
pub struct RecordError {
    /// Where the bad record starts.
    pub offset: usize,
    /// What is wrong with it.
    pub error: DecodeError,
}

/// Reads the record at `offset` of `data`. `at_eof` says that `data` holds everything there
/// is (a whole file); without it an incomplete record asks for more bytes.
pub fn read_record(data: &Bytes, offset: usize, mode: Mode, at_eof: bool) -> Result<Step, RecordError> {
    read_record_checked(data, offset, mode, at_eof, None)
}

/// [`read_record`], given the outcome of [`message::verify_checksum`] on the record's message
/// when it was computed ahead (`checked`); without it the checksum is verified here.
fn read_record_checked(data: &Bytes, offset: usize, mode: Mode, at_eof: bool, checked: Option<Checked>) -> Result<Step, RecordError> {
    assert!(offset <= data.len() && offset.is_multiple_of(PAGE), "records start on a page boundary inside the data");
    let rest = data.len() - offset;
    if rest == 0 && (at_eof || mode == Mode::Restore) {
        return Ok(Step::End);
    }
    if rest < PAGE {
        return match (mode, at_eof) {
            (Mode::Strict, false) => Ok(Step::NeedMore(offset + PAGE)),
            // A partial sector can only be a torn append; the original refuses to start here.
            (Mode::Restore, _) => tail_or_error(data, offset, offset + rest, short_page(offset, rest)),
            (Mode::Strict, true) => Err(RecordError { offset, error: short_page(offset, rest) }),
        };
    }
    let prefix = match parse_record_header(&data[offset..offset + PAGE]) {
        Ok(p) => p,
        Err(e) => return bad_record(data, offset, offset + PAGE, mode, e.shifted(offset)),
    };
    let len = prefix.length as usize;
    let end = offset + round_up_512(len);
    if data.len() < end {
        return match (mode, at_eof) {
            (Mode::Strict, false) => Ok(Step::NeedMore(end)),
            (Mode::Strict, true) => {
                Err(RecordError { offset, error: DecodeError::Truncated { what: "log record", offset, need: len, have: rest } })
            }
            // A record cut short by the end of the file is a torn tail, unless a valid record
            // follows inside its claimed extent (then its length field is what is corrupt).
            (Mode::Restore, _) => match later_valid_record(data, offset) {
                None => Ok(Step::End),
                Some(_) => Err(RecordError {
                    offset,
                    error: DecodeError::Malformed {
                        what: "log record length",
                        offset: offset + 2,
                        detail: "runs past the end of the file, yet a valid record starts inside it",
                    },
                }),
            },
        };
    }
    let raw = data.slice(offset..offset + len);
    if let Err(e) = checked.unwrap_or_else(|| message::verify_checksum(&raw)) {
        return bad_record(data, offset, end, mode, e.shifted(offset));
    }
    match Message::decode(&raw) {
        Ok(message) => Ok(Step::Record(Record { offset, raw, message })),
        Err(e) => bad_record(data, offset, end, mode, e.shifted(offset)),
    }
}

fn short_page(offset: usize, rest: usize) -> DecodeError {
    DecodeError::Truncated { what: "log page", offset, need: PAGE, have: rest }
}

/// Validates what `Message::UnMarshal` checks, plus that the type is one a log holds, on the
/// first page of a record (at least the first 20 bytes; offsets are relative to it).
pub fn parse_record_header(page: &[u8]) -> Result<Prefix, DecodeError> {
    let prefix = Prefix::parse(page)?;
    let truncated = |what, offset, need| DecodeError::Truncated { what, offset, need, have: page.len().saturating_sub(offset) };
    let magic = page.get(CHECKSUM_END..MSG_ID_OFFSET).ok_or(truncated("magic", CHECKSUM_END, 4))?;
    let magic = u32::from_le_bytes(magic.try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(DecodeError::Invalid { what: "magic", offset: CHECKSUM_END, value: magic as u64 });
    }
    let code = page.get(MSG_ID_OFFSET..MSG_ID_OFFSET + 2).ok_or(truncated("message type", MSG_ID_OFFSET, 2))?;
    let code = u16::from_le_bytes(code.try_into().expect("2 bytes"));
    match MsgKind::from_code(code) {
        Some(k) if k.is_log_record() => Ok(prefix),
        _ => Err(DecodeError::Invalid { what: "log record type", offset: MSG_ID_OFFSET, value: code as u64 }),
    }
}

/// A record that failed a check: in restore mode it ends the log if it is the last thing in
/// the file (only zeros after its extent, and no valid record at any later page).
fn bad_record(data: &Bytes, offset: usize, extent: usize, mode: Mode, error: DecodeError) -> Result<Step, RecordError> {
    match mode {
        Mode::Strict => Err(RecordError { offset, error }),
        Mode::Restore => tail_or_error(data, offset, extent, error),
    }
}

fn tail_or_error(data: &Bytes, offset: usize, extent: usize, error: DecodeError) -> Result<Step, RecordError> {
    let after = &data[extent.min(data.len())..];
    if after.iter().all(|&b| b == 0) && later_valid_record(data, offset).is_none() {
        Ok(Step::End)
    } else {
        Err(RecordError { offset, error })
    }
}

/// The offset of the first page after `offset` that holds a complete record with a valid
/// checksum, if any.
fn later_valid_record(data: &Bytes, offset: usize) -> Option<usize> {
    (offset + PAGE..data.len()).step_by(PAGE).find(|&at| {
        data.len() - at >= PAGE && parse_record_header(&data[at..at + PAGE]).is_ok() && message::verify_checksum(&data[at..]).is_ok()
    })
}

/// Everything a log file holds, as startup replay reads it.
#[derive(Debug, Default)]
pub struct LogContents {
    /// The good records, in file order.
    pub records: Vec<Record>,
    /// Every vote record's decree and offset, in file order (a version 7 log is not in
    /// decree order).
    pub votes: Vec<(u64, usize)>,
    /// Where the last good record ends: where appending resumes.
    pub data_len: usize,
}

impl LogContents {
    /// Each decree's newest vote record offset (a re-vote at a higher ballot replaces it).
    pub fn decree_index(&self) -> BTreeMap<u64, usize> {
        self.votes.iter().copied().collect()
    }

    /// Scans `data` (a whole file) in `mode`. The checksums, most of the work, are verified
    /// ahead of the decoding in batches spread over the cores; the records are still taken
    /// in file order, so the first bad one decides the outcome as in a one-by-one scan.
    pub fn scan(data: &Bytes, mode: Mode) -> Result<LogContents, RecordError> {
        let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(MAX_VERIFIERS);
        LogContents::scan_with(data, mode, Verifiers { batch: VERIFY_BATCH, parallel_min: PARALLEL_MIN, workers })
    }

    fn scan_with(data: &Bytes, mode: Mode, verifiers: Verifiers) -> Result<LogContents, RecordError> {
        let mut out = LogContents::default();
        let mut ahead = VecDeque::new();
        loop {
            if ahead.is_empty() {
                let records = records_ahead(data, out.data_len, verifiers.batch);
                ahead.extend(records.iter().map(|&(at, _)| at).zip(verifiers.verify_all(data, &records)));
            }
            let checked = match ahead.pop_front() {
                Some((at, checked)) if at == out.data_len => Some(checked),
                _ => {
                    ahead.clear();
                    None
                }
            };
            match read_record_checked(data, out.data_len, mode, true, checked)? {
                Step::Record(rec) => {
                    if rec.message.kind() == MsgKind::Vote {
                        out.votes.push((rec.message.header.decree, rec.offset));
                    }
                    out.data_len += rec.disk_len();
                    out.records.push(rec);
                }
                Step::End => return Ok(out),
                Step::NeedMore(_) => unreachable!("a whole file never asks for more"),
            }
        }
    }
}

/// What [`message::verify_checksum`] says of one record's message.
type Checked = Result<(), DecodeError>;

/// Bytes of records whose checksums a scan verifies together, ahead of decoding them.
const VERIFY_BATCH: usize = 16 << 20;
/// A batch smaller than this is verified on the scanning thread alone: a thread costs more.
const PARALLEL_MIN: usize = 1 << 20;
/// Threads a scan verifies checksums on, at most (the scanning thread included).
const MAX_VERIFIERS: usize = 4;

/// The records that follow one another from `at`, as their first pages say, up to about
/// `budget` bytes: each one's offset and message length. Stops before the first record whose
/// header is bad or that runs past the data; [`read_record`] then judges it.
fn records_ahead(data: &[u8], mut at: usize, budget: usize) -> Vec<(usize, usize)> {
    let limit = at.saturating_add(budget);
    let mut out = Vec::new();
    while at < limit && data.len() - at >= PAGE {
        let Ok(prefix) = parse_record_header(&data[at..at + PAGE]) else { break };
        let len = prefix.length as usize;
        let end = at + round_up_512(len);
        if end > data.len() {
            break;
        }
        out.push((at, len));
        at = end;
    }
    out
}

/// How a scan verifies checksums ahead: in batches of about `batch` bytes, on up to `workers`
/// threads once a batch holds `parallel_min` bytes.
#[derive(Clone, Copy, Debug)]
struct Verifiers {
    batch: usize,
    parallel_min: usize,
    workers: usize,
}

impl Verifiers {
    /// The checksum verdict of each of `records` (offset, length), in order; the threads each
    /// take a run of records of about the same number of bytes.
    fn verify_all(self, data: &[u8], records: &[(usize, usize)]) -> Vec<Checked> {
        let bytes: usize = records.iter().map(|&(_, len)| len).sum();
        if self.workers < 2 || bytes < self.parallel_min {
            return verify_run(data, records);
        }
        verify_in_parallel(data, split_by_bytes(records, bytes.div_ceil(self.workers)))
    }
}

fn verify_run(data: &[u8], run: &[(usize, usize)]) -> Vec<Checked> {
    run.iter().map(|&(at, len)| message::verify_checksum(&data[at..at + len])).collect()
}

/// The verdicts of `runs`, in order: the first on this thread, each other on a thread of its
/// own (or here too, when a thread cannot be started).
fn verify_in_parallel(data: &[u8], runs: Vec<&[(usize, usize)]>) -> Vec<Checked> {
    let verify = |run: &[(usize, usize)]| verify_run(data, run);
    std::thread::scope(|s| {
        let spawned: Vec<_> = runs[1..]
            .iter()
            .map(|&run| std::thread::Builder::new().name("rsl-log-verify".into()).spawn_scoped(s, move || verify(run)).map_err(|_| run))
            .collect();
        let mut out = verify(runs[0]);
        for worker in spawned {
            match worker {
                Ok(handle) => out.extend(handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
                Err(run) => out.extend(verify(run)),
            }
        }
        out
    })
}

/// `records` cut into consecutive runs of at least `share` message bytes (the last one less).
fn split_by_bytes(records: &[(usize, usize)], share: usize) -> Vec<&[(usize, usize)]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &(_, len)) in records.iter().enumerate() {
        bytes += len;
        if bytes >= share {
            runs.push(&records[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < records.len() || runs.is_empty() {
        runs.push(&records[start..]);
    }
    runs
}

/// A log file that could not be read, naming the file and where.
#[derive(Debug, Error)]
pub enum LogError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A record is corrupt (not a torn tail).
    #[error("{}: {source}", path.display())]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// The record and what is wrong with it.
        source: RecordError,
    },
}

/// Reads and scans a whole log file in restore mode.
pub fn read_log_file(path: &Path) -> Result<LogContents, LogError> {
    let data = Bytes::from(std::fs::read(path).map_err(|source| LogError::Io { path: path.into(), source })?);
    LogContents::scan(&data, Mode::Restore).map_err(|source| LogError::Corrupt { path: path.into(), source })
}

/// Appends `msg` as a log record (checksummed, zero-padded to 512) and returns the record's
/// unpadded length.
pub fn encode_record(msg: &Message, out: &mut BytesMut) -> Result<usize, EncodeError> {
    let start = out.len();
    let len = msg.encode_into(out, Checksum::Always)?;
    out.put_bytes(0, round_up_512(len) - len);
    debug_assert_eq!((out.len() - start) % PAGE, 0);
    Ok(len)
}

/// Appends already-encoded message bytes (say, a vote received from a peer, whose raw bytes
/// must be stored as they came) as a record.
pub fn pad_record(raw: &[u8], out: &mut BytesMut) {
    out.put_slice(raw);
    out.put_bytes(0, round_up_512(raw.len()) - raw.len());
}

/// The name of the log file whose first vote is for `decree`.
pub fn file_name(decree: u64) -> String {
    format!("{decree}.log")
}

/// How far past its data a log file is kept written with zeros. A sync of appends that land
/// inside the file's length, on blocks already written, flushes the data alone; one that grows
/// the file must also commit the file system's journal: 64 KiB syncs took 245 µs growing the
/// file and 137 µs inside it here. Readers stop at the zeros (§8.4 step 2 in restore mode; the
/// learn port serves synced ranges only), and a log is cut to its data when it is done. Larger
/// steps sync less metadata but flush more zeros at once: 4 MiB took the p99 at 1024 requests
/// in flight from 4 to 7.5 ms (docs/performance.md, "Log files written ahead").
pub const ZEROED_AHEAD: u64 = 256 << 10;

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// An append-only log file. Durability is the caller's: `sync` after the records it must keep.
pub struct LogWriter {
    file: File,
    len: u64,
    /// At least the file's length, which holds zeros from `len` on.
    end: u64,
}

impl LogWriter {
    /// Creates a new, empty log file.
    pub fn create(path: &Path) -> io::Result<LogWriter> {
        let file = File::options().read(true).write(true).create_new(true).open(path)?;
        Ok(LogWriter { file, len: 0, end: 0 })
    }

    /// Opens an existing log to append after its last good record (`data_len` from a scan).
    /// The file is cut there, so no torn bytes survive to confuse a later restart (§8.5).
    pub fn open_at(path: &Path, data_len: u64) -> io::Result<LogWriter> {
        assert!(data_len.is_multiple_of(PAGE as u64), "logs resume on a record boundary");
        let file = File::options().read(true).write(true).open(path)?;
        file.set_len(data_len)?;
        Ok(LogWriter { file, len: data_len, end: data_len })
    }

    /// Appends whole padded records. When they reach the zeros' end, the file is written with
    /// zeros `ZEROED_AHEAD` further, synced with them.
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        assert_eq!(records.len() % PAGE, 0, "log appends are whole padded records");
        self.file.write_all_at(records, self.len)?;
        self.len += records.len() as u64;
        self.end = self.end.max(self.len);
        if self.end == self.len {
            self.zero_ahead();
        }
        debug_assert!(self.end >= self.len, "the file holds every append");
        Ok(())
    }

    /// Writes zeros `ZEROED_AHEAD` past the data, as far as the disk takes them: they only
    /// make syncs cheaper, so a full disk fails the next append, not this one.
    fn zero_ahead(&mut self) {
        let target = self.len + ZEROED_AHEAD;
        while self.end < target {
            let n = (target - self.end).min(ZEROS.len() as u64);
            let written = self.file.write_all_at(&ZEROS[..n as usize], self.end);
            // Part of a failed write may have landed: `end` bounds the length, and a cut
            // makes it exact.
            self.end += n;
            if written.is_err() {
                break;
            }
        }
        debug_assert!(self.end <= target, "zeros past the step");
    }

    /// Cuts the zeros written ahead, so that a closed log ends at its last record as the
    /// original's do; whether there were any (the caller syncs).
    pub fn cut_zeros(&mut self) -> io::Result<bool> {
        if self.end == self.len {
            return Ok(false);
        }
        self.file.set_len(self.len)?;
        self.end = self.len;
        Ok(true)
    }

    /// Flushes and fdatasyncs what was appended.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_data()
    }

    /// The length of the data written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::message::{Body, Header, VoteBody};
    use crate::format::types::{Ballot, MemberId, Version};

    fn vote(decree: u64, req: &'static [u8]) -> Message {
        let id = MemberId::new("1").unwrap();
        Message::new(
            Header::new(Version::V6, id, decree, 1, Ballot::new(2, id)),
            Body::Vote(VoteBody { requests: vec![Bytes::from_static(req)], ..Default::default() }),
        )
    }

    fn log_of(n: u64) -> BytesMut {
        let mut out = BytesMut::new();
        for d in 1..=n {
            encode_record(&vote(d, b"some request"), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn scan_reads_every_record() {
        let data = log_of(4).freeze();
        let log = LogContents::scan(&data, Mode::Restore).unwrap();
        assert_eq!(log.records.len(), 4);
        assert_eq!(log.data_len, 2048);
        assert_eq!(log.decree_index().get(&3), Some(&1024));
    }

    #[test]
    fn torn_last_record_ends_the_log() {
        let mut data = log_of(3);
        data[1024 + 100] ^= 1;
        let log = LogContents::scan(&data.clone().freeze(), Mode::Restore).unwrap();
        assert_eq!((log.records.len(), log.data_len), (2, 1024));
        // Strict mode refuses it.
        let err = LogContents::scan(&data.clone().freeze(), Mode::Strict).unwrap_err();
        assert_eq!(err.offset, 1024);
        // A partial last sector, or a record cut short, is a torn tail too.
        let mut short = log_of(3);
        short.truncate(1024 + 300);
        assert_eq!(LogContents::scan(&short.freeze(), Mode::Restore).unwrap().records.len(), 2);
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_with_its_offset() {
        let mut data = log_of(3);
        data[512 + 100] ^= 1;
        let err = LogContents::scan(&data.freeze(), Mode::Restore).unwrap_err();
        assert_eq!(err.offset, 512);
        assert!(matches!(err.error, DecodeError::Checksum { offset: 518, .. }));
    }

    #[test]
    fn corrupt_length_in_the_middle_is_not_mistaken_for_a_torn_tail() {
        let mut data = log_of(3);
        data[512 + 2..512 + 6].copy_from_slice(&100_000u32.to_le_bytes());
        let err = LogContents::scan(&data.freeze(), Mode::Restore).unwrap_err();
        assert_eq!(err.offset, 512);
    }

    #[test]
    fn zero_pages_end_the_log_and_garbage_does_not() {
        let mut data = log_of(2);
        data.put_bytes(0, 1024);
        assert_eq!(LogContents::scan(&data.clone().freeze(), Mode::Restore).unwrap().data_len, 1024);
        // A garbled last page is a torn record; garbage after it is corruption.
        data[1100] = 7;
        assert_eq!(LogContents::scan(&data.clone().freeze(), Mode::Restore).unwrap().data_len, 1024);
        data[1600] = 7;
        assert_eq!(LogContents::scan(&data.freeze(), Mode::Restore).unwrap_err().offset, 1024);
    }

    /// The record-by-record scan a batched one must agree with.
    fn scan_one_by_one(data: &Bytes, mode: Mode) -> Result<(Vec<Record>, usize), RecordError> {
        let (mut records, mut at) = (Vec::new(), 0);
        while let Step::Record(rec) = read_record(data, at, mode, true)? {
            at += rec.disk_len();
            records.push(rec);
        }
        Ok((records, at))
    }

    /// `n` votes whose records take one to three pages each.
    fn varied_log(n: usize) -> BytesMut {
        let mut out = BytesMut::new();
        for d in 1..=n {
            let request = Bytes::from(vec![d as u8; 1 + d * 397 % 1200]);
            let id = MemberId::new("1").unwrap();
            let vote = Message::new(
                Header::new(Version::V6, id, d as u64, 1, Ballot::new(2, id)),
                Body::Vote(VoteBody { requests: vec![request], ..Default::default() }),
            );
            encode_record(&vote, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_large_log_is_checked_on_several_cores_and_the_first_bad_record_wins() {
        let mut data = BytesMut::new();
        for d in 1..=40 {
            encode_record(&vote(d, &[7; 60 << 10]), &mut data).unwrap();
        }
        let record = data.len() / 40;
        let whole = LogContents::scan(&data.clone().freeze(), Mode::Restore).unwrap();
        assert_eq!((whole.records.len(), whole.data_len), (40, data.len()));
        data[30 * record + 1000] ^= 1;
        data[10 * record + 1000] ^= 1;
        let err = LogContents::scan(&data.clone().freeze(), Mode::Restore).unwrap_err();
        assert_eq!(err.offset, 10 * record);
        assert!(matches!(err.error, DecodeError::Checksum { .. }));
        // Only the last one bad: a torn tail, cut.
        data[10 * record + 1000] ^= 1;
        data[30 * record + 1000] ^= 1;
        data[39 * record + 1000] ^= 1;
        assert_eq!(LogContents::scan(&data.freeze(), Mode::Restore).unwrap().data_len, 39 * record);
    }

    /// A corrupt length field in the middle of a log checked on several threads is the same
    /// error, at the same offset, as one by one: never a torn tail.
    #[test]
    fn a_corrupt_length_checked_on_several_threads_is_the_same_error() {
        let data = varied_log(40);
        let at = scan_one_by_one(&data.clone().freeze(), Mode::Strict).unwrap().0[10].offset;
        for length in [0u32, 7, 100_000, u32::MAX] {
            let mut bad = data.clone();
            bad[at + 2..at + 6].copy_from_slice(&length.to_le_bytes());
            let bad = bad.freeze();
            for mode in [Mode::Restore, Mode::Strict] {
                let verifiers = Verifiers { batch: 4096, parallel_min: 0, workers: 3 };
                let batched = LogContents::scan_with(&bad, mode, verifiers).map(|log| (log.records, log.data_len));
                let one_by_one = scan_one_by_one(&bad, mode);
                assert!(one_by_one.as_ref().is_err_and(|e| e.offset == at), "length {length}: {one_by_one:?}");
                assert_eq!(batched, one_by_one, "length {length}, {mode:?}");
            }
        }
    }

    #[test]
    fn split_by_bytes_gives_each_thread_a_share() {
        let records: Vec<(usize, usize)> = [6, 4, 3, 3, 4].iter().map(|&len| (0, len)).collect();
        let runs = split_by_bytes(&records, 10);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(split_by_bytes(&records, 5).iter().map(|r| r.len()).collect::<Vec<_>>(), [1, 2, 2]);
        assert_eq!(split_by_bytes(&[], 1), [&[] as &[(usize, usize)]]);
    }

    proptest::proptest! {
        #[test]
        fn batched_scan_equals_one_by_one(
            n in 0usize..10,
            flips in proptest::collection::vec((0usize..12_000, 0u8..8), 0..3),
            cut in proptest::option::of(0usize..12_000),
            batch in 512usize..6000,
            workers in 1usize..4,
        ) {
            let mut data = varied_log(n);
            for (at, bit) in flips {
                if at < data.len() {
                    data[at] ^= 1 << bit;
                }
            }
            data.truncate(cut.unwrap_or(usize::MAX));
            let data = data.freeze();
            for mode in [Mode::Restore, Mode::Strict] {
                let verifiers = Verifiers { batch, parallel_min: 0, workers };
                let batched = LogContents::scan_with(&data, mode, verifiers).map(|log| (log.records, log.data_len));
                proptest::prop_assert_eq!(batched, scan_one_by_one(&data, mode));
            }
        }
    }

    #[test]
    fn streaming_asks_for_more() {
        let data = log_of(2).freeze();
        assert_eq!(read_record(&data.slice(..100), 0, Mode::Strict, false).unwrap(), Step::NeedMore(512));
        assert!(matches!(read_record(&data.slice(..512), 0, Mode::Strict, false).unwrap(), Step::Record(_)));
        assert_eq!(read_record(&data.slice(..512), 512, Mode::Strict, false).unwrap(), Step::NeedMore(1024));
    }

    #[test]
    fn writer_appends_and_resumes_with_the_tail_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let mut w = LogWriter::create(&path).unwrap();
        w.append(&log_of(3)).unwrap();
        w.sync().unwrap();
        drop(w);
        let mut w = LogWriter::open_at(&path, 1024).unwrap();
        let mut rec = BytesMut::new();
        encode_record(&vote(3, b"x"), &mut rec).unwrap();
        w.append(&rec).unwrap();
        let log = read_log_file(&path).unwrap();
        assert_eq!(log.records.len(), 3);
        assert_eq!(log.records[2].message, vote(3, b"x"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1536 + ZEROED_AHEAD, "zeros written ahead");
        assert!(w.cut_zeros().unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1536, "and cut");
        assert_eq!(read_log_file(&path).unwrap().records.len(), 3);
    }
}
