//! The journal's NVM mode: the persistent log as the durable point, the writer thread as the
//! drainer into the RSL-format log files, and the recovery that completes the files from the
//! persistent log at start (docs/nvm.md, "The NVM journal").
//!
//! Each batch the protocol thread flushes goes into the persistent log as records carrying the
//! exact bytes the file mode would write, with where they go: a 16-byte placement (the log
//! file's first decree, the byte offset in it) before them. Once `persist` returns, the batch
//! is durable and acknowledged. The writer thread then reads the bytes back from the persistent
//! log's file (the journal keeps no copy) and writes them into the log files, one `fdatasync`
//! per file, and only then releases them from the
//! persistent log (`advance_head`). So every acknowledged byte is, at any instant, in the
//! persistent log or durable in its file, and recovery writes the persistent log's records at
//! their places again (a write of bytes already there changes nothing).

use super::{annotate, io_err, list_logs, sync_dir, JournalError, LogIo, Shared};
use crate::format::codec::PAGE;
use crate::format::log;
use crate::runtime::nvm::{self, Appended, FileMemory, NvmError, Persistence, PmemLog, Position, RECORD_HEADER};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before each record's payload: the log file's first decree and the offset in it.
pub const PLACEMENT: usize = 16;

/// The smallest persistent log the journal takes: its largest record holds a page of a file.
pub const MIN_CAPACITY: u64 = 4096;

/// Where the NVM journal's persistent log is and how it is made durable.
#[derive(Clone, Debug)]
pub struct NvmOptions {
    /// The persistent log's file (created at the first start, resized there if `capacity`
    /// changed once its records are in the files).
    pub path: PathBuf,
    /// Its ring's size in bytes: how much may be acknowledged and not yet in the log files.
    pub capacity: u64,
    /// What makes an append durable: process crash only, msync, or cache flushes.
    pub persistence: Persistence,
}

/// A record in the persistent log, not yet written to the log files. The writer reads its bytes
/// from the persistent log's file: the journal keeps no copy of what waits to be drained.
pub(super) struct Drain {
    /// The log file's first decree.
    pub file: u64,
    /// Create `<file>.log` before writing (a roll or a restart).
    pub create: bool,
    /// Where the bytes go in the log file.
    pub offset: u64,
    /// Where they are in the persistent log's file, and how many (whole 512-byte pages).
    pub at: u64,
    pub len: usize,
    /// Just past the record in the persistent log.
    pub end: Position,
    /// The highest persist number durable once this record is in its file (on a batch's
    /// last record only).
    pub seq: Option<u64>,
}

/// The persistent log as the journal holds it.
pub(super) type NvmLog = PmemLog<FileMemory>;

/// The most the writer reads from the persistent log at once: its buffer's size (whole pages;
/// small in the unit tests, so that their records are drained in several pieces).
const DRAIN_PIECE: usize = if cfg!(test) { 2 * PAGE } else { 1 << 20 };

/// The writer's read-only handle on the persistent log's file, whence it copies records into
/// the log files: a record's bytes stay put there until the writer releases it, so the journal
/// keeps no copy of them, and memory does not grow with the persistent log's size.
pub(super) struct LogSource {
    file: File,
    path: PathBuf,
    /// Reused for every read; at most [`DRAIN_PIECE`].
    buf: Vec<u8>,
}

impl LogSource {
    pub(super) fn open(path: &Path) -> Result<LogSource, JournalError> {
        let file = File::open(path).map_err(io_err(path))?;
        Ok(LogSource { file, path: path.to_path_buf(), buf: Vec::new() })
    }

    /// Writes `drain`'s bytes at their place in the log files, a piece at a time; the caller
    /// syncs.
    pub(super) fn drain_into(&mut self, io: &mut LogIo, shared: &Shared, drain: &Drain, synced: &mut Vec<(u64, u64)>) -> io::Result<()> {
        let mut done = 0;
        while done < drain.len {
            let n = (drain.len - done).min(DRAIN_PIECE);
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, drain.at + done as u64).map_err(|e| annotate(e, &self.path))?;
            let place = (drain.file, drain.offset + done as u64);
            io.write_at(shared, place, drain.create && done == 0, &self.buf, synced)?;
            done += n;
        }
        Ok(())
    }
}

impl Shared {
    /// Moves the pending batch into the persistent log and persists it: durable on return (the
    /// highest persist number in it), and queued for the writer thread to drain into the files.
    /// The same publish releases what the writer has drained meanwhile. While the log is full
    /// it waits for the writer. None: nothing pending.
    pub(super) fn persist_batch(&self, nvm: &mut NvmLog) -> io::Result<Option<u64>> {
        let mut batch = Vec::new();
        let Some(seq) = self.take(&mut batch) else { return Ok(None) };
        let last = batch.len() - 1;
        // Queued for the writer only once persisted: it releases what it drains.
        let mut persisted = Vec::new();
        // A segment larger than a record the log takes goes in as several, each of whole
        // 512-byte pages (log records are whole pages; the files take whole pages).
        let max = (nvm.max_record() - RECORD_HEADER - PLACEMENT) / PAGE * PAGE;
        for (i, segment) in batch.iter().enumerate() {
            let chunks = segment.data.chunks(max).count();
            for (k, data) in segment.data.chunks(max).enumerate() {
                let offset = segment.offset + (k * max) as u64;
                let create = segment.create && k == 0;
                let appended = self.append_waiting(nvm, segment.file, offset, data, &mut persisted)?;
                let done = k + 1 == chunks && i == last;
                let at = appended.payload_at + PLACEMENT as u64;
                let (file, len, end) = (segment.file, data.len(), appended.end);
                persisted.push(Drain { file, create, offset, at, len, end, seq: done.then_some(seq) });
            }
        }
        // The bytes are in the persistent log now: the buffers go back for the next batch.
        self.publish(&mut batch, &[]);
        self.publish_nvm(nvm)?;
        self.queue_drain(&mut persisted);
        Ok(Some(seq))
    }

    /// Hands persisted records to the writer.
    fn queue_drain(&self, persisted: &mut Vec<Drain>) {
        self.lock().drain.append(persisted);
        self.work.notify_one();
    }

    /// Persists the appends so far and releases what the writer has drained, in one publish.
    pub(super) fn publish_nvm(&self, nvm: &mut NvmLog) -> io::Result<()> {
        let released = self.lock().released;
        let done = match released {
            Some(to) if to > nvm.head() => nvm.advance_head(to),
            _ => nvm.persist(),
        };
        done.map_err(|e| annotate(e, nvm.memory().path()))
    }

    /// Appends one chunk, bound for `offset` in `<file>.log`; while the log is full, persists
    /// what is appended (so the writer can drain it) and waits for the writer to drain some.
    fn append_waiting(&self, nvm: &mut NvmLog, file: u64, offset: u64, data: &[u8], persisted: &mut Vec<Drain>) -> io::Result<Appended> {
        let (file, offset) = (file.to_le_bytes(), offset.to_le_bytes());
        loop {
            match nvm.append_parts(&[&file, &offset, data]) {
                Ok(appended) => return Ok(appended),
                Err(nvm::AppendError::Full { .. }) => self.wait_for_room(nvm, persisted)?,
                Err(e @ nvm::AppendError::TooLarge { .. }) => unreachable!("chunks fit the log: {e}"),
            }
        }
    }

    /// Persists, wakes the writer, and waits until it has drained records past the head; the
    /// next publish releases them. If the publish released some already, there is room: the
    /// caller tries again at once. (Waiting then could be for good: with everything drained
    /// and released, the writer has nothing left to drain and never moves the release again;
    /// a test hung so in 16 of 40 runs.)
    fn wait_for_room(&self, nvm: &mut NvmLog, persisted: &mut Vec<Drain>) -> io::Result<()> {
        self.full_waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let before = nvm.head();
        self.publish_nvm(nvm)?;
        self.queue_drain(persisted);
        let head = nvm.head();
        debug_assert!(head >= before, "the head went back");
        if head > before {
            return Ok(());
        }
        let mut st = self.lock();
        while !st.stopped && st.released.is_none_or(|r| r <= head) {
            st = self.drained.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stopped {
            return Err(io::Error::other(format!("the journal writer stopped: {}", st.cause)));
        }
        drop(st);
        self.publish_nvm(nvm)
    }
}

/// Opens the persistent log (creating it the first time) and writes every record it holds into
/// the log files in `dir`, then releases them: the files then hold every acknowledged record,
/// and replay goes on as in the file mode. Records already in the files are left as they are.
pub(super) fn recover(dir: &Path, opts: &NvmOptions) -> Result<NvmLog, JournalError> {
    if opts.capacity < MIN_CAPACITY {
        let what = format!("a persistent log of {} bytes is below the journal's minimum of {MIN_CAPACITY}", opts.capacity);
        return Err(NvmError::Geometry { path: opts.path.clone(), what }.into());
    }
    if !opts.path.exists() {
        return Ok(nvm::create(&opts.path, opts.capacity, opts.persistence)?);
    }
    let mut log = nvm::open(&opts.path, opts.persistence)?;
    let placed = place_records(dir, &log, &opts.path)?;
    if placed.records > 0 {
        // `written`: the bytes the files lacked (acknowledged, not yet drained at the stop).
        tracing::info!(
            path = %opts.path.display(), records = placed.records, written = placed.written, files = placed.synced,
            "persistent log replayed into the log files"
        );
    }
    let tail = log.durable_tail();
    log.advance_head(tail).map_err(|e| NvmError::Io { path: opts.path.clone(), source: e })?;
    if log.capacity() != opts.capacity {
        // Empty now: a new size takes effect.
        drop(log);
        log = nvm::create(&opts.path, opts.capacity, opts.persistence)?;
    }
    Ok(log)
}

/// What [`place_records`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Placed {
    /// Records in the persistent log.
    pub records: u64,
    /// Bytes written because a file did not hold them.
    pub written: u64,
    /// Files synced: every file a record went to, whether written or only verified.
    pub synced: usize,
}

/// Writes every record of `log` at its place in the log files in `dir` (unless the bytes are
/// there already), then syncs every file a record went to and the directory, so that the log
/// may be emptied: a byte that compares equal may be only in the page cache (the drainer was
/// killed between its write and its `fdatasync`), and must be durable before its record goes.
pub(super) fn place_records(dir: &Path, log: &NvmLog, path: &Path) -> Result<Placed, JournalError> {
    let mut files = Placer { dir, newest: list_logs(dir)?.last().map(|&(d, _)| d), open: None, opened: Vec::new(), written: 0 };
    let mut records = 0;
    for record in log.records() {
        let record = record?;
        let bad = |what: String| JournalError::NvmRecord { path: path.to_path_buf(), seq: record.seq, offset: record.offset, what };
        if record.payload.len() < PLACEMENT {
            return Err(bad(format!("{} bytes, shorter than a placement", record.payload.len())));
        }
        let file = u64::from_le_bytes(record.payload[..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(record.payload[8..16].try_into().expect("8 bytes"));
        let data = &record.payload[PLACEMENT..];
        // The journal cuts chunks of whole 512-byte pages at page offsets: anything else is
        // not a record it wrote.
        if offset % PAGE as u64 != 0 || data.len() % PAGE != 0 {
            return Err(bad(format!("{} bytes at offset {offset} of {}: not whole {PAGE}-byte pages", data.len(), log::file_name(file))));
        }
        files.place(file, offset, data).map_err(|e| match e {
            Place::Io(e) => e,
            Place::Bad(what) => bad(what),
        })?;
        records += 1;
    }
    let written = files.written;
    let synced = files.sync()?;
    Ok(Placed { records, written, synced })
}

enum Place {
    Io(JournalError),
    Bad(String),
}

/// Writes records back at their places in the log files.
struct Placer<'a> {
    dir: &'a Path,
    /// The newest log file's first decree.
    newest: Option<u64>,
    open: Option<(u64, File)>,
    /// Every file a record went to, written or only verified: all are synced.
    opened: Vec<(PathBuf, File)>,
    /// Bytes written because the file did not hold them.
    written: u64,
}

impl Placer<'_> {
    /// Makes `data` the bytes at `offset` in `<file>.log`, writing only if they differ.
    fn place(&mut self, file: u64, offset: u64, data: &[u8]) -> Result<(), Place> {
        let path = self.dir.join(log::file_name(file));
        let io = |e| Place::Io(JournalError::Io { path: path.clone(), source: e });
        if self.open.as_ref().is_none_or(|(f, _)| *f != file) {
            match File::options().read(true).write(true).open(&path) {
                Ok(f) => self.open(file, &path, f).map_err(io)?,
                // Drained, synced, and deleted by truncation since: a newer log exists.
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.newest.is_some_and(|n| n > file) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
                    let f = File::options().read(true).write(true).create_new(true).open(&path).map_err(io)?;
                    sync_dir(self.dir).map_err(io)?;
                    self.newest = Some(self.newest.map_or(file, |n| n.max(file)));
                    self.open(file, &path, f).map_err(io)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Place::Bad(format!("{} is missing, and it should hold bytes from offset {offset}", path.display())))
                }
                Err(e) => return Err(io(e)),
            }
        }
        let (_, f) = self.open.as_ref().expect("opened above");
        let len = f.metadata().map_err(io)?.len();
        if offset > len {
            return Err(Place::Bad(format!("{} ends at {len}, before the record's offset {offset}", path.display())));
        }
        let mut there = vec![0u8; data.len().min((len - offset) as usize)];
        f.read_exact_at(&mut there, offset).map_err(io)?;
        if there != data {
            f.write_all_at(data, offset).map_err(io)?;
            self.written += data.len() as u64;
            tracing::info!(path = %path.display(), offset, bytes = data.len(), "completed from the persistent log");
        }
        Ok(())
    }

    /// Makes `f` the file records go to, and remembers it for the sync.
    fn open(&mut self, file: u64, path: &Path, f: File) -> io::Result<()> {
        if !self.opened.iter().any(|(p, _)| p == path) {
            self.opened.push((path.to_path_buf(), f.try_clone()?));
        }
        self.open = Some((file, f));
        Ok(())
    }

    /// Syncs every file opened, then the directory (a file the drainer created may not be
    /// durable in it yet); the number of files synced.
    fn sync(self) -> Result<usize, JournalError> {
        for (path, file) in &self.opened {
            file.sync_data().map_err(io_err(path))?;
        }
        if !self.opened.is_empty() {
            sync_dir(self.dir).map_err(io_err(self.dir))?;
        }
        Ok(self.opened.len())
    }
}
