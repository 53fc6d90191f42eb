"""``dise evaluate`` as a library: a routed model against DOPRI5-only, the best single candidate and
the oracle on the same data, wall-clock side by side, and the gates that decide the exit code."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dise_cli.auc import roc_auc
from dise_cli.budgets import Budgets
from dise_cli.clock import alternating_medians
from dise_cli.config import positive_int
from dise_cli.datasets import Dataset
from dise_cli.errors import UsageError
from dise_cli.figures import read_figure_data
from dise_cli.files import existing_file
from dise_cli.judging import Judge, Task, class_labels, detect_task, targets_batch_major
from dise_cli.provenance import made_with
from dise_cli.profiling import ProfileRun, Reference, Timing, batch_starts, batch_targets, grids_of, \
    profile_candidates
from dise_cli.seeding import seeded
from dise_cli.sharding import joined
from dise_cli.reports import figure_of, summarize
from dise_cli.routing import RoutedModel
from dise_cli.selector_training import selector_cost_in_nfe

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Gates:
    max_accuracy_drop: float | None = None     # percentage points below the baseline
    min_nfe_reduction: float | None = None     # e.g. 0.5: mean NFE at most half the baseline's
    max_nfe: float | None = None               # mean NFE, the selector included
    max_error_increase: float | None = None    # % over the baseline's mean Γ (budgets.py)
    max_deviation: float | None = None         # mean distance of DISE's outputs from the baseline's


@dataclass(frozen=True)
class EvaluateSettings:
    """``dise evaluate``'s settings; each default is written here only."""

    batch_size: int = 256
    batch_sizes: tuple[int, ...] = (1, 64, 256)   # batch sizes to time
    repeats: int = 5                              # timing rounds per batch size (the median is reported)
    limit: int | None = None                      # evaluate this many samples drawn with ``seed`` (None: all)
    seed: int = 0
    time_major: bool | None = None
    max_accuracy_drop: float | None = None        # the gates (None: not checked)
    min_nfe_reduction: float | None = None
    max_nfe: float | None = None
    max_error_increase: float | None = None
    max_deviation: float | None = None
    figure_data: str | None = None                # held-out samples of the target (a sampler's energy figure)

    def check(self) -> None:
        if self.figure_data is not None:
            existing_file(self.figure_data, "--figure-data")
        positive_int(self.batch_size, "--batch-size")
        positive_int(self.repeats, "--repeats")
        if self.limit is not None:
            positive_int(self.limit, "--limit")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UsageError("--batch-sizes: give positive batch sizes, e.g. 1,64,256")

    @property
    def gates(self) -> Gates:
        return Gates(self.max_accuracy_drop, self.min_nfe_reduction, self.max_nfe, self.max_error_increase,
                     self.max_deviation)


def evaluate_routed(routed: RoutedModel, data: Dataset, *, rows: torch.Tensor, batch_size: int,
                    batch_sizes: list[int], device: torch.device, gates: Gates, time_major: bool | None = None,
                    repeats: int = 5, progress=None, figure_data: str | None = None, world=None) -> dict | None:
    """The report of ``dise evaluate``. Under torchrun (``world``) each rank judges its shard of the
    batches and rank 0 joins them, times the models on its own device and returns the report (the
    others None)."""
    ode = routed.ode
    task = routed.selector.meta.get("task") or detect_task(data.y, has_decoder=True)
    if task != "regression" and (gates.max_error_increase is not None or gates.max_deviation is not None):
        raise UsageError("--max-error-increase / --max-deviation: gates for models judged by an error "
                         "(regression, density, sampling); a classifier has --max-accuracy-drop")
    data = dataclasses.replace(data, y=class_labels(task, data.y))
    meta = routed.selector.meta
    judge = Task(task, float(meta.get("threshold") or 0.0)).judge(meta.get("metric") if task == "regression" else None)
    beta = meta.get("beta")
    reference = Reference(routed.integrators[routed.baseline])
    kind = meta.get("figure") or None
    if figure_data is not None and kind != "energy":
        raise UsageError(f"--figure-data: the selector was trained without the energy figure (figure: {kind or 'none'}); "
                         f"held-out samples are for samplers profiled with --figure energy")
    shard = (0, 1) if world is None else (world.rank, world.size)

    def work() -> tuple[ProfileRun, _RoutedSamples]:
        run = profile_candidates(ode, data, routed.integrators, judge, rows=rows, batch_size=batch_size,
                                 device=device, baseline=routed.baseline, time_major=time_major, reference=reference,
                                 progress=progress, keep_outputs=kind is not None, shard=shard)
        return run, _routed_samples(routed, data, rows, judge, batch_size, device, time_major, reference, shard)

    if world is None:
        run, samples = work()
    else:
        parts = world.collect(work)
        if parts is None:
            return None
        run = ProfileRun(profile=joined([p.profile for p, _ in parts]), timing=Timing.total([p.timing for p, _ in parts]),
                         world_size=len(parts))
        samples = _RoutedSamples.joined([s for _, s in parts])
    run.profile.meta.update({"figure": kind or "", "input_dim": str(meta.get("input_dim") or "")})
    if figure_data is not None:
        run.profile.figure_data = read_figure_data(figure_data, run.profile.outputs.shape[2])
    summary = summarize(run.profile, run.timing, beta=beta)
    dise, choice, fallback = _routed_metrics(samples, routed, data, rows, judge, device, beta)
    if judge.task == "regression":
        deviation = run.profile.deviation[torch.arange(len(choice)), choice].masked_fill(fallback, 0.0)
        dise["mean_deviation"] = float(deviation[torch.isfinite(deviation)].mean()) if len(deviation) else None
        if kind is not None:       # the routed outputs are the chosen candidates' (the baseline's on a fallback)
            routed_choice = torch.where(fallback, torch.full_like(choice, routed.baseline), choice)
            dise["figure"] = figure_of(run.profile, routed_choice)
    base = summary["candidates"][routed.baseline]
    report = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "n_samples": len(rows),
        "dise": dise,
        "baseline_only": {**_single(base), **({"mean_error": base["mean_error"]} if "mean_error" in base else {})},
        "candidates": [_single(r) for r in summary["candidates"]],
        "best_single": {k: v for k, v in summary["best_single"].items() if k != "match_tolerance_pp"},
        "oracle": summary["oracle"],
        "timing": time_models(routed, data, rows, batch_sizes, device, repeats),
        "world_size": run.world_size,         # processes that judged the samples; the timing is rank 0's device
        "made_with": made_with(device),
    }
    # the selector costs NFE too: where one candidate alone is as right and no dearer, routing does not pay
    as_good = [c for c in report["candidates"] if c["accuracy"] >= dise["accuracy"] and c["nfe_mean"] <= dise["nfe_mean"]]
    instead = min(as_good, key=lambda c: (c["nfe_mean"], -c["accuracy"]), default=None)
    report["single_instead"] = None if instead is None else instead["candidate"]
    report["best_single_beats_dise"] = instead is not None
    report["gates"] = check_gates(report, gates)
    return report


@dataclass
class _RoutedSamples:
    """The routed model's result per sample (of one shard's batches): right or Γ, NFE, choice, fallback,
    and for a classifier its class scores and the labels judged against."""

    index: torch.Tensor
    score: torch.Tensor
    nfe: torch.Tensor
    choice: torch.Tensor
    fallback: torch.Tensor
    class_scores: torch.Tensor | None
    labels: torch.Tensor | None

    @classmethod
    def joined(cls, parts: list["_RoutedSamples"]) -> "_RoutedSamples":
        """Shards as one, in the single run's order (ascending data row)."""
        order = torch.argsort(torch.cat([p.index for p in parts]))

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)[order]
        return cls(**{f.name: cat(f.name) for f in dataclasses.fields(cls)})


@torch.no_grad()
def _routed_samples(routed: RoutedModel, data: Dataset, rows: torch.Tensor, judge: Judge, batch_size: int,
                    device: torch.device, time_major: bool | None, reference: Reference,
                    shard: tuple[int, int]) -> _RoutedSamples:
    ode = routed.ode
    targets = None
    if data.y is not None:
        targets = targets_batch_major(data.y, len(data), len(ode.t_span), time_major, data.name)
    index, scores, nfe, choice, fallback, class_scores, labels = [], [], [], [], [], [], []
    starts = batch_starts(len(rows), batch_size, shard)
    empty = not starts              # a rank with no batch: one row for the shapes, then none kept
    for start in starts or [0]:
        idx = rows[start:start + (1 if empty else batch_size)]
        index.append(idx)
        x, t = data.x[idx].to(device), grids_of(data, idx, device)
        with seeded(start, device):          # the same random encoder as the candidates' runs
            out, stats = routed.run_packed(x, t, return_stats=True)
        target = batch_targets(ode, x, ode.encode(x, t) if ode.splittable else None, idx, targets, judge, reference,
                               seed=start)
        ok = stats.status == 0
        if judge.task == "classification":
            class_scores.append(judge.scores(out).cpu())
            labels.append(target.cpu())
        scores.append((judge.correct(out, target) & ok) if judge.task == "classification"
                      else judge.gamma(out, target).masked_fill(~ok, float("inf")))
        nfe.append(stats.nfe.cpu())
        choice.append(stats.integrator.cpu())
        fallback.append(stats.fallback.cpu())
    classes = judge.task == "classification"
    keep = slice(0, 0) if empty else slice(None)
    return _RoutedSamples(index=torch.cat(index)[keep], score=torch.cat(scores).cpu()[keep],
                          nfe=torch.cat(nfe)[keep], choice=torch.cat(choice)[keep],
                          fallback=torch.cat(fallback).bool()[keep],
                          class_scores=torch.cat(class_scores)[keep] if classes else None,
                          labels=torch.cat(labels)[keep] if classes else None)


@torch.no_grad()
def _routed_metrics(samples: _RoutedSamples, routed: RoutedModel, data: Dataset, rows: torch.Tensor, judge: Judge,
                    device: torch.device, beta: float | None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """DISE's row of the report from its per-sample results (the selector's own cost included)."""
    ode = routed.ode
    score, nfe_all, choice_all = samples.score, samples.nfe, samples.choice
    v_nfe = selector_cost_in_nfe(routed.selector.net, ode, ode.encode(data.x[rows[:256]].to(device),
                                                                       grids_of(data, rows[:256], device)))
    k = len(routed.integrators)
    metrics = {
        "nfe_mean": round(float(nfe_all.double().mean()) + v_nfe, 4),
        "nfe_integrators": round(float(nfe_all.double().mean()), 4),
        "selector_nfe": round(v_nfe, 4),
        "share": {c: round(float((choice_all == i).double().mean()), 4) for i, c in enumerate(routed.selector.candidates)
                  if i < k},
        "fallbacks": int(samples.fallback.sum()),
    }
    if judge.task == "classification":
        metrics["accuracy"] = round(float(score.double().mean()), 4)
        metrics["auc"] = _round(roc_auc(samples.class_scores, samples.labels))
    else:
        finite = torch.isfinite(score)
        metrics["accuracy"] = round(float((score <= beta).double().mean()), 4) if beta is not None else None
        metrics["mean_error"] = float(score[finite].mean()) if finite.any() else None
    return metrics, choice_all, samples.fallback


def _single(row: dict) -> dict:
    """A candidate alone: accuracy (and AUC for a classifier, the figure where there is one) and mean NFE."""
    out = {"candidate": row["candidate"], "accuracy": row["accuracy"], "nfe_mean": row["nfe"]["mean"]}
    for key in ("auc", "figure"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@torch.no_grad()
def time_models(routed: RoutedModel, data: Dataset, rows: torch.Tensor, batch_sizes: list[int],
                device: torch.device, repeats: int) -> list[dict]:
    """Median seconds per batch of the routed model and of each single candidate, alternating so
    that all see the same machine load."""
    ode = routed.ode
    results = []
    for size in batch_sizes:
        idx = rows[torch.arange(size) % len(rows)]
        x, t = data.x[idx].to(device), grids_of(data, idx, device)
        runners = {"dise": lambda: routed.run_packed(x, t)}
        for cand in routed.integrators:
            runners[cand.spec] = lambda cand=cand: ode.forward_with(x, lambda p: cand.solve(p.field, p.h0, p.t).ys, t)
        median = alternating_medians(runners, repeats, device)
        base = routed.integrators[routed.baseline].spec
        results.append({"batch_size": size, "seconds_per_batch": {k: round(v, 6) for k, v in median.items()},
                        "speedup_vs_baseline": round(median[base] / median["dise"], 3)})
    return results


def check_gates(report: dict, gates: Gates) -> list[dict]:
    dise, base = report["dise"], report["baseline_only"]
    out = []
    if gates.max_accuracy_drop is not None and dise.get("accuracy") is not None:
        drop = 100 * (base["accuracy"] - dise["accuracy"])
        out.append({"gate": "max_accuracy_drop", "value": round(drop, 4), "threshold": gates.max_accuracy_drop,
                    "passed": drop <= gates.max_accuracy_drop + 1e-9})
    if gates.min_nfe_reduction is not None:
        reduction = 1 - dise["nfe_mean"] / base["nfe_mean"] if base["nfe_mean"] else 0.0
        out.append({"gate": "min_nfe_reduction", "value": round(reduction, 4), "threshold": gates.min_nfe_reduction,
                    "passed": reduction >= gates.min_nfe_reduction - 1e-9})
    if gates.max_nfe is not None:
        out.append({"gate": "max_nfe", "value": dise["nfe_mean"], "threshold": gates.max_nfe,
                    "passed": dise["nfe_mean"] <= gates.max_nfe + 1e-9})
    if gates.max_error_increase is not None or gates.max_deviation is not None:
        budgets = Budgets(gates.max_error_increase, gates.max_deviation)
        base_error = base.get("mean_error")
        if gates.max_error_increase is not None:
            increase = 100 * (dise["mean_error"] / base_error - 1) if base_error else float("inf")
            out.append({"gate": "max_error_increase", "value": round(increase, 4), "threshold": gates.max_error_increase,
                        "passed": base_error is not None and budgets.error_within(dise["mean_error"], base_error)})
        if gates.max_deviation is not None:
            out.append({"gate": "max_deviation", "value": dise["mean_deviation"], "threshold": gates.max_deviation,
                        "passed": budgets.deviation_within(dise["mean_deviation"])})
    return out
