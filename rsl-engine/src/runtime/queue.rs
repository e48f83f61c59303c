//! The bounded queues into the protocol and execute threads: outside input (peers' messages,
//! the application's requests) is refused once a queue holds its capacity, while the
//! threads' own completions always get in, and every queue's depth is counted.
//!
//! Why two kinds of sender on one queue: an outside sender can be told "no" (a peer resends,
//! an application retries), so it never blocks and never grows the queue past its bound. A
//! completion (a journal sync, a decree to execute, a checkpoint placed, a stop) cannot be
//! refused without losing it, and blocking on it could deadlock the protocol and execute
//! threads, each waiting for the other to drain. Completions are produced only by work that
//! was admitted, so their number follows the admitted input instead of growing on its own.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SendError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

/// Outside items one queue holds at most; the protocol thread takes up to this many events per
/// turn, so a full queue is at most about one turn behind.
pub(crate) const CAPACITY: usize = 4096;

/// A queue's depth, shared by its senders, its receiver and the statistics.
#[derive(Debug, Default)]
pub(crate) struct Depth {
    now: AtomicUsize,
    /// The highest depth since the last [`Depth::take_high`].
    high: AtomicUsize,
}

impl Depth {
    fn add(&self) {
        let now = self.now.fetch_add(1, Relaxed) + 1;
        self.high.fetch_max(now, Relaxed);
    }

    /// The items queued now.
    pub fn now(&self) -> u64 {
        self.now.load(Relaxed) as u64
    }

    /// The highest depth since the previous call (at least the current one), restarting the mark.
    pub fn take_high(&self) -> u64 {
        let now = self.now.load(Relaxed);
        self.high.swap(now, Relaxed).max(now) as u64
    }
}

/// Why an outside item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    /// The receiving thread has ended.
    Closed,
}

/// The sending side of a bounded queue.
pub(crate) struct Queue<T> {
    tx: Sender<T>,
    depth: Arc<Depth>,
    capacity: usize,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { tx: self.tx.clone(), depth: self.depth.clone(), capacity: self.capacity }
    }
}

/// The receiving side.
pub(crate) struct Inbox<T> {
    rx: Receiver<T>,
    depth: Arc<Depth>,
}

/// A queue that refuses outside items past `capacity`.
pub(crate) fn bounded<T>(capacity: usize) -> (Queue<T>, Inbox<T>) {
    assert!(capacity > 0, "a queue holds something");
    let (tx, rx) = mpsc::channel();
    let depth = Arc::new(Depth::default());
    (Queue { tx, depth: depth.clone(), capacity }, Inbox { rx, depth })
}

impl<T> Queue<T> {
    /// Queues an outside item unless the queue is full or closed. Never blocks.
    pub fn offer(&self, item: T) -> Result<(), Refused> {
        let room = self.depth.now.fetch_update(Relaxed, Relaxed, |n| (n < self.capacity).then_some(n + 1));
        let Ok(before) = room else { return Err(Refused::Full) };
        self.depth.high.fetch_max(before + 1, Relaxed);
        self.tx.send(item).map_err(|_| {
            self.depth.now.fetch_sub(1, Relaxed);
            Refused::Closed
        })
    }

    /// Queues a completion, whatever the depth (see the module's doc). Never blocks.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.depth.add();
        self.tx.send(item).inspect_err(|_| {
            self.depth.now.fetch_sub(1, Relaxed);
        })
    }

    /// Whether an outside item would be refused now.
    pub fn is_full(&self) -> bool {
        self.depth.now.load(Relaxed) >= self.capacity
    }

    pub fn depth(&self) -> &Arc<Depth> {
        &self.depth
    }
}

impl<T> Inbox<T> {
    fn took(&self, item: T) -> T {
        self.depth.now.fetch_sub(1, Relaxed);
        item
    }

    pub fn recv(&self) -> Result<T, mpsc::RecvError> {
        self.rx.recv().map(|item| self.took(item))
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|item| self.took(item))
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv().map(|item| self.took(item))
    }

    /// Nothing is queued now (an item being sent may already count).
    pub fn is_empty(&self) -> bool {
        self.depth.now.load(Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_items_are_refused_past_the_capacity_and_completions_still_get_in() {
        let (queue, inbox) = bounded(2);
        assert_eq!(queue.offer(1), Ok(()));
        assert_eq!(queue.offer(2), Ok(()));
        assert_eq!(queue.offer(3), Err(Refused::Full));
        assert_eq!(queue.send(4), Ok(()), "a completion is never refused");
        assert_eq!(queue.offer(5), Err(Refused::Full), "completions count toward the depth");
        assert_eq!(queue.depth().take_high(), 3);
        assert_eq!(inbox.recv(), Ok(1));
        assert_eq!(inbox.try_recv(), Ok(2));
        assert_eq!(queue.depth().take_high(), 3, "the mark since the last snapshot");
        assert_eq!(queue.depth().take_high(), 1, "restarts at the current depth");
        assert_eq!(queue.offer(6), Ok(()), "room again once drained");
        assert_eq!(inbox.recv_timeout(Duration::ZERO), Ok(4));
        assert_eq!(inbox.recv(), Ok(6));
        drop(inbox);
        assert_eq!(queue.offer(7), Err(Refused::Closed));
        assert!(queue.send(8).is_err());
        assert_eq!(queue.depth().take_high(), 2);
        assert_eq!(queue.depth().take_high(), 0, "a failed send leaves no depth behind");
    }
}
