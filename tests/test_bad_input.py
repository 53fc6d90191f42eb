"""The bad-input matrix (README "Bad input"): every case exits with the code from DESIGN.md, prints
exactly one line on stderr naming the file, key or flag, no traceback, and writes nothing."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny_models
from dise_cli.cli import app

TESTS = str(Path(__file__).resolve().parent)
ARCH = ["--arch", "tiny_models:build_classifier", "--code-path", TESTS]
RANDOM = bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8))


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _profile(t, model, data=None, *extra):
    return ["profile", model, "--data", data or t["data"], *ARCH, *extra]


def _data(t, name, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(t["dir"] / name))
    return t["dir"] / name


def _state(t, name, mutate):
    state = dict(tiny_models.build_classifier().state_dict())
    mutate(state)
    torch.save(state, t["dir"] / name)
    return t["dir"] / name


def _bytes(t, name, content):
    (t["dir"] / name).write_bytes(content)
    return t["dir"] / name


def _scripted(t):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # torch.jit.script is deprecated in 2.13
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), t["dir"] / "ts.pt")
    return t["dir"] / "ts.pt"


def _evil(t):
    _RunsCode.marker = t["dir"] / "code-ran"
    with open(t["dir"] / "evil.pt", "wb") as fh:
        pickle.dump({"w": _RunsCode()}, fh, protocol=4)     # torch warns about protocol 4 as it refuses it
    return t["dir"] / "evil.pt"


X, Y = torch.randn(10, 2), torch.arange(10) % 3

# name -> (build argv from the tiny fixture, text the one line must contain, exit code)
CASES = {
    "missing model file": (lambda t: _profile(t, t["dir"] / "nope.pt"), "does not exist", 2),
    "missing data file": (lambda t: _profile(t, t["model"], t["dir"] / "nope.safetensors"), "does not exist", 2),
    "directory as model": (lambda t: _profile(t, t["dir"]), "is a directory", 2),
    "empty model file": (lambda t: _profile(t, _bytes(t, "e.pt", b"")), "is empty", 2),
    "empty data file": (lambda t: _profile(t, t["model"], _bytes(t, "e.npz", b"")), "is empty", 2),
    "truncated .pt": (lambda t: _profile(t, _truncated(t["model"], t["dir"] / "t.pt")), "not a readable PyTorch file", 2),
    "truncated .safetensors": (lambda t: _profile(t, _truncated(t["dir"] / "model.safetensors", t["dir"] / "t.safetensors")),
                               "not a readable safetensors file", 2),
    "truncated .npz": (lambda t: _profile(t, t["model"], _truncated(_npz(t), t["dir"] / "t.npz")), "not a readable .npz", 2),
    "truncated .dise": (lambda t: ["evaluate", _bytes(t, "t.dise", b"PK\x03\x04" + RANDOM[:40]), "--data", t["data"]],
                        "not a readable zip", 2),
    "random bytes .pt": (lambda t: _profile(t, _bytes(t, "r.pt", RANDOM)), "not a readable PyTorch file", 2),
    "random bytes .pth": (lambda t: _profile(t, _bytes(t, "r.pth", RANDOM)), "not a readable PyTorch file", 2),
    "random bytes .safetensors": (lambda t: _profile(t, _bytes(t, "r.safetensors", RANDOM)), "not a readable safetensors", 2),
    "random bytes .npz data": (lambda t: _profile(t, t["model"], _bytes(t, "r.npz", RANDOM)), "not a readable .npz", 2),
    "random bytes .pt data": (lambda t: _profile(t, t["model"], _bytes(t, "r.pt", RANDOM)), "not a readable .pt", 2),
    "random bytes .dise": (lambda t: ["evaluate", _bytes(t, "r.dise", RANDOM), "--data", t["data"]], "not a readable zip", 2),
    "random bytes .yaml": (lambda t: ["profile", _bytes(t, "r.yaml", RANDOM)], "config", 2),
    "unknown extension": (lambda t: _profile(t, _bytes(t, "m.onnx", b"x")), "unknown format '.onnx'", 2),
    "pickled module without --trust-pickle": (lambda t: (torch.save(t["module"], t["dir"] / "whole.pt"),
                                                         _profile(t, t["dir"] / "whole.pt"))[1], "--trust-pickle", 2),
    "pickle that would run code": (lambda t: _profile(t, _evil(t)), "posix.system", 2),
    "--arch not importable": (lambda t: ["profile", t["model"], "--data", t["data"], "--arch", "nowhere.mod:build"],
                              "cannot import module 'nowhere'", 2),
    "--arch not callable": (lambda t: ["profile", t["model"], "--data", t["data"], "--arch", "tiny_models:TESTS_CONSTANT",
                                       "--code-path", TESTS], "is not callable", 2),
    "--arch returns no nn.Module": (lambda t: ["profile", t["model"], "--data", t["data"], "--arch",
                                               "tiny_models:build_not_a_module", "--code-path", TESTS], "not an nn.Module", 2),
    "state dict: missing keys": (lambda t: _profile(t, _state(t, "m1.pt", lambda s: s.pop("0.weight"))), "missing keys: 0.weight", 2),
    "state dict: unexpected keys": (lambda t: _profile(t, _state(t, "m2.pt", lambda s: s.update(extra=torch.zeros(1)))),
                                    "unexpected keys: extra", 2),
    "state dict: shape mismatch": (lambda t: _profile(t, _state(t, "m3.pt", lambda s: s.update({"2.bias": torch.zeros(7)}))),
                                   "2.bias (7,) vs (3,)", 2),
    "no ODE block": (lambda t: (torch.save(tiny_models.build_no_block().state_dict(), t["dir"] / "nb.pt"),
                                ["profile", t["dir"] / "nb.pt", "--data", t["data"], "--arch", "tiny_models:build_no_block",
                                 "--code-path", TESTS])[1], "no ODE block found", 2),
    "TorchScript archive": (lambda t: _profile(t, _scripted(t)), "TorchScript archive (torch.jit.save)", 2),
    "scripted ODE block": (lambda t: (torch.save(tiny_models.build_scripted_block().state_dict(), t["dir"] / "sb.pt"),
                                      ["profile", t["dir"] / "sb.pt", "--data", t["data"], "--arch",
                                       "tiny_models:build_scripted_block", "--code-path", TESTS])[1],
                           "is a TorchScript module (torch.jit.script)", 2),
    "--solve beyond the model's solves": (lambda t: (torch.save(tiny_models.build_two_blocks().state_dict(), t["dir"] / "tb.pt"),
                                                     ["profile", t["dir"] / "tb.pt", "--data", t["data"], "--arch",
                                                      "tiny_models:build_two_blocks", "--code-path", TESTS, "--solve", 5])[1],
                                                    "--solve", 2),
    "data: missing key": (lambda t: _profile(t, t["model"], _data(t, "k.safetensors", inputs=X)), "--x-key", 2),
    "data: wrong rank": (lambda t: _profile(t, t["model"], _data(t, "rank.safetensors", x=torch.randn(10, 2, 3), y=Y)),
                         "rejects data", 2),
    "data: wrong dtype": (lambda t: _profile(t, t["model"], _data(t, "dt.safetensors", x=torch.ones(10, 2, dtype=torch.bool), y=Y)),
                          "dtype torch.bool", 2),
    "data: different N for x and y": (lambda t: _profile(t, t["model"], _data(t, "n.safetensors", x=X, y=Y[:7])),
                                      "has 10 samples but 'y' has shape (7,)", 2),
    "data: zero samples": (lambda t: _profile(t, t["model"], _data(t, "z.safetensors", x=torch.zeros(0, 2))), "holds no samples", 2),
    "data: labels outside the classes": (lambda t: _profile(t, t["model"], _data(t, "l.safetensors", x=X, y=Y + 5)),
                                         "labels run from 5 to 7, but the model outputs 3 classes", 2),
    "invalid YAML": (lambda t: ["profile", _bytes(t, "bad.yaml", b"model: [unclosed\n")], "not valid YAML", 2),
    "unknown config key": (lambda t: ["profile", _bytes(t, "k.yaml", b"modle: model.pt\n")], "unknown key 'modle'", 2),
    "candidates: unknown method": (lambda t: _profile(t, t["model"], None, "--candidates", "rk5:steps=1"), "valid methods", 2),
    "candidates: unknown option": (lambda t: _profile(t, t["model"], None, "--candidates", "rk4:stepz=1"), "valid options: steps", 2),
    "candidates: steps <= 0": (lambda t: _profile(t, t["model"], None, "--candidates", "euler:steps=0"), "steps must be >= 1", 2),
    "candidates: rtol <= 0": (lambda t: _profile(t, t["model"], None, "--candidates", "dopri5:rtol=0"), "rtol and atol must be > 0", 2),
    "--device cuda without a GPU": (lambda t: _profile(t, t["model"], None, "--device", "cuda"), "no CUDA GPU", 2),
    "output folder missing": (lambda t: _profile(t, t["model"], None, "--out", t["dir"] / "no" / "p.safetensors"),
                              "does not exist", 2),
    "output folder not writable": (lambda t: _profile(t, t["model"], None, "--out", _locked(t) / "p.safetensors"),
                                   "is not writable", 2),
    "bad --t-span": (lambda t: _profile(t, t["model"], None, "--t-span", "1,1"), "--t-span", 2),
    "bad --batch-size": (lambda t: _profile(t, t["model"], None, "--batch-size", "0"), "--batch-size", 2),
}


def _npz(t):
    np.savez(t["dir"] / "d.npz", x=t["x"].numpy(), y=t["y"].numpy())
    return t["dir"] / "d.npz"


def _locked(t):
    folder = t["dir"] / "locked"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    return folder


@pytest.mark.filterwarnings("error")       # a warning that reached the user would fail the case (exit 3)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(tiny, case, monkeypatch):
    build, needle, code = CASES[case]
    if case == "--device cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    if case == "output folder not writable" and os.geteuid() == 0:
        pytest.skip("root can write into a read-only folder")
    monkeypatch.chdir(tiny["dir"])
    args = [str(a) for a in build(tiny)]
    before = {p: p.stat().st_mtime_ns for p in Path(tiny["dir"]).rglob("*")}
    res = CliRunner().invoke(app, args)
    assert res.exit_code == code, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    after = {p: p.stat().st_mtime_ns for p in Path(tiny["dir"]).rglob("*")}
    assert after == before                                    # nothing created or changed
    if case == "pickle that would run code":
        assert not (tiny["dir"] / "code-ran").exists()


def test_stderr_is_one_line_outside_the_test_runner_too(tiny):
    """pytest and CliRunner capture warnings; a real process prints them. torch warns about a
    protocol-4 pickle before refusing it: the user still sees only dise's one line."""
    import subprocess
    import sys
    evil = _evil(tiny)
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "dise_cli", "profile", str(evil), "--data", str(tiny["data"])],
                         capture_output=True, text=True, cwd=tiny["dir"], timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert not (tiny["dir"] / "code-ran").exists()
