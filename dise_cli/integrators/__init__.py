"""dise's own ODE integrators: fixed-grid Euler, midpoint, RK4, and per-sample adaptive DOPRI5."""
from dise_cli.integrators.base import Integrator, Solution, Status, StepErrors
from dise_cli.integrators.dopri5 import Dopri5
from dise_cli.integrators.fixed_grid import RK4, Euler, FixedGridRK, Midpoint
from dise_cli.integrators.specs import DEFAULT_CANDIDATES, METHODS, format_candidates, parse_candidates
from dise_cli.integrators.vector_field import TimeMode, VectorField

__all__ = ["Integrator", "Solution", "Status", "StepErrors", "Dopri5", "RK4", "Euler", "Midpoint", "FixedGridRK",
           "DEFAULT_CANDIDATES", "METHODS", "format_candidates", "parse_candidates", "TimeMode",
           "VectorField"]
