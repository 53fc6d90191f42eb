"""Hardening for CI use: interrupts leave nothing behind, numerical faults stay per-sample."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
MNIST = REPO / "sample_models" / "mnist_odenet"
# The subprocesses find dise_cli from this checkout whether or not it is pip-installed.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("command", [
    ["profile", str(MNIST / "dise.yaml"), "--data", str(MNIST / "train.safetensors"), "--out", "{out}",
     "--candidates", "euler:steps=1,dopri5:rtol=1e-6,atol=1e-6"],          # long enough to interrupt
    ["finetune", str(MNIST / "dise.yaml"), "--data", str(MNIST / "train.safetensors"), "--epochs", "3", "--out", "{out}"],
])
def test_sigint_exits_130_and_leaves_no_file(tmp_path, command):
    out = tmp_path / "result.safetensors"
    args = [a.replace("{out}", str(out)) for a in command]
    proc = subprocess.Popen([sys.executable, "-m", "dise_cli", *args, "--quiet"], cwd=tmp_path, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8.0)                      # past the imports (some are lazy, and CI machines are slow), into the work
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["error: interrupted; nothing was written"]
    assert os.listdir(tmp_path) == []    # no result, no temporary file


def test_numerical_faults_are_statuses_not_failures(tmp_path):
    """Inputs whose dynamics blow up, NaN inputs, and a sample that hits max_steps: the run finishes,
    reports count them, and the other samples are judged as usual."""
    import json

    from typer.testing import CliRunner

    import tiny_models
    from dise_cli.cli import app
    module = tiny_models.build_classifier()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    x[3] = float("nan")
    x[7] = float("inf")                # blows up: the state is infinite from the start
    with torch.no_grad():
        y = module(torch.nan_to_num(x, nan=0.0, posinf=0.0)).argmax(1)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "m.pt"), "--arch", "tiny_models:build_classifier",
                                   "--code-path", str(Path(__file__).parent), "--data", str(tmp_path / "d.safetensors"),
                                   "--candidates", "euler:steps=1,dopri5:rtol=1e-9,atol=1e-9,max_steps=3",
                                   "--out", str(tmp_path / "p.safetensors"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    euler, dopri = report["candidates"]
    assert euler["status"]["non_finite"] >= 2 and euler["status"]["ok"] <= 18
    assert dopri["status"]["max_steps"] + dopri["status"]["non_finite"] + dopri["status"]["underflow"] == 20
    assert 3 in dopri["failed_samples"] and 7 in euler["failed_samples"]


def test_sigint_during_train_selector(tmp_path):
    from typer.testing import CliRunner

    from dise_cli.cli import app
    moons = REPO / "sample_models" / "moons"
    profile = tmp_path / "p.safetensors"
    res = CliRunner().invoke(app, ["profile", str(moons / "dise.yaml"), "--data", str(moons / "train.safetensors"),
                                   "--limit", "400", "--out", str(profile)])
    assert res.exit_code == 0, res.stderr
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "dise_cli", "train-selector", str(moons / "dise.yaml"), "--data",
                             str(moons / "train.safetensors"), "--profile", str(profile), "--epochs", "100000",
                             "--out", str(work / "s.safetensors"), "--quiet"], cwd=work, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and os.listdir(work) == [], err
