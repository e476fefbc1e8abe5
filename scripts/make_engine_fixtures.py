#!/usr/bin/env python3
"""Writes tests/data/engine_fixtures.txt: logits and greedy continuations of
an independent reference forward pass, for tests/test_engine.c.

The reference is written from the model definitions, not from the engine:
the `gguf` package (PyPI) reads and dequantizes the GGUF, a llama2.c
checkpoint is read with numpy, and the forward pass is plain numpy that
recomputes the whole sequence for every generated token (no KV cache).

It also writes tests/data/tiny-qwen2.gguf, a small random model of arch
qwen2 (NeoX RoPE, Q/K/V biases, separate output matrix), so that those paths
are checked without a real qwen2 model.

Run once, in a throwaway virtual environment:
    python3 -m venv /tmp/fixtures-venv
    /tmp/fixtures-venv/bin/pip install gguf numpy
    /tmp/fixtures-venv/bin/python scripts/make_engine_fixtures.py \
        --gguf ~/.cache/kvtc/SmolLM2-135M-Instruct.Q4_1.gguf \
        --llama2c ../shared/models/stories260K.bin

With --qwen2 it writes tests/data/engine_fixtures_qwen2.txt instead: the same
records for a qwen2 GGUF (Qwen2.5-Coder-0.5B), on prose, code and chat
prompts tokenized by the HF `tokenizers` reference of
make_tokenizer_fixtures.py (pip install gguf numpy tokenizers jinja2):
    /tmp/fixtures-venv/bin/python scripts/make_engine_fixtures.py \
        --qwen2 ~/.cache/kvtc/Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf
(about 10 minutes on one core: the reference recomputes every prefix.)

Output format, one record per prompt (ids are token ids, logits %.6g):
    model <file name> <sha256>
    prompt <n> <id> ...
    top <k> <id>:<logit> ...     (the last position's k largest logits)
    greedy <n> <id> ...          (argmax continuation, ties to the lower id)
"""
import argparse
import hashlib
import os
import sys

import numpy as np

TOP_K = 10
GREEDY = 32


def rmsnorm(x, w, eps):
    x64 = x.astype(np.float64)
    inv = 1.0 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    return (x * inv.astype(np.float32)) * w


def rope(x, pos, theta, dims, neox):
    """x: [T, heads, head_dim]; rotates the first `dims` of each head."""
    half = dims // 2
    freqs = theta ** (-2.0 * np.arange(half) / dims)
    ang = pos[:, None].astype(np.float64) * freqs[None, :]
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    x = x.copy()
    if neox:
        a, b = x[..., :half].copy(), x[..., half:dims].copy()
        x[..., :half] = a * cos - b * sin
        x[..., half:dims] = a * sin + b * cos
    else:
        a, b = x[..., 0:dims:2].copy(), x[..., 1:dims:2].copy()
        x[..., 0:dims:2] = a * cos - b * sin
        x[..., 1:dims:2] = a * sin + b * cos
    return x


class Model:
    """Weights as float32 [out, in] matrices; hyperparameters as attributes."""

    def forward(self, tokens, last_only=False):
        """Logits [T, vocab] of a whole sequence starting at position 0 (of
        its last position only, [1, vocab], with last_only)."""
        T = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
        x = self.embd[np.array(tokens)]
        for L in self.layers:
            h = rmsnorm(x, L["attn_norm"], self.eps)
            q = h @ L["wq"].T + L.get("bq", 0)
            k = h @ L["wk"].T + L.get("bk", 0)
            v = h @ L["wv"].T + L.get("bv", 0)
            q = rope(q.reshape(T, nh, hd), pos, self.theta, self.rope_dims, self.neox)
            k = rope(k.reshape(T, nkv, hd), pos, self.theta, self.rope_dims, self.neox)
            v = v.reshape(T, nkv, hd)
            out = np.empty((T, nh, hd), dtype=np.float32)
            for head in range(nh):
                g = head // (nh // nkv)
                s = (q[:, head, :] @ k[:, g, :].T) / np.float32(np.sqrt(hd)) + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                out[:, head, :] = s @ v[:, g, :]
            x = x + out.reshape(T, nh * hd) @ L["wo"].T
            h = rmsnorm(x, L["ffn_norm"], self.eps)
            gate = h @ L["w1"].T
            up = h @ L["w3"].T
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ L["w2"].T
        if last_only:
            x = x[-1:]
        return rmsnorm(x, self.out_norm, self.eps) @ self.out.T


def load_gguf(path):
    import gguf

    r = gguf.GGUFReader(path)

    def field(key):
        f = r.fields[key]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]][0]

    def tensor(name):
        t = next((t for t in r.tensors if t.name == name), None)
        if t is None:
            return None
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        return w.reshape([int(d) for d in reversed(t.shape)])

    arch = field("general.architecture")
    m = Model()
    m.n_layer = int(field(f"{arch}.block_count"))
    dim = int(field(f"{arch}.embedding_length"))
    m.n_head = int(field(f"{arch}.attention.head_count"))
    m.n_kv_head = int(field(f"{arch}.attention.head_count_kv"))
    m.head_dim = dim // m.n_head
    m.theta = float(field(f"{arch}.rope.freq_base"))
    m.eps = float(field(f"{arch}.attention.layer_norm_rms_epsilon"))
    m.neox = arch == "qwen2"
    m.embd = tensor("token_embd.weight")
    m.out_norm = tensor("output_norm.weight")
    out = tensor("output.weight")
    m.out = m.embd if out is None else out
    names = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight",
             "wv": "attn_v.weight", "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
             "w1": "ffn_gate.weight", "w3": "ffn_up.weight", "w2": "ffn_down.weight",
             "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias"}
    m.layers = []
    for i in range(m.n_layer):
        layer = {}
        for key, name in names.items():
            w = tensor(f"blk.{i}.{name}")
            if w is not None:
                layer[key] = w
        m.layers.append(layer)
    m.rope_dims = int(field(f"{arch}.rope.dimension_count")) if (
        f"{arch}.rope.dimension_count" in r.fields) else m.head_dim
    tok_field = r.fields.get("tokenizer.ggml.tokens")
    if tok_field is not None:
        m.vocab = [bytes(tok_field.parts[i]).decode("utf-8") for i in tok_field.data]
    return m


def load_llama2c(path):
    raw = open(path, "rb").read()
    dim, hidden, n_layer, n_head, n_kv, vocab, seq_len = np.frombuffer(raw[:28], dtype="<i4")
    shared = vocab > 0
    vocab = abs(int(vocab))
    w = np.frombuffer(raw[28:], dtype="<f4")
    hd = dim // n_head
    kv_dim = hd * n_kv
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        a = w[at:at + n].reshape(shape)
        at += n
        return a

    m = Model()
    m.n_layer, m.n_head, m.n_kv_head, m.head_dim = int(n_layer), int(n_head), int(n_kv), int(hd)
    m.theta, m.eps, m.rope_dims, m.neox = 10000.0, 1e-5, int(hd), False
    m.embd = take(vocab, dim)
    stacked = {"attn_norm": take(n_layer, dim), "wq": take(n_layer, dim, dim),
               "wk": take(n_layer, kv_dim, dim), "wv": take(n_layer, kv_dim, dim),
               "wo": take(n_layer, dim, dim), "ffn_norm": take(n_layer, dim),
               "w1": take(n_layer, hidden, dim), "w2": take(n_layer, dim, hidden),
               "w3": take(n_layer, hidden, dim)}
    m.out_norm = take(dim)
    take(seq_len, hd)  # the two unused RoPE tables
    m.out = m.embd if shared else take(vocab, dim)
    assert at == w.size, "llama2.c checkpoint length does not match its header"
    m.layers = [{k: v[i] for k, v in stacked.items()} for i in range(n_layer)]
    return m


def write_tiny_qwen2(path):
    """A random 2-layer qwen2 model: dim 32, 4 heads of 8, 2 KV heads, vocab 64;
    embedding in Q8_0, matrices in F16, norms and biases in F32."""
    import gguf

    rng = np.random.default_rng(11)
    dim, hidden, n_layer, n_head, n_kv, vocab = 32, 48, 2, 4, 2, 64
    hd = dim // n_head
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_name("tiny-qwen2")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(1000.0)
    w.add_layer_norm_rms_eps(1e-6)

    def mat(*shape, scale=0.3):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        return a.astype(np.float16) if len(shape) == 2 else a

    embd = mat(vocab, dim, scale=1.0).astype(np.float32)
    q8 = gguf.quants.quantize(embd, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("token_embd.weight", q8, raw_shape=q8.shape,
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", 1 + mat(dim, scale=0.1))
    w.add_tensor("output.weight", mat(vocab, dim))
    for i in range(n_layer):
        for name, shape in [("attn_norm.weight", (dim,)), ("ffn_norm.weight", (dim,))]:
            w.add_tensor(f"blk.{i}.{name}", 1 + mat(*shape, scale=0.1))
        for name, shape in [("attn_q.weight", (dim, dim)), ("attn_k.weight", (n_kv * hd, dim)),
                            ("attn_v.weight", (n_kv * hd, dim)), ("attn_q.bias", (dim,)),
                            ("attn_k.bias", (n_kv * hd,)), ("attn_v.bias", (n_kv * hd,)),
                            ("attn_output.weight", (dim, dim)),
                            ("ffn_gate.weight", (hidden, dim)), ("ffn_up.weight", (hidden, dim)),
                            ("ffn_down.weight", (dim, hidden))]:
            w.add_tensor(f"blk.{i}.{name}", mat(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def words_to_ids(vocab, pieces):
    index = {t: i for i, t in enumerate(vocab)}
    missing = [p for p in pieces if p not in index]
    if missing:
        sys.exit(f"tokens not in the vocabulary: {missing}")
    return [index[p] for p in pieces]


def text_pieces(text):
    """Splits simple English into GPT-2 byte-level pieces: words with their
    leading space as 'Ġ', punctuation alone, newlines as 'Ċ'."""
    pieces, word = [], ""
    for ch in text:
        if ch.isalnum():
            word += ch
            continue
        if word:
            pieces.append(word)
            word = ""
        if ch == " ":
            word = "Ġ"
        elif ch == "\n":
            pieces.append("Ċ")
        else:
            pieces.append(ch)
    if word:
        pieces.append(word)
    return [p for p in pieces if p != "Ġ"]


def record(out, model, prompt, last_only=False):
    logits = model.forward(prompt, last_only)[-1]
    top = np.argsort(-logits, kind="stable")[:TOP_K]
    seq = list(prompt)
    for _ in range(GREEDY):
        seq.append(int(np.argmax(model.forward(seq, last_only)[-1])))
    out.append(f"prompt {len(prompt)} " + " ".join(map(str, prompt)))
    out.append(f"top {TOP_K} " + " ".join(f"{i}:{logits[i]:.6g}" for i in top))
    out.append(f"greedy {GREEDY} " + " ".join(map(str, seq[len(prompt):])))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


QWEN2_TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    # Over 128 tokens, so that attention runs over more than one query chunk.
    "#include <stdio.h>\n#include <stdlib.h>\n\n/* A singly linked list of ints. */\n"
    "struct node {\n    int value;\n    struct node *next;\n};\n\n"
    "static struct node *push(struct node *head, int value)\n{\n"
    "    struct node *n = malloc(sizeof *n);\n    if (!n)\n        return head;\n"
    "    n->value = value;\n    n->next = head;\n    return n;\n}\n\n"
    "static size_t length(const struct node *head)\n{\n    size_t n = 0;\n"
    "    for (; head; head = head->next)\n        n++;\n    return n;\n}\n\n"
    "static void free_list(struct node *head)\n{\n",
]
QWEN2_CHAT = "Write a C function that returns the larger of two ints."


def qwen2_fixtures(path, output):
    import jinja2
    import gguf
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_tokenizer_fixtures import build_tokenizer, field_str

    reader = gguf.GGUFReader(path)
    tok = build_tokenizer(reader)
    template = jinja2.Environment().from_string(field_str(reader, "tokenizer.chat_template"))
    chat = template.render(messages=[{"role": "user", "content": QWEN2_CHAT}],
                           add_generation_prompt=True)
    del reader
    m = load_gguf(path)
    out = ["# Reference logits and greedy continuations of a qwen2 model for",
           "# tests/test_engine.c, written by scripts/make_engine_fixtures.py --qwen2",
           "# (gguf + numpy; prompts tokenized by HF tokenizers).",
           f"model {os.path.basename(path)} {sha256(path)}"]
    for text in QWEN2_TEXTS + [chat]:
        record(out, m, tok.encode(text, add_special_tokens=False).ids, last_only=True)
        print(out[-3][:60], flush=True)
    with open(output, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {output}")


def main():
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf")
    ap.add_argument("--llama2c")
    ap.add_argument("--qwen2", help="write the qwen2 fixtures of this GGUF instead")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    if args.qwen2:
        qwen2_fixtures(args.qwen2, args.output or os.path.join(data, "engine_fixtures_qwen2.txt"))
        return
    if not args.gguf or not args.llama2c:
        ap.error("--gguf and --llama2c are required (or --qwen2)")
    args.output = args.output or os.path.join(data, "engine_fixtures.txt")

    out = ["# Reference logits and greedy continuations for tests/test_engine.c,",
           "# written by scripts/make_engine_fixtures.py (gguf + numpy)."]
    m = load_gguf(args.gguf)
    texts = [
        "The capital of France is",
        "Once upon a time, there was a little",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>",
        # Over 128 tokens, so that attention runs over more than one query chunk.
        " ".join(["Once upon a time, there was a little girl named Lily. She loved to play "
                  "outside in the park with her friends. One day, she found a big red ball "
                  "under a tree."] * 4) + " Lily",
    ]
    out.append(f"model {os.path.basename(args.gguf)} {sha256(args.gguf)}")
    for text in texts:
        pieces = []
        for part in text.replace("<|im_start|>", "\0<|im_start|>\0").replace(
                "<|im_end|>", "\0<|im_end|>\0").split("\0"):
            pieces += [part] if part.startswith("<|") else text_pieces(part)
        record(out, m, words_to_ids(m.vocab, pieces))

    tiny = os.path.join(os.path.dirname(args.output), "tiny-qwen2.gguf")
    write_tiny_qwen2(tiny)
    m = load_gguf(tiny)
    out.append(f"model {os.path.basename(tiny)} {sha256(tiny)}")
    rng = np.random.default_rng(5)
    for n in (1, 40):
        record(out, m, [int(t) for t in rng.integers(0, 64, n)])

    m = load_llama2c(args.llama2c)
    out.append(f"model {os.path.basename(args.llama2c)} {sha256(args.llama2c)}")
    rng = np.random.default_rng(7)
    for n in (1, 9, 150):
        record(out, m, [1] + [int(t) for t in rng.integers(3, 512, n - 1)])

    with open(args.output, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
