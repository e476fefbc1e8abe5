#!/usr/bin/env python3
"""Writes tests/data/tokenizer_fixtures.txt: token ids of sample texts and chat
prompts from an independent reference, the HuggingFace `tokenizers` library,
built from the GGUF's own vocabulary and merges (read with the `gguf` package)
with the pre-tokenizer the GGUF names: SmolLM2's (individual digits, then
GPT-2 byte-level split) or Qwen2's (its split regex, then byte level).
Chat prompts are rendered from the GGUF's chat template with jinja2.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf tokenizers jinja2
    /tmp/venv/bin/python scripts/make_tokenizer_fixtures.py [MODEL.gguf] [OUT.txt]
    /tmp/venv/bin/python scripts/make_tokenizer_fixtures.py \
        ~/.cache/kvtc/Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf \
        tests/data/tokenizer_fixtures_qwen2.txt

Qwen2's tokenizer.json also applies NFC normalization, which neither the
GGUF nor llama.cpp carries; the reference here has none either, as kvtc's
tokenizer, so texts that are not NFC (the combining marks below) are
tokenized as written.

Output format, one record per blank-line-separated block ('#' lines are
comments; byte strings are lower-case hex of UTF-8):
    text <hex>                   then   ids <id> <id> ...
    chat <add_generation_prompt 0|1>, msg <role> <hex> lines,
         prompt <hex of the rendered template>, ids <id> ...
"""
import os
import sys

import gguf
import jinja2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

CONTROL = 3  # llama.cpp token type of special (control) tokens

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times; it was the age of wisdom, "
    "it was the age of foolishness. Everyone agreed: nothing would ever be the same again.",
    "I'm sure they'll say it's fine, don't you think? We've seen it, I'd say you're right.",
    "DON'T SHOUT, IT'S RUDE. She'S here.",
    "'s 's 'S ''quoted'' \"double\" `back`",
    "def foo(x):\n    return x ** 2  # comment\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (size_t i = 0; i < n; i++) { sum += a[i] * b[i]; }",
    "Numbers 12345 and 3.14159 and 1,000,000",
    "In 2024, 7 out of 10 people (70%) agreed.",
    "Phone: +1-555-0100, ZIP 90210",
    "Mixed: abc123def456 v2.0.1 x86_64",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces} <angle>",
    "multiple   internal    spaces",
    "  leading and trailing spaces  ",
    "    ",
    " ",
    "",
    "a",
    "tabs\tand\nnewlines\r\nmixed",
    "\n\n\nThree newlines then text\n\n",
    "line one\n  indented line\n\tTabbed\n \n",
    "Hello\u00a0world and\u3000ideographic space",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00c5ngstr\u00f6m",
    "Combining: e\u0301 a\u0308 n\u0303",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
    "\u03ba\u03b5\u03af\u03bc\u03b5\u03bd\u03b1 123",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442: "
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0661\u0662\u0663",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "Emoji: \U0001f600\U0001f44d\U0001f3fd and \u2764\ufe0f \U0001f680\U0001f680",
    "Math: x\u00b2 + y\u00b2 = z\u00b2, \u00bd + \u00bc = \u00be, \u2460\u2461",
    "URL: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2",
    "Contact: first.last@example.com",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
    "# Title\n\n- item 1\n- item 2\n\n**bold** and _italic_",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "<|endoftext|>start and end<|endoftext|>",
    "Not special: <|im_start and <im_end|> and <|unknown|>",
    "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
]

# More code and prose for Qwen2's pattern: case-free contractions, single
# digits, symbol runs that take their line breaks, space runs before breaks.
QWEN2_TEXTS = [
    "I'M SURE YOU'LL SEE IT'S FINE, WE'VE DONE IT, THEY'RE HERE, I'D SAY DON'T.",
    "It'S mIxEd: 'Re 'rE 'VE 'Ll 'D 'M 'T",
    "#include <stdio.h>\n#define MAX_LEN 4096\n\nstruct point {\n    int x, y;\n};\n",
    "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)\n",
    "if (a && b || !c) {\r\n    x += 0x1F;\r\n}\r\n",
    "fn main() {\n    let v: Vec<i64> = (1..=10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "    \n\n    indented after blank lines\n\t\t\n",
    "end of line spaces   \nand tabs\t\t\nnext",
    "x=1;y=22;z=333;w=4444",
    "\u00a0\u00a0non-breaking\u00a0 and \u3000 ideographic",
    "\"Quoted\" (parenthesised) [bracketed]: a;b,c.d!e?f",
    "The year 1984 had 365 days; \u0661\u0662\u0663 and \uff11\uff12\uff13 are digits too.",
    "Prose: The committee, having reviewed the proposal, decided that further study "
    "was warranted before any funds could be released.",
    "\u00bfQu\u00e9 tal? \u00a1Muy bien! Stra\u00dfe, \u0153uvre, \u00e6ther",
    "tabs\tbefore\twords and (punct\t) then\n\n\n",
]

CHATS = [
    ([("user", "What is the capital of France?")], True),
    ([("system", "You are terse."), ("user", "Hi!"), ("assistant", "Hello."),
      ("user", "Count to 3.\nThen stop.")], False),
    ([("user", "Translate: caf\u00e9 \u2192 English"), ("assistant", "coffee")], True),
]


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def field_str(reader, key):
    return bytes(reader.fields[key].parts[-1]).decode("utf-8")


# Qwen2's tokenizer.json pre-tokenizer: this split regex (isolated), then
# byte level without its own regex.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def pre_tokenizer(pre):
    if pre == "smollm":
        # SmolLM2's tokenizer.json: Sequence[Digits(individual_digits), ByteLevel].
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre == "qwen2":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise SystemExit("pre-tokenizer %r: only smollm and qwen2 are known here" % pre)


def build_tokenizer(reader):
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    types = field_ints(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field_strings(reader, "tokenizer.ggml.merges")]
    assert field_str(reader, "tokenizer.ggml.model") == "gpt2"
    assert len(set(tokens)) == len(tokens) and all(len(m) == 2 for m in merges)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizer(field_str(reader, "tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                if ty == CONTROL]
    tok.add_special_tokens(specials)
    for s in specials:
        assert tok.token_to_id(s.content) == vocab[s.content]
    return tok


def hexs(s):
    return s.encode("utf-8").hex()


def main():
    cache = os.environ.get("KVTC_CACHE_DIR", os.path.expanduser("~/.cache/kvtc"))
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        here, "..", "tests", "data", "tokenizer_fixtures.txt")
    reader = gguf.GGUFReader(model)
    tok = build_tokenizer(reader)
    template = jinja2.Environment().from_string(field_str(reader, "tokenizer.chat_template"))

    lines = ["# Generated by scripts/make_tokenizer_fixtures.py from "
             + os.path.basename(model) + " with tokenizers " + __import__("tokenizers").__version__,
             "# Do not edit; rerun the script.", ""]
    texts = TEXTS + (QWEN2_TEXTS if field_str(reader, "tokenizer.ggml.pre") == "qwen2" else [])
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, text
        lines += ["# " + repr(text)[:100], "text " + hexs(text),
                  "ids " + " ".join(map(str, ids)), ""]
    for msgs, gen in CHATS:
        prompt = template.render(messages=[{"role": r, "content": c} for r, c in msgs],
                                 add_generation_prompt=gen)
        ids = tok.encode(prompt, add_special_tokens=False).ids
        lines += ["# chat: " + repr(prompt)[:100], "chat %d" % int(gen)]
        lines += ["msg %s %s" % (r, hexs(c)) for r, c in msgs]
        lines += ["prompt " + hexs(prompt), "ids " + " ".join(map(str, ids)), ""]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("wrote %s: %d texts, %d chats" % (out, len(texts), len(CHATS)))


if __name__ == "__main__":
    main()
