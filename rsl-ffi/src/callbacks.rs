//! The application's callback table (`rsl_callbacks`) and the adapters that implement the
//! engine's `StateMachine` and `Admission` traits by calling it; cookies as `void*`.

use crate::streams::{rsl_checkpoint_reader, rsl_checkpoint_writer};
use crate::types::{empty_node, rsl_node, write_c_str};
use crate::{note, rsl_status, RSL_E_NULL};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberId, MemberSet, Node};
use rsl_engine::paxos::Cookie;
use rsl_engine::runtime::{Admission, ReplicaView, ResponseCode, StateMachine};
use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

/// The state machine's callbacks (`RSLStateMachine`'s virtual methods) and the `context`
/// passed to each. The table is copied by `rsl_replica_initialize` and `rsl_replay`.
///
/// Threads: RSL's callback lock. `execute_fast_read_request` runs on one of the replica's
/// `num_reader_threads` reader threads and `save_state` / `try_save_state` on its execute
/// thread, both Shared: concurrently with other reads, never with another callback. Every
/// other callback runs on the execute thread, Exclusive (alone), except `can_become_primary`
/// and `accept_message_from_replica`, which run on its protocol thread concurrently with the
/// others and must answer quickly, and `resolve_node`, which runs on its resolver thread
/// concurrently with the others and may block. `load_state` (and the restore-time executions)
/// run inside `rsl_replica_initialize` / `rsl_replay` on the calling thread.
/// Every pointer passed to a callback (request, reader, writer, node, file name) is valid only
/// during the call. A callback must not call `rsl_replica_unload` or `rsl_replica_destroy` on
/// its own replica (refused with `RSL_E_STATE`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rsl_callbacks {
    /// Passed to every callback; the application keeps it valid until `rsl_replica_destroy`.
    pub context: *mut c_void,
    /// Required. `LoadState`: `reader` NULL means an empty state. False tries an older checkpoint.
    pub load_state: Option<unsafe extern "C" fn(ctx: *mut c_void, reader: *mut rsl_checkpoint_reader) -> bool>,
    /// Required. `cookie` is non-NULL only on the replica that submitted the request, once.
    /// `*save_state` asks for a checkpoint of the state as this decree leaves it, taken on
    /// every replica before the next decree executes.
    pub execute_replicated_request:
        Option<unsafe extern "C" fn(ctx: *mut c_void, request: *const c_void, len: usize, cookie: *mut c_void, save_state: *mut bool)>,
    /// Required. A read-only request, once the state has reached the sequence number asked for.
    pub execute_fast_read_request: Option<unsafe extern "C" fn(ctx: *mut c_void, request: *const c_void, len: usize, cookie: *mut c_void)>,
    /// Required. A request's cookie comes back unexecuted (`RSL_NOT_PRIMARY`,
    /// `RSL_SHUTTING_DOWN`, `RSL_FAST_READ_STALE`).
    pub abort_request: Option<unsafe extern "C" fn(ctx: *mut c_void, status: rsl_status, cookie: *mut c_void)>,
    /// Required. Write the whole state.
    pub save_state: Option<unsafe extern "C" fn(ctx: *mut c_void, writer: *mut rsl_checkpoint_writer)>,
    /// Required.
    pub notify_status: Option<unsafe extern "C" fn(ctx: *mut c_void, is_primary: bool)>,
    /// Required. `cookie` is the `rsl_replica_change_configuration` cookie on the replica that asked.
    pub notify_configuration_changed: Option<unsafe extern "C" fn(ctx: *mut c_void, cookie: *mut c_void)>,
    /// Required.
    pub abort_change_configuration: Option<unsafe extern "C" fn(ctx: *mut c_void, status: rsl_status, cookie: *mut c_void)>,
    /// Required. The replica stops (unload, relinquish, or a failure: see
    /// `rsl_replica_failure`); always `RSL_SHUTTING_DOWN`. Called once.
    pub shut_down: Option<unsafe extern "C" fn(ctx: *mut c_void, status: rsl_status)>,
    /// Optional: brackets the requests of one decree.
    pub before_execute_replicated_requests: Option<unsafe extern "C" fn(ctx: *mut c_void)>,
    /// Optional.
    pub after_execute_replicated_requests: Option<unsafe extern "C" fn(ctx: *mut c_void)>,
    /// Optional (default: `save_state`, then true). False abandons this checkpoint and turns
    /// automatic checkpoints off until `rsl_replica_allow_save_state(true)`.
    pub try_save_state: Option<unsafe extern "C" fn(ctx: *mut c_void, writer: *mut rsl_checkpoint_writer) -> bool>,
    /// Optional.
    pub notify_primary_recovered: Option<unsafe extern "C" fn(ctx: *mut c_void)>,
    /// Optional. A checkpoint of `seq` was saved to `file`.
    pub state_saved: Option<unsafe extern "C" fn(ctx: *mut c_void, seq: u64, file: *const c_char)>,
    /// Optional. A checkpoint was copied from a peer; `file` NULL: the copy failed.
    pub state_copied: Option<unsafe extern "C" fn(ctx: *mut c_void, seq: u64, file: *const c_char, cookie: *mut c_void)>,
    /// Optional (default: true, empty cookie). Protocol thread. `*cookie_len` is the capacity
    /// (8192) on entry; set it to the primary cookie's length. False vetoes the election.
    pub can_become_primary: Option<unsafe extern "C" fn(ctx: *mut c_void, cookie_buf: *mut c_void, cookie_len: *mut u32) -> bool>,
    /// Optional (default: true). Protocol thread. `node` is the sender as the current
    /// configuration names it (only `member_id` is filled in if it names no such member).
    pub accept_message_from_replica:
        Option<unsafe extern "C" fn(ctx: *mut c_void, node: *const rsl_node, data: *const c_void, len: u32) -> bool>,
    /// Optional (NULL: no resolver runs; members stay at their configured addresses).
    /// `ResolveNode`, on the replica's resolver thread, with no lock held: for every peer when
    /// the replica starts, for each peer a configuration change adds or moves, then every 30 s and at once
    /// after a failed outbound connection for each peer at address 0 or not resolved since its
    /// connection failed. Set `node`'s `ip`, ports and host name to where the member is now and
    /// return true; false if it cannot be told now (asked again later). A changed address or
    /// port moves the member; a changed `member_id`, address 0 or port 0 counts as false.
    pub resolve_node: Option<unsafe extern "C" fn(ctx: *mut c_void, node: *mut rsl_node) -> bool>,
}

impl rsl_callbacks {
    /// `RSL_E_NULL` (naming the first one missing) unless every required callback is set.
    fn check(&self) -> Result<(), rsl_status> {
        let required = [
            ("load_state", self.load_state.is_some()),
            ("execute_replicated_request", self.execute_replicated_request.is_some()),
            ("execute_fast_read_request", self.execute_fast_read_request.is_some()),
            ("abort_request", self.abort_request.is_some()),
            ("save_state", self.save_state.is_some()),
            ("notify_status", self.notify_status.is_some()),
            ("notify_configuration_changed", self.notify_configuration_changed.is_some()),
            ("abort_change_configuration", self.abort_change_configuration.is_some()),
            ("shut_down", self.shut_down.is_some()),
        ];
        match required.iter().find(|(_, set)| !set) {
            None => Ok(()),
            Some((name, _)) => Err(note(RSL_E_NULL, format_args!("the required callback {name} is NULL"))),
        }
    }
}

/// A cookie from C: the pointer's address.
pub(crate) fn cookie_in(cookie: *mut c_void) -> Cookie {
    cookie.expose_provenance() as Cookie
}

/// The cookie handed back to C: the pointer it came from.
pub(crate) fn cookie_out(cookie: Cookie) -> *mut c_void {
    std::ptr::with_exposed_provenance_mut(cookie as usize)
}

fn opt_cookie(cookie: Option<Cookie>) -> *mut c_void {
    cookie.map_or(null_mut(), cookie_out)
}

fn c_path(path: &Path) -> CString {
    // A path from the OS has no interior NUL; should one appear, the name is cut there.
    let bytes = path.as_os_str().as_bytes();
    CString::new(bytes.split(|&b| b == 0).next().unwrap_or_default()).unwrap_or_default()
}

thread_local! {
    /// The replica whose callback this thread is running (0: none).
    static IN_CALLBACK: Cell<u64> = const { Cell::new(0) };
    /// The `context` and handle (addresses; 0: none) of the callback this thread is running.
    static CALLBACK_OF: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The handle of the replica whose callback this thread is running with `context`, if any.
pub(crate) fn handle_of_callback(context: *const c_void) -> *mut crate::replica::rsl_replica {
    match CALLBACK_OF.get() {
        (ctx, handle) if handle != 0 && ctx == context.addr() => std::ptr::with_exposed_provenance_mut(handle),
        _ => null_mut(),
    }
}

/// A fresh identity for one replica's adapters.
pub(crate) fn new_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// True while this thread runs a callback of the replica with `token`.
pub(crate) fn in_callback_of(token: u64) -> bool {
    IN_CALLBACK.get() == token
}

/// The C table behind the engine's traits. Every call is marked with the replica's token so
/// that re-entrant unload/destroy can be refused instead of deadlocking.
pub(crate) struct Callbacks {
    cb: rsl_callbacks,
    token: u64,
    /// Where the replica's query view goes when it is attached (before `load_state`): the
    /// handle's, which the query calls read.
    view: Option<Arc<OnceLock<ReplicaView>>>,
    /// The handle's address once it exists (0 before): what `rsl_replica_of_callback` answers
    /// during this adapter's callbacks.
    handle: Arc<AtomicUsize>,
}

// SAFETY: the table holds the application's `context` pointer and C function pointers. The C
// side's obligation (docs/c-abi.md, header comments) is that `context` stays valid until the
// replica is destroyed and that its callbacks may be called from the replica's threads:
// `can_become_primary` and `accept_message_from_replica` concurrently with the others.
unsafe impl Send for Callbacks {}
// SAFETY: as above; the adapter itself has no interior mutability.
unsafe impl Sync for Callbacks {}

/// Calls a callback slot checked by `rsl_callbacks::check`.
macro_rules! required {
    ($self:ident . $slot:ident ( $($arg:expr),* )) => {{
        let f = $self.cb.$slot.expect("required callbacks are checked when the adapter is made");
        let ctx = $self.cb.context;
        // SAFETY: `f` is the application's function for this slot, called with its context and
        // arguments valid for the duration of the call (see `Callbacks`' Send/Sync contract).
        $self.enter(|| unsafe { f(ctx, $($arg),*) })
    }};
}

/// Calls an optional callback slot, or evaluates `$default` when it is NULL.
macro_rules! optional {
    ($self:ident . $slot:ident ( $($arg:expr),* ) else $default:expr) => {{
        match $self.cb.$slot {
            // SAFETY: as in `required!`.
            Some(f) => { let ctx = $self.cb.context; $self.enter(|| unsafe { f(ctx, $($arg),*) }) }
            None => $default,
        }
    }};
}

impl Callbacks {
    pub(crate) fn new(cb: &rsl_callbacks, token: u64) -> Result<Callbacks, rsl_status> {
        cb.check()?;
        Ok(Callbacks { cb: *cb, token, view: None, handle: Arc::default() })
    }

    /// Makes the handle whose address `handle` will hold reachable from this adapter's callbacks.
    pub(crate) fn with_handle(self, handle: Arc<AtomicUsize>) -> Callbacks {
        Callbacks { handle, ..self }
    }

    /// Hands the replica's view to `slot` when the replica attaches it.
    pub(crate) fn with_view(self, slot: Arc<OnceLock<ReplicaView>>) -> Callbacks {
        Callbacks { view: Some(slot), ..self }
    }

    fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let outer = IN_CALLBACK.replace(self.token);
        let outer_of = CALLBACK_OF.replace((self.cb.context.addr(), self.handle.load(Relaxed)));
        let r = f();
        IN_CALLBACK.set(outer);
        CALLBACK_OF.set(outer_of);
        r
    }
}

impl StateMachine for Callbacks {
    fn attach(&mut self, view: ReplicaView) {
        if let Some(slot) = &self.view {
            let _ = slot.set(view);
        }
    }

    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let mut handle = reader.map(rsl_checkpoint_reader::borrowed);
        let reader = handle.as_mut().map_or(null_mut(), |h| h as *mut rsl_checkpoint_reader);
        required!(self.load_state(reader))
    }

    fn execute_replicated_request(&mut self, request: &[u8], cookie: Option<Cookie>, save_state: &mut bool) {
        required!(self.execute_replicated_request(request.as_ptr().cast(), request.len(), opt_cookie(cookie), save_state as *mut bool))
    }

    fn before_execute_replicated_requests(&mut self) {
        optional!(self.before_execute_replicated_requests() else ())
    }

    fn after_execute_replicated_requests(&mut self) {
        optional!(self.after_execute_replicated_requests() else ())
    }

    fn execute_fast_read_request(&self, request: &[u8], cookie: Cookie) {
        required!(self.execute_fast_read_request(request.as_ptr().cast(), request.len(), cookie_out(cookie)))
    }

    fn abort_request(&mut self, status: ResponseCode, cookie: Cookie) {
        required!(self.abort_request(status as rsl_status, cookie_out(cookie)))
    }

    fn save_state(&self, writer: &mut CheckpointWriter) {
        let mut handle = rsl_checkpoint_writer::borrowed(writer);
        required!(self.save_state(&mut handle as *mut rsl_checkpoint_writer))
    }

    /// A write that failed makes the save fail too, so no partial checkpoint is kept.
    fn try_save_state(&self, writer: &mut CheckpointWriter) -> bool {
        let mut handle = rsl_checkpoint_writer::borrowed(writer);
        let w = &mut handle as *mut rsl_checkpoint_writer;
        let saved = optional!(self.try_save_state(w) else { required!(self.save_state(w)); true });
        saved && !handle.failed()
    }

    fn notify_status(&mut self, is_primary: bool) {
        required!(self.notify_status(is_primary))
    }

    fn notify_configuration_changed(&mut self, cookie: Option<Cookie>) {
        required!(self.notify_configuration_changed(opt_cookie(cookie)))
    }

    fn abort_change_configuration(&mut self, status: ResponseCode, cookie: Cookie) {
        required!(self.abort_change_configuration(status as rsl_status, cookie_out(cookie)))
    }

    fn notify_primary_recovered(&mut self) {
        optional!(self.notify_primary_recovered() else ())
    }

    fn shut_down(&mut self, status: ResponseCode) {
        required!(self.shut_down(status as rsl_status))
    }

    fn state_saved(&mut self, seq: u64, file: &Path) {
        let file = c_path(file);
        optional!(self.state_saved(seq, file.as_ptr()) else ())
    }

    fn state_copied(&mut self, seq: u64, file: Option<&Path>, cookie: Option<Cookie>) {
        let file = file.map(c_path);
        let ptr = file.as_ref().map_or(std::ptr::null(), |f| f.as_ptr());
        optional!(self.state_copied(seq, ptr, opt_cookie(cookie)) else ())
    }
}

impl Admission for Callbacks {
    fn can_become_primary(&self) -> Option<Vec<u8>> {
        let mut cookie = vec![0u8; MemberSet::MAX_COOKIE];
        let mut len = cookie.len() as u32;
        let (buf, len_ptr) = (cookie.as_mut_ptr().cast::<c_void>(), &mut len as *mut u32);
        let allowed = optional!(self.can_become_primary(buf, len_ptr) else return Some(Vec::new()));
        cookie.truncate((len as usize).min(MemberSet::MAX_COOKIE));
        allowed.then_some(cookie)
    }

    /// The sender as the configuration names it (address and ports too), as RSL passes it;
    /// only its id if the configuration does not name it.
    fn accept_message_from_replica(&self, node: &MemberId, primary_cookie: &[u8]) -> bool {
        if self.cb.accept_message_from_replica.is_none() {
            return true;
        }
        let known = self
            .view
            .as_ref()
            .and_then(|v| v.get())
            .and_then(|v| v.configuration().0.nodes.iter().find(|n| n.id == *node).map(crate::node_to_c));
        let c_node = known.unwrap_or_else(|| {
            let mut c_node = empty_node();
            write_c_str(&mut c_node.member_id, node.as_bytes());
            c_node
        });
        let len = primary_cookie.len() as u32;
        optional!(self.accept_message_from_replica(&c_node as *const rsl_node, primary_cookie.as_ptr().cast(), len) else true)
    }

    fn resolves_nodes(&self) -> bool {
        self.cb.resolve_node.is_some()
    }

    /// What the application wrote into the node, checked as any node from C is.
    fn resolve_node(&self, node: &Node) -> Option<Node> {
        let mut c_node = crate::node_to_c(node);
        let resolved = optional!(self.resolve_node(&mut c_node as *mut rsl_node) else false);
        resolved.then(|| crate::node_from_c(&c_node).ok()).flatten().map(|found| Node { app_port: node.app_port, ..found })
    }
}
