"""Times an adaptive step must stop at: torchdiffeq's ``step_t`` and ``jump_t`` options.

torchdiffeq 0.2.5 (``RKAdaptiveStepsizeODESolver``) keeps, for each kind, a pointer to the next
such time. A step that would pass it (``t0 < mark < t0 + dt``, strictly) is shortened to end on it;
a ``jump_t`` mark overrides a ``step_t`` one in the same step, and is tested against the step as
``step_t`` left it. The pointer moves on only when such a shortened step is accepted, and never past
the last mark: a step that lands on a mark without being shortened leaves it in place, and the
marks after it are then never met. Marks before the start are dropped and the rest sorted; at the
start the pointer skips those equal to it. After an accepted step onto a ``jump_t`` mark, f is
evaluated again just after it (``Perturb.NEXT``), one more evaluation, so that the next step starts
from f's value on the far side of the discontinuity.

dise keeps one pointer per sample (each reaches the marks at its own step), and the marks in the
model's time, negated with it when a solve runs backwards (as torchdiffeq negates the options).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from dise_cli.integrators.tolerances import number, number_text

KINDS = ("step_t", "jump_t")


def mark_times(value: Any, what: str) -> tuple[float, ...]:
    """The marks of an option (a tensor, a list or a number of times) as sorted float64 floats, as
    torchdiffeq takes them (``torch.as_tensor(value, dtype=float64)``). ``ValueError`` for a time that
    is not finite or one given twice (torchdiffeq refuses repeated times at or after the start)."""
    if value is None:
        return ()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    times = sorted(float(v) for v in torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist())
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"{what} must be finite times, got {times}")
    if len(set(times)) < len(times):
        raise ValueError(f"{what} must not repeat a time, got {times}")
    return tuple(times)


def marks_text(times: tuple[float, ...]) -> str:
    """A spec's text of marks: each time as ``number_text`` writes it, ``/`` between them."""
    return "/".join(number_text(v) for v in times)


def marks(text: str) -> tuple[float, ...]:
    """The marks ``marks_text`` wrote (``0.25/0.5/0.75``)."""
    return mark_times([number(part) for part in text.split("/")], "times")


def mark_tensor(times: tuple[float, ...], sign: float, device: torch.device) -> torch.Tensor | None:
    """The marks in the solver's time (``sign`` -1: a backward solve, whose time is -t), sorted,
    float64; None where there are none."""
    if not times:
        return None
    return torch.sort(torch.tensor(times, dtype=torch.float64, device=device) * sign).values


def first_pointer(marks_: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
    """Each row's pointer at its start ``t0`` ``[N]``: the first mark after it (torchdiffeq's
    ``bisect`` into the marks at or after the start), at most the last mark."""
    return torch.searchsorted(marks_, t0.contiguous(), right=True).clamp(max=len(marks_) - 1)


def stop_at_mark(marks_: torch.Tensor, pointer: torch.Tensor, t_now: torch.Tensor, dt: torch.Tensor,
                 t_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shorten each row's step to end on its next mark where the step would pass it: the step, its
    end (the mark itself where shortened) and whether it was shortened, all ``[N]``."""
    mark = marks_[pointer]
    shortened = (t_now < mark) & (mark < t_now + dt)
    return (torch.where(shortened, mark - t_now, dt), torch.where(shortened, mark, t_next), shortened)


def advance_pointer(pointer: torch.Tensor, passed: torch.Tensor, n_marks: int) -> torch.Tensor:
    """The pointers after a step: one on where an accepted step ended on the mark (``passed``), but
    never past the last mark."""
    return torch.where(passed, (pointer + 1).clamp(max=n_marks - 1), pointer)


def just_after(t: torch.Tensor) -> torch.Tensor:
    """The next representable time after ``t`` in its dtype (torchdiffeq's ``Perturb.NEXT``:
    ``nextafter(t, t + 1)``)."""
    return torch.nextafter(t, t + 1)
