//! Weighted random choice among serving instances.

use super::model::Instance;

/// Picks one of `candidates` with probability proportional to its weight,
/// given `draw` uniform in `[0, 1)`. Instances of weight 0 (or not a finite
/// positive number) are never picked; `None` when no weight is positive.
pub(crate) fn weighted<'a>(
    candidates: impl Iterator<Item = &'a Instance>,
    draw: f64,
) -> Option<&'a Instance> {
    let positive: Vec<&Instance> = candidates.filter(|i| i.weight.is_finite() && i.weight > 0.0).collect();
    let total: f64 = positive.iter().map(|i| i.weight).sum();
    if positive.is_empty() || !total.is_finite() {
        return None;
    }
    let mut point = draw.clamp(0.0, 1.0) * total;
    for i in &positive {
        if point < i.weight {
            return Some(i);
        }
        point -= i.weight;
    }
    // Rounding left the point at the very end: the last one.
    positive.last().copied()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::client::model::InstanceList;

    fn instance(port: u16, weight: f64, healthy: bool, enabled: bool) -> Instance {
        Instance {
            instance_id: format!("10.0.0.1#{port}#DEFAULT"),
            cluster: "DEFAULT".into(),
            ip: "10.0.0.1".into(),
            port,
            weight,
            healthy,
            enabled,
            ephemeral: true,
            metadata: BTreeMap::new(),
        }
    }

    fn list(instances: Vec<Instance>, protect: bool) -> InstanceList {
        InstanceList {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: "s".into(),
            checksum: "0".repeat(16),
            protect_threshold_reached: protect,
            known: true,
            instances,
        }
    }

    #[test]
    fn draws_fall_on_instances_in_proportion_to_their_weight() {
        let l = list(vec![instance(1, 1.0, true, true), instance(2, 3.0, true, true)], false);
        let port = |d: f64| weighted(l.serving(), d).map(|i| i.port);
        assert_eq!(port(0.0), Some(1));
        assert_eq!(port(0.24), Some(1));
        assert_eq!(port(0.26), Some(2));
        assert_eq!(port(0.999_999), Some(2));
        assert_eq!(port(1.0), Some(2));
        let mut counts = [0u32; 2];
        for n in 0..4000 {
            let i = weighted(l.serving(), f64::from(n) / 4000.0).unwrap();
            counts[usize::from(i.port - 1)] += 1;
        }
        assert_eq!(counts, [1000, 3000]);
    }

    #[test]
    fn unhealthy_disabled_and_weightless_instances_get_no_traffic() {
        let l = list(
            vec![
                instance(1, 1.0, false, true),
                instance(2, 1.0, true, false),
                instance(3, 0.0, true, true),
                instance(4, 1.0, true, true),
            ],
            false,
        );
        for n in 0..100 {
            assert_eq!(weighted(l.serving(), f64::from(n) / 100.0).map(|i| i.port), Some(4));
        }
        let none = list(vec![instance(1, 1.0, false, true), instance(3, 0.0, true, true)], false);
        assert!(none.choose().is_none());
    }

    #[test]
    fn past_the_protect_threshold_unhealthy_enabled_instances_are_candidates() {
        let l = list(vec![instance(1, 1.0, false, true), instance(2, 1.0, false, false)], true);
        assert_eq!(l.choose().map(|i| i.port), Some(1));
    }
}
