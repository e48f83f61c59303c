//! The checkpoint directory: `<D>.codex` files and `Temp/`; saving, installing a fetched
//! checkpoint, pruning, and the restore rule that picks the newest loadable one (docs/spec/formats.md
//! §8.1, §8.5, §8.7, §9; docs/spec/behavior.md §1.6, §2.13–2.14).

use super::transport::RateLimited;
use super::{numbered_files, ListError};
use crate::faults::{self, CHECKPOINT_FSYNC, CHECKPOINT_RENAME};
use crate::format::checkpoint::DEFAULT_BLOCK_SIZE;
use crate::format::{CheckpointError, CheckpointHeader, CheckpointReader, CheckpointWriter, MemberId, Version};
use crate::paxos::Checkpoint;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// Why a checkpoint could not be listed, saved or installed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A checkpoint file or the directory could not be read, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A file named like a checkpoint but not `<decree>.codex`.
    #[error("{}: not a checkpoint file name (expected <decree>.codex)", path.display())]
    BadName {
        /// The file.
        path: PathBuf,
    },
    /// A checkpoint file is unreadable or corrupt.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A checkpoint file's header names another decree than its file name.
    #[error("{}: holds decree {found}, expected {expected}", path.display())]
    WrongDecree {
        /// The file.
        path: PathBuf,
        /// The decree its name says.
        expected: u64,
        /// The decree its header holds.
        found: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.into(), source }
}

/// The original's checkpoint alerts (`m_maxCheckpointSizeGB`, `m_minCheckpointSpaceFileCount`):
/// an Alert when a checkpoint is placed, never a refusal. 0 turns each off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointAlerts {
    /// A checkpoint larger than this many bytes is alerted about.
    pub max_size: u64,
    /// Free space on the checkpoints' disk below this many times a checkpoint's size is
    /// alerted about.
    pub min_space_files: u64,
}

impl CheckpointAlerts {
    /// Whether a checkpoint of `size` bytes is over the `max_size` alert limit.
    pub fn too_large(&self, size: u64) -> bool {
        self.max_size > 0 && size > self.max_size
    }

    /// Whether `free` bytes leave room for fewer than `min_space_files` checkpoints of `size`.
    pub fn low_space(&self, size: u64, free: u64) -> bool {
        u128::from(free) < u128::from(self.min_space_files) * u128::from(size)
    }
}

/// Raises [`CheckpointAlerts`]: each cause at most once per [`RateLimited::EVERY`], so that
/// a filling disk does not flood the log; every one is counted.
#[derive(Default)]
struct Alerter {
    limits: CheckpointAlerts,
    too_large: RateLimited,
    low_space: RateLimited,
    no_statvfs: RateLimited,
    raised: u64,
}

impl Alerter {
    fn checkpoint_placed(&mut self, dir: &Path, size: u64) {
        if self.limits.too_large(size) {
            self.raised += 1;
            if let Some(held_back) = self.too_large.allow() {
                crate::alert!(size, max = self.limits.max_size, held_back, "checkpoint file size is too large");
            }
        }
        if self.limits.min_space_files == 0 {
            return;
        }
        match crate::diskspace::available_bytes(dir) {
            Ok(free) if self.limits.low_space(size, free) => {
                self.raised += 1;
                if let Some(held_back) = self.low_space.allow() {
                    let min_files = self.limits.min_space_files;
                    crate::alert!(free, size, min_files, held_back, "free space left for writing checkpoints is too small");
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(held_back) = self.no_statvfs.allow() {
                    tracing::error!(dir = %dir.display(), error = %e, held_back, "cannot read the checkpoint directory's free space");
                }
            }
        }
    }
}

/// A checkpoint now in place as `<decree>.codex`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The last decree the checkpoint's state includes.
    pub decree: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// What the rest of the replica may read of the store without asking its owner: the
/// directory, fresh temp names, and the newest and oldest checkpoints as last published.
/// Readers (the learn port's tasks, the protocol thread) only copy a few numbers under the
/// lock; the owner holds it only to swap in a new listing.
pub struct Catalog {
    dir: PathBuf,
    temp: PathBuf,
    /// Numbers the temp files of this process.
    next_temp: AtomicU64,
    listing: RwLock<Listing>,
}

/// The published part of the store's listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Listing {
    /// Decree and file size of the newest checkpoint.
    newest: Option<(u64, u64)>,
    oldest: Option<u64>,
}

impl Catalog {
    /// The file a checkpoint of `decree` has in this store (`<decree>.codex`).
    pub fn path_of(&self, decree: u64) -> PathBuf {
        self.dir.join(CheckpointHeader::file_name(decree))
    }

    /// A fresh file name in `Temp/` (for a checkpoint being written or downloaded).
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.temp.join(format!("Cod{}-{n}.tmp", std::process::id()))
    }

    /// The newest checkpoint: its decree, path and file size.
    pub fn newest(&self) -> Option<(u64, PathBuf, u64)> {
        let newest = self.listing().newest;
        newest.map(|(d, size)| (d, self.path_of(d), size))
    }

    /// The checkpoint with the lowest decree (what log truncation must keep logs for).
    pub fn oldest(&self) -> Option<u64> {
        self.listing().oldest
    }

    fn listing(&self) -> Listing {
        *self.listing.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `*.codex` files of a data directory. It has one owner (the execute thread once the
/// replica runs), which alone writes, places and prunes; others read its [`Catalog`].
pub struct CheckpointStore {
    catalog: Arc<Catalog>,
    max_checkpoints: usize,
    /// Decree to file size.
    checkpoints: BTreeMap<u64, u64>,
    alerter: Alerter,
}

impl CheckpointStore {
    /// Lists the checkpoints of `dir` and empties `dir/Temp/` (creating it if needed).
    pub fn open(dir: impl Into<PathBuf>, max_checkpoints: usize) -> Result<CheckpointStore, StoreError> {
        assert!(max_checkpoints >= 1, "at least one checkpoint is kept");
        let dir = dir.into();
        let temp = dir.join("Temp");
        fs::create_dir_all(&temp).map_err(io_err(&temp))?;
        for entry in fs::read_dir(&temp).map_err(io_err(&temp))? {
            let path = entry.map_err(io_err(&temp))?.path();
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(io_err(&path))?;
        }
        let catalog = Catalog { dir, temp, next_temp: AtomicU64::new(0), listing: RwLock::default() };
        let mut checkpoints = BTreeMap::new();
        for (decree, _) in list_checkpoints(&catalog.dir)? {
            let path = catalog.path_of(decree);
            checkpoints.insert(decree, fs::metadata(&path).map_err(io_err(&path))?.len());
        }
        let store = CheckpointStore { catalog: Arc::new(catalog), max_checkpoints, checkpoints, alerter: Alerter::default() };
        store.publish_listing();
        Ok(store)
    }

    /// Alerts about each checkpoint placed from now on that passes `limits`.
    pub fn with_alerts(mut self, limits: CheckpointAlerts) -> CheckpointStore {
        self.alerter.limits = limits;
        self
    }

    /// Checkpoint alerts raised so far (logged or held back by the rate limit).
    pub fn alerts_raised(&self) -> u64 {
        self.alerter.raised
    }

    /// The read side, for the threads and tasks that do not own the store.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    /// The file a checkpoint of `decree` has in this store (`<decree>.codex`).
    pub fn path_of(&self, decree: u64) -> PathBuf {
        self.catalog.path_of(decree)
    }

    /// The checkpoint with the highest decree.
    pub fn newest(&self) -> Option<(u64, PathBuf)> {
        self.checkpoints.last_key_value().map(|(&d, _)| (d, self.path_of(d)))
    }

    /// The checkpoint with the lowest decree (what log truncation must keep logs for).
    pub fn oldest(&self) -> Option<u64> {
        self.checkpoints.first_key_value().map(|(&d, _)| d)
    }

    /// Every checkpoint, oldest first.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        self.checkpoints.keys().map(|&d| (d, self.path_of(d))).collect()
    }

    /// A fresh file name in `Temp/` (for a checkpoint being written or downloaded).
    pub fn temp_path(&self) -> PathBuf {
        self.catalog.temp_path()
    }

    /// Writes a checkpoint: `write` streams the application's state into it and returns false
    /// to refuse (TrySaveState), which leaves nothing behind. The file is verified, synced and
    /// linked into place, and old checkpoints are pruned.
    pub fn save(
        &mut self,
        header: CheckpointHeader,
        write: impl FnOnce(&mut CheckpointWriter) -> io::Result<bool>,
    ) -> Result<Option<Saved>, StoreError> {
        let (decree, temp) = (header.last_executed, self.temp_path());
        if !Self::write_temp(&temp, header, write)? {
            return Ok(None);
        }
        self.keep(&temp, decree).map(Some)
    }

    /// Writes a checkpoint into `temp` (see [`temp_path`](Self::temp_path)): `write` streams the
    /// state and returns false to refuse. Refused or failed, nothing is left behind.
    pub fn write_temp(
        temp: &Path,
        header: CheckpointHeader,
        write: impl FnOnce(&mut CheckpointWriter) -> io::Result<bool>,
    ) -> Result<bool, StoreError> {
        assert_eq!(header.next_vote.header.decree, header.last_executed.wrapping_add(1), "a checkpoint of D holds the vote for D + 1");
        let written = CheckpointWriter::create(temp, header).map_err(StoreError::from).and_then(|mut writer| {
            if !write(&mut writer).map_err(io_err(temp))? {
                return Ok(false);
            }
            writer.close()?; // writes the header and syncs the file
            Ok(true)
        });
        if !matches!(written, Ok(true)) {
            let _ = fs::remove_file(temp);
        }
        written
    }

    /// Keeps a checkpoint this replica wrote into `temp` as `<decree>.codex`, after reopening
    /// it with the reader's checks; on an error the file is deleted.
    pub fn keep(&mut self, temp: &Path, decree: u64) -> Result<Saved, StoreError> {
        match verify(temp, decree, false) {
            Ok((size, _)) => self.publish(temp, decree, size),
            Err(e) => {
                let _ = fs::remove_file(temp);
                Err(e)
            }
        }
    }

    /// Keeps a checkpoint downloaded from a peer into `temp` (see `temp_path`) as this
    /// replica's `<decree>.codex`, after checking its header, size and every block checksum.
    /// A file that fails a check is deleted.
    pub fn install(&mut self, temp: &Path, decree: u64) -> Result<Saved, StoreError> {
        let (size, _) = Self::check_download(temp, decree)?;
        self.publish(temp, decree, size)
    }

    /// The slow half of [`install`](Self::install), which needs no store: checks a download's
    /// header, size and every block, and syncs it. Returns its size and header; a file that
    /// fails is deleted. [`publish`](Self::publish) then places it.
    pub fn check_download(temp: &Path, decree: u64) -> Result<(u64, CheckpointHeader), StoreError> {
        let checked = verify(temp, decree, true).and_then(|checked| {
            faults::check(CHECKPOINT_FSYNC, temp).and_then(|()| File::open(temp)?.sync_all()).map_err(io_err(temp))?;
            Ok(checked)
        });
        if checked.is_err() {
            let _ = fs::remove_file(temp);
        }
        checked
    }

    /// Places a verified and synced file of `size` bytes as `<decree>.codex` (an existing one
    /// is kept, never replaced), syncs the directory and prunes (§8.7 step 2). Brief: no data
    /// is read or written. On an error `temp` is deleted.
    pub fn publish(&mut self, temp: &Path, decree: u64, size: u64) -> Result<Saved, StoreError> {
        let saved = self.place(temp, decree, size);
        if saved.is_err() {
            let _ = fs::remove_file(temp);
        }
        debug_assert!(!temp.exists(), "the temp file is placed or removed");
        saved
    }

    fn place(&mut self, temp: &Path, decree: u64, size: u64) -> Result<Saved, StoreError> {
        let path = self.path_of(decree);
        let existed = match faults::check(CHECKPOINT_RENAME, &path).and_then(|()| fs::hard_link(temp, &path)) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(io_err(&path)(e)),
        };
        fs::remove_file(temp).map_err(io_err(temp))?;
        let dir = &self.catalog.dir;
        faults::check(CHECKPOINT_FSYNC, dir).and_then(|()| File::open(dir)?.sync_all()).map_err(io_err(dir))?;
        let size = if existed { fs::metadata(&path).map_err(io_err(&path))?.len() } else { size };
        self.checkpoints.insert(decree, size);
        self.alerter.checkpoint_placed(dir, size);
        self.prune();
        debug_assert!(self.checkpoints.len() <= self.max_checkpoints);
        self.publish_listing();
        Ok(Saved { decree, path, size })
    }

    /// Deletes all but the newest `max_checkpoints` checkpoints.
    fn prune(&mut self) {
        while self.checkpoints.len() > self.max_checkpoints {
            let (oldest, _) = self.checkpoints.pop_first().expect("more than one");
            let path = self.path_of(oldest);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!("{}: cannot delete old checkpoint: {e}", path.display());
            }
        }
    }

    /// Shows readers the listing as it now is.
    fn publish_listing(&self) {
        let listing = Listing { newest: self.checkpoints.last_key_value().map(|(&d, &s)| (d, s)), oldest: self.oldest() };
        *self.catalog.listing.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = listing;
    }
}

/// Reopens a checkpoint with the reader's open-time checks (and, with `blocks`, reads all of
/// its data to check every block); returns its size and header.
fn verify(path: &Path, decree: u64, blocks: bool) -> Result<(u64, CheckpointHeader), StoreError> {
    let mut reader = CheckpointReader::open(path)?;
    let found = reader.header().last_executed;
    if found != decree {
        return Err(StoreError::WrongDecree { path: path.into(), expected: decree, found });
    }
    if blocks {
        reader.skip(reader.size())?;
        assert_eq!(reader.position(), reader.size(), "every block was read");
    }
    Ok((reader.header().size, reader.header().clone()))
}

/// A checkpoint the restore rule passed over: which file, where in it (when the reason is
/// at a place), and why. Its `Display` is the operator's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The checkpoint file.
    pub path: PathBuf,
    /// The byte offset the reason is about, if any.
    pub offset: Option<u64>,
    /// Why the file was passed over.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "{}: checkpoint skipped at offset {offset}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: checkpoint skipped: {}", self.path.display(), self.reason),
        }
    }
}

/// Why `path` cannot be offered to the application, with the offset the error names.
fn unusable(path: &Path, e: &CheckpointError) -> Skipped {
    let (offset, reason) = match e {
        CheckpointError::Io { source, .. } => (None, format!("cannot be read: {source}")),
        CheckpointError::Header { source, .. } => (Some(source.offset() as u64), format!("bad header: {source}")),
        CheckpointError::Size { expected, actual, .. } => {
            (Some(*actual.min(expected)), format!("the file is {actual} bytes but its header says {expected}"))
        }
        CheckpointError::BlockChecksum { block, offset, stored, computed, .. } => {
            (Some(*offset), format!("block {block} fails its checksum (stored {stored:#018x}, computed {computed:#018x})"))
        }
        other => (None, other.to_string()),
    };
    Skipped { path: path.into(), offset, reason }
}

/// The restore rule (§8.5 step 1, §1.6 LoadState): `checkpoints` (ascending) newest to oldest,
/// skipping those whose header or size checks fail or that `load` refuses; a bootstrap
/// checkpoint (no state saved) is offered as `None`. Returns the loaded checkpoint and its
/// file size, and every checkpoint skipped (each also logged as a warning), newest first.
pub fn load_newest(
    checkpoints: Vec<(u64, PathBuf)>,
    mut load: impl FnMut(Option<&mut CheckpointReader>) -> bool,
) -> (Option<(Checkpoint, u64)>, Vec<Skipped>) {
    load_newest_with(checkpoints, |_, reader| load(reader))
}

/// [`load_newest`], with each candidate's header shown to `load` too (the restore publishes
/// its decree and configuration before the state machine loads it).
pub fn load_newest_with(
    checkpoints: Vec<(u64, PathBuf)>,
    mut load: impl FnMut(&CheckpointHeader, Option<&mut CheckpointReader>) -> bool,
) -> (Option<(Checkpoint, u64)>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut skip = |s: Skipped| {
        tracing::warn!("{s}");
        skipped.push(s);
    };
    for (decree, path) in checkpoints.into_iter().rev() {
        let mut reader = match CheckpointReader::open(&path) {
            Ok(r) if r.header().last_executed == decree => r,
            Ok(r) => {
                let reason = format!("its header is for decree {}, its name for {decree}", r.header().last_executed);
                skip(Skipped { path, offset: Some(0), reason });
                continue;
            }
            Err(e) => {
                skip(unusable(&path, &e));
                continue;
            }
        };
        let header = reader.header().clone();
        if load(&header, header.state_saved.then_some(&mut reader)) {
            let size = header.size;
            return (Some((core_checkpoint(header), size)), skipped);
        }
        skip(refused(path, header.state_saved));
    }
    (None, skipped)
}

/// A checkpoint the application did not load: if one of its blocks is bad, that is why.
fn refused(path: PathBuf, state_saved: bool) -> Skipped {
    let bad_block = state_saved.then(|| CheckpointReader::open(&path).and_then(|mut r| r.skip(r.size()))).and_then(Result::err);
    match bad_block {
        Some(e) => unusable(&path, &e),
        None => Skipped { path, offset: None, reason: "the state machine's load_state returned false".into() },
    }
}

/// The `*.codex` files of `dir`, by decree.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    numbered_files(dir, "codex").map_err(|e| match e {
        ListError::Io(source) => StoreError::Io { path: dir.into(), source },
        ListError::BadName(path) => StoreError::BadName { path },
    })
}

/// The header this replica writes for the core's checkpoint `cp`.
pub fn header_for(cp: &Checkpoint, me: MemberId, version: Version) -> CheckpointHeader {
    assert!(cp.max_ballot >= cp.next_vote.header.ballot, "the max ballot covers the next vote");
    CheckpointHeader {
        version,
        member: me,
        last_executed: cp.decree,
        max_ballot: cp.max_ballot,
        config: cp.config.clone(),
        state_saved: cp.state_saved,
        size: 0,
        block_size: if version.has_string_ids() { DEFAULT_BLOCK_SIZE } else { 0 },
        next_vote: (*cp.next_vote).clone(),
    }
}

/// What the core needs of a checkpoint header.
pub fn core_checkpoint(header: CheckpointHeader) -> Checkpoint {
    Checkpoint {
        decree: header.last_executed,
        next_vote: Arc::new(header.next_vote),
        max_ballot: header.max_ballot,
        config: header.config,
        state_saved: header.state_saved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::message::{Body, Header, VoteBody};
    use crate::format::{Ballot, ConfigInfo, Message};

    fn me() -> MemberId {
        MemberId::new("1").unwrap()
    }

    fn checkpoint(decree: u64, state_saved: bool) -> Checkpoint {
        let ballot = Ballot::new(2, me());
        let vote = Message::new(Header::new(Version::V6, me(), decree + 1, 1, ballot), Body::Vote(VoteBody::default()));
        let config = ConfigInfo { number: 1, initial_decree: 1, ..Default::default() };
        Checkpoint { decree, next_vote: Arc::new(vote), max_ballot: ballot, config, state_saved }
    }

    fn data(decree: u64) -> Vec<u8> {
        (0..5000u64).map(|i| (i * 7 + decree) as u8).collect()
    }

    fn save(store: &mut CheckpointStore, decree: u64) -> Saved {
        let header = header_for(&checkpoint(decree, true), me(), Version::V6);
        store.save(header, |w| w.write(&data(decree)).map(|_| true).map_err(io::Error::other)).unwrap().unwrap()
    }

    fn read_all(r: &mut CheckpointReader) -> Vec<u8> {
        let mut out = vec![0; r.size() as usize];
        let mut at = 0;
        while at < out.len() {
            at += r.get_data(&mut out[at..]).unwrap();
        }
        out
    }

    fn temp_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("Temp")).unwrap().count()
    }

    #[test]
    fn save_prunes_to_max_and_lists_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 2).unwrap();
        assert_eq!(store.newest(), None);
        for decree in [4, 8, 12] {
            let saved = save(&mut store, decree);
            assert_eq!(saved.path, dir.path().join(format!("{decree}.codex")));
            assert_eq!(saved.size, fs::metadata(&saved.path).unwrap().len());
        }
        assert_eq!(store.newest(), Some((12, dir.path().join("12.codex"))));
        assert_eq!(store.list().iter().map(|c| c.0).collect::<Vec<_>>(), [8, 12]);
        assert_eq!(store.oldest(), Some(8));
        assert!(!dir.path().join("4.codex").exists());
        assert_eq!(temp_files(dir.path()), 0);
        // A restart empties Temp/ and finds the same checkpoints.
        fs::write(dir.path().join("Temp/Cod1.tmp"), b"left over").unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        assert_eq!(store.list().iter().map(|c| c.0).collect::<Vec<_>>(), [8, 12]);
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn checkpoint_alerts_follow_their_limits() {
        let gb = 1u64 << 30;
        let limits = CheckpointAlerts { max_size: gb, min_space_files: 10 };
        assert!(limits.too_large(gb + 1) && !limits.too_large(gb));
        assert!(!CheckpointAlerts { max_size: 0, ..limits }.too_large(u64::MAX), "0 is off");
        assert!(limits.low_space(gb, 10 * gb - 1) && !limits.low_space(gb, 10 * gb));
        assert!(!CheckpointAlerts { min_space_files: 9, ..limits }.low_space(gb, 9 * gb));
        assert!(CheckpointAlerts { min_space_files: u64::MAX, ..limits }.low_space(u64::MAX, u64::MAX), "no overflow");
        // Through the store: no disk has room for 2^31 copies of a checkpoint, any disk has
        // room for one more; a size limit of one byte catches every checkpoint.
        let dir = tempfile::tempdir().unwrap();
        let saved_with = |limits| {
            let mut store = CheckpointStore::open(dir.path(), 2).unwrap().with_alerts(limits);
            for decree in [4, 8, 12] {
                save(&mut store, decree);
            }
            store.alerts_raised()
        };
        assert_eq!(saved_with(CheckpointAlerts::default()), 0);
        assert_eq!(saved_with(CheckpointAlerts { min_space_files: 1 << 31, max_size: 0 }), 3);
        assert_eq!(saved_with(CheckpointAlerts { min_space_files: 1, max_size: 0 }), 0);
        assert_eq!(saved_with(CheckpointAlerts { min_space_files: 0, max_size: 1 }), 3);
        assert_eq!(saved_with(CheckpointAlerts { min_space_files: 0, max_size: 1 << 30 }), 0);
    }

    #[test]
    fn a_refused_save_leaves_nothing_and_an_existing_checkpoint_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 4).unwrap();
        let header = header_for(&checkpoint(4, true), me(), Version::V6);
        assert_eq!(store.save(header.clone(), |w| w.write(b"partial").map(|_| false).map_err(io::Error::other)).unwrap(), None);
        assert_eq!((store.newest(), temp_files(dir.path())), (None, 0));
        let first = save(&mut store, 4);
        let before = fs::read(&first.path).unwrap();
        let again = store.save(header, |w| w.write(b"other state").map(|_| true).map_err(io::Error::other)).unwrap().unwrap();
        assert_eq!(again, first);
        assert_eq!(fs::read(&first.path).unwrap(), before, "never replaced");
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn restore_falls_back_past_a_corrupt_or_refused_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 4).unwrap();
        for decree in [4, 8, 12] {
            save(&mut store, decree);
        }
        // 12 is cut short (fails the size check); 8 is refused by the application.
        let newest = dir.path().join("12.codex");
        let f = File::options().write(true).open(&newest).unwrap();
        f.set_len(f.metadata().unwrap().len() - 1).unwrap();
        let mut offered = Vec::new();
        let (loaded, skipped) = load_newest(store.list(), |r| {
            let r = r.expect("state saved");
            offered.push(r.header().last_executed);
            r.header().last_executed == 4 && read_all(r) == data(4)
        });
        assert_eq!(offered, [8, 4]);
        let (cp, size) = loaded.unwrap();
        assert_eq!((cp, size), (checkpoint(4, true), fs::metadata(dir.path().join("4.codex")).unwrap().len()));
        assert!(load_newest(store.list(), |_| false).0.is_none());
        assert!(newest.exists(), "a corrupt checkpoint is reported, not deleted");
        // Each skip says which file, where and why.
        let len = fs::metadata(&newest).unwrap().len();
        let messages: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                format!(
                    "{}: checkpoint skipped at offset {len}: the file is {len} bytes but its header says {}",
                    newest.display(),
                    len + 1
                ),
                format!("{}: checkpoint skipped: the state machine's load_state returned false", dir.path().join("8.codex").display()),
            ]
        );
    }

    #[test]
    fn skipped_checkpoints_name_the_file_the_offset_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 4).unwrap();
        let (good, bad_block) = (save(&mut store, 8), save(&mut store, 12));
        let mut bytes = fs::read(&bad_block.path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 1;
        fs::write(&bad_block.path, &bytes).unwrap();
        fs::copy(&good.path, dir.path().join("16.codex")).unwrap(); // holds decree 8
        fs::write(dir.path().join("20.codex"), b"not a checkpoint").unwrap();
        let store = CheckpointStore::open(dir.path(), 4).unwrap();
        // An application that refuses a checkpoint it cannot read to the end.
        let (loaded, skipped) = load_newest(store.list(), |r| {
            let r = r.expect("state saved");
            let mut buf = vec![0; r.size() as usize];
            r.get_data(&mut buf).is_ok_and(|n| n == buf.len())
        });
        assert_eq!(loaded.unwrap().0.decree, 8);
        let names: Vec<_> = skipped.iter().map(|s| s.path.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["20.codex", "16.codex", "12.codex"]);
        let [header, decree, block] = &skipped[..] else { unreachable!() };
        assert!(header.offset.is_some() && header.reason.starts_with("bad header: "), "{header}");
        assert_eq!((decree.offset, decree.reason.as_str()), (Some(0), "its header is for decree 8, its name for 16"));
        assert!(
            block.offset.is_some_and(|o| o > 0 && o < bytes.len() as u64) && block.reason.starts_with("block 0 fails its checksum"),
            "{block}"
        );
        let text = block.to_string();
        assert!(text.starts_with(&format!("{}: checkpoint skipped at offset ", bad_block.path.display())), "{text}");
    }

    #[test]
    fn a_bootstrap_checkpoint_is_offered_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 4).unwrap();
        let header = header_for(&checkpoint(0, false), me(), Version::V6);
        store.save(header, |_| Ok(true)).unwrap().unwrap();
        let mut got_none = false;
        let (cp, _) = load_newest(store.list(), |r| {
            got_none = r.is_none();
            true
        })
        .0
        .unwrap();
        assert!(got_none && !cp.state_saved);
    }

    #[test]
    fn install_checks_every_block_and_rejects_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 4).unwrap();
        let download = |store: &mut CheckpointStore, corrupt: bool| {
            let temp = store.temp_path();
            let mut header = header_for(&checkpoint(20, true), me(), Version::V6);
            header.block_size = 1024; // several blocks
            let mut w = CheckpointWriter::create(&temp, header).unwrap();
            w.write(&data(20)).unwrap();
            w.close().unwrap();
            if corrupt {
                let mut bytes = fs::read(&temp).unwrap();
                let at = bytes.len() - 100; // inside the last block
                bytes[at] ^= 1;
                fs::write(&temp, &bytes).unwrap();
            }
            temp
        };
        let bad = download(&mut store, true);
        let err = store.install(&bad, 20).unwrap_err();
        assert!(matches!(err, StoreError::Checkpoint(CheckpointError::BlockChecksum { block: 4, .. })), "{err}");
        assert!(!bad.exists() && store.newest().is_none());
        let good = download(&mut store, false);
        let err = store.install(&good, 21).unwrap_err();
        assert!(matches!(err, StoreError::WrongDecree { expected: 21, found: 20, .. }), "{err}");
        let good = download(&mut store, false);
        let saved = store.install(&good, 20).unwrap();
        assert_eq!(saved.path, dir.path().join("20.codex"));
        let mut r = CheckpointReader::open(&saved.path).unwrap();
        assert_eq!(read_all(&mut r), data(20));
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn the_catalog_shows_readers_what_the_owner_placed() {
        let dir = tempfile::tempdir().unwrap();
        save(&mut CheckpointStore::open(dir.path(), 2).unwrap(), 4);
        let mut store = CheckpointStore::open(dir.path(), 2).unwrap();
        let catalog = store.catalog();
        let size_of = |d: u64| fs::metadata(dir.path().join(format!("{d}.codex"))).unwrap().len();
        assert_eq!(catalog.newest(), Some((4, dir.path().join("4.codex"), size_of(4))), "listed at open");
        let (a, b) = (catalog.temp_path(), store.temp_path());
        assert!(a != b && a.starts_with(dir.path().join("Temp")), "one sequence of temp names");
        for decree in [8, 12] {
            save(&mut store, decree);
            assert_eq!(catalog.newest(), Some((decree, dir.path().join(format!("{decree}.codex")), size_of(decree))));
        }
        assert_eq!((catalog.oldest(), store.oldest()), (Some(8), Some(8)), "pruned to two");
        // A download: checked without the store, then placed by it.
        let temp = catalog.temp_path();
        let mut w = CheckpointWriter::create(&temp, header_for(&checkpoint(20, true), me(), Version::V6)).unwrap();
        w.write(&data(20)).unwrap();
        w.close().unwrap();
        let (size, header) = CheckpointStore::check_download(&temp, 20).unwrap();
        assert_eq!((size, header.last_executed), (fs::metadata(&temp).unwrap().len(), 20));
        assert_eq!(catalog.newest().unwrap().0, 12, "not visible before it is placed");
        store.publish(&temp, 20, size).unwrap();
        assert_eq!(catalog.newest(), Some((20, dir.path().join("20.codex"), size)));
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[test]
    fn bad_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x4.codex"), b"").unwrap();
        let err = CheckpointStore::open(dir.path(), 4).err().unwrap();
        assert!(matches!(&err, StoreError::BadName { path } if path.ends_with("x4.codex")), "{err}");
    }

    #[test]
    fn header_conversions_round_trip() {
        for version in [Version::V3, Version::V4, Version::V6] {
            let mut cp = checkpoint(9, true);
            let mut vote = (*cp.next_vote).clone();
            vote.header.version = version;
            cp.next_vote = Arc::new(vote);
            let header = header_for(&cp, me(), version);
            assert_eq!(header.block_size, if version >= Version::V4 { DEFAULT_BLOCK_SIZE } else { 0 });
            assert_eq!(core_checkpoint(header), cp);
        }
    }

    #[test]
    fn the_originals_checkpoints_load() {
        let golden = crate::golden_dir();
        for (name, decree) in
            [("cp_util_v2", 4), ("cp_util_v3", 4), ("cp_util_v4", 4), ("cp_util_v6", 4), ("cp_legislator_v6", 4), ("cp_multiblock_v4", 100)]
        {
            let dir = tempfile::tempdir().unwrap();
            let file = CheckpointHeader::file_name(decree);
            fs::copy(golden.join(name).join(&file), dir.path().join(&file)).unwrap();
            let store = CheckpointStore::open(dir.path(), 4).unwrap();
            let mut data_len = None;
            let (cp, size) = load_newest(store.list(), |r| {
                data_len = r.map(|r| read_all(r).len() as u64);
                true
            })
            .0
            .unwrap_or_else(|| panic!("{name} does not load"));
            assert_eq!(cp.decree, decree, "{name}");
            assert_eq!(cp.next_vote.header.decree, decree + 1, "{name}");
            assert_eq!(size, fs::metadata(dir.path().join(&file)).unwrap().len(), "{name}");
            assert!(data_len.is_some() == cp.state_saved, "{name}");
        }
    }
}
