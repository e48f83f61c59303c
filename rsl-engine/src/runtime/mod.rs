//! The runtime: drives the sans-IO core against real disks, sockets and threads, and the Rust
//! API a service is written against ([`RslReplica`], [`StateMachine`]).
//!
//! Per replica: a protocol thread (`ring`) owns the core and the journal; an execute thread
//! (`exec`) owns the state machine, which `num_reader_threads` reader threads (`readers`)
//! share for fast reads; the journal's writer thread does group commit; a small
//! tokio runtime runs the Paxos-port transport and the learn port; for a service that resolves
//! its members' addresses, a resolver thread (`resolve`) asks it where they are. Nothing is
//! global, so a process can run many rings.

pub mod api;
pub mod checkpoints;
pub mod config;
mod event;
mod exec;
pub mod health;
pub mod journal;
pub mod learn;
pub mod metrics;
mod net;
#[cfg(target_os = "linux")]
pub mod nvm;
mod queue;
mod readers;
mod replica;
mod resolve;
mod restore;
mod ring;
pub mod ringbuf;
#[cfg(target_os = "linux")]
pub mod shm_link;
mod spill;
pub mod tls;
pub mod transport;
mod view;

pub use api::{Admission, AdmitAll, InitError, ReplicaHealth, ResponseCode, StateMachine, Stats};
pub use config::{CatchUp, ConfigError, NvmJournal, PaxosTransport, RslConfig};
pub use health::Timed;
pub use journal::JournalGroup;
pub use net::NetworkGroup;
pub use nvm::Persistence;
pub use replica::RslReplica;
pub use view::ReplicaView;

use crate::format::ConfigInfo;
use crate::format::MemberId;
use crate::paxos::Role;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

/// A byte range of a file, `[start, end)`: what the learn port streams for a FetchVotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRange {
    /// The file.
    pub path: PathBuf,
    /// The first byte to send.
    pub start: u64,
    /// One past the last byte to send.
    pub end: u64,
}

/// Why a data directory could not be listed.
pub(crate) enum ListError {
    Io(std::io::Error),
    /// A file with the extension whose name is not `<decimal>.<ext>` (RSL refuses to start).
    BadName(PathBuf),
}

/// The `<n>.<ext>` files of `dir` (logs, checkpoints), by number.
pub(crate) fn numbered_files(dir: &std::path::Path, ext: &str) -> Result<Vec<(u64, PathBuf)>, ListError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ListError::Io)? {
        let path = entry.map_err(ListError::Io)?.path();
        // Lossy, so that a name that is not UTF-8 is reported rather than skipped.
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let Some(stem) = name.strip_suffix(ext).and_then(|s| s.strip_suffix('.')) else { continue };
        match stem.parse::<u64>() {
            Ok(n) if stem.bytes().all(|b| b.is_ascii_digit()) => files.push((n, path)),
            _ => return Err(ListError::BadName(path)),
        }
    }
    files.sort();
    Ok(files)
}

/// What the API reads without a round trip to the protocol thread.
pub(crate) struct Shared {
    pub is_primary: AtomicBool,
    /// Held shared by a submission from its `is_primary` check to its offer, and exclusively
    /// by the protocol thread clearing `is_primary` on a step-down: from then on every request
    /// taken is counted in `submits_offered`, and none more is taken.
    pub submit_gate: RwLock<()>,
    /// Requests the API has queued for the protocol thread (`Event::Submit`).
    pub submits_offered: AtomicU64,
    pub shutting_down: AtomicBool,
    /// The last executed decree (set before its requests run).
    pub current_seq: AtomicU64,
    /// The highest decree handed out to execute.
    pub passed_seq: AtomicU64,
    pub saving: AtomicBool,
    pub allow_save: AtomicBool,
    /// The core's queued request bytes (`Replica::queued_bytes`), as last published.
    pub queued_bytes: AtomicU64,
    /// The execute queue's size ([`spill`]).
    pub exec_queue: spill::ExecGauge,
    /// Totals since the start (the metrics read them as they are).
    pub stats: Counters,
    /// `stats` at the last statistics snapshot, which reports the difference.
    pub stats_reported: Counters,
    /// The timed `RSLStats` families: log reads (refills of the execute queue, files served to
    /// learners), log writes (the journal's), and the primary's voting time.
    pub log_reads: health::Timing,
    pub log_writes: Arc<health::Timing>,
    pub voting: health::Timing,
    pub vote_timer: health::VoteTimer,
    /// Published by the protocol thread for `ReplicaHealth`.
    pub votes_seen: Mutex<health::VotesSeen>,
    /// When the last statistics snapshot was taken (or the replica started).
    pub last_snapshot: Mutex<std::time::Instant>,
    pub view: Mutex<View>,
    /// Why the replica stopped on its own (a panicked thread, an I/O error); the first reason.
    pub failure: OnceLock<String>,
    /// The decree of the checkpoint copied from a peer that the replica stopped to load on
    /// its restart (`CatchUp::Restart`).
    pub restart_to_catch_up: OnceLock<u64>,
}

/// The protocol thread's latest published state.
#[derive(Default)]
pub(crate) struct View {
    pub primary: Option<MemberId>,
    pub role: Option<Role>,
    pub config: ConfigInfo,
    /// The highest ballot promised (as handed to the journal, durable or soon to be). A
    /// checkpoint the execute thread takes records at least this: a promise logged in a file
    /// older than the one a restart replays from would otherwise be forgotten.
    pub promise: crate::format::Ballot,
}

/// Counters that only grow; a statistics snapshot reports the growth since the previous one.
#[derive(Default)]
pub(crate) struct Counters {
    pub decrees_executed: AtomicU64,
    pub requests_executed: AtomicU64,
    pub votes_logged: AtomicU64,
    /// The journal's fdatasync count, as last published (not reset by snapshots).
    pub log_syncs: AtomicU64,
    pub fast_reads: AtomicU64,
    pub checkpoints_saved: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub requests_refused: AtomicU64,
}

impl Shared {
    /// A replica's state before its restore: the restore moves it (see [`restore`]).
    fn new() -> Shared {
        Shared {
            is_primary: AtomicBool::new(false),
            submit_gate: RwLock::new(()),
            submits_offered: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            current_seq: AtomicU64::new(0),
            passed_seq: AtomicU64::new(0),
            saving: AtomicBool::new(false),
            allow_save: AtomicBool::new(true),
            queued_bytes: AtomicU64::new(0),
            exec_queue: spill::ExecGauge::default(),
            stats: Counters::default(),
            stats_reported: Counters::default(),
            log_reads: health::Timing::default(),
            log_writes: Arc::default(),
            voting: health::Timing::default(),
            vote_timer: health::VoteTimer::default(),
            votes_seen: Mutex::default(),
            last_snapshot: Mutex::new(std::time::Instant::now()),
            view: Mutex::new(View::default()),
            failure: OnceLock::new(),
            restart_to_catch_up: OnceLock::new(),
        }
    }

    /// The published view. Its writers never panic while holding it, but should one, the view
    /// stays readable: a failed replica still answers `configuration()`.
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the replica failed: every later call is refused (`ShuttingDown`). The first reason
    /// is kept; the caller makes the threads stop.
    pub fn fail(&self, reason: String) {
        self.shutting_down.store(true, Relaxed);
        self.is_primary.store(false, Relaxed);
        match self.failure.set(reason) {
            Ok(()) => tracing::error!(reason = %self.failure.get().expect("just set"), "replica failed: stopping"),
            Err(later) => tracing::debug!(reason = %later, "replica already failed"),
        }
    }
}

/// The text of a panic's payload (a `&str` or `String` message, as `panic!` makes).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("(no message)")
}

thread_local! {
    /// The span a runtime's worker thread runs in (see [`in_current_span`]).
    static THREAD_SPAN: std::cell::RefCell<Option<tracing::span::EnteredSpan>> = const { std::cell::RefCell::new(None) };
}

/// Makes every thread of a tokio runtime run inside the current span (a replica's `ring` and
/// `member`), so that the lines its tasks log carry them.
pub(crate) fn in_current_span(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    let span = tracing::Span::current();
    builder
        .on_thread_start(move || THREAD_SPAN.with(|s| *s.borrow_mut() = Some(span.clone().entered())))
        .on_thread_stop(|| THREAD_SPAN.with(|s| drop(s.borrow_mut().take())))
}
