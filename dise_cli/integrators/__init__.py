"""dise's own ODE integrators: fixed-grid Euler, midpoint, Heun, RK4, and per-sample adaptive embedded
Runge-Kutta pairs (dopri5, bosh3, adaptive_heun, fehlberg2, dopri8, tsit5)."""
from dise_cli.integrators.base import Integrator, Solution, Status, StepErrors
from dise_cli.integrators.adaptive import AdaptiveHeun, Bosh3, Dopri5, Dopri8, Fehlberg2, Tsit5
from dise_cli.integrators.embedded import EmbeddedRK
from dise_cli.integrators.fixed_grid import RK4, Euler, FixedGridRK, Heun2, Heun3, Midpoint, RK4Classic
from dise_cli.integrators.specs import (CHEAP_CANDIDATES, DEFAULT_CANDIDATES, METHODS, format_candidates,
                                         parse_candidates)
from dise_cli.integrators.vector_field import TimeMode, VectorField

__all__ = ["Integrator", "Solution", "Status", "StepErrors", "EmbeddedRK", "Dopri5", "Bosh3", "AdaptiveHeun",
           "Fehlberg2", "Dopri8", "Tsit5", "RK4", "RK4Classic", "Euler", "Midpoint",
           "Heun2", "Heun3", "FixedGridRK", "CHEAP_CANDIDATES", "DEFAULT_CANDIDATES", "METHODS", "format_candidates", "parse_candidates", "TimeMode",
           "VectorField"]
