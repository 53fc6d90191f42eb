"""What the paper-table scripts share: a sample's model opened on one of its splits, and mean ± std."""
from __future__ import annotations

import statistics
from pathlib import Path

from dise_cli.pipeline import Opened, open_inputs
from dise_cli.sources import ModelOptions, model_inputs, project_config


def opened(sample: Path, model: Path | str, split: str, device: str) -> Opened:
    """``model`` (a weights file) read with ``sample``'s dise.yaml, on ``sample/<split>.safetensors``."""
    project = sample / "dise.yaml"
    source = ModelOptions(model=str(model), config=str(project), data=str(sample / f"{split}.safetensors"),
                          device=device)
    return open_inputs(model_inputs(source, project_config(source)))


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {sd:.2g}"
