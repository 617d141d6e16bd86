#!/usr/bin/env bash
# The HTTP figures of BENCHMARKS.md ("HTTP (muster-bench)"): starts fresh
# `muster serve` nodes on 127.0.0.1 (access log off), runs `muster-bench`
# against them and prints one summary line per run; the JSON reports go to
# $OUT (default target/http-bench/).
#
#   cargo build --release --bin muster --bin muster-bench
#   benches/http-bench.sh [ROUNDS] [CASE...]     # cases: beat batch query register rss mixed watch
#
# Loopback only; every node is stopped (by its pid) when its case ends;
# every run is bounded by muster-bench's --duration, --timeout and --setup-timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=${OUT:-target/http-bench}
# The single-node cases' port (the watch case keeps 8848-8850).
PORT=${PORT:-8848}
ROUNDS=${1:-3}
shift || true
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(beat batch query register rss mixed watch)
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Storage flags of every node: memory only unless STORE says otherwise,
# e.g. STORE="--data-dir /tmp/bench-data" (the store then persists between cases).
read -r -a STORE_FLAGS <<< "${STORE:---memory-only}"

# start_node PORT [flags...]: a node with the access log off; sets NODE_PID.
start_node() {
    local port=$1
    shift
    "$BIN/muster" serve --listen "127.0.0.1:$port" --log-level 'info,muster::access=off' "${STORE_FLAGS[@]}" "$@" \
        > "$OUT/node-$port.log" 2>&1 < /dev/null &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
}

stop_node() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# run NAME ROUND ARGS...: one muster-bench run against a fresh single node.
run() {
    local name=$1 round=$2
    shift 2
    start_node "$PORT"
    "$BIN/muster-bench" --server 127.0.0.1:$PORT --server-pid "$NODE_PID" --json "$@" \
        > "$OUT/$name-$round.json"
    stop_node "$NODE_PID"
    summary "$OUT/$name-$round.json" "$name r$round"
}

summary() {
    python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_ms"]; c = d.get("cpu_cores", {}); m = d.get("server_memory_kib", {})
line = (f"{sys.argv[2]:<14} {d['ops_per_s']:>9.0f} ops/s {d['items_per_s']:>9.0f} items/s  "
        f"p50 {l['p50']:.3f} p90 {l['p90']:.3f} p99 {l['p99']:.3f} max {l['max']:.3f} ms  errors {d['error_count']}  "
        f"cores: node {c.get('node') or 0:.2f} tool {c.get('tool', 0):.2f} machine {c.get('machine', 0):.2f}  "
        f"node {d.get('node_cpu_us_per_op', 0):.1f} us/op")
if m:
    line += f"  VmRSS {m['rss_after'] / 1024:.1f} MiB (HWM {m['hwm_after'] / 1024:.1f})"
if "watch" in d:
    w = d["watch"]
    line += f"  seen {w['seen']}/{w['expected']} early {w['seen_before_write_answer']}"
print(line, flush=True)
PY
}

for case in "${CASES[@]}"; do
    for round in $(seq "$ROUNDS"); do
        case $case in
        beat)
            run beat "$round" --mode beat --instances 100000 --services 100 --concurrency 64 --threads 2 \
                --duration 10s --warmup 2s ;;
        batch)
            run batch "$round" --mode beat --batch 100 --instances 100000 --services 100 --concurrency 16 \
                --threads 2 --duration 10s --warmup 2s ;;
        query)
            run query "$round" --mode query --instances 10 --concurrency 64 --threads 2 --duration 10s --warmup 2s ;;
        register)
            # 1,000,000 distinct instances: every registration of the run is a new one.
            run register "$round" --mode register --instances 1000000 --services 1000 --concurrency 64 \
                --threads 2 --duration 10s ;;
        rss)
            # 100,000 instances, registered once (the run ends when they are): VmRSS after.
            run rss "$round" --mode register --instances 100000 --services 100 --concurrency 64 --threads 2 \
                --duration 60s --max-ops 100000 ;;
        mixed)
            run mixed "$round" --mode mixed --instances 10000 --services 1000 --concurrency 64 --threads 2 \
                --duration 10s --warmup 2s ;;
        watch)
            # Three nodes per the README (secret file, same peer list); writes on A, long polls on B.
            secret="$OUT/muster.secret"
            head -c 32 /dev/urandom | base64 > "$secret"
            peers=127.0.0.1:8848,127.0.0.1:8849,127.0.0.1:8850
            nodes=()
            for port in 8848 8849 8850; do
                start_node "$port" --peers "$peers" --cluster-secret-file "$secret"
                nodes+=("$NODE_PID")
            done
            for watchers in 100 1000; do
                "$BIN/muster-bench" --server 127.0.0.1:8848 --watch-server 127.0.0.1:8849 --mode watch \
                    --concurrency "$watchers" --threads 2 --rate 20 --duration 10s --warmup 1s --json \
                    > "$OUT/watch$watchers-$round.json"
                summary "$OUT/watch$watchers-$round.json" "watch$watchers r$round"
            done
            for p in "${nodes[@]}"; do stop_node "$p"; done ;;
        *)
            echo "unknown case $case (beat batch query register rss mixed watch)" >&2
            exit 2 ;;
        esac
    done
done
