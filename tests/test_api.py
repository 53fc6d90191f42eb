"""The README's Python API example runs as written (in a scratch folder beside the sample models)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- tests/test_api.py runs this block -->"


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", readme, re.S)
    assert block, "README: the Python API example is missing"
    (tmp_path / "sample_models").symlink_to(REPO / "sample_models")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)   # noqa: S102 - our own README
    assert {"train.profile", "selector.safetensors", "mnist.dise"} <= set(os.listdir(tmp_path))
    accuracy, nfe, baseline_nfe = map(float, capsys.readouterr().out.split())
    assert 0.8 < accuracy <= 1 and 0 < nfe < baseline_nfe
    assert scope["logits"].shape == (8, 10) and bool(torch.isfinite(scope["logits"]).all())
    assert len(scope["stats"].nfe) == 8
