"""``dise train-selector`` as a library: check the profile against model and data, compute h(0),
derive cost labels, fit the selector by regression on them (the paper's section 3.2), calibrate
its offsets on the validation split, and report."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch

from dise_cli.budgets import Budgets
from dise_cli.bundle import input_spec
from dise_cli.calibration import Point, calibrate, evaluate_point, route
from dise_cli.clock import alternating_medians
from dise_cli.config import positive_int
from dise_cli.costs import COSTS, DEFAULT_ALPHA, DEFAULT_M, cost_labels, success
from dise_cli.errors import InputError, UsageError
from dise_cli.odemodel import Problem
from dise_cli.pipeline import Opened
from dise_cli.profiles import Profile
from dise_cli.profiling import grids_of
from dise_cli.provenance import made_with
from dise_cli.reports import auc_of, estimated_seconds, figure_of, summarize
from dise_cli.routing import first_stage, resolve_inputs, selector_inputs
from dise_cli.selector import Selector, SelectorNet, SelectorSpec

EXAMPLE_ROWS = 5          # data rows a selector keeps, for export to read a model that rejects noise (5: a
                          # batch size less often some axis's size too, such as 4 latent channels)


@dataclass(frozen=True)
class TrainSettings:
    """``dise train-selector``'s settings; each default is written here only."""

    alpha: float = DEFAULT_ALPHA
    M: float = DEFAULT_M
    beta: float | None = None          # regression: Γ threshold (None: the baseline's mean Γ)
    selector_arch: str = "auto"        # auto | conv | mlp | table4 (selector.ARCHS)
    dropout: float = 0.0               # table4's dropout (the paper: 0 or 0.25)
    cost: str = "nfe"                  # Δ in the cost labels: nfe (the paper) or seconds (measured time)
    epochs: int = 40
    lr: float = 3e-3
    train_batch_size: int = 128        # the selector's minibatch (not the model's --batch-size)
    val_split: float = 0.4             # calibration needs held-out errors more than v needs samples
    seed: int = 0
    max_accuracy_drop: float = 0.3     # percentage points (classification; regression without budgets)
    max_error_increase: float | None = None   # regression budget: % over the baseline's mean Γ (budgets.py)
    max_deviation: float | None = None        # regression budget: mean distance from the baseline's outputs
    inputs: str = "auto"               # what the selector sees: auto | h0 | euler | euler_probs (routing.INPUTS)

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.max_error_increase, self.max_deviation)

    def check(self) -> None:
        positive_int(self.epochs, "--epochs")
        if not 0 < self.val_split < 1:
            raise UsageError(f"--val-split: must be between 0 and 1, got {self.val_split}")
        if not self.lr > 0:
            raise UsageError(f"--lr: must be > 0, got {self.lr}")
        self.budgets.check()
        if self.cost not in COSTS:
            raise UsageError(f"--cost: unknown cost '{self.cost}'; valid: {', '.join(COSTS)}")


@dataclass
class TrainResult:
    selector: Selector
    report: dict


def check_profile_matches(profile: Profile, opened: Opened, profile_name: str) -> None:
    """The profile must come from this model and data (sha256 in its header); exit 2 otherwise."""
    for what, expected, actual in (("model", profile.meta.get("model_sha256"), opened.loaded.sha256),
                                   ("data", profile.meta.get("data_sha256"), opened.data.sha256)):
        if expected != actual:
            where = profile.meta.get(what, "?")
            raise InputError(f"profile '{profile_name}' was made from another {what} ('{where}', sha256 "
                             f"{str(expected)[:12]}...), not '{opened.loaded.spec.path if what == 'model' else opened.data.name}' "
                             f"(sha256 {actual[:12]}...); profile this {what} again")
    recorded = profile.meta.get("reading")
    if recorded:
        from dise_cli.bundle import check_reading
        check_reading(opened.model.record(), json.loads(recorded), f"profile '{profile_name}'")
    if len(profile.index) and int(profile.index.max()) >= len(opened.data):
        raise InputError(f"profile '{profile_name}' names data rows beyond the {len(opened.data)} in '{opened.data.name}'")


@torch.no_grad()
def encode_rows(opened: Opened, rows: torch.Tensor, batch_size: int = 256) -> list[Problem]:
    """The model's solve for the given data rows, batch by batch, on the model's device."""
    return [opened.model.encode(opened.data.x[rows[i:i + batch_size]].to(opened.device),
                                grids_of(opened.data, rows[i:i + batch_size], opened.device))
            for i in range(0, len(rows), batch_size)]


def fit(net: SelectorNet, h0: torch.Tensor, costs: torch.Tensor, settings: TrainSettings,
        progress: Callable[[int], None] | None = None) -> list[float]:
    """Regress ``costs`` [N, K] on ``h0``; returns the mean training loss per epoch."""
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(settings.epochs, 1))
    costs = costs.to(h0.device, torch.float32)
    losses = []
    net.train()
    for _ in range(settings.epochs):
        perm = torch.randperm(len(h0), generator=gen).to(h0.device)
        total = 0.0
        for i in range(0, len(perm), settings.train_batch_size):
            idx = perm[i:i + settings.train_batch_size]
            loss = torch.nn.functional.mse_loss(net(h0[idx]), costs[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        losses.append(total / max(len(perm), 1))
        if progress is not None:
            progress(1)
    net.eval()
    return losses


@torch.no_grad()
def selector_cost_in_nfe(net: SelectorNet, ode, problem: Problem, repeats: int = 7) -> float:
    """The time of one selector decision (its inputs from the shared first stage, then v) over the
    time of one f call, on the same batch: the selector's cost in NFE units (DESIGN). The two are
    timed in turn, round after round, so that a machine's load weighs on both alike."""
    k1 = first_stage(problem)
    medians = alternating_medians({"decide": lambda: net(selector_inputs(ode, problem, k1, net.spec.inputs)),
                                   "f": lambda: first_stage(problem)},              # one f call on the batch
                                  repeats, problem.h0.device)
    return medians["decide"] / medians["f"]


def split_rows(n: int, val_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the training and validation samples (a seeded shuffle)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(int(round(val_split * n)), 1), n - 1) if n > 1 else 0
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def train_selector(opened: Opened, profile: Profile, profile_name: str, settings: TrainSettings,
                   progress: Callable[[int], None] | None = None) -> TrainResult:
    check_profile_matches(profile, opened, profile_name)
    torch.manual_seed(settings.seed)
    if settings.budgets.given and profile.task != "regression":
        raise UsageError("--max-error-increase / --max-deviation: error budgets are for models judged by an error "
                         "(regression, density, sampling); a classifier has --max-accuracy-drop")
    labels = cost_labels(profile, settings.alpha, settings.M, settings.beta, cost=settings.cost,
                         budgets=settings.budgets)
    inputs = resolve_inputs(opened.model, settings.inputs, profile.task)
    problems = encode_rows(opened, profile.index)
    with torch.no_grad():
        feats = torch.cat([selector_inputs(opened.model, p, first_stage(p), inputs) for p in problems])
    train, val = split_rows(profile.n_samples, settings.val_split, settings.seed)
    spec = SelectorSpec.for_shape(tuple(feats.shape[1:]), len(profile.candidates), settings.selector_arch, inputs,
                                  dropout=settings.dropout)
    net = SelectorNet(spec).to(feats.device)
    net.set_normalisation(feats[train])
    losses = fit(net, feats[train], labels.costs[train], settings, progress)
    with torch.no_grad():
        pred_val = net(feats[val]).cpu()
    timing_rows = profile.index[val[:256]] if len(val) else profile.index[:256]
    v_nfe = selector_cost_in_nfe(net, opened.model, encode_rows(opened, timing_rows)[0])
    val_profile = profile.subset(val)
    v_cost = v_nfe if settings.cost == "nfe" else selector_seconds(profile, v_nfe) / _seconds_unit(profile)
    errors = (profile.gamma[val], profile.deviation[val]) if profile.task == "regression" else (None, None)
    chosen, curve = calibrate(pred_val, labels.right[val], labels.delta[val], profile.baseline, v_cost,
                              settings.max_accuracy_drop, settings.seed, *errors, budgets=settings.budgets)
    raw = evaluate_point(pred_val.double(), labels.right[val], labels.delta[val],
                         torch.zeros(pred_val.shape[1], dtype=torch.float64), v_cost, *errors)
    describe = _Describer(val_profile, pred_val, v_nfe, labels.beta)
    selector = Selector(net=net.cpu(), candidates=list(profile.candidates), offsets=list(chosen.offsets),
                        made_with=made_with(opened.device))
    report = _report(val_profile, labels, settings, chosen, raw, curve, v_nfe, losses, n_train=len(train),
                     selector_spec=spec, n_params=sum(p.numel() for p in net.parameters()), describe=describe)
    selector.meta = {
        "alpha": labels.alpha, "M": labels.M, "beta": labels.beta, "task": profile.task,
        "metric": profile.meta.get("metric") or "mse", "figure": profile.meta.get("figure") or "",
        "threshold": float(profile.meta.get("threshold") or 0.0),
        "input_dim": profile.meta.get("input_dim", ""),
        "baseline": profile.baseline, "t_span": profile.t_span,
        "model_sha256": profile.meta.get("model_sha256"), "data_sha256": profile.meta.get("data_sha256"),
        # a few data rows, for export to read a model that rejects noise shaped like its data
        "input": input_spec(opened.data.x[:EXAMPLE_ROWS], rows=True, join=opened.data.join),
        "reading": opened.model.record(),
        # Measured wall-clock figures (the selector's cost in NFE units) stay out of the file, so the
        # same inputs and seed give the same bytes; evaluate measures them again.
        "validation": {"accuracy": describe(chosen.offsets)["accuracy"],
                       "nfe_integrators": round(describe.integrators_nfe(chosen.offsets), 6),
                       "share": dict(zip(profile.candidates, chosen.share)), "cost": settings.cost},
    }
    report["made_with"] = selector.made_with
    return TrainResult(selector=selector, report=report)


def selector_seconds(profile: Profile, v_nfe: float) -> float:
    """The selector's time per sample, from its cost in f calls and the cheapest candidate's measured
    seconds per NFE (the closest to one bare f call)."""
    return v_nfe * min(profile.timing["seconds_per_nfe"]) if profile.timing else 0.0


def _seconds_unit(profile: Profile) -> float:
    return float(profile.timing["seconds_per_nfe"][profile.baseline])


class _Describer:
    """A choice of offsets on the validation split in every unit a person reads: accuracy (right
    answers, or Γ ≤ β: the criterion every row of the report uses, whatever budget chose the
    offsets), AUC, mean NFE and estimated seconds (the selector's own cost included in both), and
    shares."""

    def __init__(self, val: Profile, pred: torch.Tensor, v_nfe: float, beta: float | None):
        self.val, self.pred, self.v_nfe = val, pred.double(), v_nfe
        self.good = success(val, beta)
        self.seconds = estimated_seconds(val)
        self.v_seconds = selector_seconds(val, v_nfe)

    def integrators_nfe(self, offsets) -> float:
        """Mean NFE of the routed integrators alone (no measured figure in it: it goes into the file)."""
        choice = route(self.pred, torch.tensor(offsets, dtype=torch.float64))
        return float(self.val.nfe[torch.arange(len(choice)), choice].double().mean())

    def __call__(self, offsets) -> dict:
        choice = route(self.pred, torch.tensor(offsets, dtype=torch.float64))
        rows = torch.arange(len(choice))
        out = {"accuracy": round(float(self.good[rows, choice].double().mean()), 4) if len(choice) else 0.0,
               "nfe_mean": round(float(self.val.nfe[rows, choice].double().mean()) + self.v_nfe, 4)}
        if self.seconds is not None:
            out["seconds_mean"] = float(self.seconds[rows, choice].mean()) + self.v_seconds
        if self.val.task == "classification":
            out["auc"] = auc_of(self.val, choice)
        elif self.val.meta.get("figure"):
            out["figure"] = figure_of(self.val, choice)
        return out


def _point(p: Point, candidates: list[str], describe: _Describer) -> dict:
    errors = {} if p.error is None else {"mean_error": p.error, "mean_deviation": p.deviation}
    return {**errors, **describe(p.offsets),
            "share": {c: round(s, 4) for c, s in zip(candidates, p.share)},
            "offsets": {c: o for c, o in zip(candidates, p.offsets)}}


def _single(summary: dict, row: dict, val: Profile) -> dict:
    """A single candidate's figures: accuracy, AUC, mean NFE and estimated seconds."""
    k = val.candidates.index(row["candidate"])
    seconds = estimated_seconds(val)
    out = {"candidate": row["candidate"], "accuracy": row["accuracy"], "nfe_mean": row["nfe_mean"]}
    if seconds is not None:
        out["seconds_mean"] = float(seconds[:, k].mean())
    if val.task == "classification":
        out["auc"] = auc_of(val, k=k)
    else:
        gamma = val.gamma[:, k]
        out["mean_error"] = float(gamma[torch.isfinite(gamma)].mean()) if bool(torch.isfinite(gamma).any()) else None
        if val.meta.get("figure"):
            out["figure"] = figure_of(val, k=k)
    return out


def _report(val: Profile, labels, settings: TrainSettings, chosen: Point, raw: Point, curve: list[Point],
            v_nfe: float, losses: list[float], n_train: int, selector_spec: SelectorSpec, n_params: int,
            describe: _Describer) -> dict:
    summary = summarize(val, beta=labels.beta)
    base = summary["candidates"][val.baseline]
    oracle = dict(summary["oracle"])
    return {
        "schema_version": 1,
        "task": val.task,
        "selector": {"kind": selector_spec.kind, "inputs": selector_spec.inputs, "in_shape": selector_spec.in_shape,
                     "parameters": n_params, "dropout": selector_spec.dropout},
        "n_train": n_train,
        "n_validation": val.n_samples,
        "costs": {"cost": labels.cost, "alpha": labels.alpha, "M": labels.M, "M_raised": labels.M_raised,
                  "beta": labels.beta},
        "selector_nfe": round(v_nfe, 4),
        "final_train_loss": round(losses[-1], 6) if losses else None,
        "max_accuracy_drop_pp": settings.max_accuracy_drop,
        "budgets": {"max_error_increase_pct": settings.max_error_increase, "max_deviation": settings.max_deviation},
        "dise": _point(chosen, val.candidates, describe),
        "uncalibrated": _point(raw, val.candidates, describe),
        "baseline_only": _single(summary, {"candidate": summary["baseline"], "accuracy": base["accuracy"],
                                           "nfe_mean": base["nfe"]["mean"]}, val),
        "best_single": _single(summary, summary["best_single"], val),
        "oracle": oracle,
        "tradeoff": [{**describe(p.offsets),
                      "share": [round(s, 4) for s in p.share]} for p in curve],
    }
