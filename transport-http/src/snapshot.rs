//! Published read snapshots: the latest view of every service clients read
//! or watch, and whether the node is ready.
//!
//! Views are published on demand: the first read or watch of a service asks
//! the driver for its view ([`crate::driver::DriverHandle::load_view`]), which
//! publishes it; from then on the driver republishes it after each batch of
//! inputs that changed the service, and handler tasks select from it
//! ([`ServiceView::select`]) without going through the driver, so reads
//! never queue behind writes. Services nobody reads cost no view at all.
//! Each published service has a watch channel that long polls wait on, and
//! keeps the rendered JSON of its two common answers (all instances, healthy
//! only) once rendered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use bytes::Bytes;
use muster_core::{ServiceKey, ServiceView};
use tokio::sync::{Notify, watch};

/// A published view with its rendered common answers.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) view: Arc<ServiceView>,
    /// When the driver published this view (for the watch wake-up metric).
    pub(crate) at: std::time::Instant,
    /// JSON bodies of the answers without a cluster filter: `[all, healthy only]`.
    bodies: [OnceLock<Bytes>; 2],
    /// A per-node number of this publication, increasing from one
    /// publication to the next, set on first use by the adapters that need
    /// one (Consul's `X-Consul-Index`).
    pub(crate) index: OnceLock<u64>,
    /// Consul's common answers of this view, rendered once:
    /// `[health all, health passing, catalog]` (see `compat/consul`).
    pub(crate) consul: [OnceLock<Bytes>; 3],
}

impl Published {
    pub(crate) fn new(view: Arc<ServiceView>) -> Arc<Published> {
        Arc::new(Published {
            view,
            at: std::time::Instant::now(),
            bodies: [OnceLock::new(), OnceLock::new()],
            index: OnceLock::new(),
            consul: Default::default(),
        })
    }

    /// The body of a common answer, rendered once per view.
    pub(crate) fn body(&self, healthy_only: bool, render: impl FnOnce() -> Bytes) -> Bytes {
        self.bodies[usize::from(healthy_only)].get_or_init(render).clone()
    }
}

/// The latest views, shared by the driver (writer) and the handlers.
///
/// An entry of a service the node does not know (no record, no instance) is
/// kept only while someone watches it, so that a change wakes the watcher:
/// it is freed when its last watcher leaves ([`Snapshots::release`]), and at
/// most `max_unknown` such entries exist at once (further watches of unknown
/// services are refused), so watches of names that do not exist cannot grow
/// the node's memory.
#[derive(Debug)]
pub(crate) struct Snapshots {
    services: RwLock<HashMap<ServiceKey, watch::Sender<Arc<Published>>>>,
    ready: AtomicBool,
    /// Entries whose view is of an unknown service (changed under the write lock).
    unknown: AtomicUsize,
    max_unknown: usize,
    /// Woken on every change of any service, read or not (catalog-wide
    /// blocking queries wait on it).
    any_change: Notify,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots::new(10_000)
    }
}

/// Whether a view is of a service the node holds nothing of.
fn is_unknown(view: &ServiceView) -> bool {
    !view.known && view.instances.is_empty()
}

impl Snapshots {
    /// Empty snapshots keeping at most `max_unknown` watched unknown services.
    pub(crate) fn new(max_unknown: usize) -> Snapshots {
        Snapshots {
            services: RwLock::default(),
            ready: AtomicBool::new(false),
            unknown: AtomicUsize::new(0),
            max_unknown,
            any_change: Notify::new(),
        }
    }

    /// Whether the node has loaded the registry: reads are complete and
    /// writes are accepted.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Entries of watched services the node does not know.
    pub(crate) fn unknown_watched(&self) -> usize {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Wakes the waiters of [`Snapshots::any_change`] (driver only, on each
    /// changed service).
    pub(crate) fn changed(&self) {
        self.any_change.notify_waiters();
    }

    /// Where to wait for a change of any service.
    pub(crate) fn any_change(&self) -> &Notify {
        &self.any_change
    }

    /// The latest published view of a service, if it has one.
    pub(crate) fn get(&self, key: &ServiceKey) -> Option<Arc<Published>> {
        let map = self.services.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|tx| Arc::clone(&tx.borrow()))
    }

    /// Whether the service has a published view (the driver keeps it fresh).
    pub(crate) fn contains(&self, key: &ServiceKey) -> bool {
        self.services.read().unwrap_or_else(PoisonError::into_inner).contains_key(key)
    }

    /// A receiver of the service's views, if it is published.
    pub(crate) fn subscribe(&self, key: &ServiceKey) -> Option<watch::Receiver<Arc<Published>>> {
        self.services.read().unwrap_or_else(PoisonError::into_inner).get(key).map(watch::Sender::subscribe)
    }

    /// The services that have a published view.
    pub(crate) fn keys(&self) -> Vec<ServiceKey> {
        self.services.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    fn count(&self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.unknown.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Publishes a view on first demand (driver only). A view of a service
    /// the node does not know is kept only when `watched`, so reads of names
    /// that do not exist grow nothing. With `watched`, returns a receiver
    /// taken under the same lock (so the entry cannot be released before the
    /// watcher holds it), or `None` when the view is of an unknown service
    /// and `max_unknown` of those are watched already.
    pub(crate) fn insert(
        &self,
        view: Arc<ServiceView>,
        watched: bool,
    ) -> Option<watch::Receiver<Arc<Published>>> {
        let unknown = is_unknown(&view);
        if !watched && unknown {
            return None;
        }
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        let tx = match map.get(&view.key) {
            Some(tx) => {
                let before = is_unknown(&tx.borrow().view);
                tx.send_replace(Published::new(view));
                self.count(before, unknown);
                tx
            }
            None => {
                if unknown && self.unknown.load(Ordering::Relaxed) >= self.max_unknown {
                    return None;
                }
                self.count(false, unknown);
                let key = view.key.clone();
                map.entry(key).or_insert_with(|| watch::Sender::new(Published::new(view)))
            }
        };
        watched.then(|| tx.subscribe())
    }

    /// Frees the entry of an unknown service once nobody watches it
    /// (handlers, after dropping their receiver).
    pub(crate) fn release(&self, key: &ServiceKey) {
        let orphan =
            |tx: &watch::Sender<Arc<Published>>| tx.receiver_count() == 0 && is_unknown(&tx.borrow().view);
        {
            let map = self.services.read().unwrap_or_else(PoisonError::into_inner);
            if !map.get(key).is_some_and(orphan) {
                return;
            }
        }
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(orphan) {
            map.remove(key);
            self.count(true, false);
        }
    }

    /// Republishes changed views and wakes their watchers (driver only).
    /// Entries of services the node no longer knows are dropped unless
    /// watched.
    pub(crate) fn publish(&self, views: impl IntoIterator<Item = Arc<ServiceView>>) {
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        for view in views {
            let empty = is_unknown(&view);
            match map.get(&view.key) {
                Some(tx) if empty && tx.receiver_count() == 0 => {
                    let before = is_unknown(&tx.borrow().view);
                    map.remove(&view.key);
                    self.count(before, false);
                }
                Some(tx) => {
                    let before = is_unknown(&tx.borrow().view);
                    tx.send_replace(Published::new(view));
                    self.count(before, empty);
                }
                None => {}
            }
        }
    }
}

/// Services whose views must be published, first changed first: a service
/// that changes again keeps its place, so none waits behind busier ones.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    order: VecDeque<ServiceKey>,
    set: HashSet<ServiceKey>,
}

impl Dirty {
    pub(crate) fn insert(&mut self, key: ServiceKey) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<ServiceKey> {
        let key = self.order.pop_front()?;
        self.set.remove(&key);
        Some(key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Extend<ServiceKey> for Dirty {
    fn extend<I: IntoIterator<Item = ServiceKey>>(&mut self, keys: I) {
        for key in keys {
            self.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServiceKey {
        ServiceKey::parse(None, None, "orders").unwrap()
    }

    #[test]
    fn dirty_services_come_out_once_in_first_change_order() {
        let mut d = Dirty::default();
        let other = ServiceKey::parse(None, None, "a").unwrap();
        d.insert(key());
        d.insert(other.clone());
        d.insert(key());
        assert_eq!(d.pop(), Some(key()));
        assert_eq!(d.pop(), Some(other));
        assert!(d.pop().is_none() && d.is_empty());
    }

    #[test]
    fn an_unread_service_has_no_published_view() {
        let s = Snapshots::default();
        assert!(s.get(&key()).is_none());
        assert!(s.subscribe(&key()).is_none());
    }

    #[test]
    fn a_publication_wakes_a_subscriber() {
        let s = Snapshots::default();
        let mut view = ServiceView::empty(key());
        view.known = true;
        s.insert(Arc::new(view.clone()), false);
        let mut rx = s.subscribe(&key()).unwrap();
        rx.borrow_and_update();
        view.protect_threshold = 0.5;
        s.publish([Arc::new(view)]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(s.get(&key()).unwrap().view.protect_threshold, 0.5);
    }

    #[test]
    fn only_services_read_before_are_republished() {
        let s = Snapshots::default();
        let mut view = ServiceView::empty(key());
        view.known = true;
        s.publish([Arc::new(view.clone())]);
        assert!(!s.contains(&key()), "nobody read it: no view kept");
        s.insert(Arc::new(ServiceView::empty(key())), false);
        assert!(!s.contains(&key()), "an unknown service read once is not kept");
        s.insert(Arc::new(view), false);
        assert!(s.contains(&key()));
        s.publish([Arc::new(ServiceView::empty(key()))]);
        assert!(!s.contains(&key()), "forgotten and unwatched: dropped");
    }

    #[test]
    fn a_common_answer_is_rendered_once_per_view() {
        let p = Published::new(Arc::new(ServiceView::empty(key())));
        let first = p.body(false, || Bytes::from_static(b"a"));
        let second = p.body(false, || Bytes::from_static(b"b"));
        assert_eq!((first, second), (Bytes::from_static(b"a"), Bytes::from_static(b"a")));
    }
}
