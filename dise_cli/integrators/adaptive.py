"""The adaptive methods: each a tableau and a controller (``embedded.EmbeddedRK`` does the rest).

torchdiffeq's ``dopri5``, ``bosh3``, ``adaptive_heun``, ``fehlberg2`` and ``dopri8`` with its step
control; torchdyn's ``tsit5`` with its own (a ``control`` option switches either way, so torchdyn's
``dopri5`` is ``dopri5:control=torchdyn``).
"""
from __future__ import annotations

from dise_cli.integrators.embedded import DEFAULT_MAX_STEPS, EmbeddedRK
from dise_cli.integrators.tableaus import ADAPTIVE_HEUN, BOSH3, DOPRI5, DOPRI8, FEHLBERG2, TSIT5

__all__ = ["DEFAULT_MAX_STEPS", "Dopri5", "Bosh3", "AdaptiveHeun", "Fehlberg2", "Dopri8", "Tsit5", "ADAPTIVE"]


class Dopri5(EmbeddedRK):
    """Dormand-Prince 5(4): 6 evaluations per step, FSAL."""

    name = "dopri5"
    tableau = DOPRI5


class Bosh3(EmbeddedRK):
    """Bogacki-Shampine 3(2): 3 evaluations per step, FSAL."""

    name = "bosh3"
    tableau = BOSH3


class AdaptiveHeun(EmbeddedRK):
    """Heun-Euler 2(1): 1 evaluation per step (the next step starts from the Euler predictor's slope,
    as in torchdiffeq)."""

    name = "adaptive_heun"
    tableau = ADAPTIVE_HEUN


class Fehlberg2(EmbeddedRK):
    """Runge-Kutta-Fehlberg 2(1): 2 evaluations per step."""

    name = "fehlberg2"
    tableau = FEHLBERG2


class Dopri8(EmbeddedRK):
    """Dormand-Prince 8(7): 13 evaluations per step, FSAL."""

    name = "dopri8"
    tableau = DOPRI8


class Tsit5(EmbeddedRK):
    """Tsitouras 5(4) as torchdyn runs it: 6 evaluations per step, FSAL, torchdyn's step control."""

    name = "tsit5"
    tableau = TSIT5
    default_control = "torchdyn"


ADAPTIVE = (Dopri5, Bosh3, AdaptiveHeun, Fehlberg2, Dopri8, Tsit5)
