//! The log directory: replay at startup, appends made durable by a writer thread with group
//! commit, rollover, the index the learn port serves from, truncation, and `defunct.txt`
//! (docs/spec/formats.md §8 and §10, docs/spec/behavior.md §2.13–2.15).
//!
//! The protocol thread encodes records straight into the pending batch (one lock, no I/O
//! under it). The writer thread swaps the batch out, writes it with one positioned write and
//! one `fdatasync` per file, and reports the highest sequence number in it as durable; the
//! next batch fills meanwhile. A protocol thread with nothing else to do may instead write the
//! batch itself ([`Journal::flush`]): the writer would only be woken to wake it back.
//!
//! Journals of several rings in one process may share writer threads instead
//! ([`JournalOptions::group`], `group`): a bounded number of them for any number of rings,
//! each writing one ring's batch at a time into that ring's own files.
//!
//! In the NVM mode ([`JournalOptions::nvm`], `nvm`) a batch is durable once it is in the
//! persistent log, which the protocol thread writes at each flush; the writer thread drains it
//! into the same log files afterwards.

mod group;
mod map;
mod nvm;
pub use group::JournalGroup;
pub use nvm::NvmOptions;

use super::health::Timing;
use super::{numbered_files, panic_message, FileRange, ListError};
use crate::faults::{self, JOURNAL_FSYNC, JOURNAL_OPEN, JOURNAL_READ, JOURNAL_WRITE};
use crate::format::codec::{DecodeError, EncodeError};
use crate::format::log::{self, encode_record, LogContents, LogWriter, Mode};
use crate::format::{Message, MsgKind};
use crate::paxos::SplitMix64;
use crate::runtime::nvm::{NvmError, Position};
use bytes::{Bytes, BytesMut};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;
use thiserror::Error;

/// The trace target of the event each log `fdatasync` emits, with its duration (`micros`) and
/// log directory (`dir`).
pub const SYNC_TRACE: &str = "rsl_engine::journal_sync";

/// The journal's configuration (RSL's `m_maxLogLenMB`, `m_logLenRandomize`, `m_maxLogs`).
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// The data directory the log files live in.
    pub dir: PathBuf,
    /// A log rolls over once it is longer than this, randomized (bytes).
    pub max_log_len: u64,
    /// The ± randomization of `max_log_len`, in percent, drawn anew at every roll.
    pub log_len_randomize_pct: u32,
    /// Log files always kept on disk by truncation.
    pub max_logs: usize,
    /// Unwritten bytes past which `append` waits for the writer.
    pub max_pending_bytes: usize,
    /// `fdatasync` every batch; false only for benchmarks.
    pub sync: bool,
    /// Seeds the roll-size jitter.
    pub seed: u64,
    /// Where the writer counts its writes: one per batch (write and `fdatasync`), its bytes
    /// and how long it took (`RSLStats`' log writes).
    pub timing: Arc<Timing>,
    /// The NVM journal: a record is durable once in this persistent log, and drained into the
    /// log files afterwards. None: the file journal.
    pub nvm: Option<NvmOptions>,
    /// The writer threads this journal shares with other journals of the process (the file
    /// journal only: an NVM journal keeps its own). None: a writer thread of its own.
    pub group: Option<JournalGroup>,
}

impl JournalOptions {
    /// RSL's defaults: 100 MiB ± 20 % logs, 10 kept, 64 MiB of pending appends, synced.
    pub fn new(dir: impl Into<PathBuf>) -> JournalOptions {
        JournalOptions {
            dir: dir.into(),
            max_log_len: 100 << 20,
            log_len_randomize_pct: 20,
            max_logs: 10,
            max_pending_bytes: 64 << 20,
            sync: true,
            seed: 0,
            timing: Arc::default(),
            nvm: None,
            group: None,
        }
    }
}

/// Why the journal could not open or append; messages name the file and offset.
#[derive(Debug, Error)]
pub enum JournalError {
    /// A log file or the directory could not be read, written or synced.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A file in the log directory named like a log but not `<decree>.log`.
    #[error("{}: not a log file name (expected <decree>.log)", path.display())]
    BadName {
        /// The file.
        path: PathBuf,
    },
    /// A record in the middle of a log is corrupt: replay refuses to guess.
    #[error("{}: corrupt log record at offset {offset}: {error}", path.display())]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// The record's byte offset.
        offset: u64,
        /// What is wrong with it.
        error: DecodeError,
    },
    /// A log other than the newest ends in a torn record, which only a crash of the newest can
    /// leave.
    #[error("{}: torn record at offset {offset}, but only the newest log may end in one", path.display())]
    TornOlder {
        /// The log file.
        path: PathBuf,
        /// Where the torn record starts.
        offset: u64,
    },
    /// The logs do not reach back to the decree the checkpoint needs replay to start from.
    #[error("{}: missing logs: replay must start at or before decree {need}, the oldest log starts at {oldest}", dir.display())]
    MissingLogs {
        /// The log directory.
        dir: PathBuf,
        /// The decree replay must start at or before.
        need: u64,
        /// The first decree of the oldest log.
        oldest: u64,
    },
    /// A record could not be encoded in the ring's protocol version.
    #[error("cannot encode a log record: {0}")]
    Encode(#[from] EncodeError),
    /// The writer thread failed earlier (the reason); nothing more is accepted.
    #[error("the journal writer stopped: {0}")]
    Stopped(String),
    /// The NVM journal's persistent log failed.
    #[error(transparent)]
    Nvm(#[from] NvmError),
    /// `offset`: where the record starts in the persistent log's file.
    #[error("{}: persistent log record {seq} at offset {offset}: {what}", path.display())]
    NvmRecord {
        /// The persistent log's file.
        path: PathBuf,
        /// The record's sequence number.
        seq: u64,
        /// Where the record starts in the file.
        offset: u64,
        /// What is wrong with it.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.into(), source }
}

/// Records bound for one file within a batch. Files only move forward, so a batch holds at
/// most one segment per file: one write each.
struct Segment {
    file: u64,
    /// Create `<file>.log` before writing (a roll or a restart).
    create: bool,
    /// Where `data` starts in the file.
    offset: u64,
    data: BytesMut,
}

/// One log file of the in-memory index (the one learners are served from, D9).
struct IndexedLog {
    first_decree: u64,
    path: PathBuf,
    /// (decree, offset) of each decree's vote records, in log order.
    votes: Vec<(u64, u64)>,
    /// How much of the file is durable: all a learner may be sent.
    synced: u64,
}

#[derive(Default)]
struct State {
    batch: Vec<Segment>,
    batch_bytes: usize,
    batch_seq: u64,
    /// Emptied segment buffers, kept for their capacity.
    spare: Vec<BytesMut>,
    closing: bool,
    stopped: bool,
    /// Why the writer stopped (its I/O error).
    cause: String,
    index: Vec<IndexedLog>,
    /// NVM mode: batches in the persistent log, for the writer to write to the files.
    drain: Vec<nvm::Drain>,
    /// NVM mode: the persistent log up to here is durable in the files; the protocol thread's
    /// next publish releases it.
    released: Option<Position>,
    /// NVM mode: the highest persist number durable in the files.
    drained_seq: u64,
}

struct Shared {
    state: Mutex<State>,
    /// The open log. Whoever holds it takes the pending batch and writes it, so batches reach
    /// the disk in order whichever thread writes them.
    io: Mutex<LogIo>,
    /// The writer waits here for work.
    work: Condvar,
    /// Appenders wait here for room under `max_pending_bytes`.
    room: Condvar,
    /// NVM mode: a full persistent log waits here for the writer to drain.
    drained: Condvar,
    syncs: AtomicU64,
    /// NVM mode: how often an append found the persistent log full and waited for the writer.
    full_waits: AtomicU64,
    /// The shared writer that writes this journal's batches, instead of a thread of its own.
    group: Option<JournalGroup>,
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
    /// The writer thread takes no batch (NVM mode: a process that dies before it drains; file
    /// mode: a flushing thread that must get the batch).
    #[cfg(test)]
    hold_writer: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not hide the journal from its last users.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_io(&self) -> MutexGuard<'_, LogIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells whichever writer serves this journal that a batch is pending.
    fn wake(&self) {
        match &self.group {
            Some(group) => group.wake(self),
            None => self.work.notify_one(),
        }
    }

    /// Takes the pending batch and makes it durable, under `io` throughout; the highest persist
    /// number in it, or None if nothing was pending.
    fn write_pending(&self, io: &mut LogIo, scratch: &mut Scratch) -> io::Result<Option<u64>> {
        let Some(seq) = self.take(&mut scratch.batch) else { return Ok(None) };
        scratch.synced.clear();
        let started = Instant::now();
        io.write_batch(self, &scratch.batch, &mut scratch.synced)?;
        io.timing.record(scratch.batch.iter().map(|s| s.data.len() as u64).sum(), started.elapsed());
        self.publish(&mut scratch.batch, &scratch.synced);
        Ok(Some(seq))
    }

    /// Swaps the pending appends out; None if there are none.
    fn take(&self, batch: &mut Vec<Segment>) -> Option<u64> {
        let mut st = self.lock();
        if st.batch.is_empty() {
            return None;
        }
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut st.batch, batch);
        st.batch_bytes = 0;
        let seq = st.batch_seq;
        drop(st);
        self.room.notify_all();
        Some(seq)
    }

    /// Makes the synced lengths visible to learners and recycles the batch's buffers.
    fn publish(&self, batch: &mut Vec<Segment>, synced: &[(u64, u64)]) {
        let mut st = self.lock();
        for &(file, len) in synced {
            if let Some(f) = st.index.iter_mut().rev().find(|f| f.first_decree == file) {
                debug_assert!(len >= f.synced, "synced lengths only grow");
                f.synced = len;
            }
        }
        for mut seg in batch.drain(..) {
            // Two buffers alternate; more would only hold memory.
            if st.spare.len() < 2 {
                seg.data.clear();
                st.spare.push(seg.data);
            }
        }
    }

    /// A write failed: appenders get `Stopped` rather than wait forever for room, and the
    /// writer thread ends.
    fn stop(&self, error: &io::Error) {
        let mut st = self.lock();
        st.stopped = true;
        st.cause = error.to_string();
        st.batch.clear();
        drop(st);
        self.room.notify_all();
        self.drained.notify_all();
        self.work.notify_one();
    }
}

/// Buffers a batch is written from, kept for their capacity.
#[derive(Default)]
struct Scratch {
    batch: Vec<Segment>,
    synced: Vec<(u64, u64)>,
}

/// The log directory, as the protocol thread uses it.
pub struct Journal {
    shared: Arc<Shared>,
    dir: PathBuf,
    max_logs: usize,
    max_pending_bytes: usize,
    /// Who writes the batches; None once closed.
    writer: Option<Writing>,
    /// The file appends go to, and its length counting what is still pending.
    file: u64,
    file_len: u64,
    /// Set by `restart_at`: the next append starts this file.
    restart: Option<u64>,
    /// The highest decree voted for in the logs.
    max_decree: Option<u64>,
    roll: Roll,
    last_seq: u64,
    /// The writer thread is woken by [`Journal::flush`] instead of by every append.
    deferred: bool,
    /// The last persist number flushed or handed to the writer thread.
    flushed_seq: u64,
    scratch: Scratch,
    /// NVM mode: the persistent log, written by this (the protocol) thread only.
    nvm: Option<nvm::NvmLog>,
}

/// Who writes a journal's batches.
enum Writing {
    /// A writer thread of its own.
    Own(JoinHandle<()>),
    /// The shared writer of a [`JournalGroup`], this journal being its member.
    Shared(group::Member),
}

/// When the current log rolls over (§8.6).
struct Roll {
    max_log_len: u64,
    randomize_pct: u32,
    rng: SplitMix64,
    /// This file's randomized limit.
    limit: u64,
    /// Roll at the next new decree whatever the length (`roll_at_next_vote`).
    forced: bool,
}

impl Roll {
    fn new(opts: &JournalOptions) -> Roll {
        let mut roll = Roll {
            max_log_len: opts.max_log_len,
            randomize_pct: opts.log_len_randomize_pct,
            rng: SplitMix64::new(opts.seed),
            limit: 0,
            forced: false,
        };
        roll.next_file();
        roll
    }

    /// Draws the limit of a new file: `max_log_len` ± `randomize_pct` %.
    fn next_file(&mut self) {
        let spread = (self.max_log_len as u128 * self.randomize_pct.min(100) as u128 / 100) as u64;
        self.limit = self.max_log_len - spread + self.rng.below(2 * spread + 1);
        self.forced = false;
        debug_assert!(self.limit <= self.max_log_len.saturating_mul(2));
    }

    fn due(&self, file_len: u64) -> bool {
        file_len > 0 && (file_len > self.limit || self.forced)
    }
}

/// The records replay starts from, in log order, and where each is on disk: errors found
/// while replaying them name the file and offset.
#[derive(Debug, Default)]
pub struct Replay {
    /// The records, decoded, oldest first.
    pub records: Vec<Arc<Message>>,
    /// Per record: its file (an index into `files`) and offset.
    at: Vec<(usize, u64)>,
    files: Vec<PathBuf>,
}

impl Replay {
    /// The file and offset of `records[i]`.
    pub fn origin(&self, i: usize) -> (&Path, u64) {
        let (file, offset) = self.at[i];
        (&self.files[file], offset)
    }

    fn take(kept: &mut [Found]) -> Replay {
        let mut replay = Replay::default();
        for (file, found) in kept.iter_mut().enumerate() {
            replay.files.push(found.path.clone());
            for record in std::mem::take(&mut found.contents.records) {
                replay.at.push((file, record.offset as u64));
                replay.records.push(Arc::new(record.message));
            }
        }
        replay
    }
}

/// A log file found at startup, scanned.
struct Found {
    decree: u64,
    path: PathBuf,
    contents: LogContents,
}

/// The records [`Journal::open`] would return for `dir`, read without writing anything (the
/// read-only Replay).
pub fn read_logs(dir: &Path, checkpoint_decree: Option<u64>) -> Result<Replay, JournalError> {
    // Read, not mapped: a replica may be writing the directory, and a roll cuts the zeros
    // of a log a mapping would still reach into.
    Ok(Replay::take(&mut scan_dir(dir, checkpoint_decree, false)?))
}

impl Journal {
    /// Opens (or starts) the log directory and returns the records to replay, in log order,
    /// from the newest log numbered ≤ `checkpoint_decree + 1` (formats §8.5).
    pub fn open(
        opts: JournalOptions,
        checkpoint_decree: Option<u64>,
        on_durable: impl Fn(u64) + Send + 'static,
        on_error: impl FnOnce(io::Error) + Send + 'static,
    ) -> Result<(Journal, Replay), JournalError> {
        assert!(opts.max_logs >= 1 && opts.max_pending_bytes > 0, "the journal keeps a log and a batch");
        fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
        // Before the scan: the files then hold every acknowledged record.
        let nvm = opts.nvm.as_ref().map(|n| nvm::recover(&opts.dir, n)).transpose()?;
        let mut kept = scan_dir(&opts.dir, checkpoint_decree, true)?;
        let replay = Replay::take(&mut kept);
        let log = open_tail(&opts.dir, &mut kept, checkpoint_decree)?;
        let tail = kept.last().expect("a log to append to");
        let (file, file_len) = (tail.decree, tail.contents.data_len as u64);
        assert_eq!(log.len(), file_len, "appends resume after the last good record");
        let io = LogIo { dir: opts.dir.clone(), sync: opts.sync, file, log, dirty: false, timing: opts.timing.clone() };
        let state = State { index: kept.into_iter().map(indexed).collect(), ..State::default() };
        // The NVM journal's writer drains the persistent log: a thread of its own.
        let group = opts.group.clone().filter(|_| nvm.is_none());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            io: Mutex::new(io),
            work: Condvar::new(),
            room: Condvar::new(),
            drained: Condvar::new(),
            syncs: AtomicU64::new(0),
            full_waits: AtomicU64::new(0),
            group: group.clone(),
            #[cfg(test)]
            fail_writes: Default::default(),
            #[cfg(test)]
            hold_writer: Default::default(),
        });
        let writer = match group {
            Some(group) => Writing::Shared(group.join(&shared, on_durable, on_error).map_err(io_err(&opts.dir))?),
            None => {
                let source = opts.nvm.as_ref().filter(|_| nvm.is_some()).map(|n| nvm::LogSource::open(&n.path)).transpose()?;
                let writer = Writer { shared: shared.clone(), source };
                // The writer's lines carry the replica's span, as its other threads' do.
                let span = tracing::Span::current();
                let writer = std::thread::Builder::new()
                    .name("rsl-journal".into())
                    .spawn(move || span.in_scope(|| writer.run(on_durable, on_error)))
                    .map_err(io_err(&opts.dir))?;
                Writing::Own(writer)
            }
        };
        let journal = Journal {
            shared,
            max_logs: opts.max_logs,
            max_pending_bytes: opts.max_pending_bytes,
            writer: Some(writer),
            file,
            file_len,
            restart: None,
            max_decree: replay.records.iter().filter(|m| m.kind() == MsgKind::Vote).map(|m| m.header.decree).max(),
            roll: Roll::new(&opts),
            last_seq: 0,
            deferred: false,
            flushed_seq: 0,
            scratch: Scratch::default(),
            nvm,
            dir: opts.dir,
        };
        Ok((journal, replay))
    }

    /// Adds `record` (persist number `seq`) to the pending batch. Returns the new file's first
    /// decree when this record rolled the log over (§8.6).
    pub fn append(&mut self, seq: u64, record: &Message) -> Result<Option<u64>, JournalError> {
        assert!(seq > self.last_seq, "persists are appended in increasing order ({seq} after {})", self.last_seq);
        let rolled = self.roll_due(record);
        let new_file = self.restart.or(rolled);
        let shared = self.shared.clone();
        if let Some(log) = self.nvm.as_mut() {
            // The writer drains only what is in the persistent log: the batch goes there now.
            if shared.lock().batch_bytes > self.max_pending_bytes {
                if let Err(e) = shared.persist_batch(log) {
                    shared.stop(&e);
                }
            }
        }
        let mut st = shared.lock();
        while st.batch_bytes > self.max_pending_bytes && !st.stopped {
            shared.wake();
            st = shared.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stopped {
            return Err(JournalError::Stopped(st.cause.clone()));
        }
        let target = new_file.unwrap_or(self.file);
        let fresh = st.batch.last().is_none_or(|s| s.file != target);
        if fresh {
            let data = st.spare.pop().unwrap_or_default();
            let offset = if new_file.is_some() { 0 } else { self.file_len };
            st.batch.push(Segment { file: target, create: new_file.is_some(), offset, data });
        }
        let seg = st.batch.last_mut().expect("a segment for the target file");
        let start = seg.data.len();
        if let Err(e) = encode_record(record, &mut seg.data) {
            seg.data.truncate(start);
            if fresh {
                let seg = st.batch.pop().expect("just pushed");
                st.spare.push(seg.data);
            }
            return Err(e.into());
        }
        let len = (seg.data.len() - start) as u64;
        if let Some(first) = new_file {
            if self.restart.is_some() {
                // A loaded checkpoint replaced the state: learners are served from the new log
                // only (§8.1); the old files stay on disk until truncation.
                st.index.clear();
            }
            let path = self.dir.join(log::file_name(first));
            st.index.push(IndexedLog { first_decree: first, path, votes: Vec::new(), synced: 0 });
            self.start_file(first);
        }
        if record.kind() == MsgKind::Vote {
            let decree = record.header.decree;
            st.index.last_mut().expect("the current file is indexed").votes.push((decree, self.file_len));
            self.max_decree = Some(self.max_decree.map_or(decree, |m| m.max(decree)));
        }
        self.file_len += len;
        st.batch_bytes += len as usize;
        st.batch_seq = seq;
        drop(st);
        if !self.deferred {
            shared.wake();
        }
        self.last_seq = seq;
        debug_assert!(self.file_len.is_multiple_of(512), "records are whole pages");
        Ok(rolled)
    }

    /// From now on appends do not wake the writer thread: the caller calls [`flush`] once it
    /// has appended what it had to (the protocol thread, at the end of each turn).
    ///
    /// [`flush`]: Journal::flush
    pub fn defer_writes(&mut self) {
        self.deferred = true;
    }

    /// Starts making the appends so far durable. With `here`, and the writer thread not busy
    /// writing an earlier batch, this thread writes and syncs them itself and returns the
    /// persist number now durable (the writer thread would have to be woken, and then wake the
    /// caller back); otherwise the writer thread is woken, reports through `on_durable`, and
    /// this returns None. An error stops the journal as the writer's own would, except that it
    /// is returned here instead of passed to `on_error`.
    pub fn flush(&mut self, here: bool) -> Option<io::Result<u64>> {
        if self.last_seq == self.flushed_seq {
            return None;
        }
        self.flushed_seq = self.last_seq;
        if let Some(log) = self.nvm.as_mut() {
            // Durable once persisted: cheap enough for this thread whatever `here` says.
            return Some(match self.shared.persist_batch(log) {
                Ok(_) => Ok(self.last_seq),
                Err(e) => {
                    self.shared.stop(&e);
                    Err(e)
                }
            });
        }
        if here {
            if let Ok(mut io) = self.shared.io.try_lock() {
                match self.shared.write_pending(&mut io, &mut self.scratch) {
                    Ok(Some(seq)) => return Some(Ok(seq)),
                    // The writer thread took it before this thread got the log.
                    Ok(None) => return None,
                    Err(e) => {
                        self.shared.stop(&e);
                        return Some(Err(e));
                    }
                }
            }
        }
        self.shared.wake();
        None
    }

    fn start_file(&mut self, first: u64) {
        assert!(first > self.file || self.file_len == 0 && first == self.file, "log names only grow");
        self.file = first;
        self.file_len = 0;
        self.restart = None;
        self.roll.next_file();
    }

    /// Whether `record` starts a new log (§8.6): a vote for a new highest decree while the
    /// current file is past its limit or a roll was asked for.
    fn roll_due(&self, record: &Message) -> Option<u64> {
        let decree = record.header.decree;
        let new_high = record.kind() == MsgKind::Vote && self.max_decree.is_none_or(|m| decree > m) && decree > self.file;
        (self.restart.is_none() && new_high && self.roll.due(self.file_len)).then_some(decree)
    }

    /// Rolls the log at the next vote for a new decree (a time-based checkpoint is due).
    pub fn roll_at_next_vote(&mut self) {
        self.roll.forced = true;
    }

    /// After a fetched checkpoint was loaded: later appends go to `<first_decree>.log`.
    pub fn restart_at(&mut self, first_decree: u64) {
        assert!(first_decree > self.file, "a restarted log ({first_decree}) comes after the current one ({})", self.file);
        self.restart = Some(first_decree);
    }

    /// The learn port's view of the logs.
    pub fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    /// How many `fdatasync`s the writer has done.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Drops logs a checkpoint made unnecessary (§8.7, D9): from the index every file whose
    /// successor starts at or before min(checkpoint, executed) + 1; from disk the oldest logs
    /// beyond `max_logs` that neither `oldest_checkpoint_kept` nor a decree above `executed`
    /// needs. Returns minDecreeInLog.
    /// Only files already out of the index are deleted, so never the writer's; a learner that
    /// opened one before keeps reading it (an unlinked file stays readable on Unix).
    pub fn truncate(&mut self, checkpoint_decree: u64, oldest_checkpoint_kept: u64, executed: u64) -> u64 {
        assert!(oldest_checkpoint_kept <= checkpoint_decree, "the oldest checkpoint kept is not newer than the newest");
        let keep_from = checkpoint_decree.min(executed).saturating_add(1);
        let (first_indexed, min) = {
            let mut st = self.shared.lock();
            let drop_n = st.index.windows(2).take_while(|w| w[1].first_decree <= keep_from).count();
            st.index.drain(..drop_n);
            assert!(!st.index.is_empty(), "the current log is never dropped");
            (st.index[0].first_decree, min_decree(&st.index))
        };
        // A log holding a decree not executed yet stays on disk: the execute queue may re-read
        // it (runtime/spill.rs), even after a loaded checkpoint dropped it from the index.
        if let Err(e) = delete_old_logs(&self.dir, self.max_logs, oldest_checkpoint_kept.min(executed), first_indexed) {
            tracing::warn!("log truncation stopped: {e}");
        }
        min
    }

    /// Where the newest vote record for `decree` is: its log (by first decree) and offset,
    /// durable or not; None if no indexed log holds one. None too while a restart is pending
    /// (`restart_at`): the logs still indexed then hold the replaced state's votes, which may be
    /// of another ballot and value than the loaded state's for the same decree.
    pub(crate) fn locate_vote(&self, decree: u64) -> Option<(u64, u64)> {
        if self.restart.is_some() {
            return None;
        }
        let st = self.shared.lock();
        st.index.iter().rev().find_map(|f| f.votes.iter().rev().find(|v| v.0 == decree).map(|&(_, at)| (f.first_decree, at)))
    }

    /// The persist number of the last record appended: every record appended so far is durable
    /// once it is.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Of the persists up to `durable`, those whose records can be read from the log files
    /// (in the NVM mode, the drained ones).
    pub(crate) fn readable(&self, durable: u64) -> u64 {
        if self.nvm.is_some() {
            durable.min(self.shared.lock().drained_seq)
        } else {
            durable
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes everything appended and stops the writer; `Stopped` if it had failed.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), JournalError> {
        let writer = match self.writer.take() {
            None => return Ok(()),
            Some(Writing::Shared(member)) => {
                member.leave(&self.shared);
                return self.closed();
            }
            Some(Writing::Own(writer)) => writer,
        };
        if let Some(log) = self.nvm.as_mut() {
            if let Err(e) = self.shared.persist_batch(log) {
                self.shared.stop(&e);
            }
        }
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
        if writer.join().is_err() {
            tracing::error!("the journal writer panicked");
        }
        if let Some(log) = self.nvm.as_mut() {
            // Everything is in the files: empty the persistent log.
            if let Err(e) = self.shared.publish_nvm(log) {
                self.shared.stop(&e);
            }
        }
        self.closed()
    }

    /// After the writer is done: `Stopped` if it had failed; otherwise the open log is cut to
    /// its data.
    fn closed(&self) -> Result<(), JournalError> {
        let st = self.shared.lock();
        assert!(st.stopped || st.batch.is_empty(), "close flushes every append");
        if st.stopped {
            return Err(JournalError::Stopped(st.cause.clone()));
        }
        drop(st);
        let mut io = self.shared.lock_io();
        let path = io.path();
        io.finish(&self.shared, &mut Vec::new()).map_err(io_err(&path))
    }

    #[cfg(test)]
    fn fail_writes(&self) {
        self.shared.fail_writes.store(true, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn hold_writer(&self) {
        self.shared.hold_writer.store(true, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn release_writer(&self) {
        self.shared.hold_writer.store(false, Ordering::SeqCst);
        self.shared.work.notify_one();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Serves FetchVotes from the in-memory index (formats §7.2); cheap to clone, any thread.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// The file holding the newest durable vote for `decree`, from that vote to the file's
    /// synced end, then every later file up to its synced end; `None` if no log holds it.
    /// A `pipelined` log (version 7) is not in decree order: it is served from its first
    /// durable vote at or after `decree` instead, or a learner would miss the votes of later
    /// decrees logged before the newest one of `decree` (the simulator serves the same).
    pub fn votes_from(&self, decree: u64, pipelined: bool) -> Option<Vec<FileRange>> {
        let st = self.shared.lock();
        // Every durable vote, in log order: (file, decree, offset).
        let mut durable = st
            .index
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.votes.iter().filter(move |&&(_, at)| at < f.synced).map(move |&(d, at)| (i, d, at)));
        let found = if pipelined { durable.find(|&(_, d, _)| d >= decree) } else { durable.rfind(|&(_, d, _)| d == decree) };
        let (i, _, start) = found?;
        let first = FileRange { path: st.index[i].path.clone(), start, end: st.index[i].synced };
        let later = st.index[i + 1..].iter().filter(|f| f.synced > 0).map(|f| FileRange { path: f.path.clone(), start: 0, end: f.synced });
        let ranges: Vec<FileRange> = std::iter::once(first).chain(later).collect();
        debug_assert!(ranges.iter().all(|r| r.start < r.end));
        Some(ranges)
    }

    /// minDecreeInLog: the first decree of the oldest indexed log.
    pub fn min_decree(&self) -> u64 {
        min_decree(&self.shared.lock().index)
    }

    /// Every later write of the journal fails (runtime tests of the fail-stop path).
    #[cfg(test)]
    pub(crate) fn fail_writes(&self) {
        self.shared.fail_writes.store(true, Ordering::SeqCst);
    }
}

fn min_decree(index: &[IndexedLog]) -> u64 {
    index.first().map_or(0, |f| f.votes.first().map_or(f.first_decree, |v| v.0))
}

fn indexed(f: Found) -> IndexedLog {
    let votes = f.contents.votes.iter().map(|&(d, at)| (d, at as u64)).collect();
    IndexedLog { first_decree: f.decree, path: f.path, votes, synced: f.contents.data_len as u64 }
}

/// Lists and scans every log (any corruption fails startup); keeps those replay starts from.
fn scan_dir(dir: &Path, checkpoint: Option<u64>, mapped: bool) -> Result<Vec<Found>, JournalError> {
    let logs = list_logs(dir)?;
    let start = replay_start(dir, &logs, checkpoint)?;
    let count = logs.len();
    let mut kept = Vec::with_capacity(count - start);
    for (i, (decree, path)) in logs.into_iter().enumerate() {
        let contents = scan_log(&path, i + 1 == count, mapped)?;
        if i >= start {
            kept.push(Found { decree, path, contents });
        }
    }
    Ok(kept)
}

/// Opens the newest log after its last good record (cutting a torn tail), or starts the
/// first log of a new directory: `0.log`, or `<checkpoint + 1>.log` after a checkpoint.
fn open_tail(dir: &Path, kept: &mut Vec<Found>, checkpoint: Option<u64>) -> Result<LogWriter, JournalError> {
    if let Some(f) = kept.last() {
        return open_log(&f.path, Some(f.contents.data_len as u64)).map_err(io_err(&f.path));
    }
    let decree = checkpoint.map_or(0, |d| d.saturating_add(1));
    let path = dir.join(log::file_name(decree));
    let log = open_log(&path, None).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    kept.push(Found { decree, path, contents: LogContents::default() });
    Ok(log)
}

/// Creates a log, or with `resume_at` opens one to append there.
fn open_log(path: &Path, resume_at: Option<u64>) -> io::Result<LogWriter> {
    faults::check(JOURNAL_OPEN, path)?;
    resume_at.map_or_else(|| LogWriter::create(path), |len| LogWriter::open_at(path, len))
}

/// The `*.log` files of `dir`, by number.
fn list_logs(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    numbered_files(dir, "log").map_err(|e| match e {
        ListError::Io(source) => JournalError::Io { path: dir.into(), source },
        ListError::BadName(path) => JournalError::BadName { path },
    })
}

/// Which log replay starts from: the newest numbered ≤ checkpoint + 1, or `0.log` without a
/// checkpoint. None is "Missing logs" (§8.1, §8.5 step 4).
fn replay_start(dir: &Path, logs: &[(u64, PathBuf)], checkpoint: Option<u64>) -> Result<usize, JournalError> {
    let Some(&(oldest, _)) = logs.first() else { return Ok(0) };
    let need = checkpoint.map_or(0, |d| d.saturating_add(1));
    let start = logs.iter().rposition(|&(d, _)| d <= need);
    start.ok_or(JournalError::MissingLogs { dir: dir.into(), need, oldest })
}

/// Reads a whole log in restore mode. Only the newest may end in a torn record; anything
/// but zeros after an older log's last good record is an error.
fn scan_log(path: &Path, newest: bool, mapped: bool) -> Result<LogContents, JournalError> {
    let read = || if mapped { map::read_only(&File::open(path)?) } else { fs::read(path).map(Bytes::from) };
    let data = faults::check(JOURNAL_READ, path).and_then(|()| read()).map_err(io_err(path))?;
    let contents = LogContents::scan(&data, Mode::Restore).map_err(|e| JournalError::Corrupt {
        path: path.into(),
        offset: e.offset as u64,
        error: e.error,
    })?;
    assert!(contents.data_len <= data.len(), "the scan stays inside the file");
    // Zeros are what the journal writes ahead of its appends (`log::ZEROED_AHEAD`).
    let torn = data[contents.data_len..].iter().any(|&b| b != 0);
    if torn && !newest {
        return Err(JournalError::TornOlder { path: path.into(), offset: contents.data_len as u64 });
    }
    if torn {
        tracing::warn!("{}: cutting a torn tail at offset {}", path.display(), contents.data_len);
    }
    Ok(contents)
}

/// Deletes logs oldest first while more than `max_logs` remain and the next one starts at or
/// before `oldest_checkpoint + 1` (§8.7 step 3); never one still indexed for learners.
fn delete_old_logs(dir: &Path, max_logs: usize, oldest_checkpoint: u64, first_indexed: u64) -> Result<(), JournalError> {
    let logs = list_logs(dir)?;
    let mut i = 0;
    while logs.len() - i > max_logs && logs[i + 1].0 <= oldest_checkpoint.saturating_add(1) && logs[i].0 < first_indexed {
        fs::remove_file(&logs[i].1).map_err(io_err(&logs[i].1))?;
        i += 1;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    faults::check(JOURNAL_FSYNC, dir)?;
    File::open(dir)?.sync_all()
}

/// `e`, naming `path` (the writer's errors reach `on_error` as plain `io::Error`s).
fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

const DEFUNCT: &str = "defunct.txt";

/// The highest defunct configuration number in `dir/defunct.txt` (§10); 0 if it is missing.
pub fn read_defunct(dir: &Path) -> io::Result<u32> {
    let path = dir.join(DEFUNCT);
    match faults::check(JOURNAL_READ, &path).and_then(|()| fs::read(&path)) {
        Ok(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .map(u32::from_le_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {} bytes, expected 4", path.display(), bytes.len()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(annotate(e, &path)),
    }
}

/// Stores `n` in `dir/defunct.txt`: 4 bytes LE, rewritten in place and synced (§10).
pub fn write_defunct(dir: &Path, n: u32) -> io::Result<()> {
    let path = dir.join(DEFUNCT);
    let existed = path.exists();
    let open = faults::check(JOURNAL_OPEN, &path).and_then(|()| File::options().write(true).create(true).truncate(false).open(&path));
    let file = open.map_err(|e| annotate(e, &path))?;
    let write = |data: &[u8]| file.write_all_at(data, 0);
    let written = faults::armed(JOURNAL_WRITE, &path)
        .map_or_else(|| write(&n.to_le_bytes()), |f| Err(f.write(JOURNAL_WRITE, &n.to_le_bytes(), write)));
    written.and_then(|()| faults::check(JOURNAL_FSYNC, &path)).and_then(|()| file.sync_data()).map_err(|e| annotate(e, &path))?;
    if !existed {
        sync_dir(dir).map_err(|e| annotate(e, dir))?;
    }
    Ok(())
}

/// The writer thread: writes the batches the protocol thread does not write itself.
struct Writer {
    shared: Arc<Shared>,
    /// NVM mode: it drains the persistent log's batches, read from this file, instead of
    /// taking the pending one.
    source: Option<nvm::LogSource>,
}

impl Writer {
    /// Writes batches until the journal closes. An I/O error, or a panic here (a panicking
    /// `on_durable`), stops the journal: appenders get `Stopped` rather than wait forever for
    /// room, and `on_error` is told.
    fn run(mut self, on_durable: impl Fn(u64), on_error: impl FnOnce(io::Error)) {
        let shared = self.shared.clone();
        let source = self.source.take();
        let work = || match source {
            Some(source) => self.drain_until_closed(source, on_durable),
            None => self.write_until_closed(on_durable),
        };
        let error = match catch_unwind(AssertUnwindSafe(work)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(panic) => io::Error::other(format!("the journal writer panicked: {}", panic_message(&*panic))),
        };
        shared.stop(&error);
        // `on_error`'s owner reports the cause: one error line for it, not one per layer.
        tracing::debug!("journal writer stopped: {error}");
        on_error(error)
    }

    fn write_until_closed(&self, on_durable: impl Fn(u64)) -> io::Result<()> {
        let mut scratch = Scratch::default();
        let mut reported = 0;
        while self.wait_for_work() {
            let written = self.shared.write_pending(&mut self.shared.lock_io(), &mut scratch)?;
            // None: the protocol thread wrote the batch itself meanwhile.
            if let Some(seq) = written {
                // The protocol thread releases held sends up to what this says: it only grows.
                debug_assert!(seq > reported, "durable {seq} reported after {reported}");
                on_durable(seq);
                reported = seq;
            }
        }
        Ok(())
    }

    /// NVM mode: writes the persistent log's batches into the files, one write and one
    /// `fdatasync` per file for all that is queued, then lets the protocol thread release them.
    fn drain_until_closed(&self, mut source: nvm::LogSource, on_durable: impl Fn(u64)) -> io::Result<()> {
        let mut scratch = Scratch::default();
        let mut drains = Vec::new();
        while self.wait_for_drain() {
            std::mem::swap(&mut self.shared.lock().drain, &mut drains);
            let end = drains.last().expect("a batch to drain").end;
            let seq = drains.iter().filter_map(|d| d.seq).max();
            scratch.synced.clear();
            let mut io = self.shared.lock_io();
            let started = Instant::now();
            for drain in &drains {
                source.drain_into(&mut io, &self.shared, drain, &mut scratch.synced)?;
            }
            io.sync_current(&self.shared, &mut scratch.synced)?;
            io.timing.record(drains.iter().map(|d| d.len as u64).sum(), started.elapsed());
            drop(io);
            drains.clear();
            self.shared.publish(&mut scratch.batch, &scratch.synced);
            let mut st = self.shared.lock();
            st.released = Some(end);
            st.drained_seq = st.drained_seq.max(seq.unwrap_or(0));
            drop(st);
            self.shared.drained.notify_all();
            if let Some(seq) = seq {
                // Spilled decrees are read back from the files from now on.
                on_durable(seq);
            }
        }
        Ok(())
    }

    /// NVM mode: waits for batches to drain; false once closing with nothing left, or stopped.
    fn wait_for_drain(&self) -> bool {
        let mut st = self.shared.lock();
        while (st.drain.is_empty() || self.held()) && !st.closing && !st.stopped {
            st = self.shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        !st.drain.is_empty() && !st.stopped && !self.held()
    }

    /// Waits for appends; false once closing with nothing left, or stopped.
    fn wait_for_work(&self) -> bool {
        let mut st = self.shared.lock();
        while (st.batch.is_empty() || self.held()) && !st.closing && !st.stopped {
            st = self.shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        !st.batch.is_empty() && !st.stopped && !self.held()
    }

    #[cfg(test)]
    fn held(&self) -> bool {
        self.shared.hold_writer.load(Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn held(&self) -> bool {
        false
    }
}

/// The open log and its I/O; held by whichever thread writes a batch.
struct LogIo {
    dir: PathBuf,
    sync: bool,
    file: u64,
    log: LogWriter,
    /// Written since the last sync.
    dirty: bool,
    timing: Arc<Timing>,
}

impl LogIo {
    /// Writes a batch, one write per file; a file is synced before the next one is started
    /// and the directory after it is created, so only the newest log can hold a torn tail.
    fn write_batch(&mut self, shared: &Shared, batch: &[Segment], synced: &mut Vec<(u64, u64)>) -> io::Result<()> {
        for seg in batch {
            self.write_at(shared, (seg.file, seg.offset), seg.create, &seg.data, synced)?;
        }
        self.sync_current(shared, synced)
    }

    /// Writes `data` at `(file, offset)`, the end of the open log (or of the new one it
    /// `create`s); the caller syncs.
    fn write_at(
        &mut self,
        shared: &Shared,
        (file, offset): (u64, u64),
        create: bool,
        data: &[u8],
        synced: &mut Vec<(u64, u64)>,
    ) -> io::Result<()> {
        if create {
            self.switch_to(shared, file, synced)?;
        }
        assert_eq!(file, self.file, "a segment goes to the open log");
        // The offset is where recovery puts the bytes again (NVM mode): it must be where they
        // land. Both come from this journal (the open's scan set them equal).
        assert_eq!(offset, self.log.len(), "{}: a segment for offset {offset} written at {}", self.path().display(), self.log.len());
        #[cfg(test)]
        if shared.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        self.append(data).map_err(|e| annotate(e, &self.path()))?;
        self.dirty = true;
        Ok(())
    }

    /// Appends `data` to the open log; under an injected short write, half of it lands.
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(fault) = faults::armed(JOURNAL_WRITE, &self.dir) else { return self.log.append(data) };
        let (path, at) = (self.path(), self.log.len());
        Err(fault.write(JOURNAL_WRITE, data, |part| File::options().write(true).open(&path)?.write_all_at(part, at)))
    }

    fn switch_to(&mut self, shared: &Shared, first: u64, synced: &mut Vec<(u64, u64)>) -> io::Result<()> {
        self.finish(shared, synced)?;
        let path = self.dir.join(log::file_name(first));
        self.log = open_log(&path, None).map_err(|e| annotate(e, &path))?;
        self.file = first;
        if self.sync {
            sync_dir(&self.dir).map_err(|e| annotate(e, &self.dir))?;
        }
        Ok(())
    }

    /// Cuts the open log's zeros and syncs it: it is done with.
    fn finish(&mut self, shared: &Shared, synced: &mut Vec<(u64, u64)>) -> io::Result<()> {
        // Dirty once cut: a close after the last batch's sync must sync the new length too.
        self.dirty |= self.log.cut_zeros().map_err(|e| annotate(e, &self.path()))?;
        self.sync_current(shared, synced)
    }

    fn sync_current(&mut self, shared: &Shared, synced: &mut Vec<(u64, u64)>) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if self.sync {
            let started = Instant::now();
            faults::check(JOURNAL_FSYNC, &self.dir).and_then(|()| self.log.sync()).map_err(|e| annotate(e, &self.path()))?;
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            // How long each sync took: a disk busy with other writeback shows here first.
            tracing::trace!(target: SYNC_TRACE, dir = %self.dir.display(), micros = started.elapsed().as_micros() as u64, "log synced");
        }
        self.dirty = false;
        synced.push((self.file, self.log.len()));
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(log::file_name(self.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::message::{Body, Header, VoteBody};
    use crate::format::types::{Ballot, MemberId, Version};
    use bytes::Bytes;
    use std::sync::mpsc::{channel, Receiver};
    use std::time::Duration;

    fn msg(decree: u64, ballot: u32, body: Body) -> Message {
        let id = MemberId::new("1").unwrap();
        Message::new(Header::new(Version::V6, id, decree, 1, Ballot::new(ballot, id)), body)
    }

    fn vote(decree: u64, ballot: u32) -> Message {
        msg(decree, ballot, Body::Vote(VoteBody { requests: vec![Bytes::from(vec![decree as u8; 64])], ..Default::default() }))
    }

    fn prepare(decree: u64, ballot: u32) -> Message {
        msg(decree, ballot, Body::Prepare(Bytes::new()))
    }

    fn options(dir: &Path) -> JournalOptions {
        JournalOptions { max_pending_bytes: 1 << 20, ..JournalOptions::new(dir) }
    }

    struct Opened {
        journal: Journal,
        replay: Vec<Arc<Message>>,
        durable: Receiver<u64>,
        errors: Receiver<io::Error>,
    }

    fn open(opts: JournalOptions, cp: Option<u64>) -> Result<Opened, JournalError> {
        let (dtx, durable) = channel();
        let (etx, errors) = channel();
        let (journal, replay) = Journal::open(opts, cp, move |s| dtx.send(s).unwrap(), move |e| etx.send(e).unwrap())?;
        Ok(Opened { journal, replay: replay.records, durable, errors })
    }

    /// Appends `records` with seqs from 1 and waits until the last is durable.
    fn write_all(j: &mut Opened, records: &[Message]) -> Vec<Option<u64>> {
        let rolls = records.iter().enumerate().map(|(i, r)| j.journal.append(i as u64 + 1, r).unwrap()).collect();
        let last = records.len() as u64;
        while j.durable.recv().unwrap() < last {}
        rolls
    }

    /// The NVM mode's tests, with these helpers.
    mod nvm_mode;

    /// Journals sharing a writer thread.
    mod shared_writer;

    fn logs_in(dir: &Path) -> Vec<u64> {
        list_logs(dir).unwrap().into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn replay_after_reopen_returns_exactly_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut records: Vec<Message> = (1..=20).map(|d| vote(d, 2)).collect();
        records.insert(5, prepare(5, 3));
        let mut j = open(options(dir.path()), None).unwrap();
        assert!(j.replay.is_empty());
        write_all(&mut j, &records);
        j.journal.close().unwrap();
        let j = open(options(dir.path()), None).unwrap();
        assert_eq!(j.replay.iter().map(|m| (**m).clone()).collect::<Vec<_>>(), records);
        assert_eq!(logs_in(dir.path()), [0]);
    }

    #[test]
    fn durable_comes_in_order_and_only_after_the_data_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let (tx, durable) = channel();
        let check = path.clone();
        let on_durable = move |seq: u64| {
            // Every record up to `seq` is in the file when it is reported.
            let on_disk = read_log_file_records(&check);
            tx.send((seq, on_disk)).unwrap();
        };
        let (mut journal, _) = Journal::open(options(dir.path()), None, on_durable, |e| panic!("{e}")).unwrap();
        for seq in 1..=300 {
            journal.append(seq, &vote(seq, 2)).unwrap();
        }
        let mut last = 0;
        while last < 300 {
            let (seq, on_disk) = durable.recv().unwrap();
            assert!(seq > last, "durable reported in order");
            assert!(on_disk >= seq as usize, "durable {seq} with {on_disk} records on disk");
            last = seq;
        }
        assert!(journal.syncs() >= 1);
        journal.close().unwrap();
    }

    fn read_log_file_records(path: &Path) -> usize {
        log::read_log_file(path).unwrap().records.len()
    }

    /// `m_syncWrites`: off, appends are reported durable without any `fdatasync`.
    #[test]
    fn appends_are_synced_only_with_sync_writes() {
        for sync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (tx, durable) = channel();
            let opts = JournalOptions { sync, ..options(dir.path()) };
            let (mut journal, _) = Journal::open(opts, None, move |seq| tx.send(seq).unwrap(), |e| panic!("{e}")).unwrap();
            journal.append(1, &vote(1, 2)).unwrap();
            assert_eq!(durable.recv().unwrap(), 1);
            assert_eq!(journal.syncs() > 0, sync, "sync_writes = {sync}");
            journal.close().unwrap();
        }
    }

    #[test]
    fn group_commit_batches_appends_made_during_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, durable) = channel();
        let (gate_tx, gate) = channel::<()>();
        let on_durable = move |seq| {
            tx.send(seq).unwrap();
            if seq == 1 {
                gate.recv().unwrap(); // hold the writer until the test has appended the rest
            }
        };
        let (mut journal, _) = Journal::open(options(dir.path()), None, on_durable, |e| panic!("{e}")).unwrap();
        journal.append(1, &vote(1, 2)).unwrap();
        assert_eq!(durable.recv().unwrap(), 1);
        assert_eq!(journal.syncs(), 1, "durable is reported after the sync");
        for seq in 2..=200 {
            journal.append(seq, &vote(seq, 2)).unwrap();
        }
        gate_tx.send(()).unwrap();
        assert_eq!(durable.recv().unwrap(), 200, "the 199 appends went out as one batch");
        assert_eq!(journal.syncs(), 2);
        journal.close().unwrap();
        assert!(durable.try_recv().is_err());
    }

    #[test]
    fn append_waits_when_too_much_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (gate_tx, gate) = channel::<()>();
        let first = std::sync::atomic::AtomicBool::new(true);
        let on_durable = move |_| {
            if first.swap(false, Ordering::SeqCst) {
                gate.recv().unwrap(); // hold the writer after its first batch
            }
        };
        let opts = JournalOptions { max_pending_bytes: 2048, ..options(dir.path()) };
        let (mut journal, _) = Journal::open(opts, None, on_durable, |e| panic!("{e}")).unwrap();
        let (progress_tx, progress) = channel();
        let appender = std::thread::spawn(move || {
            for seq in 1..=20 {
                journal.append(seq, &vote(seq, 2)).unwrap();
                progress_tx.send(seq).unwrap();
            }
            journal
        });
        // The writer is held after its first batch. Each batch holds at most 2048 bytes plus
        // one record (5 records), so the appender stops at 10 at the most.
        let mut done = 0;
        while let Ok(seq) = progress.recv_timeout(Duration::from_millis(300)) {
            done = seq;
        }
        assert!(done <= 10, "append did not wait: {done} appended");
        gate_tx.send(()).unwrap();
        let journal = appender.join().unwrap();
        journal.close().unwrap();
        let j = open(options(dir.path()), None).unwrap();
        assert_eq!(j.replay.len(), 20);
    }

    #[test]
    fn torn_tail_in_the_newest_log_is_cut_and_appending_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(options(dir.path()), None).unwrap();
        write_all(&mut j, &[vote(1, 2), vote(2, 2), vote(3, 2)]);
        j.journal.close().unwrap();
        let path = dir.path().join("0.log");
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0xAB; 300]); // a torn, partial fourth record
        fs::write(&path, &bytes).unwrap();

        let mut j = open(options(dir.path()), None).unwrap();
        assert_eq!(j.replay.len(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), 1536, "the torn bytes are cut");
        j.journal.append(1, &vote(4, 2)).unwrap();
        assert_eq!(j.durable.recv().unwrap(), 1);
        j.journal.close().unwrap();
        let j = open(options(dir.path()), None).unwrap();
        assert_eq!(j.replay.iter().map(|m| m.header.decree).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }

    /// The open log is written with zeros ahead of its data; a crash leaves them (a restart
    /// replays up to them and cuts them), a roll and a clean close cut them.
    #[test]
    fn zeros_written_ahead_are_read_as_the_end_and_cut_when_a_log_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_log_len: 1024, log_len_randomize_pct: 0, ..options(dir.path()) };
        let mut j = open(opts.clone(), None).unwrap();
        write_all(&mut j, &[vote(1, 2), vote(2, 2), vote(3, 2), vote(4, 2), vote(5, 2)]);
        let (first, second) = (dir.path().join("0.log"), dir.path().join("4.log"));
        assert_eq!(fs::metadata(&first).unwrap().len(), 1536, "a rolled log ends at its data");
        assert_eq!(fs::metadata(&second).unwrap().len(), 1024 + log::ZEROED_AHEAD, "zeros ahead of the open log's data");
        let crashed = fs::read(&second).unwrap();
        j.journal.close().unwrap();
        assert_eq!(fs::metadata(&second).unwrap().len(), 1024, "a clean close cuts them");

        fs::write(&second, &crashed).unwrap();
        let mut j = open(opts.clone(), None).unwrap();
        assert_eq!(j.replay.len(), 5);
        assert_eq!(fs::metadata(&second).unwrap().len(), 1024, "a restart cuts them");
        j.journal.append(1, &vote(6, 2)).unwrap();
        assert_eq!(j.durable.recv().unwrap(), 1);
        j.journal.close().unwrap();
        let j = open(opts, None).unwrap();
        assert_eq!(j.replay.iter().map(|m| m.header.decree).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn corruption_is_an_error_naming_file_and_offset_and_nothing_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_log_len: 1024, log_len_randomize_pct: 0, ..options(dir.path()) };
        let mut j = open(opts.clone(), None).unwrap();
        write_all(&mut j, &[vote(1, 2), vote(2, 2), vote(3, 2), vote(4, 2), vote(5, 2)]);
        j.journal.close().unwrap();
        assert_eq!(logs_in(dir.path()), [0, 4]);

        // A torn last record in the older log.
        let old = dir.path().join("0.log");
        let good = fs::read(&old).unwrap();
        let mut torn = good.clone();
        torn[1024 + 100] ^= 1;
        fs::write(&old, &torn).unwrap();
        let err = open(opts.clone(), None).err().unwrap();
        assert!(matches!(&err, JournalError::TornOlder { path, offset: 1024 } if *path == old), "{err}");
        assert!(err.to_string().contains("0.log") && err.to_string().contains("1024"), "{err}");
        assert_eq!(fs::read(&old).unwrap(), torn, "nothing rewritten");

        // Mid-file corruption in the newest log.
        fs::write(&old, &good).unwrap();
        let new = dir.path().join("4.log");
        let mut bytes = fs::read(&new).unwrap();
        bytes[100] ^= 1;
        fs::write(&new, &bytes).unwrap();
        let err = open(opts, None).err().unwrap();
        assert!(matches!(&err, JournalError::Corrupt { path, offset: 0, .. } if *path == new), "{err}");
        assert!(err.to_string().contains("4.log") && err.to_string().contains("offset 0"), "{err}");
        assert_eq!(fs::read(&new).unwrap(), bytes, "nothing rewritten");
    }

    #[test]
    fn bad_names_and_missing_logs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = BytesMut::new();
        encode_record(&vote(6, 2), &mut rec).unwrap();
        fs::write(dir.path().join("5.log"), &rec).unwrap();
        let err = open(options(dir.path()), None).err().unwrap();
        assert!(matches!(err, JournalError::MissingLogs { need: 0, oldest: 5, .. }), "{err}");
        let err = open(options(dir.path()), Some(2)).err().unwrap();
        assert!(matches!(err, JournalError::MissingLogs { need: 3, oldest: 5, .. }), "{err}");
        let j = open(options(dir.path()), Some(4)).unwrap();
        assert_eq!(j.replay.len(), 1);
        drop(j);
        fs::write(dir.path().join("x5.log"), b"").unwrap();
        let err = open(options(dir.path()), Some(4)).err().unwrap();
        assert!(matches!(&err, JournalError::BadName { path } if path.ends_with("x5.log")), "{err}");
    }

    #[test]
    fn a_new_directory_starts_a_log_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(options(dir.path()), Some(7)).unwrap());
        assert_eq!(logs_in(dir.path()), [8]);
    }

    #[test]
    fn rollover_only_on_a_new_higher_decree_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_log_len: 1024, log_len_randomize_pct: 0, ..options(dir.path()) };
        let mut j = open(opts.clone(), None).unwrap();
        let records = [vote(1, 2), vote(2, 2), vote(3, 2), vote(3, 3), prepare(3, 4), vote(4, 4), vote(5, 4)];
        let rolls = write_all(&mut j, &records);
        assert_eq!(rolls, [None, None, None, None, None, Some(4), None]);
        j.journal.roll_at_next_vote();
        assert_eq!(j.journal.append(8, &prepare(5, 5)).unwrap(), None);
        assert_eq!(j.journal.append(9, &vote(6, 5)).unwrap(), Some(6));
        j.journal.close().unwrap();
        assert_eq!(logs_in(dir.path()), [0, 4, 6]);
        let j = open(opts, None).unwrap();
        assert_eq!(j.replay.len(), 9);
    }

    #[test]
    fn roll_sizes_are_jittered_within_the_bounds() {
        let opts = JournalOptions { max_log_len: 1000, log_len_randomize_pct: 20, seed: 7, ..JournalOptions::new("") };
        let mut roll = Roll::new(&opts);
        let limits: Vec<u64> = (0..100)
            .map(|_| {
                roll.next_file();
                roll.limit
            })
            .collect();
        assert!(limits.iter().all(|&l| (800..=1200).contains(&l)));
        assert!(limits.iter().any(|&l| l != limits[0]));
        let fixed = Roll::new(&JournalOptions { log_len_randomize_pct: 0, ..opts });
        assert_eq!(fixed.limit, 1000);
    }

    /// A version 7 log is not in decree order: a learner asking from decree 1 must get the
    /// vote of decree 2 logged before the newest vote of decree 1.
    #[test]
    fn a_pipelined_log_is_served_from_the_first_vote_at_or_after_the_decree() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(options(dir.path()), None).unwrap();
        write_all(&mut j, &[vote(1, 2), vote(2, 2), vote(1, 3), vote(3, 3)]);
        let reader = j.journal.reader();
        let starts = |decree, pipelined| reader.votes_from(decree, pipelined).map(|r| r.iter().map(|r| r.start).collect::<Vec<_>>());
        assert_eq!(starts(1, false), Some(vec![1024]), "version 6: from the newest vote of the decree");
        assert_eq!(starts(1, true), Some(vec![0]), "version 7: from the first at or after it");
        assert_eq!(starts(2, true), Some(vec![512]));
        assert_eq!(starts(3, true), Some(vec![1536]));
        assert_eq!(starts(4, true), None);
        j.journal.close().unwrap();
        // Read back at a restart, the index is in log order still.
        let j = open(options(dir.path()), None).unwrap();
        let reader = j.journal.reader();
        let starts = |decree, pipelined| reader.votes_from(decree, pipelined).map(|r| r.iter().map(|r| r.start).collect::<Vec<_>>());
        assert_eq!((starts(1, false), starts(1, true), starts(2, true)), (Some(vec![1024]), Some(vec![0]), Some(vec![512])));
    }

    #[test]
    fn votes_from_serves_the_newest_vote_and_every_later_log() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_log_len: 1024, log_len_randomize_pct: 0, ..options(dir.path()) };
        let mut j = open(opts, None).unwrap();
        let reader = j.journal.reader();
        write_all(&mut j, &[vote(1, 2), vote(2, 2), vote(3, 2), vote(3, 3), vote(4, 3), vote(5, 3)]);
        let (old, new) = (dir.path().join("0.log"), dir.path().join("4.log"));
        let range = |path: &PathBuf, start, end| FileRange { path: path.clone(), start, end };
        assert_eq!(reader.votes_from(3, false).unwrap(), [range(&old, 1536, 2048), range(&new, 0, 1024)], "from the re-vote");
        assert_eq!(reader.votes_from(1, false).unwrap(), [range(&old, 0, 2048), range(&new, 0, 1024)]);
        assert_eq!(reader.votes_from(5, false).unwrap(), [range(&new, 512, 1024)]);
        assert_eq!(reader.votes_from(9, false), None);
        assert_eq!(reader.min_decree(), 1);
        // The ranges are real records: the first one starts with the re-vote.
        let bytes = fs::read(&old).unwrap();
        let rec = Bytes::copy_from_slice(&bytes[1536..]);
        let step = log::read_record(&rec, 0, Mode::Strict, true).unwrap();
        assert!(matches!(step, log::Step::Record(r) if r.message == vote(3, 3)));
    }

    #[test]
    fn restart_at_starts_a_new_log_for_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(options(dir.path()), None).unwrap();
        write_all(&mut j, &[vote(1, 2), vote(2, 2)]);
        assert_eq!(j.journal.locate_vote(2), Some((0, 512)));
        j.journal.restart_at(10);
        assert_eq!(j.journal.locate_vote(2), None, "the old logs hold the replaced state's votes");
        assert_eq!(j.journal.append(3, &vote(10, 4)).unwrap(), None);
        assert_eq!(j.journal.locate_vote(10), Some((10, 0)));
        assert_eq!(j.durable.recv().unwrap(), 3);
        let ranges = j.journal.reader().votes_from(10, false).unwrap();
        assert_eq!(ranges, [FileRange { path: dir.path().join("10.log"), start: 0, end: 512 }]);
        assert_eq!(j.journal.reader().votes_from(2, false), None, "the old logs are no longer served");
        assert_eq!(j.journal.reader().min_decree(), 10);
        j.journal.close().unwrap();
        assert_eq!(logs_in(dir.path()), [0, 10]);
        let j = open(options(dir.path()), Some(9)).unwrap();
        assert_eq!(j.replay.iter().map(|m| m.header.decree).collect::<Vec<_>>(), [10]);
    }

    #[test]
    fn truncation_keeps_max_logs_and_what_the_oldest_checkpoint_needs() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_log_len: 0, log_len_randomize_pct: 0, max_logs: 3, ..options(dir.path()) };
        let mut j = open(opts.clone(), None).unwrap();
        let records: Vec<Message> = (1..=8).map(|d| vote(d, 2)).collect();
        write_all(&mut j, &records);
        assert_eq!(logs_in(dir.path()), [0, 2, 3, 4, 5, 6, 7, 8]);
        // Checkpoints 3 and 5 kept; 6 executed. Learners keep 6.log on; disk keeps 4.log,
        // which checkpoint 3 needs to replay decree 4.
        assert_eq!(j.journal.truncate(5, 3, 6), 6);
        assert_eq!(j.journal.reader().votes_from(5, false), None);
        assert!(j.journal.reader().votes_from(6, false).is_some());
        assert_eq!(logs_in(dir.path()), [4, 5, 6, 7, 8]);
        // A checkpoint at 8 alone: only max_logs remain on disk.
        assert_eq!(j.journal.truncate(8, 8, 8), 8);
        assert_eq!(logs_in(dir.path()), [6, 7, 8]);
        j.journal.close().unwrap();
        let j = open(opts, Some(8)).unwrap();
        assert_eq!(j.replay.iter().map(|m| m.header.decree).collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn truncation_keeps_every_log_holding_a_decree_not_executed_even_out_of_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_log_len: 0, log_len_randomize_pct: 0, max_logs: 1, ..options(dir.path()) };
        let mut j = open(opts, None).unwrap();
        let records: Vec<Message> = (1..=8).map(|d| vote(d, 2)).collect();
        write_all(&mut j, &records);
        // A loaded checkpoint of 9 takes the old logs out of the index; 3 is executed so far.
        j.journal.restart_at(10);
        j.journal.append(9, &vote(10, 3)).unwrap();
        // The writer thread creates 10.log when it writes the record.
        while j.durable.recv().unwrap() < 9 {}
        assert_eq!(j.journal.truncate(9, 9, 3), 10);
        assert_eq!(logs_in(dir.path()), [4, 5, 6, 7, 8, 10], "4.log on hold decrees 4 to 8, not executed");
        assert_eq!(j.journal.truncate(9, 9, 9), 10);
        assert_eq!(logs_in(dir.path()), [10]);
    }

    #[test]
    fn locate_vote_finds_the_newest_record_of_a_decree() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(options(dir.path()), None).unwrap();
        write_all(&mut j, &[vote(1, 2), vote(2, 2), prepare(2, 3), vote(2, 3)]);
        assert_eq!(j.journal.locate_vote(2), Some((0, 1536)), "the re-vote, not the first vote or the prepare");
        assert_eq!(j.journal.locate_vote(1), Some((0, 0)));
        assert_eq!(j.journal.locate_vote(3), None);
        assert_eq!(j.journal.last_seq(), 4);
    }

    #[test]
    fn a_deferred_journal_syncs_on_the_flushing_thread_or_wakes_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(options(dir.path()), None).unwrap();
        j.journal.defer_writes();
        // The writer thread may not have waited yet; held, it cannot take what this thread syncs.
        j.journal.hold_writer();
        assert!(j.journal.flush(true).is_none(), "nothing appended, nothing to do");
        j.journal.append(1, &vote(1, 2)).unwrap();
        j.journal.append(2, &vote(2, 2)).unwrap();
        assert_eq!(j.journal.flush(true).unwrap().unwrap(), 2, "both appends synced here, as one batch");
        assert_eq!(j.journal.syncs(), 1);
        assert!(j.journal.flush(true).is_none(), "already flushed");
        // Without `here`, the writer thread takes the batch and reports it.
        j.journal.release_writer();
        j.journal.append(3, &vote(3, 2)).unwrap();
        assert!(j.journal.flush(false).is_none());
        assert_eq!(j.durable.recv().unwrap(), 3);
        assert!(j.durable.try_recv().is_err(), "the batches synced here are not reported again");
        assert_eq!(j.journal.syncs(), 2);
        // A failed write here stops the journal as the writer's would, and is returned here.
        j.journal.fail_writes();
        j.journal.append(4, &vote(4, 2)).unwrap();
        let err = j.journal.flush(true).unwrap().unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(matches!(j.journal.append(5, &vote(5, 2)), Err(JournalError::Stopped(_))));
        assert!(matches!(j.journal.close(), Err(JournalError::Stopped(_))));
        assert!(j.errors.try_recv().is_err(), "the caller reports it, not on_error");
        let j = open(options(dir.path()), None).unwrap();
        assert_eq!(j.replay.len(), 3, "what was reported durable is there");
    }

    #[test]
    fn a_write_failure_stops_the_journal_without_reporting_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(options(dir.path()), None).unwrap();
        write_all(&mut j, &[vote(1, 2)]);
        j.journal.fail_writes();
        j.journal.append(2, &vote(2, 2)).unwrap();
        let err = j.errors.recv().unwrap();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(matches!(j.journal.append(3, &vote(3, 2)), Err(JournalError::Stopped(_))));
        assert!(matches!(j.journal.close(), Err(JournalError::Stopped(_))));
        assert!(j.durable.try_recv().is_err(), "nothing after the failure is durable");
        assert!(j.errors.try_recv().is_err(), "on_error is called once");
        let j = open(options(dir.path()), None).unwrap();
        assert_eq!(j.replay.len(), 1);
    }

    #[test]
    fn a_panicking_durable_callback_stops_appends_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { max_pending_bytes: 512, ..options(dir.path()) };
        let (errors_tx, errors) = channel();
        let on_error = move |e: io::Error| errors_tx.send(e.to_string()).unwrap();
        let (mut journal, _) = Journal::open(opts, None, |_| panic!("callback failed"), on_error).unwrap();
        let outcome = (1..=10).map(|seq| journal.append(seq, &vote(seq, 2))).find(|r| r.is_err());
        assert!(matches!(outcome, Some(Err(JournalError::Stopped(_)))));
        assert!(matches!(journal.close(), Err(JournalError::Stopped(_))));
        assert_eq!(errors.try_recv().unwrap(), "the journal writer panicked: callback failed", "the panic is reported as the error");
    }

    #[test]
    fn the_originals_logs_replay_and_take_appends() {
        let golden = crate::golden_dir();
        for name in ["log_v3", "log_v6"] {
            let dir = tempfile::tempdir().unwrap();
            let original = golden.join(name).join("5.log");
            fs::copy(&original, dir.path().join("5.log")).unwrap();
            let expected = log::read_log_file(&original).unwrap();
            let mut j = open(options(dir.path()), Some(4)).unwrap();
            assert!(!j.replay.is_empty(), "{name}");
            assert_eq!(j.replay.len(), expected.records.len(), "{name}");
            assert!(j.replay.iter().zip(&expected.records).all(|(m, r)| **m == r.message), "{name}");
            let last = j.replay.iter().rfind(|m| m.kind() == MsgKind::Vote).unwrap().clone();
            assert!(j.journal.reader().votes_from(last.header.decree, false).is_some(), "{name}");
            write_all(&mut j, &[(*last).clone()]);
            j.journal.close().unwrap();
            assert_eq!(log::read_log_file(&dir.path().join("5.log")).unwrap().records.len(), expected.records.len() + 1, "{name}");
        }
    }

    #[test]
    fn defunct_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_defunct(dir.path()).unwrap(), 0);
        write_defunct(dir.path(), 7).unwrap();
        assert_eq!(read_defunct(dir.path()).unwrap(), 7);
        write_defunct(dir.path(), 0x0102_0304).unwrap();
        assert_eq!(fs::read(dir.path().join(DEFUNCT)).unwrap(), [4, 3, 2, 1]);
        fs::write(dir.path().join(DEFUNCT), [1, 2]).unwrap();
        let err = read_defunct(dir.path()).unwrap_err();
        assert!(err.to_string().contains("defunct.txt"), "{err}");
    }
}
