//! `rsl-kv cluster` and `rsl-kv replica` at startup: a bad flag fails before anything starts, a
//! port that is taken fails with the replica's own error, and two clusters on one host each
//! pick their own free ports.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Far beyond what any run here needs: a run that has not ended by then is stuck, and is killed.
const BOUND: Duration = Duration::from_secs(120);

/// Runs `rsl-kv args…` to its end, killing it should it outlive [`BOUND`].
fn rsl_kv(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_rsl-kv"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsl-kv");
    let pid = child.id().to_string();
    let (done, output) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output().expect("wait")));
    output.recv_timeout(BOUND).unwrap_or_else(|_| {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("rsl-kv {args:?} was still running after {BOUND:?}");
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A listener on a port the OS picked, held for the test's length.
fn taken_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// `span` consecutive free ports below Linux's default ephemeral range (32768 up), from an
/// offset of this process's own.
fn low_free_base(span: u16) -> u16 {
    (0..2000u16)
        .map(|k| 20_000 + ((std::process::id() as u16 % 1000) * 9 + k * 7) % 12_000)
        .find(|&base| (0..span).all(|d| TcpListener::bind((Ipv4Addr::LOCALHOST, base + d)).is_ok()))
        .expect("free ports below the ephemeral range")
}

#[test]
fn a_bad_flag_fails_before_anything_starts() {
    let cases = [
        (&["--version", "9"][..], "--version 9: supported versions are 1 to 7"),
        (&["--window", "0", "--version", "7"], "--window 0: configuration error: pipeline_window = 0 is outside 1..=1024"),
        (&["--window", "4"], "--window 4 needs --version 7"),
        (&["--replicas", "0"], "--replicas 0: must be within 1..=64"),
        (&["--outstanding", "0"], "--outstanding 0: must be within"),
        (&["--connections", "0"], "--connections 0: must be within"),
        (&["--size", "2000000"], "--size 2000000: must be within"),
        (&["--keys", "0"], "--keys 0: must be at least 1"),
        (&["--base-port", "65534"], "--base-port 65534: 3 replicas need ports 65534..=65542"),
        (&["--base-port", "0"], "--base-port 0:"),
        (&["--transport", "shm", "--tls"], "--transport shm: not with TLS"),
        (&["--transport", "shm", "--net-delay-us", "10"], "--transport shm: not with --net-delay-us"),
        (&["--transport", "rdma"], "--transport rdma: "),
    ];
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("cluster");
    for (flags, expected) in cases {
        // `--duration 0` would run until Ctrl-C: only the check ends these runs.
        let mut args = vec!["cluster", "--duration", "0", "--dir", dir.to_str().expect("utf-8")];
        args.extend_from_slice(flags);
        let out = rsl_kv(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{flags:?}: one line: {err}");
        assert!(err.starts_with("rsl-kv: ") && err.contains(expected), "{flags:?}: {err}");
        assert!(!dir.exists(), "{flags:?}: nothing starts, not even the data directory");
    }
}

#[test]
fn a_taken_port_fails_the_cluster_with_the_replicas_error() {
    // The cluster's nine ports below the ephemeral range, where no outgoing connection can
    // take one of the others (then another replica could fail first); the first is held.
    let port = low_free_base(9);
    let _held = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("hold the first port");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = port.to_string();
    let out = rsl_kv(&["cluster", "--duration", "0", "--base-port", &base, "--dir", dir.path().to_str().expect("utf-8")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("rsl-kv: replica 1 did not start (exit status: 1)"), "{err}");
    assert!(last.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("replicas up"), "{err}");
}

#[test]
fn a_replica_whose_port_is_taken_exits_with_the_bind_error() {
    let (_held, taken) = taken_port();
    let (free, free_port) = taken_port();
    drop(free);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_str().expect("utf-8");
    for (paxos, client) in [(taken, free_port), (free_port, taken)] {
        let (paxos, client) = (paxos.to_string(), client.to_string());
        let out =
            rsl_kv(&["replica", "--id", "1", "--port", &paxos, "--client-port", &client, "--members", &format!("1={paxos}"), "--dir", dir]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("cannot listen on 127.0.0.1:{taken}")), "{err}");
        assert!(out.stdout.is_empty(), "no `listening` line: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn two_clusters_at_once_pick_their_own_ports() {
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let runs: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let dir = dir.path().to_str().expect("utf-8").to_owned();
            std::thread::spawn(move || rsl_kv(&["cluster", "--duration", "1", "--outstanding", "4", "--json", "--dir", &dir]))
        })
        .collect();
    for run in runs {
        let out = run.join().expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, stderr(&out));
        let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        assert_eq!(result["replicas_agree"], true, "{stdout}");
        assert!(result["requests"].as_u64() > Some(0), "{stdout}");
    }
}
