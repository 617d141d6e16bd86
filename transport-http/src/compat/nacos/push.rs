//! UDP push to Nacos 1.x subscribers.
//!
//! A client that lists a service with `udpPort` (and `clientIP`) subscribes
//! to it: each change of the service's published view (a local write or one
//! merged from a peer) is sent to it as `{"type":"dom","data":"<the
//! /instance/list JSON as a string>","lastRefTime":N}`, gzipped from 1 KiB on
//! as the real server does. The client answers `{"type":"push-ack",
//! "lastRefTime":N}` (or `dump-ack`); a push not acked within the ack timeout
//! is sent again, a bounded number of times. A subscriber that has not
//! listed the service within its time to live is forgotten, as Nacos
//! forgets a zombie push client.
//!
//! Bounded: subscribers in total and per service, datagram size (larger
//! pushes are skipped; the client sees the change at its next poll), the
//! queue to the sender, pushes awaiting an ack. Counted in metrics.
//!
//! Tasks: one per subscribed service waits on its view's watch channel and
//! renders the pushes; one sender owns the socket, sends, matches acks and
//! retries.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use muster_core::{Checksum, Name, Selector, ServiceKey, ServiceView, Timings};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::wire::{AckPacket, PushPacket};
use super::{NacosSettings, PUSH_CACHE_MILLIS, render_list, wall_ms};
use crate::driver::DriverHandle;
use crate::snapshot::Snapshots;

/// Pushes at least this large are gzipped (the real server's threshold).
const GZIP_FROM_BYTES: usize = 1024;
/// Largest datagram read from a client (acks are small).
const ACK_MAX_BYTES: usize = 4096;

/// The push service of one node.
#[derive(Debug)]
pub(crate) struct Push {
    settings: NacosSettings,
    local: SocketAddr,
    subs: Mutex<Subs>,
    out: mpsc::Sender<Outgoing>,
    snapshots: Arc<Snapshots>,
    driver: DriverHandle,
    timings: Timings,
    next_ref: AtomicU64,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Subs {
    services: HashMap<ServiceKey, HashMap<SocketAddr, Sub>>,
    total: usize,
}

#[derive(Debug)]
struct Sub {
    clusters_raw: String,
    clusters: Vec<Name>,
    last_seen: Instant,
}

#[derive(Debug)]
struct Outgoing {
    addr: SocketAddr,
    service: ServiceKey,
    ref_time: u64,
    packet: Bytes,
}

#[derive(Debug)]
struct Pending {
    ref_time: u64,
    packet: Bytes,
    resends: u32,
    due: Instant,
}

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    resent: AtomicU64,
    unacked: AtomicU64,
    too_large: AtomicU64,
    dropped: AtomicU64,
    send_errors: AtomicU64,
    refused_subscribers: AtomicU64,
    forgotten_subscribers: AtomicU64,
    unmatched_acks: AtomicU64,
    bad_packets: AtomicU64,
    subscribers: AtomicUsize,
    pending: AtomicUsize,
}

impl Push {
    /// Binds the push socket next to the HTTP listener and starts the
    /// sender; `None` when push is switched off or the socket cannot be bound
    /// (logged: clients then find changes by polling).
    pub(crate) fn start(
        settings: &NacosSettings,
        listen_ip: IpAddr,
        snapshots: Arc<Snapshots>,
        driver: DriverHandle,
        timings: Timings,
    ) -> Option<Arc<Push>> {
        if !settings.udp_push {
            return None;
        }
        let bound = std::net::UdpSocket::bind((listen_ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(UdpSocket::from_std);
        let socket = match bound {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(error = %e, ip = %listen_ip, "cannot bind the Nacos UDP push socket; pushes are off, clients will poll");
                return None;
            }
        };
        let local = socket.local_addr().ok()?;
        let (out, rx) = mpsc::channel(settings.max_subscribers);
        let push = Arc::new(Push {
            settings: settings.clone(),
            local,
            subs: Mutex::new(Subs::default()),
            out,
            snapshots,
            driver,
            timings,
            next_ref: AtomicU64::new(0),
            stats: Stats::default(),
        });
        tracing::info!(udp = %local, "Nacos UDP push ready");
        tokio::spawn(Arc::clone(&push).send_loop(socket, rx));
        Some(push)
    }

    /// Subscribers now.
    pub(crate) fn subscriber_count(&self) -> usize {
        self.stats.subscribers.load(Ordering::Relaxed)
    }

    /// Subscribes `addr` to the service (or refreshes its subscription);
    /// false when a limit refuses it. `served` is the checksum of the view
    /// the subscriber was just answered with: any other view is pushed, also
    /// one that changed before the service's watch task began.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        key: &ServiceKey,
        addr: SocketAddr,
        clusters_raw: &str,
        clusters: &[Name],
        served: Checksum,
    ) -> bool {
        let now = Instant::now();
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        let Subs { services, total } = &mut *subs;
        let new_service = !services.contains_key(key);
        let of_service = services.get(key).map_or(0, HashMap::len);
        if let Some(sub) = services.get_mut(key).and_then(|s| s.get_mut(&addr)) {
            sub.last_seen = now;
            if sub.clusters_raw != clusters_raw {
                sub.clusters_raw = clusters_raw.to_owned();
                sub.clusters = clusters.to_vec();
            }
            return true;
        }
        if *total >= self.settings.max_subscribers || of_service >= self.settings.max_subscribers_per_service
        {
            self.stats.refused_subscribers.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%addr, service = %key.service.as_str(), "Nacos push subscriber refused: limit reached");
            return false;
        }
        let sub = Sub { clusters_raw: clusters_raw.to_owned(), clusters: clusters.to_vec(), last_seen: now };
        services.entry(key.clone()).or_default().insert(addr, sub);
        *total += 1;
        self.stats.subscribers.store(*total, Ordering::Relaxed);
        if new_service {
            tokio::spawn(Arc::clone(self).watch(key.clone(), served));
        }
        true
    }

    /// Forgets idle subscribers of a service; when none is left, forgets the
    /// service and answers false (its watcher ends).
    fn sweep(&self, key: &ServiceKey) -> bool {
        let ttl = self.settings.subscriber_ttl;
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        let Subs { services, total } = &mut *subs;
        let Some(of_service) = services.get_mut(key) else { return false };
        let before = of_service.len();
        of_service.retain(|_, s| s.last_seen.elapsed() < ttl);
        let gone = before - of_service.len();
        *total -= gone;
        self.stats.forgotten_subscribers.fetch_add(gone as u64, Ordering::Relaxed);
        let alive = !of_service.is_empty();
        if !alive {
            services.remove(key);
        }
        self.stats.subscribers.store(*total, Ordering::Relaxed);
        alive
    }

    fn forget_service(&self, key: &ServiceKey) {
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gone) = subs.services.remove(key) {
            subs.total -= gone.len();
        }
        self.stats.subscribers.store(subs.total, Ordering::Relaxed);
    }

    /// Waits for changes of one service and pushes them, until it has no
    /// subscriber left.
    async fn watch(self: Arc<Self>, key: ServiceKey, served: Checksum) {
        let mut views = match self.snapshots.subscribe(&key) {
            Some(rx) => Some(rx),
            None => match self.driver.load_view(key.clone(), true).await {
                Ok(_) => self.snapshots.subscribe(&key),
                Err(_) => None,
            },
        };
        let Some(views) = views.as_mut() else {
            self.forget_service(&key);
            return;
        };
        // The view may have changed between the answer and this task's start.
        let mut last = served;
        let current = Arc::clone(&views.borrow_and_update().view);
        let checksum = current.select(&Selector::default()).checksum();
        if checksum != last {
            last = checksum;
            self.push_view(&key, &current);
        }
        let period = (self.settings.subscriber_ttl / 2).max(Duration::from_millis(100));
        let mut sweep = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let view = Arc::clone(&views.borrow_and_update().view);
                    let checksum = view.select(&Selector::default()).checksum();
                    if checksum != last {
                        last = checksum;
                        self.push_view(&key, &view);
                    }
                }
                _ = sweep.tick() => {
                    if !self.sweep(&key) {
                        return;
                    }
                }
            }
        }
        self.forget_service(&key);
    }

    /// Renders and queues a push of `view` to each subscriber of the service.
    fn push_view(&self, key: &ServiceKey, view: &Arc<ServiceView>) {
        let targets: Vec<(SocketAddr, String, Vec<Name>)> = {
            let subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(of_service) = subs.services.get(key) else { return };
            of_service.iter().map(|(a, s)| (*a, s.clusters_raw.clone(), s.clusters.clone())).collect()
        };
        let mut rendered: HashMap<String, Bytes> = HashMap::new();
        for (addr, raw, clusters) in targets {
            let data = rendered
                .entry(raw.clone())
                .or_insert_with(|| {
                    let answer = view.select(&Selector { clusters, healthy_only: false });
                    render_list(&answer, &raw, PUSH_CACHE_MILLIS, &self.timings)
                })
                .clone();
            let ref_time = self.next_ref();
            let Some(packet) = packet(&data, ref_time) else { continue };
            if packet.len() > self.settings.max_packet_bytes {
                self.stats.too_large.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, bytes = packet.len(), "Nacos push larger than nacos_push_max_packet_bytes; skipped");
                continue;
            }
            let o = Outgoing { addr, service: key.clone(), ref_time, packet };
            if self.out.try_send(o).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A push id: wall-clock milliseconds, strictly increasing.
    fn next_ref(&self) -> u64 {
        let now = wall_ms();
        let mut prev = self.next_ref.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.next_ref.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Owns the socket: sends queued pushes, matches acks, resends.
    async fn send_loop(self: Arc<Self>, socket: Arc<UdpSocket>, mut rx: mpsc::Receiver<Outgoing>) {
        let mut pending: HashMap<(SocketAddr, ServiceKey), Pending> = HashMap::new();
        let mut by_ref: HashMap<(SocketAddr, u64), ServiceKey> = HashMap::new();
        let mut buf = vec![0u8; ACK_MAX_BYTES];
        let period = (self.settings.ack_timeout / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                o = rx.recv() => {
                    let Some(o) = o else { return };
                    self.send(&socket, o.addr, &o.packet).await;
                    let slot = (o.addr, o.service);
                    if pending.len() >= self.settings.max_subscribers && !pending.contains_key(&slot) {
                        continue;
                    }
                    by_ref.insert((o.addr, o.ref_time), slot.1.clone());
                    let due = Instant::now() + self.settings.ack_timeout;
                    let p = Pending { ref_time: o.ref_time, packet: o.packet, resends: 0, due };
                    if let Some(old) = pending.insert(slot, p) {
                        by_ref.remove(&(o.addr, old.ref_time));
                    }
                }
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    self.take_ack(buf.get(..n).unwrap_or_default(), from, &mut pending, &mut by_ref);
                }
                _ = tick.tick() => self.resend_due(&socket, &mut pending, &mut by_ref).await,
            }
            self.stats.pending.store(pending.len(), Ordering::Relaxed);
        }
    }

    async fn send(&self, socket: &UdpSocket, addr: SocketAddr, packet: &[u8]) {
        match socket.send_to(packet, addr).await {
            Ok(_) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, error = %e, "Nacos push could not be sent");
            }
        }
    }

    fn take_ack(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        pending: &mut HashMap<(SocketAddr, ServiceKey), Pending>,
        by_ref: &mut HashMap<(SocketAddr, u64), ServiceKey>,
    ) {
        let Ok(ack) = serde_json::from_slice::<AckPacket>(datagram) else {
            self.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !matches!(ack.kind.as_str(), "push-ack" | "dump-ack") {
            self.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let matched = ack.ref_time().and_then(|r| by_ref.remove(&(from, r)));
        match matched {
            Some(service) => {
                pending.remove(&(from, service));
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.stats.unmatched_acks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn resend_due(
        &self,
        socket: &UdpSocket,
        pending: &mut HashMap<(SocketAddr, ServiceKey), Pending>,
        by_ref: &mut HashMap<(SocketAddr, u64), ServiceKey>,
    ) {
        let now = Instant::now();
        let due: Vec<(SocketAddr, ServiceKey)> =
            pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
        for slot in due {
            let Some(p) = pending.get_mut(&slot) else { continue };
            if p.resends >= self.settings.retries {
                by_ref.remove(&(slot.0, p.ref_time));
                pending.remove(&slot);
                self.stats.unacked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            p.resends += 1;
            p.due = now + self.settings.ack_timeout;
            let packet = p.packet.clone();
            self.stats.resent.fetch_add(1, Ordering::Relaxed);
            self.send(socket, slot.0, &packet).await;
        }
    }

    /// Appends the push metrics in the Prometheus text format.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        let name = "muster_nacos_pushes_total";
        let _ = writeln!(out, "# HELP {name} Nacos UDP pushes by outcome.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (outcome, c) in [
            ("sent", &s.sent),
            ("acked", &s.acked),
            ("resent", &s.resent),
            ("unacked", &s.unacked),
            ("too_large", &s.too_large),
            ("dropped", &s.dropped),
            ("send_error", &s.send_errors),
        ] {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", c.load(Ordering::Relaxed));
        }
        for (name, help, v) in [
            (
                "muster_nacos_push_subscribers",
                "Nacos UDP push subscribers now.",
                s.subscribers.load(Ordering::Relaxed),
            ),
            (
                "muster_nacos_push_pending",
                "Nacos UDP pushes awaiting an ack.",
                s.pending.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        for (name, help, c) in [
            (
                "muster_nacos_push_subscribers_refused_total",
                "Subscriptions refused by a limit.",
                &s.refused_subscribers,
            ),
            (
                "muster_nacos_push_subscribers_forgotten_total",
                "Subscribers forgotten after their time to live.",
                &s.forgotten_subscribers,
            ),
            (
                "muster_nacos_push_acks_unmatched_total",
                "Acks that matched no pending push.",
                &s.unmatched_acks,
            ),
            (
                "muster_nacos_push_bad_packets_total",
                "Datagrams from clients that are not acks.",
                &s.bad_packets,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP muster_nacos_push_info The push socket.\n# TYPE muster_nacos_push_info gauge"
        );
        let _ = writeln!(out, "muster_nacos_push_info{{udp=\"{}\"}} 1", self.local);
    }
}

/// The datagram of a push: the packet JSON, gzipped from [`GZIP_FROM_BYTES`] on.
fn packet(data: &[u8], ref_time: u64) -> Option<Bytes> {
    let data = std::str::from_utf8(data).ok()?;
    let json = serde_json::to_vec(&PushPacket { kind: "dom", data, last_ref_time: ref_time }).ok()?;
    if json.len() < GZIP_FROM_BYTES {
        return Some(Bytes::from(json));
    }
    let mut gz =
        flate2::write::GzEncoder::new(Vec::with_capacity(json.len() / 4), flate2::Compression::default());
    gz.write_all(&json).ok()?;
    gz.finish().ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn small_pushes_go_plain_and_large_ones_gzipped() {
        let small = packet(br#"{"hosts":[]}"#, 5).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!((v["type"].as_str(), v["lastRefTime"].as_u64()), (Some("dom"), Some(5)));
        let big_data = format!(r#"{{"hosts":"{}"}}"#, "x".repeat(2000));
        let big = packet(big_data.as_bytes(), 6).unwrap();
        assert_eq!(&big[..2], &[0x1f, 0x8b], "gzip magic");
        assert!(big.len() < big_data.len());
        let mut json = String::new();
        flate2::read::GzDecoder::new(&big[..]).read_to_string(&mut json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["data"].as_str(), Some(big_data.as_str()));
    }
}
