#!/usr/bin/env bash
# Memory of a node under idle long polls and slow request bodies (BENCHMARKS.md,
# "Hostile clients"): starts a fresh `muster serve` on 127.0.0.1, opens the
# connections, and prints the node's VmRSS before, with them, and after they close.
#
#   cargo build --release --bin muster
#   benches/abuse-memory.sh [WATCHES] [SLOW_BODIES] [BYTES_EACH] [WAVES]   # defaults 5000 1000 60 2
#
# After the last wave it reads VmRSS once a second for SETTLE seconds (default 15): the
# allocator returns freed pages to the OS after a delay (jemalloc's decay, 10 s).
#
# Loopback only; bounded: watches wait 30 s at most, slow bodies send BYTES_EACH
# bytes 50 ms apart; the node is stopped (by its pid) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
WATCHES=${1:-5000}
SLOW=${2:-1000}
BYTES=${3:-60}
# Waves of slow bodies, one after the other: a second wave that peaks no higher than the
# first shows the memory kept after the first is reused, not leaked.
WAVES=${4:-2}
PORT=${PORT:-18848}
# The body limits keep slow bodies open for the run; FLAGS= for a build without them.
FLAGS=${FLAGS-"--body-min-bytes-per-s 0 --body-timeout-ms 10000"}
# shellcheck disable=SC2086
"$BIN/muster" serve --listen "127.0.0.1:$PORT" --log-level 'warn' --max-long-polls 20000 $FLAGS \
    > /dev/null 2>&1 < /dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
python3 - "$PORT" "$PID" "$WATCHES" "$SLOW" "$BYTES" "$WAVES" "${SETTLE:-15}" <<'PY'
import json, socket, sys, time, urllib.request
port, pid, watches, slow, nbytes, waves, settle = (int(a) for a in sys.argv[1:8])
base = f"http://127.0.0.1:{port}"
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
for _ in range(600):
    try:
        urllib.request.urlopen(base + "/health/ready", timeout=1); break
    except Exception:
        time.sleep(0.05)
urllib.request.urlopen(urllib.request.Request(base + "/v1/instances", method="POST",
    data=b'{"service":"w","ip":"10.0.0.1","port":80}'))
ck = json.load(urllib.request.urlopen(base + "/v1/instances?service=w"))["checksum"]
def connect():
    s = socket.create_connection(("127.0.0.1", port)); return s
time.sleep(0.3)
if watches:
    before = rss()
    req = f"GET /v1/instances?service=w&checksum={ck}&wait=30s HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    conns = []
    for _ in range(watches):
        s = connect(); s.sendall(req); conns.append(s)
    time.sleep(1.0)
    during = rss()
    print(f"idle watches: {watches}: VmRSS {before} -> {during} KiB: {(during - before) / watches:.1f} KiB per watch")
    for s in conns: s.close()
    time.sleep(1.0)
    after = rss()
    print(f"idle watches closed: VmRSS {after} KiB")
for wave in range(waves):
    before = rss()
    conns = []
    for _ in range(slow):
        s = connect()
        s.sendall(b"POST /v1/instances HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n"); conns.append(s)
    peak = before
    for _ in range(nbytes):
        for s in conns:
            try: s.sendall(b"x")
            except OSError: pass
        time.sleep(0.05)
        peak = max(peak, rss())
    print(f"slow bodies (wave {wave + 1}): {slow} x {nbytes} one-byte writes: VmRSS {before} -> peak {peak} KiB: "
          f"{(peak - before) / slow:.1f} KiB per connection")
    for s in conns: s.close()
    time.sleep(1.0)
    print(f"slow bodies closed (wave {wave + 1}): VmRSS {rss()} KiB")
samples = []
for _ in range(settle):
    time.sleep(1.0)
    samples.append(rss())
if samples:
    print(f"idle for {settle} s after the last close: VmRSS {samples[0]} -> {samples[-1]} KiB (lowest {min(samples)})")
PY
