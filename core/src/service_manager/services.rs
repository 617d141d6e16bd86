//! Service-level operations: explicit settings, listing, namespaces.

use std::collections::BTreeMap;

use crate::error::{Field, InvalidInput, RequestError};
use crate::model::{Metadata, Name, ServiceKey, ServiceMeta, parse_protect_threshold};
use crate::record::{ServiceState, Version};
use crate::request::ServiceUpdate;
use crate::time::Timestamp;
use crate::view::{NamespaceSummary, ServiceFilter, ServicePage, ServiceSummary};

use crate::storage::{ServiceEntry, ServiceRecord};

use super::ServiceManager;

impl ServiceManager {
    /// Sets a service's explicit record through the Storage's writer; a
    /// tombstone's purge time is the Service Manager's to decide.
    pub(super) fn set_service_record(
        &mut self,
        index: u32,
        version: Version,
        state: ServiceState,
        now: Timestamp,
        local: bool,
    ) {
        let purge_at = match &state {
            ServiceState::Removed { at_ms } => Some(self.purge_time(now, *at_ms)),
            ServiceState::Live(_) => None,
        };
        self.store.write_service(index, version, state, purge_at, local);
    }

    fn summary(s: &ServiceEntry) -> ServiceSummary {
        let (protect_threshold, metadata) = match &s.record {
            Some(ServiceRecord { state: ServiceState::Live(m), .. }) => {
                (m.protect_threshold, m.metadata.clone())
            }
            _ => (0.0, Metadata::default()),
        };
        ServiceSummary {
            key: s.key.clone(),
            instances: s.live as usize,
            healthy_instances: s.healthy as usize,
            protect_threshold,
            metadata,
            explicit: s.explicit(),
        }
    }

    /// One service, if clients can see it.
    pub(crate) fn service(&self, key: &ServiceKey) -> Result<ServiceSummary, RequestError> {
        self.store
            .find_service(key)
            .and_then(|i| self.store.services.get(i))
            .filter(|s| s.visible())
            .map(Self::summary)
            .ok_or_else(|| RequestError::ServiceNotFound(key.to_string()))
    }

    fn current_meta(&self, index: u32) -> ServiceMeta {
        match self.store.services.get(index).and_then(|s| s.record.as_ref()) {
            Some(ServiceRecord { state: ServiceState::Live(m), .. }) => m.clone(),
            _ => ServiceMeta::default(),
        }
    }

    fn apply_update(&self, mut meta: ServiceMeta, upd: ServiceUpdate) -> Result<ServiceMeta, RequestError> {
        if let Some(t) = upd.protect_threshold {
            meta.protect_threshold = parse_protect_threshold(t)?;
        }
        if let Some(m) = upd.metadata {
            meta.metadata = Metadata::parse(m, &self.limits.metadata())?;
        }
        Ok(meta)
    }

    /// Creates a service with explicit settings; refuses if it exists.
    pub(crate) fn create_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        upd: ServiceUpdate,
    ) -> Result<ServiceSummary, RequestError> {
        if self
            .store
            .find_service(key)
            .and_then(|i| self.store.services.get(i))
            .is_some_and(ServiceEntry::visible)
        {
            return Err(RequestError::ServiceExists(key.to_string()));
        }
        let meta = self.apply_update(ServiceMeta::default(), upd)?;
        let index = self.store.service_entry(key)?;
        let version = self.next_version(now);
        self.set_service_record(index, version, ServiceState::Live(meta), now, true);
        self.service(key)
    }

    /// Updates a visible service's settings (making it explicit).
    pub(crate) fn update_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        upd: ServiceUpdate,
    ) -> Result<ServiceSummary, RequestError> {
        let index = self
            .store
            .find_service(key)
            .filter(|i| self.store.services.get(*i).is_some_and(ServiceEntry::visible))
            .ok_or_else(|| RequestError::ServiceNotFound(key.to_string()))?;
        let current = self.current_meta(index);
        let meta = self.apply_update(current.clone(), upd)?;
        let explicit = self.store.services.get(index).is_some_and(ServiceEntry::explicit);
        if meta != current || !explicit {
            let version = self.next_version(now);
            self.set_service_record(index, version, ServiceState::Live(meta), now, true);
        }
        self.service(key)
    }

    /// Creates the service if clients cannot see it, else updates it.
    pub(crate) fn put_service(
        &mut self,
        now: Timestamp,
        key: &ServiceKey,
        upd: ServiceUpdate,
    ) -> Result<ServiceSummary, RequestError> {
        let visible = self
            .store
            .find_service(key)
            .and_then(|i| self.store.services.get(i))
            .is_some_and(ServiceEntry::visible);
        if visible { self.update_service(now, key, upd) } else { self.create_service(now, key, upd) }
    }

    /// Deletes a service; refuses while it has live instances.
    pub(crate) fn delete_service(&mut self, now: Timestamp, key: &ServiceKey) -> Result<(), RequestError> {
        let index = self
            .store
            .find_service(key)
            .filter(|i| self.store.services.get(*i).is_some_and(ServiceEntry::visible))
            .ok_or_else(|| RequestError::ServiceNotFound(key.to_string()))?;
        let Some(s) = self.store.services.get(index) else {
            return Err(RequestError::ServiceNotFound(key.to_string()));
        };
        if s.live > 0 {
            return Err(RequestError::ServiceNotEmpty {
                service: key.to_string(),
                instances: s.live as usize,
            });
        }
        let version = self.next_version(now);
        let removed = ServiceState::Removed { at_ms: self.wall(now) };
        self.set_service_record(index, version, removed, now, true);
        Ok(())
    }

    /// A page of the services of a namespace, sorted by group then name.
    pub(crate) fn list_services(&self, f: &ServiceFilter) -> Result<ServicePage, RequestError> {
        if f.page == 0 {
            return Err(InvalidInput::new(Field::Page, "pages are numbered from 1").into());
        }
        if f.page_size == 0 || f.page_size > self.limits.max_page_size {
            return Err(InvalidInput::new(
                Field::PageSize,
                format!("must be 1 to {}, got {}", self.limits.max_page_size, f.page_size),
            )
            .into());
        }
        let needle = f.search.as_deref().map(str::to_ascii_lowercase);
        let mut matching: Vec<&ServiceEntry> = self
            .store
            .services
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.visible() && s.key.namespace == f.namespace)
            .filter(|s| f.group.as_ref().is_none_or(|g| *g == s.key.group))
            .filter(|s| {
                needle.as_deref().is_none_or(|n| s.key.service.as_str().to_ascii_lowercase().contains(n))
            })
            .collect();
        matching.sort_by(|a, b| (&a.key.group, &a.key.service).cmp(&(&b.key.group, &b.key.service)));
        let start = (f.page - 1).saturating_mul(f.page_size);
        let services = matching.iter().skip(start).take(f.page_size).map(|s| Self::summary(s)).collect();
        Ok(ServicePage { total: matching.len(), page: f.page, page_size: f.page_size, services })
    }

    /// Namespaces holding visible services; `public` always.
    pub(crate) fn namespaces(&self) -> Vec<NamespaceSummary> {
        let mut counts: BTreeMap<Name, usize> = BTreeMap::new();
        if let Ok(public) = Name::parse(Field::Namespace, crate::model::DEFAULT_NAMESPACE) {
            counts.insert(public, 0);
        }
        for (_, s) in self.store.services.iter().filter(|(_, s)| s.visible()) {
            *counts.entry(s.key.namespace.clone()).or_default() += 1;
        }
        counts.into_iter().map(|(namespace, services)| NamespaceSummary { namespace, services }).collect()
    }
}
