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

Classifier-free guidance around f (``Guidance``) is read too: the batch doubled (``torch.cat([x, x])``)
or two calls a step, its weight fitted from the loop's first step, and, where the loop guides only in an
interval of time (REPA's ``guidance_high``), the interval's bounds from the times of its guided and
unguided calls (``CallShape._read_limited``). What dise does not read this way, it refuses in one line:
conditioning that changes between calls otherwise, guidance on steps that are no one interval, two
calls a step on some steps only.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map

from dise_cli.errors import InputError
from dise_cli.integrators.vector_field import TIME_NAMES

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
class Guidance:
    """Classifier-free guidance the loop applies around f. ``doubled``: one call on the batch twice over
    (``torch.cat([x, x])``, the conditioning of each half in blocks of N), the output's halves A and B;
    ``paired``: two calls a stage on the same state and time, A with the first call's conditioning, B
    with the second's (``alternating``: the arguments that differ). The loop's velocity is
    ``weight`` A + (1 - ``weight``) B, which the loop writes u + s (c - u)."""

    kind: str
    weight: float
    alternating: tuple[str, ...] = ()
    # guidance in a limited interval of f's time (REPA's guidance_low / guidance_high, Kynkäänniemi et al.'s
    # guidance interval): guided where low <= t <= high (None: no bound), elsewhere the loop calls f once,
    # on the batch, with the conditioning of the doubled call's half ``plain_half``
    low: float | None = None
    high: float | None = None
    plain_half: int = 0

    @property
    def limited(self) -> bool:
        return self.low is not None or self.high is not None

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # as the loop writes it, u + s (c - u), c the half the larger weight is on: the same rounding
        w = self.weight
        return b + w * (a - b) if w >= 0.5 else a + (1 - w) * (b - a)

    def inside(self, t: Any, n: int) -> torch.Tensor:
        """Per row of a batch of ``n``, whether f's time ``t`` (a number, one per row, or shaped like the
        state) lies where the loop guides."""
        t = torch.as_tensor(t)
        rows = t.reshape(-1)[:1].expand(n) if t.ndim == 0 or t.shape[0] != n else t.reshape(n, -1)[:, 0]
        inside = torch.ones(n, dtype=torch.bool, device=rows.device)
        if self.low is not None:
            inside = inside & (rows >= self.low)
        if self.high is not None:
            inside = inside & (rows <= self.high)
        return inside

    def describe(self) -> str:
        if self.kind == "doubled":
            how, parts = ("by batch doubling (f on the batch twice over, the conditioning in blocks of N)",
                          "f's output on the first and second half")
        else:
            how, parts = (f"by two calls of f a step ({_listed(self.alternating)} differing)",
                          "the first and second call's output")
        w = self.weight
        velocity = f"B + {w:g} (A - B)" if w >= 0.5 else f"A + {1 - w:g} (B - A)"
        where = ""
        if self.limited:
            bounds = " and ".join(b for b in (None if self.low is None else f"t >= {self.low:g}",
                                             None if self.high is None else f"t <= {self.high:g}") if b)
            where = (f", where f's {bounds} (elsewhere f on the batch once, with the conditioning of the "
                     f"{'first' if self.plain_half == 0 else 'second'} half)")
        return f"classifier-free guidance {how}, the velocity {velocity} (A and B {parts}){where}"

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "weight": self.weight, "alternating": list(self.alternating)}
        if self.limited:
            out.update(low=self.low, high=self.high, plain_half=self.plain_half)
        return out


SECOND = " (2nd call)"       # the name of an alternating argument as the second call of a pair passes it


@dataclass(frozen=True)
class CallShape:
    """Where a loop puts the state and the time among f's arguments, and what else it passes: ``held``,
    the other arguments by their names (``per_row``: those with a row per sample, or a block of N rows
    for each half of a doubled batch); ``guidance``: the loop's classifier-free guidance around f."""

    state_at: Slot
    time_at: Slot
    held: tuple[tuple[Slot, str], ...]
    per_row: tuple[str, ...]
    guidance: Guidance | None = None
    output_at: int | str | None = None     # f returns several things: the velocity is this one of them

    @property
    def calls_per_stage(self) -> int:
        return 2 if self.guidance is not None and self.guidance.kind == "paired" else 1

    @classmethod
    def read(cls, func: nn.Module, calls: list[Call], outputs: list[Any], h0: torch.Tensor, n: int) -> "CallShape":
        """The shape of the loop's calls of ``func`` from its first calls (two, or three where the first two
        are a guided pair) and their ``outputs`` (``InputError`` where they are not a state and a time
        that change and conditioning that does not); ``h0``: the loop's input, ``n`` samples."""
        if not calls:
            raise InputError(f"its ODE function ({type(func).__name__}) takes more than a time and a state, and the "
                             f"model's forward never calls it")
        first = calls[0]
        names = _names(func, first)
        what = f"the model's loop calls f ({type(func).__name__})"
        if len(calls) < 2:
            raise InputError(f"{what} once, with more than a time and a state ({_listed(names.values())}): dise "
                             f"tells its time from its conditioning by the calls that follow; write the loop with "
                             f"torchdiffeq's odeint, f(t, x) holding the rest")
        if any(set(_slots(c)) != set(_slots(first)) for c in calls[1:]):
            raise InputError(f"{what} with other arguments at its later calls ({_listed(names[s] for s in _slots(first))}"
                             f", then {_listed(_names(func, calls[1]).values())}); dise holds f's conditioning fixed")
        guided = [any(_doubled_state(slot_value(c, s), h0, n) for s in _slots(c)) for c in calls]
        if any(guided) and not all(guided):
            return cls._read_limited(func, calls, outputs, h0, n, guided, what)
        if _paired_on_some_steps(calls, h0):
            raise InputError(f"{what} twice at the same state and time on some steps and once on others: guidance by "
                             f"two calls a step in an interval of time, which dise does not read (it reads guidance "
                             f"in an interval by batch doubling); double the batch on the guided steps, "
                             f"torch.cat([x, x]) with torch.cat([y, y_null]), or wrap the guided velocity as one "
                             f"module f(x, t, ...)")
        changed = _changed(first, calls[1])
        states = _states(changed, first, names, h0)
        doubled = [s for s in changed if _doubled_state(slot_value(first, s), h0, n)]
        if len(doubled) == 2:             # a time given as torch.full_like(x, t), doubled with the state
            doubled = [s for s in doubled if not _timelike(first, s, names)] or doubled
        guidance, step_from = None, calls[1]
        rows = 2 * n if doubled and not states else n
        output_at = _output_at(outputs[0], (rows, *h0.shape[1:]), what)
        outputs = [None if out is None else pick_output(out, output_at) for out in outputs]
        if states or doubled:
            if len(changed) != 2:
                raise _unreadable(what, names, changed, "more than a state and a time change between calls")
            state_at = (states or doubled)[0]
            if doubled and not states:
                guidance = _fit(Guidance("doubled", 0.0), outputs[0], n, first, calls[1], state_at)
        else:
            # the same state and time twice, other conditioning: a guided pair, whose next call is the next stage's
            if not changed:
                raise _unreadable(what, names, changed, "its first two calls are the same (a guidance whose "
                                  "conditional and unconditional calls coincide on the rows dise read, their labels "
                                  "all the null label? then give data whose first rows hold other classes; or a loop "
                                  "that calls f twice alike)")
            wide = [s for s in changed if isinstance(v := slot_value(first, s), torch.Tensor) and v.ndim
                    and v.is_floating_point() and len(v) > n and len(v) % n == 0 and v.shape[1:] == h0.shape[1:]]
            if wide:
                rows = len(slot_value(first, wide[0]))
                raise InputError(f"{what} with a state of {rows} rows for {n} samples that is not the batch twice over "
                                 f"(torch.cat([x, x]); rows interleaved, or halves that differ?), which dise cannot "
                                 f"read as guidance; double the batch with torch.cat([x, x]), or wrap the guided "
                                 f"velocity as one module f(x, t, ...)")
            if len(calls) < 3:
                raise _unreadable(what, names, changed, "the same state and time twice, with other conditioning")
            alternating = tuple(names[s] for s in changed)
            moved = _changed(first, calls[2])
            states = _states(moved, first, names, h0)
            if len(moved) != 2 or len(states) != 1:
                raise _unreadable(what, names, changed, "the same state and time twice, with other conditioning, "
                                  "but no pair of calls like it after")
            state_at, changed, step_from = states[0], moved, calls[2]
            pair = outputs[0], outputs[1]
            guidance = _fit(Guidance("paired", 0.0, alternating), pair, n, first, step_from, state_at)
        time_at = next(s for s in changed if s != state_at)
        held = tuple((s, names[s]) for s in _slots(first) if s not in changed)
        blocks = 2 if guidance is not None and guidance.kind == "doubled" else 1
        shape = cls(state_at=state_at, time_at=time_at, held=held, per_row=(), guidance=guidance)
        values = shape.values(calls[:shape.calls_per_stage])
        return cls(state_at, time_at, held, tuple(k for k, v in values.items() if _per_row(v, n, blocks)), guidance,
                   output_at)

    @classmethod
    def _read_limited(cls, func: nn.Module, calls: list[Call], outputs: list[Any], h0: torch.Tensor, n: int,
                      guided: list[bool], what: str) -> "CallShape":
        """A loop that doubles the batch for guidance on some calls and calls f once on the batch on the others
        (REPA's guidance interval): the doubled calls read as guidance everywhere is, the others checked to
        pass f the conditioning of one half of them, and the times of the two kinds told apart by one
        interval of f's time."""
        at = [i for i, g in enumerate(guided) if g]
        if len(at) < 2 or at != list(range(at[0], at[-1] + 1)):
            raise InputError(f"{what} with guidance by batch doubling on some calls only, and its doubled calls are "
                             f"{'one call' if len(at) < 2 else 'not one run of calls'}; dise reads guidance limited to "
                             f"one interval of time, of two calls or more; wrap the guided velocity as one module "
                             f"f(x, t, ...)")
        # the guided calls read as a loop guided everywhere is, from two in a row that are a step's: the first
        # pair, or, where the run begins with a Heun step's second call (the next at the same time), the next
        inner, why = None, None
        for i in at[:3]:
            if i + 1 not in at:
                break
            try:
                inner = cls.read(func, calls[i:i + 2], outputs[i:i + 2], h0, n)
                break
            except InputError as exc:
                why = why or exc
        if inner is None:
            raise why or InputError(f"{what} with guidance by batch doubling on some calls only, which dise cannot read")
        doubled = inner.values(calls[at[0]:at[0] + 1])
        halves = {0, 1}
        times: dict[bool, list[float]] = {True: [], False: []}
        for call, g in zip(calls, guided):
            t = one_time(slot_value(call, inner.time_at))
            if t is None:
                raise InputError(f"{what} with guidance on some calls only, at a time that differs between rows; dise "
                                 f"reads the interval of time the loop guides in from one time per call")
            times[g].append(t)
            if g:
                continue
            state = slot_value(call, inner.state_at)
            if not (isinstance(state, torch.Tensor) and state.shape == h0.shape):
                raise InputError(f"{what} with guidance by batch doubling on some calls, and its other calls pass "
                                 f"a state that is not the batch's; dise cannot read them")
            for slot, name in inner.held:
                halves &= _halves_matching(slot_value(call, slot), doubled[name], n, name in inner.per_row)
            if not halves:
                raise InputError(f"{what} with guidance by batch doubling on some calls, and its other calls pass f "
                                 f"conditioning that is neither half of the doubled calls'; dise cannot read them")
        low_g, high_g = min(times[True]), max(times[True])
        if any(low_g <= t <= high_g for t in times[False]):
            raise InputError(f"{what} with guidance by batch doubling on some calls, at times among those of its "
                             f"unguided calls (decided per step, not by f's time, as a Heun step whose second "
                             f"call follows its first?); dise reads guidance limited to one interval of time")
        below = [t for t in times[False] if t < low_g]
        above = [t for t in times[False] if t > high_g]
        guidance = replace(inner.guidance, low=_between(max(below), low_g) if below else None,
                           high=_between(high_g, min(above)) if above else None, plain_half=min(halves))
        return cls(inner.state_at, inner.time_at, inner.held, inner.per_row, guidance, inner.output_at)

    def is_guided_call(self, call: Call, n: int) -> bool:
        """A doubled call of a loop that guides on some calls only."""
        state = slot_value(call, self.state_at)
        return isinstance(state, torch.Tensor) and state.ndim > 0 and len(state) == 2 * n

    def stage(self, calls: list[Call], n: int) -> list[Call]:
        """The calls that show f's conditioning whole: the first (a guided pair's two); of a loop that guides
        on some calls only, the first doubled one."""
        if self.guidance is not None and self.guidance.limited:
            return [c for c in calls if self.is_guided_call(c, n)][:1]
        return calls[:self.calls_per_stage]

    def stage_found(self, calls: list[Call], n: int) -> bool:
        return len(self.stage(calls, n)) == self.calls_per_stage

    def values(self, stage: list[Call]) -> dict[str, Any]:
        """The held arguments of a stage's calls (one, or a guided pair), by name."""
        values = {name: slot_value(stage[0], s) for s, name in self.held}
        if self.calls_per_stage == 2:
            values.update({name + SECOND: slot_value(stage[1], s) for s, name in self.held
                           if name in self.guidance.alternating})
        return values

    def confirm_rows(self, stage: list[Call], n: int) -> "CallShape":
        """This shape with per-row arguments only those that have ``n`` rows in ``stage`` too (the calls for
        another batch size): a fixed tensor that happened to match the first batch is not per sample."""
        values = self.values(stage)
        blocks = 2 if self.guidance is not None and self.guidance.kind == "doubled" else 1
        return CallShape(self.state_at, self.time_at, self.held,
                         tuple(name for name in self.per_row if _per_row(values.get(name), n, blocks)), self.guidance,
                         self.output_at)

    def check_held(self, reading: dict[str, Any], stage: list[Call], what: str) -> None:
        """The held arguments that are not per row are the same in ``stage`` as when dise read the loop."""
        now = self.values(stage)
        for name, value in reading.items():
            if name not in self.per_row and not same_value(value, now.get(name)):
                raise InputError(f"{what}: the model's loop passes f its argument '{name}' otherwise for this batch "
                                 f"than for the batch dise read it on, and it holds no row per sample; dise holds f's "
                                 f"other arguments fixed, and carries only those with a row per sample")

    def describe(self) -> str:
        held = ", ".join(f"{name}{' (per sample)' if name in self.per_row else ''}" for _, name in self.held)
        guided = "" if self.guidance is None else f"; {self.guidance.describe()}"
        output = "" if self.output_at is None else f"; its velocity {_output_text(self.output_at)} of what f returns"
        return (f"f's state at {_slot_text(self.state_at)}, time at {_slot_text(self.time_at)}, held: {held or 'none'}"
                f"{guided}{output}")

    @property
    def note(self) -> str:
        rows = (f"; those with a row per sample ({_listed(self.per_row)}) go with each sample's state, whatever "
                f"samples its solve is batched with") if self.per_row else ""
        guided = "" if self.guidance is None else \
            f"; the loop's {self.guidance.describe()}, as the loop's output shows it, is f"
        output = "" if self.output_at is None else \
            f"; f returns several things, and its velocity is {_output_text(self.output_at)}, the one shaped like the state"
        held = (f"the loop passes f {_listed(name for _, name in self.held)} beside its time and state: dise holds "
                f"them as the loop passes them") if self.held else "the loop passes f a time and a state"
        return f"{held}{rows}{guided}{output}"

    def to_dict(self) -> dict:
        return {"state_at": self.state_at, "time_at": self.time_at, "held": [name for _, name in self.held],
                "per_row": list(self.per_row), "guidance": None if self.guidance is None else self.guidance.to_dict(),
                "output_at": self.output_at}


def pick_output(out: Any, at: int | str | None) -> Any:
    """The velocity among what f returns (a tuple's element, a dict's or a diffusers output's key)."""
    return out if at is None else out[at]


def _output_at(out: Any, shape: tuple, what: str) -> int | str | None:
    """Where the velocity is in f's output ``out``: None for a tensor; else the one element or key of a tuple,
    list or dict (diffusers' ``Transformer2DModelOutput``) that is a tensor of the state's ``shape``
    (REPA's SiT returns ``(x, zs)``, diffusers' transformers ``(sample,)`` with ``return_dict=False``)."""
    if isinstance(out, torch.Tensor) or out is None:
        return None
    items = list(out.items()) if isinstance(out, dict) else list(enumerate(out)) if isinstance(out, (tuple, list)) else []
    found = [k for k, v in items if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(shape)]
    if len(found) != 1:
        raise InputError(f"{what} and it returns {type(out).__name__} with {len(found)} tensors shaped like its state "
                         f"{tuple(shape)}: dise takes the velocity where exactly one is")
    return found[0]


def _output_text(at: int | str) -> str:
    return f"element {at}" if isinstance(at, int) else f"'{at}'"


def _changed(a: Call, b: Call) -> list[Slot]:
    return [s for s in _slots(a) if not same_value(slot_value(a, s), slot_value(b, s))]


def _unreadable(what: str, names: dict, changed: list, why: str) -> InputError:
    moving = _listed(names[s] for s in changed) if changed else "none"
    return InputError(f"{what} with {len(names)} arguments, and between its first calls {moving} change: {why}. dise "
                      f"solves f of one time and one state, the rest held fixed; wrap what the loop computes each step "
                      f"(the guided velocity) as one module f(x, t, ...), or write the loop with torchdiffeq's odeint")


def _fit(guidance: Guidance, output: Any, n: int, first: Call, later: Call, state_at: Slot) -> Guidance:
    """``guidance`` with the weight that makes the loop's first step. The next stage's state is the first
    state plus the time between them times the step's velocity (every explicit Runge-Kutta method's second
    stage), and that velocity is affine in the guided output w A + (1 - w) B (A and B f's halves, or the
    pair's outputs): the output itself for a velocity, (x - D) / σ for a denoiser D, at any scale of f's
    time. So the step x1 - x0 = c1 A + c2 B + c3 x0 fitted over every element gives w = c1 / (c1 + c2),
    whatever f's output is, and a weight as a person writes it (4.0, 1.5) where it explains the step as
    well as the fitted one."""
    if guidance.kind == "doubled":
        a, b = (output[:n], output[n:]) if isinstance(output, torch.Tensor) and len(output) == 2 * n else (None, None)
    else:
        a, b = output
    x0, x1 = (slot_value(c, state_at)[:n] for c in (first, later))
    if not all(isinstance(v, torch.Tensor) and v.shape == x0.shape for v in (a, b)):
        raise InputError(f"the model's loop applies classifier-free guidance ({guidance.kind}), and dise cannot read its "
                         f"weight from the loop's first step (f's outputs are not one tensor per half shaped like the "
                         f"state); wrap the guided velocity as one module f(x, t, ...)")
    if bool(torch.equal(a, b)):
        raise InputError("the model's loop applies classifier-free guidance, but f's conditional and unconditional "
                         "outputs are the same on the rows dise read it on (do their labels all equal the null "
                         "label? give data whose first rows hold other classes), so dise cannot read the guidance "
                         "weight")
    step = (x1 - x0).double().flatten()
    columns = torch.stack([a.double().flatten(), b.double().flatten(), x0.double().flatten()], 1)

    def residual(w: float | None) -> tuple[float, float]:
        """The fit's residual and w (``None``: fitted), the output's share c1 + c2 beside it."""
        if w is None:
            c = torch.linalg.lstsq(columns, step.unsqueeze(1)).solution.flatten()
            share = float(c[0] + c[1])
            return float((step - columns @ c).norm()), (float(c[0]) / share if share else float("nan"))
        guided = torch.stack([w * columns[:, 0] + (1 - w) * columns[:, 1], columns[:, 2]], 1)
        c = torch.linalg.lstsq(guided, step.unsqueeze(1)).solution.flatten()
        return float((step - guided @ c).norm()), w
    least, fitted = residual(None)
    size = float(step.norm())
    if not math.isfinite(fitted) or least > 1e-4 * size:
        raise InputError(f"the model's loop applies classifier-free guidance ({guidance.kind}), but its first step is "
                         f"no combination w A + (1 - w) B of f's two outputs (a velocity, or a denoiser's), off by "
                         f"{least / max(size, 1e-300):.2g} of the step (guidance rescaled per sample, or clamped?); "
                         f"wrap the guided velocity as one module f(x, t, ...)")
    floor = 2 * least + 1e-6 * size         # a float32 loop's round-off in the step: some 1e-7 of it
    weight = next((nice for nice in (round(fitted, k) for k in range(5)) if residual(nice)[0] <= floor), fitted)
    return Guidance(guidance.kind, weight, guidance.alternating)


def _paired_on_some_steps(calls: list[Call], h0: torch.Tensor) -> bool:
    """Calls in pairs at one state (other conditioning) on some steps, and one call a step on others: the
    state moves between two calls in a row somewhere, and stays between two others."""
    def moves(a: Call, b: Call) -> bool | None:
        changed = _changed(a, b)
        return None if not changed else any(_like_state(slot_value(a, s), h0) for s in changed)
    moved = [moves(a, b) for a, b in zip(calls, calls[1:])]
    return False in moved and any(a and b for a, b in zip(moved, moved[1:]))


def _halves_matching(plain: Any, doubled: Any, n: int, per_row: bool) -> set[int]:
    """Which halves of a doubled call's argument an unguided call's equals: per row, the half's N rows of each
    tensor of 2N rows (the rest the same); otherwise both where the same value."""
    if not per_row:
        return {0, 1} if same_value(plain, doubled) else set()
    a, spec_a = tree_flatten(plain)
    b, spec_b = tree_flatten(doubled)
    if spec_a != spec_b:
        return set()
    found = {0, 1}
    for x, y in zip(a, b):
        if isinstance(y, torch.Tensor) and y.ndim and len(y) == 2 * n:
            found &= {k for k in (0, 1) if same_value(x, y[k * n:(k + 1) * n])}
        elif not same_value(x, y):
            return set()
    return found


def _plain_half(value: Any, n: int, half: int) -> Any:
    """A doubled call's per-row argument for an unguided call: each tensor of 2N rows's half ``half``."""
    return tree_map(lambda v: v[half * n:(half + 1) * n] if isinstance(v, torch.Tensor) and v.ndim
                    and v.shape[0] == 2 * n else v, value)


def _between(a: float, b: float) -> float:
    """A time well inside (a, b) as a person writes a bound: of the fewest decimals, the nearest the middle
    (0.75 between 0.7 and 0.8, 0.4 between 0.375 and 0.5)."""
    margin, middle = 1e-3 * (b - a), (a + b) / 2
    top = max(abs(a), abs(b), 1.0)
    for k in range(-int(math.log10(top)) - 1, 13):
        unit = 10.0 ** -k
        fits = [i * unit for i in range(math.ceil((a + margin) / unit), math.floor((b - margin) / unit) + 1)]
        if fits:
            return round(min(fits, key=lambda v: abs(v - middle)), max(k, 0))
    return middle


def one_time(value: Any) -> float | None:
    """The one time of a call's time argument (a number, or equal in every element), else None."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() and value.dtype != torch.bool and not value.is_complex():
        flat = value.detach().reshape(-1)
        if bool((flat == flat[0]).all()):
            return float(flat[0])
    return None


def _doubled_state(value: Any, h0: torch.Tensor, n: int) -> bool:
    """The batch twice over, ``torch.cat([x, x])``."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape[1:] == h0.shape[1:]
            and len(value) == 2 * n and bool(torch.equal(value[:n], value[n:])))


def _slot_text(slot: Slot) -> str:
    return f"argument {slot + 1}" if isinstance(slot, int) else f"'{slot}'"


def _listed(names) -> str:
    return ", ".join(str(n) for n in names)


def _states(changed: list[Slot], call: Call, names: dict, h0: torch.Tensor) -> list[Slot]:
    """The changed arguments shaped like the state; of two (a time given as ``torch.full_like(x, t)``), the one
    that is not named as a time and not one value per row."""
    found = [s for s in changed if _like_state(slot_value(call, s), h0)]
    if len(found) == 2:
        states = [s for s in found if not _timelike(call, s, names)]
        found = states if len(states) == 1 else found
    return found


def _timelike(call: Call, slot: Slot, names: dict) -> bool:
    """An argument shaped like the state that is a time: named as one, or one value per row."""
    value = slot_value(call, slot)
    rows = value.reshape(len(value), -1)
    return names[slot] in TIME_NAMES or bool((rows == rows[:, :1]).all())


def _like_state(value: Any, h0: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == h0.shape


def _per_row(value: Any, n: int, blocks: int = 1) -> bool:
    """A tensor with a row per sample (or ``blocks`` blocks of N), or a dict, list or tuple holding one (SDXL's
    ``added_cond_kwargs``)."""
    return bool(row_tensors(value, n, blocks))


def row_tensors(value: Any, n: int, blocks: int = 1) -> list[torch.Tensor]:
    """The tensors in ``value`` (itself, or in the dicts, lists and tuples it holds) with a row per sample."""
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor) and leaf.ndim >= 1
            and len(leaf) in (n, blocks * n)]


class Conditioned(nn.Module):
    """f as the loop calls it, as f(t, x): the state and the time in their places, the held arguments
    (``given``, by name) in theirs; with the loop's guidance, the guided velocity (``Guidance``). Per-row
    arguments are bound to the rows of each call by the field's context (``dise_cli.rowcontext``)."""

    def __init__(self, func: nn.Module, shape: CallShape, given: dict[str, Any]):
        super().__init__()
        self.func = func
        self.shape = shape
        self.given = dict(given)

    def _call(self, t, x, second: bool = False, plain: bool = False):
        shape = self.shape
        placed: dict[Slot, Any] = {shape.time_at: t, shape.state_at: x}
        placed.update({slot: self.given[name + SECOND if second and name + SECOND in self.given else name]
                       for slot, name in shape.held})
        if plain:           # an unguided call of a loop that guides on some calls: one half's conditioning
            placed.update({slot: _plain_half(placed[slot], x.shape[0], shape.guidance.plain_half)
                           for slot, name in shape.held if name in shape.per_row})
        positional = sorted(s for s in placed if isinstance(s, int))
        args = [placed[i] for i in range(len(positional))]
        return pick_output(self.func(*args, **{s: v for s, v in placed.items() if isinstance(s, str)}),
                           shape.output_at)

    def forward(self, t, x):
        guidance = self.shape.guidance
        if guidance is None:
            return self._call(t, x)
        if guidance.kind == "paired":
            return guidance.combine(self._call(t, x), self._call(t, x, second=True))
        n = x.shape[0]
        inside = None
        if guidance.limited:
            inside = guidance.inside(t, n)
            # the loop's own way, one kind of call for a batch at one time; rows at times on both sides (a
            # solve per sample), or a trace that cannot branch on values: each row its kind, from one call
            if not (torch.compiler.is_exporting() or torch._C._functorch.is_batchedtensor(x)):
                if not bool(inside.any()):
                    return self._call(t, x, plain=True)
                if bool(inside.all()):
                    inside = None
        twice = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == n else t
        out = self._call(twice, torch.cat([x, x]))
        guided = guidance.combine(out[:n], out[n:])
        if inside is None:
            return guided
        plain = out[n:] if guidance.plain_half else out[:n]
        return torch.where(inside.reshape(n, *(1,) * (guided.ndim - 1)), guided, plain)


def first_calls(module: nn.Module, func: nn.Module, block: nn.Module, args: tuple, count: int = 2,
                stop: bool = True, done: Callable[[list[Call]], bool] | None = None
                ) -> tuple[torch.Tensor | None, list[Call]]:
    """The block's input and the first ``count`` calls of ``func`` in one forward of ``module`` on ``args``
    (``done``: the first calls for which it holds, instead): stopped there (``stop``), or, where
    torch.export traces it and an exception would break its record of the module calls, run to its end
    with every later call of ``func`` answered by the last real one's output (the loop's arithmetic only,
    its result unused); fewer calls where the forward makes fewer."""
    calls: list[Call] = []
    seen: dict[str, Any] = {}
    enough = done or (lambda so_far: len(so_far) >= count)

    def enter(_mod, a, kw):
        if "h0" not in seen:
            seen["h0"] = a[0] if a else next(iter(kw.values()), None)

    def call(_mod, a, kw):
        if "done" in seen:
            return
        calls.append((tuple(a), dict(kw)))
        if enough(calls):
            seen["done"] = True
            if stop:
                raise _Enough()
    handles = [block.register_forward_pre_hook(enter, with_kwargs=True),
               func.register_forward_pre_hook(call, with_kwargs=True)]
    original = func.forward
    answered: list[Any] = []

    def answer_once(*a, **kw):
        if len(answered) < len(calls):
            answered.append(original(*a, **kw))
        return answered[-1]
    try:
        if not stop:
            func.forward = answer_once
        module(*args)
    except _Enough:
        pass
    finally:
        if not stop:
            del func.forward
        for handle in handles:
            handle.remove()
    return seen.get("h0"), calls


class _Enough(Exception):
    pass
