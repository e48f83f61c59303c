//! Real persistent memory: a file on a DAX file system mapped with `MAP_SYNC`, made durable by
//! writing cache lines back (`clwb`, else `clflushopt`, else `clflush`, as CPUID says) and a
//! store fence, with no system call. The crate's only persistent-memory `unsafe` is here.
//!
//! `MAP_SYNC` is what makes the cache flush enough: with it the kernel keeps the file's block
//! mapping durable before any store to it lands, so the data's persistence is all that is left
//! to the CPU. The kernel refuses it (`EOPNOTSUPP`) on a file system without DAX.
#![allow(unsafe_code)]

use memmap2::MmapMut;
use std::fs::File;
use std::io;

#[cfg(target_arch = "x86_64")]
pub use cpu::*;

/// A shared, writable mapping of all of `file`.
pub fn map_shared(file: &File) -> io::Result<MmapMut> {
    // SAFETY: memmap2 cannot stop another process from truncating or changing the file under
    // the mapping; the log's file is this replica's alone, as its RSL log files are, and every
    // access goes through the returned `MmapMut`.
    unsafe { MmapMut::map_mut(file) }
}

/// Takes an exclusive `flock` on `file` without waiting: `WouldBlock` while another open file
/// description (another process, or another open in this one) holds it. Released when every
/// handle of this open is closed.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let done = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_arch = "x86_64")]
mod cpu {
    use crate::runtime::nvm::PersistentMemory;
    use std::fs::File;
    use std::io;
    use std::ops::Range;
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};
    use std::ptr::NonNull;

    const CACHE_LINE: usize = 64;

    /// The cache-line write-back instruction this CPU has, best first.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum LineFlush {
        /// Writes the line back and may keep it cached.
        Clwb,
        /// Writes back and evicts; weakly ordered like `clwb`.
        Clflushopt,
        /// Writes back and evicts, ordered with every store: slower, on every x86-64.
        Clflush,
    }

    impl LineFlush {
        /// CPUID leaf 7, sub-leaf 0, EBX: bit 24 is CLWB, bit 23 CLFLUSHOPT (if leaf 0 says
        /// leaf 7 exists: past the last leaf, CPUID answers with the last one's data).
        pub fn detect() -> LineFlush {
            use std::arch::x86_64::{__cpuid, __cpuid_count};
            // SAFETY: CPUID exists on every x86-64 CPU and only reads identification data. (A
            // safe function in newer Rust; 1.87, the workspace's minimum, still wants `unsafe`.)
            #[allow(unused_unsafe)]
            let ebx = unsafe {
                match __cpuid(0).eax {
                    7.. => __cpuid_count(7, 0).ebx,
                    _ => 0,
                }
            };
            if ebx & (1 << 24) != 0 {
                LineFlush::Clwb
            } else if ebx & (1 << 23) != 0 {
                LineFlush::Clflushopt
            } else {
                LineFlush::Clflush
            }
        }
    }

    /// Writes back every cache line overlapping `bytes[range]`. Durable after [`store_fence`].
    pub fn write_back(how: LineFlush, bytes: &[u8], range: Range<usize>) {
        let Some(span) = bytes.get(range) else { panic!("flush range out of bounds") };
        if span.is_empty() {
            return;
        }
        let first = span.as_ptr() as usize & !(CACHE_LINE - 1);
        let end = span.as_ptr() as usize + span.len();
        for line in (first..end).step_by(CACHE_LINE) {
            let p = line as *const u8;
            // SAFETY: `p` is in a cache line holding at least one byte of `span`, memory this
            // process has mapped; the instructions only write the line back, changing no byte,
            // and CPUID said this CPU has them (`clflush` is in every x86-64).
            unsafe {
                match how {
                    LineFlush::Clwb => std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags)),
                    LineFlush::Clflushopt => {
                        std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                    LineFlush::Clflush => std::arch::x86_64::_mm_clflush(p),
                }
            }
        }
    }

    /// Waits until every write-back issued before it is done: the persistence point.
    pub fn store_fence() {
        // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has; it only orders stores.
        unsafe { std::arch::x86_64::_mm_sfence() }
    }

    /// A file on a DAX file system, mapped with `MAP_SHARED_VALIDATE | MAP_SYNC`.
    pub struct DaxMap {
        base: NonNull<u8>,
        len: usize,
        flush: LineFlush,
        path: PathBuf,
    }

    // SAFETY: the mapping is owned by this value alone (no other handle to it exists), so moving it
    // to another thread moves all access with it, as for a `Vec<u8>`.
    unsafe impl Send for DaxMap {}

    impl DaxMap {
        /// Maps all of `file` (at `path`), or fails with `EOPNOTSUPP` if its file system has no DAX.
        pub fn map(file: &File, path: &Path) -> io::Result<DaxMap> {
            let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map an empty file"));
            }
            let flags = libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC;
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: a fresh mapping chosen by the kernel (null hint) of `len` bytes of an open
            // file; it aliases no Rust object. The result is checked before use.
            let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let base = NonNull::new(addr.cast::<u8>()).expect("mmap never maps page zero");
            Ok(DaxMap { base, len, flush: LineFlush::detect(), path: path.to_path_buf() })
        }
    }

    impl PersistentMemory for DaxMap {
        fn bytes(&self) -> &[u8] {
            // SAFETY: `base..base + len` is mapped readable and writable for as long as `self`
            // lives, and writes go through `&mut self`, so no mutable borrow overlaps this one.
            // As for `map_shared`, another process truncating or writing the file is outside
            // this contract (the log's file is the replica's own; a truncation raises SIGBUS).
            unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
        }

        fn write(&mut self, offset: usize, data: &[u8]) {
            // SAFETY: as in `bytes`; `&mut self` makes this the only borrow of the mapping.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) };
            bytes[offset..offset + data.len()].copy_from_slice(data);
        }

        fn flush(&mut self, range: Range<usize>) {
            write_back(self.flush, self.bytes(), range);
        }

        fn fence(&mut self) -> io::Result<()> {
            store_fence();
            Ok(())
        }

        fn path(&self) -> &Path {
            &self.path
        }
    }

    impl Drop for DaxMap {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping `map` made; no borrow of it outlives `self`.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_flush_instruction_runs_over_ordinary_memory() {
            // Cache write-back works on any memory; only its durability needs a DAX device.
            let bytes = vec![7u8; 1000];
            for how in [LineFlush::detect(), LineFlush::Clflush] {
                write_back(how, &bytes, 3..1000);
                write_back(how, &bytes, 10..10);
                store_fence();
            }
            assert!(bytes.iter().all(|&b| b == 7));
        }

        #[test]
        fn map_sync_is_refused_without_dax() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            file.set_len(8192).unwrap();
            match DaxMap::map(&file, &path) {
                // A machine whose temporary directory is on DAX passes too.
                Ok(mut map) => {
                    map.write(0, b"x");
                    map.flush(0..1);
                    map.fence().unwrap();
                }
                Err(e) => assert!(matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)), "{e}"),
            }
        }
    }
}
