"""How dise calls the user's ODE function f(t, h) when every sample of a batch has its own time.

Fixed-grid solvers call f with one time for the whole batch, as torchdiffeq does. Per-sample
adaptive steps need f at a different t per row, but user functions are written for a scalar t
(``torch.ones_like(x[:, :1]) * t`` in torchdiffeq's ODE-Net). ``VectorField.detect`` probes f once
and picks the cheapest way that gives each row exactly what a scalar-t call would:

- ``autonomous``: f ignores t, so any t will do (one call for the batch);
- ``broadcast``: f accepts t shaped ``[N, 1, ..., 1]`` and broadcasts it per row (one call);
- ``vmap``: f runs under ``torch.func.vmap`` with a scalar t per row (one vectorised call);
- ``loop``: one call per distinct time (always correct, slow).
"""
from __future__ import annotations

import enum
from typing import Callable

import torch

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TimeMode(str, enum.Enum):
    AUTONOMOUS = "autonomous"
    BROADCAST = "broadcast"
    VMAP = "vmap"
    LOOP = "loop"


class VectorField:
    """The user's f with a per-row time calling convention. Counts nothing: solvers count NFE."""

    def __init__(self, func: Func, mode: TimeMode = TimeMode.LOOP, sign: float = 1.0):
        self.func = func
        self.mode = TimeMode(mode)
        self.sign = sign
        self._vmapped = None

    def __call__(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """f at one time ``t`` (0-dim, the state's dtype) for the whole batch ``h``."""
        if self.sign < 0:
            return -self.func(-t, h)
        return self.func(t, h)

    def at_times(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """f at a time per row: ``t`` is ``[N]`` in the state's dtype, ``h`` is ``[N, *state]``."""
        if self.sign < 0:
            return -self._at_times(-t, h)
        return self._at_times(t, h)

    def _at_times(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode is TimeMode.AUTONOMOUS:
            return self.func(t[0], h)
        if mode is TimeMode.BROADCAST:
            return self.func(t.view(-1, *([1] * (h.ndim - 1))), h)
        if mode is TimeMode.VMAP:
            if self._vmapped is None:
                func = self.func
                self._vmapped = torch.func.vmap(lambda ti, hi: func(ti, hi.unsqueeze(0)).squeeze(0))
            return self._vmapped(t, h)
        return self._loop(t, h)

    def _loop(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One call of f per run of equal times (NaN times each get their own call)."""
        order = torch.argsort(t)
        ts = t[order]
        change = torch.ones(len(ts), dtype=torch.bool, device=t.device)
        change[1:] = ts[1:] != ts[:-1]
        bounds = torch.nonzero(change).flatten().tolist() + [len(ts)]
        if len(bounds) == 2:
            return self.func(ts[0], h)
        parts = [self.func(ts[a], h[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(parts)[torch.argsort(order)]

    def reversed(self) -> "VectorField":
        """g(s, h) = -f(-s, h): integrating g forward in s integrates f backward in t."""
        return VectorField(self.func, self.mode, -self.sign)

    @classmethod
    def detect(cls, func: Func, h: torch.Tensor, t_span: torch.Tensor) -> "VectorField":
        """Probe ``func`` on a few rows of ``h`` to choose the time mode (see the module doc)."""
        return cls(func, detect_time_mode(func, h, t_span))


@torch.no_grad()
def detect_time_mode(func: Func, h: torch.Tensor, t_span: torch.Tensor) -> TimeMode:
    """Choose how to give f one time per row; see the module docstring."""
    n = min(len(h), 4)
    rows = h[:n] if n >= 2 else h[:1].expand(2, *h.shape[1:]).clone()
    n = len(rows)
    t0, t1 = float(t_span[0]), float(t_span[-1])
    ta = torch.tensor(t0, dtype=rows.dtype, device=rows.device)
    tb = torch.tensor(t0 + 0.37 * (t1 - t0), dtype=rows.dtype, device=rows.device)
    fa = func(ta, rows)
    if torch.equal(fa, func(tb, rows)):
        return TimeMode.AUTONOMOUS
    times = torch.linspace(t0, t1, n + 2, dtype=rows.dtype, device=rows.device)[1:-1]
    expected = torch.cat([func(times[i], rows[i:i + 1]) for i in range(n)])
    for mode in (TimeMode.BROADCAST, TimeMode.VMAP):
        try:
            got = VectorField(func, mode).at_times(times, rows)
        except Exception:  # noqa: BLE001 - any failure just rules this mode out
            continue
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-6):
            return mode
    return TimeMode.LOOP
