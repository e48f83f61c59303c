//! The execute queue's memory bound (docs/spec/behavior.md §2.6) in the runtime: the protocol thread hands chosen
//! decrees to the execute thread while fewer than `in_memory_execution_queue_size_mb` bytes of
//! them wait there; past that it keeps only where each decree's vote is in the log, and
//! re-reads them, in decree order, once the execute thread has worked down to half the bound.
//! Work handed meanwhile (aborts, status, checkpoints, loads) waits behind the decrees it
//! followed, so the execute thread sees exactly the order it would have without spilling.
//! That order is [`Backlog`]'s, shared with the simulator; this module is the runtime's I/O
//! for it: the log read back at an offset, and the gauge shared with the execute thread.
//!
//! Which record is re-read: the core executes, for a decree, the newest vote it logged for it
//! before passing it. Version 6 executes its accepted vote, the last one logged, and logs
//! nothing for a decree once it has moved past it (`log_and_accept`). Version 7 executes the
//! vote pending at the decree, replaced by every later vote it accepts there (their ballots
//! only grow, and a vote equal to the pending one is not logged again; a learned lower-ballot
//! vote logged for its watermark is followed by the pending one again); after execution it may
//! log re-proposals of the decree (`log_executed`), which by Paxos carry the same value but
//! another ballot. So the location is taken when the decree is passed, as the newest vote for
//! it in the journal's index then ([`Journal::locate_vote`]): later re-proposals do not count.
//! A decree the core holds but never logged here (the next vote a restored checkpoint carried)
//! is kept in memory as it is; so is one passed while a loaded checkpoint's restart of the log
//! is pending, as the logs then indexed hold the old state's votes (`locate_vote` skips them).
//! The passed vote's ballot is kept with its location and compared on reading: a record of
//! another ballot is another vote, possibly of another value, and fails the replica.
//!
//! What keeps those records readable: a spilled decree is above the executed one, and
//! `Journal::truncate` deletes no log a decree above min(oldest checkpoint, executed) may be in
//! (a log's successor starts above every decree it holds), even after a loaded checkpoint took
//! the old logs out of the index. A record is read only once the persist it was appended by is
//! durable. A record that cannot be read, or is not that decree's vote, fails the replica: a
//! decree is never skipped.
//!
//! At a stop every spilled decree still executes, before the execute thread's `Stop`, as all
//! chosen decrees did before the spill existed ([`ExecBacklog::stop`]).
//!
//! What bounds this side's own memory: an entry of `spilled` (~100 bytes) and the cookies of
//! its requests (8 bytes each) stand for a vote record of at least 512 bytes on disk, which
//! `truncate` keeps until the decree executed, so they stay a small fraction of the log the
//! stalled execute thread lets grow. A `Held` vote is one a loaded checkpoint carried, at most
//! one per load, and a load needs a whole checkpoint fetched first. The work queued behind
//! spilled decrees (`later`) comes from the core's own transitions (status and configuration
//! changes, checkpoints, aborts of requests it had queued, once each), which follow the
//! decrees chosen and the elections, both logged; a refused request's abort does not wait
//! here (`Io::refused` sends it straight on).

use super::api::ResponseCode;
use super::exec::Work;
use super::journal::Journal;
use super::queue::Queue;
use super::Shared;
use crate::driver::backlog::{Backlog, ExecQueue};
use crate::faults::{self, JOURNAL_READ};
use crate::format::codec::{round_up_512, PAGE};
use crate::format::log::{self, parse_record_header, read_record, Mode, Step};
use crate::format::Message;
use crate::paxos::Cookie;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

pub(crate) use crate::driver::backlog::decree_bytes;

/// The execute queue's size as both threads see it: bytes of decrees handed (protocol thread)
/// and executed (execute thread), and decrees waiting in the log only; and when the execute
/// thread wakes the protocol thread to hand it more.
#[derive(Default)]
pub(crate) struct ExecGauge {
    handed: AtomicU64,
    executed: AtomicU64,
    /// The most bytes in memory since the last [`ExecGauge::take_high`].
    high: AtomicU64,
    spilled: AtomicU64,
    /// The bound: the execute thread asks for more once at half of it.
    limit: AtomicU64,
    /// Set by the protocol thread while decrees wait in the log above half the bound; taken
    /// by the execute thread when it gets down to half, so it wakes the other once per refill.
    wake: AtomicBool,
    /// The execute thread has ended: nothing handed is executed any more.
    gone: AtomicBool,
    /// The protocol thread once it drains the backlog at a stop: it takes no events then, so
    /// the execute thread's wake (and its end) also unparks it.
    stopper: OnceLock<Thread>,
    /// Every decree below it has executed (or a loaded checkpoint covers it).
    executed_below: AtomicU64,
}

impl ExecGauge {
    /// Bytes of decrees handed to the execute thread and not executed yet.
    pub fn in_memory(&self) -> u64 {
        self.handed.load(SeqCst).saturating_sub(self.executed.load(SeqCst))
    }

    /// The execute thread has run `vote`. True once per refill, when it got down to half the
    /// bound while decrees wait in the log: then it wakes the protocol thread to hand more.
    /// (Sequentially consistent with the backlog's `arm`: one of them sees the other.)
    pub fn executed(&self, vote: &Message) -> bool {
        self.executed_below.fetch_max(vote.header.decree + 1, SeqCst);
        self.executed.fetch_add(decree_bytes(vote), SeqCst);
        let wake = self.in_memory() <= self.limit.load(Relaxed) / 2 && self.wake.swap(false, SeqCst);
        if wake {
            self.unpark_stopper();
        }
        wake
    }

    /// The execute thread has replaced the state with a checkpoint of `decree`.
    pub fn loaded(&self, decree: u64) {
        self.executed_below.fetch_max(decree + 1, SeqCst);
    }

    /// Every decree below it has executed: what the core's elections wait for
    /// (`Host::executed`).
    pub fn executed_below(&self) -> u64 {
        self.executed_below.load(SeqCst)
    }

    /// The execute thread has ended (or panicked).
    pub fn executor_gone(&self) {
        self.gone.store(true, SeqCst);
        self.unpark_stopper();
    }

    fn unpark_stopper(&self) {
        if let Some(stopper) = self.stopper.get() {
            stopper.unpark();
        }
    }

    fn handed(&self, bytes: u64) {
        self.handed.fetch_add(bytes, Relaxed);
        self.high.fetch_max(self.in_memory(), Relaxed);
    }

    /// The most bytes in memory since the previous call (at least the current), restarting the mark.
    pub fn take_high(&self) -> u64 {
        let now = self.in_memory();
        self.high.swap(now, Relaxed).max(now)
    }

    /// Chosen decrees waiting in the log only.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Relaxed)
    }
}

/// Where a spilled decree's vote is: `<file>.log` at `offset`.
#[derive(Clone, Copy)]
pub(crate) struct LogPos {
    file: u64,
    offset: u64,
}

/// The protocol thread's side of the execute queue: everything it hands the execute thread
/// goes through here (see the module's doc).
pub(crate) struct ExecBacklog {
    backlog: Backlog<Work, LogPos>,
    reader: LogReader,
}

/// Reads spilled votes back from the logs in `dir`.
struct LogReader {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// The log last read, kept open for the next decree.
    reading: Option<(u64, File)>,
}

/// The execute queue as [`Backlog`] sees it in the runtime.
struct Sink<'a> {
    queue: &'a Queue<Work>,
    reader: &'a mut LogReader,
}

impl ExecBacklog {
    /// `limit` bytes of decrees in memory at most (plus the one that crosses it); the logs are
    /// in `dir`. Decrees executed before (replay at startup) are not counted.
    pub fn new(limit: u64, dir: PathBuf, shared: Arc<Shared>) -> ExecBacklog {
        let gauge = &shared.exec_queue;
        gauge.handed.store(gauge.executed.load(Relaxed), Relaxed);
        gauge.limit.store(limit, Relaxed);
        ExecBacklog { backlog: Backlog::new(limit), reader: LogReader { dir, shared, reading: None } }
    }

    /// Hands `work` to the execute thread, or queues it behind the spilled decrees. False if
    /// the execute thread is gone.
    pub fn hand(&mut self, work: Work, queue: &Queue<Work>) -> bool {
        self.backlog.hand(work, &mut Sink { queue, reader: &mut self.reader })
    }

    /// A chosen decree: handed if it fits in memory and nothing waits before it, otherwise
    /// remembered by where its vote is in `journal`. False if the execute thread is gone.
    pub fn execute(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>, journal: &Journal, queue: &Queue<Work>) -> bool {
        let locate = |_: &Sink, vote: &Message| {
            let (file, offset) = journal.locate_vote(vote.header.decree)?;
            Some((LogPos { file, offset }, journal.last_seq()))
        };
        let handed = self.backlog.execute(vote, cookies, &mut Sink { queue, reader: &mut self.reader }, locate);
        if !self.backlog.idle() {
            self.publish();
        }
        handed
    }

    /// Once the execute thread holds at most half the bound, hands it the spilled decrees in
    /// order (and the work queued behind them) up to the bound, reading those whose records
    /// are durable (persists up to `durable`). Err: the replica cannot go on.
    pub fn refill(&mut self, durable: u64, queue: &Queue<Work>) -> Result<(), String> {
        self.backlog.refill(durable, &mut Sink { queue, reader: &mut self.reader })?;
        if self.backlog.spilled() == 0 {
            self.reader.reading = None;
        }
        self.publish();
        Ok(())
    }

    /// The replica stops: every spilled decree, and the work queued behind it, is handed
    /// before the execute thread's `Stop`, so all chosen decrees execute as without the spill.
    /// The protocol thread, stopping anyway, waits between chunks for the execute thread to
    /// work down to half the bound. `durable`: the persists known durable (all, once the
    /// journal is closed). Err if a decree cannot be read (or is not durable), or the execute
    /// thread is gone: then the cookies still waiting, and the aborts behind them, come back
    /// (`ShuttingDown`) and nothing else queued is delivered — a checkpoint saved now would
    /// not hold its decrees.
    pub fn stop(&mut self, durable: u64, queue: &Queue<Work>) -> Result<(), String> {
        self.reader.shared.exec_queue.stopper.get_or_init(std::thread::current);
        let drained = self.backlog.drain(durable, &mut Sink { queue, reader: &mut self.reader });
        match drained {
            Ok(()) => {
                self.reader.reading = None;
                self.publish();
            }
            Err(_) => self.abandon(queue),
        }
        drained
    }

    fn abandon(&mut self, queue: &Queue<Work>) {
        let code = ResponseCode::ShuttingDown;
        let (cookies, later) = self.backlog.abandon();
        let spilled = cookies.into_iter().map(|cookie| Work::Abort { cookie, code });
        let later = later.into_iter().filter_map(|work| match work {
            Work::Abort { .. } | Work::AbortConfig { .. } => Some(work),
            Work::ConfigChanged { cookie: Some(cookie), .. } => Some(Work::AbortConfig { cookie, code }),
            _ => None,
        });
        for work in spilled.chain(later).collect::<Vec<_>>() {
            let _ = queue.send(work);
        }
        self.publish();
    }

    fn publish(&self) {
        let gauge = &self.reader.shared.exec_queue;
        gauge.spilled.store(self.backlog.spilled() as u64, Relaxed);
        if self.backlog.idle() {
            gauge.wake.store(false, SeqCst);
        }
    }
}

impl ExecQueue for Sink<'_> {
    type Work = Work;
    type Location = LogPos;

    fn in_memory(&self) -> u64 {
        self.reader.shared.exec_queue.in_memory()
    }

    fn hand(&mut self, work: Work) -> bool {
        self.queue.send(work).is_ok()
    }

    fn hand_decree(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>) -> bool {
        self.reader.shared.exec_queue.handed(decree_bytes(&vote));
        self.queue.send(Work::Execute { vote, cookies }).is_ok()
    }

    fn read(&mut self, at: &LogPos) -> Result<Arc<Message>, String> {
        self.reader.read(*at)
    }

    fn describe(&self, at: &LogPos) -> String {
        format!("{} at offset {}", self.reader.dir.join(log::file_name(at.file)).display(), at.offset)
    }

    /// Asks the execute thread to wake this one once it is down to half the bound.
    fn arm(&self) {
        self.reader.shared.exec_queue.wake.store(true, SeqCst);
    }

    /// The wake is armed (`refill`): the execute thread unparks this thread at half the bound
    /// or when it ends (an unpark before the park is kept). The timeout only bounds a wait
    /// that missed both.
    fn wait(&mut self) -> Result<(), String> {
        if self.reader.shared.exec_queue.gone.load(SeqCst) {
            return Err("the execute thread is gone".into());
        }
        std::thread::park_timeout(std::time::Duration::from_millis(100));
        Ok(())
    }
}

impl LogReader {
    /// The record at `at`.
    fn read(&mut self, LogPos { file, offset }: LogPos) -> Result<Arc<Message>, String> {
        let path = self.dir.join(log::file_name(file));
        if self.reading.as_ref().is_none_or(|(open, _)| *open != file) {
            let opened = faults::check(JOURNAL_READ, &path).and_then(|()| File::open(&path)).map_err(|e| e.to_string())?;
            self.reading = Some((file, opened));
        }
        let (_, log) = self.reading.as_ref().expect("opened");
        let started = std::time::Instant::now();
        let mut page = [0u8; PAGE];
        faults::check(JOURNAL_READ, &path).and_then(|()| log.read_exact_at(&mut page, offset)).map_err(|e| e.to_string())?;
        let len = parse_record_header(&page).map_err(|e| e.to_string())?.length as usize;
        let mut data = vec![0u8; round_up_512(len)];
        log.read_exact_at(&mut data, offset).map_err(|e| e.to_string())?;
        self.shared.log_reads.record((PAGE + data.len()) as u64, started.elapsed());
        match read_record(&Bytes::from(data), 0, Mode::Strict, true).map_err(|e| e.to_string())? {
            Step::Record(r) => Ok(Arc::new(r.message)),
            Step::End | Step::NeedMore(_) => Err("no record".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::backlog::Spilled;
    use crate::format::message::{Body, Header, VoteBody};
    use crate::format::types::{Ballot, MemberId, Version};
    use crate::runtime::journal::JournalOptions;
    use crate::runtime::queue::{bounded, Inbox};
    use std::sync::mpsc::{channel, Receiver};
    use std::time::Duration;

    /// A vote for `decree` at `ballot` whose request says both, `size` bytes long.
    fn vote(decree: u64, ballot: u32, size: usize) -> Arc<Message> {
        let id = MemberId::new("1").unwrap();
        let mut request = format!("{decree}@{ballot}:").into_bytes();
        request.resize(size.max(request.len()), b'.');
        let body = Body::Vote(VoteBody { requests: vec![Bytes::from(request)], ..Default::default() });
        Arc::new(Message::new(Header::new(Version::V6, id, decree, 1, Ballot::new(ballot, id)), body))
    }

    struct Setup {
        dir: tempfile::TempDir,
        journal: Journal,
        durable: Receiver<u64>,
        seq: u64,
        shared: Arc<Shared>,
        queue: Queue<Work>,
        inbox: Inbox<Work>,
        backlog: ExecBacklog,
    }

    impl Setup {
        fn new(limit: u64) -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let (tx, durable) = channel();
            let opts = JournalOptions { max_pending_bytes: 1 << 20, ..JournalOptions::new(dir.path()) };
            let (journal, _) = Journal::open(opts, None, move |seq| tx.send(seq).unwrap_or_default(), |e| panic!("{e}")).unwrap();
            let shared = Arc::new(Shared::new());
            let (queue, inbox) = bounded(64);
            let backlog = ExecBacklog::new(limit, dir.path().into(), shared.clone());
            Setup { dir, journal, durable, seq: 0, shared, queue, inbox, backlog }
        }

        fn log(&mut self, vote: &Message) {
            self.seq += 1;
            self.journal.append(self.seq, vote).unwrap();
        }

        /// Waits until every record appended is durable, and returns that persist.
        fn sync(&self) -> u64 {
            loop {
                let seq = self.durable.recv_timeout(Duration::from_secs(10)).expect("durable");
                if seq == self.seq {
                    return seq;
                }
            }
        }

        /// Logs and passes `vote`, as the protocol thread does.
        fn pass(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>) {
            self.log(&vote);
            assert!(self.backlog.execute(vote, cookies, &self.journal, &self.queue));
        }

        /// Takes what the execute thread has been handed, executing it; the decrees' requests
        /// and cookies, and the other work's kind.
        fn drain(&self) -> Vec<String> {
            self.take(usize::MAX)
        }

        /// The same for the first `n` only.
        fn take(&self, n: usize) -> Vec<String> {
            std::iter::from_fn(|| self.inbox.try_recv().ok())
                .take(n)
                .map(|work| match work {
                    Work::Execute { vote, cookies } => {
                        self.shared.exec_queue.executed(&vote);
                        let request = &vote.as_vote().unwrap().requests[0];
                        let head = String::from_utf8_lossy(request).split(':').next().unwrap().to_string();
                        format!("{head}{cookies:?}")
                    }
                    Work::Status(primary) => format!("status {primary}"),
                    Work::Abort { cookie, code } => format!("abort {cookie} {code:?}"),
                    _ => "other".into(),
                })
                .collect()
        }
    }

    #[test]
    fn past_the_bound_decrees_wait_in_the_log_and_come_back_in_order_with_later_work_behind() {
        let mut s = Setup::new(4000);
        let size = decree_bytes(&vote(1, 1, 1000));
        for decree in 1..=4 {
            s.pass(vote(decree, 1, 1000), vec![]);
        }
        assert_eq!(s.shared.exec_queue.spilled(), 0, "handed while under the bound: the fourth crosses it");
        s.pass(vote(5, 1, 1000), vec![50]);
        assert!(s.backlog.hand(Work::Status(true), &s.queue));
        s.pass(vote(6, 1, 1000), vec![60, 61]);
        s.pass(vote(7, 1, 1000), vec![]);
        // A re-proposal of 6 after it passed (version 7) is not what executes.
        s.log(&vote(6, 2, 1000));
        assert_eq!(s.shared.exec_queue.spilled(), 3);
        assert_eq!(s.shared.exec_queue.take_high(), 4 * size, "the bound plus one decree at most");
        let durable = s.sync();
        // Above half the bound nothing is read back.
        s.backlog.refill(durable, &s.queue).unwrap();
        assert_eq!(s.shared.exec_queue.spilled(), 3);
        assert_eq!(s.take(3), ["1@1[]", "2@1[]", "3@1[]"], "the execute thread is still on the fourth");
        s.backlog.refill(durable, &s.queue).unwrap();
        let order = ["4@1[]", "5@1[50]", "status true", "6@1[60, 61]", "7@1[]"];
        assert_eq!(s.drain(), order, "in order, the passed records, work behind its decree");
        assert_eq!(s.shared.exec_queue.spilled(), 0);
        // Idle again: straight through.
        assert!(s.backlog.hand(Work::Status(false), &s.queue));
        s.pass(vote(8, 1, 10), vec![]);
        assert_eq!(s.drain(), ["status false", "8@1[]"]);
    }

    #[test]
    fn a_record_is_read_back_only_once_durable() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        s.pass(vote(2, 1, 10), vec![]);
        assert_eq!(s.drain(), ["1@1[]"]);
        s.backlog.refill(0, &s.queue).unwrap();
        assert_eq!(s.drain(), Vec::<String>::new(), "persist 2 is not durable yet");
        let durable = s.sync();
        s.backlog.refill(durable, &s.queue).unwrap();
        assert_eq!(s.drain(), ["2@1[]"]);
    }

    #[test]
    fn a_decree_not_in_the_log_is_held_and_the_others_still_read_back() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        assert!(s.backlog.execute(vote(2, 1, 10), vec![7], &s.journal, &s.queue), "never logged here");
        s.pass(vote(3, 1, 10), vec![]);
        let durable = s.sync();
        let mut got = Vec::new();
        while got.len() < 3 {
            s.backlog.refill(durable, &s.queue).unwrap();
            got.extend(s.drain());
        }
        assert_eq!(got, ["1@1[]", "2@1[7]", "3@1[]"]);
    }

    #[test]
    fn spilled_decrees_read_back_after_a_loaded_checkpoint_restarted_the_log() {
        let mut s = Setup::new(1);
        for decree in 1..=3 {
            s.pass(vote(decree, 1, 10), vec![]);
        }
        // The core loads a checkpoint of 3: a new log, and the old ones leave the index.
        s.journal.restart_at(4);
        assert!(s.backlog.hand(Work::Status(true), &s.queue), "stands for the Load");
        s.pass(vote(4, 2, 10), vec![]);
        assert_eq!(s.journal.locate_vote(2), None);
        let durable = s.sync();
        let mut got = Vec::new();
        while got.len() < 5 {
            s.backlog.refill(durable, &s.queue).unwrap();
            got.extend(s.drain());
        }
        assert_eq!(got, ["1@1[]", "2@1[]", "3@1[]", "status true", "4@2[]"]);
    }

    #[test]
    fn an_unreadable_record_fails_naming_the_decree_file_and_offset() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        s.pass(vote(2, 1, 10), vec![]);
        let durable = s.sync();
        assert_eq!(s.drain().len(), 1);
        let path = s.dir.path().join("0.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[512 + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = s.backlog.refill(durable, &s.queue).unwrap_err();
        assert!(err.contains("decree 2") && err.contains("0.log") && err.contains("offset 512"), "{err}");
        assert!(s.drain().is_empty(), "nothing is skipped");
        std::fs::remove_file(&path).unwrap();
        s.backlog.reader.reading = None;
        let err = s.backlog.refill(durable, &s.queue).unwrap_err();
        assert!(err.contains("decree 2") && err.contains("0.log"), "{err}");
    }

    /// Runs `stop` against an execute thread that takes what it is handed until `Stop`.
    fn stop_with_executor(s: Setup, durable: u64) -> (Result<(), String>, Vec<String>, u64) {
        let Setup { queue, inbox, mut backlog, shared, dir, journal, .. } = s;
        let most = Arc::new(AtomicU64::new(0));
        let executor = {
            let (shared, most) = (shared.clone(), most.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(work) = inbox.recv() {
                    most.fetch_max(shared.exec_queue.in_memory(), Relaxed);
                    got.push(match work {
                        Work::Execute { vote, cookies } => {
                            shared.exec_queue.executed(&vote);
                            let request = &vote.as_vote().unwrap().requests[0];
                            format!("{}{cookies:?}", String::from_utf8_lossy(request).split(':').next().unwrap())
                        }
                        Work::Status(primary) => format!("status {primary}"),
                        Work::Abort { cookie, code } => format!("abort {cookie} {code:?}"),
                        Work::Stop => break,
                        _ => "other".into(),
                    });
                }
                got
            })
        };
        drop(journal);
        let stopped = backlog.stop(durable, &queue);
        queue.send(Work::Stop).unwrap();
        let got = executor.join().unwrap();
        drop(dir);
        (stopped, got, most.load(Relaxed))
    }

    #[test]
    fn a_stop_executes_every_spilled_decree_in_order_in_bounded_chunks() {
        let size = decree_bytes(&vote(1, 1, 100));
        let mut s = Setup::new(3 * size);
        for decree in 1..=20 {
            s.pass(vote(decree, 1, 100), vec![decree]);
            if decree == 10 {
                assert!(s.backlog.hand(Work::Status(true), &s.queue));
                assert!(s.backlog.hand(Work::Abort { cookie: 99, code: ResponseCode::NotPrimary }, &s.queue));
            }
        }
        assert_eq!(s.shared.exec_queue.spilled(), 17);
        let durable = s.sync();
        let (stopped, got, most) = stop_with_executor(s, durable);
        stopped.unwrap();
        let mut expected: Vec<String> = (1..=20).map(|d| format!("{d}@1[{d}]")).collect();
        expected.splice(10..10, ["status true".to_string(), "abort 99 NotPrimary".to_string()]);
        assert_eq!(got, expected, "all of them, in order, the work behind its decree");
        assert!(most <= 4 * size, "{most} bytes in memory: more than the bound plus one decree");
    }

    #[test]
    fn a_stop_that_cannot_read_a_decree_fails_and_returns_the_waiting_cookies() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![1]);
        s.pass(vote(2, 1, 10), vec![2, 3]);
        s.pass(vote(3, 1, 10), vec![5]);
        assert!(s.backlog.hand(Work::Abort { cookie: 4, code: ResponseCode::NotPrimary }, &s.queue));
        assert!(s.backlog.hand(Work::Status(false), &s.queue));
        let durable = s.sync();
        let path = s.dir.path().join("0.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2 * 512 + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (stopped, got, _) = stop_with_executor(s, durable);
        let err = stopped.unwrap_err();
        assert!(err.contains("decree 3") && err.contains("0.log"), "{err}");
        assert_eq!(got, ["1@1[1]", "2@1[2, 3]", "abort 5 ShuttingDown", "abort 4 NotPrimary"]);
    }

    #[test]
    fn a_stop_ends_when_the_execute_thread_is_gone_or_a_decree_is_not_durable() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        s.pass(vote(2, 1, 10), vec![7]);
        let (stopped, got, _) = stop_with_executor(s, 0);
        assert!(stopped.unwrap_err().contains("not durable"));
        assert_eq!(got, ["1@1[]", "abort 7 ShuttingDown"]);

        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        s.pass(vote(2, 1, 10), vec![]);
        let durable = s.sync();
        // Handed one, and the execute thread ended without running it.
        s.shared.exec_queue.executor_gone();
        assert!(s.backlog.stop(durable, &s.queue).unwrap_err().contains("gone"));
    }

    #[test]
    fn a_decree_passed_while_a_restart_is_pending_executes_as_passed_not_as_the_old_log_has_it() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        // The old state's vote for 2, then a loaded checkpoint of 1 whose next vote is 2 at
        // another ballot, passed before anything is appended to the new log.
        s.log(&vote(2, 1, 10));
        s.journal.restart_at(2);
        assert!(s.backlog.execute(vote(2, 5, 10), vec![], &s.journal, &s.queue));
        s.pass(vote(3, 5, 10), vec![]);
        let durable = s.sync();
        let mut got = Vec::new();
        while got.len() < 3 {
            s.backlog.refill(durable, &s.queue).unwrap();
            got.extend(s.drain());
        }
        assert_eq!(got, ["1@1[]", "2@5[]", "3@5[]"]);
    }

    #[test]
    fn a_record_of_another_ballot_than_the_passed_vote_fails_the_replica() {
        let mut s = Setup::new(1);
        s.pass(vote(1, 1, 10), vec![]);
        s.pass(vote(2, 1, 10), vec![]);
        let durable = s.sync();
        assert_eq!(s.drain(), ["1@1[]"]);
        let Some(Spilled::Logged { ballot, .. }) = s.backlog.backlog.spilled.front_mut() else { panic!("logged") };
        *ballot = vote(2, 5, 10).header.ballot;
        let err = s.backlog.refill(durable, &s.queue).unwrap_err();
        assert!(err.contains("decree 2") && err.contains("0.log") && err.contains("offset 512") && err.contains("ballot"), "{err}");
        assert!(s.drain().is_empty(), "never another value");
    }

    #[test]
    fn the_execute_thread_asks_for_more_once_when_down_to_half_the_bound() {
        let size = decree_bytes(&vote(1, 1, 100));
        let mut s = Setup::new(4 * size);
        for decree in 1..=8 {
            s.pass(vote(decree, 1, 100), vec![]);
        }
        let durable = s.sync();
        s.backlog.refill(durable, &s.queue).unwrap();
        let wakes: Vec<bool> = std::iter::from_fn(|| s.inbox.try_recv().ok())
            .map(|work| match work {
                Work::Execute { vote, .. } => s.shared.exec_queue.executed(&vote),
                _ => panic!("only decrees"),
            })
            .collect();
        assert_eq!(wakes, [false, true, false, false], "at half the bound, once");
        s.backlog.refill(durable, &s.queue).unwrap();
        assert_eq!(s.drain().len(), 4);
        assert_eq!(s.shared.exec_queue.spilled(), 0);
        s.backlog.refill(durable, &s.queue).unwrap();
        assert!(!s.shared.exec_queue.wake.load(SeqCst), "nothing waits in the log: no wake");
    }
}
