"""Fixed-step explicit Runge-Kutta methods: every sample takes ``steps`` steps per grid interval, or
steps of ``step_size`` on torchdiffeq's grid, or steps between the times of ``grid`` (a loop's own
schedule, such as Flux's shifted timesteps); outputs between those steps' ends are linearly
interpolated, as torchdiffeq does."""
from __future__ import annotations

import math
from typing import ClassVar

import torch

from dise_cli.integrators.base import Integrator, Solution, Status
from dise_cli.integrators.tableaus import EULER, HEUN2, HEUN3, MIDPOINT, RK4_38, RK4_CLASSIC, ButcherTableau
from dise_cli.integrators.tolerances import number, number_text
from dise_cli.integrators.vector_field import VectorField


class FixedGridRK(Integrator):
    """An explicit RK method on a uniform sub-grid of each interval (``steps``), on torchdiffeq's
    ``step_size`` grid, or from each time of ``grid`` to the next (from the solve's first time to its
    last). NFE = steps taken x stages."""

    tableau: ClassVar[ButcherTableau]

    def __init__(self, steps: int | None = None, step_size: float | None = None,
                 grid: "tuple[float, ...] | None" = None):
        if sum(option is not None for option in (steps, step_size, grid)) > 1:
            raise ValueError("steps, step_size and grid exclude each other; give one")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.step_size = None if step_size is None else float(step_size)
        self.grid = None if grid is None else step_times(grid)
        self.steps = None if step_size is not None or grid is not None else int(steps or 1)

    @property
    def spec(self) -> str:
        if self.step_size is not None:
            return f"{self.name}:step_size={number_text(self.step_size)}"
        if self.grid is not None:
            return f"{self.name}:grid={'/'.join(number_text(v) for v in self.grid)}"
        return f"{self.name}:steps={self.steps}"

    def _solve(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor, record_errors: bool,
               f0: torch.Tensor | None) -> Solution:
        if t.ndim == 2:
            return self._solve_rows(field, h0, t, f0)
        if self.step_size is not None or self.grid is not None:
            return self._solve_on_grid(field, h0, t, f0)
        tab = self.tableau
        ys = [h0]
        h = h0
        for i in range(len(t) - 1):
            ta, tb = float(t[i]), float(t[i + 1])
            dt = (tb - ta) / self.steps
            for s in range(self.steps):
                t0 = ta + s * dt
                h = self._step(field, h, t0, dt, tab, f0 if i == 0 and s == 0 else None)
            ys.append(h)
        return self._solution(torch.stack(ys), (len(t) - 1) * self.steps)

    def _solve_rows(self, field: VectorField, h0: torch.Tensor, grid: torch.Tensor,
                    f0: torch.Tensor | None) -> Solution:
        """Every sample on its own grid ``[N, T]``: ``steps`` steps per interval of its grid, f called with
        a time per row."""
        if self.step_size is not None or self.grid is not None:
            raise ValueError(f"{'step_size builds' if self.grid is None else 'grid is'} one grid for the whole "
                             f"batch; with a grid per sample use steps")
        ys, h = [h0], h0
        for i in range(grid.shape[1] - 1):
            dt = (grid[:, i + 1] - grid[:, i]) / self.steps
            for s in range(self.steps):
                h = self._step_rows(field, h, grid[:, i] + s * dt, dt, f0 if i == 0 and s == 0 else None)
            ys.append(h)
        return self._solution(torch.stack(ys), (grid.shape[1] - 1) * self.steps)

    def _step_rows(self, field: VectorField, h: torch.Tensor, t0: torch.Tensor, dt: torch.Tensor,
                   k1: torch.Tensor | None) -> torch.Tensor:
        """One step with a time and a step size per row (``[N]`` float64)."""
        tab = self.tableau
        rows = (-1, *([1] * (h.ndim - 1)))
        ks: list[torch.Tensor] = [] if k1 is None else [k1]
        for a_row, c_i in list(zip(tab.a, tab.c))[len(ks):]:
            hi = h
            for a_ij, k_j in zip(a_row, ks):
                if a_ij != 0.0:
                    hi = hi + (dt * a_ij).to(h.dtype).view(rows) * k_j
            ks.append(field.at_times((t0 + c_i * dt).to(h.dtype), hi))
        out = h
        for b_i, k_i in zip(tab.b, ks):
            if b_i != 0.0:
                out = out + (dt * b_i).to(h.dtype).view(rows) * k_i
        return out

    def _solve_on_grid(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor,
                       f0: torch.Tensor | None) -> Solution:
        """torchdiffeq's fixed-grid solve with ``step_size`` (or on ``grid``): steps on its grid,
        outputs at ``t`` by linear interpolation between the grid points around them."""
        grid = step_size_grid(t, self.step_size, h0.dtype).tolist() if self.grid is None else \
            self._own_grid(t, field.sign)
        times = t.tolist()
        ys, j, h = [h0], 1, h0
        for i, (ta, tb) in enumerate(zip(grid[:-1], grid[1:])):
            h1 = self._step(field, h, ta, tb - ta, self.tableau, f0 if i == 0 else None)
            while j < len(times) and tb >= times[j]:
                tj = times[j]
                ys.append(h if tj == ta else h1 if tj == tb else h + ((tj - ta) / (tb - ta)) * (h1 - h))
                j += 1
            h = h1
        return self._solution(torch.stack(ys), len(grid) - 1)

    def _solution(self, ys: torch.Tensor, n_steps: int) -> Solution:
        n, device = ys.shape[1], ys.device
        finite = torch.isfinite(ys.reshape(len(ys), n, -1)).all(dim=2).all(dim=0)
        status = torch.where(finite, Status.OK, Status.NON_FINITE).to(torch.uint8)
        nfe = torch.full((n,), n_steps * self.tableau.stages, dtype=torch.int64, device=device)
        return Solution(ys=ys, nfe=nfe, status=status,
                        n_steps=torch.full((n,), n_steps, dtype=torch.int64, device=device))

    @staticmethod
    def _step(field: VectorField, h: torch.Tensor, t0: float, dt: float, tab: ButcherTableau,
              k1: torch.Tensor | None = None) -> torch.Tensor:
        ks: list[torch.Tensor] = [] if k1 is None else [k1]     # c_1 = 0: k1 = f(t0, h)
        for a_row, c_i in list(zip(tab.a, tab.c))[len(ks):]:
            hi = h
            for a_ij, k_j in zip(a_row, ks):
                if a_ij != 0.0:
                    hi = hi + (dt * a_ij) * k_j
            ks.append(field(torch.tensor(t0 + c_i * dt, dtype=h.dtype, device=h.device), hi))
        out = h
        for b_i, k_i in zip(tab.b, ks):
            if b_i != 0.0:
                out = out + (dt * b_i) * k_i
        return out


    def _own_grid(self, t: torch.Tensor, sign: float) -> list[float]:
        """``grid`` in the solver's time (a backward solve runs in -t), checked to span ``t``."""
        grid = [sign * v for v in self.grid]
        if grid[0] != float(t[0]) or grid[-1] != float(t[-1]):
            raise ValueError(f"{self.spec}: the grid runs from {self.grid[0]:g} to {self.grid[-1]:g}, the solve "
                             f"from {sign * float(t[0]):g} to {sign * float(t[-1]):g}")
        return grid


def step_times(grid) -> tuple[float, ...]:
    """A fixed-step grid as floats, in its order: at least two finite times, strictly monotonic."""
    times = tuple(float(v) for v in grid)
    moves = [b - a for a, b in zip(times, times[1:])]
    if len(times) < 2 or not all(math.isfinite(v) for v in times) or \
            not (all(m > 0 for m in moves) or all(m < 0 for m in moves)):
        raise ValueError(f"grid must be two or more finite times, strictly increasing or decreasing, got "
                         f"{'/'.join(f'{v:g}' for v in times)}")
    return times


def grid_times(text: str) -> tuple[float, ...]:
    """The grid a spec wrote (``1/0.9/0.5/0``)."""
    return step_times(number(part) for part in text.split("/"))


def step_size_grid(t: torch.Tensor, step_size: float, dtype: torch.dtype) -> torch.Tensor:
    """torchdiffeq's grid for ``step_size``: ``arange(ceil((t1 - t0) / h + 1)) * h + t0`` with the
    last point set to ``t1``, computed in ``dtype`` (the time's dtype there) -> float64."""
    tt = t.to(dtype)
    start, end = tt[0], tt[-1]
    n_points = int(torch.ceil((end - start) / step_size + 1).item())
    grid = torch.arange(0, n_points, dtype=dtype, device=t.device) * step_size + start
    grid[-1] = end
    return grid.to(torch.float64)


class Euler(FixedGridRK):
    """Forward Euler: one evaluation per step, first order."""

    name = "euler"
    tableau = EULER


class Midpoint(FixedGridRK):
    """The explicit midpoint method: two evaluations per step, second order."""

    name = "midpoint"
    tableau = MIDPOINT


class Heun2(FixedGridRK):
    """Heun's second-order method (the explicit trapezoid rule, torchdiffeq's ``heun2``)."""

    name = "heun2"
    tableau = HEUN2


class Heun3(FixedGridRK):
    """Heun's third-order method (torchdiffeq's ``heun3``)."""

    name = "heun3"
    tableau = HEUN3


class RK4(FixedGridRK):
    """Fourth-order Runge-Kutta, Kutta's 3/8 rule (torchdiffeq's ``rk4``): four evaluations per step."""

    name = "rk4"
    tableau = RK4_38


class RK4Classic(FixedGridRK):
    """The classic fourth-order Runge-Kutta method (torchdyn's ``rk4``): four evaluations per step."""

    name = "rk4_classic"
    tableau = RK4_CLASSIC
