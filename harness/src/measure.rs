//! Protocol cost measurements in the simulator (no faults): how fast a
//! cluster converges after a burst of registrations, what a registration
//! costs on the wire, and what anti-entropy costs when nodes agree.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::message::{decode, encode};
use muster_core::{Config, InstanceKey, Node, NodeId, RegisterRequest, ServiceKey, Timestamp};
use muster_transport_mem::{LinkConfig, Network};

/// What [`measure`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Instances registered.
    pub instances: usize,
    /// Virtual time of the registration burst.
    pub burst: Duration,
    /// Virtual time from the last registration to every node holding the
    /// same digest with every instance.
    pub convergence: Duration,
    /// Delta messages sent during the burst and convergence, per registration.
    pub delta_messages_per_registration: f64,
    /// Delta bytes sent, per registration.
    pub delta_bytes_per_registration: f64,
    /// All peer messages (pings, acks and anti-entropy included), per registration.
    pub messages_per_registration: f64,
    /// All peer bytes, per registration.
    pub bytes_per_registration: f64,
    /// Anti-entropy bytes per node per round, once the nodes agree.
    pub anti_entropy_bytes_per_round: f64,
    /// Ping and ack bytes per node per second.
    pub ping_bytes_per_node_second: f64,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    messages: u64,
    bytes: u64,
}

struct Cluster {
    now: Timestamp,
    nodes: Vec<Node>,
    ids: Vec<NodeId>,
    net: Network<Vec<u8>>,
    by_kind: BTreeMap<&'static str, Tally>,
}

impl Cluster {
    fn new(n: usize, latency: Duration) -> Cluster {
        let ids: Vec<NodeId> =
            (0..n).filter_map(|i| NodeId::parse(&format!("10.0.0.{}:8848", i + 1)).ok()).collect();
        let nodes = ids
            .iter()
            .map(|me| {
                let mut c = Config::new(me.clone());
                c.peers = ids.iter().filter(|p| *p != me).cloned().collect();
                c.wall_clock_ms = 1_750_000_000_000;
                // Leases long enough that nothing expires during the measurement.
                c.timings.heartbeat_interval = Duration::from_secs(60);
                c.timings.unhealthy_after = Duration::from_secs(3_000);
                c.timings.remove_after = Duration::from_secs(6_000);
                c.timings.tombstone_ttl = Duration::from_secs(7_000);
                c.limits.max_instances_per_service = 100_000;
                Node::new(c, Timestamp::ZERO)
            })
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        let net = Network::new(1, LinkConfig::perfect(latency));
        Cluster { now: Timestamp::ZERO, nodes, ids, net, by_kind: BTreeMap::new() }
    }

    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            let bytes = encode(&self.ids[i], &t.msg);
            let tally = self.by_kind.entry(t.msg.kind()).or_default();
            tally.messages += 1;
            tally.bytes += bytes.len() as u64;
            let len = bytes.len();
            self.net.send(self.now, &self.ids[i], &t.to, bytes, len);
        }
        while self.nodes[i].poll_event().is_some() {}
    }

    /// Runs every event up to `until`.
    fn run_until(&mut self, until: Timestamp) {
        loop {
            let node_next = self.nodes.iter().filter_map(|n| n.poll_timeout()).map(|(t, _)| t).min();
            let next = [node_next, self.net.poll_timeout()].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= until) else { break };
            self.now = self.now.max(next);
            while let Some(d) = self.net.poll_delivery(self.now) {
                let Some(i) = self.ids.iter().position(|id| *id == d.to) else { continue };
                if let Ok((from, msg)) = decode(&d.msg) {
                    let _ = self.nodes[i].handle_message(self.now, &from, msg);
                    self.drain(i);
                }
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout().is_some_and(|(t, _)| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                    self.drain(i);
                }
            }
        }
        self.now = self.now.max(until);
    }

    fn agree(&self, instances: usize) -> bool {
        let root = self.nodes[0].digest().root();
        self.nodes.iter().all(|n| n.digest().root() == root && n.stats().registry.instances == instances)
    }

    fn totals(&self) -> Tally {
        self.by_kind.values().fold(Tally::default(), |a, t| Tally {
            messages: a.messages + t.messages,
            bytes: a.bytes + t.bytes,
        })
    }

    fn kinds(&self, kinds: &[&str]) -> Tally {
        kinds.iter().filter_map(|k| self.by_kind.get(k)).fold(Tally::default(), |a, t| Tally {
            messages: a.messages + t.messages,
            bytes: a.bytes + t.bytes,
        })
    }
}

/// Registers `instances` instances round-robin on `nodes` nodes at
/// `rate_per_s`, over links of `latency`, and measures.
pub fn measure(nodes: usize, instances: usize, rate_per_s: u64, latency: Duration) -> Figures {
    let mut c = Cluster::new(nodes, latency);
    c.run_until(Timestamp::from_millis(1_000));
    c.by_kind.clear();
    let start = c.now;
    for i in 0..instances {
        let service = ServiceKey::parse(None, None, &format!("svc-{}", i % 100));
        let key = service.and_then(|s| {
            InstanceKey::parse(s, None, &format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256), 8080)
        });
        let Ok(key) = key else { continue };
        let at = start + Duration::from_millis(i as u64 * 1_000 / rate_per_s.max(1));
        c.run_until(at.max(c.now));
        let n = i % nodes;
        let _ = c.nodes[n].register(c.now, RegisterRequest::new(key));
        c.drain(n);
    }
    let last = c.now;
    let mut converged = None;
    for step in 1..=60_000u64 {
        c.run_until(last + Duration::from_millis(step));
        if c.agree(instances) {
            converged = Some(c.now.saturating_since(last));
            break;
        }
    }
    let burst_tally = c.totals();
    let deltas = c.kinds(&["delta"]);
    let per = |v: u64| v as f64 / instances.max(1) as f64;
    // Quiet: let any repair finish, then count a window of agreement.
    c.run_until(c.now + Duration::from_secs(30));
    c.by_kind.clear();
    let window = Duration::from_secs(60);
    c.run_until(c.now + window);
    let interval = Config::new(c.ids[0].clone()).timings.anti_entropy_interval;
    let rounds = window.as_secs_f64() / interval.as_secs_f64();
    let ae = c.kinds(&["digest_root", "digest_buckets", "bucket_records"]);
    let pings = c.kinds(&["ping", "ack"]);
    Figures {
        nodes,
        instances,
        burst: last.saturating_since(start),
        convergence: converged.unwrap_or(Duration::MAX),
        delta_messages_per_registration: per(deltas.messages),
        delta_bytes_per_registration: per(deltas.bytes),
        messages_per_registration: per(burst_tally.messages),
        bytes_per_registration: per(burst_tally.bytes),
        anti_entropy_bytes_per_round: ae.bytes as f64 / (nodes as f64 * rounds),
        ping_bytes_per_node_second: pings.bytes as f64 / (nodes as f64 * window.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_burst_converges_and_costs_about_one_delta_record_per_peer() {
        let f = measure(3, 200, 1_000, Duration::from_millis(1));
        assert!(f.convergence < Duration::from_millis(50), "{f:?}");
        assert!(f.delta_messages_per_registration > 0.0);
        assert!(f.anti_entropy_bytes_per_round < 100.0, "{f:?}");
    }
}
