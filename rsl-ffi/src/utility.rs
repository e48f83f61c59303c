//! `RSLCheckpointUtility` for C: write a checkpoint offline, find the newest one in a
//! directory, and read or replace the member set stored in one.

use crate::streams::rsl_checkpoint_writer;
use crate::types::*;
use crate::*;
use rsl_engine::format::checkpoint::{CheckpointError, DEFAULT_BLOCK_SIZE};
use rsl_engine::format::{
    Ballot, Body, CheckpointHeader, CheckpointReader, CheckpointWriter, ConfigInfo, Header, MemberId, MemberSet, Message, Version, VoteBody,
};
use std::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn io(e: impl std::fmt::Display) -> rsl_status {
    fail(RSL_E_IO, e)
}

fn checkpoint_error(e: CheckpointError) -> rsl_status {
    match e {
        CheckpointError::Encode(e) => fail(RSL_INVALID_PARAMETER, e),
        other => io(other),
    }
}

/// `path` with `.tmp` appended.
fn temp_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes a checkpoint with `header` to `temp`: `copy` streams the data in; false abandons it.
fn write_temp(
    temp: &Path,
    header: CheckpointHeader,
    copy: impl FnOnce(&mut CheckpointWriter) -> Result<(), rsl_status>,
) -> Result<(), rsl_status> {
    let _ = std::fs::remove_file(temp); // a leftover of an earlier failure
    let written = CheckpointWriter::create(temp, header)
        .map_err(checkpoint_error)
        .and_then(|mut w| copy(&mut w).and_then(|()| w.close().map(drop).map_err(checkpoint_error)));
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written
}

/// `RSLCheckpointUtility::SaveCheckpoint`: creates `<dir>/<last_executed_seq>.codex` for
/// seeding a replica, as the original writes it: member and max ballot from the set's first
/// member (empty for v1/v2), configuration (`config_number`, initial decree
/// `last_executed_seq`, the set), an empty next vote for `last_executed_seq + 1` with ballot
/// (1, first member), and 4 MiB checksummed blocks from v4. `write_state(ctx, writer)` writes
/// the state through `rsl_checkpoint_writer_write`; the writer is valid during that call.
/// The file is written to a temporary name first and never replaces an existing checkpoint.
///
/// Errors: `RSL_E_NULL`; `RSL_INVALID_PARAMETER` (sequence 0, version outside 1..6, no or a bad
/// member set for v3+, non-numeric ids for v3); `RSL_E_IO` (a write failed, or the checkpoint
/// exists; logged).
///
/// # Safety
/// `dir` is NULL or NUL-terminated; `members` holds `count` nodes and `set_cookie` `cookie_len`
/// bytes; `write_state` is NULL or a function that may be called with `ctx`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rsl_checkpoint_save(
    dir: *const c_char,
    version: u32,
    last_executed_seq: u64,
    config_number: u32,
    members: *const rsl_node,
    count: usize,
    set_cookie: *const c_void,
    cookie_len: u32,
    write_state: Option<unsafe extern "C" fn(ctx: *mut c_void, w: *mut rsl_checkpoint_writer)>,
    ctx: *mut c_void,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let dir = unsafe { path(dir) }?;
        let write_state = write_state.ok_or(RSL_E_NULL)?;
        let v = u16::try_from(version).ok().and_then(Version::new).filter(|v| Version::ALL.contains(v)).ok_or(RSL_INVALID_PARAMETER)?;
        if last_executed_seq == 0 || last_executed_seq == u64::MAX {
            return Err(RSL_INVALID_PARAMETER);
        }
        let members = if v.has_config() {
            // SAFETY: forwarded from the caller.
            unsafe { member_set(members, count, set_cookie, cookie_len) }?
        } else {
            Default::default()
        };
        save_checkpoint(dir, v, last_executed_seq, config_number, members, |w| {
            let mut handle = rsl_checkpoint_writer::borrowed(w);
            // SAFETY: the application's function, called with its context and a writer that
            // lives for the call.
            unsafe { write_state(ctx, &mut handle) };
            if handle.failed() {
                Err(RSL_E_IO)
            } else {
                Ok(())
            }
        })
    })
}

/// Creates `<dir>/<seq>.codex` as `rsl_checkpoint_save` describes, `write` streaming the state
/// in; `members` is empty before v3. Never replaces an existing checkpoint.
pub(crate) fn save_checkpoint(
    dir: &Path,
    v: Version,
    seq: u64,
    config_number: u32,
    members: MemberSet,
    write: impl FnOnce(&mut CheckpointWriter) -> Result<(), rsl_status>,
) -> Result<(), rsl_status> {
    if seq == 0 || seq == u64::MAX {
        return Err(RSL_INVALID_PARAMETER);
    }
    let member = match members.nodes.first() {
        Some(first) => first.id,
        None if v.has_config() => return Err(RSL_INVALID_PARAMETER),
        None => MemberId::EMPTY,
    };
    let ballot = Ballot::new(1, member);
    let next_vote = Message::new(Header::new(v, member, seq + 1, config_number, ballot), Body::Vote(VoteBody::default()));
    let header = CheckpointHeader {
        version: v,
        member,
        last_executed: seq,
        max_ballot: ballot,
        config: ConfigInfo { number: config_number, initial_decree: seq, members },
        state_saved: true,
        size: 0,
        block_size: if v.has_string_ids() { DEFAULT_BLOCK_SIZE } else { 0 },
        next_vote,
    };
    let target = dir.join(CheckpointHeader::file_name(seq));
    let temp = temp_of(&target);
    write_temp(&temp, header, write)?;
    // A hard link fails if the target exists, so an existing checkpoint is never replaced.
    let placed = std::fs::hard_link(&temp, &target).map_err(|e| io(format!("{}: {e}", target.display())));
    let _ = std::fs::remove_file(&temp);
    placed
}

/// `RSLCheckpointUtility::GetLatestCheckpoint`: the path of the highest-numbered
/// `<n>.codex` in `dir`, NUL-terminated into `path_buf` (`buf_len` bytes). Errors:
/// `RSL_E_NULL`, `RSL_E_BUFFER` (too small), `RSL_E_IO` (no checkpoint, or `dir` unreadable).
///
/// # Safety
/// `dir` is NULL or NUL-terminated; `path_buf` holds `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_get_latest(dir: *const c_char, path_buf: *mut c_char, buf_len: usize) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let dir = unsafe { path(dir) }?;
        if path_buf.is_null() {
            return Err(RSL_E_NULL);
        }
        let newest = std::fs::read_dir(dir)
            .map_err(|e| io(format!("{}: {e}", dir.display())))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                let stem = name.as_bytes().strip_suffix(b".codex")?;
                let decree = std::str::from_utf8(stem).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit()))?.parse::<u64>().ok()?;
                Some((decree, name))
            })
            .max()
            .ok_or(RSL_E_IO)?;
        let full = dir.join(newest.1);
        let bytes = full.as_os_str().as_bytes();
        if bytes.len() >= buf_len {
            return Err(RSL_E_BUFFER);
        }
        // SAFETY: `path_buf` holds `buf_len` > bytes.len() bytes, per the caller.
        let out = unsafe { std::slice::from_raw_parts_mut(path_buf, buf_len) };
        write_c_str(out, bytes);
        Ok(())
    })
}

/// Opens a v3+ checkpoint (`RSL_INVALID_PARAMETER` for older versions).
fn open_v3(file: &Path) -> Result<CheckpointReader, rsl_status> {
    let reader = CheckpointReader::open(file).map_err(io)?;
    if !reader.header().version.has_config() {
        return Err(RSL_INVALID_PARAMETER);
    }
    Ok(reader)
}

/// `RSLCheckpointUtility::GetReplicaSet`: the member set stored in a v3+ checkpoint, copied
/// into `members` (`capacity` nodes; `*count` how many there are) and, if `cookie_len` is not
/// NULL, its cookie into `set_cookie` (`*cookie_len`: capacity in, length out). Errors:
/// `RSL_E_NULL`, `RSL_E_BUFFER`, `RSL_INVALID_PARAMETER` (v1/v2), `RSL_E_IO` (unreadable).
///
/// # Safety
/// `file` is NULL or NUL-terminated; the out pointers are NULL or hold their stated capacity.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_get_replica_set(
    file: *const c_char,
    members: *mut rsl_node,
    capacity: usize,
    count: *mut usize,
    set_cookie: *mut c_void,
    cookie_len: *mut u32,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let file = unsafe { path(file) }?;
        if count.is_null() {
            return Err(RSL_E_NULL);
        }
        let set = open_v3(file)?.header().config.members.clone();
        // SAFETY: forwarded from the caller.
        let (nodes, cookie) =
            unsafe { (write_array(&set.nodes, node_to_c, members, capacity, count), write_cookie(&set.cookie, set_cookie, cookie_len)) };
        nodes.and(cookie)
    })
}

/// `RSLCheckpointUtility::ChangeReplicaSet`: replaces the member set stored in a v3+
/// checkpoint, rewriting the file through `<file>.tmp` and an atomic rename. The data is
/// copied and its checksums verified on the way. Errors: `RSL_E_NULL`,
/// `RSL_INVALID_PARAMETER` (v1/v2 file, bad set, non-numeric ids for v3), `RSL_E_IO`.
///
/// # Safety
/// `file` is NULL or NUL-terminated; `members` holds `count` nodes and `set_cookie`
/// `cookie_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_change_replica_set(
    file: *const c_char,
    members: *const rsl_node,
    count: usize,
    set_cookie: *const c_void,
    cookie_len: u32,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (file, set) = unsafe { (path(file)?, member_set(members, count, set_cookie, cookie_len)?) };
        let reader = open_v3(file)?;
        let mut header = reader.header().clone();
        header.config.members = set;
        rewrite(file, reader, header)
    })
}

/// `RSLCheckpointUtility::MigrateToVersion3` / `MigrateToVersion4`: as
/// `rsl_checkpoint_change_replica_set`, and the header's version raised to `version` (3 to 6);
/// a v1/v2 checkpoint gets configuration 1 from decree 0 with the set, and from v4 the data
/// is cut into checksummed 4 MiB blocks. Errors as `rsl_checkpoint_change_replica_set`, and
/// `RSL_INVALID_PARAMETER` for a version outside 3..6 or below the file's.
///
/// # Safety
/// As `rsl_checkpoint_change_replica_set`.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_migrate(
    file: *const c_char,
    version: u32,
    members: *const rsl_node,
    count: usize,
    set_cookie: *const c_void,
    cookie_len: u32,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (file, set) = unsafe { (path(file)?, member_set(members, count, set_cookie, cookie_len)?) };
        let v = u16::try_from(version)
            .ok()
            .and_then(Version::new)
            .filter(|v| v.has_config() && Version::ALL.contains(v))
            .ok_or(RSL_INVALID_PARAMETER)?;
        let reader = CheckpointReader::open(file).map_err(io)?;
        let mut header = reader.header().clone();
        if v < header.version {
            return Err(RSL_INVALID_PARAMETER);
        }
        if header.version.has_config() {
            header.config.members = set;
        } else {
            header.config = ConfigInfo { number: 1, initial_decree: 0, members: set };
        }
        if v.has_string_ids() && header.block_size == 0 {
            header.block_size = DEFAULT_BLOCK_SIZE;
        }
        header.version = v;
        rewrite(file, reader, header)
    })
}

/// Rewrites checkpoint `file` with `header` and the data `reader` reads from it, through
/// `<file>.tmp` and an atomic rename.
fn rewrite(file: &Path, mut reader: CheckpointReader, header: CheckpointHeader) -> Result<(), rsl_status> {
    let temp = temp_of(file);
    write_temp(&temp, header, |w| loop {
        match reader.get_data_pointer(1 << 20) {
            Ok(data) => w.write(data).map_err(checkpoint_error)?,
            Err(CheckpointError::Eof) => return Ok(()),
            Err(e) => return Err(io(e)),
        }
    })?;
    std::fs::rename(&temp, file).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io(format!("{}: {e}", file.display()))
    })
}
