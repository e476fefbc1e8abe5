#!/usr/bin/env bash
# Issue 13, llama-server: the real llama-server (scripts/build-llama-cpp.sh
# --server) with --slot-save-path answers a first turn; its slot is saved,
# compressed and decompressed by kvtc, the slot erased and restored from kvtc's
# file, and the next turn must give the same reply as it did without the round
# trip. The slot (a short chat, within the calibration's raw sinks + window)
# comes back bit-identical.
set -euo pipefail
kvtc="${KVTC_BIN:?KVTC_BIN not set}"
src="${KVTC_SOURCE_DIR:?KVTC_SOURCE_DIR not set}"
lcpp=$(nice -n 10 bash "$src/scripts/build-llama-cpp.sh" --server) || {
  echo "FAIL: scripts/build-llama-cpp.sh --server could not build llama-server"; exit 1; }
model=${KVTC_LLAMA_MODEL:-$("$kvtc" fetch)}
tmp=$(mktemp -d)
server_pid=
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  [ -z "$server_pid" ] || wait "$server_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ ! -f "$tmp/server.log" ] || tail -5 "$tmp/server.log"; exit 1; }
mkdir -p "$tmp/slots"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$lcpp/build/bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" -np 1 -c 4096 -t 2 \
  --slot-save-path "$tmp/slots/" >"$tmp/server.log" 2>&1 &
server_pid=$!

# one client for every step: http://127.0.0.1:PORT, bounded waits
client() { python3 - "$port" "$@" <<'PY'
import json, sys, time, urllib.request
port, step = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)
prompt = ("<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n"
          "<|im_start|>assistant\n")
if step == "wait":
    for _ in range(240):
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    sys.exit(0)
        except Exception:
            time.sleep(0.5)
    sys.exit(1)
if step == "long":  # a long text in the slot, for a calibration
    post("/completion", {"prompt": open(sys.argv[3]).read()[:3000], "n_predict": 1,
                         "cache_prompt": True, "id_slot": 0})
    sys.exit(0)
if step == "turn":  # turn N: the prompt, then each earlier reply and a follow-up
    history = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else []
    text = prompt + "".join(h + "<|im_end|>\n<|im_start|>user\nAnd one more?<|im_end|>\n"
                                "<|im_start|>assistant\n" for h in history)
    r = post("/completion", {"prompt": text, "n_predict": 16, "temperature": 0, "top_k": 1,
                             "cache_prompt": True, "id_slot": 0})
    print(json.dumps(r["content"]))
else:  # save|restore|erase FILE
    body = {"filename": sys.argv[3]} if len(sys.argv) > 3 else {}
    r = post(f"/slots/0?action={step}", body)
    print(json.dumps(r))
PY
}
client wait || fail "llama-server did not start"
# a calibration from a long slot of llama-server's own
client long "$src/README.md" || fail "long prompt failed"
client save long.bin >/dev/null || fail "slot save failed"
"$kvtc" calibrate --model "$model" -o "$tmp/slot.kvtcal" "$tmp/slots/long.bin" >/dev/null
client erase >/dev/null || fail "slot erase failed"
client turn >"$tmp/reply1.json"
echo "[$(cat "$tmp/reply1.json")]" >"$tmp/history.json"
client save slot.bin >/dev/null || fail "slot save failed"
client turn "$tmp/history.json" >"$tmp/reply2.ref" || fail "second turn failed"

# kvtc: the slot file in, a .kvtc and back; the layout llama-server used comes from info
"$kvtc" info --json --model "$model" "$tmp/slots/slot.bin" >"$tmp/slot.json"
v_trans=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["v_trans"])' "$tmp/slot.json")
packed=$(python3 -c 'import json,sys; print("--server-tokens" if json.load(open(sys.argv[1]))["server_tokens"] else "")' "$tmp/slot.json")
"$kvtc" compress -c "$tmp/slot.kvtcal" -o "$tmp/slot.kvtc" "$tmp/slots/slot.bin" >/dev/null
"$kvtc" info --json "$tmp/slot.kvtc" >"$tmp/stream.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["token_ids"] == 1 and d["compressed_tokens"] == 0 else 1)' \
  "$tmp/stream.json" || fail "the slot's stream lacks its token ids or is not raw"
"$kvtc" decompress -c "$tmp/slot.kvtcal" --format ggsq --v-trans "$v_trans" $packed \
  -o "$tmp/slots/back.bin" "$tmp/slot.kvtc" >/dev/null
cmp "$tmp/slots/slot.bin" "$tmp/slots/back.bin" || fail "the slot file changed through kvtc"

client erase >/dev/null || fail "slot erase failed"
client restore back.bin >"$tmp/restore.json" || fail "llama-server refused kvtc's slot file"
client turn "$tmp/history.json" >"$tmp/reply2.got" || fail "turn after the restore failed"
cmp -s "$tmp/reply2.ref" "$tmp/reply2.got" ||
  fail "reply after the restore $(cat "$tmp/reply2.got") differs from $(cat "$tmp/reply2.ref")"
echo "llama-server slot of $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"])' "$tmp/slot.json") tokens" \
  "(V transposed: $v_trans) saved, through kvtc bit-identical, restored; next reply the same:" \
  "$(cat "$tmp/reply2.got")"
echo "test_llama_server: ok"
