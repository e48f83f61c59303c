//! The sans-IO Paxos core: one replica of one ring as a deterministic state machine.
//!
//! It reads no clock, socket, file or ambient randomness. Time arrives with every call, the
//! random source is seeded by the caller, and everything the replica wants done comes back as
//! [`Action`]s: messages to send, records to persist, decrees to execute, callbacks to raise.
//! The runtime, the simulator and the FFI all drive this same code. A test
//! (`paxos_core_is_sans_io` in `tests/core_purity.rs`) fails if any file of this module names a clock,
//! socket, file, thread or async runtime.

mod replica;
mod rng;

pub use replica::{MemberProgress, ReplayError, Replica, Role};

pub use rng::SplitMix64;

use crate::format::{ConfigInfo, MemberId, Message, MsgKind, Version};
use bytes::Bytes;
use std::sync::Arc;

/// Virtual or real time in microseconds, supplied by the caller.
pub type Micros = u64;

/// A millisecond in [`Micros`].
pub const MS: Micros = 1_000;
/// A second in [`Micros`].
pub const SEC: Micros = 1_000_000;

/// The application's handle for one submitted request; returned exactly once, through an
/// execution on this replica or an abort.
pub type Cookie = u64;

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every other member of the configuration.
    All,
    /// That member alone.
    One(MemberId),
}

/// Why a request's cookie comes back without the request executing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// This replica stopped being primary. The request may still be chosen by a later
    /// primary and execute (without its cookie): the outcome is unknown, not failed.
    NotPrimary,
    /// The replica is shutting down (`Shutdown`, a relinquish, a failure).
    ShuttingDown,
}

/// What the replica asks of its driver. Actions are ordered: a `Send` whose `after` is non-zero
/// must not leave before every `Persist` up to that sequence number is durable, and persists
/// complete in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send a message; the driver holds it until `after` is durable.
    Send {
        /// To whom.
        to: Dest,
        /// The message, shared by every destination.
        msg: Arc<Message>,
        /// The persist sequence number that must be durable first (0: none).
        after: u64,
    },
    /// Append a log record (a Vote, Prepare or ReconfigurationDecision); `seq` counts persists
    /// from 1 and is what `Input::Durable` acknowledges.
    Persist {
        /// The persist's number, consecutive from 1.
        seq: u64,
        /// The record to append.
        record: Arc<Message>,
    },
    /// Run a chosen decree. `cookies` holds, in request order, this replica's cookies for the
    /// vote's requests when it proposed them (empty elsewhere).
    Execute {
        /// The chosen vote.
        vote: Arc<Message>,
        /// This replica's cookies for its requests, in order (empty unless it proposed them).
        cookies: Vec<Cookie>,
    },
    /// A request's cookie (`AbortRequest`), or with `config` a `ChangeConfiguration` cookie
    /// (`AbortChangeConfiguration`), comes back unexecuted.
    Abort {
        /// The cookie handed back.
        cookie: Cookie,
        /// Why it comes back.
        reason: AbortReason,
        /// A `ChangeConfiguration` cookie rather than a request's.
        config: bool,
    },
    /// `NotifyStatus`: this replica became primary or stopped being it.
    NotifyStatus {
        /// Whether it is primary now.
        primary: bool,
    },
    /// The decree the new primary re-proposed has executed: state now reflects everything
    /// earlier primaries passed.
    NotifyPrimaryRecovered,
    /// Fetch the votes from `decree` on from `from`'s log (the learn port's FetchVotes); answer
    /// with `Input::Learned`.
    FetchVotes {
        /// The member to fetch from.
        from: MemberId,
        /// The first decree wanted.
        decree: u64,
    },
    /// The primary's relinquish vote was chosen: raise `ShutDown` and stop this replica (the
    /// original exits the process).
    ShutDown,
    /// The state's configuration changed: a reconfiguration decree executed (`cookie` is the
    /// `ChangeConfiguration` cookie on the replica that asked), or the replica was bootstrapped.
    ConfigurationChanged {
        /// The new configuration.
        config: ConfigInfo,
        /// The `ChangeConfiguration` cookie, on the replica that asked for it.
        cookie: Option<Cookie>,
    },
    /// Persist the highest defunct configuration number (`defunct.txt`).
    Defunct(u32),
    /// Save the application's state as of `checkpoint.decree` (every `Execute` before this
    /// action applied, none after), then answer `Input::CheckpointSaved`.
    SaveCheckpoint(Checkpoint),
    /// Fetch `from`'s checkpoint of `decree` (`size` bytes) over the learn port and verify it.
    /// With `load`, answer `Input::CheckpointFetched` (the core then decides whether to load
    /// it); without, keep it as this replica's own checkpoint (the primary copies instead of
    /// saving) and answer `Input::CheckpointSaved`, or `CheckpointFetched(None)` on failure.
    FetchCheckpoint {
        /// The member that has the checkpoint.
        from: MemberId,
        /// The checkpoint's decree.
        decree: u64,
        /// Its size in bytes, as the member announced it.
        size: u64,
        /// Load it into the state machine (a replica behind); else keep it as our own (a primary
        /// copying).
        load: bool,
    },
    /// A message, a learned record or a field of a checkpoint was refused before it reached the
    /// protocol (docs/core.md, "Hostile input"): drop it, count it and log who sent it. `from`
    /// is the sender it claims (for a record, the peer it came from; the empty id for our own
    /// log or checkpoint).
    Rejected {
        /// The sender it claims to be.
        from: MemberId,
        /// The type of the refused message or record.
        kind: MsgKind,
        /// What was wrong with it.
        reason: Rejection,
    },
    /// Replace the application's state with this fetched checkpoint's (the original exits the
    /// process and loads it at restart instead), keep the file as this replica's checkpoint,
    /// and start a new log: its first record is the `Persist` that follows.
    LoadCheckpoint(Checkpoint),
    /// Start a new log file at the next vote for a new decree, whatever its length: a
    /// time-based checkpoint is due. The roll is reported as `Input::LogRolled`.
    RollLog,
}

/// Why input was refused (`Action::Rejected`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The sender may not send this message type: not a member of the configuration it must
    /// come from, or this replica's own id.
    NotAMember,
    /// A ballot no proposer following the rules uses: id `u32::MAX` (nothing can outbid it), or
    /// one implausibly far above every ballot this replica has promised or seen.
    Ballot,
    /// A decree at or above `DECREE_LIMIT`.
    Decree,
    /// A configuration number at or above `CONFIGURATION_LIMIT`.
    Configuration,
    /// A protocol version this replica does not speak: newer than its own, or pipelined on one
    /// side only.
    Version,
    /// A field the format's rules forbid: an invalid member set, a vote without a ballot, a
    /// message that never travels on the Paxos port, ...
    Malformed,
    /// Contradicts what this replica holds: a decision for a decree whose vote holds another
    /// value, an answer reporting votes beyond any a member can hold.
    Inconsistent,
    /// The source address is not the one configured for the member id (the driver's check).
    WrongAddress,
    /// The connection's certificate names another member (set by the driver, not the core).
    NotCertified,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejection::NotAMember => "the sender may not send it",
            Rejection::Ballot => "implausible ballot",
            Rejection::Decree => "implausible decree",
            Rejection::Configuration => "implausible configuration number",
            Rejection::Version => "unsupported protocol version",
            Rejection::Malformed => "malformed",
            Rejection::Inconsistent => "contradicts what this replica holds",
            Rejection::WrongAddress => "not from the member's configured address",
            Rejection::NotCertified => "its sender is not the member its connection's certificate names",
        })
    }
}

/// What the core needs of a checkpoint besides the application's state: the header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last decree whose effects the state includes.
    pub decree: u64,
    /// The vote for `decree + 1` (its ballot may be empty for a bootstrap checkpoint).
    pub next_vote: Arc<Message>,
    /// The highest ballot the replica had promised or accepted.
    pub max_ballot: crate::format::Ballot,
    /// The state's configuration.
    pub config: ConfigInfo,
    /// False for the bootstrap checkpoint, which holds no application state.
    pub state_saved: bool,
}

/// The application's synchronous answers, asked on the protocol path as in the original.
pub trait Application {
    /// `CanBecomePrimary`: `Some(primary cookie)` to allow the election, `None` to veto it.
    fn can_become_primary(&mut self) -> Option<Bytes> {
        Some(Bytes::new())
    }
    /// `AcceptMessageFromReplica`: whether to answer a vote or prepare from `from`.
    fn accept_message(&mut self, _from: &MemberId, _primary_cookie: &[u8]) -> bool {
        true
    }
}

/// An application that never vetoes anything.
pub struct AcceptAll;
impl Application for AcceptAll {}

/// What can happen to a replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed; timers are checked against `now`.
    Tick,
    /// A message from a peer, already decoded and checked against its connection.
    Message {
        /// The member the connection belongs to.
        from: MemberId,
        /// The message.
        msg: Arc<Message>,
    },
    /// Every persist up to this sequence number is durable.
    Durable(u64),
    /// The records a `FetchVotes` returned, in log order (empty: nothing could be fetched).
    Learned {
        /// The member the votes came from.
        from: MemberId,
        /// The vote records, decoded and checked.
        records: Vec<Arc<Message>>,
    },
    /// `AttemptPromotion`: stand for election at the next opportunity.
    AttemptPromotion,
    /// `RelinquishPrimary` (v5+, primary only): a last, empty vote; once it is chosen the
    /// replica shuts down and the others elect a new primary at once.
    RelinquishPrimary,
    /// `SetVotePayload`: carried by every later VoteAccepted (v6+).
    SetVotePayload(u64),
    /// `ChangeElectionDelay`: a new election delay (randomised again as configured), used from
    /// the next time an election timer is set; not persisted.
    ChangeElectionDelay(Micros),
    /// The driver started a new log file whose first vote is for `first_decree` (the log grew
    /// past its size limit, or a time-based checkpoint is due); the checkpoint policy of
    /// docs/spec/behavior.md §2.14 decides what follows.
    LogRolled {
        /// The decree of the new log's first vote.
        first_decree: u64,
    },
    /// A checkpoint of `decree` is on disk (saved, or `copied` from a peer), and the logs now
    /// start at `min_decree_in_log`.
    CheckpointSaved {
        /// The checkpoint's decree.
        decree: u64,
        /// Its size in bytes.
        size: u64,
        /// The oldest decree the logs still hold.
        min_decree_in_log: u64,
        /// Copied from a peer rather than saved here.
        copied: bool,
    },
    /// A checkpoint asked for with `FetchCheckpoint` arrived intact, with its size; `None`:
    /// the fetch failed.
    CheckpointFetched(Option<(Checkpoint, u64)>),
    /// The global accept flag (`SetAcceptMessages`), used when configured instead of asking
    /// the application.
    SetAcceptMessages(bool),
    /// The execute side's progress, as the driver's host reports it: every decree below
    /// `below` has finished executing, and `spilled` says chosen decrees wait in the log
    /// rather than in memory. A replica stands for election only once its execute queue is
    /// in memory and (unless `allow_promotion_while_catching_up`) empty (docs/spec/behavior.md §2.9).
    Executed {
        /// Every decree below this has finished executing.
        below: u64,
        /// Chosen decrees wait in the log instead of memory.
        spilled: bool,
    },
}

/// The protocol's parameters, with RSL's defaults (docs/spec/behavior.md §4), in microseconds.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// The protocol version spoken, 1 to 7 (the replica raises it on executing a newer vote).
    pub version: Version,
    /// An idle primary's heartbeat period (`m_heartBeatIntervalSec`).
    pub heartbeat_interval: Micros,
    /// Silence from the primary this long starts an election (`m_electionDelaySec`).
    pub election_delay: Micros,
    /// Randomisation of the election delay, in percent, capped by `max_election_randomize`.
    pub election_randomize_pct: u64,
    /// The most randomisation may add to the election delay (`m_maxElectionRandomizeSec`).
    pub max_election_randomize: Micros,
    /// A secondary that heard a new primary waits this long before standing itself
    /// (`m_newLeaderGracePeriodSec`).
    pub new_leader_grace_period: Micros,
    /// Status queries while Initializing, and Bootstrap resends (`m_initializeRetryIntervalSec`).
    pub initialize_retry_interval: Micros,
    /// How long a candidate waits before resending its Prepare to members that have not
    /// answered (`m_prepareRetryIntervalSec`).
    pub prepare_retry_interval: Micros,
    /// How long the primary waits before resending its outstanding votes to members that have
    /// not acknowledged them (`m_voteRetryIntervalSec`).
    pub vote_retry_interval: Micros,
    /// Requests are batched into one vote while its encoding stays within this many bytes,
    /// header and cookie counted as RSL counts them (`s_AvgMessageLen`).
    pub max_vote_bytes: usize,
    /// The largest message a member accepts (`m_maxMessageSizeMB`): a request whose vote alone
    /// would be larger is refused (`InvalidRequest`), since no member could ever accept it.
    pub max_message_bytes: usize,
    /// Votes cached while initializing, in bytes; past it the cache is dropped. Also the
    /// primary's requests queued behind the votes in flight: past it a request is refused.
    pub max_cache_bytes: usize,
    /// Decide acceptance by `Input::SetAcceptMessages` instead of asking the application
    /// (`m_useGlobalAcceptMessagesFlag`).
    pub use_global_accept_flag: bool,
    /// How often a primary that wants to copy a checkpoint asks who has one.
    pub checkpoint_query_interval: Micros,
    /// How often a replica of a configuration not yet known to be established announces it.
    pub join_interval: Micros,
    /// Decrees in flight at once. Protocol versions 1 to 6 always have 1 (the original's
    /// messages and rules); more needs version 7 (docs/core.md).
    pub window: usize,
    /// Time-based checkpoints (`m_maxCheckpointIntervalSec`, docs/spec/behavior.md §2.14): once this
    /// long has passed since the last checkpoint (randomised), the log rolls at the next new
    /// decree, which asks for a checkpoint. 0: only log rolls by size do.
    pub max_checkpoint_interval: Micros,
    /// `m_allowPrimaryPromotionWhileCatchingUp`: stand for election while decrees chosen
    /// under earlier primaries still wait to execute (they must still all be in memory).
    /// False: only once every decree handed out has executed (`Input::Executed`).
    pub allow_promotion_while_catching_up: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        let cfg = CoreConfig {
            version: Version::V6,
            heartbeat_interval: 2 * SEC,
            election_delay: 10 * SEC,
            election_randomize_pct: 10,
            max_election_randomize: SEC,
            new_leader_grace_period: 15 * SEC,
            initialize_retry_interval: SEC,
            prepare_retry_interval: SEC,
            vote_retry_interval: 3 * SEC,
            max_vote_bytes: crate::format::message::MAX_BATCH_BYTES,
            max_message_bytes: (100 << 20) + 1024,
            max_cache_bytes: 50 << 20,
            use_global_accept_flag: false,
            checkpoint_query_interval: 5 * SEC,
            join_interval: SEC,
            window: 1,
            max_checkpoint_interval: 0,
            allow_promotion_while_catching_up: false,
        };
        debug_assert!(cfg.window == 1 || cfg.version.is_pipelined(), "several decrees in flight need version 7");
        cfg
    }
}

/// Why a request was refused at submission; the caller keeps its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// This replica is not primary (`RSLNotPrimary`).
    NotPrimary,
    /// The replica is shutting down (`RSLShuttingDown`).
    ShuttingDown,
    /// The request (or member set) is empty or invalid.
    InvalidRequest,
    /// This protocol version cannot express it (reconfiguration needs v3, bootstrap v4).
    Unsupported,
    /// The requests queued behind the votes in flight already hold `max_cache_bytes`.
    Full,
}

/// Why `Bootstrap` failed (RSL's `RSLResponseCode` values for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapError {
    /// The replica already has a configuration (`RSLAlreadyBootstrapped`).
    AlreadyBootstrapped,
    /// This replica is not in the set, or another set is already known.
    Failed,
    /// The member set is empty or invalid (`RSLInvalidParameter`).
    InvalidParameter,
}
