#!/usr/bin/env bash
# Saturated HTTP throughput of flowrun as a kv service, measured with wrk
# (Debian package `wrk`): runs examples/http-kv/flow.yaml on a fresh store
# at 127.0.0.1:PORT with the http_server engine ENGINE (fasthttp or
# net/http; default the connector's) and loads it with CONNECTIONS
# keep-alive connections for SECONDS, first puts, then gets of the keys
# just written. After each run it prints the server's CPU time (user +
# system, from /proc) per request: on a machine shared with other work
# that is the steadier figure, throughput the noisier.
#
# Before measuring, puts run for WARMUP seconds (environment, default 20;
# 0 for none) without being counted: a fresh store writes its first
# write-ahead logs by appending, and each fdatasync of a growing file also
# writes the file's size; from the second memtable on Pebble reuses old
# log files, whose syncs write only the data (here 150 against 205 µs per
# 4 KB write and sync). The warm-up measures what a running service sees.
#
#   [WARMUP=S] scripts/http-bench.sh [CONNECTIONS [SECONDS [PORT [ENGINE]]]]
#
# For latency at a stated rate (open loop) use `flowrun bench --http --rate N`.
set -euo pipefail
conns=${1:-64}
secs=${2:-10}
port=${3:-18080}
engine=${4:-}
warmup=${WARMUP:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/flowrun" "$root/cmd/flowrun"
sed "s/127.0.0.1:8080/127.0.0.1:$port/" "$root/examples/http-kv/flow.yaml" > "$work/flow.yaml"
if [ -n "$engine" ]; then
  sed -i "s|type: http_server,|type: http_server, engine: $engine,|" "$work/flow.yaml"
fi
(cd "$work" && exec ./flowrun run flow.yaml 2>run.log) &
pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
# cpu prints the server's user + system time in clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
tick=$(getconf CLK_TCK)
if [ "$warmup" -gt 0 ]; then
  echo "== warm-up: puts for ${warmup}s, not counted"
  wrk -t2 -c"$conns" -d"${warmup}s" -s "$root/scripts/wrk/put.lua" "http://127.0.0.1:$port/" >/dev/null
fi
for w in put get; do
  echo "== $w, $conns connections, ${secs}s, engine ${engine:-default}"
  before=$(cpu)
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/scripts/wrk/$w.lua" "http://127.0.0.1:$port/" | tee "$work/wrk.out"
  after=$(cpu)
  n=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  awk -v t=$((after - before)) -v n="$n" -v hz="$tick" \
    'BEGIN { printf "server CPU: %.2f s for %d requests, %.1f us per request\n", t / hz, n, t / hz * 1e6 / n }'
done
