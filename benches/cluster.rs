//! End-to-end throughput and latency of a real cluster: three `rsl-kv` replica processes on
//! loopback, each with its own journal (fdatasync on, then off), driven by the load generator
//! of `rsl-kv cluster`. Every combination of request size (64 B, 1 KB) and requests in flight
//! (1, 64, 256) runs for `CLUSTER_BENCH_SECS` seconds (default 10) and prints one JSON line;
//! `docs/performance.md` records the figures.
//!
//! `cargo bench --bench cluster`. Environment: `CLUSTER_BENCH_SECS`, `CLUSTER_BENCH_VERSION`
//! (default 6), `CLUSTER_BENCH_WINDOW` (default 1; needs version 7 above 1), and
//! `CLUSTER_BENCH_ONLY=<size>x<outstanding>[,...]` to run a subset.
//!
//! `CLUSTER_BENCH_PIPELINE=1` compares protocol version 6 with version 7 at a window of 16
//! instead (64-byte requests, fdatasync on) at 1, 64, 256 and 1024 requests in flight, without
//! and with a one-way delay between the replicas of `CLUSTER_BENCH_DELAY_US` (default 1000; the
//! benchmark-only `--net-delay-us`), and with the delay and every request a decree of its own
//! (`--exclusive-votes`) at 16, 64 and 256. The machine is shared, so each point runs the two versions
//! back to back, alternately, `CLUSTER_BENCH_ROUNDS` times (default 2), and the summary gives
//! every figure (with the replicas' CPU time per request, which a busy machine changes less
//! than the throughput), the ratios of the sums and the load average before and after.
//!
//! `CLUSTER_BENCH_NVM=1` compares the journals (64-byte requests, version 6): the file journal
//! (fdatasync), the NVM journal emulated without msync (`--nvm-persistence process-crash`, the
//! log on `/dev/shm`) and with it (`msync`, the log on the disk of the temporary directory:
//! on tmpfs an msync writes nothing), at 1, 256 and 1024 requests in flight, each point the
//! three modes back to back, `CLUSTER_BENCH_ROUNDS` times, with the load average.
//!
//! `CLUSTER_BENCH_TARGETS=1` runs every figure issue 14 sets a target for, once each
//! (`CLUSTER_BENCH_SECS`, default 8), and prints each against its target (`targets`).
//!
//! `CLUSTER_BENCH_RINGS=<n>` (n > 1) compares one ring per process with n rings per process
//! (`rsl-kv cluster --rings n`: the three processes each host n rings, and the load generator
//! spreads the same requests in flight over the n rings' primaries), 64-byte requests,
//! fdatasync on, at `CLUSTER_BENCH_IN_FLIGHT` requests in flight (default `64,256`): 1 ring, n
//! rings with a journal writer and a network thread per ring, n rings sharing their process's
//! writer threads and network threads (`--journal-writer`, `--network`) with a connection per
//! ring, and sharing one connection per peer process too (`--peer-connections`), back to back,
//! `CLUSTER_BENCH_ROUNDS` times; with `CLUSTER_BENCH_PER_RING=1` each ring gets the in-flight count (and 16
//! connections) the one ring gets, so the aggregate is taken at each ring's saturation. It prints each run
//! (aggregate and per-ring req/s, p50/p99), the aggregate ratios n rings / 1 ring, and the
//! load average.

use std::process::Command;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// One `rsl-kv cluster --json` run: its JSON line (empty if it failed).
fn run_cluster(exe: &str, port: u16, flags: &[String]) -> String {
    let out =
        Command::new(exe).args(["cluster", "--json", "--base-port", &port.to_string()]).args(flags).output().expect("run rsl-kv cluster");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A numeric field of a JSON line (0 if absent).
fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let Some(at) = json.find(&key) else { return 0.0 };
    let rest = &json[at + key.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or(0.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(env!("CARGO")).args(["build", "--release", "-p", "rsl-engine", "--bin", "rsl-kv"]).current_dir(root).status();
    assert!(built.is_ok_and(|s| s.success()), "building rsl-kv failed");
    let exe = format!("{root}/target/release/rsl-kv");
    if std::env::var("CLUSTER_BENCH_PIPELINE").is_ok_and(|v| v == "1") {
        return pipeline(&exe);
    }
    if std::env::var("CLUSTER_BENCH_NVM").is_ok_and(|v| v == "1") {
        return journals(&exe);
    }
    if let Ok(rings) = std::env::var("CLUSTER_BENCH_RINGS") {
        return many_rings(&exe, rings.parse().expect("CLUSTER_BENCH_RINGS is a number"));
    }
    if std::env::var("CLUSTER_BENCH_TARGETS").is_ok_and(|v| v == "1") {
        return targets(&exe);
    }
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
                let mut flags: Vec<String> =
                    ["--duration", &secs, "--version", &version, "--window", &window, "--size"].into_iter().map(String::from).collect();
                flags.extend([size.to_string(), "--outstanding".into(), outstanding.to_string()]);
                if !sync {
                    flags.push("--no-sync".into());
                }
                port += 20;
                println!("{}", run_cluster(&exe, port, &flags));
            }
        }
    }
}

/// Version 6 against version 7 at a window of 16, alternately, without and with the delay.
fn pipeline(exe: &str) {
    let secs = env_or("CLUSTER_BENCH_SECS", "10");
    let delay = env_or("CLUSTER_BENCH_DELAY_US", "1000");
    let rounds: usize = env_or("CLUSTER_BENCH_ROUNDS", "2").parse().expect("CLUSTER_BENCH_ROUNDS is a number");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# {cpus} CPUs; load average before: {}", load_average());
    let mut port = 24_000u16;
    let mut rows = Vec::new();
    // Batched requests, then every request a decree of its own (`--exclusive-votes`), where
    // batching cannot hide the round trip (docs/performance.md, "Pipelining").
    let points =
        [("0", false, &[1usize, 64, 256, 1024][..]), (delay.as_str(), false, &[1, 64, 256, 1024]), (delay.as_str(), true, &[16, 64, 256])];
    for (delay_us, exclusive, in_flight) in points {
        for &outstanding in in_flight {
            // Many in flight take more client connections, as the 1024 figure did.
            let connections = if outstanding >= 1024 { "16" } else { "4" };
            let (mut v6, mut v7) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                for (version, window, into) in [("6", "1", &mut v6), ("7", "16", &mut v7)] {
                    let mut flags: Vec<String> = [
                        "--duration",
                        &secs,
                        "--version",
                        version,
                        "--window",
                        window,
                        "--size",
                        "64",
                        "--outstanding",
                        &outstanding.to_string(),
                        "--connections",
                        connections,
                        "--net-delay-us",
                        delay_us,
                    ]
                    .into_iter()
                    .map(String::from)
                    .collect();
                    if exclusive {
                        flags.push("--exclusive-votes".into());
                    }
                    port += 20;
                    let json = run_cluster(exe, port, &flags);
                    println!("{json}");
                    into.push(Run::of(&json));
                }
            }
            rows.push((delay_us, exclusive, outstanding, v6, v7));
        }
    }
    println!("# load average after: {}", load_average());
    println!("# delay_us votes in_flight | v6 req/s (p50/p99 µs, replica CPU µs/request) ... | v7 w16 the same | v7/v6 req/s, CPU/request");
    let show = |runs: &[Run]| {
        runs.iter().map(|r| format!("{:.0} ({:.0}/{:.0}, {:.1})", r.ops, r.p50, r.p99, r.cpu)).collect::<Vec<_>>().join(", ")
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    for (delay_us, exclusive, outstanding, v6, v7) in rows {
        let votes = if exclusive { "1/req" } else { "batch" };
        let sum = |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).sum::<f64>();
        let (ops, cpu) = (ratio(sum(&v7, |r| r.ops), sum(&v6, |r| r.ops)), ratio(sum(&v7, |r| r.cpu), sum(&v6, |r| r.cpu)));
        println!("# {delay_us:>6} {votes} {outstanding:>5} | {} | {} | {ops:.2}, {cpu:.2}", show(&v6), show(&v7));
    }
}

/// The file journal against the NVM journal's two emulations, alternately.
fn journals(exe: &str) {
    let secs = env_or("CLUSTER_BENCH_SECS", "10");
    let rounds: usize = env_or("CLUSTER_BENCH_ROUNDS", "2").parse().expect("CLUSTER_BENCH_ROUNDS is a number");
    let name = format!("rsl-bench-nvm-{}", std::process::id());
    let (shm, disk) = (std::path::Path::new("/dev/shm").join(&name), std::env::temp_dir().join(&name));
    println!("# load average before: {}", load_average());
    let modes = ["file", "process-crash", "msync"];
    let mut port = 25_000u16;
    let mut rows = Vec::new();
    for outstanding in [1usize, 256, 1024] {
        let connections = match outstanding {
            1 => "1",
            1024 => "16",
            _ => "4",
        };
        let mut runs: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (mode, into) in modes.iter().zip(runs.iter_mut()) {
                let mut flags: Vec<String> = ["--duration", &secs, "--size", "64", "--outstanding", &outstanding.to_string()]
                    .into_iter()
                    .map(String::from)
                    .collect();
                flags.extend(["--connections".into(), connections.into()]);
                if *mode != "file" {
                    let dir = if *mode == "msync" { &disk } else { &shm };
                    let _ = std::fs::remove_dir_all(dir);
                    std::fs::create_dir_all(dir).expect("a directory for the persistent logs");
                    flags.extend(["--nvm".into(), dir.display().to_string(), "--nvm-persistence".into(), mode.to_string()]);
                }
                port += 20;
                let json = run_cluster(exe, port, &flags);
                println!("{json}");
                into.push(Run::of(&json));
            }
        }
        rows.push((outstanding, runs));
    }
    let _ = std::fs::remove_dir_all(&shm);
    let _ = std::fs::remove_dir_all(&disk);
    println!("# load average after: {}", load_average());
    println!("# in_flight | file: req/s (p50/p99 µs, replica CPU µs/request) ... | nvm process-crash | nvm msync");
    for (outstanding, runs) in rows {
        let show = |runs: &[Run]| {
            runs.iter().map(|r| format!("{:.0} ({:.0}/{:.0}, {:.1})", r.ops, r.p50, r.p99, r.cpu)).collect::<Vec<_>>().join(", ")
        };
        println!("# {outstanding:>5} | {} | {} | {}", show(&runs[0]), show(&runs[1]), show(&runs[2]));
    }
}

/// One ring per process against `rings` rings per process, alternately: the same requests in
/// flight in total.
fn many_rings(exe: &str, rings: u16) {
    assert!(rings > 1, "CLUSTER_BENCH_RINGS: compare 1 ring with more");
    let secs = env_or("CLUSTER_BENCH_SECS", "10");
    let rounds: usize = env_or("CLUSTER_BENCH_ROUNDS", "2").parse().expect("CLUSTER_BENCH_ROUNDS is a number");
    let in_flight = env_or("CLUSTER_BENCH_IN_FLIGHT", "64,256");
    // With CLUSTER_BENCH_PER_RING=1 every ring gets the in-flight count (and 16 connections),
    // as the one ring does: the aggregate at each ring's saturation.
    let per_ring = std::env::var("CLUSTER_BENCH_PER_RING").is_ok_and(|v| v == "1");
    let flags = |n: u16, sharing: &str, connections: &str| {
        ["--rings", &n.to_string(), "--journal-writer", sharing, "--network", sharing, "--peer-connections", connections]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let configs: Vec<(String, Vec<String>)> = vec![
        ("1 ring".into(), flags(1, "per-ring", "per-ring")),
        (format!("{rings} rings, a writer and a network thread per ring"), flags(rings, "per-ring", "per-ring")),
        (format!("{rings} rings, shared writers and network threads, a connection per ring"), flags(rings, "shared", "per-ring")),
        (format!("{rings} rings, shared writers, network threads and one connection per peer process"), flags(rings, "shared", "shared")),
    ];
    println!("# load average before: {}", load_average());
    let mut port = 26_000u16;
    let mut rows = Vec::new();
    for outstanding in in_flight.split(',').map(|n| n.trim().to_string()) {
        let mut runs: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for ((_, extra), into) in configs.iter().zip(runs.iter_mut()) {
                let n: usize = extra[1].parse().expect("--rings n");
                let scale = if per_ring { n } else { 1 };
                let total: usize = outstanding.parse().expect("CLUSTER_BENCH_IN_FLIGHT: numbers");
                let (total, conns) = ((total * scale).to_string(), (16 * scale).min(1024).to_string());
                let mut flags: Vec<String> =
                    ["--duration", &secs, "--size", "64", "--outstanding", &total].into_iter().map(String::from).collect();
                if per_ring {
                    flags.extend(["--connections".to_string(), conns]);
                }
                flags.extend(extra.iter().cloned());
                // Each run's ports: 10 per ring.
                port += 10 * rings + 10;
                let json = run_cluster(exe, port, &flags);
                println!("{json}");
                into.push(Run::of(&json));
            }
        }
        rows.push((outstanding, runs));
    }
    println!("# load average after: {}", load_average());
    let names: Vec<&str> = configs.iter().map(|(name, _)| name.as_str()).collect();
    println!(
        "# in_flight | per configuration: aggregate req/s (p50/p99 µs, replica CPU µs/request) [per ring req/s] ... | ratios to 1 ring"
    );
    println!("# configurations: {}", names.join(" | "));
    for (outstanding, runs) in rows {
        let show = |runs: &[Run]| runs.iter().map(Run::show).collect::<Vec<_>>().join(", ");
        let total = |runs: &[Run]| runs.iter().map(|r| r.ops).sum::<f64>();
        let ratios: Vec<String> = runs[1..].iter().map(|r| format!("{:.2}", total(r) / total(&runs[0]).max(1.0))).collect();
        let shown: Vec<String> = runs.iter().map(|r| show(r)).collect();
        println!("# {outstanding:>5} | {} | {}", shown.join(" | "), ratios.join(", "));
    }
}

/// Every figure issue 14 sets a target for, in one run, each against its target: 64 B at 1,
/// 256 and 1024 in flight, 1 KB at 256, version 7 (window 16) against version 6 at 1, 64, 256
/// and 1024 in flight, with 1 ms of one-way delay (batched, and a decree per request), and 8
/// rings in a process against 1.
fn targets(exe: &str) {
    let secs = env_or("CLUSTER_BENCH_SECS", "8");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# {cpus} CPUs; load average before: {}", load_average());
    let mut port = 28_000u16;
    let mut run = |extra: &[&str]| {
        let mut flags: Vec<String> = ["--duration", &secs].into_iter().map(String::from).collect();
        flags.extend(extra.iter().map(|f| f.to_string()));
        port += 100;
        let json = run_cluster(exe, port, &flags);
        println!("{json}");
        Run::of(&json)
    };
    let mut verdicts = Vec::new();
    let mut check =
        |what: String, figure: String, met: bool| verdicts.push(format!("# {} {what}: {figure}", if met { "met    " } else { "NOT MET" }));
    let one = run(&["--outstanding", "1", "--connections", "1"]);
    check("64 B, 1 in flight: p50 <= 250 us".into(), format!("p50 {:.0} us", one.p50), one.p50 <= 250.0);
    let r256 = run(&["--outstanding", "256"]);
    check("64 B, 256 in flight: >= 250,000/s".into(), format!("{:.0}/s", r256.ops), r256.ops >= 250_000.0);
    let r1024 = run(&["--outstanding", "1024", "--connections", "16"]);
    let met = r1024.ops >= 500_000.0 && r1024.p99 <= 5_000.0;
    check("64 B, 1024 in flight: >= 500,000/s at p99 <= 5 ms".into(), format!("{:.0}/s, p99 {:.0} us", r1024.ops, r1024.p99), met);
    let kb = run(&["--size", "1024", "--outstanding", "256"]);
    check("1 KB, 256 in flight: >= 150,000/s".into(), format!("{:.0}/s", kb.ops), kb.ops >= 150_000.0);
    for (n, conns) in [("1", "1"), ("64", "4"), ("256", "4"), ("1024", "16")] {
        let v6 = run(&["--outstanding", n, "--connections", conns]);
        let v7 = run(&["--outstanding", n, "--connections", conns, "--version", "7", "--window", "16"]);
        let figure =
            format!("v6 {:.0}/s ({:.1} us CPU/req), v7 {:.0}/s ({:.1}): {:.2}", v6.ops, v6.cpu, v7.ops, v7.cpu, v7.ops / v6.ops.max(1.0));
        check(format!("v7 >= v6 at {n} in flight"), figure, v7.ops >= v6.ops);
    }
    for (votes, n, extra) in [("batched", "256", None), ("a decree per request", "64", Some("--exclusive-votes"))] {
        let mut flags = vec!["--outstanding", n, "--net-delay-us", "1000"];
        flags.extend(extra);
        let v6 = run(&flags);
        flags.extend(["--version", "7", "--window", "16"]);
        let v7 = run(&flags);
        let ratio = v7.ops / v6.ops.max(1.0);
        check(
            format!("1 ms delay, {votes}, {n} in flight: v7 >= 5 x v6"),
            format!("v6 {:.0}/s, v7 {:.0}/s: {ratio:.2}", v6.ops, v7.ops),
            ratio >= 5.0,
        );
    }
    // Aggregate throughput: each of the 8 rings loaded as the one ring is (its saturation).
    // The same total in flight spread over 8 rings is printed too: each ring's batches are then
    // 8 times smaller, and everything paid per batch is paid 8 times.
    let one_ring = run(&["--outstanding", "1024", "--connections", "16", "--rings", "1"]);
    let eight = run(&["--outstanding", "8192", "--connections", "128", "--rings", "8"]);
    let ratio = eight.ops / one_ring.ops.max(1.0);
    check(
        "8 rings in a process, each as loaded as 1 ring (1024 in flight each): aggregate >= 1 ring".into(),
        format!("{:.0}/s (p99 {:.0} us) against {:.0}/s: {ratio:.2}", eight.ops, eight.p99, one_ring.ops),
        ratio >= 1.0,
    );
    let spread = run(&["--outstanding", "1024", "--connections", "16", "--rings", "8"]);
    println!("# (8 rings sharing 1024 in flight: {:.0}/s, {:.2} of 1 ring)", spread.ops, spread.ops / one_ring.ops.max(1.0));
    println!("# load average after: {}", load_average());
    for verdict in verdicts {
        println!("{verdict}");
    }
}

/// One `rsl-kv cluster` run's figures.
struct Run {
    ops: f64,
    p50: f64,
    p99: f64,
    /// The three replicas' CPU time per request, in µs: a busy machine changes it less than
    /// the throughput.
    cpu: f64,
    /// Each ring's req/s (`--rings`).
    per_ring: Vec<f64>,
}

impl Run {
    /// Aggregate req/s (p50/p99 µs, CPU µs/request), then each ring's req/s if several.
    fn show(&self) -> String {
        let mut s = format!("{:.0} ({:.0}/{:.0}, {:.1})", self.ops, self.p50, self.p99, self.cpu);
        if self.per_ring.len() > 1 {
            let each: Vec<String> = self.per_ring.iter().map(|o| format!("{o:.0}")).collect();
            s += &format!(" [{}]", each.join(" "));
        }
        s
    }

    /// The figures of one `rsl-kv cluster --json` line.
    fn of(json: &str) -> Run {
        Run {
            ops: field(json, "ops_per_sec"),
            p50: field(json, "p50_us"),
            p99: field(json, "p99_us"),
            cpu: field(json, "replica_cpu_us_per_request"),
            per_ring: json.split_once("\"per_ring\":").map_or_else(Vec::new, |(_, rings)| {
                rings.split('}').filter(|r| r.contains("ops_per_sec")).map(|r| field(r, "ops_per_sec")).collect()
            }),
        }
    }
}
