//! What mutual TLS costs end to end: the same three-replica `rsl-kv` cluster as
//! `benches/cluster.rs`, run plain and with `--tls` (every Paxos and learn connection mutually
//! authenticated, a throwaway CA) back to back at 1, 256 and 1024 requests in flight, 64-byte
//! requests, fdatasync on. Each pair runs in one process of this bench, one right after the
//! other, so the ratio compares like with like on a VM whose speed drifts; the plain run goes
//! first in odd rounds and second in even ones.
//!
//! `cargo bench --bench tls`. Environment: `TLS_BENCH_SECS` (default 10), `TLS_BENCH_ROUNDS`
//! (default 1), `TLS_BENCH_VERSION` (default 6), `TLS_BENCH_WINDOW` (default 1).

use std::collections::HashMap;
use std::process::Command;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// One run's figures, from the JSON line `rsl-kv cluster --json` prints.
#[derive(Default, Clone, Copy)]
struct Figures {
    ops: f64,
    p50_us: f64,
    p99_us: f64,
}

fn field(line: &str, name: &str) -> f64 {
    let at = line.find(&format!("\"{name}\":")).map(|i| i + name.len() + 3);
    at.and_then(|i| line[i..].split([',', '}']).next()).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn run(exe: &str, tls: bool, outstanding: usize, port: u16) -> Figures {
    let (secs, version, window) = (env_or("TLS_BENCH_SECS", "10"), env_or("TLS_BENCH_VERSION", "6"), env_or("TLS_BENCH_WINDOW", "1"));
    let mut cmd = Command::new(exe);
    cmd.args(["cluster", "--json", "--duration", &secs, "--version", &version, "--window", &window, "--size", "64"]).args([
        "--outstanding",
        &outstanding.to_string(),
        "--base-port",
        &port.to_string(),
    ]);
    if tls {
        cmd.arg("--tls");
    }
    let out = cmd.output().expect("run rsl-kv cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("rsl-kv cluster failed (tls {tls}, {outstanding} in flight):\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let line = stdout.lines().last().unwrap_or_default();
    Figures { ops: field(line, "ops_per_sec"), p50_us: field(line, "p50_us"), p99_us: field(line, "p99_us") }
}

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(env!("CARGO")).args(["build", "--release", "-p", "rsl-engine", "--bin", "rsl-kv"]).current_dir(root).status();
    assert!(built.is_ok_and(|s| s.success()), "building rsl-kv failed");
    let exe = format!("{root}/target/release/rsl-kv");
    let rounds: usize = env_or("TLS_BENCH_ROUNDS", "1").parse().expect("TLS_BENCH_ROUNDS is a number");
    let mut port = 24_000u16;
    let mut best: HashMap<(usize, bool), Figures> = HashMap::new();
    for round in 0..rounds {
        for outstanding in [1usize, 256, 1024] {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for tls in order {
                let f = run(&exe, tls, outstanding, port);
                port += 20;
                let kept = best.entry((outstanding, tls)).or_default();
                if f.ops > kept.ops {
                    *kept = f;
                }
            }
        }
    }
    println!("| in flight | plain req/s | TLS req/s | TLS/plain | plain p50 | TLS p50 | plain p99 | TLS p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    for outstanding in [1usize, 256, 1024] {
        let (p, t) = (best[&(outstanding, false)], best[&(outstanding, true)]);
        let ms = |us: f64| format!("{:.2} ms", us / 1000.0);
        println!(
            "| {outstanding} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
            p.ops,
            t.ops,
            t.ops / p.ops,
            ms(p.p50_us),
            ms(t.p50_us),
            ms(p.p99_us),
            ms(t.p99_us)
        );
    }
}
