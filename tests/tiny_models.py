"""Tiny Neural ODEs in the shapes people write them, for the tests (importable with --code-path tests)."""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint


class MLPFunc(nn.Module):
    """f(t, h) = W2 tanh(W1 [h, t]): time-dependent, scalar t as torchdiffeq passes it."""

    def __init__(self, dim: int = 4, hidden: int = 16):
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, h):
        tt = torch.ones_like(h[:, :1]) * t
        return self.l2(torch.tanh(self.l1(torch.cat([h, tt], 1))))


class ODEBlock(nn.Module):
    """torchdiffeq-example style: odefunc + integration_time, odeint in forward, returns h(1)."""

    def __init__(self, odefunc: nn.Module, t=(0.0, 1.0)):
        super().__init__()
        self.odefunc = odefunc
        self.integration_time = torch.tensor(t)

    def forward(self, x):
        return odeint(self.odefunc, x, self.integration_time.type_as(x), rtol=1e-3, atol=1e-3)[-1]


def build_classifier() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), ODEBlock(MLPFunc(4)), nn.Linear(4, 3))


def build_classifier_from_ema_checkpoint(checkpoint=None) -> nn.Sequential:
    """build(checkpoint): loads the checkpoint's EMA weights itself (without one, the bare model)."""
    model = build_classifier()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["ema"])
    return model


def build_classifier_failing_on_rank_1() -> nn.Sequential:
    """The tiny classifier, except in torchrun's rank 1 (a node whose copy of the code is broken)."""
    import os
    if os.environ.get("RANK") == "1":
        raise RuntimeError("this node's copy of the weights is unreadable")
    return build_classifier()


class TorchdynLike(nn.Module):
    """torchdyn's NeuralODE shape: ``vf`` and ``t_span``, returns (t_eval, trajectory)."""

    def __init__(self, vf: nn.Module):
        super().__init__()
        self.vf = vf
        self.t_span = torch.linspace(0, 1, 2)

    def forward(self, x):
        traj = odeint(self.vf, x, self.t_span.type_as(x))
        return self.t_span, traj


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, out):
        return self.lin(out[1][-1])


def build_torchdyn_like() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), TorchdynLike(MLPFunc(4)), Head())


class Nested(nn.Module):
    """Not a Sequential: the parent's forward calls the block, with a skip connection around it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(2, 4)
        self.body = nn.ModuleDict({"ode": ODEBlock(MLPFunc(4))})
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.stem(x)
        return self.head(torch.cat([self.body["ode"](h), h], 1))


def build_nested() -> nn.Module:
    return Nested()


class Unexportable(Nested):
    """Like Nested, with a Python branch on a value of the data, which torch.export cannot capture."""

    def forward(self, x):
        h = self.stem(x)
        if float(h.abs().max()) > 1e6:
            h = h / float(h.abs().max())
        return self.head(torch.cat([self.body["ode"](h), h], 1))


def build_unexportable() -> nn.Module:
    return Unexportable()


class Wrapper(nn.Module):
    """Keeps f under an unusual name and returns the whole trajectory (time-major)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dynamics = MLPFunc(2)
        self.times = torch.tensor([0.0, 0.5, 1.0])

    def forward(self, y0):
        return odeint(self.dynamics, y0, self.times)


def build_wrapper() -> nn.Module:
    return Wrapper()


def build_bare() -> nn.Module:
    torch.manual_seed(0)
    return MLPFunc(2)


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ODEBlock(MLPFunc(2))
        self.b = ODEBlock(MLPFunc(2))

    def forward(self, x):
        return self.b(self.a(x))


def build_two_blocks() -> nn.Module:
    return TwoBlocks()


def build_no_block() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3))


def build_not_a_module():
    return 42


class OneLayerFunc(nn.Module):
    """A bare f(t, h) whose only child is itself (t, h)-shaped: still f, not a block around it."""

    def __init__(self):
        super().__init__()
        self.layer = MLPFunc(2)

    def forward(self, t, h):
        return torch.tanh(self.layer(t, h))


def build_one_layer_func() -> nn.Module:
    torch.manual_seed(0)
    return OneLayerFunc()


class WrapperWithTime(nn.Module):
    """A wrapper called as model(y0, t), returning the trajectory."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLPFunc(2)

    def forward(self, y0, t):
        return odeint(self.net, y0, t)
TESTS_CONSTANT = 42


class HandLoopWithEncoder(nn.Module):
    """Encodes, then runs its own Euler loop over ``odefunc`` (no solver dise can see)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(2, 2)
        self.odefunc = MLPFunc(2)
        self.integration_time = torch.tensor([0.0, 1.0])
        self.head = nn.Linear(2, 2)          # two classes: the state's shape, so a misreading runs

    def forward(self, x):
        h = self.enc(x)
        for i in range(4):
            h = h + 0.25 * self.odefunc(torch.tensor(i * 0.25), h)
        return self.head(h)


def build_hand_loop_with_encoder() -> nn.Module:
    return HandLoopWithEncoder()


class SolverChoice(nn.Module):
    """A classifier whose block solves with a method and options given at construction."""

    def __init__(self, method: str, float64: bool = False, **options):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 4)
        self.func = MLPFunc(4).to(torch.float64 if float64 else torch.float32)   # float64: a row rounds alike
        self.head = nn.Linear(4, 3)                                               # in a batch and alone
        self.method, self.options = method, options

    def encode(self, x):
        return self.lin(x).to(self.func.l1.weight.dtype)

    def forward(self, x):
        options = dict(self.options)
        atol = torch.tensor([1e-7, 1e-7, 1e-3, 1e-3]) if options.pop("atol_per_element", False) else 1e-5
        h = odeint(self.func, self.encode(x), torch.tensor([0.0, 1.0]), method=self.method, options=options,
                   rtol=1e-5, atol=atol)
        return self.head(h[-1].float())


class LearnedEndTime(SolverChoice):
    """The integration time an ``nn.Parameter`` (torchdiffeq's ODE-Net users learn it): ``[0, T]``."""

    def __init__(self):
        super().__init__("dopri5")
        self.end = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        t = torch.stack([torch.zeros_like(self.end), self.end])
        return self.head(odeint(self.func, self.lin(x), t, rtol=1e-5, atol=1e-5)[-1])


class SolvesAnotherWayWhenTraining(SolverChoice):
    """FFJORD's CNF: in training mode the forward solves from another line, with more states."""

    def __init__(self):
        super().__init__("dopri5")

    def forward(self, x):
        h = self.lin(x)
        if self.training:
            zs = odeint(lambda t, s: (self.func(t, s[0]), torch.zeros_like(s[1])), (h, torch.zeros(len(h), 1)),
                        torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-5)
            return self.head(zs[0][-1])
        return self.head(odeint(self.func, h, torch.tensor([0.0, 1.0]), rtol=1e-5, atol=1e-5)[-1])


def build_solves_another_way_when_training() -> nn.Module:
    return SolvesAnotherWayWhenTraining()


def build_learned_end_time() -> nn.Module:
    return LearnedEndTime()


def build_adams() -> nn.Module:
    return SolverChoice("implicit_adams", step_size=0.05)


def build_bosh3() -> nn.Module:
    return SolverChoice("bosh3")


def build_with_safety() -> nn.Module:
    return SolverChoice("dopri5", safety=0.8)


class PerComponentTolerances(SolverChoice):
    """FFJORD's tolerances: one per tuple component, 1e20 leaving a regularisation state (here a fast
    one) out of step control."""

    def __init__(self):
        super().__init__("dopri5", float64=True)

    def forward(self, x):
        h = self.encode(x)

        def f(t, s):
            return self.func(t, s[0]), 20 * torch.sin(40 * s[0]).pow(2).sum(1, keepdim=True)
        zs = odeint(f, (h, torch.zeros(len(h), 1, dtype=h.dtype)), torch.tensor([0.0, 1.0]), rtol=[1e-5, 1e20],
                    atol=[1e-5, 1e20])
        return self.head(zs[0][-1].float())


def build_per_component_tolerances() -> nn.Module:
    return PerComponentTolerances()


def build_tolerance_per_element() -> nn.Module:
    """A tensor ``atol`` over the state's 4 elements: two tight, two loose."""
    return SolverChoice("dopri5", float64=True, atol_per_element=True)


def build_third_steps() -> nn.Module:
    """RK4 with steps of 1/3."""
    return SolverChoice("rk4", step_size=1 / 3)


class SwitchedFunc(MLPFunc):
    """MLPFunc whose sign flips at t = 0.5: discontinuous in time, what torchdiffeq's jump_t is for."""

    def forward(self, t, h):
        return torch.where(t < 0.5, 1.0, -1.5).to(h.dtype) * super().forward(t, h)


class JumpAtHalf(SolverChoice):
    """dopri5 told where f jumps (``options=dict(jump_t=...)``), with a step_t time too; ``backwards``:
    a tuple state solved from t = 1 to 0."""

    def __init__(self, backwards: bool = False):
        super().__init__("dopri5", float64=True, jump_t=torch.tensor([0.5]), step_t=torch.tensor([0.25]))
        self.func = SwitchedFunc(4).to(torch.float64)
        self.backwards = backwards

    def forward(self, x):
        h = self.encode(x)
        if not self.backwards:
            return super().forward(x)

        def f(t, s):
            return self.func(t, s[0]), -s[1]
        zs = odeint(f, (h, torch.ones(len(h), 1, dtype=h.dtype)), torch.tensor([1.0, 0.0]), rtol=1e-5, atol=1e-5,
                    options=self.options)
        return self.head(zs[0][-1].float())


def build_jump_at_half() -> nn.Module:
    return JumpAtHalf()


def build_jump_at_half_backwards() -> nn.Module:
    return JumpAtHalf(backwards=True)


class IrregularLatentODE(nn.Module):
    """A latent ODE classifier for irregularly sampled series in a few units, shaped like Rubanova et
    al.'s: x [N, T, 2C + 1] packs values, an observation mask and the time stamp per step; a GRU reads
    the observed steps backwards with their time gaps and gives z0; ``odeint`` solves the latent ODE
    from 0 to 1; a linear head gives one logit (a binary classifier)."""

    def __init__(self, channels: int = 2, latent: int = 3, hidden: int = 6):
        super().__init__()
        self.channels = channels
        self.gru = nn.GRUCell(2 * channels + 1, hidden)
        self.to_z0 = nn.Linear(hidden, latent)
        self.func = nn.Sequential(nn.Linear(latent, 8), nn.Tanh(), nn.Linear(8, latent))
        self.head = nn.Linear(latent, 1)

    def forward(self, x):
        values, mask, times = x[..., :self.channels], x[..., self.channels:2 * self.channels], x[..., -1]
        h = x.new_zeros(len(x), self.gru.hidden_size)
        later = times[:, -1]
        for i in reversed(range(x.shape[1])):
            seen = mask[:, i].amax(1, keepdim=True)                 # a padded step leaves h as it was
            gap = (later - times[:, i]).unsqueeze(1)
            step = self.gru(torch.cat([values[:, i], mask[:, i], gap], 1), h)
            h = seen * step + (1 - seen) * h
            later = torch.where(seen[:, 0] > 0, times[:, i], later)
        z0 = self.to_z0(h)
        zt = odeint(lambda t, z: self.func(z), z0, torch.tensor([0.0, 1.0]), rtol=1e-3, atol=1e-4)
        return self.head(zt[-1])


def build_irregular_binary() -> nn.Module:
    torch.manual_seed(0)
    return IrregularLatentODE()


class SigmoidOutput(nn.Module):
    """The same classifier with a final sigmoid (trained with BCELoss): its one output is a probability."""

    def __init__(self):
        super().__init__()
        self.inner = build_irregular_binary()

    def forward(self, x):
        return torch.sigmoid(self.inner(x))


def build_irregular_binary_sigmoid() -> nn.Module:
    return SigmoidOutput()


def irregular_series(n: int, steps: int = 6, channels: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` series with a random ~30 % of steps unobserved, packed as IrregularLatentODE reads them."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, steps, channels, generator=gen)
    observed = (torch.rand(n, steps, 1, generator=gen) > 0.3).float()
    observed[:, 0] = 1.0
    times = torch.linspace(0, 1, steps).expand(n, steps).unsqueeze(-1)
    return torch.cat([values * observed, observed.expand(-1, -1, channels), times], -1)


class _ScriptableFunc(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(h)) * t


class _ScriptableEulerBlock(nn.Module):
    """An ODE block with its own Euler loop, written to be scripted."""

    def __init__(self):
        super().__init__()
        self.odefunc = _ScriptableFunc()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            h = h + 0.25 * self.odefunc(torch.tensor(i * 0.25), h)
        return h


def build_scripted_block() -> nn.Module:
    """A classifier whose hand-written ODE block is ``torch.jit.script``-ed."""
    import warnings
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # torch.jit.script is deprecated in 2.13
        block = torch.jit.script(_ScriptableEulerBlock())
    return nn.Sequential(nn.Linear(2, 4), block, nn.Linear(4, 3))
