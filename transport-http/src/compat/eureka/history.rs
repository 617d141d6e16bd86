//! The Eureka registry as clients fetch it: generations of the apps' views,
//! the bounded change history behind `/apps/delta`, and the rendered
//! `/apps` and delta answers, cached per generation and encoding.
//!
//! A generation is the list of the Eureka group's services with their
//! published views. Each fetch compares the current generation with the
//! last one (by view checksum, then instance by instance) and records what
//! was ADDED, MODIFIED or DELETED, stamped with the time it was seen. A
//! change stays for the configured retention (Eureka's three minutes) and
//! at most the configured count; a client that missed one sees an
//! `apps__hashcode` that differs from its own and fetches everything, which
//! is how Eureka's own clients recover.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_core::{
    Checksum, InstanceView, Name, Reply, Request, Selector, ServiceFilter, ServiceKey, ServiceView,
};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{EurekaError, EurekaSettings, wire};
use crate::api::AppState;

/// One recorded change.
#[derive(Debug)]
struct Change {
    seen: Instant,
    app: String,
    /// The rendered instance, with its `actionType`.
    instance: Arc<Value>,
}

/// One app of a generation.
#[derive(Debug, Clone)]
pub(super) struct App {
    pub(super) name: String,
    pub(super) view: Arc<ServiceView>,
    checksum: Checksum,
}

#[derive(Debug, Default)]
struct Inner {
    started: bool,
    /// The ticket of the newest generation applied.
    applied: u64,
    apps: Vec<App>,
    changes: VecDeque<Change>,
    /// Bumped when the apps change.
    generation: u64,
    /// Bumped when the change list changes.
    version: u64,
    hashcode: String,
    /// Rendered `/apps`: `(generation, body)` per encoding `[xml, json]`.
    full: [Option<(u64, Bytes)>; 2],
    /// Rendered delta: `(generation, version, body)` per encoding.
    delta: [Option<(u64, u64, Bytes)>; 2],
}

/// The Eureka adapter's state, shared by the node's handlers.
#[derive(Debug)]
pub(crate) struct History {
    retention: Duration,
    max_changes: usize,
    /// Numbers the fetches' readings, so that an older reading that
    /// finishes late is not applied over a newer one.
    tickets: AtomicU64,
    inner: Mutex<Inner>,
    /// Eureka id -> position, per app view, for renewals of apps with many
    /// instances (at most [`ID_INDEXES_MAX`] apps; cleared when full).
    ids: Mutex<HashMap<ServiceKey, IdIndex>>,
}

/// Most apps with a cached id index.
const ID_INDEXES_MAX: usize = 10_000;
/// Apps up to this many instances are scanned instead of indexed.
const SCAN_MAX: usize = 8;

#[derive(Debug)]
struct IdIndex {
    view: Arc<ServiceView>,
    positions: Arc<HashMap<String, usize>>,
}

/// What the routes render from: one consistent generation.
pub(super) struct Generation {
    pub(super) apps: Vec<App>,
    pub(super) hashcode: String,
    pub(super) version: u64,
}

impl History {
    pub(crate) fn new(s: &EurekaSettings) -> History {
        History {
            retention: s.delta_retention,
            max_changes: s.max_delta_changes,
            tickets: AtomicU64::new(1),
            inner: Mutex::default(),
            ids: Mutex::default(),
        }
    }

    /// The position of the instance with Eureka id `id` in `view`.
    pub(super) fn position(&self, view: &Arc<ServiceView>, id: &str) -> Option<usize> {
        if view.instances.len() <= SCAN_MAX {
            return view.instances.iter().position(|i| wire::instance_id(i) == id);
        }
        let cached = {
            let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
            ids.get(&view.key).filter(|x| Arc::ptr_eq(&x.view, view)).map(|x| Arc::clone(&x.positions))
        };
        let positions = match cached {
            Some(p) => p,
            None => {
                let built: HashMap<String, usize> = view
                    .instances
                    .iter()
                    .enumerate()
                    .map(|(n, i)| (wire::instance_id(i).into_owned(), n))
                    .collect();
                let built = Arc::new(built);
                let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
                if ids.len() >= ID_INDEXES_MAX {
                    ids.clear();
                }
                ids.insert(
                    view.key.clone(),
                    IdIndex { view: Arc::clone(view), positions: Arc::clone(&built) },
                );
                built
            }
        };
        positions.get(id).copied()
    }

    /// The current generation (updating the history).
    pub(super) async fn generation(&self, state: &Arc<AppState>) -> Result<Generation, EurekaError> {
        let inner = self.refreshed(state).await?;
        Ok(Generation { apps: inner.apps.clone(), hashcode: inner.hashcode.clone(), version: inner.version })
    }

    /// The `/apps` body in XML or JSON.
    pub(super) async fn full(&self, state: &Arc<AppState>, json: bool) -> Result<Bytes, EurekaError> {
        let mut inner = self.refreshed(state).await?;
        let slot = usize::from(json);
        if let Some((g, body)) = &inner.full[slot] {
            if *g == inner.generation {
                return Ok(body.clone());
            }
        }
        let lease = default_lease(state);
        let apps = inner
            .apps
            .iter()
            .map(|a| {
                let instances =
                    a.view.instances.iter().map(|i| wire::instance_value(&a.name, i, lease, "ADDED"));
                (a.name.clone(), instances.collect())
            })
            .collect();
        let body = encode(&wire::applications_value(inner.version, &inner.hashcode, apps), json);
        inner.full[slot] = Some((inner.generation, body.clone()));
        Ok(body)
    }

    /// The `/apps/delta` body in XML or JSON.
    pub(super) async fn delta(&self, state: &Arc<AppState>, json: bool) -> Result<Bytes, EurekaError> {
        let mut inner = self.refreshed(state).await?;
        let slot = usize::from(json);
        if let Some((g, v, body)) = &inner.delta[slot] {
            if (*g, *v) == (inner.generation, inner.version) {
                return Ok(body.clone());
            }
        }
        let mut by_app: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for c in &inner.changes {
            by_app.entry(c.app.as_str()).or_default().push((*c.instance).clone());
        }
        let apps = by_app.into_iter().map(|(name, list)| (name.to_owned(), list)).collect();
        let body = encode(&wire::applications_value(inner.version, &inner.hashcode, apps), json);
        inner.delta[slot] = Some((inner.generation, inner.version, body.clone()));
        Ok(body)
    }

    /// Reads the current generation (concurrent fetches read concurrently,
    /// through the driver), then applies it unless a newer reading was.
    async fn refreshed(&self, state: &Arc<AppState>) -> Result<MutexGuard<'_, Inner>, EurekaError> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let current = gather(state).await?;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if ticket > inner.applied {
            inner.applied = ticket;
            self.apply(state, &mut inner, current);
        }
        Ok(inner)
    }

    /// Records the differences of `current` from the last generation.
    fn apply(&self, state: &AppState, inner: &mut Inner, current: Vec<App>) {
        let now = Instant::now();
        let lease = default_lease(state);
        let mut changed = current.len() != inner.apps.len();
        let mut old: HashMap<&str, &App> = inner.apps.iter().map(|a| (a.name.as_str(), a)).collect();
        let mut found = Vec::new();
        for app in &current {
            match old.remove(app.name.as_str()) {
                Some(prev) if prev.checksum == app.checksum => {}
                prev => {
                    changed = true;
                    if inner.started {
                        diff(&app.name, prev.map(|p| &*p.view), Some(&app.view), lease, now, &mut found);
                    }
                }
            }
        }
        for (_, gone) in old {
            changed = true;
            if inner.started {
                diff(&gone.name, Some(&gone.view), None, lease, now, &mut found);
            }
        }
        let mut moved = !found.is_empty();
        inner.changes.extend(found);
        while inner.changes.len() > self.max_changes
            || inner.changes.front().is_some_and(|c| now.duration_since(c.seen) > self.retention)
        {
            inner.changes.pop_front();
            moved = true;
        }
        if changed || !inner.started {
            inner.generation += 1;
            inner.hashcode = hashcode(&current);
            inner.apps = current;
        }
        if moved || !inner.started {
            inner.version += 1;
        }
        inner.started = true;
    }
}

/// The lease shown for instances registered without one (through other APIs).
fn default_lease(state: &AppState) -> (Duration, Duration) {
    let t = &state.settings.core.timings;
    (t.heartbeat_interval, t.remove_after)
}

fn encode(v: &Value, json: bool) -> Bytes {
    if json {
        // Serialising a Value cannot fail.
        Bytes::from(serde_json::to_vec(v).unwrap_or_default())
    } else {
        Bytes::from(wire::value_to_xml(v))
    }
}

/// Records the changes from `old` to `new` of one app.
fn diff(
    app: &str,
    old: Option<&ServiceView>,
    new: Option<&ServiceView>,
    lease: (Duration, Duration),
    now: Instant,
    out: &mut Vec<Change>,
) {
    let empty = Vec::new();
    let olds = old.map_or(&empty, |v| &v.instances);
    let news = new.map_or(&empty, |v| &v.instances);
    let before: HashMap<_, &Arc<InstanceView>> = olds.iter().map(|i| (wire::instance_id(i), i)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut push = |i: &InstanceView, action: &str| {
        let instance = Arc::new(wire::instance_value(app, i, lease, action));
        out.push(Change { seen: now, app: app.to_owned(), instance });
    };
    for i in news {
        let id = wire::instance_id(i);
        match before.get(&id) {
            None => push(i, "ADDED"),
            Some(o) if Arc::ptr_eq(o, i) || ***o == **i => {}
            Some(_) => push(i, "MODIFIED"),
        }
        seen.insert(id);
    }
    for (id, i) in &before {
        if !seen.contains(id) {
            push(i, "DELETED");
        }
    }
}

/// `apps__hashcode` of a generation.
fn hashcode(apps: &[App]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in apps {
        for i in &a.view.instances {
            *counts.entry(wire::status(i)).or_default() += 1;
        }
    }
    wire::hashcode(&counts)
}

/// The Eureka group's services that have instances, with their views.
async fn gather(state: &Arc<AppState>) -> Result<Vec<App>, EurekaError> {
    let s = &state.settings.eureka;
    let page_size = state.settings.core.limits.max_page_size;
    let mut apps = Vec::new();
    for page in 1.. {
        let filter = ServiceFilter {
            namespace: s.namespace.clone(),
            group: Some(s.group.clone()),
            search: None,
            page,
            page_size,
        };
        let Reply::Services(listing) = state.driver.request(Request::ListServices(filter)).await? else {
            return Err(EurekaError::new(hyper::StatusCode::INTERNAL_SERVER_ERROR, "unexpected core reply"));
        };
        let last = page.saturating_mul(page_size) >= listing.total || listing.services.is_empty();
        for summary in listing.services.into_iter().filter(|s| s.instances > 0) {
            let view = view(state, &summary.key).await?;
            if view.instances.is_empty() {
                continue;
            }
            let checksum = view.select(&Selector::default()).checksum();
            apps.push(App { name: wire::app_name(&summary.key.service), view, checksum });
        }
        if last {
            break;
        }
    }
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    apps.dedup_by(|a, b| a.name == b.name);
    Ok(apps)
}

/// The published view of a service, published first if nobody read it yet.
pub(super) async fn view(state: &Arc<AppState>, key: &ServiceKey) -> Result<Arc<ServiceView>, EurekaError> {
    Ok(Arc::clone(&crate::api::published(state, key, false).await?.view))
}

/// The service key of an app in the Eureka group.
pub(super) fn app_key(s: &EurekaSettings, app: &str) -> Result<ServiceKey, EurekaError> {
    let service =
        Name::parse(muster_core::Field::Service, &app.to_ascii_uppercase()).map_err(EurekaError::invalid)?;
    Ok(ServiceKey { namespace: s.namespace.clone(), group: s.group.clone(), service })
}
