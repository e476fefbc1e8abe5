#!/usr/bin/env bash
# kvtc serve's tiers below RAM, end to end: a real Redis Cluster (3 masters, 3
# replicas of Debian's redis-server, scripts/redis-cluster.sh), real servers
# with the default model, real clients (curl; the openai package when
# tests/serve-requirements.txt installs).
#  (a) a conversation begun on server A resumes on server B through Redis;
#  (b) after kill -9 of A and a restart on the same disk folder (no Redis) it
#      resumes from disk. Both restore the same compressed stream (the entry A
#      stored after turn 1, on its disk and in Redis), so "equal" is asserted
#      as byte-equal reply text and equal cached_tokens: the same stream decodes
#      to the same cache, and the engine is deterministic at greedy decoding;
#  (c) a corrupted entry file (one byte flipped in the stream, then in the
#      header) is detected (counted), deleted and recomputed: the reply equals
#      a cold server's;
#  (d) kill -9 of the Redis master holding the conversation's entry: requests
#      still succeed, by recompute until a replica takes over, from Redis after;
#  then the entry's slot is migrated to another master (ASK while migrating,
#  MOVED after): still hits; a corrupted value there is a counted miss;
#  (e) the whole cluster down: requests succeed by recompute.
# (d) and (e) use a conversation shorter than the stream's raw sinks + window
# (4 + 128 tokens), kept exactly in fp16, so every reply there, restored or
# recomputed, must equal the cold server's.
set -euo pipefail
KVTC="${KVTC_BIN:?KVTC_BIN not set}"
src="${KVTC_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
model="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "test_serve_tiers: skipped: the default model $model is absent (make test fetches it)"
  exit 77
fi
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "test_serve_tiers: skipped: redis-server / redis-cli absent (scripts/install-deps.sh installs them)"
  exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-tiers-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  "$src/scripts/redis-cluster.sh" stop "$tmp/redis" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "test_serve_tiers: FAIL: $*"
  for f in "$tmp"/*.log; do echo "--- $f"; tail -5 "$f"; done
  exit 1
}
say() { echo "test_serve_tiers: $*"; }

# ---- the cluster, on six free ports (another test or user may hold some)
seeds=""
for try in 1 2 3 4 5; do
  base=$((20000 + (($$ + try * 7919) % 900) * 10))
  if seeds=$("$src/scripts/redis-cluster.sh" start "$tmp/redis" "$base" 2>"$tmp/redis-start.err"); then break; fi
  "$src/scripts/redis-cluster.sh" stop "$tmp/redis" >/dev/null 2>&1 || true
  seeds=""
done
[ -n "$seeds" ] || fail "no Redis Cluster: $(cat "$tmp/redis-start.err")"
say "Redis Cluster on $seeds"
rcli() { redis-cli -p "$1" "${@:2}"; }
IFS=, read -ra nodes <<<"$seeds"
masters() { for n in "${nodes[@]}"; do rcli "${n##*:}" role 2>/dev/null | head -1 | grep -q master && echo "${n##*:}"; done; }

"$KVTC" calibrate --corpus --model "$model" --chunks 4 --chunk-tokens 512 --rank 256 \
  -o "$tmp/cal.kvtcal" >/dev/null 2>&1 || fail "calibrate"

# start NAME ARGS...: a server on a free port; sets port_NAME and pid_NAME
start() {
  local name=$1; shift
  rm -f "$tmp/$name.port"
  "$KVTC" serve --model "$model" -c "$tmp/cal.kvtcal" --port 0 --port-file "$tmp/$name.port" \
    --threads 2 "$@" >>"$tmp/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do
    [ -s "$tmp/$name.port" ] && break
    kill -0 "$pid" 2>/dev/null || fail "$name: the server exited: $(tail -3 "$tmp/$name.log")"
    sleep 0.2
  done
  [ -s "$tmp/$name.port" ] || fail "$name: no port after 60 s"
  printf -v "port_$name" '%s' "$(cat "$tmp/$name.port")"
  printf -v "pid_$name" '%s' "$pid"
}
port_of() { local v="port_$1"; echo "${!v}"; }
metric() { curl -s "http://127.0.0.1:$(port_of "$1")/metrics" | awk -v k="$2" '$1 == k {print $2}'; }
# wait_metric SERVER KEY MIN: until the metric reaches MIN (the tier writer stores after the reply)
wait_metric() {
  for _ in $(seq 150); do
    [ "$(metric "$1" "$2")" -ge "$3" ] 2>/dev/null && return 0
    sleep 0.2
  done
  fail "$1: $2 = $(metric "$1" "$2"), expected >= $3 within 30 s"
}
# idle SERVER: until the engine has stored the last conversation and the tier writer is done
idle() {
  for _ in $(seq 300); do
    [ "$(metric "$1" kvtc_engine_busy)" = 0 ] && [ "$(metric "$1" kvtc_queue_depth)" = 0 ] &&
      [ "$(metric "$1" kvtc_store_queue_bytes)" = 0 ] && return 0
    sleep 0.1
  done
  fail "$1: still busy storing after 30 s"
}
# ask SERVER REQUEST-FILE: sets code, reply, cached (curl)
ask() {
  code=$(curl -s --max-time 120 -o "$tmp/out" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$2" "http://127.0.0.1:$(port_of "$1")/v1/chat/completions") || code=000
  [ "$code" = 200 ] || fail "$1: $2: HTTP $code: $(head -c 300 "$tmp/out")"
  reply=$(python3 -c "import json; print(json.load(open('$tmp/out'))['choices'][0]['message']['content'])")
  cached=$(python3 -c "import json; print(json.load(open('$tmp/out'))['usage']['prompt_tokens_details']['cached_tokens'])")
  [ -n "$reply" ] || fail "$1: empty reply"
  say "$1 $(basename "$2" .json): $cached prompt tokens cached: $reply"
}
# conversation NAME MAX1 MAX2 TEXT QUESTION: turn 1 -> $tmp/NAME-1.json; turn2 NAME REPLY1 -> $tmp/NAME-2.json
conversation() {
  python3 - "$tmp/$1" "$2" "$3" "$4" "$5" <<'PY'
import json, sys
base, max1, max2, text, question = sys.argv[1:]
msgs = [{"role": "user", "content": text}]
json.dump({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": int(max1), "temperature": 0,
           "messages": msgs}, open(base + "-1.json", "w"))
json.dump({"max2": int(max2), "question": question, "messages": msgs}, open(base + ".conv", "w"))
PY
}
turn2() {
  python3 - "$tmp/$1" "$2" <<'PY'
import json, sys
base, reply1 = sys.argv[1:]
c = json.load(open(base + ".conv"))
msgs = c["messages"] + [{"role": "assistant", "content": reply1}, {"role": "user", "content": c["question"]}]
json.dump({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": c["max2"], "temperature": 0,
           "messages": msgs}, open(base + "-2.json", "w"))
PY
}

story="Once upon a time, in a village between two rivers, there lived a potter named Ilse who made bowls for everyone in the valley. Every spring the rivers flooded and the villagers carried their belongings to the hill, and every autumn they came back down and Ilse made new bowls for the ones that had broken. One year a traveller arrived with a cart full of metal pots that never broke, and the villagers bought them all. Ilse had no work for a whole winter. She walked along the rivers, collecting clay of different colours, and began to make tiles instead. Tell me in two sentences what the story is about."
short="A small lighthouse stood on a rock in the cold northern sea, and its keeper, an old man named Tobias, climbed its stairs every evening to light the lamp for the ships."

start c --ram-budget 0 # the cold reference: no prompt cache at all
start a --disk-dir "$tmp/disk-a" --redis "$seeds"
start b --disk-dir "$tmp/disk-b" --redis "$seeds"

# ---- (a) begun on A, resumed on B through Redis
conversation story 40 64 "$story" "What colour came from the hill?"
ask a "$tmp/story-1.json"
turn2 story "$reply"
wait_metric a 'kvtc_cache_stores_total{tier="redis"}' 1
wait_metric a 'kvtc_cache_stores_total{tier="disk"}' 1
ask b "$tmp/story-2.json"
b_reply=$reply; b_cached=$cached
[ "$b_cached" -ge 192 ] || fail "(a): B restored $b_cached tokens, expected >= 192 (beyond the raw window)"
[ "$(metric b 'kvtc_cache_hits_total{tier="redis"}')" = 1 ] || fail "(a): no Redis hit on B"
[ "$(metric b 'kvtc_cache_hits_total{tier="ram"}')" = 0 ] || fail "(a): B hit its RAM tier"
[ "$(metric b 'kvtc_cache_hit_tokens_total{tier="redis"}')" = "$b_cached" ] || fail "(a): redis hit tokens"
for s in a b; do # our CRC16 key slots agree with the cluster's: no redirection in steady state
  [ "$(metric $s 'kvtc_redis_moved_total{tier="redis"}')" = 0 ] || fail "(a): $s was redirected (MOVED)"
done
idle b # B stored the longer conversation: A's turn-1 entry, its prefix, was deleted
[ "$(metric b 'kvtc_cache_stores_total{tier="redis"}')" = 1 ] || fail "(a): B stored no longer conversation"
n_entries=0; for p in $(masters); do n_entries=$((n_entries + $(rcli "$p" --scan --pattern 'kvtc:e:*' | wc -l))); done
[ "$n_entries" = 1 ] || fail "(a): $n_entries entries in Redis, expected 1 (a prefix entry is redundant)"
ask c "$tmp/story-2.json"; story_cold=$reply
python3 -c "import os,sys; a,b=sys.argv[1:]; n=len(os.path.commonprefix([a,b])); print(f'test_serve_tiers: (a) resumed on B and recomputed replies agree on {n} of {max(len(a),len(b))} characters (lossy part: shown, not asserted)')" "$b_reply" "$story_cold"

# ---- (b) kill -9 A, restart on the same disk folder without Redis: resumed from disk
kill -9 "$pid_a"; wait "$pid_a" 2>/dev/null || true
start a --disk-dir "$tmp/disk-a"
[ "$(metric a 'kvtc_cache_entries{tier="disk"}')" = 1 ] || fail "(b): the restarted A indexed $(metric a 'kvtc_cache_entries{tier="disk"}') disk entries, expected 1"
ask a "$tmp/story-2.json"
[ "$(metric a 'kvtc_cache_hits_total{tier="disk"}')" = 1 ] || fail "(b): no disk hit after the restart"
[ "$cached" = "$b_cached" ] || fail "(b): $cached tokens from disk, B restored $b_cached from Redis"
[ "$reply" = "$b_reply" ] || fail "(b): reply from disk '$reply' differs from B's from Redis '$b_reply' (the same stream)"
say "(b) A after kill -9 resumed from disk with B's reply"

# ---- (c) a corrupted entry: detected, deleted, recomputed
idle a # the turn-2 conversation stored (replacing turn 1's entry) when it had new blocks
kill -9 "$pid_a"; wait "$pid_a" 2>/dev/null || true
entries=("$tmp"/disk-a/*.kvtce)
[ "${#entries[@]}" = 1 ] && [ -f "${entries[0]}" ] || fail "(c): expected one entry file, found ${#entries[@]}"
# flip a byte in the stream part: the header still checks, the entry's SHA-256 of the stream does not
flip() { python3 - "$1" "$2" <<'PY'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off if off >= 0 else off + f.seek(0, 2)); b = f.read(1); f.seek(-1, 1); f.write(bytes([b[0] ^ 0x40]))
PY
}
flip "${entries[0]}" -1000
cp "${entries[0]}" "$tmp/corrupted.kvtce"
start a --disk-dir "$tmp/disk-a"
[ "$(metric a 'kvtc_cache_entries{tier="disk"}')" = 1 ] || fail "(c): the entry with a bad stream should be indexed (its header checks)"
ask a "$tmp/story-2.json"
[ "$cached" = 0 ] || fail "(c): $cached tokens restored from a corrupted entry"
[ "$(metric a 'kvtc_cache_verify_failures_total{tier="disk"}')" = 1 ] || fail "(c): verification failure not counted"
idle a # the recomputed conversation has the same blocks, so it is stored under the same name
! cmp -s "$tmp/corrupted.kvtce" "${entries[0]}" || fail "(c): the corrupted entry file is still there"
[ "$reply" = "$story_cold" ] || fail "(c): recomputed reply '$reply' differs from the cold server's '$story_cold'"
say "(c) a flipped stream byte: counted, deleted, recomputed with the cold reply"
[ "$(metric a 'kvtc_cache_stores_total{tier="disk"}')" = 1 ] || fail "(c): the recomputed conversation was not stored"
kill -9 "$pid_a"; wait "$pid_a" 2>/dev/null || true
entries=("$tmp"/disk-a/*.kvtce)
cp "${entries[0]}" "$tmp/disk-a/foreign.kvtce"
flip "$tmp/disk-a/foreign.kvtce" 30 # another fingerprint: another model's entry, left alone
flip "${entries[0]}" 100 # in the block hashes: the header's own SHA-256 fails at startup
start a --disk-dir "$tmp/disk-a"
[ -f "$tmp/disk-a/foreign.kvtce" ] || fail "(c): an entry of another fingerprint was deleted"
[ "$(metric a 'kvtc_cache_entries{tier="disk"}')" = 0 ] || fail "(c): an entry with a bad header was indexed"
[ "$(metric a 'kvtc_cache_verify_failures_total{tier="disk"}')" = 1 ] || fail "(c): a bad header not counted at startup"
[ ! -e "${entries[0]}" ] || fail "(c): the entry with a bad header is still there"
ask a "$tmp/story-2.json"
[ "$cached" = 0 ] && [ "$reply" = "$story_cold" ] || fail "(c): after a bad header: $cached cached, reply '$reply'"
say "(c) a flipped header byte: dropped at startup, recomputed with the cold reply"

# ---- (d) kill -9 the Redis master holding the conversation's entry
kill -9 "$pid_a"; wait "$pid_a" 2>/dev/null || true
start a --ram-budget 0 --redis "$seeds" # every lookup goes to Redis
conversation short 8 8 "$short" "What was his name?"
ask c "$tmp/short-1.json"; turn2 short "$reply"
ask c "$tmp/short-2.json"; short_cold=$reply
[ "$(python3 -c "import json; print(json.load(open('$tmp/out'))['usage']['total_tokens'])")" -le 132 ] ||
  fail "(d): the short conversation outgrew the raw sinks + window"
idle b
for p in $(masters); do rcli "$p" flushall >/dev/null; done # only this conversation's keys from here on
stores=$(metric b 'kvtc_cache_stores_total{tier="redis"}')
ask b "$tmp/short-1.json"
[ "$(python3 -c "import json; print(json.load(open('$tmp/out'))['usage']['prompt_tokens'])")" -ge 65 ] || fail "(d): turn 1 shorter than a block"
wait_metric b 'kvtc_cache_stores_total{tier="redis"}' $((stores + 1))
victim=""; turn1_key=""
for p in $(masters); do
  k=$(rcli "$p" --scan --pattern 'kvtc:e:*')
  [ -n "$k" ] && { victim=$p; turn1_key=$k; }
done
[ -n "$victim" ] || fail "(d): the short conversation's entry is on no master"
victim_id=$(rcli "$victim" cluster myid)
replica=$(rcli "$victim" cluster nodes | awk -v id="$victim_id" '$4 == id {split($2, a, "[:@]"); print a[2]}')
[ -n "$replica" ] || fail "(d): master $victim has no replica"
for _ in $(seq 100); do # replication is asynchronous: wait until the replica holds the entry
  [ "$(rcli "$replica" --scan --pattern "$turn1_key" | wc -l)" = 1 ] && break; sleep 0.1
done
say "(d) killing master $victim (entry $turn1_key; replica $replica)"
kill -9 "$(cat "$tmp/redis/$victim/redis.pid")"
ask a "$tmp/short-2.json"
[ "$reply" = "$short_cold" ] || fail "(d): reply with a master down '$reply' differs from the cold '$short_cold'"
[ "$(metric a 'kvtc_cache_errors_total{tier="redis"}')" -gt 0 ] || fail "(d): no Redis error counted with a master down"
say "(d) master down: served (cached $cached), redis errors $(metric a 'kvtc_cache_errors_total{tier="redis"}')"
for _ in $(seq 300); do # the replica takes over (cluster-node-timeout 2 s)
  rcli "$replica" role 2>/dev/null | head -1 | grep -q master &&
    rcli "$replica" cluster info | grep -q '^cluster_state:ok' && break
  sleep 0.1
done
rcli "$replica" cluster info | grep -q '^cluster_state:ok' || fail "(d): no failover within 30 s"
refreshes=$(metric a 'kvtc_redis_slot_refreshes_total{tier="redis"}')
hits=$(metric a 'kvtc_cache_hits_total{tier="redis"}')
ask a "$tmp/short-2.json"
[ "$cached" -ge 64 ] || fail "(d): after the failover $cached tokens restored, expected >= 64"
[ "$(metric a 'kvtc_cache_hits_total{tier="redis"}')" -gt "$hits" ] || fail "(d): no Redis hit after the failover"
[ "$reply" = "$short_cold" ] || fail "(d): reply after the failover '$reply' differs from the cold '$short_cold'"
say "(d) after the failover to $replica: $cached tokens from Redis, the cold reply; slot maps loaded: $refreshes before, $(metric a 'kvtc_redis_slot_refreshes_total{tier="redis"}') after"

# ---- ASK and MOVED: the entry's slot migrates to another master while A serves
slot=$(rcli "$replica" cluster keyslot "$turn1_key")
src_id=$(rcli "$replica" cluster myid)
dst=""; for p in $(masters); do [ "$p" != "$replica" ] && dst=$p; done
dst_id=$(rcli "$dst" cluster myid)
rcli "$dst" cluster setslot "$slot" importing "$src_id" >/dev/null
rcli "$replica" cluster setslot "$slot" migrating "$dst_id" >/dev/null
# the entry and its last block's index key share the slot (hash tag): they move together
idx_key="kvtc:b:${turn1_key#kvtc:e:}"
[ "$(rcli "$replica" migrate 127.0.0.1 "$dst" "" 0 5000 keys "$turn1_key" "$idx_key")" = OK ] ||
  fail "MIGRATE of $turn1_key and $idx_key"
ask0=$(metric a 'kvtc_redis_ask_total{tier="redis"}')
ask a "$tmp/short-2.json"
[ "$cached" -ge 64 ] && [ "$reply" = "$short_cold" ] || fail "(ASK): $cached cached, reply '$reply'"
[ "$(metric a 'kvtc_redis_ask_total{tier="redis"}')" -gt "$ask0" ] || fail "(ASK): no ASK redirection followed"
for p in $(masters); do rcli "$p" cluster setslot "$slot" node "$dst_id" >/dev/null; done
moved0=$(metric a 'kvtc_redis_moved_total{tier="redis"}')
idle a
ask a "$tmp/short-2.json"
[ "$cached" -ge 64 ] && [ "$reply" = "$short_cold" ] || fail "(MOVED): $cached cached, reply '$reply'"
[ "$(metric a 'kvtc_redis_moved_total{tier="redis"}')" -gt "$moved0" ] || fail "(MOVED): no MOVED redirection followed"
say "slot $slot migrated from $replica to $dst: hits through ASK ($(metric a 'kvtc_redis_ask_total{tier="redis"}')) and MOVED ($(metric a 'kvtc_redis_moved_total{tier="redis"}')) redirections"

# ---- a corrupted Redis value: verified on fetch like a disk entry, a miss, counted
idle a
len=$(rcli "$dst" strlen "$turn1_key")
off=$((len - 1000))
byte=X; [ "$(rcli "$dst" getrange "$turn1_key" "$off" "$off")" = X ] && byte=Y
rcli "$dst" setrange "$turn1_key" "$off" "$byte" >/dev/null
fails=$(metric a 'kvtc_cache_verify_failures_total{tier="redis"}')
ask a "$tmp/short-2.json"
[ "$cached" = 0 ] && [ "$reply" = "$short_cold" ] || fail "(corrupt value): $cached cached, reply '$reply'"
[ "$(metric a 'kvtc_cache_verify_failures_total{tier="redis"}')" -gt "$fails" ] || fail "(corrupt value): not counted"
say "a corrupted Redis value: counted, recomputed with the cold reply"

# ---- (e) the whole cluster down: recompute
"$src/scripts/redis-cluster.sh" stop "$tmp/redis"
errors=$(metric a 'kvtc_cache_errors_total{tier="redis"}')
ask a "$tmp/short-2.json"
[ "$cached" = 0 ] && [ "$reply" = "$short_cold" ] || fail "(e): Redis down: $cached cached, reply '$reply'"
[ "$(metric a 'kvtc_cache_errors_total{tier="redis"}')" -gt "$errors" ] || fail "(e): no Redis error counted"
ask b "$tmp/story-2.json" # B: RAM still serves
say "(e) cluster down: recomputed with the cold reply"

# ---- the openai package as the client, on B with Redis down
source "$src/tests/support/openai_venv.sh"
openai_venv test_serve_tiers
if [ -n "$openai_python" ]; then
  "$openai_python" - "$port_b" "$tmp/short-2.json" "$short_cold" <<'PY' || fail "openai client"
import json, sys, openai
port, req, want = sys.argv[1:]
q = json.load(open(req))
c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
r = c.chat.completions.create(model=q["model"], messages=q["messages"], max_tokens=q["max_tokens"], temperature=0)
assert r.choices[0].message.content == want, (r.choices[0].message.content, want)
print("test_serve_tiers: openai", openai.__version__, "client: B's reply with the cluster down is the cold one",
      f"({r.usage.prompt_tokens_details.cached_tokens} tokens cached)")
PY
fi
say ok
