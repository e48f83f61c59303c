//! The shared-memory emulation of remote memory: both ends map the same file, a "remote write" is
//! a copy into the mapping and the doorbell a release store. A real transport for replicas on
//! one host, and what the tests use in place of RDMA hardware.
//!
//! Fencing: a session's writer that outlives its session could still store into the mapping, so a
//! new session should use a new file, as RDMA revokes the old registration (see docs/rdma.md).

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;
use std::{io, slice};

use memmap2::MmapRaw;

use super::memory::{format, Words};
use super::{
    check_capacity, region_bytes, BadCapacity, CAPACITY_WORD, DATA_WORD, DOORBELL_WORD, MAGIC, MAGIC_WORD, NONCE_WORD, PARKED_WORD,
};

/// Why a ring file could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The ring file could not be created, sized or mapped.
    #[error("ring file: {0}")]
    Io(#[from] io::Error),
    /// The capacity is not one a ring can have.
    #[error(transparent)]
    Capacity(#[from] BadCapacity),
    /// The file does not start with a ring's magic number (the value found).
    #[error("ring file has magic {0:#x}, not a ring")]
    BadMagic(u64),
    /// The file's length does not match the capacity its header declares.
    #[error("ring file is {actual} bytes; its capacity needs {expected}")]
    WrongSize {
        /// The file's length in bytes.
        actual: u64,
        /// The length the capacity needs.
        expected: u64,
    },
    /// Not a file this process's user made for this use alone: another user's, readable or
    /// writable by others, linked elsewhere, or not a regular file.
    #[error("ring file is not private: {0}")]
    NotPrivate(&'static str),
}

/// A ring's memory in a file mapped shared: the reader creates it, the writer opens it.
#[derive(Debug)]
pub struct ShmRing {
    map: MmapRaw,
    capacity: usize,
    /// Keeps the file open as long as the mapping (documentation; the mapping alone would do).
    _file: File,
}

impl ShmRing {
    /// Creates a new ring file of `capacity` data bytes at `path`, readable and writable by its
    /// owner only (0600); fails if it exists.
    /// Its pages are allocated at once: a full file system (a tmpfs any local user can fill) is
    /// an error here, not a SIGBUS at the first store into a page. A failed create leaves no file.
    pub fn create(path: &Path, capacity: u64) -> Result<ShmRing, ShmError> {
        let capacity = check_capacity(capacity)?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
        let made = allocate(&file, region_bytes(capacity) as u64).and_then(|()| Ok(MmapRaw::map_raw(&file)?));
        let map = made.inspect_err(|_| drop(std::fs::remove_file(path)))?;
        let ring = ShmRing { map, capacity, _file: file };
        format(ring.words(), capacity);
        Ok(ring)
    }

    /// Maps an existing ring file, checking its header against its size.
    /// The file must be private to this user (see [`ShmError::NotPrivate`]): a peer names it,
    /// and a symbolic link planted in a shared directory must not lead elsewhere.
    pub fn open(path: &Path) -> Result<ShmRing, ShmError> {
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
        let meta = file.metadata()?;
        check_private(&meta)?;
        let actual = meta.len();
        if actual < region_bytes(0) as u64 {
            return Err(ShmError::WrongSize { actual, expected: region_bytes(0) as u64 });
        }
        let mut ring = ShmRing { map: MmapRaw::map_raw(&file)?, capacity: 0, _file: file };
        // The mapping's own length: the file may have changed size since `metadata`.
        if ring.map.len() as u64 != actual {
            return Err(ShmError::WrongSize { actual: ring.map.len() as u64, expected: actual });
        }
        let magic = ring.words()[MAGIC_WORD].load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(ShmError::BadMagic(magic));
        }
        let capacity = check_capacity(ring.words()[CAPACITY_WORD].load(Ordering::Relaxed))?;
        let expected = region_bytes(capacity) as u64;
        if actual != expected {
            return Err(ShmError::WrongSize { actual, expected });
        }
        ring.capacity = capacity;
        Ok(ring)
    }

    /// The reader, before naming the file to the writer: stores the set-up nonce in the header.
    pub fn set_nonce(&self, nonce: u64) {
        self.words()[NONCE_WORD].store(nonce, Ordering::Release);
    }

    /// The set-up nonce the reader stored: only a process that mapped the file can know it.
    pub fn nonce(&self) -> u64 {
        self.words()[NONCE_WORD].load(Ordering::Acquire)
    }

    /// The reader: sleeps until the doorbell no longer says `seen`, the writer wakes it, or
    /// `timeout` passes (whichever first; spurious returns are fine, the caller polls again).
    pub fn park(&self, seen: u64, timeout: Duration) {
        let words = self.words();
        words[PARKED_WORD].store(1, Ordering::Relaxed);
        // Pairs with the fence in `wake_reader`: either the writer sees the flag, or this load
        // sees its doorbell. Neither side can miss both.
        fence(Ordering::SeqCst);
        if words[DOORBELL_WORD].load(Ordering::Acquire) == seen {
            futex_wait(&words[DOORBELL_WORD], seen as u32, timeout);
        }
        words[PARKED_WORD].store(0, Ordering::Relaxed);
    }

    /// The writer, after ringing the doorbell: wakes the reader if it sleeps on it.
    pub fn wake_reader(&self) {
        let words = self.words();
        fence(Ordering::SeqCst);
        if words[PARKED_WORD].load(Ordering::Relaxed) != 0 {
            futex_wake(&words[DOORBELL_WORD]);
        }
    }
}

/// A random word from the kernel's generator (getrandom(2)), for a set-up nonce that a process
/// which cannot read the ring file must not guess.
pub fn random_nonce() -> io::Result<u64> {
    let mut word = [0u8; 8];
    let mut filled = 0;
    while filled < word.len() {
        let rest = &mut word[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, a live buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(io::Error::last_os_error()),
        }
    }
    // Never 0: a confirmation of zeros (what an RDMA one carries) must not match it.
    Ok(u64::from_le_bytes(word).max(1))
}

/// The low half of a word, where a futex on it waits: the word is little-endian and 8-aligned.
fn low_half(word: &AtomicU64) -> *const u32 {
    word.as_ptr().cast::<u32>().cast_const()
}

/// Reserves `len` bytes of `file` (`posix_fallocate`): every page exists before it is mapped.
fn allocate(file: &File, len: u64) -> Result<(), ShmError> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| ShmError::WrongSize { actual: len, expected: len })?;
    // SAFETY: `file` is an open descriptor for the duration of the call; posix_fallocate takes
    // no pointers and returns an error number instead of setting errno.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(ShmError::Io(io::Error::from_raw_os_error(errno))),
    }
}

/// A ring file as its reader made it: a regular file of this process's user, with no access
/// for others and no other name.
fn check_private(meta: &std::fs::Metadata) -> Result<(), ShmError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match () {
        _ if !meta.file_type().is_file() => Err(ShmError::NotPrivate("not a regular file")),
        _ if meta.uid() != me => Err(ShmError::NotPrivate("owned by another user")),
        _ if meta.mode() & 0o077 != 0 => Err(ShmError::NotPrivate("readable or writable by others")),
        _ if meta.nlink() != 1 => Err(ShmError::NotPrivate("has another name")),
        _ => Ok(()),
    }
}

/// Sleeps while the low half of `word` is `expected`, up to `timeout`. A shared futex (no
/// FUTEX_PRIVATE_FLAG): the other process maps the same file.
fn futex_wait(word: &AtomicU64, expected: u32, timeout: Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos().into() };
    // SAFETY: the address is a live, 4-aligned word of the mapping (see `words`); the kernel
    // only reads it and the timespec, which lives across the call. Any result (woken, value
    // changed, timed out, interrupted) is a return to the caller's poll loop.
    unsafe {
        libc::syscall(libc::SYS_futex, low_half(word), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes whoever sleeps on `word` in [`futex_wait`].
fn futex_wake(word: &AtomicU64) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE reads nothing but the address.
    unsafe {
        libc::syscall(libc::SYS_futex, low_half(word), libc::FUTEX_WAKE, i32::MAX);
    }
}

impl Words for ShmRing {
    fn words(&self) -> &[AtomicU64] {
        debug_assert!(self.map.len() >= DATA_WORD * 8, "mapping smaller than its header");
        // SAFETY: the mapping is page-aligned (so 8-aligned) and `len / 8` whole words long, lives
        // as long as `self`, and is only ever accessed through atomics: `AtomicU64` has the layout
        // of `u64` and allows the other process's concurrent atomic stores. memmap2 cannot stop
        // another process truncating the file, which would fault on access: only processes of
        // this user can (the file is 0600, checked so on open, and unlinked once both ends have
        // mapped it), and the replicas never do; a same-user process can harm the replica
        // anyway (docs/security.md). Its pages were allocated when it was made, so no store
        // faults for want of memory.
        unsafe { slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.map.len() / 8) }
    }

    fn data_capacity(&self) -> usize {
        self.capacity
    }
}
