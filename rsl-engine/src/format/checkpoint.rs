//! Checkpoint (`*.codex`) files: the header of every version, the v4+ stream of checksummed
//! blocks, and a writer and reader with the semantics of RSL's checkpoint stream classes
//! (docs/spec/formats.md §9, docs/spec/behavior.md §1.4).

use super::checksum::{self, Hasher};
use super::codec::{round_up_512, DecodeError, EncodeError, Reader, PAGE};
use super::message::{self, Checksum, Message, MsgKind};
use super::types::{Ballot, ConfigInfo, MemberId, Version, CONFIGURATION_LIMIT, DECREE_LIMIT};
use crate::faults::{self, CHECKPOINT_FSYNC, CHECKPOINT_OPEN, CHECKPOINT_READ, CHECKPOINT_WRITE};
use crate::writeback::Writeback;
use bytes::{BufMut, Bytes, BytesMut};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The block size every RSL release writes (v4+): data plus its 8-byte checksum.
pub const DEFAULT_BLOCK_SIZE: u32 = 4 * 1024 * 1024;
const BLOCK_CHECKSUM: u64 = 8;
/// How much an unblocked (v1–v3) reader buffers at a time.
const UNBLOCKED_WINDOW: u64 = 1024 * 1024;

/// A checkpoint header. For v1 and v2 only `next_vote` is stored; the reader derives the
/// member, last executed decree and max ballot from it, as the original does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The protocol version the checkpoint was written in; it fixes the header's layout and whether
    /// data is blocked (v4+).
    pub version: Version,
    /// The replica that produced the checkpoint (v3+).
    pub member: MemberId,
    /// D: the last decree whose effects the saved state includes.
    pub last_executed: u64,
    /// Never below `next_vote`'s ballot.
    pub max_ballot: Ballot,
    /// The configuration the state is in (v3+).
    pub config: ConfigInfo,
    /// False for bootstrap checkpoints that carry no application state (v4+; true before).
    pub state_saved: bool,
    /// Total file size, header region included (stored from v4; the file size before).
    pub size: u64,
    /// Checksummed block size, a multiple of 512, or 0 for no blocks (v4+).
    pub block_size: u32,
    /// The vote for decree D + 1, a complete message with its own version and checksum.
    pub next_vote: Message,
}

impl CheckpointHeader {
    /// Length of the fields before the vote ("H").
    fn fields_len(&self) -> usize {
        let v = self.version;
        let fixed = 2 + 4 + 8 + v.member_id_size() + 8 + v.ballot_size();
        fixed + self.config.encoded_len(v) + if v.has_string_ids() { 13 } else { 0 }
    }

    /// Where the next vote starts in the header region ("H"; 0 for v1 and v2).
    pub fn vote_offset(&self) -> usize {
        if self.version.has_config() {
            self.fields_len()
        } else {
            0
        }
    }

    /// The header region's length ("L"): where application data starts.
    pub fn data_offset(&self, vote_len: usize) -> usize {
        if self.version.has_config() {
            round_up_512(round_up_512(vote_len) + self.fields_len())
        } else {
            round_up_512(vote_len)
        }
    }

    /// The whole header region: fields, vote, zero padding and zero slack, `L` bytes.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let v = self.version;
        if self.next_vote.kind() != MsgKind::Vote {
            return Err(EncodeError::Unsupported("a checkpoint whose next vote is not a vote", v.get()));
        }
        if !v.has_config() && self.next_vote.header.version != v {
            return Err(EncodeError::Unsupported("a v1/v2 checkpoint whose vote has another version", v.get()));
        }
        let vote = self.next_vote.encode(Checksum::Always)?;
        let l = self.data_offset(vote.len());
        let mut out = BytesMut::with_capacity(l);
        if v.has_config() {
            out.put_u16_le(v.get());
            out.put_u32_le(l as u32);
            out.put_u64_le(0); // never computed by the original, never checked
            self.member.encode(&mut out, v)?;
            out.put_u64_le(self.last_executed);
            self.max_ballot.encode(&mut out, v)?;
            self.config.encode(&mut out, v)?;
            if v.has_string_ids() {
                out.put_u8(self.state_saved as u8);
                out.put_u64_le(self.size);
                out.put_u32_le(self.block_size);
            }
            debug_assert_eq!(out.len(), self.fields_len());
        }
        out.put_slice(&vote);
        out.put_bytes(0, l - out.len());
        Ok(out.freeze())
    }

    /// Parses a header region. `buf` must hold at least [`header_region_len`] bytes.
    /// Returns the header and the data offset `L`.
    pub fn decode(buf: &Bytes) -> Result<(CheckpointHeader, usize), DecodeError> {
        let region = header_region_len(buf)?;
        if region > buf.len() {
            return Err(DecodeError::Truncated { what: "checkpoint header", offset: 0, need: region, have: buf.len() });
        }
        let mut r = Reader::window(buf, 0, region);
        let at = r.pos();
        let raw_version = r.u16("checkpoint version")?;
        let version = Version::new(raw_version).ok_or(r.invalid("checkpoint version", at, raw_version as u64))?;
        if !version.has_config() {
            let vote = decode_vote(buf, 0, region)?;
            let h = vote.header.clone();
            let header = CheckpointHeader {
                version,
                member: h.sender,
                last_executed: h.decree.wrapping_sub(1),
                max_ballot: h.ballot,
                config: ConfigInfo::default(),
                state_saved: true,
                size: 0,
                block_size: 0,
                next_vote: vote,
            };
            check_numbers(&header, 0)?;
            return Ok((header, region));
        }
        let stored_len = r.u32("header length")? as usize;
        r.u64("header checksum")?;
        let member = MemberId::decode(&mut r, version)?;
        let last_executed = r.u64("last executed decree")?;
        let max_ballot = Ballot::decode(&mut r, version)?;
        let config = ConfigInfo::decode(&mut r, version)?;
        let (state_saved, size, block_size) =
            if version.has_string_ids() { (r.bool("state saved")?, r.u64("checkpoint size")?, r.u32("block size")?) } else { (true, 0, 0) };
        let vote_at = r.pos();
        let next_vote = decode_vote(buf, vote_at, region)?;
        let header = CheckpointHeader { version, member, last_executed, max_ballot, config, state_saved, size, block_size, next_vote };
        if header.max_ballot < header.next_vote.header.ballot {
            // The original asserts during replay; we reject the header.
            return Err(DecodeError::Malformed {
                what: "max ballot",
                offset: 14 + version.member_id_size() + 8,
                detail: "below the next vote's ballot",
            });
        }
        check_numbers(&header, vote_at)?;
        let vote_len = u32::from_le_bytes(buf[vote_at + 2..vote_at + 6].try_into().expect("vote prefix parsed")) as usize;
        let l = header.data_offset(vote_len);
        if l != stored_len {
            return Err(DecodeError::Invalid { what: "header length", offset: 2, value: stored_len as u64 });
        }
        if !block_size.is_multiple_of(PAGE as u32) {
            // The original asserts; we reject.
            return Err(DecodeError::Invalid { what: "block size", offset: vote_at - 4, value: block_size as u64 });
        }
        Ok((header, l))
    }

    /// The file name of the checkpoint for last executed decree `decree`.
    pub fn file_name(decree: u64) -> String {
        format!("{decree}.codex")
    }
}

/// Refuses decrees and configuration numbers no ring reaches (`DECREE_LIMIT`,
/// `CONFIGURATION_LIMIT`) and a member set that cannot be a configuration: the replica that
/// restores the header relies on them.
fn check_numbers(h: &CheckpointHeader, vote_at: usize) -> Result<(), DecodeError> {
    let decree_at = 14 + h.version.member_id_size();
    let config_at = decree_at + 8 + h.version.ballot_size();
    let vote_decree_at = vote_at + 20 + h.next_vote.header.version.member_id_size();
    let invalid = |what, offset, value| Err(DecodeError::Invalid { what, offset, value });
    if h.last_executed >= DECREE_LIMIT {
        // Before v3 it is the next vote's decree minus one: 0 there wraps around.
        return invalid("last executed decree", if h.version.has_config() { decree_at } else { vote_decree_at }, h.last_executed);
    }
    if h.next_vote.header.decree >= DECREE_LIMIT {
        return invalid("next vote decree", vote_decree_at, h.next_vote.header.decree);
    }
    if h.config.number >= CONFIGURATION_LIMIT {
        return invalid("configuration number", config_at, h.config.number.into());
    }
    if h.config.initial_decree >= DECREE_LIMIT {
        return invalid("initial decree", config_at + 4, h.config.initial_decree);
    }
    match h.config.members.flaw() {
        Some(detail) => Err(DecodeError::Malformed { what: "member set", offset: config_at + 12, detail }),
        None => Ok(()),
    }
}

/// How many bytes the header region occupies, from its first 512 bytes: `RUP512(M)` where
/// `M` is the u32 at offset 2 (the header length from v3, the vote length before).
pub fn header_region_len(first_page: &[u8]) -> Result<usize, DecodeError> {
    if first_page.len() < PAGE {
        return Err(DecodeError::Truncated { what: "checkpoint header", offset: 0, need: PAGE, have: first_page.len() });
    }
    let m = u32::from_le_bytes(first_page[2..6].try_into().expect("4 bytes")) as usize;
    Ok(round_up_512(m.max(1)))
}

fn decode_vote(buf: &Bytes, at: usize, region: usize) -> Result<Message, DecodeError> {
    let mut r = Reader::window(buf, at, region);
    let vote = Message::decode_from(&mut r)?;
    if vote.kind() != MsgKind::Vote {
        return Err(DecodeError::Invalid { what: "next vote type", offset: at + message::MSG_ID_OFFSET, value: vote.kind().code() as u64 });
    }
    message::verify_checksum(&buf[at..r.pos()]).map_err(|e| e.shifted(at))?;
    Ok(vote)
}

/// Errors of the checkpoint streams; `win32_code` gives the code RSL's API returns.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The header does not decode.
    #[error("{}: bad header: {source}", path.display())]
    Header {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with the header, and where.
        source: DecodeError,
    },
    /// The file's length disagrees with its header: a truncated or padded checkpoint.
    #[error("{}: file is {actual} bytes but its header says {expected}", path.display())]
    Size {
        /// The checkpoint file.
        path: PathBuf,
        /// The length its header implies, in bytes.
        expected: u64,
        /// The file's length, in bytes.
        actual: u64,
    },
    /// A v4+ data block whose checksum does not match: the checkpoint is corrupt.
    #[error("{}: block {block} at offset {offset}: stored checksum {stored:#018x}, computed {computed:#018x}", path.display())]
    BlockChecksum {
        /// The checkpoint file.
        path: PathBuf,
        /// The block's index, from 0.
        block: u64,
        /// The block's byte offset in the file.
        offset: u64,
        /// The checksum the block carries.
        stored: u64,
        /// The checksum of the block's data.
        computed: u64,
    },
    /// A read past the end of the state data (`ERROR_HANDLE_EOF` to the application).
    #[error("end of checkpoint data")]
    Eof,
    /// A seek past the end of the state data.
    #[error("position {0} lies beyond the checkpoint data")]
    InvalidPosition(u64),
    /// The header could not be encoded in the checkpoint's version.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl CheckpointError {
    /// The Win32 error code RSL's checkpoint stream methods return for this error.
    pub fn win32_code(&self) -> u32 {
        match self {
            CheckpointError::Eof => 38,                                             // ERROR_HANDLE_EOF
            CheckpointError::InvalidPosition(_) | CheckpointError::Encode(_) => 87, // ERROR_INVALID_PARAMETER
            CheckpointError::Io { .. } => 31,                                       // ERROR_GEN_FAILURE
            _ => 23,                                                                // ERROR_CRC
        }
    }
}

/// The layout of the data region, derived from the header and the file size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    data_offset: u64,
    /// On-disk block size (data plus checksum), 0 for unblocked data.
    block: u64,
    /// Bytes of application data.
    data_size: u64,
    /// Bytes of the data region on disk.
    disk_size: u64,
}

impl Layout {
    fn new(header: &CheckpointHeader, data_offset: u64, file_size: u64) -> Result<Layout, &'static str> {
        if file_size < data_offset {
            return Err("shorter than its header");
        }
        let disk = file_size - data_offset;
        let block = if header.version.has_string_ids() { header.block_size as u64 } else { 0 };
        if block == 0 {
            return Ok(Layout { data_offset, block, data_size: disk, disk_size: disk });
        }
        let rem = disk % block;
        if rem != 0 && rem <= BLOCK_CHECKSUM {
            return Err("last block holds no data");
        }
        let data_size = disk / block * (block - BLOCK_CHECKSUM) + rem.saturating_sub(BLOCK_CHECKSUM);
        Ok(Layout { data_offset, block, data_size, disk_size: disk })
    }

    fn chunk(&self) -> u64 {
        self.block - BLOCK_CHECKSUM
    }
}

/// Reads a checkpoint's application data (`RSLCheckpointStreamReader`). v4+ blocks are
/// verified lazily, when the application first reads into them.
pub struct CheckpointReader {
    file: File,
    path: PathBuf,
    header: CheckpointHeader,
    layout: Layout,
    /// Logical position in the application data.
    pos: u64,
    /// The loaded window: its logical start and its verified data bytes.
    window_start: u64,
    window: Vec<u8>,
}

impl CheckpointReader {
    /// Opens a checkpoint and checks its header and size (the checks of `Init`).
    pub fn open(path: &Path) -> Result<CheckpointReader, CheckpointError> {
        let io_err = |source| CheckpointError::Io { path: path.into(), source };
        let mut file = faults::check(CHECKPOINT_OPEN, path).and_then(|()| File::open(path)).map_err(io_err)?;
        let file_size = file.metadata().map_err(io_err)?.len();
        let mut first = vec![0u8; PAGE.min(file_size as usize)];
        faults::check(CHECKPOINT_READ, path).and_then(|()| file.read_exact(&mut first)).map_err(io_err)?;
        let header_err = |source| CheckpointError::Header { path: path.into(), source };
        let region = header_region_len(&first).map_err(header_err)?;
        if region as u64 > file_size {
            let e = DecodeError::Truncated { what: "checkpoint header", offset: 0, need: region, have: file_size as usize };
            return Err(header_err(e));
        }
        let mut buf = vec![0u8; region];
        file.read_exact_at(&mut buf, 0).map_err(io_err)?;
        let (mut header, data_offset) = CheckpointHeader::decode(&Bytes::from(buf)).map_err(header_err)?;
        if header.version.has_string_ids() {
            if header.size != file_size {
                return Err(CheckpointError::Size { path: path.into(), expected: header.size, actual: file_size });
            }
        } else {
            header.size = file_size;
        }
        let layout = Layout::new(&header, data_offset as u64, file_size)
            .map_err(|detail| header_err(DecodeError::Malformed { what: "checkpoint size", offset: 0, detail }))?;
        Ok(CheckpointReader { file, path: path.into(), header, layout, pos: 0, window_start: 0, window: Vec::new() })
    }

    /// The header, as decoded when the file was opened.
    pub fn header(&self) -> &CheckpointHeader {
        &self.header
    }

    /// The checkpoint file this reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of application data, without the header and block checksums.
    pub fn size(&self) -> u64 {
        self.layout.data_size
    }

    /// The current position in the application data.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Up to `n` bytes at the current position, without copying, and advances past them. It
    /// never crosses a block boundary, so it may return fewer; `Eof` at the end.
    pub fn get_data_pointer(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        if self.pos >= self.layout.data_size {
            return Err(CheckpointError::Eof);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if self.pos < self.window_start || self.pos >= window_end {
            self.load_window()?;
        }
        let from = (self.pos - self.window_start) as usize;
        let len = n.min(self.window.len() - from);
        self.pos += len as u64;
        debug_assert!(self.pos <= self.layout.data_size);
        Ok(&self.window[from..from + len])
    }

    /// Copies up to `buf.len()` bytes; returns how many (0 never: `Eof` at the end).
    pub fn get_data(&mut self, buf: &mut [u8]) -> Result<usize, CheckpointError> {
        let src = self.get_data_pointer(buf.len())?;
        let n = src.len();
        buf[..n].copy_from_slice(src);
        Ok(n)
    }

    /// Advances by `n` bytes, verifying every block it passes through.
    pub fn skip(&mut self, mut n: u64) -> Result<(), CheckpointError> {
        while n > 0 {
            let step = self.get_data_pointer(n.min(usize::MAX as u64) as usize)?.len() as u64;
            n -= step;
        }
        Ok(())
    }

    /// Moves to an absolute position in the application data (any version, unlike the
    /// original, whose pre-v4 `Seek` computes garbage).
    pub fn seek(&mut self, offset: u64) -> Result<(), CheckpointError> {
        if offset > self.layout.data_size {
            return Err(CheckpointError::InvalidPosition(offset));
        }
        self.pos = offset;
        Ok(())
    }

    /// Reads the block (or unblocked window) holding `pos`, verifying its checksum.
    fn load_window(&mut self) -> Result<(), CheckpointError> {
        let l = self.layout;
        let (start, disk_at, disk_len) = if l.block == 0 {
            let start = self.pos / UNBLOCKED_WINDOW * UNBLOCKED_WINDOW;
            (start, l.data_offset + start, UNBLOCKED_WINDOW.min(l.disk_size - start))
        } else {
            let index = self.pos / l.chunk();
            let disk_at = index * l.block;
            (index * l.chunk(), l.data_offset + disk_at, l.block.min(l.disk_size - disk_at))
        };
        self.window.clear();
        self.window.resize(disk_len as usize, 0);
        let read = faults::check(CHECKPOINT_READ, &self.path).and_then(|()| self.file.read_exact_at(&mut self.window, disk_at));
        read.map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?;
        if l.block != 0 {
            let data_len = self.window.len() - BLOCK_CHECKSUM as usize;
            let stored = u64::from_le_bytes(self.window[data_len..].try_into().expect("8 bytes"));
            let computed = checksum::checksum(&self.window[..data_len]);
            if stored != computed {
                self.window.clear();
                return Err(CheckpointError::BlockChecksum {
                    path: self.path.clone(),
                    block: start / l.chunk(),
                    offset: disk_at + data_len as u64,
                    stored,
                    computed,
                });
            }
            self.window.truncate(data_len);
        }
        self.window_start = start;
        Ok(())
    }

    /// Every block's on-disk offset, data length and checksum verdict, for inspection tools.
    pub fn blocks(&self) -> Result<Vec<BlockInfo>, CheckpointError> {
        let l = self.layout;
        if l.block == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // No block is longer than the data region: the header's block size alone must not
        // size an allocation.
        let mut buf = vec![0u8; l.block.min(l.disk_size) as usize];
        let mut at = 0;
        while at < l.disk_size {
            let len = l.block.min(l.disk_size - at) as usize;
            let offset = l.data_offset + at;
            self.file.read_exact_at(&mut buf[..len], offset).map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?;
            let data_len = len - BLOCK_CHECKSUM as usize;
            let stored = u64::from_le_bytes(buf[data_len..len].try_into().expect("8 bytes"));
            let computed = checksum::checksum(&buf[..data_len]);
            out.push(BlockInfo { offset, data_len: data_len as u64, stored, computed });
            at += len as u64;
        }
        Ok(out)
    }
}

/// One v4+ data block as found on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The block's byte offset in the file.
    pub offset: u64,
    /// Bytes of state data in the block (the last one may be short).
    pub data_len: u64,
    /// The checksum the block carries.
    pub stored: u64,
    /// The checksum of its data as read.
    pub computed: u64,
}

impl BlockInfo {
    /// Whether the block's stored and computed checksums agree.
    pub fn ok(&self) -> bool {
        self.stored == self.computed
    }
}

/// Writes a checkpoint (`RSLCheckpointStreamWriter`): application data streams in after a
/// reserved header region, v4+ data is cut into checksummed blocks, and `close` writes the
/// header with the final size at offset 0 and syncs the file.
pub struct CheckpointWriter {
    out: BufWriter<File>,
    path: PathBuf,
    header: CheckpointHeader,
    data_offset: u64,
    /// Application bytes per block (0: unblocked).
    chunk: u64,
    in_block: u64,
    block_sum: Hasher,
    disk_written: u64,
    /// Written data goes to the disk as it comes, not all at `close`'s sync.
    writeback: Writeback,
    /// The first failed write (kind and message): later writes and `close` fail with it.
    failed: Option<(io::ErrorKind, String)>,
}

impl CheckpointWriter {
    /// Creates `path` (which must not exist) for a checkpoint with `header`; its `size` is
    /// filled in by `close`.
    pub fn create(path: &Path, header: CheckpointHeader) -> Result<CheckpointWriter, CheckpointError> {
        let io_err = |source| CheckpointError::Io { path: path.into(), source };
        let region = header.encode()?;
        let file =
            faults::check(CHECKPOINT_OPEN, path).and_then(|()| File::options().write(true).create_new(true).open(path)).map_err(io_err)?;
        let mut out = BufWriter::with_capacity(DEFAULT_BLOCK_SIZE as usize, file);
        out.seek(SeekFrom::Start(region.len() as u64)).map_err(io_err)?;
        let chunk = if header.version.has_string_ids() && header.block_size > 0 {
            if !header.block_size.is_multiple_of(PAGE as u32) {
                return Err(EncodeError::Unsupported("a block size that is not a multiple of 512", header.version.get()).into());
            }
            header.block_size as u64 - BLOCK_CHECKSUM
        } else {
            0
        };
        Ok(CheckpointWriter {
            out,
            path: path.into(),
            header,
            data_offset: region.len() as u64,
            chunk,
            in_block: 0,
            block_sum: Hasher::default(),
            disk_written: 0,
            writeback: Writeback::default(),
            failed: None,
        })
    }

    /// Appends application data.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), CheckpointError> {
        while !data.is_empty() {
            let take = if self.chunk == 0 { data.len() } else { data.len().min((self.chunk - self.in_block) as usize) };
            self.put(&data[..take])?;
            if self.chunk != 0 {
                self.block_sum.write(&data[..take]);
                self.in_block += take as u64;
                if self.in_block == self.chunk {
                    self.end_block()?;
                }
            }
            data = &data[take..];
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        if self.failed.is_none() {
            let out = &mut self.out;
            let written = match faults::armed(CHECKPOINT_WRITE, &self.path) {
                None => out.write_all(bytes),
                Some(fault) => Err(fault.write(CHECKPOINT_WRITE, bytes, |part| out.write_all(part))),
            };
            // What the file holds: the buffer's bytes are not in it yet.
            let in_file = self.data_offset + self.disk_written + bytes.len() as u64 - out.buffer().len() as u64;
            let written = written.and_then(|()| self.writeback.advance(out.get_ref(), &self.path, in_file));
            self.failed = written.err().map(|e| (e.kind(), e.to_string()));
        }
        match &self.failed {
            None => {
                self.disk_written += bytes.len() as u64;
                Ok(())
            }
            Some(_) => Err(self.write_error()),
        }
    }

    /// The first failed write's error, again.
    fn write_error(&self) -> CheckpointError {
        let (kind, message) = self.failed.clone().expect("a write failed");
        CheckpointError::Io { path: self.path.clone(), source: io::Error::new(kind, message) }
    }

    fn end_block(&mut self) -> Result<(), CheckpointError> {
        let sum = std::mem::take(&mut self.block_sum).finish();
        self.in_block = 0;
        self.put(&sum.to_le_bytes())
    }

    /// Finishes the last block, writes the header and syncs. Returns the final header.
    /// A write that failed before fails it too, whether the application noticed or not: a
    /// checkpoint missing data is never completed.
    pub fn close(mut self) -> Result<CheckpointHeader, CheckpointError> {
        if self.failed.is_some() {
            return Err(self.write_error());
        }
        if self.in_block > 0 {
            self.end_block()?;
        }
        self.header.size = self.data_offset + self.disk_written;
        let region = self.header.encode()?;
        assert_eq!(region.len() as u64, self.data_offset, "the header region keeps its length");
        let io_err = |source| CheckpointError::Io { path: self.path.clone(), source };
        let file = self.out.into_inner().map_err(|e| io_err(e.into_error()))?;
        faults::check(CHECKPOINT_WRITE, &self.path).and_then(|()| file.write_all_at(&region, 0)).map_err(io_err)?;
        file.set_len(self.header.size).map_err(io_err)?;
        faults::check(CHECKPOINT_FSYNC, &self.path).and_then(|()| file.sync_all()).map_err(io_err)?;
        Ok(self.header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::message::{Body, Header, VoteBody};

    fn header(v: Version) -> CheckpointHeader {
        let id = MemberId::new("1").unwrap();
        let ballot = Ballot::new(2, id);
        CheckpointHeader {
            version: v,
            member: id,
            last_executed: 4,
            max_ballot: ballot,
            config: if v.has_config() { ConfigInfo { number: 1, initial_decree: 1, ..Default::default() } } else { ConfigInfo::default() },
            state_saved: true,
            size: 0,
            block_size: if v.has_string_ids() { 1024 } else { 0 },
            next_vote: Message::new(Header::new(v, id, 5, 1, ballot), Body::Vote(VoteBody::default())),
        }
    }

    fn write(dir: &Path, v: Version, data: &[u8]) -> PathBuf {
        let path = dir.join(format!("{}.codex", v.get()));
        let mut w = CheckpointWriter::create(&path, header(v)).unwrap();
        for piece in data.chunks(77) {
            w.write(piece).unwrap();
        }
        w.close().unwrap();
        path
    }

    fn read_all(r: &mut CheckpointReader) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::new();
        loop {
            match r.get_data_pointer(500) {
                Ok(p) => out.extend_from_slice(p),
                Err(CheckpointError::Eof) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn round_trip_every_version_with_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + (i >> 8)) as u8).collect();
        for v in Version::ALL {
            let path = write(dir.path(), v, &data);
            let mut r = CheckpointReader::open(&path).unwrap();
            assert_eq!(r.size(), data.len() as u64, "{v}");
            assert_eq!(read_all(&mut r).unwrap(), data, "{v}");
            r.seek(3000).unwrap();
            let mut buf = [0u8; 10];
            assert_eq!(r.get_data(&mut buf).unwrap(), 10);
            assert_eq!(&buf, &data[3000..3010]);
            r.skip(1000).unwrap();
            assert_eq!(r.position(), 4010);
            assert!(matches!(r.seek(5001), Err(CheckpointError::InvalidPosition(5001))));
        }
    }

    #[test]
    fn blocks_never_cross_and_corruption_is_found_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![9u8; 3000]; // blocks of 1016 data bytes: 1016, 1016, 968
        let path = write(dir.path(), Version::V6, &data);
        let mut r = CheckpointReader::open(&path).unwrap();
        assert_eq!(r.get_data_pointer(5000).unwrap().len(), 1016);
        let blocks = r.blocks().unwrap();
        assert_eq!(blocks.iter().map(|b| b.data_len).collect::<Vec<_>>(), [1016, 1016, 968]);
        // Corrupt the third block: the first two still read.
        let mut bytes = std::fs::read(&path).unwrap();
        let third = blocks[2].offset as usize;
        bytes[third + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = CheckpointReader::open(&path).unwrap();
        r.skip(2032).unwrap();
        let err = r.get_data_pointer(1).unwrap_err();
        assert!(matches!(err, CheckpointError::BlockChecksum { block: 2, .. }), "{err}");
        assert_eq!(err.win32_code(), 23);
    }

    #[test]
    fn size_mismatch_and_truncation_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), Version::V4, &[1u8; 100]);
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(f.metadata().unwrap().len() - 1).unwrap();
        assert!(matches!(CheckpointReader::open(&path), Err(CheckpointError::Size { .. })));
        f.set_len(300).unwrap();
        assert!(matches!(CheckpointReader::open(&path), Err(CheckpointError::Header { .. })));
    }

    #[test]
    fn implausible_header_numbers_are_refused() {
        let refused = |h: CheckpointHeader| CheckpointHeader::decode(&h.encode().unwrap()).unwrap_err();
        let what = |e: DecodeError| match e {
            DecodeError::Invalid { what, .. } | DecodeError::Malformed { what, .. } => what,
            other => panic!("{other:?}"),
        };
        let mut h = header(Version::V6);
        h.last_executed = DECREE_LIMIT;
        assert_eq!(what(refused(h)), "last executed decree");
        let mut h = header(Version::V6);
        h.config.number = CONFIGURATION_LIMIT;
        assert_eq!(what(refused(h)), "configuration number");
        // Before v3 the last executed decree is the next vote's minus one: 0 would wrap.
        let mut h = header(Version::V2);
        h.next_vote.header.decree = 0;
        assert_eq!(what(refused(h)), "last executed decree");
        let mut h = header(Version::V6);
        let node = crate::format::Node {
            id: MemberId::new("1").unwrap(),
            ip: std::net::Ipv4Addr::LOCALHOST,
            rsl_port: 1,
            learn_port: 2,
            app_port: 0,
            host_name: Bytes::new(),
        };
        h.config.members.nodes = vec![node.clone(), node];
        assert_eq!(what(refused(h)), "member set");
        assert!(CheckpointHeader::decode(&header(Version::V6).encode().unwrap()).is_ok());
    }

    #[test]
    fn a_checkpoint_written_back_as_it_goes_reads_back_and_a_writeback_fault_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..crate::writeback::STEP * 5 / 2).map(|i| (i * 13 + (i >> 12)) as u8).collect();
        let path = write(dir.path(), Version::V6, &data);
        let mut r = CheckpointReader::open(&path).unwrap();
        assert!(r.blocks().unwrap().iter().all(BlockInfo::ok));
        assert_eq!(read_all(&mut r).unwrap(), data);

        let _scenario = fail::FailScenario::setup();
        let path = dir.path().join("failing.codex");
        fail::cfg(CHECKPOINT_FSYNC, &format!("return(eio@{})", path.display())).unwrap();
        let mut w = CheckpointWriter::create(&path, header(Version::V6)).unwrap();
        let failed = data.chunks(1 << 20).map(|piece| w.write(piece)).find_map(Result::err).expect("the writeback fails a write");
        assert!(failed.to_string().contains(CHECKPOINT_FSYNC), "{failed}");
        assert!(w.close().unwrap_err().to_string().contains(CHECKPOINT_FSYNC), "close fails with it");
    }

    #[test]
    fn empty_data_has_no_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), Version::V6, &[]);
        let mut r = CheckpointReader::open(&path).unwrap();
        assert_eq!(r.size(), 0);
        assert_eq!(r.header().size, 1024);
        assert!(matches!(r.get_data_pointer(1), Err(CheckpointError::Eof)));
    }
}
