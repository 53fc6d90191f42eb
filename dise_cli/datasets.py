"""Load the user's data: .pt (weights_only), .safetensors or .npz with x / y (/ t) keys, or a
``--data-factory package.module:fn`` returning tensors or a torch Dataset. Labels are optional. A
time grid may come along: ``t`` of shape ``[T]`` for every sample, ``[N, T]`` per sample (irregular
series, each row increasing or decreasing), or per-sample end times ``t_end`` ``[N]`` (a grid from 0
to each end time); ``t`` of shape ``[N]`` that is not a monotone grid is read as end times too."""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.files import existing_file, sha256_file
from dise_cli.imports import call_factory
from dise_cli.inputs import InputJoin, key_names
from dise_cli.loading import pickled_globals

DATA_SUFFIXES = (".pt", ".pth", ".safetensors", ".npz")
INITIAL_STATE_KEYS = ("x", "y0")   # a bare ODE function's data may call its initial states y0


@dataclass(frozen=True)
class DataSpec:
    path: Path | None = None
    factory: str | None = None
    x_key: str | None = None          # None: "x", or "y0" where there is no "x"; "noise,labels": several inputs
    y_key: str | None = None          # None: "y" if present
    t_key: str = "t"
    t_end_key: str = "t_end"
    code_path: tuple[str, ...] = field(default_factory=tuple)
    given: Any = None                 # tensors a Python caller passed as data (a dict, an (x, y) pair, x)

    @property
    def name(self) -> str:
        if self.given is not None:
            return "the data given"
        return str(self.path) if self.path else f"--data-factory {self.factory}"


@dataclass
class Dataset:
    """Inputs ``x`` [N, ...], optional targets ``y`` (as stored), optional time grid ``t``. For a model
    of several inputs, ``x`` holds them packed and ``join`` says how (see ``dise_cli.inputs``)."""

    x: torch.Tensor
    y: torch.Tensor | None
    t: torch.Tensor | None
    name: str
    sha256: str
    join: InputJoin | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def per_sample_grid(self) -> bool:
        """Every sample has its own time grid (``t`` is ``[N, T]``)."""
        return self.t is not None and self.t.ndim == 2

    def inputs_of(self, rows: torch.Tensor) -> "Dataset":
        """The inputs (and per-sample grids) of ``rows`` alone, without targets: a shard to run."""
        return Dataset(x=self.x[rows], y=None, t=self.t[rows] if self.per_sample_grid else self.t,
                       name=self.name, sha256=self.sha256, join=self.join)

    def grids(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The time grids of ``rows`` ``[n, T]`` float64, or None where the grid is not per sample."""
        return self.t[rows].to(torch.float64) if self.per_sample_grid else None


def load_data(spec: DataSpec) -> Dataset:
    if spec.given is not None:
        tensors, digest = _from_factory(spec.given, spec), None
    elif spec.factory:
        raw = call_factory(spec.factory, "--data-factory", spec.code_path)
        tensors, digest = _from_factory(raw, spec), None
    elif spec.path is not None:
        path = existing_file(spec.path, "data")
        tensors, digest = read_tensor_file(path), sha256_file(path)
    else:
        raise UsageError("--data: no data given; pass --data FILE or --data-factory package.module:fn")
    x, y, t, join = _pick(tensors, spec)
    if digest is None:
        digest = _tensor_digest(x, y, t)
    return Dataset(x=x, y=y, t=t, name=spec.name, sha256=digest, join=join)


def read_tensor_file(path: Path, what: str = "data") -> dict[str, Any]:
    """The tensors of a .pt (weights_only), .safetensors or .npz file, by key; ``what`` names the file in
    errors (``data``, ``--figure-data``)."""
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InputError(f"{what} '{path}': unknown format '{suffix or '(no suffix)'}'; dise reads "
                         f"{', '.join(DATA_SUFFIXES)} or --data-factory package.module:fn")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        if suffix == ".npz":
            import numpy as np
            # our own handle: numpy leaves the file open when it is not a whole zip archive
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
                return {k: torch.from_numpy(archive[k].copy()) for k in archive.files}
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not pickled_globals(path):
            raise InputError(f"{what} '{path}' is not a readable {suffix} file") from None
        raise InputError(f"{what} '{path}' holds pickled Python objects; dise reads only tensors from data "
                         f"files (save a dict of tensors, or use --data-factory)") from None
    except Exception as exc:  # noqa: BLE001 - every reader has its own error types
        raise InputError(f"{what} '{path}' is not a readable {suffix} file ({first_line(exc)})") from None
    if isinstance(obj, torch.Tensor):
        return {"x": obj}
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2 and all(isinstance(v, torch.Tensor) for v in obj):
        return dict(zip(("x", "y"), obj))
    if isinstance(obj, dict):
        return obj
    raise InputError(f"{what} '{path}' holds a {type(obj).__name__}; expected a dict of tensors or an (x, y) pair")


def _from_factory(raw: Any, spec: DataSpec) -> dict[str, Any]:
    if isinstance(raw, torch.Tensor):
        return {"x": raw}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (tuple, list)) and 1 <= len(raw) <= 2 and all(isinstance(v, torch.Tensor) for v in raw):
        return dict(zip(("x", "y"), raw))
    if hasattr(raw, "__getitem__") and hasattr(raw, "__len__"):   # a torch.utils.data.Dataset
        items = [raw[i] for i in range(len(raw))]
        if not items:
            raise InputError(f"{spec.name}: the dataset is empty")
        if isinstance(items[0], dict):                # {"noise": ..., "labels": ...} per item: keys as in a file
            return {k: _stacked(item[k] for item in items) for k in items[0]}
        if isinstance(items[0], (tuple, list)):
            columns = list(zip(*items))
            out = {"y": _stacked(columns[1])} if len(columns) > 1 else {}
            if isinstance(columns[0][0], (tuple, list)):      # ((noise, labels), y): the inputs x0, x1, ...
                return {**{f"x{i}": _stacked(c) for i, c in enumerate(zip(*columns[0]))}, **out}
            return {"x": _stacked(columns[0]), **out}
        return {"x": _stacked(items)}
    what = "data: Python callers pass" if spec.given is not None else f"--data-factory: '{spec.factory}()' returned"
    raise UsageError(f"{what} a {type(raw).__name__}; give tensors (x, y), a dict of tensors, or a torch Dataset")


def _stacked(values) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v) for v in values])


def _pick(tensors: dict[str, Any], spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None,
                                                            InputJoin | None]:
    keys = ", ".join(sorted(map(str, tensors))) or "none"
    x_key = spec.x_key
    if x_key is None and spec.factory and "x" not in tensors and "x1" in tensors:    # a Dataset of ((a, b), y)
        count = 0
        while f"x{count}" in tensors:
            count += 1
        x_key = ",".join(f"x{i}" for i in range(count))
    names = key_names(x_key)
    join = None
    if names is not None:
        missing = [k for k in names if k not in tensors]
        if missing:
            raise InputError(f"data '{spec.name}' has no key '{missing[0]}' (--x-key); keys: {keys}")
        join, x = InputJoin.join([_tensor(tensors[k], spec, k) for k in names], names, spec.name)
        x_key = names[0]
    elif spec.x_key is not None:
        if spec.x_key not in tensors:
            raise InputError(f"data '{spec.name}' has no key '{spec.x_key}' (--x-key); keys: {keys}")
        x_key = spec.x_key
    else:
        found = [k for k in INITIAL_STATE_KEYS if k in tensors]
        if not found:
            raise InputError(f"data '{spec.name}' has no key 'x' (keys: {keys}); name the inputs with --x-key")
        x_key = found[0]
    if join is None:
        x = _tensor(tensors[x_key], spec, x_key)
    if x.ndim < 1 or len(x) == 0:
        raise InputError(f"data '{spec.name}': '{x_key}' holds no samples (shape {tuple(x.shape)})")
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"data '{spec.name}': '{x_key}' has dtype {x.dtype}; expected a real number type")
    y = None
    y_key = spec.y_key if spec.y_key is not None else "y"
    if y_key in tensors and y_key not in (names or (x_key,)):
        y = _tensor(tensors[y_key], spec, y_key)
    elif spec.y_key is not None:
        raise InputError(f"data '{spec.name}' has no key '{spec.y_key}' (--y-key); keys: {keys}")
    t = _grid({k: v for k, v in tensors.items() if k not in (names or ())}, spec, len(x))   # an input is no grid
    if y is not None and y.ndim == 0:
        raise InputError(f"data '{spec.name}': '{y_key}' is a scalar; expected one target per sample")
    if y is not None and len(y) != len(x) and not (y.ndim >= 2 and y.shape[1] == len(x)):
        raise InputError(f"data '{spec.name}': '{x_key}' has {len(x)} samples but '{y_key}' has shape "
                         f"{tuple(y.shape)}")
    return x, y, t, join


def _grid(tensors: dict[str, Any], spec: DataSpec, n: int) -> torch.Tensor | None:
    """The data's time grid: ``[T]``, or ``[N, T]`` (end times become ``[0, t_end]`` per sample)."""
    key = spec.t_key if spec.t_key in tensors else spec.t_end_key if spec.t_end_key in tensors else None
    if key is None:
        return None
    t = _tensor(tensors[key], spec, key)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    ends = key == spec.t_end_key or (t.ndim == 1 and len(t) == n and not _monotone(t))
    if key == spec.t_key and t.ndim == 1 and len(t) == n and n > 1 and _monotone(t):
        raise InputError(f"data '{spec.name}': '{key}' has one value per sample ({n}) and is monotone: is it one "
                         f"grid of {n} times or an end time per sample? Save end times under '{spec.t_end_key}', or "
                         f"the grid with another length")
    if ends:
        if t.ndim != 1 or len(t) != n:
            raise InputError(f"data '{spec.name}': end times '{key}' must be [N] = [{n}], got shape {tuple(t.shape)}")
        if not bool((t != 0).all()):
            raise InputError(f"data '{spec.name}': end times '{key}' must not be 0 (the grid runs from 0 to each)")
        return torch.stack([torch.zeros_like(t), t], dim=1)
    if t.ndim == 1 and len(t) >= 2 and _monotone(t):
        return t
    if t.ndim == 2 and len(t) == n and t.shape[1] >= 2 and all(_monotone(row) for row in t):
        steps = t[:, 1:] - t[:, :-1]
        if not (bool((steps > 0).all()) or bool((steps < 0).all())):
            raise InputError(f"data '{spec.name}': the grids in '{key}' run in different directions; every "
                             f"sample's grid must run the same way")
        return t
    raise InputError(f"data '{spec.name}': time grid '{key}' must be [T] (T >= 2) or [N, T] with N = {n}, each "
                     f"strictly increasing or decreasing; got shape {tuple(t.shape)}")


def _monotone(t: torch.Tensor) -> bool:
    steps = t[1:] - t[:-1]
    return len(t) >= 2 and (bool((steps > 0).all()) or bool((steps < 0).all()))


def _tensor(value: Any, spec: DataSpec, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except Exception:  # noqa: BLE001
        raise InputError(f"data '{spec.name}': '{key}' is a {type(value).__name__}, not a tensor") from None


def _tensor_digest(*tensors: torch.Tensor | None) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(str((tuple(t.shape), str(t.dtype))).encode())
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                          if t.numel() else b"")
    return digest.hexdigest()
