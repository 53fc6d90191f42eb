"""Samplers over a denoiser D(x, σ) (EDM's ``edm_sampler``, k-diffusion's ``sample_heun`` and
``sample_euler``): dise reads f as a denoiser, dx/dσ = (x - D) / σ, the loop's start (the noise times
σ_max, EDM's in float64) and its last Euler step to σ = 0, and runs the loop's own steps exactly; a
start it does not guess is refused, never misread."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import denoisers
import dise_cli
import families
from dise_cli.cli import app
from dise_cli.integrators import Dopri5, Heun2
from dise_cli.integrators.vector_field import VectorField
from dise_cli.loopform import Denoised, LoopForm
from dise_cli.profiling import Reference
from test_loops import _files as loop_files

TESTS = str(Path(__file__).resolve().parent)


def _files(tmp_path, build: str, data: dict) -> list[str]:
    return loop_files(tmp_path, f"denoisers:{build}", data)


def _inspect(tmp_path, build: str, x: torch.Tensor) -> dict:
    res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, build, {"x": x}), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("build, steps", [("build_edm_sampler", 6), ("build_edm_sampler_18", 18)])
def test_edm_sampler_is_read_as_heun_on_its_schedule_from_noise_times_sigma_max(tmp_path, build, steps):
    """EDM's 2 (N - 1) + 1 calls: Heun over its ρ schedule from 80 to 0.002, in float64 from the noise
    times 80, then Euler to 0; the model's own outputs are reproduced exactly."""
    model = getattr(denoisers, build)()
    info = _inspect(tmp_path, build, families.make_noise(16))
    grid = [float(t) for t in torch.cat([(80 ** (1 / 7) + torch.arange(steps, dtype=torch.float64) / (steps - 1)
                                          * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7])]
    assert info["baseline"] == Heun2(grid=tuple(grid)).spec and info["baseline_exact"]
    assert info["t_span"] == [grid[0], grid[-1]] and info["fidelity"]["difference"] == 0
    assert info["loop_form"] == {"denoiser": True, "start_scale": 80.0, "start_dtype": "float64",
                                            "end_at": 0.0}
    note = next(n for n in info["notes"] if n.startswith("dise saw no solver call"))
    assert f"calls f {2 * (steps - 1) + 1} times" in note and "dx/dσ = (x - D(x, σ)) / σ" in note
    assert "its last step, to 0, is one Euler step" in note
    assert model.net.model[0].weight.dtype == torch.float32          # the net is the user's, untouched
    # the default candidates: one step, the loop's Heun on every second (and from 16 steps every fourth) σ
    thinned = [Heun2(grid=(*grid[:-1:k], grid[-1])).spec for k in ((2, 4) if steps > 16 else (2,))]
    assert info["candidates"] == ["euler:steps=1", "rk4:steps=1", *thinned, info["baseline"]]


def test_an_adaptive_candidate_stepping_past_sigma_min_is_named_with_the_step_t_to_add(tmp_path):
    args = _files(tmp_path, "build_k_heun", {"x": families.make_noise(16)})
    res = CliRunner().invoke(app, ["inspect", *args, "--candidates", "euler:steps=1,dopri5:rtol=1e-3,atol=1e-3",
                                   "--json", "-"])
    assert res.exit_code == 0, res.stderr
    notes = json.loads(res.stdout)["notes"]
    assert any("dopri5:rtol=0.001,atol=0.001 steps past the solve's end" in n and "add step_t=0.03" in n
               for n in notes), notes
    res = CliRunner().invoke(app, ["inspect", *args, "--candidates",
                                   "euler:steps=1,dopri5:rtol=1e-3,atol=1e-3,step_t=0.029999997", "--json", "-"])
    assert res.exit_code == 0 and not any("steps past" in n for n in json.loads(res.stdout)["notes"])


def test_k_diffusion_heun_through_the_pipeline_routes_to_the_loop_exactly(tmp_path):
    """k-diffusion's ``sample_heun`` (float32, σ per row): profile -> train-selector -> export ->
    evaluate -> run; the bundle (torch.export programs) gives the model's own outputs where it routes
    to the loop's Heun, and the cheap candidates run between the same σ's, never calling D at 0."""
    from test_families import run_pipeline
    model, x = denoisers.build_k_heun(), families.make_noise(24)
    info = _inspect(tmp_path, "build_k_heun", x)
    assert info["baseline"].startswith("heun2:grid=14.6") and info["fidelity"]["difference"] <= 1e-6
    reports = run_pipeline(tmp_path, model, {"x": x}, "denoisers:build_k_heun", [])
    profile = reports["profile"]
    assert all(c["status"]["ok"] == len(x) for c in profile["candidates"])
    base = next(c for c in profile["candidates"] if c["candidate"] == info["baseline"])
    calls = []
    hook = model.model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(x)
    hook.remove()
    # the model's own calls of D, the last Euler step's one (after dise's solve) included: 4 Heun steps, 1 Euler
    assert base["nfe"]["max"] == base["nfe"]["mean"] == len(calls) == 9
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    assert bundle.manifest["reading"]["loop_form"]["denoiser"] and bundle.manifest["programs"]
    with torch.no_grad():
        out, stats = bundle(x, return_stats=True)
        own = model(x)
    routed = stats.integrator == stats.candidates.index(info["baseline"])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[routed], own[routed], rtol=0, atol=1e-6)
    assert reports["evaluate"]["baseline_only"]["mean_error"] is not None     # the reference solved to σ_min


def test_k_diffusion_euler_is_read_as_euler_on_its_sigmas(tmp_path):
    info = _inspect(tmp_path, "build_k_euler", families.make_noise(16))
    assert info["baseline"].startswith("euler:grid=14.6") and info["baseline_exact"]
    assert info["fidelity"]["difference"] == 0 and info["loop_form"]["start_scale"] == pytest.approx(14.6)


@pytest.mark.parametrize("build, baseline, form", [
    # a float32-only D the float64 loop casts for: the float64 reading fails in D, the input's dtype does
    ("build_casting_edm", "heun2:grid=80/", {"denoiser": True, "start_scale": 80.0, "start_dtype": None,
                                             "end_at": 0.0}),
    # sigmas without the appended 0: Heun all the way to σ_min, no last step
    ("build_no_zero_heun", "heun2:grid=14.6", {"denoiser": True, "start_scale": pytest.approx(14.6),
                                               "start_dtype": None, "end_at": None}),
    # σ handed to D as a Python float and taken by math.log: D is never probed at the default grid's 0
    ("build_float_sigma_euler", "euler:grid=14.6", {"denoiser": True, "start_scale": pytest.approx(14.6),
                                                    "start_dtype": None, "end_at": 0.0}),
])
def test_denoiser_loops_written_otherwise_are_read(tmp_path, build, baseline, form):
    info = _inspect(tmp_path, build, families.make_noise(16))
    assert info["baseline"].startswith(baseline) and info["baseline_exact"], info["notes"]
    assert info["loop_form"] == form and info["fidelity"]["passed"] and info["fidelity"]["difference"] <= 1e-5


def test_a_start_dise_does_not_guess_is_refused(tmp_path):
    res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, "build_scaled_twice", {"x": families.make_noise(16)})])
    assert res.exit_code == 2, res.stdout
    assert "pair up as Heun steps whose last step is Euler" in res.stderr and "denoiser" in res.stderr


def test_denoised_is_the_velocity_of_the_probability_flow_with_a_sigma_per_row_or_one():
    net = denoisers.Preconditioned()
    x, sigma = torch.randn(5, 2), torch.full((5,), 3.0)
    want = (x - net(x, sigma)) / 3.0
    torch.testing.assert_close(Denoised(net, "x,t")(x, sigma), want)
    torch.testing.assert_close(Denoised(net, "x,t")(x, torch.tensor(3.0)), want)
    torch.testing.assert_close(Denoised(net, "x,t")(x, sigma[:, None]), want)            # [N, 1]
    images = torch.randn(5, 1, 2, 2)
    flat = lambda x, s: x * s.reshape(-1, 1, 1, 1)                                 # noqa: E731 - D = x σ
    torch.testing.assert_close(Denoised(flat, "x,t")(images, torch.full((5, 1), 3.0)), (images - 3 * images) / 3)
    form = LoopForm(denoiser=True, start_scale=80.0, start_dtype="float64", end_at=0.0)
    assert LoopForm.from_dict(form.to_dict()) == form and LoopForm.from_dict(None) is None
    assert form.start(torch.ones(2, 2)).dtype == torch.float64 and float(form.start(torch.ones(1))[0]) == 80.0


def test_the_reference_stops_at_the_end_where_f_fails_beyond_it():
    """dopri5's steps pass the end and interpolate back; a denoiser's velocity is NaN below σ = 0, so
    the rows that failed are solved again with steps that stop at the end."""
    net = denoisers.Preconditioned()
    field = VectorField.detect(Denoised(net, "x,t"), torch.randn(4, 2), torch.tensor([14.6, 0.03], dtype=torch.float64),
                               order="x,t")
    h0, t = 14.6 * torch.randn(4, 2), torch.tensor([14.6, 0.03], dtype=torch.float64)
    plain = Dopri5(rtol=1e-7, atol=1e-7).solve(field, h0, t)
    assert not torch.isfinite(plain.ys[-1]).all()                     # what the reference would have given
    ys = Reference(Dopri5(rtol=1e-3, atol=1e-3)).solve(type("P", (), {"field": field, "h0": h0, "t": t})())
    assert torch.isfinite(ys).all()
    stopped = Dopri5(rtol=1e-7, atol=1e-7, step_t=(0.03,)).solve(field, h0, t)
    torch.testing.assert_close(ys[-1], stopped.ys[-1])


def test_export_reads_the_selectors_data_rows_where_noise_reads_the_model_otherwise(tmp_path, monkeypatch):
    """A time mode that held on the data's rows may not on noise (f's per-row answer equal to its batch
    answer bit for bit for some inputs only): export then reads the model on the rows the selector keeps,
    as it does for a model that rejects noise."""
    from test_families import invoke, run_pipeline
    import dise_cli.exporting as exporting
    model, x = denoisers.build_k_euler(), families.make_noise(24)
    run_pipeline(tmp_path, model, {"x": x}, "denoisers:build_k_euler", [])
    real = exporting.read_model

    def read_noise_otherwise(module, rows, **kwargs):
        ode = real(module, rows, **kwargs)
        if kwargs["data_name"].startswith("noise"):
            record = ode.record()
            ode.record = lambda: {**record, "time_mode": "vmap" if record["time_mode"] != "vmap" else "rows"}
        return ode
    monkeypatch.setattr(exporting, "read_model", read_noise_otherwise)
    res = invoke("export", tmp_path / "m.pt", "--arch", "denoisers:build_k_euler", "--code-path", TESTS,
                 "--selector", tmp_path / "s.safetensors", "--out", tmp_path / "again.dise")
    assert res.exit_code == 0, res.stderr
    bundle = dise_cli.load(tmp_path / "again.dise", code_path=[TESTS])
    with torch.no_grad():
        torch.testing.assert_close(bundle(x), dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])(x))
