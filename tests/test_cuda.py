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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_on_two_gpus_equals_one_gpu(tiny):
    """Each rank on cuda:LOCAL_RANK (nccl with gloo for objects): the NFE and statuses of one GPU."""
    import subprocess
    import sys

    from dise_cli.profiles import read_profile
    from test_scale_out import BATCH, _env

    d = tiny["dir"]
    args = ["profile", str(tiny["model"]), *tiny["arch"], "--data", str(tiny["data"]), *BATCH, "--device", "cuda"]
    one = subprocess.run([sys.executable, "-m", "dise_cli", *args, "--out", str(d / "one.st")], capture_output=True,
                         text=True, env=_env(), timeout=300)
    two = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "dise_cli", *args, "--out",
                          str(d / "two.st")], capture_output=True, text=True, env=_env(), timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = read_profile(d / "one.st"), read_profile(d / "two.st")
    assert torch.equal(a.nfe, b.nfe) and torch.equal(a.status, b.status) and torch.equal(a.index, b.index)
