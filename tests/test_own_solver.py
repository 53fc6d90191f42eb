"""The model's own solver: read from its call, emulated by dise (exactly, or the closest it has, said
plainly), or refused where dise cannot emulate it; it is the baseline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny_models
from dise_cli.cli import app
from dise_cli.integrators.emulation import emulate

TESTS = str(Path(__file__).resolve().parent)


@pytest.mark.parametrize("library,method,options,spec,exact", [
    ("torchdiffeq", "dopri5", {}, "dopri5:rtol=1e-07,atol=1e-09", True),
    ("torchdiffeq", "dopri5", {"max_num_steps": 50, "first_step": 0.1},
     "dopri5:rtol=1e-07,atol=1e-09,max_steps=50,first_step=0.1", True),
    ("torchdiffeq", "dopri5", {"safety": 0.8}, "dopri5:rtol=1e-07,atol=1e-09", False),
    ("torchdiffeq", "dopri5", {"dtype": torch.float64}, "dopri5:rtol=1e-07,atol=1e-09", True),
    ("torchdiffeq", "dopri5", {"dtype": torch.float32}, "dopri5:rtol=1e-07,atol=1e-09", False),   # float32 times
    ("torchdiffeq", "bosh3", {}, "bosh3:rtol=1e-07,atol=1e-09", True),
    ("torchdiffeq", "dopri8", {"max_num_steps": 50}, "dopri8:rtol=1e-07,atol=1e-09,max_steps=50", True),
    ("torchdiffeq", "adaptive_heun", {}, "adaptive_heun:rtol=1e-07,atol=1e-09", True),
    ("torchdiffeq", "fehlberg2", {}, "fehlberg2:rtol=1e-07,atol=1e-09", True),
    ("torchdiffeq", "dopri5", {"step_t": torch.tensor([0.5, 0.25]), "jump_t": [0.75]},
     "dopri5:rtol=1e-07,atol=1e-09,step_t=0.25/0.5,jump_t=0.75", True),
    ("torchdiffeq", "dopri8", {"jump_t": torch.tensor([0.5, 0.5])}, "dopri8:rtol=1e-07,atol=1e-09", False),
    ("torchdiffeq", "rk4", {"step_size": 0.1, "jump_t": torch.tensor([0.5])}, "rk4:step_size=0.1", True),
    ("torchdiffeq", "rk4", {"step_size": 0.1}, "rk4:step_size=0.1", True),
    ("torchdiffeq", "euler", {}, "euler:steps=1", True),
    ("torchdiffeq", "midpoint", {"step_size": 0.05, "perturb": True}, "midpoint:step_size=0.05", False),
    ("torchdyn", "rk4", {}, "rk4_classic:steps=1", True),
    ("torchdyn", "tsit5", {}, "tsit5:rtol=1e-07,atol=1e-09", True),
    ("torchdyn", "dopri5", {}, "dopri5:rtol=1e-07,atol=1e-09,control=torchdyn", True),
])
def test_emulation(library, method, options, spec, exact):
    em = emulate(library, method, 1e-7, 1e-9, options)
    assert em.integrator.spec == spec and em.exact is exact
    assert bool(em.note) is not exact


@pytest.mark.parametrize("library,method,options", [
    ("torchdiffeq", "implicit_adams", {}), ("torchdiffeq", "scipy_solver", {}),
    ("torchdiffeq", "euler", {"grid_constructor": lambda f, y0, t: t}), ("torchdyn", "ieuler", {}),
])
def test_methods_dise_cannot_emulate(library, method, options):
    em = emulate(library, method, 1e-3, 1e-3, options)
    assert em.integrator is None and em.note


def _files(tmp_path, build):
    module = getattr(tiny_models, build)()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        save_file({"x": x, "y": module(x).argmax(1)}, str(tmp_path / "d.safetensors"))
    return [str(tmp_path / "m.pt"), "--arch", f"tiny_models:{build}", "--code-path", TESTS,
            "--data", str(tmp_path / "d.safetensors")]


def test_a_method_dise_cannot_emulate_is_exit_2_until_candidates_are_named(tmp_path):
    args = _files(tmp_path, "build_adams")
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 2 and "'implicit_adams'" in res.stderr and "--candidates" in res.stderr
    res = CliRunner().invoke(app, ["profile", *args, "--candidates", "euler:steps=1,dopri5:rtol=1e-5,atol=1e-5",
                                   "--out", str(tmp_path / "p.safetensors"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["baseline"] == "dopri5:rtol=1e-05,atol=1e-05"
    assert any("implicit_adams" in n for n in report["notes"])


def test_another_adaptive_method_is_the_models_own_baseline(tmp_path):
    args = _files(tmp_path, "build_bosh3")
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["own_solver"]["method"] == "bosh3" and info["baseline"] == "bosh3:rtol=1e-05,atol=1e-05"
    assert info["baseline_exact"] is True and not info["notes"]
    assert info["candidates"] == ["euler:steps=1", "rk4:steps=1", "bosh3:rtol=1e-05,atol=1e-05"]
    assert info["fidelity"]["passed"] and info["fidelity"]["closest_part"] == 0


def test_closest_baseline_is_said_plainly(tmp_path):
    args = _files(tmp_path, "build_with_safety")
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["own_solver"]["options"] == {"safety": 0.8} and info["baseline"] == "dopri5:rtol=1e-05,atol=1e-05"
    assert info["baseline_exact"] is False and any("safety not copied" in n for n in info["notes"])
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 0 and "safety not copied" in res.stderr


def test_inspect_lists_every_solve_and_solve_picks_one(tmp_path):
    args = _files(tmp_path, "build_two_blocks")
    del args[args.index("--data") + 1]
    args.remove("--data")
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    res = CliRunner().invoke(app, ["inspect", *args, "--data", str(tmp_path / "x.safetensors"), "--json", "-"])
    info = json.loads(res.stdout)
    assert [s["block"] for s in info["solves"]] == ["a", "b"] and sum(s["routed"] for s in info["solves"]) == 1
    res = CliRunner().invoke(app, ["inspect", *args, "--data", str(tmp_path / "x.safetensors"), "--solve", "1",
                                   "--json", "-"])
    info = json.loads(res.stdout)
    assert info["solves"][1]["routed"] and info["ode_block"] == "b" and info["fidelity"]["passed"]


def test_tolerances_dise_cannot_run_per_sample_take_the_smallest(tmp_path):
    """Tolerances that are no number and were not read per element of a sample (they differ from sample
    to sample) run at their smallest value, said plainly."""
    mixed = emulate("torchdiffeq", "dopri5", [1e-5, 1e-3], 1e-5, {})
    assert not mixed.exact and "smallest value, 1e-05" in mixed.note
    assert mixed.integrator.spec == "dopri5:rtol=1e-05,atol=1e-05"


@pytest.mark.parametrize("build,baseline", [
    ("build_per_component_tolerances", "dopri5:rtol=1e-05fx4/1e+20f,atol=1e-05fx4/1e+20f"),
    ("build_tolerance_per_element", "dopri5:rtol=1e-05,atol=1e-07fx2/0.001fx2"),
    ("build_third_steps", "rk4:step_size=0.3333333333333333"),
    ("build_jump_at_half", "dopri5:rtol=1e-05,atol=1e-05,step_t=0.25,jump_t=0.5"),
    ("build_jump_at_half_backwards", "dopri5:rtol=1e-05,atol=1e-05,step_t=0.25,jump_t=0.5"),
])
def test_the_models_own_tolerances_and_steps_are_run_exactly(tmp_path, build, baseline):
    """Tolerances per tuple component (FFJORD's 1e20 for its regularisation states), a tolerance tensor
    over the state's elements, a step of 1/3, and step_t and jump_t times (forwards, and backwards on a
    tuple state) are the model's own solver exactly: the baseline takes, sample by sample, the NFE
    torchdiffeq takes for that sample alone (through the profile file's text)."""
    from dise_cli.profiles import read_profile
    args = _files(tmp_path, build)
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"] == baseline and info["baseline_exact"] is True and not info["notes"]
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 0, res.stderr
    profile = read_profile(tmp_path / "p.safetensors")
    model = getattr(tiny_models, build)()
    model.load_state_dict(torch.load(tmp_path / "m.pt"))
    calls = [0]
    model.func.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    own = []
    with torch.no_grad():
        for i in profile.index.tolist():
            calls[0] = 0
            model(x[i:i + 1])
            own.append(calls[0])
    assert profile.nfe[:, profile.baseline].tolist() == own
