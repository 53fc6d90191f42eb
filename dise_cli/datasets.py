"""Load the user's data: .pt (weights_only), .safetensors or .npz with x / y (/ t) keys, or a
``--data-factory package.module:fn`` returning tensors or a torch Dataset. Labels are optional."""
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
from dise_cli.loading import pickled_globals

DATA_SUFFIXES = (".pt", ".pth", ".safetensors", ".npz")
INITIAL_STATE_KEYS = ("x", "y0")   # a bare ODE function's data may call its initial states y0


@dataclass(frozen=True)
class DataSpec:
    path: Path | None = None
    factory: str | None = None
    x_key: str | None = None          # None: "x", or "y0" where there is no "x"
    y_key: str | None = None          # None: "y" if present
    t_key: str = "t"
    code_path: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return str(self.path) if self.path else f"--data-factory {self.factory}"


@dataclass
class Dataset:
    """Inputs ``x`` [N, ...], optional targets ``y`` (as stored), optional time grid ``t``."""

    x: torch.Tensor
    y: torch.Tensor | None
    t: torch.Tensor | None
    name: str
    sha256: str

    def __len__(self) -> int:
        return len(self.x)


def load_data(spec: DataSpec) -> Dataset:
    if spec.factory:
        raw = call_factory(spec.factory, "--data-factory", spec.code_path)
        tensors, digest = _from_factory(raw, spec), None
    elif spec.path is not None:
        path = existing_file(spec.path, "data")
        tensors, digest = _read_file(path), sha256_file(path)
    else:
        raise UsageError("--data: no data given; pass --data FILE or --data-factory package.module:fn")
    x, y, t = _pick(tensors, spec)
    if digest is None:
        digest = _tensor_digest(x, y, t)
    return Dataset(x=x, y=y, t=t, name=spec.name, sha256=digest)


def _read_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InputError(f"data '{path}': unknown format '{suffix or '(no suffix)'}'; dise reads "
                         f"{', '.join(DATA_SUFFIXES)} or --data-factory package.module:fn")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        if suffix == ".npz":
            import numpy as np
            with np.load(str(path), allow_pickle=False) as archive:
                return {k: torch.from_numpy(archive[k].copy()) for k in archive.files}
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not pickled_globals(path):
            raise InputError(f"data '{path}' is not a readable {suffix} file") from None
        raise InputError(f"data '{path}' holds pickled Python objects; dise reads only tensors from data "
                         f"files (save a dict of tensors, or use --data-factory)") from None
    except Exception as exc:  # noqa: BLE001 - every reader has its own error types
        raise InputError(f"data '{path}' is not a readable {suffix} file ({first_line(exc)})") from None
    if isinstance(obj, torch.Tensor):
        return {"x": obj}
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2 and all(isinstance(v, torch.Tensor) for v in obj):
        return dict(zip(("x", "y"), obj))
    if isinstance(obj, dict):
        return obj
    raise InputError(f"data '{path}' holds a {type(obj).__name__}; expected a dict of tensors or an (x, y) pair")


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
            raise InputError(f"--data-factory {spec.factory}: the dataset is empty")
        if isinstance(items[0], (tuple, list)):
            columns = list(zip(*items))
            return {"x": torch.stack([torch.as_tensor(v) for v in columns[0]]),
                    **({"y": torch.stack([torch.as_tensor(v) for v in columns[1]])} if len(columns) > 1 else {})}
        return {"x": torch.stack([torch.as_tensor(v) for v in items])}
    raise UsageError(f"--data-factory: '{spec.factory}()' returned a {type(raw).__name__}; return tensors "
                     f"(x, y), a dict of tensors, or a torch Dataset")


def _pick(tensors: dict[str, Any], spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    keys = ", ".join(sorted(map(str, tensors))) or "none"
    if spec.x_key is not None:
        if spec.x_key not in tensors:
            raise InputError(f"data '{spec.name}' has no key '{spec.x_key}' (--x-key); keys: {keys}")
        x_key = spec.x_key
    else:
        found = [k for k in INITIAL_STATE_KEYS if k in tensors]
        if not found:
            raise InputError(f"data '{spec.name}' has no key 'x' (keys: {keys}); name the inputs with --x-key")
        x_key = found[0]
    x = _tensor(tensors[x_key], spec, x_key)
    if x.ndim < 1 or len(x) == 0:
        raise InputError(f"data '{spec.name}': '{x_key}' holds no samples (shape {tuple(x.shape)})")
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"data '{spec.name}': '{x_key}' has dtype {x.dtype}; expected a real number type")
    y = None
    y_key = spec.y_key if spec.y_key is not None else "y"
    if y_key in tensors and y_key != x_key:
        y = _tensor(tensors[y_key], spec, y_key)
    elif spec.y_key is not None:
        raise InputError(f"data '{spec.name}' has no key '{spec.y_key}' (--y-key); keys: {keys}")
    t = _tensor(tensors[spec.t_key], spec, spec.t_key) if spec.t_key in tensors else None
    if t is not None and (t.ndim != 1 or len(t) < 2):
        raise InputError(f"data '{spec.name}': time grid '{spec.t_key}' must be 1-D with at least 2 points, "
                         f"got shape {tuple(t.shape)}")
    if y is not None and y.ndim == 0:
        raise InputError(f"data '{spec.name}': '{y_key}' is a scalar; expected one target per sample")
    if y is not None and len(y) != len(x) and not (y.ndim >= 2 and y.shape[1] == len(x)):
        raise InputError(f"data '{spec.name}': '{x_key}' has {len(x)} samples but '{y_key}' has shape "
                         f"{tuple(y.shape)}")
    return x, y, t


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
