"""Every adaptive method from one tableau-driven implementation: orders, agreement with torchdiffeq
(and torchdyn for tsit5), batch independence, error estimates, and per-sample time grids."""
from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from dise_cli.integrators import (RK4, AdaptiveHeun, Bosh3, Dopri5, Dopri8, EmbeddedRK, Euler, Fehlberg2, Status,
                                  TimeMode, Tsit5, VectorField, parse_candidates)
from dise_cli.integrators.tableaus import ADAPTIVE_HEUN, BOSH3, DOPRI5, DOPRI8, FEHLBERG2, TSIT5

TORCHDIFFEQ_METHODS = [Dopri5, Bosh3, AdaptiveHeun, Fehlberg2, Dopri8]


def riccati(t, y):
    """y' = cos(t) y^2: y(t) = 1 / (1 / y(0) - sin t). Nonlinear and time-dependent."""
    return math.cos(t) * y * y


def one_step(tab, y0: float, t0: float, h: float) -> float:
    """One step of the pair's solution, in float64 Python, from the tableau data alone."""
    k = [riccati(t0, y0)]
    for a_i, row in zip(tab.alpha, tab.beta):
        k.append(riccati(t0 + a_i * h, y0 + h * sum(b * kj for b, kj in zip(row, k))))
    return y0 + h * sum(w * kj for w, kj in zip(tab.b, k))


@pytest.mark.parametrize("tab,n", [(DOPRI5, 16), (BOSH3, 32), (ADAPTIVE_HEUN, 64), (FEHLBERG2, 64), (DOPRI8, 8),
                                   (TSIT5, 16)],
                         ids=["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8", "tsit5"])
def test_order_of_convergence_of_each_tableau(tab, n):
    """Fixed steps of each pair's solution on [0, 2]: halving the step divides the error by at least
    2^order (more where a problem's error constants happen to cancel; a wrong coefficient loses orders)."""
    def error(steps: int) -> float:
        h, y = 2.0 / steps, 0.8
        for i in range(steps):
            y = one_step(tab, y, i * h, h)
        return abs(y - 1 / (1 / 0.8 - math.sin(2.0)))

    observed = math.log2(error(n) / error(2 * n))
    assert observed > tab.order - 0.3, observed


def _mlp_field(dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).to(dtype)

    def func(t, y):
        return 2 * net(torch.cat([y, torch.ones_like(y[:, :1]) * t], 1))
    return func


def _rowwise(func):
    """f computing every row as it would alone (a matrix product rounds a row differently in a batch)."""
    def rowwise(t, y):
        times = t.reshape(-1).expand(len(y))
        return torch.cat([func(times[i], y[i:i + 1]) for i in range(len(y))])
    return rowwise


@pytest.mark.parametrize("cls", TORCHDIFFEQ_METHODS, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-3), (torch.float32, 1e-5)])
def test_single_samples_match_torchdiffeq(cls, dtype, tol):
    """A sample solved alone takes torchdiffeq's NFE and gives its states, bit for bit (in a batch too,
    where f computes each row as it would alone)."""
    func = _mlp_field(dtype)
    y0 = torch.randn(6, 2, dtype=dtype, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.3, 1.0], dtype=dtype)
    with torch.no_grad():
        batch = cls(rtol=tol, atol=tol).solve(VectorField(func, TimeMode.BROADCAST), y0, t)
        for i in range(len(y0)):
            calls = [0]

            def counted(tt, yy):
                calls[0] += 1
                return func(tt, yy)

            ys = odeint(counted, y0[i:i + 1], t, rtol=tol, atol=tol, method=cls.name)
            alone = cls(rtol=tol, atol=tol).solve(VectorField(func, TimeMode.BROADCAST), y0[i:i + 1], t)
            assert alone.nfe.item() == calls[0]
            torch.testing.assert_close(alone.ys, ys, rtol=0, atol=0)
            if dtype == torch.float64:     # in float32 the MLP itself rounds a row differently in a batch
                assert batch.nfe[i].item() == calls[0]


@pytest.mark.parametrize("cls", TORCHDIFFEQ_METHODS, ids=lambda c: c.name)
@pytest.mark.parametrize("backwards", [False, True])
def test_a_step_cut_to_a_fifth_matches_torchdiffeq(cls, backwards):
    """A first step far too long (error ratio in the thousands) is cut by torchdiffeq's dfactor 0.2, in
    float64: the next step, every later one and the NFE are torchdiffeq's, bit for bit (0.2 rounded to
    float32 once made every such cut 1.5e-8 off)."""
    func = _mlp_field(torch.float64)

    def stiff(t, y):
        return -12.0 * y + func(t, y)
    y0 = torch.randn(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1.0, 0.0] if backwards else [0.0, 1.0], dtype=torch.float64)
    cut = []

    def counted(tt, yy):
        cut.append(float(tt))
        return stiff(tt, yy)
    with torch.no_grad():
        ys = odeint(counted, y0, t, rtol=1e-6, atol=1e-6, method=cls.name, options={"first_step": 0.9})
        alone = cls(rtol=1e-6, atol=1e-6, first_step=0.9).solve(VectorField(stiff, TimeMode.BROADCAST), y0, t)
    assert alone.nfe.item() == len(cut)
    torch.testing.assert_close(alone.ys, ys, rtol=0, atol=0)


def test_a_time_per_row_that_changes_f_is_not_used():
    """``torch.ones(N) * t`` is float32 for torchdiffeq's 0-dim float64 time and float64 for a time per
    row ``[N]``: f's answers differ in the 8th digit, so dise gives each row a 0-dim time (vmap), and a
    sample alone takes torchdiffeq's steps and states bit for bit."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    def func(t, y):
        vec_t = torch.ones(y.shape[0]) * t
        return net(torch.cat([y, vec_t[:, None].to(y.dtype) * 3.1], 1))
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        field = VectorField.detect(func, y0, t)
        assert field.mode is TimeMode.VMAP
        for i in range(len(y0)):
            ys = odeint(func, y0[i:i + 1], t, rtol=1e-7, atol=1e-7)
            alone = Dopri5(rtol=1e-7, atol=1e-7).solve(field, y0[i:i + 1], t)
            torch.testing.assert_close(alone.ys, ys, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_revealed_summation_order_is_the_order_sum_uses(dtype):
    """Stage sums of up to 14 products (dopri8's error sum) add in the tree PyTorch's sum(-1) uses,
    for any number of rows: otherwise a sample's state would differ in its last bits from torchdiffeq's."""
    from dise_cli.integrators.rounding import _add, _reveal_plan, _sum_plan
    assert _reveal_plan(4, dtype) == (((0, 1), 2), 3)
    for n in range(2, 15):
        plan = _sum_plan(n, dtype, "cpu")
        assert plan is not None and plan == _reveal_plan(n, dtype)
        assert sorted(_leaves(plan)) == list(range(n))
        for rows in (1, 3, 17, 1000):
            gen = torch.Generator().manual_seed(rows + n)
            x = torch.randn(rows, n, generator=gen, dtype=torch.float64)
            x = (x * 10 ** (torch.rand(rows, n, generator=gen, dtype=torch.float64) * 16 - 8)).to(dtype)
            assert torch.equal(_add(plan, lambda j, out: x[:, j].clone(), []), x.sum(-1))
    assert _sum_plan(7, dtype, "cuda") is None       # other devices: the stacked sum(-1) itself


def _leaves(plan):
    return [plan] if isinstance(plan, int) else [leaf for sub in plan for leaf in _leaves(sub)]


@pytest.mark.parametrize("cls,solver", [(Tsit5, "tsit5"), (lambda **k: Dopri5(control="torchdyn", **k), "dopri5")],
                         ids=["tsit5", "dopri5-torchdyn"])
@pytest.mark.parametrize("dtype,tol,share", [(torch.float64, 1e-6, 0.9), (torch.float32, 1e-4, 0.6)])
def test_torchdyn_stepping_statistics(cls, solver, dtype, tol, share):
    """torchdyn's tsit5 (and its dopri5), per sample alone: mostly the same NFE as torchdyn's own
    solve, the same mean NFE within 5 %, and states within its tolerance. In float32 torchdyn keeps its
    times in float32, and a step meant to land on an output time can miss it by a rounding and cost an
    extra step; dise lands exactly, so there fewer samples agree step for step."""
    pytest.importorskip("torchdyn")
    from torchdyn.numerics import odeint as torchdyn_odeint
    func = _mlp_field(dtype)
    y0 = torch.randn(12, 2, generator=torch.Generator().manual_seed(1)).to(dtype)
    nfe_dise, nfe_dyn, worst = [], [], 0.0
    for grid in ([0.0, 1.0], [0.0, 0.3, 1.0]):
        t = torch.tensor(grid, dtype=dtype)
        with torch.no_grad():
            for i in range(len(y0)):
                calls = [0]

                def counted(tt, yy, args=None):
                    calls[0] += 1
                    return func(tt, yy)

                _, sol = torchdyn_odeint(counted, y0[i:i + 1], t, solver, atol=tol, rtol=tol)
                ours = cls(rtol=tol, atol=tol).solve(VectorField(func, TimeMode.BROADCAST), y0[i:i + 1], t)
                nfe_dise.append(ours.nfe.item())
                nfe_dyn.append(calls[0])
                worst = max(worst, float((ours.ys - sol).abs().max()) / tol)
    same = sum(a == b for a, b in zip(nfe_dise, nfe_dyn))
    assert same >= share * len(nfe_dise), (nfe_dise, nfe_dyn)
    assert abs(sum(nfe_dise) - sum(nfe_dyn)) <= 0.05 * sum(nfe_dyn)
    assert worst < 10


def stiffish(t, y):
    return -y ** 3 * 5 + torch.sin(3 * t) * y


@pytest.mark.parametrize("cls", [Dopri5, Bosh3, AdaptiveHeun, Fehlberg2, Dopri8, Tsit5], ids=lambda c: c.name)
def test_batch_independence_with_a_stiff_partner(cls):
    easy = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    stiff = torch.tensor([[6.0, -7.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = VectorField(stiffish, TimeMode.BROADCAST)
    alone = cls().solve(field, easy, t)
    both = cls().solve(field, torch.cat([easy, stiff]), t)
    assert both.nfe[1] > both.nfe[0] and both.nfe[0] == alone.nfe[0]
    torch.testing.assert_close(both.final[0], alone.final[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cls", [Dopri5, Bosh3, AdaptiveHeun, Fehlberg2, Dopri8, Tsit5], ids=lambda c: c.name)
@pytest.mark.parametrize("every", [2, 5])
def test_compacting_every_k_steps_changes_nothing(cls, every):
    """Finished rows are masked and frozen until the next compaction: the same outputs, NFE, statuses,
    steps and error records as compacting every step, also for rows that fail (max_steps, NaN)."""
    gen = torch.Generator().manual_seed(3)
    y0 = torch.randn(24, 2, dtype=torch.float64, generator=gen) * torch.linspace(0.1, 4.0, 24, dtype=torch.float64)[:, None]
    y0[5] = float("nan")
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    field = VectorField(stiffish, TimeMode.BROADCAST)
    most = int(cls().solve(field, y0, t).n_steps.max())
    solver = cls(max_steps=max(most - 2, 1))               # the hardest rows run out of steps
    one = solver.solve(field, y0, t, record_errors=True)
    solver.compact_every = every
    k = solver.solve(field, y0, t, record_errors=True)
    assert torch.equal(one.nfe, k.nfe) and torch.equal(one.status, k.status) and torch.equal(one.n_steps, k.n_steps)
    assert {int(s) for s in one.status} >= {int(Status.OK), int(Status.MAX_STEPS), int(Status.NON_FINITE)}
    assert torch.equal(one.ys.nan_to_num(7.0), k.ys.nan_to_num(7.0))
    order = lambda e: torch.argsort(e.sample * 100000 + torch.arange(len(e.sample)), stable=True)  # noqa: E731
    for name in ("sample", "error", "dt", "kinetic"):
        a, b = getattr(one.step_errors, name), getattr(k.step_errors, name)
        assert torch.equal(a[order(one.step_errors)], b[order(k.step_errors)]), name


@pytest.mark.parametrize("cls", [Bosh3, AdaptiveHeun, Fehlberg2, Dopri8, Tsit5], ids=lambda c: c.name)
def test_error_estimates_of_every_method_have_gradients(cls):
    """R_err of any embedded method: per accepted step, with gradients for fine-tuning."""
    w = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def func(t, y):
        return -w * y ** 3

    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol = cls().solve(VectorField(func), y0, torch.tensor([0.0, 1.0]), record_errors=True)
    assert len(sol.step_errors.error) == int(sol.n_steps.sum()) and (sol.step_errors.error <= 1).all()
    sol.step_errors.per_sample(4).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad) and w.grad != 0


def test_specs_for_every_method_and_control():
    cands = parse_candidates("bosh3:rtol=1e-4,atol=1e-5,tsit5,dopri5:control=torchdyn,dopri8:max_steps=50")
    assert [c.spec for c in cands] == ["bosh3:rtol=0.0001,atol=1e-05", "tsit5:rtol=0.001,atol=0.001",
                                       "dopri5:rtol=0.001,atol=0.001,control=torchdyn",
                                       "dopri8:rtol=0.001,atol=0.001,max_steps=50"]
    assert all(isinstance(c, EmbeddedRK) for c in cands)
    assert Tsit5(control="torchdiffeq").spec == "tsit5:rtol=0.001,atol=0.001,control=torchdiffeq"
    from dise_cli.errors import UsageError
    with pytest.raises(UsageError, match="control='scipy' is not a valid control"):
        parse_candidates("dopri5:control=scipy")


def grids(n: int, dtype=torch.float64, backwards=False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    steps = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 0.6 + 0.05
    t = torch.cat([torch.zeros(n, 1, dtype=torch.float64), steps.cumsum(1)], 1)
    return (t.flip(1) if backwards else t).to(dtype)


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("cls", [Dopri5, Bosh3, Dopri8, Euler, RK4], ids=lambda c: c.name)
def test_a_grid_per_sample_equals_each_sample_alone_in_torchdiffeq(cls, backwards):
    """Data t of shape [N, T]: every sample on its own grid, as torchdiffeq solves it alone on that grid
    (fixed-step methods take one step per interval of the sample's own grid)."""
    func = _mlp_field(torch.float64)
    y0 = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = grids(7, backwards=backwards)
    integrator = cls(rtol=1e-7, atol=1e-7) if cls.adaptive else cls(steps=1)
    with torch.no_grad():
        sol = integrator.solve(VectorField(_rowwise(func), TimeMode.BROADCAST), y0, t)
        for i in range(len(y0)):
            calls = [0]

            def counted(tt, yy):
                calls[0] += 1
                return func(tt, yy)

            kwargs = {"rtol": 1e-7, "atol": 1e-7} if cls.adaptive else {}
            ys = odeint(counted, y0[i:i + 1], t[i], method=cls.name, **kwargs)
            assert sol.nfe[i].item() == calls[0]
            torch.testing.assert_close(sol.ys[:, i:i + 1], ys, rtol=1e-12, atol=1e-12)
    assert (sol.status == Status.OK).all()


def test_grids_running_different_ways_are_refused():
    t = grids(2)
    t[1] = t[1].flip(0)
    with pytest.raises(ValueError, match="every sample's the same way"):
        Dopri5().solve(VectorField(stiffish), torch.ones(2, 1, dtype=torch.float64), t)
