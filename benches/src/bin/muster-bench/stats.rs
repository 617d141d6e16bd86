//! Counting and latency recording: one [`Recorder`] per worker (no sharing
//! on the hot path), merged at the end; live atomic counters for the
//! once-a-second progress line.
//!
//! Latencies go into HDR histograms (`hdrhistogram`): microsecond units,
//! three significant digits, auto-resizing from a small start, so each
//! worker's histogram costs a few kilobytes, a record is O(1), and merging the
//! workers' histograms is exact.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// First registration of an instance.
    Register,
    /// Registration of an instance already registered (its weight changes).
    Reregister,
    /// A heartbeat request (one key or a batch).
    Beat,
    /// A query of a service.
    Query,
    /// A change seen by a long poll (latency: from the write's response).
    Watch,
    /// The watch mode's writes.
    Write,
}

const KINDS: [Kind; 6] =
    [Kind::Register, Kind::Reregister, Kind::Beat, Kind::Query, Kind::Watch, Kind::Write];

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Register => "register",
            Kind::Reregister => "re-register",
            Kind::Beat => "beat",
            Kind::Query => "query",
            Kind::Watch => "watch",
            Kind::Write => "write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters the progress line reads while the workers run.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) ops: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Live {
    pub(crate) fn op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A new latency histogram in microseconds.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// Records `d` in microseconds. (`saturating_record` would clamp to the
/// current top instead of growing an auto-resizing histogram.)
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let v = micros(d);
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

/// Microseconds, at least 1 (a histogram value).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[derive(Debug)]
struct PerKind {
    ok: u64,
    items: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
}

impl Default for PerKind {
    fn default() -> Self {
        PerKind { ok: 0, items: 0, errors: BTreeMap::new(), latency: histogram() }
    }
}

/// One worker's counts and latencies of the measured phase.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    kinds: [PerKind; KINDS.len()],
    /// Failures not tied to an operation (connecting).
    other_errors: BTreeMap<String, u64>,
}

impl Recorder {
    /// A successful operation of `items` items (beats in a batch).
    pub(crate) fn ok(&mut self, kind: Kind, latency: Duration, items: u64) {
        let k = &mut self.kinds[kind.index()];
        k.ok += 1;
        k.items += items;
        record(&mut k.latency, latency);
    }

    /// A failed operation: its status code or failure label.
    pub(crate) fn error(&mut self, kind: Kind, label: &str) {
        *self.kinds[kind.index()].errors.entry(label.to_owned()).or_default() += 1;
    }

    /// A failure outside an operation.
    pub(crate) fn other_error(&mut self, label: &str) {
        *self.other_errors.entry(label.to_owned()).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: Recorder) {
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds) {
            mine.ok += theirs.ok;
            mine.items += theirs.items;
            for (label, n) in theirs.errors {
                *mine.errors.entry(label).or_default() += n;
            }
            mine.latency.add(&theirs.latency).expect("auto-resizing histograms merge");
        }
        for (label, n) in other.other_errors {
            *self.other_errors.entry(label).or_default() += n;
        }
    }

    /// Errors by status code or failure label, over every kind.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        let mut all = self.other_errors.clone();
        for k in &self.kinds {
            for (label, n) in &k.errors {
                *all.entry(label.clone()).or_default() += n;
            }
        }
        all
    }

    /// The kinds that saw any operation, in a fixed order.
    fn active(&self) -> impl Iterator<Item = (Kind, &PerKind)> {
        KINDS.iter().map(|k| (*k, &self.kinds[k.index()])).filter(|(_, s)| s.ok > 0 || !s.errors.is_empty())
    }
}

/// Latency percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max, "mean": self.mean})
    }
}

/// The figures of one kind (or of all kinds together) over the measured time.
#[derive(Debug)]
pub(crate) struct Figures {
    pub(crate) name: &'static str,
    pub(crate) ok: u64,
    pub(crate) items: u64,
    pub(crate) errors: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) items_per_s: f64,
    pub(crate) latency: Percentiles,
}

impl Figures {
    pub(crate) fn json(&self) -> Value {
        json!({
            "ops": self.ok,
            "items": self.items,
            "errors": self.errors,
            "ops_per_s": self.ops_per_s.round(),
            "items_per_s": self.items_per_s.round(),
            "latency_ms": self.latency.json(),
        })
    }

    pub(crate) fn line(&self) -> String {
        let l = &self.latency;
        format!(
            "{:<12} {:>10} {:>11.0} {:>12.0} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            self.name, self.ok, self.ops_per_s, self.items_per_s, self.errors, l.p50, l.p90, l.p99, l.max
        )
    }

    pub(crate) fn header() -> String {
        format!(
            "{:<12} {:>10} {:>11} {:>12} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "op", "ok", "ops/s", "items/s", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
        )
    }
}

/// Per-kind figures and the total over `secs` seconds of measurement.
pub(crate) fn figures(rec: &Recorder, secs: f64, total_name: &'static str) -> (Vec<Figures>, Figures) {
    let secs = secs.max(1e-9);
    let mut per = Vec::new();
    let mut all = histogram();
    let (mut ok, mut items, mut errors) = (0, 0, 0);
    for (kind, s) in rec.active() {
        let e: u64 = s.errors.values().sum();
        per.push(Figures {
            name: kind.name(),
            ok: s.ok,
            items: s.items,
            errors: e,
            ops_per_s: s.ok as f64 / secs,
            items_per_s: s.items as f64 / secs,
            latency: Percentiles::of(&s.latency),
        });
        if kind != Kind::Write {
            all.add(&s.latency).expect("auto-resizing histograms merge");
            ok += s.ok;
            items += s.items;
            errors += e;
        }
    }
    errors += rec.other_errors.values().sum::<u64>();
    let total = Figures {
        name: total_name,
        ok,
        items,
        errors,
        ops_per_s: ok as f64 / secs,
        items_per_s: items as f64 / secs,
        latency: Percentiles::of(&all),
    };
    (per, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_counts_errors_and_latencies() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=100u64 {
            a.ok(Kind::Query, Duration::from_micros(i * 10), 1);
        }
        b.ok(Kind::Beat, Duration::from_secs(50), 10);
        b.error(Kind::Beat, "503");
        b.other_error("connect");
        a.merge(b);
        let (per, total) = figures(&a, 2.0, "all");
        assert_eq!(per.len(), 2);
        assert_eq!(total.ok, 101);
        assert_eq!(total.items, 110);
        assert_eq!(total.errors, 2);
        assert_eq!(total.ops_per_s, 50.5);
        assert!((total.latency.max - 50_000.0).abs() < 50.0, "{:?}", total.latency);
        let q = per.iter().find(|f| f.name == "query").unwrap();
        assert!((q.latency.p50 - 0.5).abs() < 0.002, "{:?}", q.latency);
        assert!((q.latency.p99 - 0.99).abs() < 0.002, "{:?}", q.latency);
        assert_eq!(a.errors().into_iter().collect::<Vec<_>>(), [("503".into(), 1), ("connect".into(), 1)]);
    }
}
