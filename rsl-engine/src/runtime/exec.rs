//! The execute thread: owns the service's state machine and delivers every callback to it in
//! protocol order (executions, aborts, status, configuration changes, checkpoints) under the
//! Exclusive side of RSL's callback lock, saves under the Shared side, and holds the fast reads
//! that wait for the state to catch up until the reader threads can run them ([`readers`]);
//! and owns the checkpoint store, so saving and placing checkpoints hold no lock the protocol
//! thread or the network share.
//!
//! [`readers`]: super::readers

use super::api::{ResponseCode, StateMachine};
use super::checkpoints::{CheckpointStore, Saved};
use super::event::Event;
use super::learn;
use super::queue::{Inbox, Queue};
use super::readers::{Body, CallbackLock, Read, Readers};
use super::Shared;
use crate::format::checkpoint::{CheckpointHeader, CheckpointReader};
use crate::format::{Ballot, ConfigInfo, MemberId, Message, Version};
use crate::paxos::{AbortReason, Checkpoint, Cookie};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the protocol thread (or an API call) hands the execute thread, in order.
pub(crate) enum Work {
    /// Tests: the execute thread takes the Exclusive callback lock, says so on the second
    /// channel, and waits until the first one's sender is dropped (or sends).
    #[cfg(test)]
    Pause(std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>),
    Execute {
        vote: Arc<Message>,
        cookies: Vec<Cookie>,
    },
    Abort {
        cookie: Cookie,
        code: ResponseCode,
    },
    AbortConfig {
        cookie: Cookie,
        code: ResponseCode,
    },
    Status(bool),
    PrimaryRecovered,
    /// The state configuration became `config` (a reconfiguration decree executed, or the
    /// replica was bootstrapped).
    ConfigChanged {
        config: ConfigInfo,
        cookie: Option<Cookie>,
    },
    Save(Checkpoint),
    /// Place a checkpoint downloaded into `temp` and already checked (see [`install`]).
    Install {
        temp: PathBuf,
        decree: u64,
        size: u64,
        placed: oneshot::Sender<Result<Saved, String>>,
    },
    /// Replace the state with this installed checkpoint file.
    Load {
        checkpoint: Checkpoint,
        path: PathBuf,
    },
    /// A checkpoint was copied from a peer: by the primary instead of saving one (no cookie),
    /// or for `copy_state_from_replica` (`path` None: it failed).
    Copied {
        seq: u64,
        path: Option<PathBuf>,
        cookie: Option<Cookie>,
    },
    FastRead {
        max_seen: u64,
        request: Bytes,
        cookie: Cookie,
        deadline: Instant,
    },
    /// Deliver `ShutDown` and stop.
    Stop,
}

/// Tells the protocol thread, however the execute thread ends, that nothing handed to it will
/// execute any more (it may be waiting for it to drain: `ExecBacklog::stop`).
struct Gone(Arc<Shared>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.exec_queue.executor_gone();
    }
}

pub(crate) fn abort_code(reason: AbortReason) -> ResponseCode {
    match reason {
        AbortReason::NotPrimary => ResponseCode::NotPrimary,
        AbortReason::ShuttingDown => ResponseCode::ShuttingDown,
    }
}

/// The execute thread's state.
pub(crate) struct Executor {
    /// The state machine, behind the callback lock the reader threads share.
    pub sm: CallbackLock,
    /// The reader threads and the reads ready for them.
    readers: Readers,
    pub shared: Arc<Shared>,
    /// The checkpoint store's owner is this thread: it saves, and places what peers sent.
    pub store: CheckpointStore,
    pub me: MemberId,
    pub version: Version,
    /// Where checkpoint completions go (the protocol thread).
    pub events: Queue<Event>,
    /// Fast reads waiting for the state to reach their sequence number, oldest deadline first.
    waiting: Vec<(u64, Bytes, Cookie, Instant)>,
    /// A save refused by `try_save_state`, retried once saving is allowed again.
    deferred_save: Option<Checkpoint>,
    /// The application asked for a checkpoint of this decree (`save_state` set while it
    /// executed): it is taken when the next decree arrives, before that one executes.
    save_after: Option<u64>,
    /// A checkpoint failed to load: the replica is stopping, and the decrees the core handed
    /// out after that checkpoint must not run on the old state (nor be saved as if they had).
    failed_load: bool,
}

impl Executor {
    pub fn new(
        sm: Box<dyn StateMachine>,
        shared: Arc<Shared>,
        store: CheckpointStore,
        me: MemberId,
        version: Version,
        events: Queue<Event>,
    ) -> Executor {
        let readers = Readers::idle(super::queue::CAPACITY);
        let sm = CallbackLock::new(sm);
        Executor {
            sm,
            readers,
            shared,
            store,
            me,
            version,
            events,
            waiting: Vec::new(),
            deferred_save: None,
            save_after: None,
            failed_load: false,
        }
    }

    /// Starts `count` reader threads (see [`Readers::start`]); returns the queue of reads ready
    /// to run, where the API puts those already satisfied.
    pub fn start_readers(&mut self, count: u32, spawn: impl FnMut(Body) -> std::thread::JoinHandle<()>) -> Arc<super::readers::Ready> {
        self.readers.start(count, &self.sm, &self.shared, spawn);
        self.readers.ready.clone()
    }

    /// Runs until `Stop` or until the protocol thread goes away.
    pub fn run(mut self, work: Inbox<Work>) {
        let _gone = Gone(self.shared.clone());
        loop {
            let timeout = self.waiting.iter().map(|w| w.3).min().map(|d| d.saturating_duration_since(Instant::now()));
            let item = match timeout {
                Some(t) => work.recv_timeout(t.max(Duration::from_micros(100))),
                None => work.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match item {
                Ok(Work::Stop) | Err(RecvTimeoutError::Disconnected) => return self.stop(),
                Ok(w) => self.handle(w),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.run_fast_reads();
            // Taken at once only if no decree executed since; otherwise before the next one
            // (`execute`), when the state is that of the decree before it.
            let current = self.shared.current_seq.load(Relaxed);
            if self.deferred_save.as_ref().is_some_and(|cp| cp.decree == current) && self.shared.allow_save.load(Relaxed) {
                let cp = self.deferred_save.take().expect("checked");
                self.save(cp);
            }
        }
    }

    /// Delivers one piece of work. Also used synchronously while a replica restores its log.
    pub fn handle(&mut self, work: Work) {
        match work {
            Work::Execute { vote, cookies } if self.failed_load => {
                let mut sm = self.sm.exclusive();
                cookies.into_iter().for_each(|cookie| sm.abort_request(ResponseCode::ShuttingDown, cookie));
                drop(sm);
                self.shared.exec_queue.executed(&vote);
            }
            Work::Execute { vote, cookies } => {
                self.execute(&vote, &cookies);
                if self.shared.exec_queue.executed(&vote) {
                    let _ = self.events.send(Event::Refill);
                }
            }
            Work::Abort { cookie, code } => self.sm.exclusive().abort_request(code, cookie),
            Work::AbortConfig { cookie, code } => self.sm.exclusive().abort_change_configuration(code, cookie),
            Work::Status(primary) => self.sm.exclusive().notify_status(primary),
            Work::PrimaryRecovered => self.sm.exclusive().notify_primary_recovered(),
            Work::ConfigChanged { config, cookie } => {
                // What GetConfiguration returns changes with the execution, as in RSL.
                let mut sm = self.sm.exclusive();
                self.shared.view().config = config;
                sm.notify_configuration_changed(cookie)
            }
            Work::Save(cp) => self.save(cp),
            Work::Install { temp, decree, size, placed } => {
                let _ = placed.send(self.store.publish(&temp, decree, size).map_err(|e| e.to_string()));
            }
            Work::Load { checkpoint, path } => self.load(checkpoint, path),
            Work::Copied { seq, path, cookie } => self.sm.exclusive().state_copied(seq, path.as_deref(), cookie),
            // Bounded like the queues, counting the reads already handed to stuck readers:
            // past it a read comes back as one that timed out.
            Work::FastRead { cookie, .. } if self.waiting.len() + self.readers.ready.len() >= super::queue::CAPACITY => {
                self.sm.exclusive().abort_request(ResponseCode::FastReadStale, cookie)
            }
            Work::FastRead { max_seen, request, cookie, deadline } => self.waiting.push((max_seen, request, cookie, deadline)),
            Work::Stop => {}
            #[cfg(test)]
            Work::Pause(until, paused) => {
                // Stands for a long callback: the reads wait too.
                let _sm = self.sm.exclusive();
                let _ = paused.send(());
                let _ = until.recv();
            }
        }
    }

    /// Runs one chosen decree: the sequence number moves first, then the requests run in a
    /// Before/After bracket (docs/spec/behavior.md §2.6). The number moves under the Exclusive lock, as
    /// the original's does: a fast read that finds it at the decree (and so does not wait)
    /// takes the Shared side only once the decree's requests have run.
    fn execute(&mut self, vote: &Arc<Message>, cookies: &[Cookie]) {
        let decree = vote.header.decree;
        if decree > 0 && self.deferred_save.is_some() && self.shared.allow_save.load(Relaxed) {
            self.save_deferred(vote);
            // A save the application asked for at the same decree is the one just taken.
            self.save_after = self.save_after.filter(|d| d + 1 != decree);
        }
        if self.save_after.is_some_and(|d| d + 1 == decree) {
            self.save_requested(vote);
        }
        let previous = self.shared.current_seq.load(Relaxed);
        assert!(decree > previous || (decree == 0 && previous == 0), "decree {decree} executes after {previous}");
        // Contiguous: a decree skipped here would leave the state without its requests.
        debug_assert!(decree == previous + 1 || decree == 0, "decree {decree} executes after {previous}, not next");
        let body = vote.as_vote().expect("only votes execute");
        debug_assert!(cookies.is_empty() || cookies.len() == body.requests.len(), "one cookie per request");
        if body.requests.is_empty() || body.reconfig.is_some() {
            self.shared.current_seq.store(decree, Release);
            return;
        }
        let mut save = false;
        let mut sm = self.sm.exclusive();
        self.shared.current_seq.store(decree, Release);
        sm.look_ahead(&body.requests);
        sm.before_execute_replicated_requests();
        for (i, request) in body.requests.iter().enumerate() {
            sm.execute_replicated_request(request, cookies.get(i).copied(), &mut save);
        }
        sm.after_execute_replicated_requests();
        drop(sm);
        self.shared.stats.requests_executed.fetch_add(body.requests.len() as u64, Relaxed);
        if save {
            self.save_after = Some(decree);
        }
    }

    /// The checkpoint the application asked for, of the decree before `next`: its header's
    /// next vote is `next` (RSL waits for it too), the state is as that decree left it.
    fn save_requested(&mut self, next: &Arc<Message>) {
        let decree = self.save_after.take().expect("a save was asked for");
        debug_assert_eq!(decree + 1, next.header.decree);
        let cp = self.checkpoint_before(next, Ballot::EMPTY);
        self.save(cp);
    }

    /// A checkpoint put off while saving was not allowed, taken before `next` executes: of the
    /// decree before it, the state's decree now (RSL takes the pending save at the decree then
    /// current, docs/spec/behavior.md §2.14 and O6). Saved under its old number, it would hold the
    /// decrees executed since, which a restart would then execute again.
    fn save_deferred(&mut self, next: &Arc<Message>) {
        let cp = self.deferred_save.take().expect("a save was put off");
        let decree = next.header.decree - 1;
        debug_assert!(decree >= cp.decree, "the state only moves on");
        let cp = if cp.decree == decree { cp } else { self.checkpoint_before(next, cp.max_ballot) };
        self.save(cp);
    }

    /// The header of a checkpoint this thread takes of the state before `next`: the state's
    /// configuration, and a max ballot no lower than the promise the protocol thread
    /// published (RSL's save reads the current max ballot too), `next`'s ballot, or `floor`.
    fn checkpoint_before(&self, next: &Arc<Message>, floor: Ballot) -> Checkpoint {
        let view = self.shared.view();
        let max_ballot = view.promise.max(next.header.ballot).max(floor);
        debug_assert!(max_ballot >= next.header.ballot, "the max ballot covers the next vote");
        let (decree, config) = (next.header.decree - 1, view.config.clone());
        Checkpoint { decree, next_vote: next.clone(), max_ballot, config, state_saved: true }
    }

    fn save(&mut self, cp: Checkpoint) {
        if self.failed_load {
            return;
        }
        let executed = self.shared.current_seq.load(Relaxed);
        debug_assert!(cp.decree <= executed, "a checkpoint of {}, ahead of execution at {executed}", cp.decree);
        if !self.shared.allow_save.load(Relaxed) {
            self.deferred_save = Some(cp);
            return;
        }
        self.shared.saving.store(true, Relaxed);
        self.abort_unsatisfiable_reads();
        let header = super::checkpoints::header_for(&cp, self.me, self.version);
        let decree = cp.decree;
        // The application writes under the Shared side of the callback lock, so fast reads go
        // on; no other lock is held: the others read the store's catalog, which changes only
        // when the file is in place.
        let sm = self.sm.shared();
        let result = self.store.save(header, |w| Ok(!cp.state_saved || sm.try_save_state(w)));
        drop(sm);
        self.shared.saving.store(false, Relaxed);
        match result {
            Ok(Some(saved)) => {
                self.sm.exclusive().state_saved(decree, &saved.path);
                self.shared.stats.checkpoints_saved.fetch_add(1, Relaxed);
                let _ = self.events.send(Event::CheckpointDone { decree, size: saved.size, copied: false });
            }
            Ok(None) => {
                tracing::warn!(decree, "the state machine refused to save: automatic checkpoints are off until allow_save_state(true)");
                self.shared.allow_save.store(false, Relaxed);
                self.deferred_save = Some(cp);
            }
            Err(e) => {
                let _ = self.events.send(Event::Fatal(format!("checkpoint {decree} could not be saved: {e}")));
            }
        }
    }

    /// Replaces the state with an installed checkpoint. As at start-up, the sequence number and
    /// configuration are the checkpoint's while `load_state` runs.
    fn load(&mut self, cp: Checkpoint, path: PathBuf) {
        let reader = CheckpointReader::open(&path);
        // Under the Exclusive lock, as for a decree: no fast read sees the checkpoint's number
        // before `load_state` has replaced the state.
        let mut sm = self.sm.exclusive();
        let before = (self.shared.current_seq.load(Relaxed), self.shared.view().config.clone());
        self.shared.current_seq.store(cp.decree, Release);
        self.shared.passed_seq.fetch_max(cp.decree, Relaxed);
        self.shared.view().config = cp.config.clone();
        let loaded = match reader {
            Ok(mut reader) if cp.state_saved => sm.load_state(Some(&mut reader)),
            Ok(_) => sm.load_state(None),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "fetched checkpoint unreadable");
                false
            }
        };
        if !loaded {
            // The state is still the old one: so are the numbers a read may see before the
            // replica stops.
            self.shared.current_seq.store(before.0, Release);
            self.shared.view().config = before.1;
            self.failed_load = true;
            let _ = self.events.send(Event::Fatal(format!("the state machine could not load checkpoint {}", path.display())));
            return;
        }
        self.shared.exec_queue.loaded(cp.decree);
        sm.state_copied(cp.decree, Some(&path), None);
    }

    /// Hands the reader threads every waiting fast read the state now satisfies, and aborts
    /// the expired ones.
    fn run_fast_reads(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let (seq, now) = (self.shared.current_seq.load(Relaxed), Instant::now());
        let mut i = 0;
        while i < self.waiting.len() {
            let (max_seen, _, _, deadline) = &self.waiting[i];
            if *max_seen <= seq {
                let (_, request, cookie, _) = self.waiting.swap_remove(i);
                self.readers.ready.push(Read { request, cookie });
            } else if *deadline <= now {
                let (_, _, cookie, _) = self.waiting.swap_remove(i);
                self.sm.exclusive().abort_request(ResponseCode::FastReadStale, cookie);
            } else {
                i += 1;
            }
        }
    }

    /// A replica that saves a checkpoint aborts the reads it cannot serve yet (docs/spec/behavior.md §2.14).
    fn abort_unsatisfiable_reads(&mut self) {
        let seq = self.shared.current_seq.load(Relaxed);
        let stale: Vec<Cookie> = self.waiting.extract_if(.., |w| w.0 > seq).map(|w| w.2).collect();
        if !stale.is_empty() {
            let mut sm = self.sm.exclusive();
            stale.into_iter().for_each(|cookie| sm.abort_request(ResponseCode::FastReadStale, cookie));
        }
    }

    /// The reader threads end first, so that no callback follows `shut_down`; the reads they
    /// did not run and those still waiting come back `ShuttingDown`.
    fn stop(mut self) {
        let unrun = self.readers.stop();
        let mut sm = self.sm.exclusive();
        for cookie in unrun.into_iter().map(|r| r.cookie).chain(self.waiting.drain(..).map(|w| w.2)) {
            sm.abort_request(ResponseCode::ShuttingDown, cookie);
        }
        sm.shut_down(ResponseCode::ShuttingDown);
    }
}

/// Fetches the checkpoint `request` asks `peer` for into `temp` (`size` bytes, at most
/// `attempts` connections, see [`learn::fetch_checkpoint`]) and keeps it as this replica's
/// `<decree>.codex`: the blocks are checked on the blocking pool, and the store's owner (the
/// execute thread) only places the file. Returns it with its header; on a failure the file
/// is gone.
pub(crate) async fn fetch_checkpoint(
    peer: learn::Peer<'_>,
    request: &Message,
    size: u64,
    temp: PathBuf,
    limit: Duration,
    attempts: u32,
    work: &Queue<Work>,
) -> Result<(Saved, CheckpointHeader), String> {
    let decree = request.header.decree;
    if let Err(e) = learn::fetch_checkpoint(peer, request, size, &temp, limit, attempts).await {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(temp)).await;
        return Err(e.to_string());
    }
    let check = temp.clone();
    let checked = tokio::task::spawn_blocking(move || CheckpointStore::check_download(&check, decree)).await;
    let (size, header) = checked.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let (placed, reply) = oneshot::channel();
    if work.send(Work::Install { temp: temp.clone(), decree, size, placed }).is_err() {
        let _ = std::fs::remove_file(&temp);
        return Err("the replica is stopping".into());
    }
    let saved = reply.await.map_err(|_| "the replica stopped before the checkpoint was placed".to_string())??;
    Ok((saved, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Ballot, Body, Header};
    use tokio::net::TcpListener;

    /// What `load_state` saw through the replica's view, and what it loaded.
    struct Probe {
        view: Option<super::super::ReplicaView>,
        seen: Arc<std::sync::Mutex<Vec<(u64, u32, u64)>>>,
    }

    impl StateMachine for Probe {
        fn attach(&mut self, view: super::super::ReplicaView) {
            self.view = Some(view);
        }
        fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
            let view = self.view.as_ref().expect("attached");
            let mut state = [0u8; 5];
            let read = reader.expect("a state").get_data(&mut state).unwrap();
            assert_eq!(&state[..read], b"state");
            self.seen.lock().unwrap().push((view.current_sequence_number(), view.configuration().1, view.highest_passed_sequence_number()));
            true
        }
        fn execute_replicated_request(&mut self, _: &[u8], _: Option<Cookie>, _: &mut bool) {}
        fn execute_fast_read_request(&self, _: &[u8], _: Cookie) {}
        fn abort_request(&mut self, _: ResponseCode, _: Cookie) {}
        fn save_state(&self, _: &mut crate::format::CheckpointWriter) {}
        fn notify_status(&mut self, _: bool) {}
        fn notify_configuration_changed(&mut self, _: Option<Cookie>) {}
        fn abort_change_configuration(&mut self, _: ResponseCode, _: Cookie) {}
        fn shut_down(&mut self, _: ResponseCode) {}
    }

    /// A checkpoint loaded during catch-up: inside `load_state` the replica shows the
    /// checkpoint's decree and configuration, as at start-up (and as RSL, which sets the
    /// sequence number before `LoadState`), not the state being replaced.
    #[test]
    fn a_catch_up_load_shows_load_state_the_checkpoints_decree_and_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 2).unwrap();
        let me = MemberId::from_numeric(1);
        let ballot = Ballot::new(2, me);
        let vote = Message::new(Header::new(Version::V6, me, 42, 3, ballot), Body::Vote(Default::default()));
        let config = ConfigInfo { number: 3, initial_decree: 30, ..Default::default() };
        let cp = Checkpoint { decree: 41, next_vote: Arc::new(vote), max_ballot: ballot, config, state_saved: true };
        let header = super::super::checkpoints::header_for(&cp, me, Version::V6);
        let saved = store.save(header, |w| w.write(b"state").map(|_| true).map_err(std::io::Error::other)).unwrap().unwrap();
        let shared = Arc::new(Shared::new());
        shared.current_seq.store(7, Relaxed);
        shared.view().config = ConfigInfo { number: 1, ..Default::default() };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (events, _inbox) = super::super::queue::bounded(4);
        let mut exec = Executor::new(Box::new(Probe { view: None, seen: seen.clone() }), shared.clone(), store, me, Version::V6, events);
        exec.sm.exclusive().attach(super::super::ReplicaView::new(shared.clone()));
        exec.handle(Work::Load { checkpoint: cp, path: saved.path });
        assert_eq!(*seen.lock().unwrap(), [(41, 3, 41)]);
        assert_eq!((shared.current_seq.load(Relaxed), shared.view().config.number), (41, 3));
    }

    /// Records the aborts; loads every checkpoint unless `refuses_loads`, and asks for a
    /// checkpoint after every request if `saves_each_decree`.
    #[derive(Default)]
    struct Aborts {
        log: AbortLog,
        refuses_loads: bool,
        saves_each_decree: bool,
    }

    impl StateMachine for Aborts {
        fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
            !self.refuses_loads
        }
        fn execute_replicated_request(&mut self, _: &[u8], _: Option<Cookie>, save: &mut bool) {
            assert!(!self.refuses_loads, "a decree ran on the state a failed load left");
            *save = self.saves_each_decree;
        }
        fn execute_fast_read_request(&self, _: &[u8], _: Cookie) {}
        fn abort_request(&mut self, code: ResponseCode, cookie: Cookie) {
            self.log.lock().unwrap().push((code, cookie));
        }
        fn save_state(&self, _: &mut crate::format::CheckpointWriter) {}
        fn notify_status(&mut self, _: bool) {}
        fn notify_configuration_changed(&mut self, _: Option<Cookie>) {}
        fn abort_change_configuration(&mut self, _: ResponseCode, _: Cookie) {}
        fn shut_down(&mut self, _: ResponseCode) {}
    }

    /// Reads waiting for a decree are bounded like the queues: past the bound one comes back
    /// `FastReadStale` at once, and at the stop every waiting one comes back `ShuttingDown`.
    type AbortLog = Arc<std::sync::Mutex<Vec<(ResponseCode, Cookie)>>>;

    /// An executor whose state machine records its aborts, in a directory kept while it lives.
    fn recording_aborts() -> (Executor, AbortLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        let aborts = AbortLog::default();
        let (events, _inbox) = super::super::queue::bounded(4);
        let sm = Box::new(Aborts { log: aborts.clone(), ..Default::default() });
        let exec = Executor::new(sm, Arc::new(Shared::new()), store, MemberId::from_numeric(1), Version::V6, events);
        (exec, aborts, dir)
    }

    #[test]
    fn waiting_reads_are_bounded_and_all_come_back() {
        let (mut exec, aborts, _dir) = recording_aborts();
        let deadline = Instant::now() + Duration::from_secs(3600);
        let bound = super::super::queue::CAPACITY as u64;
        for cookie in 0..=bound {
            exec.handle(Work::FastRead { max_seen: 10, request: Bytes::from_static(b"r"), cookie, deadline });
        }
        assert_eq!(*aborts.lock().unwrap(), [(ResponseCode::FastReadStale, bound)]);
        exec.stop();
        let aborts = aborts.lock().unwrap();
        assert_eq!(aborts.len() as u64, bound + 1);
        assert!(aborts[1..].iter().all(|a| a.0 == ResponseCode::ShuttingDown));
    }

    /// Reads handed to readers that take nothing (all stuck in long reads) count against the
    /// bound too: reads satisfied by each decree executed cannot make room for more.
    #[test]
    fn reads_ready_for_stuck_readers_count_against_the_bound() {
        let (mut exec, aborts, _dir) = recording_aborts();
        let deadline = Instant::now() + Duration::from_secs(3600);
        let bound = super::super::queue::CAPACITY as u64;
        let read = |max_seen, cookie| Work::FastRead { max_seen, request: Bytes::from_static(b"r"), cookie, deadline };
        (0..bound).for_each(|cookie| exec.handle(read(10, cookie)));
        exec.shared.current_seq.store(10, Release);
        exec.run_fast_reads();
        assert_eq!(exec.readers.ready.len() as u64, bound, "all satisfied, none taken");
        exec.handle(read(11, bound));
        assert_eq!(*aborts.lock().unwrap(), [(ResponseCode::FastReadStale, bound)]);
        exec.stop();
        assert_eq!(aborts.lock().unwrap().len() as u64, bound + 1, "every read comes back once");
    }

    /// A checkpoint the application asks for records the promise the protocol thread
    /// published, not only the next vote's lower ballot: a secondary logs and executes votes
    /// below its promise, and that promise may sit in a log older than the one a restart from
    /// this checkpoint replays (review finding, session 7).
    #[test]
    fn a_checkpoint_taken_here_keeps_the_published_promise() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        let (primary, candidate) = (MemberId::from_numeric(1), MemberId::from_numeric(3));
        let (ballot, promise) = (Ballot::new(2, primary), Ballot::new(9, candidate));
        let shared = Arc::new(Shared::new());
        shared.view().promise = promise;
        let (events, _inbox) = super::super::queue::bounded(4);
        let mut exec = Executor::new(
            Box::new(Aborts { saves_each_decree: true, ..Default::default() }),
            shared,
            store,
            MemberId::from_numeric(2),
            Version::V6,
            events,
        );
        let body = crate::format::VoteBody { requests: vec![Bytes::from_static(b"r")], ..Default::default() };
        for decree in 1..=2 {
            let vote = Message::new(Header::new(Version::V6, primary, decree, 1, ballot), Body::Vote(body.clone()));
            exec.handle(Work::Execute { vote: Arc::new(vote), cookies: Vec::new() });
        }
        let (decree, path) = exec.store.newest().expect("the checkpoint of decree 1");
        let header = CheckpointReader::open(&path).unwrap().header().clone();
        assert_eq!((decree, header.next_vote.header.ballot, header.max_ballot), (1, ballot, promise));
    }

    /// After a checkpoint fails to load, the decrees the core handed out past it are not run
    /// on the old state: their requests come back `ShuttingDown` while the replica stops
    /// (review finding, session 7).
    #[test]
    fn decrees_after_a_failed_load_are_aborted_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = CheckpointStore::open(dir.path(), 2).unwrap();
        let me = MemberId::from_numeric(1);
        let ballot = Ballot::new(2, me);
        let vote = |decree| {
            let body = crate::format::VoteBody { requests: vec![Bytes::from_static(b"r")], ..Default::default() };
            Arc::new(Message::new(Header::new(Version::V6, me, decree, 1, ballot), Body::Vote(body)))
        };
        let config = ConfigInfo { number: 1, ..Default::default() };
        let cp = Checkpoint { decree: 41, next_vote: vote(42), max_ballot: ballot, config, state_saved: true };
        let header = super::super::checkpoints::header_for(&cp, me, Version::V6);
        let saved = store.save(header, |w| w.write(b"state").map(|_| true).map_err(std::io::Error::other)).unwrap().unwrap();
        let (aborts, shared) = (AbortLog::default(), Arc::new(Shared::new()));
        let (events, _inbox) = super::super::queue::bounded(4);
        let mut exec = Executor::new(
            Box::new(Aborts { log: aborts.clone(), refuses_loads: true, ..Default::default() }),
            shared.clone(),
            store,
            me,
            Version::V6,
            events,
        );
        exec.handle(Work::Load { checkpoint: cp, path: saved.path });
        exec.handle(Work::Execute { vote: vote(42), cookies: vec![7] });
        assert_eq!(*aborts.lock().unwrap(), [(ResponseCode::ShuttingDown, 7)]);
        assert_eq!(shared.current_seq.load(Relaxed), 0, "the state is still the old one");
    }

    /// A download that fails (the peer hangs up at once) leaves nothing in `Temp/`: a replica
    /// that keeps failing to fetch must not fill its disk with partial files.
    #[tokio::test]
    async fn a_failed_fetch_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("download.tmp");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let header = Header::new(Version::V6, MemberId::from_numeric(1), 40, 1, Ballot::EMPTY);
        let request = Message::new(header, Body::FetchCheckpoint);
        let (work, _inbox) = super::super::queue::bounded(4);
        let limit = Duration::from_secs(10);
        let err = fetch_checkpoint(learn::Peer::plain(addr), &request, 4096, temp.clone(), limit, 2, &work).await.unwrap_err();
        assert!(!temp.exists(), "after {err}, the partial download is removed");
    }
}
