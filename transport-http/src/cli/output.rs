//! Human output of the client subcommands: aligned tables and change lines.
//! Pure functions from answers to text, so they are tested without a server.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::client::{ClusterNodes, Instance, InstanceList, ServerHealth, ServicePage};

/// Prints one JSON document on one line.
pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("muster: cannot encode the answer as JSON: {e}"),
    }
}

/// Left-aligned columns separated by two spaces, no trailing blanks.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// A weight without a pointless `.0`.
fn weight(w: f64) -> String {
    if w.fract() == 0.0 && w.abs() < 1e15 { format!("{w:.0}") } else { format!("{w}") }
}

fn metadata(i: &Instance) -> String {
    if i.metadata.is_empty() {
        return "-".to_owned();
    }
    i.metadata.iter().map(|(k, v)| format!("{}={}", quoted(k), quoted(v))).collect::<Vec<_>>().join(",")
}

/// `s` as it is if it holds nothing that separates metadata entries, else
/// quoted with escapes (`"a=b,c"`), so every entry reads back unambiguously.
fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.chars().any(|c| matches!(c, '=' | ',' | '"' | '\\') || c.is_whitespace() || c.is_control());
    if plain { s.to_owned() } else { format!("{s:?}") }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The summary line of a list: `public/G/s: 2 instances, 1 healthy`.
fn summary(list: &InstanceList) -> String {
    let healthy = list.instances.iter().filter(|i| i.healthy).count();
    let mut s = format!(
        "{}: {}, {healthy} healthy",
        list.service_name(),
        plural(list.instances.len(), "instance", "instances")
    );
    if list.protect_threshold_reached {
        s.push_str(" (protect threshold reached: unhealthy instances are candidates)");
    }
    if !list.known {
        s.push_str(" (the server holds no record of this service)");
    }
    s
}

/// `muster instances`.
pub(super) fn instance_list(list: &InstanceList) -> String {
    let mut out = summary(list);
    out.push('\n');
    if list.instances.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = list
        .instances
        .iter()
        .map(|i| {
            vec![
                i.ip.clone(),
                i.port.to_string(),
                i.cluster.clone(),
                weight(i.weight),
                yes_no(i.healthy),
                yes_no(i.enabled),
                yes_no(i.ephemeral),
                metadata(i),
            ]
        })
        .collect();
    out.push_str(&table(
        &["IP", "PORT", "CLUSTER", "WEIGHT", "HEALTHY", "ENABLED", "EPHEMERAL", "METADATA"],
        &rows,
    ));
    out
}

/// `muster services`.
pub(super) fn service_page(page: &ServicePage, namespace: &str) -> String {
    let mut out = String::new();
    if !page.services.is_empty() {
        let rows: Vec<Vec<String>> = page
            .services
            .iter()
            .map(|s| {
                vec![
                    s.group.clone(),
                    s.service.clone(),
                    s.instances.to_string(),
                    s.healthy_instances.to_string(),
                    weight(s.protect_threshold),
                    yes_no(s.explicit),
                ]
            })
            .collect();
        out.push_str(&table(&["GROUP", "SERVICE", "INSTANCES", "HEALTHY", "PROTECT", "EXPLICIT"], &rows));
    }
    let pages = page.total.div_ceil(page.page_size.max(1)).max(1);
    let _ = writeln!(
        out,
        "{} in namespace {namespace} (page {} of {pages})",
        plural(usize::try_from(page.total).unwrap_or(usize::MAX), "service", "services"),
        page.page
    );
    out
}

/// A duration for people: `850ms`, `12.3s`, `5m02s`, `3h07m`.
pub(super) fn age(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", d.as_secs_f64()),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// `muster nodes`.
pub(super) fn cluster_nodes(nodes: &ClusterNodes) -> String {
    let ready = if nodes.ready { "ready" } else { "not ready: loading the registry" };
    let mut out = format!("as seen by {} ({ready}):\n", nodes.me);
    let rows: Vec<Vec<String>> = nodes
        .nodes
        .iter()
        .map(|n| {
            let seen = match (n.is_self, n.last_seen_ms) {
                (true, _) => "self".to_owned(),
                (false, Some(ms)) => format!("{} ago", age(ms)),
                (false, None) => "never".to_owned(),
            };
            vec![n.id.clone(), n.state.clone(), seen, age(n.state_since_ms)]
        })
        .collect();
    out.push_str(&table(&["NODE", "STATE", "LAST SEEN", "IN STATE FOR"], &rows));
    out
}

/// `muster health`.
pub(super) fn server_health(servers: &[ServerHealth]) -> String {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![s.server.clone(), yes_no(s.live), yes_no(s.ready), s.problem.clone().unwrap_or_default()]
        })
        .collect();
    table(&["SERVER", "LIVE", "READY", "PROBLEM"], &rows)
}

fn instance_line(sign: char, i: &Instance) -> String {
    let health = if i.healthy { "healthy" } else { "unhealthy" };
    let enabled = if i.enabled { "enabled" } else { "disabled" };
    format!(
        "  {sign} {}  {}  weight {}  {health}  {enabled}  {}\n",
        i.addr(),
        i.cluster,
        weight(i.weight),
        metadata(i)
    )
}

/// `muster watch`: a timestamped summary, then every instance of the first
/// list, or what was added (`+`), removed (`-`) and changed (`~`) since the
/// previous one.
pub(super) fn change(previous: Option<&InstanceList>, list: &InstanceList, clock: String) -> String {
    let mut out = format!("{clock}  {}\n", summary(list));
    let Some(previous) = previous else {
        for i in &list.instances {
            out.push_str(&instance_line(' ', i));
        }
        return out;
    };
    for i in &list.instances {
        match previous.instances.iter().find(|p| p.instance_id == i.instance_id) {
            None => out.push_str(&instance_line('+', i)),
            Some(p) if p != i => out.push_str(&instance_line('~', i)),
            Some(_) => {}
        }
    }
    for p in &previous.instances {
        if !list.instances.iter().any(|i| i.instance_id == p.instance_id) {
            out.push_str(&instance_line('-', p));
        }
    }
    out
}

/// The UTC time of day, `HH:MM:SS.mmm`.
pub(super) fn clock_now() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    clock(u64::try_from(ms).unwrap_or(0))
}

fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        (day_ms / 60_000) % 60,
        (day_ms / 1_000) % 60,
        day_ms % 1_000
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::client::{NodeInfo, ServiceSummary};

    fn inst(ip: &str, port: u16, healthy: bool) -> Instance {
        Instance {
            instance_id: format!("{ip}#{port}#DEFAULT"),
            cluster: "DEFAULT".into(),
            ip: ip.into(),
            port,
            weight: 1.0,
            healthy,
            enabled: true,
            ephemeral: true,
            metadata: BTreeMap::from([("zone".to_owned(), "eu-1".to_owned())]),
        }
    }

    fn list(instances: Vec<Instance>) -> InstanceList {
        InstanceList {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: "orders".into(),
            checksum: "0".repeat(16),
            protect_threshold_reached: false,
            known: true,
            instances,
        }
    }

    #[test]
    fn tables_are_aligned_without_trailing_blanks() {
        let t = table(&["A", "LONGER"], &[vec!["xxx".into(), "1".into()], vec!["y".into(), "".into()]]);
        assert_eq!(t, "A    LONGER\nxxx  1\ny\n");
    }

    #[test]
    fn instances_print_a_summary_and_a_table() {
        let text = instance_list(&list(vec![inst("10.0.0.7", 8080, true), inst("10.0.0.10", 80, false)]));
        assert_eq!(
            text,
            "public/DEFAULT_GROUP/orders: 2 instances, 1 healthy\n\
             IP         PORT  CLUSTER  WEIGHT  HEALTHY  ENABLED  EPHEMERAL  METADATA\n\
             10.0.0.7   8080  DEFAULT  1       yes      yes      yes        zone=eu-1\n\
             10.0.0.10  80    DEFAULT  1       no       yes      yes        zone=eu-1\n"
        );
        let mut empty = list(vec![]);
        empty.known = false;
        assert_eq!(
            instance_list(&empty),
            "public/DEFAULT_GROUP/orders: 0 instances, 0 healthy (the server holds no record of this service)\n"
        );
    }

    #[test]
    fn a_watch_prints_what_changed() {
        let a = list(vec![inst("10.0.0.1", 1, true), inst("10.0.0.2", 2, true)]);
        let first = change(None, &a, "12:00:00.000".into());
        assert_eq!(first.lines().count(), 3);
        assert!(first.starts_with("12:00:00.000  public/DEFAULT_GROUP/orders: 2 instances, 2 healthy\n"));
        let b = list(vec![inst("10.0.0.1", 1, false), inst("10.0.0.3", 3, true)]);
        let next = change(Some(&a), &b, "12:00:01.000".into());
        let lines: Vec<&str> = next.lines().collect();
        assert_eq!(lines.len(), 4, "{next}");
        assert!(lines[1].starts_with("  ~ 10.0.0.1:1  DEFAULT  weight 1  unhealthy"), "{next}");
        assert!(lines[2].starts_with("  + 10.0.0.3:3"), "{next}");
        assert!(lines[3].starts_with("  - 10.0.0.2:2"), "{next}");
    }

    #[test]
    fn services_nodes_and_health_are_tables() {
        let page = ServicePage {
            total: 1,
            page: 1,
            page_size: 100,
            services: vec![ServiceSummary {
                namespace: "public".into(),
                group: "DEFAULT_GROUP".into(),
                service: "orders".into(),
                instances: 2,
                healthy_instances: 1,
                protect_threshold: 0.5,
                metadata: BTreeMap::new(),
                explicit: false,
            }],
        };
        assert_eq!(
            service_page(&page, "public"),
            "GROUP          SERVICE  INSTANCES  HEALTHY  PROTECT  EXPLICIT\n\
             DEFAULT_GROUP  orders   2          1        0.5      no\n\
             1 service in namespace public (page 1 of 1)\n"
        );
        let nodes = ClusterNodes {
            me: "a:1".into(),
            ready: true,
            nodes: vec![
                NodeInfo {
                    id: "a:1".into(),
                    state: "up".into(),
                    is_self: true,
                    last_seen_ms: Some(0),
                    state_since_ms: 65_000,
                    clock_offset_ms: None,
                    rtt_ms: None,
                    clock: None,
                },
                NodeInfo {
                    id: "b:2".into(),
                    state: "down".into(),
                    is_self: false,
                    last_seen_ms: None,
                    state_since_ms: 800,
                    clock_offset_ms: None,
                    rtt_ms: None,
                    clock: None,
                },
            ],
        };
        assert_eq!(
            cluster_nodes(&nodes),
            "as seen by a:1 (ready):\n\
             NODE  STATE  LAST SEEN  IN STATE FOR\n\
             a:1   up     self       1m05s\n\
             b:2   down   never      800ms\n"
        );
        assert_eq!(age(12_345), "12.3s");
        assert_eq!(age(3_600_000 * 3 + 7 * 60_000), "3h07m");
        assert_eq!(clock(86_400_000 + 3_723_004), "01:02:03.004");
    }
}
