"""What a command reads, from wherever it was said: the model and data options (flags, a dise.yaml
project file, or a Python caller's arguments) merged once into validated ``Inputs``, and each
command's settings dataclass filled from the same places (given > project file > the dataclass's
own default, which is the only place a default is written)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch

from dise_cli.config import PROJECT_KEYS, is_project_file, parse_t_span, read_project, resolve_device
from dise_cli.datasets import DataSpec
from dise_cli.errors import UsageError
from dise_cli.loading import ModelSpec

S = TypeVar("S")


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """Where the data comes from, and the options every command that reads data shares."""

    data: Any = None                    # .pt, .safetensors or .npz file; from Python also tensors (a dict, (x, y), x)
    data_factory: str | None = None     # package.module:fn returning tensors or a Dataset
    x_key: str | None = None
    y_key: str | None = None
    code_path: tuple[str, ...] = ()     # folders to import user code from
    device: str | None = None           # auto, cpu, cuda, cuda:N
    config: str | None = None           # a dise.yaml whose keys fill in what is not given


@dataclass(frozen=True, kw_only=True)
class ModelOptions(DataOptions):
    """The model (a file, or a dise.yaml that names it), how to rebuild it and which solve to route."""

    model: str
    arch: str | None = None             # package.module:factory for a state dict
    trust_pickle: bool | None = None
    state_key: str | None = None        # the state dict to load from a checkpoint holding several
    ode_block: str | None = None
    solve: int | None = None
    t_span: str | tuple[float, ...] | None = None
    output_key: str | None = None       # the output dise judges, of a forward returning a dict or tuple


@dataclass(frozen=True)
class Inputs:
    """What identifies the model and data of a command, validated before anything loads."""

    model: ModelSpec
    data: DataSpec | None
    ode_block: str | None
    t_span: tuple[float, ...] | None
    device: torch.device
    solve: int | None = None
    output_key: str | None = None


def options_from(cls: type[S], given: Mapping[str, Any], base: S | None = None, **fixed: Any) -> tuple[S, dict[str, Any]]:
    """Split keyword arguments into ``cls`` (an options dataclass, on top of ``base`` if given, with
    ``fixed`` fields) and the rest; ``code_path`` may be one folder or a list."""
    names = {f.name for f in dataclasses.fields(cls)}
    mine = {k: v for k, v in given.items() if k in names and v is not None}
    if isinstance(mine.get("code_path"), (str, Path)):
        mine["code_path"] = (str(mine["code_path"]),)
    elif "code_path" in mine:
        mine["code_path"] = tuple(str(p) for p in mine["code_path"])
    mine.update(fixed)
    options = dataclasses.replace(base, **mine) if base is not None else cls(**mine)
    return options, {k: v for k, v in given.items() if k not in names}


def project_config(options: DataOptions) -> dict[str, Any]:
    """The merged project settings: ``--config`` first, then a dise.yaml given as MODEL on top."""
    config: dict[str, Any] = {}
    if options.config:
        config.update(read_project(options.config))
    model = getattr(options, "model", None)
    if model is not None and is_project_file(model):
        config.update(read_project(model))
    return config


def settings_from(cls: type[S], given: Mapping[str, Any], config: Mapping[str, Any]) -> S:
    """``cls`` with each field from ``given`` when not None, else from the project file where it has
    that key, else the dataclass's default; ``check()`` runs when the class has one."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"unknown setting '{unknown[0]}'; valid: {', '.join(sorted(names))}")
    values = {}
    for name in names:
        if given.get(name) is not None:
            values[name] = given[name]
        elif name in PROJECT_KEYS and config.get(name) is not None:
            values[name] = config[name]
    settings = cls(**values)
    check = getattr(settings, "check", None)
    if check is not None:
        check()
    return settings


def data_spec(options: DataOptions, config: Mapping[str, Any]) -> DataSpec | None:
    """The data to read (flags win over the file, as a pair), or None when neither names any."""
    if options.data is not None or options.data_factory is not None:
        path, factory = options.data, options.data_factory
    else:
        path, factory = config.get("data"), config.get("data_factory")
    x_key = _given(options.x_key, config, "x_key")
    if isinstance(x_key, (list, tuple)):              # dise.yaml: x_key: [noise, labels]
        x_key = ",".join(map(str, x_key))
    if path is not None and not isinstance(path, (str, Path)):       # tensors from a Python caller
        if factory:
            raise UsageError("data and data_factory: give one")
        return DataSpec(given=path, x_key=x_key, y_key=_given(options.y_key, config, "y_key"),
                        code_path=code_paths(options, config))
    if path and factory:
        raise UsageError("--data and --data-factory (or data and data_factory in the config): give one")
    if not (path or factory):
        return None
    return DataSpec(path=Path(path) if path else None, factory=factory,
                    x_key=x_key, y_key=_given(options.y_key, config, "y_key"),
                    code_path=code_paths(options, config))


def code_paths(options: DataOptions, config: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(options.code_path) + tuple(config.get("code_path") or ())


def device_of(options: DataOptions, config: Mapping[str, Any]) -> torch.device:
    return resolve_device(_given(options.device, config, "device"))


def model_inputs(options: ModelOptions, config: Mapping[str, Any], *, with_data: bool = True) -> Inputs:
    """The validated ``Inputs`` of a command that reads a model (and, ``with_data``, its data)."""
    model = options.model
    path = config.get("model") if is_project_file(model) else model
    if not path:
        raise UsageError(f"MODEL: project file '{model}' has no 'model' key")
    if options.t_span is not None:
        grid = parse_t_span(options.t_span)
    else:
        grid = parse_t_span(config.get("t_span"), "t_span in config")
    return Inputs(
        model=ModelSpec(path=Path(path), arch=_given(options.arch, config, "arch"),
                        trust_pickle=bool(_given(options.trust_pickle, config, "trust_pickle") or False),
                        state_key=_given(options.state_key, config, "state_key"),
                        code_path=code_paths(options, config)),
        data=data_spec(options, config) if with_data else None,
        ode_block=_given(options.ode_block, config, "ode_block"),
        t_span=None if grid is None else tuple(grid.tolist()),
        device=device_of(options, config),
        solve=_given(options.solve, config, "solve"),
        output_key=_output_key(_given(options.output_key, config, "output_key")),
    )


def _output_key(value: Any) -> str | None:
    return None if value is None else str(value)        # dise.yaml may give an index as a number


def _given(value: Any, config: Mapping[str, Any], key: str) -> Any:
    return value if value is not None else config.get(key)
