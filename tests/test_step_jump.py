"""torchdiffeq's ``step_t`` and ``jump_t`` options (times an adaptive step stops at; after a jump, f
again just past it): per sample, bit for bit and NFE for NFE against torchdiffeq, forwards and
backwards, in float32 and float64, for every adaptive tableau; their spec text and emulation."""
from __future__ import annotations

import pytest
import torch
from torchdiffeq import odeint

from dise_cli.errors import UsageError
from dise_cli.integrators import AdaptiveHeun, Bosh3, Dopri5, Dopri8, Fehlberg2, TimeMode, VectorField, parse_candidates
from dise_cli.integrators.emulation import emulate

TOL = 1e-6


def switched_field(dtype, at=0.5):
    """A small MLP f whose sign flips at t = ``at``: discontinuous in time, what jump_t is for."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dtype)

    def func(t, y):
        sign = torch.where(t < at, 1.0, -1.5).to(y.dtype)
        return 2 * sign * net(torch.cat([y, torch.ones_like(y[:, :1]) * t], 1))
    return func


def rowwise(func):
    """f computing every row as it would alone (a matrix product rounds a row differently in a batch)."""
    def each_row(t, y):
        times = t.reshape(-1).expand(len(y))
        return torch.cat([func(times[i], y[i:i + 1]) for i in range(len(y))])
    return each_row


def torchdiffeq_alone(func, y0, t, method, options):
    """torchdiffeq's states for one sample, its NFE and the times it called f at."""
    times = []

    def counted(tt, yy):
        times.append(float(tt))
        return func(tt, yy)
    ys = odeint(counted, y0, t, rtol=TOL, atol=TOL, method=method, options=options)
    return ys, times


def states(n, dtype, seed=1):
    return torch.randn(n, 2, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def assert_each_sample_alone_is_torchdiffeq(cls, func, y0, t, options, **settings):
    """Every sample solved alone by dise: torchdiffeq's states bit for bit, its NFE and the very times
    it called f at (the perturbed ones at a step's end and after a jump included). Returns dise's NFE."""
    nfe = []
    for i in range(len(y0)):
        ys, times = torchdiffeq_alone(func, y0[i:i + 1], t, cls.name, {**options, **settings})
        called = []

        def recorded(tt, yy):
            called.extend(float(v) for v in tt.reshape(-1))
            return func(tt, yy)
        alone = cls(rtol=TOL, atol=TOL, **options, **settings).solve(VectorField(recorded, TimeMode.BROADCAST),
                                                                     y0[i:i + 1], t)
        assert alone.nfe.item() == len(times) and called == times
        assert torch.equal(alone.ys, ys)
        nfe.append(alone.nfe.item())
    return nfe


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_step_t_matches_torchdiffeq(dtype):
    """dopri5 with step_t: a step that would pass one of the times ends on it. A time past the end
    stays (torchdiffeq keeps it: the last step, which may run past the end, stops there)."""
    func = switched_field(dtype)
    y0, t = states(4, dtype), torch.tensor([0.0, 0.3, 1.0], dtype=dtype)
    step_t = torch.tensor([0.7, 0.2, 0.45, 1.2], dtype=dtype)
    with torch.no_grad():
        nfe = assert_each_sample_alone_is_torchdiffeq(Dopri5, func, y0, t, {"step_t": step_t})
        free = Dopri5(rtol=TOL, atol=TOL).solve(VectorField(func, TimeMode.BROADCAST), y0, t)
    assert nfe != free.nfe.tolist()          # the times changed the solve


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_jump_t_at_a_discontinuity_matches_torchdiffeq(dtype):
    """dopri5 with jump_t at f's discontinuity: the step ends on it, stages there see f just before it,
    and f is evaluated again just after it (one more NFE) for the next step. Far fewer NFE than
    stepping across the jump blind."""
    func = switched_field(dtype)
    y0, t = states(4, dtype), torch.tensor([0.0, 1.0], dtype=dtype)
    with torch.no_grad():
        nfe = assert_each_sample_alone_is_torchdiffeq(Dopri5, func, y0, t, {"jump_t": torch.tensor([0.5])})
        blind = Dopri5(rtol=TOL, atol=TOL).solve(VectorField(func, TimeMode.BROADCAST), y0, t)
    assert sum(nfe) < sum(blind.nfe.tolist())


@pytest.mark.parametrize("cls", [Bosh3, AdaptiveHeun, Fehlberg2, Dopri8], ids=lambda c: c.name)
def test_every_other_tableau_with_both_matches_torchdiffeq(cls):
    """step_t and jump_t together (a jump_t stop overrides a step_t one in the same step) for the other
    tableaus, FSAL or not (adaptive_heun's next step starts from f at the solution after a jump)."""
    func = switched_field(torch.float64)
    y0, t = states(2, torch.float64), torch.tensor([0.0, 0.6, 1.0], dtype=torch.float64)
    options = {"step_t": torch.tensor([0.3, 0.55, 0.9]), "jump_t": torch.tensor([0.5, 0.52])}
    with torch.no_grad():
        assert_each_sample_alone_is_torchdiffeq(cls, func, y0, t, options)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_backwards_in_time_matches_torchdiffeq(dtype):
    """t from 1 to 0: torchdiffeq negates the time and the options; f just after a jump is then just
    before it in the model's time."""
    func = switched_field(dtype)
    y0, t = states(3, dtype), torch.tensor([1.0, 0.4, 0.0], dtype=dtype)
    options = {"step_t": torch.tensor([0.8, 0.25], dtype=dtype), "jump_t": torch.tensor([0.5], dtype=dtype)}
    with torch.no_grad():
        assert_each_sample_alone_is_torchdiffeq(Dopri5, func, y0, t, options)


def test_a_step_landing_on_a_time_unshortened_leaves_the_rest_unmet():
    """A step that lands exactly on its next step_t time without being shortened (here the first step,
    0.25) does not move torchdiffeq's pointer on: the later times (0.5) are then never stopped at."""
    func = switched_field(torch.float64)
    y0, t = states(2, torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        assert_each_sample_alone_is_torchdiffeq(Dopri5, func, y0, t, {"step_t": torch.tensor([0.25, 0.5])},
                                                first_step=0.25)


@pytest.mark.parametrize("per_sample_grid", [False, True], ids=["one-grid", "grid-per-sample"])
def test_a_batch_gives_each_sample_what_it_gives_alone(per_sample_grid):
    """Rows reach the times at different steps: each row stops, jumps and pays the extra NFE on its own.
    With a grid per sample each row also starts after its own number of times."""
    func = switched_field(torch.float64)
    y0 = states(6, torch.float64, seed=5) * torch.linspace(0.2, 3.0, 6, dtype=torch.float64)[:, None]
    if per_sample_grid:
        starts = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.55, 0.6], dtype=torch.float64)
        t = torch.stack([starts, starts + 0.5, starts + 0.9], 1)
    else:
        t = torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64)
    options = {"step_t": torch.tensor([0.2, 0.7]), "jump_t": torch.tensor([0.5, 0.6])}
    with torch.no_grad():
        batch = Dopri5(rtol=TOL, atol=TOL, **options).solve(VectorField(rowwise(func), TimeMode.BROADCAST), y0, t)
        for i in range(len(y0)):
            ys, times = torchdiffeq_alone(func, y0[i:i + 1], t[i] if per_sample_grid else t, "dopri5", options)
            assert batch.nfe[i].item() == len(times)
            assert torch.equal(batch.ys[:, i:i + 1], ys)
    assert len(set(batch.nfe.tolist())) > 1


def test_specs_round_trip():
    """Specs are saved in files and read back: the times, float32 ones included, come back exactly,
    sorted; loosened keeps them."""
    solver = Dopri5(rtol=1e-5, atol=1e-6, step_t=torch.tensor([0.3, 0.1], dtype=torch.float32),
                    jump_t=[1 / 3, -0.5])
    assert solver.spec == "dopri5:rtol=1e-05,atol=1e-06,step_t=0.1f/0.3f,jump_t=-0.5/0.3333333333333333"
    again = parse_candidates(solver.spec)[0]
    assert type(again) is Dopri5 and again.spec == solver.spec
    assert (again.step_t, again.jump_t) == (solver.step_t, solver.jump_t)
    assert again.step_t == tuple(torch.tensor([0.1, 0.3], dtype=torch.float32).double().tolist())
    loose = solver.loosened()
    assert (loose.rtol, loose.step_t, loose.jump_t) == (1e-4, solver.step_t, solver.jump_t)
    assert loose.spec.endswith(",step_t=0.1f/0.3f,jump_t=-0.5/0.3333333333333333")
    assert parse_candidates("bosh3:jump_t=0.5,step_t=0.25/0.75")[0].spec == \
        "bosh3:rtol=0.001,atol=0.001,step_t=0.25/0.75,jump_t=0.5"


@pytest.mark.parametrize("text,needle", [
    ("dopri5:step_t=0.5/0.5", "step_t='0.5/0.5' is not a valid list of times (distinct finite times"),
    ("dopri5:jump_t=0.5/abc", "is not a valid list of times"),
    ("dopri5:step_t=0.5,jump_t=0.5", "step_t and jump_t must not share a time, got 0.5"),
    ("tsit5:step_t=0.5", "need control=torchdiffeq"),
    ("rk4:step_t=0.5", "valid options: steps, step_size"),
])
def test_invalid_times_in_specs(text, needle):
    with pytest.raises(UsageError, match="--candidates") as err:
        parse_candidates(text)
    assert needle in str(err.value)


def test_emulation_copies_the_times():
    """A model's step_t and jump_t (tensors or lists) make an exact emulation; a list is not negated by
    torchdiffeq for a backward solve (a tensor is), so its times are the negated ones in the model's
    time; times dise does not take leave the emulation inexact, said plainly."""
    em = emulate("torchdiffeq", "bosh3", 1e-6, 1e-6, {"jump_t": torch.tensor([0.5]), "step_t": [0.25, 0.75]})
    assert em.exact and not em.note and em.integrator.spec == "bosh3:rtol=1e-06,atol=1e-06,step_t=0.25/0.75,jump_t=0.5"
    shared = emulate("torchdiffeq", "dopri5", 1e-6, 1e-6, {"jump_t": torch.tensor([0.5]), "step_t": [0.5]})
    assert not shared.exact and "must not share a time" in shared.note
    assert shared.integrator.spec == "dopri5:rtol=1e-06,atol=1e-06"
    assert emulate("torchdiffeq", "rk4", 1e-6, 1e-6, {"step_size": 0.1, "jump_t": torch.tensor([0.5])}).exact

    func = switched_field(torch.float64, at=-0.5)
    y0, t = states(2, torch.float64), torch.tensor([0.0, -1.0], dtype=torch.float64)
    options = {"jump_t": [0.5], "step_t": torch.tensor([-0.3], dtype=torch.float64)}   # the list: s = 0.5: t = -0.5
    em = emulate("torchdiffeq", "dopri5", TOL, TOL, options, decreasing=True)
    assert em.exact and em.integrator.jump_t == (-0.5,) and em.integrator.step_t == (-0.3,)
    with torch.no_grad():
        for i in range(len(y0)):
            ys, times = torchdiffeq_alone(func, y0[i:i + 1], t, "dopri5", options)
            ours = em.integrator.solve(VectorField(func, TimeMode.BROADCAST), y0[i:i + 1], t)
            assert ours.nfe.item() == len(times) and torch.equal(ours.ys, ys)
