"""dise's own ODE integrators: fixed-grid Euler, midpoint, Heun, RK4, and per-sample adaptive DOPRI5."""
from dise_cli.integrators.base import Integrator, Solution, Status, StepErrors
from dise_cli.integrators.dopri5 import Dopri5
from dise_cli.integrators.fixed_grid import RK4, Euler, FixedGridRK, Heun2, Heun3, Midpoint, RK4Classic
from dise_cli.integrators.specs import (CHEAP_CANDIDATES, DEFAULT_CANDIDATES, METHODS, format_candidates,
                                         parse_candidates)
from dise_cli.integrators.vector_field import TimeMode, VectorField

__all__ = ["Integrator", "Solution", "Status", "StepErrors", "Dopri5", "RK4", "RK4Classic", "Euler", "Midpoint",
           "Heun2", "Heun3", "FixedGridRK", "CHEAP_CANDIDATES", "DEFAULT_CANDIDATES", "METHODS", "format_candidates", "parse_candidates", "TimeMode",
           "VectorField"]
