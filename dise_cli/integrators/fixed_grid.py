"""Fixed-step explicit Runge-Kutta methods: every sample takes ``steps`` steps per grid interval."""
from __future__ import annotations

from typing import ClassVar

import torch

from dise_cli.integrators.base import Integrator, Solution, Status
from dise_cli.integrators.tableaus import EULER, MIDPOINT, RK4_38, ButcherTableau
from dise_cli.integrators.vector_field import VectorField


class FixedGridRK(Integrator):
    """An explicit RK method on a uniform sub-grid of each interval. NFE = intervals x steps x stages."""

    tableau: ClassVar[ButcherTableau]

    def __init__(self, steps: int = 1):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    @property
    def spec(self) -> str:
        return f"{self.name}:steps={self.steps}"

    def _solve(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor, record_errors: bool,
               f0: torch.Tensor | None) -> Solution:
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
        ys_t = torch.stack(ys)
        n = len(h0)
        finite = torch.isfinite(ys_t.reshape(len(t), n, -1)).all(dim=2).all(dim=0)
        status = torch.where(finite, Status.OK, Status.NON_FINITE).to(torch.uint8)
        nfe = torch.full((n,), (len(t) - 1) * self.steps * tab.stages, dtype=torch.int64, device=h0.device)
        n_steps = torch.full((n,), (len(t) - 1) * self.steps, dtype=torch.int64, device=h0.device)
        return Solution(ys=ys_t, nfe=nfe, status=status, n_steps=n_steps)

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


class Euler(FixedGridRK):
    """Forward Euler: one evaluation per step, first order."""

    name = "euler"
    tableau = EULER


class Midpoint(FixedGridRK):
    """The explicit midpoint method: two evaluations per step, second order."""

    name = "midpoint"
    tableau = MIDPOINT


class RK4(FixedGridRK):
    """Fourth-order Runge-Kutta, Kutta's 3/8 rule (torchdiffeq's ``rk4``): four evaluations per step."""

    name = "rk4"
    tableau = RK4_38
