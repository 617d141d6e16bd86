#!/usr/bin/env bash
# Watches at scale (BENCHMARKS.md, "Watches at scale"): wake-up latency of many
# long polls, two node builds interleaved round by round, the same muster-bench.
#
#   cargo build --release --bin muster --bin muster-bench
#   BASE=/path/to/other/release benches/watch-scale.sh [ROUNDS] [CASE...]   # cases: one10k cross1k
#   STREAM=ab benches/watch-scale.sh [ROUNDS] [CASE...]   # long polls against streamed watches
#
# one10k: one node, 10,000 watchers, writes on the same node (RATE_10K per second, default 0.5).
# cross1k: three nodes (one secret, one peer list), 1,000 watchers on C, writes on A (20/s).
# Loopback only (ports PORT..PORT+2, default 18900); every run is bounded by --duration,
# --timeout and --setup-timeout; every node is stopped by its pid when its run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-target/release}
BASE=${BASE:-}
OUT=${OUT:-target/watch-scale}
PORT=${PORT:-18900}
ROUNDS=${1:-2}
shift || true
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(one10k cross1k)
mkdir -p "$OUT"
BUILDS=(new)
[ -n "$BASE" ] && BUILDS=(base new)
# With STREAM=ab: one build (NEW), its watchers long-polling, then streaming.
[ "${STREAM:-}" = ab ] && BUILDS=(poll stream)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

bin_of() { if [ "$1" = base ]; then echo "$BASE"; else echo "$NEW"; fi; }
# The watchers' flags of a build: `stream` watches with streamed watches.
watch_flags() { if [ "$1" = stream ]; then echo --stream; fi; }

# start BUILD PORT [flags...]: a node with the access log off; sets NODE_PID.
start() {
    local build=$1 port=$2
    shift 2
    "$(bin_of "$build")/muster" serve --listen "127.0.0.1:$port" --log-level 'warn' --memory-only \
        --max-long-polls 20000 "$@" > "$OUT/node-$build-$port.log" 2>&1 < /dev/null &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

summary() {
    python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_ms"]; m = d.get("server_memory_kib", {}); w = d.get("watch", {})
line = (f"{sys.argv[2]:<22} p50 {l['p50']:.2f} p90 {l['p90']:.2f} p99 {l['p99']:.2f} max {l['max']:.2f} ms  "
        f"seen {w.get('seen')}/{w.get('expected')}  errors {d['error_count']}  "
        f"machine {d.get('cpu_cores', {}).get('machine', 0):.2f} cores")
if m:
    line += f"  node VmRSS {m['rss_after'] / 1024:.1f} MiB"
print(line, flush=True)
PY
}

# wake PORT NAME: the node's own view of the wake-ups it answered (the
# muster_watch_wake_seconds histogram: publication to answer written), as
# bucket bounds: the p50 and p99 lie at or below the bound printed.
wake() {
    curl -sf "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
b = [(l.split("le=\"")[1].split("\"")[0], float(l.split()[-1])) for l in sys.stdin if l.startswith("muster_watch_wake_seconds_bucket")]
n = b[-1][1] if b else 0
q = lambda f: next((le for le, c in b if c >= f * n), "none")
print(f"{sys.argv[1]:<22} node: {n:.0f} wake-ups answered, p50 <= {q(0.5)} s, p99 <= {q(0.99)} s")
' "$2"
}

bench() {
    # bench BUILD NAME ARGS...
    local build=$1 name=$2
    shift 2
    # shellcheck disable=SC2046 # the flags are one word or none
    "$NEW/muster-bench" --mode watch --threads 2 --duration 10s --warmup 1s --setup-timeout 120s --json \
        $(watch_flags "$build") "$@" \
        > "$OUT/$name-$build.json"
    summary "$OUT/$name-$build.json" "$name $build"
}

for round in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        for build in "${BUILDS[@]}"; do
            case $case in
            one10k)
                start "$build" "$PORT"
                a=$NODE_PID
                bench "$build" "one10k-r$round" --server "127.0.0.1:$PORT" --server-pid "$a" \
                    --concurrency 10000 --rate "${RATE_10K:-0.5}"
                wake "$PORT" "one10k-r$round $build"
                stop "$a" ;;
            cross1k)
                secret="$OUT/muster.secret"
                head -c 32 /dev/urandom | base64 > "$secret"
                peers="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
                nodes=()
                for p in "$PORT" "$((PORT + 1))" "$((PORT + 2))"; do
                    start "$build" "$p" --peers "$peers" --cluster-secret-file "$secret"
                    nodes+=("$NODE_PID")
                done
                bench "$build" "cross1k-r$round" --server "127.0.0.1:$PORT" \
                    --watch-server "127.0.0.1:$((PORT + 2))" --server-pid "${nodes[2]}" --concurrency 1000 --rate 20
                wake "$((PORT + 2))" "cross1k-r$round $build"
                for p in "${nodes[@]}"; do stop "$p"; done ;;
            *)
                echo "unknown case $case (one10k cross1k)" >&2
                exit 2 ;;
            esac
        done
    done
done
