//! Snapshot loading: a starting node asks one peer at a time (in a seeded
//! order) for pages of its registry, merges them, and is ready after the
//! last page. A peer that is itself not ready says so; when every peer has
//! (a whole cluster starting cold) the node is ready at once. A peer that
//! does not answer within `snapshot_retry` is replaced by the next; after
//! `startup_timeout` a lone node serves alone.

use std::collections::BTreeSet;

use crate::message::PeerMessage;
use crate::model::NodeId;
use crate::node::Event;
use crate::time::Timestamp;

use super::SyncManager;

/// A starting node loading the registry from its peers.
#[derive(Clone, Debug)]
pub(super) struct Loading {
    /// Peers in the order they are asked.
    order: Vec<NodeId>,
    /// Index in `order` of the peer being asked.
    at: usize,
    cursor: u64,
    asked_at: Timestamp,
    /// Peers asked so far: a late answer from any of them is taken.
    asked: BTreeSet<NodeId>,
    not_ready: BTreeSet<NodeId>,
    give_up_at: Timestamp,
}

impl SyncManager {
    pub(super) fn start_loading(&mut self, now: Timestamp) {
        let mut order: Vec<NodeId> = self.peers.clone();
        if order.is_empty() {
            self.events.push_back(Event::Ready { loaded_from: None });
            return;
        }
        // Seeded shuffle, so that starting nodes spread over their peers.
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let give_up_at = now + self.timings.startup_timeout;
        self.loading = Some(Loading {
            order,
            at: 0,
            cursor: 0,
            asked_at: now,
            asked: BTreeSet::new(),
            not_ready: BTreeSet::new(),
            give_up_at,
        });
        self.ask_snapshot(now, 0);
    }

    /// When loading next needs attention (retry or give up); `None` once
    /// ready.
    pub(super) fn loading_deadline(&self) -> Option<Timestamp> {
        let l = self.loading.as_ref()?;
        Some((l.asked_at + self.timings.snapshot_retry).min(l.give_up_at))
    }

    /// Gives up at `startup_timeout`, or asks the next peer after
    /// `snapshot_retry` without an answer.
    pub(super) fn loading_timeout(&mut self, now: Timestamp) {
        if let Some(l) = &self.loading {
            if now >= l.give_up_at {
                self.become_ready(None);
            } else if now >= l.asked_at + self.timings.snapshot_retry {
                self.next_snapshot_peer(now);
            }
        }
    }

    /// A snapshot page arrived (its records are merged already).
    pub(super) fn snapshot_page(&mut self, now: Timestamp, from: &NodeId, next: Option<u64>, ready: bool) {
        let Some(l) = self.loading.as_mut() else { return };
        // Any peer asked during this startup may answer, even late: its
        // records are merged already, and paging continues where it says.
        let Some(at) = l.order.iter().position(|p| p == from).filter(|_| l.asked.contains(from)) else {
            return;
        };
        if !ready {
            l.not_ready.insert(from.clone());
            if l.not_ready.len() >= l.order.len() {
                // Every peer is starting too: a cold start of the whole cluster.
                self.become_ready(None);
            } else if at == l.at {
                self.next_snapshot_peer(now);
            }
            return;
        }
        l.at = at;
        match next {
            Some(cursor) => self.ask_snapshot(now, cursor),
            None => self.become_ready(Some(from.clone())),
        }
    }

    fn ask_snapshot(&mut self, now: Timestamp, cursor: u64) {
        let Some(l) = self.loading.as_mut() else { return };
        l.asked_at = now;
        l.cursor = cursor;
        if let Some(peer) = l.order.get(l.at).cloned() {
            l.asked.insert(peer.clone());
            self.transmit(peer, PeerMessage::SnapshotRequest { cursor });
        }
    }

    fn next_snapshot_peer(&mut self, now: Timestamp) {
        let Some(l) = self.loading.as_mut() else { return };
        l.at = (l.at + 1) % l.order.len().max(1);
        self.ask_snapshot(now, 0);
    }

    fn become_ready(&mut self, loaded_from: Option<NodeId>) {
        self.loading = None;
        self.events.push_back(Event::Ready { loaded_from });
    }
}
