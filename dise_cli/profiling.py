"""Run every candidate integrator on every sample: NFE, status, correctness or Γ, and timings."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from dise_cli.clock import sync
from dise_cli.datasets import Dataset
from dise_cli.fidelity import confirm_loop
from dise_cli.integrators import Dopri5, Integrator, Solution
from dise_cli.integrators.tolerances import smallest
from dise_cli.judging import Judge, targets_batch_major
from dise_cli.odemodel import OdeModel, Problem, Solve
from dise_cli.profiles import Profile
from dise_cli.provenance import device_name, made_with
from dise_cli.seeding import seeded

REFERENCE_TOL = 1e-7     # the reference solve's tolerance, or 100 times tighter than the baseline's


@dataclass
class Timing:
    """Wall-clock seconds spent in each candidate's solves, its NFE total, and CUDA peak memory."""

    seconds: list[float]
    nfe_total: list[int]
    peak_memory_bytes: list[int | None]
    n_samples: int
    steps_total: list[int] = field(default_factory=list)

    def record(self, device: torch.device) -> dict:
        """The profile header's ``timing``: seconds per NFE and per accepted step, per candidate, and
        the totals they come from (what merging shards adds up)."""
        return {"seconds_per_nfe": [s / max(n, 1) for s, n in zip(self.seconds, self.nfe_total)],
                "seconds_per_step": [s / max(n, 1) for s, n in zip(self.seconds, self.steps_total)],
                "seconds": list(self.seconds), "steps": list(self.steps_total), "device": device_name(device)}

    @classmethod
    def total(cls, parts: list["Timing"]) -> "Timing":
        """The timing of shards run apart, as one run: seconds, NFE and steps added, the peak the largest."""
        def column(name: str) -> list:
            return [sum(values) for values in zip(*(getattr(p, name) for p in parts))]
        peaks = [None if all(v is None for v in vs) else max(v or 0 for v in vs)
                 for vs in zip(*(p.peak_memory_bytes for p in parts))]
        return cls(seconds=column("seconds"), nfe_total=column("nfe_total"), peak_memory_bytes=peaks,
                   n_samples=sum(p.n_samples for p in parts), steps_total=column("steps_total"))


@dataclass
class ProfileRun:
    profile: Profile
    timing: Timing
    world_size: int = 1          # how many processes made it (torchrun ranks)


class Reference:
    """What data without labels is judged against: dopri5 at rtol = atol = 1e-7, or 100 times tighter
    than an adaptive baseline, in float64 where f is a module (solved by a float64 copy of it), else in
    the state's own dtype."""

    def __init__(self, baseline: Integrator):
        tol = REFERENCE_TOL
        if isinstance(baseline, Dopri5):
            tol = min(tol, smallest(baseline.rtol) / 100, smallest(baseline.atol) / 100)
        self.integrator = Dopri5(rtol=max(tol, 1e-12), atol=max(tol, 1e-12))
        self._copies: dict[int, tuple[nn.Module, nn.Module]] = {}    # id(f) -> (f, its float64 copy)
        self.dtypes: set[str] = set()          # the dtypes it solved in (float64, or a closure f's own)

    @property
    def spec(self) -> str:
        return self.integrator.spec

    def solve(self, problem: Problem) -> torch.Tensor:
        func = problem.field.func
        exported = isinstance(func, torch.fx.GraphModule)     # a bundle's program keeps the dtype it was traced in
        if isinstance(func, nn.Module) and not exported and problem.h0.dtype != torch.float64:
            if id(func) not in self._copies:
                self._copies[id(func)] = (func, copy.deepcopy(func).double())
            copy64 = self._copies[id(func)][1]
            if copy64 is not None:
                try:
                    field64 = problem.field.with_func(copy64)
                    ys = self._solve(field64, problem.h0.double(), problem.t).to(problem.h0.dtype)
                    self.dtypes.add("float64")
                    return ys
                except Exception:  # noqa: BLE001 - f does not run in float64 (an exported program): its own dtype
                    self._copies[id(func)] = (func, None)
        self.dtypes.add(str(problem.h0.dtype).replace("torch.", ""))
        return self._solve(problem.field, problem.h0, problem.t)

    def _solve(self, field, h0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """torchdiffeq's steps pass the grid's end and interpolate back; rows that f fails beyond it (a
        denoiser's velocity below σ = 0) are solved again with steps that stop at the end (``step_t``)."""
        ys = self.integrator.solve(field, h0, t).ys
        failed = ~torch.isfinite(ys.reshape(ys.shape[0], ys.shape[1], -1)).all(2).all(0)
        if t.ndim == 1 and bool(failed.any()) and bool(torch.isfinite(h0.reshape(len(h0), -1)).all(1)[failed].any()):
            stopping = Dopri5(rtol=self.integrator.rtol, atol=self.integrator.atol, step_t=(float(t[-1]),))
            ys = torch.where(failed.reshape(1, -1, *[1] * (ys.ndim - 2)), stopping.solve(field, h0, t).ys, ys)
        return ys

    @property
    def dtype(self) -> str:
        """The dtype it solved in, ``"mixed"`` for several."""
        return next(iter(self.dtypes)) if len(self.dtypes) == 1 else "mixed" if self.dtypes else ""


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
    scores: list = field(default_factory=list)  # class scores (classification, for the AUC)
    outputs: list = field(default_factory=list) # flattened outputs (regression, for a task figure)
    steps: int = 0                              # accepted steps, all samples
    seconds: float = 0.0
    peak_bytes: int | None = None

    def stacked(self, name: str) -> torch.Tensor:
        return torch.cat(getattr(self, name))


def batch_starts(n_rows: int, batch_size: int, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Where the batches of ``n_rows`` rows start, the batches of shard ``(k, n)`` only: batch b goes to
    shard b mod n, so every shard holds whole batches of a single run (the same samples batched
    together, the same seeds: the same results)."""
    k, n = shard
    return [start for b, start in enumerate(range(0, n_rows, batch_size)) if b % n == k]


def profile_candidates(model: OdeModel, data: Dataset, candidates: list[Integrator], judge: Judge, *,
                       rows: torch.Tensor, batch_size: int, device: torch.device, baseline: int,
                       time_major: bool | None = None, reference: Reference | None = None,
                       progress: Callable[[int], None] | None = None, keep_outputs: bool = False,
                       seed: int = 0, shard: tuple[int, int] = (0, 1)) -> ProfileRun:
    """Profile ``candidates`` on ``rows`` of ``data`` (of shard ``(k, n)``'s batches only; see
    ``batch_starts``). Without labels, each output is judged against a float64 ``reference`` solve.
    Random numbers (an encoder that samples) come from ``seed`` and the batch's place.
    ``progress(n)`` is called after each batch with its size."""
    base = baseline
    targets = None
    if data.y is not None:
        targets = targets_batch_major(data.y, len(data), len(model.t_span), time_major, data.name)
    reference = reference or Reference(candidates[base])
    judged: list[torch.Tensor] = []
    cols = [_Column() for _ in candidates]
    starts = batch_starts(len(rows), batch_size, shard)
    # A shard with no batch (more shards than batches) still gives a profile, with no rows: one row is
    # run for the arrays' shapes and then left out.
    empty = not starts
    _warm_up(model, data.x[rows[:2]].to(device), candidates, grids_of(data, rows[:2], device))
    with torch.no_grad():
        for start in starts or [0]:
            idx = rows[start:start + (1 if empty else batch_size)]
            x = data.x[idx].to(device)
            problem = encode_batch(model, x, grids_of(data, idx, device), seed, start)
            target = batch_targets(model, x, problem, idx, targets, judge, reference, seed=start)
            judged.append(target.cpu())
            outputs = [_profile_one(model, x, problem, cand, col, judge, target, device, seed=start)
                       for cand, col in zip(candidates, cols)]
            if _runs_own_loop(model, candidates[base]) and not empty:
                confirm_loop(model, x, outputs[base], start, f"a batch of {len(idx)} data rows (row {int(idx[0])} first)")
            if judge.task == "regression":
                for out, col in zip(outputs, cols):
                    col.aux.append(judge.gamma(out, outputs[base]).cpu())
                    if keep_outputs:
                        col.outputs.append(out.reshape(len(out), -1).float().cpu())
            if progress is not None and not empty:
                progress(len(idx))

    def matrix(name: str) -> torch.Tensor:
        return torch.stack([c.stacked(name) for c in cols], dim=1)

    index = torch.cat([rows[s:s + batch_size] for s in starts]) if starts else rows[:1]
    profile = Profile(candidates=[c.spec for c in candidates], baseline=base, task=judge.task,
                      t_span=[] if data.per_sample_grid else [float(v) for v in model.t_span], index=index.clone(),
                      nfe=matrix("nfe").to(torch.int32), status=matrix("status").to(torch.uint8),
                      made_with=made_with(device))
    if judge.task == "classification":
        profile.correct, profile.pred = matrix("score").bool(), matrix("aux").to(torch.int64)
        profile.scores, profile.target = matrix("scores"), torch.cat(judged).to(torch.int64)
    else:
        profile.gamma, profile.deviation = matrix("score"), matrix("aux")
        if keep_outputs:
            profile.outputs = matrix("outputs")
            profile.reference = torch.cat([t.reshape(len(t), -1) for t in judged]).float()
    if empty:
        profile, index = profile.subset(torch.arange(0)), index[:0]
        for col in cols:
            col.seconds, col.steps = 0.0, 0
    timing = Timing(seconds=[c.seconds for c in cols], nfe_total=[int(v) for v in profile.nfe.sum(0)],
                    peak_memory_bytes=[c.peak_bytes for c in cols], n_samples=len(index),
                    steps_total=[c.steps for c in cols])
    profile.timing = timing.record(device)
    return ProfileRun(profile=profile, timing=timing)


def _runs_own_loop(model: OdeModel, baseline: Integrator) -> bool:
    """The baseline is a hand-written loop dise identified (``dise_cli.loops``), run as the loop."""
    own = model.own
    return own is not None and own.is_loop and own.method == baseline.spec


def _profile_one(model: OdeModel, x: torch.Tensor, problem: Problem | None, cand: Integrator, col: _Column,
                 judge: Judge, target: torch.Tensor, device: torch.device, seed: int) -> torch.Tensor:
    """Solve one batch with one candidate, timing the solve alone; append its results to ``col``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    solved: list[Solution] = []

    def solve(p: Problem) -> torch.Tensor:
        sync(device)
        began = time.perf_counter()
        solved.append(cand.solve(p.field, p.h0, p.t))
        sync(device)
        col.seconds += time.perf_counter() - began
        return solved[0].ys

    out = run_model(model, x, problem, solve, seed)
    if device.type == "cuda":
        col.peak_bytes = max(col.peak_bytes or 0, torch.cuda.max_memory_allocated(device))
    col.nfe.append(solved[0].nfe.cpu() + model.calls_after_solve)
    col.status.append(solved[0].status.cpu())
    col.steps += int(solved[0].n_steps.sum())
    if judge.task == "classification":
        col.score.append(judge.correct(out, target).cpu())
        col.aux.append(judge.predict(out).cpu())
        col.scores.append(judge.scores(out).cpu())
    else:
        col.score.append(judge.gamma(out, target).cpu())
    return out


def encode_batch(model: OdeModel, x: torch.Tensor, t: torch.Tensor | None, seed: int, start: int) -> Problem | None:
    """The solve's problem where the decoder runs alone (None otherwise); an encoder that samples draws
    from ``seed`` and the batch's first row, so a batch encodes the same in a shard as in one run."""
    if not model.splittable:
        return None
    with seeded(seed * (1 << 32) + start, x.device):
        return model.encode(x, t)


def batch_targets(model: OdeModel, x: torch.Tensor, problem: Problem | None, idx: torch.Tensor,
                  targets: torch.Tensor | None, judge: Judge, reference: Reference, seed: int = 0) -> torch.Tensor:
    """What a batch is judged against: its labels, or the reference solve's answer."""
    if targets is not None:
        return targets[idx].to(x.device)
    return judge.predict(run_model(model, x, problem, reference.solve, seed))


def run_model(model: OdeModel, x: torch.Tensor, problem: Problem | None, solve: Solve, seed: int = 0) -> torch.Tensor:
    """Model outputs (batch first) with ``solve`` answering its solve; reuses ``problem`` where the decoder
    runs alone. A forward that runs whole draws its random numbers from ``seed``, so that every
    candidate sees the same encoder (a sampled latent, a trace estimator's noise)."""
    if problem is not None and model.splittable:
        return model.solve_and_decode(x, problem, solve)
    with seeded(seed, x.device):
        return model.forward_with(x, solve)


def grids_of(data: Dataset, rows: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The time grids of ``rows`` where the data give each sample its own."""
    grids = data.grids(rows)
    return None if grids is None else grids.to(device)


def _warm_up(model: OdeModel, x: torch.Tensor, candidates: list[Integrator], t: torch.Tensor | None) -> None:
    """One untimed solve per candidate, so first-call costs (allocator, vmap setup) are not timed."""
    with torch.no_grad():
        problem = model.encode(x, t) if model.splittable else None
        for cand in candidates:
            run_model(model, x, problem, lambda p, cand=cand: cand.solve(p.field, p.h0, p.t).ys)
