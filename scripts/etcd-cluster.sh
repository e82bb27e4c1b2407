#!/usr/bin/env bash
# Start or stop a three-member etcd cluster on loopback for flowrun's etcd
# kv backend and its tests.
#
#   scripts/etcd-cluster.sh start [DIR]   start members on 127.0.0.1, client ports
#                                         23791-23793, peer ports 23801-23803, data in
#                                         DIR (default a temp dir); wait until every
#                                         member is healthy; print the client endpoints
#                                         comma-separated (for FLOWRUN_ETCD_ENDPOINTS)
#   scripts/etcd-cluster.sh stop          stop the members and remove their data
#
# State (pids, data dir) lives in ${TMPDIR:-/tmp}/flowrun-etcd/; each member's
# log is written there as member-N.log. Needs the etcd server (Debian:
# etcd-server) and etcdctl (Debian: etcd-client).
set -euo pipefail

cmd=${1:-}
# FLOWRUN_ETCD_PORT_BASE (default 23790) moves the ports: client ports are
# BASE+1..BASE+3, peer ports BASE+11..BASE+13; state then lives in
# flowrun-etcd-BASE/, so two clusters can run side by side.
base=${FLOWRUN_ETCD_PORT_BASE:-23790}
run=${TMPDIR:-/tmp}/flowrun-etcd
[ "$base" = 23790 ] || run="$run-$base"
members=(1 2 3)
client_port() { echo $((base + $1)); }
peer_port() { echo $((base + 10 + $1)); }
# etcd's own limits by default (128 operations per transaction, 1.5 MiB
# requests, 2 GiB database): flowrun's etcd backend fits its transactions to
# them. FLOWRUN_ETCD_MAX_TXN_OPS raises --max-txn-ops (give the kv
# connector the same max_txn_ops) to try larger batches.
max_txn_ops=${FLOWRUN_ETCD_MAX_TXN_OPS:-128}

endpoints() {
  local out=() n
  for n in "${members[@]}"; do out+=("http://127.0.0.1:$(client_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

stop_all() {
  local n pid
  for n in "${members[@]}"; do
    [ -f "$run/member-$n.pid" ] || continue
    pid=$(cat "$run/member-$n.pid")
    kill "$pid" 2>/dev/null || true
  done
  for n in "${members[@]}"; do
    [ -f "$run/member-$n.pid" ] || continue
    pid=$(cat "$run/member-$n.pid")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$run/member-$n.pid"
  done
  if [ -f "$run/datadir" ]; then rm -rf "$(cat "$run/datadir")"; rm -f "$run/datadir"; fi
}

case "$cmd" in
start)
  command -v etcd >/dev/null || { echo "etcd not found: apt-get install -y etcd-server" >&2; exit 1; }
  command -v etcdctl >/dev/null || { echo "etcdctl not found: apt-get install -y etcd-client" >&2; exit 1; }
  mkdir -p "$run"
  if [ -f "$run/member-1.pid" ] && kill -0 "$(cat "$run/member-1.pid")" 2>/dev/null; then
    echo "etcd cluster already running (pid $(cat "$run/member-1.pid"))" >&2
    endpoints; exit 0
  fi
  for n in "${members[@]}"; do
    for p in "$(client_port "$n")" "$(peer_port "$n")"; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is already in use by another process" >&2; exit 1
      fi
    done
  done
  dir=${2:-$(mktemp -d "${TMPDIR:-/tmp}/flowrun-etcd-data.XXXXXX")}
  mkdir -p "$dir"
  echo "$dir" >"$run/datadir"
  cluster=""
  for n in "${members[@]}"; do
    cluster+="${cluster:+,}m$n=http://127.0.0.1:$(peer_port "$n")"
  done
  for n in "${members[@]}"; do
    # The server's own warnings go to its log; ETCD_UNSUPPORTED_ARCH and the
    # like are not needed on amd64.
    nohup etcd --name "m$n" --data-dir "$dir/m$n" \
      --listen-client-urls "http://127.0.0.1:$(client_port "$n")" \
      --advertise-client-urls "http://127.0.0.1:$(client_port "$n")" \
      --listen-peer-urls "http://127.0.0.1:$(peer_port "$n")" \
      --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$n")" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token flowrun-test --logger zap \
      --max-txn-ops "$max_txn_ops" \
      >"$run/member-$n.log" 2>&1 &
    echo $! >"$run/member-$n.pid"
  done
  eps=$(endpoints)
  for _ in $(seq 1 150); do
    if ETCDCTL_API=3 etcdctl --endpoints "$eps" --dial-timeout 1s --command-timeout 2s endpoint health >/dev/null 2>&1; then
      echo "$eps"; exit 0
    fi
    for n in "${members[@]}"; do
      if ! kill -0 "$(cat "$run/member-$n.pid")" 2>/dev/null; then
        echo "etcd member m$n exited; log:" >&2; cat "$run/member-$n.log" >&2
        stop_all; exit 1
      fi
    done
    sleep 0.2
  done
  echo "etcd cluster did not become healthy; logs:" >&2
  for n in "${members[@]}"; do tail -n 20 "$run/member-$n.log" >&2; done
  stop_all
  exit 1
  ;;
stop)
  [ -d "$run" ] || exit 0
  stop_all
  ;;
*)
  echo "usage: $0 start [DIR] | stop" >&2
  exit 2
  ;;
esac
