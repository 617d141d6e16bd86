//! Building the views queries are answered from.
//!
//! A service's view is rebuilt only when it is asked for after a change.
//! Each instance's `InstanceView` is built once per change of that instance
//! and shared by every later view, and a view after a few changes is the
//! previous view patched (binary search, remove, insert) rather than a sort
//! of every instance. Patching gives way to a full rebuild when many
//! instances changed.

use std::sync::Arc;

use crate::model::{InstanceData, ServiceKey};
use crate::record::{InstanceState, ServiceState};
use crate::view::{InstanceView, ServiceView};

use super::{InstanceEntry, ServiceRecord, Storage, ViewChange};

/// The view of one instance, built if the cached one is stale.
fn instance_view(e: &mut InstanceEntry) -> Option<Arc<InstanceView>> {
    let InstanceState::Live(d) = &e.state else { return None };
    if let Some(v) = &e.view {
        return Some(Arc::clone(v));
    }
    let v = Arc::new(build_instance_view(e, d));
    e.view = Some(Arc::clone(&v));
    Some(v)
}

/// How queries show a live instance.
pub(super) fn build_instance_view(e: &InstanceEntry, d: &InstanceData) -> InstanceView {
    let mut v = InstanceView {
        instance_id: instance_id(e),
        cluster: e.cluster.clone(),
        ip: e.ip.clone(),
        port: e.port,
        weight: d.weight,
        healthy: d.healthy,
        enabled: d.enabled,
        ephemeral: d.ephemeral,
        metadata: d.metadata.clone(),
        content_hash: 0,
    };
    v.compute_hash();
    v
}

fn instance_id(e: &InstanceEntry) -> String {
    crate::model::instance_id(&e.ip, e.port, &e.cluster)
}

impl Storage {
    /// The current view of the service in slot `index`.
    pub(crate) fn refresh_view(&mut self, index: u32, key: &ServiceKey) -> Arc<ServiceView> {
        let Some(s) = self.services.get_mut(index) else {
            return Arc::new(ServiceView::empty(key.clone()));
        };
        if s.view_fresh {
            if let Some(v) = &s.view {
                return Arc::clone(v);
            }
        }
        let previous = s.view.take().filter(|_| !s.view_rebuild);
        let changes = std::mem::take(&mut s.view_changes);
        s.view_rebuild = false;
        let mut view = ServiceView::empty(s.key.clone());
        view.known = true;
        if let Some(ServiceRecord { state: ServiceState::Live(meta), .. }) = &s.record {
            view.protect_threshold = meta.protect_threshold;
            view.metadata = meta.metadata.clone();
        }
        view.instances = match previous {
            Some(prev) => self.patched(prev, &changes),
            None => self.rebuilt(index),
        };
        let view = Arc::new(view);
        if let Some(s) = self.services.get_mut(index) {
            s.view = Some(Arc::clone(&view));
            s.view_fresh = true;
        }
        view
    }

    /// Every live instance of the service, sorted.
    fn rebuilt(&mut self, index: u32) -> Vec<Arc<InstanceView>> {
        let Some(s) = self.services.get(index) else { return Vec::new() };
        let mut out = Vec::with_capacity(s.live as usize);
        for &m in &s.members {
            if let Some(v) = self.instances.get_mut(m).and_then(instance_view) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| (&a.cluster, &a.ip, a.port).cmp(&(&b.cluster, &b.ip, b.port)));
        out
    }

    /// The previous view's instances with the changes applied.
    fn patched(&mut self, prev: Arc<ServiceView>, changes: &[ViewChange]) -> Vec<Arc<InstanceView>> {
        let mut view = Arc::unwrap_or_clone(prev);
        for c in changes {
            if let Ok(at) = view.position(&c.cluster, &c.ip, c.port) {
                view.instances.remove(at);
            }
            let Some(e) = self.instances.get_mut(c.slot) else { continue };
            if (&e.cluster, &e.ip, e.port) != (&c.cluster, &c.ip, c.port) {
                continue; // The slot was reused by another instance since.
            }
            if let Some(v) = instance_view(e) {
                if let Err(at) = view.position(&c.cluster, &c.ip, c.port) {
                    view.instances.insert(at, v);
                }
            }
        }
        view.instances
    }
}
