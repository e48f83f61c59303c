//! The replica handle (`rsl_replica`, over `RslReplica`): start-up, requests, reads,
//! membership, health, unload and destroy; and the read-only `rsl_replay`.

use crate::callbacks::{cookie_in, handle_of_callback, in_callback_of, new_token, rsl_callbacks, Callbacks};
use crate::types::*;
use crate::*;
use bytes::Bytes;
use rsl_engine::format::{MemberId, Version};
use rsl_engine::paxos::Role;
use rsl_engine::runtime::{InitError, ReplicaView, RslReplica, StateMachine};
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A running replica; stays valid after `rsl_replica_unload` until `rsl_replica_destroy`.
/// It exists from before the first callback of `rsl_replica_initialize` (so that restore-time
/// callbacks can query it); the replica behind it is there once the restore is done.
pub struct rsl_replica {
    replica: OnceLock<RslReplica>,
    /// What the query calls read: attached before `load_state`, so they answer during the
    /// restore as they do live.
    view: Arc<OnceLock<ReplicaView>>,
    token: u64,
    unloaded: AtomicBool,
}

impl rsl_replica {
    /// The started replica: `RSL_E_STATE` while `rsl_replica_initialize` restores.
    fn started(&self) -> Result<&RslReplica, rsl_status> {
        self.replica.get().ok_or(RSL_E_STATE)
    }

    /// The query view (attached before any callback, so always there once a callback runs).
    fn view(&self) -> Option<&ReplicaView> {
        self.view.get()
    }
}

/// The handle behind `r`: `RSL_E_NULL` for NULL, `RSL_SHUTTING_DOWN` once unloaded.
///
/// # Safety
/// `r` is NULL or a handle from `rsl_replica_initialize` not yet destroyed.
unsafe fn live<'a>(r: *const rsl_replica) -> Result<&'a rsl_replica, rsl_status> {
    // SAFETY: forwarded from the caller.
    let r = unsafe { r.as_ref() }.ok_or(RSL_E_NULL)?;
    if r.unloaded.load(SeqCst) {
        return Err(RSL_SHUTTING_DOWN);
    }
    Ok(r)
}

fn version(v: u32) -> Result<Version, rsl_status> {
    u16::try_from(v)
        .ok()
        .and_then(Version::new)
        .ok_or_else(|| note(RSL_INVALID_PARAMETER, format_args!("protocol version {v} is not one RSL defines")))
}

fn init_error(e: InitError) -> rsl_status {
    let status = match e {
        InitError::Config(_) | InitError::Tls(_) => RSL_E_CONFIG,
        InitError::Invalid(_) => RSL_INVALID_PARAMETER,
        InitError::Storage(_) | InitError::Listen { .. } | InitError::NoState | InitError::Replay { .. } => RSL_E_IO,
    };
    fail(status, e)
}

/// The configuration, checked (`RSL_E_CONFIG`, logged).
fn config(cfg: &rsl_config) -> Result<rsl_engine::runtime::RslConfig, rsl_status> {
    let cfg = config_from_c(cfg)?;
    cfg.validate().map_err(|e| fail(RSL_E_CONFIG, e))?;
    Ok(cfg)
}

/// `RSLStateMachine::Initialize`: restores the state (`load_state`, then the logged decrees,
/// executed on this thread), then starts the replica's threads and listens on `self_node`'s ports.
/// `members`/`member_count` is the legacy initial member list; NULL and 0 is the v4+ form
/// (the replica waits for `rsl_replica_bootstrap` unless it was bootstrapped before).
/// `serialize_fast_reads_with_replicates` is accepted and behaves as `true`: fast reads run on
/// `num_reader_threads` reader threads under the Shared side of the callback lock, concurrently
/// with each other and with `save_state`, never with a decree executing. TLS is on if
/// `rsl_set_thumbprints_for_ssl`, `rsl_set_subject_names_for_ssl` or `rsl_set_tls_files` was
/// called before (certificates and keys are read now).
///
/// Everything passed in is copied; `callbacks->context` must stay valid until
/// `rsl_replica_destroy`. `*out` is set to the new handle before the first callback, so that
/// `load_state` and the restore-time executions can query the replica through it, on the
/// calling thread: `rsl_replica_current_sequence_number`, `_highest_passed_sequence_number`,
/// `_get_configuration`, `_get_current_primary` and `_is_primary` answer as a replica that
/// never restarted would at that point (inside `load_state`, the checkpoint's decree and
/// configuration); every other call returns `RSL_E_STATE` until this returns. On success
/// `*out` is a handle the caller frees with `rsl_replica_destroy`; on failure it is freed and
/// `*out` is NULL again.
///
/// Errors: `RSL_E_NULL` (a NULL pointer or required callback), `RSL_INVALID_PARAMETER` (bad
/// node, member list or version), `RSL_E_CONFIG` (a value out of range or a TLS setting that
/// cannot be used, logged), `RSL_E_IO`
/// (storage, port in use, no loadable state; logged).
///
/// # Safety
/// Pointers are NULL or valid; `members` points to `member_count` nodes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rsl_replica_initialize(
    cfg: *const rsl_config,
    self_node: *const rsl_node,
    version: u32,
    serialize_fast_reads_with_replicates: bool,
    callbacks: *const rsl_callbacks,
    members: *const rsl_node,
    member_count: usize,
    out: *mut *mut rsl_replica,
) -> rsl_status {
    let _ = serialize_fast_reads_with_replicates;
    guard(|| {
        // SAFETY: the caller guarantees each pointer is NULL or valid.
        let (Some(cfg), Some(me), Some(callbacks), Some(out)) =
            (unsafe { cfg.as_ref() }, unsafe { self_node.as_ref() }, unsafe { callbacks.as_ref() }, unsafe { out.as_mut() })
        else {
            return Err(note(RSL_E_NULL, "rsl_replica_initialize: cfg, self_node, callbacks and out must not be NULL"));
        };
        *out = std::ptr::null_mut();
        let (mut cfg, me, version) = (config(cfg)?, node_from_c(me)?, self::version(version)?);
        cfg.tls = crate::tls::settings().map_err(|e| fail(RSL_E_CONFIG, e))?;
        let members = match (members.is_null(), member_count) {
            (true, 0) => None,
            // SAFETY: `members` holds `member_count` nodes, per the caller.
            _ => Some(unsafe { member_set(members, member_count, std::ptr::null(), 0) }?),
        };
        let token = new_token();
        let view = Arc::new(OnceLock::new());
        let address = Arc::new(AtomicUsize::new(0));
        let sm = Box::new(Callbacks::new(callbacks, token)?.with_view(view.clone()).with_handle(address.clone()));
        let admission = Arc::new(Callbacks::new(callbacks, token)?.with_view(view.clone()).with_handle(address.clone()));
        // Published before the first callback: restore-time callbacks query the replica through it.
        let handle = Box::into_raw(Box::new(rsl_replica { replica: OnceLock::new(), view, token, unloaded: AtomicBool::new(false) }));
        address.store(handle.expose_provenance(), Relaxed);
        *out = handle;
        let started = catch_unwind(AssertUnwindSafe(|| RslReplica::initialize(cfg, me, version, sm, admission, members)));
        match started {
            Ok(Ok(replica)) => {
                // SAFETY: `handle` is the box made above; nothing frees it before this returns.
                let set = unsafe { &*handle }.replica.set(replica);
                assert!(set.is_ok(), "the replica is set once");
                Ok(())
            }
            failed => {
                *out = std::ptr::null_mut();
                // SAFETY: `handle` came from `Box::into_raw` above and the failed start dropped
                // everything that could refer to it (its callbacks ran on this thread).
                drop(unsafe { Box::from_raw(handle) });
                match failed {
                    Ok(Err(e)) => Err(init_error(e)),
                    Err(panic) => resume_unwind(panic),
                    Ok(Ok(_)) => unreachable!("handled above"),
                }
            }
        }
    })
}

/// `ReplicateRequest`: proposes `len` bytes (copied; 1 or more). On `RSL_SUCCESS`, `cookie`
/// comes back exactly once, through `execute_replicated_request` on this replica or
/// `abort_request`; otherwise the caller keeps it. Errors: `RSL_NOT_PRIMARY`,
/// `RSL_SHUTTING_DOWN`, `RSL_INVALID_PARAMETER` (empty request), `RSL_E_NULL`.
///
/// # Safety
/// `r` is NULL or a live handle; `request` points to `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_replicate_request(
    r: *mut rsl_replica,
    request: *const c_void,
    len: usize,
    cookie: *mut c_void,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, request) = unsafe { (live(r)?, slice(request.cast::<u8>(), len)?) };
        status(r.started()?.replicate_request(Bytes::copy_from_slice(request), cookie_in(cookie)))
    })
}

/// `ReplicateRequestExclusiveVote`: like `rsl_replica_replicate_request`, with a vote of its
/// own. With `is_last_decree`, every later request is refused with `RSL_SHUTTING_DOWN`.
///
/// # Safety
/// As `rsl_replica_replicate_request`.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_replicate_request_exclusive_vote(
    r: *mut rsl_replica,
    request: *const c_void,
    len: usize,
    cookie: *mut c_void,
    is_last_decree: bool,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, request) = unsafe { (live(r)?, slice(request.cast::<u8>(), len)?) };
        status(r.started()?.replicate_request_exclusive_vote(Bytes::copy_from_slice(request), cookie_in(cookie), is_last_decree))
    })
}

/// `FastReadRequest`: runs `execute_fast_read_request` on this replica once its state reaches
/// `max_seen_seq_no`, waiting up to `timeout_ms`. On `RSL_SUCCESS` the cookie comes back once,
/// through `execute_fast_read_request` or `abort_request` (`RSL_FAST_READ_STALE`,
/// `RSL_SHUTTING_DOWN`); otherwise (`RSL_FAST_READ_STALE`, `RSL_SHUTTING_DOWN`, `RSL_E_NULL`)
/// the caller keeps it. The request is copied.
///
/// # Safety
/// As `rsl_replica_replicate_request`.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_fast_read_request(
    r: *mut rsl_replica,
    max_seen_seq_no: u64,
    request: *const c_void,
    len: usize,
    cookie: *mut c_void,
    timeout_ms: u32,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, request) = unsafe { (live(r)?, slice(request.cast::<u8>(), len)?) };
        let timeout = Duration::from_millis(timeout_ms.into());
        status(r.started()?.fast_read_request(max_seen_seq_no, Bytes::copy_from_slice(request), cookie_in(cookie), timeout))
    })
}

/// `GetCurrentSequenceNumber`: the last executed decree; 0 for NULL (still valid after unload).
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_current_sequence_number(r: *const rsl_replica) -> u64 {
    // SAFETY: the caller guarantees `r` is NULL or valid.
    guard_value(0, || unsafe { r.as_ref() }.and_then(rsl_replica::view).map_or(0, ReplicaView::current_sequence_number))
}

/// `GetHighestPassedSequenceNumber`: the highest decree known chosen; 0 for NULL.
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_highest_passed_sequence_number(r: *const rsl_replica) -> u64 {
    // SAFETY: the caller guarantees `r` is NULL or valid.
    guard_value(0, || unsafe { r.as_ref() }.and_then(rsl_replica::view).map_or(0, ReplicaView::highest_passed_sequence_number))
}

/// `GetConfiguration`: copies the current members into `members` (an array of `capacity`),
/// sets `*count` to how many there are, `*config_number` (may be NULL) to the configuration
/// number, and, if `cookie_len` is not NULL, the member set's cookie into `set_cookie`
/// (`*cookie_len`: capacity in, length out). `RSL_E_BUFFER` if either does not fit (the sizes
/// are still reported). `RSL_E_NULL` if `count` is NULL.
///
/// # Safety
/// `r` is NULL or a live handle; the out pointers are NULL or hold their stated capacity.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_get_configuration(
    r: *mut rsl_replica,
    members: *mut rsl_node,
    capacity: usize,
    count: *mut usize,
    config_number: *mut u32,
    set_cookie: *mut c_void,
    cookie_len: *mut u32,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let view = unsafe { live(r) }?.view().ok_or(RSL_E_STATE)?;
        let (set, number) = view.configuration();
        // SAFETY: forwarded from the caller.
        if let Some(n) = unsafe { config_number.as_mut() } {
            *n = number;
        }
        // SAFETY: forwarded from the caller.
        let (nodes, cookie) =
            unsafe { (write_array(&set.nodes, node_to_c, members, capacity, count), write_cookie(&set.cookie, set_cookie, cookie_len)) };
        nodes.and(cookie)
    })
}

/// `ChangeConfiguration` (primary only): proposes the member set (copied). On `RSL_SUCCESS`
/// `cookie` comes back through `notify_configuration_changed` or `abort_change_configuration`.
/// Errors: `RSL_NOT_PRIMARY`, `RSL_SHUTTING_DOWN`, `RSL_INVALID_PARAMETER` (empty or bad set,
/// cookie over 8192 bytes), `RSL_E_NULL`.
///
/// # Safety
/// `r` is NULL or a live handle; `members` holds `count` nodes, `set_cookie` `cookie_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_change_configuration(
    r: *mut rsl_replica,
    members: *const rsl_node,
    count: usize,
    set_cookie: *const c_void,
    cookie_len: u32,
    cookie: *mut c_void,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, set) = unsafe { (live(r)?, member_set(members, count, set_cookie, cookie_len)?) };
        status(r.started()?.change_configuration(set, cookie_in(cookie)))
    })
}

/// `Bootstrap` (v4+): gives a replica started without members its first member set (copied),
/// then blocks, as RSL does, until this replica has accepted a vote of an elected primary
/// (it knows a primary), or `timeout_sec` has passed: `RSL_BOOTSTRAP_FAILED` then (the member
/// set stays taken; the ring may still form later). Errors: `RSL_ALREADY_BOOTSTRAPPED`,
/// `RSL_BOOTSTRAP_FAILED`, `RSL_INVALID_PARAMETER`, `RSL_SHUTTING_DOWN`, `RSL_E_NULL`.
///
/// # Safety
/// As `rsl_replica_change_configuration`.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_bootstrap(
    r: *mut rsl_replica,
    members: *const rsl_node,
    count: usize,
    set_cookie: *const c_void,
    cookie_len: u32,
    timeout_sec: u32,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, set) = unsafe { (live(r)?, member_set(members, count, set_cookie, cookie_len)?) };
        let deadline = Instant::now() + Duration::from_secs(timeout_sec.into());
        status(r.started()?.bootstrap(set))?;
        while r.view().is_none_or(|v| v.current_primary().is_none()) {
            if r.unloaded.load(SeqCst) {
                return Err(RSL_SHUTTING_DOWN);
            }
            if Instant::now() >= deadline {
                return Err(note(RSL_BOOTSTRAP_FAILED, format_args!("no primary known after {timeout_sec} s")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })
}

/// `ChangeElectionDelay`: replaces the configured election delay (randomised again as
/// configured), used from the next time an election timer is set; not persisted.
/// Errors: `RSL_E_NULL`, `RSL_E_STATE` before the replica has started, `RSL_SHUTTING_DOWN`.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_change_election_delay(r: *mut rsl_replica, delay_sec: u32) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, |r| r.change_election_delay(Duration::from_secs(delay_sec.into()))) }
}

/// `Pause` (a test hook): the replica's protocol thread freezes once it reaches this call (no
/// timers, no messages handled; peers' messages past its queue's bound are dropped) until
/// `rsl_replica_resume` or unload. Decrees already chosen still execute. Errors: `RSL_E_NULL`,
/// `RSL_E_STATE` before the replica has started, `RSL_SHUTTING_DOWN`.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_pause(r: *mut rsl_replica) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, RslReplica::pause) }
}

/// `Resume`: ends `rsl_replica_pause`; nothing if not paused. Errors as `rsl_replica_pause`.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_resume(r: *mut rsl_replica) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, RslReplica::resume) }
}

/// `IsInStableState`: true while this replica is primary or secondary of an elected primary
/// (RSL's StablePrimary and StableSecondary); false while it initializes, stands for election,
/// waits to be bootstrapped or restores, and for NULL or after unload.
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_is_in_stable_state(r: *const rsl_replica) -> bool {
    guard_value(false, || {
        // SAFETY: forwarded from the caller.
        let role = unsafe { live(r) }.ok().and_then(|r| r.started().ok()?.role());
        matches!(role, Some(Role::Primary | Role::Secondary))
    })
}

/// `GetCurrentPrimary`: the primary as this replica last heard (a hint), from the current
/// configuration; `out->member_id` is empty if unknown.
///
/// # Safety
/// `r` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_get_current_primary(r: *mut rsl_replica, out: *mut rsl_node) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, out) = unsafe { (live(r)?, out.as_mut().ok_or(RSL_E_NULL)?) };
        *out = empty_node();
        let view = r.view().ok_or(RSL_E_STATE)?;
        if let Some(id) = view.current_primary() {
            let (set, _) = view.configuration();
            *out = set.nodes.iter().find(|n| n.id == id).map_or_else(
                || {
                    let mut n = empty_node();
                    write_c_str(&mut n.member_id, id.as_bytes());
                    n
                },
                node_to_c,
            );
        }
        Ok(())
    })
}

/// Runs `f` on a live, started replica (cbindgen does not expand macros, so each entry point
/// is spelled out).
///
/// # Safety
/// As `live`.
unsafe fn with_live(r: *mut rsl_replica, f: impl FnOnce(&RslReplica)) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        f(unsafe { live(r) }?.started()?);
        Ok(())
    })
}

/// `RelinquishPrimary` (v5+): on the primary, a last vote, then this replica shuts down.
/// Errors: `RSL_E_NULL`, `RSL_SHUTTING_DOWN` after unload.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_relinquish_primary(r: *mut rsl_replica) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, |r| r.relinquish_primary()) }
}

/// `AttemptPromotion`: stand for election at the next opportunity.
/// Errors: `RSL_E_NULL`, `RSL_SHUTTING_DOWN` after unload.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_attempt_promotion(r: *mut rsl_replica) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, |r| r.attempt_promotion()) }
}

/// `SetVotePayload` (v6+): attached to every VoteAccepted this replica sends.
/// Errors: `RSL_E_NULL`, `RSL_SHUTTING_DOWN` after unload.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_set_vote_payload(r: *mut rsl_replica, payload: u64) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, |r| r.set_vote_payload(payload)) }
}

/// `SetAcceptMessages`: the global accept flag (with `use_global_accept_messages_flag`).
/// Errors: `RSL_E_NULL`, `RSL_SHUTTING_DOWN` after unload.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_set_accept_messages(r: *mut rsl_replica, accept: bool) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, |r| r.set_accept_messages(accept)) }
}

/// `AllowSaveState`: automatic checkpoints on or off (not persisted).
/// Errors: `RSL_E_NULL`, `RSL_SHUTTING_DOWN` after unload.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_allow_save_state(r: *mut rsl_replica, allow: bool) -> rsl_status {
    // SAFETY: forwarded from the caller.
    unsafe { with_live(r, |r| r.allow_save_state(allow)) }
}

/// `CopyStateFromReplica`: copies a checkpoint at least as new as this replica's from a peer,
/// in the background; `cookie` comes back through `state_copied` (file NULL if none could be
/// copied). Errors: `RSL_SHUTTING_DOWN`, `RSL_E_NULL`.
///
/// # Safety
/// `r` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_copy_state_from_replica(r: *mut rsl_replica, cookie: *mut c_void) -> rsl_status {
    // SAFETY: forwarded from the caller.
    guard(|| status(unsafe { live(r) }?.started()?.copy_state_from_replica(cookie_in(cookie))))
}

/// `GetReplicasInformation`: on the primary, one entry per peer and one for itself (none
/// elsewhere), copied into `out` (`capacity` entries); `*count` is how many there are
/// (`RSL_E_BUFFER` if more than `capacity`).
///
/// # Safety
/// `r` is NULL or a live handle; `out` holds `capacity` entries; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_get_replicas_information(
    r: *mut rsl_replica,
    out: *mut rsl_replica_health,
    capacity: usize,
    count: *mut usize,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let r = unsafe { live(r) }?;
        let health = r.started()?.replicas_information();
        // SAFETY: forwarded from the caller.
        unsafe { write_array(&health, health_to_c, out, capacity, count) }
    })
}

/// `GetStatisticsSnapshot`: counters since the previous snapshot (this one resets them).
///
/// # Safety
/// `r` is NULL or a live handle; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_get_statistics_snapshot(r: *mut rsl_replica, out: *mut rsl_stats) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (r, out) = unsafe { (live(r)?, out.as_mut().ok_or(RSL_E_NULL)?) };
        *out = stats_to_c(&r.started()?.statistics_snapshot());
        Ok(())
    })
}

/// Whether this replica is primary; false for NULL or after unload.
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_is_primary(r: *const rsl_replica) -> bool {
    // SAFETY: forwarded from the caller.
    guard_value(false, || unsafe { live(r) }.ok().and_then(rsl_replica::view).is_some_and(ReplicaView::is_primary))
}

/// Whether the replica stopped on its own, and why: true once a replica thread panicked or
/// an I/O error (a journal write on a full disk, a checkpoint that could not be saved) stopped
/// it. The replica is then stopped: requests return `RSL_SHUTTING_DOWN`, and `shut_down` has
/// run or is about to, once (unless the failure is in the execute thread itself);
/// `rsl_replica_unload` or `rsl_replica_destroy` still frees it. The process keeps running. The reason is copied into `buf` (`buf_len` bytes,
/// NUL-terminated, cut to fit; `buf` may be NULL when `buf_len` is 0). False while the
/// replica runs, after a stop that was asked for, and for NULL. Valid after unload.
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed; `buf` is NULL or holds `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_failure(r: *const rsl_replica, buf: *mut c_char, buf_len: usize) -> bool {
    guard_value(false, || {
        // SAFETY: the caller guarantees `r` is NULL or valid.
        let Some(why) = unsafe { r.as_ref() }.and_then(|r| r.replica.get()?.failure()) else { return false };
        if !buf.is_null() && buf_len > 0 {
            // SAFETY: `buf` holds `buf_len` writable bytes, per the caller.
            let out = unsafe { std::slice::from_raw_parts_mut(buf, buf_len) };
            let mut cut = why.len().min(buf_len - 1);
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            write_c_str(out, &why.as_bytes()[..cut]);
        }
        true
    })
}

/// The statistics and health of every replica of the process (every ring), as Prometheus
/// text (format 0.0.4; the names are in docs/operations.md): what `rsl-kv replica --metrics`
/// serves, for a service that serves it itself. Returns the text's length in bytes without
/// the NUL. The text and a NUL go into `buf` only if they fit in `buf_len` bytes; otherwise
/// `buf` gets the empty string (if `buf_len` > 0) and the caller tries again with a buffer of
/// at least the length returned plus one (it can grow meanwhile). `buf` may be NULL when
/// `buf_len` is 0. It reads counters and takes only the brief locks the other queries take
/// (never one held across a callback), so it may be called from any thread, a callback
/// included.
///
/// # Safety
/// `buf` is NULL or holds `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rsl_metrics_render(buf: *mut c_char, buf_len: usize) -> usize {
    guard_value(0, || {
        let text = rsl_engine::runtime::metrics::render();
        if !buf.is_null() && buf_len > 0 {
            // SAFETY: `buf` holds `buf_len` writable bytes, per the caller.
            let out = unsafe { std::slice::from_raw_parts_mut(buf, buf_len) };
            write_c_str(out, if text.len() < buf_len { text.as_bytes() } else { b"" });
        }
        text.len()
    })
}

/// Whether the replica stopped to catch up (`catch_up_by_restart`): it copied a peer's
/// checkpoint into its data directory, delivered `state_copied(decree, file, NULL)` and then
/// `shut_down(RSL_SHUTTING_DOWN)`; initialized again on the same directory, it loads that
/// checkpoint. The checkpoint's decree goes to `*decree` (NULL: not wanted). Not a failure.
/// False while it runs, after any other stop, and for NULL. Valid inside `shut_down` and after
/// unload.
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed; `decree` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_restart_to_catch_up(r: *const rsl_replica, decree: *mut u64) -> bool {
    guard_value(false, || {
        // SAFETY: the caller guarantees `r` is NULL or valid.
        let Some(at) = unsafe { r.as_ref() }.and_then(|r| r.view()?.restart_to_catch_up()) else { return false };
        if !decree.is_null() {
            // SAFETY: non-NULL and writable, per the caller.
            unsafe { decree.write(at) }
        }
        true
    })
}

/// `UnloadThisOne`: stops the replica: requests in flight are aborted (`RSL_SHUTTING_DOWN`),
/// `shut_down` runs, the threads are joined. The process keeps running and the handle stays
/// valid (later calls return `RSL_SHUTTING_DOWN`) until `rsl_replica_destroy`.
/// Errors: `RSL_E_NULL`, `RSL_SHUTTING_DOWN` if already unloaded, `RSL_E_STATE` from one of
/// this replica's own callbacks (it would wait for itself).
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_unload(r: *mut rsl_replica) -> rsl_status {
    guard(|| {
        // SAFETY: the caller guarantees `r` is NULL or a handle not yet destroyed.
        let r = unsafe { r.as_ref() }.ok_or(RSL_E_NULL)?;
        if in_callback_of(r.token) {
            return Err(RSL_E_STATE);
        }
        if r.unloaded.swap(true, SeqCst) {
            return Err(RSL_SHUTTING_DOWN);
        }
        if let Some(replica) = r.replica.get() {
            replica.unload();
        }
        Ok(())
    })
}

/// Unloads the replica if needed, then frees the handle and everything it owns. NULL is a
/// no-op. Called from one of the replica's own callbacks it does nothing (logged).
///
/// # Safety
/// `r` is NULL or a handle not yet destroyed; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rsl_replica_destroy(r: *mut rsl_replica) {
    guard_value((), || {
        // SAFETY: the caller guarantees `r` is NULL or a live handle.
        let Some(handle) = (unsafe { r.as_ref() }) else { return };
        if in_callback_of(handle.token) {
            tracing::error!("rsl_replica_destroy called from the replica's own callback: ignored");
            return;
        }
        // Stop first, while the handle is intact: the last callbacks (ShutDown) may still use it.
        handle.unloaded.store(true, SeqCst);
        if let Some(replica) = handle.replica.get() {
            replica.unload();
        }
        // SAFETY: handles come from `Box::into_raw` in `rsl_replica_initialize`, and the caller
        // gives up `r`; the replica's threads are joined, so nothing else refers to it.
        drop(unsafe { Box::from_raw(r) });
    })
}

/// `Replay` (read-only): rebuilds the state of replica `member_id` from its data directory
/// (`cfg->working_dir`, plus the id if `add_member_id_to_working_dir`): `load_state` with the
/// newest checkpoint at or below `max_seq_no`, then the logged decrees up to `max_seq_no`, all
/// on the calling thread, with no network and no writes. `*last_executed` (may be NULL) gets
/// the last decree executed. Errors: `RSL_E_NULL`, `RSL_INVALID_PARAMETER`, `RSL_E_CONFIG`,
/// `RSL_E_IO`.
///
/// # Safety
/// Pointers are NULL or valid; `member_id` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rsl_replay(
    cfg: *const rsl_config,
    member_id: *const c_char,
    version: u32,
    callbacks: *const rsl_callbacks,
    max_seq_no: u64,
    last_executed: *mut u64,
) -> rsl_status {
    // SAFETY: forwarded from the caller.
    guard(|| unsafe { replay(cfg, member_id, version, callbacks, max_seq_no, last_executed, |_, _, _| Ok(())) })
}

/// `Replay` (expert): `rsl_replay`, then a checkpoint of the state it reached, labelled
/// `checkpoint_seq_no`, written to `<checkpoint_dir>/<checkpoint_seq_no>.codex` through
/// `try_save_state` (or `save_state`), in the configuration the replay ended in. For offline
/// recovery: `checkpoint_dir` must exist and differ from the data directory, so that no
/// replica starts from it by accident. Errors as `rsl_replay`; also `RSL_INVALID_PARAMETER`
/// for a `checkpoint_seq_no` of 0, the data directory as `checkpoint_dir`, or a replay that
/// ended with no member set (v3+); `RSL_E_IO` if the save fails or the checkpoint exists.
///
/// # Safety
/// As `rsl_replay`; `checkpoint_dir` is NULL or NUL-terminated.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rsl_replay_to_checkpoint(
    cfg: *const rsl_config,
    member_id: *const c_char,
    version: u32,
    callbacks: *const rsl_callbacks,
    max_seq_no: u64,
    checkpoint_seq_no: u64,
    checkpoint_dir: *const c_char,
    last_executed: *mut u64,
) -> rsl_status {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let out = unsafe { path(checkpoint_dir) }?.to_path_buf();
        if checkpoint_seq_no == 0 {
            return Err(RSL_INVALID_PARAMETER);
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            replay(cfg, member_id, version, callbacks, max_seq_no, last_executed, |cfg, sm, view| {
                let same = |a: &std::path::Path, b: &std::path::Path| {
                    a.canonicalize().ok().is_some_and(|a| b.canonicalize().is_ok_and(|b| a == b))
                };
                let data = &cfg.working_dir;
                if same(&out, data) || same(&out, &data.join(view.0.to_string())) {
                    return Err(fail(
                        RSL_INVALID_PARAMETER,
                        format_args!("Replay: the checkpoint directory {} is the data directory", out.display()),
                    ));
                }
                let (members, number) = view.1.configuration();
                crate::utility::save_checkpoint(&out, view.2, checkpoint_seq_no, number, members, |w| {
                    if sm.try_save_state(w) {
                        Ok(())
                    } else {
                        Err(RSL_E_IO)
                    }
                })
            })
        }
    })
}

/// What a finished replay hands `then`: the member id, the replay's view, the version.
type Replayed<'a> = (&'a MemberId, &'a ReplicaView, Version);

/// `rsl_replay`'s body; `then` runs after the replay, with the callbacks and what it reached.
///
/// # Safety
/// As `rsl_replay`.
unsafe fn replay(
    cfg: *const rsl_config,
    member_id: *const c_char,
    version: u32,
    callbacks: *const rsl_callbacks,
    max_seq_no: u64,
    last_executed: *mut u64,
    then: impl FnOnce(&rsl_engine::runtime::RslConfig, &mut Callbacks, Replayed) -> Result<(), rsl_status>,
) -> Result<(), rsl_status> {
    // SAFETY: the caller guarantees each pointer is NULL or valid.
    let (Some(cfg), Some(callbacks)) = (unsafe { cfg.as_ref() }, unsafe { callbacks.as_ref() }) else { return Err(RSL_E_NULL) };
    if member_id.is_null() {
        return Err(RSL_E_NULL);
    }
    // SAFETY: non-NULL and NUL-terminated, per the caller.
    let id: MemberId = types::member_id(unsafe { CStr::from_ptr(member_id) }.to_bytes())?;
    let (cfg, version) = (config(cfg)?, self::version(version)?);
    // A handle that only answers queries, for the callbacks (`rsl_replica_of_callback`).
    let (token, view, address) = (new_token(), Arc::new(OnceLock::new()), Arc::new(AtomicUsize::new(0)));
    let handle = rsl_replica { replica: OnceLock::new(), view: view.clone(), token, unloaded: AtomicBool::new(false) };
    address.store((&raw const handle).expose_provenance(), Relaxed);
    let mut sm = Callbacks::new(callbacks, token)?.with_view(view.clone()).with_handle(address);
    let last = RslReplica::replay(&cfg, &id, version, &mut sm, max_seq_no).map_err(init_error)?;
    let reached = view.get().ok_or(RSL_E_STATE)?;
    let result = then(&cfg, &mut sm, (&id, reached, version));
    drop(handle);
    // SAFETY: the caller guarantees `last_executed` is NULL or writable.
    if let Some(out) = unsafe { last_executed.as_mut() } {
        *out = last;
    }
    result
}

/// The replica whose callback this thread is running with `context` (the `context` of its
/// `rsl_callbacks`), or NULL. A callback reaches its replica through it before
/// `rsl_replica_initialize` has returned the handle (while restoring, or in the first
/// executions right after the start) and inside `rsl_replay` (a handle that only answers
/// queries, valid during the callback). Never NULL inside a callback of a replica started with
/// `context`; NULL outside callbacks.
#[no_mangle]
pub extern "C" fn rsl_replica_of_callback(context: *const c_void) -> *mut rsl_replica {
    guard_value(std::ptr::null_mut(), || handle_of_callback(context))
}
