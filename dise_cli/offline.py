"""``dise run``: offline inference that groups samples by chosen integrator across the whole
dataset, so that each integrator runs in full batches (per-batch routing leaves DOPRI5 a handful
of samples per batch, and a launch-bound solve costs as much for five samples as for five hundred).
A model's random draws (a sampler's own noise, a sampled latent) are seeded batch by batch, so two
runs give the same outputs, and a random encoder draws what evaluate's batches of the same size draw."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dise_cli.config import positive_int
from dise_cli.datasets import Dataset
from dise_cli.files import atomic_path
from dise_cli.odemodel import Problem
from dise_cli.profiling import grids_of
from dise_cli.routing import RoutedModel
from dise_cli.seeding import seeded


@dataclass(frozen=True)
class RunSettings:
    """``dise run``'s settings; each default is written here only."""

    batch_size: int = 256

    def check(self) -> None:
        positive_int(self.batch_size, "--batch-size")


@dataclass
class OfflineResult:
    outputs: torch.Tensor       # [N, ...] batch first
    integrator: torch.Tensor    # [N]
    nfe: torch.Tensor           # [N]
    fallback: torch.Tensor      # [N] bool
    seconds: float
    candidates: list[str]       # what the integrator indices mean
    world_size: int = 1         # processes that made it (torchrun ranks; ``seconds`` is the slowest's)

    @classmethod
    def joined(cls, parts: list["OfflineResult"]) -> "OfflineResult":
        """Consecutive blocks of the inputs, run apart, as one result in input order."""
        return cls(outputs=torch.cat([p.outputs for p in parts]), integrator=torch.cat([p.integrator for p in parts]),
                   nfe=torch.cat([p.nfe for p in parts]), fallback=torch.cat([p.fallback for p in parts]),
                   seconds=max(p.seconds for p in parts), candidates=parts[0].candidates, world_size=len(parts))


@torch.no_grad()
def run_offline(routed: RoutedModel, data: Dataset, batch_size: int, device: torch.device,
                progress=None) -> OfflineResult:
    ode, n = routed.ode, len(data)
    began = time.perf_counter()
    rows = torch.arange(n)
    if not ode.splittable:       # the decoder cannot run alone: route per batch
        outs, stats = [], []
        for i in range(0, n, batch_size):
            with seeded(i, device):
                out, st = routed.run_packed(data.x[i:i + batch_size].to(device),
                                            grids_of(data, rows[i:i + batch_size], device), return_stats=True)
            outs.append(out.cpu())
            stats.append(st)
            if progress:
                progress(2 * len(out))
        return OfflineResult(torch.cat(outs), torch.cat([s.integrator for s in stats]).cpu(),
                             torch.cat([s.nfe for s in stats]).cpu(), torch.cat([s.fallback for s in stats]).cpu(),
                             time.perf_counter() - began, list(routed.selector.candidates))
    problems, k1, choice = [], [], []
    for i in range(0, n, batch_size):               # pass 1: encode and choose
        with seeded(i, device):         # a random encoder draws as evaluate's batches draw
            problem = ode.encode(data.x[i:i + batch_size].to(device), grids_of(data, rows[i:i + batch_size], device))
        first, chosen = routed.choose(problem)
        problems.append(problem)
        k1.append(first)
        choice.append(chosen)
        if progress:
            progress(len(problem.h0))
    merged = _merged(problems)
    if merged is None:                              # the grid changes between batches: solve batch by batch
        return _per_batch(routed, problems, k1, choice, began)
    k1_all, choice_all = torch.cat(k1), torch.cat(choice)
    outputs = None
    nfe = torch.zeros(n, dtype=torch.int64)
    fallback = torch.zeros(n, dtype=torch.bool)
    for k in torch.unique(choice_all).tolist():    # pass 2: each integrator on all of its samples
        rows = torch.nonzero(choice_all == k).flatten()
        for part in rows.split(batch_size):
            stats: list = []
            sub = Problem(field=merged.field, h0=merged.h0[part], t=merged.grid_of(part), call=merged.call)
            with seeded(n + int(part[0]), device):    # f or the decoder drawing: the same draws every run
                ys = routed.solve_chosen(sub, k1_all[part], choice_all[part], stats)
                out = ode.decode(sub, ys).cpu()
            if outputs is None:
                outputs = torch.empty(n, *out.shape[1:], dtype=out.dtype)
            outputs[part.cpu()] = out
            nfe[part.cpu()] = stats[0].nfe.cpu()
            fallback[part.cpu()] = stats[0].fallback.cpu()
            if progress:
                progress(len(part))
    return OfflineResult(outputs, choice_all.cpu(), nfe, fallback, time.perf_counter() - began,
                         list(routed.selector.candidates))


def _merged(problems: list[Problem]) -> Problem | None:
    """One problem holding every batch's initial states (and grids, where each sample has its own), when
    all batches share the grid or every sample has its own."""
    first = problems[0]
    if first.t.ndim == 2:
        return Problem(field=first.field, h0=torch.cat([p.h0 for p in problems]), t=torch.cat([p.t for p in problems]),
                       call=first.call)
    if any(p.t.ndim != 1 or not torch.equal(p.t, first.t) for p in problems[1:]):
        return None
    return Problem(field=first.field, h0=torch.cat([p.h0 for p in problems]), t=first.t, call=first.call)


def _per_batch(routed: RoutedModel, problems: list[Problem], k1: list, choice: list, began: float) -> OfflineResult:
    outs, nfe, fallback = [], [], []
    start = sum(len(p.h0) for p in problems)
    for problem, first, chosen in zip(problems, k1, choice):
        stats: list = []
        with seeded(start, device=problem.h0.device):
            ys = routed.solve_chosen(problem, first, chosen, stats)
            outs.append(routed.ode.decode(problem, ys).cpu())
        start += len(problem.h0)
        nfe.append(stats[0].nfe.cpu())
        fallback.append(stats[0].fallback.cpu())
    return OfflineResult(torch.cat(outs), torch.cat(choice).cpu(), torch.cat(nfe), torch.cat(fallback),
                         time.perf_counter() - began, list(routed.selector.candidates))


def write_predictions(result: OfflineResult, routed: RoutedModel, path: str | Path) -> None:
    from safetensors.torch import save_file
    arrays = {"outputs": result.outputs.contiguous(), "integrator": result.integrator.contiguous(),
              "nfe": result.nfe.contiguous(), "fallback": result.fallback.to(torch.uint8).contiguous()}
    meta = {"dise_predictions": json.dumps({"candidates": routed.selector.candidates}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)
