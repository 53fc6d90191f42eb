"""Run every candidate integrator on every sample: NFE, status, correctness or Γ, and timings."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from dise_cli.datasets import Dataset
from dise_cli.integrators import Dopri5, Integrator, Solution, VectorField
from dise_cli.judging import Judge, targets_batch_major
from dise_cli.odeblock import OdeModel
from dise_cli.profiles import Profile

DEFAULT_REFERENCE = Dopri5(rtol=1e-7, atol=1e-7)


@dataclass
class Timing:
    """Wall-clock seconds spent in each candidate's solves, its NFE total, and CUDA peak memory."""

    seconds: list[float]
    nfe_total: list[int]
    peak_memory_bytes: list[int | None]
    n_samples: int


@dataclass
class ProfileRun:
    profile: Profile
    timing: Timing


def baseline_index(candidates: list[Integrator]) -> int:
    """The candidate others are compared with: the first dopri5, else the last candidate."""
    for k, cand in enumerate(candidates):
        if isinstance(cand, Dopri5):
            return k
    return len(candidates) - 1


def select_rows(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """All rows, or ``limit`` rows drawn with ``seed`` (sorted, so batches keep the data's order)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:limit].sort().values


@dataclass
class _Column:
    """One candidate's per-batch results, concatenated at the end."""

    nfe: list = field(default_factory=list)
    status: list = field(default_factory=list)
    score: list = field(default_factory=list)   # correct (classification) or Γ (regression)
    aux: list = field(default_factory=list)     # predicted class, or Γ against the baseline's output
    seconds: float = 0.0
    peak_bytes: int | None = None

    def stacked(self, name: str) -> torch.Tensor:
        return torch.cat(getattr(self, name))


def profile_candidates(model: OdeModel, data: Dataset, candidates: list[Integrator], judge: Judge, *,
                       rows: torch.Tensor, batch_size: int, device: torch.device,
                       time_major: bool | None = None, reference: Integrator = DEFAULT_REFERENCE,
                       progress: Callable[[int], None] | None = None) -> ProfileRun:
    """Profile ``candidates`` on ``rows`` of ``data``. Without labels, each output is judged against a
    float64 ``reference`` solve. ``progress(n)`` is called after each batch with its size."""
    base = baseline_index(candidates)
    targets = None
    if data.y is not None:
        targets = targets_batch_major(data.y, len(data), len(model.t_span), time_major, data.name)
    ref_field = _float64_field(model.field) if targets is None else None
    t_span = model.t_span.to(device)
    cols = [_Column() for _ in candidates]
    _warm_up(model, data.x[rows[:2]].to(device), candidates, t_span)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            x = data.x[idx].to(device)
            h0 = model.encode(x) if model.splittable else None
            target = batch_targets(model, x, h0, idx, targets, judge, ref_field, reference, t_span)
            outputs = [_profile_one(model, x, h0, cand, col, judge, target, t_span, device)
                       for cand, col in zip(candidates, cols)]
            if judge.task == "regression":
                for out, col in zip(outputs, cols):
                    col.aux.append(judge.gamma(out, outputs[base]).cpu())
            if progress is not None:
                progress(len(idx))

    def matrix(name: str) -> torch.Tensor:
        return torch.stack([c.stacked(name) for c in cols], dim=1)

    profile = Profile(candidates=[c.spec for c in candidates], baseline=base, task=judge.task,
                      t_span=[float(v) for v in model.t_span], index=rows.clone(),
                      nfe=matrix("nfe").to(torch.int32), status=matrix("status").to(torch.uint8))
    if judge.task == "classification":
        profile.correct, profile.pred = matrix("score").bool(), matrix("aux").to(torch.int64)
    else:
        profile.gamma, profile.deviation = matrix("score"), matrix("aux")
    timing = Timing(seconds=[c.seconds for c in cols], nfe_total=[int(v) for v in profile.nfe.sum(0)],
                    peak_memory_bytes=[c.peak_bytes for c in cols], n_samples=len(rows))
    return ProfileRun(profile=profile, timing=timing)


def _profile_one(model: OdeModel, x: torch.Tensor, h0: torch.Tensor | None, cand: Integrator, col: _Column,
                 judge: Judge, target: torch.Tensor, t_span: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Solve one batch with one candidate, timing the solve alone; append its results to ``col``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    solved: list[Solution] = []

    def solve(h: torch.Tensor) -> torch.Tensor:
        _sync(device)
        began = time.perf_counter()
        solved.append(cand.solve(model.field, h, t_span))
        _sync(device)
        col.seconds += time.perf_counter() - began
        return solved[0].ys

    out = _run(model, x, h0, solve)
    if device.type == "cuda":
        col.peak_bytes = max(col.peak_bytes or 0, torch.cuda.max_memory_allocated(device))
    col.nfe.append(solved[0].nfe.cpu())
    col.status.append(solved[0].status.cpu())
    if judge.task == "classification":
        col.score.append(judge.correct(out, target).cpu())
        col.aux.append(out.argmax(1).cpu())
    else:
        col.score.append(judge.gamma(out, target).cpu())
    return out


def batch_targets(model: OdeModel, x: torch.Tensor, h0: torch.Tensor | None, idx: torch.Tensor,
                  targets: torch.Tensor | None, judge: Judge, ref_field: VectorField | None,
                  reference: Integrator, t_span: torch.Tensor) -> torch.Tensor:
    """What a batch is judged against: its labels, or the float64 reference solve's answer."""
    if targets is not None:
        return targets[idx].to(x.device)
    return judge.predict(_run(model, x, h0, lambda h: _solve_float64(reference, ref_field, h, t_span)))


def reference_field(model: OdeModel, data: Dataset) -> VectorField | None:
    """A float64 copy of f for judging data without labels (None when there are labels)."""
    return _float64_field(model.field) if data.y is None else None


def _run(model: OdeModel, x: torch.Tensor, h0: torch.Tensor | None,
         solve: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Model outputs (batch first) with ``solve`` in place of the block; reuses h0 when splittable."""
    if h0 is not None:
        return model.decode(solve(h0))
    return model.forward_with(x, solve)


def _float64_field(field: VectorField) -> VectorField:
    return VectorField(copy.deepcopy(field.func).double(), field.mode)


def _solve_float64(reference: Integrator, field: VectorField, h0: torch.Tensor, t_span: torch.Tensor) -> torch.Tensor:
    return reference.solve(field, h0.double(), t_span).ys.to(h0.dtype)


def _warm_up(model: OdeModel, x: torch.Tensor, candidates: list[Integrator], t_span: torch.Tensor) -> None:
    """One untimed solve per candidate, so first-call costs (allocator, vmap setup) are not timed."""
    with torch.no_grad():
        for cand in candidates:
            _run(model, x, model.encode(x) if model.splittable else None,
                 lambda h, cand=cand: cand.solve(model.field, h, t_span).ys)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
