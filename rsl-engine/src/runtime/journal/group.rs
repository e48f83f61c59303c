//! The writer threads several journals of one process share ([`JournalGroup`]): a fixed
//! number of threads for any number of rings, instead of a writer thread per ring.
//!
//! A journal with a batch pending joins the group's ready queue (once, however often it is
//! woken); a free writer takes it and writes and syncs its batch into that ring's own log files
//! (the format is unchanged), exactly as a journal's own writer would, then reports it
//! durable. A member stays scheduled while a writer has it: woken meanwhile, it goes to the
//! back of the queue once that writer is done, so one member whose sync is slow (or hangs)
//! holds one writer, never the whole pool. Up to [`MAX_WRITERS`] rings' batches are written and synced at once: Linux cannot
//! `fdatasync` several files in one call short of `syncfs`, which would flush the whole file
//! system, and this disk overlaps concurrent syncs well. The first design took every ring's
//! batch in one pass and synced them together; each pass then waited for its slowest sync,
//! and eight rings made 0.62 of eight own writers' records per second
//! (`cargo bench --bench journal -- eight_rings`, docs/performance.md).
//!
//! Fail-stop: a member's write or sync error stops that member alone (its journal answers
//! `Stopped`, its `on_error` is told once, its batch is never reported durable). The other
//! members' batches are in other files, made durable by their own syncs, and are reported as
//! usual. A panic while writing a member's batch (a panicking `on_durable`) stops that member
//! alone too.

use super::{Scratch, Shared};
use crate::runtime::panic_message;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Writer threads a group runs at most; fewer while it has fewer members.
const MAX_WRITERS: usize = 8;

/// Writer threads shared by the journals of several rings of one process (`RslConfig`'s
/// `journal_group`). Cheap to clone: every clone is the same group. Its threads start with
/// its members, up to 8 (`MAX_WRITERS`), and end with the last.
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
    /// Writers wait here for a ready member.
    work: Condvar,
}

#[derive(Default)]
struct GroupState {
    members: Vec<Arc<MemberState>>,
    /// Members with a batch pending, each at most once, oldest first.
    ready: VecDeque<Arc<MemberState>>,
    next_id: u64,
    /// Writer threads running.
    writers: usize,
}

struct MemberState {
    id: u64,
    shared: Arc<Shared>,
    /// In the ready queue or being written (changed under the group's lock).
    queued: AtomicBool,
    /// Woken while a writer had it: queued again once that writer is done (under the lock).
    again: AtomicBool,
    /// The member's replica span: what its writers log names the ring.
    span: tracing::Span,
    /// Held by whoever writes the member's batch: a writer, or the member itself once it left.
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
    /// A group without members (its threads start with the first).
    pub fn new() -> JournalGroup {
        JournalGroup::default()
    }

    /// `shared`, a member, has a batch pending: queue it for a writer unless it is queued.
    pub(super) fn wake(&self, shared: &Shared) {
        let mut st = self.inner.lock();
        let Some(member) = st.members.iter().find(|m| std::ptr::eq(&*m.shared, shared)) else { return };
        if !member.queued.swap(true, Relaxed) {
            let member = member.clone();
            st.ready.push_back(member);
            drop(st);
            self.inner.work.notify_one();
        } else {
            member.again.store(true, Relaxed);
        }
    }

    /// Makes `shared` a member: the group's threads write its batches from now on.
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
        let member = MemberState {
            id,
            shared: shared.clone(),
            queued: false.into(),
            again: false.into(),
            span: tracing::Span::current(),
            calls: Mutex::new(calls),
        };
        st.members.push(Arc::new(member));
        if st.writers < st.members.len().min(MAX_WRITERS) {
            let group = self.inner.clone();
            match std::thread::Builder::new().name("rsl-journal".into()).spawn(move || write_ready(&group)) {
                Ok(_) => st.writers += 1,
                // Fewer writers than members is only slower; none cannot write at all.
                Err(e) if st.writers == 0 => {
                    st.members.pop();
                    return Err(e);
                }
                Err(e) => tracing::warn!("a journal writer thread could not start: {e}"),
            }
        }
        debug_assert!(st.writers >= 1 && st.members.iter().filter(|m| m.id == id).count() == 1);
        Ok(Member { group: self.clone(), id })
    }
}

#[cfg(test)]
impl JournalGroup {
    /// Holds `shared`'s writes, as a writer stuck in its sync would: no writer of the group
    /// writes that member until the returned guard is dropped.
    pub(super) fn hold_writes(&self, shared: &Shared) -> HeldWrites {
        let member = self.inner.lock().members.iter().find(|m| std::ptr::eq(&*m.shared, shared)).expect("a member").clone();
        let (locked, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let holder = std::thread::spawn(move || {
            let _calls = lock(&member.calls);
            locked.0.send(()).unwrap();
            let _ = release.1.recv();
        });
        locked.1.recv().unwrap();
        HeldWrites { release: Some(release.0), holder: Some(holder) }
    }
}

/// [`JournalGroup::hold_writes`]'s guard.
#[cfg(test)]
pub(super) struct HeldWrites {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

#[cfg(test)]
impl Drop for HeldWrites {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            holder.join().unwrap();
        }
    }
}

/// A journal's membership of a group.
pub(super) struct Member {
    group: JournalGroup,
    id: u64,
}

impl Member {
    /// Leaves the group, then writes what is still pending from this thread, after any writer
    /// busy with this member: everything appended is durable (or the journal stopped) when
    /// this returns.
    pub(super) fn leave(self, shared: &Shared) {
        let group = &self.group.inner;
        let mut st = group.lock();
        let at = st.members.iter().position(|m| m.id == self.id).expect("a member leaves once");
        let member = st.members.remove(at);
        st.ready.retain(|m| m.id != self.id);
        if st.members.is_empty() {
            // The writers end.
            group.work.notify_all();
        }
        drop(st);
        write_batch(&member, &mut lock(&member.calls));
        let st = shared.lock();
        debug_assert!(st.batch.is_empty() || st.stopped, "nothing left pending");
    }
}

/// A writer thread: writes the ready members' batches until the group has no members. A
/// panic outside `write_batch`'s own guard (a panicking `on_error`) stops that member and
/// leaves this writer running: a pool whose threads died would leave live rings that never
/// become durable.
fn write_ready(group: &Group) {
    while let Some(member) = next_ready(group) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| write_batch(&member, &mut lock(&member.calls)))) {
            let why = panic_message(&*panic);
            let _span = member.span.enter();
            tracing::error!("the journal writer panicked: {why}");
            member.shared.stop(&io::Error::other(format!("the journal writer panicked: {why}")));
        }
        done_with(group, &member);
    }
}

/// A writer is done with `member`: back in the queue if it was woken meanwhile and is still a
/// member, unscheduled otherwise.
fn done_with(group: &Group, member: &Arc<MemberState>) {
    let mut st = group.lock();
    debug_assert!(member.queued.load(Relaxed), "a member being written stays scheduled");
    if member.again.swap(false, Relaxed) && st.members.iter().any(|m| m.id == member.id) {
        st.ready.push_back(member.clone());
        drop(st);
        group.work.notify_one();
    } else {
        member.queued.store(false, Relaxed);
    }
}

/// The oldest ready member, which stays scheduled until [`done_with`]; None (and this writer
/// counted out) once there are no members.
fn next_ready(group: &Group) -> Option<Arc<MemberState>> {
    let mut st = group.lock();
    loop {
        if let Some(member) = st.ready.pop_front() {
            debug_assert!(member.queued.load(Relaxed), "a queued member is scheduled");
            return Some(member);
        }
        if st.members.is_empty() {
            st.writers -= 1;
            return None;
        }
        st = group.work.wait(st).unwrap_or_else(|e| e.into_inner());
    }
}

/// Writes and syncs `member`'s pending batch and reports it durable, as its own writer would;
/// an I/O error or a panic (its `on_durable`'s) stops the member. The log's lock orders this
/// after any batch its protocol thread is writing inline.
fn write_batch(member: &MemberState, calls: &mut Calls) {
    let _span = member.span.enter();
    let shared = &*member.shared;
    let written = catch_unwind(AssertUnwindSafe(|| shared.write_pending(&mut shared.lock_io(), &mut calls.scratch)));
    match written {
        Ok(Ok(Some(seq))) => calls.report(shared, seq),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => calls.fail(shared, e),
        Err(panic) => calls.fail(shared, io::Error::other(format!("the journal writer panicked: {}", panic_message(&*panic)))),
    }
}
