//! Helpers for the tests that run replicas inside the test process (`tests/api.rs`,
//! `tests/checkpoint_gap.rs`): ports from the OS and waiting on a condition.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

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
