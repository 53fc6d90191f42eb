"""Hand-written solver loops (no solver call dise can see): a fixed-step loop is identified by its
calls of f and becomes the model's own solver, run exactly; a loop dise misreads is refused, however
loose the tolerance of dise's own guess would have been."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import dise_cli
import families
from dise_cli.cli import app
from dise_cli.integrators.tolerances import number_text
from dise_cli.profiles import read_profile

TESTS = str(Path(__file__).resolve().parent)


def _files(tmp_path, build: str, data: dict) -> list[str]:
    """Save the model ``build`` makes (a builder in tests/families.py, or ``module:name`` of another tests
    module, as ``test_loops:name`` here) as a state dict, and ``data``, as a user would; the arguments
    that name them."""
    module, _, name = build.rpartition(":")
    model = getattr(importlib.import_module(module) if module else families, name)()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file(data, str(tmp_path / "d.safetensors"))
    return [str(tmp_path / "m.pt"), "--arch", build if module else f"families:{build}", "--code-path", TESTS,
            "--data", str(tmp_path / "d.safetensors")]


def test_a_rectified_flow_euler_loop_is_its_own_baseline(tmp_path):
    """gnobitab/RectifiedFlow's sample_ode: 20 Euler steps, found from its 20 calls at 0, 0.05, ...;
    the baseline is euler:steps=20 (it was dise's guess, dopri5 at 1e-3), and its profile takes 20 NFE
    per sample."""
    args = _files(tmp_path, "build_rectified_flow_sampler", {"x": families.make_noise(24)})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"] == "euler:steps=20" and info["baseline_exact"] is True
    assert info["candidates"] == ["euler:steps=1", "rk4:steps=1", "euler:steps=10", "euler:steps=5", "euler:steps=20"]
    assert info["own_solver"]["library"] == "loop" and info["fidelity"]["difference"] == 0
    assert any("calls f 20 times" in n for n in info["notes"])
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 0, res.stderr
    profile = read_profile(tmp_path / "p.safetensors")
    assert profile.candidates[profile.baseline] == "euler:steps=20"
    assert (profile.nfe[:, profile.baseline] == 20).all()


def test_a_loop_dise_misreads_is_refused_however_loose_its_guess(tmp_path):
    """The loop scales z0 by 0.8 first: the outputs differ by far less than dopri5's tolerance at 1e-3
    allowed dise's guess (that passed, exit 0, with every figure wrong), but a fixed-step loop is held
    to round-off: exit 2, one line naming the loop's calls and what to give."""
    args = _files(tmp_path, "build_rectified_flow_sampler_scaled", {"x": families.make_noise(24)})
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.stderr
    assert "calls f 20 times" in lines[0] and "--t-span" in lines[0] and not (tmp_path / "p.safetensors").exists()
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    info = json.loads(res.stdout)
    assert res.exit_code == 2 and info["baseline_exact"] is False and not info["fidelity"]["passed"]


def test_a_loop_over_another_span_names_it_and_reads_with_t_span(tmp_path):
    """A loop over [0, 0.5] with no time attribute: refused on dise's [0, 1] with the times it calls f at;
    --t-span 0,0.5 reads it exactly."""
    args = _files(tmp_path, "build_rectified_flow_sampler_half", {"x": families.make_noise(24)})
    res = CliRunner().invoke(app, ["inspect", *args])
    assert res.exit_code == 2 and "t = 0, 0.025, ..., 0.475" in res.stderr
    res = CliRunner().invoke(app, ["inspect", *args, "--t-span", "0,0.5", "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"] == "euler:steps=20" and info["fidelity"]["passed"]


def test_a_classic_rk4_block_is_told_from_the_three_eighths_rule(tmp_path):
    """Both RK4s make 4 calls a step; the classic one reproduces the block, Kutta's 3/8 rule does not."""
    model = families.build_classic_rk4_classifier()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    args = _files(tmp_path, "build_classic_rk4_classifier", {"x": x, "y": y})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"] == "rk4_classic:steps=3" and info["baseline_exact"] is True


class _KeepsItsSolver(torch.nn.Module):
    """torchdiffeq's bouncing_ball.py keeps the solver on the instance: ``self.odeint = odeint``."""

    def __init__(self, event: bool = False):
        super().__init__()
        from torchdiffeq import odeint
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(2, 4)
        self.odefunc = families.MLPODEFunc(4, 16)
        self.odeint = odeint
        self.event = event

    def forward(self, x):
        from torchdiffeq import odeint_event
        h = self.lin(x)
        if self.event:     # integrate until a learned time, found by the event
            _, sol = odeint_event(self.odefunc, h, torch.tensor(0.0), event_fn=lambda t, y: 1.2 - t,
                                  atol=1e-4, rtol=1e-4)
            return sol[-1]
        return self.odeint(self.odefunc, h, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.5})[-1]


def build_keeps_its_solver():
    return _KeepsItsSolver()


def build_solves_to_an_event():
    return _KeepsItsSolver(event=True)


def test_a_solver_kept_as_an_attribute_is_seen(tmp_path):
    """``self.odeint = odeint`` binds the function where dise's module-level watch did not reach: dise
    saw no call and guessed dopri5 for what is rk4 with steps of 0.5. Now the call is seen."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    args = _files(tmp_path, "test_loops:build_keeps_its_solver", {"x": x})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["own_solver"]["library"] == "torchdiffeq" and info["own_solver"]["method"] == "rk4"
    assert info["baseline"] == "rk4:step_size=0.5" and info["baseline_exact"] is True


def test_a_solve_that_ends_at_an_event_is_refused_in_one_line(tmp_path):
    """odeint_event calls odeint through a default argument dise cannot wrap: it was not seen, and the
    model read by its attributes over [0, 1]. Now the event solve itself is seen, and refused."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, "test_loops:build_solves_to_an_event", {"x": x})])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "odeint_event" in res.stderr and "event fires" in res.stderr


def test_a_loop_over_its_own_shifted_schedule_is_its_own_baseline(tmp_path):
    """Flux's ``denoise``: Euler over a shifted schedule from 1 down to 0 (no time attribute; dise's
    grid is [0, 1]). The steps start where f is called, the last one ends at 0: the baseline is euler
    on that grid, exactly, over [1, 0], beside cheap candidates over the same span; the whole pipeline
    runs and the bundle gives what the model gives where it routes to the baseline."""
    from test_families import run_pipeline
    model = families.build_shifted_schedule_sampler()
    x = families.make_noise(24)
    args = _files(tmp_path, "build_shifted_schedule_sampler", {"x": x})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    schedule = "/".join(number_text(float(torch.tensor(t, dtype=torch.float32))) for t in model.timesteps[:-1])
    assert info["baseline"] == f"euler:grid={schedule}/0" and info["baseline_exact"] is True
    assert info["t_span"] == [1.0, 0.0] and info["t_span_source"] == "the loop's calls of f"
    assert info["fidelity"]["difference"] == 0 and info["candidates"][:2] == ["euler:steps=1", "rk4:steps=1"]
    reports = run_pipeline(tmp_path, model, {"x": x}, "families:build_shifted_schedule_sampler", [])
    base = next(c for c in reports["profile"]["candidates"] if c["candidate"] == info["baseline"])
    assert base["nfe"]["max"] == base["nfe"]["p50"] == 8 and base["status"]["ok"] == len(x)
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    with torch.no_grad():
        out, stats = bundle(x, return_stats=True)
        own = model(x)
    routed = stats.integrator == stats.candidates.index(info["baseline"])      # the rows sent to the loop's Euler
    assert torch.equal(out[routed], own[routed]) and torch.equal(stats.nfe[routed], torch.full_like(stats.nfe, 8)[routed])


def test_a_midpoint_loop_and_a_loop_from_noise_to_data_are_read_over_their_own_span(tmp_path):
    """A midpoint loop over a shifted schedule: its grid from its calls' nodes (a step's middle call
    puts its end); minRF's uniform loop from 1 down to 0 (``z = z - dt * v``) is euler:steps=10 over
    [1, 0]. A loop refused lists every time it calls f, for --t-span."""
    for build, baseline in (("build_shifted_schedule_midpoint", "midpoint:grid=1/"),
                            ("build_noise_to_data_euler", "euler:steps=10")):
        args = _files(tmp_path, build, {"x": families.make_noise(24)})
        res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
        assert res.exit_code == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["baseline"].startswith(baseline) and info["baseline_exact"] and info["fidelity"]["passed"]
        assert info["t_span"] == [1.0, 0.0]
    args = _files(tmp_path, "build_noise_to_data_euler", {"x": families.make_noise(24)})
    res = CliRunner().invoke(app, ["inspect", *args, "--t-span", "0,1"])        # the user's grid is not the loop's
    assert res.exit_code == 2 and "(all 10: 1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)" in res.stderr


class _ConditionedNet(torch.nn.Module):
    """Flux's transformer as its loop calls it: ``model(img, txt, timesteps)``."""

    def __init__(self):
        super().__init__()
        self.inner = families.VelocityMLP()

    def forward(self, img, txt, timesteps):
        return self.inner(img + txt.mean(), timesteps)


class _PooledNet(torch.nn.Module):
    """SD3's transformer: ``transformer(hidden_states, timestep, pooled_projections=None)``."""

    def __init__(self):
        super().__init__()
        self.inner = families.VelocityMLP()

    def forward(self, hidden_states, timestep, pooled_projections=None):
        shift = 0 if pooled_projections is None else pooled_projections.mean()
        return self.inner(hidden_states + shift, timestep)


class _Loops(torch.nn.Module):
    """Loops of a scheduler's kind: f that needs the loop's conditioning (as an argument, or a keyword
    it may go without), a loop in the block's ``sample()`` (minRF's), and f called at ``sigma * 1000``
    while the loop steps sigmas (diffusers' flow-matching scheduler), which dise reads."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.model = {"conditioned": _ConditionedNet, "keyword": _PooledNet}.get(kind, families.VelocityMLP)()
        self.txt = torch.nn.Parameter(torch.zeros(3))
        self.sigmas = families.shifted_schedule(6)
        self.time_factor = 1000          # f's time per unit of the loop's ("scaled time")

    def guided(self, z, t):
        """The loop doubles the batch around f, as SD3's pipeline does: cat([z, z]), then mixes."""
        uncond, cond = self.model(torch.cat([z, z]), torch.cat([t, t])).chunk(2)
        return uncond + 2.0 * (cond - uncond)

    def sample(self, z):
        for s, s_next in zip(self.sigmas[:-1], self.sigmas[1:]):
            z = z + (s_next - s) * self.model(z, torch.full((len(z),), s))
        return z

    def forward(self, z):
        if self.kind == "in sample()":
            return self.sample(z)
        for s, s_next in zip(self.sigmas[:-1], self.sigmas[1:]):
            t = torch.full((len(z),), s * (self.time_factor if self.kind == "scaled time" else 1))
            if self.kind == "keyword":
                t = t * 1000
            v = self.model(z, self.txt, t) if self.kind == "conditioned" else \
                self.model(z, t, pooled_projections=self.txt[None]) if self.kind == "keyword" else \
                self.guided(z, t) if self.kind == "doubled" else self.model(z, t)
            z = z + (s_next - s) * v
        return z


class _Sampler(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.rf = _Loops(kind)

    def forward(self, z):
        return self.rf.sample(z)


def build_conditioned_loop():
    return _Loops("conditioned")


def build_scaled_time_loop():
    return _Loops("scaled time")


def build_scaled_time_loop_part_way():
    """img2img's loop: the scheduler's sigmas from part way (0.90 here), f still at sigma * 1000."""
    model = _Loops("scaled time")
    model.sigmas = model.sigmas[2:]
    return model


def build_odd_scale_loop():
    """f at sigma * 700 from sigma 0.90: neither scale dise tries (630, 1000) is it."""
    model = build_scaled_time_loop_part_way()
    model.time_factor = 700
    return model


def build_keyword_conditioned_loop():
    return _Loops("keyword")


def build_doubled_around_f_loop():
    return _Loops("doubled")


def build_loop_in_sample():
    return _Sampler("in sample()")


def test_loops_dise_cannot_run_are_refused_saying_what_to_do(tmp_path):
    x = families.make_noise(16)
    expected = {"build_loop_in_sample": "in another method (a sample() the model calls)",
                "build_doubled_around_f_loop": "samples: guidance by batch doubling around f",
                "build_odd_scale_loop": "f is called far outside the grid, and f's time at the scales dise tries"}
    for build, words in expected.items():
        res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, f"test_loops:{build}", {"x": x})])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, (build, res.stderr)
        assert words in res.stderr, (build, res.stderr)


@pytest.mark.parametrize("build, held", [("build_conditioned_loop", "txt"),
                                         ("build_keyword_conditioned_loop", "pooled_projections")])
def test_a_loop_handing_f_fixed_conditioning_is_read_with_it_held(tmp_path, build, held):
    """Flux-like loops that hand f the text conditioning (a parameter, positional or by keyword, the same
    object or value at every call): f is read with it held as the loop passes it, exactly."""
    res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, f"test_loops:{build}", {"x": families.make_noise(16)}),
                                   "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"].startswith("euler:grid=1/") and info["baseline_exact"]
    assert info["fidelity"]["difference"] <= 2e-6 and info["per_sample_tensors"] is None
    assert info["conditioning"]["held"] == [held] and info["conditioning"]["per_row"] == []
    assert any(f"the loop passes f {held} beside" in n for n in info["notes"])



def test_a_pickled_loop_handing_f_held_conditioning_exports_as_programs(tmp_path):
    """No factory: the held text is f's own (a parameter), so the bundle's programs are the usual encoder,
    f and decoder, and its rows routed to the loop's steps give the model's output."""
    from dise_cli.routing import first_stage
    model = build_conditioned_loop()
    torch.save(model, tmp_path / "whole.pt")
    x = families.make_noise(16)
    save_file({"x": x}, str(tmp_path / "d.safetensors"))
    common = [str(tmp_path / "whole.pt"), "--trust-pickle", "--code-path", TESTS]
    for step in (["profile", *common, "--data", str(tmp_path / "d.safetensors"), "--out", str(tmp_path / "p.sft")],
                 ["train-selector", *common, "--data", str(tmp_path / "d.safetensors"), "--profile",
                  str(tmp_path / "p.sft"), "--epochs", "1", "--out", str(tmp_path / "s.sft")],
                 ["export", *common, "--selector", str(tmp_path / "s.sft"), "--out", str(tmp_path / "b.dise")]):
        res = CliRunner().invoke(app, step)
        assert res.exit_code == 0, res.stderr
    assert "exported as torch.export programs" in res.stderr
    bundle = dise_cli.load(tmp_path / "b.dise")
    with torch.no_grad():
        _, stats = bundle(x, return_stats=True)
        loop = torch.full((len(x),), len(stats.candidates) - 1)
        forced = bundle.ode.forward_with(x, lambda p: bundle.solve_chosen(p, first_stage(p), loop))
        torch.testing.assert_close(forced, model(x), rtol=0, atol=2e-6)

def test_a_scheduler_stepping_sigmas_with_f_at_sigma_times_1000_is_read_in_the_loops_time(tmp_path):
    """diffusers' flow-matching scheduler: ``latents + (sigma_next - sigma) * f(latents, sigma * 1000)``.
    f's calls at 1000, 918, ... lie far outside any grid; read at 1000 times the loop's time, the
    loop's Euler over its sigmas reproduces the model exactly, and the scale is recorded, so the
    bundle the factory rebuilds calls f as the model does."""
    from test_families import run_pipeline
    model = build_scaled_time_loop()
    x = families.make_noise(24)
    args = _files(tmp_path, "test_loops:build_scaled_time_loop", {"x": x})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"].startswith("euler:grid=1/") and info["baseline_exact"] and info["t_span"] == [1.0, 0.0]
    assert any("f called at 1000 times the time the loop steps on" in n for n in info["notes"])
    assert info["fidelity"]["difference"] <= 1e-5         # float32 times, scaled: round-off
    run_pipeline(tmp_path, model, {"x": x}, "test_loops:build_scaled_time_loop", [])
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    assert bundle.manifest["reading"]["time_scale"] == 1000
    with torch.no_grad():
        out, stats = bundle(x, return_stats=True)
        own = model(x)
    routed = stats.integrator == stats.candidates.index(info["baseline"])
    assert routed.any() or (stats.nfe < 6).all()
    torch.testing.assert_close(out[routed], own[routed], rtol=0, atol=1e-5)


class _ClampedLoop(torch.nn.Module):
    """minRF's loop, then ``clamp(-2, 2)`` (an image sampler's last step): inside the block dise runs
    its own loop in place of, so the clamp is lost where it binds."""

    def __init__(self):
        super().__init__()
        self.model = families.VelocityMLP()

    def forward(self, z):
        for i in range(8, 0, -1):
            z = z - 0.125 * self.model(z, torch.full((len(z),), i / 8))
        return z.clamp(-2, 2)


def build_clamped_loop():
    return _ClampedLoop()


def test_a_loop_doing_what_the_probe_samples_did_not_show_is_refused_by_the_profile(tmp_path):
    """On the first 8 samples (small noise) the clamp never binds, and the loop reads as euler:steps=8,
    exactly; the profile runs the model as it is on every batch beside dise's loop, and the rows
    beyond, whose outputs the clamp cuts, show it: exit 2, no profile written."""
    x = torch.cat([0.05 * families.make_noise(8), 3 * families.make_noise(24, seed=1)])
    args = _files(tmp_path, "test_loops:build_clamped_loop", {"x": x})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["baseline"] == "euler:steps=8", res.stderr
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.stderr
    assert "though they agree on the 8 samples" in errors[0] and not (tmp_path / "p.safetensors").exists()


class _EndsAtSigmaMin(families.ShiftedScheduleSampler):
    """Flux's loop whose schedule stops at sigma_min = 0.002, not 0: Euler's last call says nothing of
    where its step ends."""

    def __init__(self):
        super().__init__()
        self.timesteps[-1] = 0.002


def build_ends_at_sigma_min():
    return _EndsAtSigmaMin().eval()


def test_a_loop_ending_where_its_calls_cannot_say_is_read_with_the_ends_given(tmp_path):
    """No end dise tries (0, 1) reproduces the loop: refused with every call time; --t-span 1,0.002
    gives the ends, and the loop's own grid between them is its solver, exactly."""
    args = _files(tmp_path, "test_loops:build_ends_at_sigma_min", {"x": families.make_noise(24)})
    res = CliRunner().invoke(app, ["inspect", *args])
    assert res.exit_code == 2 and "(all 8: 1, 0.956724" in res.stderr, res.stderr
    res = CliRunner().invoke(app, ["inspect", *args, "--t-span", "1,0.002", "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"].startswith("euler:grid=1/") and info["baseline"].endswith("/0.002")
    assert info["baseline_exact"] and info["fidelity"]["difference"] == 0 and info["t_span"] == [1.0, 0.002]


class _HeunLastEuler(torch.nn.Module):
    """REPA's ODE sampler with ``heun=True``: Heun steps, but for the last, an Euler step."""

    def __init__(self):
        super().__init__()
        self.model = families.VelocityMLP()

    def forward(self, x):
        t = torch.linspace(1, 0, 7).tolist()
        for i, (t_cur, t_next) in enumerate(zip(t[:-1], t[1:])):
            d = self.model(x, torch.full((len(x),), t_cur))
            x_next = x + (t_next - t_cur) * d
            if i < len(t) - 2:
                d2 = self.model(x_next, torch.full((len(x),), t_next))
                x_next = x + (t_next - t_cur) * (d + d2) / 2
            x = x_next
        return x


def build_heun_last_euler():
    return _HeunLastEuler()


def test_heun_steps_with_an_euler_last_step_are_read_with_that_step_after_the_solve(tmp_path):
    """REPA's sampler: Heun steps from 1 to 1/6, then Euler to 0 (one call at 1/6). dise solves over
    [1, 1/6] and takes the last step after the solve, for every integrator."""
    res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, "test_loops:build_heun_last_euler",
                                                      {"x": families.make_noise(16)}), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"] == "heun2:steps=5" and info["t_span"] == [1.0, float(torch.tensor(1 / 6))]
    assert info["loop_form"] == {"denoiser": False, "start_scale": None, "start_dtype": None,
                                            "end_at": 0.0}
    assert info["fidelity"]["passed"] and info["fidelity"]["difference"] <= 1e-6
    assert any("its last step, to 0, is one Euler step" in n for n in info["notes"])


class _IntegerTimeLoop(torch.nn.Module):
    """A flow loop whose network embeds integer steps, ``(sigma * 1000).long()`` (DDPM-style nets)."""

    def __init__(self):
        super().__init__()
        self.model = families.VelocityMLP()

    def forward(self, x):
        sigmas = torch.linspace(1, 0, 9)
        for a, b in zip(sigmas[:-1], sigmas[1:]):
            x = x + (b - a) * self.model(x, (a * 1000).long().expand(len(x))) / 1000
        return x


def build_integer_time_loop():
    return _IntegerTimeLoop()


def test_a_loop_giving_f_integer_timesteps_is_refused_saying_so(tmp_path):
    res = CliRunner().invoke(app, ["inspect", *_files(tmp_path, "test_loops:build_integer_time_loop",
                                                      {"x": families.make_noise(16)})])
    assert res.exit_code == 2 and "calls f with integer timesteps (t = 1000, 875, ..., 125" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_scheduler_begun_part_way_is_read_at_its_power_of_ten(tmp_path):
    """f's largest call is 1000 * 0.90, not 1000: the scale tried next is the power of ten above it."""
    args = _files(tmp_path, "test_loops:build_scaled_time_loop_part_way", {"x": families.make_noise(16)})
    res = CliRunner().invoke(app, ["inspect", *args, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["t_span"][0] < 0.95 and info["baseline_exact"] and info["fidelity"]["passed"]
    assert any("f called at 1000 times" in n for n in info["notes"])
