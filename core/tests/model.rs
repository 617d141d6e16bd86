//! Model-based test: random operation sequences with random time steps are
//! applied to a real [`Node`] and to a tiny reference model of the registry;
//! after every step both must hold the same live instances with the same
//! data and health, and answer queries alike.

use std::collections::BTreeMap;

use muster_core::{
    BeatReply, Config, InstanceData, InstanceKey, Metadata, Node, NodeId, RegisterRequest, RequestError,
    Selector, ServiceKey, Timestamp, UpdateRequest,
};
use proptest::prelude::*;

const UNHEALTHY_MS: u64 = 15_000;
const REMOVE_MS: u64 = 30_000;

#[derive(Clone, Debug)]
enum Op {
    Register { who: usize, weight: u16, ephemeral: bool, zone: Option<u8> },
    Deregister { who: usize },
    Beat { who: usize },
    Update { who: usize, weight: Option<u16>, enabled: Option<bool> },
    Advance { ms: u64 },
    Query { service: usize, healthy_only: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8usize, 0..5u16, prop::bool::weighted(0.8), prop::option::of(0..3u8))
            .prop_map(|(who, weight, ephemeral, zone)| Op::Register { who, weight, ephemeral, zone }),
        1 => (0..8usize).prop_map(|who| Op::Deregister { who }),
        4 => (0..8usize).prop_map(|who| Op::Beat { who }),
        1 => (0..8usize, prop::option::of(0..5u16), prop::option::of(any::<bool>()))
            .prop_map(|(who, weight, enabled)| Op::Update { who, weight, enabled }),
        3 => (0..20_000u64).prop_map(|ms| Op::Advance { ms }),
        2 => (0..2usize, any::<bool>()).prop_map(|(service, healthy_only)| Op::Query { service, healthy_only }),
    ]
}

fn service(i: usize) -> ServiceKey {
    ServiceKey::parse(None, None, &format!("svc-{i}")).unwrap()
}

/// Eight instance keys over two services.
fn key(who: usize) -> InstanceKey {
    InstanceKey::parse(service(who % 2), None, &format!("10.0.0.{who}"), 8000 + who as i64).unwrap()
}

#[derive(Clone, Debug, PartialEq)]
struct ModelInstance {
    data: InstanceData,
    last_beat: u64,
}

/// The reference: what a registry of one node must hold.
#[derive(Default)]
struct Model {
    now: u64,
    instances: BTreeMap<InstanceKey, ModelInstance>,
}

impl Model {
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        self.instances.retain(|_, i| !i.data.ephemeral || now - i.last_beat < REMOVE_MS);
        for i in self.instances.values_mut() {
            if i.data.ephemeral && now - i.last_beat >= UNHEALTHY_MS {
                i.data.healthy = false;
            }
        }
    }

    fn live(&self) -> BTreeMap<InstanceKey, InstanceData> {
        self.instances.iter().map(|(k, i)| (k.clone(), i.data.clone())).collect()
    }
}

fn data(weight: u16, ephemeral: bool, zone: Option<u8>) -> InstanceData {
    let metadata = zone.map(|z| BTreeMap::from([("zone".to_owned(), format!("z{z}"))])).unwrap_or_default();
    InstanceData {
        weight: f64::from(weight),
        healthy: true,
        enabled: true,
        ephemeral,
        metadata: Metadata::from_map(metadata).unwrap(),
    }
}

fn run_until(node: &mut Node, until: Timestamp) {
    while let Some((t, _)) = node.poll_timeout() {
        if t > until {
            break;
        }
        node.handle_timeout(t);
        while node.poll_event().is_some() {}
    }
    node.handle_timeout(until);
}

fn apply(node: &mut Node, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let now = Timestamp::from_millis(model.now);
    match op {
        Op::Register { who, weight, ephemeral, zone } => {
            let d = data(*weight, *ephemeral, *zone);
            let mut req = RegisterRequest::new(key(*who));
            req.weight = Some(d.weight);
            req.ephemeral = Some(*ephemeral);
            req.metadata = d.metadata.to_map();
            node.register(now, req).unwrap();
            model.instances.insert(key(*who), ModelInstance { data: d, last_beat: model.now });
        }
        Op::Deregister { who } => {
            let res = node.deregister(now, &key(*who));
            let existed = model.instances.remove(&key(*who)).is_some();
            prop_assert_eq!(res.is_ok(), existed);
        }
        Op::Beat { who } => {
            let reply = node.heartbeat(now, &key(*who)).unwrap();
            match model.instances.get_mut(&key(*who)) {
                Some(i) => {
                    let known = matches!(reply, BeatReply::Ok { .. });
                    prop_assert!(known, "beat of a known instance answered {:?}", reply);
                    i.last_beat = model.now;
                    if i.data.ephemeral {
                        i.data.healthy = true;
                    }
                }
                None => prop_assert_eq!(reply, BeatReply::Unknown),
            }
        }
        Op::Update { who, weight, enabled } => {
            let upd =
                UpdateRequest { weight: weight.map(f64::from), enabled: *enabled, ..Default::default() };
            let res = node.update_instance(now, &key(*who), upd);
            match model.instances.get_mut(&key(*who)) {
                Some(i) => {
                    prop_assert!(res.is_ok());
                    if let Some(w) = weight {
                        i.data.weight = f64::from(*w);
                    }
                    if let Some(e) = enabled {
                        i.data.enabled = *e;
                    }
                }
                None => {
                    let not_found = matches!(res, Err(RequestError::InstanceNotFound(_)));
                    prop_assert!(not_found, "update of a missing instance answered {:?}", res);
                }
            }
        }
        Op::Advance { ms } => {
            model.advance(*ms);
            run_until(node, Timestamp::from_millis(model.now));
        }
        Op::Query { service: s, healthy_only } => {
            let sel = Selector { clusters: vec![], healthy_only: *healthy_only };
            let answer = node.query(now, &service(*s), &sel).unwrap();
            let got: Vec<String> = answer.instances().map(|i| i.ip.to_string()).collect();
            let want: Vec<String> = model
                .instances
                .iter()
                .filter(|(k, _)| k.service == service(*s))
                .filter(|(_, i)| !healthy_only || (i.data.healthy && i.data.enabled))
                .map(|(k, _)| k.ip.to_string())
                .collect();
            let (mut got, mut want) = (got, want);
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_node_behaves_like_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut config = Config::new(NodeId::parse("127.0.0.1:8848").unwrap());
        config.brake.share = 1.0; // The model has no brake.
        let mut node = Node::new(config, Timestamp::ZERO).unwrap();
        let mut model = Model::default();
        for op in &ops {
            apply(&mut node, &mut model, op)?;
            node.check_invariants();
            prop_assert_eq!(node.live_instances(), model.live(), "after {:?} at {} ms", op, model.now);
        }
        // Finally let everything expire: only persistent instances remain.
        model.advance(REMOVE_MS);
        run_until(&mut node, Timestamp::from_millis(model.now));
        prop_assert_eq!(node.live_instances(), model.live());
        prop_assert!(node.live_instances().values().all(|d| !d.ephemeral));
    }
}
