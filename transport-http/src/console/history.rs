//! This node's history (a bounded ring of instance and node changes, fed by
//! the core's events in the driver) and the change signal the console's
//! pages long-poll on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use muster_core::{ChangeCause, ChangeKind, Event, InstanceKey, NodeId, PeerState};
use serde::Serialize;
use tokio::sync::watch;

/// What one history entry is about.
#[derive(Clone, Debug)]
enum Subject {
    /// An instance changed.
    Instance { key: InstanceKey, kind: ChangeKind, cause: &'static str, origin: NodeId },
    /// A peer changed state as this node sees it.
    Peer { peer: NodeId, from: PeerState, to: PeerState },
    /// The expiry brake engaged (`Some(held)`) or released (`None`).
    Brake(Option<usize>),
    /// This node's clock jumped (a stall): everything got a fresh grace period.
    Pause { gap_ms: u64 },
}

#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    at_ms: u64,
    subject: Subject,
}

/// The ring and the change signal, shared by the driver (writer) and the
/// ConsoleAPI handlers.
#[derive(Debug)]
pub(crate) struct Console {
    node: NodeId,
    capacity: usize,
    ring: Mutex<Ring>,
    changes: watch::Sender<u64>,
    /// Something changed since the last [`Console::flush`].
    dirty: AtomicBool,
    /// Readiness of the peers, for the cluster page.
    pub(crate) probes: super::Probes,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Entry>,
    next_seq: u64,
}

/// Which entries a history read wants.
#[derive(Debug, Default)]
pub(crate) struct HistoryFilter {
    pub(crate) namespace: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) service: Option<String>,
    pub(crate) ip: Option<String>,
    pub(crate) port: Option<u16>,
    /// Node events only (peers, brake, pauses).
    pub(crate) nodes_only: bool,
    /// Entries older than this sequence number only.
    pub(crate) before: Option<u64>,
    pub(crate) limit: usize,
}

/// One entry as the ConsoleAPI answers it.
#[derive(Debug, Serialize)]
pub(crate) struct EntryJson {
    seq: u64,
    /// Unix time of the change on this node, ms.
    at_ms: u64,
    /// `instance` or `node`.
    scope: &'static str,
    /// registered, deregistered, expired, unhealthy, healthy, held, updated;
    /// up, suspect, down; brake_engaged, brake_released, pause.
    event: &'static str,
    cause: Option<&'static str>,
    /// For `updated`: the fields that changed.
    fields: Vec<&'static str>,
    /// The node that wrote the record (instances), or the node concerned.
    node: String,
    namespace: Option<String>,
    group: Option<String>,
    service: Option<String>,
    cluster: Option<String>,
    ip: Option<String>,
    port: Option<u16>,
    detail: Option<String>,
}

impl Console {
    /// A console for node `node` keeping `capacity` history entries (0: no history).
    pub(crate) fn new(node: NodeId, capacity: usize) -> Console {
        Console {
            node,
            capacity,
            ring: Mutex::new(Ring::default()),
            changes: watch::Sender::new(0),
            dirty: AtomicBool::new(false),
            probes: super::Probes::default(),
        }
    }

    /// Whether the history keeps anything.
    pub(crate) fn history_enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The ring's size.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A receiver of the change counter (bumped on every visible change).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes one core event (driver only). `wall_ms` is the Unix time of the
    /// node's `Timestamp::ZERO`; `from_console` says the input being handled
    /// came from the console.
    pub(crate) fn on_event(&self, event: &Event, wall_ms: u64, from_console: bool) {
        let subject = match event {
            Event::InstanceChanged(c) => {
                let cause = cause_name(c.cause, from_console);
                let subject =
                    Subject::Instance { key: c.key.clone(), kind: c.kind, cause, origin: c.origin.clone() };
                self.push(wall_ms + c.at.as_millis(), subject);
                return;
            }
            Event::ServiceChanged(_) | Event::Ready { .. } => None,
            Event::PeerStateChanged(t) => {
                Some(Subject::Peer { peer: t.peer.clone(), from: t.from, to: t.to })
            }
            Event::BrakeEngaged { held } => Some(Subject::Brake(Some(*held))),
            Event::BrakeReleased => Some(Subject::Brake(None)),
            Event::PauseDetected { gap } => {
                Some(Subject::Pause { gap_ms: u64::try_from(gap.as_millis()).unwrap_or(u64::MAX) })
            }
            _ => return,
        };
        match subject {
            // Node events carry no time of their own: now is close enough.
            Some(s) => self.push(unix_now_ms().max(wall_ms), s),
            None => self.bump(),
        }
    }

    fn push(&self, at_ms: u64, subject: Subject) {
        if self.capacity > 0 {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.entries.len() >= self.capacity {
                ring.entries.pop_front();
            }
            let seq = ring.next_seq;
            ring.next_seq += 1;
            ring.entries.push_back(Entry { seq, at_ms, subject });
        }
        self.bump();
    }

    fn bump(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Wakes the pages' long polls once for everything since the last call
    /// (driver only, after each drain).
    pub(crate) fn flush(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The entries matching `f`, newest first, and the oldest sequence number kept.
    pub(crate) fn read(&self, f: &HistoryFilter) -> (Vec<EntryJson>, Option<u64>) {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = ring.entries.front().map(|e| e.seq);
        let picked: Vec<Entry> = ring
            .entries
            .iter()
            .rev()
            .filter(|e| f.before.is_none_or(|b| e.seq < b))
            .filter(|e| f.matches(&e.subject))
            .take(f.limit)
            .cloned()
            .collect();
        drop(ring);
        (picked.into_iter().map(|e| self.json(e)).collect(), oldest)
    }

    fn json(&self, e: Entry) -> EntryJson {
        let mut j = EntryJson {
            seq: e.seq,
            at_ms: e.at_ms,
            scope: "node",
            event: "",
            cause: None,
            fields: Vec::new(),
            node: self.node.to_string(),
            namespace: None,
            group: None,
            service: None,
            cluster: None,
            ip: None,
            port: None,
            detail: None,
        };
        match e.subject {
            Subject::Instance { key, kind, cause, origin } => {
                j.scope = "instance";
                (j.event, j.fields) = kind_name(kind);
                j.cause = Some(cause);
                j.node = origin.to_string();
                j.namespace = Some(key.service.namespace.to_string());
                j.group = Some(key.service.group.to_string());
                j.service = Some(key.service.service.to_string());
                j.cluster = Some(key.cluster.to_string());
                j.ip = Some(key.ip.to_string());
                j.port = Some(key.port);
            }
            Subject::Peer { peer, from, to } => {
                j.event = match to {
                    PeerState::Up => "up",
                    PeerState::Suspect => "suspect",
                    PeerState::Down => "down",
                };
                j.node = peer.to_string();
                j.detail = Some(format!("was {from}"));
            }
            Subject::Brake(Some(held)) => {
                j.event = "brake_engaged";
                j.detail = Some(format!("{held} instances held back from expiry"));
            }
            Subject::Brake(None) => j.event = "brake_released",
            Subject::Pause { gap_ms } => {
                j.event = "pause";
                j.detail =
                    Some(format!("clock jumped {gap_ms} ms; fresh grace period for instances and peers"));
            }
        }
        j
    }
}

impl HistoryFilter {
    fn matches(&self, s: &Subject) -> bool {
        match s {
            Subject::Instance { key, .. } => {
                let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
                !self.nodes_only
                    && eq(&self.namespace, key.service.namespace.as_str())
                    && eq(&self.group, key.service.group.as_str())
                    && eq(&self.service, key.service.service.as_str())
                    && self.ip.as_deref().is_none_or(|ip| key.ip.to_string() == ip)
                    && self.port.is_none_or(|p| p == key.port)
            }
            _ => self.service.is_none() && self.ip.is_none(),
        }
    }
}

fn cause_name(c: ChangeCause, from_console: bool) -> &'static str {
    match c {
        ChangeCause::Client if from_console => "console",
        ChangeCause::Client => "client",
        ChangeCause::Silence => "silence",
        ChangeCause::FailedCheck => "failed_check",
        ChangeCause::PassedCheck => "passed_check",
        ChangeCause::Heartbeat => "heartbeat",
        ChangeCause::Brake => "brake",
        ChangeCause::Refutation => "refutation",
        ChangeCause::Peer => "peer",
    }
}

fn kind_name(k: ChangeKind) -> (&'static str, Vec<&'static str>) {
    match k {
        ChangeKind::Registered => ("registered", Vec::new()),
        ChangeKind::Deregistered => ("deregistered", Vec::new()),
        ChangeKind::Expired => ("expired", Vec::new()),
        ChangeKind::Unhealthy => ("unhealthy", Vec::new()),
        ChangeKind::Healthy => ("healthy", Vec::new()),
        ChangeKind::Held => ("held", Vec::new()),
        ChangeKind::Updated { weight, enabled, metadata } => {
            let fields = [(weight, "weight"), (enabled, "enabled"), (metadata, "metadata")];
            ("updated", fields.into_iter().filter(|(on, _)| *on).map(|(_, n)| n).collect())
        }
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use muster_core::{InstanceChange, Timestamp};

    use super::*;

    fn change(service: &str, kind: ChangeKind) -> Event {
        let key = InstanceKey::parse(
            muster_core::ServiceKey::parse(None, None, service).unwrap(),
            None,
            "10.0.0.1",
            80,
        )
        .unwrap();
        Event::InstanceChanged(InstanceChange {
            at: Timestamp::from_millis(5),
            key,
            kind,
            cause: ChangeCause::Client,
            origin: NodeId::parse("127.0.0.1:1").unwrap(),
        })
    }

    fn all() -> HistoryFilter {
        HistoryFilter { limit: 100, ..HistoryFilter::default() }
    }

    #[test]
    fn the_ring_keeps_only_the_newest_entries_newest_first() {
        let c = Console::new(NodeId::parse("127.0.0.1:1").unwrap(), 3);
        for _ in 0..5 {
            c.on_event(&change("a", ChangeKind::Registered), 1000, false);
        }
        let (entries, oldest) = c.read(&all());
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 3, 2]);
        assert_eq!(oldest, Some(2));
        assert_eq!(entries[0].at_ms, 1005);
    }

    #[test]
    fn console_writes_are_told_apart_from_client_writes() {
        let c = Console::new(NodeId::parse("127.0.0.1:1").unwrap(), 10);
        c.on_event(&change("a", ChangeKind::Deregistered), 0, true);
        c.on_event(&change("b", ChangeKind::Deregistered), 0, false);
        let (entries, _) = c.read(&all());
        assert_eq!((entries[0].cause, entries[1].cause), (Some("client"), Some("console")));
        let only_a = HistoryFilter { service: Some("a".into()), ..all() };
        assert_eq!(c.read(&only_a).0.len(), 1);
    }

    #[test]
    fn without_a_ring_changes_still_wake_the_pages() {
        let c = Console::new(NodeId::parse("127.0.0.1:1").unwrap(), 0);
        let mut rx = c.subscribe();
        rx.borrow_and_update();
        c.on_event(&change("a", ChangeKind::Registered), 0, false);
        assert!(!rx.has_changed().unwrap(), "woken once per drain, at the flush");
        c.flush();
        assert!(rx.has_changed().unwrap());
        assert!(c.read(&all()).0.is_empty());
    }
}
