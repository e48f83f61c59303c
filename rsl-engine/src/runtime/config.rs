//! The replica's configuration: RSL's `RSLConfigParam`, with its field names, defaults and
//! validation ranges (docs/spec/behavior.md §4, docs/spec/formats.md §11.2), and what it becomes for the core.

use super::checkpoints::CheckpointAlerts;
use super::journal::JournalGroup;
use super::learn::LearnLimits;
use super::net::NetworkGroup;
use super::nvm::Persistence;
use super::shm_link::ShmOptions;
use super::tls::TlsSettings;
use super::transport::TransportOptions;
use crate::format::{message::MAX_BATCH_BYTES, Version};
use crate::paxos::{CoreConfig, SEC};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// `RSLConfigParam`, field for field (snake case), with the original's defaults. The last
/// fields are this implementation's own and default to the original's behaviour.
#[derive(Clone, Debug)]
pub struct RslConfig {
    /// `m_newLeaderGracePeriodSec` (15): how long a secondary that heard from a new primary waits
    /// before it stands for election itself.
    pub new_leader_grace_period_sec: u32,
    /// `m_heartBeatIntervalSec` (2): an idle primary sends a heartbeat vote at this period.
    pub heart_beat_interval_sec: u32,
    /// `m_electionDelaySec` (10): a secondary that hears nothing from the primary this long stands
    /// for election (randomised per replica; 30 × it bounds Preparing).
    pub election_delay_sec: u32,
    /// `m_maxElectionRandomizeSec` (1): the most `election_randomize` may add to the election
    /// delay.
    pub max_election_randomize_sec: u32,
    /// `m_initializeRetryIntervalSec` (1): status queries while Initializing, and the `Bootstrap`
    /// resend period.
    pub initialize_retry_interval_sec: u32,
    /// `m_prepareRetryIntervalSec` (1): a candidate resends its Prepare to a member that has not
    /// answered at this period.
    pub prepare_retry_interval_sec: u32,
    /// `m_voteRetryIntervalSec` (3): the primary resends an outstanding vote to a member that has
    /// not answered at this period.
    pub vote_retry_interval_sec: u32,
    /// A primary whose vote stays unchosen this long fails (RSL's deadlock breaker, an assert
    /// that ends the process in the original).
    pub vote_max_outstanding_interval_sec: u32,
    /// `m_cPQueryRetryIntervalSec` (5): a primary that wants a checkpoint to copy asks the
    /// secondaries at this period.
    pub c_p_query_retry_interval_sec: u32,
    /// `m_maxCheckpointIntervalSec` (0: none): a checkpoint is due at least this often (± 20 %),
    /// even with the log short.
    pub max_checkpoint_interval_sec: u64,
    /// `m_joinMessagesIntervalSec` (1): a replica unsure its configuration is established sends
    /// Join at this period.
    pub join_messages_interval_sec: u32,
    /// `m_maxLogLenMB` (100, 1–102,400): a log file past this size rolls at the next new decree,
    /// which asks for a checkpoint.
    pub max_log_len_mb: u32,
    /// A Paxos packet unsent this long after it was queued is dropped; one being written
    /// fails its connection.
    pub send_timeout_sec: u32,
    /// `m_receiveTimeoutSec` (5): the timeout of learn-port transfers (votes, checkpoints,
    /// `CopyStateFromReplica`).
    pub receive_timeout_sec: u32,
    /// `m_maxCacheLengthMB` (50, 1–1024): the vote cache while Initializing, the default
    /// execute-queue bound, and the requests queued behind the votes in flight.
    pub max_cache_length_mb: u32,
    /// `m_maxVotesInLog` (10,000): validated only; unused, as in the original.
    pub max_votes_in_log: u32,
    /// Broadcasts skip a peer with this many packets unsent.
    pub max_outstanding_per_replica: u32,
    /// `m_maxCheckpoints` (4): checkpoint files kept; older ones are deleted after a save.
    pub max_checkpoints: u32,
    /// An Alert (`ALERT_TARGET`) for a checkpoint larger than this (0: none).
    pub max_checkpoint_size_gb: u32,
    /// An Alert when free disk space is below this many times a checkpoint's size (0: none).
    pub min_checkpoint_space_file_count: u32,
    /// `m_maxLogs` (10): log files kept beyond what the oldest checkpoint needs.
    pub max_logs: u32,
    /// `m_logLenRandomize` (20, 0–100): percentage by which each log's roll size is jittered, so
    /// replicas checkpoint at different times.
    pub log_len_randomize: u32,
    /// `m_electionRandomize` (10, 0–100): percentage of the election delay added at random, up to
    /// `max_election_randomize_sec`.
    pub election_randomize: u32,
    /// `m_fastReadSeqThreshold` (0): a fast read whose sequence number the state lags by at most
    /// this many decrees waits for it; one further ahead is refused (`FastReadStale`).
    pub fast_read_seq_threshold: u32,
    /// `m_inMemoryExecutionQueueSizeMB` (0: `max_cache_length_mb`): chosen decrees waiting to
    /// execute held in memory; past it they wait in the log.
    pub in_memory_execution_queue_size_mb: u32,
    /// Fast-read threads (0: one per CPU): reads run on them under the Shared side of the
    /// callback lock (see [`StateMachine`](super::StateMachine)).
    pub num_reader_threads: u32,
    /// `m_maxMessageSizeMB` (100, 1–4095): the largest Paxos packet sent or taken; a larger one
    /// closes its connection.
    pub max_message_size_mb: u32,
    /// An Alert for a Paxos packet received larger than this (0: none).
    pub max_message_alert_size_mb: u32,
    /// A replica stands for election (and is asked `can_become_primary`) only once every
    /// chosen decree it holds has executed; true lets it stand while decrees chosen under
    /// earlier primaries still wait (`notify_primary_recovered` says when they have run).
    /// Either way none may wait spilled to disk (`in_memory_execution_queue_size_mb`).
    pub allow_primary_promotion_while_catching_up: bool,
    /// `m_workingDir` (required): where the logs and checkpoints go.
    pub working_dir: PathBuf,
    /// `m_addMemberIdToWorkingDir` (true): put the files in `working_dir/<member id>`.
    pub add_member_id_to_working_dir: bool,
    /// `m_cancelDiskIo` (true): validated only; Windows `CancelIoEx`, nothing here (reads are
    /// synchronous).
    pub cancel_disk_io: bool,
    /// `m_useGlobalAcceptMessagesFlag` (false): decide whether to accept messages by the
    /// replica-wide flag (`set_accept_messages`) instead of asking the application.
    pub use_global_accept_messages_flag: bool,
    /// Decrees in flight (protocol version 7 only; 1 is the original's protocol).
    pub pipeline_window: u32,
    /// fdatasync the journal. Off only for benchmarks: acknowledged requests can then be lost.
    pub sync_writes: bool,
    /// `EnableListenOnAllIPs`: bind the Paxos and learn ports on every address (0.0.0.0)
    /// instead of the node's own.
    pub listen_on_all_ips: bool,
    /// Inbound connections each port (Paxos, learn) serves at once; more are closed as they
    /// arrive, and the connections already served keep working. A ring needs one per peer on
    /// the Paxos port and one per catch-up transfer on the learn port: 256 leaves room for
    /// reconnections and many learners while bounding what strangers can hold open.
    pub max_connections_per_port: u32,
    /// An inbound Paxos-port connection on which nothing arrives for this long is closed; the
    /// peer's transport connects again when it has something to send. Never less than four
    /// heartbeat intervals, so the primary's connections (a vote or an acknowledgement every
    /// `heart_beat_interval_sec`) are never idle; what it closes are connections between
    /// secondaries, silent between elections (one reconnection a minute each), and strangers'.
    pub idle_connection_timeout_sec: u32,
    /// The slow-sender bound: a packet begun on the Paxos port must arrive whole within this
    /// long, as must a learn-port request, and each 256 KiB of a learn-port reply must be taken.
    /// 30 s lets the largest message (100 MiB) through at 3.5 MB/s.
    pub slow_sender_timeout_sec: u32,
    /// MiB of partly received packets the Paxos port holds in all its connections together,
    /// copies of a growing buffer included (never less than twice one largest message: its
    /// buffer is copied as it grows, the old one held until the copy is done; with the default
    /// 100 MiB messages, 200 MiB and 2 KiB). A connection
    /// whose packet would need more is closed; packets up to 64 KiB, the protocol's own
    /// traffic, never count against it.
    pub max_inbound_buffer_mb: u32,
    /// Mutual TLS on the Paxos and learn ports (`SetThumbprintsForSsl`,
    /// `SetSubjectNamesForSsl`, or CA and pins); `None` is plain TCP, as the original
    /// without TLS.
    pub tls: Option<TlsSettings>,
    /// What a replica too far behind its peers' logs does with the checkpoint it copied from
    /// one: [`CatchUp::LoadInPlace`] (this API's default) or the original's
    /// [`CatchUp::Restart`] (the C++ shim's default).
    pub catch_up: CatchUp,
    /// Benchmarks only, never in production: every Paxos packet this replica sends is held
    /// this many microseconds before it is written, a one-way network delay between the
    /// replicas of one machine (`rsl-kv replica --net-delay-us`). 0 (the default): none.
    pub net_delay_us: u32,
    /// What the logs' `ring` span field and the metrics' `ring` label call this ring (the
    /// first 64 characters). Empty (the default): the Paxos port's number.
    pub ring_name: String,
    /// The NVM journal (docs/nvm.md): a request is acknowledged once its record is in this
    /// persistent log, and the log files are written from it in the background. None (the
    /// default): the file journal, acknowledged once the log file is synced.
    pub nvm_journal: Option<NvmJournal>,
    /// What carries this replica's Paxos packets to peers on the same host (issue 16,
    /// docs/rdma.md): TCP (the default), or a shared-memory ring set up over the TCP connection
    /// with each peer that accepts it (others keep TCP). Not with `tls`, nor `net_delay_us`.
    pub paxos_transport: PaxosTransport,
    /// The journal writer threads this ring shares with other rings of the process (a
    /// [`JournalGroup`] cloned into each ring's configuration): at most 8 for any number of
    /// rings; each ring's records stay in its own log files. The file journal only. None (the
    /// default): a writer thread per ring.
    pub journal_group: Option<JournalGroup>,
    /// The network threads this ring shares with other rings of the process (a
    /// [`NetworkGroup`] cloned into each ring's configuration): its Paxos port, learn port and
    /// peer connections run on the group's threads. None (the default): a thread of its own.
    pub network_group: Option<NetworkGroup>,
}

/// Where the NVM journal's persistent log is, its size, and what makes it durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmJournal {
    /// The persistent log's file. A relative path is inside the replica's data directory; an
    /// absolute one (`/dev/shm/...`, a DAX mount) must differ for each replica of a process.
    pub path: PathBuf,
    /// The log's size in MiB (1–1,048,576, [`MAX_NVM_JOURNAL_MB`]): the records acknowledged
    /// and not yet in the log files (the journal keeps no other copy of them). Appends wait for
    /// the files while it is full.
    pub size_mb: u32,
    /// How the log's writes become durable (`m_nvmJournalPersistence`).
    pub persistence: Persistence,
}

/// What carries Paxos packets between replicas (`RslConfig::paxos_transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PaxosTransport {
    /// TCP to every peer.
    #[default]
    Tcp,
    /// A shared-memory ring to each peer on this host that accepts one (in `/dev/shm`), TCP to
    /// the others.
    Shm,
    /// An RDMA ring (verbs, feature `rdma`) to each peer that accepts one, TCP to the others
    /// and whenever this host has no RDMA device. Never run on hardware (docs/rdma.md).
    Rdma,
}

/// How a replica that fell behind everything its peers' logs hold takes the peer checkpoint it
/// copied (docs/spec/behavior.md §2.11). Either way the checkpoint is first in place in the data
/// directory and the logs after it are the peers'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// `load_state` is called on the running state machine, which must replace its whole
    /// state with the checkpoint's; then `state_copied(seq, file, None)`, and the replica
    /// goes on. No restart: other rings and replicas of the process are not disturbed.
    #[default]
    LoadInPlace,
    /// The original's: `state_copied(seq, file, None)`, then the replica stops as on
    /// `unload` (`shut_down(ShuttingDown)`), and
    /// [`RslReplica::restart_to_catch_up`](super::RslReplica::restart_to_catch_up) gives the
    /// checkpoint's decree. The service initializes the replica again on the same directory
    /// (the original's supervisor restarts the process, which it exits); that restore loads
    /// the copied checkpoint, so `load_state` only ever sees a fresh state machine. The C++
    /// shim's default, where the process then exits with status 0.
    Restart,
}

impl Default for RslConfig {
    fn default() -> Self {
        RslConfig {
            new_leader_grace_period_sec: 15,
            heart_beat_interval_sec: 2,
            election_delay_sec: 10,
            max_election_randomize_sec: 1,
            initialize_retry_interval_sec: 1,
            prepare_retry_interval_sec: 1,
            vote_retry_interval_sec: 3,
            vote_max_outstanding_interval_sec: 480,
            c_p_query_retry_interval_sec: 5,
            max_checkpoint_interval_sec: 0,
            join_messages_interval_sec: 1,
            max_log_len_mb: 100,
            send_timeout_sec: 5,
            receive_timeout_sec: 5,
            max_cache_length_mb: 50,
            max_votes_in_log: 10000,
            max_outstanding_per_replica: 10,
            max_checkpoints: 4,
            max_checkpoint_size_gb: 0,
            min_checkpoint_space_file_count: 0,
            max_logs: 10,
            log_len_randomize: 20,
            election_randomize: 10,
            fast_read_seq_threshold: 0,
            in_memory_execution_queue_size_mb: 0,
            num_reader_threads: 1,
            max_message_size_mb: 100,
            max_message_alert_size_mb: 0,
            allow_primary_promotion_while_catching_up: false,
            working_dir: PathBuf::new(),
            add_member_id_to_working_dir: true,
            cancel_disk_io: true,
            use_global_accept_messages_flag: false,
            pipeline_window: 1,
            sync_writes: true,
            listen_on_all_ips: false,
            max_connections_per_port: 256,
            idle_connection_timeout_sec: 60,
            slow_sender_timeout_sec: 30,
            max_inbound_buffer_mb: 200,
            tls: None,
            catch_up: CatchUp::LoadInPlace,
            net_delay_us: 0,
            ring_name: String::new(),
            nvm_journal: None,
            journal_group: None,
            network_group: None,
            paxos_transport: PaxosTransport::Tcp,
        }
    }
}

/// A parameter outside its range, or two that cannot go together: `Initialize` fails with
/// RSL's "Configuration Error".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A field outside the original's range (`rslconfig.cpp`) or ours.
    #[error("configuration error: {field} = {value} is outside {min}..={max}")]
    Range {
        /// The field's C++ name (`m_electionDelaySec`), or ours in snake case.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// Two settings that cannot be used together.
    #[error("configuration error: {field} cannot be combined with {with}: {why}")]
    Conflict {
        /// The field refused.
        field: &'static str,
        /// The setting it conflicts with.
        with: &'static str,
        /// Why the two cannot go together.
        why: &'static str,
    },
}

impl ConfigError {
    /// The field refused (the first of a conflicting pair).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Range { field, .. } | ConfigError::Conflict { field, .. } => field,
        }
    }
}

/// The largest NVM journal in MiB: the persistent log's layout takes rings up to 1 TiB.
pub const MAX_NVM_JOURNAL_MB: u32 = 1 << 20;

const INT_MAX: u64 = i32::MAX as u64;

impl RslConfig {
    /// The original's checks (rslconfig.cpp ranges), plus ours.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |field, value: u64, min, max| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Range { field, value, min, max })
            }
        };
        let secs = [
            ("m_newLeaderGracePeriodSec", self.new_leader_grace_period_sec),
            ("m_heartBeatIntervalSec", self.heart_beat_interval_sec),
            ("m_electionDelaySec", self.election_delay_sec),
            ("m_initializeRetryIntervalSec", self.initialize_retry_interval_sec),
            ("m_prepareRetryIntervalSec", self.prepare_retry_interval_sec),
            ("m_voteRetryIntervalSec", self.vote_retry_interval_sec),
            ("m_voteMaxOutstandingIntervalSec", self.vote_max_outstanding_interval_sec),
            ("m_cPQueryRetryIntervalSec", self.c_p_query_retry_interval_sec),
            ("m_joinMessagesIntervalSec", self.join_messages_interval_sec),
            ("m_sendTimeoutSec", self.send_timeout_sec),
            ("m_receiveTimeoutSec", self.receive_timeout_sec),
        ];
        for (field, v) in secs {
            check(field, v.into(), 1, 3600)?;
        }
        check("m_maxElectionRandomizeSec", self.max_election_randomize_sec.into(), 0, INT_MAX)?;
        check("m_maxLogLenMB", self.max_log_len_mb.into(), 1, 102_400)?;
        check("m_maxCacheLengthMB", self.max_cache_length_mb.into(), 1, 1024)?;
        for (field, v) in [
            ("m_maxVotesInLog", self.max_votes_in_log),
            ("m_maxOutstandingPerReplica", self.max_outstanding_per_replica),
            ("m_maxCheckpoints", self.max_checkpoints),
            ("m_maxLogs", self.max_logs),
        ] {
            check(field, v.into(), 1, INT_MAX)?;
        }
        check("m_logLenRandomize", self.log_len_randomize.into(), 0, 100)?;
        check("m_electionRandomize", self.election_randomize.into(), 0, 100)?;
        for (field, v) in [
            ("m_maxCheckpointSizeGB", self.max_checkpoint_size_gb),
            ("m_minCheckpointSpaceFileCount", self.min_checkpoint_space_file_count),
            ("m_maxMessageAlertSizeMB", self.max_message_alert_size_mb),
        ] {
            check(field, v.into(), 0, INT_MAX)?;
        }
        check("m_numReaderThreads", self.num_reader_threads.into(), 0, 100)?;
        check("m_inMemoryExecutionQueueSizeMB", self.in_memory_execution_queue_size_mb.into(), 0, INT_MAX)?;
        // RSL allows up to INT_MAX, but 4096 and more overflow its 32-bit byte count.
        check("m_maxMessageSizeMB", self.max_message_size_mb.into(), 1, 4095)?;
        check("pipeline_window", self.pipeline_window.into(), 1, 1024)?;
        check("max_connections_per_port", self.max_connections_per_port.into(), 1, 65_536)?;
        check("idle_connection_timeout_sec", self.idle_connection_timeout_sec.into(), 1, 86_400)?;
        check("slow_sender_timeout_sec", self.slow_sender_timeout_sec.into(), 1, 3600)?;
        check("max_inbound_buffer_mb", self.max_inbound_buffer_mb.into(), 1, 1 << 20)?;
        check("net_delay_us", self.net_delay_us.into(), 0, 1_000_000)?;
        if let Some(nvm) = &self.nvm_journal {
            check("nvm_journal.size_mb", nvm.size_mb.into(), 1, MAX_NVM_JOURNAL_MB.into())?;
            if nvm.path.as_os_str().is_empty() {
                return Err(ConfigError::Range { field: "nvm_journal.path", value: 0, min: 1, max: 1 });
            }
            if !self.sync_writes {
                // The drainer would release records from the persistent log once written to
                // the files, not synced: acknowledged records would be in the page cache only.
                let why = "the persistent log releases records only once the log files are synced";
                return Err(ConfigError::Conflict { field: "sync_writes", with: "nvm_journal", why });
            }
        }
        // A ring is neither encrypted nor authenticated per packet: TLS means every Paxos byte is
        // (docs/security.md). And a delay is the TCP writer's to apply.
        let ring = match self.paxos_transport {
            PaxosTransport::Tcp => None,
            PaxosTransport::Shm => {
                Some(("a shared-memory ring is neither encrypted nor authenticated per packet", "net_delay_us (with shm)"))
            }
            PaxosTransport::Rdma => Some(("an RDMA ring is neither encrypted nor authenticated per packet", "net_delay_us (with rdma)")),
        };
        if self.paxos_transport == PaxosTransport::Rdma && !cfg!(feature = "rdma") {
            return Err(ConfigError::Conflict { field: "paxos_transport", with: "this build", why: "rdma needs the cargo feature rdma" });
        }
        if let Some((why, delay)) = ring {
            if self.tls.is_some() {
                return Err(ConfigError::Conflict { field: "paxos_transport", with: "tls", why });
            }
            check(delay, self.net_delay_us.into(), 0, 0)?;
        }
        if self.working_dir.as_os_str().is_empty() {
            return Err(ConfigError::Range { field: "m_workingDir", value: 0, min: 1, max: 1 });
        }
        Ok(())
    }

    /// The largest packet or learn-port message accepted.
    pub fn max_message_bytes(&self) -> usize {
        (self.max_message_size_mb as usize) * (1 << 20) + 1024
    }

    /// The Paxos port's bounds.
    pub fn transport_options(&self) -> TransportOptions {
        let secs = |s: u32| Duration::from_secs(s.into());
        TransportOptions {
            max_packet: self.max_message_bytes(),
            max_inbound: self.max_connections_per_port as usize,
            idle_timeout: secs(self.idle_connection_timeout_sec.max(self.heart_beat_interval_sec.saturating_mul(4))),
            frame_timeout: secs(self.slow_sender_timeout_sec),
            max_buffered: ((self.max_inbound_buffer_mb as usize) << 20).max(2 * self.max_message_bytes()),
            alert_packet: match self.max_message_alert_size_mb {
                0 => 0,
                mb => ((mb as usize) << 20) + 1024,
            },
            // A pipelined primary broadcasts up to a window of votes at once: each of them
            // must get a place behind the peer's packets still unsent.
            max_outstanding: (self.max_outstanding_per_replica as usize).max(2 * self.pipeline_window as usize),
            send_timeout: secs(self.send_timeout_sec),
            delay: Duration::from_micros(self.net_delay_us.into()),
            shm: match self.paxos_transport {
                PaxosTransport::Tcp => None,
                PaxosTransport::Shm => Some(ShmOptions::default_in(&self.working_dir)),
                PaxosTransport::Rdma => Some(ShmOptions { rdma: true, ..ShmOptions::default_in(&self.working_dir) }),
            },
            mux: self.network_group.as_ref().and_then(NetworkGroup::mux),
            ..TransportOptions::default()
        }
    }

    /// The learn server's bounds.
    pub fn learn_limits(&self) -> LearnLimits {
        LearnLimits {
            max_connections: self.max_connections_per_port as usize,
            timeout: Duration::from_secs(self.slow_sender_timeout_sec.into()),
        }
    }

    /// The checkpoint alerts' thresholds (`m_maxCheckpointSizeGB`, `m_minCheckpointSpaceFileCount`).
    pub fn checkpoint_alerts(&self) -> CheckpointAlerts {
        CheckpointAlerts {
            max_size: u64::from(self.max_checkpoint_size_gb) << 30,
            min_space_files: self.min_checkpoint_space_file_count.into(),
        }
    }

    /// Chosen decrees' bytes kept in memory for the execute thread; beyond, they wait in the log
    /// (`m_inMemoryExecutionQueueSizeMB`, 0: `m_maxCacheLengthMB`).
    pub fn execution_queue_bytes(&self) -> u64 {
        let mb =
            if self.in_memory_execution_queue_size_mb == 0 { self.max_cache_length_mb } else { self.in_memory_execution_queue_size_mb };
        u64::from(mb) << 20
    }

    /// `max_log_len_mb` in bytes: the size past which a log file rolls.
    pub fn max_log_len_bytes(&self) -> u64 {
        u64::from(self.max_log_len_mb) << 20
    }

    /// What the protocol core needs of it, for `version`.
    pub fn core_config(&self, version: Version) -> CoreConfig {
        let us = |s: u32| u64::from(s) * SEC;
        CoreConfig {
            version,
            heartbeat_interval: us(self.heart_beat_interval_sec),
            election_delay: us(self.election_delay_sec),
            election_randomize_pct: self.election_randomize.into(),
            max_election_randomize: us(self.max_election_randomize_sec),
            new_leader_grace_period: us(self.new_leader_grace_period_sec),
            initialize_retry_interval: us(self.initialize_retry_interval_sec),
            prepare_retry_interval: us(self.prepare_retry_interval_sec),
            vote_retry_interval: us(self.vote_retry_interval_sec),
            max_vote_bytes: MAX_BATCH_BYTES,
            max_message_bytes: self.max_message_bytes(),
            max_cache_bytes: (self.max_cache_length_mb as usize) << 20,
            use_global_accept_flag: self.use_global_accept_messages_flag,
            checkpoint_query_interval: us(self.c_p_query_retry_interval_sec),
            join_interval: us(self.join_messages_interval_sec),
            window: if version.is_pipelined() { self.pipeline_window as usize } else { 1 },
            max_checkpoint_interval: self.max_checkpoint_interval_sec.saturating_mul(SEC),
            allow_promotion_while_catching_up: self.allow_primary_promotion_while_catching_up,
        }
    }

    /// The NVM journal's options for a replica whose data directory is `dir`.
    pub(super) fn nvm_options(&self, dir: &std::path::Path) -> Option<super::journal::NvmOptions> {
        self.nvm_journal.as_ref().map(|nvm| super::journal::NvmOptions {
            path: dir.join(&nvm.path),
            capacity: u64::from(nvm.size_mb) << 20,
            persistence: nvm.persistence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of `RslConfig`'s fields; listing them in an exhaustive pattern makes a new
    /// field a compile error here until it is added.
    macro_rules! field_names {
        ($($field:ident),* $(,)?) => {{
            let RslConfig { $($field: _),* } = RslConfig::default();
            [$(stringify!($field)),*]
        }};
    }

    #[test]
    fn every_field_has_a_row_in_migrating_md() {
        let fields = field_names!(
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
            working_dir,
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
            tls,
            catch_up,
            net_delay_us,
            ring_name,
            nvm_journal,
            paxos_transport,
            journal_group,
            network_group,
        );
        let doc = include_str!("../../../docs/migrating.md");
        let table = doc.split("## 6. `RSLConfigParam`, field by field").nth(1).expect("the field table in docs/migrating.md");
        let table = table.split("\n## ").next().unwrap_or_default();
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        let statuses = ["Honoured", "Differently", "Not applicable", "Ours"];
        for field in fields {
            let name = format!(" / `{field}` |");
            let row = rows.iter().find(|r| r.contains(&name)).unwrap_or_else(|| panic!("no row for `{field}` in docs/migrating.md §6"));
            let status = row.split('|').nth(2).unwrap_or("").trim();
            assert!(statuses.contains(&status), "`{field}`: status {status:?} is none of {statuses:?}");
            let tests = named_tests(row);
            if status == "Not applicable" {
                assert!(tests.is_empty(), "`{field}` is not applicable: its row names no test");
            } else {
                assert!(!tests.is_empty(), "`{field}`: its row names no test showing its effect (\"Test: `...`\")");
            }
            for test in tests {
                assert!(test_exists(test), "`{field}`: the test `{test}` its row names is not in the workspace");
            }
        }
        assert_eq!(rows.len(), fields.len() + 1, "one row per field, and the header");
    }

    /// The tests a row of the field table names: the backquoted items after "Test:" or
    /// "Tests:" in its last column.
    fn named_tests(row: &str) -> Vec<&str> {
        let last = row.trim_end().trim_end_matches('|').rsplit('|').next().unwrap_or("");
        let Some(at) = last.find("Test: ").or_else(|| last.find("Tests: ")) else { return Vec::new() };
        last[at..].split('`').skip(1).step_by(2).collect()
    }

    /// Whether `test` exists: a file (`compat-tests/cpp/x.cpp`), a function in a file
    /// (`tests/readers.rs::f`, relative to rsl-engine or the workspace), or a function under a
    /// module path of rsl-engine (`runtime::transport::tests::f`: some `fn f(` in its sources).
    fn test_exists(test: &str) -> bool {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let (path, name) = match test.rsplit_once("::") {
            Some((path, name)) => (path, Some(name)),
            None => (test, None),
        };
        let defines = |text: &str| name.is_some_and(|n| text.contains(&format!("fn {n}(")));
        if path.ends_with(".rs") || path.ends_with(".cpp") {
            let file = [root.join(path), root.join("..").join(path)].into_iter().find(|f| f.is_file());
            return file.is_some_and(|f| name.is_none() || defines(&std::fs::read_to_string(f).unwrap_or_default()));
        }
        name.is_some() && sources(&root.join("src")).iter().any(|f| defines(&std::fs::read_to_string(f).unwrap_or_default()))
    }

    /// Every `.rs` file under `dir`.
    fn sources(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn defaults_are_the_originals_and_need_a_working_dir() {
        let cfg = RslConfig::default();
        assert_eq!((cfg.election_delay_sec, cfg.heart_beat_interval_sec, cfg.max_log_len_mb, cfg.max_checkpoints), (10, 2, 100, 4));
        assert_eq!(cfg.max_message_bytes(), 104_858_624);
        assert_eq!(cfg.validate().unwrap_err().field(), "m_workingDir");
        let cfg = RslConfig { working_dir: "/tmp/x".into(), ..RslConfig::default() };
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let base = RslConfig { working_dir: "/tmp/x".into(), ..RslConfig::default() };
        let bad = RslConfig { election_delay_sec: 0, ..base.clone() };
        assert_eq!(bad.validate().unwrap_err().field(), "m_electionDelaySec");
        let bad = RslConfig { max_cache_length_mb: 2000, ..base.clone() };
        assert_eq!(bad.validate().unwrap_err(), ConfigError::Range { field: "m_maxCacheLengthMB", value: 2000, min: 1, max: 1024 });
        let core = base.core_config(Version::V6);
        assert_eq!((core.election_delay, core.window), (10 * SEC, 1));
        let bad = RslConfig { max_connections_per_port: 0, ..base.clone() };
        assert_eq!(bad.validate().unwrap_err().field(), "max_connections_per_port");
    }

    #[test]
    fn the_alert_and_send_fields_reach_the_transport_and_the_checkpoint_store() {
        let cfg = RslConfig::default();
        let t = cfg.transport_options();
        assert_eq!((t.alert_packet, t.max_outstanding, t.send_timeout), (0, 10, Duration::from_secs(5)));
        assert_eq!(cfg.checkpoint_alerts(), CheckpointAlerts::default(), "every alert off by default");
        let cfg = RslConfig {
            max_message_alert_size_mb: 2,
            max_outstanding_per_replica: 3,
            send_timeout_sec: 7,
            max_checkpoint_size_gb: 5,
            min_checkpoint_space_file_count: 4,
            ..RslConfig::default()
        };
        let t = cfg.transport_options();
        assert_eq!((t.alert_packet, t.max_outstanding, t.send_timeout), ((2 << 20) + 1024, 3, Duration::from_secs(7)));
        assert_eq!(cfg.checkpoint_alerts(), CheckpointAlerts { max_size: 5 << 30, min_space_files: 4 });
        // A pipelined window of votes is never skipped for the window itself.
        assert_eq!(RslConfig { pipeline_window: 64, ..cfg }.transport_options().max_outstanding, 128);
        let base = RslConfig { working_dir: "/tmp/x".into(), ..RslConfig::default() };
        let bad = RslConfig { max_message_alert_size_mb: u32::MAX, ..base };
        assert_eq!(bad.validate().unwrap_err().field(), "m_maxMessageAlertSizeMB");
    }

    #[test]
    fn shm_is_refused_with_tls_or_a_delay() {
        let shm = RslConfig { working_dir: "/tmp/x".into(), paxos_transport: PaxosTransport::Shm, ..RslConfig::default() };
        shm.validate().unwrap();
        assert!(shm.transport_options().shm.is_some());
        assert!(RslConfig::default().transport_options().shm.is_none(), "TCP unless asked");
        let settings = TlsSettings {
            identity: super::super::tls::IdentitySource::Files { cert: "c".into(), key: "k".into() },
            peers: super::super::tls::PeerRules::default(),
        };
        let tls = RslConfig { tls: Some(settings), ..shm.clone() };
        assert!(matches!(tls.validate().unwrap_err(), ConfigError::Conflict { field: "paxos_transport", with: "tls", .. }));
        let delayed = RslConfig { net_delay_us: 10, ..shm.clone() };
        assert_eq!(delayed.validate().unwrap_err().field(), "net_delay_us (with shm)");
        let rdma = RslConfig { paxos_transport: PaxosTransport::Rdma, ..shm };
        if cfg!(feature = "rdma") {
            rdma.validate().unwrap();
            assert!(rdma.transport_options().shm.is_some_and(|o| o.rdma));
        } else {
            assert!(matches!(rdma.validate().unwrap_err(), ConfigError::Conflict { field: "paxos_transport", with: "this build", .. }));
        }
    }

    /// The fields whose effect is tested on the component that carries it out (the core, the
    /// Paxos port, the learn server) reach it, each with a value other than its default.
    #[test]
    fn changed_fields_reach_the_core_and_the_ports() {
        let cfg = RslConfig {
            heart_beat_interval_sec: 3,
            new_leader_grace_period_sec: 20,
            election_randomize: 30,
            max_election_randomize_sec: 4,
            initialize_retry_interval_sec: 6,
            prepare_retry_interval_sec: 2,
            vote_retry_interval_sec: 5,
            c_p_query_retry_interval_sec: 7,
            join_messages_interval_sec: 8,
            max_cache_length_mb: 9,
            use_global_accept_messages_flag: true,
            pipeline_window: 5,
            ..RslConfig::default()
        };
        let core = cfg.core_config(Version::V7);
        assert_eq!(
            (core.heartbeat_interval, core.new_leader_grace_period, core.election_randomize_pct, core.max_election_randomize),
            (3 * SEC, 20 * SEC, 30, 4 * SEC)
        );
        assert_eq!(
            (core.initialize_retry_interval, core.checkpoint_query_interval, core.join_interval, core.max_cache_bytes),
            (6 * SEC, 7 * SEC, 8 * SEC, 9 << 20)
        );
        assert_eq!((core.prepare_retry_interval, core.vote_retry_interval), (2 * SEC, 5 * SEC));
        assert!(core.use_global_accept_flag);
        assert_eq!((core.window, cfg.core_config(Version::V6).window), (5, 1), "a window only under version 7");
        let cfg = RslConfig {
            max_message_size_mb: 2,
            max_connections_per_port: 7,
            idle_connection_timeout_sec: 90,
            slow_sender_timeout_sec: 11,
            max_inbound_buffer_mb: 300,
            net_delay_us: 1500,
            ..RslConfig::default()
        };
        let t = cfg.transport_options();
        assert_eq!((t.max_packet, t.max_inbound, t.max_buffered), ((2 << 20) + 1024, 7, 300 << 20));
        assert_eq!((t.idle_timeout, t.frame_timeout), (Duration::from_secs(90), Duration::from_secs(11)));
        assert_eq!((t.delay, RslConfig::default().transport_options().delay), (Duration::from_micros(1500), Duration::ZERO));
        let learn = cfg.learn_limits();
        assert_eq!((learn.max_connections, learn.timeout), (7, Duration::from_secs(11)));
    }

    #[test]
    fn the_nvm_journal_needs_synced_writes_and_a_bounded_size() {
        let nvm = NvmJournal { path: "j.nvm".into(), size_mb: 64, persistence: Persistence::Msync };
        let base = RslConfig { working_dir: "/tmp/x".into(), nvm_journal: Some(nvm.clone()), ..RslConfig::default() };
        assert_eq!(base.validate(), Ok(()));
        let err = RslConfig { sync_writes: false, ..base.clone() }.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { field: "sync_writes", with: "nvm_journal", .. }), "{err}");
        assert!(err.to_string().contains("sync_writes") && err.to_string().contains("nvm_journal"), "{err}");
        let without = RslConfig { sync_writes: false, nvm_journal: None, ..base.clone() };
        assert_eq!(without.validate(), Ok(()), "the file journal may run unsynced (benchmarks)");
        let at_max = NvmJournal { size_mb: MAX_NVM_JOURNAL_MB, ..nvm.clone() };
        assert_eq!(RslConfig { nvm_journal: Some(at_max), ..base.clone() }.validate(), Ok(()));
        let above = NvmJournal { size_mb: MAX_NVM_JOURNAL_MB + 1, ..nvm };
        let err = RslConfig { nvm_journal: Some(above), ..base }.validate().unwrap_err();
        assert_eq!(err, ConfigError::Range { field: "nvm_journal.size_mb", value: (1 << 20) + 1, min: 1, max: 1 << 20 });
    }

    #[test]
    fn port_bounds_keep_legitimate_traffic_possible() {
        let cfg = RslConfig::default();
        let t = cfg.transport_options();
        assert_eq!((t.max_inbound, t.idle_timeout, t.frame_timeout), (256, Duration::from_secs(60), Duration::from_secs(30)));
        assert_eq!(t.max_buffered, 2 * cfg.max_message_bytes(), "one largest message as its buffer grows");
        assert_eq!(cfg.learn_limits().max_connections, 256);
        // One largest message always fits the budget; heartbeats never leave a connection idle.
        let cfg = RslConfig { max_message_size_mb: 1000, heart_beat_interval_sec: 30, ..RslConfig::default() };
        let t = cfg.transport_options();
        assert_eq!((t.max_buffered, t.idle_timeout), (2 * cfg.max_message_bytes(), Duration::from_secs(120)));
    }
}
