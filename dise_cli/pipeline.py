"""Glue shared by the commands: settings from flags and dise.yaml -> a loaded, probed model and data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dise_cli.config import is_project_file, parse_t_span, pick, read_project, resolve_device
from dise_cli.datasets import Dataset, DataSpec, load_data
from dise_cli.errors import UsageError
from dise_cli.integrators import Integrator
from dise_cli.judging import Judge, check_labels, detect_task
from dise_cli.loading import LoadedModel, ModelSpec, load_model
from dise_cli.odeblock import OdeModel, probe, split_model
from dise_cli.profiling import DEFAULT_REFERENCE, ProfileRun, profile_candidates


@dataclass(frozen=True)
class Inputs:
    """What identifies the model and data of a command, validated before anything loads."""

    model: ModelSpec
    data: DataSpec | None
    ode_block: str | None
    t_span: tuple[float, ...] | None
    device: torch.device


@dataclass
class Opened:
    loaded: LoadedModel
    data: Dataset | None
    model: OdeModel
    device: torch.device


def read_config(model_arg: str, config_flag: str | None) -> tuple[dict[str, Any], str | None]:
    """The merged project settings, and the model path (None when the project file must name it)."""
    config: dict[str, Any] = {}
    if config_flag:
        config.update(read_project(config_flag))
    if is_project_file(model_arg):
        config.update(read_project(model_arg))
        return config, None
    return config, model_arg


def make_inputs(model_arg: str, config: dict[str, Any], model_path: str | None, *, arch: str | None,
                trust_pickle: bool | None, code_path: list[str] | None, ode_block: str | None,
                t_span: str | None, data: str | None, data_factory: str | None, x_key: str | None,
                y_key: str | None, device: str | None) -> Inputs:
    path = model_path or config.get("model")
    if not path:
        raise UsageError(f"MODEL: project file '{model_arg}' has no 'model' key")
    paths = tuple(code_path or ()) + tuple(config.get("code_path") or ())
    grid = parse_t_span(t_span) if t_span is not None else parse_t_span(config.get("t_span"), "t_span in config")
    if data is not None or data_factory is not None:      # flags win over the file, as a pair
        data_path, factory = data, data_factory
    else:
        data_path, factory = config.get("data"), config.get("data_factory")
    if data_path and factory:
        raise UsageError("--data and --data-factory (or data and data_factory in the config): give one")
    data_spec = None
    if data_path or factory:
        data_spec = DataSpec(path=Path(data_path) if data_path else None,
                             factory=factory, x_key=pick(x_key, config, "x_key"),
                             y_key=pick(y_key, config, "y_key"), code_path=paths)
    return Inputs(
        model=ModelSpec(path=Path(path), arch=pick(arch, config, "arch"),
                        trust_pickle=bool(pick(trust_pickle, config, "trust_pickle", False)), code_path=paths),
        data=data_spec,
        ode_block=pick(ode_block, config, "ode_block"),
        t_span=None if grid is None else tuple(grid.tolist()),
        device=resolve_device(pick(device, config, "device")),
    )


def open_inputs(inputs: Inputs, *, need_data: bool = True) -> Opened:
    """Load model and data, find the ODE block, and probe it on a few samples."""
    if need_data and inputs.data is None:
        raise UsageError("--data: this command needs data; pass --data FILE or --data-factory package.module:fn")
    loaded = load_model(inputs.model)
    data = load_data(inputs.data) if inputs.data is not None else None
    module = loaded.module.to(inputs.device)
    grid = None if inputs.t_span is None else torch.tensor(inputs.t_span, dtype=torch.float64)
    model = split_model(module, ode_block=inputs.ode_block, t_span=grid,
                        data_t=None if data is None else data.t, model_name=f"model '{inputs.model.path}'")
    if data is not None:
        probe(model, data.x[:4].to(inputs.device), data.name)
    return Opened(loaded=loaded, data=data, model=model, device=inputs.device)


def profile_model(opened: Opened, candidates: list[Integrator], *, rows: torch.Tensor, batch_size: int,
                  task: str | None = None, metric: str = "mse", time_major: bool | None = None, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> ProfileRun:
    """``dise profile`` as a function: choose the task (labels' dtype unless given), judge every
    candidate on ``rows`` of the data, and stamp the profile with what produced it."""
    ode, data, device = opened.model, opened.data, opened.device
    with torch.no_grad():
        sample = ode.forward_with(data.x[:2].to(device),
                                  lambda h: candidates[0].solve(ode.field, h, ode.t_span.to(device)).ys)
    if task is None:
        task = detect_task(data.y, sample, has_decoder=ode.kind in ("sequential", "nested"))
    check_labels(task, data.y, sample, data.name)
    judge = Judge(task, metric)
    torch.manual_seed(seed)
    run = profile_candidates(ode, data, candidates, judge, rows=rows, batch_size=batch_size, device=device,
                             time_major=time_major, progress=progress)
    spec = opened.loaded.spec
    run.profile.meta.update({
        "model_sha256": opened.loaded.sha256, "data_sha256": data.sha256,
        "model": str(spec.path), "data": data.name, "arch": spec.arch or "", "ode_block": ode.block_path,
        "labels": "data" if data.y is not None else f"reference:{DEFAULT_REFERENCE.spec}",
        "metric": judge.metric_name if task == "regression" else "", "seed": str(seed),
    })
    return run
