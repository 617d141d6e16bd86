//! `muster-harness`: runs seeded simulated histories and checks invariants.
//!
//! ```text
//! muster-harness --seed S --runs N [--nodes K] [--threads T]
//! ```
//! Environment: `SIM_SEED` and `SIM_RUNS` stand in for the flags. Prints one
//! summary line; on the first violation prints it with the command that
//! replays it and exits with status 1.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use muster_harness::runner::{self, Summary};
use muster_harness::scenario::Scenario;
use muster_harness::sim::Bug;

struct Args {
    seed: u64,
    runs: u64,
    nodes: Option<usize>,
    threads: usize,
    bug: Option<Bug>,
    measure: Option<usize>,
    scale: u64,
}

fn parse() -> Result<Args, String> {
    let env = |k: &str| std::env::var(k).ok();
    let num = |flag: &str, v: Option<String>| -> Result<Option<u64>, String> {
        v.map(|s| s.parse::<u64>().map_err(|_| format!("{flag} takes a whole number, got {s:?}"))).transpose()
    };
    let mut args = Args {
        seed: num("SIM_SEED", env("SIM_SEED"))?.unwrap_or(0),
        runs: num("SIM_RUNS", env("SIM_RUNS"))?.unwrap_or(1),
        nodes: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        bug: None,
        measure: None,
        scale: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--measure" {
            args.measure = Some(10_000);
            continue;
        }
        let value = it.next();
        match flag.as_str() {
            "--seed" => args.seed = num("--seed", value)?.ok_or("--seed needs a value")?,
            "--runs" => args.runs = num("--runs", value)?.ok_or("--runs needs a value")?,
            "--scale" => {
                let n = num("--scale", value)?.ok_or("--scale needs a value")?;
                if n > 100 {
                    return Err("--scale must be 0 (no large histories) to 100".into());
                }
                args.scale = n;
            }
            "--nodes" => {
                let n = num("--nodes", value)?.ok_or("--nodes needs a value")?;
                if !(1..=32).contains(&n) {
                    return Err("--nodes must be 1 to 32".into());
                }
                args.nodes = Some(n as usize);
            }
            "--threads" => {
                args.threads = num("--threads", value)?.ok_or("--threads needs a value")?.max(1) as usize
            }
            "--instances" => {
                let n = num("--instances", value)?.ok_or("--instances needs a value")?;
                args.measure = Some(n.clamp(1, 1_000_000) as usize);
            }
            "--bug" => match value.as_deref().and_then(Bug::parse) {
                Some(bug) => args.bug = Some(bug),
                None => {
                    let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                    return Err(format!("--bug takes one of {}, got {value:?}", names.join(", ")));
                }
            },
            "-h" | "--help" => {
                return Err("usage: muster-harness --seed S --runs N [--nodes K] [--threads T] [--scale X] [--bug NAME]\n       muster-harness --measure [--nodes K] [--instances N]".into());
            }
            other => return Err(format!("unknown flag {other:?}; see --help")),
        }
    }
    Ok(args)
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("muster-harness: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(instances) = args.measure {
        let nodes = args.nodes.unwrap_or(5);
        let f =
            muster_harness::measure::measure(nodes, instances, 2_000, std::time::Duration::from_millis(1));
        println!(
            "nodes={} instances={} burst={:.2}s (2000 registrations/s, 1 ms links)",
            f.nodes,
            f.instances,
            f.burst.as_secs_f64()
        );
        println!("convergence_after_last_change={:.1}ms", f.convergence.as_secs_f64() * 1e3);
        println!(
            "per_registration: delta_messages={:.3} delta_bytes={:.0} all_messages={:.3} all_bytes={:.0}",
            f.delta_messages_per_registration,
            f.delta_bytes_per_registration,
            f.messages_per_registration,
            f.bytes_per_registration
        );
        println!(
            "in_agreement: anti_entropy_bytes_per_node_round={:.1} ping_bytes_per_node_second={:.1}",
            f.anti_entropy_bytes_per_round, f.ping_bytes_per_node_second
        );
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let every = (args.runs / 20).max(1);
    let progress = |done: u64| {
        if args.runs > 1 && done % every == 0 {
            eprint!("\r{done}/{} runs, {:.0?}", args.runs, started.elapsed());
            let _ = std::io::stderr().flush();
        }
    };
    let summary: Summary = runner::run_many_scaled(
        args.seed,
        args.runs,
        args.nodes,
        args.scale,
        args.threads,
        args.bug,
        &progress,
    );
    if args.runs > 1 {
        eprintln!();
    }
    let trace = if args.runs == 1 {
        let scenario = Scenario::from_seed_scaled(args.seed, args.nodes, args.scale);
        eprintln!("{scenario:?}");
        let o = runner::run_one(scenario, args.bug);
        format!(" trace={:016x}", o.trace_hash)
    } else {
        String::new()
    };
    println!(
        "runs={} large={} (largest {} records, {} lost with their nodes) histories_per_s={:.1} steps={} messages={} bytes={} faults={} worst_convergence={:.1}s (seed {}) elapsed={:.1}s{trace}",
        summary.runs,
        summary.large_runs,
        summary.largest,
        summary.bulk_lost,
        summary.runs as f64 / started.elapsed().as_secs_f64().max(1e-9),
        summary.steps,
        summary.messages,
        summary.bytes,
        summary.faults,
        summary.worst_convergence.as_secs_f64(),
        summary.worst_convergence_seed,
        started.elapsed().as_secs_f64(),
    );
    match summary.violation {
        None => ExitCode::SUCCESS,
        Some(v) => {
            println!("VIOLATION {v}");
            let mut nodes = args.nodes.map(|n| format!(" --nodes {n}")).unwrap_or_default();
            if let Some(bug) = args.bug {
                nodes.push_str(" --bug ");
                nodes.push_str(bug.name());
            }
            println!(
                "replay (commit {}): cargo run --release -p muster-harness -- --seed {} --runs 1{nodes}",
                commit(),
                v.seed
            );
            ExitCode::FAILURE
        }
    }
}
