"""Summaries of a profile: per-candidate metrics, the oracle selection, the best single candidate.

Everything here is a pure function of a ``Profile`` (and optional timings), returning plain dicts
with stable keys; the CLI renders them as tables or JSON.
"""
from __future__ import annotations

import json

import torch

from dise_cli.auc import roc_auc
from dise_cli.budgets import Budgets
from dise_cli.figures import figure
from dise_cli.integrators.base import Status
from dise_cli.profiles import Profile
from dise_cli.profiling import Timing

SCHEMA_VERSION = 1
# A single candidate "matches" the baseline if its accuracy is at most this many percentage points lower.
MATCH_TOLERANCE_PP = 0.3


def success(profile: Profile, beta: float | None = None, budgets: Budgets | None = None) -> torch.Tensor:
    """``[N, K]`` bool: the sample is right (classification) or its Γ ≤ β (regression; β defaults to
    the baseline candidate's mean Γ, as the paper's Eq. 5 does), or, with error budgets, within their
    per-sample form. Failed solves never succeed."""
    ok = profile.status == int(Status.OK)
    if profile.task == "classification":
        return profile.correct & ok
    if budgets is not None and budgets.given and beta is None:
        return budgets.right(profile.gamma, profile.deviation, default_beta(profile)) & ok
    threshold = default_beta(profile) if beta is None else beta
    return (profile.gamma <= threshold) & ok


def default_beta(profile: Profile) -> float:
    g = profile.gamma[:, profile.baseline]
    g = g[torch.isfinite(g)]
    return float(g.mean()) if len(g) else float("inf")


def estimated_seconds(profile: Profile) -> torch.Tensor | None:
    """``[N, K]`` float64: each sample's solve time per candidate, estimated as its NFE times the
    candidate's measured seconds per NFE on the profiling device (its step overhead included); None
    for a profile without timings."""
    if profile.timing is None:
        return None
    per_nfe = torch.tensor(profile.timing["seconds_per_nfe"], dtype=torch.float64)
    return profile.nfe.to(torch.float64) * per_nfe


def auc_of(profile: Profile, choice: torch.Tensor | None = None, k: int | None = None) -> float | None:
    """The AUC of candidate ``k``, or of a choice of candidate per sample ``[N]`` (the oracle, a selector);
    None for regression or a profile without class scores."""
    if profile.task != "classification" or profile.scores is None or profile.target is None:
        return None
    if choice is None:
        choice = torch.full((profile.n_samples,), k, dtype=torch.long)
    scores = profile.scores[torch.arange(profile.n_samples), choice.long()]
    value = roc_auc(scores, profile.target)
    return None if value is None else round(value, 4)


def figure_of(profile: Profile, choice: torch.Tensor | None = None, k: int | None = None) -> dict | None:
    """The task figure (``--figure``: NLP or energy distance) of candidate ``k`` or of a choice per
    sample; None where the profile was made without one."""
    kind = profile.meta.get("figure")
    if not kind or profile.outputs is None:
        return None
    if choice is None:
        choice = torch.full((profile.n_samples,), k, dtype=torch.long)
    outputs = profile.outputs[torch.arange(profile.n_samples), choice.long()]
    return figure(kind, outputs, profile.reference, int(profile.meta.get("input_dim") or outputs.shape[1]),
                  profile.figure_data)


def _nfe_stats(nfe: torch.Tensor) -> dict[str, float]:
    v = nfe.to(torch.float64)
    return {"mean": round(float(v.mean()), 4), "p50": round(float(v.quantile(0.5)), 4),
            "p95": round(float(v.quantile(0.95)), 4),
            "max": int(v.max())}


def _status_counts(status: torch.Tensor) -> dict[str, int]:
    return {s.name.lower(): int((status == int(s)).sum()) for s in Status}


def oracle(profile: Profile, beta: float | None = None) -> dict:
    """Per sample the cheapest successful candidate (the baseline where none succeeds)."""
    good = success(profile, beta)
    cost = torch.where(good, profile.nfe.to(torch.float64), float("inf"))
    choice = cost.argmin(1)
    none_ok = ~good.any(1)
    choice = torch.where(none_ok, torch.full_like(choice, profile.baseline), choice)
    nfe = profile.nfe.gather(1, choice[:, None]).squeeze(1)
    share = {spec: round(float((choice == k).double().mean()), 4) for k, spec in enumerate(profile.candidates)}
    return {"accuracy": round(float(good.any(1).double().mean()), 4), "nfe_mean": round(float(nfe.double().mean()), 4),
            "share": share, "choice": choice}


def summarize(profile: Profile, timing: Timing | None = None, beta: float | None = None) -> dict:
    """The report of ``dise profile``: see the README's JSON section for the keys."""
    good = success(profile, beta)
    base = profile.baseline
    rows = []
    for k, spec in enumerate(profile.candidates):
        row = {
            "candidate": spec,
            "accuracy": round(float(good[:, k].double().mean()), 4),
            "nfe": _nfe_stats(profile.nfe[:, k]),
            "status": _status_counts(profile.status[:, k]),
            "failed_samples": profile.index[profile.status[:, k] != int(Status.OK)].tolist(),
        }
        if profile.task == "classification":
            row["auc"] = auc_of(profile, k=k)
            row["agreement_with_baseline"] = round(float((profile.pred[:, k] == profile.pred[:, base]).double().mean()), 4)
        else:
            g = profile.gamma[:, k]
            finite = torch.isfinite(g)
            row["mean_error"] = float(g[finite].mean()) if finite.any() else None
            row["deviation_from_baseline"] = float(profile.deviation[:, k][torch.isfinite(profile.deviation[:, k])].mean())
            row["figure"] = figure_of(profile, k=k)
        if timing is not None:
            n = max(timing.n_samples, 1)
            row["seconds_per_sample"] = timing.seconds[k] / n
            row["seconds_per_nfe"] = timing.seconds[k] / max(timing.nfe_total[k], 1)
            if timing.steps_total:
                row["seconds_per_step"] = timing.seconds[k] / max(timing.steps_total[k], 1)
            peak = timing.peak_memory_bytes[k]
            row["peak_memory_mb"] = None if peak is None else round(peak / 2**20, 2)
        rows.append(row)
    orc = oracle(profile, beta)
    choice = orc.pop("choice")
    if profile.task == "classification":
        orc["auc"] = auc_of(profile, choice)
    else:
        orc["figure"] = figure_of(profile, choice)
    seconds = estimated_seconds(profile)
    if seconds is not None:
        orc["seconds_mean"] = float(seconds.gather(1, choice[:, None]).mean())
    base_acc = rows[base]["accuracy"]
    matching = [r for r in rows if r["accuracy"] >= base_acc - MATCH_TOLERANCE_PP / 100 - 1e-12]
    best = min(matching, key=lambda r: r["nfe"]["mean"])
    report = {
        "schema_version": SCHEMA_VERSION,
        "task": profile.task,
        "n_samples": profile.n_samples,
        "t_span": profile.t_span,
        "baseline": profile.candidates[base],
        "notes": json.loads(profile.meta.get("notes") or "[]"),
        "labels": profile.meta.get("labels", "data"),
        "reference_dtype": profile.meta.get("reference_dtype") or None,     # None: judged against labels
        "candidates": rows,
        "oracle": orc,
        "best_single": {"candidate": best["candidate"], "accuracy": best["accuracy"], "nfe_mean": best["nfe"]["mean"],
                        "match_tolerance_pp": MATCH_TOLERANCE_PP, **({"auc": best["auc"]} if "auc" in best else {})},
    }
    if profile.task == "regression":
        report["beta"] = default_beta(profile) if beta is None else beta
        report["figure"] = profile.meta.get("figure") or None
    return report
