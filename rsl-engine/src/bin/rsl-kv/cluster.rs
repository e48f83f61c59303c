//! `rsl-kv cluster`: three replica processes on 127.0.0.1 (with `--tls`, speaking mutual TLS),
//! load against the primary, and a live progress line; then throughput and latency
//! percentiles, and whether the replicas agree.

use crate::client::{self, ms, Conn, LoadSpec, Progress};
use crate::ClusterArgs;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The replica processes; killed if still running when this is dropped.
struct Processes(Vec<Child>);

impl Processes {
    /// SIGTERM, so each replica unloads cleanly, then wait.
    fn stop(&mut self) {
        for child in &self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: ClusterArgs) -> Result<(), String> {
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("rsl-kv-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = |i: usize, k: u16| args.base_port + 3 * i as u16 + k;
    let members: Vec<String> = (0..args.replicas).map(|i| format!("{}={}", i + 1, port(i, 0))).collect();
    let ids: Vec<String> = (1..=args.replicas).map(|i| i.to_string()).collect();
    let tls = if args.tls { Some(crate::tls::throwaway(&dir, &ids)?) } else { None };
    if tls.is_some() && !args.json {
        eprintln!("mutual TLS between the replicas: a throwaway CA and their certificates in {}", dir.join("tls").display());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut procs = Processes(Vec::new());
    for i in 0..args.replicas {
        let mut cmd = Command::new(&exe);
        cmd.args(["replica", "--id", &(i + 1).to_string(), "--port", &port(i, 0).to_string(), "--client-port", &port(i, 2).to_string()])
            .args(["--members", &members.join(","), "--version", &args.version.to_string(), "--window", &args.window.to_string()])
            .args(["--net-delay-us", &args.net_delay_us.to_string()])
            .arg("--dir")
            .arg(&dir)
            .arg("--ignore-sigint")
            .stdin(Stdio::null());
        if args.no_sync {
            cmd.arg("--no-sync");
        }
        if let Some(files) = &tls {
            cmd.args(files[i].args(&ids));
        }
        procs.0.push(cmd.spawn().map_err(|e| format!("starting replica {}: {e}", i + 1))?);
    }
    let clients: Vec<SocketAddr> = (0..args.replicas).map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, port(i, 2)))).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?;
    let pids: Vec<u32> = procs.0.iter().map(Child::id).collect();
    let result = rt.block_on(drive(&args, clients, &pids));
    procs.stop();
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// CPU time the processes `pids` have used so far, in microseconds (user and system, from
/// `/proc/<pid>/stat`, whose clock ticks are Linux's fixed USER_HZ of 100 per second); 0 where
/// it cannot be read.
fn cpu_us(pids: &[u32]) -> u64 {
    let ticks = |pid: &u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    pids.iter().filter_map(ticks).sum::<u64>() * 10_000
}

async fn drive(args: &ClusterArgs, clients: Vec<SocketAddr>, pids: &[u32]) -> Result<(), String> {
    let primary = client::wait_for_primary(&clients, Duration::from_secs(60)).await.ok_or("no primary was elected within 60 s")?;
    if !args.json {
        eprintln!("{} replicas up, primary at {primary}; {} requests of {} B in flight", clients.len(), args.outstanding, args.size);
    }
    let spec = LoadSpec {
        outstanding: args.outstanding,
        connections: args.connections.min(args.outstanding),
        size: args.size,
        keys: args.keys,
        start: 0,
        requests: None,
        record_acked: false,
    };
    let progress = Arc::new(Progress::default());
    let cpu_before = cpu_us(pids);
    let load = tokio::spawn(client::load(clients.clone(), spec, progress.clone()));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let done = progress.done.load(Relaxed);
        if !args.json {
            let mut w = progress.window.lock().expect("window");
            eprint!(
                "\r[{:>4}s] {:>9} req/s   p50 {:>9}  p99 {:>9}  total {done}   ",
                started.elapsed().as_secs(),
                done - last,
                ms(w.value_at_quantile(0.5)),
                ms(w.value_at_quantile(0.99))
            );
            w.reset();
        }
        last = done;
        if args.duration > 0 && started.elapsed() >= Duration::from_secs(args.duration) {
            break;
        }
    }
    progress.stop.store(true, Relaxed);
    let result = load.await.map_err(|e| e.to_string())?;
    // The replicas' CPU per request: what a busy shared machine's load changes least.
    let cpu_per_request = cpu_us(pids).saturating_sub(cpu_before) as f64 / result.latency_us.len().max(1) as f64;
    let lat = &result.latency_us;
    let ops = lat.len() as f64 / result.elapsed.as_secs_f64();
    let agree = agreement(&clients).await;
    if args.json {
        println!(
            "{{\"requests\":{},\"seconds\":{:.3},\"ops_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"size\":{},\"outstanding\":{},\"sync\":{},\"version\":{},\"window\":{},\"net_delay_us\":{},\"replica_cpu_us_per_request\":{:.2},\"tls\":{},\"replicas_agree\":{}}}",
            lat.len(), result.elapsed.as_secs_f64(), ops, lat.value_at_quantile(0.5), lat.value_at_quantile(0.99), lat.value_at_quantile(0.999),
            args.size, args.outstanding, !args.no_sync, args.version, args.window, args.net_delay_us, cpu_per_request, args.tls, agree.is_ok()
        );
    } else {
        eprintln!();
        println!(
            "{} requests in {:.1} s: {ops:.0} req/s, {cpu_per_request:.1} µs of replica CPU each",
            lat.len(),
            result.elapsed.as_secs_f64()
        );
        println!(
            "latency p50 {}  p99 {}  p999 {}  max {}",
            ms(lat.value_at_quantile(0.5)),
            ms(lat.value_at_quantile(0.99)),
            ms(lat.value_at_quantile(0.999)),
            ms(lat.max())
        );
        match &agree {
            Ok(digest) => println!("all {} replicas hold the same state (digest {digest:016x})", clients.len()),
            Err(e) => println!("replicas disagree: {e}"),
        }
    }
    agree.map(|_| ())
}

/// Waits (up to 10 s) until every replica reports the same state digest.
async fn agreement(clients: &[SocketAddr]) -> Result<u64, String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut digests = Vec::new();
        for addr in clients {
            let status = async { Conn::connect(*addr).await?.status().await }.await;
            digests.push(status.map(|s| (s.digest, s.keys)).map_err(|e| format!("{addr}: {e}")));
        }
        let ok: Vec<_> = digests.iter().filter_map(|d| d.as_ref().ok()).collect();
        if ok.len() == clients.len() && ok.windows(2).all(|w| w[0] == w[1]) {
            return Ok(ok[0].0);
        }
        if Instant::now() > until {
            return Err(format!("{digests:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
