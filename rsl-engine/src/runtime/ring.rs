//! The protocol thread of one replica: owns the driver (and through it the sans-IO core) and
//! the journal, feeds the driver every event (messages, durability, requests, timers,
//! catch-up results), and is the driver's host: the journal, the transport, the learn port
//! and the execute thread carry out what it asks.

use super::api::{Admission, ResponseCode};
use super::checkpoints::{core_checkpoint, Catalog};
use super::config::CatchUp;
use super::event::Event;
use super::exec::{abort_code, Work};
use super::journal::{write_defunct, Journal};
use super::learn;
use super::net::Tasks;
use super::queue::{Inbox, Queue, CAPACITY};
use super::resolve::Notes;
use super::spill::ExecBacklog;
use super::tls::Tls;
use super::transport::{frame, Origin, RateLimited, Transport};
use super::Shared;
use crate::driver::{Driver, Execution, Host, Inbound};
use crate::format::{Ballot, MemberId, Message, MsgKind, Node};
use crate::paxos::{Application, BootstrapError, Checkpoint, Cookie, Input, Micros, Rejection, Replica, Role, SubmitError};
use bytes::{Bytes, BytesMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rejected messages are logged at most this often; the others in between are only counted.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stop waits for a `resolve_node` call to return before `shut_down` runs.
const RESOLVER_QUIESCE: Duration = Duration::from_secs(10);

/// The core's synchronous questions, answered by the service's [`Admission`].
pub(crate) struct Admit(pub Arc<dyn Admission>);

impl Application for Admit {
    fn can_become_primary(&mut self) -> Option<Bytes> {
        self.0.can_become_primary().map(Bytes::from)
    }
    fn accept_message(&mut self, from: &MemberId, primary_cookie: &[u8]) -> bool {
        self.0.accept_message_from_replica(from, primary_cookie)
    }
}

/// The learn port's and the transport's timeouts and limits.
pub(crate) struct Limits {
    pub receive_timeout: Duration,
    pub max_learn_bytes: usize,
    /// The execute thread's in-memory bound (`m_inMemoryExecutionQueueSizeMB`).
    pub execution_queue_bytes: u64,
    /// A primary's vote unchosen this long fails the replica (`m_voteMaxOutstandingIntervalSec`).
    pub vote_max_outstanding: Micros,
}

/// The protocol thread's state: the driver, and the host it drives against.
pub(crate) struct Ring {
    driver: Driver,
    io: Io,
    /// The primary and role last written to the shared view.
    published: (Option<MemberId>, Option<Role>, Ballot),
    health: super::health::Publisher,
}

/// The driver's host in a running replica.
pub(crate) struct Io {
    pub journal: Journal,
    pub transport: Arc<Transport>,
    pub tasks: Tasks,
    pub work: Queue<Work>,
    pub events: Queue<Event>,
    pub shared: Arc<Shared>,
    /// The checkpoint store as its owner (the execute thread) last published it.
    pub checkpoints: Arc<Catalog>,
    pub dir: PathBuf,
    pub limits: Limits,
    pub start: Instant,
    /// For the learn clients (the transport and the learn server hold their own).
    pub tls: Option<Arc<Tls>>,
    /// This replica's member id: the view names it primary as `is_primary` is set.
    me: MemberId,
    /// Every member the driver knows, this one included: whom a learn server's certificate
    /// may name (`learn::Peer::binding`).
    members: Arc<[MemberId]>,
    /// Warnings of rejections: at most one per `REJECTION_LOG_INTERVAL`.
    rejections: RateLimited,
    frame_buf: BytesMut,
    /// The replica stops: a background task failed, the execute thread is gone, or it stops
    /// to catch up (`CatchUp::Restart`).
    halted: bool,
    /// What goes to the execute thread, within its memory bound.
    backlog: ExecBacklog,
    catch_up: CatchUp,
    /// The resolver thread's mailbox, if the service resolves members' addresses.
    resolver: Option<Arc<Notes>>,
    /// The `Event::Submit`s handled, of `Shared::submits_offered`.
    submits_handled: u64,
    /// A step-down's `NotifyStatus(false)`, held until this many requests are handled: those
    /// taken before `is_primary` was cleared come back first (docs/spec/behavior.md §3.5).
    status_after: Option<u64>,
    /// What the core handed out while a `NotifyStatus(false)` was held (refusals aside): it
    /// follows the status, in order, as it would have without the hold.
    held: Vec<Execution>,
}

impl Io {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        journal: Journal,
        transport: Arc<Transport>,
        tasks: Tasks,
        work: Queue<Work>,
        events: Queue<Event>,
        shared: Arc<Shared>,
        checkpoints: Arc<Catalog>,
        dir: PathBuf,
        limits: Limits,
        tls: Option<Arc<Tls>>,
        start: Instant,
        catch_up: CatchUp,
        resolver: Option<Arc<Notes>>,
        me: MemberId,
    ) -> Io {
        Io {
            me,
            members: Arc::new([me]),
            backlog: ExecBacklog::new(limits.execution_queue_bytes, dir.clone(), shared.clone()),
            journal,
            transport,
            tasks,
            work,
            events,
            shared,
            checkpoints,
            dir,
            limits,
            start,
            tls,
            rejections: RateLimited::every(REJECTION_LOG_INTERVAL),
            frame_buf: BytesMut::with_capacity(64 << 10),
            halted: false,
            catch_up,
            resolver,
            submits_handled: 0,
            status_after: None,
            held: Vec::new(),
        }
    }
}

impl Ring {
    pub fn new(core: Replica, admission: Arc<dyn Admission>, mut io: Io) -> Ring {
        // Each turn ends with `flush_journal`.
        io.journal.defer_writes();
        let listen_on_all_ips = io.transport.local_addr().ip().is_unspecified();
        Ring {
            driver: Driver::new(core, Box::new(Admit(admission)), listen_on_all_ips),
            io,
            published: (None, None, Ballot::EMPTY),
            health: Default::default(),
        }
    }

    fn running(&self) -> bool {
        !self.driver.stopped() && !self.io.halted
    }

    /// Runs the replica until it stops; then the execute thread delivers `ShutDown`.
    pub fn run(mut self, events: Inbox<Event>) {
        self.driver.start(&mut self.io);
        while self.running() {
            self.flush_journal(&events);
            let wait = self.driver.core().next_wakeup().saturating_sub(self.io.now()).min(100_000);
            match events.recv_timeout(Duration::from_micros(wait)) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take everything already queued before acting: requests batch into one vote, and
            // one journal sync covers every record they produce.
            for event in std::iter::from_fn(|| events.try_recv().ok()).take(CAPACITY) {
                if matches!(event, Event::Stop) || !self.running() {
                    return self.shutdown();
                }
                self.handle(event);
            }
            if self.running() && self.io.now() >= self.driver.core().next_wakeup() {
                self.driver.step(Input::Tick, &mut self.io);
            }
            self.io.refill(self.io.journal.readable(self.driver.durable_seq()));
            self.check_outstanding_vote();
            self.publish();
        }
        self.shutdown();
    }

    fn handle(&mut self, event: Event) {
        let (driver, io) = (&mut self.driver, &mut self.io);
        match event {
            Event::Message(msg, origin) => {
                // Marks each arrival, for measuring stalls (tests/checkpoint_gap.rs).
                tracing::trace!(target: "rsl_engine::paxos_in", me = %driver.core().me(), "paxos message");
                let Origin { ip, peer } = origin;
                let certified = peer.as_deref().map(|p| p.names.as_slice());
                driver.on_message(msg, Inbound { ip, certified }, io)
            }
            Event::Durable(seq) => {
                // From the journal's writer thread, in order: held sends go out up to it. It
                // can trail a later batch this thread synced itself (`flush_journal`).
                debug_assert!(seq <= io.journal.last_seq(), "durable {seq} never appended");
                if seq > driver.durable_seq() {
                    driver.durable(seq, io)
                }
            }
            Event::Submit { request, cookie, exclusive, last } => {
                io.submits_handled += 1;
                debug_assert!(io.submits_handled <= io.shared.submits_offered.load(Relaxed), "a request handled before it was counted");
                if let Err(e) = driver.submit(request, cookie, exclusive, last, io) {
                    io.refused(cookie, e);
                }
                io.release_status(false);
            }
            Event::ChangeConfiguration { members, cookie, reply } => {
                let _ = reply.send(match driver.change_configuration(members, cookie, io) {
                    Ok(()) => ResponseCode::Success,
                    Err(SubmitError::NotPrimary) => ResponseCode::NotPrimary,
                    Err(SubmitError::ShuttingDown) => ResponseCode::ShuttingDown,
                    Err(_) => ResponseCode::InvalidParameter,
                });
            }
            Event::Bootstrap { members, reply } => {
                let _ = reply.send(bootstrap_code(driver.bootstrap(members, io)));
            }
            Event::Input(input) => driver.step(input, io),
            Event::CheckpointDone { decree, size, copied } => driver.checkpoint_done(decree, size, copied, io),
            Event::Fatal(reason) => {
                io.fail(reason);
                io.halted = true;
            }
            // The turn ends with a refill.
            Event::Refill => {}
            Event::Stop => unreachable!("handled by the loop"),
            Event::Relocated(node) => driver.relocate(node, io),
            Event::Pause(until) => drop(until.recv()),
        }
    }

    /// Starts the records appended so far on their way to disk. With no event waiting, this
    /// thread writes and syncs them itself (one group commit, as the writer's): otherwise it
    /// would sleep until the writer thread, woken for them, woke it back to say they are
    /// durable, two thread hand-offs on every commit. With events waiting, the writer thread
    /// syncs while this thread goes on with them; so it does for a pipelined primary that may
    /// propose the next decree before this one is durable (`Replica::proposes_ahead`: the
    /// round trip dominates, or the next batch is full).
    fn flush_journal(&mut self, events: &Inbox<Event>) {
        while self.running() {
            let proposes_meanwhile = self.driver.core().proposes_ahead();
            match self.io.journal.flush(events.is_empty() && !proposes_meanwhile) {
                None => return,
                Some(Ok(seq)) => self.driver.durable(seq, &mut self.io),
                Some(Err(e)) => {
                    self.io.fail(format!("journal write failed: {e}"));
                    self.io.halted = true;
                }
            }
        }
    }

    /// RSL's deadlock breaker: a primary whose vote stays unchosen for `vote_max_outstanding`
    /// fails (fail-stop), where the original's assert ends the process.
    fn check_outstanding_vote(&mut self) {
        let core = self.driver.core();
        if !self.running() || core.role() != Role::Primary {
            return;
        }
        let Some(since) = self.io.shared.vote_timer.oldest(core.max_ballot()) else { return };
        let age = self.io.now().saturating_sub(since);
        if age >= self.io.limits.vote_max_outstanding {
            let secs = self.io.limits.vote_max_outstanding / crate::paxos::SEC;
            self.io.fail(format!(
                "a vote has been outstanding for more than {secs} s (vote_max_outstanding_interval_sec): stopping to recover from deadlock"
            ));
            self.io.halted = true;
        }
    }

    /// What API calls read without asking this thread.
    /// Takes the view's lock only when something in it changed.
    fn publish(&mut self) {
        let (core, shared) = (self.driver.core(), &self.io.shared);
        shared.stats.log_syncs.store(self.io.journal.syncs(), Relaxed);
        shared.queued_bytes.store(core.queued_bytes() as u64, Relaxed);
        self.health.publish(core, self.io.now(), &shared.votes_seen);
        let (_, ballot) = core.accepted();
        // A primary names itself even before its first vote at its ballot is accepted.
        let primary = if core.role() == Role::Primary { Some(core.me()) } else { (!ballot.is_empty()).then_some(ballot.member) };
        let now = (primary, Some(core.role()), core.max_ballot());
        if now != self.published {
            let mut view = shared.view();
            (view.primary, view.role, view.promise) = now;
            self.published = now;
        }
    }

    fn shutdown(mut self) {
        self.driver.stop(&mut self.io);
        let durable = self.io.journal.readable(self.driver.durable_seq());
        let mut io = self.io;
        io.release_status(true);
        io.shared.is_primary.store(false, Relaxed);
        io.shared.shutting_down.store(true, Relaxed);
        io.transport.shutdown();
        if let Some(resolver) = &io.resolver {
            resolver.quiesce(RESOLVER_QUIESCE);
        }
        // Closed first, so every spilled decree's record is on disk to execute before Stop.
        let closed = io.journal.close();
        // A stopped journal's cause is already the replica's failure, reported once.
        if let (Err(e), None) = (&closed, io.shared.failure.get()) {
            tracing::error!(error = %e, "journal close");
        }
        if let Err(e) = io.backlog.stop(if closed.is_ok() { u64::MAX } else { durable }, &io.work) {
            io.shared.fail(format!("at shutdown: {e}"));
        }
        let _ = io.work.send(Work::Stop);
    }
}

fn bootstrap_code(result: Result<(), BootstrapError>) -> ResponseCode {
    match result {
        Ok(()) => ResponseCode::Success,
        Err(BootstrapError::AlreadyBootstrapped) => ResponseCode::AlreadyBootstrapped,
        Err(BootstrapError::Failed) => ResponseCode::BootstrapFailed,
        Err(BootstrapError::InvalidParameter) => ResponseCode::InvalidParameter,
    }
}

impl Io {
    /// A request the core did not take is answered at once.
    fn refused(&mut self, cookie: Cookie, e: SubmitError) {
        if e == SubmitError::Full {
            self.shared.stats.requests_refused.fetch_add(1, Relaxed);
        }
        let code = match e {
            SubmitError::ShuttingDown => ResponseCode::ShuttingDown,
            // Too large for any member to accept: retrying cannot help.
            SubmitError::InvalidRequest => ResponseCode::InvalidParameter,
            _ => ResponseCode::NotPrimary,
        };
        // Straight on, not behind decrees waiting in the log: the request was never proposed,
        // so no decree or other callback concerns its cookie (RSL answers it synchronously).
        self.halted |= self.work.send(Work::Abort { cookie, code }).is_err();
    }

    /// Hands a held `NotifyStatus(false)` on once the requests taken before it are handled,
    /// or at once if `now` (a stop, or a new term that must follow it).
    fn release_status(&mut self, now: bool) {
        if self.status_after.is_some_and(|offered| now || self.submits_handled >= offered) {
            self.status_after = None;
            self.hand_to_exec(Work::Status(false));
            for item in std::mem::take(&mut self.held) {
                self.execute(item);
            }
        }
        debug_assert!(self.status_after.is_some() || self.held.is_empty(), "held executions outlive their status");
        debug_assert!(self.status_after.is_none_or(|offered| offered > self.submits_handled), "a step-down held past its requests");
    }

    /// Behind any decrees waiting in the log (`ExecBacklog`), so the order holds.
    fn hand_to_exec(&mut self, work: Work) {
        if !self.backlog.hand(work, &self.work) {
            self.halted = true;
        }
    }

    /// Decrees waiting in the log go to the execute thread as its memory allows.
    fn refill(&mut self, durable: u64) {
        if let Err(e) = self.backlog.refill(durable, &self.work) {
            self.fail(e);
            self.halted = true;
        }
    }

    /// `CatchUp::Restart`: the copied checkpoint is in place and the journal goes on after it,
    /// as for a load in place; the service hears of it, then the replica stops as on `unload`,
    /// and its restart loads the checkpoint.
    fn stop_to_catch_up(&mut self, decree: u64, path: PathBuf) -> Work {
        tracing::info!(decree, "caught up by copying a peer's checkpoint: stopping, so that the restart loads it");
        let _ = self.shared.restart_to_catch_up.set(decree);
        self.halted = true;
        Work::Copied { seq: decree, path: Some(path), cookie: None }
    }

    /// What a background task's panic becomes: this replica's failure.
    fn fatal(&self, what: String) -> impl FnOnce(String) + Send + 'static {
        let events = self.events.clone();
        move |panic| drop(events.send(Event::Fatal(format!("{what} panicked: {panic}"))))
    }
}

impl Host for Io {
    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    fn observe(&mut self, core: &Replica, action: &crate::paxos::Action) {
        self.shared.vote_timer.observe(core, action, self.now(), &self.shared.voting);
    }

    fn send(&mut self, to: &[MemberId], msg: &Arc<Message>) {
        let packet = frame(msg, &mut self.frame_buf);
        for id in to {
            self.transport.send(id, packet.clone());
        }
    }

    fn broadcast(&mut self, to: &[MemberId], msg: &Arc<Message>) {
        let packet = frame(msg, &mut self.frame_buf);
        self.transport.broadcast(to, &packet);
    }

    fn persist(&mut self, seq: u64, record: &Arc<Message>) -> Result<Option<u64>, String> {
        let rolled = self.journal.append(seq, record).map_err(|e| e.to_string())?;
        self.shared.stats.votes_logged.fetch_add(1, Relaxed);
        Ok(rolled)
    }

    fn executed(&self) -> (u64, bool) {
        let gauge = &self.shared.exec_queue;
        (gauge.executed_below(), gauge.spilled() > 0)
    }

    fn execute(&mut self, item: Execution) {
        // Refusals go first (their cookies come back before the status); a new term releases
        // the held status itself.
        if self.status_after.is_some() && !matches!(item, Execution::Abort { .. } | Execution::Status(true)) {
            self.held.push(item);
            return;
        }
        let work = match item {
            Execution::Decree { vote, cookies } => {
                // The execute thread runs behind what is handed to it, never ahead.
                let executed = self.shared.current_seq.load(Relaxed);
                debug_assert!(
                    vote.header.decree > executed || vote.header.decree == 0,
                    "decree {} handed out, {executed} executed",
                    vote.header.decree
                );
                self.shared.passed_seq.fetch_max(vote.header.decree, Relaxed);
                self.shared.stats.decrees_executed.fetch_add(1, Relaxed);
                self.halted |= !self.backlog.execute(vote, cookies, &self.journal, &self.work);
                return;
            }
            Execution::Abort { cookie, reason, config: true } => Work::AbortConfig { cookie, code: abort_code(reason) },
            Execution::Abort { cookie, reason, config: false } => Work::Abort { cookie, code: abort_code(reason) },
            Execution::Status(false) => {
                let offered = {
                    let _gate = self.shared.submit_gate.write().unwrap_or_else(|e| e.into_inner());
                    self.shared.is_primary.store(false, Relaxed);
                    self.shared.submits_offered.load(Relaxed)
                };
                // Requests taken before the flag was cleared may still wait in this thread's
                // queue: each is refused, its cookie back, before the application hears that
                // it is no longer primary (RSL refuses them under the lock that steps down).
                debug_assert!(self.status_after.is_none() && offered >= self.submits_handled);
                if offered > self.submits_handled {
                    self.status_after = Some(offered);
                    return;
                }
                Work::Status(false)
            }
            Execution::Status(true) => {
                self.release_status(true);
                // The view names the primary before the flag says so: a caller that sees
                // `is_primary` also sees who (the turn's `publish` would come later).
                self.shared.view().primary = Some(self.me);
                self.shared.is_primary.store(true, Relaxed);
                Work::Status(true)
            }
            Execution::PrimaryRecovered => Work::PrimaryRecovered,
            Execution::ConfigChanged { config, cookie } => Work::ConfigChanged { config, cookie },
            Execution::Save(cp) => Work::Save(cp),
            Execution::Load(checkpoint) => {
                let path = self.checkpoints.path_of(checkpoint.decree);
                match self.catch_up {
                    CatchUp::LoadInPlace => Work::Load { path, checkpoint },
                    CatchUp::Restart => self.stop_to_catch_up(checkpoint.decree, path),
                }
            }
            Execution::Copied { decree } => Work::Copied { seq: decree, path: Some(self.checkpoints.path_of(decree)), cookie: None },
        };
        self.hand_to_exec(work);
    }

    fn truncate_log(&mut self, decree: u64) -> u64 {
        // The execute thread may have placed (and pruned down to) newer checkpoints since it
        // reported this one: the logs this one needs are kept all the same.
        let oldest = self.checkpoints.oldest().unwrap_or(decree).min(decree);
        let executed = self.shared.current_seq.load(Relaxed);
        self.journal.truncate(decree, oldest, executed)
    }

    fn roll_log(&mut self) {
        self.journal.roll_at_next_vote();
    }

    fn load_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), String> {
        let path = self.checkpoints.path_of(cp.decree);
        if !path.exists() {
            return Err(format!("{}: the fetched checkpoint to load is gone", path.display()));
        }
        self.journal.restart_at(cp.decree + 1);
        Ok(())
    }

    fn write_defunct(&mut self, highest: u32) -> Result<(), String> {
        write_defunct(&self.dir, highest).map_err(|e| e.to_string())
    }

    fn fetch_votes(&mut self, node: &Node, request: Message) {
        let (from, addr) = (node.id, learn_addr(node));
        let (events, limit, timeout) = (self.events.clone(), self.limits.max_learn_bytes, self.limits.receive_timeout);
        let (tls, members) = (self.tls.clone(), self.members.clone());
        let task = async move {
            let peer = learn::Peer { addr, tls: tls.as_deref(), binding: Some((from, &members)) };
            let records = learn::fetch_votes(peer, &request, limit, timeout).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "learning votes failed");
                Vec::new()
            });
            let _ = events.send(Event::Input(Input::Learned { from, records }));
        };
        self.tasks.spawn(task, self.fatal(format!("learning votes from {from}")));
    }

    fn fetch_checkpoint(&mut self, node: &Node, request: Message, size: u64, load: bool) {
        let (from, addr, decree) = (node.id, learn_addr(node), request.header.decree);
        let (events, work, timeout) = (self.events.clone(), self.work.clone(), self.limits.receive_timeout);
        let temp = self.checkpoints.temp_path();
        let fatal = self.fatal(format!("fetching checkpoint {decree} from {from}"));
        let (tls, members) = (self.tls.clone(), self.members.clone());
        let task = async move {
            let peer = learn::Peer { addr, tls: tls.as_deref(), binding: Some((from, &members)) };
            let installed = super::exec::fetch_checkpoint(peer, &request, size, temp, timeout, 5, &work).await;
            let event = match installed {
                Ok((saved, header)) if load => Event::Input(Input::CheckpointFetched(Some((core_checkpoint(header), saved.size)))),
                Ok((saved, _)) => Event::CheckpointDone { decree, size: saved.size, copied: true },
                Err(e) => {
                    tracing::warn!(error = %e, decree, "fetching a checkpoint failed");
                    Event::Input(Input::CheckpointFetched(None))
                }
            };
            let _ = events.send(event);
        };
        self.tasks.spawn(task, fatal);
    }

    /// Counted always; logged unless one was logged within `REJECTION_LOG_INTERVAL`.
    fn rejected(&mut self, from: MemberId, kind: MsgKind, reason: Rejection, peer: Option<IpAddr>) {
        self.shared.stats.messages_rejected.fetch_add(1, Relaxed);
        let Some(since) = self.rejections.allow() else { return };
        match peer {
            Some(peer) => tracing::warn!(%peer, member = %from, ?kind, %reason, unlogged_since = since, "message rejected"),
            None => tracing::warn!(?kind, %reason, unlogged_since = since, "skipped a record or field of our own log or checkpoint"),
        }
    }

    fn set_peers(&mut self, peers: &[&Node]) {
        if let Some(resolver) = &self.resolver {
            resolver.peers(peers.iter().map(|&n| n.clone()).collect());
        }
        self.members = peers.iter().map(|n| n.id).chain([self.me]).collect();
        let peers: Vec<_> = peers.iter().map(|n| (n.id, paxos_addr(n))).collect();
        self.transport.set_peers(&peers);
    }

    /// The replica cannot go on: it fails (the reason is kept for `RslReplica::failure`) and
    /// the protocol thread stops as on `unload`.
    fn fail(&mut self, reason: String) {
        self.shared.fail(reason);
    }
}

fn paxos_addr(node: &Node) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(node.ip, node.rsl_port))
}

/// A learn port of 0 means the Paxos port plus one.
pub(crate) fn learn_addr(node: &Node) -> SocketAddr {
    let port = if node.learn_port == 0 { node.rsl_port.wrapping_add(1) } else { node.learn_port };
    SocketAddr::V4(SocketAddrV4::new(node.ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_warnings_are_rate_limited_and_count_what_they_held_back() {
        let limit = RateLimited::every(REJECTION_LOG_INTERVAL);
        assert_eq!(limit.allow(), Some(0), "the first rejection is logged");
        for _ in 0..5 {
            assert_eq!(limit.allow(), None, "the next ones within the interval are only counted");
        }
        // A short interval to see the next warning report what was held back (waiting on the
        // condition, not on a clock).
        let limit = RateLimited::every(Duration::from_millis(20));
        assert_eq!(limit.allow(), Some(0));
        let mut held = 0;
        let reported = loop {
            match limit.allow() {
                Some(n) => break n,
                None => held += 1,
            }
            std::thread::yield_now();
        };
        assert_eq!(reported, held);
        assert!(RateLimited::every(Duration::ZERO).allow().is_some() && RateLimited::every(Duration::MAX).allow().is_some());
    }
}
