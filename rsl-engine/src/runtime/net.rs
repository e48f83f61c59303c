//! The tokio runtime a replica's network tasks run on (its Paxos port, learn port and peer
//! connections): one of its own, or a [`NetworkGroup`]'s shared by several rings of the
//! process; and the replica's background tasks on it, which it ends itself when it unloads.

use super::transport::Mux;
use super::{in_current_span, panic_message};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, Runtime};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

/// Network threads shared by several rings of one process (`RslConfig`'s `network_group`):
/// every ring's Paxos port, learn port and peer connections run on one runtime of a few
/// threads instead of a thread per ring, so that the packets of many rings are one thread's
/// wake-ups. Cheap to clone: every clone is the same group; its threads end with the last.
#[derive(Clone)]
pub struct NetworkGroup {
    runtime: Arc<Shared>,
    /// The rings' shared connections to peer processes, if they share them.
    mux: Option<Arc<Mux>>,
}

/// Shut down in the background when the last holder drops it: that may be on one of its own
/// threads, where a blocking shutdown would panic.
struct Shared(Option<Runtime>);

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl NetworkGroup {
    /// A group of `threads` network threads (at least 1), named `rsl-net`.
    pub fn new(threads: usize) -> io::Result<NetworkGroup> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).thread_name("rsl-net").enable_all().build()?;
        Ok(NetworkGroup { runtime: Arc::new(Shared(Some(rt))), mux: None })
    }

    /// The group's rings also share one connection per peer process (`transport/mux.rs`):
    /// a ring sends to a peer process over the connection another ring of the group opened to
    /// it, if that process's rings share theirs too; otherwise over a connection of its own.
    pub fn with_shared_connections(mut self) -> NetworkGroup {
        self.mux = Some(Arc::default());
        self
    }

    /// The shared connections, for `TransportOptions::mux`.
    pub(crate) fn mux(&self) -> Option<Arc<Mux>> {
        self.mux.clone()
    }

    pub(crate) fn handle(&self) -> &Handle {
        self.runtime.0.as_ref().expect("running until dropped").handle()
    }
}

impl fmt::Debug for NetworkGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkGroup").field("threads", &self.handle().metrics().num_workers()).field("mux", &self.mux).finish()
    }
}

/// One replica's network runtime.
pub(crate) enum NetRuntime {
    /// One thread of its own, in the replica's span.
    Own(Runtime),
    Shared(NetworkGroup),
}

impl NetRuntime {
    pub fn new(group: Option<NetworkGroup>) -> io::Result<NetRuntime> {
        Ok(match group {
            Some(group) => NetRuntime::Shared(group),
            None => NetRuntime::Own(
                in_current_span(tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("rsl-net"))
                    .enable_all()
                    .build()?,
            ),
        })
    }

    pub fn handle(&self) -> &Handle {
        match self {
            NetRuntime::Own(rt) => rt.handle(),
            NetRuntime::Shared(group) => group.handle(),
        }
    }

    /// Ends the replica's use of it, waiting up to 1 s for what was running: its own runtime
    /// stops with every task on it. A shared one goes on, and `aborted` are the replica's
    /// tasks there (its listeners' and its background tasks, already aborted): waited for, so
    /// that its ports are closed and its background tasks have ended once this returns (a
    /// blocking write one of them had under way, a chunk or a sync, may still finish). Called
    /// on a runtime's thread, it does not wait: it would hold up that thread's own tasks.
    pub fn shut_down(self, aborted: Vec<JoinHandle<()>>) {
        const WITHIN: Duration = Duration::from_secs(1);
        match self {
            NetRuntime::Own(rt) => rt.shutdown_timeout(WITHIN),
            NetRuntime::Shared(_) if Handle::try_current().is_ok() => {
                tracing::warn!("unloaded on a runtime thread: the ring's ports close without being waited for");
            }
            NetRuntime::Shared(_) => {
                if !wait_ended(aborted, WITHIN) {
                    tracing::warn!(within = ?WITHIN, "the ring's network tasks did not end in time");
                }
            }
        }
    }
}

/// Waits for `tasks` to end, for at most `within` in all; whether they did. Polls their
/// handles from this thread (not a runtime's), parking it until a handle wakes it.
fn wait_ended(tasks: Vec<JoinHandle<()>>, within: Duration) -> bool {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + within;
    for mut task in tasks {
        while Pin::new(&mut task).poll(&mut cx).is_pending() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::park_timeout(left);
        }
    }
    true
}

/// A replica's background tasks on its network runtime (learning votes, fetching and copying
/// checkpoints). Should one panic, the replica fails instead of waiting forever for its
/// result; [`abort_all`](Self::abort_all) ends those still running, as a runtime of its own
/// would by shutting down.
#[derive(Clone)]
pub(crate) struct Tasks {
    rt: Handle,
    running: Arc<Mutex<Vec<Running>>>,
}

/// A task's abort handle, and the handle of the watcher that ends with it.
type Running = (AbortHandle, JoinHandle<()>);

impl Tasks {
    pub fn new(rt: Handle) -> Tasks {
        Tasks { rt, running: Arc::default() }
    }

    /// Spawns `task` in the current span; `failed` gets the message of its panic. (A task
    /// aborted is not a failure.)
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static, failed: impl FnOnce(String) + Send + 'static) {
        let handle = self.rt.spawn(task.in_current_span());
        let abort = handle.abort_handle();
        let watcher = self.rt.spawn(async move {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    failed(panic_message(&*e.into_panic()).to_owned());
                }
            }
        });
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|(_, watcher)| !watcher.is_finished());
        running.push((abort, watcher));
    }

    /// Aborts every task still running; returns the handles that say when each has ended.
    pub fn abort_all(&self) -> Vec<JoinHandle<()>> {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner()));
        running
            .into_iter()
            .map(|(task, watcher)| {
                task.abort();
                watcher
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn tasks_on_a_shared_runtime_end_with_their_replica_and_report_panics() {
        let group = NetworkGroup::new(2).unwrap();
        let (a, b) = (NetRuntime::new(Some(group.clone())).unwrap(), NetRuntime::new(Some(group.clone())).unwrap());
        let (ta, tb) = (Tasks::new(a.handle().clone()), Tasks::new(b.handle().clone()));
        let (ended_tx, ended) = mpsc::channel();
        for (tasks, name) in [(&ta, "a"), (&tb, "b")] {
            let ended_tx = ended_tx.clone();
            let guard = DropSignal(Some((ended_tx, name)));
            tasks.spawn(
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await
                },
                |_| unreachable!("aborted, not panicked"),
            );
        }
        a.shut_down(ta.abort_all());
        assert_eq!(ended.try_recv(), Ok("a"), "a's task ended before its runtime was let go");
        assert!(ended.recv_timeout(Duration::from_millis(50)).is_err(), "b's goes on");
        let (failed_tx, failed) = mpsc::channel();
        tb.spawn(async { panic!("boom") }, move |why| failed_tx.send(why).unwrap());
        assert_eq!(failed.recv_timeout(Duration::from_secs(10)).unwrap(), "boom");
        b.shut_down(tb.abort_all());
        assert_eq!(ended.try_recv(), Ok("b"));
        drop(group);
    }

    struct DropSignal(Option<(mpsc::Sender<&'static str>, &'static str)>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            if let Some((tx, name)) = self.0.take() {
                let _ = tx.send(name);
            }
        }
    }
}
