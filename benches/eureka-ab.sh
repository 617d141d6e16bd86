#!/usr/bin/env bash
# Interleaved A/B: native vs Eureka, beat/renew and query/full fetch; fresh node per run.
# Needs: cargo build --release --bin muster --bin muster-bench. Loopback only; every run is bounded.
set -u
cd "$(dirname "$0")/.."
mkdir -p "${OUT:-target/eureka-ab}"
R=./target/release
PORT=18961
run() { # name, args...
  local name=$1; shift
  $R/muster serve --listen 127.0.0.1:$PORT --log-level 'warn' > /dev/null 2>&1 &
  local pid=$!
  sleep 0.5
  timeout 120 $R/muster-bench --server 127.0.0.1:$PORT --server-pid $pid --threads 2 --json "$@" > ${OUT:-target/eureka-ab}/$name.json 2>/dev/null
  kill $pid; wait $pid 2>/dev/null
  python3 -c "import json,sys; r=json.load(open('${OUT:-target/eureka-ab}/$name.json')); l=r['latency_ms']; print('$name', r['ops_per_s'], 'ops/s p50', l['p50'], 'p99', l['p99'], 'errors', r['error_count'], 'node_us_per_op', round(r.get('node_cpu_us_per_op',0),1))"
}
for round in 1 2; do
  run beat-native-$round --mode beat --instances 10000 --services 100 --concurrency 64 --duration 5s --warmup 1s
  run beat-eureka-$round --api eureka --mode beat --instances 10000 --services 100 --concurrency 64 --duration 5s --warmup 1s
  run query-native-$round --mode query --instances 10 --concurrency 64 --duration 5s --warmup 1s
  run query-eureka-$round --api eureka --mode query --instances 10 --concurrency 64 --duration 5s --warmup 1s
done
run register-eureka --api eureka --mode register --instances 100000 --services 100 --concurrency 64 --duration 5s
run query-eureka-1000 --api eureka --mode query --instances 1000 --concurrency 64 --duration 5s --warmup 1s
