#!/usr/bin/env bash
# Start or stop a local redis-server for flowrun's redis_streams connector
# and its tests.
#
#   scripts/redis-server.sh start [PORT] [DIR]   start on 127.0.0.1:PORT (default 6379), data in
#                                                DIR (default a temp dir), append-only file with
#                                                fsync on every write, no RDB snapshots; wait
#                                                until it answers PING
#   scripts/redis-server.sh stop  [PORT]         stop the server started for PORT (SHUTDOWN, which
#                                                flushes the append-only file)
#
# The server is daemonized with its pid in ${TMPDIR:-/tmp}/flowrun-redis-PORT.pid
# and its log in ${TMPDIR:-/tmp}/flowrun-redis-PORT.log. Prints the URL on
# success. The Debian package's system service is not used.
set -euo pipefail

cmd=${1:-}
port=${2:-6379}
run=${TMPDIR:-/tmp}
pidfile="$run/flowrun-redis-$port.pid"
logfile="$run/flowrun-redis-$port.log"

ping() { redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; }

case "$cmd" in
start)
  command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 1; }
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "redis-server already running (pid $(cat "$pidfile"))" >&2
    echo "redis://127.0.0.1:$port"; exit 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use by another process" >&2; exit 1
  fi
  dir=${3:-$(mktemp -d "$run/flowrun-redis-$port.XXXXXX")}
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --dir "$dir" \
    --save "" --appendonly yes --appendfsync always \
    --daemonize yes --pidfile "$pidfile" --logfile "$logfile"
  for _ in $(seq 1 100); do
    if ping; then echo "redis://127.0.0.1:$port"; exit 0; fi
    sleep 0.1
  done
  echo "redis-server did not start on port $port; log:" >&2
  cat "$logfile" >&2
  exit 1
  ;;
stop)
  [ -f "$pidfile" ] || { echo "no pid file $pidfile" >&2; exit 0; }
  pid=$(cat "$pidfile")
  redis-cli -h 127.0.0.1 -p "$port" shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
  ;;
*)
  echo "usage: $0 start [PORT] [DIR] | stop [PORT]" >&2
  exit 2
  ;;
esac
