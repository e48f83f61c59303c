//! `rsl-sim`: runs the deterministic simulator over many seeds (a soak), or replays one.

use clap::Parser;
use rsl_engine::sim::{run_seed, SimConfig};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Run the RSL core in the deterministic simulator")]
struct Cli {
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Replicas per ring; 0 alternates 3 and 5 (every other pair of 4 seeds, so that both
    /// sizes run with and without reconfigurations, which even seeds have).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Decrees in flight (protocol version 7 above 1); 0 alternates 1 and 16.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Inject forged messages with extreme field values during the faults (safety is then not
    /// checked; no panic and progress after the heal are).
    #[arg(long)]
    adversary: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = Instant::now();
    let (mut failed, mut decrees, mut acked) = (0u64, 0usize, 0usize);
    let mut events = [0usize; 7];
    let (mut reconfigurations, mut injected, mut rejected, mut spilled) = (0u64, 0usize, 0usize, 0usize);
    for seed in cli.seed..cli.seed + cli.seeds {
        let replicas = if cli.replicas == 0 { 3 + 2 * (seed / 4 % 2) as usize } else { cli.replicas };
        let window = if cli.window == 0 { [1, 16][(seed / 2 % 2) as usize] } else { cli.window };
        match run_seed(SimConfig::new(seed, replicas).with_window(window).with_adversary(cli.adversary)) {
            Ok(report) => {
                decrees += report.decrees;
                (injected, rejected) = (injected + report.injected, rejected + report.rejected);
                spilled += report.spilled;
                reconfigurations += report.configurations.saturating_sub(1) as u64;
                acked += report.acknowledged;
                for (total, n) in events.iter_mut().zip([
                    report.elections,
                    report.relinquished,
                    report.crashes,
                    report.learned,
                    report.checkpoints_saved,
                    report.checkpoints_loaded,
                    report.checkpoints_copied,
                ]) {
                    *total += n;
                }
            }
            Err(why) => {
                failed += 1;
                eprintln!("seed {seed} ({replicas} replicas, window {window}) FAILED:\n  {why}");
            }
        }
    }
    let [elections, relinquished, crashes, learned, saved, loaded, copied] = events;
    println!(
        "{} seeds, {failed} failed, {decrees} decrees, {acked} acknowledged requests, {elections} elections, \
         {relinquished} relinquishes, {crashes} crashes, {learned} vote fetches, {saved} checkpoints saved, \
         {loaded} loaded to catch up, {copied} copied by primaries, {reconfigurations} reconfigurations, \
         {spilled} decrees spilled to the log, \
         {injected} forged messages injected, {rejected} messages or records rejected, {:.1}s",
        cli.seeds,
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
