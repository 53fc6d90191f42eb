"""What the benchmark scripts share: a sample's model opened on one of its splits, the routed bundle
timed against the model as written, and mean ± std."""
from __future__ import annotations

import statistics
from pathlib import Path

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
