//! [`RslReplica`]: one replica of one ring, as a service sees it (RSL's `RSLStateMachine`
//! public methods): start-up and restore, requests, reads, membership, and unload.

use super::api::{Admission, InitError, ReplicaHealth, ResponseCode, StateMachine, Stats};
use super::checkpoints::{Catalog, CheckpointStore};
use super::config::RslConfig;
use super::event::Event;
use super::exec::{fetch_checkpoint, Executor, Work};
use super::journal::{read_defunct, Journal, JournalOptions};
use super::learn::{self, LearnServer, LearnSource};
use super::metrics;
use super::net::{NetRuntime, Tasks};
use super::queue::{self, Queue, Refused};
use super::readers::{Read, Ready};
use super::resolve::{Notes, Resolver, RESOLVE_INTERVAL};
use super::ring::{learn_addr, Io, Limits, Ring};
use super::tls::Tls;
use super::transport::{Origin, Transport};
use super::{panic_message, restore, FileRange, ReplicaView, Shared};
use crate::format::message::StatusBody;
use crate::format::{Ballot, Body, ConfigInfo, Header, MemberId, MemberSet, Message, Node, Version};
use crate::paxos::{Action, Cookie, Input, Replica, Role};
use bytes::Bytes;
use std::net::{SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running replica. Every method may be called from any thread.
///
/// It stops when asked (`unload`, `relinquish_primary`, an `is_last_decree` request, a
/// configuration without it), to catch up by a restart ([`restart_to_catch_up`](Self::restart_to_catch_up),
/// with [`CatchUp::Restart`](super::CatchUp::Restart)), or on its own, when it *fails*: a replica thread panicked, a
/// journal write or sync failed (a full disk), a checkpoint could not be saved or loaded. A
/// failed replica is stopped at once, whatever it was doing: [`failure`](Self::failure) says
/// why, [`is_stopped`](Self::is_stopped) is true, every call answers `ShuttingDown` (or does
/// nothing), and the threads end by themselves. The execute thread then aborts the fast reads
/// waiting (`ShuttingDown`) and raises `shut_down(ShuttingDown)`, once. If it is the execute
/// thread that died (a `StateMachine` callback panicked), the state machine went with it: no
/// callback runs any more, `shut_down` included. Replicated requests in flight when the
/// protocol thread dies get no `abort_request`. [`unload`](Self::unload) still has to be
/// called (or the replica dropped) to free the ports; it returns once the threads have ended.
/// The original ends the process instead; a service that wants that calls
/// `std::process::exit` from `shut_down` or when `failure()` turns `Some` (as `rsl-kv` does).
pub struct RslReplica {
    shared: Arc<Shared>,
    events: Queue<Event>,
    work: Queue<Work>,
    /// Fast reads whose decree has executed, for the reader threads.
    ready: Arc<Ready>,
    me: Node,
    version: Version,
    fast_read_threshold: u64,
    /// Requests are refused while the core queues this many bytes of them (`max_cache_bytes`).
    max_queued_bytes: u64,
    /// A longer request could not travel in any vote (the core checks again with the cookie).
    max_request_bytes: usize,
    transport: Arc<Transport>,
    checkpoints: Arc<Catalog>,
    receive_timeout: Duration,
    threads: Mutex<Vec<JoinHandle<()>>>,
    runtime: Mutex<Option<NetRuntime>>,
    /// Its background tasks on that runtime.
    tasks: Tasks,
    learn: LearnServer,
    /// One configuration for the Paxos port, the learn port and the learn clients.
    tls: Option<Arc<Tls>>,
    /// `tls.refused()` at the last statistics snapshot.
    tls_refused_reported: std::sync::atomic::AtomicU64,
    dir: PathBuf,
    /// The resolver thread's mailbox, if the service resolves members' addresses.
    resolver: Option<Arc<Notes>>,
    /// While paused (`pause`): dropping it resumes the protocol thread.
    paused: Mutex<Option<mpsc::Sender<()>>>,
    /// What the process's metrics read of this replica (they hold it weakly).
    _probe: Arc<metrics::Probe>,
    /// The replica's `rsl{ring, member}` span, which its threads run in; `unload` enters it
    /// on the caller's thread too.
    span: tracing::Span,
    /// Tests make the journal's writes fail through this.
    #[cfg(test)]
    journal: super::journal::LogReader,
}

/// What the learn port serves: this replica's logs and newest checkpoint.
struct Files {
    log: super::journal::LogReader,
    checkpoints: Arc<Catalog>,
    shared: Arc<Shared>,
    me: MemberId,
    version: Version,
}

impl LearnSource for Files {
    fn served(&self, bytes: u64, disk: std::time::Duration) {
        self.shared.log_reads.record(bytes, disk);
    }
    fn votes_from(&self, decree: u64, pipelined: bool) -> Option<Vec<FileRange>> {
        self.log.votes_from(decree, pipelined)
    }
    fn checkpoint(&self, decree: u64) -> Option<PathBuf> {
        self.checkpoints.newest().filter(|(d, ..)| *d == decree).map(|(_, path, _)| path)
    }
    /// What `CopyStateFromReplica` asks: how far this replica's log and checkpoint go.
    fn status(&self, query: &Message) -> Option<Message> {
        let (checkpointed_decree, checkpoint_size) = self.checkpoints.newest().map_or((0, 0), |(decree, _, size)| (decree, size));
        let body = StatusBody {
            query_decree: query.header.decree,
            query_ballot: query.header.ballot,
            last_received_ago_ms: 0,
            min_decree_in_log: self.log.min_decree(),
            checkpointed_decree,
            checkpoint_size,
            max_ballot: Ballot::EMPTY,
            state: 0,
        };
        let header = Header::new(self.version, self.me, query.header.decree, query.header.config, Ballot::EMPTY);
        Some(Message::new(header, Body::StatusResponse(body)))
    }
}

impl RslReplica {
    /// `Initialize`: restores the state (newest loadable checkpoint, then the chosen decrees
    /// of the logs, executed on the calling thread), then starts the protocol. `members` is the
    /// legacy form's initial member list; without it (v4+) a replica that has never been
    /// bootstrapped waits inactive for [`bootstrap`](Self::bootstrap).
    pub fn initialize(
        cfg: RslConfig,
        me: Node,
        version: Version,
        mut sm: Box<dyn StateMachine>,
        admission: Arc<dyn Admission>,
        members: Option<MemberSet>,
    ) -> Result<RslReplica, InitError> {
        cfg.validate()?;
        // Every line the replica logs, on any of its threads, names its ring and member.
        let ring_name = metrics::ring_label(&cfg.ring_name, &me);
        let span = tracing::error_span!("rsl", ring = %ring_name, member = %me.id);
        let _span = span.clone().entered();
        if members.is_none() && version.get() < 4 {
            return Err(InitError::Invalid("a replica without an initial member list needs protocol version 4 or later"));
        }
        let tls = cfg.tls.as_ref().map(Tls::load).transpose()?.map(Arc::new);
        let dir = data_dir(&cfg, &me.id);
        std::fs::create_dir_all(&dir).map_err(|e| InitError::Storage(format!("{}: {e}", dir.display())))?;
        let storage = |e: &dyn std::fmt::Display| InitError::Storage(e.to_string());
        let store =
            CheckpointStore::open(&dir, cfg.max_checkpoints as usize).map_err(|e| storage(&e))?.with_alerts(cfg.checkpoint_alerts());
        let initial =
            members.as_ref().map_or_else(ConfigInfo::default, |set| ConfigInfo { number: 1, initial_decree: 0, members: set.clone() });
        let mut core = Replica::new(cfg.core_config(version), me.id, initial, seed(&me.id) ^ 0x5eed);
        // Created before the first callback, so that restore-time callbacks can query it.
        let shared = Arc::new(Shared::new());
        sm.attach(ReplicaView::new(shared.clone()));
        let loaded = restore::load(&mut core, store.list(), &mut *sm, &shared);
        let checkpoints = store.catalog();
        let start = Instant::now();
        let (events_tx, events_rx) = queue::bounded(queue::CAPACITY);
        let (work_tx, work_rx) = queue::bounded(queue::CAPACITY);

        let on_durable = {
            let events = events_tx.clone();
            move |seq| drop(events.send(Event::Durable(seq)))
        };
        let on_error = {
            let events = events_tx.clone();
            move |e: std::io::Error| drop(events.send(Event::Fatal(format!("journal write failed: {e}"))))
        };
        let opts = JournalOptions {
            dir: dir.clone(),
            max_log_len: cfg.max_log_len_bytes(),
            log_len_randomize_pct: cfg.log_len_randomize,
            max_logs: cfg.max_logs as usize,
            max_pending_bytes: (cfg.max_cache_length_mb as usize) << 20,
            sync: cfg.sync_writes,
            seed: seed(&me.id),
            timing: shared.log_writes.clone(),
            nvm: cfg.nvm_options(&dir),
            group: cfg.journal_group.clone(),
        };
        let (journal, logged) = Journal::open(opts, loaded, on_durable, on_error).map_err(|e| storage(&e))?;
        core.restore_defunct(read_defunct(&dir).map_err(|e| storage(&e))?);
        let mut exec = Executor::new(sm, shared.clone(), store, me.id, version, events_tx.clone());
        // Every chosen decree executes on the calling thread.
        restore::replay(&mut core, &logged, |action| {
            match action {
                Action::Execute { vote, cookies } => {
                    restore::executing(&shared, &vote);
                    exec.handle(Work::Execute { vote, cookies })
                }
                Action::ConfigurationChanged { config, .. } => exec.handle(Work::ConfigChanged { config, cookie: None }),
                other => tracing::debug!(?other, "ignored during replay"),
            }
            ControlFlow::Continue(())
        })?;
        shared.view().config = core.configuration().clone();
        shared.passed_seq.store(shared.current_seq.load(Relaxed), Relaxed);

        let runtime = NetRuntime::new(cfg.network_group.clone()).map_err(|e| storage(&e))?;
        let tasks = Tasks::new(runtime.handle().clone());
        let bind_ip = if cfg.listen_on_all_ips { std::net::Ipv4Addr::UNSPECIFIED } else { me.ip };
        let paxos = SocketAddr::V4(SocketAddrV4::new(bind_ip, me.rsl_port));
        if tls.is_none() && !paxos.ip().is_loopback() {
            tracing::warn!(%paxos, "TLS is off: the Paxos and learn ports take any peer that can reach them, unauthenticated");
        }
        // A message that finds the protocol thread's queue full is dropped, not waited for: the
        // transport's tasks must never block, and the sender resends what matters.
        let deliver = {
            let (events, shared) = (events_tx.clone(), shared.clone());
            Arc::new(move |msg: Arc<Message>, origin: Origin| {
                if events.offer(Event::Message(msg, origin)) == Err(Refused::Full) {
                    shared.stats.messages_dropped.fetch_add(1, Relaxed);
                }
            })
        };
        let transport = Arc::new(
            Transport::start(runtime.handle(), paxos, cfg.transport_options(), tls.clone(), deliver)
                .map_err(|source| InitError::Listen { addr: paxos, source })?,
        );
        // Before the protocol thread sets the first peers, so that every connection reports.
        let resolver = admission.resolves_nodes().then(|| Arc::new(Notes::default()));
        if let Some(notes) = &resolver {
            let notes = notes.clone();
            transport.on_connect_failure(Arc::new(move |id| notes.connect_failed(id)));
        }
        let learn_at = SocketAddr::new(bind_ip.into(), learn_addr(&me).port());
        #[cfg(test)]
        let journal_faults = journal.reader();
        let files = Arc::new(Files { log: journal.reader(), checkpoints: checkpoints.clone(), shared: shared.clone(), me: me.id, version });
        let learn = LearnServer::start(runtime.handle(), learn_at, files, cfg.learn_limits(), tls.clone())
            .map_err(|source| InitError::Listen { addr: learn_at, source })?;

        let limits = Limits {
            receive_timeout: Duration::from_secs(cfg.receive_timeout_sec.into()),
            max_learn_bytes: 64 << 20,
            execution_queue_bytes: cfg.execution_queue_bytes(),
            vote_max_outstanding: u64::from(cfg.vote_max_outstanding_interval_sec) * crate::paxos::SEC,
        };
        let io = Io::new(
            journal,
            transport.clone(),
            tasks.clone(),
            work_tx.clone(),
            events_tx.clone(),
            shared.clone(),
            checkpoints.clone(),
            dir.clone(),
            limits,
            tls.clone(),
            start,
            cfg.catch_up,
            resolver.clone(),
            me.id,
        );
        let lookup = resolver.clone().map(|notes| Resolver::new(admission.clone(), events_tx.clone(), notes, RESOLVE_INTERVAL));
        let ring = Ring::new(core, admission, io);
        let siblings = Siblings {
            shared: shared.clone(),
            events: events_tx.clone(),
            work: work_tx.clone(),
            transport: transport.clone(),
            resolver: resolver.clone(),
        };
        let ready = exec.start_readers(cfg.num_reader_threads, |body| spawn("rsl-read", siblings.clone(), body));
        let mut threads = vec![
            spawn("rsl-exec", siblings.clone(), move || exec.run(work_rx)),
            spawn("rsl-paxos", siblings.clone(), move || ring.run(events_rx)),
        ];
        threads.extend(lookup.map(|lookup| spawn("rsl-resolve", siblings, move || lookup.run())));
        let probe = Arc::new(metrics::Probe {
            ring: ring_name,
            member: me.id.to_string(),
            shared: shared.clone(),
            events: events_tx.depth().clone(),
            work: work_tx.depth().clone(),
            transport: transport.clone(),
            tls: tls.clone(),
        });
        probe.register();
        Ok(RslReplica {
            _probe: probe,
            span,
            shared,
            events: events_tx,
            work: work_tx,
            ready,
            me,
            version,
            fast_read_threshold: cfg.fast_read_seq_threshold.into(),
            max_queued_bytes: u64::from(cfg.max_cache_length_mb) << 20,
            max_request_bytes: cfg.max_message_bytes() - crate::format::message::MAX_HEADER_SIZE - 10,
            transport,
            checkpoints,
            receive_timeout: Duration::from_secs(cfg.receive_timeout_sec.into()),
            threads: Mutex::new(threads),
            runtime: Mutex::new(Some(runtime)),
            tasks,
            learn,
            tls,
            tls_refused_reported: Default::default(),
            dir,
            resolver,
            paused: Mutex::new(None),
            #[cfg(test)]
            journal: journal_faults,
        })
    }

    /// `Replay`: read-only. Rebuilds `sm` from the data directory of replica `me` (the newest
    /// checkpoint at or below `max_seq`, then the logs' chosen decrees up to `max_seq`) on the
    /// calling thread, with no network and no writes. Returns the last executed decree.
    pub fn replay(cfg: &RslConfig, me: &MemberId, version: Version, sm: &mut dyn StateMachine, max_seq: u64) -> Result<u64, InitError> {
        restore::read_only(&data_dir(cfg, me), version, sm, max_seq)
    }

    /// The replica's data directory (working directory, plus the member id if configured).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The configured protocol version. The protocol itself may since speak a newer one
    /// (a vote of a newer version executed: docs/core.md, "Protocol versions").
    pub fn protocol_version(&self) -> Version {
        self.version
    }

    fn check_submit(&self, request: &[u8]) -> Option<ResponseCode> {
        if self.shared.shutting_down.load(Relaxed) {
            Some(ResponseCode::ShuttingDown)
        } else if !self.shared.is_primary.load(Relaxed) {
            Some(ResponseCode::NotPrimary)
        } else if request.is_empty() || request.len() > self.max_request_bytes {
            Some(ResponseCode::InvalidParameter)
        } else {
            None
        }
    }

    /// `ReplicateRequest`: on Success the cookie comes back exactly once, through
    /// `execute_replicated_request` here or `abort_request`. `NotPrimary` also answers a
    /// request that finds the protocol thread's queue full, or the requests queued behind the
    /// votes in flight at `max_cache_length_mb` (docs/runtime.md); retry later.
    pub fn replicate_request(&self, request: Bytes, cookie: Cookie) -> ResponseCode {
        self.submit(request, cookie, false, false)
    }

    /// `ReplicateRequestExclusiveVote`: the request gets a vote of its own. With
    /// `is_last_decree`, the replica refuses every later request (ShuttingDown), and the core
    /// sends no heartbeat after the vote, so the secondaries elect another primary
    /// (docs/spec/behavior.md §2.19).
    pub fn replicate_request_exclusive_vote(&self, request: Bytes, cookie: Cookie, is_last_decree: bool) -> ResponseCode {
        let code = self.submit(request, cookie, true, is_last_decree);
        if code == ResponseCode::Success && is_last_decree {
            // Refuse at once on the caller's side too; the core refuses whatever races past.
            self.shared.shutting_down.store(true, Relaxed);
        }
        code
    }

    fn submit(&self, request: Bytes, cookie: Cookie, exclusive: bool, last: bool) -> ResponseCode {
        // Checked and queued under the gate, so a step-down knows every request taken before it
        // (`Io::status_after`).
        let _gate = self.shared.submit_gate.read().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = self.check_submit(&request) {
            return code;
        }
        // The core refuses past its bound too (the cookie then comes back aborted); this answers
        // at once while the bound is already reached. A full execute queue refuses too: the
        // core's refusals come back through it (`AbortRequest`), and while the execute thread
        // is stuck in a callback they would pile up there; this way at most one event queue of
        // them races past.
        if self.shared.queued_bytes.load(Relaxed) >= self.max_queued_bytes || self.work.is_full() {
            self.shared.stats.requests_refused.fetch_add(1, Relaxed);
            return ResponseCode::NotPrimary;
        }
        // Counted before it can be handled, uncounted if not queued: the gate hides the
        // difference from the protocol thread.
        self.shared.submits_offered.fetch_add(1, Relaxed);
        let code = self.offer(&self.events, Event::Submit { request, cookie, exclusive, last }, ResponseCode::NotPrimary);
        if code != ResponseCode::Success {
            self.shared.submits_offered.fetch_sub(1, Relaxed);
        }
        code
    }

    /// `FastReadRequest`: runs `execute_fast_read_request` on this replica once its state has
    /// reached `max_seen_seq_no`, waiting up to `timeout` if it lags by no more than
    /// `m_fastReadSeqThreshold` (docs/spec/behavior.md §2.18).
    pub fn fast_read_request(&self, max_seen_seq_no: u64, request: Bytes, cookie: Cookie, timeout: Duration) -> ResponseCode {
        if self.shared.shutting_down.load(Relaxed) {
            return ResponseCode::ShuttingDown;
        }
        let lag = max_seen_seq_no.saturating_sub(self.shared.current_seq.load(Acquire));
        if lag > 0 && (lag > self.fast_read_threshold || timeout.is_zero() || self.shared.saving.load(Relaxed)) {
            return ResponseCode::FastReadStale;
        }
        if lag == 0 {
            return self.answer(self.ready.offer(Read { request, cookie }), ResponseCode::FastReadStale);
        }
        // The execute thread keeps it until its decree executes (or its deadline passes).
        let deadline = Instant::now() + timeout;
        self.offer(&self.work, Work::FastRead { max_seen: max_seen_seq_no, request, cookie, deadline }, ResponseCode::FastReadStale)
    }

    /// Queues a request for one of the replica's threads, answering `full` at once (and
    /// counting it) when that thread's queue is full. The original's queues have no bound, so
    /// it has no code of its own for this; `full` is the one among the call's documented codes
    /// that tells the caller to retry later: `NotPrimary` for a replicated request (as while a
    /// primary is being elected), `FastReadStale` for a read (as while a checkpoint is saved).
    fn offer<T>(&self, queue: &Queue<T>, item: T, full: ResponseCode) -> ResponseCode {
        self.answer(queue.offer(item), full)
    }

    /// What the caller is told of an offer (see [`RslReplica::offer`]).
    fn answer(&self, offered: Result<(), Refused>, full: ResponseCode) -> ResponseCode {
        match offered {
            Ok(()) => ResponseCode::Success,
            Err(Refused::Full) => {
                self.shared.stats.requests_refused.fetch_add(1, Relaxed);
                full
            }
            Err(Refused::Closed) => ResponseCode::ShuttingDown,
        }
    }

    /// The replica's published state, for another thread or a later callback: what the
    /// query methods below answer.
    pub fn view(&self) -> ReplicaView {
        ReplicaView::new(self.shared.clone())
    }

    /// `GetCurrentSequenceNumber`: see [`ReplicaView::current_sequence_number`].
    pub fn current_sequence_number(&self) -> u64 {
        self.view().current_sequence_number()
    }

    /// `GetHighestPassedSequenceNumber`: the highest decree known chosen.
    pub fn highest_passed_sequence_number(&self) -> u64 {
        self.view().highest_passed_sequence_number()
    }

    /// `IsAnyRequestPendingExecution`: a chosen decree has not executed yet.
    pub fn is_any_request_pending_execution(&self) -> bool {
        self.view().is_any_request_pending_execution()
    }

    /// `GetConfiguration`: the state configuration's members and number.
    pub fn configuration(&self) -> (MemberSet, u32) {
        self.view().configuration()
    }

    /// `GetCurrentPrimary`: the owner of the highest accepted ballot (a hint).
    pub fn current_primary(&self) -> Option<MemberId> {
        self.view().current_primary()
    }

    /// Primary, secondary, or on the way (None until the protocol thread has run).
    pub fn role(&self) -> Option<Role> {
        self.view().role()
    }

    /// Whether this replica is primary now (`NotifyStatus(true)` was raised and not revoked).
    pub fn is_primary(&self) -> bool {
        self.view().is_primary()
    }

    /// `ChangeConfiguration`: primary only; the cookie comes back through
    /// `notify_configuration_changed` or `abort_change_configuration`.
    pub fn change_configuration(&self, members: MemberSet, cookie: Cookie) -> ResponseCode {
        self.ask(|reply| Event::ChangeConfiguration { members, cookie, reply })
    }

    /// `Bootstrap` (v4+): gives a never-bootstrapped replica its first member set.
    pub fn bootstrap(&self, members: MemberSet) -> ResponseCode {
        self.ask(|reply| Event::Bootstrap { members, reply })
    }

    /// A call that waits for the protocol thread's answer. Its event is queued whatever the
    /// depth: each caller has at most one waiting, so these cannot flood the queue.
    fn ask(&self, event: impl FnOnce(mpsc::SyncSender<ResponseCode>) -> Event) -> ResponseCode {
        if self.shared.shutting_down.load(Relaxed) {
            return ResponseCode::ShuttingDown;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if self.events.send(event(tx)).is_err() {
            return ResponseCode::ShuttingDown;
        }
        rx.recv().unwrap_or(ResponseCode::ShuttingDown)
    }

    /// A control call (relinquish, promotion, vote payload, accepting messages): rare, and not
    /// to be lost, so queued whatever the depth.
    fn input(&self, input: Input) {
        let _ = self.events.send(Event::Input(input));
    }

    /// `RelinquishPrimary` (v5+): a last vote, then this replica shuts down.
    pub fn relinquish_primary(&self) {
        self.input(Input::RelinquishPrimary)
    }

    /// `AttemptPromotion`: stand for election at the next opportunity.
    pub fn attempt_promotion(&self) {
        self.input(Input::AttemptPromotion)
    }

    /// `SetVotePayload` (v6+).
    pub fn set_vote_payload(&self, payload: u64) {
        self.input(Input::SetVotePayload(payload))
    }

    /// `ChangeElectionDelay`: replaces the configured election delay (randomised again), from
    /// the next time an election timer is set. Not persisted.
    pub fn change_election_delay(&self, delay: Duration) {
        self.input(Input::ChangeElectionDelay(delay.as_micros().min(u64::MAX as u128) as u64))
    }

    /// `Pause` (a test hook in RSL): the protocol thread freezes once it reaches this call
    /// (no timers, no messages handled; peers' messages past its queue's bound are dropped)
    /// until `resume` or `unload`. Execution of decrees already chosen goes on. Twice is once.
    pub fn pause(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none() {
            let (resume, until) = mpsc::channel();
            let _ = self.events.send(Event::Pause(until));
            *paused = Some(resume);
        }
    }

    /// `Resume`: ends `pause`; nothing if not paused.
    pub fn resume(&self) {
        drop(self.paused.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// `SetAcceptMessages`: the global accept flag (with `m_useGlobalAcceptMessagesFlag`).
    pub fn set_accept_messages(&self, accept: bool) {
        self.input(Input::SetAcceptMessages(accept))
    }

    /// `AllowSaveState`: automatic checkpoints on or off (not persisted).
    pub fn allow_save_state(&self, allow: bool) {
        self.shared.allow_save.store(allow, Relaxed);
    }

    /// `CopyStateFromReplica`: in the background, copies a checkpoint at least as new as ours
    /// from a peer into the data directory (it takes effect at the next start) and reports
    /// through `state_copied` with `cookie` (sequence 0 and no file if no peer had one).
    pub fn copy_state_from_replica(&self, cookie: Cookie) -> ResponseCode {
        // Held until the task is spawned: `unload` takes the runtime and then aborts the tasks,
        // so the task is either refused here or aborted there, never left behind.
        let runtime = self.runtime.lock().expect("runtime");
        if runtime.is_none() || self.shared.shutting_down.load(Relaxed) {
            return ResponseCode::ShuttingDown;
        }
        let peers: Vec<Node> = self.configuration().0.nodes.into_iter().filter(|n| n.id != self.me.id).collect();
        let (checkpoints, work, me, version, limit) =
            (self.checkpoints.clone(), self.work.clone(), self.me.id, self.version, self.receive_timeout);
        let tls = self.tls.clone();
        let task = async move {
            let copied = copy_state(peers, &checkpoints, &work, me, version, limit, tls.as_deref()).await;
            let (seq, path) = copied.map_or((0, None), |(seq, path)| (seq, Some(path)));
            let _ = work.send(Work::Copied { seq, path, cookie: Some(cookie) });
        };
        let events = self.events.clone();
        // In the replica's span, not the caller's: a shared runtime's threads carry none.
        let _span = self.span.enter();
        self.tasks.spawn(task, move |panic| drop(events.send(Event::Fatal(format!("copying state from a peer panicked: {panic}")))));
        drop(runtime);
        ResponseCode::Success
    }

    /// `GetReplicasInformation`: on the primary, one entry per peer and then one for itself;
    /// empty elsewhere.
    pub fn replicas_information(&self) -> Vec<ReplicaHealth> {
        if !self.is_primary() {
            return Vec::new();
        }
        let seen = self.shared.votes_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let voted = |id: &MemberId| seen.members.iter().find(|(m, _)| m == id).map(|(_, v)| *v).unwrap_or_default();
        let peers = self.transport.peer_stats().into_iter().map(|p| {
            let v = voted(&p.member);
            ReplicaHealth {
                member_id: p.member,
                connected: p.connected,
                packets_sent: p.sent_packets,
                packets_dropped: p.dropped_packets,
                num_outstanding: p.outstanding,
                consecutive_failures: p.consecutive_failures,
                failed_at: p.failed_at,
                last_request_sent_at: p.last_sent_at,
                last_request_voted_at: v.at,
                last_request_voted_decree: v.decree,
                last_vote_payload: v.payload,
                needs_resolve: p.addr.ip().is_unspecified() || self.resolver.as_ref().is_some_and(|r| r.needs_resolve(&p.member)),
                is_primary: false,
            }
        });
        let own = seen.own;
        let me = ReplicaHealth {
            member_id: self.me.id,
            connected: true,
            last_request_sent_at: own.at,
            last_request_voted_at: own.at,
            last_request_voted_decree: own.decree,
            last_vote_payload: own.payload,
            is_primary: true,
            ..ReplicaHealth::default()
        };
        peers.chain([me]).collect()
    }

    /// `GetStatisticsSnapshot`: counters since the previous snapshot.
    pub fn statistics_snapshot(&self) -> Stats {
        let (c, r) = (&self.shared.stats, &self.shared.stats_reported);
        // The growth since the previous snapshot; the totals stay for the metrics.
        let since = |now: &std::sync::atomic::AtomicU64, reported: &std::sync::atomic::AtomicU64| {
            let now = now.load(Relaxed);
            now.saturating_sub(reported.fetch_max(now, Relaxed))
        };
        let now = std::time::Instant::now();
        let began = std::mem::replace(&mut *self.shared.last_snapshot.lock().unwrap_or_else(|e| e.into_inner()), now);
        Stats {
            capture_micros: u64::try_from(now.duration_since(began).as_micros()).unwrap_or(u64::MAX),
            log_reads: self.shared.log_reads.take(),
            log_writes: self.shared.log_writes.take(),
            voting: self.shared.voting.take(),
            decrees_executed: since(&c.decrees_executed, &r.decrees_executed),
            requests_executed: since(&c.requests_executed, &r.requests_executed),
            votes_logged: since(&c.votes_logged, &r.votes_logged),
            log_syncs: since(&c.log_syncs, &r.log_syncs),
            fast_reads: since(&c.fast_reads, &r.fast_reads),
            checkpoints_saved: since(&c.checkpoints_saved, &r.checkpoints_saved),
            messages_rejected: since(&c.messages_rejected, &r.messages_rejected),
            messages_dropped: since(&c.messages_dropped, &r.messages_dropped),
            requests_refused: since(&c.requests_refused, &r.requests_refused),
            event_queue_depth: self.events.depth().take_high(),
            work_queue_depth: self.work.depth().take_high(),
            queued_request_bytes: self.shared.queued_bytes.load(Relaxed),
            execution_queue_bytes: self.shared.exec_queue.take_high(),
            execution_queue_spilled: self.shared.exec_queue.spilled(),
            tls_refused: self.tls.as_ref().map_or(0, |tls| {
                let now = tls.refused();
                now.saturating_sub(self.tls_refused_reported.swap(now, Relaxed))
            }),
        }
    }

    /// The node this replica runs as.
    pub fn me(&self) -> &Node {
        &self.me
    }

    /// True once the replica has stopped: its threads have ended (unload, relinquish, a
    /// configuration without it), or it failed (see [`failure`](Self::failure)).
    pub fn is_stopped(&self) -> bool {
        self.shared.failure.get().is_some() || self.threads.lock().unwrap_or_else(|e| e.into_inner()).iter().all(|t| t.is_finished())
    }

    /// Why the replica stopped on its own (the failed state described on [`RslReplica`]): a
    /// replica thread panicked, or an I/O error or fatal condition stopped it. `None` while it
    /// runs and after a stop that was asked for.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.get().cloned()
    }

    /// `Some(decree)` once the replica stopped to catch up ([`CatchUp::Restart`](super::CatchUp::Restart)): it copied a
    /// peer's checkpoint of `decree` into its data directory, delivered
    /// `state_copied(decree, file, None)` and `shut_down(ShuttingDown)`. Initialize it again on
    /// the same directory (after [`unload`](Self::unload) frees the ports): that restore loads
    /// the checkpoint. Not a failure: [`failure`](Self::failure) stays `None`.
    pub fn restart_to_catch_up(&self) -> Option<u64> {
        self.shared.restart_to_catch_up.get().copied()
    }

    /// `UnloadThisOne`: stops the replica. Requests in flight come back `ShuttingDown`, then
    /// `shut_down` runs; the threads are joined. The process keeps running. Later calls do
    /// nothing. On a failed replica it only waits for the threads, which are already ending.
    pub fn unload(&self) {
        let _span = self.span.enter();
        self.shared.shutting_down.store(true, Relaxed);
        self.resume();
        let _ = self.events.send(Event::Stop);
        if let Some(resolver) = &self.resolver {
            resolver.stop();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        let runtime = self.runtime.lock().expect("runtime").take();
        if let Some(rt) = runtime {
            // A runtime shared with other rings goes on: end what is this replica's on it.
            let mut aborted: Vec<_> = self.transport.shutdown().into_iter().chain(self.learn.shutdown()).collect();
            aborted.extend(self.tasks.abort_all());
            rt.shut_down(aborted);
        }
    }
}

impl Drop for RslReplica {
    fn drop(&mut self) {
        self.unload();
    }
}

/// Tries each peer in turn for a checkpoint at least as new as ours; installs the first that
/// arrives intact.
async fn copy_state(
    peers: Vec<Node>,
    checkpoints: &Catalog,
    work: &Queue<Work>,
    me: MemberId,
    version: Version,
    limit: Duration,
    tls: Option<&Tls>,
) -> Option<(u64, PathBuf)> {
    let ours = checkpoints.newest().map_or(0, |(d, ..)| d);
    let known: Vec<MemberId> = peers.iter().map(|n| n.id).chain([me]).collect();
    for node in &peers {
        let peer = learn::Peer { addr: learn_addr(node), tls, binding: Some((node.id, &known)) };
        let query = Message::new(Header::new(version, me, 0, 0, Ballot::EMPTY), Body::StatusQuery);
        let Ok(reply) = learn::fetch_status(peer, &query, limit).await else { continue };
        let Body::StatusResponse(s) = reply.body else { continue };
        if s.checkpointed_decree == 0 || s.checkpointed_decree < ours {
            continue;
        }
        let request = Message::new(Header::new(version, me, s.checkpointed_decree, 0, Ballot::EMPTY), Body::FetchCheckpoint);
        if let Ok((saved, _)) = fetch_checkpoint(peer, &request, s.checkpoint_size, checkpoints.temp_path(), limit, 3, work).await {
            return Some((saved.decree, saved.path));
        }
    }
    None
}

/// What one replica thread's death tells the others. The siblings then end as on `unload`
/// (the execute thread raises `shut_down`), and the Paxos port stops taking packets.
#[derive(Clone)]
struct Siblings {
    shared: Arc<Shared>,
    events: Queue<Event>,
    work: Queue<Work>,
    transport: Arc<Transport>,
    resolver: Option<Arc<Notes>>,
}

impl Siblings {
    fn fail(&self, reason: String) {
        self.shared.fail(reason);
        self.transport.shutdown();
        if let Some(resolver) = &self.resolver {
            resolver.stop();
        }
        let _ = self.events.send(Event::Stop);
        let _ = self.work.send(Work::Stop);
    }
}

/// Runs one of the replica's threads. A panic fails the replica instead of
/// leaving its siblings waiting for a thread that is gone; the thread's state (the core and
/// journal, or the state machine) has been dropped by then.
fn spawn(name: &'static str, siblings: Siblings, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let span = tracing::Span::current();
    let run = move || {
        let _span = span.entered();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
            siblings.fail(format!("the {name} thread panicked: {}", panic_message(&*panic)));
        }
    };
    std::thread::Builder::new().name(name.into()).spawn(run).expect("spawn a replica thread")
}

/// `m_workingDir`, plus the member id with `m_addMemberIdToWorkingDir`.
fn data_dir(cfg: &RslConfig, id: &MemberId) -> PathBuf {
    let root = cfg.working_dir.clone();
    if cfg.add_member_id_to_working_dir {
        root.join(String::from_utf8_lossy(id.as_bytes()).as_ref())
    } else {
        root
    }
}

/// The core's random source: seeded per replica and per start (timing jitter only).
fn seed(id: &MemberId) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    id.as_bytes().iter().fold(t ^ u64::from(std::process::id()), |h, b| h.rotate_left(5) ^ u64::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::checkpoint::{CheckpointReader, CheckpointWriter};
    use crate::runtime::api::node;
    use crate::runtime::AdmitAll;
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::atomic::AtomicBool;

    const BOUND: Duration = Duration::from_secs(10);

    /// Counts `shut_down` calls; panics executing a request that says "boom".
    struct Machine(Arc<Mutex<Vec<&'static str>>>);

    impl StateMachine for Machine {
        fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
            true
        }
        fn execute_replicated_request(&mut self, request: &[u8], _: Option<Cookie>, _: &mut bool) {
            assert!(request != b"boom", "the state machine panics on boom");
            self.0.lock().unwrap().push("exec");
        }
        fn execute_fast_read_request(&self, request: &[u8], _: Cookie) {
            assert!(request != b"boom", "the read panics on boom");
            self.0.lock().unwrap().push("read");
        }
        fn abort_request(&mut self, _: ResponseCode, _: Cookie) {
            self.0.lock().unwrap().push("abort");
        }
        fn save_state(&self, _: &mut CheckpointWriter) {}
        fn notify_status(&mut self, _: bool) {}
        fn notify_configuration_changed(&mut self, _: Option<Cookie>) {}
        fn abort_change_configuration(&mut self, _: ResponseCode, _: Cookie) {}
        fn shut_down(&mut self, _: ResponseCode) {
            self.0.lock().unwrap().push("shut_down");
        }
    }

    /// Panics on the protocol thread at the first election once armed.
    #[derive(Default)]
    struct Veto(AtomicBool);

    impl Admission for Veto {
        fn can_become_primary(&self) -> Option<Vec<u8>> {
            assert!(!self.0.load(Relaxed), "admission panics");
            Some(Vec::new())
        }
    }

    /// `n` Paxos ports from the OS, each with its next port (the learn port) free too.
    fn free_ports(n: usize) -> Vec<u16> {
        let mut held = Vec::new();
        while held.len() < 2 * n {
            let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = first.local_addr().unwrap().port();
            if let Some(next) = port.checked_add(1).and_then(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok()) {
                held.extend([first, next]);
            }
        }
        held.iter().step_by(2).map(|l| l.local_addr().unwrap().port()).collect()
    }

    fn config(dir: &Path) -> RslConfig {
        RslConfig {
            working_dir: dir.into(),
            election_delay_sec: 1,
            heart_beat_interval_sec: 1,
            new_leader_grace_period_sec: 1,
            ..RslConfig::default()
        }
    }

    struct One {
        replica: Option<RslReplica>,
        calls: Arc<Mutex<Vec<&'static str>>>,
        _dir: tempfile::TempDir,
    }

    /// A one-member ring.
    fn start_one(admission: Arc<dyn Admission>) -> One {
        let dir = tempfile::tempdir().unwrap();
        let me = node("1", Ipv4Addr::LOCALHOST, free_ports(1)[0]).unwrap();
        let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sm = Box::new(Machine(calls.clone()));
        let replica = RslReplica::initialize(config(dir.path()), me, Version::V6, sm, admission, Some(members)).unwrap();
        One { replica: Some(replica), calls, _dir: dir }
    }

    /// `m_workingDir` and `m_addMemberIdToWorkingDir`: a replica's logs go in the working
    /// directory, or in a directory named by its member id under it.
    #[test]
    fn the_logs_go_in_the_working_dir_or_under_the_member_id() {
        for add_member_id in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let me = node("7", Ipv4Addr::LOCALHOST, free_ports(1)[0]).unwrap();
            let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
            let cfg = RslConfig { add_member_id_to_working_dir: add_member_id, ..config(dir.path()) };
            let sm = Box::new(Machine(Arc::default()));
            let replica = RslReplica::initialize(cfg, me, Version::V6, sm, Arc::new(AdmitAll), Some(members)).unwrap();
            replica.unload();
            let logs =
                |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".log"));
            assert_eq!((logs(dir.path()), logs(&dir.path().join("7"))), (!add_member_id, add_member_id));
        }
    }

    /// On network threads shared with other rings, `unload` returns with the ring's ports
    /// closed (a runtime of its own closes them by shutting down), so a ring can start again
    /// on them at once, even while the shared threads are busy with others' work.
    #[test]
    fn unloading_a_ring_on_shared_network_threads_frees_its_ports() {
        let group = crate::runtime::NetworkGroup::new(1).unwrap();
        for busy in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let me = node("1", Ipv4Addr::LOCALHOST, free_ports(1)[0]).unwrap();
            let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
            let cfg = RslConfig { network_group: Some(group.clone()), ..config(dir.path()) };
            let start = || {
                let sm = Box::new(Machine(Arc::default()));
                RslReplica::initialize(cfg.clone(), me.clone(), Version::V6, sm, Arc::new(AdmitAll), Some(members.clone())).unwrap()
            };
            let replica = start();
            if busy {
                // Another ring's work holds the group's only thread for a while.
                let _held = group.handle().spawn(async { std::thread::sleep(Duration::from_millis(300)) });
            }
            replica.unload();
            for port in [me.rsl_port, learn_addr(&me).port()] {
                assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(), "port {port} still taken (busy {busy})");
            }
            drop(replica);
            start().unload();
        }
    }

    fn wait_for(what: &str, done: impl FnMut() -> bool) {
        wait_within(what, BOUND, done)
    }

    fn wait_within(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < until, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    impl Drop for One {
        fn drop(&mut self) {
            if std::thread::panicking() {
                // A failed test must not hang on a replica it found stuck.
                std::mem::forget(self.replica.take());
            }
        }
    }

    impl One {
        fn r(&self) -> &RslReplica {
            self.replica.as_ref().unwrap()
        }

        fn wait_primary(&self) {
            wait_for("primary", || self.r().is_primary());
        }

        fn shut_downs(&self) -> usize {
            self.calls.lock().unwrap().iter().filter(|c| **c == "shut_down").count()
        }

        /// The failed state: a reason, stopped, every call refused; then unload returns in
        /// time. Returns the reason.
        fn assert_failed(&mut self) -> String {
            wait_for("failure", || self.r().failure().is_some());
            let r = self.r();
            let reason = r.failure().unwrap();
            assert!(r.is_stopped());
            assert_eq!(r.replicate_request(Bytes::from_static(b"x"), 1), ResponseCode::ShuttingDown);
            assert_eq!(r.fast_read_request(0, Bytes::from_static(b"x"), 2, Duration::ZERO), ResponseCode::ShuttingDown);
            assert_eq!(r.change_configuration(r.configuration().0, 3), ResponseCode::ShuttingDown);
            assert_eq!(r.copy_state_from_replica(4), ResponseCode::ShuttingDown);
            let replica = self.replica.take().unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                replica.unload();
                let _ = tx.send(replica.failure());
            });
            let after = rx.recv_timeout(BOUND).expect("unload returns in time");
            assert_eq!(after.as_ref(), Some(&reason), "the reason stays after unload");
            reason
        }
    }

    /// The samples of `text` whose labels include `ring="<ring>"`: (name, labels, value).
    fn samples_of<'a>(text: &'a str, ring: &str) -> Vec<(&'a str, &'a str, f64)> {
        let ring = format!("ring=\"{ring}\"");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample is `series value`");
                let (name, labels) = series.split_once('{').expect("every sample has labels");
                (name, labels, value.parse::<f64>().expect("a number"))
            })
            .filter(|(_, labels, _)| labels.contains(&ring))
            .collect()
    }

    #[test]
    fn the_metrics_name_each_ring_and_count_from_the_start() {
        let mut one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        let r = one.r();
        let ring = r.me().rsl_port.to_string();
        assert_eq!(r.replicate_request(Bytes::from_static(b"one"), 1), ResponseCode::Success);
        wait_for("the request executes", || one.calls.lock().unwrap().contains(&"exec"));
        let r = one.r();
        let snapshot = r.statistics_snapshot();
        assert!(snapshot.requests_executed >= 1, "{snapshot:?}");
        let text = metrics::render();
        let samples = samples_of(&text, &ring);
        let value = |name: &str| samples.iter().find(|s| s.0 == name).unwrap_or_else(|| panic!("{name} missing:\n{text}")).2;
        assert_eq!(value("rsl_primary"), 1.0);
        assert_eq!((value("rsl_failed"), value("rsl_stopped")), (0.0, 0.0));
        assert!(value("rsl_decree_executed") >= 1.0);
        assert_eq!(value("rsl_members"), 1.0);
        // The snapshot reset its own counts, not the metrics' totals.
        assert!(value("rsl_requests_executed_total") >= 1.0, "{text}");
        assert!(value("rsl_log_writes_total") >= 1.0, "{text}");
        assert!(samples.iter().all(|s| s.1.contains("member=\"1\"")), "{samples:?}");
        for (name, _) in metrics::COUNTERS {
            assert!(samples.iter().any(|s| s.0 == format!("{name}_total")), "{name} missing");
        }
        assert!(text.contains("# TYPE rsl_decree_executed gauge"), "{text}");
        // A second ring in the process, named: the page shows both.
        let dir = tempfile::tempdir().unwrap();
        let me = node("2", Ipv4Addr::LOCALHOST, free_ports(1)[0]).unwrap();
        let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
        let cfg = RslConfig { ring_name: "orders".into(), ..config(dir.path()) };
        let named =
            RslReplica::initialize(cfg, me, Version::V6, Box::new(Machine(Arc::default())), Arc::new(AdmitAll), Some(members)).unwrap();
        let text = metrics::render();
        assert!(samples_of(&text, "orders").iter().any(|s| s.0 == "rsl_decree_executed" && s.1.contains("member=\"2\"")), "{text}");
        assert!(!samples_of(&text, &ring).is_empty(), "{text}");
        named.unload();
        let stopped = samples_of(&metrics::render(), "orders").into_iter().find(|s| s.0 == "rsl_stopped").map(|s| s.2);
        assert_eq!(stopped, Some(1.0), "an unloaded replica shows as stopped until dropped");
        drop(named);
        one.replica.take().unwrap().unload();
        let text = metrics::render();
        assert!(samples_of(&text, &ring).is_empty() && samples_of(&text, "orders").is_empty(), "dropped replicas leave the metrics");
    }

    /// `pause` holds what reaches the protocol thread until `resume`; paused twice, `unload`
    /// still returns.
    #[test]
    fn pause_holds_the_protocol_thread_until_resume_or_unload() {
        let mut one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        let executed = |one: &One| one.calls.lock().unwrap().iter().filter(|c| **c == "exec").count();
        let r = one.r();
        r.pause();
        assert_eq!(r.replicate_request(Bytes::from_static(b"held"), 1), ResponseCode::Success);
        wait_for("the request waits in the queue", || r.statistics_snapshot().event_queue_depth >= 1);
        r.resume();
        wait_for("the request executes after resume", || executed(&one) == 1);
        let r = one.r();
        r.pause();
        r.pause();
        let replica = one.replica.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            replica.unload();
            let _ = tx.send(());
        });
        rx.recv_timeout(BOUND).expect("unload of a paused replica returns in time");
    }

    #[test]
    fn a_panicking_protocol_thread_fails_the_replica() {
        let veto = Arc::new(Veto::default());
        veto.0.store(true, Relaxed);
        let mut one = start_one(veto);
        let reason = one.assert_failed();
        assert_eq!(reason, "the rsl-paxos thread panicked: admission panics");
        assert_eq!(one.shut_downs(), 1, "shut_down is raised once");
    }

    #[test]
    fn a_panicking_execute_thread_fails_the_replica() {
        let mut one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        assert_eq!(one.r().replicate_request(Bytes::from_static(b"boom"), 1), ResponseCode::Success);
        let reason = one.assert_failed();
        assert_eq!(reason, "the rsl-exec thread panicked: the state machine panics on boom");
        assert_eq!(one.shut_downs(), 0, "the state machine died with its thread");
    }

    /// A reader thread is a replica thread like the others: its panic fails the replica, and
    /// the execute thread, alive, still raises `shut_down` once the readers are joined.
    #[test]
    fn a_panicking_reader_thread_fails_the_replica() {
        let mut one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        assert_eq!(one.r().fast_read_request(0, Bytes::from_static(b"boom"), 1, Duration::ZERO), ResponseCode::Success);
        let reason = one.assert_failed();
        assert_eq!(reason, "the rsl-read thread panicked: the read panics on boom");
        assert_eq!(one.shut_downs(), 1, "shut_down is raised once");
    }

    #[test]
    fn a_journal_write_error_fails_the_replica() {
        let mut one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        one.r().journal.fail_writes();
        assert_eq!(one.r().replicate_request(Bytes::from_static(b"x"), 1), ResponseCode::Success);
        let reason = one.assert_failed();
        assert!(reason.starts_with("journal write failed: ") && reason.contains("injected write failure"), "{reason}");
        assert_eq!(one.shut_downs(), 1, "shut_down is raised once");
    }

    /// While the protocol thread is stuck, requests past its queue's bound are answered
    /// `NotPrimary` at once and peers' messages past it are dropped and counted, without
    /// blocking anyone; once it goes on, the replica replicates again.
    #[test]
    fn a_full_event_queue_refuses_requests_and_drops_messages_then_recovers() {
        let one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        let r = one.r();
        let (resume, until) = mpsc::channel();
        r.events.send(Event::Pause(until)).unwrap();
        // At most the capacity is taken; then a request is refused, the replica still primary.
        let taken = (0..=queue::CAPACITY as u64)
            .take_while(|&i| r.replicate_request(Bytes::from_static(b"queued"), i) == ResponseCode::Success)
            .count();
        assert!(taken <= queue::CAPACITY, "a request past the bound was refused");
        assert_eq!(r.replicate_request(Bytes::from_static(b"refused"), 1 << 40), ResponseCode::NotPrimary);
        assert!(r.is_primary());
        // A peer floods the Paxos port; the transport's task drops what does not fit.
        let header = Header::new(Version::V6, MemberId::new("2").unwrap(), 1, 1, Ballot::EMPTY);
        let msg = crate::runtime::transport::frame(&Message::new(header, Body::StatusQuery), &mut Default::default());
        let mut peer = std::net::TcpStream::connect(r.transport.local_addr()).unwrap();
        // Each snapshot restarts the depth's high mark, so the deepest is taken over all of them.
        let (mut dropped, mut deepest) = (0, 0);
        wait_for("messages dropped", || {
            std::io::Write::write_all(&mut peer, &msg).unwrap();
            let stats = r.statistics_snapshot();
            (dropped, deepest) = (dropped + stats.messages_dropped, deepest.max(stats.event_queue_depth));
            dropped > 0
        });
        assert!(deepest >= queue::CAPACITY as u64, "deepest event queue {deepest}");
        drop(resume);
        // Everything queued executes, and a new request replicates.
        wait_for("queued requests executed", || one.calls.lock().unwrap().iter().filter(|c| **c == "exec").count() == taken);
        assert_eq!(r.replicate_request(Bytes::from_static(b"after"), 2 << 40), ResponseCode::Success);
        wait_for("a request after the flood", || one.calls.lock().unwrap().iter().filter(|c| **c == "exec").count() == taken + 1);
        assert!(r.failure().is_none());
    }

    /// While an Exclusive callback runs (the execute thread holds the callback lock), fast
    /// reads past the readers' queue bound are answered `FastReadStale` at once; once it ends,
    /// the reads taken run and new ones are taken.
    #[test]
    fn a_full_read_queue_refuses_fast_reads_then_recovers() {
        let one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        let r = one.r();
        let reads = || one.calls.lock().unwrap().iter().filter(|c| **c == "read").count();
        let (resume, until) = mpsc::channel();
        let (paused, holds_the_lock) = mpsc::channel();
        r.work.send(Work::Pause(until, paused)).unwrap();
        holds_the_lock.recv().expect("the execute thread holds the callback lock");
        let read = |cookie| r.fast_read_request(0, Bytes::from_static(b"read"), cookie, Duration::ZERO);
        // The queue's bound, plus at most the one read the reader thread took before it waits.
        let taken = (0..2 * queue::CAPACITY as u64).take_while(|&i| read(i) == ResponseCode::Success).count();
        assert!(taken <= queue::CAPACITY + 1, "a read past the bound was refused: {taken}");
        assert_eq!(read(1 << 40), ResponseCode::FastReadStale);
        let stats = r.statistics_snapshot();
        assert_eq!(stats.requests_refused, 2, "{stats:?}");
        drop(resume);
        wait_for("queued reads run", || reads() == taken);
        assert_eq!(read(2 << 40), ResponseCode::Success);
        wait_for("a read after the flood", || reads() == taken + 1);
        assert_eq!(r.replicate_request(Bytes::from_static(b"after"), 3 << 40), ResponseCode::Success);
        wait_for("a request after the flood", || one.calls.lock().unwrap().contains(&"exec"));
    }

    /// While the execute thread is stuck with its queue full, a replicated request is refused
    /// at once (`NotPrimary`): the core's own refusals come back through that queue as aborts,
    /// so they would pile up there; once the thread goes on, requests are taken again.
    #[test]
    fn a_full_work_queue_refuses_requests_then_recovers() {
        let one = start_one(Arc::new(AdmitAll));
        one.wait_primary();
        let r = one.r();
        let mut resumes = Vec::new();
        while !r.work.is_full() {
            let (resume, until) = mpsc::channel::<()>();
            r.work.offer(Work::Pause(until, mpsc::channel().0)).unwrap();
            resumes.push(resume);
        }
        assert_eq!(r.replicate_request(Bytes::from_static(b"refused"), 1), ResponseCode::NotPrimary);
        assert_eq!(r.statistics_snapshot().requests_refused, 1);
        drop(resumes);
        wait_for("the execute queue drains", || !r.work.is_full());
        assert_eq!(r.replicate_request(Bytes::from_static(b"after"), 2), ResponseCode::Success);
        wait_for("the request after executes", || one.calls.lock().unwrap().contains(&"exec"));
    }

    /// Finding 3 of issue 9: a replica that was never bootstrapped, added to a ring started
    /// from a member list, is sent Joins saying "checkpoint 0, size 0": the members have no
    /// checkpoint yet, and it cannot learn votes without a configuration. It used to fetch
    /// that nothing, panic in the fetch task ("a checkpoint has a header") and, still
    /// "loading", ignore every later Join. Now it waits, as the original does (its copy fails),
    /// and catches up from the first checkpoint a member offers.
    #[test]
    fn a_joiner_offered_no_checkpoint_waits_for_one_then_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RslConfig { max_log_len_mb: 1, ..config(dir.path()) };
        let nodes: Vec<Node> = ["1", "2", "3"].iter().zip(free_ports(3)).map(|(id, p)| node(id, Ipv4Addr::LOCALHOST, p).unwrap()).collect();
        let first = MemberSet { nodes: nodes[..2].to_vec(), cookie: Bytes::new() };
        let calls: [Arc<Mutex<Vec<&str>>>; 3] = Default::default();
        let start = |i: usize, members: Option<MemberSet>| {
            let sm = Box::new(Machine(calls[i].clone()));
            RslReplica::initialize(cfg.clone(), nodes[i].clone(), Version::V6, sm, Arc::new(AdmitAll), members).unwrap()
        };
        let ring = [start(0, Some(first.clone())), start(1, Some(first))];
        let joiner = start(2, None);
        let mut p = 0;
        wait_within("a primary", Duration::from_secs(30), || {
            p = ring.iter().position(|r| r.is_primary()).unwrap_or(0);
            ring[p].is_primary()
        });
        let all = MemberSet { nodes: nodes.clone(), cookie: Bytes::new() };
        assert_eq!(ring[p].change_configuration(all, 1), ResponseCode::Success);
        // Requests until the joiner has loaded a checkpoint (those aborted around the
        // configuration change are sent again): the 1 MB logs roll, the secondary saves
        // checkpoints, the primary copies one, and its next Join offers it.
        let count = |i: usize, what: &str| calls[i].lock().unwrap().iter().filter(|c| **c == what).count() as u64;
        let (until, mut sent) = (Instant::now() + Duration::from_secs(120), 0u64);
        while joiner.current_sequence_number() == 0 {
            assert!(Instant::now() < until, "the joiner loaded a checkpoint within 120 s ({sent} requests)");
            let in_flight = sent.saturating_sub(count(0, "exec") + count(0, "abort") + count(1, "abort"));
            let request = Bytes::from(format!("{sent:08}").repeat(512));
            if in_flight < 64 && ring.iter().any(|r| r.replicate_request(request.clone(), sent) == ResponseCode::Success) {
                sent += 1;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // A member now: it keeps up with the ring.
        let target = ring.iter().map(|r| r.current_sequence_number()).max().unwrap();
        wait_within("the joiner catches up", Duration::from_secs(30), || joiner.current_sequence_number() >= target);
        assert!(joiner.configuration().0.nodes.iter().any(|n| n.id == nodes[2].id), "the joiner knows it is a member");
        assert_eq!(joiner.failure(), None);
    }

    /// Deliverable 8 of issue 9: "log record out of sequence" names the file and the offset,
    /// at start-up and in the read-only Replay.
    #[test]
    fn a_log_record_out_of_sequence_names_its_file_and_offset() {
        use crate::format::log::encode_record;
        use crate::format::message::VoteBody;
        let dir = tempfile::tempdir().unwrap();
        let me = node("1", Ipv4Addr::LOCALHOST, free_ports(1)[0]).unwrap();
        let log = dir.path().join("1").join("0.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        // Votes for decrees 0, 1 and 5: a gap no replica writes.
        let mut bytes = bytes::BytesMut::new();
        for decree in [0, 1, 5] {
            let header = Header::new(Version::V6, me.id, decree, 1, Ballot::new(1, me.id));
            encode_record(&Message::new(header, Body::Vote(VoteBody::default())), &mut bytes).unwrap();
        }
        std::fs::write(&log, &bytes).unwrap();
        let expected = format!("{}: record at offset 1024: log record out of sequence: Vote at decree 5 after decree 1", log.display());
        let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
        let sm = Box::new(Machine(Arc::default()));
        let err = RslReplica::initialize(config(dir.path()), me.clone(), Version::V6, sm, Arc::new(AdmitAll), Some(members)).err().unwrap();
        assert!(matches!(&err, InitError::Replay { path, offset: 1024, .. } if *path == log), "{err}");
        assert_eq!(err.to_string(), expected);
        let err = RslReplica::replay(&config(dir.path()), &me.id, Version::V6, &mut Machine(Arc::default()), u64::MAX).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}
