//! The Server Node Manager: cluster members and their health.
//!
//! Every node pings every peer each `ping_interval` (`tick`, whose pings and
//! the acks of `handle_ping` leave through `poll_transmit`); any message from a peer
//! (a ping, an ack, a delta) counts as hearing from it. A peer silent for
//! `suspect_after` is suspect, for `down_after` down, and up again on the
//! next message. Suspect peers keep their responsibility (a short hiccup
//! moves nothing); down peers lose it. Membership is static (from the
//! configuration); the member map is keyed by id so that joins can be added
//! without changing its users.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::Serialize;

use crate::config::Timings;
use crate::message::PeerMessage;
use crate::model::NodeId;
use crate::node::Transmit;
use crate::ordering::{ClockOffset, OffsetEstimator};
use crate::responsibility::Responsibility;
use crate::time::Timestamp;

/// A peer's health as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heard from within `suspect_after`.
    Up,
    /// Silent for `suspect_after`; still responsible for its keys.
    Suspect,
    /// Silent for `down_after`; its keys moved to the others.
    Down,
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerState::Up => "up",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        })
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Its id (advertised address).
    pub id: NodeId,
    /// Its state; this node is always up.
    pub state: PeerState,
    /// Whether this is the node itself.
    pub is_self: bool,
    /// When this node last heard from it (local time); `None` if never.
    #[serde(skip)]
    pub last_heard: Option<Timestamp>,
    /// When its state last changed (local time).
    #[serde(skip)]
    pub since: Timestamp,
    /// Its clock offset from this node's and the round trip it was measured
    /// with; `None` for this node and before the first ack.
    pub clock: Option<ClockOffset>,
    /// Whether its offset exceeds `max_clock_skew` beyond the estimate's
    /// uncertainty. For this node: whether most of its peers are so flagged,
    /// so that its own clock is the likely culprit.
    pub clock_skewed: bool,
}

/// A change of a peer's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The peer.
    pub peer: NodeId,
    /// Its state before.
    pub from: PeerState,
    /// Its state now.
    pub to: PeerState,
}

#[derive(Clone, Debug)]
struct Peer {
    state: PeerState,
    /// Last message, or the grace start (node start, pause) if later.
    last_heard: Timestamp,
    heard: Option<Timestamp>,
    since: Timestamp,
    clock: OffsetEstimator,
    skewed: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Membership {
    me: NodeId,
    peers: BTreeMap<NodeId, Peer>,
    suspect_after: std::time::Duration,
    down_after: std::time::Duration,
    started: Timestamp,
    ping_nonce: u64,
    /// Pings and acks for the node to send (drained after every call).
    transmits: VecDeque<Transmit>,
}

impl Membership {
    pub(crate) fn new(me: NodeId, peers: &[NodeId], timings: &Timings, now: Timestamp) -> Membership {
        let peers = peers
            .iter()
            .map(|p| {
                let peer = Peer {
                    state: PeerState::Up,
                    last_heard: now,
                    heard: None,
                    since: now,
                    clock: OffsetEstimator::default(),
                    skewed: false,
                };
                (p.clone(), peer)
            })
            .collect();
        Membership {
            me,
            peers,
            suspect_after: timings.suspect_after,
            down_after: timings.down_after,
            started: now,
            ping_nonce: 0,
            transmits: VecDeque::new(),
        }
    }

    pub(crate) fn is_member(&self, id: &NodeId) -> bool {
        self.peers.contains_key(id)
    }

    pub(crate) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn state(&self, id: &NodeId) -> Option<PeerState> {
        self.peers.get(id).map(|p| p.state)
    }

    /// Peers not considered down.
    pub(crate) fn reachable(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.iter().filter(|(_, p)| p.state != PeerState::Down).map(|(id, _)| id)
    }

    /// Who is responsible for what, given the current states.
    pub(crate) fn responsibility(&self) -> Responsibility {
        Responsibility::new(self.me.clone(), self.reachable())
    }

    /// Records a message from `id`; returns its transition to up, if any.
    pub(crate) fn heard_from(&mut self, now: Timestamp, id: &NodeId) -> Option<Transition> {
        let p = self.peers.get_mut(id)?;
        p.last_heard = p.last_heard.max(now);
        p.heard = Some(now);
        if p.state == PeerState::Up {
            return None;
        }
        let from = p.state;
        p.state = PeerState::Up;
        p.since = now;
        Some(Transition { peer: id.clone(), from, to: PeerState::Up })
    }

    /// A peer's ping, sent at its wall time `sent_ms` and taken at this
    /// node's `wall_ms`: answered with its nonce and both times (the peer's
    /// clock offset estimate needs all four, see [`crate::ordering`]).
    pub(crate) fn handle_ping(&mut self, from: &NodeId, nonce: u64, sent_ms: u64, wall_ms: u64) {
        let ack = PeerMessage::Ack { nonce, ping_sent_ms: sent_ms, received_ms: wall_ms, sent_ms: wall_ms };
        self.transmits.push_back(Transmit { to: from.clone(), msg: ack });
    }

    /// The next ping or ack to send. The node drains these after every call.
    #[must_use]
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Ages every peer by silence and pings every peer (`poll_transmit`),
    /// each ping carrying this node's wall time `wall_ms`; returns the
    /// transitions.
    pub(crate) fn tick(&mut self, now: Timestamp, wall_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for (id, p) in &mut self.peers {
            let silent = now.saturating_since(p.last_heard);
            let to = if silent >= self.down_after {
                PeerState::Down
            } else if silent >= self.suspect_after {
                PeerState::Suspect
            } else {
                PeerState::Up
            };
            // Silence only ever worsens a state here; recovery comes from a message.
            if to > p.state {
                out.push(Transition { peer: id.clone(), from: p.state, to });
                p.state = to;
                p.since = now;
            }
        }
        for id in self.peers.keys() {
            self.ping_nonce = self.ping_nonce.wrapping_add(1);
            self.transmits.push_back(Transmit {
                to: id.clone(),
                msg: PeerMessage::Ping { nonce: self.ping_nonce, sent_ms: wall_ms },
            });
        }
        out
    }

    /// Takes a ping round trip to `id` (`[t1, t2, t3, t4]`, see
    /// [`crate::ordering`]); returns its estimate and new flag when its skew
    /// flag changed against `bound`.
    pub(crate) fn clock_sample(
        &mut self,
        id: &NodeId,
        [t1, t2, t3, t4]: [u64; 4],
        bound: std::time::Duration,
    ) -> Option<(ClockOffset, bool)> {
        let p = self.peers.get_mut(id)?;
        p.clock.add(t1, t2, t3, t4);
        let estimate = p.clock.estimate()?;
        let skewed = estimate.exceeds(bound);
        if skewed == p.skewed {
            return None;
        }
        p.skewed = skewed;
        Some((estimate, skewed))
    }

    /// Whether most peers are flagged skewed: then this node's own clock is
    /// the likely culprit.
    pub(crate) fn self_skewed(&self) -> bool {
        let skewed = self.peers.values().filter(|p| p.skewed).count();
        skewed > 0 && skewed * 2 > self.peers.len()
    }

    /// Gives every peer a fresh grace period (after this node paused, its
    /// silence says nothing about theirs).
    pub(crate) fn grant_grace(&mut self, now: Timestamp) {
        for p in self.peers.values_mut() {
            p.last_heard = p.last_heard.max(now);
        }
    }

    /// Every member, this node first.
    pub(crate) fn view(&self) -> Vec<MemberView> {
        let mut out = vec![MemberView {
            id: self.me.clone(),
            state: PeerState::Up,
            is_self: true,
            last_heard: None,
            since: self.started,
            clock: None,
            clock_skewed: self.self_skewed(),
        }];
        out.extend(self.peers.iter().map(|(id, p)| MemberView {
            id: id.clone(),
            state: p.state,
            is_self: false,
            last_heard: p.heard,
            since: p.since,
            clock: p.clock.estimate(),
            clock_skewed: p.skewed,
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn members() -> Membership {
        Membership::new(id("a:1"), &[id("b:1"), id("c:1")], &Timings::default(), Timestamp::ZERO)
    }

    #[test]
    fn a_tick_pings_every_peer_and_a_ping_is_answered_with_its_nonce() {
        let mut m = members();
        let _ = m.tick(Timestamp::from_millis(1000), 0);
        let pings: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
        let to: Vec<&str> = pings.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(to, ["b:1", "c:1"]);
        assert!(matches!(pings[0].msg, PeerMessage::Ping { nonce: 1, sent_ms: 0 }));
        assert!(matches!(pings[1].msg, PeerMessage::Ping { nonce: 2, sent_ms: 0 }));
        m.handle_ping(&id("c:1"), 7, 5, 9);
        let ack = m.poll_transmit().unwrap();
        assert_eq!(
            (ack.to, ack.msg),
            (id("c:1"), PeerMessage::Ack { nonce: 7, ping_sent_ms: 5, received_ms: 9, sent_ms: 9 })
        );
        assert_eq!(m.poll_transmit(), None);
    }

    #[test]
    fn a_silent_peer_becomes_suspect_then_down() {
        let mut m = members();
        let t = Timings::default();
        m.heard_from(Timestamp::ZERO, &id("c:1"));
        assert!(m.tick(Timestamp::ZERO + (t.suspect_after - Duration::from_millis(1)), 0).is_empty());
        let tr = m.tick(Timestamp::ZERO + t.suspect_after, 0);
        assert_eq!(tr.len(), 2);
        assert!(tr.iter().all(|t| t.to == PeerState::Suspect));
        let tr = m.tick(Timestamp::ZERO + t.down_after, 0);
        assert!(tr.iter().all(|t| t.from == PeerState::Suspect && t.to == PeerState::Down));
        assert_eq!(m.reachable().count(), 0);
        assert!(m.responsibility().is_mine(12345));
    }

    #[test]
    fn any_message_brings_a_down_peer_back_up() {
        let mut m = members();
        m.tick(Timestamp::from_millis(60_000), 0);
        let tr = m.heard_from(Timestamp::from_millis(60_001), &id("b:1")).unwrap();
        assert_eq!((tr.from, tr.to), (PeerState::Down, PeerState::Up));
        assert_eq!(m.state(&id("b:1")), Some(PeerState::Up));
        assert_eq!(m.heard_from(Timestamp::from_millis(60_002), &id("b:1")), None);
    }

    #[test]
    fn messages_from_strangers_are_not_members() {
        let mut m = members();
        assert_eq!(m.heard_from(Timestamp::ZERO, &id("x:1")), None);
        assert!(!m.is_member(&id("x:1")));
    }

    #[test]
    fn a_peer_past_the_skew_bound_is_flagged_and_a_node_skewed_against_most_flags_itself() {
        let mut m = members();
        let bound = Duration::from_millis(500);
        let t = 1_700_000_000_000u64;
        // b:1 is 2 s ahead over a 10 ms round trip; c:1 is 300 ms behind.
        assert_eq!(
            m.clock_sample(&id("b:1"), [t, t + 2_005, t + 2_005, t + 10], bound).map(|x| x.1),
            Some(true)
        );
        assert_eq!(m.clock_sample(&id("b:1"), [t, t + 2_005, t + 2_005, t + 10], bound), None, "no change");
        assert_eq!(m.clock_sample(&id("c:1"), [t, t - 295, t - 295, t + 10], bound), None);
        let view = m.view();
        let b = view.iter().find(|v| v.id == id("b:1")).unwrap();
        assert_eq!(b.clock, Some(ClockOffset { offset_ms: 2_000, rtt_ms: 10 }));
        assert!(b.clock_skewed);
        assert!(!view[0].clock_skewed, "one peer of two is no majority");
        m.clock_sample(&id("c:1"), [t, t - 995, t - 995, t + 10], bound);
        assert!(m.view()[0].clock_skewed, "both peers disagree with this node's clock");
        // An offset within the bound only by its uncertainty is not flagged.
        let mut m = members();
        assert_eq!(m.clock_sample(&id("b:1"), [t, t + 700, t + 700, t + 400], bound), None);
    }

    #[test]
    fn grace_after_a_pause_keeps_peers_up() {
        let mut m = members();
        m.grant_grace(Timestamp::from_millis(100_000));
        assert!(m.tick(Timestamp::from_millis(100_001), 0).is_empty());
    }
}
