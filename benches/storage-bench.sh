#!/usr/bin/env bash
# The storage figures of BENCHMARKS.md ("Durable storage"): ephemeral
# registrations with the store on and memory-only, interleaved A/B; persistent
# registrations per second (group commit); VmRSS with 100,000 instances and
# the store on; restart (load) time with 100,000 and 1,000,000 records.
#
#   cargo build --release --bin muster --bin muster-bench
#   benches/storage-bench.sh [ROUNDS] [CASE...]   # cases: ab persistent rss restart
#
# Loopback only; every node is stopped by its pid; every run is bounded by
# muster-bench's --duration / --max-ops and --setup-timeout. Data directories
# go under $OUT (default target/storage-bench/) and are removed per run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=${OUT:-target/storage-bench}
ROUNDS=${1:-2}
shift || true
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(ab persistent rss restart)
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start PORT LOG FLAGS...: a node with the access log off; sets NODE_PID.
start() {
    local port=$1 log=$2
    shift 2
    "$BIN/muster" serve --listen "127.0.0.1:$port" --log-level 'info,muster::access=off' "$@" \
        > "$log" 2>&1 < /dev/null &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$port/health/ready" > /dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "node on $port not ready; log $log" >&2
    exit 1
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

summary() {
    python3 - "$1" "$2" "${SETTLED_KIB:-0}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_ms"]; m = d.get("server_memory_kib", {})
settled = int(sys.argv[3])
line = (f"{sys.argv[2]:<22} {d['ops_per_s']:>9.0f} ops/s  p50 {l['p50']:.3f} p99 {l['p99']:.3f} ms  "
        f"errors {d['error_count']}  node {d.get('node_cpu_us_per_op', 0):.1f} us/op")
if m:
    line += f"  VmRSS {m['rss_after'] / 1024:.1f} MiB, VmHWM {m['hwm_after'] / 1024:.1f} MiB"
if settled:
    line += f", VmRSS 3 s later {settled / 1024:.1f} MiB"
print(line)
PY
}

# bench NAME FLAGS-OF-THE-NODE -- FLAGS-OF-MUSTER-BENCH
bench() {
    local name=$1
    shift
    local node=() tool=()
    while [ "$1" != "--" ]; do node+=("$1"); shift; done
    shift
    tool=("$@")
    rm -rf "$OUT/data"
    start 8848 "$OUT/$name.log" "${node[@]}"
    "$BIN/muster-bench" --server 127.0.0.1:8848 --server-pid "$NODE_PID" --json "${tool[@]}" > "$OUT/$name.json"
    # The resident size once the allocator has returned the load's freed
    # pages (jemalloc's decay is 1 s), next to the size right after the load.
    sleep 3
    SETTLED_KIB=$(awk '/^VmRSS/ {print $2}' "/proc/$NODE_PID/status")
    stop "$NODE_PID"
    summary "$OUT/$name.json" "$name"
}

REGISTER=(--mode register --instances 1000000 --services 1000 --concurrency 64 --threads 2 --duration 8s)

for case in "${CASES[@]}"; do
    case $case in
        ab)
            for round in $(seq 1 "$ROUNDS"); do
                bench "memory-r$round" --memory-only -- "${REGISTER[@]}"
                bench "store-r$round" --data-dir "$OUT/data" -- "${REGISTER[@]}"
            done ;;
        persistent)
            for round in $(seq 1 "$ROUNDS"); do
                bench "persistent-r$round" --data-dir "$OUT/data" -- "${REGISTER[@]}" --persistent
            done ;;
        rss)
            RSS=(--mode register --instances 100000 --services 100 --concurrency 64 --threads 2 --duration 60s
                --max-ops 100000)
            for round in $(seq 1 "$ROUNDS"); do
                bench "rss-memory-r$round" --memory-only -- "${RSS[@]}"
                bench "rss-store-r$round" --data-dir "$OUT/data" -- "${RSS[@]}"
            done ;;
        restart)
            for n in 100000 1000000; do
                rm -rf "$OUT/data"
                start 8848 "$OUT/restart-$n-fill.log" --data-dir "$OUT/data" --max-instances 2000000
                "$BIN/muster-bench" --server 127.0.0.1:8848 --json --mode register --persistent \
                    --instances "$n" --services 1000 --concurrency 64 --threads 2 --duration 300s \
                    --max-ops "$n" > "$OUT/restart-$n-fill.json"
                stop "$NODE_PID"
                t0=$(date +%s.%N)
                start 8848 "$OUT/restart-$n.log" --data-dir "$OUT/data" --max-instances 2000000
                t1=$(date +%s.%N)
                stop "$NODE_PID"
                loaded=$(grep -o 'data loaded.*' "$OUT/restart-$n.log" | head -1)
                du=$(du -sh "$OUT/data" | cut -f1)
                python3 -c "import sys; print(f'restart {sys.argv[1]:>8} records: ready after {float(sys.argv[3]) - float(sys.argv[2]):.2f} s (file {sys.argv[4]}); {sys.argv[5]}')" \
                    "$n" "$t0" "$t1" "$du" "$loaded"
            done ;;
        *)
            echo "unknown case $case (ab persistent rss restart)" >&2
            exit 2 ;;
    esac
done
rm -rf "$OUT/data"
