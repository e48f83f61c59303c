//! Helpers for the tests that run replicas inside the test process (`tests/api.rs`,
//! `tests/checkpoint_gap.rs`, ...): a ring of three on ports from the OS, and waiting on a
//! condition.
#![allow(dead_code)] // each test binary uses its own part

use bytes::Bytes;
use rsl_engine::format::{MemberSet, Node};
use rsl_engine::runtime::api::node;
use rsl_engine::runtime::RslConfig;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

/// Three members on loopback, their member set, and a configuration keeping their files in
/// `dir` with heartbeats well inside the election delay (no election while the primary lives).
pub struct Three {
    pub nodes: Vec<Node>,
    pub members: MemberSet,
    pub cfg: RslConfig,
}

pub fn three(dir: &Path) -> Three {
    let nodes = loopback(3);
    let members = MemberSet { nodes: nodes.clone(), cookie: Bytes::new() };
    Three { nodes, members, cfg: config(dir) }
}

/// `n` nodes on loopback, ids "1" to "n", on ports from the OS.
pub fn loopback(n: usize) -> Vec<Node> {
    let ports = free_pairs(n);
    (0..n).map(|i| node(&(i + 1).to_string(), Ipv4Addr::LOCALHOST, ports[i]).expect("a node")).collect()
}

/// Files in `dir`; heartbeats well inside the election delay (no election while the primary
/// lives).
pub fn config(dir: &Path) -> RslConfig {
    RslConfig {
        working_dir: dir.into(),
        election_delay_sec: 3,
        heart_beat_interval_sec: 1,
        new_leader_grace_period_sec: 3,
        ..RslConfig::default()
    }
}

/// `n` ports from the OS, each with the next one free too (a node's learn port is its Paxos
/// port + 1); all are held until every pair is found, so no two pairs overlap.
pub fn free_pairs(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a port from the OS");
        let port = first.local_addr().expect("bound").port();
        held.push(first);
        if let Some(second) = port.checked_add(1).and_then(|next| TcpListener::bind((Ipv4Addr::LOCALHOST, next)).ok()) {
            held.push(second);
            ports.push(port);
        }
    }
    ports
}

/// Polls `f` until it gives something, failing after `within`.
pub fn wait<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < until, "condition not met within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
