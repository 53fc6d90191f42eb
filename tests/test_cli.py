"""`dise profile` and `dise inspect` end to end through typer's CliRunner, as CI and users run them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny_models
from dise_cli.cli import app
from dise_cli.profiles import identity, read_profile

TESTS = str(Path(__file__).resolve().parent)
REPO = Path(TESTS).parent
runner = CliRunner()

PROFILE_KEYS = {"schema_version", "task", "n_samples", "t_span", "baseline", "notes", "labels", "reference_dtype",
                "candidates", "oracle", "best_single", "made_with", "world_size"}
CANDIDATE_KEYS = {"candidate", "accuracy", "auc", "nfe", "status", "failed_samples", "agreement_with_baseline",
                  "seconds_per_sample", "seconds_per_nfe", "seconds_per_step", "peak_memory_mb"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_profile_end_to_end(tiny):
    out, js = tiny["dir"] / "p.safetensors", tiny["dir"] / "p.json"
    res = invoke("profile", tiny["model"], "--data", tiny["data"], *tiny["arch"], "--out", out, "--json", js)
    assert res.exit_code == 0, res.stderr
    assert "oracle" in res.stdout and "dopri5:rtol=0.001,atol=0.001" in res.stdout
    report = json.loads(js.read_text())
    assert set(report) == PROFILE_KEYS
    assert set(report["candidates"][0]) == CANDIDATE_KEYS
    assert set(report["candidates"][0]["nfe"]) == {"mean", "p50", "p95", "max"}
    assert set(report["candidates"][0]["status"]) == {"ok", "max_steps", "non_finite", "underflow"}
    assert set(report["oracle"]) == {"accuracy", "auc", "nfe_mean", "seconds_mean", "share"}
    assert set(report["best_single"]) == {"candidate", "accuracy", "auc", "nfe_mean", "match_tolerance_pp"}
    assert report["task"] == "classification" and report["n_samples"] == 40
    euler, rk4, dopri = report["candidates"]
    assert euler["nfe"]["mean"] == 1 and rk4["nfe"]["mean"] == 4 and dopri["nfe"]["mean"] > 4
    assert dopri["accuracy"] == pytest.approx(37 / 40)            # three labels were flipped
    profile = read_profile(out)
    assert profile.candidates == [c["candidate"] for c in report["candidates"]]
    assert profile.nfe.shape == (40, 3) and profile.correct.shape == (40, 3)
    assert profile.meta["model_sha256"] and profile.meta["data_sha256"] and profile.task == "classification"
    assert torch.equal(profile.index, torch.arange(40))


def test_profile_json_to_stdout_and_limit(tiny):
    out = tiny["dir"] / "p.safetensors"
    res = invoke("profile", tiny["model"], "--data", tiny["data"], *tiny["arch"], "--out", out, "--json", "-",
                 "--limit", 10, "--seed", 3, "--batch-size", 4, "--candidates", "euler:steps=2,dopri5:rtol=1e-4,atol=1e-4")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)                               # stdout holds only the JSON
    assert report["n_samples"] == 10 and len(report["candidates"]) == 2
    assert "profiling 10 of 40 samples" in res.stderr
    assert read_profile(out).index.tolist() == sorted(read_profile(out).index.tolist())


def test_profile_is_deterministic(tiny):
    paths = [tiny["dir"] / f"p{i}.safetensors" for i in range(2)]
    for p in paths:
        assert invoke("profile", tiny["model"], "--data", tiny["data"], *tiny["arch"], "--out", p,
                      "--limit", 20, "--seed", 1).exit_code == 0
    assert identity(paths[0]) == identity(paths[1])             # all but the measured seconds (header "timing")


def test_profile_without_labels_uses_a_reference_solve(tiny):
    save_file({"x": tiny["x"]}, str(tiny["dir"] / "nolabels.safetensors"))
    js = tiny["dir"] / "r.json"
    res = invoke("profile", tiny["model"], "--data", tiny["dir"] / "nolabels.safetensors", *tiny["arch"],
                 "--out", tiny["dir"] / "p.safetensors", "--json", js)
    assert res.exit_code == 0, res.stderr
    report = json.loads(js.read_text())
    assert report["labels"].startswith("reference:dopri5") and report["candidates"][2]["accuracy"] == 1.0
    assert report["reference_dtype"] == "float64" and "a float64 reference solve (dopri5" in res.stdout


def test_a_closure_f_is_judged_against_a_reference_in_its_own_dtype_and_says_so(tmp_path):
    """A sampler whose f is a lambda cannot be copied to float64: the reference runs in float32, and the
    table said "float64" all the same."""
    import families
    model = families.build_fm_sampler()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": families.make_noise(16)}, str(tmp_path / "d.safetensors"))
    res = invoke("profile", tmp_path / "m.pt", "--arch", "families:build_fm_sampler", "--code-path", TESTS, "--data",
                 tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "r.json").read_text())["reference_dtype"] == "float32"
    assert "a float32 reference solve" in res.stdout


def test_profile_regression_with_trajectory_targets(tmp_path):
    torch.save(tiny_models.build_wrapper().state_dict(), tmp_path / "w.pt")
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = tiny_models.build_wrapper()(x)                        # [T, N, 2], time-major as odeint returns
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    js = tmp_path / "r.json"
    res = invoke("profile", tmp_path / "w.pt", "--arch", "tiny_models:build_wrapper", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors", "--json", js)
    assert res.exit_code == 0, res.stderr
    report = json.loads(js.read_text())
    assert report["task"] == "regression" and report["t_span"] == [0.0, 0.5, 1.0]
    rows = {r["candidate"].split(":")[0]: r for r in report["candidates"]}
    assert rows["euler"]["mean_error"] > max(rows["rk4"]["mean_error"], rows["dopri5"]["mean_error"])
    assert report["beta"] == pytest.approx(rows["dopri5"]["mean_error"])
    assert read_profile(tmp_path / "p.safetensors").gamma.shape == (12, 3)


def test_profile_project_file(tiny):
    (tiny["dir"] / "dise.yaml").write_text(
        f"model: model.pt\narch: tiny_models:build_classifier\ncode_path: {TESTS}\ndata: data.safetensors\n"
        f"candidates: euler:steps=1,dopri5:rtol=1e-3,atol=1e-3\n")
    res = invoke("profile", tiny["dir"] / "dise.yaml", "--out", tiny["dir"] / "p.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    assert len(json.loads(res.stdout)["candidates"]) == 2


def test_inspect(tiny):
    res = invoke("inspect", tiny["model"], *tiny["arch"], "--data", tiny["data"], "--json", "-")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["ode_block"] == "1" and info["ode_function"] == "1.odefunc" and info["h0_shape"] == [4]
    assert info["parameters"] == {"encoder": 12, "ode_function": 5 * 16 + 16 + 16 * 4 + 4, "decoder": 15,
                                  "encoder_and_decoder": None}
    assert info["f_call"]["flops_per_sample"] > 0 and info["time_mode"] == "broadcast"
    plain = invoke("inspect", tiny["model"], *tiny["arch"])
    assert plain.exit_code == 0 and "unknown: pass --data" in plain.stdout


def test_debug_shows_the_traceback(tiny):
    """--debug adds the traceback and keeps the exit code (2 here, not the 1 of a gate not met)."""
    res = invoke("profile", tiny["dir"] / "nope.pt", "--data", tiny["data"], "--debug")
    assert res.exit_code == 2 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")


def test_entry_point_subprocess():
    res = subprocess.run([sys.executable, "-m", "dise_cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout.startswith("dise ")
    res = subprocess.run([sys.executable, "-m", "dise_cli", "profile", "missing.pt"], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 2 and res.stderr.startswith("error: ")


@pytest.mark.parametrize("factory", ["build_nested", "build_torchdyn_like"])
def test_profile_other_model_shapes(tmp_path, factory):
    module = getattr(tiny_models, factory)()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = module(x).argmax(1)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = invoke("profile", tmp_path / "m.pt", "--arch", f"tiny_models:{factory}", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["task"] == "classification" and report["candidates"][2]["accuracy"] == 1.0


def test_profile_bare_ode_function_with_y0_and_time_grid(tmp_path):
    func = tiny_models.build_bare()
    torch.save(func.state_dict(), tmp_path / "f.pt")
    y0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 0.5, 1.0, 1.5])
    from torchdiffeq import odeint
    with torch.no_grad():
        y = odeint(func, y0, t, rtol=1e-8, atol=1e-8)             # [T, N, 2], time-major
    save_file({"y0": y0, "t": t, "y": y}, str(tmp_path / "d.safetensors"))
    js = tmp_path / "r.json"
    res = invoke("profile", tmp_path / "f.pt", "--arch", "tiny_models:build_bare", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors", "--json", js)
    assert res.exit_code == 0, res.stderr
    report = json.loads(js.read_text())
    assert report["t_span"] == [0.0, 0.5, 1.0, 1.5] and report["task"] == "regression"
    dopri = report["candidates"][2]
    assert dopri["mean_error"] < 1e-5 and dopri["status"]["ok"] == 16
    info = json.loads(invoke("inspect", tmp_path / "f.pt", "--arch", "tiny_models:build_bare", "--code-path", TESTS,
                             "--data", tmp_path / "d.safetensors", "--json", "-").stdout)
    assert info["kind"] == "bare" and info["t_span_source"] == "data 't'" and info["h0_shape"] == [2]
