"""How dise calls the user's ODE function f when every sample of a batch has its own time.

Fixed-grid solvers call f with one time for the whole batch, as torchdiffeq does. Per-sample
adaptive steps need f at a different t per row, but people write f for a scalar t
(``torch.ones_like(x[:, :1]) * t`` in torchdiffeq's ODE-Net, ``t.repeat(N)`` in torchcfm). Fields
also come in both argument orders: ``f(t, x)`` (torchdiffeq, torchdyn) and ``f(x, t)`` (flow
matching and diffusion code). ``detect_time_mode`` probes f once and picks the cheapest way that
gives each row exactly what a scalar-t call would:

- ``autonomous``: f ignores t, so any t will do (one call for the batch);
- ``broadcast``: f accepts t shaped ``[N, 1, ..., 1]`` and broadcasts it per row (one call);
- ``vector``: f accepts t shaped ``[N]`` (one call);
- ``vmap``: f runs under ``torch.func.vmap`` with a scalar t per row (one vectorised call);
- ``loop``: one call per distinct time (always correct, slow);
- ``rows``: f takes only ``[N]`` times (a bundle's exported f): a scalar time is expanded per row.

A field that fails on a 0-dim time (``torch.cat([x, t], 1)`` in the rectified-flow tutorial's MLP)
has ``scalar_time`` False: every call gets its time per row, ``[N, 1, ...]`` or ``[N]``.

The state may be a tuple (``dise_cli.states``): f sees the user's structure, the solvers a packed
tensor, and every output is checked against the state's shape.
"""
from __future__ import annotations

import enum
from typing import Any, Callable

import torch

from dise_cli.errors import InputError, first_line
from dise_cli.rowcontext import RowContext
from dise_cli.seeding import seeded
from dise_cli.states import StateLayout, rms_rows

Func = Callable[..., Any]
ARG_ORDERS = ("t,x", "x,t")


class TimeMode(str, enum.Enum):
    AUTONOMOUS = "autonomous"
    BROADCAST = "broadcast"
    VECTOR = "vector"
    VMAP = "vmap"
    LOOP = "loop"
    ROWS = "rows"


PER_ROW_MODES = (TimeMode.AUTONOMOUS, TimeMode.BROADCAST, TimeMode.VECTOR, TimeMode.VMAP)


class VectorField:
    """The user's f over dise's packed state, with a per-row time convention. Counts nothing:
    solvers count NFE."""

    def __init__(self, func: Func, mode: TimeMode | str = TimeMode.LOOP, layout: StateLayout | None = None,
                 sign: float = 1.0, order: str = "t,x", scalar_time: bool = True, context: RowContext | None = None):
        self.func = func
        self.mode = TimeMode(mode)
        self.layout = layout
        self.sign = sign
        self.order = order
        self.scalar_time = scalar_time      # False: f fails on a 0-dim time; it gets one per row
        self.context = context              # per-sample tensors f reads, carried as the layout's context columns
        self._vmapped = None
        self.f_dtype: torch.dtype | None = None   # f's own dtype, where it returns another than the state's

    def with_func(self, func: Func) -> "VectorField":
        """The same conventions for another f (the function a later call of the model passes)."""
        return VectorField(func, self.mode, self.layout, self.sign, self.order, self.scalar_time, self.context)

    def wrapped(self, wrap: Callable[[Func], Func]) -> "VectorField":
        """This field with f wrapped (``wrap(f)`` holds f as its attribute ``func``, as ``TimeScaled`` and
        ``Denoised`` do), its per-sample tensors reached through the wrapper."""
        func, context = wrap(self.func), self.context
        if context is not None and func is not self.func:
            if getattr(func, "func", None) is not self.func:
                raise TypeError(f"{type(func).__name__} does not hold f as its attribute 'func'")
            context = context.under(("attr", "func"))
        return VectorField(func, self.mode, self.layout, self.sign, self.order, self.scalar_time, context)

    def __call__(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """f at one time ``t`` (0-dim, the state's dtype) for the whole batch ``h``."""
        if self.mode is TimeMode.ROWS or not self.scalar_time:
            return self.at_times(t.expand(h.shape[0]), h)
        if self.sign < 0:
            return -self._eval(-t, h)
        return self._eval(t, h)

    def at_times(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """f at a time per row: ``t`` is ``[N]`` in the state's dtype, ``h`` is ``[N, *state]``."""
        if self.sign < 0:
            return -self._at_times(-t, h)
        return self._at_times(t, h)

    def rms(self, x: torch.Tensor) -> torch.Tensor:
        """``[N]``: the norm step control uses, per row (torchdiffeq's RMS, or its mixed norm for tuples)."""
        return self.layout.rms(x) if self.layout is not None else rms_rows(x)

    def _eval(self, t: Any, h: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        state = h if layout is None else layout.unpack(h)
        if self.context is None:
            out = self.func(t, state) if self.order == "t,x" else self.func(state, t)
        else:
            with self.context.bound(self.func, layout.context_of(h)):
                out = self.func(t, state) if self.order == "t,x" else self.func(state, t)
        out = out if layout is None else layout.pack_output(out, h.shape[0])   # not len(): see states.pack
        if isinstance(out, torch.Tensor) and out.dtype != h.dtype:
            # torchdiffeq keeps f's values in the state's dtype (its stages are a buffer of y0's dtype): a
            # bfloat16 f under autocast is summed in float32 stages, not at bfloat16's precision
            self.f_dtype = out.dtype
            out = out.to(h.dtype)
        return out

    def _row_times(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``[N]`` times as f takes one per row of the state it sees: repeated for a state in blocks
        (classifier-free guidance by batch doubling: each sample's rows in blocks of N), and shaped to
        broadcast (BROADCAST: the state's rank, its first component's for a tuple; the samples where
        the state keeps them, ones elsewhere)."""
        layout = self.layout
        blocks = layout.blocks if layout is not None else 1
        if blocks > 1:
            t = t.repeat(blocks)
        if self.mode is not TimeMode.BROADCAST:
            return t
        if blocks > 1:
            rank, axis = len(layout.shapes[0]), 0       # f's state [b N, ...]
        else:
            rank = 1 + len(layout.shapes[0]) if layout is not None and layout.is_tuple else h.ndim
            axis = layout.batch_axis if layout is not None else 0
        shape = [1] * rank
        shape[axis] = -1
        return t.view(shape)

    def _at_times(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode is TimeMode.AUTONOMOUS:
            return self._eval(t[0], h)
        if mode in (TimeMode.BROADCAST, TimeMode.VECTOR, TimeMode.ROWS):
            return self._eval(self._row_times(t, h), h)
        if mode is TimeMode.VMAP:
            if t.shape[0] == 1:                # one row: f as the model calls it, not vmap's other kernels
                return self._eval(t[0], h)
            if self._vmapped is None:
                self._vmapped = torch.func.vmap(lambda ti, hi: self._eval(ti, hi.unsqueeze(0)).squeeze(0))
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
            return self._eval(ts[0], h)
        parts = [self._eval(ts[a], h[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(parts)[torch.argsort(order)]

    def reversed(self) -> "VectorField":
        """g(s, h) = -f(-s, h): integrating g forward in s integrates f backward in t."""
        field = VectorField(self.func, self.mode, self.layout, -self.sign, self.order, self.scalar_time, self.context)
        field._vmapped = self._vmapped
        return field

    @classmethod
    def detect(cls, func: Func, h: torch.Tensor, t_span: torch.Tensor, layout: StateLayout | None = None,
               order: str = "t,x", context: RowContext | None = None) -> "VectorField":
        """Probe ``func`` on a few packed rows ``h`` to choose the time mode (see the module doc)."""
        field = cls(func, TimeMode.LOOP, layout, 1.0, order, context=context)
        field.mode, field.scalar_time = detect_time_mode(field, h, t_span)
        return field


def _seeded(fn: Callable[[], torch.Tensor], seed: int, device: torch.device) -> torch.Tensor:
    with seeded(seed, device):
        return fn()


ROUNDING = 1000       # rows of a batch and the same rows alone may differ by this many units of round-off


def rows_agree(batch: torch.Tensor, alone: torch.Tensor) -> bool:
    """f's rows computed in a batch and the same rows computed alone agree up to what another matrix
    product kernel (a batch of one runs another) rounds differently: ``ROUNDING`` units of the dtype's
    round-off of f's largest value, at least 1e-6 of it. A row that reads another row, or its place
    in the batch, is off by far more."""
    if batch.shape != alone.shape:
        return False
    scale = 1.0 + (float(alone.abs().max()) if alone.numel() else 0.0)
    eps = torch.finfo(alone.dtype).eps if alone.is_floating_point() else 0.0
    tol = max(1e-6, ROUNDING * eps)
    return bool(torch.allclose(batch, alone, rtol=tol, atol=tol * scale, equal_nan=True))


def _row_time_field(field: VectorField, t: torch.Tensor, rows: torch.Tensor, failure: Exception) -> VectorField:
    """The field as one that takes its time per row (``[N, 1, ...]``, else ``[N]``), for an f that fails
    on a 0-dim time; ``InputError`` naming the first failure when neither shape works either."""
    for mode in (TimeMode.BROADCAST, TimeMode.VECTOR):
        trial = VectorField(field.func, mode, field.layout, 1.0, field.order, scalar_time=False, context=field.context)
        try:
            trial(t, rows)
        except Exception:  # noqa: BLE001 - any failure rules this shape out
            continue
        return trial
    raise InputError(f"the ODE function fails at t = {float(t):g} with a time for the batch, [N, 1] or [N] "
                     f"({type(failure).__name__}: {first_line(failure, 120)})") from failure


@torch.no_grad()
def detect_time_mode(field: VectorField, h: torch.Tensor, t_span: torch.Tensor) -> tuple[TimeMode, bool]:
    """Choose how to give f one time per row, and whether it takes a 0-dim time at all; see the module
    docstring. ``InputError`` when f cannot be solved sample by sample (it mixes the rows of a batch)."""
    n = min(len(h), 4)
    rows = h[:n] if n >= 2 else h[:1].expand(2, *h.shape[1:]).clone()
    n = len(rows)
    t0, t1 = float(t_span[0]), float(t_span[-1])
    ta = torch.tensor(t0, dtype=rows.dtype, device=rows.device)
    tb = torch.tensor(t0 + 0.37 * (t1 - t0), dtype=rows.dtype, device=rows.device)
    try:
        field(ta, rows)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - f may take only a time per row
        field = _row_time_field(field, ta, rows, exc)
    fa = _seeded(lambda: field(ta, rows), 1, rows.device)
    scalar = field.scalar_time
    if not torch.equal(fa, _seeded(lambda: field(ta, rows), 2, rows.device)):
        if not scalar:
            raise InputError("the ODE function draws noise and takes only a time per row; dise cannot give each "
                             "sample its own time without changing the noise")
        return TimeMode.LOOP, True    # f draws noise (a Hutchinson trace): only one time per call is safe
    try:
        singles = torch.cat([field(ta, rows[i:i + 1]) for i in range(n)])
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - f fails on fewer rows than its batch had
        raise InputError(f"the ODE function fails on one sample of its batch ({type(exc).__name__}: "
                         f"{first_line(exc, 120)}): it keeps per-sample data outside its state, such as noise or "
                         f"conditioning drawn for the whole batch, and dise solves every sample on its own") from exc
    if not rows_agree(fa, singles):
        raise InputError("the ODE function mixes the rows of a batch (its output for a sample depends on the other "
                         "samples, e.g. BatchNorm in training mode or data captured for the whole batch); dise solves "
                         "every sample on its own and cannot reproduce it")
    fb = field(tb, rows)
    if torch.equal(fa, fb) and scalar:
        return TimeMode.AUTONOMOUS, True
    # the grid's two ends among the rows' times: a branch on the time anywhere between them (a guidance
    # interval, ``t[0] < 0.11``) then parts rows, and f that decides it for the batch by one row's time
    # (LightningDiT's ``t[0]``) gives the others another answer than alone
    times = torch.linspace(t0, t1, n, dtype=rows.dtype, device=rows.device)
    try:
        expected = torch.cat([field(times[i], rows[i:i + 1]) for i in range(n)])
        finite = bool(torch.isfinite(expected).all())
    except Exception:  # noqa: BLE001 - f undefined at an end (a denoiser's log σ at σ = 0)
        finite = False
    if not finite:
        # f singular at an end (a velocity (x1 - x) / (1 - t) at t = 1): times inside the grid instead
        times = torch.linspace(t0, t1, n + 2, dtype=rows.dtype, device=rows.device)[1:-1]
        expected = torch.cat([field(times[i], rows[i:i + 1]) for i in range(n)])
    modes = (TimeMode.BROADCAST, TimeMode.VECTOR, TimeMode.VMAP) if scalar else (field.mode,)
    for mode in modes:
        trial = VectorField(field.func, mode, field.layout, 1.0, field.order, scalar, field.context)
        try:
            got = trial.at_times(times, rows)
            # one batch, one time (not a round one): a time per row must give f's very answer to the scalar
            # time (``ones(N) * t`` is float32 for a 0-dim t and float64 for an [N] one); vmap gives each
            # row a 0-dim time
            same = mode is TimeMode.VMAP or not scalar or torch.equal(trial.at_times(tb.expand(n), rows), fb)
        except Exception:  # noqa: BLE001 - any failure just rules this mode out
            continue
        if same and rows_agree(got, expected):
            return mode, scalar
    if not scalar:
        raise InputError("the ODE function takes only a time per row, but gives a row another answer when the "
                         "other rows have other times; dise cannot solve it sample by sample")
    return TimeMode.LOOP, True


TIME_NAMES = ("t", "time", "times", "s", "tau", "timestep", "timesteps", "sigma")   # f's time argument


def detect_arg_order(func: Func, h: torch.Tensor, t0: float, layout: StateLayout) -> str:
    """``t,x`` or ``x,t`` for a bare field: the argument names first (``forward(x, t)``), then which
    order returns a state-shaped result. ``InputError`` when neither does."""
    names = _positional_names(func)
    if len(names) >= 2:
        if names[0] in TIME_NAMES and names[1] not in TIME_NAMES:
            return "t,x"
        if names[1] in TIME_NAMES and names[0] not in TIME_NAMES:
            return "x,t"
    t = torch.tensor(t0, dtype=h.dtype, device=h.device)
    errors = []
    for order in ARG_ORDERS:
        for mode, scalar in ((TimeMode.LOOP, True), (TimeMode.BROADCAST, False), (TimeMode.VECTOR, False)):
            try:
                with torch.no_grad():
                    VectorField(func, mode, layout, 1.0, order, scalar)(t, h[:2])
                return order
            except Exception as exc:  # noqa: BLE001 - the wrong order fails in the user's code
                if scalar:
                    errors.append(f"f({order}): {type(exc).__name__}: {first_line(exc, 120)}")
    hint = ""
    if len(names) >= 2 and not {names[0], names[1]} & set(TIME_NAMES):
        hint = (f"; if it is no vector field but a model of several inputs, forward({', '.join(names[:2])}), name "
                f"their data keys in that order with --x-key (e.g. --x-key x,labels)")
    raise InputError("the model takes two arguments but returns no state-shaped result for f(t, x) or f(x, t) (" +
                     "; ".join(errors) + ")" + hint)


def _positional_names(func: Func) -> list[str]:
    import inspect
    target = func.forward if isinstance(func, torch.nn.Module) else func
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
