"""The solver of a model whose solve dise cannot see (a hand-written loop read by its attributes),
found by watching the loop call f.

A fixed-step loop (rectified flow's Euler ``sample_ode``, an ODE block's own RK4) calls f the same
number of times at the same times whatever the input. Where it does, dise runs the fixed-step methods
that make that many calls over its grid, and the one that reproduces the model to round-off is the
model's own solver: the baseline, run exactly. Where none does, the closest stands as the model's
solver, and the fidelity check, which holds a fixed grid to round-off, refuses the reading: dise has
misread something (the initial state, the grid) that no tolerance may hide. A loop whose times
follow the input (an adaptive one) is left to the fidelity check's tolerance for dise's guess.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dise_cli.fidelity import FLOOR, max_abs, output_scale
from dise_cli.integrators import Integrator
from dise_cli.integrators.fixed_grid import RK4, Euler, Heun2, Heun3, Midpoint, RK4Classic
from dise_cli.integrators.vector_field import TIME_NAMES
from dise_cli.odemodel import OdeModel
from dise_cli.seeding import seeded

LOOP_METHODS = (Euler, Midpoint, Heun2, Heun3, RK4, RK4Classic)


@dataclass(frozen=True)
class LoopFinding:
    """A loop that calls f at the same times whatever the input: ``integrator`` is the fixed-step method
    with that many calls over dise's grid that comes closest to the model; ``exact`` where it
    reproduces it to round-off (then it is the model's own solver; otherwise the fidelity check, held
    to round-off, refuses the reading)."""

    times: tuple[float, ...]       # f's calls in one forward
    integrator: Integrator | None  # None: no fixed-step method makes that many calls over the grid
    difference: float
    exact: bool

    @property
    def note(self) -> str:
        calls = f"the model's loop calls f {len(self.times)} times, at t = {_times_text(self.times)} whatever the input"
        if self.exact:
            how = "exactly" if self.difference == 0 else f"to {self.difference:.2g}"
            return (f"dise saw no solver call: {calls}, and {self.integrator.spec} over the grid reproduces it "
                    f"({how}): that is its own solver, the baseline")
        if self.integrator is None:
            return f"{calls}: no fixed-step method makes that many calls over dise's grid"
        return f"{calls}: closest over dise's grid is {self.integrator.spec}, off by {self.difference:.3g}"


def find_loop_solver(ode: OdeModel, x: torch.Tensor, seed: int = 0) -> LoopFinding | None:
    """What the model's own loop is, from its calls of f; None where they follow the input (an adaptive
    loop) or cannot be watched."""
    func = getattr(ode.block, ode.func_attr, None)
    if not isinstance(func, nn.Module) or isinstance(func, torch.jit.ScriptModule) or len(x) < 2:
        return None
    half = len(x) // 2
    first, second = (_call_times(ode, func, rows, seed) for rows in (x[:half], x[half:]))
    if first is None or first != second or not first:
        return None                                   # times that follow the input: an adaptive loop
    intervals = len(ode.t_span) - 1
    with torch.no_grad(), seeded(seed, x.device):
        model_out = ode.run(x)
    tried = []
    for cls in LOOP_METHODS:
        stages = cls.tableau.stages
        if len(first) % (stages * intervals):
            continue
        integrator = cls(steps=len(first) // (stages * intervals))
        with torch.no_grad(), seeded(seed, x.device):
            out = ode.forward_with(x, lambda p: integrator.solve(p.field, p.h0, p.t).ys)
        tried.append((max_abs(out, model_out), integrator))
    if not tried:
        return LoopFinding(tuple(first), None, float("inf"), False)
    difference, best = min(tried, key=lambda pair: pair[0])
    # the very same steps: the fidelity check's round-off allowance for a fixed grid
    return LoopFinding(tuple(first), best, difference, difference <= FLOOR * output_scale(model_out))


def _call_times(ode: OdeModel, func: nn.Module, x: torch.Tensor, seed: int) -> list[float] | None:
    """The time of each call of ``func`` in one forward of the model on ``x`` (None where a call's
    time differs between rows, or where the time cannot be read)."""
    times: list[float | None] = []
    time_index = 0 if ode.field.order == "t,x" else 1

    def record(_module, args, kwargs):
        value = args[time_index] if len(args) > time_index else next(
            (kwargs[name] for name in TIME_NAMES if name in kwargs), None)
        times.append(_one_time(value))
    handle = func.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad(), seeded(seed, x.device):
            ode.run(x)
    finally:
        handle.remove()
    return None if any(t is None for t in times) else times


def _one_time(value) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() and value.is_floating_point():
        flat = value.detach().reshape(-1)
        if bool((flat == flat[0]).all()):
            return float(flat[0])
    return None


def _times_text(times: list[float]) -> str:
    if len(times) <= 4:
        return ", ".join(f"{t:.4g}" for t in times)
    return f"{times[0]:.4g}, {times[1]:.4g}, ..., {times[-1]:.4g}"
