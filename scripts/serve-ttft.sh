#!/usr/bin/env bash
# Time to reply (max_tokens 1) to the second turn of a ~2.2K-token conversation on a
# kvtc serve with the RAM prompt cache versus one without (--ram-budget 0). A stopgap
# until `kvtc bench serve` (issue 16); usage: scripts/serve-ttft.sh [path to kvtc]
# With TIERS=1 server a also stores to a disk folder and a Redis Cluster
# (scripts/redis-cluster.sh, ports 7400-7405), and the turn is timed on two more servers
# without RAM cache: one on a copy of that folder (disk tier), one on the cluster (Redis tier).
set -euo pipefail
K=${1:-build/kvtc}; M=SmolLM2-135M-Instruct.Q4_1
d=$(mktemp -d)
here=$(cd "$(dirname "$0")" && pwd)
tiers=()
if [ "${TIERS:-0}" = 1 ]; then
  seeds=$("$here/redis-cluster.sh" start $d/redis 7400)
  tiers=(--disk-dir $d/disk --redis "$seeds")
fi
$K serve --port 0 --port-file $d/a.port --threads 2 "${tiers[@]}" >$d/a.log 2>&1 & A=$!
$K serve --port 0 --port-file $d/b.port --threads 2 --ram-budget 0 >$d/b.log 2>&1 & B=$!
pids="$A $B"
trap 'kill $pids; [ -d $d/redis ] && "$here/redis-cluster.sh" stop $d/redis; rm -rf $d' EXIT
for i in $(seq 120); do [ -s $d/a.port ] && [ -s $d/b.port ] && break; sleep 0.5; done
pa=$(cat $d/a.port); pb=$(cat $d/b.port)
python3 - $M > $d/t1.json <<'PY'
import json, sys
para = "In the valley between two rivers the potters of the village made bowls, tiles and jars, and every spring the floods came and every autumn the people returned to rebuild. "
text = " ".join(f"Chapter {i}. " + para for i in range(1, 56))
print(json.dumps({"model": sys.argv[1], "max_tokens": 16, "messages": [{"role": "user", "content": text + " Summarize."}]}))
PY
curl -s localhost:$pa/v1/chat/completions -d @$d/t1.json > $d/r1.json
python3 - $d/t1.json $d/r1.json > $d/t2.json <<'PY'
import json, sys
q = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
q["messages"] += [r["choices"][0]["message"], {"role": "user", "content": "And the floods?"}]
q["max_tokens"] = 1
print(json.dumps(q))
PY
sleep 15 # let the worker compress turn 1
ports="$pa $pb"
if [ "${TIERS:-0}" = 1 ]; then
  cp -r $d/disk $d/disk-copy
  $K serve --port 0 --port-file $d/c.port --threads 2 --ram-budget 0 --disk-dir $d/disk-copy >$d/c.log 2>&1 & pids="$pids $!"
  $K serve --port 0 --port-file $d/e.port --threads 2 --ram-budget 0 --redis "$seeds" >$d/e.log 2>&1 & pids="$pids $!"
  for i in $(seq 120); do [ -s $d/c.port ] && [ -s $d/e.port ] && break; sleep 0.5; done
  ports="$pa $(cat $d/c.port) $(cat $d/e.port) $pb"
  echo "ports: RAM $pa, disk $(cat $d/c.port), Redis $(cat $d/e.port), cold $pb"
fi
for p in $ports; do
  for rep in 1 2; do
    curl -s -o $d/r2.json -w "port $p: %{time_total} s  " localhost:$p/v1/chat/completions -d @$d/t2.json
    python3 -c "import json; u=json.load(open('$d/r2.json'))['usage']; print(u['prompt_tokens'], 'prompt tokens,', u['prompt_tokens_details']['cached_tokens'], 'cached')"
  done
done
curl -s localhost:$pa/metrics | grep -E "^kvtc_(restore|compress|prefill)_seconds|^kvtc_cache_(bytes|entries|hit)"
for p in $ports; do curl -s localhost:$p/metrics | grep -E '^kvtc_cache_hits_total\{tier="(disk|redis)"\} [1-9]' | sed "s/^/port $p: /" || true; done

