//! The C ABI over the engine (`include/rsl_ffi.h`, contract in `docs/c-abi.md`): status codes,
//! the boundary guard every entry point runs in, and `rsl_calculate_checksum`.
//!
//! Every `extern "C"` function checks its arguments and runs its body inside `guard`, so no
//! panic crosses into C. `unsafe` appears only where a C pointer is turned into a Rust
//! reference or a C function pointer is called.
#![allow(non_camel_case_types)]
#![deny(missing_docs)]

mod callbacks;
mod error;
mod log;
mod replica;
mod streams;
mod tls;
mod types;
mod utility;

pub use callbacks::*;
pub(crate) use error::{fail, note};
pub use error::{rsl_last_error, rsl_last_error_length, rsl_status_message};
pub use log::*;
pub use replica::*;
pub use streams::*;
pub use tls::*;
pub use types::*;
pub use utility::*;

use rsl_engine::runtime::ResponseCode;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of every call: 0..6 are RSL's `RSLResponseCode`, the negative values the ABI's own.
pub type rsl_status = i32;

/// `RSLSuccess`.
pub const RSL_SUCCESS: rsl_status = 0;
/// `RSLFastReadStale`.
pub const RSL_FAST_READ_STALE: rsl_status = 1;
/// `RSLNotPrimary`.
pub const RSL_NOT_PRIMARY: rsl_status = 2;
/// `RSLShuttingDown`; also any call on a replica after `rsl_replica_unload`.
pub const RSL_SHUTTING_DOWN: rsl_status = 3;
/// `RSLAlreadyBootstrapped`.
pub const RSL_ALREADY_BOOTSTRAPPED: rsl_status = 4;
/// `RSLBootstrapFailed`.
pub const RSL_BOOTSTRAP_FAILED: rsl_status = 5;
/// `RSLInvalidParameter`: a value out of range (empty request, bad member id, cookie too long...).
pub const RSL_INVALID_PARAMETER: rsl_status = 6;
/// A required pointer is NULL.
pub const RSL_E_NULL: rsl_status = -1;
/// The call is not valid in the handle's state.
pub const RSL_E_STATE: rsl_status = -2;
/// A configuration value out of range (message logged).
pub const RSL_E_CONFIG: rsl_status = -3;
/// A storage or network error (message logged).
pub const RSL_E_IO: rsl_status = -4;
/// An output buffer is too small; the needed size is reported.
pub const RSL_E_BUFFER: rsl_status = -5;
/// An internal error was caught at the boundary.
pub const RSL_E_PANIC: rsl_status = -6;

/// Runs an entry point's body: its error becomes the status, a panic becomes `RSL_E_PANIC`;
/// either way the outcome is what `rsl_last_error` reports on this thread.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), rsl_status>) -> rsl_status {
    let described = |status: &rsl_status| error::describe(*status).to_string_lossy().into_owned();
    reporting(body, RSL_E_PANIC, described).err().unwrap_or(RSL_SUCCESS)
}

/// Like [`guard`] for the setters that answer false for a bad argument
/// (`RSL_INVALID_PARAMETER` to `rsl_last_error`).
pub(crate) fn guard_flag(body: impl FnOnce() -> bool) -> bool {
    guard(|| if body() { Ok(()) } else { Err(RSL_INVALID_PARAMETER) }) == RSL_SUCCESS
}

/// Runs an entry point's body in its own cause slot, `on_panic` for a panic, and publishes
/// the outcome to `rsl_last_error`: empty for success, else `what` the error is, then the
/// cause the body recorded.
pub(crate) fn reporting<E>(body: impl FnOnce() -> Result<(), E>, on_panic: E, what: impl Fn(&E) -> String) -> Result<(), E> {
    let (outcome, cause) = error::with_cause_slot(|| catch_unwind(AssertUnwindSafe(body)));
    let (outcome, cause) = match outcome {
        Ok(outcome) => (outcome, cause),
        Err(panic) => (Err(on_panic), Some(error::panic_cause(&*panic))),
    };
    error::publish(outcome.as_ref().err().map(&what), cause);
    outcome
}

/// Like [`guard`] for entry points that return a value: `fallback` on a panic.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The runtime's response code as a status.
pub(crate) fn status(code: ResponseCode) -> Result<(), rsl_status> {
    match code {
        ResponseCode::Success => Ok(()),
        other => Err(other as rsl_status),
    }
}

/// `RSLUtils::CalculateChecksum`: the RSL checksum (64-bit Rabin fingerprint) of `size` bytes
/// at `blob`, bit for bit the original's. Returns 0 if `blob` is NULL while `size` is not 0.
///
/// # Safety
/// `blob` must point to `size` readable bytes (or be NULL when `size` is 0).
#[no_mangle]
pub unsafe extern "C" fn rsl_calculate_checksum(blob: *const c_void, size: usize) -> u64 {
    guard_value(0, || {
        // SAFETY: the caller guarantees `blob` points to `size` readable bytes; NULL is checked.
        match unsafe { types::slice(blob.cast::<u8>(), size) } {
            Ok(data) => rsl_engine::format::checksum::checksum(data),
            Err(_) => 0,
        }
    })
}
