"""The fidelity check: dise runs the model as it is and compares with its own reproduction; it
catches a misreading and accepts a solver that differs only within its tolerance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchdiffeq import odeint
from typer.testing import CliRunner

import families
import tiny_models
from dise_cli.cli import app
from dise_cli.errors import InputError
from dise_cli.fidelity import check_fidelity, fidelity_error
from dise_cli.integrators import Dopri5
from dise_cli.odeblock import read_by_attributes
from dise_cli.reading import read_model

TESTS = str(Path(__file__).resolve().parent)


class SquareEncoderThenOdeint(families.EncoderThenOdeint):
    """The issue's model: encode, then odeint(self.func, self.enc(x), self.t); x, h(0) and the outputs
    alike in shape, so reading x as h(0) (and the solve's end as the output) runs, and is wrong."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)


def test_the_check_catches_a_skipped_encoder():
    model = SquareEncoderThenOdeint().eval()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        misread = read_by_attributes(model, x, None, None, None, "model", (x,))   # the old reading: h(0) = x
        check = check_fidelity(misread, x, Dopri5(rtol=1e-3, atol=1e-3))
        assert misread.kind == "root" and not check.passed and check.difference > 10 * check.allowed
        right = check_fidelity(read_model(model, x), x, Dopri5(rtol=1e-3, atol=1e-3))
        assert right.passed and right.difference < right.allowed / 5


def test_the_check_accepts_a_batch_coupled_solve_within_its_tolerance():
    """torchdiffeq steps the whole batch with one step size; dise steps each sample: at a loose tolerance
    the outputs differ visibly, and the check still passes."""
    class Loose(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.func = tiny_models.MLPFunc(2)

        def forward(self, x):
            return odeint(self.func, x * 3, torch.tensor([0.0, 2.0]), rtol=1e-2, atol=1e-2)[-1]

    model = Loose().eval()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        check = check_fidelity(read_model(model, x), x, Dopri5(rtol=1e-2, atol=1e-2))
    assert check.passed and check.difference > 1e-5 and check.tolerance_part > check.difference


class LateEnd(nn.Module):
    """A solve to 1.02 at a loose tolerance: read as ending at 1, it is within what the batch's
    allowance explains, but a sample solved alone shows the misreading."""

    def __init__(self, end: float):
        super().__init__()
        torch.manual_seed(0)
        self.func = tiny_models.MLPFunc(2)
        self.t = torch.tensor([0.0, end])

    def forward(self, x):
        return odeint(self.func, x, self.t, rtol=1e-2, atol=1e-2)[-1]


def test_a_misreading_within_the_batchs_allowance_is_caught_one_sample_at_a_time():
    model = LateEnd(1.02).eval()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        right_reading = read_model(model, x)
        misread = read_by_attributes(model, x, torch.tensor([0.0, 1.0]), None, None, "model", (x,))
        misread.own = right_reading.own         # the model's solver seen, its grid misread
        check = check_fidelity(misread, x, Dopri5(rtol=1e-2, atol=1e-2))
        right = check_fidelity(right_reading, x, Dopri5(rtol=1e-2, atol=1e-2))
    assert check.difference <= check.allowed          # the batch's comparison alone would pass it
    assert not check.passed and check.alone_difference > check.alone_allowed
    message = str(fidelity_error(check, misread, "late.pt", "give --t-span"))
    assert "one sample at a time" in message and "late.pt" in message and "\n" not in message
    # dise's copy of the solver takes the model's steps on a sample alone: the difference is round-off
    assert right.passed and right.alone_difference <= 1e-6 < right.alone_allowed


def test_a_model_that_squeezes_its_batch_is_compared_in_the_batch_only():
    """On one sample ``squeeze()`` drops the batch axis: the outputs cannot be set side by side."""
    class Squeezed(LateEnd):
        def forward(self, x):
            return super().forward(x).sum(-1).squeeze()

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        check = check_fidelity(read_model(Squeezed(1.0).eval(), x), x, Dopri5(rtol=1e-2, atol=1e-2))
    assert check.passed and check.alone_allowed is None


def test_a_random_encoder_is_compared_with_the_same_draws():
    class Sampled(families.EncoderThenOdeint):
        def forward(self, x):
            h = self.enc(x)
            h = h + 0.3 * torch.randn_like(h)          # a sampled latent, as latent ODEs draw z0
            return self.dec(odeint(self.func, h, self.t, rtol=1e-3, atol=1e-3)[-1])

    model = Sampled().eval()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        check = check_fidelity(read_model(model, x), x, Dopri5(rtol=1e-3, atol=1e-3))
    # dise makes the same draws in the same order: held to the tolerance alone, not the model's spread
    assert check.passed and check.draws == "same" and check.randomness_part == 0


class NoisyLatent(SquareEncoderThenOdeint):
    """A latent drawn with noise as large as the signal (``source`` says where the noise comes from)."""

    def __init__(self, source: str = "torch", scale: float = 2.0):
        super().__init__()
        self.source, self.scale = source, scale
        self.gen = torch.Generator().manual_seed(5)

    def noise(self, h):
        if self.source == "numpy":
            return torch.from_numpy(np.random.standard_normal(tuple(h.shape))).to(h.dtype)
        if self.source == "own generator":
            return torch.randn(h.shape, generator=self.gen)
        return torch.randn_like(h)

    def forward(self, x):
        h = self.enc(x)
        h = h + self.scale * self.noise(h)
        return self.dec(odeint(self.func, h, self.t, rtol=1e-3, atol=1e-3)[-1])


def test_a_misread_random_model_is_caught_with_the_same_draws():
    """The model's spread over seeds is as large as a skipped encoder's error; with the same draws the
    misreading stands out (it passed when the spread was allowed)."""
    model = NoisyLatent().eval()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        misread = read_by_attributes(model, x, None, None, None, "model", (x,))
        check = check_fidelity(misread, x, Dopri5(rtol=1e-3, atol=1e-3))
        assert check.draws == "same" and not check.passed and check.difference > 10 * check.allowed
        right = check_fidelity(read_model(model, x), x, Dopri5(rtol=1e-3, atol=1e-3))
    assert right.passed and right.draws == "same" and right.randomness_part == 0


def test_randomness_dise_cannot_draw_the_same_is_allowed_its_spread():
    """numpy's global generator is seeded like torch's (same draws); a generator the model owns is not,
    nor is noise f draws on every call (dise's solver calls f another number of times): their spread is
    allowed where it is small beside the solver's effect, and refused where it would drown it."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        check = check_fidelity(read_model(NoisyLatent("numpy").eval(), x), x, Dopri5(rtol=1e-3, atol=1e-3))
        assert check.passed and check.draws == "same"
        check = check_fidelity(read_model(NoisyLatent("own generator", scale=1e-5).eval(), x), x,
                               Dopri5(rtol=1e-3, atol=1e-3))
        assert check.passed and check.draws == "spread" and check.randomness_part > 0
        with pytest.raises(InputError, match="change by up to .* from one run to the next"):
            check_fidelity(read_model(NoisyLatent("own generator").eval(), x), x, Dopri5(rtol=1e-3, atol=1e-3))

        class Jittery(nn.Module):
            def forward(self, t, h):
                return -h + 1e-5 * torch.randn_like(h)

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.func = Jittery()

            def forward(self, x):
                return odeint(self.func, x, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 0.25})[-1]

        check = check_fidelity(read_model(Model().eval(), x), x, Dopri5(rtol=1e-3, atol=1e-3))
    assert check.passed and check.draws == "spread"


def test_a_misread_model_is_exit_2_before_anything_is_written(tmp_path):
    module = tiny_models.build_hand_loop_with_encoder()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        save_file({"x": x, "y": module(x).argmax(1)}, str(tmp_path / "d.safetensors"))
    args = [str(tmp_path / "m.pt"), "--arch", "tiny_models:build_hand_loop_with_encoder", "--code-path", TESTS,
            "--data", str(tmp_path / "d.safetensors")]
    res = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "p.safetensors")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "dise does not reproduce" in lines[0]
    assert "by its attributes" in lines[0] and "--ode-block" in lines[0] and not (tmp_path / "p.safetensors").exists()
    res = CliRunner().invoke(app, ["inspect", *args, "--json", str(tmp_path / "i.json")])
    import json
    info = json.loads((tmp_path / "i.json").read_text())
    assert res.exit_code == 2 and info["fidelity"]["passed"] is False and info["read_by"].startswith("block attributes")


def test_round_off_of_a_batch_is_not_taken_for_rows_reading_each_other():
    """A float32 score network rounds a row differently in a batch than alone (another matrix product
    kernel), and a VP drift of 0.5 * beta(1) = 10 scales that up: accepted. Labels made from the row's
    place in the batch are off by far more: refused."""
    from dise_cli.fidelity import check_rows_alone
    from dise_cli.integrators.vector_field import rows_agree

    class VPDrift(nn.Module):
        def __init__(self, by_place: bool = False):
            super().__init__()
            torch.manual_seed(0)
            self.score = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 2))
            self.by_place = by_place

        def forward(self, x):
            def f(t, h):
                vec_t = torch.ones(h.shape[0]) * t
                s = self.score(torch.cat([h, vec_t[:, None]], 1))
                if len(h) > 1:          # what another kernel's round-off does, made certain
                    s = s * (1 + 4 * torch.finfo(s.dtype).eps)
                if self.by_place:
                    s = s + (torch.arange(len(h)) % 2)[:, None]
                return -10.0 * (h + 8.0 * s)
            return odeint(f, x, torch.tensor([1.0, 1e-3]), rtol=1e-4, atol=1e-4)[-1]

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert check_rows_alone(read_model(VPDrift().eval(), x), x) is True
        with pytest.raises(InputError, match="(mixes the rows|another answer in) .*batch"):
            check_rows_alone(read_model(VPDrift(by_place=True).eval(), x), x)
    a = torch.full((4, 2), 100.0)
    assert rows_agree(a * (1 + 50 * torch.finfo(a.dtype).eps), a) and not rows_agree(a + 0.1, a)


def test_a_bfloat16_f_is_summed_in_the_states_dtype_as_torchdiffeq_does():
    """torchdiffeq writes f's bfloat16 values into float32 stages: dise's dopri5 does too, so a sample
    takes torchdiffeq's result bit for bit (summed at bfloat16's precision it was 1e-2 off). A fixed
    grid, whose steps torchdiffeq adds up in f's bfloat16, is allowed that dtype's round-off."""
    x = families.make_noise(8)
    exact = families.AutocastSampler("dopri5").eval()
    ode = read_model(exact, x)
    with torch.no_grad():
        for i in range(3):          # a sample alone: torchdiffeq's result, bit for bit
            check = check_fidelity(ode, x[i:i + 1], Dopri5(rtol=1e-3, atol=1e-3))
            assert check.passed and check.difference == 0.0
    fixed = families.AutocastSampler("rk4", step_size=0.25).eval()
    from dise_cli.integrators import RK4
    with torch.no_grad():
        check = check_fidelity(read_model(fixed, x), x, RK4(step_size=0.25))
        scale = 1 + float(fixed(x).abs().max())
    assert check.passed and 0 < check.difference <= check.allowed <= 0.1 * scale
