//! The C++ `RSLib` API end to end: compiles the services in `compat-tests/cpp/` with the
//! system `g++ -Wall -Werror` against `include/rsl.h` and the library this build produced
//! (through `pkg-config --cflags --libs rsl`, or the same flags by hand when pkg-config is
//! missing), then
//! - runs `kv_service` as a 3-replica cluster in three processes, speaking mutual TLS set up
//!   with `SetThumbprintsForSsl` (certificates found by thumbprint in `RSL_TLS_DIR`; one
//!   replica admits by `SetSubjectNamesForSsl` alone), and
//!   checks the callbacks each one saw, their order and arguments, and the replicated state
//!   on every replica, and that each port completes a TLS handshake with the right certificate;
//!   then restarts each replica from its data directory (LoadState from the checkpoint) and
//!   reads it with the read-only Replay;
//! - runs the same cluster, started with the legacy Initialize, built with AddressSanitizer
//!   (the shim's sources compiled into the program, instrumented, over `librsl.a`): no error
//!   and no leak;
//! - runs `golden_check`: `RSLUtils::CalculateChecksum` and `RSLCheckpointUtility::SaveCheckpoint`
//!   against the original's golden files, byte for byte.
//! - runs `stubs_check`: the calls that were once stubs, each with the original's behaviour,
//!   plain and under AddressSanitizer.
//! - runs `errors_check`: a failed Initialize notifies RSL's title with the cause as its
//!   message, and failures log their cause.
//!
//! Every wait is bounded; processes still running at a deadline are killed.

use rsl_engine::runtime::tls::issue::{write_by_thumbprint, Ca, LeafSpec};
use rsl_engine::runtime::tls::{IdentitySource, PeerRules, Thumbprint, Tls, TlsSettings};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the workspace).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("compat-tests is in the workspace").to_path_buf()
}

/// Where this build put `librsl.so` / `librsl.a` (the `rsl` dev-dependency: `<profile>/deps`,
/// beside this test binary) and `rsl.pc` (`<profile>`).
fn lib_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory").to_path_buf();
    let profile = deps.parent().expect("profile directory").to_path_buf();
    assert!(deps.join("librsl.so").is_file(), "librsl.so is not in {}", deps.display());
    assert!(profile.join("rsl.pc").is_file(), "rsl.pc is not in {}", profile.display());
    (profile, deps)
}

/// `LD_LIBRARY_PATH` for the programs: this build's `librsl.so` first. Cargo puts
/// `target/<profile>` ahead of `deps` in the tests' own path, and a `librsl.so` left there by
/// an earlier `cargo build` would otherwise win over the rpath.
fn library_path() -> std::ffi::OsString {
    let (_, deps) = lib_dirs();
    let mut path = deps.into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    path
}

/// `pkg-config --cflags --libs rsl`, pointed at this build's `rsl.pc` and libraries.
fn pkg_config_flags() -> Vec<String> {
    let (profile, deps) = lib_dirs();
    let out = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &profile)
        .arg(format!("--define-variable=libdir={}", deps.display()))
        .args(["--cflags", "--libs", "rsl"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).expect("utf-8").split_whitespace().map(str::to_owned).collect(),
        _ => {
            eprintln!("pkg-config unavailable: using the flags rsl.pc would give");
            let include = root().join("include");
            let d = deps.display();
            let mut flags = vec![format!("-I{}", include.display()), format!("-L{d}"), format!("-Wl,-rpath,{d}"), "-lrsl".into()];
            flags.extend(SYSTEM_LIBS.iter().map(|s| s.to_string()));
            flags
        }
    }
}

/// What `librsl` needs from the system (as in `cpp-shim/rsl.pc.in`).
const SYSTEM_LIBS: &[&str] = &["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lstdc++", "-lgcc_s"];

/// Compiles `sources` into `out` with `g++ -std=c++17 -Wall -Werror` and `flags`.
fn compile(sources: &[PathBuf], out: &Path, flags: &[String]) {
    let mut cmd = Command::new("g++");
    cmd.args(["-std=c++17", "-Wall", "-Werror", "-g", "-O1"]).args(sources).arg("-o").arg(out).args(flags);
    let result = cmd.output().expect("g++ runs");
    assert!(
        result.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
}

fn cpp(name: &str) -> PathBuf {
    root().join("compat-tests/cpp").join(name)
}

/// Kills the processes it holds when dropped (a failed assertion must not leave replicas).
struct Procs(Vec<(u32, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` to exit, at most until `deadline`; kills it then.
fn wait_exit(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit in time (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A base port such that base + 10i and base + 10i + 1 (i < 3) are free on 127.0.0.1, below
/// Linux's default ephemeral range (32768 up): an outgoing connection of any process may take
/// a port in that range while a replica is down, and its restart could not listen again.
fn free_base_port() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let seed = std::process::id() as u64 ^ nanos;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919).wrapping_add(attempt * 104_729)) % 12_000) as u16;
        let ports = [0u16, 1, 10, 11, 20, 21].map(|d| base + d);
        if ports.iter().all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_owned).collect()
}

/// What the test prints about a replica when an assertion fails.
fn dump(out: &Path, id: u32) -> String {
    let mut s = String::new();
    for name in [format!("stderr.{id}"), format!("callbacks.{id}.log"), format!("state.{id}.txt")] {
        s += &format!("--- {name}\n{}\n", fs::read_to_string(out.join(&name)).unwrap_or_default());
    }
    s
}

/// How the replicas start.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// `Initialize` (v4 form), then `Bootstrap`.
    Bootstrap,
    /// The legacy `Initialize` with the initial member list (`RSL_KV_LEGACY_INIT=1`).
    Legacy,
}

/// Runs the 3-replica cluster of `exe` and checks what each replica wrote (and, once the
/// workload is done and before the replicas stop, `while_running` with the base port), then
/// restarts each one. `env` is added to each process's environment.
fn run_cluster(exe: &Path, work: &Path, start: Start, env: &[(&str, &str)], while_running: &dyn Fn(u16)) {
    let mut env = env.to_vec();
    if start == Start::Legacy {
        env.push(("RSL_KV_LEGACY_INIT", "1"));
    }
    let data = work.join("data");
    let out = work.join("out");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&out).unwrap();
    let base_port = free_base_port();
    let base = base_port.to_string();

    let mut procs = Procs(Vec::new());
    for id in 1..=3u32 {
        let child = Command::new(exe)
            .args(["run", &id.to_string(), &base])
            .arg(&data)
            .arg(&out)
            .envs(env.iter().copied())
            .env("LD_LIBRARY_PATH", library_path())
            .stdin(Stdio::piped())
            .stdout(fs::File::create(out.join(format!("stdout.{id}"))).unwrap())
            .stderr(fs::File::create(out.join(format!("stderr.{id}"))).unwrap())
            .spawn()
            .expect("kv_service starts");
        procs.0.push((id, child));
    }

    // Every replica executes "done", and the two secondaries save a checkpoint after the
    // log roll; then each is told to stop (its standard input closes).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = (1..=3).filter(|id| out.join(format!("done.{id}")).exists()).count();
        let saved = (1..=3).filter(|id| out.join(format!("saved.{id}")).exists()).count();
        if done == 3 && saved >= 2 {
            break;
        }
        for (id, child) in &mut procs.0 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("replica {id} exited early ({status}):\n{}", dump(&out, *id));
            }
        }
        if Instant::now() >= deadline {
            let all: String = (1..=3).map(|id| dump(&out, id)).collect();
            panic!("the workload did not finish in time (done {done}/3, saved {saved}):\n{all}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    while_running(base_port);
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    for (_, child) in &mut procs.0 {
        drop(child.stdin.take());
    }
    for (id, child) in &mut procs.0 {
        let status = wait_exit(child, stop_deadline, &format!("replica {id}"));
        assert!(status.success(), "replica {id} exited with {status}:\n{}", dump(&out, *id));
    }
    check_cluster(&out, start);

    // Restart each replica from its data directory: the checkpoint comes back through
    // LoadState, the log replays the rest.
    for id in 1..=3u32 {
        let mut child = Command::new(exe)
            .args(["restart", &id.to_string(), &base])
            .arg(&data)
            .arg(&out)
            .envs(env.iter().copied())
            .env("LD_LIBRARY_PATH", library_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(out.join(format!("restart-stderr.{id}"))).unwrap())
            .spawn()
            .expect("kv_service restarts");
        let status = wait_exit(&mut child, Instant::now() + Duration::from_secs(60), &format!("restarted replica {id}"));
        let mut stdout = String::new();
        child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        assert!(status.success(), "restarted replica {id}: {status}\n{}", read(&out.join(format!("restart-stderr.{id}"))));
        check_restart(&out, id);
        check_restart_seqfold(&out, id);
    }
}

/// The keys every replica must hold at the end, as `state.<id>.txt` prints them.
fn expected_keys() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for k in 1..=20 {
        m.insert(format!("k{k}"), format!("v{k}"));
    }
    m
}

/// `key=value` lines of a state file, and its other lines.
fn parse_state(path: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    let mut kv = BTreeMap::new();
    let mut other = Vec::new();
    for line in lines(path) {
        match line.split_once('=') {
            Some((k, v)) if k.starts_with('k') || k.starts_with('b') => {
                kv.insert(k.to_owned(), v.to_owned());
            }
            _ => other.push(line),
        }
    }
    (kv, other)
}

fn check_cluster(out: &Path, start: Start) {
    let mut states = Vec::new();
    let mut executed = Vec::new();
    let mut issued_config_change = 0;
    let mut became_primary = 0;
    let mut cookie_executions = BTreeMap::<String, u32>::new();
    let mut health_reports = 0;
    for id in 1..=3u32 {
        let log = lines(&out.join(format!("callbacks.{id}.log")));
        let ctx = || dump(out, id);

        // LoadState comes first (empty state), ShutDown(RSLShuttingDown) last.
        assert_eq!(log.first().map(String::as_str), Some("LoadState null"), "{}", ctx());
        assert_eq!(log.last().map(String::as_str), Some("ShutDown 3"), "{}", ctx());
        assert_eq!(log.iter().filter(|l| l.starts_with("ShutDown")).count(), 1, "{}", ctx());
        if start == Start::Bootstrap {
            assert!(log.contains(&"Bootstrap 0".to_owned()) || log.contains(&"Bootstrap 4".to_owned()), "{}", ctx());
        }

        // Requests execute only inside a Before/After bracket, and every bracket holds some.
        let mut open = false;
        let mut in_bracket = 0;
        for line in &log {
            if line == "Before" {
                assert!(!open, "nested Before\n{}", ctx());
                open = true;
                in_bracket = 0;
            } else if line == "After" {
                assert!(open && in_bracket > 0, "After without requests\n{}", ctx());
                open = false;
            } else if line.starts_with("Execute ") {
                assert!(open, "Execute outside Before/After: {line}\n{}", ctx());
                in_bracket += 1;
            }
        }
        assert!(!open, "{}", ctx());

        // Sequence numbers never go down.
        let seqs: Vec<u64> =
            log.iter().filter(|l| l.starts_with("Execute ")).map(|l| l.rsplit_once("seq=").unwrap().1.parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "seq went down: {seqs:?}\n{}", ctx());

        // The configuration: bootstrap (1, announced with a NULL cookie; the legacy form
        // starts in it), then the change (2), on every replica; the cookie comes back only
        // on the replica that asked for the change.
        let mut changes: Vec<&String> = log.iter().filter(|l| l.starts_with("NotifyConfigurationChanged")).collect();
        if start == Start::Bootstrap {
            assert_eq!(changes.first().map(|l| l.as_str()), Some("NotifyConfigurationChanged cookie=0 config=1"), "{}", ctx());
            changes.remove(0);
        }
        assert_eq!(changes.len(), 1, "{}", ctx());
        assert!(changes[0].ends_with("config=2"), "{}", ctx());
        if changes[0].contains("cookie=1") {
            issued_config_change += 1;
            assert!(log.iter().any(|l| l == "ChangeConfiguration 0 members=3"), "{}", ctx());
        }

        // Primary status: NotifyStatus(true) is followed by NotifyPrimaryRecovered, and only a
        // replica that was told it is primary gets cookies back.
        let mut primary = false;
        for (i, line) in log.iter().enumerate() {
            match line.as_str() {
                "NotifyStatus 1" => {
                    primary = true;
                    became_primary += 1;
                    assert!(log[i + 1..].iter().any(|l| l == "NotifyPrimaryRecovered"), "{}", ctx());
                }
                "NotifyStatus 0" => primary = false,
                l if l.starts_with("Execute ") && l.contains("cookie=1") => {
                    assert!(primary, "a cookie came back on a non-primary: {l}\n{}", ctx());
                    let request = l.split(" cookie=").next().unwrap().to_owned();
                    *cookie_executions.entry(request).or_default() += 1;
                }
                l if l.starts_with("FastRead") => assert_eq!(l, "FastRead get k5 -> v5", "{}", ctx()),
                // Three replicas (self included), this one primary, decrees executed; a report
                // taken while losing primary status may say otherwise.
                l if primary && l.starts_with("Health needed=3 rc=0 ") && l.ends_with(" self=1 decrees=1") => {
                    assert_eq!(l.matches("(primary)").count(), 1, "{l}\n{}", ctx());
                    health_reports += 1;
                }
                _ => {}
            }
        }

        // The checkpoint the service asked for with saveState at k20: every replica, the
        // primary included, saves the state as that decree left it (20 keys).
        assert!(log.iter().any(|l| l.starts_with("SaveState seq=") && l.ends_with(" keys=20")), "{}", ctx());
        // The checkpoint: SaveState then StateSaved at the same sequence number, the bootstrap
        // checkpoint first.
        if start == Start::Bootstrap {
            assert!(log.iter().any(|l| l == "StateSaved seq=0 file=0.codex"), "{}", ctx());
        }
        if let Some(i) = log.iter().position(|l| l.starts_with("SaveState seq=")) {
            let seq = log[i].split_whitespace().nth(1).unwrap().trim_start_matches("seq=").to_owned();
            assert!(log[i + 1..].iter().any(|l| *l == format!("StateSaved seq={seq} file={seq}.codex")), "{}", ctx());
        }

        let (kv, other) = parse_state(&out.join(format!("state.{id}.txt")));
        assert!(other.contains(&"config=2".to_owned()), "{}", ctx());
        assert!(other.contains(&"primary=known".to_owned()), "{}", ctx());
        assert!(other.contains(&"GetConfiguration=2 members=1,2,3 setcookie=v2 includes3=1".to_owned()), "{}", ctx());
        states.push(kv);
        // The replicated history: requests in execution order, without the cookie flag.
        executed.push(
            log.iter().filter(|l| l.starts_with("Execute ")).map(|l| l.split(" cookie=").next().unwrap().to_owned()).collect::<Vec<_>>(),
        );
    }

    // The same state and the same history everywhere.
    let expected = expected_keys();
    for (i, state) in states.iter().enumerate() {
        for (k, v) in &expected {
            assert_eq!(state.get(k), Some(v), "replica {}: {k}", i + 1);
        }
        assert_eq!(state.len(), 23, "replica {}: k1..k20 and b1..b3", i + 1);
        assert_eq!(state, &states[0], "replica {} state differs from replica 1", i + 1);
        assert_eq!(executed[i], executed[0], "replica {} executed a different history", i + 1);
    }
    assert_eq!(executed[0].last().map(String::as_str), Some("Execute done"));
    assert_eq!(issued_config_change, 1, "exactly one replica gets the ChangeConfiguration cookie back");
    assert!(became_primary >= 1);
    assert!(health_reports >= 1, "the primary reported the replicas' health");
    // Every submitted request came back at most once with its cookie, and "done" did.
    assert!(cookie_executions.values().all(|n| *n == 1), "{cookie_executions:?}");
    assert_eq!(cookie_executions.get("Execute done"), Some(&1));
    check_health_detail(out);
}

// ---- health detail: every ReplicaHealth field and RSLStats counter through rsl.h ----------

/// The `HealthDetail` lines the primary writes once the workload is done (kv_service.cpp):
/// each member's fields as `GetReplicasInformation` filled them, and every `RSLStats` counter.
fn check_health_detail(out: &Path) {
    let lines: Vec<String> = (1..=3u32)
        .flat_map(|id| lines(&out.join(format!("callbacks.{id}.log"))))
        .filter(|l| l.starts_with("HealthDetail ") && l.contains(":primary=1"))
        .collect();
    assert!(!lines.is_empty(), "the primary recorded its health detail");
    for line in &lines {
        check_health_line(line);
    }
}

/// `key<sep>value` pairs separated by commas, as numbers.
fn fields(s: &str, sep: char) -> BTreeMap<String, u64> {
    s.split(',').map(|f| f.split_once(sep).unwrap_or_else(|| panic!("{f}"))).map(|(k, v)| (k.to_owned(), v.parse().unwrap())).collect()
}

fn check_health_line(line: &str) {
    let mut members = BTreeMap::new();
    let mut stats = BTreeMap::new();
    for token in line.split(' ').skip(1) {
        if let Some(m) = token.strip_prefix("member=") {
            let (id, rest) = m.split_once(':').unwrap();
            members.insert(id.parse::<u64>().unwrap(), fields(rest, '='));
        } else if let Some(s) = token.strip_prefix("stats=") {
            stats = fields(s, ':');
        }
    }
    assert_eq!(members.len(), 3, "one entry per member: {line}");
    assert_eq!(members.values().filter(|m| m["primary"] == 1).count(), 1, "{line}");
    for (id, m) in &members {
        // SetVotePayload(1000 + id) on every replica: the primary sees each one's.
        assert_eq!(m["payload"], 1000 + id, "member {id}: {line}");
        assert!(m["decree"] > 0 && m["votedAt"] == 1 && m["sentAt"] == 1, "member {id} voted and was sent to: {line}");
        assert!(m["connected"] == 1 && m["failures"] == 0 && m["needsResolve"] == 0, "member {id}: {line}");
        assert!(m["outstanding"] < 10_000 && m["failedAt"] <= 1, "member {id}: {line}");
    }
    let s = &stats;
    assert_eq!(s.len(), 12, "every RSLStats counter: {line}");
    assert!(s["capture"] > 0 && s["decrees"] > 0, "{line}");
    assert!(s["logWrites"] > 0 && s["logWriteBytes"] >= 512 * s["logWrites"] && s["logWriteMaxUs"] <= s["logWriteUs"], "{line}");
    assert!(s["votingUs"] > 0 && s["votingMaxUs"] <= s["votingUs"], "{line}");
    assert!(s["logReadMaxUs"] <= s["logReadUs"] && s["logReadBytes"] >= s["logReads"], "{line}");
}

fn check_restart(out: &Path, id: u32) {
    let log = lines(&out.join(format!("restart-callbacks.{id}.log")));
    let ctx = || format!("{}\n--- restart log {id}\n{}", dump(out, id), log.join("\n"));
    let saved = out.join(format!("saved.{id}")).exists();
    let first = log.first().cloned().unwrap_or_default();
    if saved {
        // LoadState read a whole checkpoint (its checksums verified) to EOF: the one the
        // service asked for at k20 (20 keys), or a later one taken at a log roll (23 keys).
        let whole = first.ends_with("keys=20 eof=1") || first.ends_with("keys=23 eof=1");
        assert!(first.starts_with("LoadState size=") && whole, "{}", ctx());
    } else {
        assert!(first.starts_with("LoadState"), "{}", ctx());
    }
    assert_eq!(log.last().map(String::as_str), Some("ShutDown 3"), "{}", ctx());
    assert!(!log.iter().any(|l| l.contains("cookie=1")), "no cookies after a restart\n{}", ctx());
    let (kv, other) = parse_state(&out.join(format!("restart-state.{id}.txt")));
    let (before, _) = parse_state(&out.join(format!("state.{id}.txt")));
    assert_eq!(kv, before, "replica {id}: the restarted state differs\n{}", ctx());
    // (The service's own configuration count is not checked here: a replica restored from its
    // log alone is not told about the bootstrap configuration again, as in RSL.)

    // Replay (read-only) of the same directory rebuilds the same state.
    let replay = lines(&out.join(format!("replay-callbacks.{id}.log")));
    assert!(replay.first().is_some_and(|l| l.starts_with("LoadState")), "{}\n--- replay\n{}", ctx(), replay.join("\n"));
    let (replayed, _) = parse_state(&out.join(format!("replay-state.{id}.txt")));
    assert_eq!(replayed, before, "replica {id}: Replay rebuilt a different state");
    assert!(other.contains(&"GetConfiguration=2 members=1,2,3 setcookie=v2 includes3=1".to_owned()), "{}", ctx());
}

/// Restore-time answers (issue 12, item 1): the service folds `GetCurrentSequenceNumber` and
/// `GetConfiguration` into its state while each request executes; restarted (LoadState, then
/// the log replayed inside `Initialize`), it ends with the digest the live replicas ended
/// with, and LoadState saw the checkpoint's sequence number and configuration; so does the
/// read-only Replay of its directory.
fn check_restart_seqfold(out: &Path, id: u32) {
    let live = lines(&out.join(format!("seqfold.{id}.txt")));
    let restarted = lines(&out.join(format!("restart-seqfold.{id}.txt")));
    let ctx = || format!("live: {live:?}\nrestarted: {restarted:?}\n{}", dump(out, id));
    let fold = |l: &[String]| l.first().filter(|f| f.starts_with("fold=")).cloned();
    assert!(fold(&live).is_some(), "{}", ctx());
    assert_eq!(
        fold(&restarted),
        fold(&live),
        "replica {id}: the restarted state folded other sequence numbers or configurations\n{}",
        ctx()
    );
    let others: Vec<_> = (1..=3).map(|i| fold(&lines(&out.join(format!("seqfold.{i}.txt"))))).collect();
    assert!(others.iter().all(|f| *f == fold(&live)), "the live replicas agree: {others:?}");
    // The read-only Replay too, from the same checkpoint (without one it cannot know the
    // legacy form's initial configuration, as in RSL).
    if out.join(format!("saved.{id}")).exists() {
        let replayed = lines(&out.join(format!("replay-seqfold.{id}.txt")));
        assert_eq!(fold(&replayed), fold(&live), "replica {id}: Replay folded other sequence numbers or configurations\n{}", ctx());
    }
    if let Some(load) = restarted.get(1) {
        let (seen, saved) = load.strip_prefix("load ").and_then(|l| l.split_once(" saved ")).expect("load ... saved ...");
        assert_eq!(seen, saved, "replica {id}: LoadState saw the checkpoint's sequence number and configuration\n{}", ctx());
        assert!(!seen.starts_with("seq=0 ") && !seen.ends_with(" config=0"), "{}", ctx());
    }
}

/// A thumbprint directory as `SetThumbprintsForSsl` reads it: two leaves of one CA (A, B)
/// as `<THUMBPRINT>.crt`/`.key`, and the CA as `ca.crt`. Returns A, B and the CA's thumbprint.
fn thumbprint_dir(dir: &Path) -> (Thumbprint, Thumbprint, Thumbprint) {
    fs::create_dir_all(dir).unwrap();
    let ca = Ca::new("kv_service test CA");
    fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    let now = std::time::SystemTime::now();
    let hour = Duration::from_secs(3600);
    let leaf = |name| ca.issue(&LeafSpec { name, not_before: now - hour, not_after: now + 24 * hour });
    let (a, b) = (leaf("kv-service-a"), leaf("kv-service-b"));
    write_by_thumbprint(dir, &a).unwrap();
    write_by_thumbprint(dir, &b).unwrap();
    (a.thumbprint, b.thumbprint, ca.thumbprint())
}

/// Each replica's Paxos port completes a mutual TLS handshake with certificate A, and shows
/// the certificate it was given: B on replica 3, A on the others.
fn handshakes(dir: &Path, a: Thumbprint, b: Thumbprint, base: u16) {
    let settings = TlsSettings {
        identity: IdentitySource::Thumbprints { dir: dir.to_path_buf(), a: Some(a), b: None },
        peers: PeerRules { thumbprints: vec![a, b], ca: Some(dir.join("ca.crt")), require_chain: true, ..PeerRules::default() },
    };
    let tls = Tls::load(&settings).expect("the test's own TLS settings load");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for id in 1..=3u16 {
        let port = base + 10 * (id - 1);
        let peer = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tls.connect(tcp).await.map(|(_, peer)| peer)
        });
        let peer = peer.unwrap_or_else(|e| panic!("TLS handshake with replica {id} on port {port}: {e}"));
        assert_eq!(peer.thumbprint, if id == 3 { b } else { a }, "replica {id}'s certificate");
    }
}

#[test]
fn cpp_cluster_of_three_processes_over_tls() {
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("kv_service");
    compile(&[cpp("kv_service.cpp")], &exe, &pkg_config_flags());
    let certs = work.path().join("certs");
    let (a, b, issuer) = thumbprint_dir(&certs);
    let (thumbs, issuer) = (format!("{a},{b}"), issuer.to_string());
    // Replica 3 admits its peers by subject and issuer (considerIdentitiesWhitelist false).
    let env = [("RSL_KV_TLS_THUMBS", thumbs.as_str()), ("RSL_KV_TLS_ISSUER", issuer.as_str()), ("RSL_TLS_DIR", certs.to_str().unwrap())];
    run_cluster(&exe, work.path(), Start::Bootstrap, &env, &|base| handshakes(&certs, a, b, base));
}

#[test]
fn cpp_cluster_under_address_sanitizer() {
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("kv_service_asan");
    let (_, deps) = lib_dirs();
    // The shim's sources are compiled in, instrumented; the engine and the C ABI come from
    // librsl.a (whose own copy of the shim the linker then leaves out).
    let mut flags: Vec<String> =
        ["-fsanitize=address", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"].iter().map(|s| s.to_string()).collect();
    flags.push(format!("-I{}", root().join("include").display()));
    flags.push(format!("-I{}", root().join("cpp-shim").display()));
    flags.push(deps.join("librsl.a").display().to_string());
    flags.extend(SYSTEM_LIBS.iter().map(|s| s.to_string()));
    let sources = [cpp("kv_service.cpp"), root().join("cpp-shim/rsl.cpp"), root().join("cpp-shim/rslutil.cpp")];
    compile(&sources, &exe, &flags);
    // This run starts the replicas with the legacy Initialize; the other one bootstraps.
    // Plain TCP here, TLS in the other.
    run_cluster(&exe, work.path(), Start::Legacy, &[("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:exitcode=86")], &|_| ());
    for file in fs::read_dir(work.path().join("out")).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("stderr") {
            let text = read(&path);
            assert!(!text.contains("Sanitizer"), "{name}:\n{text}");
        }
    }
}

#[test]
fn cpp_golden_vectors() {
    let golden = compat_tests::golden_dir();
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("golden_check");
    compile(&[cpp("golden_check.cpp")], &exe, &pkg_config_flags());
    let scratch = work.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let mut child = Command::new(&exe)
        .arg(&golden)
        .arg(&scratch)
        .env("LD_LIBRARY_PATH", library_path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("golden_check starts");
    let status = wait_exit(&mut child, Instant::now() + Duration::from_secs(60), "golden_check");
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert!(status.success(), "golden_check failed:\n{stdout}");
    for v in [2, 3, 4, 6] {
        assert!(stdout.contains(&format!("ok SaveCheckpoint v{v} matches cp_util_v{v}/4.codex byte for byte")), "{stdout}");
    }
    assert!(stdout.contains("ok CalculateChecksum(vote_v6.bin[14..]) equals its stored checksum"), "{stdout}");
    assert!(stdout.contains("0 failures"), "{stdout}");
}

/// `stubs_check`: the calls that were stubs (ChangeElectionDelay, IsInStableState, Replay to
/// a checkpoint, CreateWriterForThisReader and the streams' Init/Close, Bootstrap's timeout),
/// each with the original's behaviour, in one process.
#[test]
fn cpp_former_stubs() {
    cpp_check("stubs_check");
}

/// `stubs_check` with the shim compiled in under AddressSanitizer: no error and no leak.
#[test]
fn cpp_former_stubs_under_address_sanitizer() {
    cpp_check_under_asan("stubs_check");
}

/// Builds `compat-tests/cpp/<program>.cpp` against the library and runs it: it passes when it
/// exits 0 and prints "all ok". It gets a free base port and a scratch directory.
/// (`#include "check_support.h"` is found next to the program: g++ searches the source's folder.)
fn cpp_check(program: &str) {
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join(program);
    compile(&[cpp(&format!("{program}.cpp"))], &exe, &pkg_config_flags());
    run_check(&exe, work.path(), &[]);
}

/// [`cpp_check`] with the shim compiled in under AddressSanitizer, as in
/// `cpp_cluster_under_address_sanitizer`: no error and no leak either.
fn cpp_check_under_asan(program: &str) {
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join(format!("{program}_asan"));
    let (_, deps) = lib_dirs();
    let mut flags: Vec<String> =
        ["-fsanitize=address", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"].iter().map(|s| s.to_string()).collect();
    flags.push(format!("-I{}", root().join("include").display()));
    flags.push(format!("-I{}", root().join("cpp-shim").display()));
    flags.push(deps.join("librsl.a").display().to_string());
    flags.extend(SYSTEM_LIBS.iter().map(|s| s.to_string()));
    let sources = [cpp(&format!("{program}.cpp")), root().join("cpp-shim/rsl.cpp"), root().join("cpp-shim/rslutil.cpp")];
    compile(&sources, &exe, &flags);
    run_check(&exe, work.path(), &[("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:exitcode=86")]);
}

fn run_check(exe: &Path, work: &Path, env: &[(&str, &str)]) {
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let run = work.join("run");
    fs::create_dir_all(&run).unwrap();
    let (out, err) = (work.join("stdout"), work.join("stderr"));
    let mut child = Command::new(exe)
        .arg(free_base_port().to_string())
        .arg(&run)
        .envs(env.iter().copied())
        .env("LD_LIBRARY_PATH", library_path())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let status = wait_exit(&mut child, Instant::now() + Duration::from_secs(300), &name);
    let (stdout, stderr) = (read(&out), read(&err));
    assert!(status.success() && stdout.contains("all ok") && !stderr.contains("Sanitizer"), "{name} failed:\n{stdout}\n{stderr}");
}

#[test]
fn cpp_catchup() {
    cpp_check("catchup_check");
}

#[test]
fn cpp_catchup_under_address_sanitizer() {
    cpp_check_under_asan("catchup_check");
}

#[test]
fn cpp_readers() {
    cpp_check("readers_check");
}

#[test]
fn cpp_readers_under_address_sanitizer() {
    cpp_check_under_asan("readers_check");
}

#[test]
fn cpp_promote() {
    cpp_check("promote_check");
}

#[test]
fn cpp_promote_under_address_sanitizer() {
    cpp_check_under_asan("promote_check");
}

#[test]
fn cpp_fields() {
    cpp_check("fields_check");
}

#[test]
fn cpp_fields_under_address_sanitizer() {
    cpp_check_under_asan("fields_check");
}

#[test]
fn cpp_resolve() {
    cpp_check("resolve_check");
}

#[test]
fn cpp_resolve_under_address_sanitizer() {
    cpp_check_under_asan("resolve_check");
}

#[test]
fn cpp_cppmore() {
    cpp_check("cppmore_check");
}

#[test]
fn cpp_cppmore_under_address_sanitizer() {
    cpp_check_under_asan("cppmore_check");
}

/// `errors_check`: a failed Initialize and a failed checkpoint utility call name their cause
/// on the notification and the log.
#[test]
fn cpp_errors_name_their_cause() {
    cpp_check("errors_check");
}

/// `errors_check` with the shim compiled in under AddressSanitizer.
#[test]
fn cpp_errors_name_their_cause_under_address_sanitizer() {
    cpp_check_under_asan("errors_check");
}
