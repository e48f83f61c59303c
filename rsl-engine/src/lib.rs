//! The RSL engine: Azure RSL's multi-Paxos replicated state machine, rebuilt in Rust.
//!
//! [`format`](mod@format) owns every byte format RSL reads and writes; [`paxos`] is the sans-IO protocol core;
//! [`driver`] carries out its actions for both the [`runtime`] and the simulator (`sim`, behind
//! the feature of that name).

// They alone may use `unsafe`: the system calls std lacks (`writeback`, `diskspace`), mapped
// memory (`runtime::nvm::pmem`, the persistent log; `runtime::journal::map`, logs read at a
// restart; `runtime::ringbuf::shm`, shared-memory rings) and RDMA (`runtime::ringbuf::verbs`).
#![deny(unsafe_code)]
#![deny(missing_docs)]

/// `tracing`'s target for RSL's Alert severity, above Error: the log callbacks of the C API
/// report these entries as `CallBackLogLevel_Alert`.
pub const ALERT_TARGET: &str = "rsl_alert";

/// Logs at RSL's Alert severity (an error on [`ALERT_TARGET`]): a condition an operator must
/// see, such as a disk running out of room for checkpoints. Callers rate-limit it.
#[macro_export]
macro_rules! alert {
    ($($arg:tt)+) => { ::tracing::error!(target: $crate::ALERT_TARGET, $($arg)+) };
}

pub mod diskspace;

pub mod driver;
pub mod faults;
pub mod format;
pub mod paxos;
pub mod runtime;
/// Behind the `sim` feature (on by default): a library build leaves it out.
#[cfg(feature = "sim")]
pub mod sim;
pub mod writeback;

/// The original RSL's files, kept in the repository (`compat-tests/golden/`, see its README):
/// what the engine's own tests read to prove byte-for-byte parity.
#[cfg(test)]
pub(crate) fn golden_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../compat-tests/golden"))
}
