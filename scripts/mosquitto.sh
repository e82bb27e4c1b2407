#!/usr/bin/env bash
# Start or stop a local mosquitto MQTT broker for flowrun's mqtt connector
# and its tests. The broker's system service is not used.
#
#   scripts/mosquitto.sh start [PORT] [DIR]   listen on 127.0.0.1:PORT (default 1883), config,
#                                             persistence and log in DIR (default a temp dir),
#                                             wait until the port accepts connections
#                                             (lines in $MOSQUITTO_EXTRA_CONF are added to the config)
#   scripts/mosquitto.sh stop  [PORT]         stop the broker started for PORT (SIGTERM:
#                                             mosquitto saves its persistence file first)
#
# Persistent sessions and their queued messages survive a stop and a start
# with the same DIR. The pid is written to ${TMPDIR:-/tmp}/flowrun-mosquitto-PORT.pid
# and the directory to ${TMPDIR:-/tmp}/flowrun-mosquitto-PORT.dir. Prints the URL.
set -euo pipefail

cmd=${1:-}
port=${2:-1883}
run=${TMPDIR:-/tmp}
pidfile="$run/flowrun-mosquitto-$port.pid"
dirfile="$run/flowrun-mosquitto-$port.dir"

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

mosq=$(command -v mosquitto || true)
[ -n "$mosq" ] || [ ! -x /usr/sbin/mosquitto ] || mosq=/usr/sbin/mosquitto

case "$cmd" in
start)
  [ -n "$mosq" ] || { echo "mosquitto not found: apt-get install -y mosquitto" >&2; exit 1; }
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "mosquitto already running (pid $(cat "$pidfile"))" >&2
    echo "tcp://127.0.0.1:$port"; exit 0
  fi
  if accepts; then
    echo "port $port is already in use by another process" >&2; exit 1
  fi
  dir=${3:-$(mktemp -d "$run/flowrun-mosquitto-$port.XXXXXX")}
  mkdir -p "$dir/data"
  # max_inflight_messages: unacknowledged QoS 1/2 messages per client, the
  # receive window of a flowrun source (its `window` should not exceed it).
  # max_queued_messages: messages held per client beyond those in flight
  # (also while it is offline); mosquitto drops QoS 1/2 messages over it.
  # user: run as whoever starts it (as root mosquitto would otherwise
  # switch to the user "mosquitto", who may not reach DIR).
  # autosave_interval 1: a crash of the broker loses at most ~1 s of
  # messages; a stop (SIGTERM) saves everything.
  cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
user $(id -un)
allow_anonymous true
persistence true
persistence_location $dir/data/
autosave_interval 1
max_inflight_messages 2048
max_queued_messages 1000000
max_queued_bytes 0
persistent_client_expiration 1d
log_dest file $dir/mosquitto.log
log_type error
log_type warning
log_type notice
CONF
  # MOSQUITTO_EXTRA_CONF: more configuration lines (a test's acl_file, say).
  if [ -n "${MOSQUITTO_EXTRA_CONF:-}" ]; then printf '%s\n' "$MOSQUITTO_EXTRA_CONF" >>"$dir/mosquitto.conf"; fi
  nohup "$mosq" -c "$dir/mosquitto.conf" >"$dir/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  echo "$dir" >"$dirfile"
  for _ in $(seq 1 100); do
    if accepts; then echo "tcp://127.0.0.1:$port"; exit 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "mosquitto did not start on port $port; log:" >&2
  cat "$dir/stdout.log" "$dir/mosquitto.log" >&2 2>/dev/null || true
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
