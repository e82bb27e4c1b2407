#!/usr/bin/env bash
# Start or stop a three-node NATS JetStream cluster on loopback for
# flowrun's partitioned-state tests (changelog streams and lease buckets
# with three replicas).
#
#   scripts/nats-cluster.sh start [BASE] [DIR]   start nodes 1-3 on 127.0.0.1: client ports
#                                                BASE..BASE+2 (default 24222), cluster ports
#                                                BASE+2000.., monitoring ports BASE+1000..;
#                                                JetStream storage in DIR (default a temp dir);
#                                                wait until the cluster has a JetStream meta
#                                                leader; print the client URLs comma-separated
#                                                (for FLOWRUN_NATS_CLUSTER_URLS)
#   scripts/nats-cluster.sh stop  [BASE]         stop the nodes started for BASE, remove their data
#   scripts/nats-cluster.sh kill    BASE N       SIGKILL node N (1-3) of the cluster on BASE, as a
#                                                crash: its storage stays
#   scripts/nats-cluster.sh restart BASE N       start node N again on the same ports and storage;
#                                                wait until it reports JetStream healthy
#
# State (pids, data dir) and each node's log (node-N.log) live in
# ${TMPDIR:-/tmp}/flowrun-nats-cluster-BASE/, so clusters on different
# bases run side by side.
set -euo pipefail

cmd=${1:-}
base=${2:-24222}
case "$base" in
'' | *[!0-9]*) echo "BASE must be a port number, got \"$base\"" >&2; exit 2 ;;
esac
if [ "$base" -lt 1024 ] || [ "$base" -gt 62000 ]; then
  echo "BASE must be within 1024-62000 (it uses BASE..BASE+2002), got $base" >&2; exit 2
fi
run=${TMPDIR:-/tmp}/flowrun-nats-cluster-$base
nodes=(1 2 3)
client_port() { echo $((base + $1 - 1)); }
http_port() { echo $((base + 1000 + $1 - 1)); }
cluster_port() { echo $((base + 2000 + $1 - 1)); }

# node: the node number given to kill and restart, checked.
node() {
  case "${1:-}" in
  1 | 2 | 3) echo "$1" ;;
  *) echo "N must be a node number 1-3, got \"${1:-}\"" >&2; exit 2 ;;
  esac
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

urls() {
  local out=() n
  for n in "${nodes[@]}"; do out+=("nats://127.0.0.1:$(client_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

# ready: every node reports JetStream healthy, which needs a meta leader.
ready() {
  local n
  for n in "${nodes[@]}"; do
    curl -fsS "http://127.0.0.1:$(http_port "$n")/healthz" >/dev/null 2>&1 || return 1
    curl -fsS "http://127.0.0.1:$(http_port "$n")/jsz" 2>/dev/null | grep -q '"leader"' || return 1
  done
}

# start_node N: start node N on its ports, with its storage under the
# cluster's data dir, routed to every node.
start_node() {
  local n=$1 dir routes="" m
  dir=$(cat "$run/datadir")
  for m in "${nodes[@]}"; do
    routes+="${routes:+,}nats://127.0.0.1:$(cluster_port "$m")"
  done
  mkdir -p "$dir/node-$n"
  nohup nats-server -js -n "flowrun-$base-$n" -a 127.0.0.1 -p "$(client_port "$n")" \
    -m "$(http_port "$n")" -sd "$dir/node-$n" \
    --cluster_name "flowrun-$base" --cluster "nats://127.0.0.1:$(cluster_port "$n")" \
    --routes "$routes" >>"$run/node-$n.log" 2>&1 &
  echo $! >"$run/node-$n.pid"
}

stop_all() {
  local n pid
  for n in "${nodes[@]}"; do
    [ -f "$run/node-$n.pid" ] || continue
    kill "$(cat "$run/node-$n.pid")" 2>/dev/null || true
  done
  for n in "${nodes[@]}"; do
    [ -f "$run/node-$n.pid" ] || continue
    pid=$(cat "$run/node-$n.pid")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$run/node-$n.pid"
  done
  if [ -f "$run/datadir" ]; then rm -rf "$(cat "$run/datadir")"; rm -f "$run/datadir"; fi
}

case "$cmd" in
start)
  command -v nats-server >/dev/null || { echo "nats-server not found: apt-get install -y nats-server" >&2; exit 1; }
  command -v curl >/dev/null || { echo "curl not found: apt-get install -y curl" >&2; exit 1; }
  mkdir -p "$run"
  if [ -f "$run/node-1.pid" ] && kill -0 "$(cat "$run/node-1.pid")" 2>/dev/null; then
    echo "NATS cluster already running (pid $(cat "$run/node-1.pid"))" >&2
    urls; exit 0
  fi
  for n in "${nodes[@]}"; do
    for p in "$(client_port "$n")" "$(http_port "$n")" "$(cluster_port "$n")"; do
      if accepts "$p"; then echo "port $p is already in use by another process" >&2; exit 1; fi
    done
  done
  dir=${3:-$(mktemp -d "${TMPDIR:-/tmp}/flowrun-nats-cluster-data.XXXXXX")}
  mkdir -p "$dir"
  echo "$dir" >"$run/datadir"
  for n in "${nodes[@]}"; do
    : >"$run/node-$n.log"
    start_node "$n"
  done
  # A loaded machine can take a while to elect the meta leader.
  for _ in $(seq 1 300); do
    if ready; then urls; exit 0; fi
    for n in "${nodes[@]}"; do
      if ! kill -0 "$(cat "$run/node-$n.pid")" 2>/dev/null; then
        echo "nats-server node $n exited; log:" >&2
        cat "$run/node-$n.log" >&2
        stop_all
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "the NATS cluster did not elect a JetStream leader within 30 s; logs in $run" >&2
  stop_all
  exit 1
  ;;
stop)
  stop_all
  ;;
kill)
  n=$(node "${3:-}")
  [ -f "$run/node-$n.pid" ] || { echo "node $n of the cluster on $base is not running" >&2; exit 1; }
  pid=$(cat "$run/node-$n.pid")
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$run/node-$n.pid"
  ;;
restart)
  n=$(node "${3:-}")
  [ -f "$run/datadir" ] || { echo "no cluster was started on $base" >&2; exit 1; }
  if [ -f "$run/node-$n.pid" ] && kill -0 "$(cat "$run/node-$n.pid")" 2>/dev/null; then
    echo "node $n of the cluster on $base is running (pid $(cat "$run/node-$n.pid")): kill it first" >&2; exit 1
  fi
  # The killed process's ports are free once it is gone; a socket left in
  # TIME_WAIT does not stop a listener (nats-server sets SO_REUSEADDR).
  # But the ports sit in Linux's ephemeral range (32768-60999 by default):
  # while the node is down, a client dialling its client or cluster port
  # can be given that very port as its source and connect to itself (TCP
  # simultaneous open), or another connection can be given it, and the
  # node exits with "address already in use" until that socket closes
  # (a NATS client gives up on a server that sends no INFO within its
  # connect timeout, 2 s by default). Start it again then, for up to 30 s.
  start_node "$n"
  tries=1
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$(http_port "$n")/healthz" >/dev/null 2>&1; then exit 0; fi
    if ! kill -0 "$(cat "$run/node-$n.pid")" 2>/dev/null; then
      if tail -n 5 "$run/node-$n.log" | grep -q 'address already in use' && [ "$tries" -lt 15 ]; then
        echo "node $n: a port is in use (try $tries), starting it again in 2 s" >>"$run/node-$n.log"
        sleep 2
        tries=$((tries + 1))
        start_node "$n"
        continue
      fi
      echo "nats-server node $n exited; log:" >&2
      tail -n 50 "$run/node-$n.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "node $n did not report healthy within 30 s; log in $run/node-$n.log" >&2
  exit 1
  ;;
*)
  echo "usage: $0 start [BASE] [DIR] | stop [BASE] | kill BASE N | restart BASE N" >&2
  exit 2
  ;;
esac
