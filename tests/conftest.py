"""Shared fixtures: tiny models and data written to a temporary folder in milliseconds."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

import tiny_models  # noqa: E402


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    """A tiny classifier (state dict .pt and .safetensors), its data, and the CLI args to load it."""
    model = tiny_models.build_classifier()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3          # a few wrong labels, so accuracy is not trivially 100 %
    save_file({"x": x, "y": y}, str(tmp_path / "data.safetensors"))
    return {"dir": tmp_path, "model": tmp_path / "model.pt", "data": tmp_path / "data.safetensors",
            "arch": ["--arch", "tiny_models:build_classifier", "--code-path", str(TESTS)], "x": x, "y": y,
            "module": model}
