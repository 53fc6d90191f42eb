"""The state dise integrates: one tensor ``[N, ...]``, or a tuple of them (a CNF's ``(z, log p)``).

Solvers work on one tensor per batch. A tensor state is used as it is (a conv f gets its
``[N, C, H, W]``); a tuple state is packed per row into ``[N, F]`` (each component flattened and
concatenated) and unpacked into views for f, as torchdiffeq does with its flat state. Adaptive
step control measures a tuple with torchdiffeq's mixed norm (the largest RMS of any component),
per row, so a sample solved alone takes torchdiffeq's steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dise_cli.errors import InputError


class StateShapeError(InputError):
    """f returned something that does not fit the state it was given (exit 2)."""


def rms_rows(x: torch.Tensor) -> torch.Tensor:
    """torchdiffeq's ``_rms_norm`` (``x.abs().pow(2).mean().sqrt()``; the abs changes no bit of
    the square), per row: ``[N, ...] -> [N]``. The same values; where a row is exactly zero (a
    component whose error estimate vanishes, as a CNF's log-density part can) its gradient is 0,
    not the NaN of sqrt's infinite slope at 0 times 0, so R_err trains through tuple states."""
    square = x.pow(2).reshape(len(x), -1).mean(1)
    if not (torch.is_grad_enabled() and square.requires_grad):
        return square.sqrt()               # no gradient to guard: the same values in one kernel
    positive = square != 0                 # NaN and inf stay as they are (non-finite rows retire)
    return torch.where(positive, torch.where(positive, square, torch.ones_like(square)).sqrt(), torch.zeros_like(square))


@dataclass(frozen=True)
class StateLayout:
    """Per-sample shapes of the state's components; ``is_tuple`` says whether f sees a tuple.

    ``packed`` layouts describe an already packed ``[N, F]`` state (a bundle's exported f takes
    and returns it) and keep the tuple's norm groups.

    ``batch_axis``: where a tensor state keeps its samples. Solvers always see them first; f and
    the model see them where the model put them (Rubanova's latent ODE solves ``[S, N, D]``, with
    S trajectory samples per input: axis 1).

    ``context``: the number of columns of per-sample tensors f reads from outside its state
    (``dise_cli.rowcontext``). They travel after the state's own columns in a packed ``[N, F + C]``
    state, with derivative 0; the norm and the trajectories leave them out.

    ``blocks``: a state whose ``blocks * N`` rows hold each sample ``blocks`` times, in blocks of N
    (classifier-free guidance by batch doubling, as SiT and DiT sample: ``z = torch.cat([z, z])``,
    f runs the conditional and unconditional halves in one batch). The model's state ``[b N, ...]`` is
    seen as ``[b, N, ...]`` with the samples on axis 1: a sample's state is its ``b`` rows.
    """

    shapes: tuple[tuple[int, ...], ...]
    is_tuple: bool = False
    packed: bool = False
    batch_axis: int = 0
    context: int = 0
    blocks: int = 1

    @classmethod
    def of(cls, state: Any, what: str = "the initial state", batch_axis: int = 0, blocks: int = 1) -> "StateLayout":
        """The layout of ``state`` (a tensor with its samples on ``batch_axis``, or in ``blocks`` blocks
        along axis 0; or a tuple/list of tensors, all ``[N, ...]``)."""
        if isinstance(state, torch.Tensor):
            _check_component(state, what)
            if blocks > 1:
                if state.shape[0] % blocks:
                    raise InputError(f"{what} has {state.shape[0]} rows, not {blocks} blocks of its samples")
                return cls(shapes=((blocks, *state.shape[1:]),), batch_axis=1, blocks=blocks)
            if batch_axis:
                return cls(shapes=(tuple(state.movedim(batch_axis, 0).shape[1:]),), batch_axis=batch_axis)
            return cls(shapes=(tuple(state.shape[1:]),))
        if isinstance(state, (tuple, list)) and state and all(isinstance(c, torch.Tensor) for c in state):
            for i, c in enumerate(state):
                _check_component(c, f"{what} (component {i})")
            n = {len(c) for c in state}
            if len(n) != 1:
                raise InputError(f"{what} is a tuple whose components have different batch sizes "
                                 f"{[tuple(c.shape) for c in state]}; dise needs every component batch first")
            dtypes = {c.dtype for c in state}
            if len(dtypes) != 1:
                raise InputError(f"{what} is a tuple of mixed dtypes {sorted(map(str, dtypes))}; dise needs one dtype")
            return cls(shapes=tuple(tuple(c.shape[1:]) for c in state), is_tuple=True)
        raise InputError(f"{what} is a {type(state).__name__}; dise solves a tensor or a tuple of tensors")

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The per-sample shape of the packed state."""
        if self.context:
            return (sum(self.sizes) + self.context,)
        return (sum(self.sizes),) if self.is_tuple or self.packed else self.shapes[0]

    def with_context(self, width: int) -> "StateLayout":
        return StateLayout(self.shapes, self.is_tuple, self.packed, self.batch_axis, width, self.blocks)

    def samples(self, state: Any) -> int:
        """How many samples the model's ``state`` holds."""
        if self.is_tuple:
            return state[0].shape[0]
        if self.blocks > 1:
            return state.shape[0] // self.blocks
        return state.shape[self.batch_axis]

    def _viewed(self, state: torch.Tensor) -> torch.Tensor:
        """A state in blocks ``[b N, ...]`` as ``[b, N, ...]`` (others as they are)."""
        return state.reshape(self.blocks, -1, *state.shape[1:]) if self.blocks > 1 else state

    def _merged(self, state: torch.Tensor, axis: int = 0) -> torch.Tensor:
        """``[..., b, N, ...]`` (``b`` at ``axis``) back to the model's ``[..., b N, ...]``."""
        if self.blocks == 1:
            return state
        return state.reshape(*state.shape[:axis], -1, *state.shape[axis + 2:])

    def own_part(self, h: torch.Tensor) -> torch.Tensor:
        """Packed rows ``[N, ...]`` without the context columns: a tensor state in its per-sample shape
        (samples first), a tuple's components flat side by side. What a selector sees of h(0)."""
        if not self.context:
            return h
        own = h[:, :sum(self.sizes)]
        return own if self.is_tuple else own.reshape(h.shape[0], *self.shapes[0])

    def context_of(self, h: torch.Tensor) -> torch.Tensor:
        """The per-sample context columns of packed rows ``h``."""
        return h[:, sum(self.sizes):]

    def as_packed(self) -> "StateLayout":
        """The layout of this state once packed: f takes ``[N, F]`` (samples first), the norm keeps the groups."""
        if not self.is_tuple:
            return StateLayout(shapes=self.shapes) if self.batch_axis or self.blocks > 1 else self
        return StateLayout(shapes=self.shapes, is_tuple=False, packed=True)

    def pack(self, state: Any, context: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, ...]`` from the user's state (a tensor with its samples first is returned as it is);
        with context columns ``[N, C]`` after the state's own."""
        if self.context:
            own = self._flat(state)
            return torch.cat([own, context.to(own.dtype)], dim=1)
        if not self.is_tuple:
            state = self._viewed(state)
            return state.movedim(self.batch_axis, 0) if self.batch_axis else state
        return self._flat(state)

    def _flat(self, state: Any) -> torch.Tensor:
        if not self.is_tuple:
            state = self._viewed(state)
            state = state.movedim(self.batch_axis, 0) if self.batch_axis else state
            return state.reshape(state.shape[0], -1)
        n = state[0].shape[0]          # not len(): it would fix the batch size in an exported program
        return torch.cat([c.reshape(n, -1) for c in state], dim=1)

    def unpack(self, h: torch.Tensor) -> Any:
        """The user's state from packed rows ``[N, ...]`` (views, no copy)."""
        if not self.is_tuple:
            if self.context:
                h = h[:, :self.sizes[0]].reshape(h.shape[0], *self.shapes[0])
            return self._merged(h.movedim(0, self.batch_axis)) if self.batch_axis else h
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            parts.append(h[:, start:start + size].view(h.shape[0], *shape))
            start += size
        return tuple(parts)

    def unpack_trajectory(self, ys: torch.Tensor) -> Any:
        """The user's trajectory from packed ``[T, N, ...]``: a tensor, or a tuple of ``[T, N, ...]``."""
        if not self.is_tuple:
            if self.context:
                ys = ys[:, :, :self.sizes[0]].reshape(ys.shape[0], ys.shape[1], *self.shapes[0])
            return self._merged(ys.movedim(1, 1 + self.batch_axis), 1) if self.batch_axis else ys
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            parts.append(ys[:, :, start:start + size].reshape(ys.shape[0], ys.shape[1], *shape))
            start += size
        return tuple(parts)

    def pack_output(self, out: Any, n: Any, what: str = "f") -> torch.Tensor:
        """f's output for ``n`` rows, packed; ``StateShapeError`` when it does not fit the state.
        Context columns get derivative 0."""
        if not self.is_tuple:
            if self.blocks > 1 and isinstance(out, torch.Tensor) and out.ndim and out.shape[0] == self.blocks * n:
                out = self._viewed(out)
            if self.batch_axis and isinstance(out, torch.Tensor) and out.ndim > self.batch_axis:
                out = out.movedim(self.batch_axis, 0)
            own = (sum(self.sizes),) if self.packed else self.shapes[0]
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, *own):
                raise StateShapeError(f"{what} returned {_shape_of(out)} for a state of shape {self.describe(n)}: "
                                      f"{_MIXING_HINT}")
            if not self.context:
                return out
            packed = out.reshape(n, -1)
        else:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes) or any(
                    not isinstance(c, torch.Tensor) or tuple(c.shape) != (n, *s) for c, s in zip(out, self.shapes)):
                raise StateShapeError(f"{what} returned {_shape_of(out)} for a state of shape {self.describe(n)}: "
                                      f"{_MIXING_HINT}")
            packed = torch.cat([c.reshape(n, -1) for c in out], dim=1)
        if self.context:
            packed = torch.cat([packed, packed.new_zeros(n, self.context)], dim=1)
        return packed

    def rms(self, x: torch.Tensor) -> torch.Tensor:
        """``[N]``: torchdiffeq's norm per row: RMS for a tensor, the largest component RMS for a tuple
        (context columns left out)."""
        if self.context:
            x = x[:, :sum(self.sizes)]
        if not (self.is_tuple or self.packed) or len(self.shapes) == 1:
            return rms_rows(x)
        parts, start = [], 0
        for size in self.sizes:
            parts.append(rms_rows(x[:, start:start + size]))
            start += size
        return torch.stack(parts).amax(0)

    def describe(self, n: int | str = "N") -> str:
        if not self.is_tuple and not self.packed and self.blocks > 1:
            text = str((f"{self.blocks}x{n}", *self.shapes[0][1:])).replace("'", "")
        elif not self.is_tuple and not self.packed:
            shape = list(self.shapes[0])
            shape.insert(self.batch_axis, n)
            text = str(tuple(shape)).replace("'", "")
        else:
            text = "(" + ", ".join(str((n, *s)).replace("'", "") for s in self.shapes) + ")"
        return text + (f" and {self.context} per-sample value(s) f reads" if self.context else "")

    def to_dict(self) -> dict:
        return {"shapes": [list(s) for s in self.shapes], "is_tuple": self.is_tuple, "packed": self.packed,
                "batch_axis": self.batch_axis, "context": self.context, "blocks": self.blocks}

    @classmethod
    def from_dict(cls, data: dict) -> "StateLayout":
        return cls(shapes=tuple(tuple(int(v) for v in s) for s in data["shapes"]), is_tuple=bool(data["is_tuple"]),
                   packed=bool(data.get("packed", False)), batch_axis=int(data.get("batch_axis", 0)),
                   context=int(data.get("context", 0)), blocks=int(data.get("blocks", 1)))


_MIXING_HINT = ("f must return one row per state row, shaped like its state (a function that keeps per-sample data "
                "outside its state, such as noise or conditioning drawn for the whole batch, cannot be solved sample "
                "by sample)")


def _check_component(c: torch.Tensor, what: str) -> None:
    if c.ndim < 1 or not c.is_floating_point():
        raise InputError(f"{what} has shape {tuple(c.shape)} and dtype {c.dtype}; dise needs a floating-point "
                         f"batch [N, ...]")


def _shape_of(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_shape_of(c) for c in out) + ")"
    return type(out).__name__


def same_structure(a: Any, b: Any) -> bool:
    """Exactly equal tensors or nested tuples/lists of them (for telling what a block returns)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_structure(x, y) for x, y in zip(a, b))
    return False


def map_tensors(value: Any, fn) -> Any:
    """Apply ``fn`` to every tensor in a tensor or a (nested) tuple/list of them."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        mapped = [map_tensors(v, fn) for v in value]
        return tuple(mapped) if isinstance(value, tuple) else mapped
    return value


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            found = first_tensor(v)
            if found is not None:
                return found
    return None
