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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use bytes::Bytes;
use muster_core::{ServiceKey, ServiceView};
use tokio::sync::{Notify, watch};

/// A published view with its rendered common answers.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) view: Arc<ServiceView>,
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
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    services: RwLock<HashMap<ServiceKey, watch::Sender<Arc<Published>>>>,
    ready: AtomicBool,
    /// Woken on every change of any service, read or not (catalog-wide
    /// blocking queries wait on it).
    any_change: Notify,
}

impl Snapshots {
    /// Whether the node has loaded the registry: reads are complete and
    /// writes are accepted.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
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

    /// Publishes a view on first demand (driver only). A view of a service
    /// the node does not know is kept only when `watched`, so reads of names
    /// that do not exist grow nothing.
    pub(crate) fn insert(&self, view: Arc<ServiceView>, watched: bool) {
        if !watched && !view.known && view.instances.is_empty() {
            return;
        }
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        match map.get(&view.key) {
            Some(tx) => {
                tx.send_replace(Published::new(view));
            }
            None => {
                map.insert(view.key.clone(), watch::Sender::new(Published::new(view)));
            }
        }
    }

    /// Republishes changed views and wakes their watchers (driver only).
    /// Entries of services the node no longer knows are dropped unless
    /// watched.
    pub(crate) fn publish(&self, views: impl IntoIterator<Item = Arc<ServiceView>>) {
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        for view in views {
            let empty = !view.known && view.instances.is_empty();
            match map.get(&view.key) {
                Some(tx) if empty && tx.receiver_count() == 0 => {
                    map.remove(&view.key);
                }
                Some(tx) => {
                    tx.send_replace(Published::new(view));
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
