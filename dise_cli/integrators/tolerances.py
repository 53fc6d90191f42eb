"""Tolerances of the adaptive methods: one number, or one per element of a sample's state.

torchdiffeq takes ``rtol`` and ``atol`` as a float, a tensor that broadcasts against the state
(``atol=torch.tensor([1e-6, 1e-3])`` for a state ``[N, 2]``), or, for a tuple state, one value per
component (FFJORD's ``atol=[1e-5, 1e-5] + [1e20] * len(reg_states)`` leaves its regularisation
states out of step control). A value per element is kept as ``PerElement``: the tolerance of every
element of one sample's state, flattened (a tuple's components side by side, as dise packs them).
Its text in a candidate spec runs equal values together: ``atol=1e-05x2/1e+20x3``.

The numbers are torchdiffeq's own: a tuple's per-component Python floats become tensors of the
default dtype (float32) before the solver widens them to float64, so 1e-5 there is
9.99999974737875e-06, and dise keeps that value (written ``1e-05f``). A tolerance with elements, even equal ones, is
applied as a float64 tensor with dimensions, as torchdiffeq applies it: the error ratio of a float32
state is then computed in float64, where a scalar tolerance keeps it in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy
import torch

from dise_cli.errors import InputError


def number_text(value: float) -> str:
    """Text that reads back as the very float: ``%g`` where it does; for a float32 number (a tolerance
    torchdiffeq made a float32 tensor) its shortest float32 text and ``f`` (``1e-05f``); else the
    shortest float64 text."""
    short = f"{value:g}"
    if float(short) == value:
        return short
    single = numpy.float32(value)
    if float(single) == value and numpy.isfinite(single):
        return f"{str(single)}f"
    return repr(float(value))


def number(text: str) -> float:
    """The float ``number_text`` wrote."""
    text = text.strip()
    if text.endswith("f"):
        return float(numpy.float32(float(text[:-1])))
    return float(text)


@dataclass(frozen=True)
class PerElement:
    """A tolerance for each element of one sample's state (flattened; context columns excluded)."""

    values: tuple[float, ...]

    def __post_init__(self):
        if not self.values or not all(v > 0 for v in self.values):
            raise ValueError(f"every per-element tolerance must be > 0, got {self.text}")

    @property
    def text(self) -> str:
        runs: list[list] = []
        for v in self.values:
            if runs and runs[-1][0] == v:
                runs[-1][1] += 1
            else:
                runs.append([v, 1])
        return "/".join(number_text(v) + (f"x{count}" if count > 1 or len(runs) == 1 else "") for v, count in runs)

    def __str__(self) -> str:
        return self.text


Tolerance = Union[float, PerElement]


def tolerance(text: str) -> Tolerance:
    """A spec's tolerance: ``1e-5``, or per element ``1e-5x2/1e20`` (a value, optionally ``x`` a count)."""
    if "/" not in text and "x" not in text:
        return number(text)
    values: list[float] = []
    for part in text.split("/"):
        value, _, count = part.strip().partition("x")
        n = int(count) if count else 1
        if n < 1:
            raise ValueError(f"count {n} in '{part}'")
        values.extend([number(value)] * n)
    return PerElement(tuple(values))


def tolerance_text(tol: Tolerance) -> str:
    return tol.text if isinstance(tol, PerElement) else number_text(tol)


def smallest(tol: Tolerance) -> float:
    return min(tol.values) if isinstance(tol, PerElement) else float(tol)


def scaled(tol: Tolerance, factor: float) -> Tolerance:
    return PerElement(tuple(v * factor for v in tol.values)) if isinstance(tol, PerElement) else tol * factor


def positive(tol: Tolerance) -> bool:
    return isinstance(tol, PerElement) or tol > 0     # PerElement checks its values when built


def tolerance_tensor(tol: Tolerance, h0: torch.Tensor, context: int, what: str) -> torch.Tensor:
    """The tolerance as step control applies it to states shaped like ``h0`` ``[N, ...]``: a 0-dim
    float64 tensor, or a float64 tensor of one sample's shape (context columns get 1: f never changes
    them and the norm leaves them out)."""
    if not isinstance(tol, PerElement):
        return torch.tensor(tol, dtype=torch.float64, device=h0.device)
    width = h0[0].numel() - context
    if len(tol.values) != width:
        raise InputError(f"{what}: {len(tol.values)} per-element tolerance(s) for a state of {width} element(s) "
                         f"per sample")
    values = torch.tensor(tol.values + (1.0,) * context, dtype=torch.float64, device=h0.device)
    return values.reshape(h0.shape[1:])


def per_sample_tolerance(value: Any, state: Any, layout=None) -> Tolerance | None:
    """A tolerance as torchdiffeq would apply it to ``state`` (the batch's state, as the model passed
    it, laid out by ``layout``, a ``StateLayout``: samples first by default), for one sample: a float,
    ``PerElement``, or None where it differs from sample to sample."""
    if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0):
        return float(value)
    if isinstance(state, torch.Tensor):
        try:
            full = torch.as_tensor(value, dtype=torch.float64).expand(state.shape)
        except (RuntimeError, TypeError, ValueError):
            return None
        # each sample's elements as dise packs its state (its rows in blocks of N, or on another axis)
        packed = full if layout is None else layout.with_context(0).pack(full)
        rows = packed.reshape(packed.shape[0], -1)
    else:
        try:
            parts = tuple(value)
        except TypeError:
            return None
        if len(parts) != len(state):
            return None
        rows_of = []
        for tol, component in zip(parts, state):
            # torchdiffeq's _tuple_tol: each as a tensor of the default dtype, over the component's elements
            flat = torch.as_tensor(tol)
            if flat.numel() not in (1, component.numel()):
                return None
            flat = flat.reshape(-1).expand(component.numel()).to(torch.float64)
            rows_of.append(flat.reshape(len(component), -1))
        rows = torch.cat(rows_of, dim=1)
    if len(rows) and not bool((rows == rows[:1]).all()):
        return None
    values = tuple(float(v) for v in rows[0])
    if not all(v > 0 for v in values):
        return None
    return PerElement(values)
