"""The model's own solver as a dise candidate: the method, tolerances and options its call asked for
(torchdiffeq's or torchdyn's), as the dise integrator that runs the same solve, with a plain note of
what it does not copy (options such as a custom ``norm``). Methods dise cannot emulate (implicit,
Adams, ``scipy_solver``) give no integrator: the user names candidates instead."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dise_cli.integrators.adaptive import DEFAULT_MAX_STEPS, AdaptiveHeun, Bosh3, Dopri5, Dopri8, Fehlberg2, Tsit5
from dise_cli.integrators.base import Integrator
from dise_cli.integrators.fixed_grid import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from dise_cli.integrators.marks import KINDS
from dise_cli.integrators.specs import parse_candidates
from dise_cli.integrators.tolerances import PerElement, Tolerance

TORCHDIFFEQ_FIXED = {"euler": Euler, "midpoint": Midpoint, "heun2": Heun2, "heun3": Heun3, "rk4": RK4}
TORCHDIFFEQ_ADAPTIVE = {cls.name: cls for cls in (Dopri5, Bosh3, AdaptiveHeun, Fehlberg2, Dopri8)}
TORCHDYN_NAMES = {"Euler": "euler", "Midpoint": "midpoint", "RungeKutta4": "rk4", "rk-4": "rk4",
                  "DormandPrince45": "dopri5", "DormandPrince5": "dopri5", "Tsitouras45": "tsit5",
                  "Tsitouras5": "tsit5", "AsynchronousLeapfrog": "alf", "ImplicitEuler": "ieuler",
                  "implicit_euler": "ieuler"}
TORCHDYN_FIXED = {"euler": Euler, "midpoint": Midpoint, "rk4": RK4Classic}
# torchdiffeq options dise honours; any other changes the solve in a way dise does not copy. (Its
# fixed-grid solvers ignore the adaptive ones, step_t and jump_t among them, with a warning; so does dise.)
HONOURED = {"first_step", "max_num_steps", "dtype", "step_size", "step_t", "jump_t"}


@dataclass(frozen=True)
class Emulation:
    """``integrator``: dise's candidate for the model's solver (None: dise cannot emulate it);
    ``exact``: the same method and step control; ``note``: what differs, for people."""

    method: str                    # the library's method name, e.g. "dopri5", "tsit5"
    integrator: Integrator | None
    exact: bool
    note: str = ""


def emulate(library: str, method: str, rtol: Any, atol: Any, options: dict, decreasing: bool = False) -> Emulation:
    """dise's integrator for a solve of ``library`` with these settings (library ``loop``: a hand-written
    loop that ``dise_cli.loops`` identified; ``method`` is the spec of the fixed-step method it is).
    ``decreasing``: the solve's time runs backwards (it matters to torchdiffeq's ``step_t`` and ``jump_t``
    given as lists, which it does not negate with the time)."""
    if library == "loop":
        integrator = parse_candidates(method)[0]
        return Emulation(method, integrator, True)
    if library == "torchdyn":
        return _torchdyn(TORCHDYN_NAMES.get(method, method), rtol, atol)
    return _torchdiffeq(method, rtol, atol, options, decreasing)


def _scalar(name: str, value: Any) -> tuple[float, str]:
    """A tolerance as one float; per-element tolerances become their smallest value, with a note."""
    if isinstance(value, (int, float)):
        return float(value), ""
    tensor = torch.as_tensor(value.values if isinstance(value, PerElement) else value, dtype=torch.float64)
    smallest = float(tensor.min())
    if tensor.numel() == 1 or bool((tensor == smallest).all()):
        return smallest, ""               # one value for every element: exactly the scalar tolerance
    return smallest, f"per-element {name} given; dise uses its smallest value, {smallest:g}"


def _tolerance(name: str, value: Any) -> tuple[Tolerance, str]:
    """torchdiffeq's tolerance for one sample: a number, or one per element of the sample's state
    (``PerElement``, run as torchdiffeq runs it); anything else (one that differs from sample to
    sample) as its smallest value, with a note."""
    if isinstance(value, PerElement):
        return value, ""
    return _scalar(name, value)


def _marks(options: dict, decreasing: bool) -> dict[str, Any]:
    """torchdiffeq's ``step_t`` and ``jump_t`` as times in the model's time, where given. A backward
    solve runs in time -t and torchdiffeq negates a tensor option with it, but not a list: a list's
    times are then times of -t, so in the model's time they are the negated values."""
    found = {}
    for kind in KINDS:
        value = options.get(kind)
        if value is None:
            continue
        if decreasing and not isinstance(value, torch.Tensor):
            value = -torch.as_tensor(value, dtype=torch.float64)
        found[kind] = value
    return found


def _torchdiffeq(method: str, rtol: Any, atol: Any, options: dict, decreasing: bool = False) -> Emulation:
    options = dict(options)
    ignored = sorted(k for k in options if k not in HONOURED)
    if options.get("dtype") not in (None, torch.float64):
        # torchdiffeq's step-size arithmetic in that dtype (with a float32 state, float32): dise's is float64
        ignored = sorted([*ignored, f"dtype={str(options['dtype']).replace('torch.', '')}"])
    if method in TORCHDIFFEQ_FIXED:
        if "grid_constructor" in options:
            return Emulation(method, None, False, "it builds its own time grid (grid_constructor)")
        step_size = options.get("step_size")
        integrator = TORCHDIFFEQ_FIXED[method](step_size=float(step_size)) if step_size is not None \
            else TORCHDIFFEQ_FIXED[method](steps=1)
        notes = [f"option(s) {', '.join(ignored)} not copied"] if ignored else []
        return Emulation(method, integrator, not notes, "; ".join(notes))
    if method in TORCHDIFFEQ_ADAPTIVE:
        r, note_r = _tolerance("rtol", rtol)
        a, note_a = _tolerance("atol", atol)
        max_steps = int(options.get("max_num_steps", DEFAULT_MAX_STEPS))
        first = options.get("first_step")
        settings = dict(rtol=r, atol=a, max_steps=min(max_steps, 2**31 - 1),
                        first_step=None if first is None else float(first))
        notes = [n for n in (note_r, note_a) if n]
        try:
            integrator = TORCHDIFFEQ_ADAPTIVE[method](**settings, **_marks(options, decreasing))
        except ValueError as exc:      # times dise does not take (e.g. repeated): the solve without them
            integrator = TORCHDIFFEQ_ADAPTIVE[method](**settings)
            notes.append(f"{exc}: step_t and jump_t not copied")
        if ignored:
            notes.append(f"option(s) {', '.join(ignored)} not copied")
        return Emulation(method, integrator, not notes, "; ".join(notes))
    return Emulation(method, None, False, f"dise cannot emulate torchdiffeq's '{method}'")


def _torchdyn(method: str, rtol: Any, atol: Any) -> Emulation:
    if method in TORCHDYN_FIXED:
        return Emulation(method, TORCHDYN_FIXED[method](steps=1), True)
    r, note_r = _scalar("rtol", rtol)
    a, note_a = _scalar("atol", atol)
    note = "; ".join(n for n in (note_r, note_a) if n)
    if method == "dopri5":      # torchdyn's step control: its first step, steps cut to land on output times
        return Emulation(method, Dopri5(rtol=r, atol=a, control="torchdyn"), not note, note)
    if method == "tsit5":
        return Emulation(method, Tsit5(rtol=r, atol=a), not note, note)
    return Emulation(method, None, False, f"dise cannot emulate torchdyn's '{method}'")
