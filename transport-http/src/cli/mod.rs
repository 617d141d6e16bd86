//! The `muster` command line: `serve` starts a node; the other subcommands
//! are clients of a running registry, built on the SDK ([`crate::client`]).
//!
//! Every client subcommand takes `--server` (or `MUSTER_SERVER`, default
//! `127.0.0.1:8848`; a comma-separated list, empty entries skipped, starts
//! at a random server and fails over), `--namespace`, `--group`,
//! `--token-file`, `--timeout-ms` and `--json`, before or after the
//! subcommand (`muster --server X watch orders`). Human output is aligned
//! text on stdout (notes on stderr); `--json` prints the JSON of the OpenAPI
//! answers, one document per line, stable for scripts. `watch` and
//! `register --keep` say on stderr when no server answers and when one
//! answers again. Ctrl-C (or SIGTERM) stops any command at once, even while
//! a request hangs (exit 130); `register --keep` deregisters on the first
//! one and stops at once on a second.
//!
//! # Exit codes
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the operation failed: not found, unknown instance, refused, unauthorized, a node not ready |
//! | 2 | usage: a bad flag or argument (from clap, or a value the registry refuses) |
//! | 3 | no server reachable |
//! | 130 | stopped by Ctrl-C / SIGTERM before it finished |

mod backup;
mod output;
mod signals;

pub use backup::{ExportArgs, ImportArgs};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{
    BeatOutcome, Client, DEFAULT_SERVER, Error, InstanceRef, InstanceSpec, ListServices, QueryOptions,
};
use crate::config::ServeArgs;
pub use signals::EXIT_INTERRUPTED;
use signals::Signals;

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the operation failed (not found, refused, unauthorized, ...).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: a usage error (bad flag or argument).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no server reachable.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The `muster` command line.
#[derive(Debug, Parser)]
#[command(
    name = "muster",
    version,
    about = "Muster service registry: run a node, or talk to one",
    after_help = "Exit codes: 0 done, 1 operation failed (not found, refused, ...), \
                  2 usage error, 3 no server reachable, 130 stopped by Ctrl-C or SIGTERM."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `muster`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a registry node (a single node with no flags, on 127.0.0.1:8848).
    Serve(Box<ServeArgs>),
    /// Register an instance (once; with --keep, stay registered until Ctrl-C).
    Register(RegisterArgs),
    /// Deregister an instance.
    Deregister(InstanceArgs),
    /// Send one heartbeat for an instance.
    Beat(InstanceArgs),
    /// List a service's instances.
    Instances(InstancesArgs),
    /// List services with their instance counts.
    Services(ServicesArgs),
    /// Print a service's instances, then each change as it happens (Ctrl-C stops).
    Watch(WatchArgs),
    /// Show the cluster's nodes and their state, as a node sees them.
    Nodes(ClientOpts),
    /// Check whether each server is live and ready.
    Health(ClientOpts),
    /// Write the registry (service settings, instances) as JSON lines.
    Export(ExportArgs),
    /// Load a file written by `export` into a running node or cluster (idempotent).
    Import(ImportArgs),
}

/// Options of every client subcommand.
#[derive(Clone, Debug, Args)]
pub struct ClientOpts {
    /// Registry servers, comma-separated host:port, tried in order (failover).
    #[arg(short, long, env = "MUSTER_SERVER", default_value = DEFAULT_SERVER, value_name = "HOST:PORT,...")]
    pub server: String,
    /// Namespace [default: public].
    #[arg(short, long, env = "MUSTER_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Group [default: DEFAULT_GROUP; `services` lists all groups unless given].
    #[arg(short, long, env = "MUSTER_GROUP", value_name = "GROUP")]
    pub group: Option<String>,
    /// File holding the bearer token (the node's write token for writes, read token for reads).
    #[arg(long, env = "MUSTER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Longest wait for one server's answer before trying the next, ms.
    #[arg(long, env = "MUSTER_TIMEOUT_MS", default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Print JSON (stable for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// An instance named on the command line.
#[derive(Clone, Debug, Args)]
pub struct InstanceArgs {
    /// The service.
    pub service: String,
    /// The instance's host (IP address or host name).
    pub ip: String,
    /// The instance's port.
    pub port: u16,
    /// The cluster within the service [default: DEFAULT].
    #[arg(short, long)]
    pub cluster: Option<String>,
    /// Server, namespace, group, token, output.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `muster register`.
#[derive(Clone, Debug, Args)]
pub struct RegisterArgs {
    /// The instance, and the client options.
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Weight, 0 to 10000 [default: 1].
    #[arg(short, long)]
    pub weight: Option<f64>,
    /// Register it disabled (takes no traffic).
    #[arg(long)]
    pub disabled: bool,
    /// A persistent instance: never expires by silence (deregister it explicitly).
    #[arg(long)]
    pub persistent: bool,
    /// Metadata entry, repeatable.
    #[arg(short, long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// Stay in the foreground and heartbeat; Ctrl-C or SIGTERM deregisters.
    #[arg(long)]
    pub keep: bool,
}

/// `muster instances`.
#[derive(Clone, Debug, Args)]
pub struct InstancesArgs {
    /// The service.
    pub service: String,
    /// Only healthy, enabled instances (all enabled ones past the protect threshold).
    #[arg(long)]
    pub healthy_only: bool,
    /// Only these clusters, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "CLUSTER,...")]
    pub clusters: Vec<String>,
    /// Server, namespace, group, token, output.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `muster services`.
#[derive(Clone, Debug, Args)]
pub struct ServicesArgs {
    /// Only services whose name contains this (case-insensitive).
    #[arg(long)]
    pub search: Option<String>,
    /// Page number, from 1.
    #[arg(long)]
    pub page: Option<u32>,
    /// Services per page (the server caps it).
    #[arg(long)]
    pub page_size: Option<u32>,
    /// Server, namespace, group, token, output.
    #[command(flatten)]
    pub client: ClientOpts,
}

/// `muster watch`.
#[derive(Clone, Debug, Args)]
pub struct WatchArgs {
    /// The service.
    pub service: String,
    /// Server, namespace, group, token, output.
    #[command(flatten)]
    pub client: ClientOpts,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A failed command: its exit code and what to tell the user.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    /// The failure of an SDK error, with what to do about it.
    fn from_error(e: &Error, not_found_hint: &str) -> Failure {
        match e {
            Error::Unavailable(_) => Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "{e}\nIs a node running there? Start one with `muster serve`, or point --server \
                     (or MUSTER_SERVER) at a running node; a comma-separated list fails over."
                ),
            ),
            Error::InvalidInput { .. } => {
                Failure::new(EXIT_USAGE, format!("{e}\nSee `muster help` for the accepted arguments."))
            }
            Error::NotFound { .. } => Failure::new(EXIT_FAILED, format!("{e}\n{not_found_hint}")),
            Error::Unauthorized { message } => Failure::new(
                EXIT_FAILED,
                format!(
                    "unauthorized: {message}\nPass the node's token with --token-file FILE (or MUSTER_TOKEN_FILE)."
                ),
            ),
            other => Failure::new(EXIT_FAILED, other.to_string()),
        }
    }
}

/// Parses the command line, accepting the client options before the
/// subcommand too (`muster --server X register ...`).
pub fn parse() -> Cli {
    Cli::parse_from(common_flags_after_subcommand(std::env::args_os().collect()))
}

/// Moves the client options given before the subcommand to just after it.
fn common_flags_after_subcommand(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const WITH_VALUE: &[&str] =
        &["--server", "-s", "--namespace", "-n", "--group", "-g", "--token-file", "--timeout-ms"];
    let mut moved = Vec::new();
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        let name = arg.split_once('=').map_or(arg, |(n, _)| n);
        if arg == "--json" || (arg.contains('=') && WITH_VALUE.contains(&name)) {
            moved.push(i);
            i += 1;
        } else if WITH_VALUE.contains(&arg) {
            moved.extend([i, i + 1]);
            i += 2;
        } else {
            break;
        }
    }
    let sub = i;
    if moved.is_empty() || sub >= args.len() || args[sub] == "serve" {
        return args;
    }
    let mut out = vec![args[0].clone(), args[sub].clone()];
    out.extend(moved.iter().filter_map(|&m| args.get(m).cloned()));
    out.extend(args.iter().skip(sub + 1).cloned());
    out
}

/// Runs a client subcommand (not `serve`) and returns the exit code; errors
/// go to stderr, prefixed `muster:`.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let outcome = runtime.block_on(async {
        let signals = Signals::install()
            .map_err(|e| Failure::new(EXIT_FAILED, format!("cannot listen for Ctrl-C: {e}")))?;
        let mut stop = signals.clone();
        tokio::select! {
            result = dispatch(command, signals) => result,
            () = stop.stop() => Err(Failure::new(EXIT_INTERRUPTED, "interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(f) => {
            eprintln!("muster: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(command: Command, signals: Signals) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => Err(Failure::new(EXIT_USAGE, "`serve` is not a client command")),
        Command::Register(args) => register(args, signals).await,
        Command::Deregister(args) => deregister(args).await,
        Command::Beat(args) => beat(args).await,
        Command::Instances(args) => instances(args).await,
        Command::Services(args) => services(args).await,
        Command::Watch(args) => watch(args, signals).await,
        Command::Nodes(opts) => nodes(opts).await,
        Command::Health(opts) => health(opts).await,
        Command::Export(args) => backup::export(args).await,
        Command::Import(args) => backup::import(args).await,
    }
}

fn client(opts: &ClientOpts) -> Result<Client, Failure> {
    let usage = |e: Error| Failure::new(EXIT_USAGE, e.to_string());
    let servers: Vec<&str> = opts.server.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut b = Client::builder(servers)
        .request_timeout(Duration::from_millis(opts.timeout_ms.max(1)))
        .backoff(Duration::from_millis(100), Duration::from_secs(2));
    if let Some(ns) = &opts.namespace {
        b = b.namespace(ns.as_str());
    }
    if let Some(g) = &opts.group {
        b = b.group(g.as_str());
    }
    if let Some(path) = &opts.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| {
            Failure::new(EXIT_USAGE, format!("cannot read the token file {}: {e}", path.display()))
        })?;
        b = b.token(token.trim());
    }
    b.build().map_err(usage)
}

fn instance_ref(args: &InstanceArgs) -> InstanceRef {
    let r = InstanceRef::new(args.service.as_str(), args.ip.as_str(), args.port);
    match &args.cluster {
        Some(c) => r.cluster(c.as_str()),
        None => r,
    }
}

/// `muster register SERVICE IP PORT [...]`
async fn register(args: RegisterArgs, mut signals: Signals) -> Result<(), Failure> {
    let i = &args.instance;
    let c = client(&i.client)?;
    let mut spec = InstanceSpec::new(i.service.as_str(), i.ip.as_str(), i.port)
        .metadata_map(args.meta.iter().cloned().collect::<BTreeMap<_, _>>());
    if let Some(cluster) = &i.cluster {
        spec = spec.cluster(cluster.as_str());
    }
    if let Some(w) = args.weight {
        spec = spec.weight(w);
    }
    if args.disabled {
        spec = spec.enabled(false);
    }
    if args.persistent {
        spec = spec.ephemeral(false);
    }
    let service = format!("{}/{}/{}", c.namespace(), c.group(), i.service);
    if !args.keep {
        let r = c.register_once(spec).await.map_err(|e| Failure::from_error(&e, ""))?;
        if i.client.json {
            output::print_json(&r);
        } else {
            let how = if r.created { "registered" } else { "updated" };
            println!("{how} {} in {service}", r.instance_id);
            if !args.persistent {
                eprintln!(
                    "note: ephemeral instance: run `muster beat {} {} {}` every {} ms or it is removed; \
                     --keep stays registered, --persistent never expires",
                    i.service, i.ip, i.port, r.heartbeat_interval_ms
                );
            }
        }
        return Ok(());
    }
    let registration = c.register(spec).await.map_err(|e| Failure::from_error(&e, ""))?;
    signals.handle_first();
    let interval = registration.heartbeat_interval().as_millis();
    if i.client.json {
        output::print_json(&serde_json::json!({
            "instance_id": registration.instance_id(),
            "heartbeat_interval_ms": interval,
            "created": registration.created(),
        }));
    } else if registration.persistent() {
        println!(
            "registered {} in {service} (persistent); checking every {interval} ms that the server \
             still has it and registering it again if not; Ctrl-C deregisters",
            registration.instance_id()
        );
    } else {
        println!(
            "registered {} in {service}; beating every {interval} ms; Ctrl-C deregisters",
            registration.instance_id()
        );
    }
    tokio::select! {
        () = signals.next() => {}
        () = report_connection(&c) => {}
    }
    let id = registration.instance_id().to_owned();
    registration.close().await.map_err(|e| Failure::from_error(&e, ""))?;
    if !i.client.json {
        println!("deregistered {id}");
    }
    Ok(())
}

/// Says on stderr, every time it changes, whether a server answers; runs
/// until cancelled.
async fn report_connection(c: &Client) {
    let mut connected = true;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = c.connected();
        if now != connected {
            if now {
                eprintln!("muster: connected again to {}", c.current_server());
            } else {
                eprintln!("muster: disconnected: no server of {} answers; retrying", c.servers().join(","));
            }
            connected = now;
        }
    }
}

/// `muster deregister SERVICE IP PORT`
async fn deregister(args: InstanceArgs) -> Result<(), Failure> {
    let c = client(&args.client)?;
    let hint = format!("List the service's instances with `muster instances {}`.", args.service);
    let id = c.deregister(&instance_ref(&args)).await.map_err(|e| Failure::from_error(&e, &hint))?;
    if args.client.json {
        output::print_json(&serde_json::json!({ "instance_id": id }));
    } else {
        println!("deregistered {id} from {}/{}/{}", c.namespace(), c.group(), args.service);
    }
    Ok(())
}

/// `muster beat SERVICE IP PORT`
async fn beat(args: InstanceArgs) -> Result<(), Failure> {
    let c = client(&args.client)?;
    let answer = c.beat_answer(&instance_ref(&args)).await.map_err(|e| Failure::from_error(&e, ""))?;
    if args.client.json {
        // The API's own answer: {"unknown": [...], "heartbeat_interval_ms": N}.
        output::print_json(&answer);
    }
    let outcome = if answer.unknown.is_empty() {
        BeatOutcome::Alive { heartbeat_interval: Duration::from_millis(answer.heartbeat_interval_ms) }
    } else {
        BeatOutcome::Unknown
    };
    match outcome {
        BeatOutcome::Alive { heartbeat_interval } => {
            if !args.client.json {
                println!("alive; beat again within {} ms", heartbeat_interval.as_millis());
            }
            Ok(())
        }
        _ => Err(Failure::new(
            EXIT_FAILED,
            format!(
                "the server does not know {}:{} of {}; register it again with `muster register {} {} {}`",
                args.ip, args.port, args.service, args.service, args.ip, args.port
            ),
        )),
    }
}

/// `muster instances SERVICE`
async fn instances(args: InstancesArgs) -> Result<(), Failure> {
    let c = client(&args.client)?;
    let options = QueryOptions { healthy_only: args.healthy_only, clusters: args.clusters.clone() };
    let list = c.query(&args.service, &options).await.map_err(|e| Failure::from_error(&e, ""))?;
    if args.client.json {
        output::print_json(&list);
    } else {
        print!("{}", output::instance_list(&list));
    }
    Ok(())
}

/// `muster services`
async fn services(args: ServicesArgs) -> Result<(), Failure> {
    let c = client(&args.client)?;
    let list = ListServices {
        group: args.client.group.clone(),
        search: args.search.clone(),
        page: args.page,
        page_size: args.page_size,
    };
    let page = c.services(&list).await.map_err(|e| Failure::from_error(&e, ""))?;
    if args.client.json {
        output::print_json(&page);
    } else {
        print!("{}", output::service_page(&page, c.namespace()));
    }
    Ok(())
}

/// `muster watch SERVICE`: the list, then each change, until Ctrl-C.
async fn watch(args: WatchArgs, mut signals: Signals) -> Result<(), Failure> {
    let c = client(&args.client)?;
    // Fail fast (exit 3) if no server answers at the start.
    c.instances(&args.service).await.map_err(|e| Failure::from_error(&e, ""))?;
    let mut changes = c.subscribe(&args.service).await.map_err(|e| Failure::from_error(&e, ""))?;
    signals.handle_first();
    let mut previous = None;
    let stop = async {
        tokio::select! {
            () = signals.next() => {}
            () = report_connection(&c) => {}
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            next = changes.next() => {
                let Some(list) = next else { return Ok(()) };
                if args.client.json {
                    output::print_json(&*list);
                } else {
                    print!("{}", output::change(previous.as_deref(), &list, output::clock_now()));
                }
                previous = Some(list);
            }
            () = &mut stop => return Ok(()),
        }
    }
}

/// `muster nodes`
async fn nodes(opts: ClientOpts) -> Result<(), Failure> {
    let c = client(&opts)?;
    let nodes = c.nodes().await.map_err(|e| Failure::from_error(&e, ""))?;
    if opts.json {
        output::print_json(&nodes);
    } else {
        print!("{}", output::cluster_nodes(&nodes));
    }
    Ok(())
}

/// `muster health`: 0 if every server is ready, 3 if none is live, else 1.
async fn health(opts: ClientOpts) -> Result<(), Failure> {
    let c = client(&opts)?;
    let servers = c.health().await;
    if opts.json {
        output::print_json(&serde_json::json!({ "servers": servers }));
    } else {
        print!("{}", output::server_health(&servers));
    }
    if servers.iter().all(|s| s.ready) {
        Ok(())
    } else if servers.iter().all(|s| !s.live) {
        Err(Failure::new(EXIT_UNREACHABLE, "no server reachable; start one with `muster serve`"))
    } else {
        Err(Failure::new(EXIT_FAILED, "not every server is ready (a starting node loads the registry first)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses_every_subcommand() {
        let cli = Cli::try_parse_from([
            "muster",
            "register",
            "orders",
            "10.0.0.7",
            "8080",
            "-w",
            "2",
            "--meta",
            "zone=eu-1",
            "--meta",
            "a=",
            "--server",
            "a:1,b:2",
            "--json",
        ])
        .unwrap();
        let Command::Register(r) = cli.command else { panic!() };
        assert_eq!(r.weight, Some(2.0));
        assert_eq!(r.meta, [("zone".to_owned(), "eu-1".to_owned()), ("a".to_owned(), String::new())]);
        assert_eq!(r.instance.client.server, "a:1,b:2");
        assert!(r.instance.client.json);
        let cli = Cli::try_parse_from(["muster", "instances", "orders", "--clusters", "a,b"]).unwrap();
        let Command::Instances(i) = cli.command else { panic!() };
        assert_eq!(i.clusters, ["a", "b"]);
        for bad in [
            &["muster", "register", "orders", "10.0.0.7", "http"][..],
            &["muster", "register", "orders", "10.0.0.7", "1", "--meta", "novalue"],
            &["muster", "watch"],
            &["muster", "nodes", "extra"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_map_to_exit_codes_and_say_what_to_do() {
        let f = Failure::from_error(&Error::Unavailable(Default::default()), "");
        assert_eq!(f.code, EXIT_UNREACHABLE);
        assert!(f.message.contains("muster serve"), "{}", f.message);
        let f =
            Failure::from_error(&Error::NotFound { message: "x".into() }, "List with `muster instances s`.");
        assert_eq!(f.code, EXIT_FAILED);
        assert!(f.message.contains("muster instances s"));
        let invalid = Error::InvalidInput { field: "port".into(), message: "bad".into() };
        assert_eq!(Failure::from_error(&invalid, "").code, EXIT_USAGE);
        let f = Failure::from_error(&Error::Unauthorized { message: "no token".into() }, "");
        assert!(f.message.contains("--token-file"));
    }
}
