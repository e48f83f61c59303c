//! What a C caller can read about a failure: a fixed description of each status
//! (`rsl_status_message`) and the cause of this thread's last failed call (`rsl_last_error`).
//!
//! An entry point that knows why it failed records the cause with [`fail`] or [`note`];
//! [`crate::reporting`] (under `guard`) gives each call its own slot for it (a callback may
//! call the ABI inside a call) and, when the call returns, publishes the outcome for
//! `rsl_last_error`.

use crate::*;
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::fmt::Display;

thread_local! {
    /// The cause recorded by the entry point running on this thread, if any.
    static CAUSE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// What `rsl_last_error` returns: empty after a success.
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `cause` as why the running entry point fails, and logs it; returns `status`.
pub(crate) fn fail<S>(status: S, cause: impl Display) -> S {
    let cause = cause.to_string();
    tracing::error!("{cause}");
    CAUSE.with_borrow_mut(|c| *c = Some(cause));
    status
}

/// Records `cause` as why the running entry point fails, without logging it (a bad argument
/// is the caller's to report; or the caller logs it at its own level); returns `status`.
pub(crate) fn note<S>(status: S, cause: impl Display) -> S {
    CAUSE.with_borrow_mut(|c| *c = Some(cause.to_string()));
    status
}

/// Runs an entry point's body with a fresh cause slot, restoring the caller's afterwards (the
/// body may run callbacks that call the ABI); returns the outcome and the body's cause.
pub(crate) fn with_cause_slot<T>(body: impl FnOnce() -> T) -> (T, Option<String>) {
    let outer = CAUSE.take();
    let out = body();
    (out, CAUSE.replace(outer))
}

/// Publishes a finished call's outcome: empty for success (no allocation when it already
/// is: the checkpoint streams publish once per read), else what failed, then the cause.
pub(crate) fn publish(failed: Option<String>, cause: Option<String>) {
    let Some(what) = failed else {
        LAST.with_borrow_mut(|last| {
            if !last.is_empty() {
                *last = CString::default();
            }
        });
        return;
    };
    let text = match cause {
        None => what,
        Some(cause) => format!("{what}: {cause}"),
    };
    // A cause may quote bytes from a file or a caller: an interior NUL would end the C string.
    let text = CString::new(text.replace('\0', "\\0")).unwrap_or_default();
    LAST.with_borrow_mut(|last| *last = text);
}

/// A panic's message, as the cause of `RSL_E_PANIC`.
pub(crate) fn panic_cause(payload: &(dyn Any + Send)) -> String {
    let what = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    format!("panic: {}", what.unwrap_or("(no message)"))
}

/// The fixed description of a status.
pub(crate) fn describe(code: rsl_status) -> &'static CStr {
    match code {
        RSL_SUCCESS => c"success",
        RSL_FAST_READ_STALE => c"fast read stale: the replica's state is older than the sequence number asked for",
        RSL_NOT_PRIMARY => c"not primary: only the primary accepts this request",
        RSL_SHUTTING_DOWN => c"shutting down: the replica is stopping or was unloaded",
        RSL_ALREADY_BOOTSTRAPPED => c"already bootstrapped: the replica has a member set",
        RSL_BOOTSTRAP_FAILED => c"bootstrap failed: no primary was elected in time",
        RSL_INVALID_PARAMETER => c"invalid parameter: a value is out of range",
        RSL_E_NULL => c"a required pointer is NULL",
        RSL_E_STATE => c"the call is not valid in the handle's state",
        RSL_E_CONFIG => c"a configuration value is out of range or unusable",
        RSL_E_IO => c"storage or network error",
        RSL_E_BUFFER => c"an output buffer is too small",
        RSL_E_PANIC => c"internal error",
        _ => c"unknown status",
    }
}

/// A fixed, NUL-terminated description of `code` (any `rsl_status`; "unknown status" for a
/// value the ABI does not define). The string is static: never free it.
#[no_mangle]
pub extern "C" fn rsl_status_message(code: rsl_status) -> *const c_char {
    describe(code).as_ptr()
}

/// Why the last call on this thread that can fail failed: what its result means, then, when
/// known, the cause, e.g. `storage or network error: /srv/rsl/1: Permission denied (os error
/// 13)`, the field and range of a configuration value, or the file and offset of a bad log
/// record. The empty string after a call that succeeded, and before any call. The calls that
/// can fail set it: those returning an `rsl_status`, the TLS setters returning `bool`, and the
/// checkpoint stream calls returning a Win32 code. The others (queries, frees,
/// `rsl_status_message`, this one) leave it as it is. Each thread has its own. The pointer is
/// valid until the next call on this thread that sets it, or the thread's exit; never free it.
/// Never NULL.
#[no_mangle]
pub extern "C" fn rsl_last_error() -> *const c_char {
    LAST.with_borrow(|last| last.as_ptr())
}

/// The length in bytes of `rsl_last_error()`, without the NUL.
#[no_mangle]
pub extern "C" fn rsl_last_error_length() -> usize {
    LAST.with_borrow(|last| last.as_bytes().len())
}
