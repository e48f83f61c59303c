//! The persistent log's append latency and throughput in the two emulation modes (page cache
//! only; msync), on tmpfs (`/dev/shm`) and on the file system of `$TMPDIR` (ext4 here), for
//! 64-byte and 1 KiB records (docs/nvm.md).
//!
//! `latency`: one append then `persist`, timed each (p50/p99/p99.9). `throughput`: batches of
//! 64 appends per `persist` (group commit), records per second. A 64 MiB ring; when it is full
//! the head is advanced to the newest record (an instant drainer), which the figures include.
//! Ratios are to the page-cache mode on tmpfs in the same run. A last row per place times what
//! the file journal pays per sync: a 64-byte write and `fdatasync`.
//!
//! `nice -n 10 cargo bench --bench nvm` (`NVM_BENCH_SECS` per case, default 1).

use rsl_engine::runtime::nvm::{self, AppendError, FileMemory, Persistence, PmemLog};
use std::path::Path;
use std::time::{Duration, Instant};

const RING: u64 = 64 << 20;
const BATCH: usize = 64;

fn append(log: &mut PmemLog<FileMemory>, payload: &[u8]) {
    if let Err(AppendError::Full { .. }) = log.append(payload) {
        let newest = log.durable_tail();
        log.advance_head(newest).expect("head advances");
        log.append(payload).expect("an emptied ring takes a record");
    }
}

/// Per-append+persist latencies in nanoseconds, sorted.
fn latency(log: &mut PmemLog<FileMemory>, payload: &[u8], budget: Duration) -> Vec<u64> {
    let start = Instant::now();
    let mut samples = Vec::with_capacity(1 << 20);
    while start.elapsed() < budget && samples.len() < 1 << 20 {
        let t = Instant::now();
        append(log, payload);
        log.persist().expect("persist");
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    samples
}

/// Records per second in batches of [`BATCH`] per persist.
fn throughput(log: &mut PmemLog<FileMemory>, payload: &[u8], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < budget {
        for _ in 0..BATCH {
            append(log, payload);
        }
        log.persist().expect("persist");
        records += BATCH as u64;
    }
    records as f64 / start.elapsed().as_secs_f64()
}

/// The file journal's unit of durability for comparison: a 64-byte write and `fdatasync`.
fn fdatasync_latency(dir: &Path, budget: Duration) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(dir.join("fdatasync")).expect("file created");
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < budget && samples.len() < 1 << 20 {
        let t = Instant::now();
        file.write_all_at(&[0x5A; 64], 64 * samples.len() as u64).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    samples
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn main() {
    let secs = std::env::var("NVM_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let budget = Duration::from_secs_f64(secs);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpus} CPUs, load average {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let tmp = std::env::temp_dir();
    let places = [("/dev/shm", Path::new("/dev/shm")), ("$TMPDIR", tmp.as_path())];
    let modes = [("page cache", Persistence::ProcessCrash), ("msync", Persistence::Msync)];
    println!(
        "{:<10} {:<11} {:>6} {:>9} {:>9} {:>9} {:>13} {:>7}",
        "place", "mode", "record", "p50 µs", "p99 µs", "p99.9 µs", "records/s", "ratio"
    );
    let mut baselines = [None; 2];
    for (place, dir) in places {
        let dir = tempfile::tempdir_in(dir).expect("a temporary directory");
        for (mode, persistence) in modes {
            for size in [64usize, 1024] {
                let path = dir.path().join(format!("{mode}-{size}.nvm").replace(' ', "-"));
                let mut log = nvm::create(&path, RING, persistence).expect("log created");
                let payload = vec![0xA5u8; size];
                let lat = latency(&mut log, &payload, budget);
                let rate = throughput(&mut log, &payload, budget);
                let base = *baselines[usize::from(size == 1024)].get_or_insert(rate);
                println!(
                    "{place:<10} {mode:<11} {size:>6} {:>9.2} {:>9.2} {:>9.2} {rate:>13.0} {:>7.3}",
                    percentile(&lat, 0.5),
                    percentile(&lat, 0.99),
                    percentile(&lat, 0.999),
                    rate / base
                );
            }
        }
        let lat = fdatasync_latency(dir.path(), budget);
        let (p50, p99, p999) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 0.999));
        println!("{place:<10} {:<11} {:>6} {p50:>9.2} {p99:>9.2} {p999:>9.2} {:>13} {:>7}", "fdatasync", 64, "-", "-");
    }
}
