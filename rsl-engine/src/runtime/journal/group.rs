//! The writer thread several journals of one process share ([`JournalGroup`]): one wake-up and
//! one pass per batch across the rings instead of a writer thread per ring.
//!
//! A pass takes every member's pending batch and writes each into that member's own log files
//! (the format is unchanged: a ring's records are in its own directory only). Linux cannot
//! `fdatasync` several files at once short of `syncfs`, which would flush the whole file
//! system; so the pass then syncs the members' files together, one from this thread and the
//! others from a small fixed pool of sync threads (concurrent syncs share the file system's
//! journal commits), and only then reports each member's batch durable.
//!
//! Fail-stop: a member's write or sync error stops that member alone (its journal answers
//! `Stopped`, its `on_error` is told once, its batch is never reported durable). The other
//! members' batches of the same pass are in other files, made durable by their own syncs, and
//! are reported as usual. A panic of the pass itself (not of one member's callback) stops every
//! member of the pass: none of their batches is known durable.

use super::{annotate, LogIo, Scratch, Shared, SYNC_TRACE};
use crate::runtime::panic_message;
use std::fmt;
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Threads syncing for the shared writer besides itself: up to this many more files are
/// synced at once. Eight rings' syncs all at once: this disk's `fdatasync`s overlap well
/// (`cargo bench --bench journal -- eight_rings`; three threads made 0.41 of eight own
/// writers' records per second, seven 0.62).
const SYNC_THREADS: usize = 7;

/// A writer thread shared by the journals of several rings of one process (`RslConfig`'s
/// `journal_group`). Cheap to clone: every clone is the same group. The thread starts with the
/// first member and ends with the last.
#[derive(Clone, Default)]
pub struct JournalGroup {
    inner: Arc<Group>,
}

impl fmt::Debug for JournalGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalGroup").field("members", &self.inner.lock().members.len()).finish()
    }
}

#[derive(Default)]
struct Group {
    state: Mutex<GroupState>,
    /// The writer waits here for a wake-up.
    work: Condvar,
    /// A leaving member waits here for the pass to end.
    idle: Condvar,
}

#[derive(Default)]
struct GroupState {
    members: Vec<Arc<MemberState>>,
    next_id: u64,
    /// A member has a batch pending since the writer last looked.
    woken: bool,
    /// The writer is in a pass over the members.
    in_pass: bool,
    /// The writer thread runs.
    running: bool,
}

struct MemberState {
    id: u64,
    shared: Arc<Shared>,
    /// Used by the writer during a pass, and by the member itself once it left.
    calls: Mutex<Calls>,
}

type OnDurable = Box<dyn Fn(u64) + Send>;
type OnError = Box<dyn FnOnce(io::Error) + Send>;

struct Calls {
    on_durable: OnDurable,
    /// Taken at the member's first failure: it is told once.
    on_error: Option<OnError>,
    scratch: Scratch,
    /// The highest persist number reported durable.
    reported: u64,
}

impl Calls {
    /// Stops the member's journal and tells its owner, once.
    fn fail(&mut self, shared: &Shared, error: io::Error) {
        shared.stop(&error);
        tracing::debug!("journal writer stopped: {error}");
        if let Some(on_error) = self.on_error.take() {
            on_error(error);
        }
    }

    /// Reports `seq` durable; a panicking callback fails the member.
    fn report(&mut self, shared: &Shared, seq: u64) {
        debug_assert!(seq > self.reported, "durable {seq} reported after {}", self.reported);
        match catch_unwind(AssertUnwindSafe(|| (self.on_durable)(seq))) {
            Ok(()) => self.reported = seq,
            Err(panic) => self.fail(shared, io::Error::other(format!("the journal writer panicked: {}", panic_message(&*panic)))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not hide the group from its last members.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.state)
    }
}

impl JournalGroup {
    /// A group without members (its thread starts with the first).
    pub fn new() -> JournalGroup {
        JournalGroup::default()
    }

    /// A member has a batch pending.
    pub(super) fn wake(&self) {
        self.inner.lock().woken = true;
        self.inner.work.notify_one();
    }

    /// Makes `shared` a member: the group's thread writes its batches from now on.
    pub(super) fn join(
        &self,
        shared: &Arc<Shared>,
        on_durable: impl Fn(u64) + Send + 'static,
        on_error: impl FnOnce(io::Error) + Send + 'static,
    ) -> io::Result<Member> {
        let mut st = self.inner.lock();
        let id = st.next_id;
        st.next_id += 1;
        let calls =
            Calls { on_durable: Box::new(on_durable), on_error: Some(Box::new(on_error)), scratch: Scratch::default(), reported: 0 };
        st.members.push(Arc::new(MemberState { id, shared: shared.clone(), calls: Mutex::new(calls) }));
        if !st.running {
            let group = self.inner.clone();
            let spawned = std::thread::Builder::new().name("rsl-journal".into()).spawn(move || Writer::start().run(&group));
            if let Err(e) = spawned {
                st.members.pop();
                return Err(e);
            }
            st.running = true;
        }
        debug_assert!(st.members.iter().filter(|m| m.id == id).count() == 1);
        Ok(Member { group: self.clone(), id })
    }
}

/// A journal's membership of a group.
pub(super) struct Member {
    group: JournalGroup,
    id: u64,
}

impl Member {
    /// Leaves the group once its current pass is over, then writes what is still pending from
    /// this thread: everything appended is durable (or the journal stopped) when this returns.
    pub(super) fn leave(self, shared: &Shared) {
        let group = &self.group.inner;
        let mut st = group.lock();
        while st.in_pass {
            st = group.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let at = st.members.iter().position(|m| m.id == self.id).expect("a member leaves once");
        let member = st.members.remove(at);
        // The writer ends once the last member left.
        st.woken = true;
        drop(st);
        group.work.notify_one();
        let mut calls = lock(&member.calls);
        let calls = &mut *calls;
        match shared.write_pending(&mut shared.lock_io(), &mut calls.scratch) {
            Ok(Some(seq)) => calls.report(shared, seq),
            Ok(None) => {}
            Err(e) => calls.fail(shared, e),
        }
    }
}

/// A job of the sync pool: `fdatasync` a file, answer with its index.
struct SyncJob {
    file: File,
    index: usize,
    done: Sender<(usize, io::Result<()>)>,
}

/// The group's thread and its sync pool.
struct Writer {
    /// None if the pool could not start: the writer then syncs every file itself.
    jobs: Option<Sender<SyncJob>>,
}

/// A member's batch written in this pass and not yet synced.
struct Written<'a> {
    member: &'a MemberState,
    calls: MutexGuard<'a, Calls>,
    /// Held from the write to the report: batches of one journal reach the disk in order.
    io: MutexGuard<'a, LogIo>,
    seq: u64,
    bytes: u64,
}

impl Writer {
    /// Starts the sync pool; it ends when the writer does.
    fn start() -> Writer {
        let (jobs, queue) = mpsc::channel::<SyncJob>();
        let queue = Arc::new(Mutex::new(queue));
        let spawned = (0..SYNC_THREADS).all(|_| {
            let queue = queue.clone();
            std::thread::Builder::new().name("rsl-journal-sync".into()).spawn(move || sync_files(&queue)).is_ok()
        });
        Writer { jobs: spawned.then_some(jobs) }
    }

    /// Passes over the members whenever one is woken, until none is left.
    fn run(self, group: &Group) {
        while let Some(members) = self.wait(group) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.pass(&members))) {
                let why = format!("the journal writer panicked: {}", panic_message(&*panic));
                for m in &members {
                    lock(&m.calls).fail(&m.shared, io::Error::other(why.clone()));
                }
            }
            group.lock().in_pass = false;
            group.idle.notify_all();
        }
    }

    /// The members, once woken; None (and the thread marked stopped) once there are none.
    fn wait(&self, group: &Group) -> Option<Vec<Arc<MemberState>>> {
        let mut st = group.lock();
        while !st.woken && !st.members.is_empty() {
            st = group.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.members.is_empty() {
            st.running = false;
            return None;
        }
        st.woken = false;
        st.in_pass = true;
        Some(st.members.clone())
    }

    /// Writes every member's pending batch, syncs them together, reports each durable.
    fn pass(&self, members: &[Arc<MemberState>]) {
        let started = Instant::now();
        let mut written = Vec::with_capacity(members.len());
        for member in members {
            // A member's protocol thread holds `io` while it writes its batch inline
            // (`Journal::flush`): it took all that is pending, for it is the only appender,
            // and its next appends wake the group again.
            let Ok(io) = member.shared.io.try_lock() else { continue };
            written.extend(write(member, io));
        }
        let handles: Vec<io::Result<Option<File>>> = written.iter().map(|w| w.io.sync_handle()).collect();
        let results = self.sync_all(handles);
        let elapsed = started.elapsed();
        for (mut w, result) in written.into_iter().zip(results) {
            let (shared, calls) = (&*w.member.shared, &mut *w.calls);
            if let Err(e) = result {
                let path = w.io.path();
                calls.fail(shared, annotate(e, &path));
                continue;
            }
            w.io.mark_synced(shared, &mut calls.scratch.synced);
            w.io.timing.record(w.bytes, elapsed);
            tracing::trace!(target: SYNC_TRACE, dir = %w.io.dir.display(), micros = elapsed.as_micros() as u64, "log synced");
            drop(w.io);
            shared.publish(&mut calls.scratch.batch, &calls.scratch.synced);
            calls.report(shared, w.seq);
        }
    }

    /// Syncs the files: the first here, the others on the pool, all at once.
    fn sync_all(&self, handles: Vec<io::Result<Option<File>>>) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(handles.len());
        let (done, answers) = mpsc::channel();
        let mut mine = None;
        let mut queued = 0;
        for (index, handle) in handles.into_iter().enumerate() {
            results.push(Ok(()));
            match handle {
                Err(e) => results[index] = Err(e),
                Ok(None) => {}
                Ok(Some(file)) => match (&mine, &self.jobs) {
                    (None, _) => mine = Some((index, file)),
                    (Some(_), Some(jobs)) => match jobs.send(SyncJob { file, index, done: done.clone() }) {
                        Ok(()) => queued += 1,
                        Err(_) => results[index] = Err(io::Error::other("the journal's sync pool stopped")),
                    },
                    (Some(_), None) => results[index] = file.sync_data(),
                },
            }
        }
        if let Some((index, file)) = mine {
            results[index] = file.sync_data();
        }
        for (index, result) in answers.iter().take(queued) {
            results[index] = result;
        }
        results
    }
}

/// Takes `member`'s pending batch and writes it (unsynced); None if nothing was pending or the
/// write failed (which fails the member).
fn write<'a>(member: &'a MemberState, mut io: MutexGuard<'a, LogIo>) -> Option<Written<'a>> {
    let shared = &*member.shared;
    let mut calls = lock(&member.calls);
    let scratch = &mut calls.scratch;
    let seq = shared.take(&mut scratch.batch)?;
    scratch.synced.clear();
    let bytes = scratch.batch.iter().map(|s| s.data.len() as u64).sum();
    if let Err(e) = io.write_segments(shared, &scratch.batch, &mut scratch.synced) {
        scratch.batch.clear();
        calls.fail(shared, e);
        return None;
    }
    Some(Written { member, calls, io, seq, bytes })
}

/// A sync thread: syncs files until the writer ends.
fn sync_files(queue: &Mutex<Receiver<SyncJob>>) {
    loop {
        let job = lock(queue).recv();
        let Ok(job) = job else { return };
        let result = job.file.sync_data();
        // The writer waits for every answer: a send fails only if it panicked meanwhile.
        let _ = job.done.send((job.index, result));
    }
}
