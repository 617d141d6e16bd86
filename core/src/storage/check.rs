//! The Storage's structural invariants, checked by tests and the
//! simulator after every step (O(n)).

use crate::model::{Host, Name};

use super::digest::Digest;
use super::{Storage, TimerRef, flags, service_record, views};

impl Storage {
    /// Checks every structural invariant of the store; panics with a
    /// description on the first broken one.
    #[allow(clippy::expect_used, clippy::panic)] // Panicking is this function's job.
    pub(crate) fn check_invariants(&self) {
        self.check_indexes();
        self.check_counts_and_digest();
        self.check_timers();
        self.check_views();
    }

    #[allow(clippy::expect_used, clippy::panic)] // Panicking is this function's job.
    pub(super) fn check_indexes(&self) {
        assert_eq!(self.instance_index.len(), self.instances.len(), "instance index size");
        assert_eq!(self.service_index.len(), self.services.len(), "service index size");
        for (i, e) in self.instances.iter() {
            let key = self.instance_key(e).expect("instance has a service");
            assert_eq!(key.stable_hash(), e.hash, "stored hash of {key}");
            assert_eq!(self.find_instance(&key), Some(i), "index finds {key}");
            let s = self.services.get(e.service).expect("service of instance");
            assert_eq!(s.members.get(e.pos as usize), Some(&i), "member position of {key}");
        }
        for (i, s) in self.services.iter() {
            assert_eq!(self.find_service(&s.key), Some(i), "index finds {}", s.key);
            assert!(!s.members.is_empty() || s.record.is_some(), "empty service {} kept", s.key);
            for &m in &s.members {
                assert_eq!(self.instances.get(m).map(|e| e.service), Some(i), "member of {}", s.key);
            }
        }
    }

    pub(super) fn check_counts_and_digest(&self) {
        let mut digest = Digest::default();
        let mut totals = (0usize, 0usize, 0usize, 0usize);
        for (_, e) in self.instances.iter() {
            digest.toggle(e.hash, e.digest_hash());
            let f = flags(&e.state);
            totals.0 += usize::from(f.live);
            totals.1 += usize::from(f.live && f.healthy);
            totals.2 += usize::from(f.live && f.ephemeral);
            totals.3 += usize::from(!f.live);
        }
        for (_, s) in self.services.iter() {
            if let Some(r) = service_record(s) {
                digest.toggle(r.key_hash(), r.digest_hash());
            }
            let live = s
                .members
                .iter()
                .filter(|m| self.instances.get(**m).is_some_and(|e| e.live().is_some()))
                .count();
            assert_eq!(s.live as usize, live, "live count of {}", s.key);
            let healthy = s
                .members
                .iter()
                .filter(|m| self.instances.get(**m).and_then(|e| e.live()).is_some_and(|d| d.healthy))
                .count();
            assert_eq!(s.healthy as usize, healthy, "healthy count of {}", s.key);
        }
        let s = &self.counts;
        assert_eq!(
            (s.instances, s.healthy_instances, s.ephemeral_instances, s.tombstones),
            totals,
            "instance totals"
        );
        assert_eq!(digest, self.digest, "incremental digest equals recomputed digest");
    }

    /// A fresh view must equal a full rebuild: patching is exact.
    pub(super) fn check_views(&self) {
        for (_, s) in self.services.iter() {
            let Some(v) = s.view.as_ref().filter(|_| s.view_fresh) else { continue };
            let mut expected: Vec<(Name, Host, u16, u64)> = Vec::new();
            for &m in &s.members {
                let Some(e) = self.instances.get(m) else { continue };
                let Some(d) = e.live() else { continue };
                let iv = views::build_instance_view(e, d);
                expected.push((iv.cluster, iv.ip, iv.port, iv.content_hash));
            }
            expected.sort();
            let got: Vec<_> = v
                .instances
                .iter()
                .map(|i| (i.cluster.clone(), i.ip.clone(), i.port, i.content_hash))
                .collect();
            assert_eq!(got, expected, "view of {} equals a rebuild", s.key);
        }
    }

    /// Each entry's own deadline is in the timer set, and the set holds
    /// nothing else. (Which states need a timer is the Service Manager's
    /// rule, checked there.)
    pub(super) fn check_timers(&self) {
        let mut expected = 0;
        for (i, e) in self.instances.iter() {
            if let Some(t) = e.timer {
                assert!(self.timers.contains(&(t, TimerRef::Instance(i))), "timer entry of instance {i}");
                expected += 1;
            }
        }
        for (i, s) in self.services.iter() {
            let t = s.record.as_ref().and_then(|r| r.timer);
            if let Some(t) = t {
                assert!(self.timers.contains(&(t, TimerRef::Service(i))), "timer entry of service {i}");
                expected += 1;
            }
        }
        assert_eq!(self.timers.len(), expected, "no stray timer entries");
    }
}
