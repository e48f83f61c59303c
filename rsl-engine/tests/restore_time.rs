//! Restore-time answers: a service that folds `GetCurrentSequenceNumber` and the configuration
//! number into its state ends with the same state after a restart (checkpoint, then the logs
//! replayed) as the replicas that never restarted.

mod inproc;

use bytes::Bytes;
use inproc::{three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::Version;
use rsl_engine::runtime::{AdmitAll, ReplicaView, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The digest after each executed decree, and what `load_state` saw.
#[derive(Default)]
struct Seen {
    digests: BTreeMap<u64, u64>,
    /// (sequence number, configuration number) the view showed in `load_state`, and what the
    /// checkpoint's state says they were when it was saved.
    loads: Vec<((u64, u32), (u64, u32))>,
}

/// Folds every request with the sequence number and configuration the view shows while it
/// executes; the digest, sequence number and configuration number are the whole state.
struct Folding {
    view: Option<ReplicaView>,
    digest: u64,
    seen: Arc<Mutex<Seen>>,
}

impl Folding {
    fn now(&self) -> (u64, u32) {
        let view = self.view.as_ref().expect("attached before the first callback");
        (view.current_sequence_number(), view.configuration().1)
    }
}

fn fold(digest: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(digest, |d, &b| (d ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl StateMachine for Folding {
    fn attach(&mut self, view: ReplicaView) {
        self.view = Some(view);
    }
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let Some(reader) = reader else { return true };
        let mut buf = [0u8; 20];
        let mut got = 0;
        while got < buf.len() {
            let n = reader.get_data(&mut buf[got..]).expect("the state");
            assert!(n > 0, "the state is 20 bytes");
            got += n;
        }
        self.digest = u64::from_le_bytes(buf[..8].try_into().unwrap());
        let saved = (u64::from_le_bytes(buf[8..16].try_into().unwrap()), u32::from_le_bytes(buf[16..].try_into().unwrap()));
        let now = self.now();
        self.seen.lock().unwrap().loads.push((now, saved));
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], _: Option<u64>, save: &mut bool) {
        let (seq, number) = self.now();
        let (members, _) = self.view.as_ref().unwrap().configuration();
        self.digest = fold(fold(fold(self.digest, request), &seq.to_le_bytes()), &number.to_le_bytes());
        self.digest = fold(self.digest, &(members.nodes.len() as u64).to_le_bytes());
        self.seen.lock().unwrap().digests.insert(seq, self.digest);
        *save |= request == b"save";
    }
    fn execute_fast_read_request(&self, _: &[u8], _: u64) {}
    fn abort_request(&mut self, _: ResponseCode, _: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let (seq, number) = self.now();
        writer.write(&[&self.digest.to_le_bytes()[..], &seq.to_le_bytes(), &number.to_le_bytes()].concat()).unwrap();
    }
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, _: ResponseCode) {}
}

/// Replicates `request` and waits until the primary has executed it, so that each request
/// gets a decree of its own.
fn submit(replicas: &[Option<RslReplica>], request: &[u8], cookie: u64) {
    let bytes = Bytes::copy_from_slice(request);
    let (primary, before) = wait(WAIT, || {
        let primary = replicas.iter().flatten().find(|r| r.is_primary())?;
        let before = primary.current_sequence_number();
        (primary.replicate_request(bytes.clone(), cookie) == ResponseCode::Success).then_some((primary, before))
    });
    wait(WAIT, || (primary.current_sequence_number() > before).then_some(()));
}

#[test]
fn a_restarted_replica_folds_the_same_sequence_numbers_and_configurations_as_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let Three { nodes, members, cfg } = three(dir.path());
    let cfg = RslConfig { election_delay_sec: 10, ..cfg };
    let seen: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(Seen::default()))).collect();
    let start = |i: usize, seen: &Arc<Mutex<Seen>>| {
        let sm = Folding { view: None, digest: 0, seen: seen.clone() };
        RslReplica::initialize(cfg.clone(), nodes[i].clone(), Version::V6, Box::new(sm), Arc::new(AdmitAll), Some(members.clone())).unwrap()
    };
    let mut replicas: Vec<Option<RslReplica>> = (0..3).map(|i| Some(start(i, &seen[i]))).collect();

    // A checkpoint, decrees after it, a reconfiguration (number 1 -> 2), then more decrees.
    for (i, request) in [&b"a"[..], b"save", b"b", b"c"].into_iter().enumerate() {
        submit(&replicas, request, i as u64);
    }
    let primary = wait(WAIT, || replicas.iter().flatten().find(|r| r.is_primary()));
    assert_eq!(primary.change_configuration(members.clone(), 99), ResponseCode::Success);
    wait(WAIT, || replicas.iter().flatten().all(|r| r.configuration().1 == 2).then_some(()));
    for (i, request) in [&b"d"[..], b"e"].into_iter().enumerate() {
        submit(&replicas, request, 10 + i as u64);
    }
    let last = wait(WAIT, || replicas.iter().flatten().find(|r| r.is_primary()).map(|r| r.highest_passed_sequence_number()));
    wait(WAIT, || replicas.iter().flatten().all(|r| r.current_sequence_number() >= last).then_some(()));

    // Restart a secondary: it loads its checkpoint and replays its logs.
    let k = replicas.iter().position(|r| !r.as_ref().unwrap().is_primary()).unwrap();
    replicas[k].take().unwrap().unload();
    let live = std::mem::take(&mut *seen[k].lock().unwrap());
    let restarted = start(k, &seen[k]);
    let replayed = std::mem::take(&mut *seen[k].lock().unwrap());

    let ((seq, number), saved) = *replayed.loads.first().expect("the restart loaded a checkpoint");
    assert_eq!((seq, number), saved, "load_state sees the checkpoint's sequence number and configuration");
    assert!(seq > 0 && number == 1);
    let after_checkpoint: Vec<_> = live.digests.range(seq + 1..).map(|(s, d)| (*s, *d)).collect();
    assert!(
        after_checkpoint.len() >= 4 && after_checkpoint.iter().any(|(s, _)| *s > seq + 3),
        "decrees before and after the reconfiguration are replayed: {after_checkpoint:?}"
    );
    let replayed: Vec<_> = replayed.digests.into_iter().collect();
    assert_eq!(replayed, after_checkpoint, "the replayed decrees fold what they folded live");
    let other = (k + 1) % 3;
    assert_eq!(seen[other].lock().unwrap().digests.get(&last), live.digests.get(&last), "the live replicas agree");
    assert_eq!(restarted.configuration().1, 2);
    assert_eq!(restarted.current_sequence_number(), last);
    restarted.unload();
    for r in replicas.into_iter().flatten() {
        r.unload();
    }
}
