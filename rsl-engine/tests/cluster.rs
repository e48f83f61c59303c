//! Real replica processes of the example key-value service on 127.0.0.1: kill -9 the primary
//! under load, kill a secondary, restart everything, tear the log, catch up from a
//! checkpoint, replace a member. After each, every acknowledged write is on every replica
//! and all replicas hold the same state.

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;

mod support;

use client::{Conn, LoadSpec, Progress};
use proto::Status;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{catch_up_from_a_checkpoint, load_while, primary, rt, spec, verify, verify_at, wait_done, Cluster};

#[test]
fn kill_9_the_primary_under_load_and_restart_it() {
    rt().block_on(async {
        let mut c = Cluster::start(3, 0, &[]);
        primary(&c).await;
        let spec = spec(3000);
        let acked = load_while(&mut c, &spec, async |c, progress| {
            let p = primary(c).await;
            c.kill9(p);
            wait_done(c, progress, 2000).await;
            c.spawn(p, true);
        })
        .await;
        verify(&c, &[0, 1, 2], &acked, &spec).await;
    });
}

/// A killed replica gets its ports back on restart: an outgoing connection (of any process)
/// can take none of them while it is down, nor hold it in TIME_WAIT, for they lie below the
/// kernel's ephemeral range. (They did not, and restarts failed with "Address already in use".)
#[test]
fn replica_ports_lie_below_the_ephemeral_range() {
    for _ in 0..200 {
        let c = Cluster::new(3, 1, &["--rings", "2"]);
        let last = c.base + 10 + 3 * 4 - 1;
        assert!(last < support::ephemeral_low(), "ports {}..={last} reach the ephemeral range", c.base);
    }
}

#[test]
fn kill_a_secondary_then_the_whole_cluster_restarts() {
    rt().block_on(async {
        let mut c = Cluster::start(3, 0, &[]);
        let p = primary(&c).await;
        let secondary = (p + 1) % 3;
        let spec = spec(2000);
        let acked = load_while(&mut c, &spec, async |c, _| c.kill9(secondary)).await;
        c.spawn(secondary, true);
        verify(&c, &[0, 1, 2], &acked, &spec).await;
        for i in 0..3 {
            c.kill9(i);
        }
        for i in 0..3 {
            c.spawn(i, true);
        }
        primary(&c).await;
        verify(&c, &[0, 1, 2], &acked, &spec).await;
    });
}

/// The newest log file of a data directory.
fn newest_log(dir: &Path) -> PathBuf {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let n = p.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    logs.sort();
    logs.pop().expect("a log file").1
}

#[test]
fn a_log_torn_in_the_middle_of_a_record_restarts() {
    rt().block_on(async {
        let mut c = Cluster::start(3, 0, &[]);
        let p = primary(&c).await;
        let spec = spec(1000);
        let acked = load_while(&mut c, &spec, async |_, _| {}).await;
        let victim = (p + 1) % 3;
        c.kill9(victim);
        let log = newest_log(&c.data_dir(victim));
        let len = std::fs::metadata(&log).expect("log").len();
        assert!(len > 1024, "the log holds records");
        // Cut inside the last record: past its first sector, short of its end.
        std::fs::OpenOptions::new().write(true).open(&log).expect("open").set_len(len - 300).expect("truncate");
        c.spawn(victim, true);
        verify(&c, &[0, 1, 2], &acked, &spec).await;
    });
}

#[test]
fn a_replica_far_behind_catches_up_from_a_checkpoint() {
    rt().block_on(async {
        let mut c = Cluster::start(3, 0, &["--max-log-mb", "1"]);
        // Several megabytes of log: the learn index moves past everything the stopped replica has.
        catch_up_from_a_checkpoint(&mut c, 2500).await;
        for i in 0..3 {
            inspect_clean(&c.data_dir(i));
        }
    });
}

/// `rsl-inspect` (the original's formats, docs/spec/formats.md) reads every log and checkpoint of a
/// data directory without a complaint.
fn inspect_clean(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_rsl-inspect")).arg("log").arg(dir).output().expect("rsl-inspect");
    assert!(out.status.success(), "rsl-inspect log {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    for entry in std::fs::read_dir(dir).expect("dir").flatten().filter(|e| e.path().extension().is_some_and(|x| x == "codex")) {
        let out = Command::new(env!("CARGO_BIN_EXE_rsl-inspect")).arg("checkpoint").arg(entry.path()).output().expect("rsl-inspect");
        assert!(out.status.success(), "rsl-inspect checkpoint {}: {}", entry.path().display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_member_is_replaced_by_a_configuration_change() {
    rt().block_on(async {
        // Small logs and 4 KB writes: by the time the new member arrives, the members' logs no
        // longer reach back to its empty state, so it heals from a checkpoint.
        let mut c = Cluster::start(3, 1, &["--max-log-mb", "1", "--allow-admin"]);
        let p = primary(&c).await;
        let spec = LoadSpec { size: 4096, ..spec(1000) };
        let acked = load_while(&mut c, &spec, async |_, _| {}).await;
        // Every member checkpoints (the primary copies one) and drops the logs it covers from
        // what learners may fetch.
        let has_checkpoint = |i: usize| {
            std::fs::read_dir(c.data_dir(i)).is_ok_and(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "codex")))
        };
        let until = Instant::now() + Duration::from_secs(60);
        while !(0..3).all(has_checkpoint) {
            assert!(Instant::now() < until, "the members never checkpointed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let removed = (p + 1) % 3;
        // The new member starts from the first configuration, which it is not in: inactive
        // until a Join of the new configuration brings it in.
        c.spawn(3, true);
        let keep: Vec<usize> = (0..3).filter(|&i| i != removed).chain([3]).collect();
        let members = keep.iter().map(|&i| format!("{}={}", i + 1, c.base + 3 * i as u16)).collect::<Vec<_>>().join(",");
        let mut conn = Conn::connect(c.client(p)).await.expect("connect");
        assert_eq!(conn.change_configuration(&members).await.expect("change"), Status::Ok);
        c.kill9(removed);
        let more = LoadSpec { start: 1000, requests: Some(500), ..spec.clone() };
        let addrs: Vec<_> = keep.iter().map(|&i| c.client(i)).collect();
        let extra = client::load(addrs, more.clone(), Arc::new(Progress::default())).await;
        assert_eq!(extra.acked.len(), 500, "the new configuration takes writes");
        let all: Vec<u64> = acked.into_iter().chain(extra.acked).collect();
        verify(&c, &keep, &all, &spec).await;
        // Healed from a checkpoint: its first log (started empty) never got the early votes;
        // its votes start in a log opened after the checkpoint it loaded.
        let first_log = rsl_engine::format::log::read_log_file(&c.data_dir(3).join("0.log")).expect("0.log");
        assert!(
            first_log.records.iter().all(|r| r.message.kind() != rsl_engine::format::MsgKind::Vote),
            "the new member learned votes instead"
        );
        assert!(std::fs::read_dir(c.data_dir(3)).expect("dir").flatten().any(|e| e.path().extension().is_some_and(|x| x == "codex")));
    });
}

#[test]
fn three_rings_across_three_processes() {
    rt().block_on(async {
        let c = Cluster::start(3, 0, &["--rings", "3"]);
        let mut digests = Vec::new();
        for k in 0..3u16 {
            let addrs: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, c.client(i).port() + 10 * k))).collect();
            client::wait_for_primary(&addrs, Duration::from_secs(60)).await.expect("each ring elects a primary");
            let spec = LoadSpec { start: 10_000 * u64::from(k), ..spec(300) };
            let result = client::load(addrs.clone(), spec.clone(), Arc::new(Progress::default())).await;
            assert_eq!(result.acked.len(), 300);
            digests.push(verify_at(&addrs, &result.acked, &spec).await);
        }
        digests.dedup();
        assert_eq!(digests.len(), 3, "each ring holds its own state");
    });
}
