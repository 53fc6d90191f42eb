"""The integrator interface and the per-sample result every integrator returns."""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from dise_cli.integrators.vector_field import VectorField


class Status(enum.IntEnum):
    """Per-sample outcome of a solve. Numerical faults are statuses, never exceptions."""

    OK = 0
    MAX_STEPS = 1      # the adaptive solver hit max_steps before the end of the grid
    NON_FINITE = 2     # the state or the error estimate became NaN or Inf
    UNDERFLOW = 3      # the step size became too small to advance time


@dataclass
class StepErrors:
    """Per accepted DOPRI5 step, what the regularisers need, with gradients.

    ``error[m]`` is step m's local error estimate as the RMS of (error estimate / tolerance), the
    quantity the step-size controller uses; ``kinetic[m]`` is the step's share of the kinetic
    energy, dt * sum_j b_j mean(k_j^2) (DOPRI5's quadrature of the mean squared f over the step);
    ``sample[m]`` the sample it belongs to; ``dt[m]`` its size.
    """

    sample: torch.Tensor   # [M] int64
    error: torch.Tensor    # [M], the state's dtype, differentiable
    dt: torch.Tensor       # [M] float64
    kinetic: torch.Tensor | None = None   # [M], differentiable

    def per_sample(self, n: int, weight_by_dt: bool = False) -> torch.Tensor:
        """``[n]``: sum over each sample's steps of err (the paper's R_err per sample), or of
        err * |dt| (ERNODE's variant)."""
        values = self.error * self.dt.abs().to(self.error.dtype) if weight_by_dt else self.error
        return self._sum(n, values)

    def kinetic_per_sample(self, n: int) -> torch.Tensor:
        """``[n]``: the integral of the mean squared f along each sample's solve (Finlay et al.)."""
        return self._sum(n, self.kinetic)

    def _sum(self, n: int, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, self.sample, values)


@dataclass
class Solution:
    """What a solve returns, per sample.

    Attributes:
        ys: states at every time of the grid, time-major ``[T, N, *state]`` as ``odeint`` returns
            them; rows of failed samples are NaN.
        nfe: ``[N]`` int64, evaluations of f each sample took part in (rejected steps and the
            initial step selection included).
        status: ``[N]`` uint8 ``Status`` codes.
        n_steps: ``[N]`` int64, accepted steps.
        step_errors: every accepted step's local error estimate, with gradients; ``None``
            unless requested from an adaptive solver.
    """

    ys: torch.Tensor
    nfe: torch.Tensor
    status: torch.Tensor
    n_steps: torch.Tensor
    step_errors: StepErrors | None = None

    @property
    def final(self) -> torch.Tensor:
        """States at the last time of the grid, ``[N, *state]``."""
        return self.ys[-1]


class Integrator(ABC):
    """Solves dh/dt = f(t, h) for a batch of initial states on a time grid, per sample."""

    name: ClassVar[str]
    adaptive: ClassVar[bool] = False

    def solve(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor, *,
              record_errors: bool = False, f0: torch.Tensor | None = None) -> Solution:
        """Solve from ``h0`` ``[N, *state]`` over the grid ``t``: ``[T]`` for every sample, or ``[N, T]``,
        each sample its own (increasing or decreasing, all rows the same way).

        ``record_errors`` asks an adaptive solver for its per-step error estimates with gradients.
        ``f0``, if given, is f(t[0], h0) already computed (every explicit Runge-Kutta method starts
        with it): the solver uses it instead of calling f, and still counts it in the NFE.
        """
        t = t.to(device=h0.device, dtype=torch.float64)
        if t.ndim not in (1, 2) or t.shape[-1] < 2 or (t.ndim == 2 and len(t) != len(h0)):
            raise ValueError(f"the time grid must be [T] or [N, T] with T >= 2 for N = {len(h0)} states, got "
                             f"shape {tuple(t.shape)}")
        steps = t[..., 1:] - t[..., :-1]
        if bool((steps > 0).all()):
            return self._solve(field, h0, t, record_errors, f0)
        if bool((steps < 0).all()):
            # Integrate backwards as torchdiffeq does: s = -t, dh/ds = -f(-s, h).
            return self._solve(field.reversed(), h0, -t, record_errors, None if f0 is None else -f0)
        raise ValueError("the time grid must be strictly increasing or decreasing (every sample's the same way), "
                         f"got {t.tolist() if t.numel() <= 12 else tuple(t.shape)}")

    @abstractmethod
    def _solve(self, field: VectorField, h0: torch.Tensor, t: torch.Tensor,
               record_errors: bool, f0: torch.Tensor | None) -> Solution:
        """Solve on a strictly increasing float64 grid, ``[T]`` or per sample ``[N, T]``."""

    def loosened(self, factor: float = 10.0) -> "Integrator | None":
        """The same method at ``factor`` times its tolerances (adaptive methods; None for fixed grids,
        whose reproduction is exact up to round-off)."""
        return None

    @property
    @abstractmethod
    def spec(self) -> str:
        """The canonical candidate spec, e.g. ``rk4:steps=1``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"
