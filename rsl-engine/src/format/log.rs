//! Log (journal) files: 512-byte-aligned records, the record scanner with RSL's torn-tail
//! rules, a whole-file reader that builds the decree index, and a plain appending writer
//! (docs/spec/formats.md §8).

use super::codec::{round_up_512, DecodeError, EncodeError, PAGE};
use super::message::{self, Checksum, Message, MsgKind, Prefix, CHECKSUM_END, MAGIC, MSG_ID_OFFSET};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
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
    if let Err(e) = message::verify_checksum(&raw) {
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
    /// Each decree's newest vote record offset (a re-vote at a higher ballot replaces it).
    pub decree_index: BTreeMap<u64, usize>,
    /// Where the last good record ends: where appending resumes.
    pub data_len: usize,
}

impl LogContents {
    /// Scans `data` (a whole file) in `mode`.
    pub fn scan(data: &Bytes, mode: Mode) -> Result<LogContents, RecordError> {
        let mut out = LogContents::default();
        loop {
            match read_record(data, out.data_len, mode, true)? {
                Step::Record(rec) => {
                    if rec.message.kind() == MsgKind::Vote {
                        out.decree_index.insert(rec.message.header.decree, rec.offset);
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

/// An append-only log file. Durability is the caller's: `sync` after the records it must keep.
pub struct LogWriter {
    file: File,
    len: u64,
}

impl LogWriter {
    /// Creates a new, empty log file.
    pub fn create(path: &Path) -> io::Result<LogWriter> {
        let file = File::options().read(true).write(true).create_new(true).open(path)?;
        Ok(LogWriter { file, len: 0 })
    }

    /// Opens an existing log to append after its last good record (`data_len` from a scan).
    /// The file is cut there, so no torn bytes survive to confuse a later restart (§8.5).
    pub fn open_at(path: &Path, data_len: u64) -> io::Result<LogWriter> {
        assert!(data_len.is_multiple_of(PAGE as u64), "logs resume on a record boundary");
        let file = File::options().read(true).write(true).open(path)?;
        file.set_len(data_len)?;
        Ok(LogWriter { file, len: data_len })
    }

    /// Appends whole padded records.
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        assert_eq!(records.len() % PAGE, 0, "log appends are whole padded records");
        self.file.write_all_at(records, self.len)?;
        self.len += records.len() as u64;
        Ok(())
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
        assert_eq!(log.decree_index.get(&3), Some(&1024));
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
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1536);
    }
}
