//! The invariants of DESIGN.md, checked every virtual second and at the end.
//!
//! 1. Convergence: after the heal, within a bound, every node is ready and
//!    holds the same live records, equal to the instances of live clients,
//!    all healthy; and it stays so until the end.
//! 2. No live instance is lost: an instance whose latest heartbeat a node
//!    acknowledged less than `unhealthy_after` ago is live and healthy on
//!    that node (it refutes any expiry or unhealthy mark from elsewhere).
//! 3. Dead clients disappear from every node within removal time plus a
//!    bounded sync time after they die (or after the heal, whichever is later).
//! 4. No resurrection: once a client's deregistration is acknowledged, no node
//!    ever holds a live record of it with a newer version.
//! 5. Bounded state: every node's and the network's structural invariants and
//!    queue bounds hold (their `check_invariants`), and every node's hybrid
//!    clock is at least every counter it holds.
//!
//! Invariants 2 and 4, and the structure of the nodes that received
//! messages, are checked after every batch of deliveries, not only every
//! second; a node's own verdicts are checked as it makes them (no verdict
//! on a beating client while the node owes it a grace period, see
//! `Sim::judged`); every consumer query's answer is checked against the
//! registry of the node that gave it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use muster_core::view::QueryAnswer;
use muster_core::{InstanceKey, InstanceState, Record, Selector, ServiceKey, Timestamp};

use crate::sim::{Life, Sim};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The scenario's seed.
    pub seed: u64,
    /// Virtual time of the check that found it.
    pub at: Timestamp,
    /// Which invariant.
    pub kind: String,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {} at {}: {}: {}", self.seed, self.at, self.kind, self.detail)
    }
}

/// Slack for clock drift and scheduling when comparing with a lease.
pub(crate) const SLACK: Duration = Duration::from_secs(1);

/// The longest a dead client may stay visible after it died or the heal.
pub(crate) fn dead_client_bound(sim: &Sim) -> Duration {
    let t = &sim.config.timings;
    // Removal after silence, plus one refutation (a node that saw a late beat
    // keeps it up to one more unhealthy period), plus failure detection and
    // two anti-entropy rounds to carry the removal everywhere.
    // With the brake on, a removal may wait for later windows (sim.rs).
    t.remove_after
        + t.unhealthy_after
        + t.down_after
        + 2 * t.anti_entropy_interval
        + SLACK * 5
        + crate::sim::brake_slack(&sim.config)
}

/// Checks run every virtual second.
pub(crate) fn periodic(sim: &mut Sim) -> Result<(), Violation> {
    // Structural checks are O(records): every 10 s in large histories.
    if sim.scenario.bulk == 0 || sim.now.as_millis() % 10_000 < 1_000 {
        structure(sim)?;
    }
    live_where_beating(sim, None)?;
    no_resurrection(sim, None)?;
    if sim.now >= sim.heal_at {
        dead_are_gone(sim)?;
        if sim.flapping() {
            // A link flapping to the end: convergence is not promised, the
            // other invariants still are.
            return Ok(());
        }
        if sim.scenario.bulk > 0 && sim.now.as_millis() % 5_000 >= 1_000 {
            return Ok(()); // O(records): every 5 s in large histories.
        }
        match converged(sim) {
            Ok(()) => {
                if sim.converged_since.is_none() {
                    sim.converged_since = Some(sim.now);
                }
            }
            Err(_) => sim.converged_since = None,
        }
    }
    Ok(())
}

/// Checks at the end of the run.
pub(crate) fn at_end(sim: &Sim) -> Result<(), Violation> {
    structure(sim)?;
    if sim.flapping() {
        return Ok(());
    }
    if let Err(why) = converged(sim) {
        let heal = sim.now.saturating_since(sim.heal_at);
        return Err(sim.violation("convergence", format!("not converged {heal:?} after the heal: {why}")));
    }
    if sim.converged_since.is_none() {
        return Err(sim.violation("convergence", "converged only at the last instant".into()));
    }
    Ok(())
}

fn structure(sim: &Sim) -> Result<(), Violation> {
    for n in &sim.nodes {
        if let Some(node) = &n.node {
            node_structure(sim, node)?;
        }
    }
    sim.net.check_invariants();
    Ok(())
}

fn node_structure(sim: &Sim, node: &muster_core::Node) -> Result<(), Violation> {
    if let Some(why) = node.clock_behind_records() {
        return Err(sim.violation("clock-behind-records", format!("{}: {why}", node.id())));
    }
    node.check_invariants();
    Ok(())
}

/// Checks after a batch of deliveries at one instant, on the nodes that
/// received messages: invariants 2 and 4 and, in one small history of
/// [`FULL_STRUCTURE_EVERY`], their whole structure (O(digest): in every
/// history it would halve the throughput).
pub(crate) fn after_delivery(sim: &mut Sim, touched: &BTreeSet<usize>) -> Result<(), Violation> {
    if sim.scenario.bulk == 0 && sim.scenario.seed % FULL_STRUCTURE_EVERY == 0 {
        for &i in touched {
            if let Some(node) = &sim.nodes[i].node {
                node_structure(sim, node)?;
            }
        }
    }
    live_where_beating(sim, Some(touched))?;
    no_resurrection(sim, Some(touched))
}

/// One small history in this many checks every node's whole structure after
/// every delivery batch; the others every virtual second.
pub(crate) const FULL_STRUCTURE_EVERY: u64 = 16;

/// A consumer's answer lists exactly the live instances of the service the
/// node holds, with their health, weight and enabled flag (healthy only:
/// those that serve; the simulated services set no protect threshold).
pub(crate) fn answer_matches_registry(
    sim: &Sim,
    i: usize,
    service: &ServiceKey,
    selector: &Selector,
    answer: &QueryAnswer,
) -> Result<(), Violation> {
    let Some(node) = &sim.nodes[i].node else { return Ok(()) };
    let expected: BTreeSet<(String, u16, bool, u64, bool)> = node
        .live_instances()
        .into_iter()
        .filter(|(k, d)| k.service == *service && (!selector.healthy_only || (d.healthy && d.enabled)))
        .map(|(k, d)| (k.ip.to_string(), k.port, d.healthy, d.weight.to_bits(), d.enabled))
        .collect();
    let got: BTreeSet<(String, u16, bool, u64, bool)> = answer
        .instances()
        .map(|v| (v.ip.to_string(), v.port, v.healthy, v.weight.to_bits(), v.enabled))
        .collect();
    if got.len() != answer.len() || got != expected {
        let detail = format!(
            "{} answered {} instances of {service} ({selector:?}) but holds {}: answer {got:?}, registry {expected:?}",
            node.id(),
            answer.len(),
            expected.len()
        );
        return Err(sim.violation("query-answer", detail));
    }
    Ok(())
}

/// Invariant 2 on the acknowledging nodes (those in `only`, if given).
fn live_where_beating(sim: &Sim, only: Option<&BTreeSet<usize>>) -> Result<(), Violation> {
    let fresh = sim.config.timings.unhealthy_after.saturating_sub(SLACK);
    for p in sim.providers.iter().filter(|p| p.life == Life::Alive) {
        let Some(ack) = p.last_ack else { continue };
        if sim.now.saturating_since(ack.at) >= fresh {
            continue;
        }
        if only.is_some_and(|o| !o.contains(&ack.node)) {
            continue;
        }
        let n = &sim.nodes[ack.node];
        if n.incarnation != ack.incarnation {
            continue;
        }
        let Some(node) = &n.node else { continue };
        match node.instance_record(&p.key) {
            Some(Record::Instance { state: InstanceState::Live(d), .. }) if d.healthy => {}
            other => {
                let detail =
                    format!("{} acknowledged a beat of {} at {} but holds {:?}", n.id, p.key, ack.at, other);
                return Err(sim.violation("live-instance-lost", detail));
            }
        }
    }
    Ok(())
}

/// Invariant 4, strict: no node holds a newer live record than an
/// acknowledged deregistration, and a node that once held the tombstone never
/// again holds an older live record (what a purge followed by a peer's stale
/// copy would bring back).
fn no_resurrection(sim: &mut Sim, only: Option<&BTreeSet<usize>>) -> Result<(), Violation> {
    let mut seen = Vec::new();
    for (pi, p) in sim.providers.iter().enumerate() {
        let Life::Left { version: gone } = &p.life else { continue };
        for (ni, n) in sim.nodes.iter().enumerate() {
            if only.is_some_and(|o| !o.contains(&ni)) {
                continue;
            }
            let Some(node) = &n.node else { continue };
            let held_tombstone = sim.tombstones_seen.contains(&(pi, ni, n.incarnation));
            match node.instance_record(&p.key) {
                Some(Record::Instance { version, state: InstanceState::Live(_), .. })
                    if version > *gone || held_tombstone =>
                {
                    let detail = format!(
                        "{} deregistered as {gone:?}, live again on {} as {version:?} (held the tombstone: \
                         {held_tombstone})",
                        p.key, n.id
                    );
                    return Err(sim.violation("resurrection", detail));
                }
                Some(Record::Instance { version, .. }) if version >= *gone => {
                    seen.push((pi, ni, n.incarnation))
                }
                _ => {}
            }
        }
    }
    sim.tombstones_seen.extend(seen);
    Ok(())
}

fn dead_are_gone(sim: &Sim) -> Result<(), Violation> {
    let bound = dead_client_bound(sim);
    for p in &sim.providers {
        let gone_at = match &p.life {
            Life::Dead { at } => *at,
            Life::Left { .. } => p.last_ack.map_or(sim.heal_at, |a| a.at),
            _ => continue,
        };
        let last = p.last_ack.map_or(gone_at, |a| a.at.max(gone_at));
        let deadline = last.max(sim.heal_at) + bound;
        if sim.now < deadline {
            continue;
        }
        for (_, node) in sim.ready_nodes() {
            if let Some(Record::Instance { state: InstanceState::Live(d), .. }) = node.instance_record(&p.key)
            {
                let detail = format!(
                    "{} (gone at {gone_at}) still live on {} {bound:?} after, as {d:?}",
                    p.key,
                    node.id()
                );
                return Err(sim.violation("dead-client-visible", detail));
            }
        }
    }
    Ok(())
}

type Snapshot = (BTreeMap<InstanceKey, Record>, BTreeMap<ServiceKey, Record>);

fn live_records(node: &muster_core::Node) -> Snapshot {
    let mut instances = BTreeMap::new();
    let mut services = BTreeMap::new();
    for r in node.records() {
        if r.is_tombstone() {
            continue;
        }
        match &r {
            Record::Instance { key, .. } => {
                instances.insert(key.clone(), r);
            }
            Record::Service { key, .. } => {
                services.insert(key.clone(), r);
            }
        }
    }
    (instances, services)
}

/// Whether the cluster has converged; the reason if not.
pub(crate) fn converged(sim: &Sim) -> Result<(), String> {
    if let Some(n) = sim.nodes.iter().find(|n| !n.running()) {
        return Err(format!("{} is not running", n.id));
    }
    let ready: Vec<_> = sim.ready_nodes().collect();
    if ready.len() != sim.nodes.len() {
        return Err(format!("{} of {} nodes ready", ready.len(), sim.nodes.len()));
    }
    let (first_i, first) = ready[0];
    let reference = live_records(first);
    let root = first.digest().root();
    for (i, node) in &ready[1..] {
        if node.digest().root() == root {
            continue; // Equal digests: equal records.
        }
        let other = live_records(node);
        if other != reference {
            let only_a = reference.0.keys().filter(|k| !other.0.contains_key(*k)).count();
            let only_b = other.0.keys().filter(|k| !reference.0.contains_key(*k)).count();
            return Err(format!(
                "{} and {} differ ({only_a} live instances only on the first, {only_b} only on the second)",
                sim.nodes[first_i].id, sim.nodes[*i].id
            ));
        }
    }
    let alive = sim.alive_keys();
    let mut held: std::collections::BTreeSet<InstanceKey> = reference.0.keys().cloned().collect();
    // Records lost with their (memory-only) nodes: on every node or on none
    // (the nodes agree, checked above).
    held.retain(|k| !sim.bulk_lost.contains(k));
    if held != alive {
        let missing: Vec<_> = alive.difference(&held).map(ToString::to_string).collect();
        let extra: Vec<_> = held.difference(&alive).map(ToString::to_string).collect();
        return Err(format!("live instances missing {missing:?}, extra {extra:?}"));
    }
    for r in reference.0.values() {
        if let Record::Instance { key, state: InstanceState::Live(d), .. } = r {
            if !d.healthy {
                return Err(format!("{key} is unhealthy"));
            }
        }
    }
    Ok(())
}
