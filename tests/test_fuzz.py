"""Fuzzing every loader with random bytes and small mutations of valid files: the only outcomes
allowed are success or a DiseError with exit code 2 (never a crash, never exit 3)."""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny_models
from dise_cli.bundle import read_members
from dise_cli.cli import app
from dise_cli.config import read_project
from dise_cli.datasets import DataSpec, load_data
from dise_cli.errors import DiseError
from dise_cli.loading import ModelSpec, load_model
from dise_cli.profiles import read_profile
from dise_cli.selector import read_selector

TESTS = str(Path(__file__).resolve().parent)
# A few hundred examples in all for CI; DISE_FUZZ_EXAMPLES=1000 for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("DISE_FUZZ_EXAMPLES", 30)), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=os.environ.get("DISE_FUZZ_RANDOM") is None)


@functools.lru_cache(maxsize=None)
def valid_files() -> dict[str, bytes]:
    """One valid file of every kind, made once with the real commands."""
    d = Path(tempfile.mkdtemp(prefix="dise-fuzz-"))
    module = tiny_models.build_classifier()
    torch.save(module.state_dict(), d / "model.pt")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(d / "model.safetensors"))
    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        y = module(x).argmax(1)
    save_file({"x": x, "y": y}, str(d / "data.safetensors"))
    torch.save({"x": x, "y": y}, d / "data.pt")
    import numpy as np
    np.savez(d / "data.npz", x=x.numpy(), y=y.numpy())
    (d / "dise.yaml").write_text("model: model.pt\narch: tiny_models:build_classifier\ndata: data.safetensors\n")
    run = CliRunner()
    arch = ["--arch", "tiny_models:build_classifier", "--code-path", TESTS]
    for args in (["profile", d / "model.pt", "--data", d / "data.safetensors", *arch, "--out", d / "p.safetensors"],
                 ["train-selector", d / "model.pt", "--data", d / "data.safetensors", "--profile", d / "p.safetensors",
                  "--arch", "tiny_models:build_classifier", "--code-path", TESTS, "--epochs", 1,
                  "--out", d / "s.safetensors"],
                 ["export", d / "model.pt", *arch, "--selector", d / "s.safetensors", "--out", d / "m.dise"]):
        res = run.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.stderr
    names = ["model.pt", "model.safetensors", "data.safetensors", "data.pt", "data.npz", "dise.yaml",
             "p.safetensors", "s.safetensors", "m.dise"]
    return {name: (d / name).read_bytes() for name in names}


LOADERS = {
    "model.pt": lambda p: load_model(ModelSpec(path=p, arch="tiny_models:build_classifier", code_path=(TESTS,))),
    "model.safetensors": lambda p: load_model(ModelSpec(path=p, arch="tiny_models:build_classifier", code_path=(TESTS,))),
    "data.safetensors": lambda p: load_data(DataSpec(path=p)),
    "data.pt": lambda p: load_data(DataSpec(path=p)),
    "data.npz": lambda p: load_data(DataSpec(path=p)),
    "dise.yaml": read_project,
    "p.safetensors": read_profile,
    "s.safetensors": read_selector,
    "m.dise": read_members,
}


def _load(name: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            LOADERS[name](path)
        except DiseError as exc:
            assert exc.exit_code == 2, f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("name", list(LOADERS))
@FUZZ
@given(content=st.binary(max_size=2048))
def test_random_bytes(name, content):
    _load(name, content)


@pytest.mark.parametrize("name", list(LOADERS))
@FUZZ
@given(data=st.data())
def test_mutations_of_valid_files(name, data):
    content = bytearray(valid_files()[name])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(content) - 1, 0)))
        if kind == "flip" and content:
            content[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del content[pos:]
        elif kind == "insert":
            content[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif content:
            del content[pos:pos + data.draw(st.integers(1, 16))]
    _load(name, bytes(content))
