//! `rsl-kv`: a replicated key-value store built on the RSL runtime, the example service.
//!
//! `rsl-kv cluster` starts a local 3-replica cluster (three processes of this binary), drives
//! load against it and prints throughput and latency (`--tls`: the replicas speak mutual TLS
//! with certificates made on the spot); `rsl-kv replica` is one replica.
//!
//! `rsl-kv replica` prints one line on stdout once its ports are bound (`listening on …`, one
//! for each ring); `rsl-kv cluster` waits for that line from each of its replicas.
//!
//! Exit codes of `rsl-kv replica`: 0 after SIGTERM (or SIGINT) and a clean stop, 1 if it
//! could not start (a bad flag, a port taken: the reason is on stderr), 3 if a replica failed
//! (a panicked thread, a journal I/O error such as a full disk: the reason is on stderr), 4 if
//! stopping took too long and was cut short. It
//! ends within 5 s of a signal or a failure, so a supervisor can restart it.

mod client;
mod cluster;
mod machine;
mod proto;
mod server;
mod tls;

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "A replicated key-value store on RSL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one replica.
    Replica(server::ReplicaArgs),
    /// Start a local cluster of replica processes, drive load, print throughput and latency.
    Cluster(ClusterArgs),
}

#[derive(Args, Clone)]
pub struct ClusterArgs {
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Seconds of load (0: until Ctrl-C).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256)]
    outstanding: usize,
    /// Bytes per request.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Distinct keys written (later puts overwrite).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Client connections the outstanding requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// First port: replica i uses base+3i (Paxos), +1 (learn), +2 (clients). Without it, free
    /// ports from the OS.
    #[arg(long)]
    base_port: Option<u16>,
    /// Data directory (default: a fresh temporary one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Protocol version (6 is the original's newest; 7 pipelines).
    #[arg(long, default_value_t = 6)]
    version: u16,
    /// Decrees in flight (version 7).
    #[arg(long, default_value_t = 1)]
    window: u32,
    /// Turn fdatasync off (benchmarks only: acknowledged writes can be lost).
    #[arg(long)]
    no_sync: bool,
    /// Benchmarks only: hold each Paxos packet between the replicas this many microseconds
    /// (a one-way network delay; tokio's timer rounds it up to its 1 ms tick).
    #[arg(long, default_value_t = 0)]
    net_delay_us: u32,
    /// Print the final result as one JSON line.
    #[arg(long)]
    json: bool,
    /// Mutual TLS between the replicas: a throwaway CA and one certificate per replica (its
    /// member id as CN) under `<dir>/tls`.
    #[arg(long)]
    tls: bool,
    /// What carries Paxos packets between the replicas: tcp, shm (shared-memory rings) or rdma.
    #[arg(long, value_enum, default_value_t = server::TransportArg::Tcp)]
    transport: server::TransportArg,
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RSL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Disk faults named in FAILPOINTS (`journal::fsync=return`; see rsl_engine::faults), in a
    // build with fail points: test builds, or `--features failpoints`.
    let _faults = fail::has_failpoints().then(fail::FailScenario::setup);
    let result = match Cli::parse().command {
        Command::Replica(args) => server::run(args),
        Command::Cluster(args) => cluster::run(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rsl-kv: {e}");
            ExitCode::FAILURE
        }
    }
}
