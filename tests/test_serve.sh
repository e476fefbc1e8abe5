#!/usr/bin/env bash
# kvtc serve end to end: real servers on free loopback ports with the default
# model, real clients (curl; the openai package when tests/serve-requirements.txt
# installs). Checks the OpenAI chat API (plain and streamed), the JSON errors
# (400, 404, 405, 413), 429 from a full queue, and that a second turn is served
# from the RAM prompt cache with the reply a server without the cache gives.
set -euo pipefail
KVTC="${KVTC_BIN:?KVTC_BIN not set}"
model="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "test_serve: skipped: the default model $model is absent (make test fetches it)"
  exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-serve-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "test_serve: FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -5 "$f"; done; exit 1; }

# A small calibration made here: the default one takes minutes to build.
"$KVTC" calibrate --corpus --model "$model" --chunks 4 --chunk-tokens 512 --rank 256 \
  -o "$tmp/cal.kvtcal" >/dev/null 2>&1 || fail "calibrate"

# start NAME ARGS...: a server on a free port; sets $port
start() {
  local name=$1; shift
  "$KVTC" serve --model "$model" -c "$tmp/cal.kvtcal" --port 0 --port-file "$tmp/$name.port" \
    --threads 2 "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  local pid=$!
  for _ in $(seq 300); do
    [ -s "$tmp/$name.port" ] && break
    kill -0 "$pid" 2>/dev/null || fail "$name: the server exited: $(cat "$tmp/$name.log")"
    sleep 0.2
  done
  port=$(cat "$tmp/$name.port") || fail "$name: no port after 60 s"
  server_pid=$pid
}
# req METHOD PATH [BODY-FILE] -> $code, body in $tmp/out
req() {
  local data=()
  [ $# -ge 3 ] && data=(-H 'Content-Type: application/json' --data-binary "@$3")
  code=$(curl -s -o "$tmp/out" -w '%{http_code}' -X "$1" "${data[@]}" "http://127.0.0.1:$port$2")
}
expect() { # CODE WHAT
  [ "$code" = "$1" ] || fail "$2: HTTP $code, expected $1: $(head -c 300 "$tmp/out")"
}
json() { python3 -c "import json,sys; d=json.load(open('$tmp/out')); print($1)"; }
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
# body FILE MAX_TOKENS STREAM MESSAGES-JSON
body() { printf '{"model":"SmolLM2-135M-Instruct.Q4_1","max_tokens":%s,"stream":%s,"temperature":0,"messages":%s}' "$2" "$3" "$4" >"$1"; }

start a --max-queue 1 --max-body 16K

# ---- the plain endpoints
req GET /health; expect 200 "/health"
[ "$(json 'd["status"]')" = ok ] || fail "/health body"
req GET /v1/models; expect 200 "/v1/models"
[ "$(json 'd["data"][0]["id"]')" = SmolLM2-135M-Instruct.Q4_1 ] || fail "/v1/models id"

# ---- a completion, plain and streamed: the same greedy text
body "$tmp/q.json" 24 false '[{"role":"user","content":"What is the capital of France?"}]'
req POST /v1/chat/completions "$tmp/q.json"; expect 200 "completion"
plain=$(json 'd["choices"][0]["message"]["content"]')
[ -n "$plain" ] || fail "empty completion"
[ "$(json 'd["object"]')" = chat.completion ] || fail "object"
[ "$(json 'd["usage"]["completion_tokens"] > 0 and d["usage"]["total_tokens"] == d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"]')" = True ] || fail "usage"
echo "test_serve: completion: $plain"
body "$tmp/s.json" 24 true '[{"role":"user","content":"What is the capital of France?"}]'
req POST /v1/chat/completions "$tmp/s.json"; expect 200 "streamed completion"
streamed=$(python3 - "$tmp/out" <<'PY'
import json, sys
events = [l[6:] for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
assert events[-1] == "[DONE]", "no [DONE] at the end"
chunks = [json.loads(e) for e in events[:-1]]
assert all(c["object"] == "chat.completion.chunk" for c in chunks)
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
print("".join(c["choices"][0]["delta"].get("content", "") for c in chunks), end="")
PY
) || fail "stream format: $(head -c 300 "$tmp/out")"
[ "$streamed" = "$plain" ] || fail "streamed text '$streamed' differs from '$plain'"

# ---- bad requests: JSON errors, and the server lives on
printf '{"model": "SmolLM2' >"$tmp/bad.json"
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "truncated JSON"
[ "$(json 'd["error"]["type"]')" = invalid_request_error ] || fail "error type"
head -c 3000 /dev/urandom >"$tmp/bad.json"
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "binary body"
echo '{"model":"SmolLM2-135M-Instruct.Q4_1"}' >"$tmp/bad.json"
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "no messages"
body "$tmp/bad.json" 8 false '[{"role":"user","content":7}]'
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "content not a string"
body "$tmp/bad.json" 8 false '[{"role":"wizard","content":"hi"}]'
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "unknown role"
body "$tmp/bad.json" 0 false '[{"role":"user","content":"hi"}]'
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "max_tokens 0"
body "$tmp/bad.json" 8 '"yes"' '[{"role":"user","content":"hi"}]'
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "stream not a boolean"
echo '{"model":"SmolLM2-135M-Instruct.Q4_1","temperature":0.7,"messages":[{"role":"user","content":"hi"}]}' >"$tmp/bad.json"
req POST /v1/chat/completions "$tmp/bad.json"; expect 400 "temperature 0.7"
echo '{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}' >"$tmp/bad.json"
req POST /v1/chat/completions "$tmp/bad.json"; expect 404 "unknown model"
python3 -c "import json; print(json.dumps({'model':'SmolLM2-135M-Instruct.Q4_1','messages':[{'role':'user','content':'x'*20000}]}))" >"$tmp/big.json"
req POST /v1/chat/completions "$tmp/big.json"; expect 413 "body over --max-body"
[ "$(json 'd["error"]["code"]')" = request_too_large ] || fail "413 code"
req GET /v1/nothing; expect 404 "unknown path"
req GET /v1/chat/completions; expect 405 "GET on completions"
kill -0 "$server_pid" || fail "the server died on bad input"

# ---- a full queue: with --max-queue 1 one request runs, one waits, the rest get 429.
# The first is sent alone and the others once the engine runs it: sent together,
# the first could still be waiting for the worker when the second came (a slow
# machine, a sanitizer build), and the second would be refused.
for i in 1 2 3 4 5; do
  body "$tmp/c$i.json" 48 false "[{\"role\":\"user\",\"content\":\"Count from $i to 50.\"}]"
  curl -s -o "$tmp/c$i.out" -w '%{http_code}' --data-binary "@$tmp/c$i.json" \
    "http://127.0.0.1:$port/v1/chat/completions" >"$tmp/c$i.code" &
  if [ "$i" = 1 ]; then
    for _ in $(seq 300); do [ "$(metric kvtc_engine_busy)" = 1 ] && break; sleep 0.1; done
    [ "$(metric kvtc_engine_busy)" = 1 ] || fail "the engine never took the first request"
  fi
done
wait_curls() { for p in $(jobs -p); do case " ${pids[*]} " in *" $p "*) ;; *) wait "$p" || true;; esac; done; }
wait_curls
n200=0; n429=0
for i in 1 2 3 4 5; do
  case "$(cat "$tmp/c$i.code")" in
    200) n200=$((n200 + 1));;
    429) n429=$((n429 + 1)); grep -q '"type":"rate_limit_error"' "$tmp/c$i.out" || fail "429 without a JSON error";;
    *) fail "concurrent request $i: HTTP $(cat "$tmp/c$i.code")";;
  esac
done
echo "test_serve: 5 concurrent requests, --max-queue 1: $n200 served, $n429 refused with 429"
[ "$n429" -ge 1 ] && [ "$n200" -ge 2 ] || fail "expected >= 2 served and >= 1 refused"
[ "$(metric 'kvtc_requests_total{code="429"}')" = "$n429" ] || fail "429s in /metrics"

# ---- the prompt cache: a second turn extends the first and restores its prefix
fox="Here is a story. Once upon a time there was a little fox who lived in a dark forest near a river. Every morning the fox went to the river to drink and to watch the fish. One day the fox met an old turtle who told him about a city beyond the mountains where foxes and people lived together. The fox decided to travel there. Summarize the story in one sentence."
story="Once upon a time, in a village between two rivers, there lived a potter named Ilse who made bowls for everyone in the valley. Every spring the rivers flooded and the villagers carried their belongings to the hill, and every autumn they came back down and Ilse made new bowls for the ones that had broken. One year a traveller arrived with a cart full of metal pots that never broke, and the villagers bought them all. Ilse had no work for a whole winter. She walked along the rivers, collecting clay of different colours, and began to make tiles instead: blue from the northern river, red from the southern one, and white from the hill. In spring, when the flood came, the metal pots floated away, but the tiles Ilse had set into the walls of the houses kept the water out. After that the village was known for its coloured walls, and travellers came from far away to see them. Tell me in two sentences what the story is about."
# two_turns NAME TEXT QUESTION: turn 1 on server a, then writes turn 2 to $tmp/NAME.json
two_turns() {
  local turn1="[{\"role\":\"user\",\"content\":\"$2\"}]"
  body "$tmp/$1-1.json" 40 false "$turn1"
  req POST /v1/chat/completions "$tmp/$1-1.json"; expect 200 "$1: turn 1"
  local reply1
  reply1=$(json 'json.dumps(d["choices"][0]["message"]["content"])')
  body "$tmp/$1.json" 24 false "${turn1%]},{\"role\":\"assistant\",\"content\":$reply1},{\"role\":\"user\",\"content\":\"$3\"}]"
  sleep 1 # the worker stores turn 1 after replying
}
# turn2 NAME: sends turn 2; sets cached, reply
turn2() {
  req POST /v1/chat/completions "$tmp/$1.json"; expect 200 "$1: turn 2"
  cached=$(json 'd["usage"]["prompt_tokens_details"]["cached_tokens"]')
  reply=$(json 'd["choices"][0]["message"]["content"]')
  echo "test_serve: $1 turn 2 on port $port: $cached of $(json 'd["usage"]["prompt_tokens"]') prompt tokens from the RAM tier: $reply"
}
two_turns fox "$fox" "What did the turtle say?"
hits0=$(metric 'kvtc_cache_hits_total{tier="ram"}')
turn2 fox; fox_cached=$cached; fox_reply=$reply
# 128 tokens, within the stream's raw sinks (4) + window (128): restored exactly (fp16)
[ "$fox_cached" -eq 128 ] || fail "fox: $fox_cached tokens restored, expected 128"
[ "$(metric 'kvtc_cache_hits_total{tier="ram"}')" -gt "$hits0" ] || fail "no RAM-tier hit in /metrics"
two_turns story "$story" "What colour came from the hill?"
turn2 story; story_cached=$cached; story_reply=$reply
# beyond sinks + window: compressed tokens were decoded into the engine
[ "$story_cached" -ge 192 ] || fail "story: only $story_cached tokens restored"
echo "test_serve: RAM tier: $(metric 'kvtc_cache_entries{tier="ram"}') entries, $(metric 'kvtc_cache_bytes{tier="ram"}') bytes"

# the same turns on a server without the prompt cache
start b --ram-budget 0
turn2 fox
[ "$cached" = 0 ] || fail "cache used with --ram-budget 0"
# an exactly restored prefix gives the recomputed greedy reply
[ "$reply" = "$fox_reply" ] || fail "fox: restored reply '$fox_reply' differs from recomputed '$reply'"
turn2 story
# a lossy restore (this test's small calibration) may change greedy text: shown, not asserted
python3 -c "import os,sys; a,b=sys.argv[1:]; n=len(os.path.commonprefix([a,b])); print(f'test_serve: story: restored and recomputed replies agree on {n} of {max(len(a),len(b))} characters')" "$story_reply" "$reply"
[ "$(metric 'kvtc_cache_hits_total{tier="ram"}')" = 0 ] || fail "hits with the cache off"

# ---- a client leaving mid-stream stops its generation; the server serves on
body "$tmp/long.json" 200 true '[{"role":"user","content":"Write a long story about a dragon."}]'
gen0=$(metric kvtc_completion_tokens_total)
curl -s -o /dev/null --max-time 1 --data-binary "@$tmp/long.json" \
  "http://127.0.0.1:$port/v1/chat/completions" || true
req POST /v1/chat/completions "$tmp/q.json"; expect 200 "completion after a client left"
[ "$(json 'd["choices"][0]["message"]["content"]')" = "$plain" ] || fail "reply changed after a client left"
gen=$(( $(metric kvtc_completion_tokens_total) - gen0 - $(json 'd["usage"]["completion_tokens"]') ))
echo "test_serve: the stream left after 1 s generated $gen of 200 tokens"
[ "$gen" -lt 200 ] || fail "generation went on after the client left"

# ---- a port in use: one line, exit 1
if "$KVTC" serve --model "$model" -c "$tmp/cal.kvtcal" --port "$port" >"$tmp/busy.out" 2>&1; then
  fail "a second server on port $port started"
fi
grep -q "cannot listen on 127.0.0.1:$port" "$tmp/busy.out" || fail "port in use: $(cat "$tmp/busy.out")"
kill -0 "$server_pid" || fail "server b died"

# ---- the openai package as the client, when it can be installed
source "${KVTC_SOURCE_DIR:-..}/tests/support/openai_venv.sh"
openai_venv test_serve
if [ -n "$openai_python" ]; then
  "$openai_python" - "$port" "$plain" <<'PY' || fail "openai client"
import sys, openai
c = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="none", max_retries=0)
assert [m.id for m in c.models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]
msgs = [{"role": "user", "content": "What is the capital of France?"}]
r = c.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=24, temperature=0)
assert r.choices[0].message.content == sys.argv[2], r
s = c.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=24, temperature=0, stream=True)
assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == sys.argv[2]
try:
    c.chat.completions.create(model="nope", messages=msgs)
    raise SystemExit("no error for an unknown model")
except openai.NotFoundError:
    pass
print("test_serve: openai", openai.__version__, "client: plain, streamed and error replies as expected")
PY
fi
echo "test_serve: ok"
