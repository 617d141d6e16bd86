//! Behaviour tests of the network, through its public API.

use std::num::{NonZeroU64, NonZeroUsize};
use std::slice::from_ref;
use std::time::Duration;

use muster_core::{NodeId, Timestamp};

use crate::{Delivery, DropCause, Limits, LinkConfig, Network, Probability};

mod prop;

fn id(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}

fn ms(n: u64) -> Timestamp {
    Timestamp::from_millis(n)
}

fn p(x: f64) -> Probability {
    Probability::new(x).unwrap()
}

fn perfect(latency_ms: u64) -> LinkConfig {
    LinkConfig::perfect(Duration::from_millis(latency_ms))
}

/// A link that does everything: jitter, loss, duplication and reordering.
fn chaotic() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(20),
        loss: p(0.1),
        duplicate: p(0.1),
        reorder: p(0.1),
        reorder_delay: Duration::from_millis(40),
    }
}

/// Delivers everything scheduled, moving the clock to each due time.
fn drain(net: &mut Network<u32>) -> Vec<Delivery<u32>> {
    let mut out = Vec::new();
    while let Some(t) = net.poll_timeout() {
        while let Some(d) = net.poll_delivery(t) {
            out.push(d);
        }
        net.check_invariants();
    }
    out
}

/// Delivers everything due at or before `now`.
fn drain_until(net: &mut Network<u32>, now: Timestamp) -> Vec<Delivery<u32>> {
    let mut out = Vec::new();
    while let Some(d) = net.poll_delivery(now) {
        out.push(d);
    }
    net.check_invariants();
    out
}

fn msgs(deliveries: &[Delivery<u32>]) -> Vec<u32> {
    deliveries.iter().map(|d| d.msg).collect()
}

/// Three nodes chatting over chaotic links, with deliveries interleaved.
fn chatty_schedule(seed: u64) -> Vec<(String, String, u32, Timestamp)> {
    let nodes = [id("a"), id("b"), id("c")];
    let mut net = Network::new(seed, chaotic());
    let mut out = Vec::new();
    for i in 0..300u32 {
        let now = ms(u64::from(i) * 2);
        let from = &nodes[i as usize % 3];
        let to = &nodes[(i as usize / 3 + 1) % 3];
        net.send(now, from, to, i, 100);
        for d in drain_until(&mut net, now) {
            out.push((d.from.to_string(), d.to.to_string(), d.msg, d.at));
        }
    }
    for d in drain(&mut net) {
        out.push((d.from.to_string(), d.to.to_string(), d.msg, d.at));
    }
    out
}

#[test]
fn same_seed_gives_identical_delivery_schedule() {
    let first = chatty_schedule(42);
    assert!(first.len() > 200, "most messages arrive: {}", first.len());
    assert_eq!(first, chatty_schedule(42));
}

#[test]
fn different_seeds_give_different_schedules() {
    assert_ne!(chatty_schedule(1), chatty_schedule(2));
}

#[test]
fn message_arrives_after_exactly_its_latency() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(7));
    assert_eq!(net.send(ms(3), &a, &b, 1, 10), 1);
    assert_eq!(net.poll_timeout(), Some(ms(10)));
    assert!(net.poll_delivery(ms(9)).is_none());
    let d = net.poll_delivery(ms(10)).unwrap();
    assert_eq!((d.from, d.to, d.msg, d.at, d.sent_at, d.size_bytes), (a, b, 1, ms(10), ms(3), 10));
    assert_eq!(net.poll_timeout(), None);
}

#[test]
fn zero_latency_message_is_delivered_in_the_same_drain() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(0));
    net.send(ms(5), &a, &b, 1, 1);
    assert_eq!(net.poll_delivery(ms(5)).map(|d| d.at), Some(ms(5)));
}

#[test]
fn deliveries_at_equal_times_keep_send_order() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::new(0, perfect(5));
    for i in 0..20 {
        let to = if i % 2 == 0 { &b } else { &c };
        net.send(ms(0), &a, to, i, 1);
    }
    let got = drain(&mut net);
    assert_eq!(msgs(&got), (0..20).collect::<Vec<_>>());
    assert!(got.iter().all(|d| d.at == ms(5)));
}

#[test]
fn jitter_stays_within_bounds() {
    let (a, b) = (id("a"), id("b"));
    let link = LinkConfig { jitter: Duration::from_millis(5), ..perfect(10) };
    let mut net = Network::new(9, link);
    for i in 0..200 {
        net.send(ms(0), &a, &b, i, 1);
    }
    let ats: Vec<u64> = drain(&mut net).iter().map(|d| d.at.as_millis()).collect();
    assert_eq!(ats.len(), 200);
    assert!(ats.iter().all(|at| (10..=15).contains(at)), "{ats:?}");
    assert!(ats.contains(&10) && ats.contains(&15), "both ends are drawn");
}

#[test]
fn partitioned_messages_are_never_delivered() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::new(0, perfect(1));
    net.partition(from_ref(&a), from_ref(&b));
    for i in 0..50 {
        assert_eq!(net.send(ms(i), &a, &b, 0, 1), 0);
        assert_eq!(net.send(ms(i), &b, &a, 0, 1), 0);
        net.send(ms(i), &a, &c, 1, 1);
    }
    let got = drain(&mut net);
    assert_eq!(msgs(&got), vec![1; 50], "only a -> c flows");
    assert_eq!(net.stats().dropped.partition, 100);
}

#[test]
fn in_flight_messages_across_a_new_partition_are_dropped() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(10));
    net.send(ms(0), &a, &b, 1, 1);
    net.partition(from_ref(&a), from_ref(&b));
    assert!(drain(&mut net).is_empty());
    assert_eq!(net.stats().dropped.partition, 1);
}

#[test]
fn in_flight_messages_survive_a_partition_healed_before_they_arrive() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(10));
    net.send(ms(0), &a, &b, 1, 1);
    net.partition(from_ref(&a), from_ref(&b));
    net.heal();
    assert_eq!(msgs(&drain(&mut net)), vec![1]);
}

#[test]
fn one_way_partition_blocks_only_one_direction() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(1));
    net.partition_one_way(&a, &b);
    assert!(net.is_cut(&a, &b) && !net.is_cut(&b, &a));
    net.send(ms(0), &a, &b, 1, 1);
    net.send(ms(0), &b, &a, 2, 1);
    assert_eq!(msgs(&drain(&mut net)), vec![2]);
    net.repair_one_way(&a, &b);
    net.send(ms(5), &a, &b, 3, 1);
    assert_eq!(msgs(&drain(&mut net)), vec![3]);
}

#[test]
fn repair_undoes_a_partition_between_groups() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::<u32>::new(0, perfect(1));
    net.partition(&[a.clone(), b.clone()], from_ref(&c));
    assert!(net.is_cut(&c, &b) && !net.is_cut(&a, &b), "groups stay connected inside");
    net.repair(from_ref(&b), from_ref(&c));
    assert!(!net.is_cut(&c, &b) && net.is_cut(&c, &a));
}

#[test]
fn isolated_node_neither_sends_nor_receives_until_it_rejoins() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::new(0, perfect(1));
    net.isolate(&a);
    net.send(ms(0), &a, &b, 1, 1);
    net.send(ms(0), &c, &a, 2, 1);
    net.send(ms(0), &a, &a, 3, 1);
    net.send(ms(0), &b, &c, 4, 1);
    assert_eq!(msgs(&drain(&mut net)), vec![3, 4], "a still reaches itself; b and c talk");
    net.rejoin(&a);
    net.send(ms(5), &a, &b, 5, 1);
    assert_eq!(msgs(&drain(&mut net)), vec![5]);
}

#[test]
fn heal_removes_every_partition_and_isolation() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::<u32>::new(0, perfect(1));
    net.partition(from_ref(&a), from_ref(&b));
    net.partition_one_way(&b, &c);
    net.isolate(&c);
    net.heal();
    for (from, to) in [(&a, &b), (&b, &a), (&b, &c), (&c, &a)] {
        assert!(!net.is_cut(from, to));
    }
}

#[test]
fn held_messages_flow_after_release() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(5));
    net.send(ms(0), &a, &b, 1, 1);
    net.hold(&a, &b);
    net.send(ms(1), &a, &b, 2, 1);
    net.send(ms(2), &b, &a, 3, 1);
    assert_eq!(msgs(&drain(&mut net)), vec![3], "the held link is one-way");
    assert_eq!(net.stats().held, 2, "in flight when held, and sent while held");
    assert_eq!(net.poll_timeout(), None);
    net.release(ms(100), &a, &b);
    let got = drain(&mut net);
    assert_eq!(msgs(&got), vec![1, 2], "in send order");
    assert!(got.iter().all(|d| d.at == ms(105)), "delayed by latency after release");
}

#[test]
fn clogged_node_messages_wait_until_unclogged() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::new(0, perfect(1));
    net.clog(&a);
    net.send(ms(0), &a, &b, 1, 1);
    net.send(ms(0), &c, &a, 2, 1);
    net.send(ms(0), &b, &c, 3, 1);
    assert_eq!(msgs(&drain(&mut net)), vec![3]);
    net.unclog(ms(50), &a);
    assert_eq!(msgs(&drain(&mut net)), vec![1, 2]);
}

#[test]
fn a_message_stays_held_while_any_of_its_gates_is_closed() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(1));
    net.hold(&a, &b);
    net.clog(&b);
    net.send(ms(0), &a, &b, 1, 1);
    net.release(ms(10), &a, &b);
    assert!(drain(&mut net).is_empty(), "b is still clogged");
    net.release_all(ms(20));
    assert_eq!(drain(&mut net).iter().map(|d| (d.msg, d.at)).collect::<Vec<_>>(), vec![(1, ms(21))]);
}

#[test]
fn loss_rate_is_close_to_configured() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(1234, LinkConfig { loss: p(0.3), ..perfect(1) });
    for i in 0..10_000 {
        net.send(ms(0), &a, &b, i, 1);
    }
    let delivered = drain(&mut net).len() as f64 / 10_000.0;
    assert!((0.67..=0.73).contains(&delivered), "delivered {delivered}");
    assert_eq!(net.stats().dropped.loss + net.stats().delivered, 10_000);
}

#[test]
fn duplicates_are_delivered_twice() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(5, LinkConfig { duplicate: Probability::ONE, ..perfect(1) });
    for i in 0..10 {
        assert_eq!(net.send(ms(0), &a, &b, i, 3), 2);
    }
    let got = drain(&mut net);
    let mut seen = msgs(&got);
    seen.sort_unstable();
    assert_eq!(seen, (0..10).flat_map(|i| [i, i]).collect::<Vec<_>>());
    let stats = net.stats();
    assert_eq!((stats.sent, stats.duplicated, stats.delivered), (10, 10, 20));
    assert_eq!((stats.bytes_sent, stats.bytes_delivered), (30, 60));
}

#[test]
fn duplication_rate_is_close_to_configured() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(77, LinkConfig { duplicate: p(0.2), ..perfect(1) });
    for i in 0..5_000 {
        net.send(ms(0), &a, &b, i, 1);
    }
    let extra = drain(&mut net).len() as f64 / 5_000.0 - 1.0;
    assert!((0.17..=0.23).contains(&extra), "duplicated {extra}");
}

#[test]
fn reorder_lets_later_messages_overtake() {
    let (a, b) = (id("a"), id("b"));
    let link = LinkConfig { reorder: p(0.3), reorder_delay: Duration::from_millis(50), ..perfect(5) };
    let mut net = Network::new(3, link);
    for i in 0..100 {
        net.send(ms(u64::from(i)), &a, &b, i, 1);
    }
    let got = drain(&mut net);
    assert_eq!(got.len(), 100);
    for d in &got {
        let delay = d.at.as_millis() - d.sent_at.as_millis();
        assert!(delay == 5 || delay == 55, "delay {delay}");
    }
    let order = msgs(&got);
    assert!(order.windows(2).any(|w| w[0] > w[1]), "some message was overtaken");
}

#[test]
fn without_jitter_or_reorder_a_link_is_fifo() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(3, perfect(5));
    for i in 0..100 {
        net.send(ms(u64::from(i / 3)), &a, &b, i, 1);
    }
    assert_eq!(msgs(&drain(&mut net)), (0..100).collect::<Vec<_>>());
}

#[test]
fn per_link_config_overrides_the_default() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::new(0, perfect(1));
    net.set_link(&a, &b, perfect(100));
    assert_eq!(net.link(&a, &b).latency, Duration::from_millis(100));
    assert_eq!(net.link(&b, &a).latency, Duration::from_millis(1), "overrides are directed");
    net.send(ms(0), &a, &b, 1, 1);
    net.send(ms(0), &a, &c, 2, 1);
    let got = drain(&mut net);
    assert_eq!(got.iter().map(|d| (d.msg, d.at)).collect::<Vec<_>>(), vec![(2, ms(1)), (1, ms(100))]);
    net.reset_link(&a, &b);
    assert_eq!(net.link(&a, &b), net.default_link());
}

#[test]
fn in_flight_messages_to_a_crashed_node_are_dropped() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut net = Network::new(0, perfect(10));
    net.send(ms(0), &a, &b, 1, 1);
    net.send(ms(0), &c, &b, 2, 1);
    net.hold(&a, &b);
    net.send(ms(0), &a, &b, 3, 1);
    net.send(ms(0), &b, &a, 4, 1);
    assert_eq!(net.drop_in_flight_to(&b), 3, "scheduled and held copies");
    net.release_all(ms(1));
    assert_eq!(msgs(&drain(&mut net)), vec![4], "what b sent still arrives");
    assert_eq!(net.stats().dropped.crash, 3);
}

fn small_limits(messages: usize, bytes: u64) -> Limits {
    Limits {
        in_flight_messages_max: NonZeroUsize::new(messages).unwrap(),
        in_flight_bytes_max: NonZeroU64::new(bytes).unwrap(),
    }
}

#[test]
fn in_flight_queue_is_bounded() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::with_limits(0, perfect(10), small_limits(10, 1 << 20));
    net.hold(&b, &a);
    for i in 0..100 {
        net.send(ms(0), &a, &b, i, 1);
        net.send(ms(0), &b, &a, i, 1);
    }
    let stats = net.stats();
    assert_eq!((stats.in_flight, stats.in_flight_max, stats.dropped.overflow), (10, 10, 190));
    net.check_invariants();
    assert_eq!(drain(&mut net).len(), 5, "held copies count too");
    assert_eq!(net.send(ms(20), &a, &b, 0, 1), 1, "room again once delivered");
}

#[test]
fn in_flight_bytes_are_bounded() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::with_limits(0, perfect(10), small_limits(100, 1000));
    assert_eq!(net.send(ms(0), &a, &b, 1, 600), 1);
    assert_eq!(net.send(ms(0), &a, &b, 2, 600), 0);
    assert_eq!(net.send(ms(0), &a, &b, 3, 400), 1);
    assert_eq!(net.send(ms(0), &a, &b, 4, usize::MAX), 0);
    assert_eq!(net.stats().dropped.overflow, 2);
    assert_eq!(msgs(&drain(&mut net)), vec![1, 3]);
}

#[test]
fn time_never_goes_backwards() {
    let (a, b) = (id("a"), id("b"));
    let mut net = Network::new(0, perfect(5));
    assert!(net.poll_delivery(ms(50)).is_none());
    net.send(ms(10), &a, &b, 1, 1);
    assert!(net.poll_delivery(ms(20)).is_none(), "an earlier now is clamped to 50, not used");
    let d = net.poll_delivery(ms(55)).unwrap();
    assert_eq!((d.sent_at, d.at), (ms(50), ms(55)));
}

#[test]
fn faults_do_not_shift_the_random_draws_of_other_links() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let run = |cut_c: bool| {
        let mut net = Network::new(11, chaotic());
        if cut_c {
            net.partition_one_way(&a, &c);
            net.set_link(&a, &c, LinkConfig { loss: Probability::ONE, ..chaotic() });
        }
        for i in 0..200 {
            let to = if i % 3 == 0 { &c } else { &b };
            net.send(ms(u64::from(i)), &a, to, i, 1);
        }
        let got = drain(&mut net);
        got.into_iter().filter(|d| d.to == b).map(|d| (d.msg, d.at)).collect::<Vec<_>>()
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn stats_account_for_every_message() {
    let nodes = [id("a"), id("b"), id("c"), id("d")];
    let mut net = Network::with_limits(8, chaotic(), small_limits(30, 1 << 20));
    for i in 0..400u32 {
        let now = ms(u64::from(i));
        let (from, to) = (&nodes[i as usize % 4], &nodes[(i as usize * 7 + 1) % 4]);
        match i % 50 {
            0 => net.partition(&nodes[..1], &nodes[1..]),
            10 => net.heal(),
            20 => net.hold(from, to),
            30 => net.release_all(now),
            40 => {
                net.drop_in_flight_to(to);
            }
            _ => {}
        }
        net.send(now, from, to, i, usize::try_from(i).unwrap());
        drain_until(&mut net, now);
    }
    net.release_all(ms(1000));
    drain(&mut net);
    let s = net.stats();
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.sent + s.duplicated, s.delivered + s.dropped.total());
    for cause in [s.dropped.loss, s.dropped.partition, s.dropped.crash, s.dropped.overflow] {
        assert!(cause > 0, "every cause occurs: {s:?}");
    }
    assert_eq!(s.bytes_sent, (0..400).sum::<u64>());
    assert!(s.bytes_delivered > 0);
    assert_eq!(DropCause::Overflow.to_string(), "overflow");
}
