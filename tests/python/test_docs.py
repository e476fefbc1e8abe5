"""The examples of docs/PYTHON.md run as written, in order, in one namespace."""
from __future__ import annotations

import re

from conftest import ROOT


def test_python_md_examples(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "PYTHON.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/PYTHON.md example {i + 1}", "exec"), namespace)
    assert (tmp_path / "model.kvtcal").exists()
    assert "smaller than fp16" in capsys.readouterr().out
