//! The plain C structs (`rsl_node`, `rsl_config`, `rsl_replica_health`, `rsl_stats`) and their
//! checked conversions to and from the engine's types, plus the pointer helpers every module uses.

use crate::{fail, note, rsl_status, RSL_E_BUFFER, RSL_E_CONFIG, RSL_E_NULL, RSL_INVALID_PARAMETER};
use bytes::Bytes;
use rsl_engine::format::{MemberId, MemberSet, Node};
use rsl_engine::runtime::{CatchUp, NvmJournal, PaxosTransport, Persistence, ReplicaHealth, RslConfig, Stats};
use std::ffi::{c_char, c_void, CStr, OsStr};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One replica (`RSLNode`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rsl_node {
    /// NUL-terminated, 1..63 bytes (a decimal number for protocol versions below 4).
    pub member_id: [c_char; 64],
    /// IPv4 address in network byte order, as `inet_addr` returns it.
    pub ip: u32,
    /// The Paxos port, in host byte order (learn port below).
    pub rsl_port: u16,
    /// 0: `rsl_port + 1`.
    pub learn_port: u16,
    /// NUL-terminated, may be empty.
    pub host_name: [c_char; 256],
}

/// `RSLConfigParam`: the same fields in snake case with the same defaults (`rsl_config_init`),
/// then this implementation's own (`pipeline_window`, `sync_writes`, the port bounds, the
/// catch-up switch). What each field does here: docs/migrating.md §6.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rsl_config {
    /// `m_newLeaderGracePeriodSec`, seconds; default 15.
    pub new_leader_grace_period_sec: u32,
    /// `m_heartBeatIntervalSec`, seconds; default 2.
    pub heart_beat_interval_sec: u32,
    /// `m_electionDelaySec`, seconds; default 10.
    pub election_delay_sec: u32,
    /// `m_maxElectionRandomizeSec`, seconds; default 1.
    pub max_election_randomize_sec: u32,
    /// `m_initializeRetryIntervalSec`, seconds; default 1.
    pub initialize_retry_interval_sec: u32,
    /// `m_prepareRetryIntervalSec`, seconds; default 1.
    pub prepare_retry_interval_sec: u32,
    /// `m_voteRetryIntervalSec`, seconds; default 3.
    pub vote_retry_interval_sec: u32,
    /// `m_voteMaxOutstandingIntervalSec`, seconds; default 480.
    pub vote_max_outstanding_interval_sec: u32,
    /// `m_cPQueryRetryIntervalSec`, seconds; default 5.
    pub c_p_query_retry_interval_sec: u32,
    /// `m_maxCheckpointIntervalSec`, seconds; default 0: none.
    pub max_checkpoint_interval_sec: u64,
    /// `m_joinMessagesIntervalSec`, seconds; default 1.
    pub join_messages_interval_sec: u32,
    /// `m_maxLogLenMB`, MiB; default 100.
    pub max_log_len_mb: u32,
    /// `m_sendTimeoutSec`, seconds; default 5.
    pub send_timeout_sec: u32,
    /// `m_receiveTimeoutSec`, seconds; default 5.
    pub receive_timeout_sec: u32,
    /// `m_maxCacheLengthMB`, MiB; default 50.
    pub max_cache_length_mb: u32,
    /// `m_maxVotesInLog`; default 10,000; unused.
    pub max_votes_in_log: u32,
    /// `m_maxOutstandingPerReplica`; default 10.
    pub max_outstanding_per_replica: u32,
    /// `m_maxCheckpoints`; default 4.
    pub max_checkpoints: u32,
    /// `m_maxCheckpointSizeGB`, GiB; default 0: no alert.
    pub max_checkpoint_size_gb: u32,
    /// `m_minCheckpointSpaceFileCount`; default 0: no alert.
    pub min_checkpoint_space_file_count: u32,
    /// `m_maxLogs`; default 10.
    pub max_logs: u32,
    /// `m_logLenRandomize`; default 20 %.
    pub log_len_randomize: u32,
    /// `m_electionRandomize`; default 10 %.
    pub election_randomize: u32,
    /// `m_fastReadSeqThreshold`; default 0.
    pub fast_read_seq_threshold: u32,
    /// `m_inMemoryExecutionQueueSizeMB`, MiB; default 0: `max_cache_length_mb`.
    pub in_memory_execution_queue_size_mb: u32,
    /// `m_numReaderThreads`; default 1; 0: one per CPU.
    pub num_reader_threads: u32,
    /// `m_maxMessageSizeMB`, MiB; default 100.
    pub max_message_size_mb: u32,
    /// `m_maxMessageAlertSizeMB`, MiB; default 0: no alert.
    pub max_message_alert_size_mb: u32,
    /// `m_allowPrimaryPromotionWhileCatchingUp`; default false.
    pub allow_primary_promotion_while_catching_up: bool,
    /// NUL-terminated.
    pub working_dir: [c_char; 4097],
    /// `m_addMemberIdToWorkingDir` (true): the files go in `working_dir/<member id>`.
    pub add_member_id_to_working_dir: bool,
    /// `m_cancelDiskIo` (true): validated only, no effect here.
    pub cancel_disk_io: bool,
    /// `m_useGlobalAcceptMessagesFlag`; default false.
    pub use_global_accept_messages_flag: bool,
    /// Decrees in flight (protocol version 7 only); 1 is the original protocol.
    pub pipeline_window: u32,
    /// fdatasync the journal (default true; false loses acknowledged requests on a crash, and
    /// is refused with the NVM journal).
    pub sync_writes: bool,
    /// `EnableListenOnAllIPs`: bind on 0.0.0.0 instead of the node's address (default false).
    pub listen_on_all_ips: bool,
    /// Inbound connections each port (Paxos, learn) serves at once; more are closed (256).
    pub max_connections_per_port: u32,
    /// An inbound Paxos-port connection silent this long is closed (60; at least four
    /// heartbeat intervals).
    pub idle_connection_timeout_sec: u32,
    /// A packet or learn request begun must arrive whole within this long (30).
    pub slow_sender_timeout_sec: u32,
    /// MiB of partly received packets the Paxos port holds in all, copies of a growing buffer
    /// included (200; at least twice one largest message).
    pub max_inbound_buffer_mb: u32,
    /// A replica too far behind that copied a peer's checkpoint stops
    /// (`rsl_replica_restart_to_catch_up`) so that its restart loads it, as the original
    /// (true); or loads it in place, `load_state` on the running state machine (false, the
    /// default here).
    pub catch_up_by_restart: bool,
    /// The NVM journal's persistent log file, NUL-terminated (docs/nvm.md): a request is
    /// acknowledged once its record is in it. Empty (the default): the file journal. A relative
    /// path is inside the replica's data directory.
    pub nvm_journal_path: [c_char; 4097],
    /// The persistent log's size in MiB, 1–1,048,576 (64), when `nvm_journal_path` is set.
    pub nvm_journal_size_mb: u32,
    /// What makes it durable: `RSL_NVM_PROCESS_CRASH` (0, the default), `RSL_NVM_MSYNC` (1) or
    /// `RSL_NVM_CACHE_FLUSH` (2, persistent memory on a DAX file system).
    pub nvm_journal_persistence: u32,
}

/// `nvm_journal_persistence`: survives a crash of the process, not of the machine.
pub const RSL_NVM_PROCESS_CRASH: u32 = 0;
/// `nvm_journal_persistence`: `msync` at each commit; survives power loss.
pub const RSL_NVM_MSYNC: u32 = 1;
/// `nvm_journal_persistence`: cache-line flushes to persistent memory; survives power loss.
pub const RSL_NVM_CACHE_FLUSH: u32 = 2;
/// `nvm_journal_size_mb` after `rsl_config_init`.
const DEFAULT_NVM_SIZE_MB: u32 = 64;

/// `ReplicaHealth`: what the primary knows of one member.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rsl_replica_health {
    /// The member's id, NUL-terminated.
    pub member_id: [c_char; 64],
    /// The primary holds a connection to it.
    pub connected: bool,
    /// This member is the primary (the one reporting).
    pub is_primary: bool,
    /// Packets written to it since the replica started.
    pub packets_sent: u64,
    /// Packets to it dropped (timed out, or skipped while it had too many unsent).
    pub packets_dropped: u64,
    /// The payload of the member's last VoteAccepted (`SetVotePayload` there).
    pub last_vote_payload: u64,
    /// Packets to the member queued or being written.
    pub num_outstanding: u64,
    /// Failed connection attempts and broken connections since a packet last went out.
    pub consecutive_failures: u32,
    /// `m_needsResolve`: the member's address is 0.0.0.0, or (with `resolve_node`) its
    /// connection failed and no resolve has succeeded since.
    pub needs_resolve: bool,
    /// When the member last counted as failed (3 consecutive failures), in Unix
    /// microseconds; 0: never. The same for the next three.
    pub failed_at_us: u64,
    /// When a write to the member last completed.
    pub last_request_sent_at_us: u64,
    /// When its last VoteAccepted arrived.
    pub last_request_voted_at_us: u64,
    /// The highest decree its VoteAccepteds named.
    pub last_request_voted_decree: u64,
}

/// `RSLStats`: counters since the previous snapshot (taking one starts the next period; the
/// totals `rsl_metrics_render` shows go on).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct rsl_stats {
    /// The length of this capture period, in microseconds.
    pub capture_micros: u64,
    /// Log reads (decrees read back for the execute thread, requests answered to learners):
    /// count, bytes, total and longest time reading, in microseconds.
    pub log_reads: u64,
    /// Bytes those reads returned.
    pub log_read_bytes: u64,
    /// Total time reading, in microseconds.
    pub log_read_micros: u64,
    /// The longest read, in microseconds.
    pub log_read_max_micros: u64,
    /// Log writes (one per batch written and synced by the journal): count, bytes, total and
    /// longest time, in microseconds.
    pub log_writes: u64,
    /// Bytes written.
    pub log_write_bytes: u64,
    /// Total time writing and syncing, in microseconds.
    pub log_write_micros: u64,
    /// The longest write, in microseconds.
    pub log_write_max_micros: u64,
    /// Votes the primary saw chosen, and the total and longest time from proposal to quorum.
    pub votes_timed: u64,
    /// Total time from proposal to quorum, in microseconds.
    pub voting_micros: u64,
    /// The longest, in microseconds.
    pub voting_max_micros: u64,
    /// Decrees the execute thread ran through the state machine.
    pub decrees_executed: u64,
    /// Requests those decrees held.
    pub requests_executed: u64,
    /// Votes written to the log.
    pub votes_logged: u64,
    /// fdatasyncs of the log.
    pub log_syncs: u64,
    /// Fast reads answered.
    pub fast_reads: u64,
    /// Checkpoints written.
    pub checkpoints_saved: u64,
    /// Messages from peers dropped before the protocol: malformed, implausible, from a
    /// non-member, from another address than the member's, or naming another member than the
    /// one its connection's certificate names.
    pub messages_rejected: u64,
    /// TLS handshakes refused, either side, on the Paxos and learn ports (0 without TLS).
    pub tls_refused: u64,
    /// Messages from peers dropped because the protocol thread's queue was full.
    pub messages_dropped: u64,
    /// Replicated requests (`NotPrimary`, or aborted with it) and fast reads (`FastReadStale`)
    /// refused because their queue was full.
    pub requests_refused: u64,
    /// The most events queued for the protocol thread at once since the last snapshot.
    pub event_queue_depth: u64,
    /// The most items queued for the execute thread at once since the last snapshot.
    pub work_queue_depth: u64,
    /// The bytes of requests queued behind the primary's votes in flight (now, not a mark).
    pub queued_request_bytes: u64,
}

/// Both directions of the numeric and boolean fields, from one list.
macro_rules! config_fields {
    ($($f:ident),* $(,)?) => {
        fn config_to_c(cfg: &RslConfig) -> rsl_config {
            let mut working_dir = [0; 4097];
            write_c_str(&mut working_dir, cfg.working_dir.as_os_str().as_bytes());
            let catch_up_by_restart = cfg.catch_up == CatchUp::Restart;
            let mut nvm_journal_path = [0; 4097];
            let nvm = cfg.nvm_journal.as_ref();
            write_c_str(&mut nvm_journal_path, nvm.map_or(&[][..], |n| n.path.as_os_str().as_bytes()));
            let nvm_journal_size_mb = nvm.map_or(DEFAULT_NVM_SIZE_MB, |n| n.size_mb);
            let nvm_journal_persistence = nvm.map_or(RSL_NVM_PROCESS_CRASH, |n| match n.persistence {
                Persistence::ProcessCrash => RSL_NVM_PROCESS_CRASH,
                Persistence::Msync => RSL_NVM_MSYNC,
                Persistence::CacheFlush => RSL_NVM_CACHE_FLUSH,
            });
            rsl_config { $($f: cfg.$f,)* working_dir, catch_up_by_restart, nvm_journal_path, nvm_journal_size_mb, nvm_journal_persistence }
        }

        /// The C configuration as the engine's; `RSL_E_CONFIG` if the working directory is not
        /// NUL-terminated. Ranges are checked by `initialize`.
        pub(crate) fn config_from_c(c: &rsl_config) -> Result<RslConfig, rsl_status> {
            let dir = c_str(&c.working_dir).ok_or_else(|| fail(RSL_E_CONFIG, "working_dir is not NUL-terminated"))?;
            let catch_up = if c.catch_up_by_restart { CatchUp::Restart } else { CatchUp::LoadInPlace };
            let working_dir = PathBuf::from(OsStr::from_bytes(dir));
            let nvm_journal = nvm_journal_from_c(c)?;
            Ok(RslConfig { $($f: c.$f,)* working_dir, tls: None, catch_up, net_delay_us: 0, nvm_journal, ring_name: String::new(), paxos_transport: PaxosTransport::Tcp, journal_group: None, network_group: None })
        }
    };
}

config_fields!(
    new_leader_grace_period_sec,
    heart_beat_interval_sec,
    election_delay_sec,
    max_election_randomize_sec,
    initialize_retry_interval_sec,
    prepare_retry_interval_sec,
    vote_retry_interval_sec,
    vote_max_outstanding_interval_sec,
    c_p_query_retry_interval_sec,
    max_checkpoint_interval_sec,
    join_messages_interval_sec,
    max_log_len_mb,
    send_timeout_sec,
    receive_timeout_sec,
    max_cache_length_mb,
    max_votes_in_log,
    max_outstanding_per_replica,
    max_checkpoints,
    max_checkpoint_size_gb,
    min_checkpoint_space_file_count,
    max_logs,
    log_len_randomize,
    election_randomize,
    fast_read_seq_threshold,
    in_memory_execution_queue_size_mb,
    num_reader_threads,
    max_message_size_mb,
    max_message_alert_size_mb,
    allow_primary_promotion_while_catching_up,
    add_member_id_to_working_dir,
    cancel_disk_io,
    use_global_accept_messages_flag,
    pipeline_window,
    sync_writes,
    listen_on_all_ips,
    max_connections_per_port,
    idle_connection_timeout_sec,
    slow_sender_timeout_sec,
    max_inbound_buffer_mb,
);

/// The NVM journal of a C configuration: None without a path.
fn nvm_journal_from_c(c: &rsl_config) -> Result<Option<NvmJournal>, rsl_status> {
    let path = c_str(&c.nvm_journal_path).ok_or_else(|| fail(RSL_E_CONFIG, "nvm_journal_path is not NUL-terminated"))?;
    if path.is_empty() {
        return Ok(None);
    }
    let persistence = match c.nvm_journal_persistence {
        RSL_NVM_PROCESS_CRASH => Persistence::ProcessCrash,
        RSL_NVM_MSYNC => Persistence::Msync,
        RSL_NVM_CACHE_FLUSH => Persistence::CacheFlush,
        other => return Err(fail(RSL_E_CONFIG, format!("nvm_journal_persistence {other} is none of 0, 1, 2"))),
    };
    Ok(Some(NvmJournal { path: PathBuf::from(OsStr::from_bytes(path)), size_mb: c.nvm_journal_size_mb, persistence }))
}

/// Fills `*cfg` with RSL's defaults (an empty working directory, which `rsl_replica_initialize`
/// refuses: set one). NULL is a no-op.
///
/// # Safety
/// `cfg` is NULL or points to writable memory for one `rsl_config`.
#[no_mangle]
pub unsafe extern "C" fn rsl_config_init(cfg: *mut rsl_config) {
    crate::guard_value((), || {
        if !cfg.is_null() {
            // SAFETY: non-NULL and writable, per the caller; `write` needs no initialized value.
            unsafe { cfg.write(config_to_c(&RslConfig::default())) }
        }
    })
}

/// The bytes before the first NUL of a fixed C buffer; `None` if it has no NUL.
pub(crate) fn c_str(buf: &[c_char]) -> Option<&[u8]> {
    let bytes = as_bytes(buf);
    let end = bytes.iter().position(|&b| b == 0)?;
    Some(&bytes[..end])
}

/// `c_char` is `i8` or `u8` depending on the target: the same memory as bytes.
fn as_bytes(buf: &[c_char]) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len()) }
}

/// Copies `s` into `buf` as a NUL-terminated string, truncated to fit.
pub(crate) fn write_c_str(buf: &mut [c_char], s: &[u8]) {
    let n = s.len().min(buf.len() - 1);
    for (dst, &src) in buf.iter_mut().zip(&s[..n]) {
        *dst = src as c_char;
    }
    buf[n..].fill(0);
}

/// A member id from a NUL-terminated C string of 1..63 bytes.
pub(crate) fn member_id(bytes: &[u8]) -> Result<MemberId, rsl_status> {
    match MemberId::from_bytes(bytes) {
        Some(id) if !id.is_empty() => Ok(id),
        _ => Err(note(RSL_INVALID_PARAMETER, format_args!("member id {:?} is not 1..63 bytes", String::from_utf8_lossy(bytes)))),
    }
}

/// The engine's node for a C node: `RSL_INVALID_PARAMETER` for a bad id, an unterminated host
/// name or port 0.
pub(crate) fn node_from_c(n: &rsl_node) -> Result<Node, rsl_status> {
    let invalid = |what: &str| note(RSL_INVALID_PARAMETER, format_args!("node: {what}"));
    let id = member_id(c_str(&n.member_id).ok_or_else(|| invalid("member_id is not NUL-terminated"))?)?;
    let host = c_str(&n.host_name).ok_or_else(|| invalid("host_name is not NUL-terminated"))?;
    if n.rsl_port == 0 {
        return Err(invalid("rsl_port is 0"));
    }
    let learn_port = match n.learn_port {
        0 => n.rsl_port.checked_add(1).ok_or_else(|| invalid("rsl_port 65535 leaves no learn port"))?,
        port => port,
    };
    Ok(Node {
        id,
        ip: Ipv4Addr::from(n.ip.to_ne_bytes()),
        rsl_port: n.rsl_port,
        learn_port,
        app_port: 0,
        host_name: Bytes::copy_from_slice(host),
    })
}

pub(crate) fn empty_node() -> rsl_node {
    rsl_node { member_id: [0; 64], ip: 0, rsl_port: 0, learn_port: 0, host_name: [0; 256] }
}

pub(crate) fn node_to_c(n: &Node) -> rsl_node {
    let mut out = empty_node();
    write_c_str(&mut out.member_id, n.id.as_bytes());
    write_c_str(&mut out.host_name, &n.host_name);
    out.ip = u32::from_ne_bytes(n.ip.octets());
    out.rsl_port = n.rsl_port;
    out.learn_port = n.learn_port;
    out
}

/// A member set from C arrays (copied): every node checked, at most 8192 cookie bytes.
///
/// # Safety
/// `members` points to `count` nodes and `cookie` to `cookie_len` bytes (either may be NULL
/// when its length is 0).
pub(crate) unsafe fn member_set(
    members: *const rsl_node,
    count: usize,
    cookie: *const c_void,
    cookie_len: u32,
) -> Result<MemberSet, rsl_status> {
    // SAFETY: forwarded from the caller.
    let (nodes, cookie) = unsafe { (slice(members, count)?, slice(cookie.cast::<u8>(), cookie_len as usize)?) };
    if nodes.is_empty() || nodes.len() > u16::MAX as usize {
        return Err(note(RSL_INVALID_PARAMETER, format_args!("a member set of {} nodes (1..65535)", nodes.len())));
    }
    if cookie.len() > MemberSet::MAX_COOKIE {
        return Err(note(
            RSL_INVALID_PARAMETER,
            format_args!("a member set cookie of {} bytes (at most {})", cookie.len(), MemberSet::MAX_COOKIE),
        ));
    }
    let nodes = nodes.iter().map(node_from_c).collect::<Result<Vec<_>, _>>()?;
    Ok(MemberSet { nodes, cookie: Bytes::copy_from_slice(cookie) })
}

/// Writes `items` into the C array `out` of `capacity`; `*count` gets how many there are.
/// `RSL_E_BUFFER` (with `*count` set) if they do not fit.
///
/// # Safety
/// `out` points to `capacity` writable elements (or is NULL with `capacity` 0); `count` is
/// NULL or writable.
pub(crate) unsafe fn write_array<T, U>(
    items: &[T],
    conv: impl Fn(&T) -> U,
    out: *mut U,
    capacity: usize,
    count: *mut usize,
) -> Result<(), rsl_status> {
    // SAFETY: forwarded from the caller.
    let count = unsafe { count.as_mut() }.ok_or(RSL_E_NULL)?;
    *count = items.len();
    if items.len() > capacity {
        return Err(RSL_E_BUFFER);
    }
    if items.is_empty() {
        return Ok(());
    }
    if out.is_null() {
        return Err(RSL_E_NULL);
    }
    for (i, item) in items.iter().enumerate() {
        // SAFETY: i < items.len() <= capacity, and the caller guarantees `capacity` elements.
        unsafe { out.add(i).write(conv(item)) };
    }
    Ok(())
}

/// Writes a member set cookie to `buf` if `len` is not NULL: `*len` is its capacity on entry
/// and the cookie's length on return (`RSL_E_BUFFER` if it did not fit).
///
/// # Safety
/// `len` is NULL or points to a u32; `buf` points to `*len` writable bytes (or is NULL if 0).
pub(crate) unsafe fn write_cookie(cookie: &[u8], buf: *mut c_void, len: *mut u32) -> Result<(), rsl_status> {
    // SAFETY: forwarded from the caller.
    let Some(len) = (unsafe { len.as_mut() }) else { return Ok(()) };
    let capacity = *len as usize;
    *len = cookie.len() as u32;
    if cookie.len() > capacity {
        return Err(RSL_E_BUFFER);
    }
    if !cookie.is_empty() {
        if buf.is_null() {
            return Err(RSL_E_NULL);
        }
        // SAFETY: `buf` holds `capacity` >= cookie.len() bytes, per the caller; no overlap with ours.
        unsafe { std::ptr::copy_nonoverlapping(cookie.as_ptr(), buf.cast::<u8>(), cookie.len()) };
    }
    Ok(())
}

/// A C array as a slice: empty for length 0 (any pointer), `RSL_E_NULL` for NULL otherwise.
///
/// # Safety
/// Unless NULL or `len` is 0, `ptr` points to `len` initialized elements that outlive `'a`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], rsl_status> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(RSL_E_NULL)
    } else {
        // SAFETY: non-NULL with `len` elements, per the caller.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

/// A path from a NUL-terminated C string; `RSL_E_NULL` for NULL, `RSL_INVALID_PARAMETER` if empty.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn path<'a>(s: *const c_char) -> Result<&'a Path, rsl_status> {
    if s.is_null() {
        return Err(RSL_E_NULL);
    }
    // SAFETY: non-NULL and NUL-terminated, per the caller.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    if bytes.is_empty() {
        return Err(RSL_INVALID_PARAMETER);
    }
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

pub(crate) fn health_to_c(h: &ReplicaHealth) -> rsl_replica_health {
    let mut member_id = [0; 64];
    write_c_str(&mut member_id, h.member_id.as_bytes());
    rsl_replica_health {
        member_id,
        connected: h.connected,
        is_primary: h.is_primary,
        packets_sent: h.packets_sent,
        packets_dropped: h.packets_dropped,
        last_vote_payload: h.last_vote_payload,
        num_outstanding: h.num_outstanding,
        consecutive_failures: h.consecutive_failures,
        needs_resolve: h.needs_resolve,
        failed_at_us: unix_us(h.failed_at),
        last_request_sent_at_us: unix_us(h.last_request_sent_at),
        last_request_voted_at_us: unix_us(h.last_request_voted_at),
        last_request_voted_decree: h.last_request_voted_decree,
    }
}

/// Unix microseconds; 0 for never (and for a time before 1970, which no clock here reports).
fn unix_us(t: Option<std::time::SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn stats_to_c(s: &Stats) -> rsl_stats {
    rsl_stats {
        capture_micros: s.capture_micros,
        log_reads: s.log_reads.count,
        log_read_bytes: s.log_reads.bytes,
        log_read_micros: s.log_reads.micros,
        log_read_max_micros: s.log_reads.max_micros,
        log_writes: s.log_writes.count,
        log_write_bytes: s.log_writes.bytes,
        log_write_micros: s.log_writes.micros,
        log_write_max_micros: s.log_writes.max_micros,
        votes_timed: s.voting.count,
        voting_micros: s.voting.micros,
        voting_max_micros: s.voting.max_micros,
        decrees_executed: s.decrees_executed,
        requests_executed: s.requests_executed,
        votes_logged: s.votes_logged,
        log_syncs: s.log_syncs,
        fast_reads: s.fast_reads,
        checkpoints_saved: s.checkpoints_saved,
        messages_rejected: s.messages_rejected,
        tls_refused: s.tls_refused,
        messages_dropped: s.messages_dropped,
        requests_refused: s.requests_refused,
        event_queue_depth: s.event_queue_depth,
        work_queue_depth: s.work_queue_depth,
        queued_request_bytes: s.queued_request_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nvm_journal_crosses_the_c_abi_both_ways() {
        let mut c = config_to_c(&RslConfig { working_dir: "/d".into(), ..RslConfig::default() });
        assert_eq!((c.nvm_journal_path[0], c.nvm_journal_size_mb, c.nvm_journal_persistence), (0, 64, RSL_NVM_PROCESS_CRASH));
        assert_eq!(config_from_c(&c).unwrap().nvm_journal, None, "no path: the file journal");
        write_c_str(&mut c.nvm_journal_path, b"/dev/shm/r1.nvm");
        (c.nvm_journal_size_mb, c.nvm_journal_persistence) = (8, RSL_NVM_MSYNC);
        let nvm = NvmJournal { path: "/dev/shm/r1.nvm".into(), size_mb: 8, persistence: Persistence::Msync };
        let cfg = config_from_c(&c).unwrap();
        assert_eq!(cfg.nvm_journal.as_ref(), Some(&nvm));
        let back = config_to_c(&cfg);
        assert_eq!(
            (c_str(&back.nvm_journal_path).unwrap(), back.nvm_journal_size_mb, back.nvm_journal_persistence),
            (&b"/dev/shm/r1.nvm"[..], 8, 1)
        );
        c.nvm_journal_persistence = 3;
        assert_eq!(config_from_c(&c).err(), Some(RSL_E_CONFIG));
    }
}
