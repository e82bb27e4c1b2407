#!/usr/bin/env bash
# Saturated HTTP throughput of flowrun as a kv service, measured with wrk
# (Debian package `wrk`): runs examples/http-kv/flow.yaml on a fresh store
# at 127.0.0.1:PORT and loads it with CONNECTIONS keep-alive connections
# for SECONDS, first puts, then gets of the keys just written.
#
#   scripts/http-bench.sh [CONNECTIONS [SECONDS [PORT]]]
#
# For latency at a stated rate (open loop) use `flowrun bench --http --rate N`.
set -euo pipefail
conns=${1:-64}
secs=${2:-10}
port=${3:-18080}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/flowrun" "$root/cmd/flowrun"
sed "s/127.0.0.1:8080/127.0.0.1:$port/" "$root/examples/http-kv/flow.yaml" > "$work/flow.yaml"
"$work/flowrun" run "$work/flow.yaml" 2>"$work/run.log" &
pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
for w in put get; do
  echo "== $w, $conns connections, ${secs}s"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/scripts/wrk/$w.lua" "http://127.0.0.1:$port/"
done
