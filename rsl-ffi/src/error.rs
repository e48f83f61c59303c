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

/// The longest cause kept, in bytes: a cause may quote a file's or a caller's bytes.
const CAUSE_LIMIT: usize = 4096;

thread_local! {
    /// The cause recorded by the entry point running on this thread, if any.
    static CAUSE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// What `rsl_last_error` returns: empty after a success.
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `cause` as why the running entry point fails, and logs it; returns `status`.
pub(crate) fn fail<S>(status: S, cause: impl Display) -> S {
    let cause = capped(cause.to_string());
    tracing::error!("{cause}");
    record(cause);
    status
}

/// Records `cause` as why the running entry point fails, without logging it (a bad argument
/// is the caller's to report; or the caller logs it at its own level); returns `status`.
pub(crate) fn note<S>(status: S, cause: impl Display) -> S {
    record(capped(cause.to_string()));
    status
}

/// Keeps `cause` for the running entry point. A call made while the thread's storage is being
/// torn down (from a thread-local destructor) keeps nothing rather than abort the process.
fn record(cause: String) {
    let _ = CAUSE.try_with(|c| *c.borrow_mut() = Some(cause));
}

/// `text` cut to [`CAUSE_LIMIT`] bytes on a character boundary.
fn capped(mut text: String) -> String {
    if text.len() > CAUSE_LIMIT {
        let end = (0..=CAUSE_LIMIT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Runs an entry point's body with a fresh cause slot, restoring the caller's afterwards (the
/// body may run callbacks that call the ABI); returns the outcome and the body's cause.
pub(crate) fn with_cause_slot<T>(body: impl FnOnce() -> T) -> (T, Option<String>) {
    let outer = CAUSE.try_with(|c| c.take()).ok().flatten();
    let out = body();
    (out, CAUSE.try_with(|c| c.replace(outer)).ok().flatten())
}

/// Publishes a finished call's outcome: empty for success (no allocation when it already
/// is: the checkpoint streams publish once per read), else what failed, then the cause.
pub(crate) fn publish(failed: Option<String>, cause: Option<String>) {
    let Some(what) = failed else {
        let _ = LAST.try_with(|last| {
            if !last.borrow().is_empty() {
                *last.borrow_mut() = CString::default();
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
    let _ = LAST.try_with(|last| *last.borrow_mut() = text);
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
    // After the thread's storage is gone (a thread-local destructor): a static empty string.
    LAST.try_with(|last| last.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

/// The length in bytes of `rsl_last_error()`, without the NUL.
#[no_mangle]
pub extern "C" fn rsl_last_error_length() -> usize {
    LAST.try_with(|last| last.borrow().as_bytes().len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_cause_is_cut_on_a_character_boundary() {
        let long = "é".repeat(CAUSE_LIMIT); // two bytes each
        let cut = capped(long);
        assert!(cut.len() <= CAUSE_LIMIT + 3 && cut.ends_with("..."), "{}", cut.len());
        assert!(cut.trim_end_matches("...").chars().all(|c| c == 'é'));
        assert_eq!(capped("short".into()), "short");
    }
}
