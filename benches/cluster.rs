//! End-to-end throughput and latency of a real cluster: three `rsl-kv` replica processes on
//! loopback, each with its own journal (fdatasync on, then off), driven by the load generator
//! of `rsl-kv cluster`. Every combination of request size (64 B, 1 KB) and requests in flight
//! (1, 64, 256) runs for `CLUSTER_BENCH_SECS` seconds (default 10) and prints one JSON line;
//! `docs/performance.md` records the figures.
//!
//! `cargo bench --bench cluster`. Environment: `CLUSTER_BENCH_SECS`, `CLUSTER_BENCH_VERSION`
//! (default 6), `CLUSTER_BENCH_WINDOW` (default 1; needs version 7 above 1), and
//! `CLUSTER_BENCH_ONLY=<size>x<outstanding>[,...]` to run a subset.

use std::process::Command;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(env!("CARGO")).args(["build", "--release", "-p", "rsl-engine", "--bin", "rsl-kv"]).current_dir(root).status();
    assert!(built.is_ok_and(|s| s.success()), "building rsl-kv failed");
    let exe = format!("{root}/target/release/rsl-kv");
    let (secs, version, window) =
        (env_or("CLUSTER_BENCH_SECS", "10"), env_or("CLUSTER_BENCH_VERSION", "6"), env_or("CLUSTER_BENCH_WINDOW", "1"));
    let only = std::env::var("CLUSTER_BENCH_ONLY").ok();
    let mut port = 23_000u16;
    for sync in [true, false] {
        for size in [64usize, 1024] {
            for outstanding in [1usize, 64, 256] {
                if only.as_deref().is_some_and(|o| !o.split(',').any(|c| c == format!("{size}x{outstanding}"))) {
                    continue;
                }
                let mut cmd = Command::new(&exe);
                cmd.args(["cluster", "--json", "--duration", &secs, "--version", &version, "--window", &window]).args([
                    "--size",
                    &size.to_string(),
                    "--outstanding",
                    &outstanding.to_string(),
                    "--base-port",
                    &port.to_string(),
                ]);
                if !sync {
                    cmd.arg("--no-sync");
                }
                port += 20;
                let out = cmd.output().expect("run rsl-kv cluster");
                print!("{}", String::from_utf8_lossy(&out.stdout));
                if !out.status.success() {
                    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
    }
}
