//! `muster-bench`: the HTTP load tool of Muster (BENCHMARKS.md, "HTTP
//! (muster-bench)").
//!
//! Drives a `muster serve` node over HTTP/1.1 keep-alive connections, one
//! per concurrent worker (hyper 1's client connection on tokio), each worker
//! sending its next request as soon as the previous answer is read (a closed
//! loop: `--concurrency` requests in flight). Prints ops/s, errors by status
//! code and latency percentiles (p50/p90/p99/max, HDR histograms), per kind
//! of operation and in all; `--json` prints one JSON object instead. Runs
//! longer than two seconds print a progress line to stderr once a second.
//!
//! ```text
//! muster-bench --server 127.0.0.1:8848 --mode beat --instances 100000 \
//!     --concurrency 64 --duration 10s [--batch 100] [--warmup 2s] [--json]
//! ```
//!
//! Every loop is bounded in time (`--warmup` + `--duration`, the setup by
//! `--setup-timeout`, every request by `--timeout`) and in count
//! (`--max-ops`). Only loopback targets are accepted (127.0.0.0/8, `[::1]`,
//! `localhost`).

// The crate root is `src/bin/muster-bench.rs`; its modules live beside it.
#[path = "muster-bench/client.rs"]
mod client;
#[path = "muster-bench/consul.rs"]
mod consul;
#[path = "muster-bench/stats.rs"]
mod stats;
#[path = "muster-bench/workload.rs"]
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::stats::{Figures, Recorder, figures};
use crate::workload::{Api, Mode, Opts, Phases, WatchFigures, Workload, WriteLog};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "muster-bench",
    version,
    about = "HTTP load tool for a Muster node (loopback targets only)",
    after_help = "Durations: 500ms, 10s, 2m or plain seconds. Example:\n  \
                  muster-bench --server 127.0.0.1:8848 --mode beat --instances 100000 --concurrency 64 --duration 10s"
)]
struct Args {
    /// The node to load (HOST:PORT; a loopback address or localhost only).
    #[arg(long, default_value = "127.0.0.1:8848")]
    server: String,
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Instances: registered (register), pre-registered and beaten (beat, mixed),
    /// or of the queried service (query) [default: 100000 register, 10000 beat and
    /// mixed, 10 query].
    #[arg(long)]
    instances: Option<u64>,
    /// Concurrent workers, each with its own keep-alive connection (watch: watchers).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Services the instances are spread over (register, beat, mixed).
    #[arg(long, default_value_t = 100)]
    services: u64,
    /// The node the long polls wait on (watch); another node of --server's cluster
    /// [default: --server itself].
    #[arg(long)]
    watch_server: Option<String>,
    /// Load before measuring, not counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Heartbeats per request (beat, mixed): above 1, `{"beats": [...]}`.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Shares of query, beat and register operations (mixed).
    #[arg(long, default_value = "80,15,5", value_parser = parse_mix)]
    mix: [u64; 3],
    /// Writes per second on --server (watch).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The long polls' `wait` (watch).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    wait: Duration,
    /// Watch with streamed watches (`stream=true`: one request, every change
    /// on its answer) instead of one long poll per change (watch).
    #[arg(long)]
    stream: bool,
    /// Per-instance lease in ms: metadata `muster.unhealthy_after_ms` = LEASE and
    /// `muster.remove_after_ms` = 2 x LEASE, so instances outlive slow beat rounds;
    /// 2 x LEASE must not exceed the server's tombstone TTL (the server refuses a
    /// longer `remove_after`); 0 for none [default: 240000 for beat and mixed, none otherwise].
    #[arg(long)]
    lease: Option<u64>,
    /// Tokio worker threads of the load tool (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The node's process id: its VmRSS and VmHWM (/proc/PID/status) are read
    /// before the setup and after the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Timeout of one request (long polls: their wait plus this).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Most requests in the measured run, over all workers.
    #[arg(long, default_value_t = 1_000_000_000)]
    max_ops: u64,
    /// Longest setup (pre-registration).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// Seed of mixed's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The API the load speaks: Muster's OpenAPI, the Nacos v1 naming API
    /// (register, beat, query, mixed; against Muster, r-nacos or Nacos) or
    /// Eureka (register, beat = renew, query = full fetch) or Consul
    /// (register, beat = TTL pass, query, mixed; --batch 1).
    #[arg(long, value_enum, default_value = "native")]
    api: workload::Api,
    /// Register persistent instances (`ephemeral: false`, no active check):
    /// each answer waits for the node's disk commit.
    #[arg(long)]
    persistent: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: expected e.g. 500ms, 10s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?}: must be from 0 to 24 hours"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_mix(s: &str) -> Result<[u64; 3], String> {
    let parts: Vec<u64> =
        s.split(',').map(|p| p.trim().parse::<u64>()).collect::<Result<_, _>>().map_err(|_| {
            format!("{s:?}: expected three whole numbers QUERY,BEAT,REGISTER such as 80,15,5")
        })?;
    match parts[..] {
        [q, b, r] if q + b + r > 0 && q + b + r <= 1_000_000 => Ok([q, b, r]),
        _ => Err(format!("{s:?}: expected three shares QUERY,BEAT,REGISTER, not all zero")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json_out = args.json;
    let opts = match validate(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("muster-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Context {
        warmup: args.warmup,
        duration: args.duration,
        threads: args.threads,
        server_pid: args.server_pid,
    };
    match runtime.block_on(run(opts, ctx)) {
        Ok(report) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&report.json).expect("JSON values serialise"));
            } else {
                print!("{}", report.text);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("muster-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(a: &Args) -> Result<Opts, String> {
    let server = client::loopback_addr("--server", &a.server)?;
    let watch_server = match &a.watch_server {
        Some(s) => client::loopback_addr("--watch-server", s)?,
        None => server,
    };
    let instances = a.instances.unwrap_or(match a.mode {
        Mode::Register => 100_000,
        Mode::Beat | Mode::Mixed => 10_000,
        Mode::Query => 10,
        Mode::Watch => 1,
    });
    let check = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_owned()) };
    check((1..=workload::MAX_INSTANCES).contains(&instances), "--instances must be from 1 to 6553600000")?;
    check((1..=100_000).contains(&a.services), "--services must be from 1 to 100000")?;
    check((1..=10_000).contains(&a.concurrency), "--concurrency must be from 1 to 10000")?;
    check((1..=10_000).contains(&a.batch), "--batch must be from 1 to 10000")?;
    check(a.rate > 0.0 && a.rate <= 10_000.0, "--rate must be above 0 and at most 10000 per second")?;
    check((1..=64).contains(&a.threads), "--threads must be from 1 to 64")?;
    check(a.max_ops >= 1, "--max-ops must be at least 1")?;
    if a.api == workload::Api::Eureka {
        workload::eureka::supports(a.mode, a.batch)?;
    }
    check(!a.duration.is_zero(), "--duration must be above 0")?;
    check(a.wait >= Duration::from_millis(1), "--wait must be at least 1ms")?;
    if a.api == workload::Api::Nacos {
        check(
            a.mode != Mode::Watch,
            "--api nacos runs register, beat, query and mixed; watch is native only",
        )?;
        check(a.batch == 1, "--api nacos beats one instance per request (--batch 1)")?;
    }
    check(
        a.api != Api::Consul || (a.mode != Mode::Watch && a.batch == 1),
        "--api consul runs register, beat, query and mixed with --batch 1",
    )?;
    let lease_ms = match a.lease {
        Some(0) => None,
        Some(l) if (1_000..=43_200_000).contains(&l) => Some(l),
        Some(_) => return Err("--lease must be 0 or from 1000 to 43200000 ms".to_owned()),
        // 2 x 4 min stays under the default tombstone TTL (10 min).
        None if matches!(a.mode, Mode::Beat | Mode::Mixed) => Some(240_000),
        None => None,
    };
    Ok(Opts {
        mode: a.mode,
        server,
        watch_server,
        instances,
        services: a.services,
        concurrency: a.concurrency,
        batch: a.batch,
        mix: a.mix,
        rate: a.rate,
        wait: a.wait,
        stream: a.stream,
        lease_ms,
        timeout: a.timeout,
        max_ops: a.max_ops,
        seed: a.seed,
        setup_timeout: a.setup_timeout,
        api: a.api,
        persistent: a.persistent,
    })
}

/// Settings of the run beyond the workload's.
struct Context {
    warmup: Duration,
    duration: Duration,
    threads: usize,
    server_pid: Option<u32>,
}

struct Report {
    json: Value,
    text: String,
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory_of(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("--server-pid {pid}: cannot read /proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time counters, in clock ticks of `/proc` (USER_HZ, 100 a second).
#[derive(Clone, Copy, Debug)]
struct Cpu {
    /// All CPUs: busy and total ticks (`/proc/stat`, first line).
    machine_busy: u64,
    machine_total: u64,
    /// This process's user + system ticks.
    tool: u64,
    /// The node's user + system ticks (`--server-pid`).
    node: Option<u64>,
}

const TICKS_PER_S: f64 = 100.0;

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl Cpu {
    fn sample(node: Option<u32>) -> Option<Cpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> =
            stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
        Some(Cpu {
            machine_busy: total - idle,
            machine_total: total,
            tool: process_ticks("self")?,
            node: node.and_then(|pid| process_ticks(&pid.to_string())),
        })
    }

    /// Cores busy on average between two samples: the machine, the tool, the node.
    fn used(a: Cpu, b: Cpu, secs: f64, cores: f64) -> (f64, f64, Option<f64>) {
        let machine = (b.machine_busy - a.machine_busy) as f64
            / (b.machine_total - a.machine_total).max(1) as f64
            * cores;
        let per_s = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / TICKS_PER_S / secs.max(1e-9);
        let node = match (a.node, b.node) {
            (Some(x), Some(y)) => Some(per_s(x, y)),
            _ => None,
        };
        (machine, per_s(a.tool, b.tool), node)
    }
}

/// Prints a progress line once a second to stderr until `done`.
async fn progress(w: Arc<Workload>, done: Arc<AtomicBool>, start: Instant, measure_from: Option<Instant>) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut ops_before, mut t_before) = (0u64, start);
    // Bounded: the run ends by its deadline; a day of lines at most.
    for _ in 0..86_400 {
        tick.tick().await;
        if done.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let ops = w.live.ops.load(Ordering::Relaxed);
        let errors = w.live.errors.load(Ordering::Relaxed);
        let rate = (ops - ops_before) as f64 / (now - t_before).as_secs_f64().max(1e-9);
        let phase = match measure_from {
            None => "setup",
            Some(m) if now < m => "warmup",
            Some(_) => "measure",
        };
        eprintln!(
            "[{:>5.1}s] {phase:<7} {rate:>10.0} ops/s   {ops:>11} ops   {errors} errors",
            (now - start).as_secs_f64()
        );
        (ops_before, t_before) = (ops, now);
    }
}

async fn run(opts: Opts, ctx: Context) -> Result<Report, String> {
    let ready_within = Duration::from_secs(10);
    workload::wait_ready(opts.server, ready_within).await?;
    if opts.watch_server != opts.server {
        workload::wait_ready(opts.watch_server, ready_within).await?;
    }
    let memory_before = ctx.server_pid.map(memory_of).transpose()?;
    let w = Arc::new(Workload::new(opts.clone()));
    let loud = ctx.warmup + ctx.duration >= Duration::from_secs(2);

    // Setup (pre-registration), with its own progress lines.
    let setup_start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let setup_progress =
        loud.then(|| tokio::spawn(progress(Arc::clone(&w), Arc::clone(&done), setup_start, None)));
    let setup = workload::setup(&w).await;
    done.store(true, Ordering::Release);
    if let Some(p) = setup_progress {
        p.abort();
    }
    setup?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let setup_ops = w.live.ops.swap(0, Ordering::Relaxed);
    w.live.errors.store(0, Ordering::Relaxed);

    // The measured run.
    let start = Instant::now();
    let ph = Phases { measure_from: start + ctx.warmup, end: start + ctx.warmup + ctx.duration };
    let done = Arc::new(AtomicBool::new(false));
    let progress =
        loud.then(|| tokio::spawn(progress(Arc::clone(&w), Arc::clone(&done), start, Some(ph.measure_from))));
    let node_pid = ctx.server_pid;
    let cpu_start = tokio::spawn(async move {
        tokio::time::sleep_until(ph.measure_from).await;
        Cpu::sample(node_pid)
    });
    let mut rec = Recorder::default();
    let mut watch: Option<WatchFigures> = None;
    if opts.mode == Mode::Watch {
        let armed = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(WriteLog::default());
        let watchers: Vec<_> = (0..opts.concurrency)
            .map(|_| tokio::spawn(workload::watcher(Arc::clone(&w), ph, Arc::clone(&armed))))
            .collect();
        let writer = tokio::spawn(workload::writer(Arc::clone(&w), ph, armed, Arc::clone(&log)));
        let mut seen = Vec::new();
        for t in watchers {
            seen.push(t.await.map_err(|e| format!("watcher task: {e}"))?);
        }
        rec.merge(writer.await.map_err(|e| format!("writer task: {e}"))?);
        watch = Some(workload::join_watch(&ph, &log, seen, opts.concurrency as u64, &mut rec));
    } else {
        let tasks: Vec<_> =
            (0..opts.concurrency).map(|id| tokio::spawn(workload::worker(Arc::clone(&w), ph, id))).collect();
        for t in tasks {
            rec.merge(t.await.map_err(|e| format!("worker task: {e}"))?);
        }
    }
    let finished = Instant::now();
    done.store(true, Ordering::Release);
    if let Some(p) = progress {
        p.abort();
    }
    // Ops that started before the end count; the time runs to the last answer
    // (or to the last worker's end when --max-ops stopped them early).
    let secs = (finished - ph.measure_from).as_secs_f64();
    let memory_after = ctx.server_pid.map(memory_of).transpose()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu = match (cpu_start.await.ok().flatten(), Cpu::sample(node_pid)) {
        (Some(a), Some(b)) => Some(Cpu::used(a, b, (finished - ph.measure_from).as_secs_f64(), cores)),
        _ => None,
    };

    let total_name = match opts.mode {
        Mode::Watch => "seen",
        _ => "all",
    };
    let (per, total) = figures(&rec, secs, total_name);
    let errors = rec.errors();
    let memory = memory_before.zip(memory_after);
    Ok(report(&opts, &ctx, secs, (setup_ops, setup_secs), &per, &total, &errors, watch, memory, cpu))
}

#[allow(clippy::too_many_arguments)]
fn report(
    o: &Opts,
    ctx: &Context,
    secs: f64,
    (setup_ops, setup_secs): (u64, f64),
    per: &[Figures],
    total: &Figures,
    errors: &std::collections::BTreeMap<String, u64>,
    watch: Option<WatchFigures>,
    memory: Option<((u64, u64), (u64, u64))>,
    cpu: Option<(f64, f64, Option<f64>)>,
) -> Report {
    use std::fmt::Write as _;
    let mode = format!("{:?}", o.mode).to_lowercase();
    let mut json = json!({
        "api": format!("{:?}", o.api).to_lowercase(),
        "mode": mode,
        "server": o.server.to_string(),
        "instances": o.instances,
        "services": o.services,
        "concurrency": o.concurrency,
        "threads": ctx.threads,
        "batch": o.batch,
        "warmup_s": ctx.warmup.as_secs_f64(),
        "duration_s": secs,
        "setup": {"registrations": setup_ops, "seconds": setup_secs},
        "ops": total.ok,
        "items": total.items,
        "ops_per_s": total.ops_per_s.round(),
        "items_per_s": total.items_per_s.round(),
        "error_count": total.errors,
        "errors": errors,
        "latency_ms": total.latency.json(),
        "kinds": per.iter().map(|f| (f.name.to_owned(), f.json())).collect::<serde_json::Map<_, _>>(),
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "muster-bench {mode} against {}: {} workers, {} tool thread(s), {:.2} s measured after {:.2} s warm-up",
        o.server,
        o.concurrency,
        ctx.threads,
        secs,
        ctx.warmup.as_secs_f64()
    );
    if setup_ops > 0 {
        let _ = writeln!(
            text,
            "setup: {setup_ops} registrations in {setup_secs:.2} s ({:.0}/s)",
            setup_ops as f64 / setup_secs.max(1e-9)
        );
    }
    let _ = writeln!(text, "{}", Figures::header());
    for f in per {
        let _ = writeln!(text, "{}", f.line());
    }
    if per.len() > 1 {
        let _ = writeln!(text, "{}", total.line());
    }
    let _ = writeln!(
        text,
        "errors: {}",
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
        }
    );
    if let Some(wf) = watch {
        json["watch"] = json!({
            "watch_server": o.watch_server.to_string(),
            "rate": o.rate,
            "writes": wf.writes,
            "seen": wf.seen,
            "expected": wf.expected,
            "seen_before_write_answer": wf.before_answer,
            "idle_returns": wf.idle_returns,
            "from_write_sent_ms": wf.from_sent.json(),
        });
        let _ = writeln!(
            text,
            "watch: {} writes on {} at {}/s; {} of {} expected changes seen on {} ({} before the write's \
             answer, counted as 0 ms); {} polls ended idle",
            wf.writes,
            o.server,
            o.rate,
            wf.seen,
            wf.expected,
            o.watch_server,
            wf.before_answer,
            wf.idle_returns
        );
        let _ = writeln!(
            text,
            "watch latency = write answered on --server -> long poll returned from --watch-server, both read \
             from this process's monotonic clock; from the write's request sent: p50 {:.3} p99 {:.3} max {:.3} ms",
            wf.from_sent.p50, wf.from_sent.p99, wf.from_sent.max
        );
    }
    if let Some((machine, tool, node)) = cpu {
        let mut line = format!(
            "cpu (cores busy on average while measuring): machine {machine:.2}, muster-bench {tool:.2}"
        );
        json["cpu_cores"] = json!({"machine": machine, "tool": tool, "node": node});
        if let Some(node) = node {
            let per_op = node * secs * 1e6 / (total.ok.max(1)) as f64;
            let _ = write!(line, ", node {node:.2} ({per_op:.1} µs of node CPU per op)");
            json["node_cpu_us_per_op"] = json!(per_op);
        }
        let _ = writeln!(text, "{line}");
    }
    if let Some(((rss0, _), (rss1, hwm1))) = memory {
        json["server_memory_kib"] = json!({"rss_before": rss0, "rss_after": rss1, "hwm_after": hwm1});
        let _ = writeln!(
            text,
            "node memory: VmRSS {:.1} MiB before the setup, {:.1} MiB after the run (VmHWM {:.1} MiB)",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            hwm1 as f64 / 1024.0
        );
    }
    Report { json, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_mixes_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10h").is_err() && parse_duration("x").is_err());
        assert_eq!(parse_mix("80,15,5").unwrap(), [80, 15, 5]);
        assert!(parse_mix("0,0,0").is_err() && parse_mix("1,2").is_err());
    }

    #[test]
    fn a_remote_server_is_refused() {
        let a =
            Args::try_parse_from(["muster-bench", "--server", "10.1.2.3:8848", "--mode", "query"]).unwrap();
        assert!(validate(&a).unwrap_err().contains("loopback"));
        let a = Args::try_parse_from(["muster-bench", "--mode", "beat"]).unwrap();
        let o = validate(&a).unwrap();
        assert_eq!((o.instances, o.lease_ms), (10_000, Some(240_000)));
    }
}
