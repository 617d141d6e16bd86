//! Memory per registered instance, measured with a counting global
//! allocator: registers 1,000,000 instances over 1,000 services in one node
//! and prints the live heap bytes per instance, split into the instance's own
//! strings and the overhead beyond them.
//!
//! Run: `cargo bench -p muster-benches --bench memory`. Under `cargo test
//! --benches` (no `--bench` argument) it runs a quick 10,000-instance check.
//!
//! Bytes counted are the sizes asked of the allocator; the allocator's own
//! per-allocation overhead (headers, size-class rounding) is not included,
//! which the resident-set figure printed alongside does include.
// `GlobalAlloc` is an unsafe trait, so counting allocations needs unsafe
// code. The workspace forbids it; this crate only denies it (see its
// Cargo.toml) so that this file alone can allow it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use muster_benches::{drain, instance_ip, metadata_bytes, register_request, service_key, standalone};
use muster_core::model::DEFAULT_CLUSTER;
use muster_core::{InstanceData, InstanceKey, Node, Record, Selector, Timestamp, Version};

/// The system allocator, counting live bytes and allocations.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the arguments it was given,
// so `System` upholds the `GlobalAlloc` contract; the counting around the
// calls only touches atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (hence `System`)
        // returned for `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract; the
        // block came from `System`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes and allocations now.
fn live() -> (usize, usize) {
    (LIVE_BYTES.load(Ordering::Relaxed), LIVE_ALLOCS.load(Ordering::Relaxed))
}

/// Resident set size in bytes (Linux), if it can be read.
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Target: at most this many bytes per instance beyond its own strings.
const TARGET_OVERHEAD: f64 = 400.0;

fn main() {
    // Cargo passes `--bench` under `cargo bench`; under `cargo test` it does
    // not, and a quick run suffices to check that the measurement works.
    let full = std::env::args().any(|a| a == "--bench");
    let (instances, services) = if full { (1_000_000, 1_000) } else { (10_000, 10) };
    let now = Timestamp::from_millis(1_000);

    let mut node: Node = standalone(instances);
    let (bytes0, allocs0) = live();
    let rss0 = rss();
    let started = Instant::now();

    // The instance's own strings: its host, its cluster name and its
    // metadata keys and values; the service names (namespace, group,
    // service) once per service, amortised over its instances.
    let mut own = 0usize;
    for i in 0..instances {
        own += instance_ip(i).len() + DEFAULT_CLUSTER.len() + metadata_bytes();
        // Each request is built here and consumed by the node: only what
        // the node keeps stays live.
        node.register(now, register_request(services, i)).expect("registration accepted");
        drain(&mut node);
    }
    for s in 0..services {
        let k = service_key(s);
        own += k.namespace.as_str().len() + k.group.as_str().len() + k.service.as_str().len();
    }
    let elapsed = started.elapsed();
    let (bytes1, allocs1) = live();
    let rss1 = rss();
    let peak = PEAK_BYTES.load(Ordering::Relaxed);
    assert_eq!(node.stats().registry.instances, instances);

    let n = instances as f64;
    let total = (bytes1 - bytes0) as f64 / n;
    let own_per = own as f64 / n;
    let overhead = total - own_per;
    let allocs = (allocs1 - allocs0) as f64 / n;

    let mode = if full { "" } else { " [quick check under cargo test; the figure is from cargo bench]" };
    println!(
        "memory: {instances} instances over {services} services, one node (registered in {elapsed:.2?}){mode}"
    );
    println!(
        "  live heap bytes per instance          {total:8.1} B  ({:.1} MiB in all)",
        mib(bytes1 - bytes0)
    );
    println!("    own strings (ip, cluster, metadata,  {own_per:8.1} B");
    println!("      service names amortised)");
    println!(
        "    overhead beyond own strings         {overhead:8.1} B  (target <= {TARGET_OVERHEAD} B: {})",
        match (full, overhead <= TARGET_OVERHEAD) {
            (false, _) => "not judged at this size",
            (true, true) => "met",
            (true, false) => "MISSED",
        }
    );
    println!("  live allocations per instance         {allocs:8.2}");
    println!("  peak live heap during registration    {:8.1} MiB", mib(peak));
    if let (Some(r0), Some(r1)) = (rss0, rss1) {
        let per = r1.saturating_sub(r0) as f64 / n;
        println!("  resident set growth per instance      {per:8.1} B  (allocator overhead included)");
    }

    // The cached query views, built by one query of every service: they
    // copy what clients see (and format each `instance_id`), and stay until
    // the service changes.
    let (bytes2, _) = live();
    for s in 0..services {
        let answer = node.query(now, &service_key(s), &Selector::default()).expect("query answered");
        assert_eq!(answer.len(), instances / services);
    }
    let (bytes3, _) = live();
    println!(
        "  with every service's view cached      {:8.1} B more per instance",
        (bytes3 - bytes2) as f64 / n
    );

    println!(
        "  sizes: InstanceKey {} B, InstanceData {} B, Version {} B, Record {} B",
        size_of::<InstanceKey>(),
        size_of::<InstanceData>(),
        size_of::<Version>(),
        size_of::<Record>()
    );
    drop(node);
}
