//! RSL's callback lock and the fast-read threads: reads whose decree has executed run on
//! `num_reader_threads` threads under the lock's Shared side, concurrently with each other and
//! with a checkpoint being saved; the execute thread takes the Exclusive side for every other
//! callback (docs/spec/behavior.md §2.2, §2.18).

use super::api::StateMachine;
use super::queue::Refused;
use super::Shared;
use crate::paxos::Cookie;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

/// The state machine behind RSL's callback lock: the write side is Exclusive (`&mut self`
/// callbacks), the read side Shared (`&self` ones). The execute thread is its only writer; it
/// takes the lock per callback (per decree for an execution, as the original's execute loop
/// does), never while it waits for work, so reads get in between decrees of a long backlog.
#[derive(Clone)]
pub(crate) struct CallbackLock(Arc<RwLock<Box<dyn StateMachine>>>);

impl CallbackLock {
    pub fn new(sm: Box<dyn StateMachine>) -> CallbackLock {
        CallbackLock(Arc::new(RwLock::new(sm)))
    }

    /// The Exclusive side, for the execute thread. The lock is poisoned only by a writer's
    /// panic, and the only writer is this thread, which that panic ended.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, Box<dyn StateMachine>> {
        self.0.write().expect("the callback lock's only writer is alive")
    }

    /// The Shared side, for the execute thread's saves.
    pub fn shared(&self) -> RwLockReadGuard<'_, Box<dyn StateMachine>> {
        self.0.read().expect("the callback lock's only writer is alive")
    }

    /// The Shared side for a reader thread: None once an Exclusive callback panicked (the state
    /// machine went with the execute thread, so no callback runs any more).
    fn try_shared(&self) -> Option<RwLockReadGuard<'_, Box<dyn StateMachine>>> {
        self.0.read().ok()
    }
}

/// A fast read whose decree has executed, waiting for a reader thread.
pub(crate) struct Read {
    pub request: Bytes,
    pub cookie: Cookie,
}

#[derive(Default)]
struct Pending {
    reads: VecDeque<Read>,
    closed: bool,
}

/// The reads ready to run: from the API (already satisfied when asked) and from the execute
/// thread (once their decree executed). Bounded for the API, as the other queues (queue.rs).
pub(crate) struct Ready {
    pending: Mutex<Pending>,
    wake: Condvar,
    capacity: usize,
}

impl Ready {
    pub fn new(capacity: usize) -> Ready {
        Ready { pending: Mutex::default(), wake: Condvar::new(), capacity }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it; should something, the queue itself is still whole.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An outside read: refused once the queue holds its capacity, or after [`Readers::stop`].
    pub fn offer(&self, read: Read) -> Result<(), Refused> {
        let mut pending = self.lock();
        if pending.closed {
            return Err(Refused::Closed);
        }
        if pending.reads.len() >= self.capacity {
            return Err(Refused::Full);
        }
        pending.reads.push_back(read);
        self.wake.notify_one();
        Ok(())
    }

    /// Reads queued, not yet taken by a reader.
    pub fn len(&self) -> usize {
        self.lock().reads.len()
    }

    /// A read that waited for its decree: it is not refused for room, as the execute thread
    /// admits a read to wait only while the waiting and the ready ones together are under the
    /// capacity (so at most twice the capacity is ever queued here). Only the execute thread
    /// calls this, and it closes the queue itself, so it never finds it closed.
    pub fn push(&self, read: Read) {
        let mut pending = self.lock();
        debug_assert!(!pending.closed, "the execute thread closes the readers last");
        pending.reads.push_back(read);
        self.wake.notify_one();
    }

    /// The next read, or None once closed.
    fn take(&self) -> Option<Read> {
        let mut pending = self.lock();
        loop {
            if pending.closed {
                return None;
            }
            if let Some(read) = pending.reads.pop_front() {
                return Some(read);
            }
            pending = self.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Refuses every later read and hands back those not taken.
    fn close(&self) -> VecDeque<Read> {
        let mut pending = self.lock();
        pending.closed = true;
        self.wake.notify_all();
        std::mem::take(&mut pending.reads)
    }
}

/// The reader threads, owned by the execute thread: it stops them before its last callbacks.
pub(crate) struct Readers {
    pub ready: Arc<Ready>,
    threads: Vec<JoinHandle<()>>,
}

/// What a reader thread runs; `spawn` runs it on a thread of the replica (a panic fails it).
pub(crate) type Body = Box<dyn FnOnce() + Send>;

impl Readers {
    /// No threads yet (while the replica restores, no read is taken).
    pub fn idle(capacity: usize) -> Readers {
        Readers { ready: Arc::new(Ready::new(capacity)), threads: Vec::new() }
    }

    /// Starts `count` reader threads (0: one per CPU, as the original).
    pub fn start(&mut self, count: u32, lock: &CallbackLock, shared: &Arc<Shared>, mut spawn: impl FnMut(Body) -> JoinHandle<()>) {
        assert!(self.threads.is_empty(), "started once");
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        for _ in 0..count {
            let (ready, lock, shared) = (self.ready.clone(), lock.clone(), shared.clone());
            self.threads.push(spawn(Box::new(move || run(&ready, &lock, &shared))));
        }
    }

    /// Takes no more reads and waits for the threads to finish the ones they run; returns the
    /// reads never run (the caller aborts them).
    pub fn stop(&mut self) -> VecDeque<Read> {
        let left = self.ready.close();
        for thread in self.threads.drain(..) {
            // A reader's panic has already failed the replica (see `spawn`).
            let _ = thread.join();
        }
        left
    }
}

impl Drop for Readers {
    /// The execute thread ended without `stop` (a callback panicked): its readers end too.
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(ready: &Ready, lock: &CallbackLock, shared: &Shared) {
    while let Some(read) = ready.take() {
        let Some(sm) = lock.try_shared() else { return };
        sm.execute_fast_read_request(&read.request, read.cookie);
        drop(sm);
        shared.stats.fast_reads.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cookie: Cookie) -> Read {
        Read { request: Bytes::from_static(b"r"), cookie }
    }

    #[test]
    fn outside_reads_are_refused_past_the_capacity_and_waited_ones_still_get_in() {
        let mut readers = Readers::idle(2);
        let ready = readers.ready.clone();
        assert_eq!(ready.offer(read(1)), Ok(()));
        assert_eq!(ready.offer(read(2)), Ok(()));
        assert_eq!(ready.offer(read(3)), Err(Refused::Full));
        ready.push(read(4));
        let left: Vec<Cookie> = readers.stop().into_iter().map(|r| r.cookie).collect();
        assert_eq!(left, [1, 2, 4], "the reads not run come back, in order");
        assert_eq!(ready.offer(read(5)), Err(Refused::Closed));
        assert!(ready.take().is_none());
    }
}
