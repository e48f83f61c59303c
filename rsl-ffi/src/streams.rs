//! The checkpoint streams (`RSLCheckpointStreamReader` / `Writer`) as opaque handles: borrowed
//! ones handed to `load_state` / `save_state`, and readers that tools open on a file.
//! Results are Win32 codes, as RSL's: 0, 38 end of data, 23 bad checksum, 87 bad argument.

use crate::types::path;
use crate::{guard_value, note, reporting};
use rsl_engine::format::checkpoint::{CheckpointError, CheckpointReader, CheckpointWriter};
use rsl_engine::format::CheckpointHeader;
use std::ffi::{c_char, c_void};
use std::ptr::NonNull;

/// `NO_ERROR`.
const OK: u32 = 0;
/// `ERROR_HANDLE_EOF`: the end of the data.
const END_OF_DATA: u32 = 38;
/// `ERROR_CRC`: a bad checksum, or a file that is not the checkpoint expected.
const BAD_CHECKSUM: u32 = 23;
/// `ERROR_INVALID_PARAMETER`: a NULL handle or pointer.
const INVALID: u32 = 87;
/// `ERROR_INTERNAL_ERROR`: a panic caught at the boundary.
const INTERNAL: u32 = 1359;

/// Reads a checkpoint's application data. Handed to `load_state` (valid during the call) or
/// opened by `rsl_checkpoint_reader_open` (valid until `rsl_checkpoint_reader_close`).
pub struct rsl_checkpoint_reader(Reader);

enum Reader {
    /// The engine's reader, for the duration of a `load_state` call.
    Borrowed(NonNull<CheckpointReader>),
    Owned(Box<CheckpointReader>),
}

impl rsl_checkpoint_reader {
    pub(crate) fn borrowed(reader: &mut CheckpointReader) -> rsl_checkpoint_reader {
        rsl_checkpoint_reader(Reader::Borrowed(NonNull::from(reader)))
    }

    fn get(&mut self) -> &mut CheckpointReader {
        match &mut self.0 {
            // SAFETY: a borrowed handle lives on the stack of the callback it is passed to, and
            // the reader it points to outlives that call; C may use it only during the call.
            Reader::Borrowed(p) => unsafe { p.as_mut() },
            Reader::Owned(r) => r,
        }
    }
}

/// Appends to a checkpoint being written: handed to `save_state` and `try_save_state` (and the
/// `rsl_checkpoint_save` writer), valid only during that call; or created on a file by
/// `rsl_checkpoint_writer_create`, valid until `rsl_checkpoint_writer_close` or `_free`.
pub struct rsl_checkpoint_writer {
    writer: NonNull<CheckpointWriter>,
    /// The writer `writer` points into, for a created one (the box never moves).
    owned: Option<Box<CheckpointWriter>>,
    failed: bool,
}

impl rsl_checkpoint_writer {
    pub(crate) fn borrowed(writer: &mut CheckpointWriter) -> rsl_checkpoint_writer {
        rsl_checkpoint_writer { writer: NonNull::from(writer), owned: None, failed: false }
    }

    /// Whether a write failed (the checkpoint must then be abandoned).
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }
}

/// Runs a stream call: its Win32 code, `INTERNAL` on a panic; the outcome goes to
/// `rsl_last_error`.
fn win32(body: impl FnOnce() -> Result<(), u32>) -> u32 {
    reporting(body, INTERNAL, |&code| win32_text(code)).err().unwrap_or(OK)
}

/// A read's error as its Win32 code, its text noted for `rsl_last_error`.
fn noted(e: CheckpointError) -> u32 {
    note(e.win32_code(), e)
}

/// What a Win32 code from a stream call means.
fn win32_text(code: u32) -> String {
    let what = match code {
        END_OF_DATA => "end of data",
        BAD_CHECKSUM => "bad checksum, or not the checkpoint expected",
        INVALID => "invalid parameter: a NULL or empty argument",
        INTERNAL => "internal error",
        _ => "I/O error",
    };
    format!("Win32 error {code} ({what})")
}

/// `GetDataPointer`: points `*data` at up to `max` bytes of data at the current position (no
/// copy) and advances past them. The pointer is valid until the next call on this reader.
/// It never crosses a 4 MiB block, so `*read` may be less than `max`: loop. Returns 38 at the
/// end of data, 23 for a bad block checksum, 87 for a NULL argument (`*read` is then 0).
///
/// # Safety
/// `r` is NULL or a live reader; `data` and `read` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_get_data_pointer(
    r: *mut rsl_checkpoint_reader,
    data: *mut *const c_void,
    max: u32,
    read: *mut u32,
) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees each pointer is NULL or valid.
        let (Some(r), Some(data), Some(read)) = (unsafe { r.as_mut() }, unsafe { data.as_mut() }, unsafe { read.as_mut() }) else {
            return Err(INVALID);
        };
        *read = 0;
        let bytes = r.get().get_data_pointer(max as usize).map_err(noted)?;
        *data = bytes.as_ptr().cast();
        *read = bytes.len() as u32;
        Ok(())
    })
}

/// `GetData`: copies up to `len` bytes into `buf` and advances; `*read` may be less than
/// `len` (loop). Errors as `rsl_checkpoint_reader_get_data_pointer`.
///
/// # Safety
/// `r` is NULL or a live reader; `buf` points to `len` writable bytes (or is NULL); `read` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_get_data(r: *mut rsl_checkpoint_reader, buf: *mut c_void, len: u32, read: *mut u32) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees each pointer is NULL or valid.
        let (Some(r), Some(read)) = (unsafe { r.as_mut() }, unsafe { read.as_mut() }) else { return Err(INVALID) };
        *read = 0;
        if buf.is_null() {
            return Err(INVALID);
        }
        // SAFETY: `buf` is non-NULL with `len` writable bytes, per the caller.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len as usize) };
        *read = r.get().get_data(out).map_err(noted)? as u32;
        Ok(())
    })
}

/// `Skip`: advances `len` bytes, verifying the blocks it passes. 38 past the end.
///
/// # Safety
/// `r` is NULL or a live reader.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_skip(r: *mut rsl_checkpoint_reader, len: u32) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees `r` is NULL or valid.
        let r = unsafe { r.as_mut() }.ok_or(INVALID)?;
        r.get().skip(len.into()).map_err(noted)
    })
}

/// `Seek`: moves to `offset` in the application data (every version). 87 beyond the end.
///
/// # Safety
/// `r` is NULL or a live reader.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_seek(r: *mut rsl_checkpoint_reader, offset: u64) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees `r` is NULL or valid.
        let r = unsafe { r.as_mut() }.ok_or(INVALID)?;
        r.get().seek(offset).map_err(noted)
    })
}

/// `Size`: bytes of application data (without header and block checksums); 0 for NULL.
///
/// # Safety
/// `r` is NULL or a live reader.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_size(r: *const rsl_checkpoint_reader) -> u64 {
    guard_value(0, || {
        // SAFETY: the caller guarantees `r` is NULL or valid; only read through a shared borrow.
        match unsafe { r.as_ref() } {
            Some(rsl_checkpoint_reader(Reader::Owned(r))) => r.size(),
            // SAFETY: as in `rsl_checkpoint_reader::get`.
            Some(rsl_checkpoint_reader(Reader::Borrowed(p))) => unsafe { p.as_ref() }.size(),
            None => 0,
        }
    })
}

/// `Init(file)`, for tools: opens a checkpoint file and checks its header and size. On success
/// `*out` is a reader the caller owns and frees with `rsl_checkpoint_reader_close`. Returns 87
/// for a NULL or empty argument, 23 for a bad header or size, 31 if the file cannot be read.
///
/// # Safety
/// `file` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_open(file: *const c_char, out: *mut *mut rsl_checkpoint_reader) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees `out` is NULL or writable.
        let out = unsafe { out.as_mut() }.ok_or(INVALID)?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees `file` is NULL or NUL-terminated.
        let reader = unsafe { open(file) }?;
        *out = Box::into_raw(Box::new(rsl_checkpoint_reader(Reader::Owned(Box::new(reader)))));
        Ok(())
    })
}

/// A checkpoint's header (RSL's internal `CheckpointHeader`), read from a file by
/// `rsl_checkpoint_header_read`: what `rsl_checkpoint_reader_open_with` checks a file against
/// and what `rsl_checkpoint_writer_create` gives a new file.
pub struct rsl_checkpoint_header(CheckpointHeader);

/// Reads the header of checkpoint `file` (checked as `rsl_checkpoint_reader_open` checks it).
/// On success `*out` is a header the caller frees with `rsl_checkpoint_header_free`. Errors as
/// `rsl_checkpoint_reader_open`.
///
/// # Safety
/// `file` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_header_read(file: *const c_char, out: *mut *mut rsl_checkpoint_header) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees `out` is NULL or writable.
        let out = unsafe { out.as_mut() }.ok_or(INVALID)?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees `file` is NULL or NUL-terminated.
        let reader = unsafe { open(file) }?;
        *out = Box::into_raw(Box::new(rsl_checkpoint_header(reader.header().clone())));
        Ok(())
    })
}

/// Frees a header from `rsl_checkpoint_header_read`; NULL is ignored.
///
/// # Safety
/// `h` is NULL or a header not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_header_free(h: *mut rsl_checkpoint_header) {
    if !h.is_null() {
        // SAFETY: headers come from `Box::into_raw` in `rsl_checkpoint_header_read`.
        drop(unsafe { Box::from_raw(h) });
    }
}

/// `Init(file, CheckpointHeader*)`: opens `file` as `rsl_checkpoint_reader_open` does, and
/// refuses it (23) unless its header is `header` (the same size, blocks, decree and
/// configuration). 87 for a NULL argument.
///
/// # Safety
/// As `rsl_checkpoint_reader_open`; `header` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_open_with(
    file: *const c_char,
    header: *const rsl_checkpoint_header,
    out: *mut *mut rsl_checkpoint_reader,
) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees each pointer is NULL or valid.
        let (Some(out), Some(header)) = (unsafe { out.as_mut() }, unsafe { header.as_ref() }) else { return Err(INVALID) };
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees `file` is NULL or NUL-terminated.
        let reader = unsafe { open(file) }?;
        if *reader.header() != header.0 {
            let why = format!("{}: not the checkpoint the header describes", reader.path().display());
            tracing::warn!("{why}");
            return Err(note(BAD_CHECKSUM, why));
        }
        *out = Box::into_raw(Box::new(rsl_checkpoint_reader(Reader::Owned(Box::new(reader)))));
        Ok(())
    })
}

/// Opens checkpoint `file`, its header and size checked.
///
/// # Safety
/// `file` is NULL or a NUL-terminated string.
unsafe fn open(file: *const c_char) -> Result<CheckpointReader, u32> {
    // SAFETY: forwarded from the caller.
    let file = unsafe { path(file) }.map_err(|_| INVALID)?;
    CheckpointReader::open(file).map_err(|e| {
        tracing::warn!("{e}");
        note(e.win32_code(), e)
    })
}

/// `RSLCheckpointStreamWriter::Init(file, CheckpointHeader*)`: creates `file` (which must not
/// exist) for a checkpoint with `header`'s fields; the application data is written with
/// `rsl_checkpoint_writer_write` and `rsl_checkpoint_writer_close` completes the file (its
/// size in the header, the last block's checksum, synced). On success `*out` is a writer the
/// caller owns. 87 for a NULL argument, an OS error code if the file cannot be created.
///
/// # Safety
/// `file` is NULL or NUL-terminated; `header` is NULL or a live header; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_writer_create(
    file: *const c_char,
    header: *const rsl_checkpoint_header,
    out: *mut *mut rsl_checkpoint_writer,
) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees each pointer is NULL or valid.
        let (Some(out), Some(header)) = (unsafe { out.as_mut() }, unsafe { header.as_ref() }) else { return Err(INVALID) };
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees `file` is NULL or NUL-terminated.
        let file = unsafe { path(file) }.map_err(|_| INVALID)?;
        let mut writer = Box::new(CheckpointWriter::create(file, CheckpointHeader { size: 0, ..header.0.clone() }).map_err(|e| {
            tracing::warn!("{e}");
            note(e.win32_code(), e)
        })?);
        let handle = rsl_checkpoint_writer { writer: NonNull::from(&mut *writer), owned: Some(writer), failed: false };
        *out = Box::into_raw(Box::new(handle));
        Ok(())
    })
}

/// `RSLCheckpointStreamWriter::Close`: completes a file from `rsl_checkpoint_writer_create`
/// and frees the writer. An error (an OS code; that of an earlier failed write too) leaves
/// the file incomplete. 87 for NULL or a writer handed to a callback (not freed then).
///
/// # Safety
/// `w` is NULL, a writer from `rsl_checkpoint_writer_create` not yet closed or freed, or the
/// writer of the current callback.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_writer_close(w: *mut rsl_checkpoint_writer) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees `w` is NULL or valid.
        if unsafe { w.as_ref() }.is_none_or(|w| w.owned.is_none()) {
            return Err(INVALID);
        }
        // SAFETY: owned writers come from `Box::into_raw` in `rsl_checkpoint_writer_create`.
        let handle = unsafe { Box::from_raw(w) };
        let writer = handle.owned.expect("checked above");
        writer.close().map(drop).map_err(|e| crate::fail(e.win32_code(), format_args!("checkpoint close failed: {e}")))
    })
}

/// Frees a writer from `rsl_checkpoint_writer_create` without completing its file (left
/// incomplete, as RSL leaves it). NULL, or a callback's writer, is ignored.
///
/// # Safety
/// As `rsl_checkpoint_writer_close`.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_writer_free(w: *mut rsl_checkpoint_writer) {
    guard_value((), || {
        // SAFETY: the caller guarantees `w` is NULL or valid.
        if unsafe { w.as_ref() }.is_some_and(|w| w.owned.is_some()) {
            // SAFETY: as in `rsl_checkpoint_writer_close`.
            drop(unsafe { Box::from_raw(w) });
        }
    })
}

/// Frees a reader from `rsl_checkpoint_reader_open`. NULL, or a reader handed to `load_state`
/// (which RSL owns), is ignored.
///
/// # Safety
/// `r` is NULL, a reader from `rsl_checkpoint_reader_open` not yet closed, or a `load_state` reader.
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_reader_close(r: *mut rsl_checkpoint_reader) {
    guard_value((), || {
        // SAFETY: the caller guarantees `r` is NULL or valid.
        if let Some(rsl_checkpoint_reader(Reader::Owned(_))) = unsafe { r.as_ref() } {
            // SAFETY: owned readers come from `Box::into_raw` in `rsl_checkpoint_reader_open`.
            drop(unsafe { Box::from_raw(r) });
        }
    })
}

/// `Write`: appends `len` bytes (copied). 87 for a NULL argument, 31 for an I/O error, after
/// which the checkpoint is abandoned.
///
/// # Safety
/// `w` is NULL or the writer of the current callback; `data` points to `len` bytes (or is NULL).
#[no_mangle]
pub unsafe extern "C" fn rsl_checkpoint_writer_write(w: *mut rsl_checkpoint_writer, data: *const c_void, len: u32) -> u32 {
    win32(|| {
        // SAFETY: the caller guarantees `w` is NULL or valid.
        let w = unsafe { w.as_mut() }.ok_or(INVALID)?;
        // SAFETY: the caller guarantees `data` holds `len` bytes.
        let data = unsafe { crate::types::slice(data.cast::<u8>(), len as usize) }.map_err(|_| INVALID)?;
        // SAFETY: as in `rsl_checkpoint_reader::get`: the writer outlives the callback.
        let result = unsafe { w.writer.as_mut() }.write(data);
        result.map_err(|e| {
            w.failed = true;
            crate::fail(e.win32_code(), format_args!("checkpoint write failed: {e}"))
        })
    })
}
