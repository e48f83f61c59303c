//! `maxCheckpointIntervalSec` (the original's TestTimeBasedCheckpoint): with it, an idle ring
//! checkpoints on time alone (its heartbeats roll the log); without it, a ring whose log never
//! grows past `maxLogLenMB` and whose service never asks saves nothing.

mod inproc;

use bytes::Bytes;
use inproc::{free_pairs, wait};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Version};
use rsl_engine::runtime::api::node;
use rsl_engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Counts its saves; its state is empty.
struct Counting(Arc<AtomicU64>);

impl StateMachine for Counting {
    fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
        true
    }
    fn execute_replicated_request(&mut self, _: &[u8], _: Option<u64>, _: &mut bool) {}
    fn execute_fast_read_request(&self, _: &[u8], _: u64) {}
    fn abort_request(&mut self, _: ResponseCode, _: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        writer.write(b"state").unwrap();
        self.0.fetch_add(1, Relaxed);
    }
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, _: ResponseCode) {}
}

/// A one-member ring heartbeating every second, checkpointing every `interval` seconds (0:
/// never on time); returns it and its count of saves.
fn lone_ring(dir: &std::path::Path, port: u16, interval: u64) -> (RslReplica, Arc<AtomicU64>) {
    let me = node("1", Ipv4Addr::LOCALHOST, port).unwrap();
    let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
    let cfg =
        RslConfig { working_dir: dir.into(), heart_beat_interval_sec: 1, max_checkpoint_interval_sec: interval, ..RslConfig::default() };
    let saves = Arc::new(AtomicU64::new(0));
    let sm = Box::new(Counting(saves.clone()));
    (RslReplica::initialize(cfg, me, Version::V6, sm, Arc::new(AdmitAll), Some(members)).unwrap(), saves)
}

#[test]
fn an_idle_ring_checkpoints_every_interval_and_only_with_one() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = free_pairs(2);
    // The ring without the setting starts first: it runs at least as long as the other.
    let (off, off_saves) = lone_ring(dirs[0].path(), ports[0], 0);
    let (on, on_saves) = lone_ring(dirs[1].path(), ports[1], 1);
    let decree_of_second = wait(Duration::from_secs(60), || (on_saves.load(Relaxed) >= 2).then(|| on.current_sequence_number()));
    assert!(decree_of_second > 1);
    assert_eq!(off_saves.load(Relaxed), 0, "no checkpoint without the interval (nor a size-based roll)");
    assert!(off.current_sequence_number() > 1, "the other ring heartbeats all the same");
    on.unload();
    off.unload();
}
