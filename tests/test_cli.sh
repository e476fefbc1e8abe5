#!/usr/bin/env bash
# End to end through the kvtc tool ($KVTC_BIN): synthetic low-rank caches ->
# calibrate -> compress -> info -> decompress -> compare, stats, help, and bad
# inputs that must fail with one line naming the file and leave no output.
set -u

KVTC=${KVTC_BIN:-./kvtc}
if ! command -v python3 >/dev/null; then
  echo "test_cli: skipped: python3 not found"
  exit 77
fi
if [ ! -x "$KVTC" ]; then
  echo "test_cli: $KVTC is not an executable (set KVTC_BIN)"
  exit 1
fi
KVTC=$(cd "$(dirname "$KVTC")" && pwd)/$(basename "$KVTC") # the test runs in its own folder
DATA=$(cd "$(dirname "${BASH_SOURCE[0]}")/data" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-cli-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
  echo "test_cli: FAIL: $*"
  failures=$((failures + 1))
}

# ---- synthetic caches (python3 standard library only) ---------------------------
cat >"$work/st.py" <<'EOF'
"""Safetensors KV caches without numpy: write synthetic ones, compare two."""
import json, math, random, struct, sys

def write(path, layers, heads, dim, tokens, pos0, dtype, seed, theta=10000.0, model="synthetic"):
    # One "model": a mean and a few directions with decaying variance per kind
    # (seeded by the shape only); `seed` picks the tokens, as a prompt would.
    p = layers * heads * dim
    model_rng = random.Random(1234 + p)
    kinds = []
    for kind in range(2):
        mean = [model_rng.gauss(0, 0.5) for _ in range(p)]
        dirs = [[model_rng.gauss(0, 1) / math.sqrt(p) * 3.0 / (1 + r) ** 0.8 for _ in range(p)]
                for r in range(6)]
        kinds.append((mean, dirs))
    rng = random.Random(seed)
    data = {}  # name -> flat [heads][tokens][dim] list of floats
    for kind, (mean, dirs) in enumerate(kinds):
        out = [[0.0] * (heads * tokens * dim) for _ in range(layers)]
        for t in range(tokens):
            coef = [rng.gauss(0, 1) for _ in dirs]
            row = [mean[i] + sum(c * d[i] for c, d in zip(coef, dirs)) + rng.gauss(0, 0.01)
                   for i in range(p)]
            for l in range(layers):
                for h in range(heads):
                    v = row[(l * heads + h) * dim:(l * heads + h + 1) * dim]
                    if kind == 0:  # keys carry interleaved RoPE at their position
                        pos = pos0 + t
                        for i in range(dim // 2):
                            a = pos * theta ** (-2.0 * i / dim)
                            x, y = v[2 * i], v[2 * i + 1]
                            v[2 * i] = x * math.cos(a) - y * math.sin(a)
                            v[2 * i + 1] = x * math.sin(a) + y * math.cos(a)
                    base = (h * tokens + t) * dim
                    out[l][base:base + dim] = v
        for l in range(layers):
            data["layers.%d.%s" % (l, ("key", "value")[kind])] = out[l]
    header, blobs, offset = {}, [], 0
    header["__metadata__"] = {"rope_theta": repr(theta), "rope_style": "interleaved",
                              "pos0": str(pos0), "model": model}
    for l in range(layers):
        for kind in ("key", "value"):
            name = "layers.%d.%s" % (l, kind)
            blob = encode(data[name], dtype)
            header[name] = {"dtype": dtype, "shape": [heads, tokens, dim],
                            "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

def encode(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    words = struct.unpack("<%dI" % len(values), struct.pack("<%df" % len(values), *values))
    return struct.pack("<%dH" % len(values),
                       *[((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF for w in words])

def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        tensors[name] = (t["dtype"], t["shape"], blob[8 + n + b:8 + n + e])
    return meta, tensors

def decode(dtype, raw):
    if dtype == "F32":
        return struct.unpack("<%df" % (len(raw) // 4), raw)
    if dtype == "F16":
        return struct.unpack("<%de" % (len(raw) // 2), raw)
    return [struct.unpack("<f", struct.pack("<I", w << 16))[0]
            for w in struct.unpack("<%dH" % (len(raw) // 2), raw)]

def compare(orig, restored, sinks, window, max_error):
    """Same names, dtypes, shapes and metadata; raw tokens bit-exact; small error."""
    meta_a, a = read(orig)
    meta_b, b = read(restored)
    problems = []
    if sorted(a) != sorted(b):
        problems.append("tensor names differ: %s vs %s" % (sorted(a), sorted(b)))
    for key in ("rope_theta", "rope_style", "pos0", "model"):
        va, vb = meta_a.get(key), meta_b.get(key)
        same = float(va) == float(vb) if key == "rope_theta" else va == vb
        if not same:
            problems.append("metadata %s: %r vs %r" % (key, va, vb))
    diff, energy = [0.0, 0.0], [0.0, 0.0]
    for name in sorted(set(a) & set(b)):
        (da, sa, ra), (db, sb, rb) = a[name], b[name]
        if da != db or sa != sb:
            problems.append("%s: %s %s vs %s %s" % (name, da, sa, db, sb))
            continue
        heads, tokens, dim = sa
        esize = len(ra) // (heads * tokens * dim)
        kind = 0 if name.endswith(".key") else 1
        xa, xb = decode(da, ra), decode(db, rb)
        for h in range(heads):
            for t in range(tokens):
                lo = ((h * tokens + t) * dim)
                if t < sinks or t >= tokens - window:
                    if ra[lo * esize:(lo + dim) * esize] != rb[lo * esize:(lo + dim) * esize]:
                        problems.append("%s head %d token %d: raw token not bit-exact" % (name, h, t))
                        break
                else:
                    for i in range(lo, lo + dim):
                        diff[kind] += (xa[i] - xb[i]) ** 2
                        energy[kind] += xa[i] ** 2
    for kind in range(2):
        if energy[kind] and diff[kind] / energy[kind] > max_error:
            problems.append("%s relative error %.4g > %g" % (("keys", "values")[kind],
                                                            diff[kind] / energy[kind], max_error))
    for p in problems[:10]:
        print("  " + p)
    return not problems

if __name__ == "__main__":
    if sys.argv[1] == "write":
        path, layers, heads, dim, tokens, pos0, dtype, seed = sys.argv[2:10]
        write(path, int(layers), int(heads), int(dim), int(tokens), int(pos0), dtype, int(seed))
    elif sys.argv[1] == "compare":
        ok = compare(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                     float(sys.argv[6]))
        sys.exit(0 if ok else 1)
EOF
st() { python3 "$work/st.py" "$@"; }

cd "$work" || exit 1
for i in 0 1 2; do
  st write "calib_$i.safetensors" 2 2 16 420 0 F16 $((i + 1)) || fail "making calib_$i"
done
st write test.safetensors 2 2 16 500 10 F16 100 || fail "making test cache"
st write test32.safetensors 2 2 16 300 0 F32 101 || fail "making F32 cache"
st write testbf.safetensors 2 2 16 300 7 BF16 102 || fail "making BF16 cache"
st write other.safetensors 1 2 16 300 0 F16 103 || fail "making other-model cache"

# JSON field of a file: json_get FILE EXPR (python expression on `d`).
json_get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# ---- the happy path --------------------------------------------------------------
"$KVTC" calibrate -o calib.kvtcal --threads 2 calib_0.safetensors calib_1.safetensors \
  calib_2.safetensors >calibrate.out 2>calibrate.err || fail "calibrate: $(cat calibrate.err)"
grep -q "variance explained" calibrate.out || fail "calibrate printed no summary"
grep -Eq "outliers left out +0 +0 " calibrate.out || fail "calibrate: outliers on clean caches: $(grep outliers calibrate.out)"

# One token of 60000s (energy ~1e9 x the others') in a calibration cache is
# left out, and said so.
python3 - calib_0.safetensors outlier.safetensors <<'EOF' || fail "making the outlier cache"
import json, struct, sys
blob = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", blob[:8])[0]
t = json.loads(blob[8:8 + n])["layers.1.value"]
heads, tokens, dim = t["shape"]
at = 8 + n + t["data_offsets"][0] + (200 * dim) * 2  # head 0, token 200, F16
blob[at:at + 2 * dim] = struct.pack("<%de" % dim, *([60000.0] * dim))
open(sys.argv[2], "wb").write(blob)
EOF
"$KVTC" calibrate -o outlier.kvtcal outlier.safetensors calib_1.safetensors >outlier.out 2>&1 ||
  fail "calibrate with an outlier token: $(cat outlier.out)"
grep -Eq "outliers left out +0 +1 " outlier.out || fail "calibrate: the outlier token was not reported left out: $(grep outliers outlier.out)"
"$KVTC" info --json calib.kvtcal >calib.json || fail "info --json calib.kvtcal"
[ "$(json_get calib.json 'd["kind"]')" = kvtcal ] || fail "calibration kind"
python3 - calib.json <<'EOF' || fail "calibration info values"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["layers"] == 2 and d["kv_heads"] == 2 and d["head_dim"] == 16, d
assert d["sinks"] == 4 and d["window"] == 128, d
for kind in ("keys", "values"):
    k = d[kind]
    assert 1 <= k["rank"] <= 64 and k["rows"] > 500, k
    fractions = [e["fraction"] for e in k["explained_variance"]]
    assert all(0 <= f <= 1.000001 for f in fractions) and fractions == sorted(fractions), k
    assert fractions[-1] > 0.99, k  # six directions plus tiny noise
assert len(d["fingerprint"]) == 64
EOF

"$KVTC" compress -c calib.kvtcal --budget-ratio 8 --threads 2 -o test.kvtc test.safetensors \
  >compress.out 2>compress.err || fail "compress: $(cat compress.err)"
"$KVTC" info test.kvtc >info.txt || fail "info test.kvtc"
grep -q "plan keys" info.txt || fail "info shows no key plan"
"$KVTC" info --json test.kvtc >stream.json || fail "info --json test.kvtc"
python3 - stream.json calib.json <<'EOF' || fail "stream info values"
import json, sys
d = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))
assert d["kind"] == "kvtc" and d["tokens"] == 500 and d["pos0"] == 10, d
assert d["compressed_tokens"] == 500 - 4 - 128 and d["sinks"] == 4 and d["window"] == 128, d
assert d["dtype"] == "F16" and d["model"] == "synthetic", d
assert d["calibration_fingerprint"] == c["fingerprint"], d
assert d["compressed_bytes"] + d["raw_bytes"] < d["total_bytes"], d
for kind in ("keys", "values"):
    plan = d["plans"][kind]
    assert 0 < plan["bits_per_token"] <= plan["budget_bits"] == 16 * 64 // 8, plan
    runs = plan["runs"]
    assert runs and runs[0]["start"] == 0, plan
    assert all(a["end"] == b["start"] for a, b in zip(runs, runs[1:])), plan
    assert sum(r["groups"] for r in runs) == plan["groups"], plan
EOF
"$KVTC" info --json test.safetensors >cache.json || fail "info --json test.safetensors"
[ "$(json_get cache.json 'd["kind"], d["tokens"], d["pos0"], d["dtype"]')" = "safetensors 500 10 F16" ] ||
  fail "cache info: $(cat cache.json)"

"$KVTC" decompress -c calib.kvtcal --threads 2 -o restored.safetensors test.kvtc \
  >decompress.out 2>decompress.err || fail "decompress: $(cat decompress.err)"
st compare test.safetensors restored.safetensors 4 128 0.02 || fail "restored cache differs"

# Other dtypes come back in their own dtype, raw tokens bit-exact.
for name in test32 testbf; do
  "$KVTC" compress -c calib.kvtcal -r 4 -o $name.kvtc $name.safetensors >/dev/null &&
    "$KVTC" decompress -c calib.kvtcal -o $name.out.safetensors $name.kvtc >/dev/null ||
    fail "$name round trip"
  st compare $name.safetensors $name.out.safetensors 4 128 0.02 || fail "$name restored differs"
done

# ---- stats -----------------------------------------------------------------------
for r in 4 16; do
  "$KVTC" stats --json -c calib.kvtcal --ratio $r test.safetensors >stats$r.json ||
    fail "stats --ratio $r"
done
python3 - stats4.json stats16.json <<'EOF' || fail "stats values"
import json, math, sys
a = json.load(open(sys.argv[1]))
b = json.load(open(sys.argv[2]))
keys = ["ratio", "file_ratio", "k_rel_error", "v_rel_error", "k_rel_error_raw", "v_rel_error_raw",
        "tokens", "compressed_tokens",
        "k_bits_per_token", "v_bits_per_token", "compressed_bytes", "total_bytes",
        "compress_ms", "decompress_ms"]
for d in (a, b):
    missing = [k for k in keys if k not in d]
    assert not missing, missing
    assert d["tokens"] == 500 and d["compressed_tokens"] == 368, d
    p = 64
    assert math.isclose(d["ratio"], 368 * p * 2 * 2 / d["compressed_bytes"], rel_tol=1e-9), d
    assert math.isclose(d["file_ratio"], 500 * p * 2 * 2 / d["total_bytes"], rel_tol=1e-9), d
    assert d["ratio"] > 1 and d["file_ratio"] > 1, d
    assert 0 <= d["k_rel_error"] < 0.2 and 0 <= d["v_rel_error"] < 0.2, d
    # The mean's energy only adds to the raw energy's denominator (up to rounding).
    for k in "kv":
        assert d[f"{k}_rel_error_raw"] <= d[f"{k}_rel_error"] * (1 + 1e-6), d
    assert d["compress_ms"] >= 0 and d["decompress_ms"] >= 0 and d["raw_exact"] is True, d
# A higher target spends fewer bits.
assert b["ratio"] > a["ratio"], (a["ratio"], b["ratio"])
assert b["k_bits_per_token"] <= a["k_bits_per_token"], (a, b)
assert a["k_rel_error"] < 0.02 and a["v_rel_error"] < 0.02, a
assert b["k_rel_error"] >= a["k_rel_error"] and b["v_rel_error"] >= a["v_rel_error"], (a, b)
EOF
# --budget-ratio: the pre-DEFLATE cap, floor(16 p / R) bits per token and kind,
# stores less than --ratio R (DEFLATE gains on top); --bytes-per-token B stores
# B bytes per compressed token (p = 64: plans are coarse, so within 10% here;
# tests/test_codec_roundtrip.c checks 3% on 512 features).
"$KVTC" stats --json -c calib.kvtcal --budget-ratio 8 test.safetensors >statsb.json ||
  fail "stats --budget-ratio"
"$KVTC" stats --json -c calib.kvtcal --bytes-per-token 40 test.safetensors >statsB.json ||
  fail "stats --bytes-per-token"
python3 - statsb.json statsB.json <<'EOF' || fail "stats --budget-ratio / --bytes-per-token values"
import json, sys
b = json.load(open(sys.argv[1]))
B = json.load(open(sys.argv[2]))
assert b["k_bits_per_token"] <= 16 * 64 // 8 and b["v_bits_per_token"] <= 16 * 64 // 8, b
assert b["ratio"] >= 8, b
assert abs(B["compressed_bytes"] / 368 / 40 - 1) <= 0.10, B
EOF
"$KVTC" stats -c calib.kvtcal --k-ratio 4 --v-ratio 16 test.safetensors >stats.txt ||
  fail "stats (text)"
grep -q "relative error" stats.txt || fail "stats text lacks the error"

# ---- help and usage ----------------------------------------------------------------
# Every command `kvtc --help` lists.
commands=$("$KVTC" --help | sed -n '/^commands:/,/^$/s/^  \([a-z]\+\) .*/\1/p')
[ "$(echo "$commands" | wc -w)" -ge 5 ] || fail "kvtc --help lists no commands"
for c in $commands; do
  "$KVTC" $c --help >help.out 2>&1 || fail "kvtc $c --help exits $?"
  grep -q "usage" help.out || fail "kvtc $c --help prints no usage"
  "$KVTC" help $c >/dev/null 2>&1 || fail "kvtc help $c exits $?"
done
"$KVTC" --help >/dev/null || fail "kvtc --help"
"$KVTC" --version | grep -q "^kvtc [0-9]" || fail "kvtc --version"
"$KVTC" >/dev/null 2>&1
[ $? -eq 2 ] || fail "kvtc without a command should exit 2"
"$KVTC" frobnicate >/dev/null 2>&1
[ $? -eq 2 ] || fail "an unknown command should exit 2"

# ---- bad inputs ----------------------------------------------------------------------
# expect_fail STATUS NEEDLE OUTPUT -- command...: exits STATUS, one line on
# stderr containing NEEDLE, and OUTPUT (if not "-") does not exist afterwards.
expect_fail() {
  local want=$1 needle=$2 output=$3
  shift 4
  rm -f err.txt
  "$@" >/dev/null 2>err.txt
  local got=$?
  local what="$*"
  [ "$got" -eq "$want" ] || fail "'$what' exited $got, want $want ($(head -c 300 err.txt))"
  [ "$(wc -l <err.txt)" -eq 1 ] || fail "'$what' printed $(wc -l <err.txt) lines on stderr: $(cat err.txt)"
  grep -qF -- "$needle" err.txt || fail "'$what': message '$(cat err.txt)' lacks '$needle'"
  if [ "$output" != - ] && [ -e "$output" ]; then
    fail "'$what' left $output behind"
  fi
}

expect_fail 1 missing.safetensors out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal -r 8 -o out.kvtc missing.safetensors
# A FIFO as input is refused at once (opening one would wait for a writer).
mkfifo input.fifo && expect_fail 1 "input.fifo: not a regular file" out.kvtc -- \
  timeout 20 "$KVTC" compress -c calib.kvtcal -r 8 -o out.kvtc input.fifo
# Control characters in a file name or an argument never reach the terminal raw.
evil=$'evil\e[2J\r.safetensors'
: >"$evil"
expect_fail 1 "evil?[2J?.safetensors" out.kvtc -- "$KVTC" compress -c calib.kvtcal -r 8 -o out.kvtc "$evil"
expect_fail 2 "unknown option '--x?[2J'" - -- "$KVTC" info $'--x\e[2J'
expect_fail 1 missing.kvtcal out.kvtc -- \
  "$KVTC" compress -c missing.kvtcal -r 8 -o out.kvtc test.safetensors
expect_fail 1 notes.txt out.kvtc -- sh -c "echo 'just text' >notes.txt &&
  '$KVTC' compress -c calib.kvtcal -r 8 -o out.kvtc notes.txt"
expect_fail 1 calib.kvtcal out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal -r 8 -o out.kvtc calib.kvtcal
expect_fail 1 test.safetensors out.kvtc -- \
  "$KVTC" compress -c test.safetensors -r 8 -o out.kvtc test.safetensors
expect_fail 1 other.safetensors out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal -r 8 -o out.kvtc other.safetensors
for bad in abc 1 0.5 -3 "" 16x inf; do
  expect_fail 2 "--ratio" out.kvtc -- \
    "$KVTC" compress -c calib.kvtcal --ratio "$bad" -o out.kvtc test.safetensors
done
for bad in abc 0 -3 "" inf; do
  expect_fail 2 "--bytes-per-token" out.kvtc -- \
    "$KVTC" compress -c calib.kvtcal --bytes-per-token "$bad" -o out.kvtc test.safetensors
done
expect_fail 2 "--budget-ratio" out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal --ratio 8 --budget-ratio 8 -o out.kvtc test.safetensors
expect_fail 2 "--budget-ratio" out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal --budget-ratio 8 --bytes-per-token 30 -o out.kvtc test.safetensors
expect_fail 2 "--threads" out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal --threads 0 -o out.kvtc test.safetensors
expect_fail 2 "--bogus" out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal --bogus -o out.kvtc test.safetensors
expect_fail 2 "-o" - -- "$KVTC" compress -c calib.kvtcal test.safetensors
expect_fail 1 no-such-folder/out.kvtc no-such-folder/out.kvtc -- \
  "$KVTC" compress -c calib.kvtcal -r 8 -o no-such-folder/out.kvtc test.safetensors

# Corrupt and truncated streams.
size=$(wc -c <test.kvtc)
python3 - test.kvtc corrupt.kvtc truncated.kvtc <<'EOF'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
cut = data[:len(data) * 2 // 3]
data[len(data) // 2] ^= 0x55
open(sys.argv[2], "wb").write(data)
open(sys.argv[3], "wb").write(cut)
EOF
for bad in corrupt.kvtc truncated.kvtc; do
  expect_fail 1 $bad out.safetensors -- \
    "$KVTC" decompress -c calib.kvtcal -o out.safetensors $bad
done
expect_fail 1 test.safetensors out.safetensors -- \
  "$KVTC" decompress -c calib.kvtcal -o out.safetensors test.safetensors
expect_fail 1 "over the limit" out.safetensors -- \
  "$KVTC" decompress -c calib.kvtcal --max-output 1K -o out.safetensors test.kvtc
expect_fail 2 "--max-output" out.safetensors -- \
  "$KVTC" decompress -c calib.kvtcal --max-output 0 -o out.safetensors test.kvtc
"$KVTC" decompress -c calib.kvtcal --max-output 1G -o out.safetensors test.kvtc >/dev/null ||
  fail "decompress under a limit it fits"
rm -f out.safetensors
# A calibration of the same shape fitted on other data: the fingerprint differs.
"$KVTC" calibrate -o calib2.kvtcal --rank 8 calib_0.safetensors >/dev/null 2>&1 ||
  fail "second calibration"
expect_fail 1 test.kvtc out.safetensors -- \
  "$KVTC" decompress -c calib2.kvtcal -o out.safetensors test.kvtc
[ "$(wc -c <test.kvtc)" -eq "$size" ] || fail "test.kvtc changed"

expect_fail 1 notes.txt - -- "$KVTC" info notes.txt
expect_fail 1 truncated.kvtc - -- "$KVTC" info truncated.kvtc
expect_fail 1 missing.kvtc - -- "$KVTC" info missing.kvtc
expect_fail 2 "exactly one" - -- "$KVTC" info
# Calibrating on caches of two models fails on the second and writes nothing.
expect_fail 1 other.safetensors bad.kvtcal -- \
  "$KVTC" calibrate -o bad.kvtcal test.safetensors other.safetensors
expect_fail 1 truncated.kvtc - -- "$KVTC" stats -c calib.kvtcal -r 8 truncated.kvtc
# --corpus: its options without it, caches with it, a model without a tokenizer
expect_fail 2 "need --corpus" bad.kvtcal -- \
  "$KVTC" calibrate -o bad.kvtcal --chunks 4 calib_0.safetensors
expect_fail 2 "takes no caches" bad.kvtcal -- \
  "$KVTC" calibrate -o bad.kvtcal --corpus calib_0.safetensors
expect_fail 2 "--chunks" bad.kvtcal -- "$KVTC" calibrate -o bad.kvtcal --corpus --chunks 0
expect_fail 1 "tokenizer" bad.kvtcal -- \
  "$KVTC" calibrate -o bad.kvtcal --corpus --model "$DATA/tiny-qwen2.gguf"

leftovers=$(find . -name '.kvtc-tmp.*' | head -5)
[ -z "$leftovers" ] || fail "temporary files left: $leftovers"

if [ $failures -ne 0 ]; then
  echo "test_cli: $failures failures"
  exit 1
fi
echo "test_cli: ok"
