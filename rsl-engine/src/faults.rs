//! Fail points at the journal's and the checkpoints' system calls (tikv's `fail` crate), so
//! that tests can make a call fail as a sick or full disk would.
//!
//! The points are inert unless the `fail` crate's `failpoints` feature is on: every test
//! build turns it on (a dev-dependency of this crate), the `failpoints` feature of this crate
//! turns it on elsewhere, and a normal build compiles each point to nothing.
//!
//! A point is armed with `fail::cfg(point, action)`. With the action `return` the call fails
//! with EIO; `return(enospc)` fails it with ENOSPC; on a write point, `return(short)` writes
//! the first half of the data and then fails with ENOSPC, as a disk that fills mid-write
//! does. A fault may name the files it hits: `return(enospc@/data/2/)` fails only calls on a
//! path containing `/data/2/` (a log's call may give its directory), so that one replica of
//! several in a process fails. The `fail` crate's counts apply (`1*return` fails the next
//! call only), to every call on the point, matching or not.

use std::io;
use std::path::Path;

/// Creating or opening a log file (and `defunct.txt`).
pub const JOURNAL_OPEN: &str = "journal::open";
/// Writing records to a log (and `defunct.txt`).
pub const JOURNAL_WRITE: &str = "journal::write";
/// `fdatasync` of a log, `fsync` of the log directory or `defunct.txt`.
pub const JOURNAL_FSYNC: &str = "journal::fsync";
/// Reading a log at startup (and `defunct.txt`).
pub const JOURNAL_READ: &str = "journal::read";
/// Creating a checkpoint file, or opening one to read.
pub const CHECKPOINT_OPEN: &str = "checkpoint::open";
/// Writing a checkpoint's data or header.
pub const CHECKPOINT_WRITE: &str = "checkpoint::write";
/// `fsync` of a checkpoint or of the checkpoint directory.
pub const CHECKPOINT_FSYNC: &str = "checkpoint::fsync";
/// Moving a written checkpoint into place (`Temp/` to `<decree>.codex`).
pub const CHECKPOINT_RENAME: &str = "checkpoint::rename";
/// Reading a checkpoint (its header, a block).
pub const CHECKPOINT_READ: &str = "checkpoint::read";

/// Every point, for tests that go through them all.
pub const POINTS: [&str; 9] = [
    JOURNAL_OPEN,
    JOURNAL_WRITE,
    JOURNAL_FSYNC,
    JOURNAL_READ,
    CHECKPOINT_OPEN,
    CHECKPOINT_WRITE,
    CHECKPOINT_FSYNC,
    CHECKPOINT_RENAME,
    CHECKPOINT_READ,
];

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// What an armed point makes its call do.
// Only armed points make one: a build without fail points never does.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Eio,
    Enospc,
    /// Half the data, then ENOSPC.
    Short,
}

impl Fault {
    /// `kind[@path fragment]`: the fault, if it applies to `path`.
    #[allow(dead_code)]
    fn parse(point: &str, arg: Option<&str>, path: &Path) -> Option<Fault> {
        let (kind, only) = arg.map_or(("", None), |a| a.split_once('@').map_or((a, None), |(k, p)| (k, Some(p))));
        let fault = match kind.trim() {
            "" | "eio" => Fault::Eio,
            "enospc" => Fault::Enospc,
            "short" => Fault::Short,
            other => panic!("fail point {point}: unknown fault {other:?} (eio, enospc or short)"),
        };
        only.is_none_or(|only| path.to_string_lossy().contains(only)).then_some(fault)
    }

    /// The call's error.
    pub(crate) fn error(self, point: &str) -> io::Error {
        let errno = if self == Fault::Eio { EIO } else { ENOSPC };
        let e = io::Error::from_raw_os_error(errno);
        io::Error::new(e.kind(), format!("{e} (injected at {point})"))
    }

    /// A write of `data` under this fault: a short one writes its first half with `write`
    /// (whose own error is moot), then every kind fails.
    pub(crate) fn write(self, point: &str, data: &[u8], write: impl FnOnce(&[u8]) -> io::Result<()>) -> io::Error {
        if self == Fault::Short {
            let _ = write(&data[..data.len() / 2]);
        }
        self.error(point)
    }
}

/// The fault armed at `point` for a call on `path`, if any (always `None` in a build without
/// fail points).
#[inline]
pub(crate) fn armed(point: &str, path: &Path) -> Option<Fault> {
    fail::fail_point!(point, |arg: Option<String>| Fault::parse(point, arg.as_deref(), path));
    let _ = (point, path); // the macro above is empty in a normal build
    None
}

/// Fails with the fault armed at `point` for `path`, if any: the check before a call that
/// reads, opens, syncs or renames.
#[inline]
pub(crate) fn check(point: &str, path: &Path) -> io::Result<()> {
    armed(point, path).map_or(Ok(()), |fault| Err(fault.error(point)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fault armed here names a path no other test uses: the points are global to the
    /// test process, and the journal and checkpoint tests running meanwhile call them too.
    #[test]
    fn faults_parse_and_name_the_point() {
        let _scenario = fail::FailScenario::setup();
        let path = Path::new("/faults-test/1/0.log");
        let check = |point| check(point, path);
        assert!(check(JOURNAL_FSYNC).is_ok(), "unarmed");
        fail::cfg(JOURNAL_FSYNC, "return(enospc@/faults-test/1/)").unwrap();
        let e = check(JOURNAL_FSYNC).unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().starts_with("No space left on device") && e.to_string().contains(JOURNAL_FSYNC), "{e}");
        fail::cfg(JOURNAL_WRITE, "return(short@/faults-test/1/)").unwrap();
        let mut written = Vec::new();
        let e = armed(JOURNAL_WRITE, path).unwrap().write(JOURNAL_WRITE, &[1, 2, 3, 4], |d| {
            written.extend_from_slice(d);
            Ok(())
        });
        assert_eq!((written.as_slice(), e.kind()), (&[1u8, 2][..], io::ErrorKind::StorageFull));
        fail::cfg(CHECKPOINT_READ, "return(@/faults-test/1/)").unwrap();
        assert!(check(CHECKPOINT_READ).unwrap_err().to_string().starts_with("Input/output error"));
        // Only the files named.
        fail::cfg(CHECKPOINT_OPEN, "return(enospc@/faults-test/2/)").unwrap();
        assert!(check(CHECKPOINT_OPEN).is_ok());
        let e = super::check(CHECKPOINT_OPEN, Path::new("/faults-test/2/Temp/x.tmp")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}
