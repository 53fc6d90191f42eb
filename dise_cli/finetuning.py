"""``dise finetune`` as a library: L_task + λR (paper Eq. 3) with R one of

- ``err``: R_err, the DOPRI5 local error estimates of every accepted step (paper Eq. 2),
  backpropagated through the solver's forward graph; ``err-dt``: ERNODE's Σ err·|dt|;
- ``kinetic``: ∫ mean‖f‖² dt along the solve (Finlay et al., the paper's Eq. 1);
- ``l1``, ``l2``: on the ODE function's parameters; ``none``: the task loss alone.

Per batch, sums over samples are divided by the batch size, so λ does not depend on it. After each
epoch: validation accuracy (or error) and DOPRI5's mean NFE; the checkpoint kept is the one with the
smallest validation NFE among those within ``max_accuracy_drop`` points of the starting model.
"""
from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from dise_cli.config import positive_int
from dise_cli.datasets import Dataset
from dise_cli.errors import InputError, UsageError
from dise_cli.imports import import_object
from dise_cli.integrators import Dopri5, EmbeddedRK
from dise_cli.judging import Judge, Task, check_labels, is_single_logit, targets_batch_major
from dise_cli.odemodel import OdeModel
from dise_cli.profiling import profile_candidates
from dise_cli.provenance import made_with
from dise_cli.reports import summarize

REGULARISERS = ("err", "err-dt", "kinetic", "l1", "l2", "none")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class FinetuneSettings:
    """``dise finetune``'s settings; each default is written here only."""

    reg: str = "err"
    lam: float = 1.0
    epochs: int = 4
    lr: float = 3e-4
    batch_size: int = 128
    seed: int = 0
    max_accuracy_drop: float = 0.3
    rtol: float = 1e-3
    atol: float = 1e-3
    loss: str | None = None          # package.module:fn (outputs, targets) -> scalar, or "nll" (maximum likelihood)
    max_nlp_increase: float = 0.01   # nats: with --loss nll, checkpoints within this of the start's validation NLP
    schedule: str = "constant"       # or "cosine": the learning rate decays to 0 over all steps
    task: str | None = None          # classification | regression (None: from the labels)

    def check(self) -> None:
        positive_int(self.epochs, "--epochs")
        positive_int(self.batch_size, "--batch-size")
        if not 0 <= self.max_accuracy_drop:
            raise UsageError(f"--max-accuracy-drop: must be >= 0, got {self.max_accuracy_drop}")
        if self.reg not in REGULARISERS:
            raise UsageError(f"--reg: unknown regulariser '{self.reg}'; valid: {', '.join(REGULARISERS)}")
        if not self.lam >= 0:
            raise UsageError(f"--lam: λ must be >= 0, got {self.lam}")
        if not self.lr > 0:
            raise UsageError(f"--lr: must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule: unknown schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}")


def learned_grid(ode: OdeModel, x: torch.Tensor) -> bool:
    """Whether the grid the model passes its solver is computed from its parameters (an ``nn.Parameter``
    end time): dise's solvers take the grid as data, so fine-tuning holds it fixed."""
    if ode.how != "traced":
        return False
    with torch.enable_grad():
        problem = ode.encode(x[:2])
    t = getattr(problem.call, "t", None)
    return isinstance(t, torch.Tensor) and t.requires_grad


@dataclass
class FinetuneResult:
    state: dict[str, torch.Tensor]    # the kept checkpoint
    kept_epoch: int                   # 0: the starting model
    history: list[dict]               # per epoch: losses, training NFE, validation metrics
    settings: FinetuneSettings | None = None   # what it ran with (set by dise_cli.finetune)
    path: Path | None = None                   # where the kept checkpoint was written (ditto)
    validation_size: int = 0                   # samples in the validation data (ditto)
    made_with: dict[str, str] | None = None    # versions and device it ran with (provenance.made_with)
    task: str = "classification"               # what "accuracy" counts: right answers, or Γ ≤ β (regression)


NLL = "nll"      # the model's output is log p(x): minimise its negative mean (maximum likelihood; no labels)


def _negative_log_likelihood(out: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    del y
    return -out.reshape(len(out), -1)[:, 0].mean()


def task_loss(task: str, loss: str | None, threshold: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == NLL:
        return _negative_log_likelihood
    if loss:
        fn = import_object(loss, "--loss")
        if not callable(fn):
            raise UsageError(f"--loss: '{loss}' is not callable")
        return fn
    if task == "classification":
        return _probability_loss if threshold else _classification_loss
    return lambda out, y: F.mse_loss(out, y.to(out.dtype).reshape(out.shape) if y.numel() == out.numel() else y)


def _probability_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on a single output that is a probability (a final sigmoid)."""
    p = out.reshape(len(out))
    return F.binary_cross_entropy(p.clamp(0.0, 1.0), y.to(p.dtype))


def _classification_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; binary cross-entropy on the logit of a single-logit classifier."""
    if is_single_logit(out):
        return F.binary_cross_entropy_with_logits(out.reshape(len(out)), y.to(out.dtype))
    return F.cross_entropy(out, y.long())


def regulariser(ode: OdeModel, reg: str, solution, n: int) -> torch.Tensor:
    if reg in ("err", "err-dt"):
        return solution.step_errors.per_sample(n, weight_by_dt=reg == "err-dt").sum() / n
    if reg == "kinetic":
        return solution.step_errors.kinetic_per_sample(n).sum() / n
    params = [p for m in ode.func_modules for p in m.parameters() if p.requires_grad]
    if reg == "l1":
        return sum(p.abs().sum() for p in params)
    if reg == "l2":
        return sum(p.pow(2).sum() for p in params)
    return torch.zeros(())


@torch.no_grad()
def validate(ode: OdeModel, data: Dataset, judge: Judge, solver: EmbeddedRK, device: torch.device,
             batch_size: int) -> dict:
    """Accuracy (or share within β and mean Γ) and DOPRI5's mean NFE on ``data``."""
    ode.module.eval()
    run = profile_candidates(ode, data, [solver], judge, rows=torch.arange(len(data)), batch_size=batch_size,
                             device=device, baseline=0)
    row = summarize(run.profile)["candidates"][0]
    out = {"accuracy": row["accuracy"], "nfe_mean": row["nfe"]["mean"], "state_rms": state_rms(ode, data, device, batch_size)}
    if judge.task == "classification":
        out["auc"] = row.get("auc")
    if judge.task == "regression":
        out["mean_error"] = row["mean_error"]
    return out


def validate_density(ode: OdeModel, data: Dataset, solver: EmbeddedRK, device: torch.device,
                     batch_size: int) -> dict:
    """NLP (nats; the model's output is log p(x)), the solver's mean NFE and h(0)'s RMS on ``data``."""
    ode.module.eval()
    log_p, nfe = [], []
    for i in range(0, len(data), batch_size):
        solved = []

        def solve(p, solved=solved):
            solved.append(solver.solve(p.field, p.h0, p.t))
            return solved[-1].ys
        with torch.no_grad():
            out = ode.forward_with(data.x[i:i + batch_size].to(device), solve)
        log_p.append(out.reshape(len(out), -1)[:, 0].double().cpu())
        nfe.append(solved[0].nfe.double().cpu() + ode.calls_after_solve)
    v = torch.cat(log_p)
    v = v[torch.isfinite(v)]
    return {"nlp": float(-v.mean()) if len(v) else float("inf"), "nfe_mean": float(torch.cat(nfe).mean()),
            "state_rms": state_rms(ode, data, device, batch_size)}


@torch.no_grad()
def state_rms(ode: OdeModel, data: Dataset, device: torch.device, batch_size: int) -> float:
    """The root mean square of h(0) over ``data``: DOPRI5 tolerates an error of atol + rtol·|h| per
    element, so a fine-tune that shrinks or grows the state changes how strict that tolerance is."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        h0 = ode.encode(data.x[i:i + batch_size].to(device)).h0.double()
        total += float(h0.pow(2).sum())
        count += h0.numel()
    return (total / max(count, 1)) ** 0.5


def scale_change(result: "FinetuneResult") -> float | None:
    """How many times h(0)'s RMS grew (or, below 1, shrank) from the start to the kept checkpoint."""
    start, kept = (result.history[e]["validation"]["state_rms"] for e in (0, result.kept_epoch))
    return kept / start if start else None


def finetune(ode: OdeModel, train: Dataset, val: Dataset, settings: FinetuneSettings, device: torch.device,
             task: Task | str, progress: Callable[[dict], None] | None = None,
             solver: EmbeddedRK | None = None) -> FinetuneResult:
    """Fine-tune ``ode.module`` in place of its checkpoints; ``solver`` (default: DOPRI5 at the settings'
    tolerances; any adaptive method: R_err is its own error estimate) is the solve trained through and
    validated with."""
    settings.check()
    task = task if isinstance(task, Task) else Task(task)
    density = settings.loss == NLL
    if train.y is None and not density:
        raise InputError(f"data '{train.name}' has no labels (key 'y' or --y-key); fine-tuning needs targets "
                         f"(or --loss nll for a density, whose output is log p(x))")
    if val.y is None and not density:
        raise InputError(f"validation data '{val.name}' has no labels; fine-tuning needs targets to validate")
    solver = solver or Dopri5(rtol=settings.rtol, atol=settings.atol)
    with torch.no_grad():
        sample = ode.forward_with(train.x[:2].to(device), lambda p: solver.solve(p.field, p.h0, p.t).ys)
    if not density:
        check_labels(task.name, train.y, sample, train.name)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    judge = task.judge()
    loss_fn = task_loss(task.name, settings.loss, task.threshold)
    module = ode.module
    targets = None if density else targets_batch_major(train.y, len(train), len(ode.t_span), None, train.name)
    check = (lambda: validate_density(ode, val, solver, device, settings.batch_size)) if density else \
        (lambda: validate(ode, val, judge, solver, device, settings.batch_size))
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=settings.lr)
    steps = settings.epochs * -(-len(train) // settings.batch_size)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if settings.schedule == "cosine"
             else None)
    record = settings.reg in ("err", "err-dt", "kinetic")

    start = check()
    history = [{"epoch": 0, "validation": start}]
    best_state, best_epoch, best_nfe = copy.deepcopy(module.state_dict()), 0, start["nfe_mean"]
    for epoch in range(1, settings.epochs + 1):
        module.train()
        perm = torch.randperm(len(train), generator=gen)
        sums = {"loss": 0.0, "task_loss": 0.0, "reg": 0.0, "train_nfe": 0.0}
        for i in range(0, len(perm), settings.batch_size):
            idx = perm[i:i + settings.batch_size]
            x = train.x[idx].to(device)
            y = None if targets is None else targets[idx].to(device)
            solved = []

            def solve(p, solved=solved):
                solved.append(solver.solve(p.field, p.h0, p.t, record_errors=record))
                return solved[-1].ys

            out = ode.forward_with(x, solve)
            task_value = loss_fn(out, y)
            reg_value = regulariser(ode, settings.reg, solved[0], len(idx)).to(task_value.device)
            loss = task_value + settings.lam * reg_value
            if not loss.requires_grad:
                raise InputError("the model's forward computes its output without gradients (torch.no_grad() or "
                                 "set_grad_enabled(False) around its solve, as flow_matching's ODESolver.sample does "
                                 "by default), so it cannot be fine-tuned through it; fine-tune the model that "
                                 "computes with gradients (e.g. sample(..., enable_grad=True))")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step = {"loss": float(loss.detach()), "task_loss": float(task_value.detach()),
                    "reg": float(reg_value.detach()), "train_nfe": float(solved[0].nfe.double().mean())}
            for key in sums:
                sums[key] += step[key] * len(idx)
            if progress is not None:
                progress({"advance": len(idx), **step})
        val_metrics = check()
        history.append({"epoch": epoch, **{k: v / len(perm) for k, v in sums.items()},
                        "lr": opt.param_groups[0]["lr"], "validation": val_metrics})
        if density:
            within = val_metrics["nlp"] <= start["nlp"] + settings.max_nlp_increase + 1e-12
        else:
            within = val_metrics["accuracy"] >= start["accuracy"] - settings.max_accuracy_drop / 100 - 1e-12
        if within and val_metrics["nfe_mean"] < best_nfe:
            best_state, best_epoch, best_nfe = copy.deepcopy(module.state_dict()), epoch, val_metrics["nfe_mean"]
    module.eval()
    return FinetuneResult(state={k: v.detach().cpu() for k, v in best_state.items()}, kept_epoch=best_epoch,
                          history=history, made_with=made_with(device), task=task.name)
