//! The persistent log in a file: creating and opening it, and the three ways its stores become
//! durable ([`Persistence`]), each a [`PersistentMemory`] over the file's mapping.

use super::layout::{valid_capacity, RING_OFFSET};
use super::{NvmError, PersistentMemory, PmemLog};
use memmap2::MmapMut;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How a mapped log's stores become durable, and so what an acknowledged record survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Real persistent memory: the file is on a DAX file system (`mount -o dax`), mapped with
    /// `MAP_SYNC`, made durable by cache-line write-back and a store fence, no system call.
    /// Survives power loss. Opening fails (`EOPNOTSUPP`) anywhere else.
    CacheFlush,
    /// Emulation: stores stay in the page cache, no system call. Survives a crash of the process
    /// (kill -9 included); a crash of the machine or a power loss may lose any of it.
    ProcessCrash,
    /// Emulation: `msync(MS_SYNC)` of the written pages at each fence (about 0.1 ms per page
    /// here). Survives power loss on an ordinary file system, as the RSL log files do.
    Msync,
}

/// The memory a log made by [`create`] or [`open`] lives in.
pub type FileMemory = Box<dyn PersistentMemory + Send>;

/// Creates an empty log with a ring of `capacity` bytes at `path`, replacing any file there.
/// It is formatted under a temporary name and renamed, so a crash never leaves half a log.
pub fn create(path: &Path, capacity: u64, persistence: Persistence) -> Result<PmemLog<FileMemory>, NvmError> {
    if !valid_capacity(capacity) {
        let what = format!("ring of {capacity} bytes is not a multiple of 8 between 256 B and 1 TiB");
        return Err(NvmError::Geometry { path: path.to_path_buf(), what });
    }
    let temp = path.with_extension("creating");
    let file = File::options().read(true).write(true).create(true).truncate(true).open(&temp);
    let file = file.map_err(|e| NvmError::io(&temp, e))?;
    allocate(&file, RING_OFFSET as u64 + capacity).map_err(|e| NvmError::io(&temp, e))?;
    drop(PmemLog::format(map(file.try_clone().map_err(|e| NvmError::io(&temp, e))?, &temp, persistence)?)?);
    file.sync_all().map_err(|e| NvmError::io(&temp, e))?;
    fs::rename(&temp, path).map_err(|e| NvmError::io(path, e))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| NvmError::io(dir, e))?;
    open(path, persistence)
}

/// Writes `len` zero bytes to `file`, so that every block is allocated and written once here:
/// a store to a hole (or to an unwritten extent) later would make each `msync` commit the file
/// system's journal as well, and on DAX would fault on the first store to each page.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut at = 0;
    while at < len {
        let n = CHUNK.min((len - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Opens the log at `path` and recovers it ([`PmemLog::recover`]). The log holds an exclusive
/// lock on the file while open: a second open, from this process or another, fails with
/// [`NvmError::Locked`] instead of two journals writing one log.
pub fn open(path: &Path, persistence: Persistence) -> Result<PmemLog<FileMemory>, NvmError> {
    let file = File::options().read(true).write(true).open(path).map_err(|e| NvmError::io(path, e))?;
    super::pmem::lock_exclusive(&file).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => NvmError::Locked { path: path.to_path_buf() },
        _ => NvmError::io(path, e),
    })?;
    PmemLog::recover(map(file, path, persistence)?)
}

/// Maps `file`, which the memory keeps open (and so locked) as long as it lives.
fn map(file: File, path: &Path, persistence: Persistence) -> Result<FileMemory, NvmError> {
    let io = |e| NvmError::io(path, e);
    Ok(match persistence {
        #[cfg(target_arch = "x86_64")]
        Persistence::CacheFlush => Box::new(Locked { mem: super::pmem::DaxMap::map(&file, path).map_err(io)?, _file: file }),
        #[cfg(not(target_arch = "x86_64"))]
        Persistence::CacheFlush => return Err(io(io::Error::from(io::ErrorKind::Unsupported))),
        Persistence::ProcessCrash => {
            let mem = PageCache { map: super::pmem::map_shared(&file).map_err(io)?, path: path.to_path_buf() };
            Box::new(Locked { mem, _file: file })
        }
        Persistence::Msync => {
            let mem = Msync { map: super::pmem::map_shared(&file).map_err(io)?, path: path.to_path_buf(), dirty: Vec::new() };
            Box::new(Locked { mem, _file: file })
        }
    })
}

/// A mapping with its file held open: the file's lock lasts as long as the mapping.
struct Locked<M> {
    mem: M,
    _file: File,
}

impl<M: PersistentMemory> PersistentMemory for Locked<M> {
    fn bytes(&self) -> &[u8] {
        self.mem.bytes()
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        self.mem.write(offset, data)
    }
    fn flush(&mut self, range: Range<usize>) {
        self.mem.flush(range)
    }
    fn fence(&mut self) -> io::Result<()> {
        self.mem.fence()
    }
    fn path(&self) -> &Path {
        self.mem.path()
    }
}

/// The emulation that survives a process crash only: the page cache keeps every store.
pub struct PageCache {
    map: MmapMut,
    path: PathBuf,
}

impl PersistentMemory for PageCache {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        self.map[offset..offset + data.len()].copy_from_slice(data);
    }
    fn flush(&mut self, _: Range<usize>) {}
    fn fence(&mut self) -> io::Result<()> {
        // Keeps the compiler from moving a slot's stores before the records' they publish: a
        // process killed between them must not leave a slot naming unwritten records.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn path(&self) -> &Path {
        &self.path
    }
}

/// The emulation that survives power loss: `msync` of the ranges flushed since the last fence.
pub struct Msync {
    map: MmapMut,
    path: PathBuf,
    /// Disjoint ranges awaiting the next fence (a batch's records, one more after a wrap).
    dirty: Vec<Range<usize>>,
}

/// More dirty ranges than this are merged into one: a bound, never reached by the log.
const MAX_DIRTY_RANGES: usize = 8;

impl PersistentMemory for Msync {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        self.map[offset..offset + data.len()].copy_from_slice(data);
    }
    fn flush(&mut self, range: Range<usize>) {
        add_range(&mut self.dirty, range);
    }
    fn fence(&mut self) -> io::Result<()> {
        // A range leaves the list only once synced, so a retried fence syncs what failed.
        while let Some(range) = self.dirty.first() {
            self.map.flush_range(range.start, range.len())?;
            self.dirty.remove(0);
        }
        Ok(())
    }
    fn path(&self) -> &Path {
        &self.path
    }
}

/// Adds `range` to `dirty`, extending the last range when they touch (the log writes forward).
fn add_range(dirty: &mut Vec<Range<usize>>, range: Range<usize>) {
    if range.is_empty() {
        return;
    }
    if let Some(last) = dirty.last_mut().filter(|last| range.start <= last.end && range.end >= last.start) {
        *last = last.start.min(range.start)..last.end.max(range.end);
    } else if dirty.len() == MAX_DIRTY_RANGES {
        let hull = dirty.iter().fold(range, |h, r| h.start.min(r.start)..h.end.max(r.end));
        *dirty = vec![hull];
    } else {
        dirty.push(range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_ranges_merge_forward_and_stay_bounded() {
        let mut dirty = Vec::new();
        add_range(&mut dirty, 100..200);
        add_range(&mut dirty, 200..240);
        add_range(&mut dirty, 0..24);
        assert_eq!(dirty, vec![100..240, 0..24]);
        for i in 0..20 {
            add_range(&mut dirty, 1000 * i + 500..1000 * i + 510);
        }
        assert!(dirty.len() <= MAX_DIRTY_RANGES);
        assert_eq!(dirty.iter().map(|r| r.start).min(), Some(0));
        assert_eq!(dirty.iter().map(|r| r.end).max(), Some(19_510));
    }

    #[test]
    fn a_log_survives_reopening_in_both_emulations() {
        let dir = tempfile::tempdir().unwrap();
        for (i, persistence) in [Persistence::ProcessCrash, Persistence::Msync].into_iter().enumerate() {
            let path = dir.path().join(format!("log{i}"));
            let mut log = create(&path, 4096, persistence).unwrap();
            for n in 0..100u32 {
                let payload = n.to_le_bytes().repeat(n as usize % 20);
                let appended = match log.append(&payload) {
                    Ok(a) => a,
                    Err(_) => {
                        let head = log.records().nth(10).unwrap().unwrap().end;
                        log.advance_head(head).unwrap();
                        log.append(&payload).unwrap()
                    }
                };
                assert_eq!(appended.seq, n as u64);
                log.persist().unwrap();
            }
            let first = log.head().seq();
            drop(log);
            let log = open(&path, persistence).unwrap();
            let seqs: Vec<u64> = log.records().map(|r| r.unwrap().seq).collect();
            assert_eq!(seqs, (first..100).collect::<Vec<_>>());
            assert!(!dir.path().join(format!("log{i}.creating")).exists());
        }
    }

    #[test]
    fn a_log_open_once_cannot_be_opened_again_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        for persistence in [Persistence::ProcessCrash, Persistence::Msync] {
            let log = create(&path, 4096, persistence).unwrap();
            let err = open(&path, persistence).err().unwrap();
            assert!(matches!(&err, NvmError::Locked { path: p } if *p == path), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            drop(log);
            drop(open(&path, persistence).unwrap());
        }
    }

    #[test]
    fn creating_refuses_a_bad_size_and_opening_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert!(matches!(create(&path, 1001, Persistence::ProcessCrash), Err(NvmError::Geometry { .. })));
        fs::write(&path, vec![1u8; 8192]).unwrap();
        let err = open(&path, Persistence::ProcessCrash).err().unwrap();
        assert!(matches!(err, NvmError::Corrupt { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("log"), "{err}");
    }
}
