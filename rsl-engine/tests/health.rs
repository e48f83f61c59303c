//! `ReplicaHealth` and `RSLStats` in a real three-replica ring, in one process: each field and
//! counter family shows a real value (docs/spec/behavior.md §1.3, §2.24, §2.26, §2.27).

mod inproc;

use bytes::Bytes;
use inproc::{three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Node, Version};
use rsl_engine::runtime::{AdmitAll, ReplicaHealth, ResponseCode, RslConfig, RslReplica, StateMachine, Stats};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const LONG: Duration = Duration::from_secs(60);

/// Counts what it executes; its state is that count.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl StateMachine for Counter {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let mut buf = [0u8; 8];
        let n = reader.map_or(Ok(0), |r| r.get_data(&mut buf)).unwrap_or(0);
        self.0.store(if n == 8 { u64::from_le_bytes(buf) } else { 0 }, Relaxed);
        true
    }
    fn execute_replicated_request(&mut self, _request: &[u8], _cookie: Option<u64>, _save: &mut bool) {
        self.0.fetch_add(1, Relaxed);
    }
    fn execute_fast_read_request(&self, _request: &[u8], _cookie: u64) {}
    fn abort_request(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        writer.write(&self.0.load(Relaxed).to_le_bytes()).unwrap();
    }
    fn notify_status(&mut self, _is_primary: bool) {}
    fn notify_configuration_changed(&mut self, _cookie: Option<u64>) {}
    fn abort_change_configuration(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn shut_down(&mut self, _status: ResponseCode) {}
    fn state_saved(&mut self, _seq: u64, _file: &Path) {}
}

struct Ring {
    _dir: tempfile::TempDir,
    cfg: RslConfig,
    nodes: Vec<Node>,
    members: MemberSet,
    machines: Vec<Counter>,
    replicas: Vec<Option<RslReplica>>,
}

impl Ring {
    fn new() -> Ring {
        let dir = tempfile::tempdir().unwrap();
        let Three { nodes, members, cfg } = three(dir.path());
        let mut ring = Ring {
            _dir: dir,
            cfg,
            nodes,
            members,
            machines: (0..3).map(|_| Counter::default()).collect(),
            replicas: vec![None, None, None],
        };
        for i in 0..3 {
            ring.start(i);
        }
        ring
    }

    fn start(&mut self, i: usize) {
        let sm = Box::new(self.machines[i].clone());
        let r = RslReplica::initialize(
            self.cfg.clone(),
            self.nodes[i].clone(),
            Version::V6,
            sm,
            Arc::new(AdmitAll),
            Some(self.members.clone()),
        );
        self.replicas[i] = Some(r.unwrap());
    }

    fn stop(&mut self, i: usize) {
        let r = self.replicas[i].take().expect("running");
        r.unload();
        wait(LONG, || r.is_stopped().then_some(()));
    }

    fn r(&self, i: usize) -> &RslReplica {
        self.replicas[i].as_ref().expect("running")
    }

    fn primary(&self) -> usize {
        wait(LONG, || (0..3).find(|&i| self.replicas[i].as_ref().is_some_and(|r| r.is_primary())))
    }

    /// Replicates `n` requests through the primary and waits until it executed them.
    fn replicate(&self, p: usize, n: u64) {
        let before = self.machines[p].0.load(Relaxed);
        for i in 0..n {
            wait(LONG, || (self.r(p).replicate_request(Bytes::from(format!("r{i}")), i) == ResponseCode::Success).then_some(()));
        }
        wait(LONG, || (self.machines[p].0.load(Relaxed) >= before + n).then_some(()));
    }

    fn health(&self, p: usize, of: usize) -> ReplicaHealth {
        let all = self.r(p).replicas_information();
        assert_eq!(all.len(), 3, "one entry per member: {all:?}");
        all.into_iter().find(|h| h.member_id == self.nodes[of].id).expect("an entry for each member")
    }
}

fn recent(t: Option<SystemTime>, since: SystemTime) -> bool {
    t.is_some_and(|t| t >= since - Duration::from_secs(1) && t <= SystemTime::now() + Duration::from_secs(1))
}

/// `SetVotePayload` on each secondary is seen at the primary with the time and highest decree
/// of its last VoteAccepted; the primary's own entry carries its vote and payload; a
/// connected member has a send time and no failures.
#[test]
fn the_primary_sees_each_members_votes_payload_and_sends() {
    let ring = Ring::new();
    let began = SystemTime::now();
    let p = ring.primary();
    let others: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    for &i in &others {
        ring.r(i).set_vote_payload(100 + i as u64);
    }
    ring.r(p).set_vote_payload(7);
    ring.replicate(p, 5);
    let executed = ring.r(p).current_sequence_number();
    for &i in &others {
        let h = wait(LONG, || {
            Some(ring.health(p, i)).filter(|h| h.last_vote_payload == 100 + i as u64 && h.last_request_voted_decree >= executed)
        });
        assert!(!h.is_primary && h.connected && !h.needs_resolve, "{h:?}");
        assert!(recent(h.last_request_voted_at, began) && recent(h.last_request_sent_at, began), "{h:?}");
        assert_eq!((h.consecutive_failures, h.failed_at), (0, None), "{h:?}");
        assert!(h.packets_sent > 0 && h.num_outstanding < 100, "{h:?}");
    }
    let own = wait(LONG, || Some(ring.health(p, p)).filter(|h| h.last_vote_payload == 7));
    assert!(own.is_primary && own.connected && own.last_request_voted_decree >= executed, "{own:?}");
    assert!(recent(own.last_request_voted_at, began) && own.last_request_sent_at == own.last_request_voted_at, "{own:?}");
    let secondary = ring.r(others[0]);
    assert!(secondary.replicas_information().is_empty(), "a secondary reports nothing");
}

/// A member that stopped: the primary sees it disconnected, counts its failed connection
/// attempts, marks it failed at the third (with the time), and keeps its last vote.
#[test]
fn a_stopped_member_is_counted_failed_with_the_time() {
    let mut ring = Ring::new();
    let p = ring.primary();
    let gone = (p + 1) % 3;
    ring.replicate(p, 3);
    let voted = wait(LONG, || Some(ring.health(p, gone)).filter(|h| h.last_request_voted_at.is_some()));
    let stopped = SystemTime::now();
    ring.stop(gone);
    let h = wait(LONG, || Some(ring.health(p, gone)).filter(|h| h.consecutive_failures >= 3 && h.failed_at.is_some()));
    assert!(!h.connected, "{h:?}");
    assert!(recent(h.failed_at, stopped), "{h:?}");
    assert!(h.last_request_voted_decree >= voted.last_request_voted_decree, "the last vote is kept: {h:?}");
    ring.replicate(p, 2); // the other member still makes a quorum
    ring.start(gone);
    let back = wait(LONG, || Some(ring.health(p, gone)).filter(|h| h.connected && h.consecutive_failures == 0));
    assert_eq!(back.failed_at, h.failed_at, "the failure time stays, as in RSL");
}

/// Sums what the replicas' snapshots report until `done` holds for the sum.
fn stats_until(ring: &Ring, of: &[usize], done: impl Fn(&Stats) -> bool) -> Stats {
    let mut sum = Stats::default();
    wait(LONG, || {
        for &i in of {
            let s = ring.r(i).statistics_snapshot();
            sum.capture_micros = sum.capture_micros.max(s.capture_micros);
            for (total, part) in [(&mut sum.log_reads, s.log_reads), (&mut sum.log_writes, s.log_writes), (&mut sum.voting, s.voting)] {
                total.count += part.count;
                total.bytes += part.bytes;
                total.micros += part.micros;
                total.max_micros = total.max_micros.max(part.max_micros);
            }
        }
        done(&sum).then(|| sum.clone())
    })
}

/// Log writes and voting time on the primary; log reads on the members that served a
/// restarted replica's catch-up; each snapshot starts a new period.
#[test]
fn statistics_time_log_writes_votes_and_log_reads() {
    let mut ring = Ring::new();
    let p = ring.primary();
    ring.r(p).statistics_snapshot();
    ring.replicate(p, 10);
    let s = stats_until(&ring, &[p], |s| s.log_writes.count > 0 && s.voting.count >= 10);
    assert!(s.log_writes.bytes >= 512 * s.log_writes.count, "whole pages: {s:?}");
    assert!(s.log_writes.max_micros <= s.log_writes.micros && s.voting.max_micros <= s.voting.micros, "{s:?}");
    assert!(s.capture_micros > 0 && s.voting.bytes == 0, "{s:?}");

    // A replica that missed decrees learns them from another's log: that one reads its log.
    let lagging = (p + 1) % 3;
    ring.stop(lagging);
    ring.replicate(p, 20);
    let serving: Vec<usize> = (0..3).filter(|&i| i != lagging).collect();
    for &i in &serving {
        ring.r(i).statistics_snapshot();
    }
    ring.start(lagging);
    let s = stats_until(&ring, &serving, |s| s.log_reads.count > 0);
    assert!(s.log_reads.bytes > 0 && s.log_reads.max_micros <= s.log_reads.micros, "{s:?}");
    let p = ring.primary();
    wait(LONG, || (ring.machines[lagging].0.load(Relaxed) >= ring.machines[p].0.load(Relaxed)).then_some(()));
}
