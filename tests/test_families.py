"""Every model family through the whole pipeline (profile, train-selector, export, evaluate, run),
with the models as people write them (tests/families.py), saved as state dicts plus --arch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import dise_cli
import families
from dise_cli.cli import app

TESTS = str(Path(__file__).resolve().parent)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _classifier(build, make, n=48):
    def setup():
        model = build()
        x, y = make(n, model)
        return model, {"x": x, "y": y}
    return setup


def _unlabelled(build, make, n=24):
    def setup():
        return build(), {"x": make(n)}
    return setup


# family -> (setup, extra CLI flags, what the profile's baseline must be)
FAMILIES = {
    "encoder then odeint": (_classifier(families.build_encoder_then_odeint, families.make_encoder_then_odeint_data),
                            [], "dopri5:rtol=0.001,atol=0.001"),
    "latent ODE at odeint's defaults": (_classifier(families.build_latent_ode, families.make_latent_ode_data, 32), [],
                                        "dopri5:rtol=1e-07,atol=1e-09"),
    "ANODE padding block, odeint_adjoint": (_classifier(families.build_anode, families.make_anode_data), [],
                                            "dopri5:rtol=0.001,atol=0.001,max_steps=1000"),
    "CNF density, tuple state, t 10 -> 0": (_unlabelled(families.build_cnf_row_time_density, families.make_circles, 16),
                                            [], "dopri5:rtol=1e-05,atol=1e-05"),
    "flow matching field f(x, t)": (_unlabelled(families.build_fm_field, families.make_noise), ["--t-span", "0,1"],
                                    "dopri5:rtol=0.001,atol=0.001"),
    "torchcfm field needing vmap": (_unlabelled(families.build_torchcfm_field, families.make_noise), ["--t-span", "0,1"],
                                    "dopri5:rtol=0.001,atol=0.001"),
    "field with a scalar-only time": (_unlabelled(families.build_scalar_time_field, families.make_noise, 12),
                                      ["--t-span", "0,1"], "dopri5:rtol=0.001,atol=0.001"),
    "rectified-flow MLP, time per row only": (_unlabelled(families.build_rectified_flow_mlp, families.make_noise),
                                              ["--t-span", "0,1"], "dopri5:rtol=0.001,atol=0.001"),
    "flow matching sampler with a lambda": (_unlabelled(families.build_fm_sampler, families.make_noise), [],
                                            "dopri5:rtol=0.0001,atol=0.0001"),
    "flow_matching ODESolver, midpoint step_size": (_unlabelled(families.build_fm_solver_sampler, families.make_noise),
                                                    [], "midpoint:step_size=0.05"),
}
BUILDERS = {"encoder then odeint": "build_encoder_then_odeint", "latent ODE at odeint's defaults": "build_latent_ode",
            "ANODE padding block, odeint_adjoint": "build_anode",
            "CNF density, tuple state, t 10 -> 0": "build_cnf_row_time_density",
            "flow matching field f(x, t)": "build_fm_field", "torchcfm field needing vmap": "build_torchcfm_field",
            "field with a scalar-only time": "build_scalar_time_field",
            "rectified-flow MLP, time per row only": "build_rectified_flow_mlp",
            "flow matching sampler with a lambda": "build_fm_sampler",
            "flow_matching ODESolver, midpoint step_size": "build_fm_solver_sampler"}


def run_pipeline(tmp_path: Path, model, data: dict, arch: str, extra: list) -> dict:
    """profile -> train-selector -> export -> evaluate -> run; returns the reports."""
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({k: v.contiguous() for k, v in data.items()}, str(tmp_path / "d.safetensors"))
    common = [tmp_path / "m.pt", "--data", tmp_path / "d.safetensors", "--code-path", TESTS, *extra]
    res = invoke("profile", *common, "--arch", arch, "--out", tmp_path / "p.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    profile = json.loads(res.stdout)
    res = invoke("train-selector", *common, "--arch", arch, "--profile", tmp_path / "p.safetensors",
                 "--epochs", 2, "--out", tmp_path / "s.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    res = invoke("export", tmp_path / "m.pt", "--arch", arch, "--code-path", TESTS, "--selector",
                 tmp_path / "s.safetensors", "--out", tmp_path / "b.dise")
    assert res.exit_code == 0, res.stderr
    res = invoke("evaluate", tmp_path / "b.dise", "--data", tmp_path / "d.safetensors", "--code-path", TESTS,
                 "--batch-sizes", 4, "--repeats", 1, "--json", "-")
    assert res.exit_code == 0, res.stderr
    evaluation = json.loads(res.stdout)
    res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d.safetensors", "--code-path", TESTS,
                 "--out", tmp_path / "pred.safetensors")
    assert res.exit_code == 0, res.stderr
    return {"profile": profile, "evaluate": evaluation, "export": res.stderr}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_the_pipeline(tmp_path, family):
    setup, extra, baseline = FAMILIES[family]
    model, data = setup()
    reports = run_pipeline(tmp_path, model, data, f"families:{BUILDERS[family]}", extra)
    profile = reports["profile"]
    assert profile["baseline"] == baseline                       # the model's own solver
    base = next(c for c in profile["candidates"] if c["candidate"] == baseline)
    if "y" in data:
        assert base["accuracy"] == 1.0                           # labels are the model's own predictions
    assert base["status"]["ok"] == len(data["x"])
    from safetensors.torch import load_file
    pred = load_file(str(tmp_path / "pred.safetensors"))
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    out, stats = bundle(data["x"], return_stats=True)
    assert torch.equal(pred["nfe"], stats.nfe)
    torch.testing.assert_close(pred["outputs"], out, rtol=1e-4, atol=1e-4)


def test_torchdyn_models_through_the_pipeline(tmp_path):
    pytest.importorskip("torchdyn")
    model = families.build_torchdyn_sequential()
    x, y = families.make_torchdyn_data(40, model)
    reports = run_pipeline(tmp_path, model, {"x": x, "y": y}, "families:build_torchdyn_sequential", [])
    profile = reports["profile"]
    assert profile["baseline"] == "tsit5:rtol=0.001,atol=0.001"    # torchdyn's default, with its step control
    assert dise_cli.load(tmp_path / "b.dise").manifest["programs"] == "split"    # no user code needed
    res = invoke("inspect", tmp_path / "m.pt", "--arch", "families:build_torchdyn_sequential", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--json", "-")
    info = json.loads(res.stdout)
    assert info["own_solver"]["library"] == "torchdyn" and info["own_solver"]["method"] == "tsit5"
    assert info["fidelity"]["passed"] and info["baseline_exact"]


def test_torchdyn_fixed_step_solver_is_read_and_run_exactly(tmp_path):
    """torchdyn's fixed-step solvers read their own ``odeint.__defaults__`` through the name dise wraps
    while it watches: rk4 over a 10-point grid is read, run as written, and emulated exactly."""
    pytest.importorskip("torchdyn")
    model = families.build_torchdyn_rk4()
    x, y = families.make_torchdyn_data(32, model)
    reports = run_pipeline(tmp_path, model, {"x": x, "y": y}, "families:build_torchdyn_rk4", [])
    profile = reports["profile"]
    assert profile["baseline"] == "rk4_classic:steps=1"            # one step per interval of the grid, as torchdyn
    base = next(c for c in profile["candidates"] if c["candidate"] == profile["baseline"])
    assert base["accuracy"] == 1.0 and base["nfe"]["mean"] == 36
    res = invoke("inspect", tmp_path / "m.pt", "--arch", "families:build_torchdyn_rk4", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--json", "-")
    info = json.loads(res.stdout)
    assert info["own_solver"]["library"] == "torchdyn" and info["own_solver"]["method"] == "rk4"
    assert info["fidelity"]["passed"] and info["baseline_exact"]
    # torch.export runs copies of the modules: the routed solve is still found, and the forward exports
    assert dise_cli.load(tmp_path / "b.dise").manifest["programs"] == "whole"


def test_a_module_registered_twice_exports(tmp_path):
    """One tensor under two keys of the state dict (safetensors refuses shared memory): the bundle
    stores a copy for the second key and loads into both."""
    model = families.build_encoder_then_odeint_shared()
    x, y = families.make_encoder_then_odeint_data(32, model)
    run_pipeline(tmp_path, model, {"x": x, "y": y}, "families:build_encoder_then_odeint_shared", [])
    import zipfile
    from safetensors.torch import load as load_tensors
    with zipfile.ZipFile(tmp_path / "b.dise") as bundle:
        loaded = load_tensors(bundle.read("model.safetensors"))
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_a_scipy_solve_ivp_sampler_is_named_in_one_line(tmp_path):
    """score_sde's probability-flow sampler solves the flattened batch with scipy's solve_ivp: dise says
    so, and how to write it so that dise can route it (exit 2, nothing written)."""
    pytest.importorskip("scipy")
    model = families.build_scipy_probability_flow()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": families.make_noise(16)}, str(tmp_path / "d.safetensors"))
    res = invoke("profile", tmp_path / "m.pt", "--arch", "families:build_scipy_probability_flow", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "scipy.integrate.solve_ivp (RK45)" in res.stderr and "odeint" in res.stderr
    assert not (tmp_path / "p.safetensors").exists()


def test_hand_written_solver_loop_is_a_clear_exit_2(tmp_path):
    model = families.build_hand_written_euler()
    x, y = families.make_hand_written_euler_data(32, model)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = invoke("profile", tmp_path / "m.pt", "--arch", "families:build_hand_written_euler", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no solver call" in res.stderr and not (tmp_path / "p.safetensors").exists()


def test_a_vmap_field_keeps_its_convention_in_the_bundle(tmp_path):
    """torchcfm's wrapper needs a 0-dim t (vmap gives each row its own): the bundle's f is vmapped too,
    so its DOPRI5 solve takes the same NFE and states as in memory. (Its speed is a benchmark's to
    measure, side by side: a timed assertion here failed on a loaded machine.)"""
    from dise_cli.integrators import Dopri5, TimeMode
    from dise_cli.reading import read_model
    model = families.build_torchcfm_field()
    run_pipeline(tmp_path, model, {"x": families.make_noise(24)}, "families:build_torchcfm_field", ["--t-span", "0,1"])
    bundle = dise_cli.load(tmp_path / "b.dise")
    assert bundle.manifest["programs"] == "split" and bundle.manifest["programs_time_mode"] == "vmap"
    memory = read_model(model, families.make_noise(8), t_span=torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert memory.field.mode is TimeMode.VMAP
    x = families.make_noise(256, seed=1)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solver = Dopri5(rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        sols = {name: solver.solve(ode.field, ode.encode(x).h0, t) for name, ode in
                (("bundle", bundle.ode), ("memory", memory))}
    assert torch.equal(sols["bundle"].nfe, sols["memory"].nfe)
    torch.testing.assert_close(sols["bundle"].ys, sols["memory"].ys, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build,make,task", [
    ("build_cnf_sampler", lambda n: {"x": families.make_gaussian_noise(n)}, "regression"),     # returns its state
    ("build_fm_solver_sampler", lambda n: {"x": families.make_noise(n)}, "regression"),
    ("build_encoder_then_odeint", lambda n: {"x": families.make_encoder_then_odeint_data(n)[0]}, "regression"),
    ("build_latent_ode", lambda n: {"x": families.make_latent_ode_data(n)[0]}, "classification"),
])
def test_the_task_without_labels(tmp_path, build, make, task):
    """Without labels an [N, C] output is judged by argmax only where it can only be class scores: not
    the ODE state (a sampler's output) and not shaped like the input (noise to samples). Otherwise it is
    judged by its error against the reference, the stricter verdict. --metric says regression itself;
    with --task classification it is exit 2."""
    torch.save(getattr(families, build)().state_dict(), tmp_path / "m.pt")
    save_file(make(12), str(tmp_path / "d.safetensors"))
    common = ["profile", tmp_path / "m.pt", "--arch", f"families:{build}", "--code-path", TESTS,
              "--data", tmp_path / "d.safetensors", "--candidates", "euler:steps=1", "--out", tmp_path / "p.sft"]
    res = invoke(*common, "--json", "-")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["task"] == task
    if task == "classification":
        res = invoke(*common, "--metric", "l2", "--json", "-")
        assert res.exit_code == 0 and json.loads(res.stdout)["task"] == "regression"
        res = invoke(*common, "--metric", "l2", "--task", "classification")
        assert res.exit_code == 2 and "--metric" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_run_gives_a_self_noising_sampler_the_same_draws_every_time(tmp_path):
    """A sampler that draws its own noise in its forward: two ``dise run``s gave other samples (up to
    1.6 apart), neither the bundle's. Each batch is seeded as evaluate seeds it."""
    from safetensors.torch import load_file
    from dise_cli.seeding import seeded
    c = families.make_noise(24, seed=3)
    run_pipeline(tmp_path, families.build_self_noising_sampler(), {"x": c}, "families:build_self_noising_sampler", [])
    outs = []
    for name in ("a", "b"):
        res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d.safetensors", "--code-path", TESTS,
                     "--batch-size", 64, "--out", tmp_path / f"{name}.safetensors")
        assert res.exit_code == 0, res.stderr
        outs.append(load_file(str(tmp_path / f"{name}.safetensors"))["outputs"])
    assert torch.equal(outs[0], outs[1])
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=(TESTS,))
    with seeded(0):
        torch.testing.assert_close(outs[0], bundle(c), rtol=0, atol=1e-6)
