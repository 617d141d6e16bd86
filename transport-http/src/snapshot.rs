//! Published read snapshots: the latest view of every service, and whether
//! the node is ready.
//!
//! The driver publishes [`ServiceView`]s after each batch of inputs; handler
//! tasks select from them ([`ServiceView::select`]) without going through
//! the driver, so reads never queue behind writes. Each service has a watch
//! channel that long polls wait on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use muster_core::{ServiceKey, ServiceView};
use tokio::sync::watch;

/// The latest views, shared by the driver (writer) and the handlers.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    services: RwLock<HashMap<ServiceKey, watch::Sender<Arc<ServiceView>>>>,
    ready: AtomicBool,
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

    /// The latest view of a service; an empty one if it has none.
    pub(crate) fn view(&self, key: &ServiceKey) -> Arc<ServiceView> {
        let map = self.services.read().unwrap_or_else(PoisonError::into_inner);
        match map.get(key) {
            Some(tx) => Arc::clone(&tx.borrow()),
            None => Arc::new(ServiceView::empty(key.clone())),
        }
    }

    /// A receiver of the service's views, current one included.
    pub(crate) fn subscribe(&self, key: &ServiceKey) -> watch::Receiver<Arc<ServiceView>> {
        if let Some(tx) = self.services.read().unwrap_or_else(PoisonError::into_inner).get(key) {
            return tx.subscribe();
        }
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| watch::Sender::new(Arc::new(ServiceView::empty(key.clone()))))
            .subscribe()
    }

    /// The services that have a published view.
    pub(crate) fn keys(&self) -> Vec<ServiceKey> {
        self.services.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Publishes new views and wakes their watchers. Entries of services the
    /// node does not know (their views equal [`ServiceView::empty`]) are
    /// dropped unless watched.
    pub(crate) fn publish(&self, views: impl IntoIterator<Item = Arc<ServiceView>>) {
        let mut map = self.services.write().unwrap_or_else(PoisonError::into_inner);
        for view in views {
            let empty = !view.known && view.instances.is_empty();
            match map.get(&view.key) {
                Some(tx) if empty && tx.receiver_count() == 0 => {
                    map.remove(&view.key);
                }
                Some(tx) => {
                    tx.send_replace(view);
                }
                None if empty => {}
                None => {
                    map.insert(view.key.clone(), watch::Sender::new(view));
                }
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
    fn an_absent_service_has_an_empty_view() {
        let s = Snapshots::default();
        assert!(s.view(&key()).instances.is_empty());
    }

    #[test]
    fn a_publication_wakes_a_subscriber() {
        let s = Snapshots::default();
        let mut rx = s.subscribe(&key());
        rx.borrow_and_update();
        let mut view = ServiceView::empty(key());
        view.protect_threshold = 0.5;
        view.known = true;
        s.publish([Arc::new(view)]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(s.view(&key()).protect_threshold, 0.5);
    }

    #[test]
    fn views_of_unknown_services_without_watchers_are_dropped() {
        let s = Snapshots::default();
        let mut view = ServiceView::empty(key());
        view.known = true;
        s.publish([Arc::new(view)]);
        assert!(s.view(&key()).known, "an emptied service stays known");
        s.publish([Arc::new(ServiceView::empty(key()))]);
        assert!(s.services.read().unwrap().is_empty());
    }
}
