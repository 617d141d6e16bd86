//! Who expires what: rendezvous hashing of instance keys over the members a
//! node does not consider down.
//!
//! Rendezvous (highest random weight) hashing, Thaler and Ravishankar, "A
//! Name-Based Mapping Scheme for Rendezvous", 1996: every key goes to the
//! member with the highest `weight(member, key)`. When a member leaves, only
//! its keys move; when it returns, they move back.

use crate::hash::{StableHasher, mix64};
use crate::model::NodeId;

/// A snapshot of responsibility: this node and the members it counts as up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Responsibility {
    me: NodeId,
    /// (hash of id, id) of every member counted, this node included; sorted by id.
    members: Vec<(u64, NodeId)>,
}

fn node_hash(id: &NodeId) -> u64 {
    StableHasher::new().u64(0x6e6f_6465).str(id.as_str()).finish()
}

/// The rendezvous weight of `key_hash` on the node whose id hashes to `node`.
pub fn weight(node: u64, key_hash: u64) -> u64 {
    mix64(node ^ key_hash)
}

impl Responsibility {
    /// This node alone.
    pub fn alone(me: NodeId) -> Responsibility {
        Responsibility::new(me, std::iter::empty())
    }

    /// This node and the given others.
    pub fn new<'a>(me: NodeId, others: impl IntoIterator<Item = &'a NodeId>) -> Responsibility {
        let mut members: Vec<(u64, NodeId)> =
            others.into_iter().filter(|o| **o != me).map(|o| (node_hash(o), o.clone())).collect();
        members.push((node_hash(&me), me.clone()));
        members.sort_by(|a, b| a.1.cmp(&b.1));
        members.dedup_by(|a, b| a.1 == b.1);
        Responsibility { me, members }
    }

    /// The member responsible for the key with stable hash `key_hash`.
    pub fn owner(&self, key_hash: u64) -> &NodeId {
        let mut best: Option<(u64, &NodeId)> = None;
        for (h, id) in &self.members {
            let w = weight(*h, key_hash);
            // Members are sorted by id, so on equal weights the first id wins.
            if best.is_none_or(|(bw, _)| w > bw) {
                best = Some((w, id));
            }
        }
        best.map_or(&self.me, |(_, id)| id)
    }

    /// Whether this node is responsible for the key.
    pub fn is_mine(&self, key_hash: u64) -> bool {
        *self.owner(key_hash) == self.me
    }

    /// The members counted, this node included.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        self.members.iter().map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    #[test]
    fn every_node_computes_the_same_owner() {
        let ids = [id("a:1"), id("b:1"), id("c:1")];
        let views: Vec<_> = ids.iter().map(|me| Responsibility::new(me.clone(), ids.iter())).collect();
        for key in 0..1000u64 {
            let k = mix64(key);
            let owner = views[0].owner(k).clone();
            assert!(views.iter().all(|v| *v.owner(k) == owner));
            assert_eq!(views.iter().filter(|v| v.is_mine(k)).count(), 1);
        }
    }

    #[test]
    fn only_the_keys_of_a_leaving_node_move() {
        let ids = [id("a:1"), id("b:1"), id("c:1")];
        let all = Responsibility::new(id("a:1"), ids.iter());
        let without_c = Responsibility::new(id("a:1"), ids[..2].iter());
        let mut moved = 0;
        for key in 0..3000u64 {
            let k = mix64(key);
            let before = all.owner(k);
            if *before == id("c:1") {
                moved += 1;
            } else {
                assert_eq!(before, without_c.owner(k));
            }
        }
        assert!((800..1200).contains(&moved), "c owned {moved} of 3000");
    }

    #[test]
    fn a_lone_node_owns_everything() {
        let r = Responsibility::alone(id("a:1"));
        assert!(r.is_mine(42));
    }
}
