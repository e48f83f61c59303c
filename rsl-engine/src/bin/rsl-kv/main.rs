//! `rsl-kv`: a replicated key-value store built on the RSL runtime, the example service.
//!
//! `rsl-kv cluster` starts a local 3-replica cluster (three processes of this binary), drives
//! load against it and prints throughput and latency (`--tls`: the replicas speak mutual TLS
//! with certificates made on the spot); `rsl-kv replica` is one replica (`--metrics ADDR`:
//! its rings' Prometheus text at `http://ADDR/metrics`). `rsl-kv put`, `get` and `status` are
//! for operators: a write, a read, and each ring's primary and replicas' decree, lag and
//! connections (docs/operations.md).
//!
//! Logs go to stderr, filtered by `RSL_LOG` (`tracing` filter directives, default `warn`), as
//! text (colours only on a terminal without `NO_COLOR`) or, with `RSL_LOG_FORMAT=json`, one
//! JSON object a line; each line names its ring and member.
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
mod ops;
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
    /// Write KEY = VALUE through the primary, trying each server until one takes it.
    Put(ops::PutArgs),
    /// Print KEY's value as the first server that answers has it.
    Get(ops::GetArgs),
    /// Print each ring's primary and every replica's decree, lag and connections, from the
    /// replicas' metrics endpoints.
    Status(ops::StatusArgs),
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
    /// Turn fdatasync off (benchmarks only: acknowledged writes can be lost). Not with `--nvm`.
    #[arg(long, conflicts_with = "nvm")]
    no_sync: bool,
    /// Benchmarks only: hold each Paxos packet between the replicas this many microseconds
    /// (a one-way network delay; tokio's timer rounds it up to its 1 ms tick).
    #[arg(long, default_value_t = 0)]
    net_delay_us: u32,
    /// Every put gets a decree of its own (`replicate_request_exclusive_vote`), never batched.
    #[arg(long)]
    exclusive_votes: bool,
    /// Print the final result as one JSON line.
    #[arg(long)]
    json: bool,
    /// Mutual TLS between the replicas: a throwaway CA and one certificate per replica (its
    /// member id as CN) under `<dir>/tls`.
    #[arg(long)]
    tls: bool,
    /// The NVM journal: replica i's persistent log is `<DIR>/<i>.nvm` (on /dev/shm for the
    /// emulation), `--nvm-size` MiB each.
    #[arg(long, value_name = "DIR")]
    nvm: Option<std::path::PathBuf>,
    #[arg(long, value_name = "MB", default_value_t = 64)]
    nvm_size: u32,
    #[arg(long, value_enum, default_value_t = server::NvmPersistence::ProcessCrash)]
    nvm_persistence: server::NvmPersistence,
    /// What carries Paxos packets between the replicas: tcp, shm (shared-memory rings) or rdma.
    #[arg(long, value_enum, default_value_t = server::TransportArg::Tcp)]
    transport: server::TransportArg,
    /// Independent rings in each replica process (needs `--base-port`; ring k's ports are
    /// shifted by 10k): the requests in flight are spread over the rings' primaries.
    #[arg(long, default_value_t = 1)]
    rings: u16,
    /// With several rings: journal writer threads the rings share (`shared`) or one per ring.
    #[arg(long, value_enum, default_value_t = server::Sharing::Shared)]
    journal_writer: server::Sharing,
    /// With several rings: network threads the rings share (`shared`) or one per ring.
    #[arg(long, value_enum, default_value_t = server::Sharing::Shared)]
    network: server::Sharing,
    /// With shared network threads: one connection per peer process (`shared`) or one per ring.
    #[arg(long, value_enum, default_value_t = server::Sharing::Shared)]
    peer_connections: server::Sharing,
}

/// Logs to stderr as `RSL_LOG` filters them, in the format `RSL_LOG_FORMAT` names.
fn init_logging() -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = match std::env::var("RSL_LOG") {
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| format!("RSL_LOG={spec}: {e}"))?,
        Err(_) => "warn".into(),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("RSL_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        Ok("text") | Err(_) => logs.with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()).init(),
        Ok(other) => return Err(format!("RSL_LOG_FORMAT={other}: want text or json")),
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = init_logging() {
        eprintln!("rsl-kv: {e}");
        return ExitCode::FAILURE;
    }
    // Disk faults named in FAILPOINTS (`journal::fsync=return`; see rsl_engine::faults), in a
    // build with fail points: test builds, or `--features failpoints`.
    let _faults = fail::has_failpoints().then(fail::FailScenario::setup);
    let result = match Cli::parse().command {
        Command::Replica(args) => server::run(args),
        Command::Cluster(args) => cluster::run(args).map(|()| 0),
        Command::Put(args) => ops::put(args),
        Command::Get(args) => ops::get(args),
        Command::Status(args) => ops::status(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rsl-kv: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn no_sync_is_refused_with_the_nvm_journal() {
        let replica = ["rsl-kv", "replica", "--id", "1", "--port", "20000", "--client-port", "20010", "--dir", "d"];
        assert!(Cli::try_parse_from(replica.iter().chain(&["--no-sync"])).is_ok());
        for cmd in [&replica[..], &["rsl-kv", "cluster"]] {
            let err = Cli::try_parse_from(cmd.iter().chain(&["--no-sync", "--nvm", "x"])).err().expect("refused");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{err}");
        }
    }
}
