#!/usr/bin/env bash
# Muster against r-nacos 0.8.8 through the same Nacos v1 HTTP API, side by
# side (BENCHMARKS.md, "Side by side with r-nacos"). Never run by CI.
#
#   benches/rnacos-side-by-side.sh [ROUNDS]        # default 3 rounds
#   DURATION=10s CONCURRENCY=64 benches/rnacos-side-by-side.sh 2
#
# Installs r-nacos on demand (`cargo install rnacos --version 0.8.8 --locked
# --root target/rnacos`, about 15 minutes the first time), builds `muster`
# and `muster-bench` (release), then for each round and each case starts a
# fresh Muster and a fresh r-nacos on free loopback ports (order alternating
# by round), runs the same `muster-bench --api nacos` load against each, and
# prints the Muster / r-nacos ratios of throughput, p99 and RSS (idle, and
# with 100,000 instances). JSON reports in $OUT (default target/rnacos-sbs/).
#
# Both servers run with their defaults on 127.0.0.1 (Muster with the access
# log off, as in every Muster benchmark; r-nacos with its data in a fresh
# temporary directory and its console off). Loopback only; every server is
# stopped by its pid when its case ends; every run is bounded by
# muster-bench's --duration, --timeout and --setup-timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONCURRENCY=${CONCURRENCY:-64}
OUT=${OUT:-target/rnacos-sbs}
RNACOS=target/rnacos/bin/rnacos
mkdir -p "$OUT"

if [ -z "${SUMMARY_ONLY:-}" ] && [ ! -x "$RNACOS" ]; then
    echo "== installing r-nacos 0.8.8 into target/rnacos (about 15 minutes the first time)" >&2
    nice -n 19 cargo install rnacos --version 0.8.8 --locked --root target/rnacos >&2
fi
echo "== building muster and muster-bench (release)" >&2
[ -n "${SUMMARY_ONLY:-}" ] || cargo build --release -q -p muster-transport-http --bin muster -p muster-benches --bin muster-bench >&2

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start SERVER: a fresh server on free ports; sets PORT and SPID.
start() {
    PORT=$(free_port)
    case $1 in
    muster)
        target/release/muster serve --listen "127.0.0.1:$PORT" --log-level 'info,muster::access=off' \
            > "$OUT/muster-$PORT.log" 2>&1 < /dev/null &
        ;;
    rnacos)
        local data grpc
        data=$(mktemp -d "$OUT/rnacos-data.XXXXXX")
        grpc=$(free_port)
        RNACOS_HTTP_PORT=$PORT RNACOS_GRPC_PORT=$grpc RNACOS_HTTP_CONSOLE_PORT=0 \
            RNACOS_SDK_HOST=127.0.0.1 RNACOS_CONSOLE_HOST=127.0.0.1 RNACOS_RAFT_NODE_ADDR="127.0.0.1:$grpc" \
            RNACOS_DATA_DIR="$data" RNACOS_CONFIG_DB_DIR="$data/db" \
            "$RNACOS" > "$OUT/rnacos-$PORT.log" 2>&1 < /dev/null &
        ;;
    esac
    SPID=$!
    PIDS+=("$SPID")
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# run SERVER CASE ROUND ARGS...: one load against a fresh server.
run() {
    local server=$1 name=$2 round=$3
    shift 3
    start "$server"
    target/release/muster-bench --api nacos --server "127.0.0.1:$PORT" --server-pid "$SPID" --threads 2 \
        --concurrency "$CONCURRENCY" --json "$@" > "$OUT/$name-$server-$round.json"
    stop "$SPID"
}

# SUMMARY_ONLY=1 prints the table of the reports already in $OUT.
for round in $(seq "$ROUNDS"); do
    [ -n "${SUMMARY_ONLY:-}" ] && break
    if [ $((round % 2)) -eq 1 ]; then order="muster rnacos"; else order="rnacos muster"; fi
    for server in $order; do
        echo "== round $round: $server" >&2
        run "$server" register "$round" --mode register --instances 1000000 --services 1000 \
            --duration "$DURATION"
        run "$server" beat "$round" --mode beat --instances 100000 --services 100 \
            --duration "$DURATION" --warmup "$WARMUP"
        run "$server" query "$round" --mode query --instances 10 --duration "$DURATION" --warmup "$WARMUP"
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(case, server, r):
    return json.load(open(f"{out}/{case}-{server}-{r}.json"))
def med(xs):
    return statistics.median(xs)
rows = []
for case, what in [("register", "register, new instances (1M over 1,000 services)"),
                   ("beat", "beat, 100k instances (light beats)"),
                   ("query", "list, 10-instance service")]:
    m = [load(case, "muster", r) for r in range(1, rounds + 1)]
    n = [load(case, "rnacos", r) for r in range(1, rounds + 1)]
    errs = sum(d["error_count"] for d in m + n)
    mt, nt = med([d["ops_per_s"] for d in m]), med([d["ops_per_s"] for d in n])
    mp, np_ = med([d["latency_ms"]["p99"] for d in m]), med([d["latency_ms"]["p99"] for d in n])
    mc = med([d.get("node_cpu_us_per_op", 0) for d in m])
    nc = med([d.get("node_cpu_us_per_op", 0) for d in n])
    mk = med([d["cpu_cores"]["node"] or 0 for d in m])
    nk = med([d["cpu_cores"]["node"] or 0 for d in n])
    rows.append((what, mt, nt, mt / nt, mp, np_, mp / np_, errs,
                 [d["ops_per_s"] for d in m], [d["ops_per_s"] for d in n], mc, nc, mk, nk))
print(f"\n{rounds} interleaved rounds, medians; ratios Muster / r-nacos; concurrency from the JSON reports\n")
print("| load | Muster ops/s | r-nacos ops/s | throughput ratio | Muster p99 ms | r-nacos p99 ms | p99 ratio | node CPU per op, Muster / r-nacos (µs) | node cores busy, Muster / r-nacos | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for what, mt, nt, tr, mp, np_, pr, errs, ms, ns, mc, nc, mk, nk in rows:
    print(f"| {what} | {mt:,.0f} | {nt:,.0f} | **{tr:.2f}x** | {mp:.2f} | {np_:.2f} | **{pr:.2f}** | "
          f"{mc:.1f} / {nc:.1f} (**{nc / max(mc, 1e-9):.1f}x less**) | {mk:.2f} / {nk:.2f} | {errs} |")
def rss(case, server, key):
    return med([load(case, server, r)["server_memory_kib"][key] / 1024 for r in range(1, rounds + 1)])
mi, ni = rss("beat", "muster", "rss_before"), rss("beat", "rnacos", "rss_before")
mb, nb = rss("beat", "muster", "rss_after"), rss("beat", "rnacos", "rss_after")
print(f"| RSS idle (fresh server) | {mi:.1f} MiB | {ni:.1f} MiB | **{mi / ni:.2f}** | | | | | | |")
print(f"| RSS with 100,000 instances (after the beat run) | {mb:.1f} MiB | {nb:.1f} MiB | **{mb / nb:.2f}** | | | | | | |")
print("\nper round ops/s (Muster ; r-nacos):")
for what, _, _, _, _, _, _, _, ms, ns, *_ in rows:
    print(f"  {what}: {', '.join(f'{x:,.0f}' for x in ms)} ; {', '.join(f'{x:,.0f}' for x in ns)}")
PY
