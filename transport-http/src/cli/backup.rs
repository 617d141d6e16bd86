//! `muster export` and `muster import`: the registry as JSON lines, through
//! the OpenAPI of a running node (backup, restore, migration).
//!
//! One JSON object per line, each with a `kind`:
//! - `{"kind":"service","namespace":..,"group":..,"service":..,"protect_threshold":..,"metadata":{..}}`
//!   for every service created explicitly (its settings);
//! - `{"kind":"instance","namespace":..,"group":..,"service":..,"cluster":..,"ip":..,"port":..,
//!   "weight":..,"enabled":..,"healthy":..,"ephemeral":..,"metadata":{..}}` for every instance.
//!
//! Import registers each instance (an update if it exists) and puts each
//! service's settings: running it twice changes nothing the second time.
//! Ephemeral instances imported expire after the removal time unless their
//! providers beat; a file from another registry only needs these fields.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hyper::Method;
use serde_json::{Map, Value, json};

use super::{ClientOpts, EXIT_FAILED, EXIT_USAGE, Failure, client};
use crate::client::{Client, encode};

/// Services asked for per page while exporting.
const PAGE: usize = 500;
/// Lines between two progress notes of an import.
const PROGRESS_EVERY: usize = 1000;

/// `muster export`.
#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Server, namespace (only this one; all when not given), token.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `muster import`.
#[derive(Clone, Debug, Args)]
pub struct ImportArgs {
    /// The JSON-lines file (`-` for stdin), as `muster export` writes it.
    pub file: PathBuf,
    /// Server(s), token.
    #[command(flatten)]
    pub client: ClientOpts,
}

fn sdk_failure(e: &crate::client::Error) -> Failure {
    Failure::from_error(e, "")
}

/// `muster export [-o FILE]`
pub(super) async fn export(args: ExportArgs) -> Result<(), Failure> {
    let c = client(&args.client)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Failure::new(EXIT_USAGE, format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let namespaces = match &args.client.namespace {
        Some(ns) => vec![ns.clone()],
        None => {
            let v =
                c.call_json(Method::GET, "/v1/namespaces".into(), None).await.map_err(|e| sdk_failure(&e))?;
            v["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["namespace"].as_str())
                .map(str::to_owned)
                .collect()
        }
    };
    let (mut services, mut instances) = (0usize, 0usize);
    for ns in namespaces {
        for page in 1.. {
            let path = format!("/v1/services?namespace={}&page={page}&page_size={PAGE}", encode(&ns));
            let v = c.call_json(Method::GET, path, None).await.map_err(|e| sdk_failure(&e))?;
            let listed = v["services"].as_array().cloned().unwrap_or_default();
            for s in &listed {
                let (group, service) =
                    (s["group"].as_str().unwrap_or_default(), s["service"].as_str().unwrap_or_default());
                if s["explicit"] == true {
                    let line = json!({"kind": "service", "namespace": ns, "group": group, "service": service,
                        "protect_threshold": s["protect_threshold"], "metadata": s["metadata"]});
                    write_line(&mut out, &line)?;
                    services += 1;
                }
                instances += export_instances(&c, &mut out, &ns, group, service).await?;
            }
            if listed.len() < PAGE {
                break;
            }
        }
    }
    out.flush().map_err(|e| Failure::new(EXIT_FAILED, format!("cannot write the export: {e}")))?;
    eprintln!("exported {services} service settings and {instances} instances");
    Ok(())
}

async fn export_instances(
    c: &Client,
    out: &mut dyn Write,
    ns: &str,
    group: &str,
    service: &str,
) -> Result<usize, Failure> {
    let path =
        format!("/v1/instances?namespace={}&group={}&service={}", encode(ns), encode(group), encode(service));
    let v = c.call_json(Method::GET, path, None).await.map_err(|e| sdk_failure(&e))?;
    let list = v["instances"].as_array().cloned().unwrap_or_default();
    for i in &list {
        let mut line = Map::new();
        line.insert("kind".into(), "instance".into());
        line.insert("namespace".into(), ns.into());
        line.insert("group".into(), group.into());
        line.insert("service".into(), service.into());
        for field in ["cluster", "ip", "port", "weight", "enabled", "healthy", "ephemeral", "metadata"] {
            line.insert(field.into(), i[field].clone());
        }
        write_line(out, &Value::Object(line))?;
    }
    Ok(list.len())
}

fn write_line(out: &mut dyn Write, v: &Value) -> Result<(), Failure> {
    writeln!(out, "{v}").map_err(|e| Failure::new(EXIT_FAILED, format!("cannot write the export: {e}")))
}

/// `muster import FILE`
pub(super) async fn import(args: ImportArgs) -> Result<(), Failure> {
    let c = client(&args.client)?;
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&args.file)
            .map_err(|e| Failure::new(EXIT_USAGE, format!("cannot read {}: {e}", args.file.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let name = args.file.display().to_string();
    let started = Instant::now();
    let mut last_note = Instant::now();
    let mut done = 0usize;
    for (n, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| Failure::new(EXIT_FAILED, format!("{name}:{}: cannot read: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: String| Failure::new(EXIT_USAGE, format!("{name}:{}: {what}", n + 1));
        let v: Value = serde_json::from_str(&line).map_err(|e| at(format!("not JSON: {e}")))?;
        let (method, path, body) = request_of(&v).map_err(at)?;
        c.call_json(method, path, Some(&body)).await.map_err(|e| {
            let f = sdk_failure(&e);
            Failure::new(
                f.code,
                format!(
                    "{name}:{}: {}\n{done} lines imported before it; importing again is safe",
                    n + 1,
                    f.message
                ),
            )
        })?;
        done += 1;
        if done % PROGRESS_EVERY == 0 || last_note.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "imported {done} lines ({:.0} per second)",
                done as f64 / started.elapsed().as_secs_f64().max(0.001)
            );
            last_note = Instant::now();
        }
    }
    eprintln!("imported {done} lines from {name} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The OpenAPI call that imports one line.
fn request_of(v: &Value) -> Result<(Method, String, Value), String> {
    let text = |field: &str| v[field].as_str().map(str::to_owned);
    let service = text("service").ok_or("\"service\" is missing")?;
    let mut target = Map::new();
    for field in ["namespace", "group"] {
        if let Some(s) = text(field) {
            target.insert(field.into(), s.into());
        }
    }
    match v["kind"].as_str() {
        Some("service") => {
            let query = target
                .iter()
                .filter_map(|(k, v)| Some(format!("{k}={}", encode(v.as_str()?))))
                .collect::<Vec<_>>()
                .join("&");
            let mut body = Map::new();
            for field in ["protect_threshold", "metadata"] {
                if !v[field].is_null() {
                    body.insert(field.into(), v[field].clone());
                }
            }
            Ok((Method::PUT, format!("/v1/services/{}?{query}", encode(&service)), Value::Object(body)))
        }
        Some("instance") => {
            let mut body = target;
            body.insert("service".into(), service.into());
            for field in ["cluster", "ip", "port", "weight", "enabled", "healthy", "ephemeral", "metadata"] {
                if !v[field].is_null() {
                    body.insert(field.into(), v[field].clone());
                }
            }
            Ok((Method::POST, "/v1/instances".to_owned(), Value::Object(body)))
        }
        other => Err(format!("\"kind\" must be \"service\" or \"instance\", got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_line_becomes_a_registration_and_a_service_line_a_put() {
        let (m, p, b) = request_of(&json!({"kind":"instance","namespace":"prod","service":"a b","ip":"10.0.0.1","port":80,"ephemeral":false})).unwrap();
        assert_eq!((m, p.as_str()), (Method::POST, "/v1/instances"));
        assert_eq!(
            b,
            json!({"namespace":"prod","service":"a b","ip":"10.0.0.1","port":80,"ephemeral":false})
        );
        let (m, p, b) =
            request_of(&json!({"kind":"service","group":"g","service":"a b","protect_threshold":0.5}))
                .unwrap();
        assert_eq!((m, p.as_str()), (Method::PUT, "/v1/services/a%20b?group=g"));
        assert_eq!(b, json!({"protect_threshold":0.5}));
        assert!(request_of(&json!({"kind":"x","service":"s"})).unwrap_err().contains("kind"));
        assert!(request_of(&json!({"kind":"instance"})).unwrap_err().contains("service"));
    }
}
