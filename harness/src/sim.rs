//! The discrete-event simulator: N cores over `transport-mem`, a virtual
//! clock, simulated providers and consumers, faults, and invariant checks.
//!
//! One thread, no sleeps: the loop takes the earliest of {node timeouts,
//! network deliveries, client actions, fault events, checks}, jumps the clock
//! there and feeds it. Every random choice comes from the scenario's seed, so
//! a run is a pure function of its scenario; the trace hash proves it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use muster_core::hash::{SplitMix64, StableHasher};
use muster_core::history::{ChangeCause, ChangeKind};
use muster_core::message::{decode, encode};
use muster_core::{
    BeatReply, BrakeConfig, Config, Event, InstanceKey, InstanceState, MessageError, Node, NodeId, Record,
    RegisterRequest, RequestError, Selector, ServiceKey, Timestamp,
};
use muster_transport_mem::{LinkConfig, Network, Probability};

use crate::check::{self, Violation};
use crate::scenario::Scenario;

/// Wall-clock milliseconds of the simulation's epoch.
const BASE_WALL_MS: u64 = 1_750_000_000_000;
/// How often invariants are checked, in virtual time.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a client waits on an unreachable node before trying another.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Services the providers spread over.
const SERVICES: usize = 3;
/// Most messages waiting for a paused node.
const INBOX_MAX: usize = 100_000;

/// A deliberate bug to inject, proving the simulator catches it.
pub use muster_core::bugs::Bug;

/// What one run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The scenario's seed.
    pub seed: u64,
    /// Events processed.
    pub steps: u64,
    /// Peer messages sent.
    pub messages: u64,
    /// Bytes of peer messages sent.
    pub bytes: u64,
    /// Faults applied during the chaos (partitions, crashes, pauses, ...).
    pub faults: u64,
    /// Virtual time from the heal to lasting convergence.
    pub convergence: Option<Duration>,
    /// Hash of every event of the run: equal for equal scenarios.
    pub trace_hash: u64,
    /// Persistent instances loaded before the chaos.
    pub bulk: usize,
    /// Corrupted frames delivered, every one refused by its checksum.
    pub corrupt_refused: u64,
    /// Acknowledged persistent instances lost with their memory-only nodes
    /// (every node that held one crashed before it reached another).
    pub bulk_lost: usize,
    /// The first invariant broken, if any.
    pub violation: Option<Violation>,
}

/// A node process in the simulation.
pub(crate) struct SimNode {
    pub(crate) id: NodeId,
    pub(crate) node: Option<Node>,
    pub(crate) incarnation: u32,
    offset_ms: u64,
    drift_ppm: i64,
    wall_skew_ms: i64,
    pub(crate) paused_until: Option<Timestamp>,
    crashed_until: Option<Timestamp>,
    inbox: VecDeque<Frame>,
    /// When the node last reported a pause it detected (it owes every
    /// instance a grace period from then).
    pause_seen: Option<Timestamp>,
    /// Providers whose instance the node is responsible for, with the time
    /// it became so (it owes them a grace period from then).
    responsible: BTreeMap<usize, Timestamp>,
}

/// A peer frame on the simulated wire, and whether the network corrupted it.
type Frame = (Vec<u8>, bool);

impl SimNode {
    /// The node's local clock at global time `g`.
    pub(crate) fn local(&self, g: Timestamp) -> Timestamp {
        let g = i128::from(g.as_millis());
        let l = i128::from(self.offset_ms) + g + g * i128::from(self.drift_ppm) / 1_000_000;
        Timestamp::from_millis(u64::try_from(l.max(0)).unwrap_or(u64::MAX))
    }

    /// The earliest global time at which the local clock reads at least `l`.
    fn global(&self, l: Timestamp) -> Timestamp {
        let target = i128::from(l.as_millis()) - i128::from(self.offset_ms);
        let mut g = (target * 1_000_000 / (1_000_000 + i128::from(self.drift_ppm))).max(0);
        let to_ts = |g: i128| Timestamp::from_millis(u64::try_from(g.max(0)).unwrap_or(u64::MAX));
        while self.local(to_ts(g)) < l {
            g += 1;
        }
        while g > 0 && self.local(to_ts(g - 1)) >= l {
            g -= 1;
        }
        to_ts(g)
    }

    /// Whether clients and peers can reach the process.
    pub(crate) fn running(&self) -> bool {
        self.node.is_some() && self.paused_until.is_none()
    }
}

/// A provider's life.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Life {
    /// Not started yet.
    Pending,
    /// Registers and beats.
    Alive,
    /// Stopped without deregistering, at this time.
    Dead { at: Timestamp },
    /// Deregistered (acknowledged) at this time, with the tombstone's version.
    Left { version: muster_core::Version },
}

/// The last heartbeat a node acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) at: Timestamp,
    pub(crate) node: usize,
    pub(crate) incarnation: u32,
}

/// A service provider with one instance.
pub(crate) struct Provider {
    pub(crate) key: InstanceKey,
    pub(crate) life: Life,
    target: usize,
    registered: bool,
    next_at: Timestamp,
    pub(crate) last_ack: Option<Ack>,
    /// Planned lifecycle: (time, what).
    plan: VecDeque<(Timestamp, Plan)>,
    /// The client's ordering token, as the SDK keeps it: the highest node
    /// clock an answer to one of its writes carried.
    token: u64,
    /// The token the client sent with its latest acknowledged register; its
    /// beats carry it (`Node::heartbeat_after`), so a node holding an older
    /// registration answers `Unknown` (seeds 4163, 9503).
    registered_after: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Start,
    Die,
    Leave,
    /// Leave, then register again 1 to 50 ms later on another node.
    Rejoin,
    /// The second half of `Rejoin`.
    Reregister,
}

/// A planned fault.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    Partition(Vec<NodeId>, Vec<NodeId>),
    Repair(Vec<NodeId>, Vec<NodeId>),
    OneWay(NodeId, NodeId),
    RepairOneWay(NodeId, NodeId),
    Isolate(NodeId),
    Rejoin(NodeId),
    Crash(usize),
    Restart(usize),
    Pause(usize, Duration),
    Links(LinkConfig),
    /// Several nodes crash at the same instant.
    CrashMany(Vec<usize>),
    /// The link between a pair turns slow one way and lossy the other.
    SlowPair(NodeId, NodeId),
    Hold(NodeId, NodeId),
    Release(NodeId, NodeId),
    Clog(NodeId),
    Unclog(NodeId),
}

/// The simulated world.
pub struct Sim {
    pub(crate) scenario: Scenario,
    pub(crate) now: Timestamp,
    rng: SplitMix64,
    pub(crate) nodes: Vec<SimNode>,
    index: BTreeMap<NodeId, usize>,
    pub(crate) net: Network<Frame>,
    pub(crate) providers: Vec<Provider>,
    /// Provider index by instance key.
    by_key: BTreeMap<InstanceKey, usize>,
    faults: BTreeMap<(Timestamp, u64), Fault>,
    pub(crate) heal_at: Timestamp,
    healed: bool,
    end_at: Timestamp,
    next_check: Timestamp,
    next_query: Timestamp,
    trace: StableHasher,
    steps: u64,
    faults_applied: u64,
    pub(crate) converged_since: Option<Timestamp>,
    pub(crate) config: Config,
    bug: Option<Bug>,
    /// The flapping pair, when the flap starts, and how long of every
    /// [`FLAP_PERIOD`] the link is cut.
    flap: Option<(NodeId, NodeId, Timestamp, u64)>,
    flap_cut: bool,
    /// Persistent instances still to load, and those acknowledged.
    bulk: VecDeque<InstanceKey>,
    pub(crate) bulk_acked: BTreeSet<InstanceKey>,
    /// Acknowledged persistent instances lost with their nodes: at a crash,
    /// no node left in memory held them (memory-only nodes; seed 3315). They
    /// may still come back from a frame in flight, so convergence takes them
    /// on every node or on none.
    pub(crate) bulk_lost: BTreeSet<InstanceKey>,
    /// When the chaos starts (after the bulk load).
    chaos_start: Timestamp,
    /// (provider, node, incarnation): the node held the tombstone of the
    /// provider's acknowledged deregistration.
    pub(crate) tombstones_seen: BTreeSet<(usize, usize, u32)>,
    /// Corrupted frames refused.
    corrupt_refused: u64,
    /// The pair with a slow link (slow from the first to the second).
    slow: Option<(NodeId, NodeId)>,
    /// A violation found while draining a node's outputs, reported by the
    /// step that caused it.
    found: Option<Violation>,
    /// Whether every node reports its instance changes (small histories).
    instance_events: bool,
}

/// When a long cut starts after the chaos does.
const LONG_CUT_START: Duration = Duration::from_secs(2);

/// Issue 9, 5, drawn from their own stream so that every other draw of a
/// seed keeps its meaning: in 40 % of the short-TTL runs one node is cut off
/// for 1.5 to 2.5 TTLs; the expiry brake is on in 60 % of those and 20 % of
/// the others, with a floor and share that engage when a node loses its
/// peers' beats (and a window short enough to release within a history); in half of
/// those tombstones are held at most 1.2 TTLs, so that forced evictions (and
/// the refusals they need) happen too. Returns the node cut off and for how long.
fn long_faults(scenario: &Scenario, config: &mut Config) -> Option<(usize, Duration)> {
    let mut rng = SplitMix64::new(scenario.seed ^ 0x0b7a_4e5e_10c7);
    let ttl = scenario.tombstone_ttl;
    let long = ttl < Duration::from_secs(600) && scenario.nodes > 1 && rng.chance(0.4);
    if rng.chance(if long { 0.6 } else { 0.2 }) {
        config.brake = BrakeConfig { share: 0.3, floor: 1, window: Duration::from_secs(30) };
    }
    if !long {
        return None;
    }
    let dur = ttl + ttl / 2 + Duration::from_millis(rng.below(muster_core::time::millis(ttl)));
    if rng.chance(0.5) {
        config.timings.tombstone_max_hold = ttl + ttl / 5;
    }
    Some((rng.below(scenario.nodes as u64) as usize, dur))
}

/// Extra time at the end of a history with the brake on: it releases what
/// it held a window at a time.
pub(crate) fn brake_slack(config: &Config) -> Duration {
    if config.brake.enabled() { 4 * config.brake.window } else { Duration::ZERO }
}

/// The period of a flapping link.
const FLAP_PERIOD: u64 = 10_000;
/// Persistent instances registered per loader step (one step per 10 ms).
const BULK_PER_STEP: usize = 2_000;

fn link(f: &crate::scenario::Faults) -> LinkConfig {
    let p = |v: f64| Probability::new(v).unwrap_or(Probability::ZERO);
    LinkConfig {
        latency: f.latency,
        jitter: f.jitter,
        loss: p(f.loss),
        duplicate: p(f.duplicate),
        reorder: p(f.reorder),
        ..LinkConfig::perfect(f.latency)
    }
}

impl Sim {
    /// A world for `scenario`, optionally with a deliberate bug in every node.
    pub fn new(scenario: Scenario, bug: Option<Bug>) -> Sim {
        let mut rng = SplitMix64::new(scenario.seed);
        let ids: Vec<NodeId> = (0..scenario.nodes)
            .filter_map(|i| NodeId::parse(&format!("10.0.0.{}:8848", i + 1)).ok())
            .collect();
        let mut config = Config::new(ids[0].clone());
        config.brake.share = 1.0; // Mass expiry is what chaos produces; the brake has its own tests.
        config.timings.tombstone_ttl = scenario.tombstone_ttl;
        let long_cut = long_faults(&scenario, &mut config);
        let skew = muster_core::time::millis(scenario.faults.clock_skew) as i64;
        // Two nodes differ by up to twice the skew, plus drift and the wall
        // steps of restarts: keep that inside the tolerated skew.
        config.timings.max_clock_skew =
            config.timings.max_clock_skew.max(scenario.faults.clock_skew * 2 + Duration::from_secs(5));
        let drift = i64::from(scenario.faults.drift_ppm);
        let nodes = ids
            .iter()
            .map(|id| SimNode {
                id: id.clone(),
                node: None,
                incarnation: 0,
                offset_ms: rng.below(1_000),
                drift_ppm: if drift > 0 { rng.below(2 * drift as u64 + 1) as i64 - drift } else { 0 },
                wall_skew_ms: if skew > 0 { rng.below(2 * skew as u64 + 1) as i64 - skew } else { 0 },
                paused_until: None,
                crashed_until: None,
                inbox: VecDeque::new(),
                pause_seen: None,
                responsible: BTreeMap::new(),
            })
            .collect();
        let index = ids.iter().cloned().enumerate().map(|(i, id)| (id, i)).collect();
        let load_ms =
            if scenario.bulk == 0 { 0 } else { (scenario.bulk / BULK_PER_STEP) as u64 * 10 + 10_000 };
        let chaos_start = Timestamp::from_millis(load_ms);
        let first_link =
            if load_ms == 0 { link(&scenario.faults) } else { LinkConfig::perfect(Duration::from_millis(1)) };
        let net = Network::new(rng.next_u64(), first_link);
        let mut heal_at = chaos_start + scenario.chaos;
        if let Some((_, dur)) = long_cut {
            heal_at = heal_at.max(chaos_start + LONG_CUT_START + dur + Duration::from_secs(1));
        }
        let end_at = heal_at + scenario.heal + brake_slack(&config);
        let mut sim = Sim {
            now: Timestamp::ZERO,
            rng,
            nodes,
            index,
            net,
            providers: Vec::new(),
            by_key: BTreeMap::new(),
            faults: BTreeMap::new(),
            heal_at,
            healed: false,
            end_at,
            next_check: Timestamp::ZERO,
            next_query: Timestamp::ZERO,
            trace: StableHasher::new(),
            steps: 0,
            faults_applied: 0,
            converged_since: None,
            config,
            bug,
            flap: None,
            flap_cut: false,
            bulk: VecDeque::new(),
            bulk_acked: BTreeSet::new(),
            bulk_lost: BTreeSet::new(),
            chaos_start,
            tombstones_seen: BTreeSet::new(),
            corrupt_refused: 0,
            slow: None,
            found: None,
            instance_events: scenario.bulk == 0,
            scenario,
        };
        sim.plan_providers();
        sim.by_key = sim.providers.iter().enumerate().map(|(i, p)| (p.key.clone(), i)).collect();
        for i in 0..sim.nodes.len() {
            sim.boot(i);
        }
        sim.plan_faults();
        if let Some((i, dur)) = long_cut {
            sim.plan_long_cut(i % sim.nodes.len(), dur);
        }
        sim.plan_bulk();
        sim
    }

    fn plan_bulk(&mut self) {
        if self.scenario.bulk == 0 {
            return;
        }
        for i in 0..self.scenario.bulk {
            let service = ServiceKey::parse(None, None, &format!("bulk-{}", i % 97));
            let ip = format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
            if let Ok(k) = service.and_then(|s| InstanceKey::parse(s, None, &ip, 9000)) {
                self.bulk.push_back(k);
            }
        }
        let at = self.chaos_start;
        self.faults.insert((at, u64::MAX), Fault::Links(link(&self.scenario.faults)));
        // The first node is cut off during the load and misses all of it:
        // anti-entropy must carry the whole bulk to it once it rejoins.
        if self.nodes.len() > 1 {
            let first = self.nodes[0].id.clone();
            self.net.isolate(&first);
            self.faults.insert((at, u64::MAX - 1), Fault::Rejoin(first));
        }
    }

    /// The bulk loader: registers the next batch of persistent instances on
    /// a random ready node.
    fn bulk_due(&mut self) -> Result<(), Violation> {
        if self.bulk.is_empty() || self.now.as_millis() % 10 != 0 {
            return Ok(());
        }
        let i = self.random_node();
        if !self.reachable(i) || (i == 0 && self.nodes.len() > 1) {
            return Ok(());
        }
        let local = self.nodes[i].local(self.now);
        let Some(node) = self.nodes[i].node.as_mut() else { return Ok(()) };
        if !node.is_ready() {
            return Ok(());
        }
        for _ in 0..BULK_PER_STEP {
            let Some(key) = self.bulk.pop_front() else { break };
            let mut req = RegisterRequest::new(key.clone());
            req.ephemeral = Some(false);
            req.metadata =
                [(muster_core::lease::META_HEALTH_CHECK.to_owned(), "none".to_owned())].into_iter().collect();
            match node.register(local, req) {
                Ok(_) => {
                    self.bulk_acked.insert(key);
                }
                Err(e) => {
                    let detail = format!("bulk register of {key} failed: {e}");
                    return Err(Violation {
                        seed: self.scenario.seed,
                        at: self.now,
                        kind: "client".into(),
                        detail,
                    });
                }
            }
        }
        self.drain(i);
        Ok(())
    }

    /// Cuts or repairs the flapping link as its schedule says.
    fn flap_due(&mut self) {
        let Some((a, b, start, cut_ms)) = self.flap.clone() else { return };
        if self.now < start {
            return;
        }
        let cut = (self.now.as_millis() - start.as_millis()) % FLAP_PERIOD < cut_ms;
        if cut != self.flap_cut {
            self.flap_cut = cut;
            self.trace.u64(0xf1a9).u64(u64::from(cut));
            if cut {
                self.net.partition(std::slice::from_ref(&a), std::slice::from_ref(&b));
            } else {
                self.net.repair(std::slice::from_ref(&a), std::slice::from_ref(&b));
            }
        }
    }

    fn next_flap_toggle(&self) -> Option<Timestamp> {
        let (_, _, start, cut_ms) = self.flap.as_ref()?;
        if self.now < *start {
            return Some(*start);
        }
        let into = (self.now.as_millis() - start.as_millis()) % FLAP_PERIOD;
        let wait = if into < *cut_ms { cut_ms - into } else { FLAP_PERIOD - into };
        Some(self.now + Duration::from_millis(wait))
    }

    /// Whether a link flaps to the end (convergence is then not required).
    pub(crate) fn flapping(&self) -> bool {
        self.flap.is_some()
    }

    fn boot(&mut self, i: usize) {
        let now = self.now;
        let step = muster_core::time::millis(self.scenario.faults.wall_step) as i64;
        if step > 0 && self.nodes[i].incarnation > 0 {
            // The wall clock steps across the restart: a fresh offset.
            self.nodes[i].wall_skew_ms = self.rng.below(2 * step as u64 + 1) as i64 - step;
        }
        let n = &mut self.nodes[i];
        let local = n.local(now);
        let mut config = self.config.clone();
        config.node_id = n.id.clone();
        config.peers = self.index.keys().filter(|p| **p != n.id).cloned().collect();
        config.seed = self.scenario.seed ^ (i as u64) << 32 ^ u64::from(n.incarnation);
        // The node's wall clock reads BASE + skew + global time.
        let wall_now = BASE_WALL_MS as i64 + n.wall_skew_ms + now.as_millis() as i64;
        config.wall_clock_ms = u64::try_from(wall_now - local.as_millis() as i64).unwrap_or(0);
        n.incarnation += 1;
        n.crashed_until = None;
        n.paused_until = None;
        n.inbox.clear();
        n.pause_seen = None;
        n.responsible.clear();
        match Node::new(config, local) {
            Ok(mut node) => {
                if let Some(bug) = self.bug {
                    node.inject_bug(bug);
                }
                node.set_instance_events(self.instance_events);
                n.node = Some(node);
            }
            Err(e) => panic!("simulation config is invalid: {e}"),
        }
        self.track_responsibility(i);
        self.drain(i);
    }

    /// Notes the providers node `i` became responsible for (it owes them a
    /// grace period from now) and forgets those it no longer is.
    fn track_responsibility(&mut self, i: usize) {
        if !self.instance_events {
            return;
        }
        let now = self.now;
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_ref() else { return };
        for (p, provider) in self.providers.iter().enumerate() {
            if node.responsible_for(&provider.key) == n.id {
                n.responsible.entry(p).or_insert(now);
            } else {
                n.responsible.remove(&p);
            }
        }
    }

    /// A node's own verdict on an instance (marked unhealthy or expired for
    /// silence): wrong while the node owes the instance a grace period (it
    /// became responsible for it, or detected its own pause, less than
    /// `unhealthy_after` ago) and the client beats: invariant 2 on the
    /// node that judges, which need not be the one that took the beats.
    fn judged(&mut self, i: usize, key: &InstanceKey) {
        let Some(&p) = self.by_key.get(key) else { return };
        let provider = &self.providers[p];
        let fresh = self.config.timings.unhealthy_after.saturating_sub(check::SLACK);
        let beating = provider.life == Life::Alive
            && provider.last_ack.is_some_and(|a| self.now.saturating_since(a.at) < fresh);
        if !beating || self.found.is_some() {
            return;
        }
        let n = &self.nodes[i];
        let owed = |since: Option<Timestamp>| since.filter(|t| self.now.saturating_since(*t) < fresh);
        let why = match (owed(n.responsible.get(&p).copied()), owed(n.pause_seen)) {
            (Some(t), _) => format!("it became responsible at {t}"),
            (None, Some(t)) => format!("it detected its own pause at {t}"),
            (None, None) => return,
        };
        let ack = provider.last_ack.map(|a| a.at).unwrap_or_default();
        let detail = format!(
            "{} judged {key} (beat acknowledged at {ack}) silent at {} although {why}: it owes it a grace \
             period",
            n.id, self.now
        );
        self.found = Some(self.violation("judged-during-grace", detail));
    }

    fn plan_providers(&mut self) {
        let chaos_ms = muster_core::time::millis(self.scenario.chaos).max(1);
        for p in 0..self.scenario.providers {
            let service = ServiceKey::parse(None, None, &format!("svc-{}", p % SERVICES));
            let key = service.and_then(|s| {
                InstanceKey::parse(s, None, &format!("172.16.{}.{}", p / 200, p % 200 + 1), 8080)
            });
            let Ok(key) = key else { continue };
            let mut plan = VecDeque::new();
            let churn = self.scenario.faults.churn;
            let start = if churn && self.rng.chance(0.3) { self.rng.below(chaos_ms) } else { 0 };
            plan.push_back((Timestamp::from_millis(start), Plan::Start));
            if churn {
                let end = start + 1 + self.rng.below(chaos_ms);
                if end < chaos_ms {
                    let what = if self.rng.chance(0.4) { Plan::Leave } else { Plan::Die };
                    let what =
                        if what == Plan::Leave && self.scenario.faults.rejoin { Plan::Rejoin } else { what };
                    plan.push_back((Timestamp::from_millis(end), what));
                }
            }
            let target = self.rng.below(self.nodes.len() as u64) as usize;
            self.providers.push(Provider {
                key,
                life: Life::Pending,
                target,
                registered: false,
                next_at: Timestamp::MAX,
                last_ack: None,
                plan,
                token: 0,
                registered_after: 0,
            });
        }
    }

    fn plan_faults(&mut self) {
        let f = self.scenario.faults.clone();
        let mut kinds = Vec::new();
        for (on, k) in [
            (f.partitions, 0u8),
            (f.one_way, 1),
            (f.isolations, 2),
            (f.crashes, 3),
            (f.pauses, 4),
            (f.loss > 0.0 || f.duplicate > 0.0, 5),
            (f.slow_pair, 6),
            (f.slow_pair, 7),
        ] {
            if on {
                kinds.push(k);
            }
        }
        let start_ms = self.chaos_start.as_millis();
        let chaos_ms = start_ms + muster_core::time::millis(self.scenario.chaos);
        if f.flap && self.nodes.len() > 1 {
            let a = self.random_node();
            let b = (a + 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize) % self.nodes.len();
            let at = Timestamp::from_millis(start_ms + (chaos_ms - start_ms) / 2);
            let cut_ms = 7_000 + self.rng.below(2_001);
            self.flap = Some((self.nodes[a].id.clone(), self.nodes[b].id.clone(), at, cut_ms));
        }
        let mut planned: Vec<(Timestamp, Fault)> = Vec::new();
        let n = self.nodes.len();
        if f.mass_crash && n > 1 {
            // A majority, or (two times in five) every node, crashes at once;
            // they restart a few seconds apart, all before the heal.
            let all = self.rng.chance(0.4);
            let count = if all { n } else { n / 2 + 1 };
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, self.rng.below(i as u64 + 1) as usize);
            }
            order.truncate(count);
            order.sort_unstable();
            let span = chaos_ms - start_ms;
            let at = start_ms + span / 4 + self.rng.below(span / 4 + 1);
            planned.push((Timestamp::from_millis(at), Fault::CrashMany(order.clone())));
            for i in order {
                let back = at + 2_000 + self.rng.below(8_000);
                planned.push((Timestamp::from_millis(back.min(chaos_ms)), Fault::Restart(i)));
            }
        }
        if f.slow_pair && n > 1 {
            let a = self.random_node();
            let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            let at = start_ms + self.rng.below((chaos_ms - start_ms) / 2 + 1);
            planned.push((
                Timestamp::from_millis(at),
                Fault::SlowPair(self.nodes[a].id.clone(), self.nodes[b].id.clone()),
            ));
        }
        if kinds.is_empty() {
            for (seq, (at, fault)) in planned.into_iter().enumerate() {
                self.faults.insert((at, seq as u64), fault);
            }
            return;
        }
        let mut t = start_ms + 2_000 + self.rng.below(3_000);
        while t < chaos_ms {
            let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
            let dur = 2_000 + self.rng.below(28_000);
            let (start, end) = (Timestamp::from_millis(t), Timestamp::from_millis((t + dur).min(chaos_ms)));
            let (a, b) = (self.random_node(), self.random_node());
            let mut add = |at: Timestamp, fault: Fault| planned.push((at, fault));
            match kind {
                0 => {
                    let (ga, gb) = split(&mut self.rng, &self.nodes);
                    add(start, Fault::Partition(ga.clone(), gb.clone()));
                    add(end, Fault::Repair(ga, gb));
                }
                1 if a != b => {
                    let (ia, ib) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
                    add(start, Fault::OneWay(ia.clone(), ib.clone()));
                    add(end, Fault::RepairOneWay(ia, ib));
                }
                2 => {
                    let id = self.nodes[a].id.clone();
                    add(start, Fault::Isolate(id.clone()));
                    add(end, Fault::Rejoin(id));
                }
                // In a large history the node that missed the load never
                // crashes: it would load the bulk by snapshot, and
                // anti-entropy is what must carry it.
                3 if self.scenario.bulk == 0 || a != 0 => {
                    add(start, Fault::Crash(a));
                    add(end, Fault::Restart(a));
                }
                3 => {}
                4 => add(start, Fault::Pause(a, Duration::from_millis(dur.min(25_000)))),
                6 if a != b => {
                    let (ia, ib) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
                    add(start, Fault::Hold(ia.clone(), ib.clone()));
                    add(end, Fault::Release(ia, ib));
                }
                7 => {
                    let id = self.nodes[a].id.clone();
                    let end = Timestamp::from_millis((t + dur.min(10_000)).min(chaos_ms));
                    add(start, Fault::Clog(id.clone()));
                    add(end, Fault::Unclog(id));
                }
                6 => {}
                _ => {
                    let mut l = link(&f);
                    let scale = self.rng.below(101) as f64 / 100.0;
                    l.loss = Probability::new(f.loss * scale).unwrap_or(Probability::ZERO);
                    add(start, Fault::Links(l));
                }
            }
            t += 3_000 + self.rng.below(12_000);
        }
        for (seq, (at, fault)) in planned.into_iter().enumerate() {
            self.faults.insert((at, seq as u64), fault);
        }
    }

    /// Issue 9, 5: node `i` cut off from every other (its clients still
    /// reach it) for `dur`, longer than the tombstone TTL, from the start of
    /// the chaos.
    fn plan_long_cut(&mut self, i: usize, dur: Duration) {
        let id = self.nodes[i].id.clone();
        let start = self.chaos_start + LONG_CUT_START;
        self.faults.insert((start, u64::MAX - 2), Fault::Isolate(id.clone()));
        self.faults.insert((start + dur, u64::MAX - 1), Fault::Rejoin(id));
    }

    fn random_node(&mut self) -> usize {
        self.rng.below(self.nodes.len() as u64) as usize
    }

    // ---- the loop ------------------------------------------------------

    /// Runs the scenario to its end, stopping at the first violation.
    pub fn run(mut self) -> Outcome {
        let violation = loop {
            match self.step() {
                Ok(true) => {}
                Ok(false) => break check::at_end(&self).err(),
                Err(v) => break Some(v),
            }
        };
        let stats = self.net.stats();
        Outcome {
            seed: self.scenario.seed,
            steps: self.steps,
            messages: stats.sent,
            bytes: stats.bytes_sent,
            faults: self.faults_applied,
            convergence: self.converged_since.map(|t| t.saturating_since(self.heal_at)),
            trace_hash: self.trace.finish(),
            bulk: self.scenario.bulk,
            corrupt_refused: self.corrupt_refused,
            bulk_lost: self.bulk_lost.len(),
            violation,
        }
    }

    /// One event time. `Ok(false)` at the end of the run.
    fn step(&mut self) -> Result<bool, Violation> {
        let next = self.next_event_time();
        if next > self.end_at {
            return Ok(false);
        }
        self.now = self.now.max(next);
        self.steps += 1;
        self.trace.u64(self.now.as_millis());
        if self.now >= self.heal_at && !self.healed {
            self.heal();
        }
        self.faults_due();
        self.flap_due();
        self.bulk_due()?;
        self.resumes_due()?;
        self.deliveries_due()?;
        self.timeouts_due();
        self.clients_due()?;
        if let Some(v) = self.found.take() {
            return Err(v);
        }
        if self.now >= self.next_query {
            self.consumer_query()?;
            self.next_query = self.now + Duration::from_millis(700);
        }
        if self.now >= self.next_check {
            self.next_check = self.now + CHECK_EVERY;
            check::periodic(self)?;
        }
        Ok(true)
    }

    fn next_event_time(&self) -> Timestamp {
        let mut next = self.next_check.min(self.next_query);
        for n in &self.nodes {
            if let (Some(node), None) = (&n.node, n.paused_until) {
                if let Some((t, _)) = node.poll_timeout() {
                    next = next.min(n.global(t));
                }
            }
            for t in [n.paused_until, n.crashed_until].into_iter().flatten() {
                next = next.min(t);
            }
        }
        if let Some(t) = self.net.poll_timeout() {
            next = next.min(t);
        }
        for p in &self.providers {
            next = next.min(p.next_at);
            if let Some((t, _)) = p.plan.front() {
                next = next.min(*t);
            }
        }
        if let Some(((t, _), _)) = self.faults.first_key_value() {
            next = next.min(*t);
        }
        if let Some(t) = self.next_flap_toggle() {
            next = next.min(t);
        }
        if !self.bulk.is_empty() {
            next = next.min(Timestamp::from_millis((self.now.as_millis() / 10 + 1) * 10));
        }
        if self.now < self.heal_at {
            next = next.min(self.heal_at);
        }
        next.max(self.now)
    }

    /// The end of the chaos: the network heals, crashed nodes restart, paused
    /// ones resume. Clients carry on.
    fn heal(&mut self) {
        self.healed = true;
        self.faults.clear();
        self.trace.u64(0x4ea1);
        self.net.heal();
        self.net.release_all(self.now);
        if let Some((a, b)) = self.slow.clone() {
            // The slow direction stays slow to the end; the lossy one heals.
            self.net.reset_link(&b, &a);
        }
        self.net.set_default_link(LinkConfig::perfect(Duration::from_millis(1)));
        // A flapping link keeps flapping through the heal.
        self.flap_cut = false;
        self.flap_due();
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() {
                self.boot(i);
            }
            if self.nodes[i].paused_until.is_some() {
                self.nodes[i].paused_until = Some(self.now);
            }
        }
    }

    fn faults_due(&mut self) {
        while let Some(entry) = self.faults.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let fault = entry.remove();
            self.trace.str(&format!("{fault:?}"));
            self.faults_applied += 1;
            self.apply_fault(fault);
        }
    }

    fn apply_fault(&mut self, fault: Fault) {
        match fault {
            Fault::Partition(a, b) => self.net.partition(&a, &b),
            Fault::Repair(a, b) => self.net.repair(&a, &b),
            Fault::OneWay(a, b) => self.net.partition_one_way(&a, &b),
            Fault::RepairOneWay(a, b) => self.net.repair_one_way(&a, &b),
            Fault::Isolate(a) => self.net.isolate(&a),
            Fault::Rejoin(a) => self.net.rejoin(&a),
            Fault::Crash(i) => {
                let n = &mut self.nodes[i];
                if n.node.take().is_some() {
                    n.paused_until = None;
                    n.inbox.clear();
                    n.crashed_until = Some(Timestamp::MAX);
                    let id = n.id.clone();
                    self.net.drop_in_flight_to(&id);
                    self.note_bulk_lost();
                }
            }
            Fault::Restart(i) => {
                if self.nodes[i].node.is_none() {
                    self.boot(i);
                }
            }
            Fault::Pause(i, d) => {
                let n = &mut self.nodes[i];
                if n.running() {
                    n.paused_until = Some(self.now + d);
                }
            }
            Fault::Links(l) => self.net.set_default_link(l),
            Fault::CrashMany(nodes) => {
                for i in nodes {
                    self.apply_fault(Fault::Crash(i));
                }
            }
            Fault::SlowPair(a, b) => {
                // Slow (0.3 to 1.5 s, jittered) from a to b, to the end of the
                // run; lossy (20 to 50 %) from b to a, until the heal.
                let latency = Duration::from_millis(300 + self.rng.below(1_200));
                let jitter = Duration::from_millis(self.rng.below(300));
                let slow = LinkConfig { jitter, ..LinkConfig::perfect(latency) };
                let loss =
                    Probability::new((20 + self.rng.below(31)) as f64 / 100.0).unwrap_or(Probability::ZERO);
                let lossy =
                    LinkConfig { loss, ..LinkConfig::perfect(Duration::from_millis(1 + self.rng.below(20))) };
                self.net.set_link(&a, &b, slow);
                self.net.set_link(&b, &a, lossy);
                self.slow = Some((a, b));
            }
            Fault::Hold(a, b) => self.net.hold(&a, &b),
            Fault::Release(a, b) => self.net.release(self.now, &a, &b),
            Fault::Clog(a) => self.net.clog(&a),
            Fault::Unclog(a) => self.net.unclog(self.now, &a),
        }
    }

    fn resumes_due(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            let due = self.nodes[i].paused_until.is_some_and(|t| t <= self.now);
            if !due {
                continue;
            }
            self.nodes[i].paused_until = None;
            self.trace.u64(0x5e5u64 + i as u64);
            let local = self.nodes[i].local(self.now);
            if self.scenario.faults.timers_first {
                // The timers that fell due during the pause fire before the
                // messages that arrived meanwhile are read.
                if let Some(node) = self.nodes[i].node.as_mut() {
                    node.handle_timeout(local);
                }
                self.drain(i);
            }
            while let Some(frame) = self.nodes[i].inbox.pop_front() {
                self.receive(i, &frame)?;
            }
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_timeout(local);
            }
            self.drain(i);
        }
        Ok(())
    }

    fn deliveries_due(&mut self) -> Result<(), Violation> {
        let mut touched = BTreeSet::new();
        while let Some(d) = self.net.poll_delivery(self.now) {
            let Some(&i) = self.index.get(&d.to) else { continue };
            touched.insert(i);
            self.trace.u64(i as u64).bytes(&d.msg.0[..d.msg.0.len().min(64)]);
            let n = &mut self.nodes[i];
            if n.node.is_none() {
                continue;
            }
            if n.paused_until.is_some() {
                if n.inbox.len() < INBOX_MAX {
                    n.inbox.push_back(d.msg);
                }
                continue;
            }
            self.receive(i, &d.msg)?;
        }
        if touched.is_empty() {
            return Ok(());
        }
        check::after_delivery(self, &touched)
    }

    fn receive(&mut self, i: usize, frame: &Frame) -> Result<(), Violation> {
        let (bytes, corrupted) = frame;
        let (from, msg) = match decode(bytes) {
            Ok(_) if *corrupted => {
                return Err(self.violation("codec", "a frame with a flipped bit decoded".into()));
            }
            Ok(m) => m,
            Err(_) if *corrupted => {
                // Refused, as the HTTP node refuses the request (400): lost.
                self.corrupt_refused += 1;
                return Ok(());
            }
            Err(e) => {
                return Err(
                    self.violation("codec", format!("a frame our encoder made failed to decode: {e}"))
                );
            }
        };
        let local = self.nodes[i].local(self.now);
        let Some(node) = self.nodes[i].node.as_mut() else { return Ok(()) };
        match node.handle_message(local, &from, msg) {
            Ok(()) | Err(MessageError::RecordsRejected { .. }) => {}
            Err(e) => {
                let detail = format!("node {} refused a peer message: {e}", self.nodes[i].id);
                return Err(self.violation("peer-message", detail));
            }
        }
        self.drain(i);
        Ok(())
    }

    fn timeouts_due(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.running() {
                continue;
            }
            let local = n.local(self.now);
            let due = n.node.as_ref().and_then(Node::poll_timeout).is_some_and(|(t, _)| t <= local);
            if due {
                if let Some(node) = self.nodes[i].node.as_mut() {
                    node.handle_timeout(local);
                }
                self.drain(i);
            }
        }
    }

    /// Moves a node's outputs into the network and the trace.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_mut() else { return };
        let corrupt = self.scenario.faults.corrupt;
        while let Some(t) = node.poll_transmit() {
            let mut bytes = encode(&n.id, &t.msg);
            let len = bytes.len();
            let flip = corrupt > 0.0 && self.rng.chance(corrupt);
            if flip {
                let bit = self.rng.below(len as u64 * 8) as usize;
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            self.net.send(now, &n.id, &t.to, (bytes, flip), len);
        }
        let mut events = Vec::new();
        while let Some(e) = node.poll_event() {
            let code = match &e {
                Event::ServiceChanged(_) => 1,
                Event::PeerStateChanged(_) => 2,
                Event::Ready { .. } => 3,
                Event::PauseDetected { .. } => 4,
                Event::InstanceChanged(_) => 6,
                _ => 5,
            };
            self.trace.u64(code);
            if matches!(code, 2 | 4 | 6) {
                events.push(e);
            }
        }
        // What the node owes grace to first, then its verdicts.
        for e in &events {
            match e {
                Event::PeerStateChanged(_) => self.track_responsibility(i),
                Event::PauseDetected { .. } => self.nodes[i].pause_seen = Some(now),
                _ => {}
            }
        }
        for e in events {
            match e {
                Event::InstanceChanged(c)
                    if c.cause == ChangeCause::Silence
                        && c.origin == self.nodes[i].id
                        && matches!(c.kind, ChangeKind::Unhealthy | ChangeKind::Expired) =>
                {
                    self.judged(i, &c.key)
                }
                _ => {}
            }
        }
    }

    // ---- clients -------------------------------------------------------

    fn clients_due(&mut self) -> Result<(), Violation> {
        for p in 0..self.providers.len() {
            while self.providers[p].plan.front().is_some_and(|(t, _)| *t <= self.now) {
                let Some((_, what)) = self.providers[p].plan.pop_front() else { break };
                self.lifecycle(p, what)?;
            }
            let mut budget = 4;
            while self.providers[p].next_at <= self.now && budget > 0 {
                budget -= 1;
                self.provider_act(p)?;
            }
        }
        Ok(())
    }

    fn lifecycle(&mut self, p: usize, what: Plan) -> Result<(), Violation> {
        self.trace.u64(0x1000 + p as u64).u64(what as u64);
        match what {
            Plan::Start => {
                self.providers[p].life = Life::Alive;
                self.providers[p].next_at = self.now;
            }
            Plan::Die => {
                if self.providers[p].life == Life::Alive {
                    self.providers[p].life = Life::Dead { at: self.now };
                    self.providers[p].next_at = Timestamp::MAX;
                }
            }
            Plan::Leave | Plan::Rejoin => {
                if self.providers[p].life != Life::Alive {
                    return Ok(());
                }
                let target = self.providers[p].target;
                let key = self.providers[p].key.clone();
                let local = self.nodes[target].local(self.now);
                let running = self.nodes[target].running();
                let token = self.providers[p].token;
                let result = match self.nodes[target].node.as_mut() {
                    Some(node) if running => Some(
                        node.observe_client(local, token)
                            .and_then(|()| node.deregister(local, &key))
                            .map(|()| (node.instance_record(&key), node.version_counter())),
                    ),
                    _ => None,
                };
                self.drain(target);
                self.providers[p].next_at = Timestamp::MAX;
                self.providers[p].life = match result {
                    Some(Ok((Some(Record::Instance { version, .. }), counter))) => {
                        self.providers[p].token = self.providers[p].token.max(counter);
                        Life::Left { version }
                    }
                    _ => Life::Dead { at: self.now },
                };
                if matches!(self.providers[p].life, Life::Left { .. }) {
                    // Strict invariant 4 from the instant of the acknowledgement.
                    self.tombstones_seen.insert((p, target, self.nodes[target].incarnation));
                }
                if what == Plan::Rejoin && matches!(self.providers[p].life, Life::Left { .. }) {
                    let at = self.now + Duration::from_millis(1 + self.rng.below(50));
                    self.providers[p].plan.push_front((at, Plan::Reregister));
                }
            }
            Plan::Reregister => {
                if matches!(self.providers[p].life, Life::Left { .. }) {
                    self.rejoin(p);
                }
            }
        }
        Ok(())
    }

    /// A client that just left registers again on another node, before the
    /// deregistration can have reached it.
    fn rejoin(&mut self, p: usize) {
        self.switch_target(p);
        let target = self.providers[p].target;
        if !self.reachable(target) {
            return;
        }
        let key = self.providers[p].key.clone();
        let local = self.nodes[target].local(self.now);
        let incarnation = self.nodes[target].incarnation;
        let Some(node) = self.nodes[target].node.as_mut() else { return };
        let token = self.providers[p].token;
        let ok = node.observe_client(local, token).is_ok()
            && node.register(local, RegisterRequest::new(key)).is_ok();
        let counter = node.version_counter();
        self.providers[p].token = self.providers[p].token.max(counter);
        self.drain(target);
        self.trace.u64(0x3000 + p as u64).u64(u64::from(ok));
        if ok {
            self.providers[p].registered_after = token;
            self.tombstones_seen.retain(|(q, _, _)| *q != p);
            let beat = muster_core::time::millis(self.config.timings.heartbeat_interval);
            let pr = &mut self.providers[p];
            pr.life = Life::Alive;
            pr.registered = true;
            pr.last_ack = Some(Ack { at: self.now, node: target, incarnation });
            pr.next_at = self.now + Duration::from_millis(beat);
        }
    }

    fn reachable(&self, i: usize) -> bool {
        self.nodes[i].running()
    }

    fn switch_target(&mut self, p: usize) {
        let n = self.nodes.len();
        let start = self.providers[p].target;
        for step in 1..=n {
            let i = (start + step) % n;
            if self.reachable(i) {
                self.providers[p].target = i;
                return;
            }
        }
        self.providers[p].target = (start + 1) % n;
    }

    fn provider_act(&mut self, p: usize) -> Result<(), Violation> {
        if self.providers[p].life != Life::Alive {
            self.providers[p].next_at = Timestamp::MAX;
            return Ok(());
        }
        let target = self.providers[p].target;
        if !self.reachable(target) {
            self.switch_target(p);
            self.providers[p].next_at = self.now + CLIENT_TIMEOUT;
            return Ok(());
        }
        let key = self.providers[p].key.clone();
        let registered = self.providers[p].registered;
        let local = self.nodes[target].local(self.now);
        let incarnation = self.nodes[target].incarnation;
        let Some(node) = self.nodes[target].node.as_mut() else { return Ok(()) };
        let token = self.providers[p].token;
        let registered_after = self.providers[p].registered_after;
        let result = if registered {
            node.heartbeat_after(local, &key, registered_after).map(Some)
        } else {
            let r = node
                .observe_client(local, token)
                .and_then(|()| node.register(local, RegisterRequest::new(key.clone())));
            self.providers[p].token = token.max(node.version_counter());
            if r.is_ok() {
                self.providers[p].registered_after = token;
            }
            r.map(|_| None)
        };
        self.drain(target);
        self.trace.u64(0x2000 + p as u64).u64(u64::from(result.is_ok()));
        let beat = muster_core::time::millis(self.config.timings.heartbeat_interval);
        match result {
            Ok(Some(BeatReply::Unknown)) => {
                self.providers[p].registered = false;
                self.providers[p].next_at = self.now;
            }
            Ok(_) => {
                let pr = &mut self.providers[p];
                pr.registered = true;
                pr.last_ack = Some(Ack { at: self.now, node: target, incarnation });
                pr.next_at = self.now + Duration::from_millis(beat - 100 + self.rng.below(200));
            }
            Err(RequestError::NotReady) => {
                self.switch_target(p);
                self.providers[p].next_at = self.now + Duration::from_millis(200);
            }
            Err(e) => return Err(self.violation("client", format!("provider {key} got {e}"))),
        }
        Ok(())
    }

    fn consumer_query(&mut self) -> Result<(), Violation> {
        let i = self.random_node();
        if !self.reachable(i) {
            return Ok(());
        }
        let service = ServiceKey::parse(None, None, &format!("svc-{}", self.rng.below(SERVICES as u64)));
        let Ok(service) = service else { return Ok(()) };
        let local = self.nodes[i].local(self.now);
        let Some(node) = self.nodes[i].node.as_mut() else { return Ok(()) };
        let sel = Selector { clusters: vec![], healthy_only: self.rng.chance(0.5) };
        match node.query(local, &service, &sel) {
            Ok(answer) => {
                self.trace.u64(answer.checksum().0);
                check::answer_matches_registry(self, i, &service, &sel, &answer)
            }
            Err(RequestError::NotReady) => Ok(()),
            Err(e) => Err(self.violation("consumer", format!("query of {service} failed: {e}"))),
        }
    }

    pub(crate) fn violation(&self, kind: &str, detail: String) -> Violation {
        Violation { seed: self.scenario.seed, at: self.now, kind: kind.to_owned(), detail }
    }

    /// The node processes that run and have loaded the registry.
    pub(crate) fn ready_nodes(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.running())
            .filter_map(|(i, n)| n.node.as_ref().map(|node| (i, node)))
            .filter(|(_, node)| node.is_ready())
    }

    /// Moves the acknowledged persistent instances that no node still in
    /// memory holds live from `bulk_acked` to `bulk_lost`: the simulated
    /// nodes have no store, so a record acknowledged by nodes that have all
    /// crashed since, before it reached another, is gone (with a store it
    /// would not be: harness/src/disk.rs). Exact, not a tolerance: a record
    /// some node still holds must converge everywhere.
    fn note_bulk_lost(&mut self) {
        if self.bulk_acked.is_empty() {
            return;
        }
        let holders: Vec<&Node> = self.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        let lost: Vec<InstanceKey> = self
            .bulk_acked
            .iter()
            .filter(|k| {
                !holders.iter().any(|n| {
                    matches!(
                        n.instance_record(k),
                        Some(Record::Instance { state: InstanceState::Live(_), .. })
                    )
                })
            })
            .cloned()
            .collect();
        for k in lost {
            self.bulk_acked.remove(&k);
            self.bulk_lost.insert(k);
        }
    }

    /// Providers alive and registered.
    pub(crate) fn alive_keys(&self) -> BTreeSet<InstanceKey> {
        let mut keys: BTreeSet<InstanceKey> = self
            .providers
            .iter()
            .filter(|p| p.life == Life::Alive && p.registered)
            .map(|p| p.key.clone())
            .collect();
        keys.extend(self.bulk_acked.iter().cloned());
        keys
    }
}

/// Runs one scenario.
pub fn run(scenario: Scenario) -> Outcome {
    Sim::new(scenario, None).run()
}

/// Runs one scenario with a deliberate bug injected in every node.
pub fn run_with_bug(scenario: Scenario, bug: Bug) -> Outcome {
    Sim::new(scenario, Some(bug)).run()
}

/// Two non-empty groups of nodes (one may be empty with a single node).
fn split(rng: &mut SplitMix64, nodes: &[SimNode]) -> (Vec<NodeId>, Vec<NodeId>) {
    let n = nodes.len();
    let cut = 1 + rng.below(n.saturating_sub(1).max(1) as u64) as usize;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let ids = |s: &[usize]| s.iter().map(|i| nodes[*i].id.clone()).collect::<Vec<_>>();
    (ids(&order[..cut.min(n)]), ids(&order[cut.min(n)..]))
}
