"""Per-sample tensors f reads from outside its state (dise_cli/rowcontext.py): class labels in a
conditional sampler's model_extras, k-diffusion's Hutchinson noise in a closure, FFJORD's noise drawn
on f's first call. Each row of the state must see its own rows of them, whatever rows share its solve."""
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
from dise_cli.errors import InputError
from dise_cli.integrators import Dopri5, VectorField
from dise_cli.reading import read_model
from dise_cli.rowcontext import RowContext, describe
from dise_cli.states import StateLayout
from torchdiffeq import odeint

TESTS = str(Path(__file__).resolve().parent)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_context_is_found_carried_and_bound_per_row():
    """A closure over a per-row scale and a dict of per-row offsets: dise's per-sample dopri5 on the
    batch equals each row solved alone with its own rows of them (same NFE, same states), and f's
    tensors are the batch's again after every call."""
    scale = torch.tensor([0.5, 1.0, 2.0, -1.0], dtype=torch.float64)
    extras = {"offset": torch.tensor([[0.1], [0.0], [-0.3], [0.7]], dtype=torch.float64)}

    def make(scale, extras):
        def f(t, y):
            return -scale[:, None] * y + extras["offset"] * torch.cos(t)
        return f

    f = make(scale, extras)
    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    context = RowContext.find(f, 4, exclude=(y0,))
    assert sorted(describe(p) for p in context.paths) == ["f.<extras>['offset']", "f.<scale>"]
    layout = StateLayout.of(y0).with_context(context.width)
    h0 = layout.pack(y0, context.gather(f, 4, y0.dtype, y0.device, first_call=lambda: None))
    assert h0.shape == (4, 2 + 2)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = VectorField.detect(f, h0, t, layout, context=context)
    together = Dopri5(rtol=1e-6, atol=1e-6).solve(field, h0, t)
    for i in range(4):
        alone_f = make(scale[i:i + 1], {"offset": extras["offset"][i:i + 1]})
        alone = Dopri5(rtol=1e-6, atol=1e-6).solve(VectorField(alone_f), y0[i:i + 1], t)
        assert int(together.nfe[i]) == int(alone.nfe[0])
        assert torch.equal(layout.unpack_trajectory(together.ys)[:, i], alone.ys[:, 0])
    assert torch.equal(layout.context_of(together.ys[-1]), layout.context_of(h0))    # derivative 0
    assert f.__closure__[1].cell_contents is scale and extras["offset"].shape == (4, 1)   # put back


def test_context_that_does_not_fit_the_state_exactly_is_refused():
    wide = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64) + 1e-12

    def f(t, y):
        return y * wide[:, None]
    y0 = torch.zeros(3, 2)
    context = RowContext.find(f, 3, exclude=(y0,))
    with pytest.raises(InputError, match=r"f.<wide> \(torch.float64\) does not fit the state's torch.float32"):
        context.gather(f, 3, y0.dtype, y0.device, first_call=lambda: None)


def _pipeline(tmp_path, build: str, x: torch.Tensor) -> dict:
    model = getattr(families, build)()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": x}, str(tmp_path / "d.safetensors"))
    common = [tmp_path / "m.pt", "--arch", f"families:{build}", "--code-path", TESTS, "--data", tmp_path / "d.safetensors"]
    res = invoke("inspect", *common, "--json", "-")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    for args in (("profile", *common, "--out", tmp_path / "p.sft"),
                 ("train-selector", *common, "--profile", tmp_path / "p.sft", "--epochs", 2, "--out", tmp_path / "s.sft"),
                 ("export", tmp_path / "m.pt", "--arch", f"families:{build}", "--code-path", TESTS, "--selector",
                  tmp_path / "s.sft", "--out", tmp_path / "b.dise"),
                 ("evaluate", tmp_path / "b.dise", "--data", tmp_path / "d.safetensors", "--code-path", TESTS,
                  "--batch-sizes", 8, "--repeats", 1)):
        res = invoke(*args)
        assert res.exit_code == 0, res.stderr
    return info


def test_a_conditional_sampler_gives_each_row_its_label(tmp_path):
    """Labels from the input ride in flow_matching's model_extras: the bundle's dopri5 rows equal the model
    run on each sample alone (a row given another row's label would be off by the label embedding)."""
    x = families.make_noise(24, seed=3)
    info = _pipeline(tmp_path, "build_conditional_fm_sampler", x)
    assert "per-sample" in info["state"] and info["fidelity"]["passed"]
    assert info["per_sample_tensors"] == "f.<model_extras>['label'] []"
    assert len(set((x[:, 0] > 0).tolist())) == 2 and len(set((x[:, 1] > 0).tolist())) == 2
    selector = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS]).selector
    assert selector.net.spec.in_shape == [2]            # h(0) alone: the labels ride with it, not into the selector
    model = families.build_conditional_fm_sampler()
    ode = read_model(model, x)
    solver = Dopri5(rtol=1e-5, atol=1e-5)
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    with torch.no_grad():
        together = ode.forward_with(x, lambda p: solver.solve(p.field, p.h0, p.t).ys)
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])      # torchdiffeq, one sample at a time
        out = bundle(x)
        out_alone = torch.cat([bundle(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-3, atol=1e-3)     # float32 at 1e-5; a wrong label is O(1) off
    torch.testing.assert_close(out, out_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build,x", [
    ("build_kdiffusion_likelihood", families.make_noise(24, seed=4)),           # noise captured by the closure
    ("build_ffjord_style_density", torch.randn(24, 3, generator=torch.Generator().manual_seed(5))),   # drawn by f
])
def test_hutchinson_noise_fixed_for_the_solve(tmp_path, build, x):
    """Noise drawn once per batch (in the forward, or by f's first call) goes with its rows: under the
    same seed, the bundle's dopri5 rows equal the model's own batched solve within its tolerance."""
    info = _pipeline(tmp_path, build, x)
    assert info["fidelity"]["passed"] and "per-sample" in info["state"]
    model = getattr(families, build)()
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    torch.manual_seed(0)
    with torch.no_grad():
        own = model(x)
    torch.manual_seed(0)
    with torch.no_grad():
        out, stats = bundle(x, return_stats=True)
    rows = (stats.integrator == 2).nonzero().flatten()
    torch.testing.assert_close(out[rows], own[rows], rtol=2e-3, atol=2e-3)


class _FixedMatrixField(torch.nn.Module):
    """dy/dt = y A with a fixed 3 x 3 A kept in a closure: A has as many rows as the probe's first
    batch, but it is not per sample."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        A = torch.tensor([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.0], [0.0, 0.0, -0.2]])
        return odeint(lambda t, y: y @ A + self.lin(y) * 0.1, x, torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-5)[-1]


def test_a_fixed_tensor_the_size_of_the_probe_batch_is_not_context():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    ode = read_model(_FixedMatrixField().eval(), x)
    assert ode.field.context is None and ode.layout.context == 0


class _CachingSampler(torch.nn.Module):
    """Keeps its last inputs on itself (a per-batch cache f can reach but never reads): not context."""

    def __init__(self):
        super().__init__()
        self.field = families.build_fm_field()
        self.seen = None

    def forward(self, x):
        out = odeint(lambda t, y: self.field(y, t), x, torch.tensor([0.0, 1.0]), rtol=1e-4, atol=1e-4)[-1]
        self.seen = x.double()          # float64: carried with a float32 state it would not fit
        return out


def test_a_tensor_f_can_reach_but_never_reads_is_not_context():
    x = families.make_noise(8)
    ode = read_model(_CachingSampler().eval(), x)
    assert ode.field.context is None and ode.layout.context == 0


class _CodedSampler(torch.nn.Module):
    """A sampler whose last input column is a class code (an embedding index): noise shaped like the data
    is no valid input, so export and a rebuilt bundle read it on data rows the selector keeps."""

    def __init__(self):
        super().__init__()
        self.field = families.build_fm_field()
        self.embed = torch.nn.Embedding(3, 2)

    def forward(self, x):
        cond = self.embed(x[:, -1].long())
        return odeint(lambda t, y: self.field(y, t) + cond, x[:, :2], torch.tensor([0.0, 1.0]), rtol=1e-4, atol=1e-4)[-1]


def build_coded_sampler():
    torch.manual_seed(0)
    return _CodedSampler().eval()


def test_a_model_that_rejects_noise_exports_with_data_rows(tmp_path):
    x = torch.cat([families.make_noise(16), torch.arange(16).remainder(3).float()[:, None]], 1)
    model = build_coded_sampler()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": x}, str(tmp_path / "d.safetensors"))
    common = [tmp_path / "m.pt", "--arch", "test_row_context:build_coded_sampler", "--code-path", TESTS]
    data = ["--data", tmp_path / "d.safetensors"]
    assert invoke("profile", *common, *data, "--out", tmp_path / "p.sft").exit_code == 0
    res = invoke("train-selector", *common, *data, "--profile", tmp_path / "p.sft", "--epochs", 2, "--out", tmp_path / "s.sft")
    assert res.exit_code == 0, res.stderr
    res = invoke("export", *common, "--selector", tmp_path / "s.sft", "--out", tmp_path / "b.dise")
    assert res.exit_code == 0, res.stderr
    assert "keeps 5 rows of the selector's training data" in res.stderr
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    assert torch.equal(torch.tensor(bundle.manifest["input"]["rows"]), x[:5].double())
    with torch.no_grad():
        out, stats = bundle(x, return_stats=True)
        own = model(x)
    rows = (stats.integrator == 2).nonzero().flatten()
    torch.testing.assert_close(out[rows], own[rows], rtol=1e-3, atol=1e-3)


class _PositionLabelSampler(torch.nn.Module):
    """f makes its labels from the rows' positions in the batch (rows 4 and on get another label): a
    sample's answer depends on where it sits, which no per-sample solve can reproduce."""

    def __init__(self):
        super().__init__()
        self.field = families.build_fm_field()

    def forward(self, x):
        def f(t, y):
            label = (torch.arange(len(y)) >= 4).float()[:, None] * 3.0
            return self.field(y, t) + label
        return odeint(f, x, torch.tensor([0.0, 1.0]), rtol=1e-4, atol=1e-4)[-1]


def build_position_label_sampler():
    torch.manual_seed(0)
    return _PositionLabelSampler().eval()


def test_f_that_reads_a_rows_position_in_the_batch_is_exit_2(tmp_path):
    torch.save(build_position_label_sampler().state_dict(), tmp_path / "m.pt")
    save_file({"x": families.make_noise(16)}, str(tmp_path / "d.safetensors"))
    res = invoke("profile", tmp_path / "m.pt", "--arch", "test_row_context:build_position_label_sampler",
                 "--code-path", TESTS, "--data", tmp_path / "d.safetensors", "--out", tmp_path / "p.sft")
    assert res.exit_code == 2 and "position in the batch" in res.stderr, res.stderr
    assert not (tmp_path / "p.sft").exists()


class _CDEFunc(torch.nn.Module):
    def __init__(self, input_channels: int = 3, hidden_channels: int = 8):
        super().__init__()
        self.input_channels, self.hidden_channels = input_channels, hidden_channels
        self.linear1 = torch.nn.Linear(hidden_channels, 16)
        self.linear2 = torch.nn.Linear(16, input_channels * hidden_channels)

    def forward(self, t, z):
        z = self.linear2(self.linear1(z).relu()).tanh()
        return z.view(z.size(0), self.hidden_channels, self.input_channels)


class _NeuralCDE(torch.nn.Module):
    """torchcde's README model: a cubic spline of the series (its coefficients, per sample, are buffers of
    a module made in the forward), then cdeint, whose f reads the spline's derivative."""

    def __init__(self):
        super().__init__()
        self.func = _CDEFunc()
        self.initial = torch.nn.Linear(3, 8)
        self.readout = torch.nn.Linear(8, 2)

    def forward(self, coeffs):
        import torchcde
        X = torchcde.CubicSpline(coeffs)
        z0 = self.initial(X.evaluate(X.interval[0]))
        return self.readout(torchcde.cdeint(X=X, z0=z0, func=self.func, t=X.interval)[:, 1])


def test_a_neural_cde_gives_each_sample_its_own_path():
    """The spline's coefficients are per-sample buffers f reads: each row of a batch solved by dise's
    dopri5 equals the model run on that sample alone (torchcde and torchdiffeq), and the coefficients
    f never reads stay out."""
    torchcde = pytest.importorskip("torchcde")
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 4, 10)
    series = torch.stack([t.expand(12, 10), torch.sin(t * torch.rand(12, 1, generator=g) * 3),
                          torch.cos(t * torch.rand(12, 1, generator=g) * 3)], -1)
    coeffs = torchcde.natural_cubic_coeffs(series)
    torch.manual_seed(0)
    model = _NeuralCDE().eval()
    ode = read_model(model, coeffs)
    assert ode.field.context is not None
    assert {describe(p) for p in ode.field.context.paths} == {"f.X._b", "f.X._two_c", "f.X._three_d"}
    solver = Dopri5(rtol=1e-4, atol=1e-6)                 # cdeint's defaults, as the model solves
    with torch.no_grad():
        together = ode.forward_with(coeffs, lambda p: solver.solve(p.field, p.h0, p.t).ys)
        alone = torch.cat([model(coeffs[i:i + 1]) for i in range(len(coeffs))])
    torch.testing.assert_close(together, alone, rtol=1e-2, atol=1e-2)       # dopri5 at 1e-4; another path is O(1) off


def test_a_reading_recorded_by_an_older_dise_still_matches():
    """Bundles and selectors from before the batch axis, per-sample tensors and time-per-row fields
    record layouts without those keys: read again now, the model is read the same way."""
    from dise_cli.bundle import check_reading
    ode = read_model(families.build_encoder_then_odeint(), families.make_encoder_then_odeint_data(8)[0])
    old = ode.record()
    old.pop("scalar_time")
    old["layout"] = {k: v for k, v in old["layout"].items() if k not in ("batch_axis", "context")}
    check_reading(ode.record(), old, "bundle 'old.dise'")
    old["layout"]["shapes"] = [[5]]
    with pytest.raises(InputError, match="another reading of the model"):
        check_reading(ode.record(), old, "bundle 'old.dise'")
