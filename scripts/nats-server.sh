#!/usr/bin/env bash
# Start or stop a local NATS server with JetStream for flowrun's bus
# connectors and their tests.
#
#   scripts/nats-server.sh start [PORT] [DIR]   start on 127.0.0.1:PORT (default 4222),
#                                               JetStream storage in DIR (default a temp dir),
#                                               wait until the port accepts connections
#   scripts/nats-server.sh stop  [PORT]         stop the server started for PORT
#
# The pid is written to ${TMPDIR:-/tmp}/flowrun-nats-PORT.pid and the log to
# ${TMPDIR:-/tmp}/flowrun-nats-PORT.log. Prints the URL on success.
set -euo pipefail

cmd=${1:-}
port=${2:-4222}
run=${TMPDIR:-/tmp}
pidfile="$run/flowrun-nats-$port.pid"
logfile="$run/flowrun-nats-$port.log"

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$cmd" in
start)
  command -v nats-server >/dev/null || { echo "nats-server not found: apt-get install -y nats-server" >&2; exit 1; }
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "nats-server already running (pid $(cat "$pidfile"))" >&2
    echo "nats://127.0.0.1:$port"; exit 0
  fi
  if accepts; then
    echo "port $port is already in use by another process" >&2; exit 1
  fi
  dir=${3:-$(mktemp -d "$run/flowrun-nats-$port.XXXXXX")}
  mkdir -p "$dir"
  nohup nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if accepts; then echo "nats://127.0.0.1:$port"; exit 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "nats-server did not start on port $port; log:" >&2
  cat "$logfile" >&2
  exit 1
  ;;
stop)
  [ -f "$pidfile" ] || { echo "no pid file $pidfile" >&2; exit 0; }
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  ;;
*)
  echo "usage: $0 start [PORT] [DIR] | stop [PORT]" >&2
  exit 2
  ;;
esac
