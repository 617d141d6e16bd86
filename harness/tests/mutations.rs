//! The simulator's mutation score: each deliberate bug of
//! `muster_core::bugs` is caught within the seed budget CI runs. The budgets
//! and the seeds of first catch are in docs/architecture.md.

use muster_harness::runner::run_many;
use muster_harness::sim::Bug;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs seeds `0..budget` with `bug` injected; returns the violation found.
fn caught(bug: Bug, budget: u64) -> muster_harness::check::Violation {
    caught_in(bug, 0, budget)
}

/// Runs seeds `first..first + budget` with `bug` injected; returns the
/// violation found. For a bug whose first catch lies past what CI can run
/// from seed 0: the window holds that first catch, so a change that loses
/// the power to find it fails here.
fn caught_in(bug: Bug, first: u64, budget: u64) -> muster_harness::check::Violation {
    let summary = run_many(first, budget, None, threads(), Some(bug), &|_| {});
    let v = summary.violation.unwrap_or_else(|| {
        panic!("--bug {} went unnoticed in seeds {first}..{}", bug.name(), first + budget)
    });
    assert!(v.seed < first + budget);
    v
}

#[test]
fn a_merge_that_keeps_the_older_record_is_caught() {
    caught(Bug::KeepOlderOnMerge, 20);
}

#[test]
fn a_node_that_never_refutes_is_caught() {
    caught(Bug::NoRefute, 20);
}

#[test]
fn a_beat_that_never_lifts_an_unhealthy_mark_is_caught() {
    caught(Bug::NoLift, 20);
}

#[test]
fn anti_entropy_that_sends_the_same_prefix_every_round_is_caught() {
    // Needs a large history (seed 38 loads ~12,000 records into a cluster
    // whose first node missed them all).
    caught(Bug::AntiEntropyPrefix, 60);
}

#[test]
fn a_grace_period_moved_by_every_peer_going_down_is_caught() {
    caught(Bug::GlobalGrace, 40);
}

#[test]
fn a_register_that_keeps_the_old_version_is_caught() {
    caught(Bug::SameVersionRegister, 20);
}

#[test]
fn tombstones_purged_early_are_caught() {
    caught(Bug::EarlyPurge, 40);
}

#[test]
fn tombstones_purged_without_every_peers_agreement_are_caught() {
    // Needs a node cut off for longer than the TTL while its brake holds
    // what the others deregistered (seed 53).
    caught(Bug::PurgeWithoutAgreement, 60);
}

#[test]
fn accepting_a_stale_record_for_a_key_not_held_is_caught() {
    // Needs a tombstone evicted past tombstone_max_hold during a long cut,
    // then the cut-off node's copy coming back: first at seed 307 of 0..400
    // (see the mutation table), so CI runs the window around it.
    caught_in(Bug::AcceptStaleUnknown, 300, 10);
}

#[test]
fn a_brake_that_reports_itself_released_while_holding_is_caught() {
    caught(Bug::BrakeClearsEarly, 40);
}

#[test]
fn no_grace_on_inheritance_or_after_a_pause_is_caught() {
    // Caught by a node's own verdict on a beating client while it owes the
    // instance a grace period (it inherited it, or detected its own pause).
    let v = caught(Bug::NoGrace, 20);
    assert_eq!(v.kind, "judged-during-grace", "{v}");
}

#[test]
fn a_merge_that_does_not_advance_the_clock_is_caught() {
    // Caught structurally: a node holds a counter above its own clock.
    let v = caught(Bug::NoObserve, 20);
    assert_eq!(v.kind, "clock-behind-records", "{v}");
}

#[test]
fn a_node_that_ignores_the_clients_ordering_token_is_caught() {
    // Clients that leave and register again on another node under
    // wall-clock skew (seed 4 first).
    caught(Bug::NoAfterToken, 20);
}
