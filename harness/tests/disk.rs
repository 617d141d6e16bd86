//! The disk model: acknowledged persistent writes survive single crashes
//! and power cuts of every node, and acknowledging before the commit is
//! caught.

use muster_harness::disk::{DiskBug, run_disk};

/// Histories per test run; `SIM_RUNS` raises it.
fn runs(default: u64) -> u64 {
    std::env::var("SIM_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn every_acknowledged_persistent_write_survives_crashes_and_power_cuts() {
    for seed in 0..runs(24) {
        let nodes = 1 + (seed % 5) as usize;
        let o = run_disk(seed, nodes, None);
        assert_eq!(o.violation, None, "seed {seed}, {nodes} nodes: {o:?}");
        assert!(o.acked > 500, "seed {seed}: a history has substance: {o:?}");
        assert!(o.power_cuts >= 1);
    }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    assert_eq!(run_disk(3, 3, None), run_disk(3, 3, None));
}

#[test]
fn acknowledging_before_the_commit_is_caught_within_a_few_seeds() {
    let caught = (0..20).find_map(|seed| run_disk(seed, 3, Some(DiskBug::AckBeforeCommit)).violation);
    let v = caught.expect("acknowledging before the commit went unnoticed for 20 seeds");
    assert!(v.contains("invariant"), "{v}");
}
