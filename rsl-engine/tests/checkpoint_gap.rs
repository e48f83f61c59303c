//! The Paxos gap during a large checkpoint save: three replicas in one process under steady
//! load; one secondary saves a state of `RSL_GAP_STATE_MB` megabytes (16 unless set) while its
//! learn port is asked for its status and its previous checkpoint over and over. Prints the
//! longest gap between consecutive Paxos messages that secondary's protocol thread received
//! during the save, and before it, the same at the other secondary, and how long each
//! replica's log syncs took meanwhile (`RSL_GAP_SLOW_SYNCS=1` lists every one over 10 ms).
//! Timing is printed, not asserted (CI runs a small state); figures in docs/performance.md:
//!
//! `RSL_GAP_STATE_MB=1024 [RSL_GAP_DIR=/dev/shm] cargo test --release -p rsl-engine --test checkpoint_gap -- --nocapture`

mod inproc;

use bytes::Bytes;
use inproc::{three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{Ballot, Body, Header, MemberId, Message, Version};
use rsl_engine::runtime::journal::SYNC_TRACE;
use rsl_engine::runtime::learn::{self, Peer};
use rsl_engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The runtime's trace target marking each Paxos message a protocol thread takes in.
const ARRIVALS: &str = "rsl_engine::paxos_in";
const MB: u64 = 1 << 20;

/// When each replica's protocol thread took in each Paxos message, by member id; and when
/// each log sync ended and how long it took, by log directory.
#[derive(Clone, Default)]
struct Arrivals {
    paxos: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    syncs: Arc<Mutex<HashMap<String, Vec<Sync>>>>,
}

/// When a log sync ended, and how long it took.
type Sync = (Instant, Duration);

/// The fields of an arrival or sync event.
#[derive(Default)]
struct Fields {
    me: Option<String>,
    dir: Option<String>,
    micros: u64,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "micros" {
            self.micros = value;
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "me" => self.me = Some(format!("{value:?}")),
            "dir" => self.dir = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for Arrivals {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        [ARRIVALS, SYNC_TRACE].contains(&metadata.target())
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let now = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(me) = fields.me {
            self.paxos.lock().unwrap().entry(me).or_default().push(now);
        }
        if let Some(dir) = fields.dir {
            self.syncs.lock().unwrap().entry(dir).or_default().push((now, Duration::from_micros(fields.micros)));
        }
    }
}

/// The longest and the 99th percentile of some gaps, and how many.
struct Gaps {
    longest: Duration,
    p99: Duration,
    count: usize,
}

impl Gaps {
    fn of(mut gaps: Vec<Duration>) -> Gaps {
        gaps.sort();
        let at = |q: f64| gaps.get(((gaps.len() as f64 * q) as usize).min(gaps.len().saturating_sub(1))).copied().unwrap_or_default();
        Gaps { longest: at(1.0), p99: at(0.99), count: gaps.len() }
    }
}

impl std::fmt::Display for Gaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(f, "longest {:.1} ms, p99 {:.1} ms of {}", ms(self.longest), ms(self.p99), self.count)
    }
}

impl Arrivals {
    /// The gaps between consecutive arrivals at `me` within `[from, to]` (the first arrival
    /// after `from` counts from `from`, `to` ends the last gap).
    fn gaps(&self, me: &str, from: Instant, to: Instant) -> Gaps {
        let all = self.paxos.lock().unwrap();
        let times: Vec<Instant> = all.get(me).into_iter().flatten().copied().filter(|t| *t >= from && *t <= to).collect();
        let mut last = from;
        let mut gaps = Vec::new();
        for &t in times.iter().chain([to].iter()) {
            gaps.push(t - last);
            last = t;
        }
        Gaps::of(gaps)
    }

    /// The durations of the log syncs in `dir` that ended within `[from, to]`.
    fn syncs(&self, dir: &Path, from: Instant, to: Instant) -> Gaps {
        let all = self.syncs.lock().unwrap();
        let dir = dir.display().to_string();
        Gaps::of(all.get(&dir).into_iter().flatten().filter(|(t, _)| *t >= from && *t <= to).map(|&(_, d)| d).collect())
    }
}

/// A state of `size` bytes (settable while running); records when each save ran.
struct Sized {
    size: Arc<AtomicU64>,
    saves: Arc<Mutex<Vec<(Instant, Instant, u64)>>>,
    /// Each checkpoint placed: its decree and when.
    saved: Arc<Mutex<Vec<(u64, Instant)>>>,
}

impl StateMachine for Sized {
    fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], _: Option<u64>, save: &mut bool) {
        *save |= request == b"save";
    }
    fn execute_fast_read_request(&self, _: &[u8], _: u64) {}
    fn abort_request(&mut self, _: ResponseCode, _: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let (start, size) = (Instant::now(), self.size.load(Relaxed));
        let chunk: Vec<u8> = (0..MB).map(|i| (i * 31) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(MB) as usize;
            writer.write(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        self.saves.lock().unwrap().push((start, Instant::now(), size));
    }
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, _: ResponseCode) {}
    fn state_saved(&mut self, seq: u64, _: &Path) {
        self.saved.lock().unwrap().push((seq, Instant::now()));
    }
    fn state_copied(&mut self, _: u64, _: Option<&Path>, _: Option<u64>) {}
}

fn submit(primary: &RslReplica, request: &'static [u8], cookie: u64) {
    while primary.replicate_request(Bytes::from_static(request), cookie) != ResponseCode::Success {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the learn-port client saw while the save ran.
#[derive(Debug, Default)]
struct Asked {
    statuses: u64,
    fetches: u64,
    slowest_status: Duration,
}

/// Asks `learn` for its status, and for its checkpoint when that is small, until `stop`.
fn ask_learn_port(learn: SocketAddr, stop: &AtomicBool, min_checkpoint: u64) -> Asked {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let me = MemberId::new("99").unwrap();
    let limit = Duration::from_secs(30);
    let mut asked = Asked::default();
    while !stop.load(Relaxed) {
        let query = Message::new(Header::new(Version::V6, me, 0, 0, Ballot::EMPTY), Body::StatusQuery);
        let started = Instant::now();
        let reply = rt.block_on(learn::fetch_status(Peer::plain(learn), &query, limit)).expect("the learn port answers during a save");
        asked.slowest_status = asked.slowest_status.max(started.elapsed());
        asked.statuses += 1;
        let Body::StatusResponse(s) = reply.body else { panic!("not a status reply") };
        assert!(s.checkpointed_decree >= min_checkpoint, "the status names the newest checkpoint");
        if asked.statuses % 8 == 1 && s.checkpoint_size < 64 * MB {
            let request = Message::new(Header::new(Version::V6, me, s.checkpointed_decree, 0, Ballot::EMPTY), Body::FetchCheckpoint);
            let dest = dir.path().join("fetched");
            rt.block_on(learn::fetch_checkpoint(Peer::plain(learn), &request, s.checkpoint_size, &dest, limit, 1))
                .expect("the learn port serves its checkpoint during a save");
            asked.fetches += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    asked
}

#[test]
fn paxos_traffic_to_a_secondary_goes_on_while_it_saves_a_large_checkpoint() {
    let state_mb: u64 = std::env::var("RSL_GAP_STATE_MB").ok().map_or(16, |v| v.parse().expect("RSL_GAP_STATE_MB is a number"));
    let arrivals = Arrivals::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(arrivals.clone())).unwrap();

    // All three replicas share one file system here: on a disk, every replica's log syncs
    // wait for the checkpoint writeback in flight (ext4's ordered mode), which then shows as
    // a gap at every secondary; early writeback bounds it (src/writeback.rs).
    // `RSL_GAP_DIR=/dev/shm` leaves only the runtime's part.
    let root = std::env::var_os("RSL_GAP_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(root).unwrap();
    let Three { nodes, members, cfg } = three(dir.path());
    let cfg = RslConfig { election_delay_sec: 10, ..cfg };
    let sizes: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let saves: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let saved: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let replicas: Vec<RslReplica> = (0..3)
        .map(|i| {
            let sm = Sized { size: sizes[i].clone(), saves: saves[i].clone(), saved: saved[i].clone() };
            let init =
                RslReplica::initialize(cfg.clone(), nodes[i].clone(), Version::V6, Box::new(sm), Arc::new(AdmitAll), Some(members.clone()));
            init.unwrap()
        })
        .collect();
    let p = wait(Duration::from_secs(60), || replicas.iter().position(|r| r.is_primary()));
    let s = (p + 1) % 3;
    let learn = SocketAddr::from((Ipv4Addr::LOCALHOST, nodes[s].learn_port));

    // A small checkpoint first, for the learn port to serve during the large save.
    sizes[s].store(MB, Relaxed);
    submit(&replicas[p], b"save", 1);
    let (first, _) = wait(Duration::from_secs(60), || placed_after(&saves[s], &saved[s], MB));
    sizes[s].store(state_mb * MB, Relaxed);

    let stop = AtomicBool::new(false);
    let (load_from, asked, save) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut cookie = 2;
            while !stop.load(Relaxed) {
                submit(&replicas[p], b"x", cookie);
                cookie += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        let load_from = Instant::now();
        std::thread::sleep(Duration::from_secs(1)); // a baseline before the save
        let asker = scope.spawn(|| ask_learn_port(learn, &stop, first));
        submit(&replicas[p], b"save", 1);
        println!("the large save was submitted {:.2} s into the load", load_from.elapsed().as_secs_f64());
        let save = wait(Duration::from_secs(600), || saves[s].lock().unwrap().iter().find(|sv| sv.2 == state_mb * MB).copied());
        let placed = wait(Duration::from_secs(600), || placed_after(&saves[s], &saved[s], state_mb * MB));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Relaxed);
        load.join().unwrap();
        (load_from, asker.join().unwrap(), (save, placed))
    });

    let me = nodes[s].id.to_string();
    // From the first byte written to the file in place (written, synced, verified, linked).
    let ((save_start, write_end, _), (placed, save_end)) = save;
    let before = arrivals.gaps(&me, load_from, save_start);
    let during = arrivals.gaps(&me, save_start, save_end);
    // The other secondary, over the same window: what the machine's load alone costs.
    let control = arrivals.gaps(&nodes[(p + 2) % 3].id.to_string(), save_start, save_end);
    let size = std::fs::metadata(replicas[s].data_dir().join(format!("{placed}.codex"))).unwrap().len();
    let saved_for = |to: Instant| (to - save_start).as_secs_f64();
    println!(
        "checkpoint gap: state {state_mb} MB ({size} bytes on disk) in {:?}: written by the application in {:.2} s, in place \
         (synced, verified, linked) after {:.2} s",
        dir.path(),
        saved_for(write_end),
        saved_for(save_end),
    );
    println!("  gaps between Paxos messages at the saving secondary during the save: {during}");
    println!("  ... in the {:.2} s before it: {before}", (save_start - load_from).as_secs_f64());
    println!("  ... at the other secondary during the save: {control}");
    for (i, r) in replicas.iter().enumerate() {
        let role = if i == p {
            "primary"
        } else if i == s {
            "saving secondary"
        } else {
            "other secondary"
        };
        println!("  log syncs of the {role} during the save: {}", arrivals.syncs(r.data_dir(), save_start, save_end));
    }
    if std::env::var_os("RSL_GAP_SLOW_SYNCS").is_some() {
        slow_syncs(&arrivals, save_start, save_end);
    }
    println!(
        "  learn port meanwhile: {} status replies (slowest {:.1} ms), {} checkpoint fetches; under 50 ms: {}",
        asked.statuses,
        asked.slowest_status.as_secs_f64() * 1e3,
        asked.fetches,
        during.longest < Duration::from_millis(50),
    );
    assert!(size >= state_mb * MB, "the large checkpoint is in place: {size} bytes");
    assert!(asked.statuses > 0, "the learn port answered");
    for r in replicas {
        assert_eq!(r.failure(), None);
        r.unload();
    }
}

/// Every log sync over 10 ms around the save, with when it started (relative to the save's).
fn slow_syncs(arrivals: &Arrivals, save_start: Instant, save_end: Instant) {
    let all = arrivals.syncs.lock().unwrap();
    let mut slow: Vec<(f64, f64, &str)> = all
        .iter()
        .flat_map(|(dir, syncs)| syncs.iter().map(move |&(end, took)| (end, took, dir.as_str())))
        .filter(|&(end, took, _)| took > Duration::from_millis(10) && end >= save_start && end <= save_end + Duration::from_millis(500))
        .map(|(end, took, dir)| (((end - took) - save_start).as_secs_f64() * 1e3, took.as_secs_f64() * 1e3, dir))
        .collect();
    slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, took, dir) in slow {
        println!("    sync at +{at:.0} ms took {took:.1} ms in {dir}");
    }
}

/// The checkpoint placed after the state machine saved `size` bytes.
fn placed_after(saves: &Mutex<Vec<(Instant, Instant, u64)>>, saved: &Mutex<Vec<(u64, Instant)>>, size: u64) -> Option<(u64, Instant)> {
    let (_, end, _) = saves.lock().unwrap().iter().rev().find(|sv| sv.2 == size).copied()?;
    saved.lock().unwrap().iter().find(|(_, at)| *at >= end).copied()
}
