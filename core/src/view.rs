//! What queries return: immutable, shareable views of a service.
//!
//! A [`ServiceView`] is built once per change of a service and shared
//! (`Arc`) by every query until the next change, so a repeated query of an
//! unchanged service does not rebuild its answer. Selection (cluster filter,
//! healthy only, protect threshold) is a pure function of the view, so a
//! transport can run it on any thread from a published snapshot.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::hash::StableHasher;
use crate::model::{Host, Metadata, Name, ServiceKey};

/// One instance as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceView {
    /// `ip#port#cluster`.
    pub instance_id: String,
    /// The cluster within the service.
    pub cluster: Name,
    /// Host.
    pub ip: Host,
    /// Port.
    pub port: u16,
    /// Weight, 0 to 10000.
    pub weight: f64,
    /// Whether it passes its health check.
    pub healthy: bool,
    /// Whether it takes traffic.
    pub enabled: bool,
    /// Whether it lives by heartbeats.
    pub ephemeral: bool,
    /// Metadata.
    pub metadata: Metadata,
    #[serde(skip)]
    pub(crate) content_hash: u64,
}

impl InstanceView {
    pub(crate) fn compute_hash(&mut self) {
        let mut h = StableHasher::new();
        h.str(self.cluster.as_str());
        self.ip.hash_into(&mut h);
        h.u64(u64::from(self.port))
            .u64(self.weight.to_bits())
            .u64(u64::from(self.healthy))
            .u64(u64::from(self.enabled))
            .u64(u64::from(self.ephemeral));
        self.metadata.hash_into(&mut h);
        self.content_hash = h.finish();
    }

    /// Whether the instance should get traffic: healthy and enabled.
    pub fn is_serving(&self) -> bool {
        self.healthy && self.enabled
    }
}

/// All instances of a service, sorted by cluster, ip and port.
///
/// Instances are shared (`Arc`) between successive views of a service, so a
/// new view after a change copies pointers, not instances. The answers to
/// the two most common queries (everything, healthy only, without a cluster
/// filter) are computed once per view, on first use.
#[derive(Clone, Debug)]
pub struct ServiceView {
    /// The service.
    pub key: ServiceKey,
    /// Its protect threshold, 0 to 1.
    pub protect_threshold: f64,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its live instances.
    pub instances: Vec<Arc<InstanceView>>,
    /// Whether the node holds any record of the service (live instances,
    /// tombstones of removed ones, or explicit settings). An empty view of a
    /// known service means it was really emptied; an empty view of an
    /// unknown one may mean the node lost its memory (a restarted single
    /// node), and a client cache should not be wiped for it.
    pub known: bool,
    /// Selections without a cluster filter: `[all, healthy only]`.
    common: OnceLock<[Selection; 2]>,
}

impl PartialEq for ServiceView {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.protect_threshold == other.protect_threshold
            && self.metadata == other.metadata
            && self.instances == other.instances
            && self.known == other.known
    }
}

/// A selection from a view: which instances, their checksum, and whether the
/// protect threshold was reached.
#[derive(Clone, Debug)]
struct Selection {
    indices: Option<Arc<[u32]>>,
    checksum: Checksum,
    reached: bool,
}

/// Which instances a query wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Only these clusters; empty for all.
    pub clusters: Vec<Name>,
    /// Only healthy, enabled instances (unless the protect threshold is reached).
    pub healthy_only: bool,
}

/// A checksum of a query answer's content: equal on every node that holds the
/// same instances, different (with overwhelming probability) otherwise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Checksum(pub u64);

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Checksum {
    /// Parses the 16-hex-digit form of [`fmt::Display`].
    pub fn parse(s: &str) -> Option<Checksum> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Checksum)
    }
}

/// The answer to a query: a view and the selection made from it.
#[derive(Clone, Debug)]
pub struct QueryAnswer {
    view: Arc<ServiceView>,
    indices: Option<Arc<[u32]>>,
    checksum: Checksum,
    protect_threshold_reached: bool,
}

impl QueryAnswer {
    /// The selected instances, in view order.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceView> {
        let all = &self.view.instances;
        let mut picked = self.indices.as_deref().map(|v| v.iter());
        let mut plain = if picked.is_none() { Some(all.iter()) } else { None };
        std::iter::from_fn(move || match (&mut picked, &mut plain) {
            (Some(p), _) => p.next().and_then(|i| all.get(*i as usize)).map(|i| &**i),
            (None, Some(a)) => a.next().map(|i| &**i),
            (None, None) => None,
        })
    }

    /// How many instances were selected.
    pub fn len(&self) -> usize {
        self.indices.as_ref().map_or(self.view.instances.len(), |i| i.len())
    }

    /// Whether nothing was selected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The checksum of the selected content.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// Whether the share of healthy instances fell below the service's protect
    /// threshold, so unhealthy instances were returned too.
    pub fn protect_threshold_reached(&self) -> bool {
        self.protect_threshold_reached
    }

    /// The view the answer was selected from.
    pub fn view(&self) -> &Arc<ServiceView> {
        &self.view
    }
}

impl ServiceView {
    /// The view of a service without instances.
    pub fn empty(key: ServiceKey) -> ServiceView {
        ServiceView {
            key,
            protect_threshold: 0.0,
            metadata: Metadata::default(),
            instances: Vec::new(),
            known: false,
            common: OnceLock::new(),
        }
    }

    /// Selects instances as `selector` asks, applying the protect threshold:
    /// when healthy and enabled instances make up less than the threshold of
    /// the enabled ones, all enabled ones are returned and the answer says so.
    pub fn select(self: &Arc<Self>, selector: &Selector) -> QueryAnswer {
        let sel = if selector.clusters.is_empty() {
            let common = self.common.get_or_init(|| [self.compute(&[], false), self.compute(&[], true)]);
            common[usize::from(selector.healthy_only)].clone()
        } else {
            self.compute(&selector.clusters, selector.healthy_only)
        };
        QueryAnswer {
            view: Arc::clone(self),
            indices: sel.indices,
            checksum: sel.checksum,
            protect_threshold_reached: sel.reached,
        }
    }

    fn compute(&self, clusters: &[Name], healthy_only: bool) -> Selection {
        let in_clusters = |i: &InstanceView| clusters.is_empty() || clusters.contains(&i.cluster);
        let (mut enabled, mut serving) = (0usize, 0usize);
        for i in self.instances.iter().filter(|i| in_clusters(i)) {
            enabled += usize::from(i.enabled);
            serving += usize::from(i.is_serving());
        }
        let reached = self.protect_threshold > 0.0
            && enabled > 0
            && (serving as f64) < self.protect_threshold * enabled as f64;
        let keep = |i: &InstanceView| {
            in_clusters(i) && (!healthy_only || if reached { i.enabled } else { i.is_serving() })
        };
        let mut h = StableHasher::new();
        h.u64(u64::from(reached));
        let indices = if clusters.is_empty() && !healthy_only {
            for i in &self.instances {
                h.u64(i.content_hash);
            }
            None
        } else {
            let mut picked = Vec::new();
            for (n, i) in self.instances.iter().enumerate().filter(|(_, i)| keep(i)) {
                h.u64(i.content_hash);
                picked.push(n as u32);
            }
            Some(Arc::from(picked))
        };
        Selection { indices, checksum: Checksum(h.finish()), reached }
    }

    /// The position of the instance with this cluster, ip and port, or where
    /// it would go.
    pub(crate) fn position(&self, cluster: &Name, ip: &Host, port: u16) -> Result<usize, usize> {
        self.instances.binary_search_by(|i| (&i.cluster, &i.ip, i.port).cmp(&(cluster, ip, port)))
    }
}

/// One line of a service listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceSummary {
    /// The service.
    #[serde(flatten)]
    pub key: ServiceKey,
    /// Live instances.
    pub instances: usize,
    /// Live instances that are healthy.
    pub healthy_instances: usize,
    /// Protect threshold, 0 to 1.
    pub protect_threshold: f64,
    /// Service metadata.
    pub metadata: Metadata,
    /// Whether the service was created explicitly (it stays when its last
    /// instance goes) or exists only through its instances.
    pub explicit: bool,
}

/// A page of a service listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServicePage {
    /// Services matching the filter, on all pages.
    pub total: usize,
    /// The page number, from 1.
    pub page: usize,
    /// The page size asked for.
    pub page_size: usize,
    /// This page's services, sorted by group then name.
    pub services: Vec<ServiceSummary>,
}

/// What a service listing asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFilter {
    /// The namespace.
    pub namespace: Name,
    /// Only this group, or all groups.
    pub group: Option<Name>,
    /// Only names containing this (case-insensitive), or all.
    pub search: Option<String>,
    /// Page number, from 1.
    pub page: usize,
    /// Page size.
    pub page_size: usize,
}

/// A namespace and how many services it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceSummary {
    /// The namespace.
    pub namespace: Name,
    /// Services in it.
    pub services: usize,
}
