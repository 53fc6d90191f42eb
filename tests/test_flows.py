"""Issue 13: task figures (NLP, energy distance) against closed forms, and a tiny CNF (tuple state,
exact trace) and a tiny flow-matching sampler through the whole pipeline with error budgets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import dise_cli
import families
from dise_cli.cli import app
from dise_cli.errors import UsageError
from dise_cli.figures import check_figure, energy_distance, nlp
from dise_cli.profiles import read_profile

TESTS = str(Path(__file__).resolve().parent)


def test_energy_distance_of_known_samples():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert energy_distance(a, a.clone()) == pytest.approx(0.0)
    # two point masses d apart: 2d - 0 - 0
    assert energy_distance(torch.zeros(3, 2), torch.tensor([[3.0, 4.0]] * 5)) == pytest.approx(10.0)
    # {0, 1} against {0}: 2 * mean(0, 1) - mean(0, 1, 1, 0) - 0 = 1 - 0.5
    assert energy_distance(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0]])) == pytest.approx(0.5)
    assert energy_distance(torch.tensor([[float("nan")]]), torch.tensor([[0.0]])) == math.inf


def test_nlp_and_bits_per_dimension():
    out = nlp(torch.tensor([[-1.0], [-3.0]]), input_dim=2)
    assert out["nlp"] == pytest.approx(2.0) and out["bits_per_dim"] == pytest.approx(2.0 / (2 * math.log(2)))
    with pytest.raises(UsageError, match="--figure"):
        check_figure("fid")


class LinearCNF(torch.nn.Module):
    """dz/dt = a z in 2-D, d log p/dt = -tr(a I) = -2a: log p(x) = log N(x e^{-aT}; 0, σ² I) - 2aT."""

    def __init__(self, a: float = 0.3):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))

    def forward(self, t, states):
        z = states[0]
        return self.a * z, -2 * self.a * torch.ones(len(z), 1)


def build_linear_density() -> torch.nn.Module:
    return families.CNFDensity(LinearCNF()).eval()


def test_the_nlp_of_a_linear_flow_matches_its_closed_form(tmp_path, monkeypatch):
    monkeypatch.setattr(families, "build_linear_density", build_linear_density, raising=False)
    model = build_linear_density()
    x = families.make_circles(24, seed=3)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": x}, str(tmp_path / "d.safetensors"))
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "m.pt"), "--arch", "families:build_linear_density",
                                   "--code-path", TESTS, "--data", str(tmp_path / "d.safetensors"), "--metric", "mae",
                                   "--figure", "nlp", "--candidates", "rk4:steps=40,dopri5:rtol=1e-5,atol=1e-5",
                                   "--out", str(tmp_path / "p.safetensors"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    a, T = 0.3, 10.0                                               # CNFDensity solves from t = 10 to 0
    var = 0.1                                                      # the example's p_z0 = N(0, 0.1 I)
    z0 = x.double() * math.exp(-a * T)
    log_p = -0.5 * (z0.pow(2).sum(1) / var) - math.log(2 * math.pi * var) - 2 * a * T
    expected = float(-log_p.mean())
    dopri = next(r for r in report["candidates"] if r["candidate"].startswith("dopri5"))
    assert report["figure"] == "nlp" and dopri["figure"]["nlp"] == pytest.approx(expected, rel=1e-4)
    assert dopri["figure"]["bits_per_dim"] == pytest.approx(expected / (2 * math.log(2)), rel=1e-4)


def _through_the_pipeline(tmp_path, builder: str, data: torch.Tensor, profile_args: list, budget: list,
                          evaluate_args: tuple = ()) -> dict:
    module = getattr(families, builder)()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": data}, str(tmp_path / "d.safetensors"))
    runner = CliRunner()
    common = [tmp_path / "m.pt", "--arch", f"families:{builder}", "--code-path", TESTS]

    def invoke(*args, code=0):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == code, res.stderr
        return res

    profile = json.loads(invoke("profile", *common, "--data", tmp_path / "d.safetensors", *profile_args,
                                "--out", tmp_path / "p.safetensors", "--json", "-").stdout)
    train = json.loads(invoke("train-selector", *common, "--data", tmp_path / "d.safetensors", "--profile",
                              tmp_path / "p.safetensors", "--epochs", 3, *budget, "--out", tmp_path / "s.safetensors",
                              "--json", "-").stdout)
    invoke("export", *common, "--selector", tmp_path / "s.safetensors", "--out", tmp_path / "b.dise")
    evaluation = json.loads(invoke("evaluate", tmp_path / "b.dise", "--data", tmp_path / "d.safetensors",
                                   "--code-path", TESTS, "--batch-sizes", 8, "--repeats", 1, *budget,
                                   *evaluate_args, "--json", "-").stdout)
    return {"profile": profile, "train": train, "evaluate": evaluation}


def test_a_tiny_cnf_density_through_the_pipeline(tmp_path):
    out = _through_the_pipeline(tmp_path, "build_cnf_row_time_density", families.make_circles(32),
                                ["--metric", "mae", "--figure", "nlp",
                                 "--candidates", "rk4:steps=8,rk4:steps=32,dopri5:rtol=1e-5,atol=1e-5"],
                                ["--max-error-increase", 50])
    assert out["profile"]["figure"] == "nlp" and all("nlp" in r["figure"] for r in out["profile"]["candidates"])
    train = out["train"]
    assert train["budgets"]["max_error_increase_pct"] == 50 and "nlp" in train["dise"]["figure"]
    assert train["dise"]["mean_error"] <= 1.5 * train["baseline_only"]["mean_error"] * (1 + 1e-9)   # the budget held
    assert "nlp" in out["evaluate"]["dise"]["figure"]
    assert {g["gate"] for g in out["evaluate"]["gates"]} == {"max_error_increase"}


def test_a_tiny_flow_matching_sampler_through_the_pipeline(tmp_path):
    held_out = families.make_noise(40) * 0.5 + 1.0          # stands for samples of the target distribution
    save_file({"x": held_out}, str(tmp_path / "h.safetensors"))
    figure_data = ["--figure-data", tmp_path / "h.safetensors"]
    out = _through_the_pipeline(tmp_path, "build_fm_sampler", families.make_noise(48),
                                ["--metric", "l2", "--figure", "energy", *figure_data,
                                 "--candidates", "euler:steps=4,midpoint:steps=4,rk4:steps=4,dopri5:rtol=1e-4,atol=1e-4"],
                                ["--max-deviation", 0.05], figure_data)
    dopri = out["profile"]["candidates"][-1]
    assert dopri["figure"]["energy_distance"] < out["profile"]["candidates"][0]["figure"]["energy_distance"] + 1e-9
    # the distance to the held-out samples is the energy distance of each candidate's outputs to them
    stored = read_profile(tmp_path / "p.safetensors")
    assert torch.equal(stored.figure_data, held_out)
    for k, row in enumerate(out["profile"]["candidates"]):
        assert row["figure"]["energy_distance_data"] == pytest.approx(energy_distance(stored.outputs[:, k], held_out))
    assert "energy_distance_data" in out["profile"]["oracle"]["figure"]
    assert out["train"]["dise"]["mean_deviation"] <= 0.05 + 1e-9              # the budget held on the split
    assert "energy_distance_data" in out["train"]["dise"]["figure"]
    assert {"energy_distance", "energy_distance_data"} <= set(out["evaluate"]["dise"]["figure"])
    assert "mean_deviation" in out["evaluate"]["dise"]


@pytest.mark.parametrize("content, args, expected", [
    ({"y": torch.zeros(4, 2)}, ["--figure", "energy"], "has no key 'x'"),
    ({"x": torch.zeros(4, 3)}, ["--figure", "energy"], "shaped like one output"),
    ({"x": torch.zeros(4, 2)}, ["--figure", "nlp"], "for --figure energy"),
    (None, ["--figure", "energy"], "--figure-data"),
])
def test_bad_figure_data_is_one_line_naming_the_flag(tmp_path, content, args, expected):
    module = families.build_fm_sampler()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": families.make_noise(8)}, str(tmp_path / "d.safetensors"))
    if content is not None:
        save_file(content, str(tmp_path / "h.safetensors"))
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "m.pt"), "--arch", "families:build_fm_sampler",
                                   "--code-path", TESTS, "--data", str(tmp_path / "d.safetensors"), "--metric", "l2",
                                   *args, "--figure-data", str(tmp_path / "h.safetensors"), "--candidates", "euler:steps=2",
                                   "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]
    assert not (tmp_path / "p.safetensors").exists()


def test_finetune_a_cnf_density_by_maximum_likelihood(tmp_path):
    """dise finetune on a tuple-state model with an exact trace: --loss nll needs no labels."""
    module = families.build_cnf_row_time_density()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": families.make_circles(40)}, str(tmp_path / "d.safetensors"))
    res = CliRunner().invoke(app, ["finetune", str(tmp_path / "m.pt"), "--arch", "families:build_cnf_row_time_density",
                                   "--code-path", TESTS, "--data", str(tmp_path / "d.safetensors"), "--loss", "nll",
                                   "--reg", "err", "--lam", "0.1", "--epochs", 2, "--batch-size", 16, "--lr", "1e-3",
                                   "--out", str(tmp_path / "f.pt"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2]
    assert all(math.isfinite(h["validation"]["nlp"]) for h in report["history"])
    assert all(math.isfinite(h["task_loss"]) and h["reg"] > 0 for h in report["history"][1:])
    assert (tmp_path / "f.pt").exists()


def test_a_sampler_of_uint8_images_is_judged_by_the_numbers_it_returns(tmp_path):
    """uint8 outputs are compared as numbers (0 against 255 is 255 off, not 1 as uint8 arithmetic wraps),
    and held-out samples may come as a .pt file."""
    from dise_cli.judging import Judge
    gamma = Judge("regression", metric="l2").gamma(torch.tensor([[0, 255]], dtype=torch.uint8),
                                                   torch.tensor([[255, 0]], dtype=torch.uint8))
    assert gamma.tolist() == [pytest.approx(255 * math.sqrt(2))]
    module = families.build_image_bytes_sampler()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": families.make_noise(24)}, str(tmp_path / "d.safetensors"))
    torch.save({"x": (torch.rand(30, 2, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)},
               tmp_path / "h.pt")
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "m.pt"), "--arch", "families:build_image_bytes_sampler",
                                   "--code-path", TESTS, "--data", str(tmp_path / "d.safetensors"), "--metric", "l2",
                                   "--figure", "energy", "--figure-data", str(tmp_path / "h.pt"),
                                   "--out", str(tmp_path / "p.safetensors"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)["candidates"]
    assert all(math.isfinite(r["mean_error"]) and r["figure"]["energy_distance_data"] > 0 for r in rows)
    assert rows[0]["mean_error"] > 1.0          # Euler's one step moves samples by whole grey levels


def test_a_sampler_returning_a_dict_is_judged_by_the_output_named(tmp_path):
    """``{"samples", "trajectory"}``: dise asks which (exit 2 naming --output-key); with --output-key
    samples, profile, export and the bundle use that entry, recorded in the bundle. A tuple's or named
    tuple's element is picked by index or field; by default its last, with a note."""
    from collections import namedtuple
    from dise_cli.errors import InputError
    from dise_cli.odemodel import pick_output
    module = families.build_dict_output_sampler()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    x = families.make_noise(24, seed=2)
    save_file({"x": x}, str(tmp_path / "d.safetensors"))
    common = [str(tmp_path / "m.pt"), "--arch", "families:build_dict_output_sampler", "--code-path", TESTS,
              "--data", str(tmp_path / "d.safetensors")]
    res = CliRunner().invoke(app, ["inspect", *common])
    assert res.exit_code == 2 and "keys samples, trajectory" in res.stderr and "--output-key" in res.stderr
    for args in (["profile", *common, "--output-key", "samples", "--out", str(tmp_path / "p.sft")],
                 ["train-selector", *common, "--output-key", "samples", "--profile", str(tmp_path / "p.sft"),
                  "--epochs", "2", "--out", str(tmp_path / "s.sft")],
                 ["export", *common[:5], "--selector", str(tmp_path / "s.sft"), "--out", str(tmp_path / "b.dise")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.stderr
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    with torch.no_grad():
        out, stats = bundle(x, return_stats=True)
        own = module(x)["samples"]
    baseline = stats.integrator == len(stats.candidates) - 1
    assert out.shape == own.shape and bundle.manifest["reading"]["output_key"] == "samples"
    torch.testing.assert_close(out[baseline], own[baseline], rtol=1e-3, atol=1e-3)
    pair = namedtuple("Pair", "samples trajectory")(torch.ones(2), torch.zeros(2))
    assert pick_output(pair, "samples") is pair.samples and pick_output(pair, "0") is pair.samples
    assert pick_output((pair.samples, pair.trajectory)) is pair.trajectory and pick_output({"only": pair.samples}) is pair.samples
    with pytest.raises(InputError, match="named tuple Pair \\(fields samples, trajectory\\)"):
        pick_output(pair)
    with pytest.raises(InputError, match="the last is a dict; name the output dise judges with --output-key N"):
        pick_output((pair.samples, {"fevals": 3}))           # k-diffusion's log_likelihood returns (ll, info)
    with pytest.raises(InputError, match="index from 0 to 1 or a field"):
        pick_output(pair, "path")


def test_a_branch_on_the_first_rows_time_is_not_given_a_time_per_row():
    """LightningDiT's guidance interval decides for the batch by ``t[0]``: given a time per row, every row
    was guided by the first row's time (NFE and samples unlike the model's, exit 0). The probe's rows now
    span the grid's two ends, which a branch anywhere between them parts, so f gets each row's time
    alone: each sample takes what the model gives it alone."""
    from dise_cli.integrators import Dopri5, TimeMode
    from dise_cli.reading import read_model
    model = families.build_guidance_interval_sampler().double()
    x = families.make_noise(6).double()
    ode = read_model(model, x)
    assert ode.field.mode not in (TimeMode.VECTOR, TimeMode.BROADCAST)
    with torch.no_grad():
        out = ode.forward_with(x, lambda p: Dopri5(rtol=1e-7, atol=1e-7).solve(p.field, p.h0, p.t).ys)
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-10)


def test_a_many_point_grid_says_how_to_name_cheap_candidates():
    """SiT's sample_ode solves on linspace(0, 1, 50) and keeps the last point: Euler with a step per
    interval already costs 49 NFE, so the cheap defaults are not cheap; the notes say what to name."""
    from dise_cli.pipeline import choose_candidates
    from dise_cli.reading import read_model
    model = families.build_fm_sampler()
    model.t = torch.linspace(0, 1, 50)
    chosen = choose_candidates(read_model(model, families.make_noise(8)), None)
    assert chosen.integrators[0].spec == "euler:steps=1"
    assert any("49 NFE at least" in n and "euler:step_size=0.25" in n for n in chosen.notes)
    assert not any("step_size candidates" in n for n in
                   choose_candidates(read_model(families.build_fm_sampler(), families.make_noise(8)), None).notes)


def test_a_field_singular_at_the_grids_end_keeps_a_time_per_row():
    """A velocity with ``(1 - t) / (1 - t)`` in it is NaN at t = 1, the grid's end: the time-mode probe,
    which puts the grid's ends among its rows, then probes inside the grid, and f keeps its fast time
    per row (it fell to one call per distinct time, about 100 times slower)."""
    from dise_cli.integrators import TimeMode, VectorField

    def f(t, x):
        s = 1 - t.reshape(-1, 1)
        return (torch.tanh(x) - x) * s / s
    field = VectorField.detect(f, families.make_noise(4), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert field.mode in (TimeMode.BROADCAST, TimeMode.VECTOR)
