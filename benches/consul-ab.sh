#!/usr/bin/env bash
# Native vs Consul API on one release node (cargo build --release --bin muster --bin muster-bench),
# interleaved A/B: 2 rounds of beat (10,000 instances) and query (10 instances), 3 s each after 1 s
# of warm-up, 16 connections. Prints: round mode api ops/s errors p50_ms p99_ms.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
./target/release/muster serve --listen 127.0.0.1:$PORT --log-level warn > "${TMPDIR:-/tmp}/muster-consul-ab.log" 2>&1 &
NODE=$!
trap 'kill $NODE' EXIT
for i in $(seq 50); do curl -sf localhost:$PORT/health/ready >/dev/null && break; sleep 0.1; done
B=./target/release/muster-bench
for round in 1 2; do
  for mode in beat query; do
    for api in native consul; do
      extra="--instances 10000"; [ $mode = query ] && extra="--instances 10"
      r=$(timeout 60 $B --server 127.0.0.1:$PORT --api $api --mode $mode $extra --concurrency 16 --duration 3s --warmup 1s --json)
      echo "$round $mode $api $(echo "$r" | python3 -c 'import json,sys;r=json.load(sys.stdin);print(round(r["ops_per_s"]), r["error_count"], r["latency_ms"]["p50"], r["latency_ms"]["p99"])')"
    done
  done
done
