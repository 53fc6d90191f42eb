"""Class-conditional samplers written as loops (dise_cli/conditioning.py): the loop hands f the labels
at every call, the labels one of the model's inputs. dise reads which of f's arguments are the state
and the time, holds the rest as the loop passes them, carries those with a row per sample with each
sample's state, and runs the loop's own steps exactly; guidance it cannot route is refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import conditional_loops as C
import dise_cli
from dise_cli.cli import app
from dise_cli.conditioning import CallShape, Conditioned
from dise_cli.errors import InputError
from dise_cli.inputs import InputJoin
from dise_cli.integrators import Dopri5, Euler
from dise_cli.loopform import LoopForm
from dise_cli.reading import read_model
from dise_cli.routing import first_stage
from test_loops import _files

TESTS = str(Path(__file__).resolve().parent)
KEYS = ["--x-key", "x,labels"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _inspect(tmp_path, build: str, data: dict) -> dict:
    res = invoke("inspect", *_files(tmp_path, f"conditional_loops:{build}", data), *KEYS, "--json", "-")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _joined(data: dict) -> torch.Tensor:
    return InputJoin.join([data["x"], data["labels"]], ["x", "labels"], "d")


def _selector(tmp_path, with_data: list, epochs: int = 1) -> None:
    """``dise profile`` and ``dise train-selector`` on the model and data ``with_data`` names, each exit 0."""
    for step in (("profile", *with_data, *KEYS, "--out", tmp_path / "p.sft"),
                 ("train-selector", *with_data, *KEYS, "--profile", tmp_path / "p.sft", "--epochs", epochs,
                  "--out", tmp_path / "s.sft")):
        res = invoke(*step)
        assert res.exit_code == 0, res.stderr


def _export(tmp_path, model_args: list):
    res = invoke("export", *model_args, "--selector", tmp_path / "s.sft", "--out", tmp_path / "b.dise")
    assert res.exit_code == 0, res.stderr
    return res


def _through_the_loop(bundle, noise: torch.Tensor, labels: torch.Tensor, candidate: int | None = None):
    """The bundle's output with every sample routed to ``candidate`` (the last, the loop's own steps)."""
    k = len(bundle.selector.candidates) - 1 if candidate is None else candidate
    loop = torch.full((len(noise),), k)
    with torch.no_grad():
        return bundle.ode.forward_with(bundle.ode.join.pack((noise, labels)),
                                       lambda p: bundle.solve_chosen(p, first_stage(p), loop))


def test_a_class_conditional_edm_loop_is_read_exactly_each_row_with_its_labels(tmp_path):
    """EDM's ``edm_sampler(net, latents, class_labels)``: Heun over its σ's from the noise times 80, the
    one-hot labels carried per sample; dise's per-sample dopri5 on the batch equals each sample solved
    alone, and other labels give other samples."""
    data = C.labelled_noise(16, one_hot=True)
    info = _inspect(tmp_path, "build_conditional_edm", data)
    assert info["baseline"].startswith("heun2:grid=80/") and info["baseline_exact"]
    assert info["fidelity"]["difference"] == 0 and info["loop_form"]["denoiser"]
    assert info["per_sample_tensors"] == "f.func.given['class_labels'] [4]"
    assert info["conditioning"] == {"state_at": 0, "time_at": 1, "held": ["class_labels"], "per_row": ["class_labels"],
                                    "guidance": None, "output_at": None}
    assert any("the loop passes f class_labels beside its time and state" in n for n in info["notes"])
    model = C.build_conditional_edm()
    join, x = _joined(data)
    ode = read_model(model, x, join=join, t_span=torch.tensor(info["t_span"], dtype=torch.float64),
                     loop_form=LoopForm.from_dict(info["loop_form"]))
    solver = Dopri5(rtol=1e-6, atol=1e-6, step_t=info["t_span"][-1])     # D is NaN below σ = 0
    with torch.no_grad():
        together = ode.encode(x)
        ys = solver.solve(together.field, together.h0, together.t)
        for i in (0, 5, 11):
            alone = ode.encode(x[i:i + 1])
            one = solver.solve(alone.field, alone.h0, alone.t)
            torch.testing.assert_close(one.ys[:, 0], ys.ys[:, i], rtol=0, atol=1e-5)   # D in float32: round-off
        relabelled = x.clone()
        relabelled[:, 2:] = relabelled[:, 2:].roll(1, dims=1)
        moved = ode.forward_with(relabelled, lambda p: solver.solve(p.field, p.h0, p.t).ys)
        kept = ode.forward_with(x, lambda p: solver.solve(p.field, p.h0, p.t).ys)
    assert float((moved - kept).abs().max()) > 0.1


@pytest.mark.parametrize("build, context", [
    ("build_conditional_rectified_flow", "f.given['y'] []"),
    ("build_guided_by_doubling", "f.given['y'] [] (2 rows per sample, in blocks of N)"),
    ("build_guided_by_two_calls", "f.given['y (2nd call)'] [], f.given['y'] []"),
])
def test_a_conditional_rectified_flow_loop_through_the_pipeline_routes_each_sample_with_its_label(
        tmp_path, build, context):
    """``model(z, t, y)`` with integer labels, 8 Euler steps, plain or guided: profile, train-selector,
    export (the factory), evaluate; the bundle's rows routed to the loop equal the model, and equal each
    sample alone."""
    data = C.labelled_noise(24, seed=1)
    args = _files(tmp_path, f"conditional_loops:{build}", data)
    res = invoke("inspect", *args, *KEYS, "--json", "-")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"] == "euler:steps=8" and info["fidelity"]["difference"] == 0
    assert info["per_sample_tensors"] == context
    _selector(tmp_path, args, epochs=2)
    _export(tmp_path, args[:5])
    res = invoke("evaluate", tmp_path / "b.dise", "--data", args[-1], *KEYS, "--code-path", TESTS,
                 "--batch-sizes", 8, "--repeats", 1)
    assert res.exit_code == 0, res.stderr
    model = getattr(C, build)()
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    noise, labels = data["x"], data["labels"]
    with torch.no_grad():
        out, stats = bundle(noise, labels, return_stats=True)
        own = model(noise, labels)
        alone = torch.cat([bundle(noise[i:i + 1], labels[i:i + 1]) for i in range(len(noise))])
    # every sample routed to the loop's own Euler, through the bundle's encode and solve
    forced = _through_the_loop(bundle, noise, labels, stats.candidates.index("euler:steps=8"))
    torch.testing.assert_close(forced, own, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, alone, rtol=1e-6, atol=1e-6)


def test_labels_embedded_before_a_samplers_loop_are_read_in_its_block(tmp_path):
    """``self.sampler(noise, self.embed(labels))``: the block is the sampler, whose loop takes midpoint
    steps with ``net(x, t, context)``, the float embedding per sample."""
    info = _inspect(tmp_path, "build_embedding_first", C.labelled_noise(16, seed=2))
    assert info["baseline"] == "midpoint:steps=4" and info["fidelity"]["difference"] == 0
    assert info["per_sample_tensors"] == "f.given['context'] [32]"


@pytest.mark.parametrize("build, baseline, guidance, output_at, difference", [
    ("build_guided_by_two_calls", "euler:steps=8", {"kind": "paired", "weight": 2.0, "alternating": ["y"]}, None, 0),
    ("build_guided_by_doubling", "euler:steps=8", {"kind": "doubled", "weight": 2.0, "alternating": []}, None, 0),
    ("build_guided_uncond_first", "midpoint:steps=4", {"kind": "doubled", "weight": -3.5, "alternating": []}, None, 0),
    # a float64 loop around a float32 model: read in float32, round-off
    ("build_repa_euler", "euler:steps=6", {"kind": "doubled", "weight": 1.8, "alternating": []}, 0, 1e-6),
    # the guidance on a denoiser's output: the weight read from the step all the same
    ("build_guided_edm", "heun2:grid=80/", {"kind": "doubled", "weight": 2.0, "alternating": []}, None, 1e-5),
])
def test_classifier_free_guidance_around_f_is_read_as_the_guided_velocity(tmp_path, build, baseline, guidance,
                                                                          output_at, difference):
    """Guidance as minRF writes it (two calls a step, with the labels and with the null class), as SiT
    and SD3 write it (the batch doubled around f, the conditional half first or second), and REPA's
    ``euler_sampler`` (keywords, f returning ``(x, zs)`` of which the loop takes ``[0]``): the guided
    velocity, its weight read from the loop's first step, is f, reproduced to round-off; each row keeps
    its labels and its null labels whatever rows it is solved with."""
    data = C.labelled_noise(16, seed=4, one_hot=build.endswith("edm"))
    info = _inspect(tmp_path, build, data)
    assert info["baseline"].startswith(baseline) and info["fidelity"]["difference"] <= difference
    assert info["conditioning"]["guidance"] == guidance and info["conditioning"]["output_at"] == output_at
    note = next(n for n in info["notes"] if n.startswith("dise saw no solver call"))
    assert "classifier-free guidance by" in note
    model = getattr(C, build)()
    join, x = _joined(data)
    ode = read_model(model, x, join=join, t_span=torch.tensor(info["t_span"], dtype=torch.float64),
                     loop_form=LoopForm.from_dict(info["loop_form"]))
    solver = Dopri5(rtol=1e-6, atol=1e-6, step_t=info["t_span"][-1])
    with torch.no_grad():
        together = ode.forward_with(x, lambda p: solver.solve(p.field, p.h0, p.t).ys)
        alone = torch.cat([ode.forward_with(x[i:i + 1], lambda p: solver.solve(p.field, p.h0, p.t).ys)
                           for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)    # float32 f; a wrong label is O(1) off


@pytest.mark.parametrize("build, baseline, bounds", [
    # guided from half way on: the switch between t = 0.375 and 0.5, read as t >= 0.4
    ("build_guided_in_an_interval", "euler:steps=8", {"low": 0.4, "high": None}),
    # REPA's --guidance-high 0.7 over 10 steps from t = 1: guided at 0.7 and below, not at 0.8
    ("build_repa_guidance_interval", "euler:steps=10", {"low": None, "high": 0.75}),
    # EDM guided for σ in [0.3, 5], each call by its own σ: the guided run begins at a Heun step's second call
    ("build_edm_guidance_interval", "heun2:grid=80/", {"low": 0.4, "high": 4.0}),
    # the time first, as torch.full_like(x, t): doubled with the state, and not taken for it
    ("build_time_first_guided_later", "euler:steps=8", {"low": 0.4, "high": None}),
])
def test_guidance_in_an_interval_of_time_is_read_and_routed(tmp_path, build, baseline, bounds):
    """REPA's and Kynkäänniemi et al.'s guidance interval: the loop doubles the batch for guidance on the
    steps whose time lies in an interval and calls f once on the others. dise reads the weight from the
    first guided step, the interval's bounds from the times of the two kinds of call (a bound as a person
    writes one, inside the gap the loop's calls leave), and the unguided calls' conditioning as the
    doubled calls' first half: the loop's own steps reproduce the model, and through the pipeline the
    bundle's rows routed to them equal the model's output; every row is guided by its own time."""
    data = C.labelled_noise(24, seed=5, one_hot="edm" in build)
    args = _files(tmp_path, f"conditional_loops:{build}", data)
    res = invoke("inspect", *args, *KEYS, "--json", "-")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["baseline"].startswith(baseline) and info["fidelity"]["difference"] <= 1e-6
    assert info["baseline_exact"]
    assert info["conditioning"]["guidance"] == {"kind": "doubled", "weight": 1.8 if "repa" in build else 2.0,
                                                "alternating": [], **bounds, "plain_half": 0}
    _selector(tmp_path, args)
    _export(tmp_path, args[:5])
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    noise, labels = data["x"], data["labels"]
    with torch.no_grad():
        own = getattr(C, build)()(noise, labels)
    forced = _through_the_loop(bundle, noise, labels)
    torch.testing.assert_close(forced, own.to(forced.dtype), rtol=0, atol=1e-6)


def test_a_solve_per_sample_guides_each_row_by_its_own_time():
    """Rows at times on both sides of the interval's bound in one call of f: the rows inside get the guided
    velocity, the others f's output with the labels, each equal to f called on that row alone."""
    model = C.build_guided_in_an_interval()
    data = C.labelled_noise(6, seed=2)
    join, x = _joined(data)
    ode = read_model(model, x, join=join)
    problem = ode.encode(x)
    t = torch.tensor([0.1, 0.3, 0.45, 0.6, 0.39, 0.41], dtype=torch.float64)
    net, z, y = model.model, data["x"], data["labels"]
    with torch.no_grad():
        rows = problem.field(t, problem.h0)
        for i, ti in enumerate(t.tolist()):
            tt = torch.full((1,), ti, dtype=torch.float32)
            cond = net(z[i:i + 1], tt, y[i:i + 1])
            want = cond if ti < 0.4 else 2.0 * cond - net(z[i:i + 1], tt, torch.zeros_like(y[i:i + 1]))
            torch.testing.assert_close(rows[i, :2].float(), want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("a, b, bound", [(0.7, 0.8, 0.75), (0.375, 0.5, 0.4), (0.68, 0.72, 0.7), (700.0, 800.0, 750.0),
                                         (0.69999998, 0.8, 0.75), (1.0, 80.0, 40.0), (0.7, 0.7001, 0.70005)])
def test_an_intervals_bound_is_read_as_a_person_writes_one(a, b, bound):
    from dise_cli.conditioning import _between
    assert _between(a, b) == pytest.approx(bound) and a < _between(a, b) < b


@pytest.mark.parametrize("build, words", [
    # guidance on every other step: no interval of time separates the guided calls from the others
    ("build_guided_on_alternate_steps", "guidance by batch doubling on some calls only, and its doubled calls are "
                                        "not one run"),
    # two calls a step in an interval: said as such (it was "'y' changes between calls")
    ("build_paired_in_an_interval", "guidance by two calls a step in an interval of time, which dise does not read"),
])
def test_guidance_on_some_steps_that_dise_does_not_read_is_refused_in_one_line(tmp_path, build, words):
    res = invoke("inspect", *_files(tmp_path, f"conditional_loops:{build}", C.labelled_noise(16)), *KEYS)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert words in res.stderr


def test_a_pipeline_style_loop_of_keywords_returning_a_tuple_is_read(tmp_path):
    """diffusers' way: state, time and a text embedding per sample all by keyword, f at ``sigma * 1000``,
    ``return_dict=False`` held, the velocity ``[0]`` of the tuple f returns."""
    g = torch.Generator().manual_seed(8)
    data = {"x": torch.randn(16, 2, generator=g), "labels": torch.randn(16, 8, generator=g)}
    info = _inspect(tmp_path, "build_diffusers_style_loop", data)
    assert info["baseline"] == "euler:steps=5" and info["t_span"] == [1.0, 0.0]
    assert info["fidelity"]["difference"] <= 1e-6
    assert info["conditioning"] == {"state_at": "hidden_states", "time_at": "timestep",
                                    "held": ["encoder_hidden_states", "return_dict"],
                                    "per_row": ["encoder_hidden_states"], "guidance": None, "output_at": 0}
    assert info["time_scale"] == 1000


def test_per_sample_tensors_inside_a_dict_argument_go_with_their_samples(tmp_path):
    """SDXL's ``added_cond_kwargs={"text_embeds": ...}``: the dict is held, its per-sample tensor carried."""
    g = torch.Generator().manual_seed(10)
    data = {"x": torch.randn(16, 2, generator=g), "labels": torch.randn(16, 8, generator=g)}
    info = _inspect(tmp_path, "build_added_cond_loop", data)
    assert info["baseline"] == "euler:steps=6" and info["fidelity"]["difference"] == 0
    assert info["per_sample_tensors"] == "f.given['added_cond_kwargs']['text_embeds'] [8]"
    model = C.build_added_cond_loop()
    join, x = _joined(data)
    ode = read_model(model, x, join=join)
    with torch.no_grad():
        together = ode.forward_with(x, lambda p: Euler(steps=6).solve(p.field, p.h0, p.t).ys)
        alone = torch.cat([ode.forward_with(x[i:i + 1], lambda p: Euler(steps=6).solve(p.field, p.h0, p.t).ys)
                           for i in range(len(x))])
    torch.testing.assert_close(together, model(data["x"], data["labels"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-6)


def test_the_call_shape_tells_state_time_and_conditioning_apart():
    """State and time are what change between the first two calls; a tensor of the batch's rows is per
    sample only where it has the rows of another batch size too; keywords keep their names."""
    net = C.LabelledVelocity()
    h0, y, fixed = torch.randn(3, 2), torch.tensor([0, 1, 2]), torch.zeros(3, 5)
    calls = [((h0, torch.zeros(3), y), {"extra": fixed, "scale": 2.0}),
             ((h0 + 1, torch.ones(3), y.clone()), {"extra": fixed, "scale": 2.0})]
    shape = CallShape.read(net, calls, [None, None], h0, 3)
    assert (shape.state_at, shape.time_at) == (0, 1) and shape.per_row == ("y", "extra")
    assert [name for _, name in shape.held] == ["y", "extra", "scale"]
    assert shape.confirm_rows([((h0, 0, torch.zeros(4)), {"extra": fixed, "scale": 2.0})], 4).per_row == ("y",)
    # f as dise calls it puts each argument back in its place
    seen = []
    net.forward = lambda *a, **k: seen.append((a, k)) or a[0]
    Conditioned(net, shape, shape.values(calls))(torch.tensor(0.5), h0)
    (a, k), = seen
    assert a[0] is h0 and float(a[1]) == 0.5 and a[2] is y and k == {"extra": fixed, "scale": 2.0}
    with pytest.raises(InputError, match="argument 'scale' otherwise for this batch"):
        shape.check_held(shape.values(calls), [((h0, 0, y), {"extra": fixed, "scale": 3.0})], "the model's loop")


def test_the_guidance_weight_is_read_from_the_first_step_as_a_person_writes_it():
    """The next stage's state is the first plus the guided velocity times the time between them: the
    weight that explains it, 7.5 exactly where that does, 1/3 where 0.3333 would not."""
    net = C.LabelledVelocity()
    h0, y, null = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.int64)
    cond, uncond = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    for scale in (7.5, 1 / 3):
        v = uncond + scale * (cond - uncond)
        calls = [((h0, torch.zeros(3), y), {}), ((h0, torch.zeros(3), null), {}),
                 ((h0 + 0.25 * v, torch.full((3,), 0.25), y), {})]
        shape = CallShape.read(net, calls, [cond, uncond, None], h0, 3)
        assert shape.guidance.kind == "paired" and shape.guidance.alternating == ("y",)
        assert shape.guidance.weight == (7.5 if scale == 7.5 else pytest.approx(1 / 3, abs=1e-12))
        assert shape.per_row == ("y", "y (2nd call)")
    # a denoiser's guided output D at σ = 80, the step a Heun loop's first, with f's time at 1000 x its own:
    # the velocity (x - D) / σ is affine in D, so the weight reads the same
    D = uncond + 2.5 * (cond - uncond)
    step = (24.4 - 80.0) * (h0 - D) / 80.0
    calls = [((h0, torch.full((3,), 80e3), y), {}), ((h0, torch.full((3,), 80e3), null), {}),
             ((h0 + step, torch.full((3,), 24.4e3), y), {})]
    assert CallShape.read(net, calls, [cond, uncond, None], h0, 3).guidance.weight == 2.5
    # a float32 loop: the step's round-off (3e-7 of it) leaves the fitted weight 4.0000x, and 4 is read
    c32, u32, x32 = cond.float(), uncond.float(), h0.float()
    x1 = x32 + 0.1 * (u32 + 4.0 * (c32 - u32))
    x1 = x1 * (1 + 3e-7 * torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))
    calls = [((x32, torch.zeros(3), y), {}), ((x32, torch.zeros(3), null), {}), ((x1, torch.full((3,), 0.1), y), {})]
    assert CallShape.read(net, calls, [c32, u32, None], x32, 3).guidance.weight == 4.0
    # the null label on every row read: the two calls' outputs agree, and dise says why it cannot read the weight
    same = [((h0, torch.zeros(3), null), {}), ((h0, torch.zeros(3), null.clone()), {})]
    with pytest.raises(InputError, match="their labels all the null label"):
        CallShape.read(net, same, [cond, cond, None], h0, 3)
    with pytest.raises(InputError, match="outputs are the same on the rows dise read"):
        CallShape.read(net, calls, [cond, cond, None], h0, 3)


def test_a_held_argument_that_differs_between_batches_is_refused(tmp_path):
    """A loop that hands f a guidance scale drawn from its batch (not per sample) cannot be held fixed:
    encoding another batch says so instead of solving with the reading's value."""
    model = C.build_conditional_rectified_flow()
    data = C.labelled_noise(8, seed=3)
    join, x = _joined(data)
    ode = read_model(model, x, join=join)
    inner = model.model.forward

    def scaled(z, t, y, scale=None):
        return inner(z, t, y) * (1.0 if scale is None else scale)
    model.model.forward = scaled
    original = C.ConditionalRectifiedFlow.forward

    def forward(self, z, y):
        dt = 1.0 / self.steps
        for i in range(self.steps):
            z = z + self.model(z, torch.ones(len(z)) * i / self.steps, y, scale=float(len(z))) * dt
        return z
    C.ConditionalRectifiedFlow.forward = forward
    try:
        ode = read_model(model, x, join=join)
        assert ode.held["scale"] == 3.0          # the probe's rows
        with pytest.raises(InputError, match="'scale' otherwise for this batch"):
            ode.forward_with(x[:5], lambda p: Euler(steps=8).solve(p.field, p.h0, p.t).ys)
    finally:
        C.ConditionalRectifiedFlow.forward = original


@pytest.mark.parametrize("build, data", [
    ("build_conditional_edm", C.labelled_noise(16, seed=4, one_hot=True)),
    ("build_guided_by_two_calls", C.labelled_noise(16, seed=4)),
])
def test_a_pickled_conditional_loop_exports_as_programs_that_carry_each_samples_labels(tmp_path, build, data):
    """A pickled sampler, no factory: the bundle holds the model's start of loop (its forward up to f's first
    call, the labels packed beside the state) and f with its per-sample arguments as programs, and runs
    without the model's code: every sample routed to the loop's own steps gives the model's output."""
    torch.save(getattr(C, build)(), tmp_path / "whole.pt")
    save_file(data, str(tmp_path / "d.safetensors"))
    common = [tmp_path / "whole.pt", "--trust-pickle", "--code-path", TESTS]
    _selector(tmp_path, [*common, "--data", tmp_path / "d.safetensors"])
    assert "exported as torch.export programs" in _export(tmp_path, common).stderr
    bundle = dise_cli.load(tmp_path / "b.dise")
    assert type(bundle.ode).__name__ == "ProgramModel"
    noise, labels = data["x"], data["labels"]
    model = torch.load(tmp_path / "whole.pt", weights_only=False)
    with torch.no_grad():
        own = model(noise, labels)
        out = bundle(noise, labels)
    forced, swapped = (_through_the_loop(bundle, noise, given) for given in (labels, labels.roll(1, 0)))
    torch.testing.assert_close(forced, own, rtol=0, atol=1e-5)
    assert float((swapped - own).abs().max()) > 0.01
    assert out.shape == own.shape and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("build", ["build_scale_from_the_batch", "build_scale_from_the_batch_size"])
def test_a_pickled_loop_handing_f_a_value_computed_from_its_batch_is_not_exported_as_programs(tmp_path, build):
    """A scale the forward computes from its batch's values (a tensor) or size (a Python number), handed to f
    beside the labels: programs would hold the value read for every batch (a bundle wrong with exit 0 on a
    batch that reaches 3.5, or of 30 rows), so export follows it back to the input, says so, and asks for the
    factory, whose model checks it every batch."""
    torch.save(getattr(C, build)(), tmp_path / "whole.pt")
    save_file(C.labelled_noise(16, seed=4), str(tmp_path / "d.safetensors"))
    common = [tmp_path / "whole.pt", "--trust-pickle", "--code-path", TESTS]
    _selector(tmp_path, [*common, "--data", tmp_path / "d.safetensors"])
    res = invoke("export", *common, "--selector", tmp_path / "s.sft", "--out", tmp_path / "b.dise")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "the loop hands f scale, computed from the model's input but not one row per sample" in res.stderr
    assert not (tmp_path / "b.dise").exists()


def test_a_loop_stepping_its_state_in_place_is_read_as_the_steps_it_takes(tmp_path):
    """``x += dt * v``: the calls dise compares are kept as they were handed (it read the changed tensor as
    two calls at one state, guidance)."""
    info = _inspect(tmp_path, "build_stepped_in_place", C.labelled_noise(16, seed=3))
    assert info["baseline"] == "euler:steps=8" and info["fidelity"]["difference"] == 0
    assert info["conditioning"]["guidance"] is None and info["conditioning"]["per_row"] == ["y"]


def test_a_loop_decoded_in_the_same_forward_is_refused_saying_to_give_the_loop_a_module(tmp_path):
    """A latent sampler decoding in the forward that runs its loop: one line that says to move the loop into a
    module of its own; so moved, the sampler block is read exactly and the decoder runs after it."""
    data = C.labelled_noise(16, seed=6)
    res = invoke("inspect", *_files(tmp_path, "conditional_loops:build_decoded_after_the_loop", data), *KEYS)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "move the loop into a module of its own that the forward calls" in res.stderr
    info = _inspect(tmp_path, "build_decoded_after_a_sampler", data)
    assert info["baseline"] == "euler:steps=6" and info["fidelity"]["difference"] == 0
