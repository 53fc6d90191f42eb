"""Candidate specs: ``"euler:steps=1,rk4:steps=1,dopri5:rtol=1e-3,atol=1e-3"`` -> integrators.

A token ``method[:opt=value]`` starts a candidate; a following ``opt=value`` token adds an option
to it. ``;`` may also separate candidates. Unknown methods and options are errors that list the
valid ones (torchdiffeq only warns about a misspelt option, then runs with defaults). Times an
adaptive step stops at (torchdiffeq's ``step_t`` and ``jump_t``) have ``/`` between them:
``dopri5:rtol=1e-5,atol=1e-5,step_t=0.25/0.75,jump_t=0.5``; so have a fixed-step method's own step
times (a loop's schedule), in their order: ``euler:grid=1/0.9/0.6/0``.
"""
from __future__ import annotations

from typing import Callable

from dise_cli.errors import UsageError
from dise_cli.integrators.base import Integrator
from dise_cli.integrators.adaptive import ADAPTIVE
from dise_cli.integrators.control import CONTROLS
from dise_cli.integrators.fixed_grid import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic, grid_times
from dise_cli.integrators.marks import marks
from dise_cli.integrators.tolerances import number, tolerance

# The candidates beside the model's own solver (its baseline), and the list used where no solve of
# the model is seen (a bare vector field) and nothing else is said.
CHEAP_CANDIDATES = "euler:steps=1,rk4:steps=1"
DEFAULT_CANDIDATES = f"{CHEAP_CANDIDATES},dopri5:rtol=1e-3,atol=1e-3"

FIXED = (Euler, Midpoint, Heun2, Heun3, RK4, RK4Classic)
METHODS: dict[str, type[Integrator]] = {cls.name: cls for cls in (*FIXED, *ADAPTIVE)}


def _control(text: str) -> str:
    if text not in CONTROLS:
        raise ValueError(f"'{text}' (valid: {', '.join(CONTROLS)})")
    return text


FIXED_GRID_OPTIONS: dict[str, Callable[[str], object]] = {"steps": int, "step_size": number, "grid": grid_times}
ADAPTIVE_OPTIONS: dict[str, Callable[[str], object]] = {"rtol": tolerance, "atol": tolerance, "max_steps": int,
                                                        "first_step": number, "control": _control,
                                                        "step_t": marks, "jump_t": marks}
TOLERANCE_HINT = " (a number, or one per element of a sample's state, e.g. 1e-5x2/1e20: 1e-5 twice, then 1e20)"
MARKS_HINT = " (distinct finite times with / between them, e.g. 0.25/0.5)"
GRID_HINT = " (two or more times in order, / between them, e.g. 1/0.8/0.5/0)"
# Option name -> parser, per method.
OPTIONS: dict[str, dict[str, Callable[[str], object]]] = {
    **{cls.name: FIXED_GRID_OPTIONS for cls in FIXED},
    **{cls.name: ADAPTIVE_OPTIONS for cls in ADAPTIVE},
}


def parse_candidates(text: str, flag: str = "--candidates") -> list[Integrator]:
    """Parse a candidate list. Raises ``UsageError`` naming ``flag`` on any mistake."""
    groups: list[tuple[str, dict[str, str]]] = []
    for token in (tok.strip() for tok in text.replace(";", ",").split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token:
            if not groups:
                raise UsageError(f"{flag}: option '{token}' comes before any method; "
                                 f"write e.g. '{DEFAULT_CANDIDATES}'")
            key, _, value = token.partition("=")
            groups[-1][1][key.strip()] = value.strip()
            continue
        method, _, option = token.partition(":")
        groups.append((method.strip().lower(), {}))
        if option:
            key, eq, value = option.partition("=")
            if not eq:
                raise UsageError(f"{flag}: '{token}' needs option=value after ':'")
            groups[-1][1][key.strip()] = value.strip()
    if not groups:
        raise UsageError(f"{flag}: no candidates given; write e.g. '{DEFAULT_CANDIDATES}'")
    return [_build(method, options, flag) for method, options in groups]


def _build(method: str, options: dict[str, str], flag: str) -> Integrator:
    if method not in METHODS:
        raise UsageError(f"{flag}: unknown method '{method}'; valid methods: {', '.join(METHODS)}")
    valid = OPTIONS[method]
    kwargs: dict[str, object] = {}
    for key, value in options.items():
        if key not in valid:
            raise UsageError(f"{flag}: unknown option '{key}' for {method}; valid options: {', '.join(valid)}")
        try:
            kwargs[key] = valid[key](value)
        except ValueError as exc:
            kind = {"control": "control", "step_t": "list of times", "jump_t": "list of times",
                    "grid": "grid"}.get(key, valid[key].__name__)
            hint = {"control": f" {exc}", "rtol": TOLERANCE_HINT, "atol": TOLERANCE_HINT, "step_t": MARKS_HINT,
                    "jump_t": MARKS_HINT, "grid": GRID_HINT}.get(key, "")
            raise UsageError(f"{flag}: {method} option {key}='{value}' is not a valid {kind}{hint}") from None
    try:
        return METHODS[method](**kwargs)
    except ValueError as exc:
        raise UsageError(f"{flag}: {method}: {exc}") from None


def format_candidates(integrators: list[Integrator]) -> str:
    """The canonical text of a candidate list (round-trips through ``parse_candidates``)."""
    return ",".join(i.spec for i in integrators)
