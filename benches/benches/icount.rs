//! Noise-free figures: instructions and simulated cache misses per
//! operation, counted by Valgrind's cachegrind (the approach of rustls
//! `ci-bench`). Wall-clock figures on a shared two-core machine move by tens
//! of percent with the neighbours' load; instruction counts do not.
//!
//! Run: `cargo bench -p muster-benches --bench icount`. The binary re-runs
//! itself under `valgrind --tool=cachegrind` twice per operation: once with
//! the setup only and once with setup plus the measured operations; the
//! difference, divided by the operation count, is the cost per operation.
//! Without Valgrind it says so and exits. Under `cargo test --benches` (no
//! `--bench` argument) it runs every operation once natively, as a check.
//!
//! Instruction counts are blind to memory latency: an operation whose cost is
//! cache misses (a heartbeat in a large registry) is better judged by the
//! last-level misses printed next to them than by its instructions.

use std::process::Command;
use std::time::Duration;

use muster_benches::{
    drain, instance_keys, instance_records, peer_id, populate, register_request, service_key, standalone,
    with_peer,
};
use muster_core::{PeerMessage, RegisterRequest, Selector, Timestamp};

/// Services the instances are spread over.
const SERVICES: usize = 100;

/// One measured operation: a name, how many operations the measured part
/// performs, and the program (setup, then the operations unless
/// `setup_only`).
struct Op {
    name: &'static str,
    ops: usize,
    run: fn(setup_only: bool),
}

const OPS: &[Op] = &[
    Op { name: "register (fresh, 10k into an empty node)", ops: 10_000, run: register },
    Op { name: "heartbeat (single, 10k of 100k instances)", ops: 10_000, run: heartbeat },
    Op { name: "query (all, service of 1000, cached view)", ops: 1_000, run: query },
    Op { name: "handle_timeout (mark 10k unhealthy), per instance", ops: 10_000, run: handle_timeout },
    Op { name: "merge (Delta of 10k new records), per record", ops: 10_000, run: merge },
    Op { name: "digest root (10k-record store)", ops: 1_000, run: digest_root },
];

/// Keeps a value from being optimised away and from being dropped: its drop
/// would be counted in one run of a pair and not the other.
fn keep<T>(value: T) {
    std::mem::forget(std::hint::black_box(value));
}

fn register(setup_only: bool) {
    let now = Timestamp::from_millis(1_000);
    let mut node = standalone(10_000);
    let requests: Vec<RegisterRequest> = (0..10_000).map(|i| register_request(SERVICES, i)).collect();
    if setup_only {
        return keep((node, requests));
    }
    for req in requests {
        node.register(now, req).expect("registration accepted");
        drain(&mut node);
    }
    keep(node);
}

fn heartbeat(setup_only: bool) {
    let n = 100_000;
    let mut node = standalone(n);
    populate(&mut node, SERVICES, n, Timestamp::ZERO);
    let keys = instance_keys(SERVICES, n);
    if setup_only {
        return keep((node, keys));
    }
    let now = Timestamp::from_millis(1_000);
    // Every tenth key: 10k beats spread over the whole registry.
    for key in keys.iter().step_by(10) {
        node.heartbeat(now, key).expect("beat accepted");
        drain(&mut node);
    }
    keep((node, keys));
}

fn query(setup_only: bool) {
    let now = Timestamp::from_millis(1_000);
    let mut node = standalone(1_000);
    populate(&mut node, 1, 1_000, now);
    let key = service_key(0);
    let all = Selector::default();
    // The first query builds the view: setup.
    keep(node.query(now, &key, &all).expect("query answered"));
    if setup_only {
        return keep(node);
    }
    for _ in 0..1_000 {
        keep(node.query(now, &key, &all).expect("query answered"));
    }
    keep(node);
}

fn handle_timeout(setup_only: bool) {
    let n = 10_000;
    let mut node = standalone(n);
    populate(&mut node, SERVICES, n, Timestamp::ZERO);
    for s in 1..15 {
        node.handle_timeout(Timestamp::ZERO + Duration::from_secs(s));
        drain(&mut node);
    }
    if setup_only {
        return keep(node);
    }
    node.handle_timeout(Timestamp::ZERO + Duration::from_secs(15));
    drain(&mut node);
    assert_eq!(node.stats().registry.healthy_instances, 0);
    keep(node);
}

fn merge(setup_only: bool) {
    let k = 10_000;
    let now = Timestamp::from_millis(1_000);
    let mut node = with_peer(k);
    let records = instance_records(SERVICES, k, &peer_id(), 500);
    if setup_only {
        return keep((node, records));
    }
    node.handle_message(now, &peer_id(), PeerMessage::Delta { records }).expect("delta accepted");
    drain(&mut node);
    keep(node);
}

fn digest_root(setup_only: bool) {
    let mut node = standalone(10_000);
    populate(&mut node, SERVICES, 10_000, Timestamp::from_millis(1_000));
    if setup_only {
        return keep(node);
    }
    for _ in 0..1_000 {
        keep(std::hint::black_box(&node).digest().root());
    }
    keep(node);
}

/// Counts of one cachegrind run.
#[derive(Clone, Copy, Default)]
struct Counts {
    instructions: u64,
    d1_misses: u64,
    ll_misses: u64,
}

/// The first number after `label` in cachegrind's summary.
fn summary_number(stderr: &str, label: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains(label))?;
    let after = line.split(label).nth(1)?;
    let digits: String = after.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == ',').collect();
    digits.replace(',', "").parse().ok()
}

fn cachegrind(op: usize, setup_only: bool) -> Result<Counts, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=cachegrind", "--cache-sim=yes", "--cachegrind-out-file=/dev/null"])
        .arg(me)
        .args(["--run-op", &op.to_string()]);
    if setup_only {
        cmd.arg("--setup-only");
    }
    let out = cmd.output().map_err(|e| format!("valgrind: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("valgrind run failed: {stderr}"));
    }
    Ok(Counts {
        instructions: summary_number(&stderr, "I   refs:").ok_or("no I refs in cachegrind output")?,
        d1_misses: summary_number(&stderr, "D1  misses:").ok_or("no D1 misses in cachegrind output")?,
        ll_misses: summary_number(&stderr, "LLd misses:").ok_or("no LLd misses in cachegrind output")?,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: run one program (under cachegrind).
    if let Some(i) = args.iter().position(|a| a == "--run-op") {
        let op: usize = args.get(i + 1).and_then(|s| s.parse().ok()).expect("--run-op takes an index");
        (OPS[op].run)(args.iter().any(|a| a == "--setup-only"));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches`: check that every program runs.
        for op in OPS {
            (op.run)(false);
        }
        println!("icount: {} programs ran (counts are taken under cargo bench)", OPS.len());
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("icount: valgrind not found; skipped");
        return;
    }
    println!("icount: per operation, by cachegrind (setup subtracted; simulated caches)");
    println!("  {:<52} {:>12} {:>10} {:>10}", "operation", "instructions", "D1 misses", "LL misses");
    for (i, op) in OPS.iter().enumerate() {
        let counts = cachegrind(i, true).and_then(|base| Ok((base, cachegrind(i, false)?)));
        match counts {
            Ok((base, full)) => {
                let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / op.ops as f64;
                println!(
                    "  {:<52} {:>12.0} {:>10.1} {:>10.1}",
                    op.name,
                    per(full.instructions, base.instructions),
                    per(full.d1_misses, base.d1_misses),
                    per(full.ll_misses, base.ll_misses),
                );
            }
            Err(e) => println!("  {:<52} failed: {e}", op.name),
        }
    }
}
