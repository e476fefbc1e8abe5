#!/usr/bin/env bash
# A Redis Cluster on loopback for kvtc serve's shared tier: 3 masters and 3
# replicas of Debian's redis-server (scripts/install-deps.sh installs it).
#
#   scripts/redis-cluster.sh start DIR [BASE_PORT]   nodes on BASE_PORT..BASE_PORT+5
#                                                    (default 7000); prints the
#                                                    seeds for kvtc serve --redis
#   scripts/redis-cluster.sh stop DIR                stops the nodes DIR's files name
#
# Each node keeps its files in DIR/<port>/ and runs with maxmemory (REDIS_MAXMEMORY,
# default 256mb) and maxmemory-policy allkeys-lru, the memory bound and eviction
# policy of the tier (see server/prompt_tier_redis.c), and a short
# cluster-node-timeout (REDIS_NODE_TIMEOUT_MS, default 2000) so that a replica takes
# over from a failed master within seconds. start returns once cluster_state:ok.
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [BASE_PORT]" >&2; exit 2; }
base=${3:-7000}
maxmem=${REDIS_MAXMEMORY:-256mb}
node_timeout=${REDIS_NODE_TIMEOUT_MS:-2000}

stop() {
  [ -d "$dir" ] || return 0
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  done
}

start() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    { echo "redis-cluster: redis-server or redis-cli not found (scripts/install-deps.sh installs them)" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  stop
  local nodes=()
  for port in $(seq "$base" $((base + 5))); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
      echo "redis-cluster: port $port is in use" >&2; exit 1
    fi
  done
  for i in 0 1 2 3 4 5; do
    local port=$((base + i)) d="$dir/$((base + i))"
    rm -rf "$d"; mkdir -p "$d"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$d" \
      --pidfile "$d/redis.pid" --logfile "$d/redis.log" --cluster-enabled yes \
      --cluster-config-file "$d/nodes.conf" --cluster-node-timeout "$node_timeout" \
      --appendonly no --save '' --maxmemory "$maxmem" --maxmemory-policy allkeys-lru
    nodes+=("127.0.0.1:$port")
  done
  for port in $(seq "$base" $((base + 5))); do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" ping >/dev/null || { echo "redis-cluster: node $port did not start: $(tail -3 "$dir/$port/redis.log")" >&2; exit 1; }
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
    { echo "redis-cluster: cluster create failed: $(tail -5 "$dir/create.log")" >&2; exit 1; }
  # ok on every node, and every replica attached and in sync with its master
  for _ in $(seq 300); do
    ok=1
    for port in $(seq "$base" $((base + 5))); do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    [ "$(redis-cli -p "$base" cluster nodes | grep -c ' slave ')" = 3 ] || ok=0
    for port in $(seq "$base" $((base + 5))); do
      local info; info=$(redis-cli -p "$port" info replication)
      case "$info" in *role:slave*) grep -q 'master_link_status:up' <<<"$info" || ok=0 ;; esac
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "redis-cluster: cluster_state not ok with 3 replicas in sync after 30 s" >&2; exit 1; }
  local IFS=,
  echo "${nodes[*]}"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR [BASE_PORT]" >&2; exit 2 ;;
esac
