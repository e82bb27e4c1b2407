#!/usr/bin/env bash
# Start or stop a private RabbitMQ node for flowrun's amqp connector and its
# tests. The node listens on 127.0.0.1 only and shares nothing with a system
# RabbitMQ: its own node name, Erlang distribution port, epmd port, cookie
# and data directory.
#
#   scripts/rabbitmq.sh start [PORT] [DIR]   start flowrun-PORT@localhost on 127.0.0.1:PORT
#                                            (default 5672), data in DIR (default
#                                            ${TMPDIR:-/tmp}/flowrun-rabbitmq-PORT), wait until it
#                                            has booted, print its URL
#   scripts/rabbitmq.sh stop  [PORT]         stop that node and its epmd
#
# Starting again with the same DIR keeps durable queues and persistent
# messages. The Erlang distribution port is PORT+20000 and epmd's PORT+10000
# unless RABBITMQ_DIST_PORT or ERL_EPMD_PORT are set (do so for PORT > 45535).
# The management plugin is not enabled. The user guest/guest may connect
# (RabbitMQ lets guest in on loopback only).
set -euo pipefail

cmd=${1:-}
port=${2:-5672}
run=${TMPDIR:-/tmp}
dirfile="$run/flowrun-rabbitmq-$port.dir"
bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || bin=$(dirname "$(command -v rabbitmq-server 2>/dev/null || echo /usr/sbin/rabbitmq-server)")

# env sets the variables naming the node of $port with data in $dir.
env_for() {
  export HOME="$dir" # the Erlang cookie lives here, private to the node
  export RABBITMQ_CONF_ENV_FILE=/dev/null
  export RABBITMQ_NODENAME="flowrun-$port@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$port"
  export RABBITMQ_DIST_PORT="${RABBITMQ_DIST_PORT:-$((port + 20000))}"
  export ERL_EPMD_ADDRESS=127.0.0.1
  # Erlang distribution (node and CLI tools) on loopback only.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_EPMD_PORT="${ERL_EPMD_PORT:-$((port + 10000))}"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
}

case "$cmd" in
start)
  [ -x "$bin/rabbitmq-server" ] || { echo "rabbitmq-server not found: apt-get install -y rabbitmq-server" >&2; exit 1; }
  dir=${3:-$run/flowrun-rabbitmq-$port}
  mkdir -p "$dir/log"
  dir=$(cd "$dir" && pwd)
  env_for
  if [ -f "$RABBITMQ_PID_FILE" ] && kill -0 "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null; then
    echo "rabbitmq node $RABBITMQ_NODENAME already running" >&2
    echo "amqp://guest:guest@127.0.0.1:$port/"; exit 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use by another process" >&2; exit 1
  fi
  echo "$dir" >"$dirfile"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.file.level = warning
log.console = false
EOF
  echo '[].' >"$dir/advanced.config"
  echo '[].' >"$dir/enabled_plugins"
  # epmd first, loopback only, on the node's own port.
  epmd -address 127.0.0.1 -port "$ERL_EPMD_PORT" -daemon -relaxed_command_check
  t0=$(date +%s%N)
  "$bin/rabbitmq-server" -detached >"$dir/log/start.out" 2>&1 || true
  # await_startup fails at once until the node has registered with epmd.
  started=
  for _ in $(seq 1 120); do
    if "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" await_startup --timeout 60 >"$dir/log/await.out" 2>&1; then
      started=1; break
    fi
    sleep 0.5
  done
  if [ -z "$started" ]; then
    echo "rabbitmq did not start on port $port; logs in $dir/log:" >&2
    tail -n 30 "$dir"/log/*.log "$dir/log/start.out" "$dir/log/await.out" >&2 2>/dev/null || true
    exit 1
  fi
  echo "rabbitmq node $RABBITMQ_NODENAME booted in $((($(date +%s%N) - t0) / 1000000)) ms" >&2
  echo "amqp://guest:guest@127.0.0.1:$port/"
  ;;
stop)
  [ -f "$dirfile" ] || { echo "no node started for port $port ($dirfile missing)" >&2; exit 0; }
  dir=$(cat "$dirfile")
  env_for
  "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || true
  if [ -f "$RABBITMQ_PID_FILE" ] && pid=$(cat "$RABBITMQ_PID_FILE") && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
  rm -f "$dirfile"
  ;;
*)
  echo "usage: $0 start [PORT] [DIR] | stop [PORT]" >&2
  exit 2
  ;;
esac
