//! The Rust API in one process: three replicas of a ring with a state machine that records
//! every callback. Checks the callbacks' order and arguments, cookies, fast reads,
//! checkpoints, CopyStateFromReplica, read-only Replay and unload.

mod inproc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use inproc::{free_pairs, three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Version};
use rsl_engine::runtime::api::node;
use rsl_engine::runtime::tls::{issue, IdentitySource, PeerRules, Tls, TlsSettings};
use rsl_engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Load(bool),
    Exec(Vec<u8>, Option<u64>),
    FastRead(Vec<u8>, u64),
    Abort(ResponseCode, u64),
    Status(bool),
    Saved(u64),
    Copied(u64, bool, Option<u64>),
    ShutDown,
}

/// Appends every request to its state and every callback to `events`.
#[derive(Default)]
struct Recorder {
    state: Vec<Vec<u8>>,
    events: Arc<Mutex<Vec<Ev>>>,
}

impl Recorder {
    fn push(&self, ev: Ev) {
        self.events.lock().unwrap().push(ev);
    }
}

impl StateMachine for Recorder {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        self.push(Ev::Load(reader.is_some()));
        self.state.clear();
        let Some(r) = reader else { return true };
        let mut data = vec![0; r.size() as usize];
        let mut at = 0;
        while at < data.len() {
            at += r.get_data(&mut data[at..]).unwrap();
        }
        let mut buf = Bytes::from(data);
        while buf.has_remaining() {
            let n = buf.get_u32_le() as usize;
            self.state.push(buf.split_to(n).to_vec());
        }
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], cookie: Option<u64>, save: &mut bool) {
        // Set, never cleared: the flag is the whole batch's, and a later request must not undo it.
        *save |= request == b"save";
        self.state.push(request.to_vec());
        self.push(Ev::Exec(request.to_vec(), cookie));
    }
    fn execute_fast_read_request(&self, request: &[u8], cookie: u64) {
        self.push(Ev::FastRead(request.to_vec(), cookie));
    }
    fn abort_request(&mut self, status: ResponseCode, cookie: u64) {
        self.push(Ev::Abort(status, cookie));
    }
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let mut buf = BytesMut::new();
        for r in &self.state {
            buf.put_u32_le(r.len() as u32);
            buf.put_slice(r);
        }
        writer.write(&buf).unwrap();
    }
    fn notify_status(&mut self, is_primary: bool) {
        self.push(Ev::Status(is_primary));
    }
    fn notify_configuration_changed(&mut self, _cookie: Option<u64>) {}
    fn abort_change_configuration(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn shut_down(&mut self, _status: ResponseCode) {
        self.push(Ev::ShutDown);
    }
    fn state_saved(&mut self, seq: u64, _file: &Path) {
        self.push(Ev::Saved(seq));
    }
    fn state_copied(&mut self, seq: u64, file: Option<&Path>, cookie: Option<u64>) {
        self.push(Ev::Copied(seq, file.is_some(), cookie));
    }
}

struct Ring {
    dir: tempfile::TempDir,
    cfg: RslConfig,
    replicas: Vec<RslReplica>,
    events: Vec<Arc<Mutex<Vec<Ev>>>>,
}

impl Ring {
    fn start(max_log_len_mb: u32) -> Ring {
        Ring::start_with(max_log_len_mb, |_| None)
    }

    /// With each replica's TLS settings from `tls(member id)`.
    fn start_with(max_log_len_mb: u32, tls: impl Fn(&str) -> Option<TlsSettings>) -> Ring {
        let dir = tempfile::tempdir().unwrap();
        let Three { nodes, members, cfg } = three(dir.path());
        let cfg = RslConfig { max_log_len_mb, ..cfg };
        let mut ring = Ring { dir, cfg, replicas: Vec::new(), events: Vec::new() };
        for me in nodes {
            let rec = Recorder::default();
            ring.events.push(rec.events.clone());
            let cfg = RslConfig { tls: tls(&me.id.to_string()), ..ring.cfg.clone() };
            let r = RslReplica::initialize(cfg, me, Version::V6, Box::new(rec), Arc::new(AdmitAll), Some(members.clone()));
            ring.replicas.push(r.unwrap());
        }
        ring
    }

    fn primary(&self) -> usize {
        wait(Duration::from_secs(30), || self.replicas.iter().position(|r| r.is_primary()))
    }

    fn events(&self, i: usize) -> Vec<Ev> {
        self.events[i].lock().unwrap().clone()
    }
}

fn execs(events: &[Ev]) -> Vec<(Vec<u8>, Option<u64>)> {
    events.iter().filter_map(|e| if let Ev::Exec(r, c) = e { Some((r.clone(), *c)) } else { None }).collect()
}

#[test]
fn callbacks_cookies_and_fast_reads_on_three_replicas() {
    let ring = Ring::start(100);
    let p = ring.primary();
    for i in 0..100u64 {
        assert_eq!(ring.replicas[p].replicate_request(Bytes::from(format!("req{i}")), i), ResponseCode::Success);
    }
    let secondary = (p + 1) % 3;
    assert_eq!(ring.replicas[secondary].replicate_request(Bytes::from_static(b"x"), 1), ResponseCode::NotPrimary);
    // Every replica executes the 100 requests, in order; only the primary sees cookies.
    for i in 0..3 {
        wait(Duration::from_secs(20), || (execs(&ring.events(i)).len() == 100).then_some(()));
        let execs = execs(&ring.events(i));
        let requests: Vec<_> = execs.iter().map(|(r, _)| String::from_utf8(r.clone()).unwrap()).collect();
        assert_eq!(requests, (0..100).map(|i| format!("req{i}")).collect::<Vec<_>>(), "replica {i}");
        let cookies: Vec<_> = execs.iter().map(|(_, c)| *c).collect();
        let expected: Vec<_> = (0..100).map(|c| (i == p).then_some(c)).collect();
        assert_eq!(cookies, expected, "replica {i}'s cookies");
        assert_eq!(ring.events(i)[0], Ev::Load(false), "LoadState(None) comes first");
    }
    let events = ring.events(p);
    let status = events.iter().position(|e| *e == Ev::Status(true)).expect("NotifyStatus(true) on the primary");
    assert!(events.iter().position(|e| matches!(e, Ev::Exec(..))).unwrap() > status, "the primary is told before it executes");
    // A fast read on a secondary runs once it has caught up; one far ahead is stale at once.
    let seq = ring.replicas[secondary].current_sequence_number();
    assert_eq!(ring.replicas[secondary].fast_read_request(seq, Bytes::from_static(b"read"), 500, Duration::ZERO), ResponseCode::Success);
    wait(Duration::from_secs(5), || ring.events(secondary).contains(&Ev::FastRead(b"read".to_vec(), 500)).then_some(()));
    let ahead = ring.replicas[secondary].fast_read_request(seq + 1000, Bytes::from_static(b"r"), 501, Duration::from_secs(1));
    assert_eq!(ahead, ResponseCode::FastReadStale);
    // A request that sets saveState: every replica, the primary included, saves a checkpoint
    // holding everything up to it.
    assert_eq!(ring.replicas[p].replicate_request(Bytes::from_static(b"save"), 100), ResponseCode::Success);
    for i in 0..3 {
        let saved =
            wait(Duration::from_secs(20), || ring.events(i).iter().find_map(|e| if let Ev::Saved(s) = e { Some(*s) } else { None }));
        let events = ring.events(i);
        let at = events.iter().position(|e| *e == Ev::Saved(saved)).unwrap();
        assert!(
            matches!(&events[..at].iter().rev().find(|e| matches!(e, Ev::Exec(..))), Some(Ev::Exec(r, _)) if r == b"save"),
            "replica {i} saved right after the request"
        );
    }
    // Unload: ShutDown is the last callback, and later calls say ShuttingDown.
    ring.replicas[secondary].unload();
    assert_eq!(ring.events(secondary).last(), Some(&Ev::ShutDown));
    assert!(ring.replicas[secondary].is_stopped());
    assert_eq!(ring.replicas[secondary].failure(), None, "an unload is not a failure");
    assert_eq!(ring.replicas[secondary].fast_read_request(0, Bytes::from_static(b"r"), 2, Duration::ZERO), ResponseCode::ShuttingDown);
}

#[test]
fn checkpoints_copy_state_and_read_only_replay() {
    let mut ring = Ring::start(1);
    let p = ring.primary();
    // About 3 MB of requests: the 1 MB logs roll and the secondaries save checkpoints.
    let request = |i: u64| Bytes::from(format!("{i:08}").repeat(512));
    for i in 0..800u64 {
        while ring.replicas[p].replicate_request(request(i), i) != ResponseCode::Success {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let secondary = (p + 1) % 3;
    wait(Duration::from_secs(30), || ring.events(secondary).iter().any(|e| matches!(e, Ev::Saved(s) if *s > 0)).then_some(()));
    wait(Duration::from_secs(30), || (execs(&ring.events(p)).len() == 800).then_some(()));
    // CopyStateFromReplica places a peer's checkpoint and reports it with our cookie.
    assert_eq!(ring.replicas[p].copy_state_from_replica(77), ResponseCode::Success);
    let copied = wait(Duration::from_secs(30), || {
        ring.events(p).iter().find_map(|e| if let Ev::Copied(seq, file, Some(77)) = e { Some((*seq, *file)) } else { None })
    });
    assert!(copied.0 > 0 && copied.1, "copied checkpoint {copied:?}");
    // Replay, read-only, rebuilds the state from the files: all of it, or a prefix.
    wait(Duration::from_secs(30), || (execs(&ring.events(secondary)).len() == 800).then_some(()));
    let seq = ring.replicas[secondary].current_sequence_number();
    let me = ring.replicas[secondary].me().id;
    for r in ring.replicas.drain(..) {
        r.unload();
    }
    let mut rebuilt = Recorder::default();
    let last = RslReplica::replay(&ring.cfg, &me, Version::V6, &mut rebuilt, u64::MAX).unwrap();
    assert!(last >= seq - 1, "replayed to {last}, the replica had executed {seq}");
    assert_eq!(rebuilt.state.len(), 800, "every request is in the replayed state");
    assert!(rebuilt.state.iter().enumerate().all(|(i, r)| *r == request(i as u64)));
    // Up to a sequence number: the state as of that decree, a prefix of the whole.
    let mut prefix = Recorder::default();
    let upto = RslReplica::replay(&ring.cfg, &me, Version::V6, &mut prefix, last / 2).unwrap();
    assert!(upto <= last / 2, "replayed to {upto}, asked for {}", last / 2);
    assert_eq!(prefix.state[..], rebuilt.state[..prefix.state.len()]);
    let mut nothing = Recorder::default();
    assert_eq!(RslReplica::replay(&ring.cfg, &me, Version::V6, &mut nothing, 0).unwrap(), 0);
    assert!(nothing.events.lock().unwrap().is_empty(), "Replay(0) loads nothing, as RSL's does");
    let _ = &ring.dir;
}

#[test]
fn listen_on_all_ips_binds_every_address() {
    for all in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_pairs(1)[0];
        let me = node("1", Ipv4Addr::LOCALHOST, port).unwrap();
        let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
        let cfg = RslConfig { working_dir: dir.path().into(), listen_on_all_ips: all, ..RslConfig::default() };
        let r = RslReplica::initialize(cfg, me, Version::V6, Box::new(Recorder::default()), Arc::new(AdmitAll), Some(members)).unwrap();
        // Another loopback address reaches the Paxos and learn ports only when bound to all.
        for p in [port, port + 1] {
            let reached = std::net::TcpStream::connect((Ipv4Addr::new(127, 0, 0, 2), p)).is_ok();
            assert_eq!(reached, all, "port {p}, listen on all: {all}");
        }
        r.unload();
    }
}

/// Settings for a certificate naming `name` from `ca`, admitting every peer `ca` issued.
fn tls_settings(dir: &Path, ca: &issue::Ca, name: &str) -> TlsSettings {
    let (now, day) = (std::time::SystemTime::now(), Duration::from_secs(86_400));
    let leaf = ca.issue(&issue::LeafSpec { name, not_before: now - day, not_after: now + day });
    let (cert, key) = issue::write_by_thumbprint(dir, &leaf).unwrap();
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    TlsSettings {
        identity: IdentitySource::Files { cert, key },
        peers: PeerRules { ca: Some(ca_path), require_chain: true, ..Default::default() },
    }
}

/// Three replicas with certificates (CN = member id) from one throwaway CA: writes replicate;
/// a connection certified as one member speaking for another, and a plain one, are refused.
#[test]
fn a_tls_ring_replicates_and_binds_connections_to_members() {
    use rsl_engine::format::{Ballot, Body, Header, Message};
    use tokio::io::AsyncWriteExt;
    let (certs, ca) = (tempfile::tempdir().unwrap(), issue::Ca::new("test ring CA"));
    let ring = Ring::start_with(100, |name| Some(tls_settings(certs.path(), &ca, name)));
    let p = ring.primary();
    for i in 0..20u64 {
        assert_eq!(ring.replicas[p].replicate_request(Bytes::from(format!("req{i}")), i), ResponseCode::Success);
    }
    for i in 0..3 {
        wait(Duration::from_secs(20), || (execs(&ring.events(i)).len() == 20).then_some(()));
    }
    let primary = &ring.replicas[p];
    let paxos = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, primary.me().rsl_port));
    let other = (p + 1) % 3;
    let (certified, claimed) = (ring.replicas[other].me().id, ring.replicas[(p + 2) % 3].me().id);
    let impostor = Tls::load(&tls_settings(certs.path(), &ca, &certified.to_string())).unwrap();
    let _ = primary.statistics_snapshot();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _conns = rt.block_on(async {
        // Its own id first (answered), then another's (dropped).
        let (mut conn, server) = impostor.connect(tokio::net::TcpStream::connect(paxos).await.unwrap()).await.unwrap();
        assert!(server.names.contains(&primary.me().id.to_string()), "{:?}", server.names);
        for sender in [certified, claimed] {
            let query = Message::new(Header::new(Version::V6, sender, 0, 1, Ballot::EMPTY), Body::StatusQuery);
            let packet = rsl_engine::runtime::transport::frame(&query, &mut BytesMut::new());
            conn.write_all(&packet).await.unwrap();
        }
        conn.flush().await.unwrap();
        let mut plain = tokio::net::TcpStream::connect(paxos).await.unwrap();
        plain.write_all(b"not a TLS hello, and long enough to be refused as one").await.unwrap();
        (conn, plain)
    });
    let (mut rejected, mut refused) = (0, 0);
    wait(Duration::from_secs(10), || {
        let stats = primary.statistics_snapshot();
        (rejected, refused) = (rejected + stats.messages_rejected, refused + stats.tls_refused);
        (rejected >= 1 && refused >= 1).then_some(())
    });
    assert_eq!(rejected, 1, "only the message naming another member than the certificate");
    let _ = &ring.dir;
}

#[test]
fn a_missing_certificate_fails_initialize_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // No port is bound: the settings are read first.
    let me = node("1", Ipv4Addr::LOCALHOST, 0).unwrap();
    let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, issue::Ca::new("test CA").cert_pem()).unwrap();
    let identity = IdentitySource::Files { cert: dir.path().join("nowhere.crt"), key: dir.path().join("nowhere.key") };
    let peers = PeerRules { ca: Some(ca), require_chain: true, ..Default::default() };
    let cfg = RslConfig { working_dir: dir.path().into(), tls: Some(TlsSettings { identity, peers }), ..RslConfig::default() };
    let Err(e) = RslReplica::initialize(cfg, me, Version::V6, Box::new(Recorder::default()), Arc::new(AdmitAll), Some(members)) else {
        panic!("initialized without its certificate");
    };
    assert!(e.to_string().contains("nowhere"), "{e}");
}
