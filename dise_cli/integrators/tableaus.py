"""Butcher tableaus, as data. Each explicit method is (a, b, c): stage weights, solution weights, nodes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method: k_i = f(t + c_i dt, h + dt * sum_j a_ij k_j), h' = h + dt * sum_i b_i k_i."""

    a: tuple[tuple[float, ...], ...]   # row i has i entries (strictly lower triangular)
    b: tuple[float, ...]
    c: tuple[float, ...]

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = ButcherTableau(a=((),), b=(1.0,), c=(0.0,))

MIDPOINT = ButcherTableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))

HEUN2 = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))

HEUN3 = ButcherTableau(a=((), (1 / 3,), (0.0, 2 / 3)), b=(0.25, 0.0, 0.75), c=(0.0, 1 / 3, 2 / 3))

RK4_CLASSIC = ButcherTableau(
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
)

# Kutta's 3/8 rule: the fourth-order method torchdiffeq runs for method="rk4" (rk4_alt_step_func),
# so dise's rk4 and torchdiffeq's agree to round-off.
RK4_38 = ButcherTableau(
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    c=(0.0, 1 / 3, 2 / 3, 1.0),
)

# Dormand-Prince 5(4), with Shampine's dense-output midpoint weights, exactly as torchdiffeq 0.2.5
# writes them (dopri5.py), so that per-sample step control reproduces its decisions.
DOPRI5_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI5_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DOPRI5_C_ERROR = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
DOPRI5_C_MID = (
    6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2,
)
DOPRI5_ORDER = 5
