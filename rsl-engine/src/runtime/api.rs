//! What a service implements and gets back: the state-machine callbacks with RSL's
//! synchronization classes, response codes, start-up errors, and the health and statistics
//! records.

use super::config::ConfigError;
use super::health::Timed;
use super::tls::TlsError;
use crate::format::checkpoint::{CheckpointReader, CheckpointWriter};
use crate::format::{MemberId, Node};
use crate::paxos::{Cookie, ReplayError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use thiserror::Error;

/// `RSLResponseCode`, with the original's numeric values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// `RSLSuccess`: the call was accepted.
    Success = 0,
    /// `RSLFastReadStale`: the replica's state did not reach the read's sequence number in time.
    FastReadStale = 1,
    /// `RSLNotPrimary`: only the primary takes replicated requests and configuration changes.
    NotPrimary = 2,
    /// `RSLShuttingDown`: the replica is stopping.
    ShuttingDown = 3,
    /// `RSLAlreadyBootstrapped`: the replica already has a configuration.
    AlreadyBootstrapped = 4,
    /// `RSLBootstrapFailed`: this replica is not in the set, or another set is already known.
    BootstrapFailed = 5,
    /// `RSLInvalidParameter`: an empty request or member set, or an unusable argument.
    InvalidParameter = 6,
}

/// The service's replicated state: RSL's `RSLStateMachine` callbacks.
///
/// The callbacks follow RSL's callback lock (docs/spec/behavior.md §1.6, §2.2), which here is a
/// reader-writer lock around the state machine: the `&mut self` callbacks are Exclusive (they
/// never overlap any other callback of this trait: execution, status, configuration, aborts,
/// loading), the `&self` ones are Shared: fast reads run on `num_reader_threads` reader
/// threads, concurrently with each other and with a checkpoint being saved, never with an
/// executing decree. Hence `Sync`. The callbacks RSL runs with no lock on its protocol thread
/// are on [`Admission`].
pub trait StateMachine: Send + Sync + 'static {
    /// Called once, before any other callback (before `load_state`): the replica's published
    /// state, which a callback may query as `RSLStateMachine`'s `GetCurrentSequenceNumber`,
    /// `GetConfiguration`, ... During `load_state` it shows the checkpoint's decree and
    /// configuration, during the executions that replay the log at start-up the decree being
    /// executed and the configuration then, exactly as a replica that never restarted shows
    /// them. (`RslReplica` itself exists only once `initialize` returns.)
    fn attach(&mut self, _view: super::ReplicaView) {}

    /// `LoadState`: the newest usable checkpoint, or `None` for an empty state (no checkpoint,
    /// or the bootstrap checkpoint). Returning false makes the replica try an older one.
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool;

    /// `ExecuteReplicatedRequest`: apply one request, deterministically. `cookie` is the one
    /// given to `replicate_request` on the replica that submitted it, once. Set `save_state` to
    /// take a checkpoint before the next decree executes.
    fn execute_replicated_request(&mut self, request: &[u8], cookie: Option<Cookie>, save_state: &mut bool);

    /// The requests of a decree about to execute, before any of them does: a state machine may
    /// touch what they will touch (a batch of lookups overlaps its cache misses, where one at
    /// a time waits for each). It must not change the state. Not in the original's API.
    fn look_ahead(&self, _requests: &[bytes::Bytes]) {}

    /// Bracket the requests of one decree (not called for heartbeats or reconfigurations).
    fn before_execute_replicated_requests(&mut self) {}
    /// Called after the last request of each decree `before_execute_replicated_requests` opened.
    fn after_execute_replicated_requests(&mut self) {}

    /// `ExecuteFastReadRequest`: a read-only request, run once the state has reached the
    /// sequence number it asked for. Shared: on a reader thread, possibly concurrently with
    /// other reads and with `save_state`.
    fn execute_fast_read_request(&self, request: &[u8], cookie: Cookie);

    /// `AbortRequest`: the cookie of a replicated request (`NotPrimary`, `ShuttingDown`) or a
    /// fast read (`FastReadStale`, `ShuttingDown`) comes back unexecuted. A `NotPrimary` abort
    /// of a request already proposed does not mean it will not execute (docs/spec/behavior.md §2.10).
    fn abort_request(&mut self, status: ResponseCode, cookie: Cookie);

    /// `SaveState`: write the whole state. Shared: no decree executes meanwhile, fast reads
    /// go on.
    fn save_state(&self, writer: &mut CheckpointWriter);

    /// `TrySaveState`: false abandons this checkpoint and turns automatic checkpoints off until
    /// `allow_save_state(true)`.
    fn try_save_state(&self, writer: &mut CheckpointWriter) -> bool {
        self.save_state(writer);
        true
    }

    /// `NotifyStatus`: this replica became primary (true) or stopped being it (false).
    fn notify_status(&mut self, is_primary: bool);

    /// A reconfiguration decree executed (with its cookie on the replica that asked), or the
    /// replica persisted its bootstrap member set.
    fn notify_configuration_changed(&mut self, cookie: Option<Cookie>);

    /// `AbortChangeConfiguration`: a `change_configuration` cookie comes back unexecuted
    /// (`NotPrimary`, `ShuttingDown`).
    fn abort_change_configuration(&mut self, status: ResponseCode, cookie: Cookie);

    /// `NotifyPrimaryRecovered`: the decree the new primary re-proposed has executed, so the state
    /// holds everything earlier primaries passed.
    fn notify_primary_recovered(&mut self) {}

    /// The replica is stopping (`Unload`, relinquish, or a fatal journal error).
    fn shut_down(&mut self, status: ResponseCode);

    /// A checkpoint of `seq` was saved to `file`.
    fn state_saved(&mut self, _seq: u64, _file: &Path) {}

    /// A checkpoint was copied from a peer (`None`: a `copy_state_from_replica` failed).
    fn state_copied(&mut self, _seq: u64, _file: Option<&Path>, _cookie: Option<Cookie>) {}
}

/// The callbacks RSL asks without any lock, on its protocol thread (they must answer quickly)
/// or its resolver thread; they may run concurrently with the state machine's.
pub trait Admission: Send + Sync + 'static {
    /// `CanBecomePrimary`: `Some(primary cookie)` allows an election, `None` vetoes it.
    fn can_become_primary(&self) -> Option<Vec<u8>> {
        Some(Vec::new())
    }
    /// `AcceptMessageFromReplica`: whether to answer a vote or prepare from `node`.
    fn accept_message_from_replica(&self, _node: &MemberId, _primary_cookie: &[u8]) -> bool {
        true
    }
    /// Whether this service resolves its members' addresses ([`resolve_node`](Self::resolve_node)).
    /// False (the default): no resolver runs and every member stays at the address its
    /// configuration gives.
    fn resolves_nodes(&self) -> bool {
        false
    }
    /// `ResolveNode`: where member `node` listens now (address and ports; typically looked up
    /// from `node.host_name`), or `None` if that cannot be told now. Asked on the replica's
    /// resolver thread, one member at a time and never with a lock held: for every peer when
    /// the replica starts (members restored from its checkpoint and logs included), for each
    /// peer a configuration change adds or places at another address, and then, every 30 s and at once when an outbound connection
    /// to a member fails, for each peer configured at 0.0.0.0 or not resolved since its
    /// connection last failed (`ReplicaHealth::needs_resolve`). An answer with another address
    /// or ports moves the member: the replica connects there and takes its messages from there.
    /// An answer naming another member, or 0.0.0.0, counts as `None`. It may block (a name
    /// lookup); `unload` waits for a call in progress to return.
    fn resolve_node(&self, _node: &Node) -> Option<Node> {
        None
    }
}

/// The default: never vetoes.
pub struct AdmitAll;
impl Admission for AdmitAll {}

/// `ReplicaHealth`: what the primary knows of one member (docs/spec/behavior.md §2.26). For the
/// primary's own entry: connected, no failures, both times the time of its highest accepted
/// vote, that vote's decree and its own payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaHealth {
    /// The member this entry is about.
    pub member_id: MemberId,
    /// The outbound connection to the member is up.
    pub connected: bool,
    /// Packets written to the member since the replica started.
    pub packets_sent: u64,
    /// Packets to it dropped: timed out unsent, or skipped while it had too many unsent.
    pub packets_dropped: u64,
    /// Packets to the member queued or being written (`m_numOutstanding`).
    pub num_outstanding: u64,
    /// Failed connection attempts and broken connections since a packet last went out; at 3
    /// the member counts as failed (`m_consecutiveFailures`).
    pub consecutive_failures: u32,
    /// When the member last counted as failed (`m_failedAt`; None: never).
    pub failed_at: Option<SystemTime>,
    /// When a write to the member last completed (`m_lastRequestSentAt`).
    pub last_request_sent_at: Option<SystemTime>,
    /// When its last VoteAccepted arrived (`m_lastRequestVotedAt`).
    pub last_request_voted_at: Option<SystemTime>,
    /// The highest decree its VoteAccepteds named (`m_lastRequestVotedDecree`).
    pub last_request_voted_decree: u64,
    /// The payload of its last VoteAccepted (`SetVotePayload` there).
    pub last_vote_payload: u64,
    /// `m_needsResolve`: the member's address is 0.0.0.0, or (with a resolver,
    /// [`Admission::resolves_nodes`]) its connection failed and no `resolve_node` has
    /// succeeded since.
    pub needs_resolve: bool,
    /// The member is the primary (the one reporting).
    pub is_primary: bool,
}

/// `RSLStats`: counters since the last snapshot (each snapshot starts a new period; the
/// totals since the start go on, for the metrics: docs/operations.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The length of this capture period (since the previous snapshot, or the start).
    pub capture_micros: u64,
    /// Log reads: a decree read back from the log for the execute thread (one per decree), or
    /// a FetchVotes or FetchCheckpoint answered to a learner (one per request); bytes read
    /// from disk, and the time spent reading them.
    pub log_reads: Timed,
    /// Log writes: one per batch the journal's writer writes and syncs (group commit: a batch
    /// holds every record appended meanwhile, votes and promises), its bytes and the time the
    /// write and the `fdatasync` took.
    pub log_writes: Timed,
    /// Voting (primary): per vote chosen, from its proposal until a quorum had accepted it
    /// (`count` votes; `bytes` is 0).
    pub voting: Timed,
    /// Decrees executed (heartbeats and reconfigurations included).
    pub decrees_executed: u64,
    /// Requests those decrees held, each run through `execute_replicated_request`.
    pub requests_executed: u64,
    /// Votes written to the log.
    pub votes_logged: u64,
    /// fdatasyncs of the log (one per batch).
    pub log_syncs: u64,
    /// Fast reads run.
    pub fast_reads: u64,
    /// Checkpoints this replica saved (not those it copied from a peer).
    pub checkpoints_saved: u64,
    /// Messages from peers dropped before the protocol: malformed, implausible, from a
    /// non-member, from another address than the member's, or naming another member than the
    /// one its connection's certificate names (each is also logged, at most about once a
    /// second).
    pub messages_rejected: u64,
    /// TLS handshakes refused, either side, on the Paxos and learn ports (0 without TLS).
    pub tls_refused: u64,
    /// Messages from peers dropped because the protocol thread's queue was full (the peers
    /// resend what matters).
    pub messages_dropped: u64,
    /// Replicated requests (answered `NotPrimary`, or aborted with it) and fast reads
    /// (`FastReadStale`) refused because the queue they go to was full.
    pub requests_refused: u64,
    /// The most events (peers' messages, requests, completions) queued for the protocol
    /// thread at once since the last snapshot; outside input is refused past 4096.
    pub event_queue_depth: u64,
    /// The same for the execute thread's queue (decrees to execute, fast reads, checkpoint
    /// work); fast reads are refused past 4096.
    pub work_queue_depth: u64,
    /// The bytes of requests the primary queues behind its votes in flight (now, not a mark);
    /// requests are refused while it is at `max_cache_length_mb`.
    pub queued_request_bytes: u64,
    /// The most bytes of chosen decrees held in memory for the execute thread at once since the
    /// last snapshot: at most `in_memory_execution_queue_size_mb` plus one decree.
    pub execution_queue_bytes: u64,
    /// Chosen decrees waiting to execute that are only in the log (now, not a mark): they are
    /// read back in order as the execute thread catches up.
    pub execution_queue_spilled: u64,
}

/// A node that the application names: its id and where it listens.
pub fn node(id: &str, ip: std::net::Ipv4Addr, rsl_port: u16) -> Option<Node> {
    Some(Node { id: MemberId::new(id)?, ip, rsl_port, learn_port: rsl_port.checked_add(1)?, app_port: 0, host_name: Default::default() })
}

/// Why `initialize` failed.
#[derive(Debug, Error)]
pub enum InitError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory, its logs or checkpoints could not be read or created.
    #[error("{0}")]
    Storage(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address it tried.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// No checkpoint loads and the logs cannot rebuild the state from decree 0.
    #[error("the state machine could not load any checkpoint, and the logs do not start at decree 0")]
    NoState,
    /// A log record that does not follow the one before it (the core's `ReplayError`), with
    /// the file and offset it was read from.
    #[error("{}: record at offset {offset}: {source}", path.display())]
    Replay {
        /// The log file.
        path: PathBuf,
        /// The record's byte offset in it.
        offset: u64,
        /// How the record fails to follow the one before it.
        source: ReplayError,
    },
    /// An argument is unusable (an empty node list, this replica not in it, ...).
    #[error("{0}")]
    Invalid(&'static str),
    /// A TLS setting, or a certificate, key or CA file it names, is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}
