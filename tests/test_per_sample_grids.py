"""Data whose every sample has its own time grid (irregular series, or an end time per sample) for a
model that is a bare vector field: profile, selector, bundle and run carry the grids through."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchdiffeq import odeint
from typer.testing import CliRunner

import dise_cli
import tiny_models
from dise_cli.cli import app

TESTS = str(Path(__file__).resolve().parent)
ARGS = ["--arch", "tiny_models:build_bare", "--code-path", TESTS]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _data(tmp_path: Path, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen)
    steps = torch.rand(n, 3, generator=gen) * 0.6 + 0.05
    t = torch.cat([torch.zeros(n, 1), steps.cumsum(1)], 1)          # [N, 4]: each row its own grid
    save_file({"x": x, "t": t}, str(tmp_path / "d.safetensors"))
    save_file({"x": x, "t_end": t[:, -1].contiguous()}, str(tmp_path / "e.safetensors"))
    torch.save(tiny_models.build_bare().state_dict(), tmp_path / "f.pt")
    return x, t


def test_profile_solves_every_sample_on_its_own_grid(tmp_path):
    x, t = _data(tmp_path)
    res = invoke("profile", tmp_path / "f.pt", *ARGS, "--data", tmp_path / "d.safetensors", "--out",
                 tmp_path / "p.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["t_span"] == [] and report["baseline"] == "dopri5:rtol=0.001,atol=0.001"
    nfe = load_file(str(tmp_path / "p.safetensors"))["nfe"]
    func = tiny_models.build_bare()
    for i in range(0, len(x), 6):                   # the baseline column: torchdiffeq, sample alone, its grid
        calls = [0]

        def counted(tt, yy):
            calls[0] += 1
            return func(tt, yy)

        with torch.no_grad():
            odeint(counted, x[i:i + 1], t[i], rtol=1e-3, atol=1e-3)
        assert nfe[i, 2].item() == calls[0]
        assert nfe[i, 0].item() == 3 and nfe[i, 1].item() == 12          # one step per interval of its grid


def test_the_pipeline_carries_the_grids_through(tmp_path):
    x, t = _data(tmp_path)
    data = ["--data", tmp_path / "d.safetensors"]
    assert invoke("profile", tmp_path / "f.pt", *ARGS, *data, "--out", tmp_path / "p.safetensors").exit_code == 0
    res = invoke("train-selector", tmp_path / "f.pt", "--arch", "tiny_models:build_bare", "--code-path", TESTS,
                 *data, "--profile", tmp_path / "p.safetensors", "--epochs", 2, "--out", tmp_path / "s.safetensors")
    assert res.exit_code == 0, res.stderr
    res = invoke("export", tmp_path / "f.pt", *ARGS, "--selector", tmp_path / "s.safetensors", "--out", tmp_path / "b.dise")
    assert res.exit_code == 0, res.stderr
    res = invoke("evaluate", tmp_path / "b.dise", *data, "--batch-sizes", 8, "--repeats", 1, "--json", "-")
    assert res.exit_code == 0, res.stderr
    res = invoke("run", tmp_path / "b.dise", *data, "--out", tmp_path / "pred.safetensors", "--batch-size", 7)
    assert res.exit_code == 0, res.stderr
    pred = load_file(str(tmp_path / "pred.safetensors"))
    bundle = dise_cli.load(tmp_path / "b.dise")
    out, stats = bundle(x, t, return_stats=True)
    assert out.shape == (48, 4, 2) and torch.equal(pred["nfe"], stats.nfe)
    torch.testing.assert_close(pred["outputs"], out, rtol=1e-5, atol=1e-6)
    with torch.no_grad():       # each sample's trajectory is on its own grid
        for i in (0, 17):
            ref = odeint(tiny_models.build_bare(), x[i:i + 1], t[i], method="rk4")
            if stats.integrator[i] == 1:
                torch.testing.assert_close(out[i], ref[:, 0], rtol=1e-5, atol=1e-6)
    # without the grids, every sample ran over the first training sample's grid, exit 0: now refused
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    for command in (["run", tmp_path / "b.dise", "--data", tmp_path / "x.safetensors", "--out", tmp_path / "q.st"],
                    ["evaluate", tmp_path / "b.dise", "--data", tmp_path / "x.safetensors"]):
        res = invoke(*command)
        assert res.exit_code == 2 and "no time grid per sample" in res.stderr and not (tmp_path / "q.st").exists()
    with pytest.raises(TypeError, match="time grid per sample"):
        bundle(x)


def test_end_times_per_sample(tmp_path):
    x, t = _data(tmp_path)
    res = invoke("profile", tmp_path / "f.pt", *ARGS, "--data", tmp_path / "e.safetensors", "--candidates",
                 "euler:steps=4,dopri5:rtol=1e-6,atol=1e-6", "--out", tmp_path / "p.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    nfe = load_file(str(tmp_path / "p.safetensors"))["nfe"]
    assert (nfe[:, 0] == 4).all()
    func = tiny_models.build_bare()
    calls = [0]

    def counted(tt, yy):
        calls[0] += 1
        return func(tt, yy)

    with torch.no_grad():
        odeint(counted, x[5:6], torch.tensor([0.0, float(t[5, -1])]), rtol=1e-6, atol=1e-6)
    assert nfe[5, 1].item() == calls[0]
    data = ["--data", tmp_path / "e.safetensors"]
    res = invoke("train-selector", tmp_path / "f.pt", *ARGS, *data, "--profile", tmp_path / "p.safetensors",
                 "--epochs", 2, "--out", tmp_path / "s.safetensors")
    assert res.exit_code == 0, res.stderr
    res = invoke("export", tmp_path / "f.pt", *ARGS, "--selector", tmp_path / "s.safetensors", "--out", tmp_path / "b.dise")
    assert res.exit_code == 0, res.stderr
    bundle = dise_cli.load(tmp_path / "b.dise")
    ends = bundle(x[:5], t[:5, -1])                 # end times [N], as the data gave them: grids from 0 to each
    assert torch.equal(ends, bundle(x[:5], torch.stack([torch.zeros(5), t[:5, -1]], 1)))


def test_a_grid_per_sample_for_a_model_with_its_own_grid_is_left_out(tmp_path, tiny):
    """The model passes its own grid to its solver and has no use for the data's: dise runs the model
    as it is, and says it left the grids out (this was exit 2, which blocked data with a stray key)."""
    x = tiny["x"]
    save_file({"x": x, "t": torch.rand(len(x), 3).cumsum(1)}, str(tmp_path / "g.safetensors"))
    res = invoke("profile", tiny["model"], *tiny["arch"], "--data", tmp_path / "g.safetensors", "--out",
                 tmp_path / "p.safetensors")
    assert res.exit_code == 0 and "'t' (a time grid per sample) is left out" in res.stderr
