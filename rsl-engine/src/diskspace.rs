//! Free space on the file system holding a path (`statvfs`), for the checkpoint space alert.

use std::io;
use std::path::Path;

/// Bytes an unprivileged process may still write on the file system of `path`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid place for one `statvfs`, which
    // the call fills entirely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    // Both are u64 on 64-bit Linux; the conversion keeps 32-bit targets building.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

#[cfg(not(target_os = "linux"))]
pub fn available_bytes(_path: &Path) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_writable_directory_has_some_room_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::available_bytes(dir.path()).unwrap() > 0);
        assert!(super::available_bytes(&dir.path().join("missing")).is_err());
    }
}
