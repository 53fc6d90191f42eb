"""What a hand-written loop passes f beyond a time and a state: its conditioning.

A class-conditional sampler written as a loop calls its network with the labels at every step:
EDM's ``edm_sampler`` calls ``net(x_hat, t_hat, class_labels)``, a rectified-flow loop
``model(z, t, y)``. The labels come from the model's input and are the same object at every call; the
state and the time change from call to call. dise reads which argument is which from the loop's
first two calls of f (``CallShape.read``), then solves ``Conditioned``: f with the state and time in
their places and the rest held as the loop passed them. Arguments with a row per sample (the labels)
travel with the state as context columns (``dise_cli.rowcontext``), so that every row keeps its own
labels whatever rows its solve is batched with; the others (a guidance scale, ``None``) are held as
they are, and checked the same for every batch.

What dise does not read this way, it refuses in one line: conditioning that changes between calls (a
guidance that calls f twice a step, with and without the labels), or a state of more rows than the
loop has samples (guidance by batch doubling).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dise_cli.errors import InputError

Slot = int | str        # a positional argument's index, or a keyword argument's name
Call = tuple[tuple, dict]   # the positional and keyword arguments of one call of f


def slot_value(call: Call, slot: Slot) -> Any:
    args, kwargs = call
    return args[slot] if isinstance(slot, int) else kwargs[slot]


def _slots(call: Call) -> list[Slot]:
    args, kwargs = call
    return [*range(len(args)), *kwargs]


def same_value(a: Any, b: Any) -> bool:
    """The same argument in two calls: the very object, an equal tensor, or an equal plain value."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a value that does not compare: not known to be the same
        return False


def passes_conditioning(call: Call) -> bool:
    """A call that gives f more than a time and a state (a ``None`` beyond them, EDM's
    ``class_labels=None``, is what f's default gives it)."""
    return sum(slot_value(call, s) is not None for s in _slots(call)) > 2


def _names(func: nn.Module, call: Call) -> dict[Slot, str]:
    """Each argument's name for people: f's parameter names for positional ones."""
    try:
        params = [p.name for p in inspect.signature(func.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return {s: s if isinstance(s, str) else (params[s] if s < len(params) else f"argument {s + 1}")
            for s in _slots(call)}


@dataclass(frozen=True)
class CallShape:
    """Where a loop puts the state and the time among f's arguments, and what else it passes: ``held``,
    the other arguments by their names (``per_row``: those with a row per sample)."""

    state_at: Slot
    time_at: Slot
    held: tuple[tuple[Slot, str], ...]
    per_row: tuple[str, ...]

    @classmethod
    def read(cls, func: nn.Module, calls: list[Call], h0: torch.Tensor, n: int) -> "CallShape":
        """The shape of the loop's calls of ``func`` from its first two (``InputError`` where they are not
        a state and a time that change and conditioning that does not); ``h0``: the loop's input, ``n``
        samples."""
        if not calls:
            raise InputError(f"its ODE function ({type(func).__name__}) takes more than a time and a state, and the "
                             f"model's forward never calls it")
        first = calls[0]
        names = _names(func, first)
        if len(calls) < 2:
            raise InputError(f"the model's loop calls f ({type(func).__name__}) once, with more than a time and a "
                             f"state ({_listed(names.values())}): dise tells its time from its conditioning by "
                             f"the calls that follow; write the loop with torchdiffeq's odeint, f(t, x) holding "
                             f"the rest")
        second = calls[1]
        if set(_slots(first)) != set(_slots(second)):
            raise InputError(f"the model's loop calls f ({type(func).__name__}) with other arguments at its "
                             f"second call ({_listed(names[s] for s in _slots(first))}, then "
                             f"{_listed(_names(func, second).values())}); dise holds f's conditioning fixed")
        changed = [s for s in _slots(first) if not same_value(slot_value(first, s), slot_value(second, s))]
        states = [s for s in changed if _like_state(slot_value(first, s), h0)]
        doubled = [s for s in changed if isinstance(v := slot_value(first, s), torch.Tensor) and v.ndim
                   and v.is_floating_point() and len(v) > n and len(v) % n == 0 and v.shape[1:] == h0.shape[1:]]
        if not states and doubled:
            rows = len(slot_value(first, doubled[0]))
            raise InputError(f"the model's loop calls f with a state of {rows} rows for {n} samples (classifier-free "
                             f"guidance by batch doubling around f), which dise cannot route row by row; wrap the "
                             f"guided velocity as one module f(x, t, labels) that doubles the batch inside, or "
                             f"write the loop with torchdiffeq's odeint")
        if len(states) != 1 or len(changed) != 2:
            moving = _listed(names[s] for s in changed) if changed else "none"
            why = ("the same state and time twice, with other conditioning (guidance as two calls of f a step?)"
                   if len(changed) < 2 or not states else "more than a state and a time change between calls")
            raise InputError(f"the model's loop calls f ({type(func).__name__}) with {len(names)} arguments, and "
                             f"between its first two calls {moving} change: {why}. dise solves f of one time and "
                             f"one state, the rest held fixed; wrap what the loop computes each step (the guided "
                             f"velocity) as one module f(x, t, ...), or write the loop with torchdiffeq's odeint")
        state_at = states[0]
        time_at = next(s for s in changed if s != state_at)
        held = tuple((s, names[s]) for s in _slots(first) if s not in changed)
        per_row = tuple(name for s, name in held if _per_row(slot_value(first, s), n))
        return cls(state_at=state_at, time_at=time_at, held=held, per_row=per_row)

    def values(self, call: Call) -> dict[str, Any]:
        """The held arguments of ``call``, by name."""
        return {name: slot_value(call, s) for s, name in self.held}

    def confirm_rows(self, call: Call, n: int) -> "CallShape":
        """This shape with per-row arguments only those that have ``n`` rows in ``call`` too (a call for
        another batch size): a fixed tensor that happened to match the first batch is not per sample."""
        values = self.values(call)
        return CallShape(self.state_at, self.time_at, self.held,
                         tuple(name for name in self.per_row if _per_row(values.get(name), n)))

    def check_held(self, reading: dict[str, Any], call: Call, what: str) -> None:
        """The held arguments that are not per row are the same in ``call`` as when dise read the loop."""
        now = self.values(call)
        for name, value in reading.items():
            if name not in self.per_row and not same_value(value, now.get(name)):
                raise InputError(f"{what}: the model's loop passes f its argument '{name}' otherwise for this batch "
                                 f"than for the batch dise read it on, and it holds no row per sample; dise holds f's "
                                 f"other arguments fixed, and carries only those with a row per sample")

    def describe(self) -> str:
        held = ", ".join(f"{name}{' (per sample)' if name in self.per_row else ''}" for _, name in self.held)
        return f"f's state at {_slot_text(self.state_at)}, time at {_slot_text(self.time_at)}, held: {held}"

    @property
    def note(self) -> str:
        rows = (f"; those with a row per sample ({_listed(self.per_row)}) go with each sample's state, whatever "
                f"samples its solve is batched with") if self.per_row else ""
        return (f"the loop passes f {_listed(name for _, name in self.held)} beside its time and state: dise holds "
                f"them as the loop passes them{rows}")

    def to_dict(self) -> dict:
        return {"state_at": self.state_at, "time_at": self.time_at, "held": [name for _, name in self.held],
                "per_row": list(self.per_row)}


def _slot_text(slot: Slot) -> str:
    return f"argument {slot + 1}" if isinstance(slot, int) else f"'{slot}'"


def _listed(names) -> str:
    return ", ".join(str(n) for n in names)


def _like_state(value: Any, h0: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == h0.shape


def _per_row(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and len(value) == n


class Conditioned(nn.Module):
    """f as the loop calls it, as f(t, x): the state and the time in their places, the held arguments
    (``given``, by name) in theirs. Per-row ones are bound to the rows of each call by the field's
    context (``dise_cli.rowcontext``)."""

    def __init__(self, func: nn.Module, shape: CallShape, given: dict[str, Any]):
        super().__init__()
        self.func = func
        self.shape = shape
        self.given = dict(given)

    def forward(self, t, x):
        shape = self.shape
        placed: dict[Slot, Any] = {shape.time_at: t, shape.state_at: x}
        placed.update({slot: self.given[name] for slot, name in shape.held})
        positional = sorted(s for s in placed if isinstance(s, int))
        args = [placed[i] for i in range(len(positional))]
        return self.func(*args, **{s: v for s, v in placed.items() if isinstance(s, str)})


def first_calls(module: nn.Module, func: nn.Module, block: nn.Module, args: tuple, count: int = 2
                ) -> tuple[torch.Tensor | None, list[Call]]:
    """The block's input and the first ``count`` calls of ``func`` in one forward of ``module`` on
    ``args`` (stopped there); fewer calls where the forward makes fewer."""
    calls: list[Call] = []
    seen: dict[str, Any] = {}

    def enter(_mod, a, kw):
        if "h0" not in seen:
            seen["h0"] = a[0] if a else next(iter(kw.values()), None)

    def call(_mod, a, kw):
        calls.append((tuple(a), dict(kw)))
        if len(calls) >= count:
            raise _Enough()
    handles = [block.register_forward_pre_hook(enter, with_kwargs=True),
               func.register_forward_pre_hook(call, with_kwargs=True)]
    try:
        module(*args)
    except _Enough:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen.get("h0"), calls


class _Enough(Exception):
    pass
