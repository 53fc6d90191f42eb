"""What the benchmark scripts share: a sample's model opened on one of its splits, the paper-table
protocol (fine-tune with each regulariser, then DISE over selector seeds on two of the models), the
routed bundle timed against the model as written, and mean ± std."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

import dise_cli
from dise_cli.clock import alternating_medians
from dise_cli.pipeline import Opened, open_inputs
from dise_cli.sources import ModelOptions, model_inputs, project_config


def opened(sample: Path, model: Path | str, split: str, device: str, project: str = "dise.yaml") -> Opened:
    """``model`` (a weights file) read with ``sample``'s project file, on ``sample/<split>.safetensors``."""
    source = ModelOptions(model=str(model), config=str(sample / project), data=str(sample / f"{split}.safetensors"),
                          device=device)
    return open_inputs(model_inputs(source, project_config(source)))


DISE_ROWS = (("No reg. & DISE", "none"), ("Our reg. & DISE", "err"))   # the paper's two DISE rows


def regulariser_rows(sample: Path, regularisers: list[tuple[str, str, float]], folder: Path,
                     measure: Callable[[Path], dict], describe: Callable[[dict], str],
                     **finetune) -> tuple[list[dict], dict[str, Path]]:
    """From ``sample``'s shipped weights, ``dise finetune`` on its training split with each (label, reg, λ)
    (seed 0; ``finetune``: the protocol's other settings), each kept checkpoint measured by ``measure``.
    Returns the rows and the fine-tuned weights by regulariser."""
    rows, models = [], {}
    for label, reg, lam in regularisers:
        out = folder / f"{reg}.safetensors"
        result = dise_cli.finetune(sample / "weights.safetensors", config=str(sample / "dise.yaml"),
                                   data=str(sample / "train.safetensors"), out=out, reg=reg, lam=lam, seed=0, **finetune)
        models[reg] = out
        metrics = measure(out)
        rows.append({"model": label, "reg": reg, "lam": lam, "kept_epoch": result.kept_epoch, **metrics})
        print(f"{label}: {describe(metrics)} (kept epoch {result.kept_epoch})", file=sys.stderr, flush=True)
    return rows, models


def dise_rows(models: dict[str, Path], run: Callable[[Path], list[dict]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """The paper's DISE rows: ``run(weights)`` (one result per selector seed) on the unregularised and the
    R_err model. Returns the rows and the seeds' results by row label."""
    rows, selections = [], {}
    for label, reg in DISE_ROWS:
        selections[label] = run(models[reg])
        rows.append({"model": label, "reg": reg, "seeds": selections[label]})
    return rows, selections


@torch.no_grad()
def time_against_own(bundle: Path, model: Opened, batch: int, repeats: int = 5) -> dict:
    """Median seconds for one batch of ``batch`` samples of ``model``'s data through the routed bundle
    and through the model as written (its forward with its own solver, e.g. torchdiffeq's batched
    odeint), the two alternating so that both see the same machine load; the first round is warm-up."""
    routed = dise_cli.load(bundle, device=model.device)
    rows = torch.arange(batch) % len(model.data)
    x = model.data.x[rows].to(model.device)
    median = alternating_medians({"dise": lambda: routed(x), "own": lambda: model.model.run(x)}, repeats,
                                 model.device)
    return {"batch_size": batch, "seconds": median, "speedup_vs_own": median["own"] / median["dise"]}


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {sd:.2g}"
