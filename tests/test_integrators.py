"""Numerics of dise's integrators: closed forms, orders, NFE counts, and torchdiffeq agreement."""
from __future__ import annotations

import pytest
import torch
from torchdiffeq import odeint

from dise_cli.errors import InputError, UsageError
from dise_cli.integrators import RK4, Dopri5, Euler, Midpoint, Status, TimeMode, VectorField, parse_candidates

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)


def linear(t, y):
    return y @ A.T.to(y.dtype)


class Counting:
    """Counts calls and rows: NFE by a wrapped vector field."""

    def __init__(self, func):
        self.func, self.calls, self.rows = func, 0, 0

    def __call__(self, t, y):
        self.calls += 1
        self.rows += len(y)
        return self.func(t, y)


def exact(y0: torch.Tensor, t: float) -> torch.Tensor:
    return y0 @ torch.linalg.matrix_exp(A * t).T


def y0s(n: int = 5, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("cls,order", [(Euler, 1), (Midpoint, 2), (RK4, 4)])
def test_order_of_convergence(cls, order):
    y0, t = y0s(), torch.tensor([0.0, 1.0])
    errors = [(cls(steps=s).solve(VectorField(linear), y0, t).final - exact(y0, 1.0)).abs().max() for s in (16, 32)]
    observed = torch.log2(errors[0] / errors[1]).item()
    assert abs(observed - order) < 0.25, observed


@pytest.mark.parametrize("cls,stages", [(Euler, 1), (Midpoint, 2), (RK4, 4)])
def test_fixed_grid_nfe(cls, stages):
    field = Counting(linear)
    sol = cls(steps=3).solve(VectorField(field), y0s(), torch.tensor([0.0, 0.5, 1.0]))
    assert field.calls == 2 * 3 * stages
    assert sol.nfe.tolist() == [2 * 3 * stages] * 5
    assert sol.ys.shape == (3, 5, 2)


def test_rk4_matches_torchdiffeq_rk4():
    y0, t = y0s(), torch.tensor([0.0, 1.0], dtype=torch.float64)
    ours = RK4(steps=4).solve(VectorField(linear), y0, t).final
    theirs = odeint(linear, y0, t, method="rk4", options={"step_size": 0.25})[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_dopri5_within_tolerance_of_matrix_exponential(tol):
    y0 = y0s()
    sol = Dopri5(rtol=tol, atol=tol).solve(VectorField(linear), y0, torch.tensor([0.0, 1.0]))
    assert (sol.status == Status.OK).all()
    assert (sol.final - exact(y0, 1.0)).abs().max() < 50 * tol


def _torchdiffeq_alone(func, y0, t, rtol, atol):
    counter = Counting(func)
    ys = odeint(counter, y0, t, rtol=rtol, atol=atol, method="dopri5")
    return ys, counter.calls


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-3), (torch.float64, 1e-6), (torch.float64, 1e-9),
                                       (torch.float32, 1e-3), (torch.float32, 1e-5)])
def test_dopri5_single_samples_match_torchdiffeq(dtype, tol):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).to(dtype)

    def func(t, y):
        return 2 * net(torch.cat([y, torch.ones_like(y[:, :1]) * t], 1))

    y0 = torch.randn(12, 2, dtype=dtype)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=dtype)
    with torch.no_grad():
        for i in range(len(y0)):
            sol = Dopri5(rtol=tol, atol=tol).solve(VectorField(func, TimeMode.BROADCAST), y0[i:i + 1], t)
            ys, nfe = _torchdiffeq_alone(func, y0[i:i + 1], t, tol, tol)
            assert sol.nfe.item() == nfe
            torch.testing.assert_close(sol.ys, ys, rtol=0, atol=0)     # bit for bit, not merely close


def test_dopri5_batch_matches_torchdiffeq_per_sample_float64():
    y0 = y0s(6)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = Dopri5(rtol=1e-6, atol=1e-6).solve(VectorField(linear), y0, t)
    for i in range(len(y0)):
        ys, nfe = _torchdiffeq_alone(linear, y0[i:i + 1], t, 1e-6, 1e-6)
        assert sol.nfe[i].item() == nfe
        torch.testing.assert_close(sol.final[i], ys[-1, 0], rtol=1e-12, atol=1e-12)


def test_batch_position_does_not_change_the_arithmetic():
    """With an f that computes every row as it would alone, a batched float32 solve is bit for bit
    the per-sample solve: dise's own step control has no batch round-off (see rounding.exact_pow, rounding._sum_plan)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def rowwise(t, y):
        times = t.reshape(-1).expand(len(y))
        return torch.cat([6 * net(torch.cat([y[i:i + 1], times[i].view(1, 1)], 1)) for i in range(len(y))])

    y0 = torch.randn(37, 2)
    t = torch.tensor([0.0, 1.0])
    field = VectorField(rowwise, TimeMode.BROADCAST)
    with torch.no_grad():
        batch = Dopri5().solve(field, y0, t)
        for i in range(len(y0)):
            alone = Dopri5().solve(field, y0[i:i + 1], t)
            assert alone.nfe.item() == batch.nfe[i].item()
            assert torch.equal(alone.final[0], batch.final[i])


def stiffish(t, y):
    """Easy for small states, much harder for large ones (cubic growth of the Jacobian)."""
    return -y ** 3 * 5 + torch.sin(3 * t) * y


def test_batch_independence_easy_next_to_stiff():
    easy = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    stiff = torch.tensor([[6.0, -7.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = VectorField(stiffish, TimeMode.BROADCAST)
    alone = Dopri5().solve(field, easy, t)
    both = Dopri5().solve(field, torch.cat([easy, stiff]), t)
    assert both.nfe[1] > 2 * both.nfe[0]                # the partner really is harder
    assert both.nfe[0] == alone.nfe[0]
    torch.testing.assert_close(both.final[0], alone.final[0], rtol=1e-13, atol=1e-13)
    # torchdiffeq's batched dopri5 shares one step size, so the easy sample pays for its partner:
    counter = Counting(stiffish)
    odeint(counter, torch.cat([easy, stiff]), t, rtol=1e-3, atol=1e-3)
    assert counter.calls > alone.nfe[0]


def test_finished_samples_leave_the_active_set():
    easy = torch.tensor([[0.1, -0.2]], dtype=torch.float64).repeat(7, 1)
    stiff = torch.tensor([[6.0, -7.0]], dtype=torch.float64)
    counter = Counting(stiffish)
    sol = Dopri5().solve(VectorField(counter, TimeMode.BROADCAST), torch.cat([easy, stiff]), torch.tensor([0.0, 1.0]))
    assert counter.rows == int(sol.nfe.sum())           # no evaluations spent on finished rows
    assert counter.rows < len(sol.nfe) * int(sol.nfe.max())


def test_statuses_non_finite_and_max_steps():
    def poisoned(t, y):          # NaN for rows whose first coordinate is near 1
        return torch.where(y[:, :1] > 0.9, y * float("nan"), -0.5 * y)

    def blowup(t, y):            # dy/dt = y^2 from y0 = 10 explodes at t = 0.1
        return y * y

    y0 = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
    sol = Dopri5().solve(VectorField(poisoned), y0, torch.tensor([0.0, 1.0]))
    assert sol.status.tolist() == [Status.NON_FINITE, Status.OK]
    assert torch.isnan(sol.final[0]).all() and torch.isfinite(sol.final[1]).all()
    sol = Dopri5().solve(VectorField(blowup), torch.tensor([[10.0], [0.1]], dtype=torch.float64), torch.tensor([0.0, 1.0]))
    assert sol.status[0] in (Status.UNDERFLOW, Status.NON_FINITE, Status.MAX_STEPS)
    assert sol.status[1] == Status.OK and torch.isnan(sol.final[0]).all()
    capped = Dopri5(rtol=1e-9, atol=1e-9, max_steps=3).solve(VectorField(linear), y0s(2), torch.tensor([0.0, 1.0]))
    assert capped.status.tolist() == [Status.MAX_STEPS] * 2
    assert capped.nfe.tolist() == [2 + 6 * 3] * 2


def test_reversed_time_matches_torchdiffeq():
    y0 = y0s(3)
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sol = Dopri5(rtol=1e-8, atol=1e-8).solve(VectorField(linear), y0, t)
    torch.testing.assert_close(sol.final, exact(y0, -1.0), rtol=1e-6, atol=1e-6)
    assert Euler(steps=1).solve(VectorField(linear), y0, t).final.allclose(y0 - linear(0, y0))


def test_error_estimates_have_gradients():
    w = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def func(t, y):
        return -w * y ** 3

    sol = Dopri5().solve(VectorField(func), y0s(4), torch.tensor([0.0, 1.0]), record_errors=True)
    steps = sol.step_errors
    assert len(steps.error) == int(sol.n_steps.sum())                  # one estimate per accepted step
    assert torch.bincount(steps.sample, minlength=4).tolist() == sol.n_steps.tolist()
    assert (steps.error <= 1).all() and (steps.dt > 0).all()          # accepted steps are within tolerance
    r_err = steps.per_sample(4)
    assert r_err.shape == (4,) and (r_err > 0).all()
    assert (steps.per_sample(4, weight_by_dt=True) <= r_err + 1e-12).all()   # |dt| <= 1 on [0, 1]
    r_err.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad) and w.grad != 0
    assert Dopri5().solve(VectorField(func), y0s(4), torch.tensor([0.0, 1.0])).step_errors is None


@pytest.mark.parametrize("mode", list(TimeMode))
def test_time_modes_agree(mode):
    torch.manual_seed(0)
    func_net = torch.nn.Linear(3, 2).double()

    def func(t, y):
        if mode in (TimeMode.VECTOR, TimeMode.ROWS):   # written for a scalar or a [N] time, as flow-matching fields are
            return func_net(torch.cat([y, t.reshape(-1, 1).expand(len(y), 1)], 1))
        return func_net(torch.cat([y, torch.ones_like(y[:, :1]) * t], 1))

    y0 = y0s(5)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    expected = Dopri5().solve(VectorField(func, TimeMode.LOOP), y0, t)
    if mode is TimeMode.AUTONOMOUS:
        return       # wrong for this f by construction; detection must not pick it
    got = Dopri5().solve(VectorField(func, mode), y0, t)
    torch.testing.assert_close(got.ys, expected.ys, rtol=1e-12, atol=1e-12)
    assert got.nfe.tolist() == expected.nfe.tolist()


def test_detect_time_mode():
    y = y0s(4)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert VectorField.detect(linear, y, t).mode is TimeMode.AUTONOMOUS
    assert VectorField.detect(lambda t, h: h * t, y, t).mode is TimeMode.BROADCAST

    def scalar_only(t, h):       # uses t as a Python number: only one call per time works
        return h * float(t)

    assert VectorField.detect(scalar_only, y, t).mode is TimeMode.LOOP


@pytest.mark.parametrize("time_shape,mode", [((-1, 1), TimeMode.BROADCAST), ((-1,), TimeMode.VECTOR)])
def test_a_field_that_takes_only_a_time_per_row(time_shape, mode):
    """The rectified-flow tutorial's MLP concatenates t as a column ([N, 1]); others index a per-row [N]:
    a 0-dim time fails in the user's code, so every call gets its time per row, and a solve equals the
    same solve of the field written for a scalar time, bit for bit."""
    def per_row(t, h):
        assert t.shape == (len(h),) + (1,) * (len(time_shape) - 1), t.shape     # a 0-dim time fails here
        t = t.reshape(-1, 1)
        return h * torch.cos(t) + t

    def scalar_form(t, h):
        return h * torch.cos(t) + t
    y, grid = y0s(4), torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = VectorField.detect(per_row, y, grid)
    assert field.mode is mode and not field.scalar_time
    got = Dopri5().solve(field, y, grid)
    want = Dopri5().solve(VectorField.detect(scalar_form, y, grid), y, grid)
    assert torch.equal(got.ys, want.ys) and torch.equal(got.nfe, want.nfe)
    with pytest.raises(InputError, match=r"fails at t = 0 with a time for the batch, \[N, 1\] or \[N\]"):
        VectorField.detect(lambda t, h: torch.cat([h, t.reshape(1, 1, 1)], 1), y, grid)


@pytest.mark.parametrize("integrator", [Euler(steps=2), Midpoint(steps=1), RK4(steps=1), Dopri5()])
def test_given_first_stage_is_used_not_recomputed(integrator):
    """Every candidate starts with f(t0, h0); the routed model computes it once and passes it on."""
    y0, t = y0s(), torch.tensor([0.0, 0.5, 1.0])
    plain = integrator.solve(VectorField(linear), y0, t)
    counter = Counting(linear)
    shared = integrator.solve(VectorField(counter), y0, t, f0=linear(torch.tensor(0.0), y0))
    assert counter.rows == int(plain.nfe.sum()) - len(y0)             # one evaluation per sample saved
    assert shared.nfe.tolist() == plain.nfe.tolist()                   # and still counted
    assert torch.equal(shared.ys, plain.ys)


def test_kinetic_energy_along_the_solve():
    """For dy/dt = -y from y0 = 1: the integral over [0, 1] of f^2 = e^(-2t) is (1 - e^-2) / 2."""
    y0 = torch.ones(3, 1, dtype=torch.float64)
    sol = Dopri5(rtol=1e-8, atol=1e-8).solve(VectorField(lambda t, y: -y), y0, torch.tensor([0.0, 1.0]),
                                             record_errors=True)
    expected = (1 - torch.exp(torch.tensor(-2.0, dtype=torch.float64))) / 2
    # exact up to the last step, which is counted for the part inside [0, 1] at its mean f^2
    torch.testing.assert_close(sol.step_errors.kinetic_per_sample(3), expected.expand(3), rtol=2e-3, atol=0)


def test_first_step_option_matches_torchdiffeq():
    y0, t = y0s(3), torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = Dopri5(rtol=1e-6, atol=1e-6, first_step=0.05).solve(VectorField(linear), y0, t)
    for i in range(3):
        counter = Counting(linear)
        ys = odeint(counter, y0[i:i + 1], t, rtol=1e-6, atol=1e-6, options={"first_step": 0.05})
        assert sol.nfe[i].item() == counter.calls
        torch.testing.assert_close(sol.final[i], ys[-1, 0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-7)])
def test_tuple_state_matches_torchdiffeq_per_sample(dtype, tol):
    """A CNF's (z, log p) with the exact trace by autograd inside f, solved backwards in time: each
    sample takes torchdiffeq's NFE (its mixed norm over the tuple) and its result, solved alone."""
    import families
    from dise_cli.states import StateLayout
    from torchdiffeq import odeint
    cnf = families.build_cnf().to(dtype)
    z = families.make_circles(6).to(dtype)
    logp = torch.zeros(6, 1, dtype=dtype)
    layout = StateLayout.of((z, logp))
    t = torch.tensor([10.0, 0.0], dtype=dtype)
    with torch.no_grad():
        sol = Dopri5(rtol=tol, atol=tol).solve(VectorField(cnf, TimeMode.LOOP, layout), layout.pack((z, logp)),
                                               t.double())
    for i in range(6):
        calls = [0]

        def counted(tt, state):
            calls[0] += 1
            return cnf(tt, state)

        ref = odeint(counted, (z[i:i + 1], logp[i:i + 1]), t, rtol=tol, atol=tol)
        got = layout.unpack_trajectory(sol.ys[:, i:i + 1])
        assert sol.nfe[i].item() == calls[0]
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_size_grid_matches_torchdiffeq():
    """euler / midpoint / heun / rk4 with torchdiffeq's step_size option: its grid, its NFE and outputs
    linearly interpolated between grid points, as torchdiffeq computes them."""
    from torchdiffeq import odeint
    from dise_cli.integrators import Heun2, Heun3, Midpoint
    torch.manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64) * 0.5

    def f(t, y):
        return y @ a.T + torch.sin(t)

    y0 = torch.randn(5, 3, dtype=torch.float64)
    for method, cls in (("euler", Euler), ("midpoint", Midpoint), ("heun2", Heun2), ("heun3", Heun3), ("rk4", RK4)):
        for t in (torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64)):
            sol = cls(step_size=0.07).solve(VectorField(f), y0, t)
            torch.testing.assert_close(sol.ys, odeint(f, y0, t, method=method, options={"step_size": 0.07}),
                                       rtol=1e-13, atol=1e-13)
            assert sol.nfe.tolist() == [15 * cls.tableau.stages] * 5     # ceil(1 / 0.07) steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tolerances_per_tuple_component_match_torchdiffeq(dtype):
    """FFJORD's ``atol=[1e-5, 1e-5] + [1e20]``: one tolerance per component of a tuple state (here one
    that leaves a third component out of step control). torchdiffeq makes each a tensor of the default
    dtype and widens them to float64; each sample alone takes its NFE and result, bit for bit."""
    import families
    from dise_cli.integrators.tolerances import PerElement, per_sample_tolerance
    from dise_cli.states import StateLayout
    from torchdiffeq import odeint
    cnf = families.build_cnf().to(dtype)

    def f(t, state):
        z, logp, reg = state
        dz, dlogp = cnf(t, (z, logp))
        return dz, dlogp, 50 * torch.sin(30 * z).pow(2).sum(1, keepdim=True)   # fast, but never controls the step
    z = families.make_circles(5).to(dtype)
    state = (z, torch.zeros(5, 1, dtype=dtype), torch.zeros(5, 1, dtype=dtype))
    rtol, atol = [1e-5, 1e-5, 1e20], [1e-5, 1e-5, 1e20]
    sample_rtol = per_sample_tolerance(rtol, state)
    assert isinstance(sample_rtol, PerElement) and len(sample_rtol.values) == 4
    assert sample_rtol.values[0] == float(torch.tensor(1e-5))             # float32's 1e-5, as torchdiffeq has it
    layout = StateLayout.of(state)
    t = torch.tensor([10.0, 0.0], dtype=dtype)
    solver = parse_candidates(Dopri5(rtol=sample_rtol, atol=per_sample_tolerance(atol, state)).spec)[0]  # via its text
    with torch.no_grad():
        sol = solver.solve(VectorField(f, TimeMode.LOOP, layout), layout.pack(state), t.double())
    for i in range(5):
        calls = [0]

        def counted(tt, s):
            calls[0] += 1
            return f(tt, s)

        ref = odeint(counted, tuple(c[i:i + 1] for c in state), t, rtol=rtol, atol=atol)
        assert sol.nfe[i].item() == calls[0]
        for a, b in zip(layout.unpack_trajectory(sol.ys[:, i:i + 1]), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_tolerance_per_element_of_a_tensor_state_matches_torchdiffeq(dtype):
    """``atol=torch.tensor([1e-7, 1e-2])`` against a state ``[N, 2]`` (a tight position, a loose
    velocity): torchdiffeq broadcasts it over the batch and, being a tensor with dimensions, it makes
    the error ratio of a float32 state float64. Each sample alone: torchdiffeq's NFE and result."""
    from dise_cli.integrators.tolerances import PerElement, per_sample_tolerance
    from torchdiffeq import odeint
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dtype)

    def f(t, y):
        return 3 * net(y)
    y0 = torch.randn(4, 2, dtype=dtype)
    atol = torch.tensor([1e-7, 1e-2], dtype=dtype)
    sample_atol = per_sample_tolerance(atol, y0)
    assert sample_atol == PerElement((float(atol[0]), float(atol[1])))
    assert per_sample_tolerance(torch.tensor([[1e-3], [1e-4], [1e-3], [1e-3]]), y0) is None   # differs per sample
    t = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    with torch.no_grad():
        for i in range(4):
            calls = [0]

            def counted(tt, yy):
                calls[0] += 1
                return f(tt, yy)
            ref = odeint(counted, y0[i:i + 1], t, rtol=1e-4, atol=atol)
            alone = Dopri5(rtol=1e-4, atol=sample_atol).solve(VectorField(f, TimeMode.BROADCAST), y0[i:i + 1], t)
            assert alone.nfe.item() == calls[0]
            torch.testing.assert_close(alone.ys, ref, rtol=0, atol=0)


def test_tolerance_and_step_size_specs_round_trip_exactly():
    """A spec's text gives back the very numbers: a step of 1/3 (``%g`` would write 0.333333, whose grid
    has a fourth, tiny step), float32's 1e-5 and per-element tolerances."""
    from dise_cli.integrators.tolerances import PerElement
    for integrator in (RK4(step_size=1 / 3), RK4(step_size=float(torch.tensor(0.1))),
                       Dopri5(rtol=float(torch.tensor(1e-5)), atol=1e-7, first_step=1 / 7),
                       Dopri5(rtol=PerElement((1e-5, 1e-5, 1e20)), atol=PerElement((2e-6,) * 5))):
        again = parse_candidates(integrator.spec)[0]
        assert again.spec == integrator.spec
        assert vars(again) == vars(integrator)
    assert Dopri5(rtol=PerElement((1e-5, 1e-5, 1e20)), atol=1e-3).spec == "dopri5:rtol=1e-05x2/1e+20,atol=0.001"
    assert Dopri5(atol=PerElement((1e-5,))).spec.endswith("atol=1e-05x1")
    assert RK4(step_size=float(torch.tensor(0.1))).spec == "rk4:step_size=0.1f"
    for bad in ("dopri5:atol=1e-5x0", "dopri5:atol=1e-5/-1", "dopri5:atol=1e-5xx2", "dopri5:atol="):
        with pytest.raises(UsageError, match="atol"):
            parse_candidates(bad)


def test_a_grid_of_ones_own_matches_torchdiffeqs_grid_constructor():
    """``grid=``: a fixed-step method from each time of a schedule to the next (a loop's own, Flux's
    shifted timesteps), as torchdiffeq steps on a ``grid_constructor``'s grid: the same outputs at
    ``t`` (interpolated between steps), forwards and backwards, and the same NFE; the spec round-trips."""
    from dise_cli.integrators import Heun2, Heun3
    torch.manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64) * 0.5

    def f(t, y):
        return y @ a.T + torch.sin(3 * t)

    y0 = torch.randn(5, 3, dtype=torch.float64)
    steps = (0.0, 0.05, 0.2, 0.45, 0.5, 0.8, 1.0)
    for method, cls in (("euler", Euler), ("midpoint", Midpoint), ("heun2", Heun2), ("heun3", Heun3), ("rk4", RK4)):
        for grid, t in ((steps, [0.0, 0.3, 1.0]), (steps[::-1], [1.0, 0.5, 0.0])):
            t = torch.tensor(t, dtype=torch.float64)
            ours = cls(grid=grid)
            sol = ours.solve(VectorField(f), y0, t)
            theirs = odeint(f, y0, t, method=method,
                            options={"grid_constructor": lambda *_, g=grid: torch.tensor(g, dtype=torch.float64)})
            torch.testing.assert_close(sol.ys, theirs, rtol=1e-13, atol=1e-13)
            assert sol.nfe.tolist() == [6 * cls.tableau.stages] * 5
            assert vars(parse_candidates(ours.spec)[0]) == vars(ours)
    with pytest.raises(ValueError, match="runs from 0 to 1"):
        Euler(grid=steps).solve(VectorField(f), y0, torch.tensor([0.0, 2.0], dtype=torch.float64))
    for bad in ("euler:grid=0/0.5/0.2/1", "euler:grid=1", "euler:grid=0/nan", "euler:steps=2,grid=0/1"):
        with pytest.raises(UsageError, match="grid"):
            parse_candidates(bad)
