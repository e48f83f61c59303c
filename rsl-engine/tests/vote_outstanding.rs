//! `voteMaxOutstandingIntervalSec`, RSL's deadlock breaker: a primary whose vote stays unchosen
//! this long stops (the original asserts and ends the process; here the replica fails, with
//! the reason, through the fail-stop path). A ring that chooses its votes never trips it.

mod inproc;

use inproc::{three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::Version;
use rsl_engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

struct Nothing;

impl StateMachine for Nothing {
    fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
        true
    }
    fn execute_replicated_request(&mut self, _: &[u8], _: Option<u64>, _: &mut bool) {}
    fn execute_fast_read_request(&self, _: &[u8], _: u64) {}
    fn abort_request(&mut self, _: ResponseCode, _: u64) {}
    fn save_state(&self, _: &mut CheckpointWriter) {}
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, _: ResponseCode) {}
}

/// A ring of three whose primary fails when a vote is outstanding for `limit_sec`; returns its
/// replicas, the primary first, once the primary has had votes chosen for a while.
fn ring(dir: &std::path::Path, limit_sec: u32) -> Vec<RslReplica> {
    let Three { nodes, members, cfg } = three(dir);
    let cfg = RslConfig { vote_max_outstanding_interval_sec: limit_sec, ..cfg };
    let mut replicas: Vec<RslReplica> = nodes
        .iter()
        .map(|n| {
            RslReplica::initialize(cfg.clone(), n.clone(), Version::V6, Box::new(Nothing), Arc::new(AdmitAll), Some(members.clone()))
                .unwrap()
        })
        .collect();
    let primary = wait(WAIT, || replicas.iter().position(RslReplica::is_primary));
    replicas.swap(0, primary);
    // Heartbeats (one a second) chosen for longer than the limit: a working ring never trips it.
    let from = replicas[0].current_sequence_number();
    wait(WAIT, || (replicas[0].current_sequence_number() > from + u64::from(limit_sec.min(4)) + 1).then_some(()));
    assert_eq!(replicas[0].failure(), None);
    replicas
}

#[test]
fn a_primary_whose_vote_stays_outstanding_past_the_limit_fails() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let patient = ring(dirs[0].path(), 3600);
    let strict = ring(dirs[1].path(), 5);
    // Both primaries lose their secondaries, the patient one first: its next heartbeat vote
    // waits at least as long as the strict one's.
    for r in &patient[1..] {
        r.unload();
    }
    for r in &strict[1..] {
        r.unload();
    }
    let reason = wait(WAIT, || strict[0].failure());
    assert!(reason.contains("outstanding") && reason.contains("vote_max_outstanding_interval_sec"), "{reason}");
    assert!(!strict[0].is_primary());
    assert_eq!(patient[0].failure(), None, "the longer limit is not reached");
    assert!(patient[0].is_primary());
}
