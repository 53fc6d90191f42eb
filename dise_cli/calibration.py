"""Calibration, beyond the paper: per-candidate offsets on the selector's predicted costs.

The paper tuned M and α by hand and names that as the method's main difficulty: a selector
trained on raw costs may send nearly everything to one integrator. Here the costs it predicts get
an offset per candidate (the baseline's fixed at 0), chosen on the validation split: the offsets
with the smallest mean NFE (the selector's own cost included) whose routed accuracy stays within
``max_drop`` percentage points of the baseline alone. Every point tried is kept, so the whole
accuracy-NFE trade-off can be reported.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from dise_cli.budgets import Budgets
from dise_cli.errors import UsageError

GRID_POINTS = 41          # offsets tried per candidate on a full grid
MAX_GRID = 20_000         # more combinations than this: random search instead
ALL_TO_BASELINE = 1e6     # an offset that no prediction overcomes


@dataclass(frozen=True)
class Point:
    offsets: tuple[float, ...]
    accuracy: float       # share of samples right (classification) or within β (regression)
    nfe: float            # mean cost (NFE, or time in baseline NFE) of the routed integrators plus the selector's
    share: tuple[float, ...]
    error: float | None = None       # regression: the routed mean Γ
    deviation: float | None = None   # regression: the routed mean distance from the baseline's outputs


def route(pred: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Chosen candidate per sample: argmin of predicted cost plus offset."""
    return (pred + offsets).argmin(1)


def evaluate_point(pred: torch.Tensor, right: torch.Tensor, nfe: torch.Tensor, offsets: torch.Tensor,
                   selector_nfe: float, gamma: torch.Tensor | None = None,
                   deviation: torch.Tensor | None = None) -> Point:
    choice = route(pred, offsets)
    rows = torch.arange(len(choice))
    k = pred.shape[1]
    share = torch.bincount(choice, minlength=k).double() / max(len(choice), 1)
    mean = lambda m: None if m is None else float(m[rows, choice].double().mean())  # noqa: E731
    return Point(offsets=tuple(float(v) for v in offsets), accuracy=float(right[rows, choice].double().mean()),
                 nfe=float(nfe[rows, choice].double().mean()) + selector_nfe,
                 share=tuple(float(v) for v in share), error=mean(gamma), deviation=mean(deviation))


def calibrate(pred: torch.Tensor, right: torch.Tensor, nfe: torch.Tensor, baseline: int, selector_nfe: float,
              max_drop_pp: float, seed: int = 0, gamma: torch.Tensor | None = None,
              deviation: torch.Tensor | None = None, budgets: Budgets | None = None) -> tuple[Point, list[Point]]:
    """The chosen point and the trade-off curve (Pareto front: best accuracy at each mean NFE).

    ``pred``, ``right``, ``nfe``: ``[N, K]`` on the validation split; ``gamma`` and ``deviation``
    (regression) let ``budgets`` decide what is feasible instead of ``max_drop_pp``.
    """
    pred, right, nfe = pred.double().cpu(), right.cpu(), nfe.double().cpu()
    gamma = None if gamma is None else gamma.double().cpu()
    deviation = None if deviation is None else deviation.double().cpu()
    k = pred.shape[1]
    base_acc = float(right[:, baseline].double().mean())
    points = [evaluate_point(pred, right, nfe, off, selector_nfe, gamma, deviation)
              for off in _candidate_offsets(pred, baseline, seed)]
    all_base = torch.full((k,), ALL_TO_BASELINE, dtype=torch.float64)
    all_base[baseline] = 0.0
    points.append(evaluate_point(pred, right, nfe, all_base, selector_nfe, gamma, deviation))
    if budgets is not None and budgets.given:
        if gamma is None or deviation is None:
            raise UsageError("--max-error-increase / --max-deviation: error budgets need a regression profile "
                             "(errors Γ and deviations); a classifier has --max-accuracy-drop")
        base = gamma[:, baseline]
        base_error = float(base[torch.isfinite(base)].mean()) if bool(torch.isfinite(base).any()) else float("inf")
        feasible = [p for p in points if budgets.within(p.error, p.deviation, base_error)]
        feasible = feasible or [points[-1]]          # the baseline alone keeps any budget
    else:
        feasible = [p for p in points if p.accuracy >= base_acc - max_drop_pp / 100 - 1e-12]
    chosen = min(feasible, key=lambda p: (p.nfe, -p.accuracy))
    return chosen, pareto(points)


def _candidate_offsets(pred: torch.Tensor, baseline: int, seed: int):
    k = pred.shape[1]
    free = [j for j in range(k) if j != baseline]
    spread = float(pred.max() - pred.min()) if pred.numel() else 1.0
    values = torch.linspace(-spread, spread, GRID_POINTS, dtype=torch.float64)
    yield torch.zeros(k, dtype=torch.float64)                       # the raw selector
    if GRID_POINTS ** len(free) <= MAX_GRID:
        for combo in itertools.product(values.tolist(), repeat=len(free)):
            off = torch.zeros(k, dtype=torch.float64)
            off[free] = torch.tensor(combo, dtype=torch.float64)
            yield off
        return
    gen = torch.Generator().manual_seed(seed)
    for _ in range(MAX_GRID):
        off = torch.zeros(k, dtype=torch.float64)
        off[free] = (torch.rand(len(free), generator=gen, dtype=torch.float64) * 2 - 1) * spread
        yield off


def pareto(points: list[Point]) -> list[Point]:
    """Points not beaten by another with lower (or equal) NFE and higher accuracy, by NFE."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.nfe, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy + 1e-12:
            front.append(p)
    return front
