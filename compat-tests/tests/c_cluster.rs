//! The C ABI from C: compiles `compat-tests/c/replica.c` against `include/rsl_ffi.h` and the
//! built `librsl.so`, runs three replica processes on 127.0.0.1, and checks every callback they
//! recorded (order, arguments, cookies) and that all three end with the same state. The same
//! program runs again under AddressSanitizer with leak detection.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::time::{Duration, Instant};

const REQUESTS: usize = 200;
/// A replica process that has not finished by then is killed and the test fails.
const PROCESS_LIMIT: Duration = Duration::from_secs(150);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("compat-tests is in the workspace").to_path_buf()
}

/// Builds `librsl.so` (the root package) in this test's profile and returns its directory.
fn build_library() -> PathBuf {
    // This test binary is target/<profile dir>/deps/c_cluster-*: the library goes to target/<profile dir>.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile dir>/deps").to_path_buf();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--lib", "-p", "rsl", "--profile", &profile])
        .current_dir(root())
        .status()
        .expect("run cargo build -p rsl");
    assert!(status.success(), "cargo build -p rsl failed");
    assert!(dir.join("librsl.so").is_file(), "{} has no librsl.so", dir.display());
    dir
}

/// Compiles the C replica with the system compiler (`$CC`, else `cc`).
fn compile(out: &Path, sanitize: bool) -> PathBuf {
    let lib = build_library();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let exe = out.join(if sanitize { "replica-asan" } else { "replica" });
    let mut cmd = Command::new(&cc);
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"]);
    if sanitize {
        cmd.args(["-fsanitize=address", "-fno-omit-frame-pointer"]);
    }
    cmd.arg("-I").arg(root().join("include")).arg(root().join("compat-tests/c/replica.c"));
    cmd.arg("-L").arg(&lib).arg("-lrsl").arg(format!("-Wl,-rpath,{}", lib.display())).arg("-o").arg(&exe);
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(status.success(), "{cc} failed to compile compat-tests/c/replica.c");
    exe
}

/// Six free consecutive ports (each replica's Paxos and learn port); the two tests of this
/// process draw from different offsets so they never pick the same ones. All lie below Linux's
/// default ephemeral range (32768 up), which outgoing connections draw from.
fn free_base() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (0..100)
        .map(|_| 20_000 + (std::process::id() % 400) as u16 * 30 + NEXT.fetch_add(6, Relaxed) % 24)
        .find(|&base| (0..6).all(|k| TcpListener::bind((Ipv4Addr::LOCALHOST, base + k)).is_ok()))
        .expect("six free ports")
}

/// Waits for every child. Once one fails, or `PROCESS_LIMIT` has passed, the others are killed
/// (their exit code is then `None`).
fn wait_all(children: &mut [Child]) -> Vec<Option<i32>> {
    let until = Instant::now() + PROCESS_LIMIT;
    let mut codes: Vec<Option<Option<i32>>> = vec![None; children.len()];
    while codes.iter().any(Option::is_none) {
        for (child, code) in children.iter_mut().zip(codes.iter_mut()) {
            if code.is_none() {
                *code = child.try_wait().expect("wait for a replica").map(|status| status.code());
            }
        }
        let failed = codes.iter().any(|c| matches!(c, Some(code) if *code != Some(0)));
        if failed || Instant::now() > until {
            for (child, code) in children.iter_mut().zip(codes.iter_mut()) {
                if code.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                    *code = Some(None);
                }
            }
            assert!(failed, "the replicas did not finish within {PROCESS_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    codes.into_iter().map(Option::flatten).collect()
}

/// What one replica process recorded.
struct Run {
    events: Vec<String>,
    replay: Vec<String>,
    stderr: String,
}

fn run_ring(sanitize: bool) -> Vec<Run> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = compile(tmp.path(), sanitize);
    let base = free_base().to_string();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut children: Vec<Child> = (0..3)
        .map(|i| {
            let err = std::fs::File::create(tmp.path().join(format!("stderr.{i}"))).expect("stderr file");
            Command::new(&exe)
                .args([i.to_string(), base.clone()])
                .arg(&data)
                .arg(tmp.path().join(format!("events.{i}")))
                .arg(REQUESTS.to_string())
                .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("start a replica")
        })
        .collect();
    let codes = wait_all(&mut children);
    let read = |name: String| std::fs::read_to_string(tmp.path().join(name)).unwrap_or_default();
    let runs: Vec<Run> = (0..3)
        .map(|i| Run {
            events: read(format!("events.{i}")).lines().map(String::from).collect(),
            replay: read(format!("events.{i}.replay")).lines().map(String::from).collect(),
            stderr: read(format!("stderr.{i}")),
        })
        .collect();
    for (i, (code, run)) in codes.iter().zip(&runs).enumerate() {
        let tail = run.events[run.events.len().saturating_sub(10)..].join("\n");
        assert_eq!(*code, Some(0), "replica {i} failed; its stderr:\n{}\nits last events:\n{tail}", run.stderr);
        assert!(!run.stderr.contains("Sanitizer"), "replica {i}: sanitizer report:\n{}", run.stderr);
    }
    runs
}

/// `Execute <request> cookie=<id> len=<n>`: the request and the cookie's id (-1 for NULL).
fn executions(events: &[String]) -> Vec<(String, i64)> {
    events
        .iter()
        .filter_map(|e| e.strip_prefix("Execute "))
        .map(|e| {
            let mut words = e.split(' ');
            let request = words.next().expect("a request").to_string();
            let cookie = words.next().and_then(|w| w.strip_prefix("cookie=")).expect("a cookie").parse().expect("a number");
            (request, cookie)
        })
        .collect()
}

fn final_digest(events: &[String]) -> String {
    let line = events.iter().find(|e| e.starts_with("Final ")).expect("a Final line");
    line.split(' ').find_map(|w| w.strip_prefix("digest=")).expect("a digest").to_string()
}

fn check(runs: &[Run]) {
    let expected: Vec<String> = (0..REQUESTS).map(|i| format!("req-{i}")).collect();
    let primaries: Vec<usize> = (0..3).filter(|&i| runs[i].events.iter().any(|e| e == "NotifyStatus 1")).collect();
    assert_eq!(primaries.len(), 1, "NotifyStatus(true) on exactly one replica: {primaries:?}");
    let primary = primaries[0];
    let digest = final_digest(&runs[0].events);
    for (i, run) in runs.iter().enumerate() {
        let ev = &run.events;
        assert_eq!(ev.first().map(String::as_str), Some("LoadState null"), "replica {i}: LoadState first");
        assert_eq!(ev.last().map(String::as_str), Some("ShutDown 3"), "replica {i}: ShutDown(RSL_SHUTTING_DOWN) last");
        assert_eq!(ev.iter().filter(|e| e.starts_with("ShutDown")).count(), 1, "replica {i}: one ShutDown");
        let execs = executions(ev);
        let requests: Vec<String> = execs.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(requests, expected, "replica {i} executes every request once, in order");
        let cookies: Vec<i64> = execs.iter().map(|&(_, c)| c).collect();
        if i == primary {
            // Each cookie came back exactly once, with its own request, and none was aborted.
            assert_eq!(cookies, (0..REQUESTS as i64).collect::<Vec<_>>(), "the submitter's cookies");
            assert!(!ev.iter().any(|e| e.starts_with("Abort")), "no abort on the submitter: {ev:?}");
        } else {
            assert!(cookies.iter().all(|&c| c == -1), "replica {i}: cookies are NULL off the submitter");
            // Secondaries checkpoint when the log rolls, through SaveState, then StateSaved.
            let save = ev.iter().position(|e| e.starts_with("SaveState")).expect("a SaveState");
            assert!(ev[save + 1..].iter().any(|e| e.starts_with("StateSaved seq=")), "replica {i}: StateSaved after SaveState");
        }
        let fast_read = format!("FastRead count cookie={} count={REQUESTS}", 1_000_000 + i);
        assert!(ev.contains(&fast_read), "replica {i}: the fast read saw every request: {ev:?}");
        assert_eq!(final_digest(ev), digest, "replica {i} ends with the same state as replica 0");
        // The read-only replay rebuilds the same state from the checkpoint and the logs.
        let replay = &run.replay;
        assert!(replay.first().is_some_and(|e| e.starts_with("LoadState")), "replica {i}'s replay starts with LoadState");
        if i != primary {
            assert!(replay[0].starts_with("LoadState reader"), "replica {i}'s replay loads its checkpoint: {}", replay[0]);
        }
        assert_eq!(final_digest(replay), digest, "replica {i}'s replay");
    }
    let submitted: BTreeSet<i64> = executions(&runs[primary].events).iter().map(|&(_, c)| c).collect();
    assert_eq!(submitted.len(), REQUESTS, "no cookie came back twice");
}

#[test]
fn three_c_replicas_agree() {
    check(&run_ring(false));
}

#[test]
fn three_c_replicas_under_address_sanitizer() {
    check(&run_ring(true));
}
