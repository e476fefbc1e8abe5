"""The examples of docs/PYTHON.md run as written, in order, in one namespace.
The transformers example runs where its dependencies and the default model are
(test_transformers.py needs the same), and says so where they are not; its
`kvtc` is the CLI under test (KVTC_BIN), found first on PATH."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from conftest import ROOT

MODEL = Path.home() / ".cache" / "kvtc" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_python_md_examples(tmp_path, monkeypatch, capsys, kvtc_bin):
    text = (ROOT / "docs" / "PYTHON.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{kvtc_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    namespace: dict = {}
    ran = 0
    for i, block in enumerate(blocks):
        if "kvtc.transformers" in block:
            missing = [m for m in ("torch", "transformers") if not importlib.util.find_spec(m)]
            if missing or not MODEL.exists():
                with capsys.disabled():
                    print(f"\ndocs example {i + 1} not run: {missing or MODEL} absent")
                continue
        exec(compile(block, f"docs/PYTHON.md example {i + 1}", "exec"), namespace)
        ran += 1
    assert ran >= 3
    assert (tmp_path / "model.kvtcal").exists()
    assert "smaller than fp16" in capsys.readouterr().out
