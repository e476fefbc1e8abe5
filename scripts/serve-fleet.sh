#!/usr/bin/env bash
# A kvtc serve fleet on loopback: a Redis Cluster of 3 masters and 3 replicas
# (scripts/redis-cluster.sh) and two kvtc serve processes sharing it, each with
# its own disk tier, so that a conversation begun on one resumes on the other.
#
#   scripts/serve-fleet.sh start DIR [kvtc serve options...]
#   scripts/serve-fleet.sh stop DIR
#
# Environment: KVTC (the kvtc executable, default build/kvtc), PORT_A / PORT_B
# (the servers' ports, default 8081 / 8082), REDIS_PORT (the first node's port,
# default 7000; the nodes take six). Logs and disk tiers: DIR/a.log, DIR/disk-a, ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [kvtc serve options...]" >&2; exit 2; }
shift 2
kvtc=${KVTC:-$here/../build/kvtc}
port_a=${PORT_A:-8081}; port_b=${PORT_B:-8082}; redis_port=${REDIS_PORT:-7000}

stop() {
  for s in a b; do
    [ -f "$dir/$s.pid" ] || continue
    kill "$(cat "$dir/$s.pid")" 2>/dev/null || true
    rm -f "$dir/$s.pid"
  done
  "$here/redis-cluster.sh" stop "$dir/redis"
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    stop
    seeds=$("$here/redis-cluster.sh" start "$dir/redis" "$redis_port")
    for s in a b; do
      port=$port_a; [ "$s" = b ] && port=$port_b
      rm -f "$dir/$s.port"
      "$kvtc" serve --port "$port" --port-file "$dir/$s.port" --disk-dir "$dir/disk-$s" \
        --redis "$seeds" "$@" >"$dir/$s.log" 2>&1 &
      echo $! >"$dir/$s.pid"
    done
    for s in a b; do
      for _ in $(seq 600); do
        [ -s "$dir/$s.port" ] && break
        kill -0 "$(cat "$dir/$s.pid")" 2>/dev/null || { echo "serve-fleet: server $s exited: $(tail -3 "$dir/$s.log")" >&2; stop; exit 1; }
        sleep 0.2
      done
      [ -s "$dir/$s.port" ] || { echo "serve-fleet: server $s did not start in 120 s" >&2; stop; exit 1; }
      echo "server $s: http://127.0.0.1:$(cat "$dir/$s.port")/v1 (log $dir/$s.log)"
    done
    echo "redis cluster: $seeds" ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR [kvtc serve options...]" >&2; exit 2 ;;
esac
