"""Settings: flags and a dise.yaml project file merged into one frozen dataclass per command.

Flags win over the file; paths in the file are relative to the file's folder; unknown keys are
errors that list the valid ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dise_cli.errors import InputError, UsageError
from dise_cli.files import existing_file

PATH_KEYS = ("model", "data", "code_path", "figure_data")
PROJECT_KEYS = {
    "model": "MODEL file", "arch": "package.module:factory", "trust_pickle": "bool", "state_key": "str", "output_key": "str",
    "code_path": "folder or list of folders", "ode_block": "dotted module path", "solve": "int",
    "t_span": "list of times",
    "data": "data file", "data_factory": "package.module:fn", "x_key": "str, or a list for several inputs", "y_key": "str",
    "task": "classification|regression", "metric": "mse|mae|l2|package.module:fn", "time_major": "bool",
    "figure": "nlp|energy", "figure_data": "data file of held-out samples (figure: energy)",
    "candidates": "candidate specs", "batch_size": "int", "device": "auto|cpu|cuda", "seed": "int",
    "limit": "int",
}
PROJECT_SUFFIXES = (".yaml", ".yml")


def is_project_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PROJECT_SUFFIXES


def read_project(path: str | Path) -> dict[str, Any]:
    """Read a dise.yaml; relative paths become relative to its folder."""
    import yaml
    p = existing_file(path, "config")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"config '{p}' is not UTF-8 text (a YAML file was expected)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"config '{p}' is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"config '{p}' must be a mapping of option: value")
    unknown = [k for k in raw if k not in PROJECT_KEYS]
    if unknown:
        raise InputError(f"config '{p}': unknown key '{unknown[0]}'; valid keys: {', '.join(PROJECT_KEYS)}")
    base = p.parent
    out = dict(raw)
    for key in PATH_KEYS:
        if key in out and out[key] is not None:
            values = out[key] if isinstance(out[key], list) else [out[key]]
            resolved = [str((base / str(v)).resolve()) if not Path(str(v)).is_absolute() else str(v) for v in values]
            out[key] = resolved if key == "code_path" else resolved[0]
    if "code_path" in out and isinstance(out["code_path"], str):
        out["code_path"] = [out["code_path"]]
    return out


def parse_t_span(value: Any, flag: str = "--t-span") -> torch.Tensor | None:
    """``"0,1"`` or ``[0, 0.5, 1]`` -> a strictly monotone float64 grid of at least two points."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        grid = torch.tensor([float(v) for v in items], dtype=torch.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: '{value}' is not a comma-separated list of numbers, e.g. 0,1") from None
    if len(grid) < 2:
        raise UsageError(f"{flag}: needs at least two times, e.g. 0,1")
    steps = grid[1:] - grid[:-1]
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise UsageError(f"{flag}: times must be strictly increasing or decreasing, got {grid.tolist()}")
    return grid


def resolve_device(value: str | None, flag: str = "--device") -> torch.device:
    name = (value or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {value}: no CUDA GPU is available here; use --device cpu or auto")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UsageError(f"{flag}: '{value}' is not a device; use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {value}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise UsageError(f"{flag}: unknown device '{value}'; use auto, cpu, cuda or cuda:N")


def positive_int(value: Any, flag: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: '{value}' is not an integer") from None
    if number < 1:
        raise UsageError(f"{flag}: must be at least 1, got {number}")
    return number
