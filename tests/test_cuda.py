"""The CUDA path (skipped without a GPU, as on CI)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dise_cli.cli import app
from dise_cli.integrators import Dopri5, VectorField

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_dopri5_on_cuda_matches_cpu_in_float64():
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    y0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 5, 64)[:, None]
    t = torch.tensor([0.0, 1.0])

    def f(t, y):
        return y @ a.T.to(y.device) - y ** 3

    cpu = Dopri5(rtol=1e-6, atol=1e-6).solve(VectorField(f), y0, t)
    gpu = Dopri5(rtol=1e-6, atol=1e-6).solve(VectorField(f), y0.cuda(), t)
    assert gpu.nfe.cpu().tolist() == cpu.nfe.tolist()
    torch.testing.assert_close(gpu.final.cpu(), cpu.final, rtol=1e-9, atol=1e-9)


def test_profile_on_cuda_reports_peak_memory(tiny):
    res = CliRunner().invoke(app, ["profile", str(tiny["model"]), "--data", str(tiny["data"]), *tiny["arch"],
                                   "--device", "cuda", "--out", str(tiny["dir"] / "p.safetensors"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert all(r["peak_memory_mb"] is not None and r["peak_memory_mb"] > 0 for r in report["candidates"])
