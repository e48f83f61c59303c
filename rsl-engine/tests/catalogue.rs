//! The original's runtime scenarios (docs/spec/behavior.md §3.1; docs/testing.md maps the catalogue),
//! run by `Checking`, the original's test state machine rebuilt: on every callback it checks
//! the invariants of docs/spec/behavior.md §3.5, and the test asserts none was broken.
//!
//! - TestSaveCheckpointAtRestore: a replica restarted on its files, whose service asks for a
//!   checkpoint while `initialize` replays the log, saves that checkpoint there; restarted
//!   again, it loads it and replays only what follows.
//! - TestAddAndRemoveReplicas, TestABC_BCD_CDE_ADE: chains of configuration changes on a ring
//!   of real replicas, members replaced (the primary included), left out and brought back.

mod inproc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use inproc::{config, loopback, three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberId, MemberSet, Node, Version};
use rsl_engine::paxos::Role;
use rsl_engine::runtime::{Admission, InitError, ReplicaView, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The `n`th request the test submits, and its cookie: request `n` carries `n`.
fn request(n: u64) -> Bytes {
    Bytes::from(format!("request {n}"))
}

/// Fast reads use cookies from here, so that an abort tells which kind it returns.
const READ_COOKIES: u64 = 1 << 40;

/// The cookie of the change to configuration `number`.
fn config_cookie(number: u32) -> u64 {
    (1 << 41) + u64::from(number)
}

/// What one replica's callbacks saw, and every invariant they found broken.
#[derive(Default)]
struct Seen {
    /// (sequence number, request index) of each executed request, in order.
    executed: Vec<(u64, u64)>,
    /// The decrees of each `state_saved`, and the sizes `save_state` wrote, by decree.
    saved: Vec<u64>,
    /// The checkpoint decree each successful `load_state` loaded (0: none).
    loaded: Vec<u64>,
    /// Each `state_copied`: (sequence number, with a file, cookie).
    copied: Vec<(u64, bool, Option<u64>)>,
    /// Cookies handed to `replicate_request` and not yet back.
    outstanding: BTreeSet<u64>,
    /// The replicated requests aborted, with the reason.
    aborted: Vec<(u64, ResponseCode)>,
    /// Cookies handed to `change_configuration` and not yet back.
    config_cookies: BTreeSet<u64>,
    /// Each `notify_configuration_changed`: its cookie, and the configuration the view shows.
    configurations: Vec<(Option<u64>, (MemberSet, u32))>,
    /// The requests `look_ahead` was shown and that have not executed since.
    ahead: std::collections::VecDeque<Bytes>,
    broken: Vec<String>,
}

impl Seen {
    fn check(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.broken.push(what());
        }
    }
}

/// The state every replica of a test shares: sizes written by decree, across replicas (each
/// replica's state at a decree is the same).
type Sizes = Arc<Mutex<BTreeMap<u64, u64>>>;

/// The original's `TestStateMachine`: its state is the indices of the requests executed, and
/// each callback checks docs/spec/behavior.md §3.5.
struct Checking {
    view: Option<ReplicaView>,
    state: Vec<u64>,
    /// The last (sequence number, configuration number) a request executed at.
    last: (u64, u32),
    in_decree: bool,
    /// Ask for a checkpoint when executing this decree, or this request.
    save_at: Option<u64>,
    save_request: Option<u64>,
    /// `try_save_state` refuses while set.
    refuse_save: Arc<AtomicBool>,
    loaded_ok: bool,
    saving: AtomicBool,
    /// `shut_down` may be called (the test is unloading the replica).
    unloading: Arc<AtomicBool>,
    asked_primary: Arc<AtomicUsize>,
    sizes: Sizes,
    seen: Arc<Mutex<Seen>>,
}

impl Checking {
    fn now(&self) -> (u64, u32) {
        let view = self.view.as_ref().expect("attached before the first callback");
        (view.current_sequence_number(), view.configuration().1)
    }

    fn check(&self, holds: bool, what: impl FnOnce() -> String) {
        self.seen.lock().unwrap().check(holds, what);
    }
}

impl StateMachine for Checking {
    fn attach(&mut self, view: ReplicaView) {
        self.view = Some(view);
    }

    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        self.check(!self.loaded_ok, || "load_state after a successful one".into());
        self.loaded_ok = true;
        let Some(r) = reader else {
            self.seen.lock().unwrap().loaded.push(0);
            return true;
        };
        let (seq, _) = self.now();
        let size = r.size();
        let written = self.sizes.lock().unwrap().get(&seq).copied();
        self.check(written == Some(size), || format!("load_state of {seq}: {size} bytes, {written:?} written"));
        let mut data = vec![0; size as usize];
        let mut at = 0;
        while at < data.len() {
            at += r.get_data(&mut data[at..]).expect("the state");
        }
        let mut buf = Bytes::from(data);
        self.state = (0..buf.len() / 8).map(|_| buf.get_u64_le()).collect();
        self.seen.lock().unwrap().loaded.push(seq);
        true
    }

    fn look_ahead(&self, requests: &[Bytes]) {
        let mut seen = self.seen.lock().unwrap();
        let fresh = !self.in_decree && seen.ahead.is_empty();
        seen.check(fresh, || "look_ahead inside a decree".into());
        seen.ahead.extend(requests.iter().cloned());
    }

    fn before_execute_replicated_requests(&mut self) {
        self.in_decree = true;
    }

    fn after_execute_replicated_requests(&mut self) {
        self.in_decree = false;
    }

    fn execute_replicated_request(&mut self, bytes: &[u8], cookie: Option<u64>, save: &mut bool) {
        let (seq, config) = self.now();
        let (last_seq, last_config) = self.last;
        let n = self.state.len() as u64;
        let mut seen = self.seen.lock().unwrap();
        seen.check(config >= last_config, || format!("configuration {config} after {last_config}"));
        seen.check(self.in_decree, || format!("request at {seq} outside a decree's bracket"));
        let shown = seen.ahead.pop_front();
        seen.check(shown.as_deref() == Some(bytes), || format!("request at {seq} not shown to look_ahead first"));
        // The first request of a decree moves the number on; later ones of it keep it.
        let first_of_decree = seen.executed.last().is_none_or(|&(s, _)| s != seq);
        seen.check(seq > last_seq || (seq == last_seq && !first_of_decree) || last_seq == 0, || format!("decree {seq} after {last_seq}"));
        seen.check(bytes == request(n), || format!("{:?} at {seq}, expected request {n}", String::from_utf8_lossy(bytes)));
        if let Some(c) = cookie {
            let held = seen.outstanding.remove(&c);
            seen.check(c == n && held, || format!("cookie {c} with request {n}"));
        }
        seen.executed.push((seq, n));
        drop(seen);
        self.last = (seq, config);
        self.state.push(n);
        *save |= self.save_at == Some(seq) || self.save_request == Some(n);
    }

    fn execute_fast_read_request(&self, request: &[u8], cookie: u64) {
        let asked: u64 = std::str::from_utf8(request).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
        let (seq, _) = self.now();
        self.check(asked <= seq && cookie >= READ_COOKIES, || format!("fast read {cookie} for {asked} ran at {seq}"));
    }

    fn abort_request(&mut self, status: ResponseCode, cookie: u64) {
        let read = cookie >= READ_COOKIES;
        self.check(status != ResponseCode::FastReadStale || read, || format!("replicated cookie {cookie} aborted as stale"));
        if !read {
            let mut seen = self.seen.lock().unwrap();
            let held = seen.outstanding.remove(&cookie);
            seen.check(held, || format!("replicated cookie {cookie} aborted, and it was not outstanding"));
            seen.aborted.push((cookie, status));
        }
    }

    fn save_state(&self, writer: &mut CheckpointWriter) {
        self.check(!self.saving.swap(true, SeqCst), || "two save_state at once".into());
        let mut buf = BytesMut::new();
        for n in &self.state {
            buf.put_u64_le(*n);
        }
        writer.write(&buf).expect("the checkpoint takes the state");
        self.sizes.lock().unwrap().insert(self.now().0, buf.len() as u64);
        self.saving.store(false, SeqCst);
    }

    fn try_save_state(&self, writer: &mut CheckpointWriter) -> bool {
        if self.refuse_save.load(SeqCst) {
            return false;
        }
        self.save_state(writer);
        true
    }

    fn notify_status(&mut self, is_primary: bool) {
        let asked = self.asked_primary.load(SeqCst);
        let mut seen = self.seen.lock().unwrap();
        seen.check(!is_primary || asked > 0, || "NotifyStatus(true) before any CanBecomePrimary".into());
        // On the way in, a request may be taken just before NotifyStatus(true) runs (erratum
        // D12, as in the original); on the way out, every cookie came back first.
        let (count, first, last) = (seen.outstanding.len(), seen.outstanding.first().copied(), seen.outstanding.last().copied());
        seen.check(is_primary || count == 0, || format!("NotifyStatus(false) with {count} cookies outstanding, {first:?} to {last:?}"));
    }

    fn notify_configuration_changed(&mut self, cookie: Option<u64>) {
        let now = self.view.as_ref().expect("attached").configuration();
        let mut seen = self.seen.lock().unwrap();
        let held = cookie.is_none_or(|c| seen.config_cookies.remove(&c));
        seen.check(held, || format!("a configuration change with cookie {cookie:?}, and none was asked for"));
        let last = seen.configurations.last().map_or(0, |(_, (_, number))| *number);
        seen.check(now.1 > last, || format!("configuration {} notified after {last}", now.1));
        seen.configurations.push((cookie, now));
    }

    fn abort_change_configuration(&mut self, _: ResponseCode, cookie: u64) {
        // The tests ask a stable primary for each change, so none is expected to fail.
        self.check(false, || format!("AbortChangeConfiguration({cookie}), and none was expected"));
    }

    fn shut_down(&mut self, status: ResponseCode) {
        self.check(self.unloading.load(SeqCst), || format!("ShutDown({status:?}) while running"));
    }

    fn state_saved(&mut self, seq: u64, _: &Path) {
        self.seen.lock().unwrap().saved.push(seq);
    }

    fn state_copied(&mut self, seq: u64, file: Option<&Path>, cookie: Option<u64>) {
        self.seen.lock().unwrap().copied.push((seq, file.is_some(), cookie));
    }
}

/// `CanBecomePrimary` counted, with a cookie naming the candidate; `AcceptMessageFromReplica`
/// checks the sender's cookie names the sender (the bytes the primary set reach it intact).
struct CheckingAdmission {
    me: MemberId,
    asked: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
}

fn primary_cookie(id: &MemberId) -> Vec<u8> {
    format!("primary cookie of {id}").into_bytes()
}

impl Admission for CheckingAdmission {
    fn can_become_primary(&self) -> Option<Vec<u8>> {
        self.asked.fetch_add(1, SeqCst);
        Some(primary_cookie(&self.me))
    }

    fn accept_message_from_replica(&self, node: &MemberId, cookie: &[u8]) -> bool {
        let expected = primary_cookie(node);
        self.seen.lock().unwrap().check(cookie == expected, || format!("{node}'s primary cookie arrived as {cookie:?}"));
        true
    }
}

/// One replica's service: what it saw, and the switch that allows `shut_down`.
struct Service {
    seen: Arc<Mutex<Seen>>,
    unloading: Arc<AtomicBool>,
    refuse_save: Arc<AtomicBool>,
}

/// How a test's service asks for checkpoints: at a decree, at a request, and whether
/// `try_save_state` refuses to start with.
#[derive(Clone, Copy, Default)]
struct Saves {
    at: Option<u64>,
    request: Option<u64>,
    refuse: bool,
}

impl Service {
    fn start(cfg: &RslConfig, me: &Node, members: &MemberSet, sizes: &Sizes, saves: Saves) -> (RslReplica, Service) {
        Service::try_start(cfg, me, Version::V6, Some(members), sizes, saves).expect("initialized")
    }

    /// At protocol `version`; with `members`, the legacy `Initialize` that names the initial
    /// members, without, the one that waits to be bootstrapped.
    fn try_start(
        cfg: &RslConfig,
        me: &Node,
        version: Version,
        members: Option<&MemberSet>,
        sizes: &Sizes,
        saves: Saves,
    ) -> Result<(RslReplica, Service), InitError> {
        let (seen, unloading, asked) =
            (Arc::new(Mutex::new(Seen::default())), Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let refuse_save = Arc::new(AtomicBool::new(saves.refuse));
        let sm = Checking {
            view: None,
            state: Vec::new(),
            last: (0, 0),
            in_decree: false,
            save_at: saves.at,
            save_request: saves.request,
            refuse_save: refuse_save.clone(),
            loaded_ok: false,
            saving: AtomicBool::new(false),
            unloading: unloading.clone(),
            asked_primary: asked.clone(),
            sizes: sizes.clone(),
            seen: seen.clone(),
        };
        let admission = CheckingAdmission { me: me.id, asked, seen: seen.clone() };
        let replica = RslReplica::initialize(cfg.clone(), me.clone(), version, Box::new(sm), Arc::new(admission), members.cloned())?;
        Ok((replica, Service { seen, unloading, refuse_save }))
    }

    fn stop(self, replica: RslReplica) -> Seen {
        self.unloading.store(true, SeqCst);
        assert_eq!(replica.failure(), None);
        replica.unload();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        assert_eq!(seen.broken, Vec::<String>::new(), "an invariant of the test state machine broke");
        seen
    }
}

/// Replicates request `n` and waits until the primary has executed it, so that each request
/// gets a decree of its own; then a fast read of that decree on every replica.
fn submit(replicas: &[RslReplica], services: &[Service], n: u64) {
    submit_among(replicas, services, &(0..replicas.len()).collect::<Vec<_>>(), n);
}

/// `submit` to the replicas `among` (the members).
fn submit_among(replicas: &[RslReplica], services: &[Service], among: &[usize], n: u64) {
    let (p, before) = wait(WAIT, || {
        let p = among.iter().copied().find(|&i| replicas[i].is_primary())?;
        let before = replicas[p].current_sequence_number();
        offer(&replicas[p], &services[p], n).then_some((p, before))
    });
    wait(WAIT, || (replicas[p].current_sequence_number() > before).then_some(()));
    let seq = replicas[p].current_sequence_number();
    for &i in among {
        let read = Bytes::from(seq.to_string());
        let code = replicas[i].fast_read_request(seq, read, READ_COOKIES + 10 * n + i as u64, Duration::from_secs(10));
        assert!(matches!(code, ResponseCode::Success | ResponseCode::FastReadStale), "{code:?}");
    }
}

/// Replicates request `n`, its cookie outstanding from before the call (it may execute before
/// the call returns) to the refusal if refused: the lock keeps every callback out meanwhile.
fn offer(replica: &RslReplica, service: &Service, n: u64) -> bool {
    let mut seen = service.seen.lock().unwrap();
    seen.outstanding.insert(n);
    let taken = replica.replicate_request(request(n), n) == ResponseCode::Success;
    if !taken {
        seen.outstanding.remove(&n);
    }
    taken
}

/// The checkpoint files under `dir`, by decree.
fn checkpoints(dir: &Path) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for entry in walk(dir) {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if let Some(decree) = name.strip_suffix(".codex").and_then(|d| d.parse().ok()) {
            found.insert(decree);
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn test_save_checkpoint_at_restore() {
    let dir = tempfile::tempdir().unwrap();
    let Three { nodes, members, cfg } = three(dir.path());
    let sizes = Sizes::default();
    let (mut replicas, mut services): (Vec<_>, Vec<_>) =
        nodes.iter().map(|n| Service::start(&cfg, n, &members, &sizes, Saves::default())).unzip();
    for n in 0..20 {
        submit(&replicas, &services, n);
    }
    let s = replicas.iter().position(|r| !r.is_primary()).expect("a secondary");
    wait(WAIT, || (services[s].seen.lock().unwrap().executed.len() == 20).then_some(()));
    let last = replicas[s].current_sequence_number();
    let s_dir = dir.path().join(nodes[s].id.to_string());
    let s_dir = if s_dir.is_dir() { s_dir } else { dir.path().to_path_buf() };
    let live = services.remove(s).stop(replicas.remove(s));
    assert!(checkpoints(&s_dir).is_empty(), "no checkpoint before the restart");

    // Restarted, its service asks for a checkpoint at the decree of request 10, which the
    // replay passes: the checkpoint is there when `initialize` returns.
    let at = live.executed.iter().find(|(_, n)| *n == 10).expect("request 10 executed").0;
    let (restarted, service) = Service::start(&cfg, &nodes[s], &members, &sizes, Saves { at: Some(at), ..Saves::default() });
    {
        let seen = service.seen.lock().unwrap();
        assert_eq!(seen.saved, [at], "saved while restoring");
        assert_eq!(seen.loaded, [0], "from the logs alone");
        assert_eq!(seen.executed, live.executed[..seen.executed.len()], "the replay executes what ran live");
        assert!(seen.executed.len() >= 19, "the log replays to the last decree but one: {}", seen.executed.len());
    }
    assert!(checkpoints(&s_dir).contains(&at), "{:?}", checkpoints(&s_dir));
    wait(WAIT, || (restarted.current_sequence_number() >= last).then_some(()));
    service.stop(restarted);

    // Restarted again: it loads that checkpoint and replays only the decrees after it.
    let (again, service) = Service::start(&cfg, &nodes[s], &members, &sizes, Saves::default());
    {
        let seen = service.seen.lock().unwrap();
        assert_eq!(seen.loaded, [at], "the checkpoint of {at} is loaded");
        assert!(
            seen.executed.iter().all(|(seq, _)| *seq > at) && seen.executed.first().is_some_and(|(_, n)| *n == 11),
            "{:?}",
            seen.executed
        );
    }
    wait(WAIT, || (again.current_sequence_number() >= last).then_some(()));
    replicas.insert(s, again);
    services.insert(s, service);
    submit(&replicas, &services, 20);
    // Every replica executes request 20 (a secondary once the next heartbeat passes it).
    let executed_20 = |service: &Service| service.seen.lock().unwrap().executed.last().is_some_and(|(_, n)| *n == 20);
    wait(WAIT, || services.iter().all(executed_20).then_some(()));
    for (r, service) in replicas.into_iter().zip(services) {
        service.stop(r);
    }
}

/// TestCopyCheckpoint, the case `tests/api.rs` leaves out: `CopyStateFromReplica` when no
/// peer has a checkpoint newer than ours reports `StateCopied(0, no file, cookie)`.
#[test]
fn test_copy_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let Three { nodes, members, cfg } = three(dir.path());
    let sizes = Sizes::default();
    let (replicas, services): (Vec<_>, Vec<_>) = nodes.iter().map(|n| Service::start(&cfg, n, &members, &sizes, Saves::default())).unzip();
    for n in 0..3 {
        submit(&replicas, &services, n);
    }
    assert_eq!(replicas[0].copy_state_from_replica(77), ResponseCode::Success);
    let copied = wait(WAIT, || services[0].seen.lock().unwrap().copied.first().copied());
    assert_eq!(copied, (0, false, Some(77)), "nobody has a newer checkpoint");
    for (r, service) in replicas.into_iter().zip(services) {
        service.stop(r);
    }
}

/// §3.7, `TrySaveState` returning false and `AllowSaveState`: a refused checkpoint is not
/// written, and no other is taken while saving is off; once `allow_save_state(true)`, the
/// pending one is taken at the decree then current, holding exactly the state of that decree:
/// restarted, the replica loads it and replays only what follows, executing nothing twice.
#[test]
fn try_save_state_false_and_allow_save_state() {
    let dir = tempfile::tempdir().unwrap();
    let Three { nodes, cfg, .. } = three(dir.path());
    let lone = MemberSet { nodes: vec![nodes[0].clone()], cookie: Bytes::new() };
    let sizes = Sizes::default();
    let saves = Saves { request: Some(2), refuse: true, ..Saves::default() };
    let (replica, service) = Service::start(&cfg, &nodes[0], &lone, &sizes, saves);
    let (replicas, services) = (vec![replica], vec![service]);
    for n in 0..6 {
        submit(&replicas, &services, n);
    }
    assert!(services[0].seen.lock().unwrap().saved.is_empty(), "refused, so not saved");
    assert!(checkpoints(dir.path()).is_empty());
    services[0].refuse_save.store(false, SeqCst);
    replicas[0].allow_save_state(true);
    submit(&replicas, &services, 6);
    let saved = wait(WAIT, || services[0].seen.lock().unwrap().saved.first().copied());
    let executed = services[0].seen.lock().unwrap().executed.clone();
    let (replica, service) = (replicas.into_iter().next().unwrap(), services.into_iter().next().unwrap());
    service.stop(replica);
    assert!(checkpoints(dir.path()).contains(&saved));

    let (replica, service) = Service::start(&cfg, &nodes[0], &lone, &sizes, Saves::default());
    {
        let seen = service.seen.lock().unwrap();
        assert_eq!(seen.loaded, [saved]);
        let after: Vec<_> = executed.iter().filter(|(seq, _)| *seq > saved).copied().collect();
        assert_eq!(seen.executed, after[..seen.executed.len()], "the replay executes only the decrees after the checkpoint");
    }
    service.stop(replica);
}

/// A checkpoint of decree 4 as a replica of protocol `version` writes it: the state of
/// requests 0 to 4, configuration 1 of `members`.
fn old_checkpoint(dir: &Path, version: Version, members: &MemberSet, sizes: &Sizes) {
    use rsl_engine::format::checkpoint::CheckpointHeader;
    use rsl_engine::format::{Ballot, Body, ConfigInfo, Header, Message, VoteBody};
    let me = members.nodes[0].id;
    let ballot = Ballot::new(1, me);
    let next_vote = Message::new(Header::new(version, me, 5, 1, ballot), Body::Vote(VoteBody::default()));
    let header = CheckpointHeader {
        version,
        member: me,
        last_executed: 4,
        max_ballot: ballot,
        config: ConfigInfo { number: 1, initial_decree: 0, members: members.clone() },
        state_saved: true,
        size: 0,
        block_size: if version.has_string_ids() { 4096 } else { 0 },
        next_vote,
    };
    let mut state = BytesMut::new();
    (0..5u64).for_each(|n| state.put_u64_le(n));
    sizes.lock().unwrap().insert(4, state.len() as u64);
    let mut store = rsl_engine::runtime::checkpoints::CheckpointStore::open(dir, 2).expect("a store");
    store.save(header, |w| w.write(&state).map(|_| true).map_err(std::io::Error::other)).expect("written").expect("saved");
}

/// BootstrapWithOldCheckpoints: checkpoints of versions 1 to 4, loaded by replicas of that
/// version or newer. Started with the initial members (the old `Initialize`), each loads and
/// the replica sits at the checkpoint's decree in configuration 1. Started to be bootstrapped
/// (the new one, version 4 and later), only a checkpoint that names its members (version 3 and
/// later) gives the replica its configuration; one of version 1 or 2 leaves it waiting for
/// `Bootstrap`, with no members.
#[test]
fn bootstrap_with_old_checkpoints() {
    for checkpoint in [Version::V1, Version::V2, Version::V3, Version::V4] {
        for replica in [checkpoint, Version::V4, Version::V6] {
            for legacy in [true, false] {
                if !legacy && replica.get() < 4 {
                    continue; // Initialize without members needs version 4 (InitError::Invalid)
                }
                let dir = tempfile::tempdir().unwrap();
                let Three { nodes, cfg, .. } = three(dir.path());
                let cfg = RslConfig { add_member_id_to_working_dir: false, ..cfg };
                let members = MemberSet { nodes: vec![nodes[0].clone()], cookie: Bytes::new() };
                let sizes = Sizes::default();
                old_checkpoint(dir.path(), checkpoint, &members, &sizes);
                let what = format!("a v{} checkpoint, a v{} replica, legacy {legacy}", checkpoint.get(), replica.get());
                let (r, service) = Service::try_start(&cfg, &nodes[0], replica, legacy.then_some(&members), &sizes, Saves::default())
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(service.seen.lock().unwrap().loaded, [4], "{what}: loaded");
                assert_eq!(r.current_sequence_number(), 4, "{what}");
                let (set, number) = r.configuration();
                if legacy || checkpoint.get() >= 3 {
                    assert_eq!((set.nodes.len(), number), (1, 1), "{what}: configuration 1");
                } else {
                    assert!(set.nodes.is_empty(), "{what}: no members until bootstrapped");
                }
                service.stop(r);
            }
        }
    }
}

/// A ring of real replicas on loopback, each run by `Checking`, all started with the same
/// first members; a test moves it from one set of them to the next. Requests are numbered in
/// the order submitted, so `Checking` finds any executed twice, out of order or skipped.
struct Ring {
    nodes: Vec<Node>,
    replicas: Vec<RslReplica>,
    services: Vec<Service>,
    /// The members, their configuration number, and the next request to submit.
    members: Vec<usize>,
    number: u32,
    next: u64,
    /// The replicas left out of the configuration, and how many requests each had executed.
    left_out: BTreeMap<usize, usize>,
}

impl Ring {
    /// `n` replicas, all started with `first` as the initial members: the others are inactive
    /// until a change brings them in.
    fn start(dir: &Path, n: usize, first: &[usize]) -> Ring {
        let nodes = loopback(n);
        let (cfg, sizes) = (config(dir), Sizes::default());
        let members = MemberSet { nodes: first.iter().map(|&i| nodes[i].clone()).collect(), cookie: Bytes::new() };
        let (replicas, services) = nodes.iter().map(|n| Service::start(&cfg, n, &members, &sizes, Saves::default())).unzip();
        let left_out = (0..n).filter(|i| !first.contains(i)).map(|i| (i, 0)).collect();
        Ring { nodes, replicas, services, members: first.to_vec(), number: 1, next: 0, left_out }
    }

    fn seen(&self, i: usize) -> MutexGuard<'_, Seen> {
        self.services[i].seen.lock().unwrap()
    }

    fn primary(&self) -> usize {
        wait(WAIT, || self.members.iter().copied().find(|&i| self.replicas[i].is_primary()))
    }

    /// Submits `count` requests to the members, each executed by the primary before the next.
    fn submit(&mut self, count: u64) {
        for _ in 0..count {
            submit_among(&self.replicas, &self.services, &self.members, self.next);
            self.next += 1;
        }
    }

    /// Changes the members to `to` through the primary, submits up to `during` requests to it
    /// just after (until it refuses one), and checks each replica against docs/spec/behavior.md §2.17;
    /// returns the issuer.
    fn change(&mut self, to: &[usize], during: u64) -> usize {
        let number = self.number + 1;
        let cookie = config_cookie(number);
        let nodes = to.iter().map(|&i| self.nodes[i].clone()).collect();
        let new = (MemberSet { nodes, cookie: Bytes::from(format!("configuration {number}")) }, number);
        let issuer = wait(WAIT, || {
            let p = self.primary();
            self.seen(p).config_cookies.insert(cookie);
            let code = self.replicas[p].change_configuration(new.0.clone(), cookie);
            if code != ResponseCode::Success {
                self.seen(p).config_cookies.remove(&cookie);
            }
            (code == ResponseCode::Success).then_some(p)
        });
        let aborted_before = self.seen(issuer).aborted.len();
        let submitted: Vec<u64> =
            (self.next..self.next + during).take_while(|&n| offer(&self.replicas[issuer], &self.services[issuer], n)).collect();

        // Every member of either configuration executes the change (one added learns up to it
        // from a Join first); those left out go inactive.
        let left: Vec<usize> = self.members.iter().copied().filter(|i| !to.contains(i)).collect();
        let changed = |i: usize| self.replicas[i].configuration() == new;
        wait(WAIT, || to.iter().all(|&i| changed(i)).then_some(()));
        let inactive = |i: usize| self.replicas[i].role() == Some(Role::Inactive);
        wait(WAIT, || left.iter().all(|&i| changed(i) && inactive(i)).then_some(()));
        // The issuer has every cookie back. The requests queued behind the reconfiguration
        // vote fell past the old configuration's last decree: aborted, executed nowhere.
        wait(WAIT, || {
            let seen = self.seen(issuer);
            (seen.outstanding.is_empty() && seen.configurations.last().is_some_and(|(_, now)| now.1 == number)).then_some(())
        });
        let aborted = self.seen(issuer).aborted[aborted_before..].to_vec();
        let expected: Vec<_> = submitted.iter().map(|&n| (n, ResponseCode::NotPrimary)).collect();
        assert_eq!(aborted, expected, "the requests submitted during the change to {number}");
        for &i in to.iter().chain(&left) {
            let seen = self.seen(i);
            let notified = if i == issuer { Some(cookie) } else { None };
            assert_eq!(seen.configurations.last(), Some(&(notified, new.clone())), "replica {i} notified of {number}");
            assert_eq!(seen.executed.len() as u64, self.next, "replica {i} executed every request before the change");
        }
        // One left out stays up, not primary, and refuses what only a primary takes.
        for &i in &left {
            let r = &self.replicas[i];
            assert!(!r.is_stopped() && !r.is_primary(), "replica {i} left out of {number}");
            assert_eq!(r.replicate_request(request(u64::MAX), u64::MAX), ResponseCode::NotPrimary);
            assert_eq!(r.change_configuration(new.0.clone(), 0), ResponseCode::NotPrimary);
        }
        for &i in &left {
            let executed = self.seen(i).executed.len();
            self.left_out.insert(i, executed);
        }
        for i in to {
            self.left_out.remove(i);
        }
        (self.members, self.number) = (to.to_vec(), number);
        issuer
    }

    /// Every member executes every request submitted, and every replica executed the same
    /// requests at the same decrees as far as it went; one left out went no further than its
    /// configuration.
    fn agree(&self) {
        let all_executed = |i: &usize| self.seen(*i).executed.len() as u64 == self.next;
        wait(WAIT, || self.members.iter().all(all_executed).then_some(()));
        let reference = self.seen(self.members[0]).executed.clone();
        for i in 0..self.replicas.len() {
            let seen = self.seen(i);
            assert_eq!(seen.executed, reference[..seen.executed.len()], "replica {i} executed what the members did");
            if let Some(&count) = self.left_out.get(&i) {
                assert_eq!(seen.executed.len(), count, "replica {i} executed nothing once left out");
                assert_eq!(self.replicas[i].role(), Some(Role::Inactive), "replica {i} left out");
            }
        }
        for &i in &self.members {
            assert_eq!(self.replicas[i].configuration().1, self.number, "replica {i}");
            assert!(matches!(self.replicas[i].role(), Some(Role::Primary | Role::Secondary)), "replica {i} is active");
        }
    }

    /// Unloads every replica; none broke an invariant or failed. What each saw, by replica.
    fn stop(self) -> Vec<Seen> {
        self.replicas.into_iter().zip(self.services).map(|(r, service)| service.stop(r)).collect()
    }
}

/// TestAddAndRemoveReplicas, the complete swaps: [A,B,C] → [D,E,F] replaces every member, the
/// primary included; [D,E,F] → [A] brings back alone a replica left out; [A] → [B] hands a
/// one-member ring to another. Each change has requests before, during (aborted, submitted
/// again) and after it; new members start outside the first configuration and learn up to
/// the change from a Join; those left out execute the change, go inactive and stay so.
#[test]
fn test_add_and_remove_replicas_complete_swap() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, d, e, f) = (0, 1, 2, 3, 4, 5);
    let mut ring = Ring::start(dir.path(), 6, &[a, b, c]);
    ring.submit(3);
    ring.change(&[d, e, f], 3);
    ring.submit(3);
    ring.change(&[a], 3);
    ring.submit(3);
    ring.change(&[b], 3);
    ring.submit(3);
    ring.agree();
    let seen = ring.stop();
    let numbers = |i: usize| seen[i].configurations.iter().map(|(_, (_, number))| *number).collect::<Vec<_>>();
    assert_eq!(numbers(a), [2, 3, 4], "A executed the changes it missed once back");
    assert_eq!(numbers(b), [2, 3, 4]);
    assert_eq!(numbers(c), [2]);
}

/// TestABC_BCD_CDE_ADE: A, the primary, leaves; two configurations pass without it, each
/// leaving out another member; then A comes back. Every member of each configuration has it
/// in force, A executes the decrees of the two it missed, changes included, and ends an active
/// member of configuration 4 agreeing with the others.
#[test]
fn test_abc_bcd_cde_ade() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = Ring::start(dir.path(), 5, &[0, 1, 2]);
    // A is the first primary, as in the original.
    let a = ring.primary();
    let [b, c] = [(a + 1) % 3, (a + 2) % 3];
    let (d, e) = (3, 4);
    ring.submit(3);
    ring.change(&[b, c, d], 2);
    ring.submit(3);
    ring.change(&[c, d, e], 2);
    ring.submit(3);
    ring.change(&[a, d, e], 2);
    ring.submit(3);
    ring.agree();
    let seen = ring.stop();
    let numbers = |i: usize| seen[i].configurations.iter().map(|(_, (_, number))| *number).collect::<Vec<_>>();
    assert_eq!(numbers(a), [2, 3, 4]);
    assert_eq!(numbers(b), [2, 3]);
    assert_eq!(numbers(c), [2, 3, 4]);
    assert_eq!(seen[a].executed.len(), 12);
}

/// §3.5, `NotifyStatus(false)` with no replicated cookie outstanding, when requests race the
/// step-down: a one-member primary decides its change to another one-member ring at once,
/// while requests keep coming until it refuses them ([A] → [B] → [A] → [B]). Each request it
/// took comes back, aborted, before it is told it is no longer primary; the ones it took while
/// its step-down was under way came back after (each change caught it about two times in
/// three).
#[test]
fn no_request_is_outstanding_when_a_primary_steps_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = Ring::start(dir.path(), 2, &[0]);
    ring.submit(1);
    for to in [1, 0, 1] {
        ring.change(&[to], 10_000);
        ring.submit(1);
    }
    ring.agree();
    ring.stop();
}
